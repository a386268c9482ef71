//! Rotation: one version watch per remote secret and store identity, shared by every ExternalSecret that
//! reads it. The watch knows which VersionId each stage (AWSCURRENT, AWSPREVIOUS, custom labels) points to;
//! a check (`provider.aws.versionCheck`) that finds a stage moved reads the new values once, in batches, and
//! wakes exactly the ExternalSecrets that read that stage. Those then build their Secret from the values
//! kept here, without reading AWS again.
//!
//! Values are kept by VersionId, which AWS never reuses for other content, so a kept value is never stale;
//! only the versions that watched stages or pinned `uuid/` references point to are kept.

mod checks;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;

use crate::api::{ExternalSecret, SecretStoreSpec, StoreKind, VersionCheck, VersionCheckStrategy};
use crate::error::{Error, Result};
use crate::es_name::EsName;
use crate::metrics::Metrics;
use crate::provider::aws::{AwsSecretsManager, ReadAhead, Stages};
use crate::provider::{Provider, RemoteSecret, SecretProvider, Version};
use crate::store::{IdentityKey, StoreScope, Stores};
use crate::task::AbortOnDrop;

/// Watches of one identity with one check configuration.
#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    identity: IdentityKey,
    check: VersionCheck,
}

/// How a watch reaches AWS: the store of the latest ExternalSecret registered, resolved again before every
/// check so that sessions are renewed.
#[derive(Clone)]
pub struct StoreHandle {
    pub kind: StoreKind,
    pub name: String,
    pub store_namespace: Option<String>,
    pub requester_namespace: Option<String>,
    pub spec: SecretStoreSpec,
    pub generation: Option<i64>,
}

impl StoreHandle {
    /// Which store, as of which change.
    pub fn version(&self) -> (StoreKind, String, Option<i64>) {
        (self.kind, self.name.clone(), self.generation)
    }

    pub fn scope(&self) -> StoreScope<'_> {
        StoreScope {
            kind: self.kind,
            name: &self.name,
            store_namespace: self.store_namespace.as_deref(),
            requester_namespace: self.requester_namespace.as_deref(),
        }
    }
}

/// One remote secret read by one ExternalSecret: as written in the ExternalSecret, the VersionId written,
/// the value when it was just read, and when the read started (what it says is true as of then).
pub struct Read {
    pub key: String,
    pub version: Version,
    pub version_id: String,
    pub secret: Option<RemoteSecret>,
    pub at: Instant,
}

/// VersionIds remembered per secret as having been replaced in a stage: enough for any lag AWS shows.
const SUPERSEDED_KEPT: usize = 16;

/// When a new version was noticed, and when AWS says it happened (events only).
#[derive(Clone, Copy)]
pub struct Detection {
    pub at: Instant,
    pub event_time: Option<Timestamp>,
}

/// An ExternalSecret that reads a secret: one allocation shared by every map that names it, one per
/// registration and one per reader and secret.
type Reader = Arc<EsName>;

/// The stages (or pinned VersionIds) one ExternalSecret reads of one secret: nearly always one. A
/// `BTreeSet`'s first node has room for eleven, 280 bytes for each of 10,000 readers.
#[derive(Default)]
struct Few(Vec<String>);

impl Few {
    fn insert(&mut self, value: String) {
        if !self.0.contains(&value) {
            // `push` alone makes room for four.
            self.0.reserve_exact(1);
            self.0.push(value);
        }
    }

    fn is_disjoint(&self, others: &BTreeSet<String>) -> bool {
        !self.0.iter().any(|value| others.contains(value))
    }
}

impl<'a> IntoIterator for &'a Few {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[derive(Default)]
struct Watched {
    /// Stage → VersionId, as last seen.
    stages: Stages,
    /// Which stages each ExternalSecret reads (empty for pinned versions only).
    readers: HashMap<Reader, Few>,
    /// VersionIds read by pinned (`uuid/`) references.
    pinned: HashMap<Reader, Few>,
    values: HashMap<String, Arc<RemoteSecret>>,
    detected: HashMap<String, Detection>,
    /// Reported as gone by the last check: readers were woken once.
    gone: bool,
    /// When what `stages` says was true: an observation from before it (a slow sync's read) is older news
    /// and never moves a stage back.
    as_of: Option<Instant>,
    /// VersionIds that stages moved away from, newest last. A listing that points a stage at one of them
    /// again is lagging (ListSecrets can, by minutes) until a read of the value confirms it.
    superseded: VecDeque<String>,
}

impl Watched {
    /// Points `stage` at `id`; returns whether it moved.
    fn set_stage(&mut self, stage: &str, id: &str) -> bool {
        let previous = self.stages.insert(stage, id);
        self.superseded.retain(|old| old != id);
        match previous {
            Some(previous) if previous != id => {
                self.superseded.push_back(previous);
                if self.superseded.len() > SUPERSEDED_KEPT {
                    self.superseded.pop_front();
                }
                true
            }
            _ => false,
        }
    }

