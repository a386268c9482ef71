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

    #[serde(default)]
    pub target: ExternalSecretTarget,

    /// One Secret key per entry.
    #[serde(default)]
    pub data: Vec<ExternalSecretData>,
}

fn default_refresh_interval() -> String {
    "1h".to_string()
}

impl ExternalSecretSpec {
    /// `None` means "sync once" (`refreshInterval: 0`).
    pub fn refresh_interval(&self) -> Result<Option<Duration>, humantime::DurationError> {
        if self.refresh_interval == "0" {
            return Ok(None);
        }
        humantime::parse_duration(&self.refresh_interval).map(|d| (!d.is_zero()).then_some(d))
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct SecretStoreRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default)]
    pub kind: StoreKind,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
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
pub struct ExternalSecretTarget {
    /// The Secret to write; defaults to the ExternalSecret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretData {
    /// The key in the target Secret.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub secret_key: String,
    pub remote_ref: RemoteRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct RemoteRef {
    /// The secret's name or ARN (after the store's `prefix`).
    #[schemars(length(min = 1))]
    pub key: String,
    /// A key of the secret's JSON object; without it, the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// `AWSCURRENT` (default), another version stage, or `uuid/<VersionId>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub synced_versions: BTreeMap<String, String>,
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
