//! The `secretsync.io/v1alpha1` API: field names and meanings follow External Secrets Operator's AWS provider.

mod cluster_external_secret;
mod condition;
mod external_secret;
mod secret_store;

pub use cluster_external_secret::*;
pub use condition::{READY, is_ready, ready_condition, set_condition};
pub use external_secret::*;
pub use secret_store::*;

use kube::CustomResourceExt;

pub const GROUP: &str = "secretsync.io";

/// The CRDs as a multi-document YAML stream, as committed in `crds/`.
pub fn crds_yaml() -> String {
    [
        ExternalSecret::crd(),
        ClusterExternalSecret::crd(),
        SecretStore::crd(),
        ClusterSecretStore::crd(),
    ]
    .iter()
    .map(|crd| serde_saphyr::to_string(crd).expect("a CRD always serializes"))
    .collect::<Vec<_>>()
    .join("---\n")
}
