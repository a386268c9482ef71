//! The workloads that asked to be restarted when their Secrets change, from watches of Deployments,
//! StatefulSets and DaemonSets started by the first data change: a change finds them here instead of
//! listing every workload of its namespace, three kinds at a time. Only annotated workloads are kept, as
//! the little a restart needs (see `Candidate`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::restart::{Candidate, Workload};
use crate::task::AbortOnDrop;

/// How long the first rounds wait for the watches' initial lists, from their start, before listing
/// themselves.
const LISTED_WITHIN: Duration = Duration::from_secs(5);

/// Annotated workloads by (namespace, name), one map per kind.
type Kept = HashMap<(String, String), Candidate>;

pub struct Workloads {
    client: Client,
    /// The namespace the operator works in, `None` for all: set when the controller starts.
    scope: OnceLock<Option<String>>,
    started: Mutex<Option<Started>>,
}

struct Started {
    kinds: Arc<Mutex<[Kind; 3]>>,
    /// How many kinds have listed.
    listed: watch::Receiver<usize>,
    at: Instant,
    _watches: [AbortOnDrop; 3],
}

#[derive(Default)]
struct Kind {
    kept: Kept,
    /// What a list under way has delivered so far; it replaces `kept` when done.
    listing: Option<Kept>,
    listed: bool,
}

impl Workloads {
    pub fn new(client: Client) -> Self {
        Workloads {
            client,
            scope: OnceLock::new(),
            started: Mutex::default(),
        }
    }

    /// Where the watches look once started: `namespace`, or everywhere.
    pub fn watch_in(&self, namespace: Option<String>) {
        let _ = self.scope.set(namespace);
    }

    /// The annotated workloads of `namespace`, once the watches have listed; `None` while they have not
    /// (the first seconds, or while they cannot list), when the caller lists them itself.
    pub async fn in_namespace(&self, namespace: &str) -> Option<Vec<Candidate>> {
        let (kinds, mut listed, at) = self.start();
        let _ = tokio::time::timeout_at(at + LISTED_WITHIN, listed.wait_for(|n| *n == 3)).await;
        let kinds = kinds.lock().expect("never poisoned");
        if !kinds.iter().all(|kind| kind.listed) {
            return None;
        }
        Some(
            kinds
                .iter()
                .flat_map(|kind| kind.kept.iter())
                .filter(|((ns, _), _)| ns == namespace)
                .map(|(_, candidate)| candidate.clone())
                .collect(),
        )
    }

    fn start(&self) -> (Arc<Mutex<[Kind; 3]>>, watch::Receiver<usize>, Instant) {
        let mut started = self.started.lock().expect("never poisoned");
        let started = started.get_or_insert_with(|| {
            let kinds: Arc<Mutex<[Kind; 3]>> = Arc::default();
            let (listed, listed_rx) = watch::channel(0);
            let listed = Arc::new(listed);
            let scope = self.scope.get().cloned().flatten();
            let client = &self.client;
            Started {
                _watches: [
                    follow::<Deployment>(client, &scope, kinds.clone(), 0, listed.clone()),
                    follow::<StatefulSet>(client, &scope, kinds.clone(), 1, listed.clone()),
                    follow::<DaemonSet>(client, &scope, kinds.clone(), 2, listed),
                ],
                kinds,
                listed: listed_rx,
                at: Instant::now(),
            }
        });
        (started.kinds.clone(), started.listed.clone(), started.at)
    }
}

/// Keeps the annotated workloads of one kind in `kinds[at]`.
fn follow<W: Workload>(
    client: &Client,
    scope: &Option<String>,
    kinds: Arc<Mutex<[Kind; 3]>>,
    at: usize,
    listed: Arc<watch::Sender<usize>>,
) -> AbortOnDrop {
    let api: Api<W> = match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let stream = super::watch_stream(api, watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            let mut kinds = kinds.lock().expect("never poisoned");
            let kind = &mut kinds[at];
            match event {
                Event::Apply(workload) => {
                    let key = key(&workload);
                    match Candidate::of(&workload) {
                        Some(candidate) => kind.kept.insert(key, candidate),
                        None => kind.kept.remove(&key),
                    };
                }
                Event::Delete(workload) => {
                    kind.kept.remove(&key(&workload));
                }
                Event::Init => kind.listing = Some(Kept::new()),
                Event::InitApply(workload) => {
                    if let Some(candidate) = Candidate::of(&workload) {
                        kind.listing
                            .get_or_insert_with(Kept::new)
                            .insert(key(&workload), candidate);
                    }
                }
                Event::InitDone => {
                    kind.kept = kind.listing.take().unwrap_or_default();
                    if !std::mem::replace(&mut kind.listed, true) {
                        listed.send_modify(|n| *n += 1);
                    }
                }
            }
        }
    });
    AbortOnDrop(task.abort_handle())
}

fn key<W: Workload>(workload: &W) -> (String, String) {
    (
        workload.namespace().unwrap_or_default(),
        workload.name_any(),
    )
}
