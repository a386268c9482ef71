//! Current values read together. Syncs with the same identity and prefix that need current values while a
//! read is under way queue their keys; when it returns, the queue goes out as one BatchGetSecretValue per 20
//! distinct keys, and a key that several syncs wait for is read once. A lone request waits a moment for
//! company; under load, calls carry as many keys as have piled up.
//!
//! A refresh or a rotation joins only reads not yet sent: its answer was read after it was asked for, so a
//! sync never gets a version older than one its version watch knew of before it asked. A first sync has no
//! such watch yet: a call with room also carries what first syncs about to start will need (read-ahead),
//! and a first sync takes a value read shortly before it asked, with the time that read started, by which
//! the version watch judges it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{AwsSecretsManager, BATCH_LIMIT};
use crate::error::{Error, Result};
use crate::provider::RemoteSecret;
use crate::store::IdentityKey;

/// How long a read waits, when none is under way, for others to join it.
const GATHER: Duration = Duration::from_millis(20);
/// How long a value read for a first sync not yet started waits for it. Syncs start in about the order the
/// watch listed them, not exactly, and a first sync of 10,000 takes over a minute: a value must outlast the
/// wait for its ExternalSecret's turn, or it is read again.
const READ_AHEAD_KEPT: Duration = Duration::from_secs(120);

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
    /// Values read for first syncs, with when their read started; dropped after `READ_AHEAD_KEPT`.
    read_ahead: HashMap<String, (Instant, RemoteSecret)>,
    /// Whether a call is under way; it sends what waits when it returns.
    busy: bool,
    /// The latest requester's clients: their session is the freshest.
    reader: Option<AwsSecretsManager>,
    /// The latest first sync's view of what comes next; dropped when the queue falls idle.
    upcoming: Option<Arc<dyn ReadAhead>>,
}

impl Queue {
    fn drop_stale_read_ahead(&mut self) {
        self.read_ahead
            .retain(|_, (at, _)| at.elapsed() < READ_AHEAD_KEPT);
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
            queue.drop_stale_read_ahead();
            for key in keys {
                let (tell, answer) = oneshot::channel();
                answers.push((key.clone(), answer));
                if first_sync {
                    if let Some((at, secret)) = queue.read_ahead.get(key) {
                        let _ = tell.send(Ok(Ok(read_before(secret, *at))));
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
                    queue.drop_stale_read_ahead();
                    let ahead = match &queue.upcoming {
                        Some(upcoming) if batch.len() < BATCH_LIMIT => {
                            let asked: HashSet<&str> =
                                batch.iter().map(|(key, _)| key.as_str()).collect();
                            let read_ahead = &queue.read_ahead;
                            upcoming.upcoming(BATCH_LIMIT - batch.len(), &|key| {
                                asked.contains(key) || read_ahead.contains_key(key)
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
                        state.read_ahead.insert(key, (started, secret));
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
