//! The target Secret: the one place that reads and writes the Secrets an ExternalSecret produces, per its
//! `creationPolicy` and `deletionPolicy`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::api::{CreationPolicy, ExternalSecret};
use crate::data_hash::DataHasher;
use crate::error::{Error, Result};
use crate::template::Rendered;

pub const FIELD_MANAGER: &str = "secretsync";
pub const MANAGED_LABEL: &str = "secretsync.io/managed";
pub const DATA_HASH_ANNOTATION: &str = "secretsync.io/data-hash";
/// Names the ExternalSecret that wrote a Secret; with `creationPolicy: Orphan` it is the only owner mark.
pub const EXTERNAL_SECRET_ANNOTATION: &str = "secretsync.io/external-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    /// `data_changed` is false when only labels or annotations changed: nothing to restart for.
    Updated {
        data_changed: bool,
    },
    Unchanged,
}

/// Refuses a Secret of the target's name that this ExternalSecret did not create: one ExternalSecret must
/// never overwrite an unrelated Secret. Ours is controlled by this ExternalSecret (`Owner`), or carries no
/// controller and names it (`Orphan`).
pub fn ensure_owned(existing: &Secret, es: &ExternalSecret) -> Result<()> {
    let controller = existing
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true));
    let owned = match controller {
        Some(owner) => Some(&owner.uid) == es.metadata.uid.as_ref(),
        None => {
            existing.labels().get(MANAGED_LABEL).map(String::as_str) == Some("true")
                && existing.annotations().get(EXTERNAL_SECRET_ANNOTATION) == Some(&es.name_any())
        }
    };
    if owned {
        Ok(())
    } else {
        Err(Error::SecretConflict(existing.name_any()))
    }
}

/// Whether the Secret still holds what we wrote: managed label present and data matching our hash.
/// A hand-edited value (or annotation) fails this, since only we know the hash key.
pub fn is_intact(existing: &Secret, hasher: &DataHasher) -> bool {
    let empty = BTreeMap::new();
    let data = existing.data.as_ref().unwrap_or(&empty);
    existing.labels().get(MANAGED_LABEL).map(String::as_str) == Some("true")
        && existing.annotations().get(DATA_HASH_ANNOTATION) == Some(&hasher.hash(data))
}

