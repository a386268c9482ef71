//! Which namespaces may use a ClusterSecretStore (`spec.conditions`, as in ESO), and their labels.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::{Client, ResourceExt};
use regex::Regex;

use crate::api::ClusterSecretStoreCondition;
use crate::error::{Error, Result};
use crate::watched_map::WatchedMap;

type Labels = BTreeMap<String, String>;

/// The labels of every namespace, from one watch of them all, started by the first store whose conditions
/// select namespaces by label: a sync of each ExternalSecret checks them, and read with a request that
/// was one request per sync.
pub struct NamespaceLabels {
    client: Client,
    watch: OnceLock<WatchedMap<Labels>>,
}

impl NamespaceLabels {
    pub fn new(client: Client) -> Self {
        NamespaceLabels {
            client,
            watch: OnceLock::new(),
        }
    }

    /// A namespace's labels; none for a namespace that does not exist. While the watch cannot list (no
    /// permission to watch namespaces, the API server away), the Namespace is read directly.
    pub async fn get(&self, namespace: &str) -> Result<Labels> {
        let watch = self.watch.get_or_init(|| {
            WatchedMap::start(Api::<Namespace>::all(self.client.clone()), |ns| {
                Some(ns.labels().clone())
            })
        });
        if let Some(labels) = watch.listed().await {
            let key = (String::new(), namespace.to_string());
            return Ok(labels.get(&key).cloned().unwrap_or_default());
        }
        Ok(Api::<Namespace>::all(self.client.clone())
            .get_opt(namespace)
            .await?
            .map(|ns| ns.labels().clone())
            .unwrap_or_default())
    }
}

/// Whether a namespace with this name and these labels may use the store: any matching condition lets it
/// in; no conditions at all let every namespace in.
pub fn allowed(
    conditions: &[ClusterSecretStoreCondition],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool> {
    if conditions.is_empty() {
        return Ok(true);
    }
    for condition in conditions {
        if let Some(selector) = &condition.namespace_selector {
            let selector = Selector::try_from(selector.clone()).map_err(|err| {
                Error::InvalidStoreConfig(format!("conditions: namespaceSelector: {err}"))
            })?;
            if selector.matches(labels) {
                return Ok(true);
            }
        }
        if condition.namespaces.iter().any(|name| name == namespace) {
            return Ok(true);
        }
        for pattern in &condition.namespace_regexes {
            let regex = Regex::new(pattern).map_err(|err| {
                Error::InvalidStoreConfig(format!(
                    "conditions: namespaceRegexes {pattern:?}: {err}"
                ))
            })?;
            if regex.is_match(namespace) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether any condition needs the namespace's labels (and so a read of the Namespace).
pub fn needs_labels(conditions: &[ClusterSecretStoreCondition]) -> bool {
    conditions.iter().any(|c| c.namespace_selector.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(json: serde_json::Value) -> Vec<ClusterSecretStoreCondition> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn no_conditions_allow_everyone() {
        assert!(allowed(&[], "any", &BTreeMap::new()).unwrap());
    }

    #[test]
    fn any_matching_condition_allows() {
        let conditions = conditions(serde_json::json!([
            {"namespaces": ["team-a"]},
            {"namespaceRegexes": ["^team-b-[0-9]+$"]},
            {"namespaceSelector": {"matchLabels": {"tier": "prod"}}},
        ]));
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let none = labels(&[]);
        assert!(allowed(&conditions, "team-a", &none).unwrap());
        assert!(allowed(&conditions, "team-b-12", &none).unwrap());
        assert!(!allowed(&conditions, "team-b-x", &none).unwrap());
        assert!(!allowed(&conditions, "team-a2", &none).unwrap());
        assert!(allowed(&conditions, "other", &labels(&[("tier", "prod")])).unwrap());
        assert!(!allowed(&conditions, "other", &labels(&[("tier", "dev")])).unwrap());
        assert!(needs_labels(&conditions));
    }

    #[test]
    fn regexes_are_unanchored_as_in_eso() {
        let conditions = conditions(serde_json::json!([{"namespaceRegexes": ["team-a"]}]));
        assert!(allowed(&conditions, "my-team-a-test", &BTreeMap::new()).unwrap());
        assert!(!needs_labels(&conditions));
    }

    #[test]
    fn an_invalid_regex_is_a_store_error() {
        let conditions = conditions(serde_json::json!([{"namespaceRegexes": ["("]}]));
        let err = allowed(&conditions, "x", &BTreeMap::new()).unwrap_err();
        assert_eq!(err.reason(), "InvalidStoreConfig");
    }
}
