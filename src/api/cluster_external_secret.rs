use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::ExternalSecretSpec;

/// One ExternalSecret, made and kept in every namespace that matches.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug)]
#[kube(
    group = "secretsync.io",
    version = "v1alpha1",
    kind = "ClusterExternalSecret",
    shortname = "ces",
    category = "secretsync",
    status = "ClusterExternalSecretStatus",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".spec.externalSecretSpec.secretStoreRef.name"}"#,
    printcolumn = r#"{"name":"Refresh Time","type":"string","jsonPath":".spec.refreshTime"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.namespaceSelectors) || has(self.namespaceSelector) || has(self.namespaces)")
    .message("select namespaces: set namespaceSelectors, namespaceSelector or namespaces"))]
pub struct ClusterExternalSecretSpec {
    /// The spec of each ExternalSecret made.
    pub external_secret_spec: ExternalSecretSpec,
    /// The name of each ExternalSecret made; defaults to the ClusterExternalSecret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub external_secret_name: Option<String>,
    /// Labels and annotations of each ExternalSecret made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_secret_metadata: Option<ExternalSecretMetadata>,
    /// A namespace matching any of these selectors gets the ExternalSecret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Deprecated (as in ESO): use `namespaceSelectors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Deprecated (as in ESO): namespaces by name; use `namespaceSelectors` with `kubernetes.io/metadata.name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// How often the namespaces are checked again and the ExternalSecrets put back as specified, as a
    /// Go-style duration; default `1m`. Namespace changes take effect at once regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    pub refresh_time: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, KubeSchema)]
pub struct ExternalSecretMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ClusterExternalSecretSpec {
    pub const DEFAULT_REFRESH_TIME: Duration = Duration::from_secs(60);

    pub fn refresh_time(&self) -> Result<Duration, humantime::DurationError> {
        match &self.refresh_time {
            Some(text) => humantime::parse_duration(text),
            None => Ok(Self::DEFAULT_REFRESH_TIME),
        }
    }
}

impl ClusterExternalSecret {
    /// The name of the ExternalSecrets it makes.
    pub fn external_secret_name(&self) -> &str {
        self.spec
            .external_secret_name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterExternalSecretStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_secret_name: Option<String>,
    /// Namespaces that hold its ExternalSecret, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provisioned_namespaces: Vec<String>,
    /// Matching namespaces where its ExternalSecret could not be written, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_namespaces: Vec<NamespaceFailure>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct NamespaceFailure {
    pub namespace: String,
    pub reason: String,
}