    fn watched_stages(&self) -> BTreeSet<&String> {
        self.readers.values().flatten().collect()
    }

    /// Drops values that no watched stage or pinned reference points to any more.
    fn prune(&mut self, ledger: &mut Ledger) {
        let kept: BTreeSet<&String> = self
            .watched_stages()
            .into_iter()
            .filter_map(|stage| self.stages.get(stage))
            .chain(self.pinned.values().flatten())
            .collect();
        let kept: BTreeSet<String> = kept.into_iter().cloned().collect();
        self.values.retain(|id, value| {
            let keep = kept.contains(id);
            if !keep {
                ledger.removed(value);
            }
            keep
        });
        self.detected.retain(|id, _| kept.contains(id));
    }

    /// Keeps the value of VersionId `id` of the secret `full` in `group`, unless kept already: a VersionId's
    /// value never changes, and each ExternalSecret that reads the secret registers it again.
    fn keep_value(
        &mut self,
        ledger: &mut Ledger,
        at: (&Arc<GroupKey>, &str),
        id: String,
        secret: RemoteSecret,
    ) {
        if self.values.contains_key(&id) {
            return;
        }
        ledger.added(at.0, at.1, &id, &secret);
        self.values.insert(id, Arc::new(secret));
    }

    /// Its values leave with it.
    fn forget_values(&self, ledger: &mut Ledger) {
        for value in self.values.values() {
            ledger.removed(value);
        }
    }

    /// Readers of any of `stages`.
    fn readers_of(&self, stages: &BTreeSet<String>) -> Vec<Reader> {
        self.readers
            .iter()
            .filter(|(_, read)| !read.is_disjoint(stages))
            .map(|(reader, _)| reader.clone())
            .collect()
    }
}

struct Group {
    store: StoreHandle,
    /// By full name or ARN (the store's prefix included).
    secrets: HashMap<String, Watched>,
    /// The last check failure reported, so that a failing check is reported once, not every interval.
    last_error: Option<String>,
    _poll: AbortOnDrop,
}

struct Registration {
    store: (StoreKind, String, Option<i64>),
    group: Arc<GroupKey>,
    prefix: String,
    reads: Vec<(String, Version, String)>,
}

#[derive(Default)]
struct State {
    groups: HashMap<Arc<GroupKey>, Group>,
    registrations: HashMap<Reader, Registration>,
    /// The consumer of each SQS queue that groups with the `Events` check watch through.
    queues: HashMap<String, AbortOnDrop>,
    ledger: Ledger,
}

/// The bytes of the values kept, against the budget (`--kept-values-budget`), and the order they came in.
/// Past the budget the oldest leave; an ExternalSecret that needs one then reads it.
#[derive(Default)]
struct Ledger {
    budget: usize,
    bytes: usize,
    values: usize,
    /// (group, secret, VersionId), oldest first; an entry whose value left since is skipped.
    order: VecDeque<(Arc<GroupKey>, String, String)>,
}

impl Ledger {
    fn added(&mut self, group: &Arc<GroupKey>, full: &str, id: &str, value: &RemoteSecret) {
        self.bytes += value.bytes();
        self.values += 1;
        self.order
            .push_back((group.clone(), full.to_string(), id.to_string()));
    }

