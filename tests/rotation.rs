//! Rotation on the real API server and moto: shared version watches, what a quiet check and a rotation
//! cost in AWS calls (counted with moto's recorder), events from SQS, stages and pinned versions, and
//! workload restarts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{
    Call, Operator, TIMEOUT, TestContext, recorded_calls, value_external_secret, value_reads,
    wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;

/// Every managed Secret's resourceVersion, by name.
async fn secret_versions(t: &TestContext) -> BTreeMap<String, String> {
    t.secrets()
        .list(&ListParams::default().labels("secretsync.io/managed=true"))
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
        .collect()
}

async fn version_stages(t: &TestContext, key: &str) -> BTreeMap<String, String> {
    t.secrets_manager
        .describe_secret()
        .secret_id(key)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(id, stages)| stages.into_iter().map(move |s| (s, id.clone())))
        .collect()
}

async fn synced_versions(t: &TestContext, name: &str) -> BTreeMap<String, String> {
    t.external_secrets()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .synced_versions
        .iter()
        .map(|(key, id)| (key.clone(), id.clone()))
        .collect()
}

fn calls_since(start: usize) -> Vec<Call> {
    recorded_calls().into_iter().skip(start).collect()
}

#[tokio::test]
async fn a_quiet_check_costs_one_list_and_a_rotation_one_batched_read() {
    let t = TestContext::new("shared-watch").await;
    let keys = t.numbered_remotes("r", 50).await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "2s"}))
        .await;
    let operator = t.start_operator();
    t.numbered_external_secrets("aws", 200, &keys).await;
    wait_for("200 Secrets", Duration::from_secs(120), || async {
        let count = secret_versions(&t).await.len();
        (count == 200).then_some(()).ok_or(count)
    })
    .await;
    for i in [0, 49, 199] {
        t.wait_for_value(&format!("es-{i}"), &format!("v1-{}", i % 50))
            .await;
    }

    // Quiet: every check is one ListSecrets over the namespace's path, and nothing is read.
    let path = format!("{}/", t.namespace);
    let ours = |call: &Call| {
        call.action == "ListSecrets" && call.body["Filters"][0]["Values"][0] == json!(path)
    };
    let start = recorded_calls().len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let quiet = calls_since(start);
    let checks: Vec<&Call> = quiet.iter().filter(|c| ours(c)).collect();
    assert!(checks.len() >= 2, "at least two checks in 7 s: {checks:?}");
    assert!(
        checks.iter().all(|c| !c.params.contains_key("NextToken")),
        "50 secrets fit one page: {checks:?}"
    );
    let reads: Vec<&Call> = quiet
        .iter()
        .filter(|c| keys.iter().any(|k| c.reads(k)))
        .collect();
    assert!(
        reads.is_empty(),
        "values read while nothing changed: {reads:?}"
    );

    // One rotation: its four readers are rewritten from one batched read; nothing else is touched.
    let before = secret_versions(&t).await;
    let start = recorded_calls().len();
    let rotated = &keys[7];
    let new_id = t.put_remote(rotated, "v2-7").await;
    let readers: BTreeSet<String> = [7, 57, 107, 157].map(|i| format!("es-{i}")).into();
    for name in &readers {
        t.wait_for_value(name, "v2-7").await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = secret_versions(&t).await;
    let rewritten: BTreeSet<String> = after
        .iter()
        .filter(|(name, rv)| before.get(*name) != Some(rv))
        .map(|(name, _)| name.clone())
        .collect();
    assert_eq!(rewritten, readers);
    let since = calls_since(start);
    let reads: Vec<&Call> = since.iter().filter(|c| c.reads(rotated)).collect();
    assert_eq!(reads.len(), 1, "one read for four readers: {reads:?}");
    assert_eq!(reads[0].action, "BatchGetSecretValue");
    let other_reads: Vec<&Call> = since
        .iter()
        .filter(|c| keys.iter().filter(|k| *k != rotated).any(|k| c.reads(k)))
        .collect();
    assert!(other_reads.is_empty(), "{other_reads:?}");
    assert_eq!(synced_versions(&t, "es-57").await[rotated], new_id);

    let strategy = r#"{strategy="ListSecrets"}"#;
    assert_eq!(
        operator
            .metric(&format!("secretsync_remote_secrets_watched{strategy}"))
            .await,
        Some(50.0)
    );
    assert_eq!(
        operator
            .metric(&format!("secretsync_rotations_detected_total{strategy}"))
            .await,
        Some(1.0)
    );
    let written = r#"secretsync_rotation_propagation_seconds_count{since="detection",until="secret_written"}"#;
    assert_eq!(operator.metric(written).await, Some(4.0));
}

