//! What each Secret we manage holds, from a watch of their metadata and from our own applies: a sync compares
//! its resourceVersion with what our last apply returned instead of reading the Secret, and creates a
//! Secret that is not here without reading first. After a restart, the list tells what our last apply left
//! in each Secret that nobody else wrote, so that a restart reads none of them. Only the version and our
//! marks are kept: a reflector store of the metadata took 0.9 KB per Secret.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use crate::es_name::joined;
use crate::target::Applied;

/// By `namespace/name`, one allocation rather than two.
type Versions = HashMap<Box<str>, Seen>;

enum Seen {
    /// Written by someone since our last apply, or by this process before its watch showed it.
    Version(String),
    Applied(Applied),
}

impl Seen {
    fn resource_version(&self) -> &str {
        match self {
            Seen::Version(version) => version,
            Seen::Applied(applied) => &applied.resource_version,
        }
    }
}

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

fn key(namespace: &str, name: &str) -> Box<str> {
    joined(Some(namespace), name)
}

fn key_of(secret: &PartialObjectMeta<Secret>) -> Box<str> {
    key(&secret.namespace().unwrap_or_default(), &secret.name_any())
}

fn version(secret: &PartialObjectMeta<Secret>) -> Seen {
    Seen::Version(secret.resource_version().unwrap_or_default())
}

impl SecretVersions {
    pub fn new() -> Self {
        SecretVersions {
            state: Mutex::default(),
            listed: watch::Sender::new(false),
        }
    }

    /// Follows the watch. Whether the event shows nothing new: a Secret at the version we last knew of it,
    /// usually our own apply coming back.
    pub fn apply(&self, event: &Event<PartialObjectMeta<Secret>>) -> bool {
        let mut state = self.state.lock().expect("never poisoned");
        match event {
            Event::Apply(secret) => {
                let seen = state.versions.get(&key_of(secret));
                let known = seen.is_some_and(|seen| {
                    Some(seen.resource_version()) == secret.metadata.resource_version.as_deref()
                });
                if !known {
                    state.versions.insert(key_of(secret), version(secret));
                }
                return known;
            }
            Event::Delete(secret) => {
                state.versions.remove(&key_of(secret));
            }
            Event::Init => state.listing = Some(Versions::new()),
            Event::InitApply(secret) => {
                let seen = Applied::listed(&secret.metadata)
                    .map_or_else(|| version(secret), Seen::Applied);
                state
                    .listing
                    .get_or_insert_with(Versions::new)
                    .insert(key_of(secret), seen);
            }
            Event::InitDone => {
                state.versions = state.listing.take().unwrap_or_default();
                drop(state);
                self.listed.send_replace(true);
            }
        }
        false
    }

    /// Records what our apply to the Secret `namespace/name` left, as the API server answered it.
    pub fn applied(&self, namespace: &str, name: &str, applied: Applied) {
        self.state
            .lock()
            .expect("never poisoned")
            .versions
            .insert(key(namespace, name), Seen::Applied(applied));
    }

    /// What our last apply left in the Secret `namespace/name`, if nobody wrote it since.
    pub fn as_applied(&self, namespace: &str, name: &str) -> Option<Applied> {
        let state = self.state.lock().expect("never poisoned");
        match state.versions.get(&key(namespace, name))? {
            Seen::Applied(applied) => Some(applied.clone()),
            Seen::Version(_) => None,
        }
    }

    /// Whether we manage a Secret `namespace/name`, as far as the watch and our applies tell.
    pub fn holds(&self, namespace: &str, name: &str) -> bool {
        let state = self.state.lock().expect("never poisoned");
        state.versions.contains_key(&key(namespace, name))
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
        assert!(!versions.holds("ns", "a"), "nothing until the list is done");
        versions.apply(&Event::InitDone);
        assert!(versions.holds("ns", "a"));
        assert!(
            versions.as_applied("ns", "a").is_none(),
            "no marks of ours: it is read"
        );
        assert!(!versions.apply(&Event::Apply(secret("a", "3"))), "new");
        assert!(
            versions.apply(&Event::Apply(secret("a", "3"))),
            "seen before"
        );
        versions.apply(&Event::Delete(secret("a", "4")));
        assert!(!versions.holds("ns", "a"));
        // "b" was deleted while the watch was down.
        versions.apply(&Event::Init);
        versions.apply(&Event::InitApply(secret("c", "5")));
        assert!(versions.holds("ns", "b"), "kept during the relist");
        versions.apply(&Event::InitDone);
        assert!(!versions.holds("ns", "b"));
        assert!(versions.holds("ns", "c"));
    }
}
