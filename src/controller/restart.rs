//! Rolling restarts of the workloads that use a Secret whose data changed: Deployments, StatefulSets and
//! DaemonSets annotated `secretsync.io/restart-on-change` get a new pod-template annotation, as
//! `kubectl rollout restart` does.
//!
//! Level-triggered: the pod template also records which data it was restarted for
//! (`secretsync.io/restarted-for: <ExternalSecret>=<data hash>,...`), so a round of restarts can be run again
//! after a crash or a failure and restarts only the workloads that have not had theirs.

use k8s_openapi::NamespaceResourceScope;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Context, publish};
use crate::api::ExternalSecret;
use crate::error::Error;
use crate::target::FIELD_MANAGER;

pub const RESTART_ANNOTATION: &str = "secretsync.io/restart-on-change";
pub const RESTARTED_AT_ANNOTATION: &str = "secretsync.io/restarted-at";
pub const RESTARTED_FOR_ANNOTATION: &str = "secretsync.io/restarted-for";
/// Enough of a data hash to tell versions apart in the pod template.
const HASH_CHARS: usize = 16;

/// A workload kind we restart: where its pod template is, and whether it may be restarted now.
trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    fn template(&self) -> Option<&PodTemplateSpec>;

    /// A paused Deployment would take the new template at its next resume, not now.
    fn paused(&self) -> bool {
        false
    }

    fn pod_spec(&self) -> Option<&PodSpec> {
        self.template()?.spec.as_ref()
    }

    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.template()?.metadata.as_ref()?.annotations.as_ref()
    }
}

impl Workload for Deployment {
    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.as_ref()?.template)
    }

    fn paused(&self) -> bool {
        self.spec
            .as_ref()
            .and_then(|spec| spec.paused)
            .unwrap_or(false)
    }
}

impl Workload for StatefulSet {
    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.as_ref()?.template)
    }
}

impl Workload for DaemonSet {
    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.as_ref()?.template)
    }
}

/// What a round of restarts did.
#[derive(Default)]
pub struct Restarts {
    pub restarted: usize,
    /// `Kind/name` of each workload whose restart failed (`Kind/*` when the kind could not be listed).
    pub failed: BTreeSet<String>,
    pub error: Option<Error>,
}

/// Restarts every annotated workload in the namespace that uses `secret` and has not been restarted for
/// `data_hash` of this ExternalSecret yet. Each one is attempted, whatever happened to the others.
pub async fn restart_users(
    ctx: &Context,
    es: &ExternalSecret,
    namespace: &str,
    secret: &str,
    data_hash: &str,
) -> Restarts {
    let mut restarts = Restarts::default();
    let round = Round {
        ctx,
        es,
        namespace,
        secret,
        data_hash: &data_hash[..HASH_CHARS.min(data_hash.len())],
    };
    round.restart_kind::<Deployment>(&mut restarts).await;
    round.restart_kind::<StatefulSet>(&mut restarts).await;
    round.restart_kind::<DaemonSet>(&mut restarts).await;
    restarts
}

struct Round<'a> {
    ctx: &'a Context,
    es: &'a ExternalSecret,
    namespace: &'a str,
    secret: &'a str,
    data_hash: &'a str,
}