    fn removed(&mut self, value: &RemoteSecret) {
        self.bytes -= value.bytes();
        self.values -= 1;
    }
}

impl State {
    /// Drops the oldest values until those kept fit the budget; returns how many left.
    fn evict_over_budget(&mut self) -> u64 {
        let mut evicted = 0;
        while self.ledger.bytes > self.ledger.budget
            && let Some((group, full, id)) = self.ledger.order.pop_front()
        {
            let value = self
                .groups
                .get_mut(&group)
                .and_then(|group| group.secrets.get_mut(&full))
                .and_then(|watched| watched.values.remove(&id));
            if let Some(value) = value {
                self.ledger.removed(&value);
                evicted += 1;
            }
        }
        // Values that left otherwise leave their entries behind: compact when those are most of them.
        if self.ledger.order.len() > 2 * self.ledger.values + 64 {
            let groups = &self.groups;
            self.ledger.order.retain(|(group, full, id)| {
                groups
                    .get(group)
                    .and_then(|group| group.secrets.get(full))
                    .is_some_and(|watched| watched.values.contains_key(id))
            });
        }
        evicted
    }
}

pub struct Watches {
    stores: Arc<Stores>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    wake: UnboundedSender<ObjectRef<ExternalSecret>>,
    state: Mutex<State>,
}

/// Where an ExternalSecret's reads may come from the kept values.
pub struct Kept<'a> {
    watches: &'a Watches,
    group: GroupKey,
    prefix: String,
}

impl Kept<'_> {
    /// Whether the watch holds the value AWSCURRENT points to.
    pub fn holds_current(&self, key: &str) -> bool {
        let state = self.watches.lock();
        state
            .groups
            .get(&self.group)
            .and_then(|group| group.secrets.get(&format!("{}{key}", self.prefix)))
            .is_some_and(|watched| {
                watched
                    .stages
                    .get(Version::CURRENT)
                    .is_some_and(|id| watched.values.contains_key(id))
            })
    }

    /// The kept value of `key` at `version`, when the watch knows which VersionId that is and holds it.
    pub fn get(&self, key: &str, version: &Version) -> Option<RemoteSecret> {
        let state = self.watches.lock();
        let watched = state
            .groups
            .get(&self.group)?
            .secrets
            .get(&format!("{}{key}", self.prefix))?;
        let id = match version {
            Version::Stage(stage) => watched.stages.get(stage)?,
            Version::Id(id) => id,
        };
        // The stages it had when read may be out of date; the watch's own map is what counts.
        watched.values.get(id).map(|value| RemoteSecret {
            stages: Vec::new(),
            read_at: None,
            ..(**value).clone()
        })
    }
}

impl Watches {
    /// `kept_values_budget`: the bytes of values kept for rotations and first syncs (see `Ledger`).
    pub fn new(
        stores: Arc<Stores>,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        wake: UnboundedSender<ObjectRef<ExternalSecret>>,
        kept_values_budget: usize,
    ) -> Self {
        let state = State {
            ledger: Ledger {
                budget: kept_values_budget,
                ..Ledger::default()
            },
            ..State::default()
        };
        Watches {
            stores,
            metrics,
            recorder,
            wake,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("never poisoned")
    }

    /// The store's version check, `None` when it does not check (strategy `None`).
    pub fn check_of(spec: &SecretStoreSpec) -> Result<Option<VersionCheck>> {
        let check = spec
            .provider
            .aws
            .as_ref()
            .and_then(|aws| aws.version_check.clone())
            .unwrap_or_default();
        if check.strategy == VersionCheckStrategy::None {
            return Ok(None);
        }
        match check.interval() {
            Ok(interval) if interval >= Duration::from_secs(1) => Ok(Some(check)),
            Ok(_) => Err(Error::InvalidStoreConfig(
                "versionCheck.interval must be at least 1s".into(),
            )),
            Err(err) => Err(Error::InvalidStoreConfig(format!(
                "versionCheck.interval {:?}: {err}",
                check.interval.unwrap_or_default()
            ))),
        }
    }

    /// The kept values that `provider` with `check` can serve.
    pub fn kept(&self, provider: &AwsSecretsManager, check: &VersionCheck) -> Kept<'_> {
        Kept {
            watches: self,
            group: GroupKey {
                identity: provider.identity.clone(),
                check: check.clone(),
            },
            prefix: provider.prefix().to_string(),
        }
    }

    /// The store (and its generation) an ExternalSecret was registered with.
    pub fn registered_store(&self, es: &EsName) -> Option<(StoreKind, String, Option<i64>)> {
        self.lock()
            .registrations
            .get(es)
            .map(|registration| registration.store.clone())
    }

