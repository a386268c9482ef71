//! Failover regions: one moto serves every region, and the fault proxy fails the requests signed for the
//! primary. Syncs and rotations go on from the replica region without a Secret rewritten to the same value
//! or rolled back, go back to the primary once it answers, and a refusal in the primary is reported, never
//! failed over. A primary that never answers is failed over too, and its retries hold calls only briefly.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::types::ReplicaRegionType;
use common::{FaultProxy, TIMEOUT, TestContext, value_reads, wait_for};
use secretsync::api::SecretStore;
use serde_json::json;

const PRIMARY: &str = "us-east-1";
const REPLICA: &str = "us-west-2";

/// A store in the primary region failing over to the replica region, checking versions every second,
/// with the operator's own identity or the role `role`.
async fn failover_store(t: &TestContext, role: Option<&str>) {
    let mut aws = json!({
        "service": "SecretsManager", "region": PRIMARY, "failoverRegions": [REPLICA],
        "versionCheck": {"strategy": "ListSecrets", "interval": "1s"},
    });
    if let Some(role) = role {
        aws["role"] = json!(role);
    }
    t.apply_yaml(
        &json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "SecretStore",
            "metadata": {"name": "aws"},
            "spec": {"provider": {"aws": aws}},
        })
        .to_string(),
    )
    .await;
}

async fn external_secret(t: &TestContext, name: &str, key: &str) {
    t.apply_yaml(
        &json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": name},
            "spec": {"refreshInterval": "1h", "secretStoreRef": {"name": "aws"},
                     "data": [{"secretKey": "value", "remoteRef": {"key": key}}]},
        })
        .to_string(),
    )
    .await;
}

/// A secret at `v1` replicated to the replica region; returns its ARN in the primary region.
async fn replicated(t: &TestContext, name: &str) -> String {
    t.secrets_manager
        .create_secret()
        .name(t.remote_key(name))
        .secret_string("v1")
        .add_replica_regions(ReplicaRegionType::builder().region(REPLICA).build())
        .send()
        .await
        .expect("CreateSecret with a replica")
        .arn
        .expect("an ARN")
}

async fn serving_region(t: &TestContext) -> Option<String> {
    kube::Api::<SecretStore>::namespaced(t.client.clone(), &t.namespace)
        .get("aws")
        .await
        .ok()?
        .status?
        .serving_region
}

/// Waits up to `within` for the store's status to name `region` as serving.
async fn wait_for_serving(t: &TestContext, what: &str, region: &str, within: Duration) {
    wait_for(what, within, || async {
        let serving = serving_region(t).await;
        (serving.as_deref() == Some(region))
            .then_some(())
            .ok_or(format!("{serving:?}"))
    })
    .await;
}

/// Ends the outage; the store serves from the primary again within a retry period and a check.
async fn primary_answers_again(t: &TestContext, proxy: &FaultProxy, figure: &str) {
    let recovered = Instant::now();
    proxy.set_mode("pass").await;
    wait_for_serving(
        t,
        "the store back in its primary",
        PRIMARY,
        Duration::from_secs(60),
    )
    .await;
    println!(
        "figure: {figure} to the store serving from it: {:.2} s",
        recovered.elapsed().as_secs_f64()
    );
}

async fn resource_version(t: &TestContext, name: &str) -> String {
    t.secrets()
        .get(name)
        .await
        .expect("the Secret")
        .metadata
        .resource_version
        .expect("a resourceVersion")
}

