//! The SecretStore and ClusterSecretStore controllers: check that a store's configuration and credentials
//! work, and say so in its Ready condition.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, predicates};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{Context, apply_status, publish};
use crate::api::{
    ClusterSecretStore, READY, SecretStore, SecretStoreSpec, SecretStoreStatus, StoreKind,
    ready_condition, set_condition,
};
use crate::error::{Error, Result};
use crate::provider::SecretProvider;
use crate::provider::aws::failover::StoreKey;
use crate::rotation::Watches;
use crate::store::{self, StoreScope};

trait StoreObject:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: StoreKind;
    fn spec(&self) -> &SecretStoreSpec;
    fn status(&self) -> Option<&SecretStoreStatus>;
    fn api(&self, client: kube::Client) -> Api<Self>;
}

impl StoreObject for SecretStore {
    const KIND: StoreKind = StoreKind::SecretStore;
    fn spec(&self) -> &SecretStoreSpec {
        &self.spec
    }
    fn status(&self) -> Option<&SecretStoreStatus> {
        self.status.as_ref()
    }
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
}

impl StoreObject for ClusterSecretStore {
    const KIND: StoreKind = StoreKind::ClusterSecretStore;
    fn spec(&self) -> &SecretStoreSpec {
        &self.spec.store
    }
    fn status(&self) -> Option<&SecretStoreStatus> {
        self.status.as_ref()
    }
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
}

pub async fn run_namespaced(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stopping: watch::Receiver<bool>,
) {
    let api = match namespace {
        Some(ns) => Api::<SecretStore>::namespaced(ctx.client.clone(), &ns),
        None => Api::all(ctx.client.clone()),
    };
    run(ctx, api, stopping).await
}

pub async fn run_cluster(ctx: Arc<Context>, stopping: watch::Receiver<bool>) {
    run(
        ctx.clone(),
        Api::<ClusterSecretStore>::all(ctx.client.clone()),
        stopping,
    )
    .await
}

async fn run<K: StoreObject>(ctx: Arc<Context>, api: Api<K>, stopping: watch::Receiver<bool>) {
    let (reader, writer) = reflector::store();
    // Status writes must not trigger another credentials check.
    let forget = ctx.clone();
    let stores = crate::controller::watch_stream(api, watcher::Config::default())
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(store)) = event {
                let namespace = store.namespace();
                forget
                    .metrics
                    .forget_store(namespace.as_deref(), &store.name_any());
                forget.stores.failovers.forget(&store_key(store));
            }
        })
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // A store whose serving region changed reports it at once.
    let switches = ctx
        .stores
        .failovers
        .switches(K::KIND)
        .expect("each store controller runs once")
        .map(|store| {
            let object = ObjectRef::<K>::new(&store.name);
            match &store.namespace {
                Some(namespace) => object.within(namespace),
                None => object,
            }
        });
    Controller::for_stream(stores, reader)
        .reconcile_on(switches)
        .graceful_shutdown_on(super::stopped(stopping))
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile<K: StoreObject>(store: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let controller = K::kind(&()).to_lowercase();
    let _in_flight = ctx.metrics.reconcile_started(&controller);
    let started = Instant::now();
    let namespace = store.namespace();
    let name = store.name_any();
    let scope = StoreScope {
        kind: K::KIND,
        name: &name,
        store_namespace: namespace.as_deref(),
        requester_namespace: None,
    };
    let result = check(&ctx, store.spec(), &scope).await;
    ctx.metrics
        .reconcile_duration(&controller, started.elapsed().as_secs_f64());
    let (ready, reason, message) = match &result {
        Ok(message) => (true, "Valid", message.clone()),
        Err(err) => (false, store_reason(err), err.to_string()),
    };
    ctx.metrics
        .store_ready(namespace.as_deref(), &store.name_any(), ready);
    let serving = store
        .spec()
        .provider
        .aws
        .as_ref()
        .filter(|aws| !aws.failover_regions.is_empty())
        .and_then(|_| ctx.stores.failovers.serving(&scope.store_key()));
    if let Some((region, _)) = &serving {
        ctx.metrics
            .store_serving_region(namespace.as_deref(), &name, region);
    }
    report(store.as_ref(), &ctx, ready, reason, message, serving).await?;

    let refresh = store
        .spec()
        .refresh_interval
        .filter(|secs| *secs > 0)
        .map_or(ctx.store_refresh, |secs| Duration::from_secs(secs.into()));
    match result {
        Err(err) if err.is_transient() => Err(err),
        _ => {
            ctx.backoff.reset(&key(store.as_ref()));
            Ok(Action::requeue(refresh))
        }
    }
}

