//! Reads everything an ExternalSecret names from its provider and assembles the Secret data before
//! templating: `dataFrom` entries in order, then `data`. Each remote secret version is read once.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

use crate::api::{DataFrom, ExternalSecretSpec, FindRef, MetadataPolicy, RemoteRef};
use crate::error::{Error, Result};
use crate::mapping::{self, keys};
use crate::provider::{RemoteSecret, RemoteValue, SecretProvider, Version};

/// The data read, the VersionId of each remote secret read (key, or `key@version` for a pinned one), and
/// the remote secrets themselves for the version watches.
#[derive(Default)]
pub struct Fetched {
    pub data: BTreeMap<String, Vec<u8>>,
    pub versions: BTreeMap<String, String>,
    pub reads: Vec<(String, Version, RemoteSecret)>,
}

// Keys and versions only: the values are secrets (`RemoteSecret` redacts its own).
impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("versions", &self.versions)
            .field("reads", &self.reads)
            .finish()
    }
}

pub enum Outcome {
    Fetched(Fetched),
    /// Every remote secret the ExternalSecret reads is gone: `deletionPolicy` decides what happens.
    Gone(Error),
}

pub async fn fetch(spec: &ExternalSecretSpec, provider: &impl SecretProvider) -> Result<Outcome> {
    let mut reader = Reader {
        provider,
        secrets: HashMap::new(),
        tags: HashMap::new(),
        failed: HashMap::new(),
        versions: BTreeMap::new(),
    };
    reader.read_current(current_keys(spec)).await?;
    let mut data = keys::KeySet::default();
    let mut missing = Vec::new();
    let mut empty_finds = Vec::new();
    for (index, entry) in spec.data_from.iter().enumerate() {
        match read_data_from(&mut reader, index, entry).await {
            Ok(entries) if entries.is_empty() && entry.find.is_some() => empty_finds.push(index),
            Ok(entries) => {
                for (key, (value, source)) in entries {
                    data.insert(key, value, source)?;
                }
            }
            Err(err @ Error::RemoteKeyNotFound { .. }) => missing.push(err),
            Err(err) => return Err(err),
        }
    }
    for (index, entry) in spec.data.iter().enumerate() {
        match reader.value(&entry.remote_ref).await {
            Ok(value) => data.insert(entry.secret_key.clone(), value, format!("data[{index}]"))?,
            Err(err @ Error::RemoteKeyNotFound { .. }) => missing.push(err),
            Err(err) => return Err(err),
        }
    }
    let sources = spec.data.len() + spec.data_from.len();
    if sources > 0 && missing.len() + empty_finds.len() == sources {
        let err = missing
            .into_iter()
            .next()
            .unwrap_or_else(|| Error::RemoteKeyNotFound {
                key: format!("dataFrom[{}].find", empty_finds[0]),
                detail: "no remote secret matches".into(),
            });
        return Ok(Outcome::Gone(err));
    }
    if let Some(err) = missing.into_iter().next() {
        return Err(err);
    }
    let reads = reader
        .secrets
        .into_iter()
        .filter(|(_, secret)| secret.version_id.is_some())
        .map(|((key, version), secret)| (key, version, secret))
        .collect();
    Ok(Outcome::Fetched(Fetched {
        data: data.into_map(),
        versions: reader.versions,
        reads,
    }))
}

/// Whether a version check sees every change to what the ExternalSecret reads: no `find` (which secrets
/// match can change) and no tags (`metadataPolicy: Fetch`).
pub fn versioned_only(spec: &ExternalSecretSpec) -> bool {
    spec.remote_refs()
        .all(|r| r.metadata_policy == MetadataPolicy::None)
        && spec.data_from.iter().all(|entry| entry.find.is_none())
}

