//! Syncs of many ExternalSecrets at once (a store changed, a watch was relisted) reach the controller a few
//! at a time. Its queue has no priority: with all 10,000 ExternalSecrets of a changed store queued at once, a
//! new ExternalSecret waited 37 s behind them. Fed at most one round of the controller's concurrency ahead,
//! the queue never holds more than that in front of it, and the re-sync still keeps every worker busy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::api::ExternalSecret;
use crate::es_name::EsName;

/// A sync handed over this long ago counts as finished even if the controller never reported it (the
/// ExternalSecret was deleted meanwhile, so the controller dropped it), so that no slot stays taken.
const HANDED_OVER_FOR: Duration = Duration::from_secs(15);

pub struct Resyncs {
    state: Mutex<State>,
    changed: Notify,
    /// How many may be handed to the controller and not finished yet.
    ahead: usize,
}

/// A store change puts every ExternalSecret of the store here at once, so each is held by name only.
#[derive(Default)]
struct State {
    waiting: VecDeque<EsName>,
    /// What `waiting` holds, so that one asked for twice waits once.
    waiting_set: HashSet<EsName>,
    handed_over: HashMap<EsName, Instant>,
}

impl Resyncs {
    pub fn new(ahead: usize) -> Self {
        Resyncs {
            state: Mutex::default(),
            changed: Notify::new(),
            ahead: ahead.max(1),
        }
    }

    /// Asks for these ExternalSecrets to be synced, behind those already waiting.
    pub fn request(&self, names: impl IntoIterator<Item = EsName>) {
        let mut state = self.state.lock().expect("never poisoned");
        for es in names {
            if state.waiting_set.insert(es.clone()) {
                state.waiting.push_back(es);
            }
        }
        drop(state);
        self.changed.notify_one();
    }

    /// A sync of `es` finished (whatever asked for it), which frees its slot if it was handed over.
    pub fn finished(&self, es: &EsName) {
        let freed = self
            .state
            .lock()
            .expect("never poisoned")
            .handed_over
            .remove(es)
            .is_some();
        if freed {
            self.changed.notify_one();
        }
    }

    /// The next one to hand to the controller, once a slot is free.
    fn next(&self) -> Option<ObjectRef<ExternalSecret>> {
        let mut state = self.state.lock().expect("never poisoned");
        state
            .handed_over
            .retain(|_, at| at.elapsed() < HANDED_OVER_FOR);
        if state.handed_over.len() >= self.ahead {
            return None;
        }
        let es = state.waiting.pop_front()?;
        state.waiting_set.remove(&es);
        let es_ref = es.object_ref();
        state.handed_over.insert(es, Instant::now());
        Some(es_ref)
    }

    /// The ExternalSecrets to sync, as slots free up; for `Controller::reconcile_on`.
    pub fn stream(self: Arc<Self>) -> impl Stream<Item = ObjectRef<ExternalSecret>> + Send {
        futures::stream::unfold(self, |resyncs| async move {
            loop {
                if let Some(es) = resyncs.next() {
                    return Some((es, resyncs));
                }
                // A slot handed over and never finished frees itself after a while.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), resyncs.changed.notified()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn es(name: &str) -> ObjectRef<ExternalSecret> {
        ObjectRef::new(name).within("ns")
    }

    fn named(name: &str) -> EsName {
        EsName::from(&es(name))
    }

    #[tokio::test]
    async fn hands_over_no_more_than_its_slots_until_syncs_finish() {
        let resyncs = Arc::new(Resyncs::new(2));
        resyncs.request([named("a"), named("b"), named("a"), named("c")]);
        let mut stream = Box::pin(resyncs.clone().stream());
        assert_eq!(stream.next().await, Some(es("a")));
        assert_eq!(stream.next().await, Some(es("b")));
        let third = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        assert!(third.is_err(), "a third waits for a free slot");
        resyncs.finished(&named("a"));
        assert_eq!(stream.next().await, Some(es("c")));
        resyncs.finished(&named("b"));
        resyncs.finished(&named("c"));
        let more = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        assert!(
            more.is_err(),
            "\"a\" was asked for twice while waiting and is synced once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_never_finished_frees_itself() {
        let resyncs = Arc::new(Resyncs::new(1));
        resyncs.request([named("gone"), named("next")]);
        let mut stream = Box::pin(resyncs.clone().stream());
        assert_eq!(stream.next().await, Some(es("gone")));
        assert_eq!(stream.next().await, Some(es("next")));
    }
}