#[tokio::test]
async fn an_outage_of_the_primary_region_is_served_from_the_replica() {
    let t = TestContext::new("failover").await;
    // Replicated by Secrets Manager (moto keeps replicas in step at once). Named by its ARN: moto finds a
    // replica by ARN only (AWS by name too); the operator moves the ARN to the region it calls.
    let key = replicated(&t, "replicated").await;
    // A replica that lags: the replica region holds an older version of the same name.
    let lagging = t.create_remote("lagging", "new").await;
    let replica_region = aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(&common::aws_config().await)
            .region(aws_config::Region::new(REPLICA))
            .build(),
    );
    replica_region
        .create_secret()
        .name(&lagging)
        .secret_string("old")
        .send()
        .await
        .expect("CreateSecret in the replica region");

    // Only what docs/iam grants: reads and version checks, and the failover policy's replica ARNs.
    let role = t
        .create_role(
            "failover",
            "trust-assumed-by-operator.json",
            &[
                "read-policy.json",
                "version-check-policy.json",
                "failover-policy.json",
            ],
        )
        .await;
    failover_store(&t, Some(&role)).await;
    external_secret(&t, "replicated", &key).await;
    external_secret(&t, "lagging", &lagging).await;
    let proxy = FaultProxy::start().await;
    let operator = proxy.operator(&t.namespace, &[]);
    t.wait_for_value("replicated", "v1").await;
    t.wait_for_value("lagging", "new").await;
    wait_for_serving(&t, "the store to name its primary", PRIMARY, TIMEOUT).await;
    let (replicated_before, lagging_before) = (
        resource_version(&t, "replicated").await,
        resource_version(&t, "lagging").await,
    );

    let rotations = r#"secretsync_rotations_detected_total{strategy="ListSecrets"}"#;
    let rotations_before = operator.metric(rotations).await.unwrap_or_default();

    // The primary region answers every request with 503.
    let outage = Instant::now();
    proxy.set_mode_in("unavailable", PRIMARY).await;
    wait_for_serving(&t, "the store to fail over", REPLICA, TIMEOUT).await;
    println!(
        "figure: primary failing to the store serving from the replica: {:.2} s",
        outage.elapsed().as_secs_f64()
    );
    let metric = format!(
        "secretsync_store_serving_region{{kind=\"SecretStore\",name=\"aws\",namespace=\"{}\",region=\"{REPLICA}\"}}",
        t.namespace
    );
    assert_eq!(operator.metric(&metric).await, Some(1.0), "{metric}");
    assert!(
        t.events_for("aws")
            .await
            .iter()
            .any(|(type_, reason, note)| type_ == "Warning"
                && reason == "FailedOver"
                && note.contains(REPLICA)),
        "a FailedOver event"
    );

    // A rotation during the outage reaches the Secret from the replica.
    let rotated = Instant::now();
    t.put_remote(&key, "v2").await;
    t.wait_for_value("replicated", "v2").await;
    println!(
        "figure: rotation during the outage to the Secret, from the replica: {:.2} s",
        rotated.elapsed().as_secs_f64()
    );
    let replicated_rotated = resource_version(&t, "replicated").await;
    assert_ne!(replicated_rotated, replicated_before);

    // The lagging replica never rolls its Secret back, even when a sync asks (a forced refresh), and
    // nothing is rewritten to the same value.
    t.force_sync("lagging", "during-the-outage").await;
    let refused = wait_for("the lagging replica refused", TIMEOUT, || async {
        match t.es_ready("lagging").await {
            Some((status, _, message)) if status == "False" => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        refused.contains("does not have the version the Secret holds"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        t.secret_data("lagging").await.unwrap()["value"],
        "new",
        "rolled back to the replica's older version"
    );
    assert_eq!(resource_version(&t, "lagging").await, lagging_before);
    assert_eq!(resource_version(&t, "replicated").await, replicated_rotated);
    // Neither the failover nor the lagging replica was taken for a rotation: only v2 was.
    assert_eq!(
        operator.metric(rotations).await.unwrap_or_default() - rotations_before,
        1.0
    );

    primary_answers_again(&t, &proxy, "primary answering again").await;
    assert!(
        t.events_for("aws")
            .await
            .iter()
            .any(|(_, reason, _)| reason == "FailedBack"),
        "a FailedBack event"
    );
    // A rotation after recovery comes from the primary; nothing was rewritten meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(resource_version(&t, "replicated").await, replicated_rotated);
    assert_eq!(resource_version(&t, "lagging").await, lagging_before);
    t.put_remote(&key, "v3").await;
    t.wait_for_value("replicated", "v3").await;
    assert_eq!(t.secret_data("lagging").await.unwrap()["value"], "new");
    wait_for(
        "the lagging one Ready from the primary",
        TIMEOUT,
        || async {
            match t.es_ready("lagging").await {
                Some((status, _, _)) if status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(resource_version(&t, "lagging").await, lagging_before);
}

#[tokio::test]
async fn access_denied_in_the_primary_is_reported_not_failed_over() {
    let t = TestContext::new("failover-denied").await;
    let key = replicated(&t, "denied").await;
    failover_store(&t, None).await;
    let proxy = FaultProxy::start().await;
    proxy.set_mode_in("deny", PRIMARY).await;
    let _operator = proxy.operator(&t.namespace, &[]);
    external_secret(&t, "denied", &key).await;
    let ready = wait_for("AccessDenied reported", TIMEOUT, || async {
        match t.es_ready("denied").await {
            Some((status, _, message)) if status == "False" => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(ready.starts_with("AccessDenied"), "{ready}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(serving_region(&t).await.as_deref(), Some(PRIMARY));
    assert!(t.secret_data("denied").await.is_none());
    // Denied requests never reach moto: any read it recorded would have gone to the replica.
    let replica_key = key.replace(PRIMARY, REPLICA);
    assert!(value_reads(&key).is_empty() && value_reads(&replica_key).is_empty());
    assert!(
        !t.events_for("aws")
            .await
            .iter()
            .any(|(_, reason, _)| reason == "FailedOver")
    );
}

#[tokio::test]
async fn a_primary_that_never_answers_is_failed_over_and_retried_briefly() {
    let t = TestContext::new("failover-silent").await;
    let key = replicated(&t, "silent").await;
    failover_store(&t, None).await;
    external_secret(&t, "silent", &key).await;
    let proxy = FaultProxy::start().await;
    let _operator = proxy.operator(&t.namespace, &[]);
    t.wait_for_value("silent", "v1").await;

    // Requests signed for the primary are accepted and never answered: each waits out the SDK's timeouts.
    let outage = Instant::now();
    proxy.set_mode_in("blackhole", PRIMARY).await;
    wait_for_serving(
        &t,
        "the store to fail over",
        REPLICA,
        Duration::from_secs(90),
    )
    .await;
    println!(
        "figure: silent primary to the store serving from the replica: {:.2} s",
        outage.elapsed().as_secs_f64()
    );

    // Rotations through more than a primary retry period: the retries of a primary that does not answer
    // hold version checks and reads only briefly.
    let faulted_before = proxy.faulted().await;
    let mut slowest = Duration::ZERO;
    for round in 2..=7 {
        let rotated = Instant::now();
        let value = format!("v{round}");
        t.put_remote(&key, &value).await;
        t.wait_for_value("silent", &value).await;
        let took = rotated.elapsed();
        println!(
            "figure: rotation {round} during the silent outage to the Secret: {:.2} s",
            took.as_secs_f64()
        );
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(
        proxy.faulted().await > faulted_before,
        "the primary was retried meanwhile"
    );
    assert!(
        slowest < Duration::from_secs(10),
        "a rotation took {slowest:?}: a retry of the silent primary held it"
    );

    primary_answers_again(&t, &proxy, "silent primary answering again").await;
}
