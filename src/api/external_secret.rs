use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which remote values go into which Kubernetes Secret, and how often.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug)]
#[kube(
    group = "secretsync.io",
    version = "v1alpha1",
    kind = "ExternalSecret",
    namespaced,
    shortname = "es",
    category = "secretsync",
    status = "ExternalSecretStatus",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".spec.secretStoreRef.name"}"#,
    printcolumn = r#"{"name":"Refresh Interval","type":"string","jsonPath":".spec.refreshInterval"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretSpec {
    pub secret_store_ref: SecretStoreRef,

    /// How often the values are read again, as a Go-style duration (`1h`, `15m`, `30s`); `0` syncs once.
    #[serde(default = "default_refresh_interval")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ns|us|ms|s|m|h))+)$"))]
    pub refresh_interval: String,

    /// When to read the values again: every `refreshInterval`, only when the ExternalSecret changes, or
    /// only to create the Secret.
    #[serde(default)]
    pub refresh_policy: RefreshPolicy,

    #[serde(default)]
    pub target: ExternalSecretTarget,

    /// One Secret key per entry; the API server refuses two entries with the same `secretKey`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["secretKey"]))]
    pub data: Vec<ExternalSecretData>,

    /// Many Secret keys per entry: a JSON secret's properties, or every secret a search finds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_from: Vec<DataFrom>,
}

fn default_refresh_interval() -> String {
    "1h".to_string()
}

impl ExternalSecretSpec {
    /// Every remote reference it reads by key: `data[].remoteRef` and `dataFrom[].extract`.
    pub fn remote_refs(&self) -> impl Iterator<Item = &RemoteRef> {
        self.data.iter().map(|entry| &entry.remote_ref).chain(
            self.data_from
                .iter()
                .filter_map(|entry| entry.extract.as_ref()),
        )
    }

    /// `None` means "sync once" (`refreshInterval: 0`).
    pub fn refresh_interval(&self) -> Result<Option<Duration>, humantime::DurationError> {
        if self.refresh_interval == "0" {
            return Ok(None);
        }
        humantime::parse_duration(&self.refresh_interval).map(|d| (!d.is_zero()).then_some(d))
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RefreshPolicy {
    #[default]
    Periodic,
    OnChange,
    CreatedOnce,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct SecretStoreRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default)]
    pub kind: StoreKind,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum StoreKind {
    #[default]
    SecretStore,
    ClusterSecretStore,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::SecretStore => "SecretStore",
            StoreKind::ClusterSecretStore => "ClusterSecretStore",
        })
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.deletionPolicy != 'Delete' || self.creationPolicy == 'Owner'")
    .message("deletionPolicy Delete needs creationPolicy Owner: only a Secret this ExternalSecret owns may be deleted"))]
#[x_kube(validation = Rule::new("self.deletionPolicy != 'Merge' || self.creationPolicy != 'None'")
    .message("deletionPolicy Merge needs a creationPolicy that writes the Secret (Owner, Orphan or Merge)"))]
#[x_kube(validation = Rule::new("!self.immutable || self.creationPolicy != 'Merge'")
    .message("immutable cannot be combined with creationPolicy Merge: the Secret belongs to someone else"))]
pub struct ExternalSecretTarget {
    /// The Secret to write; defaults to the ExternalSecret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    #[serde(default)]
    pub creation_policy: CreationPolicy,
    /// What happens to the Secret when every remote secret it reads is gone.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Write the Secret as immutable; a later change of its data is reported, not forced.
    #[serde(default)]
    pub immutable: bool,
    // Boxed: most ExternalSecrets have none, and the cache holds every ExternalSecret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<SecretTemplate>>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CreationPolicy {
    /// Create the Secret, owned by the ExternalSecret (deleted with it).
    #[default]
    Owner,
    /// Create the Secret without an owner: it outlives the ExternalSecret.
    Orphan,
    /// Only add or replace our keys in a Secret that already exists.
    Merge,
    /// Write nothing: only check that the values can be read.
    None,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the Secret as last written and report the error.
    #[default]
    Retain,
    /// Delete the Secret.
    Delete,
    /// Remove our keys from the Secret.
    Merge,
}

/// How the Secret is built from the fetched values: every fetched key is a template variable.
#[derive(Deserialize, Serialize, Clone, Debug, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// The Secret's type, e.g. `kubernetes.io/dockerconfigjson`; default `Opaque`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Accepted for ESO compatibility and ignored: templates are always MiniJinja (see README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// `Replace`: the templates alone make the data; `Merge`: templates are added to the fetched keys.
    #[serde(default)]
    pub merge_policy: TemplateMergePolicy,
    /// Secret key → template text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(key, key.matches('^[-._a-zA-Z0-9]+$'))")
        .message("template.data keys are Secret keys: letters, digits, '-', '_' and '.'"))]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template_from: Vec<TemplateFrom>,
}

/// Labels and annotations of the Secret; their values are templates too.
#[derive(Deserialize, Serialize, Clone, Debug, Default, KubeSchema)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TemplateMergePolicy {
    #[default]
    Replace,
    Merge,
}

/// Templates kept elsewhere: in a ConfigMap, a Secret, or inline.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.configMap) ? 1 : 0) + (has(self.secret) ? 1 : 0) + (has(self.literal) ? 1 : 0) == 1")
    .message("templateFrom entries set exactly one of configMap, secret or literal"))]
pub struct TemplateFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<TemplateRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<TemplateRef>,
    /// A template whose output is a YAML map of keys and values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    /// Where the output goes.
    #[serde(default)]
    pub target: TemplateTarget,
}

