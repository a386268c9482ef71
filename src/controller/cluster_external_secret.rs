//! The ClusterExternalSecret controller: one ExternalSecret, owned by it, in every namespace it selects;
//! removed from a namespace that stops matching. An ExternalSecret of the same name that it did not make is
//! left alone and reported. Reads are shared as for any ExternalSecrets: those it makes read one remote
//! secret with one identity once. A refresh writes only the ExternalSecrets that changed since it last
//! wrote them, not one per namespace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::{ObjectMeta, PartialObjectMeta, Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{Predicate, WatchStreamExt, predicates};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use super::{Context, apply_status, publish};
use crate::api::{
    ClusterExternalSecret, ClusterExternalSecretSpec, ClusterExternalSecretStatus, ExternalSecret,
    NamespaceFailure, READY, ready_condition, set_condition,
};
use crate::error::{Error, Result};
use crate::target::FIELD_MANAGER;

/// On every ExternalSecret a ClusterExternalSecret made: the maker's UID (a name may not fit a label).
pub const OWNER_LABEL: &str = "secretsync.io/cluster-external-secret-uid";
const CONTROLLER: &str = "clusterexternalsecret";
/// Namespaces named in one event, at most; the status lists them all.
const NAMED_IN_EVENT: usize = 10;
/// ExternalSecrets written at the same time by one reconcile.
const WRITES_AT_ONCE: usize = 8;

pub async fn run(ctx: Arc<Context>, stopping: watch::Receiver<bool>) {
    let client = ctx.client.clone();
    let (reader, writer) = reflector::store();
    // Our status writes do not change the generation, and so start no reconcile.
    let cluster_external_secrets = super::watch_stream(
        Api::<ClusterExternalSecret>::all(client.clone()),
        watcher::Config::default(),
    )
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());

    // Namespaces by metadata: a new one, a label change or the start of a deletion reconciles every
    // ClusterExternalSecret at once, not at its next refresh.
    let (namespaces, namespace_writer) = reflector::store();
    let namespace_changes = namespace_watch(&ctx)
        .reflect(namespace_writer)
        .touched_objects()
        .predicate_filter(predicates::labels.combine(terminating), Default::default());
    let all = reader.clone();
    // One task waits for the namespaces' first list and tells every reconcile (kube's `wait_until_ready`
    // wakes only the last task waiting on it).
    let (listed, namespaces_listed) = watch::channel(false);
    let listing = namespaces.clone();
    tokio::spawn(async move {
        if listing.wait_until_ready().await.is_ok() {
            listed.send_replace(true);
        }
    });

    let cluster_external_secrets_seen = reader.clone();
    Controller::for_stream(cluster_external_secrets, reader)
        .watches_stream(owned_changes(&ctx), maker)
        .watches_stream(namespace_changes, move |_: PartialObjectMeta<Namespace>| {
            all.state()
                .iter()
                .map(|ces| ObjectRef::from_obj(ces.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(super::stopped(stopping))
        .run(
            reconcile,
            error_policy,
            Arc::new(Shared {
                ctx,
                namespaces,
                namespaces_listed,
                cluster_external_secrets: cluster_external_secrets_seen,
                remembered: Mutex::default(),
            }),
        )
        .for_each(|_| async {})
        .await;
}

struct Shared {
    ctx: Arc<Context>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Turns true once the namespaces have listed: until then, no namespace matching means nothing.
    namespaces_listed: watch::Receiver<bool>,
    cluster_external_secrets: Store<ClusterExternalSecret>,
    /// By ClusterExternalSecret UID; empty after a restart.
    remembered: Mutex<HashMap<String, Remembered>>,
}

/// What the last reconcile of a ClusterExternalSecret left.
#[derive(Default)]
struct Remembered {
    /// By namespace: what its ExternalSecret looked like right after our apply (`applied_state`). One that
    /// still looks so would not change if applied again, and is skipped: a thousand namespaces are not a
    /// thousand writes per refresh. A restart applies each once.
    applied: HashMap<String, u64>,
    /// The status written: the cached object may not show it yet when the next reconcile starts, and its
    /// events would be published twice.
    status: Option<ClusterExternalSecretStatus>,
}

fn namespace_watch(
    ctx: &Context,
) -> impl futures::Stream<Item = Result<watcher::Event<PartialObjectMeta<Namespace>>, watcher::Error>>
+ Send
+ use<> {
    super::watch_stream(
        Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .modify(|ns| ns.metadata.managed_fields = None)
}

fn terminating(ns: &PartialObjectMeta<Namespace>) -> Option<u64> {
    ns.metadata.deletion_timestamp.as_ref().map(|_| 1)
}

/// The ExternalSecrets we made, by metadata: an edit of one (its spec, labels or annotations) or its
/// deletion reconciles its maker, which puts it back. Their status writes, one per sync, do not.
fn owned_changes(
    ctx: &Context,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<ExternalSecret>, watcher::Error>> + Send + use<>
{
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    super::watch_stream(
        Api::<PartialObjectMeta<ExternalSecret>>::all(ctx.client.clone()),
        watcher::Config::default().labels(OWNER_LABEL),
    )
    .filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(es) | watcher::Event::InitApply(es)) => {
                let key = (es.namespace().unwrap_or_default(), es.name_any());
                let hash = metadata_hash(&es.metadata);
                (seen.insert(key, hash) != Some(hash)).then_some(es)
            }
            Ok(watcher::Event::Delete(es)) => {
                seen.remove(&(es.namespace().unwrap_or_default(), es.name_any()));
                Some(es)
            }
            _ => None,
        };
        future::ready(changed.map(Ok))
    })
}

/// The ClusterExternalSecret that made an ExternalSecret. Not kube's `owns`: it takes an owner to live in its
/// object's namespace, so each namespace would name the cluster-scoped maker apart, and a refresh would run
/// once per namespace, each concurrently writing everything.
fn maker(es: PartialObjectMeta<ExternalSecret>) -> Option<ObjectRef<ClusterExternalSecret>> {
    es.metadata
        .owner_references?
        .into_iter()
        .find(|owner| {
            owner.controller == Some(true) && owner.kind == ClusterExternalSecret::kind(&())
        })
        .map(|owner| ObjectRef::new(&owner.name))
}

/// What we set on an ExternalSecret and can see in its metadata: a change of its spec moves its generation.
fn metadata_hash(meta: &ObjectMeta) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    for owner in meta.owner_references.iter().flatten() {
        owner.uid.hash(&mut hasher);
    }
    hasher.finish()
}

