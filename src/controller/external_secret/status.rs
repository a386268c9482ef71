//! What a sync leaves behind on the ExternalSecret: the Ready condition, the other status fields and events,
//! each written only when it changed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;

use super::{Cleanup, key, synced_resource_version};
use crate::api::{
    CreationPolicy, DeletionPolicy, ExternalSecret, ExternalSecretStatus, SecretBinding,
    ready_condition, set_condition,
};
use crate::controller::{Context, apply_status, publish};
use crate::error::{Error, Result};
use crate::target::Written;

/// Writes the status only when it changed: a refresh that found nothing new writes nothing.
pub(super) async fn record_success(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    written: Written,
    versions: BTreeMap<String, String>,
    propagated: Option<String>,
) -> Result<()> {
    let target = es.target_name().to_string();
    let old = es.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let (message, binding) = match es.spec.target.creation_policy {
        CreationPolicy::None => (
            "values read; creationPolicy None writes no Secret".to_string(),
            None,
        ),
        _ => (
            format!("Secret {target:?} is in sync"),
            Some(SecretBinding {
                name: target.clone(),
            }),
        ),
    };
    set_condition(
        &mut status.conditions,
        ready_condition(true, "SecretSynced", message, es.metadata.generation),
    );
    status.synced_resource_version = Some(synced_resource_version(es));
    status.binding = binding;
    status.synced_versions = versions.into();
    status.propagated_data_hash = propagated;
    ctx.metrics
        .external_secret_ready(namespace, &es.name_any(), None);
    let changed = status != old || written != Written::Unchanged;
    let event = match written {
        Written::Created => Some(("Created", format!("Created Secret {target:?}"))),
        Written::Updated { .. } => Some(("Updated", format!("Updated Secret {target:?}"))),
        Written::Unchanged => None,
    };
    // The event reports the Secret written, which stands whatever the status write does: the two go to the
    // API server together, so a sync waits for one round trip, not two (a first sync makes both for each
    // ExternalSecret).
    let status_written = async {
        if changed {
            status.refresh_time = Some(Time(Timestamp::now()));
            patch_status(ctx, es, namespace, &status).await?;
        }
        Ok(())
    };
    let published = async {
        if let Some((reason, note)) = event {
            publish(ctx, es, EventType::Normal, "Sync", reason, note).await;
        }
    };
    let (status_written, ()) = tokio::join!(status_written, published);
    status_written
}

/// Every remote secret is gone: with `Delete` or `Merge` the Secret was cleaned up (`SecretDeleted`);
/// with `Retain` it is kept and the error reported.
pub(super) async fn record_gone(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    cleanup: Cleanup,
    error: &Error,
) -> Result<()> {
    let target = es.target_name();
    let policy = es.spec.target.deletion_policy;
    let (reason, message) = match policy {
        DeletionPolicy::Retain => return record_failure(es, ctx, namespace, error).await,
        DeletionPolicy::Delete => (
            "SecretDeleted",
            format!(
                "every remote secret is gone ({error}); Secret {target:?} deleted (deletionPolicy Delete)"
            ),
        ),
        DeletionPolicy::Merge => (
            "SecretDeleted",
            format!(
                "every remote secret is gone ({error}); our keys removed from Secret {target:?} (deletionPolicy Merge)"
            ),
        ),
    };
    ctx.metrics
        .external_secret_ready(namespace, &es.name_any(), Some(reason));
    let mut status = es.status.clone().unwrap_or_default();
    let old = status.clone();
    set_condition(
        &mut status.conditions,
        ready_condition(false, reason, message, es.metadata.generation),
    );
    status.synced_versions.clear();
    if status != old {
        status.refresh_time = Some(Time(Timestamp::now()));
        patch_status(ctx, es, namespace, &status).await?;
    }
    let note = match cleanup {
        Cleanup::Deleted => Some(format!(
            "Deleted Secret {target:?}: every remote secret is gone"
        )),
        Cleanup::KeysRemoved(Written::Unchanged) | Cleanup::Nothing => None,
        Cleanup::KeysRemoved(_) => Some(format!(
            "Removed our keys from Secret {target:?}: every remote secret is gone"
        )),
    };
    if let Some(note) = note {
        publish(ctx, es, EventType::Normal, "Sync", "Deleted", note).await;
    }
    Ok(())
}

/// Sets Ready=False and emits a warning event, once per distinct failure: a repeated error writes nothing.
/// The message starts with the error's class (`RemoteKeyNotFound: ...`).
pub(super) async fn record_failure(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    err: &Error,
) -> Result<()> {
    tracing::warn!(externalsecret = %key(es), reason = err.reason(), error = %err, "sync failed");
    ctx.metrics
        .external_secret_ready(namespace, &es.name_any(), Some(err.reason()));
    let mut status = es.status.clone().unwrap_or_default();
    let old = status.clone();
    let message = format!("{}: {err}", err.reason());
    set_condition(
        &mut status.conditions,
        ready_condition(
            false,
            err.condition_reason(),
            message.clone(),
            es.metadata.generation,
        ),
    );
    if status == old {
        return Ok(());
    }
    patch_status(ctx, es, namespace, &status).await?;
    publish(
        ctx,
        es,
        EventType::Warning,
        "Sync",
        err.event_reason(),
        message,
    )
    .await;
    Ok(())
}

/// The workloads have had their restarts for `data_hash`: nothing is owed any more. Only that field is
/// written: the rest of the cached status may be older than what the last sync wrote.
pub(super) async fn record_propagated(
    es: &ExternalSecret,
    ctx: &Context,
    namespace: &str,
    data_hash: &str,
) -> Result<()> {
    let patch = serde_json::json!({"status": {"propagatedDataHash": data_hash}});
    Api::<ExternalSecret>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &es.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
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
