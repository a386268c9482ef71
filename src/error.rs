//! One error type for the operator. Each variant has a class (the start of the condition message), maps to
//! ESO's condition and event reasons, and says whether retrying soon can help: transient errors back off with
//! jitter, permanent ones wait for a change.

use std::sync::Arc;

use crate::api::StoreKind;

// Clone: one failed read can answer several syncs that shared it.
#[derive(thiserror::Error, Clone)]
pub enum Error {
    #[error("{kind} {name:?} not found{}", in_namespace(namespace))]
    StoreNotFound {
        kind: StoreKind,
        name: String,
        namespace: Option<String>,
    },

    #[error(
        "ClusterSecretStore {store:?} may not be used from namespace {namespace:?}: no entry of its conditions matches"
    )]
    StoreNotAllowed { store: String, namespace: String },

    #[error("invalid store configuration: {0}")]
    InvalidStoreConfig(String),

    #[error("invalid ExternalSecret: {0}")]
    InvalidSpec(String),

    #[error("credentials Secret {namespace}/{name}: {problem}")]
    CredentialsSecret {
        namespace: String,
        name: String,
        problem: String,
    },

    #[error("ServiceAccount {namespace}/{name} not found")]
    ServiceAccountNotFound { namespace: String, name: String },

    #[error(
        "ServiceAccount {namespace}/{name} has no eks.amazonaws.com/role-arn annotation naming the role to assume"
    )]
    MissingRoleAnnotation { namespace: String, name: String },

    #[error("token for ServiceAccount {namespace}/{name}: {detail}")]
    ServiceAccountToken {
        namespace: String,
        name: String,
        detail: String,
    },

    #[error("STS refused the web identity token: {0}")]
    InvalidIdentityToken(String),

    #[error("AWS rejected the credentials: {0}")]
    InvalidCredentials(String),

    #[error("access denied{}: {detail}", for_key(key))]
    AccessDenied { key: Option<String>, detail: String },

    #[error("remote key {key:?} not found: {detail}")]
    RemoteKeyNotFound { key: String, detail: String },

    #[error("remote key {key:?} has no property {property:?}")]
    PropertyNotFound { key: String, property: String },

    #[error("remote key {key:?}: {problem}")]
    InvalidRemoteValue { key: String, problem: String },

    #[error("{call} failed{}: {detail}", for_key(key))]
    Provider {
        call: &'static str,
        key: Option<String>,
        detail: String,
    },

    /// What a regional outage looks like: no answer, a timeout, a server error, throttling past the retries.
    /// A store with failover regions tries the next one.
    #[error("{call} failed{}: {detail}", for_key(key))]
    Unavailable {
        call: &'static str,
        key: Option<String>,
        detail: String,
    },

    #[error("Secret key {key:?} from {origin} is invalid: {problem}")]
    InvalidKey {
        key: String,
        origin: String,
        problem: String,
    },

    #[error("Secret key {key:?} is written by both {first} and {second}")]
    KeyCollision {
        key: String,
        first: String,
        second: String,
    },

    #[error("template: {0}")]
    Template(String),

    #[error(
        "Secret {0:?} exists and is not owned by this ExternalSecret; refusing to overwrite it"
    )]
    SecretConflict(String),

    #[error(
        "ExternalSecret {0} exists and was not made by this ClusterExternalSecret; refusing to overwrite it"
    )]
    ExternalSecretConflict(String),

    #[error(
        "Secret {0:?} does not exist; creationPolicy Merge only adds keys to an existing Secret"
    )]
    SecretMissing(String),

    #[error(
        "Secret {0:?} is immutable and its data would change; delete it to have it written again"
    )]
    ImmutableSecret(String),

    #[error(
        "Secret {name:?} would hold {bytes} bytes of data; a Secret holds at most {MAX_SECRET_BYTES}"
    )]
    SecretTooLarge { name: String, bytes: usize },

    #[error("Kubernetes API error: {}", summarize_kube(.0))]
    Kube(#[source] Arc<kube::Error>),
}

impl From<kube::Error> for Error {
    fn from(err: kube::Error) -> Self {
        Error::Kube(Arc::new(err))
    }
}

// The same text as Display: kube's own Debug carries the API server's whole answer.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({self})", self.reason())
    }
}

