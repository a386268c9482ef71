//! The ExternalSecret controller: reads remote values, writes the target Secret, reports status and events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Predicate, WatchStreamExt, predicates};
use sha2::{Digest, Sha256};

use super::stores::{self, StoreScope};
use super::{Context, apply_status, publish};
use crate::api::{
    ClusterSecretStore, ExternalSecret, ExternalSecretStatus, READY, SecretBinding, SecretStore,
    StoreKind, is_ready, ready_condition, set_condition,
};
use crate::error::{Error, Result};
use crate::provider::{RemoteSecret, SecretProvider, Version, mapping};
use crate::target::{self, MANAGED_LABEL, Written};

const CONTROLLER: &str = "externalsecret";
/// Errors that need a change by someone are retried this often (or at the refresh interval, if shorter).
const PERMANENT_RETRY: Duration = Duration::from_secs(300);

pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (external_secrets, secrets, stores) = match &namespace {
        Some(ns) => (
            Api::<ExternalSecret>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
            Api::<SecretStore>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let (reader, writer) = reflector::store();
    // Our own status writes must not start another sync: only spec, labels and annotations (force-sync) do.
    let changes = predicates::generation
        .combine(predicates::labels)
        .combine(predicates::annotations);
    let metrics = ctx.metrics.clone();
    let external_secrets = watcher(external_secrets, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(es)) = event {
                metrics.forget_external_secret(&es.namespace().unwrap_or_default(), &es.name_any());
            }
        })
        .applied_objects()
        .predicate_filter(changes, Default::default());
    // Metadata only: secret values never sit in the operator's cache.
    let owned = watcher(
        secrets,
        watcher::Config::default().labels(&format!("{MANAGED_LABEL}=true")),
    )
    .default_backoff()
    .touched_objects();
    let stores = watcher(stores, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .predicate_filter(predicates::generation, Default::default());
    let cluster_stores = watcher(
        Api::<ClusterSecretStore>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default());

    let (by_store, by_cluster_store) = (reader.clone(), reader.clone());
    Controller::for_stream(external_secrets, reader)
        .owns_stream(owned)
        .watches_stream(stores, move |store: SecretStore| {
            referencing(
                &by_store,
                StoreKind::SecretStore,
                &store.name_any(),
                store.namespace().as_deref(),
            )
        })
        .watches_stream(cluster_stores, move |store: ClusterSecretStore| {
            referencing(
                &by_cluster_store,
                StoreKind::ClusterSecretStore,
                &store.name_any(),
                None,
            )
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The ExternalSecrets that use a store, so that a store change reaches them at once.
fn referencing(
    cache: &Store<ExternalSecret>,
    kind: StoreKind,
    name: &str,
    namespace: Option<&str>,
) -> Vec<ObjectRef<ExternalSecret>> {
    cache
        .state()
        .iter()
        .filter(|es| {
            let reference = &es.spec.secret_store_ref;
            reference.kind == kind
                && reference.name == name
                && namespace.is_none_or(|ns| es.namespace().as_deref() == Some(ns))
        })
        .map(|es| ObjectRef::from_obj(es.as_ref()))
        .collect()
}

enum Synced {
    /// Nothing was due; check again after this long (never, for a sync-once ExternalSecret).
    UpToDate(Option<Duration>),
    Written {
        written: Written,
        versions: BTreeMap<String, String>,
        refresh: Option<Duration>,
    },
}

async fn reconcile(es: Arc<ExternalSecret>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let namespace = es.namespace().unwrap_or_default();
    let result = sync(&es, &ctx, &namespace).await;
    ctx.metrics
        .reconcile_duration(CONTROLLER, started.elapsed().as_secs_f64());
    let action = match result {
        Ok(Synced::UpToDate(wait)) => Ok(requeue(wait)),
        Ok(Synced::Written {
            written,
            versions,
            refresh,
        }) => {
            ctx.metrics.sync(&namespace, &es.name_any(), true);
            record_success(&es, &ctx, &namespace, written, versions).await?;
            Ok(requeue(refresh))
        }
        Err(err) => {
            ctx.metrics.sync(&namespace, &es.name_any(), false);
            record_failure(&es, &ctx, &namespace, &err).await?;
            if err.is_transient() {
                return Err(err);
            }
            let refresh = es.spec.refresh_interval().ok().flatten();
            Ok(Action::requeue(
                refresh.map_or(PERMANENT_RETRY, |r| r.min(PERMANENT_RETRY)),
            ))
        }
    };
    ctx.backoff.reset(&key(&es));
    action
}

fn error_policy(es: Arc<ExternalSecret>, _err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff.next(&key(&es)))
}

fn key(es: &ExternalSecret) -> String {
    format!(
        "ExternalSecret/{}/{}",
        es.namespace().unwrap_or_default(),
        es.name_any()
    )
}

fn requeue(after: Option<Duration>) -> Action {
    after.map_or_else(Action::await_change, Action::requeue)
}

async fn sync(es: &ExternalSecret, ctx: &Context, namespace: &str) -> Result<Synced> {
    let refresh = es.spec.refresh_interval().map_err(|err| {
        Error::InvalidSpec(format!(
            "refreshInterval {:?}: {err}",
            es.spec.refresh_interval
        ))
    })?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = secrets.get_opt(es.target_name()).await?;
    if let Some(existing) = &existing {
        target::ensure_owned(existing, es)?;
    }
    let intact = existing
        .as_ref()
        .is_some_and(|s| target::is_intact(s, &ctx.hasher));
    if intact && let Some(wait) = refresh_wait(es, refresh) {
        return Ok(Synced::UpToDate(wait));
    }

    let kind = es.spec.secret_store_ref.kind;
    let spec = stores::store_spec(ctx, es, namespace).await?;
    let scope = StoreScope {
        kind,
        store_namespace: (kind == StoreKind::SecretStore).then_some(namespace),
        requester_namespace: Some(namespace),
    };
    let provider = stores::provider(ctx, &spec, &scope).await?;
    let (data, versions) = fetch(es, &provider).await?;
    let written = target::apply(&secrets, es, data, &ctx.hasher, existing.as_ref()).await?;
    Ok(Synced::Written {
        written,
        versions,
        refresh,
    })
}

/// `Some(wait)` while the last sync is still good: same spec/labels/annotations, Ready, and not yet due.
fn refresh_wait(es: &ExternalSecret, refresh: Option<Duration>) -> Option<Option<Duration>> {
    let status = es.status.as_ref()?;
    if !is_ready(&status.conditions)
        || status.synced_resource_version.as_deref() != Some(&synced_resource_version(es))
    {
        return None;
    }
    let Some(refresh) = refresh else {
        return Some(None);
    };
    let due = status
        .refresh_time
        .as_ref()?
        .0
        .checked_add(SignedDuration::try_from(refresh).ok()?)
        .ok()?;
    let remaining = Timestamp::now().duration_until(due);
    remaining
        .is_positive()
        .then(|| Some(remaining.unsigned_abs()))
}

/// Changes when the spec, labels or annotations change (as External Secrets Operator computes it).
fn synced_resource_version(es: &ExternalSecret) -> String {
    let meta = serde_json::to_vec(&(es.labels(), es.annotations())).expect("string maps serialize");
    let digest = Sha256::digest(meta);
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", es.metadata.generation.unwrap_or_default())
}

type Fetched = (BTreeMap<String, ByteString>, BTreeMap<String, String>);

/// Reads every `data` entry, each remote secret version once, and records the VersionIds read.
async fn fetch(es: &ExternalSecret, provider: &impl SecretProvider) -> Result<Fetched> {
    let mut remote: HashMap<(&str, Version), RemoteSecret> = HashMap::new();
    let mut data = BTreeMap::new();
    let mut versions = BTreeMap::new();
    for entry in &es.spec.data {
        let reference = &entry.remote_ref;
        let version = Version::parse(reference.version.as_deref());
        let cache_key = (reference.key.as_str(), version.clone());
        if !remote.contains_key(&cache_key) {
            let secret = provider.get_secret(&reference.key, &version).await?;
            remote.insert(cache_key.clone(), secret);
        }
        let secret = &remote[&cache_key];
        let bytes = mapping::value_bytes(secret, &reference.key, reference.property.as_deref())?;
        if data
            .insert(entry.secret_key.clone(), ByteString(bytes))
            .is_some()
        {
            return Err(Error::InvalidSpec(format!(
                "Secret key {:?} is written by more than one data entry",
                entry.secret_key
            )));
        }
        if let Some(id) = &secret.version_id {
            let synced_key = match &reference.version {
                None => reference.key.clone(),
                Some(v) => format!("{}@{v}", reference.key),
            };
            versions.insert(synced_key, id.clone());
        }
    }
    Ok((data, versions))
}

async fn record_success(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    written: Written,
    versions: BTreeMap<String, String>,
) -> Result<()> {
    let target = es.target_name().to_string();
    let mut status = es.status.clone().unwrap_or_default();
    let message = format!("Secret {target:?} is in sync");
    set_condition(
        &mut status.conditions,
        ready_condition(true, "SecretSynced", message, es.metadata.generation),
    );
    status.refresh_time = Some(Time(Timestamp::now()));
    status.synced_resource_version = Some(synced_resource_version(es));
    status.binding = Some(SecretBinding {
        name: target.clone(),
    });
    status.synced_versions = versions;
    patch_status(ctx, es, namespace, &status).await?;
    ctx.metrics
        .external_secret_ready(namespace, &es.name_any(), true);
    let event = match written {
        Written::Created => Some(("Created", format!("Created Secret {target:?}"))),
        Written::Updated => Some(("Updated", format!("Updated Secret {target:?}"))),
        Written::Unchanged => None,
    };
    if let Some((reason, note)) = event {
        publish(ctx, es, EventType::Normal, "Sync", reason, note).await;
    }
    Ok(())
}

/// Sets Ready=False and emits a warning event, once per distinct failure: a repeated error writes nothing.
async fn record_failure(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    err: &Error,
) -> Result<()> {
    tracing::warn!(externalsecret = %key(es), reason = err.reason(), error = %err, "sync failed");
    ctx.metrics
        .external_secret_ready(namespace, &es.name_any(), false);
    let mut status = es.status.clone().unwrap_or_default();
    let condition = ready_condition(false, err.reason(), err.to_string(), es.metadata.generation);
    let unchanged = status.conditions.iter().any(|c| {
        c.type_ == READY
            && c.status == condition.status
            && c.reason == condition.reason
            && c.message == condition.message
            && c.observed_generation == condition.observed_generation
    });
    if unchanged {
        return Ok(());
    }
    set_condition(&mut status.conditions, condition);
    patch_status(ctx, es, namespace, &status).await?;
    let reason = if err.is_provider_error() {
        "ProviderError"
    } else {
        "UpdateFailed"
    };
    publish(ctx, es, EventType::Warning, "Sync", reason, err.to_string()).await;
    Ok(())
}

async fn patch_status(
    ctx: &Context,
    es: &ExternalSecret,
    namespace: &str,
    status: &ExternalSecretStatus,
) -> Result<()> {
    apply_status(
        &Api::<ExternalSecret>::namespaced(ctx.client.clone(), namespace),
        es,
        status,
    )
    .await
}
