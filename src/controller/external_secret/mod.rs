//! The ExternalSecret controller: reads remote values, writes the target Secret, reports status and events.

mod status;
mod template_sources;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{Predicate, WatchStreamExt, predicates};
use sha2::{Digest, Sha256};

use super::{Context, LastSync, publish, restart};
use crate::api::{
    ClusterSecretStore, CreationPolicy, DeletionPolicy, ExternalSecret, ExternalSecretSpec,
    RefreshPolicy, SecretStore, StoreKind, is_ready,
};
use crate::error::{Error, Result};
use crate::es_name::EsName;
use crate::fetch::{self, Outcome};
use crate::provider::aws::AwsSecretsManager;
use crate::provider::{Provider, RemoteSecret, Version};
use crate::rotation::{Detection, KeptFirst, Read, StoreHandle, Watches};
use crate::target::{self, Applied, MANAGED_LABEL, Written};
use crate::template::{self, Rendered};
use tokio::sync::watch;

use status::{record_failure, record_gone, record_propagated, record_success};
use template_sources::template_sources;

const CONTROLLER: &str = "externalsecret";
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Held by ExternalSecrets with `creationPolicy: Merge` until their keys are out of the Secret.
const FINALIZER: &str = "secretsync.io/merged-keys";
/// Errors that need a change by someone are retried this often (or at the refresh interval, if shorter).
const PERMANENT_RETRY: Duration = Duration::from_secs(300);
/// A sync that takes longer is abandoned and retried with backoff, so that nothing holds a concurrency slot
/// forever. Each AWS call has its own, shorter deadline; this bounds a sync's sequence of calls.
const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);
/// Workload restarts that failed are tried again this often.
const RESTART_RETRY: Duration = Duration::from_secs(30);

pub async fn run(ctx: Arc<Context>, namespace: Option<String>, stopping: watch::Receiver<bool>) {
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
    let writer = ctx
        .external_secret_cache_writer
        .lock()
        .expect("never poisoned")
        .take()
        .expect("the ExternalSecret controller runs once");
    let reader = writer.as_reader();
    // Our own status writes must not start another sync: only spec, labels and annotations (force-sync) do.
    let changes = predicates::generation
        .combine(predicates::labels)
        .combine(predicates::annotations)
        .combine(predicates::finalizers)
        .combine(deleting);
    let forget = ctx.clone();
    let current = reader.clone();
    // Everything is synced again after a relist: of the owned Secrets, because a relist reports no deletions
    // and a Secret deleted meanwhile is found only by syncing; of the ExternalSecrets, because it follows a
    // lost watch (an API server restart), whose syncs failed meanwhile and would otherwise wait out their
    // backoff (the predicate filter passes no unchanged object). Not after the first list: the controller
    // syncs everything it lists at start anyway.
    let relisted = {
        let (ctx, cache) = (ctx.clone(), reader.clone());
        move || {
            ctx.resyncs
                .request(cache.state().iter().map(|es| EsName::of(es)))
        }
    };
    let external_secrets_relisted = relisted.clone();
    let (mut external_secrets_listed, mut owned_listed) = (false, false);
    let woken = ctx
        .woken
        .lock()
        .expect("never poisoned")
        .take()
        .expect("the ExternalSecret controller runs once");
    // managedFields are most of an object and nothing here reads them, nor a client-side apply's copy of
    // the whole object.
    let external_secrets =
        crate::controller::watch_stream(external_secrets, watcher::Config::default())
            .modify(|es| {
                es.metadata.managed_fields = None;
                if let Some(annotations) = &mut es.metadata.annotations {
                    annotations.remove(LAST_APPLIED_ANNOTATION);
                }
                // A list deserializes with room for four items: 700 of an ExternalSecret's 1,900 bytes
                // were room for conditions and data items it does not have.
                es.spec.data.shrink_to_fit();
                es.spec.data_from.shrink_to_fit();
                if let Some(status) = &mut es.status {
                    status.conditions.shrink_to_fit();
                }
            })
            .reflect(writer)
            .inspect(move |event| {
                match event {
                    Ok(watcher::Event::Apply(es) | watcher::Event::InitApply(es)) => {
                        forget.first_syncs.seen(es)
                    }
                    Ok(watcher::Event::Delete(es)) => forget.forget(es),
                    // A relist replaced the cache: whatever it no longer holds is gone.
                    Ok(watcher::Event::InitDone) => {
                        forget.forget_all_but(&current);
                        forget.first_syncs.retain_cached();
                        if std::mem::replace(&mut external_secrets_listed, true) {
                            external_secrets_relisted();
                        }
                    }
                    _ => {}
                }
            })
            .applied_objects()
            .predicate_filter(changes, Default::default());
    let versions = ctx.clone();
    // Metadata only: secret values never reach the operator. A sync compares resourceVersions and the
    // controller follows owner references; nothing else is kept.
    let owned = crate::controller::watch_stream(
        secrets,
        watcher::Config::default().labels(&format!("{MANAGED_LABEL}=true")),
    )
    .inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event
            && std::mem::replace(&mut owned_listed, true)
        {
            relisted();
        }
    })
    // Each apply of ours comes back from the watch; the sync that made it already knew what it holds.
    .try_filter(move |event| futures::future::ready(!versions.secret_versions.apply(event)))
    .touched_objects();
    let (store_writer, cluster_store_writer) = ctx
        .store_cache_writers
        .lock()
        .expect("never poisoned")
        .take()
        .expect("the ExternalSecret controller runs once");
    // One task waits for the caches and tells every sync: kube's `Store::wait_until_ready` wakes only the
    // last task that waits on it, so syncs waiting there themselves stayed asleep.
    let (store_cache, cluster_store_cache) =
        (ctx.store_cache.clone(), ctx.cluster_store_cache.clone());
    let caches_ready = ctx.clone();
    tokio::spawn(async move {
        if store_cache.wait_until_ready().await.is_ok()
            && cluster_store_cache.wait_until_ready().await.is_ok()
        {
            caches_ready.secret_versions.listed().await;
            caches_ready.caches_ready.send_replace(true);
        }
    });
    let stores = crate::controller::watch_stream(stores, watcher::Config::default())
        .reflect(store_writer)
        .touched_objects()
        .predicate_filter(predicates::generation, Default::default());
    let cluster_stores = crate::controller::watch_stream(
        Api::<ClusterSecretStore>::all(client),
        watcher::Config::default(),
    )
    .reflect(cluster_store_writer)
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default());

    // A store change syncs every ExternalSecret that uses it again, fed as the controller gets through them
    // (the mappers hand nothing to the controller directly).
    let (store_changes, cluster_store_changes) = (ctx.clone(), ctx.clone());
    let (by_store, by_cluster_store) = (reader.clone(), reader.clone());
    let concurrency = ctx.concurrency;
    let refreshes = ctx.refreshes.clone().feed(ctx.resyncs.clone());
    let controller = Controller::for_stream(external_secrets, reader)
        .owns_stream(owned)
        .watches_stream(stores, move |store: SecretStore| {
            store_changes.store_changed(
                &by_store,
                StoreKind::SecretStore,
                &store.name_any(),
                store.namespace().as_deref(),
            );
            None
        })
        .watches_stream(cluster_stores, move |store: ClusterSecretStore| {
            cluster_store_changes.store_changed(
                &by_cluster_store,
                StoreKind::ClusterSecretStore,
                &store.name_any(),
                None,
            );
            None
        })
        // Rotations found by the version watches.
        .reconcile_on(woken)
        .reconcile_on(ctx.resyncs.clone().stream())
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(super::stopped(stopping))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    // The refreshes are fed for as long as the controller runs.
    tokio::select! {
        () = controller => {}
        () = refreshes => {}
    }
}

