//! Current values read together. Syncs with the same identity and prefix that need current values while a
//! read is under way queue their keys; when it returns, the queue goes out as one BatchGetSecretValue per 20
//! distinct keys, and a key that several syncs wait for is read once. A lone request goes out at once, so
//! batching adds no delay; under load, calls carry as many keys as have piled up.
//!
//! A request joins only reads not yet sent: every answer was read after it was asked for, so a sync never
//! gets a version older than one its version watch knew of before it asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{AwsSecretsManager, BATCH_LIMIT};
use crate::error::{Error, Result};
use crate::provider::RemoteSecret;
use crate::store::IdentityKey;

/// How long a read waits, when none is under way, for others to join it.
const GATHER: Duration = Duration::from_millis(20);

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
    /// Whether a call is under way; it sends what waits when it returns.
    busy: bool,
    /// The latest requester's clients: their session is the freshest.
    reader: Option<AwsSecretsManager>,
}

impl SharedReads {
    /// The current value of each key, read together with what other syncs need meanwhile.
    pub async fn current(
        &self,
        reader: &AwsSecretsManager,
        keys: &[String],
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        let queue = self
            .queues
            .lock()
            .expect("never poisoned")
            .entry((reader.identity.clone(), reader.prefix.clone()))
            .or_default()
            .clone();
        let mut answers = Vec::with_capacity(keys.len());
        let start = {
            let mut queue = queue.lock().expect("never poisoned");
            for key in keys {
                let (tell, answer) = oneshot::channel();
                match queue.waiting.iter_mut().find(|(waiting, _)| waiting == key) {
                    Some((_, waiters)) => waiters.push(tell),
                    None => queue.waiting.push((key.clone(), vec![tell])),
                }
                answers.push((key.clone(), answer));
            }
            queue.reader = Some(reader.clone());
            !std::mem::replace(&mut queue.busy, true)
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

/// Sends what waits, 20 keys a call, until nothing does. Runs on its own task: a sync that gives up (its
/// deadline, a shutdown) must not take the others' read with it.
async fn send_all(queue: SharedQueue) {
    tokio::time::sleep(GATHER).await;
    loop {
        let (reader, batch) = {
            let mut queue = queue.lock().expect("never poisoned");
            match (queue.waiting.is_empty(), queue.reader.clone()) {
                (false, Some(reader)) => {
                    let take = queue.waiting.len().min(BATCH_LIMIT);
                    let batch: Vec<_> = queue.waiting.drain(..take).collect();
                    (reader, batch)
                }
                _ => {
                    queue.busy = false;
                    return;
                }
            }
        };
        let keys: Vec<String> = batch.iter().map(|(key, _)| key.clone()).collect();
        match reader.read_current(&keys).await {
            Ok(read) => {
                let mut answers: HashMap<String, Result<RemoteSecret>> = read.into_iter().collect();
                for (key, waiters) in batch {
                    let answer = answers.remove(&key).unwrap_or_else(|| {
                        Err(Error::Provider {
                            call: "BatchGetSecretValue",
                            key: Some(key.clone()),
                            detail: "the answer did not name this secret".into(),
                        })
                    });
                    for waiter in waiters {
                        let _ = waiter.send(Ok(answer.clone()));
                    }
                }
            }
            Err(failed) => {
                for waiter in batch.into_iter().flat_map(|(_, waiters)| waiters) {
                    let _ = waiter.send(Err(failed.clone()));
                }
            }
        }
    }
}
