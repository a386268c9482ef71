//! ExternalSecrets waiting for their first sync, per store and namespace, in the order the watch saw them.
//! A read of current values with room carries the keys the next of them will need, so that a first sync
//! of N ExternalSecrets over R secrets costs about R/20 calls however the syncs interleave.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::{ExternalSecret, StoreKind, VersionCheck};
use crate::fetch::current_keys;
use crate::provider::aws::{AwsSecretsManager, ReadAhead};
use crate::rotation::Watches;

pub struct FirstSyncs {
    cache: Store<ExternalSecret>,
    pending: Mutex<HashMap<Source, Pending>>,
}

/// A store as one namespace uses it: a ClusterSecretStore's reads never carry another namespace's keys.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Source {
    kind: StoreKind,
    store: String,
    namespace: String,
}

impl Source {
    fn of(es: &ExternalSecret) -> Source {
        Source {
            kind: es.spec.secret_store_ref.kind,
            store: es.spec.secret_store_ref.name.clone(),
            namespace: es.namespace().unwrap_or_default(),
        }
    }
}

/// Names in the order seen; `names` says which are still waiting (`order` is cleaned up lazily).
#[derive(Default)]
struct Pending {
    order: VecDeque<String>,
    names: HashSet<String>,
}

/// Whether it has synced in full at least once, by this process or another.
fn synced_once(es: &ExternalSecret) -> bool {
    es.status
        .as_ref()
        .is_some_and(|status| status.refresh_time.is_some())
}

impl FirstSyncs {
    pub fn new(cache: Store<ExternalSecret>) -> Self {
        FirstSyncs {
            cache,
            pending: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Pending>> {
        self.pending.lock().expect("never poisoned")
    }

    /// Notes an ExternalSecret the watch delivered, if it has yet to sync.
    pub fn seen(&self, es: &ExternalSecret) {
        if synced_once(es) || es.metadata.deletion_timestamp.is_some() {
            return self.done(es);
        }
        let name = es.name_any();
        let mut pending = self.lock();
        let waiting = pending.entry(Source::of(es)).or_default();
        if waiting.names.insert(name.clone()) {
            waiting.order.push_back(name);
        }
    }

    /// Forgets an ExternalSecret that synced or is gone.
    pub fn done(&self, es: &ExternalSecret) {
        let source = Source::of(es);
        let mut pending = self.lock();
        let Some(waiting) = pending.get_mut(&source) else {
            return;
        };
        waiting.names.remove(&es.name_any());
        if waiting.names.is_empty() {
            pending.remove(&source);
        } else if waiting.order.len() > 2 * waiting.names.len() {
            let names = &waiting.names;
            waiting.order.retain(|name| names.contains(name));
        }
    }

    /// Keeps only what the cache holds and has yet to sync, after a relist that may have missed deletions.
    pub fn retain_cached(&self) {
        let mut pending = self.lock();
        for (source, waiting) in pending.iter_mut() {
            waiting.names.retain(|name| {
                self.cache
                    .get(&ObjectRef::new(name).within(&source.namespace))
                    .is_some_and(|es| !synced_once(&es) && Source::of(&es) == *source)
            });
            let names = &waiting.names;
            waiting.order.retain(|name| names.contains(name));
        }
        pending.retain(|_, waiting| !waiting.names.is_empty());
    }

    /// What the first syncs after `es` will read through `provider`, for a read that `es` starts.
    pub fn after(
        self: &Arc<Self>,
        es: &ExternalSecret,
        watches: &Arc<Watches>,
        provider: &AwsSecretsManager,
        check: &VersionCheck,
    ) -> Arc<dyn ReadAhead> {
        Arc::new(Upcoming {
            first_syncs: self.clone(),
            source: Source::of(es),
            watches: watches.clone(),
            provider: provider.clone(),
            check: check.clone(),
        })
    }
}

struct Upcoming {
    first_syncs: Arc<FirstSyncs>,
    source: Source,
    watches: Arc<Watches>,
    provider: AwsSecretsManager,
    check: VersionCheck,
}

impl ReadAhead for Upcoming {
    /// The current keys of the ExternalSecrets next in line, less those the version watches keep. Each
    /// ExternalSecret is handed out once; one whose keys do not all fit reads the rest itself.
    fn upcoming(&self, limit: usize, skip: &dyn Fn(&str) -> bool) -> Vec<String> {
        let kept = self.watches.kept(&self.provider, &self.check);
        let mut pending = self.first_syncs.lock();
        let Some(waiting) = pending.get_mut(&self.source) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = Vec::new();
        while keys.len() < limit
            && let Some(name) = waiting.order.pop_front()
        {
            if !waiting.names.remove(&name) {
                continue;
            }
            let es_ref = ObjectRef::new(&name).within(&self.source.namespace);
            let Some(es) = self.first_syncs.cache.get(&es_ref) else {
                continue;
            };
            if synced_once(&es) || Source::of(&es) != self.source {
                continue;
            }
            for key in current_keys(&es.spec) {
                if keys.len() == limit {
                    break;
                }
                if !skip(&key) && !keys.contains(&key) && !kept.holds_current(&key) {
                    keys.push(key);
                }
            }
        }
        if waiting.names.is_empty() {
            pending.remove(&self.source);
        }
        keys
    }
}