fn error_policy<K: StoreObject>(store: Arc<K>, _err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff.next(&key(store.as_ref())))
}

fn store_key<K: StoreObject>(store: &K) -> StoreKey {
    StoreKey {
        kind: K::KIND,
        namespace: store.namespace(),
        name: store.name_any(),
    }
}

fn key<K: StoreObject>(store: &K) -> String {
    format!(
        "{}/{}/{}",
        K::KIND,
        store.namespace().unwrap_or_default(),
        store.name_any()
    )
}

/// A configuration mistake is `InvalidProviderConfig`; anything the provider said is `ValidationFailed`.
fn store_reason(err: &Error) -> &'static str {
    match err {
        Error::InvalidStoreConfig(_)
        | Error::CredentialsSecret { .. }
        | Error::ServiceAccountNotFound { .. }
        | Error::MissingRoleAnnotation { .. } => "InvalidProviderConfig",
        _ => "ValidationFailed",
    }
}

async fn check(ctx: &Context, spec: &SecretStoreSpec, scope: &StoreScope<'_>) -> Result<String> {
    Watches::check_of(spec)?;
    if store::depends_on_requester(spec, scope.kind) {
        return Ok(
            "the identity depends on each ExternalSecret's namespace (referent credentials or tagged role sessions) and is checked when it syncs"
                .into(),
        );
    }
    let identity = ctx.stores.provider(spec, scope).await?.validate().await?;
    Ok(format!("credentials valid for {identity}"))
}

/// Writes the Ready condition and the serving region, with an event for each change of either.
/// `serving`: with failover regions, the region that serves and why the primary does not.
async fn report<K: StoreObject>(
    store: &K,
    ctx: &Context,
    ready: bool,
    reason: &str,
    message: String,
    serving: Option<(String, Option<String>)>,
) -> Result<()> {
    let mut status = store.status().cloned().unwrap_or_default();
    let generation = store.meta().generation;
    let condition_unchanged = status.conditions.iter().any(|c| {
        c.type_ == READY
            && (c.status == "True") == ready
            && c.reason == reason
            && c.message == message
            && c.observed_generation == generation
    });
    let serving_region = serving.as_ref().map(|(region, _)| region.clone());
    let switched = status.serving_region != serving_region;
    if condition_unchanged && !switched {
        return Ok(());
    }
    let previous = std::mem::replace(&mut status.serving_region, serving_region);
    if switched && let Some((region, cause)) = &serving {
        // The first report names the primary: no switch to tell of.
        match (previous, cause) {
            (_, Some(cause)) => {
                tracing::warn!(store = %key(store), region, cause, "failed over");
                let note =
                    format!("reads and version checks go to failover region {region}: {cause}");
                publish(
                    ctx,
                    store,
                    EventType::Warning,
                    "Failover",
                    "FailedOver",
                    note,
                )
                .await;
            }
            (Some(previous), None) => {
                tracing::info!(store = %key(store), region, "back in the primary region");
                let note = format!(
                    "the primary region {region} answers again: reads and version checks are back there (from {previous})"
                );
                publish(
                    ctx,
                    store,
                    EventType::Normal,
                    "Failover",
                    "FailedBack",
                    note,
                )
                .await;
            }
            (None, None) => {}
        }
    }
    if condition_unchanged {
        apply_status(&store.api(ctx.client.clone()), store, &status).await?;
        return Ok(());
    }
    if !ready {
        tracing::warn!(store = %key(store), reason, error = %message, "store check failed");
    }
    set_condition(
        &mut status.conditions,
        ready_condition(ready, reason, message.clone(), generation),
    );
    apply_status(&store.api(ctx.client.clone()), store, &status).await?;
    let type_ = if ready {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(ctx, store, type_, "Validate", reason, message).await;
    Ok(())
}