    /// Whether a stage that the ExternalSecret read has moved on since it was written.
    pub fn stale(&self, es: &EsName) -> bool {
        let state = self.lock();
        let Some(registration) = state.registrations.get(es) else {
            return false;
        };
        let Some(group) = state.groups.get(&registration.group) else {
            return false;
        };
        registration.reads.iter().any(|(key, version, written)| {
            let Version::Stage(stage) = version else {
                return false;
            };
            let watched = group.secrets.get(&format!("{}{key}", registration.prefix));
            watched.is_some_and(|w| {
                w.gone
                    || w.stages
                        .get(stage)
                        .is_some_and(|current| current != written)
            })
        })
    }

    /// Whether a read of `key` answered with a version that its stage has already moved away from: AWS is
    /// eventually consistent, and such a read is older than what the watch (and maybe the Secret) has. A real
    /// rollback is believed once a check's read confirms it.
    pub fn superseded(
        &self,
        provider: &AwsSecretsManager,
        check: &VersionCheck,
        key: &str,
        version_id: &str,
    ) -> bool {
        let group = GroupKey {
            identity: provider.identity.clone(),
            check: check.clone(),
        };
        let state = self.lock();
        state
            .groups
            .get(&group)
            .and_then(|group| group.secrets.get(&format!("{}{key}", provider.prefix())))
            .is_some_and(|watched| watched.superseded.iter().any(|old| old == version_id))
    }

    /// When the versions an ExternalSecret just wrote were noticed, for the propagation metrics.
    pub fn detections(&self, es: &EsName) -> Vec<Detection> {
        let state = self.lock();
        let Some(registration) = state.registrations.get(es) else {
            return Vec::new();
        };
        let Some(group) = state.groups.get(&registration.group) else {
            return Vec::new();
        };
        registration
            .reads
            .iter()
            .filter_map(|(key, _, id)| {
                let watched = group
                    .secrets
                    .get(&format!("{}{key}", registration.prefix))?;
                watched.detected.get(id).copied()
            })
            .collect()
    }

