//! The controllers and what they share.

mod backoff;
mod cluster_external_secret;
mod external_secret;
mod first_syncs;
mod refreshes;
mod restart;
mod resyncs;
mod secret_store;
mod secret_versions;
mod workloads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc::{UnboundedReceiver, unbounded};
use futures::{Stream, StreamExt, future};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::sync::watch;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::api::{ClusterSecretStore, CreationPolicy, ExternalSecret, SecretStore};
use crate::data_hash::{DataHasher, HashBytes};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::rotation::Watches;
use crate::store::{Referenced, Stores};
use crate::target::{Applied, FIELD_MANAGER};
use backoff::Backoff;
use first_syncs::FirstSyncs;
use refreshes::Refreshes;
use resyncs::Resyncs;
use secret_versions::SecretVersions;
use workloads::Workloads;

type StoreCacheWriters = (
    reflector::store::Writer<SecretStore>,
    reflector::store::Writer<ClusterSecretStore>,
);

#[derive(Clone)]
struct LastSync {
    at: Timestamp,
    synced_resource_version: String,
}

/// What this process keeps for one ExternalSecret, in one entry rather than one map each: there is one for
/// every ExternalSecret.
#[derive(Default)]
struct Kept {
    /// Its last successful sync by this process. Status says the same, but the watch cache can lag behind our
    /// own status write, and a refresh that changed nothing writes no status.
    last_sync: Option<LastSync>,
    /// Its `status.propagatedDataHash` as this process last wrote it, for the same reason.
    propagated: Option<HashBytes>,
}

impl Kept {
    fn is_empty(&self) -> bool {
        self.last_sync.is_none() && self.propagated.is_none()
    }
}

