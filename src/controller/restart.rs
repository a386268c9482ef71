//! Rolling restarts of the workloads that use a Secret whose data changed: Deployments, StatefulSets and
//! DaemonSets annotated `secretsync.io/restart-on-change` get a new pod-template annotation, as
//! `kubectl rollout restart` does.
//!
//! Level-triggered: the pod template also records which data it was restarted for
//! (`secretsync.io/restarted-for: <ExternalSecret>=<data hash>,...`), so a round of restarts can be run again
//! after a crash or a failure and restarts only the workloads that have not had theirs.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, PodSpec, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Context, publish, publish_to};
use crate::api::ExternalSecret;
use crate::error::Error;
use crate::target::FIELD_MANAGER;

pub const RESTART_ANNOTATION: &str = "secretsync.io/restart-on-change";
pub const RESTARTED_AT_ANNOTATION: &str = "secretsync.io/restarted-at";
pub const RESTARTED_FOR_ANNOTATION: &str = "secretsync.io/restarted-for";
/// Enough of a data hash to tell versions apart in the pod template.
const HASH_CHARS: usize = 16;

/// A workload kind we restart: where its pod template is, and whether it may be restarted now.
pub(super) trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: WorkloadKind;

    fn template(&self) -> Option<&PodTemplateSpec>;

    /// A paused Deployment would take the new template at its next resume, not now.
    fn paused(&self) -> bool {
        false
    }
}

impl Workload for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;

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
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.as_ref()?.template)
    }
}

impl Workload for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.as_ref()?.template)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    fn name(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    async fn patch(
        self,
        client: &Client,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> kube::Result<()> {
        match self {
            WorkloadKind::Deployment => {
                merge_patch::<Deployment>(client, namespace, name, patch).await
            }
            WorkloadKind::StatefulSet => {
                merge_patch::<StatefulSet>(client, namespace, name, patch).await
            }
            WorkloadKind::DaemonSet => {
                merge_patch::<DaemonSet>(client, namespace, name, patch).await
            }
        }
    }
}

async fn merge_patch<W: Workload>(
    client: &Client,
    namespace: &str,
    name: &str,
    patch: &serde_json::Value,
) -> kube::Result<()> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    Api::<W>::namespaced(client.clone(), namespace)
        .patch(name, &params, &Patch::Merge(patch))
        .await
        .map(drop)
}

/// What a restart needs of a workload annotated `restart-on-change`.
#[derive(Clone, Debug)]
pub struct Candidate {
    kind: WorkloadKind,
    reference: ObjectReference,
    /// Its `restart-on-change` value.
    wanted: String,
    /// The Secrets its pods use, for `restart-on-change: "true"`.
    uses: BTreeSet<String>,
    /// Its pod template's `restarted-for` value.
    restarted_for: String,
    paused: bool,
}

