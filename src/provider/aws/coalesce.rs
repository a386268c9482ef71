//! Current values read together. Syncs with the same identity and prefix that need current values while a
//! read is under way queue their keys; when it returns, the queue goes out as one BatchGetSecretValue per 20
//! distinct keys, and a key that several syncs wait for is read once. A lone request waits a moment for
//! company; under load, calls carry as many keys as have piled up.
//!
//! A refresh or a rotation joins only reads not yet sent: its answer was read after it was asked for, so a
//! sync never gets a version older than one its version watch knew of before it asked. A first sync has no
//! such watch yet: a call with room also carries what first syncs about to start will need (read-ahead),
//! and a first sync takes a value read before it asked, with the time that read started, by which the
//! version watch judges it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{AwsSecretsManager, BATCH_LIMIT};
use crate::error::{Error, Result};
use crate::provider::RemoteSecret;
use crate::store::IdentityKey;

/// How long a read waits, when none is under way, for others to join it.
const GATHER: Duration = Duration::from_millis(20);
/// How long a value read for a first sync not yet started waits for it. The controller does not start syncs
/// in the order the watch listed them, and a first sync of 100,000 takes many minutes: a value must outlast
/// the wait for its ExternalSecret's turn, or it is read again. The first sync that takes it registers it
/// with its version watch, which serves the others, so a value leaves soon after it is taken; this bounds
/// the rest (an ExternalSecret deleted or changed before its turn).
const READ_AHEAD_KEPT: Duration = Duration::from_secs(30 * 60);
/// The bytes of values read ahead and not yet taken, per queue; past it, calls carry only what was asked.
/// The first syncs not read ahead for then read their own values, still together.
const READ_AHEAD_BYTES: usize = 64 << 20;
/// How long a value read ahead stays once a first sync took it (see `ReadAheadValues::take`).
const TAKEN_KEPT: Duration = Duration::from_secs(30);

/// The keys that first syncs about to start will read, so that a call with room carries them too.
pub trait ReadAhead: Send + Sync {
    /// Up to `limit` keys, leaving out those for which `skip` holds.
    fn upcoming(&self, limit: usize, skip: &dyn Fn(&str) -> bool) -> Vec<String>;
}

/// One key's answer, or the whole call's failure.
type Answer = Result<Result<RemoteSecret>, Error>;

/// The queues of every (identity, prefix), shared by all syncs.
#[derive(Default)]
pub struct SharedReads {
    queues: Mutex<HashMap<(IdentityKey, String), SharedQueue>>,
}

type SharedQueue = Arc<Mutex<Queue>>;

#[derive(Default)]
struct Queue {
    /// Keys asked for and not yet sent, in the order asked, with who waits for each.
    waiting: Vec<(String, Vec<oneshot::Sender<Answer>>)>,
    /// The keys of the call under way, with the first syncs that asked for them after it was sent.
    in_flight: HashMap<String, Vec<oneshot::Sender<Answer>>>,
    /// Values read for first syncs and not yet taken.
    read_ahead: ReadAheadValues,
    /// Whether a call is under way; it sends what waits when it returns.
    busy: bool,
    /// The latest requester's clients: their session is the freshest.
    reader: Option<AwsSecretsManager>,
    /// The latest first sync's view of what comes next; dropped when the queue falls idle.
    upcoming: Option<Arc<dyn ReadAhead>>,
}

/// Values read for first syncs, oldest first.
#[derive(Default)]
struct ReadAheadValues {
    values: HashMap<String, Held>,
    /// When each was read, in that order; an entry whose value left (or was read again) since is skipped.
    read: VecDeque<(Instant, String)>,
    /// When each was first taken, in that order; likewise.
    taken: VecDeque<(Instant, String)>,
    bytes: usize,
}

struct Held {
    /// When its read started.
    at: Instant,
    secret: RemoteSecret,
    taken: Option<Instant>,
}

fn size_of(key: &str, secret: &RemoteSecret) -> usize {
    key.len() + secret.bytes()
}

impl ReadAheadValues {
    fn insert(&mut self, key: String, at: Instant, secret: RemoteSecret) {
        self.bytes += size_of(&key, &secret);
        self.read.push_back((at, key.clone()));
        let held = Held {
            at,
            secret,
            taken: None,
        };
        if let Some(old) = self.values.insert(key.clone(), held) {
            self.bytes -= size_of(&key, &old.secret);
        }
    }

    /// The value of `key` and when its read started. It stays a moment for the first syncs that read it at
    /// the same time: the version watch that the first one registers it with serves those after.
    fn take(&mut self, key: &str, now: Instant) -> Option<(Instant, RemoteSecret)> {
        let held = self.values.get_mut(key)?;
        if held.taken.is_none() {
            held.taken = Some(now);
            self.taken.push_back((now, key.to_string()));
        }
        Some((held.at, held.secret.clone()))
    }

    fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    fn has_room(&self) -> bool {
        self.bytes < READ_AHEAD_BYTES
    }

    fn remove(&mut self, key: &str) {
        if let Some(held) = self.values.remove(key) {
            self.bytes -= size_of(key, &held.secret);
        }
    }

    fn drop_stale(&mut self, now: Instant) {
        let expired = |at: &Instant, kept: Duration| now.saturating_duration_since(*at) >= kept;
        while let Some((at, _)) = self.read.front()
            && expired(at, READ_AHEAD_KEPT)
        {
            let (at, key) = self.read.pop_front().expect("just seen");
            if self.values.get(&key).is_some_and(|held| held.at == at) {
                self.remove(&key);
            }
        }
        while let Some((at, _)) = self.taken.front()
            && expired(at, TAKEN_KEPT)
        {
            let (at, key) = self.taken.pop_front().expect("just seen");
            if self
                .values
                .get(&key)
                .is_some_and(|held| held.taken == Some(at))
            {
                self.remove(&key);
            }
        }
        // Values that left early leave their place in `read` behind: compact when those are most of it.
        if self.read.len() > 2 * self.values.len() + 64 {
            let values = &self.values;
            self.read
                .retain(|(at, key)| values.get(key).is_some_and(|held| held.at == *at));
        }
    }
}

impl SharedReads {
    /// The current value of each key, read together with what other syncs need meanwhile. A first sync
    /// passes `upcoming`: it takes values read shortly before it asked, marked with `read_at`, and lends
    /// calls its view of the first syncs to come.
    pub async fn current(
        &self,
        reader: &AwsSecretsManager,
        keys: &[String],
        upcoming: Option<Arc<dyn ReadAhead>>,
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        let queue = self
            .queues
            .lock()
            .expect("never poisoned")
            .entry((reader.identity.clone(), reader.prefix.clone()))
            .or_default()
            .clone();
        let first_sync = upcoming.is_some();
        let mut answers = Vec::with_capacity(keys.len());
        let start = {
            let mut queue = queue.lock().expect("never poisoned");
            let now = Instant::now();
            queue.read_ahead.drop_stale(now);
            for key in keys {
                let (tell, answer) = oneshot::channel();
                answers.push((key.clone(), answer));
                if first_sync {
                    if let Some((at, secret)) = queue.read_ahead.take(key, now) {
                        let _ = tell.send(Ok(Ok(RemoteSecret {
                            read_at: Some(at),
                            ..secret
                        })));
                        continue;
                    }
                    if let Some(joined) = queue.in_flight.get_mut(key) {
                        joined.push(tell);
                        continue;
                    }
                }
                match queue.waiting.iter_mut().find(|(waiting, _)| waiting == key) {
                    Some((_, waiters)) => waiters.push(tell),
                    None => queue.waiting.push((key.clone(), vec![tell])),
                }
            }
            queue.reader = Some(reader.clone());
            if upcoming.is_some() {
                queue.upcoming = upcoming;
            }
            !queue.waiting.is_empty() && !std::mem::replace(&mut queue.busy, true)
        };
        if start {
            tokio::spawn(send_all(queue.clone()));
        }
        let mut read = Vec::with_capacity(answers.len());
        for (key, answer) in answers {
            match answer.await {
                Ok(Ok(result)) => read.push((key, result)),
                Ok(Err(failed)) => return Err(failed),
                Err(_) => {
                    return Err(Error::Provider {
                        call: "BatchGetSecretValue",
                        key: None,
                        detail: "the shared read was abandoned".into(),
                    });
                }
            }
        }
        Ok(read)
    }
}

fn read_before(secret: &RemoteSecret, at: Instant) -> RemoteSecret {
    RemoteSecret {
        read_at: Some(at),
        ..secret.clone()
    }
}