/// A failover region's answer replaces what the Secret holds only if that region knows the version the
/// Secret holds: replication is asynchronous, and a replica that does not know it lags behind, so its
/// version is older. Until it catches up (or the primary answers) the Secret stays as it is.
async fn replica_not_behind(
    es: &ExternalSecret,
    aws: &AwsSecretsManager,
    reads: &[(String, Version, RemoteSecret)],
) -> Result<()> {
    let synced = es.status.as_ref().map(|status| &status.synced_versions);
    for (key, version, secret) in reads {
        let (Some(region), Version::Stage(stage), Some(id)) =
            (&secret.replica, version, &secret.version_id)
        else {
            continue;
        };
        let synced_key = match stage.as_str() {
            Version::CURRENT => key.clone(),
            _ => format!("{key}@{stage}"),
        };
        let Some(held) = synced.and_then(|synced| synced.get(&synced_key)) else {
            continue;
        };
        if held != id && !aws.replica_holds(region, key, held).await? {
            return Err(Error::Unavailable {
                call: "GetSecretValue",
                key: Some(key.clone()),
                detail: format!(
                    "failover region {region} does not have the version the Secret holds yet (replication lags): the Secret is kept as it is"
                ),
            });
        }
    }
    Ok(())
}

/// A deletion must reach the finalizer even where it changes nothing else.
fn deleting(es: &ExternalSecret) -> Option<u64> {
    es.metadata.deletion_timestamp.as_ref().map(|_| 1)
}

impl Context {
    /// Syncs again the ExternalSecrets in `cache` that use the store. Not for the stores listed at start:
    /// everything is synced then anyway.
    fn store_changed(
        &self,
        cache: &Store<ExternalSecret>,
        kind: StoreKind,
        name: &str,
        namespace: Option<&str>,
    ) {
        if *self.caches_ready.borrow() {
            self.resyncs
                .request(referencing(cache, kind, name, namespace));
        }
    }
}

/// The ExternalSecrets that use a store.
fn referencing(
    cache: &Store<ExternalSecret>,
    kind: StoreKind,
    name: &str,
    namespace: Option<&str>,
) -> Vec<EsName> {
    cache
        .state()
        .iter()
        .filter(|es| {
            let reference = &es.spec.secret_store_ref;
            reference.kind == kind
                && reference.name == name
                && namespace.is_none_or(|ns| es.namespace().as_deref() == Some(ns))
        })
        .map(|es| EsName::of(es))
        .collect()
}