impl Candidate {
    /// The workload as a restart sees it; `None` when it did not ask for restarts.
    pub(super) fn of<W: Workload>(workload: &W) -> Option<Candidate> {
        let wanted = workload.annotations().get(RESTART_ANNOTATION)?.clone();
        let template = workload.template();
        let uses = match (wanted.trim(), template.and_then(|t| t.spec.as_ref())) {
            ("true", Some(pod)) => secrets_used(pod),
            _ => BTreeSet::new(),
        };
        let restarted_for = template
            .and_then(|template| template.metadata.as_ref()?.annotations.as_ref())
            .and_then(|annotations| annotations.get(RESTARTED_FOR_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        Some(Candidate {
            kind: W::KIND,
            reference: workload.object_ref(&()),
            wanted,
            uses,
            restarted_for,
            paused: workload.paused(),
        })
    }

    /// Whether its `restart-on-change` value asks for a restart when `secret` changes: `"true"` for every
    /// Secret its pods use, or a comma-separated list of Secret names.
    fn restarts_for(&self, secret: &str) -> bool {
        if self.wanted.trim() == "true" {
            return self.uses.contains(secret);
        }
        self.wanted.split(',').any(|name| name.trim() == secret)
    }

    fn name(&self) -> &str {
        self.reference.name.as_deref().unwrap_or_default()
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
    let mut candidates = match ctx.workloads.in_namespace(namespace).await {
        Some(candidates) => candidates,
        None => list_candidates(ctx, namespace, &mut restarts).await,
    };
    candidates.sort_by(|a, b| (a.kind, a.name()).cmp(&(b.kind, b.name())));
    let data_hash = &data_hash[..HASH_CHARS.min(data_hash.len())];
    for candidate in candidates.iter().filter(|c| c.restarts_for(secret)) {
        restart(
            ctx,
            es,
            namespace,
            secret,
            data_hash,
            candidate,
            &mut restarts,
        )
        .await;
    }
    restarts
}

/// The annotated workloads of the namespace, listed kind by kind (before the watches have listed).
async fn list_candidates(
    ctx: &Context,
    namespace: &str,
    restarts: &mut Restarts,
) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    list_kind::<Deployment>(ctx, namespace, &mut candidates, restarts).await;
    list_kind::<StatefulSet>(ctx, namespace, &mut candidates, restarts).await;
    list_kind::<DaemonSet>(ctx, namespace, &mut candidates, restarts).await;
    candidates
}

async fn list_kind<W: Workload>(
    ctx: &Context,
    namespace: &str,
    candidates: &mut Vec<Candidate>,
    restarts: &mut Restarts,
) {
    match Api::<W>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => candidates.extend(list.iter().filter_map(Candidate::of)),
        Err(err) => {
            restarts.failed.insert(format!("{}/*", W::KIND.name()));
            restarts.error.get_or_insert(err.into());
        }
    }
}

async fn restart(
    ctx: &Context,
    es: &ExternalSecret,
    namespace: &str,
    secret: &str,
    data_hash: &str,
    candidate: &Candidate,
    restarts: &mut Restarts,
) {
    let kind = candidate.kind.name();
    let name = candidate.name();
    let es_name = es.name_any();
    let entries = restarted_for_entries(&candidate.restarted_for);
    if entries.get(es_name.as_str()) == Some(&data_hash) {
        return;
    }
    if candidate.paused {
        ctx.metrics.restart(kind, "paused");
        let note = format!(
            "{kind} {name} is paused: not restarted for the change of Secret {secret:?}; it takes the new data when resumed and rolled out"
        );
        let reason = "RestartSkipped";
        publish_to(
            ctx,
            &candidate.reference,
            EventType::Warning,
            "Restart",
            reason,
            note.clone(),
        )
        .await;
        publish(ctx, es, EventType::Warning, "Restart", reason, note).await;
        return;
    }
    let mut entries = entries;
    entries.insert(&es_name, data_hash);
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT_ANNOTATION: Timestamp::now().to_string(),
            RESTARTED_FOR_ANNOTATION: write_entries(&entries),
        }}}}
    });
    match candidate
        .kind
        .patch(&ctx.client, namespace, name, &patch)
        .await
    {
        Ok(()) => {
            restarts.restarted += 1;
            ctx.metrics.restart(kind, "restarted");
            publish_to(
                ctx,
                &candidate.reference,
                EventType::Normal,
                "Restart",
                "Restarted",
                format!("Rolling restart: Secret {secret:?} changed (ExternalSecret {es_name})"),
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
            ctx.metrics.restart(kind, "failed");
            tracing::warn!(%kind, workload = %name, error = %err, "could not restart workload");
            restarts.failed.insert(format!("{kind}/{name}"));
            restarts.error.get_or_insert(err.into());
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

/// The Secrets that pods mount or read: volumes (also projected), `env` and `envFrom`, in every container.
fn secrets_used(pod: &PodSpec) -> BTreeSet<String> {
    let volumes = pod.volumes.iter().flatten().flat_map(|volume| {
        let mounted = volume.secret.as_ref().and_then(|s| s.secret_name.clone());
        let projected = volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|source| Some(source.secret.as_ref()?.name.clone()));
        mounted.into_iter().chain(projected)
    });
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    let in_containers = containers.flat_map(|container| {
        let env = container.env.iter().flatten().filter_map(|env| {
            Some(
                env.value_from
                    .as_ref()?
                    .secret_key_ref
                    .as_ref()?
                    .name
                    .clone(),
            )
        });
        let env_from = container
            .env_from
            .iter()
            .flatten()
            .filter_map(|from| Some(from.secret_ref.as_ref()?.name.clone()));
        env.chain(env_from)
    });
    volumes.chain(in_containers).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(annotation: &str, pod: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app", "namespace": "ns",
                         "annotations": {RESTART_ANNOTATION: annotation}},
            "spec": {"selector": {}, "template": {"spec": pod}},
        }))
        .unwrap()
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
        let listed = Candidate::of(&deployment(
            "db, api",
            serde_json::json!({"containers": []}),
        ))
        .unwrap();
        assert!(listed.restarts_for("api"));
        assert!(!listed.restarts_for("cache"));
        let unannotated: Deployment = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(Candidate::of(&unannotated).is_none());
    }

    #[test]
    fn true_means_every_secret_the_pods_use() {
        let pod = serde_json::json!({
            "volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "projected"}}]}},
                        {"name": "w", "secret": {"secretName": "mounted"}}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}]}],
        });
        let every = Candidate::of(&deployment("true", pod)).unwrap();
        for secret in ["projected", "mounted", "init-env", "env"] {
            assert!(every.restarts_for(secret), "{secret}");
        }
        assert!(!every.restarts_for("other"));
    }
}