    /// Records what an ExternalSecret read, replacing what it read before, and starts the checks of its
    /// group if it is the first. A stage seen at a newer version than the watch knew wakes the other
    /// ExternalSecrets that read it.
    pub fn register(
        self: &Arc<Self>,
        es: EsName,
        provider: &AwsSecretsManager,
        check: VersionCheck,
        store: StoreHandle,
        reads: Vec<Read>,
    ) {
        let key = GroupKey {
            identity: provider.identity.clone(),
            check,
        };
        let prefix = provider.prefix().to_string();
        let es: Reader = Arc::new(es);
        let mut wake = Vec::new();
        {
            let mut state = self.lock();
            let state = &mut *state;
            let old = state.registrations.remove(&es);
            let shared_key = match state.groups.get_key_value(&key) {
                Some((shared, _)) => shared.clone(),
                None => Arc::new(key.clone()),
            };
            let group = state
                .groups
                .entry(shared_key.clone())
                .or_insert_with(|| Group {
                    store: store.clone(),
                    secrets: HashMap::new(),
                    last_error: None,
                    _poll: checks::start(self.clone(), key.clone()),
                });
            let store_version = store.version();
            group.store = store;
            if let Some(events) = &key.check.events
                && key.check.strategy == VersionCheckStrategy::Events
                && !state.queues.contains_key(&events.queue_url)
            {
                let consumer = checks::consume(self.clone(), events.queue_url.clone());
                state.queues.insert(events.queue_url.clone(), consumer);
            }
            // What it read before is replaced; the watches themselves (values, detections) stay.
            let reading: BTreeSet<String> = reads
                .iter()
                .map(|read| format!("{prefix}{}", read.key))
                .collect();
            for full in &reading {
                if let Some(watched) = group.secrets.get_mut(full) {
                    watched.readers.remove(&es);
                    watched.pinned.remove(&es);
                }
            }
            let mut recorded = Vec::with_capacity(reads.len());
            for read in reads {
                let full = format!("{prefix}{}", read.key);
                let watched = group.secrets.entry(full.clone()).or_default();
                match &read.version {
                    Version::Stage(stage) => {
                        watched
                            .readers
                            .entry(es.clone())
                            .or_default()
                            .insert(stage.clone());
                    }
                    Version::Id(id) => {
                        watched
                            .pinned
                            .entry(es.clone())
                            .or_default()
                            .insert(id.clone());
                        watched.readers.entry(es.clone()).or_default();
                    }
                }
                match read.secret {
                    // Read after the watch last learnt something: what AWS said is the truth about its stages.
                    Some(secret) if watched.as_of.is_none_or(|as_of| read.at >= as_of) => {
                        let mut seen: Vec<String> = secret.stages.clone();
                        if let Version::Stage(stage) = &read.version {
                            seen.push(stage.clone());
                        }
                        let mut moved = BTreeSet::new();
                        for stage in seen {
                            if watched.set_stage(&stage, &read.version_id) {
                                moved.insert(stage);
                            }
                        }
                        watched.as_of = Some(read.at);
                        watched.gone = false;
                        watched.keep_value(
                            &mut state.ledger,
                            (&shared_key, &full),
                            read.version_id.clone(),
                            secret,
                        );
                        wake.extend(
                            watched
                                .readers_of(&moved)
                                .into_iter()
                                .filter(|reader| reader != &es),
                        );
                    }
                    // Read before the watch last learnt something: older news. A stage the watch knows
                    // stays; one it knows nothing of yet (what it learnt was about other stages) is taken. A
                    // reader that wrote an old version is woken to write the newer one. The value of a
                    // VersionId never changes, so it is kept while a stage points to it.
                    Some(secret) => {
                        if let Version::Stage(stage) = &read.version {
                            let known = watched.stages.get_or_insert(stage, &read.version_id);
                            if *known != read.version_id {
                                wake.push(es.clone());
                            }
                        }
                        watched.keep_value(
                            &mut state.ledger,
                            (&shared_key, &full),
                            read.version_id.clone(),
                            secret,
                        );
                    }
                    // Known from status only (after a restart): a first guess until a check says more.
                    None => {
                        if let Version::Stage(stage) = &read.version {
                            watched.stages.get_or_insert(stage, &read.version_id);
                        }
                    }
                }
                watched.prune(&mut state.ledger);
                recorded.push((read.key, read.version, read.version_id));
            }
            if let Some(old) = old {
                let still_read = if *old.group == key {
                    reading
                } else {
                    BTreeSet::new()
                };
                remove_reader(&mut state.groups, &mut state.ledger, &es, &old, &still_read);
            }
            state.registrations.insert(
                es,
                Registration {
                    store: store_version,
                    group: shared_key,
                    prefix,
                    reads: recorded,
                },
            );
            self.update_gauge(state);
            self.settle_budget(state);
        }
        self.wake_all(wake);
    }

    /// Stops watching for a deleted ExternalSecret.
    pub fn forget(&self, es: &EsName) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(old) = state.registrations.remove(es) {
            remove_reader(
                &mut state.groups,
                &mut state.ledger,
                es,
                &old,
                &BTreeSet::new(),
            );
        }
        self.update_gauge(state);
    }

    /// Stops watching for every ExternalSecret for which `live` does not hold.
    pub fn retain(&self, live: impl Fn(&EsName) -> bool) {
        let mut state = self.lock();
        let state = &mut *state;
        let gone: Vec<Reader> = state
            .registrations
            .keys()
            .filter(|es| !live(es))
            .cloned()
            .collect();
        for es in gone {
            if let Some(old) = state.registrations.remove(&es) {
                remove_reader(
                    &mut state.groups,
                    &mut state.ledger,
                    &es,
                    &old,
                    &BTreeSet::new(),
                );
            }
        }
        self.update_gauge(state);
    }

    /// Keeps the values within their budget, and says so in the metrics.
    fn settle_budget(&self, state: &mut State) {
        let evicted = state.evict_over_budget();
        self.metrics.kept_values(state.ledger.bytes, evicted);
    }

    fn update_gauge(&self, state: &State) {
        let mut counts: HashMap<VersionCheckStrategy, i64> = HashMap::new();
        for (key, group) in &state.groups {
            *counts.entry(key.check.strategy).or_default() += group.secrets.len() as i64;
        }
        for strategy in [
            VersionCheckStrategy::ListSecrets,
            VersionCheckStrategy::DescribeSecret,
            VersionCheckStrategy::Events,
        ] {
            self.metrics.remote_secrets_watched(
                strategy_label(strategy),
                counts.get(&strategy).copied().unwrap_or_default(),
            );
        }
    }

    fn wake_all(&self, mut readers: Vec<Reader>) {
        readers.sort();
        readers.dedup();
        for reader in readers {
            // Only fails when the controller has stopped.
            let _ = self.wake.unbounded_send(reader.object_ref());
        }
    }
}