pub struct Context {
    pub client: Client,
    /// Who publishes events (see `publish`).
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Stores and the AWS identities they resolve to, cached across reconciles.
    pub stores: Arc<Stores>,
    /// The version watches of every remote secret read, and the values kept for them.
    pub watches: Arc<Watches>,
    /// ExternalSecrets the watches wake; the ExternalSecret controller takes it when it starts.
    woken: Mutex<Option<UnboundedReceiver<ObjectRef<ExternalSecret>>>>,
    /// The ExternalSecret controller's cache; it takes the writer when it starts.
    external_secret_cache_writer: Mutex<Option<reflector::store::Writer<ExternalSecret>>>,
    /// ExternalSecrets yet to sync, whose keys reads carry ahead.
    first_syncs: Arc<FirstSyncs>,
    /// How many ExternalSecrets sync at once.
    concurrency: u16,
    /// Syncs of many ExternalSecrets at once, fed to the controller as it gets through them.
    resyncs: Arc<Resyncs>,
    /// When each ExternalSecret syncs again by itself.
    refreshes: Arc<Refreshes>,
    /// What the Secrets we manage hold, from the ExternalSecret controller's watch of them and our applies.
    secret_versions: SecretVersions,
    /// The workloads that asked to be restarted when their Secrets change.
    workloads: Workloads,
    /// The ConfigMaps that `templateFrom` names, each from a watch of it (its Secrets come from `stores`).
    template_config_maps: Referenced<ConfigMap>,
    /// When this process started.
    started: Timestamp,
    /// What this process keeps for each ExternalSecret, by `key`.
    kept: Mutex<HashMap<String, Kept>>,
    /// The stores ExternalSecrets name, from the ExternalSecret controller's watches of them: a sync
    /// looks its store up here, not with a request.
    store_cache: Store<SecretStore>,
    cluster_store_cache: Store<ClusterSecretStore>,
    /// Fill those caches; the ExternalSecret controller takes them when it starts.
    store_cache_writers: Mutex<Option<StoreCacheWriters>>,
    /// Turns true once the store caches and the cache of our Secrets have listed: until then, that one
    /// holds nothing means nothing.
    caches_ready: watch::Sender<bool>,
    pub hasher: DataHasher,
    pub backoff: Backoff,
    /// How often stores re-check their credentials when they do not say.
    pub store_refresh: Duration,
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        hasher: DataHasher,
        metrics: Arc<Metrics>,
        store_refresh: Duration,
        concurrency: u16,
        kept_values_budget: usize,
    ) -> Self {
        let reporter = Reporter {
            controller: "secretsync".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let stores = Arc::new(stores);
        let (wake, woken) = unbounded();
        let (store_cache, store_writer) = reflector::store();
        let (cluster_store_cache, cluster_store_writer) = reflector::store();
        let (external_secret_cache, external_secret_cache_writer) = reflector::store();
        Context {
            watches: Arc::new(Watches::new(
                stores.clone(),
                metrics.clone(),
                // Version check failures, once per store and change: a Recorder's cache of them stays small.
                Recorder::new(client.clone(), reporter.clone()),
                wake,
                kept_values_budget,
            )),
            woken: Mutex::new(Some(woken)),
            external_secret_cache_writer: Mutex::new(Some(external_secret_cache_writer)),
            first_syncs: Arc::new(FirstSyncs::new(external_secret_cache)),
            concurrency,
            resyncs: Arc::new(Resyncs::new(concurrency.into())),
            refreshes: Arc::default(),
            secret_versions: SecretVersions::new(),
            workloads: Workloads::new(client.clone()),
            template_config_maps: Referenced::new(client.clone()),
            kept: Mutex::default(),
            started: Timestamp::now(),
            store_cache,
            cluster_store_cache,
            store_cache_writers: Mutex::new(Some((store_writer, cluster_store_writer))),
            caches_ready: watch::Sender::new(false),
            reporter,
            client,
            metrics,
            stores,
            hasher,
            backoff: Backoff::default(),
            store_refresh,
        }
    }

    /// Reads what is kept for `key`.
    fn kept<T>(&self, key: &str, read: impl FnOnce(&Kept) -> Option<T>) -> Option<T> {
        self.kept
            .lock()
            .expect("never poisoned")
            .get(key)
            .and_then(read)
    }

    /// Changes what is kept for `key`; an entry left with nothing is dropped.
    fn keep(&self, key: &str, change: impl FnOnce(&mut Kept)) {
        let mut kept = self.kept.lock().expect("never poisoned");
        match kept.get_mut(key) {
            Some(entry) => {
                change(entry);
                if entry.is_empty() {
                    kept.remove(key);
                }
            }
            None => {
                let mut entry = Kept::default();
                change(&mut entry);
                if !entry.is_empty() {
                    kept.insert(key.to_string(), entry);
                }
            }
        }
    }

    fn synced(&self, key: &str, synced_resource_version: String) {
        let last = LastSync {
            at: Timestamp::now(),
            synced_resource_version,
        };
        self.keep(key, |kept| kept.last_sync = Some(last));
    }

    fn last_sync(&self, key: &str) -> Option<LastSync> {
        self.kept(key, |kept| kept.last_sync.clone())
    }

    fn forget_sync(&self, key: &str) {
        self.keep(key, |kept| kept.last_sync = None);
    }

    fn propagated(&self, key: &str) -> Option<String> {
        self.kept(key, |kept| kept.propagated.map(|hash| hash.to_string()))
    }

    /// `data_hash` is one of our hashes; anything else is forgotten, and status says instead.
    fn set_propagated(&self, key: &str, data_hash: &str) {
        self.keep(key, |kept| kept.propagated = HashBytes::from_hex(data_hash));
    }

    fn forget_kept(&self, key: &str) {
        self.kept.lock().expect("never poisoned").remove(key);
    }

    /// What the ExternalSecret's last apply left in its Secret, if nobody wrote the Secret since: then it
    /// holds exactly that.
    fn unchanged_since_applied(&self, es: &ExternalSecret) -> Option<Applied> {
        let namespace = es.namespace().unwrap_or_default();
        self.secret_versions
            .as_applied(&namespace, es.target_name())
            .filter(|applied| applied.written_by(es))
    }

    /// Records what the ExternalSecret's apply left in its Secret, if it is among those the watch follows
    /// (with `creationPolicy: Merge` it is someone else's, and read before each write).
    fn set_applied(&self, es: &ExternalSecret, applied: Applied) {
        if es.spec.target.creation_policy != CreationPolicy::Merge {
            let namespace = es.namespace().unwrap_or_default();
            self.secret_versions
                .applied(&namespace, es.target_name(), applied);
        }
    }

    /// Resolves once the caches have listed: they fill when the controller starts, and until they have
    /// listed once, absence from them means nothing.
    async fn caches_listed(&self) {
        let _ = self.caches_ready.subscribe().wait_for(|ready| *ready).await;
    }

    /// Whether the cache of the Secrets we manage, listed and watching, holds none named `namespace/name`.
    /// Usually there is then none at all; someone else's or one we wrote a moment ago is not ruled out.
    fn manages_no_secret(&self, namespace: &str, name: &str) -> bool {
        *self.caches_ready.borrow() && !self.secret_versions.holds(namespace, name)
    }

    /// Keeps what this process holds per ExternalSecret only for the keys for which `live` holds: a relist
    /// can miss a deletion, and nothing may grow with objects that are gone.
    fn retain(&self, live: impl Fn(&str) -> bool) {
        self.kept
            .lock()
            .expect("never poisoned")
            .retain(|key, _| live(key));
        self.backoff.retain(&live);
    }
}