/// An ExternalSecret named `name` with metadata `meta`, as this generation of its ClusterExternalSecret
/// would leave it.
fn applied_state(ces: &ClusterExternalSecret, name: &str, meta: &ObjectMeta) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ces.metadata.generation.hash(&mut hasher);
    name.hash(&mut hasher);
    metadata_hash(meta).hash(&mut hasher);
    hasher.finish()
}

async fn reconcile(ces: Arc<ClusterExternalSecret>, shared: Arc<Shared>) -> Result<Action> {
    let ctx = &shared.ctx;
    let _in_flight = ctx.metrics.reconcile_started(CONTROLLER);
    let started = Instant::now();
    // Its ExternalSecrets go with it, by their owner references.
    if ces.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let result = provision(&ces, &shared).await;
    ctx.metrics
        .reconcile_duration(CONTROLLER, started.elapsed().as_secs_f64());
    let refresh = ces
        .spec
        .refresh_time()
        .unwrap_or(ClusterExternalSecretSpec::DEFAULT_REFRESH_TIME);
    match result {
        Ok(Outcome { transient: false }) => {
            ctx.backoff.reset(&key(&ces));
            Ok(Action::requeue(refresh))
        }
        Ok(Outcome { transient: true }) => Ok(Action::requeue(ctx.backoff.next(&key(&ces)))),
        Err(err) => Err(err),
    }
}

fn error_policy(ces: Arc<ClusterExternalSecret>, _err: &Error, shared: Arc<Shared>) -> Action {
    Action::requeue(shared.ctx.backoff.next(&key(&ces)))
}

fn key(ces: &ClusterExternalSecret) -> String {
    format!("ClusterExternalSecret/{}", ces.name_any())
}