/// Sends what waits, 20 keys a call, until nothing does. Runs on its own task: a sync that gives up (its
/// deadline, a shutdown) must not take the others' read with it.
async fn send_all(queue: SharedQueue) {
    tokio::time::sleep(GATHER).await;
    loop {
        let (reader, batch, ahead) = {
            let mut queue = queue.lock().expect("never poisoned");
            let queue = &mut *queue;
            match (queue.waiting.is_empty(), queue.reader.clone()) {
                (false, Some(reader)) => {
                    let take = queue.waiting.len().min(BATCH_LIMIT);
                    let batch: Vec<_> = queue.waiting.drain(..take).collect();
                    queue.read_ahead.drop_stale(Instant::now());
                    let ahead = match &queue.upcoming {
                        Some(upcoming)
                            if batch.len() < BATCH_LIMIT && queue.read_ahead.has_room() =>
                        {
                            let asked: HashSet<&str> =
                                batch.iter().map(|(key, _)| key.as_str()).collect();
                            let read_ahead = &queue.read_ahead;
                            upcoming.upcoming(BATCH_LIMIT - batch.len(), &|key| {
                                asked.contains(key) || read_ahead.contains(key)
                            })
                        }
                        _ => Vec::new(),
                    };
                    queue.in_flight = batch
                        .iter()
                        .map(|(key, _)| key)
                        .chain(&ahead)
                        .map(|key| (key.clone(), Vec::new()))
                        .collect();
                    (reader, batch, ahead)
                }
                _ => {
                    queue.busy = false;
                    queue.upcoming = None;
                    return;
                }
            }
        };
        let asked: Vec<String> = batch.iter().map(|(key, _)| key.clone()).collect();
        let started = Instant::now();
        let result = reader.read_current(&asked, &ahead).await;
        let mut state = queue.lock().expect("never poisoned");
        let joined = std::mem::take(&mut state.in_flight);
        let waiters = batch
            .into_iter()
            .map(|(key, waiters)| (key, waiters, false));
        let late = joined
            .into_iter()
            .map(|(key, waiters)| (key, waiters, true));
        match result {
            Ok(read) => {
                let mut answers: HashMap<String, Result<RemoteSecret>> = read.into_iter().collect();
                for (key, waiters, late) in waiters.chain(late) {
                    let answer = match answers.get(&key) {
                        Some(answer) => answer.clone(),
                        // A key read ahead is left unread when the batch is denied and only the asked keys
                        // are read one by one: the first syncs that joined it ask again.
                        None if late => {
                            if !waiters.is_empty() {
                                state.waiting.push((key, waiters));
                            }
                            continue;
                        }
                        None => Err(Error::Provider {
                            call: "BatchGetSecretValue",
                            key: Some(key.clone()),
                            detail: "the answer did not name this secret".into(),
                        }),
                    };
                    let answer = match answer {
                        Ok(secret) if late => Ok(read_before(&secret, started)),
                        other => other,
                    };
                    for waiter in waiters {
                        let _ = waiter.send(Ok(answer.clone()));
                    }
                }
                for (key, answer) in answers.drain() {
                    if let Ok(secret) = answer {
                        state.read_ahead.insert(key, started, secret);
                    }
                }
            }
            Err(failed) => {
                for (_, waiters, _) in waiters.chain(late) {
                    for waiter in waiters {
                        let _ = waiter.send(Err(failed.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::RemoteValue;

    fn secret(value: &str) -> RemoteSecret {
        RemoteSecret {
            version_id: Some("v1".into()),
            stages: vec!["AWSCURRENT".into()],
            value: RemoteValue::Text(value.into()),
            read_at: None,
            replica: None,
        }
    }

    #[test]
    fn a_value_read_ahead_stays_a_moment_after_it_is_taken() {
        let mut values = ReadAheadValues::default();
        let start = Instant::now();
        values.insert("a".into(), start, secret("1234"));
        values.insert("b".into(), start, secret("12"));
        // Read again before anyone took it: one value, counted once.
        values.insert("a".into(), start, secret("123456"));
        let stages = "AWSCURRENT".len();
        assert_eq!(values.bytes, (1 + 6 + 2 + stages) + (1 + 2 + 2 + stages));
        let taken_at = start + Duration::from_secs(60);
        assert!(values.take("a", taken_at).is_some());
        assert!(
            values.take("a", taken_at + TAKEN_KEPT / 2).is_some(),
            "first syncs at the same time share it"
        );
        values.drop_stale(taken_at + TAKEN_KEPT);
        assert!(!values.contains("a"), "its watch serves the next ones");
        assert!(values.contains("b"), "not taken: it waits for its sync");
        assert_eq!(values.bytes, 1 + 2 + 2 + stages);
    }

    #[test]
    fn values_never_taken_leave_oldest_first() {
        let mut values = ReadAheadValues::default();
        let start = Instant::now();
        values.insert("old".into(), start, secret("x"));
        values.insert("new".into(), start + Duration::from_secs(1), secret("y"));
        values.drop_stale(start + READ_AHEAD_KEPT);
        assert!(!values.contains("old"));
        assert!(values.contains("new"));
        assert_eq!(values.bytes, 3 + 1 + 2 + "AWSCURRENT".len());
        assert_eq!(values.read.len(), 1);
    }
}
