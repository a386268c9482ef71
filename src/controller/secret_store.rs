//! The SecretStore and ClusterSecretStore controllers: check that a store's configuration and credentials
//! work, and say so in its Ready condition.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector;
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
    let metrics = ctx.metrics.clone();
    let stores = crate::controller::watch_stream(api, watcher::Config::default())
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(store)) = event {
                metrics.forget_store(store.namespace().as_deref(), &store.name_any());
            }
        })
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream(stores, reader)
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
    report(store.as_ref(), &ctx, ready, reason, message).await?;

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

/// Writes the Ready condition and an event, only when the condition changed.
async fn report<K: StoreObject>(
    store: &K,
    ctx: &Context,
    ready: bool,
    reason: &str,
    message: String,
) -> Result<()> {
    let mut status = store.status().cloned().unwrap_or_default();
    let generation = store.meta().generation;
    let unchanged = status.conditions.iter().any(|c| {
        c.type_ == READY
            && (c.status == "True") == ready
            && c.reason == reason
            && c.message == message
            && c.observed_generation == generation
    });
    if unchanged {
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
