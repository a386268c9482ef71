//! Conditions as the Kubernetes API conventions define them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";

pub fn ready_condition(
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: READY.to_string(),
        status: if ready { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Replaces the condition of the same type, keeping its `lastTransitionTime` unless the status changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

pub fn is_ready(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_while_status_is_unchanged() {
        let mut conditions = vec![ready_condition(false, "A", "first", Some(1))];
        let first = conditions[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(2));
        set_condition(
            &mut conditions,
            ready_condition(false, "B", "second", Some(2)),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].reason, "B");
        assert_eq!(conditions[0].last_transition_time, first);

        set_condition(
            &mut conditions,
            ready_condition(true, "C", "third", Some(2)),
        );
        assert_ne!(conditions[0].last_transition_time, first);
        assert!(is_ready(&conditions));
    }
}