#[tokio::test]
async fn an_event_on_the_queue_propagates_within_two_seconds() {
    let t = TestContext::new("events").await;
    let (sqs, queue_url) = t.create_queue().await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check(
        "events",
        json!({"strategy": "Events", "interval": "10m", "events": {"queueURL": queue_url}}),
    )
    .await;
    let operator = t.start_operator();
    t.apply_yaml(&value_external_secret(
        "app",
        "events",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    t.wait_for_value("app", "v1").await;
    // Let the listener start its long poll.
    tokio::time::sleep(Duration::from_secs(2)).await;

    t.put_remote(&key, "v2").await;
    let arn = t
        .secrets_manager
        .describe_secret()
        .secret_id(&key)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let event = json!({
        "version": "0", "id": "e-1", "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": "123456789012", "region": "us-east-1",
        "time": k8s_openapi::jiff::Timestamp::now().to_string(),
        "resources": [arn], "detail": {"secretId": key},
    });
    let sent = Instant::now();
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(event.to_string())
        .send()
        .await
        .unwrap();
    t.wait_for_value("app", "v2").await;
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let from_event =
        r#"secretsync_rotation_propagation_seconds_count{since="event",until="secret_written"}"#;
    wait_for("the propagation metric", TIMEOUT, || async {
        let count = operator.metric(from_event).await;

        (count == Some(1.0)).then_some(()).ok_or(count)
    })
    .await;
    let described = value_reads(&key);
    assert!(
        described.iter().all(|c| c.action != "GetSecretValue"),
        "{described:?}"
    );
}

/// Two stores with different identities watch one secret through one queue: the queue has one consumer,
/// and one event reaches both.
#[tokio::test]
async fn two_identities_on_one_queue_both_propagate_within_two_seconds() {
    let t = TestContext::new("events-shared").await;
    let (sqs, queue_url) = t.create_queue().await;
    let key = t.create_remote("db", "v1").await;
    let events =
        json!({"strategy": "Events", "interval": "10m", "events": {"queueURL": queue_url}});
    t.store_with_check("own", events.clone()).await;
    let (id, secret) = t
        .create_user("keys", &["read-policy.json", "version-check-policy.json"])
        .await;
    t.apply_yaml(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-keys"},
                "stringData": {"id": id, "secret": secret}})
        .to_string(),
    )
    .await;
    t.apply_yaml(
        &json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "SecretStore", "metadata": {"name": "keys"},
            "spec": {"provider": {"aws": {
                "service": "SecretsManager", "region": "us-east-1", "versionCheck": events,
                "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws-keys", "key": "id"},
                    "secretAccessKeySecretRef": {"name": "aws-keys", "key": "secret"},
                }},
            }}},
        })
        .to_string(),
    )
    .await;
    let _operator = t.start_operator();
    for (name, store) in [("a", "own"), ("b", "keys")] {
        t.apply_yaml(&value_external_secret(
            name,
            store,
            "SecretStore",
            &key,
            None,
        ))
        .await;
        t.wait_for_value(name, "v1").await;
    }
    // Let the consumer start its long poll.
    tokio::time::sleep(Duration::from_secs(2)).await;

    for round in 2..=3 {
        let value = format!("v{round}");
        t.put_remote(&key, &value).await;
        let event = json!({
            "version": "0", "id": format!("e-{round}"), "detail-type": "Secret Label Updated",
            "source": "aws.secretsmanager", "account": "123456789012", "region": "us-east-1",
            "time": k8s_openapi::jiff::Timestamp::now().to_string(),
            "resources": [], "detail": {"secretId": key},
        });
        let sent = Instant::now();
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(event.to_string())
            .send()
            .await
            .unwrap();
        t.wait_for_value("a", &value).await;
        t.wait_for_value("b", &value).await;
        let took = sent.elapsed();
        println!("one event, two identities: both Secrets at {value} {took:?} after it was sent");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}