/// Runs every controller until `stopping` turns true, then lets the reconciles in flight finish.
/// `namespace` limits namespaced watches to one namespace. ClusterExternalSecrets are served only when every
/// namespace is: an operator limited to one cannot provision the others, and several such operators would
/// contend for one ClusterExternalSecret's status.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, stopping: watch::Receiver<bool>) {
    ctx.workloads.watch_in(namespace.clone());
    let cluster_external_secrets = async {
        match &namespace {
            None => cluster_external_secret::run(ctx.clone(), stopping.clone()).await,
            Some(_) => {
                tracing::info!(
                    "ClusterExternalSecrets are not served: the operator watches one namespace"
                )
            }
        }
    };
    futures::join!(
        external_secret::run(ctx.clone(), namespace.clone(), stopping.clone()),
        secret_store::run_namespaced(ctx.clone(), namespace.clone(), stopping.clone()),
        secret_store::run_cluster(ctx.clone(), stopping.clone()),
        cluster_external_secrets,
    );
}

/// Every watch: listed from etcd, retried on its own, its errors logged and kept from the controllers.
///
/// Lists come from etcd, not from the API server's watch cache: right after an API server restart the cache
/// can answer a list with a resourceVersion that its own watch then refuses as too old (410), and a watcher
/// listing from the cache again never gets past it. Lists happen at start and after a watch is lost, so the
/// cost is small.
///
/// Each watch retries after 0.5 s, doubling up to 2.5 s, each with as much again of jitter at most (kube's
/// default grows to 30 s; a restarted API server answers 410 a few times). Its errors stop here: a `Controller` merges all its watches into one stream and pauses that
/// whole stream on any error with a backoff of its own (up to 30 s, reset only after 2 min without one), so
/// one watch failing held back the others' events: after an API server restart, new ExternalSecrets and
/// deleted Secrets went unseen for minutes.
pub fn watch_stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    watcher(api, config.list_semantic(watcher::ListSemantic::MostRecent))
        .backoff(retry_backoff())
        .filter(move |event| {
            if let Err(err) = event {
                tracing::warn!(kind, error = %err, "watch failed; retrying");
            }
            future::ready(event.is_ok())
        })
}

fn retry_backoff() -> impl kube::runtime::utils::Backoff + use<> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_millis(2500))
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(exponential),
        Duration::from_secs(60),
    )
}

/// Resolves once `stopping` turns true, or when its sender is gone.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// Writes an object's whole status with server-side apply under our field manager, so that fields we no
/// longer set (a removed syncedVersions key) disappear.
async fn apply_status<K>(api: &Api<K>, object: &K, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&object.name_any(), &params, &Patch::Apply(patch))
        .await?;
    Ok(())
}

/// Records an event on `object`; failing to record one is logged, never fatal to the reconcile.
async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    action: &str,
    reason: &str,
    note: String,
) {
    publish_to(ctx, &object.object_ref(&()), type_, action, reason, note).await;
}

async fn publish_to(
    ctx: &Context,
    object: &ObjectReference,
    type_: EventType,
    action: &str,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    // A Recorder per event: kube's keeps every event it published for six minutes to count repeats into a
    // series, which during a first sync holds one event per ExternalSecret (a fifth of the heap at 5,000).
    // Ours are not repeated in a loop (a failure is reported once), so there is nothing to count.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(err) = recorder.publish(&event, object).await {
        let name = object.name.as_deref().unwrap_or_default();
        tracing::warn!(object = %name, error = %err, "could not publish event");
    }
}
