//! Secrets Manager's EventBridge events, delivered to an SQS queue: which secrets changed, and when AWS says
//! they did.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::AwsSecretsManager;
use super::errors::error_code;
use crate::error::Result;

const PROVIDER: &str = "AWS/SQS";
/// SQS's longest wait: an idle queue costs one call per 20 s.
const LONG_POLL_SECONDS: i32 = 20;
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(LONG_POLL_SECONDS as u64 + 10);

/// A message received from the queue: its handle, and the Secrets Manager event it holds (`None` for
/// anything else, which is deleted unread).
pub struct QueueMessage {
    pub receipt_handle: String,
    pub event: Option<SecretEvent>,
}

/// One event: the secrets it names (ids as the event gives them: ARNs or names) and its time.
#[derive(Debug, PartialEq)]
pub struct SecretEvent {
    pub secret_ids: Vec<String>,
    pub time: Option<Timestamp>,
}

impl AwsSecretsManager {
    /// Waits for the queue's next messages (long polling). They stay on the queue until `delete_messages`.
    pub async fn receive_messages(&self, queue_url: &str) -> Result<Vec<QueueMessage>> {
        let result = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(LONG_POLL_SECONDS)
            .customize()
            // A long poll answers after up to 20 s by design: the usual attempt deadline would cut it.
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(
                    TimeoutConfig::builder()
                        .operation_attempt_timeout(LONG_POLL_TIMEOUT)
                        .operation_timeout(LONG_POLL_TIMEOUT * 2)
                        .build(),
                ),
            )
            .send()
            .await;
        self.metrics
            .provider_call(PROVIDER, "ReceiveMessage", error_code(&result).as_deref());
        let output = result.map_err(|err| super::classify("ReceiveMessage", None, err))?;
        Ok(output
            .messages()
            .iter()
            .filter_map(|message| {
                Some(QueueMessage {
                    receipt_handle: message.receipt_handle()?.to_string(),
                    event: message.body().and_then(parse_event),
                })
            })
            .collect())
    }

    /// Deletes handled messages. Failing only means they come back: checking them twice is harmless.
    pub async fn delete_messages(&self, queue_url: &str, receipt_handles: Vec<String>) {
        if receipt_handles.is_empty() {
            return;
        }
        let entries: Vec<_> = receipt_handles
            .into_iter()
            .enumerate()
            .filter_map(|(index, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(handle)
                    .build()
                    .ok()
            })
            .collect();
        let deleted = self
            .sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        self.metrics.provider_call(
            PROVIDER,
            "DeleteMessageBatch",
            error_code(&deleted).as_deref(),
        );
        if let Err(err) = deleted {
            tracing::warn!(error = %super::classify("DeleteMessageBatch", None, err), "could not delete events from the queue");
        }
    }
}

/// The secrets an EventBridge event from `aws.secretsmanager` names: its `resources`, and the secret id in
/// its detail (`Secret Label Updated` and similar events, or the CloudTrail form `requestParameters.secretId`).
pub fn parse_event(body: &str) -> Option<SecretEvent> {
    let event: Value = serde_json::from_str(body).ok()?;
    if event["source"] != "aws.secretsmanager" {
        return None;
    }
    let detail = &event["detail"];
    let mut secret_ids: Vec<String> = event["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .chain([
            &detail["secretId"],
            &detail["SecretId"],
            &detail["secretArn"],
            &detail["requestParameters"]["secretId"],
        ])
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    secret_ids.sort();
    secret_ids.dedup();
    let time = event["time"].as_str().and_then(|t| t.parse().ok());
    Some(SecretEvent { secret_ids, time })
}

/// The secret name inside a Secrets Manager ARN (`arn:aws:secretsmanager:<region>:<account>:secret:<name>-<6
/// random characters>`); `None` for anything else.
pub fn name_in_arn(arn: &str) -> Option<&str> {
    let (_, name_and_suffix) = arn
        .strip_prefix("arn:")?
        .split_once(":secretsmanager:")?
        .1
        .split_once(":secret:")?;
    let (name, suffix) = name_and_suffix.rsplit_once('-')?;
    (suffix.len() == 6).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_label_updated_events() {
        let body = r#"{"version":"0","id":"1","detail-type":"Secret Label Updated","source":"aws.secretsmanager",
            "time":"2026-11-22T10:00:00Z","resources":["arn:aws:secretsmanager:eu-west-1:123456789012:secret:team-a/db-AbCdEf"],
            "detail":{"secretId":"team-a/db"}}"#;
        let event = parse_event(body).unwrap();
        assert_eq!(
            event.secret_ids,
            [
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team-a/db-AbCdEf",
                "team-a/db"
            ]
        );
        assert_eq!(event.time.unwrap().to_string(), "2026-11-22T10:00:00Z");
    }

    #[test]
    fn reads_cloudtrail_events_and_ignores_other_sources() {
        let body = r#"{"detail-type":"AWS API Call via CloudTrail","source":"aws.secretsmanager",
            "detail":{"eventName":"PutSecretValue","requestParameters":{"secretId":"app/key"}}}"#;
        assert_eq!(parse_event(body).unwrap().secret_ids, ["app/key"]);
        assert_eq!(
            parse_event(r#"{"source":"aws.s3","resources":["x"]}"#),
            None
        );
        assert_eq!(parse_event("not json"), None);
    }

    #[test]
    fn names_in_arns() {
        assert_eq!(
            name_in_arn(
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team-a/db-pass-AbCdEf"
            ),
            Some("team-a/db-pass")
        );
        assert_eq!(name_in_arn("team-a/db"), None);
    }
}