enum Synced {
    /// Nothing was due; check again after this long (never, for a sync-once ExternalSecret).
    UpToDate(Option<Duration>),
    Written {
        written: Written,
        versions: BTreeMap<String, String>,
        /// The data the workloads were restarted for (see `status.propagatedDataHash`).
        propagated: Option<String>,
        /// Until the next full refresh or restart retry (never, when `None`).
        wait: Option<Duration>,
        /// A full read (not a rotation served from kept values): the refresh schedule starts again.
        full_sync: bool,
    },
    /// Every remote secret is gone and `deletionPolicy` acted (or, with `Retain`, this is the error).
    Gone { cleanup: Cleanup, error: Error },
}

/// What `deletionPolicy` did to the Secret once every remote secret was gone.
enum Cleanup {
    Deleted,
    KeysRemoved(Written),
    /// Nothing was there to act on.
    Nothing,
}

/// ExternalSecrets that merge into someone else's Secret take their keys out of it when deleted; the others'
/// Secrets are deleted with them (Owner) or kept on purpose (Orphan, None), so they need no finalizer.
async fn reconcile(es: Arc<ExternalSecret>, ctx: Arc<Context>) -> Result<Action> {
    let name = EsName::of(&es);
    let result = reconcile_object(es, ctx.clone()).await;
    ctx.resyncs.finished(&name);
    result
}

async fn reconcile_object(es: Arc<ExternalSecret>, ctx: Arc<Context>) -> Result<Action> {
    let merges = es.spec.target.creation_policy == CreationPolicy::Merge;
    if !merges && !es.finalizers().iter().any(|f| f == FINALIZER) {
        return reconcile_apply(es, ctx).await;
    }
    let api: Api<ExternalSecret> =
        Api::namespaced(ctx.client.clone(), &es.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, es, |event| async {
        match event {
            FinalizerEvent::Apply(es) => reconcile_apply(es, ctx).await,
            FinalizerEvent::Cleanup(es) => remove_merged_keys(&es, &ctx).await,
        }
    })
    .await
    .map_err(|err| match err {
        finalizer::Error::ApplyFailed(err) | finalizer::Error::CleanupFailed(err) => err,
        finalizer::Error::AddFinalizer(err) | finalizer::Error::RemoveFinalizer(err) => {
            Error::from(err)
        }
        other => Error::InvalidSpec(other.to_string()),
    })
}