/// Writes the Secret with server-side apply under our field manager. `Owner` and `Orphan` write the whole
/// Secret (`Owner` with a controller reference, so Kubernetes deletes it with the ExternalSecret); `Merge`
/// writes only our keys, labels and annotations into someone else's Secret. `before` is the Secret as read
/// just before.
pub async fn write(
    api: &Api<Secret>,
    es: &ExternalSecret,
    rendered: Rendered,
    hasher: &DataHasher,
    before: Option<&Secret>,
) -> Result<Written> {
    let data: BTreeMap<String, ByteString> = rendered
        .data
        .into_iter()
        .map(|(key, value)| (key, ByteString(value)))
        .collect();
    let target = &es.spec.target;
    let secret = match target.creation_policy {
        CreationPolicy::None => return Ok(Written::Unchanged),
        CreationPolicy::Merge => Secret {
            metadata: ObjectMeta {
                name: Some(es.target_name().to_string()),
                labels: Some(rendered.labels),
                annotations: Some(rendered.annotations),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        },
        CreationPolicy::Owner | CreationPolicy::Orphan => {
            let hash = hasher.hash(&data);
            if let Some(before) = before
                && before.immutable == Some(true)
                && before.annotations().get(DATA_HASH_ANNOTATION) != Some(&hash)
            {
                return Err(Error::ImmutableSecret(before.name_any()));
            }
            owned_secret(
                es,
                rendered.type_,
                rendered.labels,
                rendered.annotations,
                data,
                hash,
            )
        }
    };
    apply(api, es, &secret, before).await
}

fn owned_secret(
    es: &ExternalSecret,
    type_: Option<String>,
    mut labels: BTreeMap<String, String>,
    mut annotations: BTreeMap<String, String>,
    data: BTreeMap<String, ByteString>,
    hash: String,
) -> Secret {
    labels.insert(MANAGED_LABEL.to_string(), "true".to_string());
    annotations.insert(DATA_HASH_ANNOTATION.to_string(), hash);
    annotations.insert(EXTERNAL_SECRET_ANNOTATION.to_string(), es.name_any());
    let owner = match es.spec.target.creation_policy {
        CreationPolicy::Owner => es.controller_owner_ref(&()).map(|owner| vec![owner]),
        _ => None,
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(es.target_name().to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner,
            ..Default::default()
        },
        type_: Some(type_.unwrap_or_else(|| "Opaque".to_string())),
        immutable: es.spec.target.immutable.then_some(true),
        data: Some(data),
        ..Default::default()
    }
}

async fn apply(
    api: &Api<Secret>,
    es: &ExternalSecret,
    secret: &Secret,
    before: Option<&Secret>,
) -> Result<Written> {
    // Force: fields another manager set on our keys (a hand edit) are taken back.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api
        .patch(es.target_name(), &params, &Patch::Apply(secret))
        .await?;
    Ok(match before {
        None => Written::Created,
        Some(before) if before.resource_version() != after.resource_version() => Written::Updated {
            data_changed: before.data != after.data,
        },
        Some(_) => Written::Unchanged,
    })
}

/// `deletionPolicy: Merge`: takes the keys, labels and annotations we applied out of the Secret and leaves
/// everything else. Which ones are ours comes from our server-side-apply entry in `managedFields`; they are
/// removed with a merge patch, because an apply that drops them can take keys written through `stringData`
/// by others with them.
pub async fn remove_our_keys(
    api: &Api<Secret>,
    es: &ExternalSecret,
    hasher: &DataHasher,
    before: &Secret,
) -> Result<Written> {
    let ours = applied_fields(before);
    let removed = |section: &[&str]| -> serde_json::Map<String, serde_json::Value> {
        ours.iter()
            .filter(|(path, _)| path.as_slice() == section)
            .map(|(_, key)| (key.clone(), serde_json::Value::Null))
            .collect()
    };
    let mut data_removed = removed(&["data"]);
    let mut annotations = removed(&["metadata", "annotations"]);
    let mut labels = removed(&["metadata", "labels"]);
    if matches!(
        es.spec.target.creation_policy,
        CreationPolicy::Owner | CreationPolicy::Orphan
    ) {
        // Still ours: keep the marks and record the hash of what remains, so it reads as intact.
        let remaining: BTreeMap<String, ByteString> = before
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, _)| !data_removed.contains_key(key))
            .collect();
        annotations.insert(DATA_HASH_ANNOTATION.into(), hasher.hash(&remaining).into());
        annotations.remove(EXTERNAL_SECRET_ANNOTATION);
        labels.remove(MANAGED_LABEL);
    }
    if data_removed.is_empty() && annotations.is_empty() && labels.is_empty() {
        return Ok(Written::Unchanged);
    }
    let patch = serde_json::json!({
        "metadata": {"labels": labels, "annotations": annotations},
        "data": std::mem::take(&mut data_removed),
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    let after = api
        .patch(es.target_name(), &params, &Patch::Merge(&patch))
        .await?;
    Ok(if after.resource_version() == before.resource_version() {
        Written::Unchanged
    } else {
        Written::Updated { data_changed: true }
    })
}

/// The map entries our field manager applied, as (path of the map, key): `(["data"], "password")`.
fn applied_fields(secret: &Secret) -> Vec<(Vec<&'static str>, String)> {
    let entry = secret.managed_fields().iter().find(|entry| {
        entry.manager.as_deref() == Some(FIELD_MANAGER)
            && entry.operation.as_deref() == Some("Apply")
    });
    let Some(fields) = entry.and_then(|entry| entry.fields_v1.as_ref()) else {
        return Vec::new();
    };
    let sections: [(&[&'static str], &serde_json::Value); 3] = [
        (&["data"], &fields.0["f:data"]),
        (&["metadata", "labels"], &fields.0["f:metadata"]["f:labels"]),
        (
            &["metadata", "annotations"],
            &fields.0["f:metadata"]["f:annotations"],
        ),
    ];
    sections
        .into_iter()
        .flat_map(|(path, section)| {
            section
                .as_object()
                .into_iter()
                .flat_map(|map| map.keys())
                .filter_map(|key| key.strip_prefix("f:"))
                .map(move |key| (path.to_vec(), key.to_string()))
        })
        .collect()
}

/// `deletionPolicy: Delete`; only an owned Secret gets here (the CRD requires `creationPolicy: Owner`).
pub async fn delete(api: &Api<Secret>, es: &ExternalSecret) -> Result<()> {
    api.delete(es.target_name(), &DeleteParams::default())
        .await?;
    Ok(())
}
