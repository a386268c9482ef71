//! A map kept from a watch of one kind of object, each object kept as the little its reader needs (or not
//! at all). Started on first use; reads wait a while for the first list, and read the API server themselves
//! while it has not come (no permission to watch, the API server away).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::task::AbortOnDrop;

/// How long reads wait for the initial list, from the watch's start, before reading for themselves.
const LISTED_WITHIN: Duration = Duration::from_secs(5);

/// By (namespace, name); the namespace is empty for cluster-scoped kinds.
pub type Entries<V> = HashMap<(String, String), V>;

pub struct WatchedMap<V> {
    entries: Arc<Mutex<Entries<V>>>,
    listed: watch::Receiver<bool>,
    started: Instant,
    _task: AbortOnDrop,
}

impl<V: Send + 'static> WatchedMap<V> {
    /// Watches `api`, keeping what `keep` makes of each object. A relist replaces the map, so that an
    /// object deleted while the watch was down is gone after it.
    pub fn start<K>(api: Api<K>, keep: fn(&K) -> Option<V>) -> Self
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let entries: Arc<Mutex<Entries<V>>> = Arc::default();
        let (sender, listed) = watch::channel(false);
        let kept = entries.clone();
        let task = tokio::spawn(async move {
            let key = |object: &K| (object.namespace().unwrap_or_default(), object.name_any());
            let mut events = Box::pin(crate::controller::watch_stream(
                api,
                watcher::Config::default(),
            ));
            let mut listing = Entries::new();
            while let Some(Ok(event)) = events.next().await {
                match event {
                    Event::Init => listing.clear(),
                    Event::InitApply(object) => {
                        if let Some(value) = keep(&object) {
                            listing.insert(key(&object), value);
                        }
                    }
                    Event::InitDone => {
                        *kept.lock().expect("never poisoned") = std::mem::take(&mut listing);
                        sender.send_replace(true);
                    }
                    Event::Apply(object) => {
                        let mut kept = kept.lock().expect("never poisoned");
                        match keep(&object) {
                            Some(value) => kept.insert(key(&object), value),
                            None => kept.remove(&key(&object)),
                        };
                    }
                    Event::Delete(object) => {
                        kept.lock().expect("never poisoned").remove(&key(&object));
                    }
                }
            }
        });
        WatchedMap {
            entries,
            listed,
            started: Instant::now(),
            _task: AbortOnDrop(task.abort_handle()),
        }
    }

    /// The map, once the watch has listed; `None` if it has not within `LISTED_WITHIN` of its start.
    pub async fn listed(&self) -> Option<MutexGuard<'_, Entries<V>>> {
        let mut listed = self.listed.clone();
        let _ = tokio::time::timeout_at(
            self.started + LISTED_WITHIN,
            listed.wait_for(|listed| *listed),
        )
        .await;
        let listed = *listed.borrow();
        listed.then(|| self.entries.lock().expect("never poisoned"))
    }
}