/// Takes an ExternalSecret's marks off the secrets of an old registration, except those in `still_read`.
fn remove_reader(
    groups: &mut HashMap<Arc<GroupKey>, Group>,
    ledger: &mut Ledger,
    es: &EsName,
    registration: &Registration,
    still_read: &BTreeSet<String>,
) {
    let Some(group) = groups.get_mut(&registration.group) else {
        return;
    };
    for (key, _, _) in &registration.reads {
        let full = format!("{}{key}", registration.prefix);
        if still_read.contains(&full) {
            continue;
        }
        if let Some(watched) = group.secrets.get_mut(&full) {
            watched.readers.remove(es);
            watched.pinned.remove(es);
            if watched.readers.is_empty() {
                watched.forget_values(ledger);
                group.secrets.remove(&full);
            } else {
                watched.prune(ledger);
            }
        }
    }
    if group.secrets.is_empty() {
        // Dropping the group stops its checks.
        groups.remove(&registration.group);
    }
}

pub fn strategy_label(strategy: VersionCheckStrategy) -> &'static str {
    match strategy {
        VersionCheckStrategy::ListSecrets => "ListSecrets",
        VersionCheckStrategy::DescribeSecret => "DescribeSecret",
        VersionCheckStrategy::Events => "Events",
        VersionCheckStrategy::None => "None",
    }
}

/// A provider that serves kept values first and reads only what is not kept: how an ExternalSecret woken
/// by a rotation builds its Secret.
pub struct KeptFirst<'a> {
    pub provider: &'a Provider,
    pub kept: Kept<'a>,
    /// For a first sync: values read shortly before may serve it, and its reads carry those of the first
    /// syncs to come.
    pub upcoming: Option<Arc<dyn ReadAhead>>,
}

