//! The target Secret: the one place that reads and writes the Secrets an ExternalSecret produces.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::api::ExternalSecret;
use crate::data_hash::DataHasher;
use crate::error::{Error, Result};

pub const FIELD_MANAGER: &str = "secretsync";
pub const MANAGED_LABEL: &str = "secretsync.io/managed";
pub const DATA_HASH_ANNOTATION: &str = "secretsync.io/data-hash";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    Unchanged,
}

/// Refuses a Secret of the target's name that this ExternalSecret does not control: one ExternalSecret
/// must never overwrite an unrelated Secret.
pub fn ensure_owned(existing: &Secret, es: &ExternalSecret) -> Result<()> {
    let owned = existing.owner_references().iter().any(|owner| {
        owner.controller == Some(true) && Some(&owner.uid) == es.metadata.uid.as_ref()
    });
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

/// Writes the Secret with server-side apply under our field manager, owned by the ExternalSecret so that
/// Kubernetes garbage-collects it with its owner. `before` is the Secret as read just before.
pub async fn apply(
    api: &Api<Secret>,
    es: &ExternalSecret,
    data: BTreeMap<String, ByteString>,
    hasher: &DataHasher,
    before: Option<&Secret>,
) -> Result<Written> {
    let name = es.target_name().to_string();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(MANAGED_LABEL.to_string(), "true".to_string())].into()),
            annotations: Some([(DATA_HASH_ANNOTATION.to_string(), hasher.hash(&data))].into()),
            owner_references: es.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    };
    // Force: fields another manager set on our keys (a hand edit) are taken back.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api.patch(&name, &params, &Patch::Apply(&secret)).await?;
    Ok(match before {
        None => Written::Created,
        Some(before) if before.resource_version() != after.resource_version() => Written::Updated,
        Some(_) => Written::Unchanged,
    })
}
