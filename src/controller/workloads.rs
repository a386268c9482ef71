//! The workloads that asked to be restarted when their Secrets change, from watches of Deployments,
//! StatefulSets and DaemonSets started by the first data change: a change finds them here instead of
//! listing every workload of its namespace, three kinds at a time. Only annotated workloads are kept, as
//! the little a restart needs (see `Candidate`).

use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Client;
use kube::api::Api;

use super::restart::{Candidate, Workload};
use crate::watched_map::WatchedMap;

pub struct Workloads {
    client: Client,
    /// The namespace the operator works in, `None` for all: set when the controller starts.
    scope: OnceLock<Option<String>>,
    watches: OnceLock<[WatchedMap<Candidate>; 3]>,
}

impl Workloads {
    pub fn new(client: Client) -> Self {
        Workloads {
            client,
            scope: OnceLock::new(),
            watches: OnceLock::new(),
        }
    }

    /// Where the watches look once started: `namespace`, or everywhere.
    pub fn watch_in(&self, namespace: Option<String>) {
        let _ = self.scope.set(namespace);
    }

    /// The annotated workloads of `namespace`, once the watches have listed; `None` while they have not
    /// (the first seconds, or while they cannot list), when the caller lists them itself.
    pub async fn in_namespace(&self, namespace: &str) -> Option<Vec<Candidate>> {
        let watches = self.watches.get_or_init(|| {
            [
                self.start::<Deployment>(),
                self.start::<StatefulSet>(),
                self.start::<DaemonSet>(),
            ]
        });
        let mut candidates = Vec::new();
        for watch in watches {
            let kept = watch.listed().await?;
            candidates.extend(
                kept.iter()
                    .filter(|((ns, _), _)| ns == namespace)
                    .map(|(_, candidate)| candidate.clone()),
            );
        }
        Some(candidates)
    }

    fn start<W: Workload>(&self) -> WatchedMap<Candidate> {
        let api: Api<W> = match self.scope.get().cloned().flatten() {
            Some(namespace) => Api::namespaced(self.client.clone(), &namespace),
            None => Api::all(self.client.clone()),
        };
        WatchedMap::start(api, Candidate::of)
    }
}