struct Outcome {
    /// Whether a namespace failed for a reason that passes (the API server busy), to be retried soon.
    transient: bool,
}

/// Writes the ExternalSecret in every selected namespace, deletes those no longer selected, and reports.
async fn provision(ces: &ClusterExternalSecret, shared: &Shared) -> Result<Outcome> {
    let ctx = shared.ctx.as_ref();
    let uid = ces.uid().unwrap_or_default();
    let name = ces.external_secret_name().to_string();
    let mut remembered = shared.take_remembered(&uid);
    let reported = remembered
        .status
        .take()
        .or_else(|| ces.status.clone())
        .unwrap_or_default();
    let selected = match selected_namespaces(ces, shared).await {
        Ok(selected) => selected,
        Err(problem) => {
            remembered.status =
                Some(report(ctx, ces, reported, &Report::invalid(&name, problem)).await?);
            shared.remember(uid, remembered);
            return Ok(Outcome { transient: false });
        }
    };
    // Ours, wherever they are: made by it (owner reference), found by the label we put on them.
    let made = Api::<ExternalSecret>::all(ctx.client.clone())
        .list_metadata(&ListParams::default().labels(&format!("{OWNER_LABEL}={uid}")))
        .await?;
    let made: BTreeMap<(String, String), PartialObjectMeta<ExternalSecret>> = made
        .items
        .into_iter()
        .filter(|es| owned_by(&es.metadata, &uid))
        .map(|es| ((es.namespace().unwrap_or_default(), es.name_any()), es))
        .collect();

    let mut applied_before = std::mem::take(&mut remembered.applied);
    let mut applied_now = HashMap::new();
    let mut report = Report::new(&name);
    let mut transient = false;
    // In order, a few at a time: a thousand new namespaces are a thousand applies.
    let es_name = name.as_str();
    let mut written = futures::stream::iter(selected.iter().cloned())
        .map(|namespace| {
            let existing = made.get(&(namespace.clone(), name.clone()));
            let unchanged = existing.is_some_and(|es| {
                applied_before.remove(&namespace) == Some(applied_state(ces, es_name, &es.metadata))
            });
            let ours = existing.is_some();
            async move {
                let result = if unchanged {
                    Ok(existing.map(|es| es.metadata.clone()).unwrap_or_default())
                } else {
                    write(ctx, ces, &namespace, es_name, ours).await
                };
                (namespace, result)
            }
        })
        .buffered(WRITES_AT_ONCE);
    while let Some((namespace, result)) = written.next().await {
        match result {
            Ok(meta) => {
                applied_now.insert(namespace.clone(), applied_state(ces, &name, &meta));
                report.provisioned.push(namespace);
            }
            Err(err) => {
                transient |= err.is_transient();
                report.failed.push(NamespaceFailure {
                    namespace,
                    reason: err.to_string(),
                });
            }
        }
    }
    drop(written);
    remembered.applied = applied_now;
    // A namespace that no longer matches, or a former name: its ExternalSecret goes (and its Secret, per
    // that ExternalSecret's deletion policy and owner).
    let mut removed = Vec::new();
    for ((namespace, es_name), es) in &made {
        if *es_name == name && selected.contains(namespace) {
            continue;
        }
        let api = Api::<ExternalSecret>::namespaced(ctx.client.clone(), namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: es.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(es_name, &params).await {
            Ok(_) => removed.push(format!("{namespace}/{es_name}")),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    report.removed = removed;
    // Unremembered if it fails: the next reconcile goes by the object's status.
    let status = self::report(ctx, ces, reported, &report).await;
    remembered.status = status.as_ref().ok().cloned();
    shared.remember(uid, remembered);
    status?;
    Ok(Outcome { transient })
}

impl Shared {
    /// What the last reconcile of ClusterExternalSecret `uid` left; forgets ClusterExternalSecrets gone.
    fn take_remembered(&self, uid: &str) -> Remembered {
        let live: BTreeSet<String> = self
            .cluster_external_secrets
            .state()
            .iter()
            .filter_map(|ces| ces.uid())
            .collect();
        let mut remembered = self.remembered.lock().expect("never poisoned");
        remembered.retain(|uid, _| live.contains(uid));
        remembered.remove(uid).unwrap_or_default()
    }

    fn remember(&self, uid: String, remembered: Remembered) {
        self.remembered
            .lock()
            .expect("never poisoned")
            .insert(uid, remembered);
    }
}

/// The names of the namespaces it selects and that can hold an ExternalSecret (not being deleted).
async fn selected_namespaces(
    ces: &ClusterExternalSecret,
    shared: &Shared,
) -> std::result::Result<BTreeSet<String>, String> {
    let spec = &ces.spec;
    let selectors = spec
        .namespace_selectors
        .iter()
        .chain(&spec.namespace_selector)
        .map(|selector| {
            Selector::try_from(selector.clone()).map_err(|err| format!("namespaceSelectors: {err}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // Until the watch has listed, no namespace would match: wait rather than remove what is provisioned.
    let _ = shared
        .namespaces_listed
        .clone()
        .wait_for(|listed| *listed)
        .await;
    Ok(shared
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .filter(|ns| {
            let name = ns.name_any();
            spec.namespaces.contains(&name)
                || selectors
                    .iter()
                    .any(|selector| selector.matches(ns.labels()))
        })
        .map(|ns| ns.name_any())
        .collect())
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|owner| owner.uid == uid && owner.controller == Some(true))
}

/// Writes its ExternalSecret into `namespace`, and returns the metadata it has then. One there that it did
/// not make is never touched. One it made is put back as specified (force: someone may have edited it). A
/// new one is applied without force, so that one made by someone else in the meantime is refused by the API
/// server rather than taken over.
async fn write(
    ctx: &Context,
    ces: &ClusterExternalSecret,
    namespace: &str,
    name: &str,
    known_ours: bool,
) -> Result<ObjectMeta> {
    let api = Api::<ExternalSecret>::namespaced(ctx.client.clone(), namespace);
    let uid = ces.uid().unwrap_or_default();
    let ours = known_ours
        || match api.get_metadata_opt(name).await? {
            Some(existing) if owned_by(&existing.metadata, &uid) => true,
            Some(_) => return Err(Error::ExternalSecretConflict(format!("{namespace}/{name}"))),
            None => false,
        };
    let metadata = ces
        .spec
        .external_secret_metadata
        .clone()
        .unwrap_or_default();
    let mut labels = metadata.labels;
    labels.insert(OWNER_LABEL.to_string(), uid);
    let owner = ces
        .controller_owner_ref(&())
        .expect("a ClusterExternalSecret from the API server has a name and UID");
    let manifest = serde_json::json!({
        "apiVersion": ExternalSecret::api_version(&()),
        "kind": ExternalSecret::kind(&()),
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": metadata.annotations,
            "ownerReferences": [owner],
        },
        "spec": ces.spec.external_secret_spec,
    });
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = ours;
    match api.patch(name, &params, &Patch::Apply(manifest)).await {
        Ok(written) => Ok(written.metadata),
        // Someone else's fields: an ExternalSecret made by someone else since we looked.
        Err(kube::Error::Api(status)) if status.code == 409 && !ours => {
            Err(Error::ExternalSecretConflict(format!("{namespace}/{name}")))
        }
        Err(err) => Err(err.into()),
    }
}

/// What one reconcile found, for status and events.
struct Report {
    name: String,
    provisioned: Vec<String>,
    failed: Vec<NamespaceFailure>,
    removed: Vec<String>,
    /// The spec cannot be acted on.
    invalid: Option<String>,
}

impl Report {
    fn new(name: &str) -> Self {
        Report {
            name: name.to_string(),
            provisioned: Vec::new(),
            failed: Vec::new(),
            removed: Vec::new(),
            invalid: None,
        }
    }

    fn invalid(name: &str, problem: String) -> Self {
        Report {
            invalid: Some(problem),
            ..Report::new(name)
        }
    }

    /// Ready, reason and message of the Ready condition.
    fn condition(&self) -> (bool, &'static str, String) {
        if let Some(problem) = &self.invalid {
            return (false, "InvalidSpec", problem.clone());
        }
        let (done, failed) = (self.provisioned.len(), self.failed.len());
        match (done, failed) {
            (0, 0) => (
                true,
                "NoMatchingNamespaces",
                "no namespace matches its selectors".into(),
            ),
            (_, 0) => (
                true,
                "Provisioned",
                format!(
                    "ExternalSecret {:?} provisioned in {done} namespace(s)",
                    self.name
                ),
            ),
            (0, _) => (
                false,
                "ProvisioningFailed",
                format!(
                    "ExternalSecret {:?} could not be written in any of {failed} namespace(s); see status.failedNamespaces",
                    self.name
                ),
            ),
            _ => (
                false,
                "PartiallyProvisioned",
                format!(
                    "ExternalSecret {:?} provisioned in {done} namespace(s), failed in {failed}; see status.failedNamespaces",
                    self.name
                ),
            ),
        }
    }
}

/// Writes status when it differs from `before`, the last written, with an event for each change: namespaces
/// provisioned, failed (once per namespace and reason), ExternalSecrets removed. Returns the status written.
async fn report(
    ctx: &Context,
    ces: &ClusterExternalSecret,
    before: ClusterExternalSecretStatus,
    report: &Report,
) -> Result<ClusterExternalSecretStatus> {
    let mut status = ClusterExternalSecretStatus {
        external_secret_name: Some(report.name.clone()),
        provisioned_namespaces: report.provisioned.clone(),
        failed_namespaces: report.failed.clone(),
        conditions: before.conditions.clone(),
    };
    let (ready, reason, message) = report.condition();
    let generation = ces.metadata.generation;
    set_condition(
        &mut status.conditions,
        ready_condition(ready, reason, message.clone(), generation),
    );
    let unchanged = status.external_secret_name == before.external_secret_name
        && status.provisioned_namespaces == before.provisioned_namespaces
        && status.failed_namespaces == before.failed_namespaces
        && before.conditions.iter().any(|c| {
            c.type_ == READY
                && (c.status == "True") == ready
                && c.reason == reason
                && c.message == message
                && c.observed_generation == generation
        });
    if !unchanged {
        apply_status(
            &Api::<ClusterExternalSecret>::all(ctx.client.clone()),
            ces,
            &status,
        )
        .await?;
    }

    let newly: Vec<&String> = report
        .provisioned
        .iter()
        .filter(|ns| !before.provisioned_namespaces.contains(ns))
        .collect();
    if !newly.is_empty() {
        let note = format!(
            "ExternalSecret {:?} provisioned in {}",
            report.name,
            listed(&newly)
        );
        publish(
            ctx,
            ces,
            EventType::Normal,
            "Provision",
            "Provisioned",
            note,
        )
        .await;
    }
    for failure in report
        .failed
        .iter()
        .filter(|failure| !before.failed_namespaces.contains(failure))
    {
        tracing::warn!(
            cluster_external_secret = %ces.name_any(),
            namespace = %failure.namespace,
            error = %failure.reason,
            "could not provision"
        );
        let note = format!("namespace {}: {}", failure.namespace, failure.reason);
        publish(
            ctx,
            ces,
            EventType::Warning,
            "Provision",
            "ProvisioningFailed",
            note,
        )
        .await;
    }
    if !report.removed.is_empty() {
        let removed: Vec<&String> = report.removed.iter().collect();
        let note = format!(
            "ExternalSecret removed where the namespace no longer matches or the name changed: {}",
            listed(&removed)
        );
        publish(ctx, ces, EventType::Normal, "Remove", "Removed", note).await;
    }
    if let Some(problem) = &report.invalid
        && !unchanged
    {
        publish(
            ctx,
            ces,
            EventType::Warning,
            "Provision",
            "InvalidSpec",
            problem.clone(),
        )
        .await;
    }
    Ok(status)
}

/// The first few names, and how many more.
fn listed(names: &[&String]) -> String {
    let shown: Vec<&str> = names
        .iter()
        .take(NAMED_IN_EVENT)
        .map(|name| name.as_str())
        .collect();
    match names.len().saturating_sub(NAMED_IN_EVENT) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}