/// The API server's answer without what it quotes of the request: a 400 or 422 for a Secret names the
/// offending value ("Invalid value: \"...\""), and that value may be a secret (a templated label, say). Those
/// are summarised by field and cause; other messages name objects and permissions only.
fn summarize_kube(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if matches!(status.code, 400 | 422) => {
            let causes: Vec<String> = status
                .details
                .iter()
                .flat_map(|details| &details.causes)
                .map(|cause| match cause.field.as_str() {
                    "" => cause.reason.clone(),
                    field => format!("{field}: {}", cause.reason),
                })
                .collect();
            let reason = if status.reason.is_empty() {
                "BadRequest"
            } else {
                &status.reason
            };
            match causes.is_empty() {
                true => format!("{reason} (HTTP {})", status.code),
                false => format!("{reason} (HTTP {}): {}", status.code, causes.join(", ")),
            }
        }
        kube::Error::Api(status) => format!(
            "{} (HTTP {}): {}",
            status.reason, status.code, status.message
        ),
        kube::Error::SerdeError(_) => "the API server's answer could not be read".to_string(),
        other => other.to_string(),
    }
}

fn in_namespace(namespace: &Option<String>) -> String {
    namespace
        .as_ref()
        .map(|ns| format!(" in namespace {ns:?}"))
        .unwrap_or_default()
}

fn for_key(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" for remote key {k:?}"))
        .unwrap_or_default()
}

/// The API server's limit on a Secret's data, keys and values together.
pub const MAX_SECRET_BYTES: usize = 1 << 20;

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error's class: stable, PascalCase, documented in the README. It starts every condition message
    /// and is the `reason` of log lines.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::StoreNotFound { .. } => "StoreNotFound",
            Error::StoreNotAllowed { .. } => "StoreNotAllowed",
            Error::InvalidStoreConfig(_) => "InvalidStoreConfig",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::CredentialsSecret { .. } => "CredentialsSecretError",
            Error::ServiceAccountNotFound { .. } => "ServiceAccountNotFound",
            Error::MissingRoleAnnotation { .. } => "MissingRoleAnnotation",
            Error::ServiceAccountToken { .. } => "ServiceAccountTokenError",
            Error::InvalidIdentityToken(_) => "InvalidIdentityToken",
            Error::InvalidCredentials(_) => "InvalidCredentials",
            Error::AccessDenied { .. } => "AccessDenied",
            Error::RemoteKeyNotFound { .. } => "RemoteKeyNotFound",
            Error::PropertyNotFound { .. } => "PropertyNotFound",
            Error::InvalidRemoteValue { .. } => "InvalidRemoteValue",
            Error::Provider { .. } | Error::Unavailable { .. } => "ProviderError",
            Error::InvalidKey { .. } => "InvalidKey",
            Error::KeyCollision { .. } => "KeyCollision",
            Error::Template(_) => "TemplateError",
            Error::SecretConflict(_) => "SecretConflict",
            Error::ExternalSecretConflict(_) => "ExternalSecretConflict",
            Error::SecretMissing(_) => "SecretMissing",
            Error::ImmutableSecret(_) => "ImmutableSecret",
            Error::SecretTooLarge { .. } => "SecretTooLarge",
            Error::Kube(_) => "SecretSyncedError",
        }
    }

    /// Transient errors (throttling, server errors, timeouts, API server hiccups) are retried soon;
    /// the rest need someone to change something, so they are reported and retried slowly.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Provider { .. } | Error::Unavailable { .. } => true,
            Error::Kube(err) => match err.as_ref() {
                kube::Error::Api(status) => {
                    status.code == 429 || status.code >= 500 || status.code == 409
                }
                _ => true,
            },
            _ => false,
        }
    }

    /// The Ready condition's reason, as External Secrets Operator reports it.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Error::SecretMissing(_) => "SecretMissing",
            _ => "SecretSyncedError",
        }
    }

    /// The event reason: the provider failed, or we could not update the Secret.
    pub fn event_reason(&self) -> &'static str {
        if self.is_provider_error() {
            "ProviderError"
        } else {
            "UpdateFailed"
        }
    }

    /// Errors that come from the provider (as opposed to our configuration or the cluster).
    pub fn is_provider_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidCredentials(_)
                | Error::InvalidIdentityToken(_)
                | Error::AccessDenied { .. }
                | Error::RemoteKeyNotFound { .. }
                | Error::Provider { .. }
                | Error::Unavailable { .. }
        )
    }
}
