//! The checks of one group of watches: a poll every interval (ListSecrets, or DescribeSecret per secret),
//! and with `Events` a listener on the SQS queue that wakes the affected watches at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};

use super::{Detection, GroupKey, StoreHandle, Watches, strategy_label};
use crate::api::{ClusterSecretStore, SecretStore, StoreKind, VersionCheckStrategy};
use crate::error::{Error, Result};
use crate::provider::aws::events::{QueueMessage, SecretEvent, name_in_arn};
use crate::provider::aws::{AwsSecretsManager, Stages, Versions};
use crate::provider::{Provider, SecretProvider, Version};
use crate::task::AbortOnDrop;

/// DescribeSecret checks in flight at once for one group.
const DESCRIBE_CONCURRENCY: usize = 8;
/// Pause after a failed receive from the queue.
const QUEUE_RETRY: Duration = Duration::from_secs(5);

/// What a check saw of one watched secret.
enum Observation {
    /// `replica`: seen in a failover region, which may lag behind its primary.
    Stages {
        stages: Stages,
        replica: bool,
    },
    Gone,
}

pub(super) fn start(watches: Arc<Watches>, key: GroupKey) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(poll(watches, key)).abort_handle())
}

/// The one consumer of an SQS queue, whatever the number of groups (identities and check settings) that
/// watch secrets through it: competing consumers would each take and drop the others' events. Every event
/// goes to every group; a message is deleted only once every group has applied it (otherwise it comes back
/// after the queue's visibility timeout). Ends when no group uses the queue any more.
pub(super) fn consume(watches: Arc<Watches>, queue_url: String) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(consume_queue(watches, queue_url)).abort_handle())
}

async fn consume_queue(watches: Arc<Watches>, queue_url: String) {
    loop {
        let Some(groups) = watches.queue_groups(&queue_url) else {
            return;
        };
        let Some((client, messages)) = receive(&watches, &groups, &queue_url).await else {
            tokio::time::sleep(QUEUE_RETRY).await;
            continue;
        };
        if messages.is_empty() {
            continue;
        }
        // Groups may have come during the long poll: the event is theirs too.
        let Some(groups) = watches.queue_groups(&queue_url) else {
            return;
        };
        let events: Vec<&SecretEvent> = messages.iter().filter_map(|m| m.event.as_ref()).collect();
        let mut applied = true;
        for key in &groups {
            applied &= watches.apply_events(key, &events).await;
        }
        let done: Vec<String> = messages
            .into_iter()
            .filter(|message| applied || message.event.is_none())
            .map(|message| message.receipt_handle)
            .collect();
        client.delete_messages(&queue_url, done).await;
    }
}

/// Waits for the queue's next messages with the first group's identity that may read it.
async fn receive(
    watches: &Watches,
    groups: &[GroupKey],
    queue_url: &str,
) -> Option<(AwsSecretsManager, Vec<QueueMessage>)> {
    for key in groups {
        let Some((store, _)) = watches.targets(key) else {
            continue;
        };
        let received = match watches.client(&store).await {
            Ok(client) => client
                .receive_messages(queue_url)
                .await
                .map(|messages| (client, messages)),
            Err(err) => Err(err),
        };
        match received {
            Ok(received) => return Some(received),
            Err(err) => watches.report(key, Some(&err)).await,
        }
    }
    None
}

async fn poll(watches: Arc<Watches>, key: GroupKey) {
    let interval = key
        .check
        .interval()
        .unwrap_or(crate::api::VersionCheck::DEFAULT_INTERVAL);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some((store, targets)) = watches.targets(&key) else {
            return;
        };
        let client = match watches.client(&store).await {
            Ok(client) => client,
            Err(err) => {
                watches.report(&key, Some(&err)).await;
                continue;
            }
        };
        let started = Instant::now();
        let observed = match key.check.strategy {
            VersionCheckStrategy::DescribeSecret => describe(&client, &targets).await,
            _ => list(&client, &targets).await,
        };
        match observed {
            Ok(observed) => {
                watches.report(&key, None).await;
                let observed = observed.into_iter().map(|(k, o)| (k, o, None)).collect();
                watches.apply(&key, &client, observed, started).await;
            }
            Err(err) => watches.report(&key, Some(&err)).await,
        }
    }
}

/// Whether an id from an event (ARN or name) and a watched id (name or ARN) are the same secret.
fn names_same_secret(event_id: &str, watched: &str) -> bool {
    let event_name = name_in_arn(event_id).unwrap_or(event_id);
    let watched_name = name_in_arn(watched).unwrap_or(watched);
    event_id == watched || event_name == watched_name
}