/// The ExternalSecret is being deleted: with `creationPolicy: Merge`, the keys, labels and annotations it
/// wrote leave the Secret; what others wrote stays.
async fn remove_merged_keys(es: &ExternalSecret, ctx: &Context) -> Result<Action> {
    let namespace = es.namespace().unwrap_or_default();
    ctx.forget(es);
    if es.spec.target.creation_policy != CreationPolicy::Merge {
        return Ok(Action::await_change());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(existing) = secrets.get_opt(es.target_name()).await?
        && target::remove_our_keys(&secrets, es, &ctx.hasher, &existing).await?
            != Written::Unchanged
    {
        publish(
            ctx,
            es,
            EventType::Normal,
            "Delete",
            "Deleted",
            format!(
                "Removed our keys from Secret {:?}: the ExternalSecret is deleted",
                es.target_name()
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

async fn reconcile_apply(es: Arc<ExternalSecret>, ctx: Arc<Context>) -> Result<Action> {
    let _in_flight = ctx.metrics.reconcile_started(CONTROLLER);
    let started = Instant::now();
    let namespace = es.namespace().unwrap_or_default();
    let refresh = es.spec.refresh_interval().ok().flatten();
    let result = tokio::time::timeout(RECONCILE_DEADLINE, sync(&es, &ctx, &namespace))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Provider {
                call: "sync",
                key: None,
                detail: format!("did not finish within {}s", RECONCILE_DEADLINE.as_secs()),
            })
        });
    ctx.metrics
        .reconcile_duration(CONTROLLER, started.elapsed().as_secs_f64());
    let action = match result {
        Ok(Synced::UpToDate(wait)) => Ok(sync_again(&ctx, &es, wait)),
        Ok(Synced::Written {
            written,
            versions,
            propagated,
            wait,
            full_sync,
        }) => {
            ctx.metrics.sync(&namespace, &es.name_any(), true);
            record_success(&es, &ctx, &namespace, written, versions, propagated.clone()).await?;
            if let Some(propagated) = &propagated {
                ctx.set_propagated(&key(&es), propagated);
            }
            // Only once the status says so: a sync whose status write failed is not done.
            if full_sync {
                ctx.synced(&key(&es), synced_resource_version(&es));
                ctx.first_syncs.done(&es);
            }
            Ok(sync_again(&ctx, &es, wait))
        }
        Ok(Synced::Gone { cleanup, error }) => {
            ctx.metrics.sync(&namespace, &es.name_any(), false);
            record_gone(&es, &ctx, &namespace, cleanup, &error).await?;
            Ok(sync_again(&ctx, &es, next_refresh(&es, refresh)))
        }
        Err(err) => {
            ctx.forget_sync(&key(&es));
            // A store it may no longer use (a ClusterSecretStore whose conditions stopped admitting the
            // namespace, a deleted store) must not keep checking and waking it.
            if matches!(
                err,
                Error::StoreNotAllowed { .. } | Error::StoreNotFound { .. }
            ) {
                ctx.watches.forget(&EsName::of(&es));
            }
            ctx.metrics.sync(&namespace, &es.name_any(), false);
            record_failure(&es, &ctx, &namespace, &err).await?;
            if err.is_transient() {
                return Err(err);
            }
            Ok(sync_again(
                &ctx,
                &es,
                Some(refresh.map_or(PERMANENT_RETRY, |r| r.min(PERMANENT_RETRY))),
            ))
        }
    };
    ctx.backoff.reset(&key(&es));
    action
}

/// Only `Periodic` comes back by itself; the other policies wait for a change.
fn next_refresh(es: &ExternalSecret, refresh: Option<Duration>) -> Option<Duration> {
    match es.spec.refresh_policy {
        RefreshPolicy::Periodic => refresh,
        RefreshPolicy::OnChange | RefreshPolicy::CreatedOnce => None,
    }
}

fn error_policy(es: Arc<ExternalSecret>, _err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff.next(&key(&es)))
}

impl Context {
    /// Drops everything this process keeps for an ExternalSecret that is gone.
    fn forget(&self, es: &ExternalSecret) {
        self.metrics
            .forget_external_secret(&es.namespace().unwrap_or_default(), &es.name_any());
        self.forget_kept(&key(es));
        self.backoff.reset(&key(es));
        let name = EsName::of(es);
        self.watches.forget(&name);
        self.refreshes.schedule(name, None);
        self.first_syncs.done(es);
    }
}

impl Context {
    /// Drops what is kept for ExternalSecrets that are not in `current`, after a relist that may have missed
    /// their deletion.
    fn forget_all_but(&self, current: &Store<ExternalSecret>) {
        let current = current.state();
        let live: HashSet<EsName> = current.iter().map(|es| EsName::of(es)).collect();
        let keys: HashSet<String> = current.iter().map(|es| key(es)).collect();
        self.retain(|key| keys.contains(key));
        self.watches.retain(|es| live.contains(es));
        self.refreshes.retain(|es| live.contains(es));
        for (namespace, name) in self.metrics.external_secrets_with_series() {
            if !live.contains(&EsName::new(&namespace, &name)) {
                self.metrics.forget_external_secret(&namespace, &name);
            }
        }
    }
}

fn key(es: &ExternalSecret) -> String {
    format!(
        "ExternalSecret/{}/{}",
        es.metadata.namespace.as_deref().unwrap_or_default(),
        es.name_any()
    )
}

/// When it syncs again by itself, `None` for never: kept in `Refreshes`, not the controller's scheduler.
fn sync_again(ctx: &Context, es: &ExternalSecret, after: Option<Duration>) -> Action {
    ctx.refreshes.schedule(EsName::of(es), after);
    Action::await_change()
}

async fn sync(es: &ExternalSecret, ctx: &Context, namespace: &str) -> Result<Synced> {
    let refresh = es.spec.refresh_interval().map_err(|err| {
        Error::InvalidSpec(format!(
            "refreshInterval {:?}: {err}",
            es.spec.refresh_interval
        ))
    })?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    ctx.caches_listed().await;
    // Read only when it may have changed since our last apply: a quiet refresh asks the API server nothing.
    let creation = es.spec.target.creation_policy;
    let existing = match ctx.unchanged_since_applied(es) {
        Some(applied) => Target::AsApplied(applied),
        // A first sync, usually: create the Secret without reading first (see `target::create`).
        None if matches!(creation, CreationPolicy::Owner | CreationPolicy::Orphan)
            && ctx.manages_no_secret(namespace, es.target_name()) =>
        {
            Target::Unseen
        }
        None => Target::Read(secrets.get_opt(es.target_name()).await?.map(Box::new)),
    };
    let intact = match (creation, &existing) {
        (_, Target::AsApplied(_)) => true,
        (_, Target::Unseen) => false,
        (CreationPolicy::Owner | CreationPolicy::Orphan, Target::Read(Some(existing))) => {
            target::ensure_owned(existing, es)?;
            target::is_intact(existing, es, &ctx.hasher)
        }
        (CreationPolicy::Owner | CreationPolicy::Orphan, Target::Read(None)) => false,
        // Someone else's Secret: its content is theirs to change, so only the refresh schedule counts.
        (CreationPolicy::Merge | CreationPolicy::None, Target::Read(_)) => true,
    };
    if creation == CreationPolicy::Merge && matches!(existing, Target::Read(None)) {
        return Err(Error::SecretMissing(es.target_name().to_string()));
    }
    // This process's own record first: the cached status can lag behind our last status write.
    let mut propagated = ctx.propagated(&key(es)).or_else(|| {
        es.status
            .as_ref()
            .and_then(|status| status.propagated_data_hash.clone())
    });
    // Restarts still owed for data written before (they failed, or the operator stopped in between): the
    // Secret holds our data, and it is not what the workloads were last restarted for.
    let mut restarts_owed = false;
    let current = match &existing {
        Target::AsApplied(applied) => Some(applied.data_hash.to_string()),
        Target::Unseen => None,
        Target::Read(existing) => existing
            .as_ref()
            .map(|existing| target::our_data_hash(existing, es, &ctx.hasher)),
    };
    if let (Some(current), Some(previous), true) = (current, &propagated, intact)
        && creation != CreationPolicy::None
        && &current != previous
    {
        if restart_workloads(es, ctx, namespace, &current, &[]).await {
            record_propagated(es, ctx, namespace, &current).await?;
            ctx.set_propagated(&key(es), &current);
            propagated = Some(current);
        } else {
            restarts_owed = true;
        }
    }
    let name = EsName::of(es);
    // Between full refreshes, only a rotation the version watches found is a reason to write.
    let mut rotated = None;
    let store = resolve_store(es, ctx, namespace).await?;
    let resumed = (Watches::check_of(&store.spec).ok().flatten().is_some()
        && fetch::versioned_only(&es.spec))
    .then_some(ctx.started);
    if intact && let Some(wait) = refresh_wait(es, refresh, ctx.last_sync(&key(es)), resumed) {
        let registered = ctx.watches.registered_store(&name);
        if registered.is_none() {
            watch_from_status(es, ctx, &store).await;
        }
        // A changed store (credentials, region, version check) is read from again in full.
        if registered.is_none_or(|registered| registered == store.version()) {
            if !ctx.watches.stale(&name) {
                return Ok(Synced::UpToDate(owed_soon(wait, restarts_owed)));
            }
            rotated = Some(wait);
        }
    }

    let provider = ctx.stores.provider(&store.spec, &store.scope()).await?;
    let check = Watches::check_of(&store.spec)?;
    let read_at = Instant::now();
    // A rotation, or a first sync, takes what the version watch keeps: a first sync of N ExternalSecrets
    // over R secrets reads each secret once, not N times. What is kept is as current as the watch's last
    // check, and a rotation since then reaches this ExternalSecret by the next one. Refreshes read in full.
    let first_sync = es
        .status
        .as_ref()
        .is_none_or(|status| status.refresh_time.is_none());
    let outcome = match (rotated.is_some() || first_sync, &provider, &check) {
        (true, Provider::Aws(aws), Some(check)) => {
            let kept = KeptFirst {
                provider: &provider,
                kept: ctx.watches.kept(aws, check),
                upcoming: first_sync.then(|| ctx.first_syncs.after(es, &ctx.watches, aws, check)),
            };
            fetch::fetch(&es.spec, &kept).await?
        }
        _ => fetch::fetch(&es.spec, &provider).await?,
    };
    let fetched = match outcome {
        Outcome::Fetched(fetched) => fetched,
        Outcome::Gone(error) => {
            let existing = existing.read(&secrets, es).await?;
            let cleanup = clean_up(es, ctx, &secrets, existing.as_ref()).await?;
            ctx.forget_sync(&key(es));
            return Ok(Synced::Gone { cleanup, error });
        }
    };
    if let (Provider::Aws(aws), Some(check)) = (&provider, &check)
        && let Some((key, _, _)) = fetched.reads.iter().find(|(key, version, secret)| {
            matches!(version, Version::Stage(_))
                && secret
                    .version_id
                    .as_deref()
                    .is_some_and(|id| ctx.watches.superseded(aws, check, key, id))
        })
    {
        // Never write an older version than the Secret may hold: read again after a backoff.
        return Err(Error::Provider {
            call: "GetSecretValue",
            key: Some(key.clone()),
            detail: "AWS answered with a version that was already replaced (eventual consistency)"
                .into(),
        });
    }
    if let Provider::Aws(aws) = &provider {
        replica_not_behind(es, aws, &fetched.reads).await?;
    }
    let reads = fetched
        .reads
        .into_iter()
        .filter_map(|(key, version, secret)| {
            Some(Read {
                key,
                version,
                version_id: secret.version_id.clone()?,
                at: secret.read_at.unwrap_or(read_at),
                secret: Some(secret),
            })
        })
        .collect();
    let rendered = render(es, ctx, namespace, fetched.data).await?;
    let data_hash = target::rendered_hash(&ctx.hasher, &rendered);
    let written = match (target::desired(es, rendered, &ctx.hasher)?, existing) {
        (None, _) => Written::Unchanged,
        // Listed after a restart and not applied since: a refresh reads it once (see `Applied::confirmed`).
        (Some(desired), Target::AsApplied(applied))
            if applied.confirmed && desired.same_as(&applied) =>
        {
            Written::Unchanged
        }
        (Some(desired), existing) => {
            let created = match existing {
                Target::Unseen => target::create(&secrets, es, &desired).await?,
                _ => None,
            };
            let (written, applied) = match created {
                Some(created) => created,
                // There was one after all: judged as if read in the first place.
                None => {
                    let before = existing.read(&secrets, es).await?;
                    if let Some(before) = &before
                        && matches!(creation, CreationPolicy::Owner | CreationPolicy::Orphan)
                    {
                        target::ensure_owned(before, es)?;
                    }
                    target::write(&secrets, es, desired, before.as_ref()).await?
                }
            };
            ctx.set_applied(es, applied);
            written
        }
    };
    match (&provider, check) {
        (Provider::Aws(aws), Some(check)) => {
            ctx.watches.register(name.clone(), aws, check, store, reads)
        }
        _ => ctx.watches.forget(&name),
    }
    let propagated = match written {
        // A new Secret: pods that use it read it when they start.
        Written::Created => Some(data_hash),
        Written::Updated { data_changed: true } => {
            if propagate(es, ctx, namespace, &name, rotated.is_some(), &data_hash).await {
                Some(data_hash)
            } else {
                restarts_owed = true;
                propagated
            }
        }
        // First sync since the field exists: what is there now is what the workloads have.
        _ => propagated.or(Some(data_hash)),
    };
    let wait = rotated.unwrap_or_else(|| next_refresh(es, refresh));
    Ok(Synced::Written {
        written,
        versions: fetched.versions,
        propagated,
        wait: owed_soon(wait, restarts_owed),
        full_sync: rotated.is_none(),
    })
}

/// The target Secret as a sync knows it.
enum Target {
    /// Written by nothing but our last apply since: it holds what we applied.
    AsApplied(Applied),
    /// As just read; `None` when there is none.
    Read(Option<Box<Secret>>),
    /// Not among the Secrets we manage, and not read.
    Unseen,
}

impl Target {
    /// The Secret itself, read now if only its version was known.
    async fn read(self, secrets: &Api<Secret>, es: &ExternalSecret) -> Result<Option<Secret>> {
        match self {
            Target::AsApplied(_) | Target::Unseen => Ok(secrets.get_opt(es.target_name()).await?),
            Target::Read(existing) => Ok(existing.map(|existing| *existing)),
        }
    }
}

/// Restarts that failed are tried again soon, whatever the refresh schedule.
fn owed_soon(wait: Option<Duration>, restarts_owed: bool) -> Option<Duration> {
    match (wait, restarts_owed) {
        (wait, false) => wait,
        (Some(wait), true) => Some(wait.min(RESTART_RETRY)),
        (None, true) => Some(RESTART_RETRY),
    }
}

/// After the Secret's data changed: restarts the workloads that asked for it, and measures how long a
/// rotation took to get here. Whether every restart happened.
async fn propagate(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    name: &EsName,
    rotated: bool,
    data_hash: &str,
) -> bool {
    let detections = if rotated {
        ctx.watches.detections(name)
    } else {
        Vec::new()
    };
    observe_propagation(ctx, &detections, "secret_written");
    restart_workloads(es, ctx, namespace, data_hash, &detections).await
}

/// Restarts the workloads using the Secret that were not restarted for `data_hash` yet; whether all were.
/// A failure is reported, and the restart stays owed (`status.propagatedDataHash` is not moved on), so it is
/// tried again, also by another replica or after a crash.
async fn restart_workloads(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    data_hash: &str,
    detections: &[Detection],
) -> bool {
    let restarts = restart::restart_users(ctx, es, namespace, es.target_name(), data_hash).await;
    if restarts.restarted > 0 {
        observe_propagation(ctx, detections, "restart_triggered");
    }
    let Some(err) = restarts.error else {
        return true;
    };
    publish(
        ctx,
        es,
        EventType::Warning,
        "Restart",
        "RestartFailed",
        format!(
            "could not restart {} using Secret {:?} (tried again in {}s): {err}",
            restarts
                .failed
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            es.target_name(),
            RESTART_RETRY.as_secs()
        ),
    )
    .await;
    false
}

fn observe_propagation(ctx: &Context, detections: &[Detection], until: &str) {
    for detection in detections {
        ctx.metrics
            .propagation("detection", until, detection.at.elapsed().as_secs_f64());
        if let Some(event_time) = detection.event_time {
            let since_event = Timestamp::now().duration_since(event_time);
            ctx.metrics
                .propagation("event", until, since_event.as_secs_f64().max(0.0));
        }
    }
}

/// The store an ExternalSecret names, from the watch caches. A SecretStore is looked up only in the
/// ExternalSecret's own namespace, so a store in another namespace is simply not found; a ClusterSecretStore
/// must allow the namespace. A store that appears later wakes the ExternalSecrets that name it.
async fn resolve_store(es: &ExternalSecret, ctx: &Context, namespace: &str) -> Result<StoreHandle> {
    let reference = &es.spec.secret_store_ref;
    let not_found = || Error::StoreNotFound {
        kind: reference.kind,
        name: reference.name.clone(),
        namespace: (reference.kind == StoreKind::SecretStore).then(|| namespace.to_string()),
    };
    let (spec, generation) = match reference.kind {
        StoreKind::SecretStore => {
            let store = ctx
                .store_cache
                .get(&ObjectRef::new(&reference.name).within(namespace))
                .ok_or_else(not_found)?;
            (store.spec.clone(), store.metadata.generation)
        }
        StoreKind::ClusterSecretStore => {
            let store = ctx
                .cluster_store_cache
                .get(&ObjectRef::new(&reference.name))
                .ok_or_else(not_found)?;
            ctx.stores.check_conditions(&store, namespace).await?;
            (store.spec.store.clone(), store.metadata.generation)
        }
    };
    Ok(StoreHandle {
        generation,
        kind: reference.kind,
        name: reference.name.clone(),
        store_namespace: (reference.kind == StoreKind::SecretStore).then(|| namespace.to_string()),
        requester_namespace: Some(namespace.to_string()),
        spec,
    })
}

/// After a restart of the operator: watches what the status says was written, so that a rotation is found
/// without reading every value again. Failures only mean no watch until the next full refresh.
async fn watch_from_status(es: &ExternalSecret, ctx: &Context, store: &StoreHandle) {
    let Some(status) = es.status.as_ref().filter(|s| !s.synced_versions.is_empty()) else {
        return;
    };
    let registered = async {
        let provider = ctx.stores.provider(&store.spec, &store.scope()).await?;
        if let (Provider::Aws(aws), Some(check)) = (&provider, Watches::check_of(&store.spec)?) {
            let reads = status
                .synced_versions
                .iter()
                .map(|(synced, id)| {
                    let (key, version) = synced_key(&es.spec, synced);
                    Read {
                        key,
                        version,
                        version_id: id.clone(),
                        secret: None,
                        at: Instant::now(),
                    }
                })
                .collect();
            ctx.watches
                .register(EsName::of(es), aws, check, store.clone(), reads);
        }
        Ok::<_, Error>(())
    };
    if let Err(err) = registered.await {
        tracing::debug!(error = %err, "no version watch until the next refresh");
    }
}

/// The key and version of a `status.syncedVersions` entry: `key` or `key@version`. A key that itself holds
/// an `@` is recognized by the spec naming it.
fn synced_key(spec: &ExternalSecretSpec, synced: &str) -> (String, Version) {
    let named = spec.remote_refs().any(|reference| reference.key == synced);
    match synced.rsplit_once('@') {
        Some((key, version)) if !named => (key.to_string(), Version::parse(Some(version))),
        _ => (synced.to_string(), Version::parse(None)),
    }
}

async fn clean_up(
    es: &ExternalSecret,
    ctx: &Context,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
) -> Result<Cleanup> {
    let Some(existing) = existing else {
        return Ok(Cleanup::Nothing);
    };
    Ok(match es.spec.target.deletion_policy {
        DeletionPolicy::Retain => Cleanup::Nothing,
        DeletionPolicy::Delete => {
            target::delete(secrets, es).await?;
            Cleanup::Deleted
        }
        DeletionPolicy::Merge => {
            Cleanup::KeysRemoved(target::remove_our_keys(secrets, es, &ctx.hasher, existing).await?)
        }
    })
}

/// The Secret's content: the fetched data as it is, or through the template.
async fn render(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    data: BTreeMap<String, Vec<u8>>,
) -> Result<Rendered> {
    let Some(secret_template) = &es.spec.target.template else {
        return Ok(Rendered {
            data,
            ..Default::default()
        });
    };
    let sources = template_sources(ctx, namespace, secret_template).await?;
    template::render(secret_template, &sources, data)
}

/// `Some(wait)` while the last sync is still good: it succeeded, for the current spec, labels and
/// annotations, and (for `Periodic`) is not yet due. This process's own record of it comes first; after a
/// restart, the status.
///
/// `resumed` is when this process started, for an ExternalSecret whose every read a version check covers: a
/// refresh that fell due while no process ran is spread over one interval from then, not fired at once with
/// every other, since that check finds whatever changed meanwhile.
fn refresh_wait(
    es: &ExternalSecret,
    refresh: Option<Duration>,
    last: Option<LastSync>,
    resumed: Option<Timestamp>,
) -> Option<Option<Duration>> {
    let current = synced_resource_version(es);
    let resumed = resumed.filter(|_| last.is_none());
    let (unchanged, last_at) = match last {
        Some(last) => (last.synced_resource_version == current, Some(last.at)),
        None => {
            let status = es.status.as_ref()?;
            if !is_ready(&status.conditions) {
                return None;
            }
            let unchanged = status.synced_resource_version.as_deref() == Some(&current);
            (unchanged, status.refresh_time.as_ref().map(|t| t.0))
        }
    };
    match es.spec.refresh_policy {
        RefreshPolicy::CreatedOnce => return Some(None),
        RefreshPolicy::OnChange => return unchanged.then_some(None),
        RefreshPolicy::Periodic if !unchanged => return None,
        RefreshPolicy::Periodic => {}
    }
    let Some(refresh) = refresh else {
        return Some(None);
    };
    let due = last_at?
        .checked_add(SignedDuration::try_from(refresh.mul_f64(1.0 - refresh_spread(es))).ok()?)
        .ok()?;
    let due = match resumed {
        Some(resumed) if due < resumed => resumed
            .checked_add(SignedDuration::try_from(refresh.mul_f64(resume_spread(es))).ok()?)
            .ok()?,
        _ => due,
    };
    let remaining = Timestamp::now().duration_until(due);
    remaining
        .is_positive()
        .then(|| Some(remaining.unsigned_abs()))
}

/// How much earlier than its interval an ExternalSecret refreshes: up to a tenth, fixed per object (from its
/// uid), so that ExternalSecrets synced together do not all refresh together, and none later than promised.
fn refresh_spread(es: &ExternalSecret) -> f64 {
    uid_fraction(es, 0) / 10.0
}

/// Where in the interval after a restart an overdue refresh falls, fixed per object.
fn resume_spread(es: &ExternalSecret) -> f64 {
    uid_fraction(es, 2)
}

/// A fraction in [0, 1] fixed per object: two bytes of its uid's digest from `at`.
fn uid_fraction(es: &ExternalSecret, at: usize) -> f64 {
    let digest = Sha256::digest(es.uid().unwrap_or_default());
    u16::from_be_bytes([digest[at], digest[at + 1]]) as f64 / f64::from(u16::MAX)
}

/// Changes when the spec, labels or annotations change (as External Secrets Operator computes it).
fn synced_resource_version(es: &ExternalSecret) -> String {
    let meta = serde_json::to_vec(&(es.labels(), es.annotations())).expect("string maps serialize");
    let digest = Sha256::digest(meta);
    let hash = hex::encode(&digest[..8]);
    format!("{}-{hash}", es.metadata.generation.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ExternalSecretStatus, ready_condition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn external_secret(policy: &str, ready: bool, synced_ago: Option<i64>) -> ExternalSecret {
        let mut es: ExternalSecret = serde_json::from_value(serde_json::json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": "es", "namespace": "ns", "generation": 2},
            "spec": {"secretStoreRef": {"name": "s"}, "refreshInterval": "1h", "refreshPolicy": policy},
        }))
        .unwrap();
        let srv = synced_resource_version(&es);
        es.status = Some(ExternalSecretStatus {
            conditions: vec![ready_condition(ready, "R", "m", Some(2))],
            refresh_time: synced_ago
                .map(|secs| Time(Timestamp::now() - SignedDuration::from_secs(secs))),
            synced_resource_version: Some(srv),
            ..Default::default()
        });
        es
    }

    const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

    #[test]
    fn periodic_waits_until_due() {
        let es = external_secret("Periodic", true, Some(600));
        let wait = refresh_wait(&es, HOUR, None, None).unwrap().unwrap();
        // Due within the last tenth of the hour, never after it.
        assert!(wait <= Duration::from_secs(3000) && wait > Duration::from_secs(2630));
        assert!(
            refresh_wait(
                &external_secret("Periodic", true, Some(4000)),
                HOUR,
                None,
                None
            )
            .is_none()
        );
        assert!(
            refresh_wait(
                &external_secret("Periodic", false, Some(600)),
                HOUR,
                None,
                None
            )
            .is_none()
        );
        assert_eq!(
            refresh_wait(&es, None, None, None),
            Some(None),
            "refreshInterval 0"
        );
    }

    #[test]
    fn refreshes_of_objects_synced_together_are_spread() {
        let waits: HashSet<u64> = (0..20)
            .map(|i| {
                let mut es = external_secret("Periodic", true, Some(0));
                es.metadata.uid = Some(format!("uid-{i}"));
                let wait = refresh_wait(&es, HOUR, None, None).unwrap().unwrap();
                assert!(wait <= Duration::from_secs(3600) && wait > Duration::from_secs(3230));
                wait.as_secs()
            })
            .collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[test]
    fn refreshes_overdue_at_a_restart_are_spread_over_the_interval() {
        let started = Timestamp::now();
        let waits: Vec<Duration> = (0..20)
            .map(|i| {
                let mut es = external_secret("Periodic", true, Some(3 * 3600));
                es.metadata.uid = Some(format!("uid-{i}"));
                assert!(
                    refresh_wait(&es, HOUR, None, None).is_none(),
                    "due at once without a version check"
                );
                refresh_wait(&es, HOUR, None, Some(started))
                    .unwrap_or(Some(Duration::ZERO))
                    .unwrap()
            })
            .collect();
        assert!(waits.iter().all(|wait| *wait <= Duration::from_secs(3600)));
        assert!(
            waits
                .iter()
                .filter(|wait| **wait > Duration::from_secs(1800))
                .count()
                >= 4,
            "{waits:?}"
        );
        // Not overdue: the schedule from the status stands.
        let es = external_secret("Periodic", true, Some(600));
        let resumed = refresh_wait(&es, HOUR, None, Some(started))
            .flatten()
            .unwrap();
        let scheduled = refresh_wait(&es, HOUR, None, None).flatten().unwrap();
        assert!(resumed.abs_diff(scheduled) < Duration::from_secs(1));
    }

    #[test]
    fn a_changed_spec_is_synced_at_once_except_created_once() {
        let mut es = external_secret("Periodic", true, Some(1));
        es.metadata.generation = Some(3);
        assert!(refresh_wait(&es, HOUR, None, None).is_none());
        es.spec.refresh_policy = RefreshPolicy::OnChange;
        assert!(refresh_wait(&es, HOUR, None, None).is_none());
        es.spec.refresh_policy = RefreshPolicy::CreatedOnce;
        assert_eq!(refresh_wait(&es, HOUR, None, None), Some(None));
    }

    #[test]
    fn on_change_never_comes_back_by_itself() {
        let es = external_secret("OnChange", true, Some(100_000));
        assert_eq!(refresh_wait(&es, HOUR, None, None), Some(None));
    }

    #[test]
    fn our_own_record_beats_a_lagging_status() {
        let mut es = external_secret("Periodic", true, None);
        es.status = None;
        let last = LastSync {
            at: Timestamp::now(),
            synced_resource_version: synced_resource_version(&es),
        };
        assert!(
            refresh_wait(&es, HOUR, Some(last.clone()), None)
                .unwrap()
                .is_some()
        );
        let stale = LastSync {
            synced_resource_version: "1-other".into(),
            ..last
        };
        assert!(refresh_wait(&es, HOUR, Some(stale), None).is_none());
    }
}