#[tokio::test]
async fn previous_and_pinned_versions_are_not_disturbed() {
    let t = TestContext::new("stages").await;
    let key = t.create_remote("db", "v1").await;
    let v1 = version_stages(&t, &key).await["AWSCURRENT"].clone();
    let v2 = t.put_remote(&key, "v2").await;
    t.store_with_check(
        "aws",
        json!({"strategy": "DescribeSecret", "interval": "1s"}),
    )
    .await;
    let _operator = t.start_operator();
    t.apply_yaml(&value_external_secret(
        "current",
        "aws",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    t.apply_yaml(&value_external_secret(
        "previous",
        "aws",
        "SecretStore",
        &key,
        Some("AWSPREVIOUS"),
    ))
    .await;
    let pinned = format!("uuid/{v1}");
    t.apply_yaml(&value_external_secret(
        "pinned",
        "aws",
        "SecretStore",
        &key,
        Some(&pinned),
    ))
    .await;
    t.wait_for_value("current", "v2").await;
    t.wait_for_value("previous", "v1").await;
    t.wait_for_value("pinned", "v1").await;
    let before = secret_versions(&t).await;

    let start = recorded_calls().len();
    let v3 = t.put_remote(&key, "v3").await;
    t.wait_for_value("current", "v3").await;
    t.wait_for_value("previous", "v2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.secret_data("pinned").await.unwrap()["value"], "v1");
    assert_eq!(
        secret_versions(&t).await["pinned"],
        before["pinned"],
        "the pinned Secret was rewritten"
    );
    assert_eq!(synced_versions(&t, "current").await[&key], v3);
    assert_eq!(
        synced_versions(&t, "previous").await[&format!("{key}@AWSPREVIOUS")],
        v2
    );
    assert_eq!(
        synced_versions(&t, "pinned").await[&format!("{key}@{pinned}")],
        v1
    );
    // AWSPREVIOUS moved to the version that was current: it was kept, so only v3 is read.
    let reads: Vec<Call> = calls_since(start)
        .into_iter()
        .filter(|c| c.reads(&key))
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].action, "BatchGetSecretValue");
}

fn deployment(name: &str, restart_on_change: &str, paused: bool, secret: &str) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"secretsync.io/restart-on-change": restart_on_change}},
        "spec": {
            "paused": paused,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app", "image": "registry.invalid/app:1",
                    "env": [{"name": "VALUE", "valueFrom": {"secretKeyRef": {"name": secret, "key": "value"}}}],
                }]},
            },
        },
    })
    .to_string()
}

async fn restarted_at(t: &TestContext, name: &str) -> Option<String> {
    Api::<Deployment>::namespaced(t.client.clone(), &t.namespace)
        .get(name)
        .await
        .unwrap()
        .spec?
        .template
        .metadata?
        .annotations?
        .remove("secretsync.io/restarted-at")
}

