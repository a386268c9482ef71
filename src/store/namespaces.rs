//! Which namespaces may use a ClusterSecretStore (`spec.conditions`, as in ESO), and their labels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use regex::Regex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::ClusterSecretStoreCondition;
use crate::error::{Error, Result};
use crate::task::AbortOnDrop;

/// How long reads wait for the watch's initial list, from its start, before reading the Namespace itself.
const LISTED_WITHIN: Duration = Duration::from_secs(5);

type Labels = BTreeMap<String, String>;

/// The labels of every namespace, from one watch of them all, started by the first store whose conditions
/// select namespaces by label: a sync of each ExternalSecret checks them, and read with a request that
/// was one request per sync.
pub struct NamespaceLabels {
    client: Client,
    watch: OnceLock<Watch>,
}

struct Watch {
    labels: Arc<Mutex<HashMap<String, Labels>>>,
    listed: watch::Receiver<bool>,
    started: Instant,
    _task: AbortOnDrop,
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
        let watch = self.watch.get_or_init(|| self.start());
        let mut listed = watch.listed.clone();
        let _ = tokio::time::timeout_at(
            watch.started + LISTED_WITHIN,
            listed.wait_for(|listed| *listed),
        )
        .await;
        if *listed.borrow() {
            let labels = watch.labels.lock().expect("never poisoned");
            return Ok(labels.get(namespace).cloned().unwrap_or_default());
        }
        Ok(Api::<Namespace>::all(self.client.clone())
            .get_opt(namespace)
            .await?
            .map(|ns| ns.labels().clone())
            .unwrap_or_default())
    }

    fn start(&self) -> Watch {
        let labels: Arc<Mutex<HashMap<String, Labels>>> = Arc::default();
        let (sender, listed) = watch::channel(false);
        let api = Api::<Namespace>::all(self.client.clone());
        let kept = labels.clone();
        let task = tokio::spawn(async move {
            let mut events = Box::pin(crate::controller::watch_stream(
                api,
                watcher::Config::default(),
            ));
            let mut listing = HashMap::new();
            while let Some(Ok(event)) = events.next().await {
                match event {
                    watcher::Event::Init => listing.clear(),
                    watcher::Event::InitApply(ns) => {
                        listing.insert(ns.name_any(), ns.metadata.labels.unwrap_or_default());
                    }
                    watcher::Event::InitDone => {
                        *kept.lock().expect("never poisoned") = std::mem::take(&mut listing);
                        sender.send_replace(true);
                    }
                    watcher::Event::Apply(ns) => {
                        let name = ns.name_any();
                        let labels = ns.metadata.labels.unwrap_or_default();
                        kept.lock().expect("never poisoned").insert(name, labels);
                    }
                    watcher::Event::Delete(ns) => {
                        kept.lock().expect("never poisoned").remove(&ns.name_any());
                    }
                }
            }
        });
        Watch {
            labels,
            listed,
            started: Instant::now(),
            _task: AbortOnDrop(task.abort_handle()),
        }
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