/// The keys read at their current version without naming one, which one batched read can serve.
pub fn current_keys(spec: &ExternalSecretSpec) -> Vec<String> {
    let mut keys: Vec<String> = spec
        .remote_refs()
        .filter(|r| r.metadata_policy == MetadataPolicy::None)
        .filter(|r| r.version.as_deref().is_none_or(str::is_empty))
        .map(|r| r.key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Secret keys with their values and where each came from (for collision messages).
type Sourced = Vec<(String, (Vec<u8>, String))>;

async fn read_data_from<P: SecretProvider>(
    reader: &mut Reader<'_, P>,
    index: usize,
    entry: &DataFrom,
) -> Result<Sourced> {
    let (raw, conversion) = match (&entry.extract, &entry.find) {
        (Some(extract), _) => {
            let map = reader.extract(extract).await?;
            let sourced = map
                .into_iter()
                .map(|(name, value)| {
                    let source = format!(
                        "dataFrom[{index}].extract (remote key {:?}, property {name:?})",
                        extract.key
                    );
                    (name, (value, source))
                })
                .collect();
            (sourced, extract.conversion_strategy)
        }
        (None, Some(find)) => (reader.find(index, find).await?, find.conversion_strategy),
        (None, None) => {
            return Err(Error::InvalidSpec(format!(
                "dataFrom[{index}] sets neither extract nor find"
            )));
        }
    };
    // As in ESO, rewrites see the remote names; conversion then makes them valid keys.
    let rewritten = keys::rewrite(raw, &entry.rewrite)?;
    Ok(rewritten
        .into_iter()
        .map(|(key, value)| (keys::convert(&key, conversion), value))
        .collect())
}

struct Reader<'a, P> {
    provider: &'a P,
    secrets: HashMap<(String, Version), RemoteSecret>,
    /// Tags as JSON objects, by key (`metadataPolicy: Fetch`).
    tags: HashMap<String, RemoteSecret>,
    /// Per-secret failures of a batched read, reported when the key is used.
    failed: HashMap<String, Error>,
    versions: BTreeMap<String, String>,
}

impl<P: SecretProvider> Reader<'_, P> {
    /// Reads the current version of `keys` in batches, ahead of their use.
    async fn read_current(&mut self, keys: Vec<String>) -> Result<()> {
        let current = Version::parse(None);
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|key| !self.secrets.contains_key(&(key.clone(), current.clone())))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        for (key, result) in self.provider.get_current_batch(&keys).await? {
            match result {
                Ok(secret) => {
                    if let Some(id) = &secret.version_id {
                        self.versions.insert(key.clone(), id.clone());
                    }
                    self.secrets.insert((key, current.clone()), secret);
                }
                Err(err) => {
                    self.failed.insert(key, err);
                }
            }
        }
        Ok(())
    }

    /// The remote secret, or its tags as a JSON object for `metadataPolicy: Fetch`.
    async fn read(&mut self, reference: &RemoteRef) -> Result<&RemoteSecret> {
        let version = Version::parse(reference.version.as_deref());
        if reference.metadata_policy == MetadataPolicy::Fetch {
            let key = &reference.key;
            if !self.tags.contains_key(key) {
                let tags = self.provider.get_tags(key).await?;
                let json = serde_json::to_string(&tags).expect("string maps serialize");
                let secret = RemoteSecret {
                    version_id: None,
                    stages: Vec::new(),
                    value: RemoteValue::Text(json),
                    read_at: None,
                    replica: None,
                };
                self.tags.insert(key.clone(), secret);
            }
            return Ok(&self.tags[key]);
        }
        self.read_version(&reference.key, version, reference.version.as_deref())
            .await
    }

    async fn read_version(
        &mut self,
        key: &str,
        version: Version,
        named: Option<&str>,
    ) -> Result<&RemoteSecret> {
        let cache_key = (key.to_string(), version);
        if !self.secrets.contains_key(&cache_key) {
            if named.is_none()
                && let Some(err) = self.failed.remove(key)
            {
                return Err(err);
            }
            let secret = self.provider.get_secret(key, &cache_key.1).await?;
            if let Some(id) = &secret.version_id {
                let synced_key = match named {
                    None => key.to_string(),
                    Some(v) => format!("{key}@{v}"),
                };
                self.versions.insert(synced_key, id.clone());
            }
            self.secrets.insert(cache_key.clone(), secret);
        }
        Ok(&self.secrets[&cache_key])
    }

    async fn value(&mut self, reference: &RemoteRef) -> Result<Vec<u8>> {
        let secret = self.read(reference).await?;
        mapping::value_bytes(
            secret,
            &reference.key,
            reference.property.as_deref(),
            reference.decoding_strategy,
        )
    }

    async fn extract(&mut self, reference: &RemoteRef) -> Result<BTreeMap<String, Vec<u8>>> {
        let secret = self.read(reference).await?;
        mapping::extract(
            secret,
            &reference.key,
            reference.property.as_deref(),
            reference.decoding_strategy,
        )
    }

    /// Every matching secret's whole value, keyed by its name.
    async fn find(&mut self, index: usize, find: &FindRef) -> Result<Sourced> {
        let regexp = find
            .name
            .as_ref()
            .map(|name| {
                Regex::new(&name.regexp).map_err(|err| {
                    Error::InvalidSpec(format!("dataFrom[{index}].find.name.regexp: {err}"))
                })
            })
            .transpose()?;
        let names = self
            .provider
            .list_names(find.path.as_deref(), &find.tags)
            .await?;
        let names: Vec<String> = names
            .into_iter()
            .filter(|name| regexp.as_ref().is_none_or(|r| r.is_match(name)))
            .collect();
        self.read_current(names.clone()).await?;
        let mut found = Vec::new();
        for name in names {
            let secret = match self.read_version(&name, Version::parse(None), None).await {
                Ok(secret) => secret,
                // Deleted between listing and reading: it is simply no longer found.
                Err(Error::RemoteKeyNotFound { .. }) => continue,
                Err(err) => return Err(err),
            };
            let value = mapping::value_bytes(secret, &name, None, find.decoding_strategy)?;
            let source = format!("dataFrom[{index}].find (remote secret {name:?})");
            found.push((name, (value, source)));
        }
        Ok(found)
    }
}
