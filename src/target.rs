//! The target Secret: the one place that reads and writes the Secrets an ExternalSecret produces, per its
//! `creationPolicy` and `deletionPolicy`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::api::{CreationPolicy, ExternalSecret};
use crate::data_hash::{DataHasher, HashBytes};
use crate::error::{Error, MAX_SECRET_BYTES, Result};
use crate::template::Rendered;
use sha2::{Digest, Sha256};

/// The field manager of everything but target Secrets (status, restarts, the hash key).
pub const FIELD_MANAGER: &str = "secretsync";
/// The one manager every ExternalSecret shared for Secrets before each had its own: its entries are taken over.
const LEGACY_SECRET_MANAGER: &str = FIELD_MANAGER;
/// Kubernetes refuses longer field manager names.
const MAX_MANAGER_LEN: usize = 128;
pub const MANAGED_LABEL: &str = "secretsync.io/managed";
pub const DATA_HASH_ANNOTATION: &str = "secretsync.io/data-hash";
/// Names the ExternalSecret that wrote a Secret; with `creationPolicy: Orphan` it is the only owner mark.
pub const EXTERNAL_SECRET_ANNOTATION: &str = "secretsync.io/external-secret";
/// Keyed hash of the whole Secret as last applied (all but this annotation): after a restart, the watch of
/// our Secrets' metadata tells what each holds without reading it.
const APPLIED_HASH_ANNOTATION: &str = "secretsync.io/applied-hash";

/// The field manager of one ExternalSecret's writes to its Secret. Each ExternalSecret has its own, so that
/// under server-side apply two ExternalSecrets writing one Secret (Merge + Merge, Owner + Merge) own only their
/// own keys and never remove each other's. The Secret is in the ExternalSecret's namespace, so the name is
/// enough; a name too long for a manager is cut and made unique by a digest.
pub fn field_manager(es: &ExternalSecret) -> String {
    field_manager_of(&es.name_any())
}

fn field_manager_of(external_secret: &str) -> String {
    let manager = format!("secretsync/{external_secret}");
    if manager.len() <= MAX_MANAGER_LEN {
        return manager;
    }
    let digest = Sha256::digest(manager.as_bytes());
    let suffix = hex::encode(&digest[..8]);
    format!(
        "{}-{suffix}",
        &manager[..MAX_MANAGER_LEN - suffix.len() - 1]
    )
}

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

/// The keyed hash of what a template or the fetched data produced, as `our_data_hash` reads it back.
pub fn rendered_hash(hasher: &DataHasher, rendered: &Rendered) -> String {
    let data: BTreeMap<String, ByteString> = rendered
        .data
        .iter()
        .map(|(key, value)| (key.clone(), ByteString(value.clone())))
        .collect();
    hasher.hash(&data)
}