/// A ConfigMap or Secret in the ExternalSecret's namespace whose keys hold templates.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct TemplateRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub items: Vec<TemplateRefItem>,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRefItem {
    #[schemars(length(min = 1))]
    pub key: String,
    /// `Values`: the output is the value of the same key; `KeysAndValues`: the output is a YAML map.
    #[serde(default)]
    pub template_as: TemplateScope,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TemplateScope {
    #[default]
    Values,
    KeysAndValues,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TemplateTarget {
    #[default]
    Data,
    Annotations,
    Labels,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretData {
    /// The key in the target Secret.
    #[schemars(length(max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub secret_key: String,
    pub remote_ref: RemoteRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteRef {
    /// The secret's name or ARN (after the store's `prefix`).
    #[schemars(length(min = 1))]
    pub key: String,
    /// A path into the secret's JSON value (`a.b`, `list.1.name`); without it, the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// `AWSCURRENT` (default), another version stage, or `uuid/<VersionId>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub decoding_strategy: DecodingStrategy,
    /// `Fetch` reads the secret's tags (as a JSON object) instead of its value.
    #[serde(default)]
    pub metadata_policy: MetadataPolicy,
    /// How characters that are invalid in a Secret key are replaced (keys of `dataFrom` only).
    #[serde(default)]
    pub conversion_strategy: ConversionStrategy,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DecodingStrategy {
    #[default]
    None,
    Base64,
    #[serde(rename = "Base64URL")]
    Base64Url,
    /// Base64, then Base64URL, then the value as it is.
    Auto,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MetadataPolicy {
    #[default]
    None,
    Fetch,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConversionStrategy {
    /// Each invalid character becomes `_`.
    #[default]
    Default,
    /// Each invalid character becomes `_U<hex code point>_`, which keeps distinct names distinct.
    Unicode,
}

/// One `dataFrom` entry: exactly one of `extract` or `find`, then optional key rewrites.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.extract) != has(self.find)")
    .message("dataFrom entries set exactly one of extract or find"))]
pub struct DataFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<RemoteRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find: Option<FindRef>,
    /// Applied in order to the keys this entry produces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrite: Vec<Rewrite>,
}

/// Every secret whose name starts with `path`, matches `name.regexp` and carries all `tags`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.path) || has(self.name) || has(self.tags)")
    .message("find needs at least one of path, name or tags"))]
pub struct FindRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<FindName>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub conversion_strategy: ConversionStrategy,
    #[serde(default)]
    pub decoding_strategy: DecodingStrategy,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct FindName {
    /// A regular expression (Rust `regex` syntax, close to Go's RE2) the secret's name must match.
    #[schemars(length(min = 1))]
    pub regexp: String,
}

/// Exactly one of `regexp` or `transform`.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.regexp) != has(self.transform)")
    .message("rewrite entries set exactly one of regexp or transform"))]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<RewriteRegexp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<RewriteTransform>,
}

/// Replaces every match of `source` in a key with `target`, where `$1` or `${name}` name groups.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct RewriteRegexp {
    #[schemars(length(min = 1))]
    pub source: String,
    pub target: String,
}

/// A template that receives the key as `value` and renders the new key.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct RewriteTransform {
    #[schemars(length(min = 1))]
    pub template: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_time: Option<Time>,
    /// Generation plus a hash of labels and annotations at the last sync: a change forces a refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<SecretBinding>,
    /// Remote key → AWS VersionId that was written.
    #[serde(default, skip_serializing_if = "SyncedVersions::is_empty")]
    pub synced_versions: SyncedVersions,
    /// Keyed hash of the data this ExternalSecret wrote that the workloads using the Secret were restarted
    /// for (or found with). When the Secret holds other data of ours, restarts are still owed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagated_data_hash: Option<String>,
}

/// A map in the API, kept as a list sorted by key: nearly every ExternalSecret has one entry, and a
/// `BTreeMap`'s first node has room for eleven, about 550 bytes in each cached ExternalSecret.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(from = "BTreeMap<String, String>")]
pub struct SyncedVersions(Vec<(String, String)>);

impl SyncedVersions {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|at| &self.0[at].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(key, id)| (key, id))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl From<BTreeMap<String, String>> for SyncedVersions {
    fn from(map: BTreeMap<String, String>) -> Self {
        SyncedVersions(map.into_iter().collect())
    }
}

impl Serialize for SyncedVersions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl JsonSchema for SyncedVersions {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, String>>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, String>>::json_schema(generator)
    }

    fn inline_schema() -> bool {
        true
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct SecretBinding {
    pub name: String,
}

impl ExternalSecret {
    pub fn target_name(&self) -> &str {
        self.spec
            .target
            .name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(interval: &str) -> ExternalSecretSpec {
        serde_json::from_value(serde_json::json!({
            "secretStoreRef": {"name": "s"},
            "refreshInterval": interval,
        }))
        .unwrap()
    }

    #[test]
    fn refresh_interval_parses_go_durations() {
        assert_eq!(
            spec("1h").refresh_interval().unwrap(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            spec("1h30m").refresh_interval().unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            spec("15s").refresh_interval().unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(spec("0").refresh_interval().unwrap(), None);
        assert_eq!(spec("0s").refresh_interval().unwrap(), None);
        assert!(spec("soon").refresh_interval().is_err());
    }

    #[test]
    fn defaults_match_eso() {
        let spec: ExternalSecretSpec =
            serde_json::from_value(serde_json::json!({"secretStoreRef": {"name": "s"}})).unwrap();
        assert_eq!(spec.refresh_interval, "1h");
        assert_eq!(spec.secret_store_ref.kind, StoreKind::SecretStore);
    }
}