/// One ListSecrets pass over the watched secrets' common path; a watched secret not listed is gone.
async fn list(
    client: &AwsSecretsManager,
    targets: &[String],
) -> Result<Vec<(String, Observation)>> {
    let listed = client.list_versions(&common_path(targets)).await?;
    let mut by_id: HashMap<&str, &Versions> = HashMap::new();
    for versions in &listed {
        by_id.insert(&versions.name, versions);
        if let Some(arn) = &versions.arn {
            by_id.insert(arn, versions);
        }
    }
    Ok(targets
        .iter()
        .map(|target| {
            let observation = match by_id.get(target.as_str()) {
                Some(versions) => Observation::Stages {
                    stages: versions.stages.clone(),
                    replica: versions.replica,
                },
                None => Observation::Gone,
            };
            (target.clone(), observation)
        })
        .collect())
}

/// One DescribeSecret per watched secret; the first failure fails the check. Each answer is cut down to its
/// stages as it comes: at 25,000 secrets the whole answers held at once took 20 MB.
async fn describe(
    client: &AwsSecretsManager,
    targets: &[String],
) -> Result<Vec<(String, Observation)>> {
    stream::iter(targets.iter().cloned())
        .map(|target| async move {
            let observation = match client.describe_versions(&target).await {
                Ok(versions) => Observation::Stages {
                    stages: versions.stages,
                    replica: versions.replica,
                },
                Err(Error::RemoteKeyNotFound { .. }) => Observation::Gone,
                Err(err) => return Err(err),
            };
            Ok((target, observation))
        })
        .buffer_unordered(DESCRIBE_CONCURRENCY)
        .try_collect()
        .await
}

/// The longest common prefix of the watched names, cut back to a `/`: AWS matches the name filter on
/// whole words, so only a path is a safe filter. ARNs are listed without a filter.
fn common_path(targets: &[String]) -> String {
    if targets.iter().any(|t| t.starts_with("arn:")) {
        return String::new();
    }
    let Some(first) = targets.first() else {
        return String::new();
    };
    let mut common = first.as_str();
    for target in &targets[1..] {
        let shared = common
            .char_indices()
            .zip(target.chars())
            .find(|((_, a), b)| a != b)
            .map_or(common.len().min(target.len()), |((i, _), _)| i);
        common = &common[..shared];
    }
    match common.rfind('/') {
        Some(slash) => common[..=slash].to_string(),
        None => String::new(),
    }
}

impl Watches {
    /// The groups that watch through `queue_url`; `None` (and the queue's consumer forgotten) when none does.
    fn queue_groups(&self, queue_url: &str) -> Option<Vec<GroupKey>> {
        let mut state = self.lock();
        let groups: Vec<GroupKey> = state
            .groups
            .keys()
            .filter(|key| {
                key.check.events.as_ref().map(|e| e.queue_url.as_str()) == Some(queue_url)
            })
            .map(|key| GroupKey::clone(key))
            .collect();
        if groups.is_empty() {
            state.queues.remove(queue_url);
            return None;
        }
        Some(groups)
    }

    /// Checks the watched secrets that events name with DescribeSecret, with the group's identity; whether
    /// that worked (or there was nothing of this group's to check).
    async fn apply_events(&self, key: &GroupKey, events: &[&SecretEvent]) -> bool {
        let Some((store, targets)) = self.targets(key) else {
            return true;
        };
        let mut named: HashMap<String, Option<Timestamp>> = HashMap::new();
        for event in events {
            for target in targets
                .iter()
                .filter(|t| event.secret_ids.iter().any(|id| names_same_secret(id, t)))
            {
                let time = named.entry(target.clone()).or_insert(event.time);
                *time = (*time).min(event.time).or(event.time);
            }
        }
        if named.is_empty() {
            return true;
        }
        let client = match self.client(&store).await {
            Ok(client) => client,
            Err(err) => {
                self.report(key, Some(&err)).await;
                return false;
            }
        };
        let matched: Vec<String> = named.keys().cloned().collect();
        let started = Instant::now();
        match describe(&client, &matched).await {
            Ok(observed) => {
                let observed = observed
                    .into_iter()
                    .map(|(k, o)| {
                        let time = named.get(&k).copied().flatten();
                        (k, o, time)
                    })
                    .collect();
                self.apply(key, &client, observed, started).await;
                true
            }
            Err(err) => {
                self.report(key, Some(&err)).await;
                false
            }
        }
    }

    /// The group's store and the secrets it watches; `None` once the group is gone.
    fn targets(&self, key: &GroupKey) -> Option<(StoreHandle, Vec<String>)> {
        let state = self.lock();
        let group = state.groups.get(key)?;
        // Secrets read only at pinned versions cannot change.
        let mut targets: Vec<String> = group
            .secrets
            .iter()
            .filter(|(_, watched)| !watched.watched_stages().is_empty())
            .map(|(target, _)| target.clone())
            .collect();
        targets.sort();
        Some((group.store.clone(), targets))
    }