/// The keyed hash of the keys this ExternalSecret's field manager holds in the Secret.
pub fn our_data_hash(existing: &Secret, es: &ExternalSecret, hasher: &DataHasher) -> String {
    let manager = field_manager(es);
    let ours: BTreeSet<String> = applied_fields(existing, &manager)
        .into_iter()
        .filter(|(path, _)| path.as_slice() == ["data"])
        .map(|(_, key)| key)
        .collect();
    let data: BTreeMap<String, ByteString> = existing
        .data
        .iter()
        .flatten()
        .filter(|(key, _)| ours.contains(*key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    hasher.hash(&data)
}

/// Whether the Secret still holds what we wrote: managed label present and our keys' data matching our hash.
/// A hand-edited value (or annotation) fails this, since only we know the hash key; keys that a Merge
/// ExternalSecret added under its own manager are not ours and do not count.
pub fn is_intact(existing: &Secret, es: &ExternalSecret, hasher: &DataHasher) -> bool {
    existing.labels().get(MANAGED_LABEL).map(String::as_str) == Some("true")
        && existing.annotations().get(DATA_HASH_ANNOTATION)
            == Some(&our_data_hash(existing, es, hasher))
}

/// The Secret an ExternalSecret writes, ready to apply.
pub struct Desired {
    secret: Secret,
    /// Keyed hash of the whole object (labels, annotations, type, owner, data): equal digests, equal applies.
    digest: HashBytes,
    /// Keyed hash of its data, as `our_data_hash` reads it back once applied.
    data_hash: HashBytes,
}

impl Desired {
    /// Whether applying it again over what `applied` left would change nothing.
    pub fn same_as(&self, applied: &Applied) -> bool {
        self.digest == applied.digest
    }
}

/// What our last apply left in a Secret, and the resourceVersion that came back: while the Secret is still
/// at that version it holds exactly that, so a sync need neither read it nor apply the same again.
#[derive(Clone)]
pub struct Applied {
    pub resource_version: String,
    digest: HashBytes,
    /// Keyed hash of our keys' data (see `our_data_hash`).
    pub data_hash: HashBytes,
    /// The ExternalSecret that applied it, when not the one of the Secret's name.
    written_by: Option<Box<str>>,
    /// Whether this process's apply returned it. Otherwise a list of our Secrets' metadata showed it
    /// (`listed`): a change that left no trace there is undone at the next full refresh, which reads it.
    pub confirmed: bool,
}

impl Applied {
    fn new(resource_version: String, desired: &Desired, es: &ExternalSecret) -> Applied {
        let name = es.name_any();
        Applied {
            resource_version,
            digest: desired.digest,
            data_hash: desired.data_hash,
            written_by: (name != es.target_name()).then(|| name.into()),
            confirmed: true,
        }
    }

    /// Whether `es` applied it.
    pub fn written_by(&self, es: &ExternalSecret) -> bool {
        let name = es.name_any();
        match &self.written_by {
            Some(writer) => **writer == *name,
            None => name == es.target_name(),
        }
    }

    /// What a Secret listed from the API server holds, if our last apply is all that wrote it: it carries
    /// our marks, and no manager but its ExternalSecret's owns any of its fields.
    pub fn listed(meta: &ObjectMeta) -> Option<Applied> {
        let annotations = meta.annotations.as_ref()?;
        let writer = annotations.get(EXTERNAL_SECRET_ANNOTATION)?;
        let manager = field_manager_of(writer);
        let managers = meta.managed_fields.as_deref().unwrap_or_default();
        let ours = meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get(MANAGED_LABEL))
            .is_some_and(|managed| managed == "true");
        if !ours
            || managers.is_empty()
            || managers
                .iter()
                .any(|entry| entry.manager.as_deref() != Some(&manager))
        {
            return None;
        }
        Some(Applied {
            resource_version: meta.resource_version.clone()?,
            digest: HashBytes::from_hex(annotations.get(APPLIED_HASH_ANNOTATION)?)?,
            data_hash: HashBytes::from_hex(annotations.get(DATA_HASH_ANNOTATION)?)?,
            written_by: (Some(writer) != meta.name.as_ref()).then(|| writer.as_str().into()),
            confirmed: false,
        })
    }
}

/// The Secret to apply for the rendered data, `None` with `creationPolicy: None` (nothing is written).
/// `Owner` and `Orphan` write the whole Secret (`Owner` with a controller reference, so Kubernetes deletes it
/// with the ExternalSecret); `Merge` writes only our keys, labels and annotations into someone else's Secret.
pub fn desired(
    es: &ExternalSecret,
    rendered: Rendered,
    hasher: &DataHasher,
) -> Result<Option<Desired>> {
    let data: BTreeMap<String, ByteString> = rendered
        .data
        .into_iter()
        .map(|(key, value)| (key, ByteString(value)))
        .collect();
    let bytes: usize = data
        .iter()
        .map(|(key, value)| key.len() + value.0.len())
        .sum();
    if bytes > MAX_SECRET_BYTES {
        return Err(Error::SecretTooLarge {
            name: es.target_name().to_string(),
            bytes,
        });
    }
    let data_hash = hasher.hash_bytes(&data);
    let mut secret = match es.spec.target.creation_policy {
        CreationPolicy::None => return Ok(None),
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
        CreationPolicy::Owner | CreationPolicy::Orphan => owned_secret(
            es,
            rendered.type_,
            rendered.labels,
            rendered.annotations,
            data,
            data_hash.to_string(),
        ),
    };
    let serialized = serde_json::to_vec(&secret).expect("a Secret serializes");
    let digest = hasher.hash_bytes(&BTreeMap::from([(
        "secret".to_string(),
        ByteString(serialized),
    )]));
    // Someone else's Secret (Merge) is not among those we watch, and is read before each write anyway.
    if es.spec.target.creation_policy != CreationPolicy::Merge {
        secret
            .annotations_mut()
            .insert(APPLIED_HASH_ANNOTATION.to_string(), digest.to_string());
    }
    Ok(Some(Desired {
        secret,
        digest,
        data_hash,
    }))
}

/// Applies the Secret with server-side apply under our field manager. `before` is the Secret as read just
/// before.
pub async fn write(
    api: &Api<Secret>,
    es: &ExternalSecret,
    desired: Desired,
    before: Option<&Secret>,
) -> Result<(Written, Applied)> {
    if let Some(before) = before
        && es.spec.target.creation_policy != CreationPolicy::Merge
        && before.immutable == Some(true)
        && before
            .annotations()
            .get(DATA_HASH_ANNOTATION)
            .and_then(|hash| HashBytes::from_hex(hash))
            != Some(desired.data_hash)
    {
        return Err(Error::ImmutableSecret(before.name_any()));
    }
    let (written, after) = apply(api, es, &desired.secret, before).await?;
    let applied = Applied::new(after.resource_version().unwrap_or_default(), &desired, es);
    Ok((written, applied))
}

/// Creates the Secret if, and only if, none of its name exists: `None` when one does. A sync calls this
/// instead of reading first when its cache of our Secrets holds none of that name, which saves a request per
/// first sync; a Secret the cache cannot show (someone else's, or ours a moment ago) is then read and
/// judged as usual.
pub async fn create(
    api: &Api<Secret>,
    es: &ExternalSecret,
    desired: &Desired,
) -> Result<Option<(Written, Applied)>> {
    let mut secret = desired.secret.clone();
    // An apply that carries a resourceVersion creates the object when there is none, and otherwise fails
    // with a conflict, even when forced, unless the versions match. No Secret is at version 1: etcd's first
    // revision is written long before any Secret.
    secret.metadata.resource_version = Some("1".to_string());
    let params = PatchParams::apply(&field_manager(es)).force();
    match api
        .patch(es.target_name(), &params, &Patch::Apply(&secret))
        .await
    {
        Ok(after) => Ok(Some((
            Written::Created,
            Applied::new(after.resource_version().unwrap_or_default(), desired, es),
        ))),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(err) => Err(err.into()),
    }
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
) -> Result<(Written, Secret)> {
    // Force: fields another manager set on our keys (a hand edit) are taken back.
    let params = PatchParams::apply(&field_manager(es)).force();
    let after = api
        .patch(es.target_name(), &params, &Patch::Apply(secret))
        .await?;
    let written = match before {
        None => Written::Created,
        Some(before) if before.data != after.data => Written::Updated { data_changed: true },
        Some(before) if before.resource_version() != after.resource_version() => Written::Updated {
            data_changed: false,
        },
        Some(_) => Written::Unchanged,
    };
    let after = release_legacy_fields(api, after, &field_manager(es)).await?;
    Ok((written, after))
}

/// Takes over from the manager that every ExternalSecret shared before: what `manager` now owns is dropped
/// from the legacy entry, and the rest (another ExternalSecret's keys, not yet written under its own manager)
/// is applied again as it is, so that no key is lost. Once every writer has synced, the entry is gone.
async fn release_legacy_fields(api: &Api<Secret>, secret: Secret, manager: &str) -> Result<Secret> {
    if managed_entry(&secret, LEGACY_SECRET_MANAGER).is_none() {
        return Ok(secret);
    }
    let secret = &secret;
    let ours: BTreeSet<(Vec<&str>, String)> = applied_fields(secret, manager).into_iter().collect();
    let keep = |section: &[&str]| -> BTreeSet<String> {
        applied_fields(secret, LEGACY_SECRET_MANAGER)
            .into_iter()
            .filter(|(path, key)| {
                path.as_slice() == section && !ours.contains(&(path.clone(), key.clone()))
            })
            .map(|(_, key)| key)
            .collect()
    };
    // Empty maps are left out, so that a manager left with nothing has no entry at all.
    let pick = |map: Option<&BTreeMap<String, String>>, keys: BTreeSet<String>| {
        Some(
            map.into_iter()
                .flatten()
                .filter(|(key, _)| keys.contains(*key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
        .filter(|picked| !picked.is_empty())
    };
    let data_keys = keep(&["data"]);
    let legacy = manager_scalars(secret, LEGACY_SECRET_MANAGER);
    let ours_scalars = manager_scalars(secret, manager);
    let remaining = Secret {
        metadata: ObjectMeta {
            name: secret.metadata.name.clone(),
            labels: pick(
                secret.metadata.labels.as_ref(),
                keep(&["metadata", "labels"]),
            ),
            annotations: pick(
                secret.metadata.annotations.as_ref(),
                keep(&["metadata", "annotations"]),
            ),
            owner_references: (legacy.owner_references && !ours_scalars.owner_references)
                .then(|| secret.metadata.owner_references.clone())
                .flatten(),
            ..Default::default()
        },
        data: Some(
            secret
                .data
                .iter()
                .flatten()
                .filter(|(key, _)| data_keys.contains(*key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
        .filter(|data| !data.is_empty()),
        type_: (legacy.type_ && !ours_scalars.type_)
            .then(|| secret.type_.clone())
            .flatten(),
        immutable: (legacy.immutable && !ours_scalars.immutable)
            .then_some(secret.immutable)
            .flatten(),
        ..Default::default()
    };
    let params = PatchParams::apply(LEGACY_SECRET_MANAGER).force();
    Ok(api
        .patch(&secret.name_any(), &params, &Patch::Apply(&remaining))
        .await?)
}

/// Which of the Secret's single fields a manager's apply entry holds.
#[derive(Default)]
struct Scalars {
    owner_references: bool,
    type_: bool,
    immutable: bool,
}

fn manager_scalars(secret: &Secret, manager: &str) -> Scalars {
    let Some(fields) = managed_entry(secret, manager).and_then(|e| e.fields_v1.as_ref()) else {
        return Scalars::default();
    };
    Scalars {
        owner_references: fields.0["f:metadata"]["f:ownerReferences"].is_object(),
        type_: fields.0["f:type"].is_object(),
        immutable: fields.0["f:immutable"].is_object(),
    }
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
    let manager = field_manager(es);
    let ours = applied_fields(before, &manager);
    // A key that another ExternalSecret applies too is still wanted: it stays.
    let shared: BTreeSet<(Vec<&str>, String)> = before
        .managed_fields()
        .iter()
        .filter_map(|entry| entry.manager.as_deref())
        .filter(|other| *other != manager)
        .flat_map(|other| applied_fields(before, other))
        .collect();
    let removed = |section: &[&str]| -> serde_json::Map<String, serde_json::Value> {
        ours.iter()
            .filter(|field| !shared.contains(*field))
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
            .filter(|(key, _)| {
                ours.contains(&(vec!["data"], key.clone())) && !data_removed.contains_key(key)
            })
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
        field_manager: Some(manager),
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

fn managed_entry<'a>(secret: &'a Secret, manager: &str) -> Option<&'a ManagedFieldsEntry> {
    secret.managed_fields().iter().find(|entry| {
        entry.manager.as_deref() == Some(manager) && entry.operation.as_deref() == Some("Apply")
    })
}

/// The map entries a field manager applied, as (path of the map, key): `(["data"], "password")`.
fn applied_fields(secret: &Secret, manager: &str) -> Vec<(Vec<&'static str>, String)> {
    let entry = managed_entry(secret, manager);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn external_secret(name: &str, target: &str) -> ExternalSecret {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": name, "namespace": "ns", "uid": "u-1"},
            "spec": {"secretStoreRef": {"name": "s"}, "target": {"name": target}},
        }))
        .unwrap()
    }

    /// The metadata a list shows after `es` applied `desired`, with these managers' entries.
    fn listed(desired: &Desired, managers: &[String]) -> ObjectMeta {
        let mut meta = desired.secret.metadata.clone();
        meta.resource_version = Some("42".into());
        meta.managed_fields = Some(
            managers
                .iter()
                .map(|manager| ManagedFieldsEntry {
                    manager: Some(manager.clone()),
                    operation: Some("Apply".into()),
                    ..Default::default()
                })
                .collect(),
        );
        meta
    }

    #[test]
    fn a_listed_secret_that_only_its_external_secret_wrote_reads_as_applied() {
        let hasher = DataHasher::new(b"key".to_vec());
        let es = external_secret("app", "app-credentials");
        let rendered = Rendered {
            type_: None,
            data: BTreeMap::from([("password".to_string(), b"s3cret".to_vec())]),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        };
        let desired = desired(&es, rendered, &hasher).unwrap().unwrap();

        let applied = Applied::listed(&listed(&desired, &[field_manager(&es)])).unwrap();
        assert!(
            desired.same_as(&applied),
            "its hash survives the round trip"
        );
        assert_eq!(applied.data_hash, desired.data_hash);
        assert_eq!(applied.resource_version, "42");
        assert!(!applied.confirmed);
        assert!(applied.written_by(&es));
        assert!(!applied.written_by(&external_secret("other", "app-credentials")));

        let edited = listed(&desired, &[field_manager(&es), "kubectl-edit".into()]);
        assert!(Applied::listed(&edited).is_none(), "someone else wrote it");
        let mut unmanaged = listed(&desired, &[]);
        unmanaged.managed_fields = None;
        assert!(Applied::listed(&unmanaged).is_none());
    }
}