impl SecretProvider for KeptFirst<'_> {
    async fn get_secret(&self, key: &str, version: &Version) -> Result<RemoteSecret> {
        match self.kept.get(key, version) {
            Some(secret) => Ok(secret),
            None => self.provider.get_secret(key, version).await,
        }
    }

    async fn get_current_batch(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        let current = Version::parse(None);
        let mut read = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            match self.kept.get(key, &current) {
                Some(secret) => read.push((key.clone(), Ok(secret))),
                None => missing.push(key.clone()),
            }
        }
        if !missing.is_empty() {
            match (self.provider, &self.upcoming) {
                (Provider::Aws(aws), Some(upcoming)) => read.extend(
                    aws.current_for_first_sync(&missing, upcoming.clone())
                        .await?,
                ),
                _ => read.extend(self.provider.get_current_batch(&missing).await?),
            }
        }
        Ok(read)
    }

    async fn get_tags(&self, key: &str) -> Result<BTreeMap<String, String>> {
        self.provider.get_tags(key).await
    }

    async fn list_names(
        &self,
        path: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        self.provider.list_names(path, tags).await
    }

    async fn validate(&self) -> Result<String> {
        self.provider.validate().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::RemoteValue;
    use futures::StreamExt;
    use futures::channel::mpsc::{UnboundedReceiver, unbounded};
    use kube::runtime::events::Reporter;

    fn watches() -> (
        Arc<Watches>,
        UnboundedReceiver<ObjectRef<ExternalSecret>>,
        AwsSecretsManager,
    ) {
        watches_within(usize::MAX)
    }

    fn watches_within(
        budget: usize,
    ) -> (
        Arc<Watches>,
        UnboundedReceiver<ObjectRef<ExternalSecret>>,
        AwsSecretsManager,
    ) {
        // Nothing here reaches the API server or AWS: checks run only after an interval.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .build();
        let metrics = Arc::new(Metrics::default());
        let stores = Arc::new(Stores::new(client.clone(), aws.clone(), metrics.clone()));
        let recorder = Recorder::new(client, Reporter::from("test"));
        let (wake, woken) = unbounded();
        let watches = Arc::new(Watches::new(
            stores,
            metrics.clone(),
            recorder,
            wake,
            budget,
        ));
        let provider = AwsSecretsManager::new(
            &aws,
            Some("app/"),
            IdentityKey::operator("eu-west-1"),
            metrics,
            Default::default(),
            None,
        );
        (watches, woken, provider)
    }

    fn store() -> StoreHandle {
        StoreHandle {
            kind: StoreKind::SecretStore,
            name: "aws".into(),
            store_namespace: Some("ns".into()),
            requester_namespace: Some("ns".into()),
            generation: Some(1),
            spec: serde_json::from_value(
                serde_json::json!({"provider": {"aws": {"service": "SecretsManager"}}}),
            )
            .unwrap(),
        }
    }

    fn es(name: &str) -> EsName {
        EsName::new("ns", name)
    }

    fn read(version: Version, id: &str, stages: &[&str], value: &str) -> Read {
        Read {
            at: Instant::now(),
            key: "db".into(),
            version,
            version_id: id.into(),
            secret: Some(RemoteSecret {
                version_id: Some(id.into()),
                stages: stages.iter().map(|s| s.to_string()).collect(),
                value: RemoteValue::Text(value.into()),
                read_at: None,
                replica: None,
            }),
        }
    }

    fn text(secret: Option<RemoteSecret>) -> Option<String> {
        match secret?.value {
            RemoteValue::Text(text) => Some(text),
            RemoteValue::Binary(_) => None,
        }
    }

    #[tokio::test]
    async fn kept_values_stay_within_their_budget_the_oldest_leaving_first() {
        let value = "x".repeat(100);
        let current = || Version::parse(None);
        let read_of = |key: &str| Read {
            key: key.into(),
            ..read(current(), &format!("{key}-v1"), &["AWSCURRENT"], &value)
        };
        let size = read_of("a").secret.unwrap().bytes();
        let (watches, _woken, provider) = watches_within(2 * size);
        let check = VersionCheck::default();
        for name in ["a", "b", "c"] {
            watches.register(
                es(name),
                &provider,
                check.clone(),
                store(),
                vec![read_of(name)],
            );
        }
        let kept = watches.kept(&provider, &check);
        assert!(kept.get("a", &current()).is_none(), "the oldest left");
        assert!(!kept.holds_current("a"), "so a first sync reads it");
        assert!(kept.get("b", &current()).is_some());
        assert!(kept.get("c", &current()).is_some());
        assert_eq!(watches.lock().ledger.bytes, 2 * size);
        // Every reader of a secret registers its value again: counted once, listed once.
        for reader in ["c1", "c2", "c3"] {
            watches.register(
                es(reader),
                &provider,
                check.clone(),
                store(),
                vec![read_of("c")],
            );
        }
        assert_eq!(watches.lock().ledger.bytes, 2 * size);
        assert_eq!(watches.lock().ledger.order.len(), 2);

        // Read again, it is the newest: the next oldest leaves.
        watches.register(
            es("a"),
            &provider,
            check.clone(),
            store(),
            vec![read_of("a")],
        );
        let kept = watches.kept(&provider, &check);
        assert!(kept.get("a", &current()).is_some());
        assert!(kept.get("b", &current()).is_none());
        for name in ["a", "b", "c", "c1", "c2", "c3"] {
            watches.forget(&es(name));
        }
        let state = watches.lock();
        assert_eq!((state.ledger.bytes, state.ledger.values), (0, 0));
    }

    #[tokio::test]
    async fn a_newer_version_read_by_one_reader_wakes_the_others() {
        let (watches, mut woken, provider) = watches();
        let check = VersionCheck::default();
        let current = || Version::parse(None);
        watches.register(
            es("a"),
            &provider,
            check.clone(),
            store(),
            vec![read(current(), "v1", &["AWSCURRENT"], "one")],
        );
        watches.register(
            es("b"),
            &provider,
            check.clone(),
            store(),
            vec![read(current(), "v2", &["AWSCURRENT"], "two")],
        );

        assert_eq!(woken.next().await, Some(es("a").object_ref()));
        assert!(watches.stale(&es("a")));
        assert!(!watches.stale(&es("b")));
        let kept = watches.kept(&provider, &check);
        assert_eq!(text(kept.get("db", &current())).as_deref(), Some("two"));
        assert!(
            kept.get("db", &Version::Id("v1".into())).is_none(),
            "v1 is read by nobody"
        );
        assert_eq!(
            kept.get("db", &current()).unwrap().stages,
            Vec::<String>::new(),
            "kept values do not claim stages"
        );

        watches.register(
            es("a"),
            &provider,
            check.clone(),
            store(),
            vec![read(current(), "v2", &["AWSCURRENT"], "two")],
        );
        assert!(!watches.stale(&es("a")));
        watches.forget(&es("a"));
        watches.forget(&es("b"));
        assert!(
            watches.lock().groups.is_empty(),
            "the last reader gone stops the checks"
        );
    }

    #[tokio::test]
    async fn a_read_older_than_what_the_watch_knows_never_moves_it_back() {
        let (watches, mut woken, provider) = watches();
        let check = VersionCheck::default();
        let current = || Version::parse(None);
        // A slow sync started reading before another one saw v2, and registers after it.
        let slow = read(current(), "v1", &["AWSCURRENT"], "one");
        watches.register(
            es("fast"),
            &provider,
            check.clone(),
            store(),
            vec![read(current(), "v2", &["AWSCURRENT"], "two")],
        );
        watches.register(es("slow"), &provider, check.clone(), store(), vec![slow]);

        assert_eq!(
            woken.next().await,
            Some(es("slow").object_ref()),
            "the slow one is woken"
        );
        assert!(watches.stale(&es("slow")));
        assert!(
            !watches.stale(&es("fast")),
            "the fast one is not rolled back"
        );
        let kept = watches.kept(&provider, &check);
        assert_eq!(text(kept.get("db", &current())).as_deref(), Some("two"));
    }

    #[test]
    fn stages_remember_the_versions_they_left() {
        let mut watched = Watched::default();
        assert!(!watched.set_stage("AWSCURRENT", "v1"));
        assert!(watched.set_stage("AWSCURRENT", "v2"));
        assert_eq!(watched.superseded, ["v1"]);
        // Confirmed back (a real rollback): no longer a lagging listing's mark.
        assert!(watched.set_stage("AWSCURRENT", "v1"));
        assert_eq!(watched.superseded, ["v2"]);
        for i in 0..40 {
            watched.set_stage("AWSCURRENT", &format!("n{i}"));
        }
        assert_eq!(watched.superseded.len(), SUPERSEDED_KEPT);
    }

    #[tokio::test]
    async fn pinned_versions_are_kept_while_read_and_never_stale() {
        let (watches, _woken, provider) = watches();
        let check = VersionCheck::default();
        let pinned = Version::Id("v1".into());
        watches.register(
            es("pinned"),
            &provider,
            check.clone(),
            store(),
            vec![read(pinned.clone(), "v1", &["AWSPREVIOUS"], "one")],
        );
        watches.register(
            es("current"),
            &provider,
            check.clone(),
            store(),
            vec![read(Version::parse(None), "v2", &["AWSCURRENT"], "two")],
        );
        let kept = watches.kept(&provider, &check);
        assert_eq!(text(kept.get("db", &pinned)).as_deref(), Some("one"));
        assert_eq!(
            text(kept.get("db", &Version::Stage("AWSPREVIOUS".into()))).as_deref(),
            Some("one")
        );
        assert!(!watches.stale(&es("pinned")));

        watches.forget(&es("pinned"));
        let kept = watches.kept(&provider, &check);
        assert!(
            kept.get("db", &pinned).is_none(),
            "dropped once nobody reads it"
        );
        assert_eq!(
            text(kept.get("db", &Version::parse(None))).as_deref(),
            Some("two")
        );
    }

    #[tokio::test]
    async fn after_a_restart_the_status_is_a_first_guess() {
        let (watches, _woken, provider) = watches();
        let from_status = Read {
            key: "db".into(),
            version: Version::parse(None),
            version_id: "v1".into(),
            secret: None,
            at: Instant::now(),
        };
        watches.register(
            es("a"),
            &provider,
            VersionCheck::default(),
            store(),
            vec![from_status],
        );
        assert!(watches.registered_store(&es("a")).is_some());
        assert!(!watches.stale(&es("a")));
        assert!(
            watches
                .kept(&provider, &VersionCheck::default())
                .get("db", &Version::parse(None))
                .is_none()
        );
    }
}