#[tokio::test]
async fn an_annotated_deployment_restarts_once_per_change() {
    let t = TestContext::new("restart").await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    t.apply_yaml(&deployment("web", "app", false, "app")).await;
    t.apply_yaml(&deployment("held", "true", true, "app")).await;
    t.apply_yaml(&deployment("unrelated", "other-secret", false, "app"))
        .await;
    let _operator = t.start_operator();
    t.sync_value("app", "aws", &key, "v1").await;
    assert_eq!(
        restarted_at(&t, "web").await,
        None,
        "creating the Secret restarts nothing"
    );

    t.put_remote(&key, "v2").await;
    t.wait_for_value("app", "v2").await;
    let first = wait_for("web restarted", TIMEOUT, || async {
        restarted_at(&t, "web").await.ok_or("not yet")
    })
    .await;
    wait_for(
        "events on the workloads and the ExternalSecret",
        TIMEOUT,
        || async {
            let on_es: BTreeSet<String> =
                t.events_for("app").await.into_iter().map(|e| e.1).collect();
            let on_web = t.events_for("web").await;
            let on_held = t.events_for("held").await;
            let seen = on_es.contains("WorkloadRestarted")
                && on_es.contains("RestartSkipped")
                && on_web.iter().any(|e| e.0 == "Normal" && e.1 == "Restarted")
                && on_held
                    .iter()
                    .any(|e| e.0 == "Warning" && e.1 == "RestartSkipped");
            seen.then_some(())
                .ok_or(format!("{on_es:?} {on_web:?} {on_held:?}"))
        },
    )
    .await;
    assert_eq!(
        restarted_at(&t, "held").await,
        None,
        "a paused Deployment is not restarted"
    );
    assert_eq!(restarted_at(&t, "unrelated").await, None);

    // A sync that changes nothing restarts nothing.
    t.force_sync("app", "1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(restarted_at(&t, "web").await.as_ref(), Some(&first));

    t.put_remote(&key, "v3").await;
    t.wait_for_value("app", "v3").await;
    let second = wait_for("web restarted again", TIMEOUT, || async {
        restarted_at(&t, "web")
            .await
            .filter(|at| at != &first)
            .ok_or("not yet")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        restarted_at(&t, "web").await,
        Some(second),
        "one restart per change"
    );
}

#[tokio::test]
async fn a_store_change_moves_its_external_secrets_to_the_new_check() {
    let t = TestContext::new("store-change").await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "None"})).await;
    let _operator = t.start_operator();
    t.sync_value("app", "aws", &key, "v1").await;

    // No checks: a rotation waits for the refresh interval, as with External Secrets Operator.
    t.put_remote(&key, "v2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.secret_data("app").await.unwrap()["value"], "v1");

    // The changed store is read from again in full, and checked from then on.
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    t.wait_for_value("app", "v2").await;
    t.put_remote(&key, "v3").await;
    t.wait_for_value("app", "v3").await;
}

/// With a budget for two or three values, most kept values leave as soon as they come: first syncs and
/// rotations still get every value (read again where it left), and what is kept stays within the budget.
#[tokio::test]
async fn values_past_the_kept_values_budget_are_read_again_when_needed() {
    const BUDGET: f64 = 150.0;
    let t = TestContext::new("kept-budget").await;
    let keys = t.numbered_remotes("b", 10).await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "2s"}))
        .await;
    let operator = Operator::start(
        &t.namespace,
        &[("SECRETSYNC_KEPT_VALUES_BUDGET", &BUDGET.to_string())],
    );
    t.numbered_external_secrets("aws", 20, &keys).await;
    for i in 0..20 {
        t.wait_for_value(&format!("es-{i}"), &format!("v1-{}", i % 10))
            .await;
    }
    let kept = operator.metric("secretsync_kept_value_bytes").await;
    let evicted = operator
        .metric("secretsync_kept_values_evicted_total")
        .await;
    println!("10 secrets kept within {BUDGET} bytes: {kept:?} bytes kept, {evicted:?} evicted");
    assert!(
        kept.is_some_and(|kept| kept <= BUDGET),
        "{kept:?} bytes kept"
    );
    assert!(
        evicted.is_some_and(|evicted| evicted >= 5.0),
        "{evicted:?} evicted"
    );

    for i in [0, 9] {
        t.put_remote(&keys[i], &format!("v2-{i}")).await;
    }
    for i in [0, 9, 10, 19] {
        t.wait_for_value(&format!("es-{i}"), &format!("v2-{}", i % 10))
            .await;
    }
    let kept = operator.metric("secretsync_kept_value_bytes").await;
    assert!(
        kept.is_some_and(|kept| kept <= BUDGET),
        "{kept:?} bytes kept"
    );
}
