use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach a provider; usable only by ExternalSecrets in its own namespace.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug)]
#[kube(
    group = "secretsync.io",
    version = "v1alpha1",
    kind = "SecretStore",
    namespaced,
    shortname = "ss",
    category = "secretsync",
    status = "SecretStoreStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SecretStoreSpec {
    pub provider: StoreProvider,
    /// How often, in seconds, the store re-validates its credentials; 0 or unset uses the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub refresh_interval: Option<u32>,
}

/// The same as a SecretStore, usable from any namespace its `conditions` allow.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug)]
#[kube(
    group = "secretsync.io",
    version = "v1alpha1",
    kind = "ClusterSecretStore",
    shortname = "css",
    category = "secretsync",
    status = "SecretStoreStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterSecretStoreSpec {
    #[serde(flatten)]
    pub store: SecretStoreSpec,
    /// When set, only namespaces matching at least one condition may use the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ClusterSecretStoreCondition>,
}

/// A namespace matches when its labels match `namespaceSelector`, or it is listed in `namespaces`, or its
/// name matches one of `namespaceRegexes` (unanchored, as in ESO: anchor with `^...$`).
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.namespaceSelector) || has(self.namespaces) || has(self.namespaceRegexes)")
    .message("a condition needs namespaceSelector, namespaces or namespaceRegexes"))]
pub struct ClusterSecretStoreCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_regexes: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.aws) != has(self.fake)").message("set exactly one provider: aws or fake"))]
pub struct StoreProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fake: Option<FakeProvider>,
}

/// A built-in provider with fixed values, for demos and tests.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct FakeProvider {
    #[serde(default)]
    pub data: Vec<FakeProviderData>,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct FakeProviderData {
    #[schemars(length(min = 1))]
    pub key: String,
    pub value: String,
    /// The `remoteRef.version` this value answers; unset answers a read without a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sessionTags) || self.sessionTags.all(t, !t.key.lowerAscii().startsWith('secretsync-'))")
    .message("session tag keys starting with secretsync- are set by the operator"))]
#[x_kube(validation = Rule::new("has(self.role) || (!has(self.externalID) && !has(self.sessionTags) && !has(self.transitiveTagKeys))")
    .message("externalID, sessionTags and transitiveTagKeys apply to role: set role"))]
#[x_kube(validation = Rule::new("!has(self.region) || !has(self.failoverRegions) || !(self.region in self.failoverRegions)")
    .message("failoverRegions must not name the primary region"))]
pub struct AwsProvider {
    pub service: AwsService,
    /// Required unless the operator's environment provides one (`AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Prepended to every remote key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Without it, the operator's own credentials (SDK default chain: IRSA, EKS Pod Identity, env, profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AwsAuth>,
    /// Assumed last, after `additionalRoles`, with `externalID` and the session tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:[^:]+:iam::[0-9]{12}:role/.+$"))]
    pub role: Option<String>,
    /// Roles assumed in order before `role`, each with the credentials of the one before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^arn:[^:]+:iam::[0-9]{12}:role/.+$")))]
    pub additional_roles: Vec<String>,
    #[serde(
        rename = "externalID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 2, max = 1224))]
    pub external_id: Option<String>,
    /// Tags on the `role` session. The operator adds `secretsync-namespace` and `secretsync-store` itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 48))]
    pub session_tags: Vec<SessionTag>,
    /// Keys of `sessionTags` that pass on to roles assumed from the `role` session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitive_tag_keys: Vec<String>,
    /// How rotations are noticed between full refreshes; by default ListSecrets every minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_check: Option<VersionCheck>,
    /// Regions holding replicas of the secrets, tried in order when the primary region fails as an outage
    /// does (no answer, timeouts, server errors, throttling past the retries); never on a refusal or a
    /// secret not found. Reads and version checks go back to the primary once it answers again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 10),
        inner(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub failover_regions: Vec<String>,
}

/// How the operator notices that a remote secret has a new version between two full refreshes of the
/// ExternalSecrets reading it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.strategy != 'Events' || has(self.events)").message("strategy Events needs events.queueURL"))]
pub struct VersionCheck {
    #[serde(default)]
    pub strategy: VersionCheckStrategy,
    /// How often versions are checked: default 1m; with `Events`, the full check that backs the events up,
    /// default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<VersionCheckEvents>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum VersionCheckStrategy {
    /// One call per 100 secrets, no decryption; AWS documents that it can lag up to five minutes.
    #[default]
    ListSecrets,
    /// One call per secret, always current.
    DescribeSecret,
    /// Secrets Manager's EventBridge events, delivered to an SQS queue; a full check every interval.
    Events,
    /// No checks: values are read again every refreshInterval, as External Secrets Operator does.
    None,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
pub struct VersionCheckEvents {
    /// The SQS queue that an EventBridge rule feeds with `aws.secretsmanager` events.
    #[serde(rename = "queueURL")]
    #[schemars(length(min = 1))]
    pub queue_url: String,
}

impl VersionCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
    pub const DEFAULT_EVENTS_INTERVAL: Duration = Duration::from_secs(600);

    pub fn interval(&self) -> Result<Duration, humantime::DurationError> {
        match &self.interval {
            Some(text) => humantime::parse_duration(text),
            None if self.strategy == VersionCheckStrategy::Events => {
                Ok(Self::DEFAULT_EVENTS_INTERVAL)
            }
            None => Ok(Self::DEFAULT_INTERVAL),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
pub struct SessionTag {
    #[schemars(length(min = 1, max = 128))]
    pub key: String,
    #[schemars(length(max = 256))]
    pub value: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AwsService {
    SecretsManager,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.jwt)").message("set exactly one of auth.secretRef and auth.jwt"))]
pub struct AwsAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<AwsAuthSecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<AwsJwtAuth>,
}

/// Web identity: a token of a Kubernetes ServiceAccount, exchanged with STS for its IAM role.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsJwtAuth {
    pub service_account_ref: ServiceAccountSelector,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct ServiceAccountSelector {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Only on a ClusterSecretStore; without it the ExternalSecret's namespace is used. A SecretStore may
    /// only name a ServiceAccount in its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Audiences of the token; default `sts.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// Static credentials read from Kubernetes Secrets.
#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsAuthSecretRef {
    #[serde(rename = "accessKeyIDSecretRef")]
    pub access_key_id_secret_ref: SecretKeySelector,
    pub secret_access_key_secret_ref: SecretKeySelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_secret_ref: Option<SecretKeySelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, KubeSchema)]
pub struct SecretKeySelector {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
    /// Only on a ClusterSecretStore; without it the ExternalSecret's namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretStoreStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// With `failoverRegions`: the region that reads and version checks go to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_region: Option<String>,
}