impl Round<'_> {
    async fn restart_kind<W: Workload>(&self, restarts: &mut Restarts) {
        let Round {
            ctx,
            es,
            namespace,
            secret,
            data_hash,
        } = *self;
        let kind = W::kind(&()).to_string();
        let api: Api<W> = Api::namespaced(ctx.client.clone(), namespace);
        let workloads = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(err) => {
                restarts.failed.insert(format!("{kind}/*"));
                restarts.error.get_or_insert(err.into());
                return;
            }
        };
        for workload in workloads {
            let Some(wanted) = workload.annotations().get(RESTART_ANNOTATION) else {
                continue;
            };
            let name = workload.name_any();
            if !restarts_for(wanted, workload.pod_spec(), secret) {
                continue;
            }
            let restarted_for = workload
                .template_annotations()
                .and_then(|annotations| annotations.get(RESTARTED_FOR_ANNOTATION))
                .map(String::as_str)
                .unwrap_or_default();
            let entries = restarted_for_entries(restarted_for);
            if entries.get(es.name_any().as_str()) == Some(&data_hash) {
                continue;
            }
            if workload.paused() {
                ctx.metrics.restart(&kind, "paused");
                let note = format!(
                    "{kind} {name} is paused: not restarted for the change of Secret {secret:?}; it takes the new data when resumed and rolled out"
                );
                publish(
                    ctx,
                    &workload,
                    EventType::Warning,
                    "Restart",
                    "RestartSkipped",
                    note.clone(),
                )
                .await;
                publish(
                    ctx,
                    es,
                    EventType::Warning,
                    "Restart",
                    "RestartSkipped",
                    note,
                )
                .await;
                continue;
            }
            let mut entries = entries;
            let es_name = es.name_any();
            entries.insert(&es_name, data_hash);
            let patch = serde_json::json!({
                "spec": {"template": {"metadata": {"annotations": {
                    RESTARTED_AT_ANNOTATION: Timestamp::now().to_string(),
                    RESTARTED_FOR_ANNOTATION: write_entries(&entries),
                }}}}
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            };
            match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    restarts.restarted += 1;
                    ctx.metrics.restart(&kind, "restarted");
                    publish(
                        ctx,
                        &workload,
                        EventType::Normal,
                        "Restart",
                        "Restarted",
                        format!(
                            "Rolling restart: Secret {secret:?} changed (ExternalSecret {})",
                            es.name_any()
                        ),
                    )
                    .await;
                    publish(
                        ctx,
                        es,
                        EventType::Normal,
                        "Restart",
                        "WorkloadRestarted",
                        format!("Rolling restart of {kind} {name}: Secret {secret:?} changed"),
                    )
                    .await;
                }
                Err(err) => {
                    ctx.metrics.restart(&kind, "failed");
                    tracing::warn!(%kind, workload = %name, error = %err, "could not restart workload");
                    restarts.failed.insert(format!("{kind}/{name}"));
                    restarts.error.get_or_insert(err.into());
                }
            }
        }
    }
}

/// `<ExternalSecret>=<hash>` pairs of the `restarted-for` annotation; malformed ones are ignored.
fn restarted_for_entries(value: &str) -> BTreeMap<&str, &str> {
    value
        .split(',')
        .filter_map(|pair| pair.trim().split_once('='))
        .collect()
}

fn write_entries(entries: &BTreeMap<&str, &str>) -> String {
    entries
        .iter()
        .map(|(es, hash)| format!("{es}={hash}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a workload's `restart-on-change` value asks for a restart when `secret` changes: `"true"` for
/// every Secret its pods use, or a comma-separated list of Secret names.
fn restarts_for(wanted: &str, pod: Option<&PodSpec>, secret: &str) -> bool {
    if wanted.trim() == "true" {
        return pod.is_some_and(|pod| uses_secret(pod, secret));
    }
    wanted.split(',').any(|name| name.trim() == secret)
}

/// Whether pods mount or read `secret`: volumes (also projected), `env` and `envFrom`, in every container.
fn uses_secret(pod: &PodSpec, secret: &str) -> bool {
    let named = |name: Option<&String>| name.is_some_and(|n| n == secret);
    let in_volumes = pod.volumes.iter().flatten().any(|volume| {
        named(volume.secret.as_ref().and_then(|s| s.secret_name.as_ref()))
            || volume
                .projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .any(|source| named(source.secret.as_ref().map(|s| &s.name)))
    });
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    let in_containers = containers.into_iter().any(|container| {
        container.env.iter().flatten().any(|env| {
            named(
                env.value_from
                    .as_ref()
                    .and_then(|from| from.secret_key_ref.as_ref())
                    .map(|key| &key.name),
            )
        }) || container
            .env_from
            .iter()
            .flatten()
            .any(|from| named(from.secret_ref.as_ref().map(|s| &s.name)))
    });
    in_volumes || in_containers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> PodSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn restarted_for_round_trips() {
        let entries = restarted_for_entries("db=0123456789abcdef, api=fedcba9876543210,broken");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries["api"], "fedcba9876543210");
        assert_eq!(
            write_entries(&entries),
            "api=fedcba9876543210,db=0123456789abcdef"
        );
    }

    #[test]
    fn a_list_names_secrets() {
        assert!(restarts_for("db, api", None, "api"));
        assert!(!restarts_for("db,api", None, "cache"));
    }

    #[test]
    fn true_means_every_secret_the_pods_use() {
        let spec = pod(serde_json::json!({
            "volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "projected"}}]}},
                        {"name": "w", "secret": {"secretName": "mounted"}}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}]}],
        }));
        for secret in ["projected", "mounted", "init-env", "env"] {
            assert!(restarts_for("true", Some(&spec), secret), "{secret}");
        }
        assert!(!restarts_for("true", Some(&spec), "other"));
        assert!(!restarts_for("true", None, "env"));
    }
}