    /// A client of the store's current session, for full names.
    async fn client(&self, store: &StoreHandle) -> Result<AwsSecretsManager> {
        match self.stores.provider(&store.spec, &store.scope()).await? {
            Provider::Aws(aws) => Ok(aws.unprefixed()),
            Provider::Fake(_) => Err(Error::InvalidStoreConfig(
                "the fake provider has no versions to check".into(),
            )),
        }
    }

    /// Takes what a check saw: moved stages get their new values read (AWSCURRENT in batches, others by
    /// VersionId) and their readers woken; a secret that disappeared wakes its readers once.
    async fn apply(
        &self,
        key: &GroupKey,
        client: &AwsSecretsManager,
        observed: Vec<(String, Observation, Option<Timestamp>)>,
        started: Instant,
    ) {
        let now = Instant::now();
        let mut wake = Vec::new();
        let mut moved: Vec<(String, BTreeSet<String>)> = Vec::new();
        let mut current_to_read = Vec::new();
        let mut ids_to_read = Vec::new();
        {
            let mut state = self.lock();
            let Some(group) = state.groups.get_mut(key) else {
                return;
            };
            for (target, observation, event_time) in observed {
                let Some(watched) = group.secrets.get_mut(&target) else {
                    continue;
                };
                let stages = match observation {
                    Observation::Gone => {
                        if !watched.gone {
                            watched.gone = true;
                            wake.extend(watched.readers.keys().cloned());
                        }
                        continue;
                    }
                    Observation::Stages { stages, replica } => {
                        // A failover region that does not know the version we hold as current lags
                        // behind its primary: what it shows is older, and no rotation.
                        let held = watched.stages.get(Version::CURRENT);
                        if replica
                            && held.is_some_and(|held| !stages.iter().any(|(_, id)| id == held))
                        {
                            continue;
                        }
                        stages
                    }
                };
                // A sync's read that finished during this check saw newer stages than the check did.
                if watched.as_of.is_some_and(|as_of| as_of > started) {
                    continue;
                }
                // Stages pointed back at a version they moved away from: a lagging listing, believed only
                // once a read of the value confirms it.
                let lagging: BTreeSet<String> = stages
                    .iter()
                    .filter(|(_, id)| watched.superseded.contains(id))
                    .map(|(stage, _)| stage.clone())
                    .collect();
                if lagging.contains(Version::CURRENT)
                    && watched
                        .watched_stages()
                        .contains(&Version::CURRENT.to_string())
                {
                    current_to_read.push(target.clone());
                }
                let returned = std::mem::take(&mut watched.gone);
                let changed: BTreeSet<String> = watched
                    .watched_stages()
                    .into_iter()
                    .filter(|stage| {
                        returned
                            || (!lagging.contains(*stage)
                                && stages.get(stage) != watched.stages.get(stage))
                    })
                    .cloned()
                    .collect();
                watched
                    .stages
                    .retain(|stage| stages.contains_key(stage) || lagging.contains(stage));
                for (stage, id) in stages.iter() {
                    if !lagging.contains(stage) {
                        watched.set_stage(stage, id);
                    }
                }
                watched.as_of = Some(started);
                if changed.is_empty() {
                    continue;
                }
                for stage in &changed {
                    let Some(id) = watched.stages.get(stage) else {
                        continue;
                    };
                    watched.detected.entry(id.clone()).or_insert(Detection {
                        at: now,
                        event_time,
                    });
                    if watched.values.contains_key(id) {
                        continue;
                    }
                    if stage == Version::CURRENT {
                        current_to_read.push(target.clone());
                    } else {
                        ids_to_read.push((target.clone(), id.clone()));
                    }
                }
                moved.push((target, changed));
            }
        }
        if moved.is_empty() && wake.is_empty() && current_to_read.is_empty() {
            return;
        }
        self.metrics
            .rotations_detected(strategy_label(key.check.strategy), moved.len() as u64);

        // Read once here, so that the woken ExternalSecrets find the values kept and read nothing.
        let reading = Instant::now();
        let mut read = Vec::new();
        match client.get_current_batch(&current_to_read).await {
            Ok(results) => read.extend(
                results
                    .into_iter()
                    .filter_map(|(target, result)| Some((target, result.ok()?))),
            ),
            Err(err) => {
                tracing::warn!(error = %err, "could not read rotated values; the ExternalSecrets will read them")
            }
        }
        for (target, id) in ids_to_read {
            if let Ok(secret) = client.get_secret(&target, &Version::Id(id)).await {
                read.push((target, secret));
            }
        }

        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(shared_key) = state
            .groups
            .get_key_value(key)
            .map(|(shared, _)| shared.clone())
        else {
            return;
        };
        let group = state.groups.get_mut(key).expect("just found");
        for (target, secret) in read {
            let (Some(watched), Some(id)) =
                (group.secrets.get_mut(&target), secret.version_id.clone())
            else {
                continue;
            };
            // A failover region answering with a version already replaced lags behind its primary: that
            // confirms nothing, and is no rotation.
            if secret.replica.is_some() && watched.superseded.contains(&id) {
                continue;
            }
            // The batch answers with AWSCURRENT as it is now, which may already be newer than listed, or
            // confirm that a stage really went back.
            let mut moved_now = BTreeSet::new();
            for stage in &secret.stages {
                if watched.set_stage(stage, &id) {
                    moved_now.insert(stage.clone());
                }
            }
            watched.as_of = Some(reading);
            wake.extend(watched.readers_of(&moved_now));
            watched.detected.entry(id.clone()).or_insert(Detection {
                at: now,
                event_time: None,
            });
            watched.keep_value(&mut state.ledger, (&shared_key, &target), id, secret);
        }
        for (target, changed) in &moved {
            if let Some(watched) = group.secrets.get_mut(target) {
                wake.extend(watched.readers_of(changed));
                watched.prune(&mut state.ledger);
            }
        }
        self.settle_budget(state);
        drop(guard);
        tracing::info!(
            secrets = moved.len(),
            woken = wake.len(),
            strategy = strategy_label(key.check.strategy),
            "new versions detected"
        );
        self.wake_all(wake);
    }

