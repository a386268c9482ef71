//! The resourceVersion of each Secret we manage, from a watch of their metadata: a sync compares it with what
//! its last apply returned instead of reading the Secret, and creates a Secret that is not here without
//! reading first. Only the version is kept: a reflector store of the metadata took 0.9 KB per Secret.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

/// By (namespace, name).
type Versions = HashMap<(String, String), String>;

pub struct SecretVersions {
    state: Mutex<State>,
    listed: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    versions: Versions,
    /// What a list under way has delivered so far; it replaces `versions` when done, so that a Secret deleted
    /// while the watch was down is gone after it.
    listing: Option<Versions>,
}

fn key(secret: &PartialObjectMeta<Secret>) -> (String, String) {
    (secret.namespace().unwrap_or_default(), secret.name_any())
}

impl SecretVersions {
    pub fn new() -> Self {
        SecretVersions {
            state: Mutex::default(),
            listed: watch::Sender::new(false),
        }
    }

    pub fn apply(&self, event: &Event<PartialObjectMeta<Secret>>) {
        let mut state = self.state.lock().expect("never poisoned");
        match event {
            Event::Apply(secret) => {
                let version = secret.resource_version().unwrap_or_default();
                state.versions.insert(key(secret), version);
            }
            Event::Delete(secret) => {
                state.versions.remove(&key(secret));
            }
            Event::Init => state.listing = Some(Versions::new()),
            Event::InitApply(secret) => {
                let version = secret.resource_version().unwrap_or_default();
                state
                    .listing
                    .get_or_insert_with(Versions::new)
                    .insert(key(secret), version);
            }
            Event::InitDone => {
                state.versions = state.listing.take().unwrap_or_default();
                drop(state);
                self.listed.send_replace(true);
            }
        }
    }

    /// The resourceVersion the watch last saw of the Secret `namespace/name`, if we manage one by that name.
    pub fn get(&self, namespace: &str, name: &str) -> Option<String> {
        self.state
            .lock()
            .expect("never poisoned")
            .versions
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Resolves once the watch has listed.
    pub async fn listed(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, version: &str) -> PartialObjectMeta<Secret> {
        let mut secret = PartialObjectMeta::<Secret>::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.namespace = Some("ns".into());
        secret.metadata.resource_version = Some(version.into());
        secret
    }

    #[test]
    fn follows_the_watch_and_a_relist_drops_what_it_missed() {
        let versions = SecretVersions::new();
        versions.apply(&Event::Init);
        versions.apply(&Event::InitApply(secret("a", "1")));
        versions.apply(&Event::InitApply(secret("b", "2")));
        assert_eq!(
            versions.get("ns", "a"),
            None,
            "nothing until the list is done"
        );
        versions.apply(&Event::InitDone);
        versions.apply(&Event::Apply(secret("a", "3")));
        assert_eq!(versions.get("ns", "a").as_deref(), Some("3"));
        versions.apply(&Event::Delete(secret("a", "4")));
        assert_eq!(versions.get("ns", "a"), None);
        // "b" was deleted while the watch was down.
        versions.apply(&Event::Init);
        versions.apply(&Event::InitApply(secret("c", "5")));
        assert_eq!(
            versions.get("ns", "b").as_deref(),
            Some("2"),
            "kept during the relist"
        );
        versions.apply(&Event::InitDone);
        assert_eq!(versions.get("ns", "b"), None);
        assert_eq!(versions.get("ns", "c").as_deref(), Some("5"));
    }
}
