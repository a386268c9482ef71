//! The objects that stores and templates name (credentials Secrets, ServiceAccounts, `templateFrom`
//! ConfigMaps and Secrets), each kept from a watch of it by name. A sync resolves its store's identity for
//! every read, and renders its templates, so reading them from the API server cost one to three requests
//! per ExternalSecret synced; from here it costs none, and a change reaches the next sync.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Result;
use crate::task::AbortOnDrop;

/// How long reads wait for a watch's initial list, from its start, before reading the object itself.
const LISTED_WITHIN: Duration = Duration::from_secs(5);
/// A watch nobody read from for this long is stopped: its store is gone or names something else now.
const UNUSED_FOR: Duration = Duration::from_secs(3600);

pub struct Referenced<K> {
    client: Client,
    watched: Mutex<HashMap<(String, String), Watched<K>>>,
}

struct Watched<K> {
    /// `None` until listed; then the object, if it exists.
    latest: watch::Receiver<Option<Option<Arc<K>>>>,
    started: Instant,
    used: Instant,
    _task: AbortOnDrop,
}

impl<K> Referenced<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    pub fn new(client: Client) -> Self {
        Referenced {
            client,
            watched: Mutex::default(),
        }
    }

    /// The object as its watch last saw it. The first reads wait for the watch to list it; while a watch
    /// cannot list (no permission to watch, the API server away), the object is read directly.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Arc<K>>> {
        let (mut latest, started) = self.receiver(namespace, name);
        let _ = tokio::time::timeout_at(started + LISTED_WITHIN, latest.wait_for(Option::is_some))
            .await;
        if let Some(listed) = latest.borrow().clone() {
            return Ok(listed);
        }
        let api = Api::<K>::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    /// The receiver of the object's watch, started now if there was none, and when it started.
    fn receiver(
        &self,
        namespace: &str,
        name: &str,
    ) -> (watch::Receiver<Option<Option<Arc<K>>>>, Instant) {
        let mut watched = self.watched.lock().expect("never poisoned");
        let now = Instant::now();
        watched.retain(|_, watch| now.duration_since(watch.used) < UNUSED_FOR);
        let key = (namespace.to_string(), name.to_string());
        if let Some(watch) = watched.get_mut(&key) {
            watch.used = now;
            return (watch.latest.clone(), watch.started);
        }
        let (sender, latest) = watch::channel(None);
        let api = Api::<K>::namespaced(self.client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut events = Box::pin(crate::controller::watch_stream(api, config));
            let mut listing = None;
            while let Some(Ok(event)) = events.next().await {
                match event {
                    watcher::Event::Init => listing = None,
                    watcher::Event::InitApply(object) => listing = Some(Arc::new(object)),
                    watcher::Event::InitDone => {
                        sender.send_replace(Some(listing.take()));
                    }
                    watcher::Event::Apply(object) => {
                        sender.send_replace(Some(Some(Arc::new(object))));
                    }
                    watcher::Event::Delete(_) => {
                        sender.send_replace(Some(None));
                    }
                }
            }
        });
        watched.insert(
            key,
            Watched {
                latest: latest.clone(),
                started: now,
                used: now,
                _task: AbortOnDrop(task.abort_handle()),
            },
        );
        (latest, now)
    }
}