    /// Reports a failing check once (log and a Warning event on the store), and its recovery. A recovery
    /// wakes every ExternalSecret of the group: those that failed while AWS did would otherwise wait out
    /// their backoff, up to minutes after AWS answers again.
    async fn report(&self, key: &GroupKey, error: Option<&Error>) {
        let (store, message, readers) = {
            let mut state = self.lock();
            let Some(group) = state.groups.get_mut(key) else {
                return;
            };
            // Classed as in condition messages, for alerts to match on.
            let message = error.map(|err| format!("{}: {err}", err.reason()));
            if group.last_error == message {
                return;
            }
            group.last_error = message.clone();
            let readers: Vec<_> = group
                .secrets
                .values()
                .flat_map(|watched| watched.readers.keys().cloned())
                .collect();
            (group.store.clone(), message, readers)
        };
        let Some(message) = message else {
            tracing::info!(store = %store.name, woken = readers.len(), "version checks work again");
            self.wake_all(readers);
            return;
        };
        tracing::warn!(store = %store.name, error = %message, "version check failed; rotations are picked up at the refresh interval until it works");
        let reference = store_reference(&store);
        let event = Event {
            type_: EventType::Warning,
            reason: "VersionCheckFailed".into(),
            note: Some(format!(
                "{message}; rotations are picked up at each ExternalSecret's refreshInterval until checks work"
            )),
            action: "CheckVersions".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, "could not publish event");
        }
    }
}

fn store_reference(store: &StoreHandle) -> ObjectReference {
    use kube::Resource;
    let (api_version, kind) = match store.kind {
        StoreKind::SecretStore => (SecretStore::api_version(&()), SecretStore::kind(&())),
        StoreKind::ClusterSecretStore => (
            ClusterSecretStore::api_version(&()),
            ClusterSecretStore::kind(&()),
        ),
    };
    ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(kind.to_string()),
        name: Some(store.name.clone()),
        namespace: store.store_namespace.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lists_by_the_common_path() {
        assert_eq!(
            common_path(&names(&["team-a/db", "team-a/api/key"])),
            "team-a/"
        );
        assert_eq!(
            common_path(&names(&["team-a/db/x", "team-a/db/y"])),
            "team-a/db/"
        );
        assert_eq!(common_path(&names(&["bench-1", "bench-2"])), "");
        assert_eq!(
            common_path(&names(&[
                "a/x",
                "arn:aws:secretsmanager:r:1:secret:a/y-AbCdEf"
            ])),
            ""
        );
        assert_eq!(common_path(&names(&["only/one"])), "only/");
    }

    #[test]
    fn events_match_names_and_arns() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team-a/db-AbCdEf";
        assert!(names_same_secret(arn, "team-a/db"));
        assert!(names_same_secret(arn, arn));
        assert!(names_same_secret("team-a/db", "team-a/db"));
        assert!(!names_same_secret(arn, "team-a/db2"));
    }
}
