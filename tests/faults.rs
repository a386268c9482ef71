//! Faults: AWS unreachable, throttling, and black-holed, through a fault proxy in front of moto
//! (`hack/fault-proxy.py`), each test with its own proxy so that they run in parallel. Each prints its figures.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{FaultProxy, TIMEOUT, TestContext, wait_for};
use serde_json::json;

/// `count` ExternalSecrets `es-<i>`, four per remote secret, refreshed every `refresh`, on a store whose
/// ListSecrets check runs every `check`. Returns the remote keys.
async fn many(t: &TestContext, count: usize, refresh: &str, check: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..count.div_ceil(4) {
        keys.push(t.create_remote(&format!("s{i}"), &format!("v1-{i}")).await);
    }
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": check}))
        .await;
    for i in 0..count {
        let manifest = json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": format!("es-{i}")},
            "spec": {
                "refreshInterval": refresh,
                "secretStoreRef": {"name": "aws"},
                "data": [{"secretKey": "value", "remoteRef": {"key": keys[i / 4]}}],
            },
        });
        t.apply_yaml(&manifest.to_string()).await;
    }
    keys
}

/// Waits until every ExternalSecret is Ready and its Secret holds `v<generation>-<i>`.
async fn all_synced(t: &TestContext, count: usize, generation: u32, within: Duration) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("{count} Secrets at v{generation}"),
        within,
        || async {
            let secrets = t
                .secrets()
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let values: HashMap<String, String> = secrets
                .items
                .into_iter()
                .filter_map(|s| {
                    let value = s.data?.get("value")?.0.clone();
                    Some((
                        s.metadata.name?,
                        String::from_utf8_lossy(&value).into_owned(),
                    ))
                })
                .collect();
            let behind = (0..count)
                .filter(|i| {
                    values.get(&format!("es-{i}")) != Some(&format!("v{generation}-{}", i / 4))
                })
                .count();
            let external_secrets = t
                .external_secrets()
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            let not_ready: Vec<String> = external_secrets
                .iter()
                .filter_map(|es| {
                    let ready = es
                        .status
                        .as_ref()
                        .and_then(|status| status.conditions.iter().find(|c| c.type_ == "Ready"));
                    match ready {
                        Some(ready) if ready.status == "True" => None,
                        other => Some(format!(
                            "{}: {:?}",
                            es.metadata.name.as_deref().unwrap_or_default(),
                            other.map(|c| &c.message)
                        )),
                    }
                })
                .collect();
            let ready = external_secrets.len() - not_ready.len();
            (behind == 0 && not_ready.is_empty())
                .then_some(())
                .ok_or(format!(
                    "{behind} Secrets behind, {ready} of {count} Ready; not: {:?}",
                    &not_ready[..not_ready.len().min(3)]
                ))
        },
    )
    .await;
    started.elapsed()
}

/// Secret name → resourceVersion, to show that nothing was rewritten.
async fn versions(t: &TestContext) -> HashMap<String, String> {
    t.secrets()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.name?, s.metadata.resource_version?)))
        .collect()
}

#[tokio::test]
async fn aws_unreachable_for_a_minute_loses_nothing_and_converges_after() {
    const COUNT: usize = 200;
    const OUTAGE: Duration = Duration::from_secs(60);
    let t = TestContext::new("fault-outage").await;
    let keys = many(&t, COUNT, "10s", "5s").await;
    let proxy = FaultProxy::start().await;
    let _operator = proxy.operator(&t.namespace, &[]);
    let first = all_synced(&t, COUNT, 1, Duration::from_secs(120)).await;
    let before = versions(&t).await;

    proxy.set_mode("refuse").await;
    let outage_started = Instant::now();
    // Syncs during the outage: a forced one for every tenth, on top of the 10 s refreshes.
    for i in (0..COUNT).step_by(10) {
        t.force_sync(&format!("es-{i}"), "outage").await;
    }
    tokio::time::sleep(OUTAGE.saturating_sub(outage_started.elapsed())).await;
    let calls_in_outage = proxy.faulted().await;
    assert_eq!(
        versions(&t).await,
        before,
        "a Secret changed while AWS was unreachable"
    );
    let mut provider_errors = 0;
    for i in 0..COUNT {
        if let Some((status, _, message)) = t.es_ready(&format!("es-{i}")).await
            && status == "False"
        {
            assert!(message.starts_with("ProviderError: "), "es-{i}: {message}");
            provider_errors += 1;
        }
    }
    assert!(
        provider_errors >= COUNT / 2,
        "refreshes and forced syncs during the outage report it: {provider_errors} of {COUNT}"
    );
    // Without backoff, 200 ExternalSecrets retrying at once would make thousands of calls a second.
    let per_second = calls_in_outage as f64 / OUTAGE.as_secs_f64();
    assert!(
        per_second < 60.0,
        "{calls_in_outage} calls in the outage ({per_second:.1}/s): not bounded by the backoff"
    );

    // A rotation that happened during the outage arrives too.
    proxy.set_mode("pass").await;
    for (i, key) in keys.iter().enumerate() {
        t.put_remote(key, &format!("v2-{i}")).await;
    }
    let back = Instant::now();
    all_synced(&t, COUNT, 2, Duration::from_secs(60)).await;
    let converged = back.elapsed();
    println!(
        "outage of {}s for {COUNT} ExternalSecrets: first sync {:.1}s; {calls_in_outage} AWS calls refused \
         ({per_second:.1}/s); {provider_errors} ProviderError conditions; all Ready at v2 {:.1}s after AWS was back \
         (check interval 5s)",
        OUTAGE.as_secs(),
        first.as_secs_f64(),
        converged.as_secs_f64()
    );
    assert!(
        converged <= Duration::from_secs(10) + Duration::from_secs(3),
        "all Ready within two check intervals (plus the writes): {converged:?}"
    );
}

#[tokio::test]
async fn a_throttling_storm_backs_off_and_converges() {
    const COUNT: usize = 100;
    const STORM: Duration = Duration::from_secs(30);
    let t = TestContext::new("fault-throttle").await;
    let keys = many(&t, COUNT, "1h", "5s").await;
    let proxy = FaultProxy::start().await;
    let _operator = proxy.operator(&t.namespace, &[]);
    all_synced(&t, COUNT, 1, Duration::from_secs(120)).await;

    proxy.set_mode("throttle").await;
    // Every ExternalSecret is made to sync in the storm.
    for (i, key) in keys.iter().enumerate() {
        t.put_remote(key, &format!("v2-{i}")).await;
    }
    for i in 0..COUNT {
        t.force_sync(&format!("es-{i}"), "storm").await;
    }
    tokio::time::sleep(STORM).await;
    let throttled = proxy.faulted().await;
    let per_second = throttled as f64 / STORM.as_secs_f64();
    assert!(
        per_second < 40.0,
        "{throttled} throttled calls in {}s ({per_second:.1}/s): not backing off",
        STORM.as_secs()
    );
    proxy.set_mode("pass").await;
    let back = Instant::now();
    all_synced(&t, COUNT, 2, Duration::from_secs(60)).await;
    println!(
        "throttling storm of {}s over {COUNT} ExternalSecrets: {throttled} throttled calls ({per_second:.1}/s); \
         all Ready at v2 {:.1}s after it ended",
        STORM.as_secs(),
        back.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn black_holed_aws_times_out_and_sigterm_still_stops_in_time() {
    let t = TestContext::new("fault-blackhole").await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "None"})).await;
    let proxy = FaultProxy::start().await;
    let mut operator = proxy.operator(&t.namespace, &[("SECRETSYNC_SHUTDOWN_TIMEOUT", "5s")]);
    t.sync_value("db", "aws", &key, "v1").await;

    proxy.set_mode("blackhole").await;
    let started = Instant::now();
    t.force_sync("db", "1").await;
    let (_, _, message) = wait_for("the sync to time out", Duration::from_secs(60), || async {
        match t.es_ready("db").await {
            Some(ready) if ready.0 == "False" => Ok(ready),
            other => Err(other),
        }
    })
    .await;
    let timed_out = started.elapsed();
    assert!(message.starts_with("ProviderError: "), "{message}");
    assert!(
        message.to_lowercase().contains("timeout") || message.contains("timed out"),
        "{message}"
    );
    assert_eq!(t.secret_data("db").await.unwrap()["value"], "v1");

    // A sync hangs on AWS again when SIGTERM comes: the operator stops within its shutdown timeout anyway.
    t.force_sync("db", "2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, took) = operator.terminate();
    println!(
        "black-holed AWS: the sync failed as ProviderError after {:.1}s; SIGTERM with a sync in flight: exit {code:?} after {took:.1}s",
        timed_out.as_secs_f64()
    );
    assert_eq!(code, Some(0));
    assert!(
        took < 10.0,
        "stopped {took:.1}s after SIGTERM; the grace period is 30s"
    );
    proxy.set_mode("pass").await;
}

/// A ListSecrets that lags behind (the proxy keeps serving the page from before a rotation) never moves a
/// Secret back; while it lags, each check confirms with a read of the value (bounded, no loop).
#[tokio::test]
async fn a_lagging_list_secrets_never_rolls_a_secret_back() {
    let t = TestContext::new("fault-stale-list").await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    let proxy = FaultProxy::start().await;
    let _operator = proxy.operator(&t.namespace, &[]);
    t.sync_value("db", "aws", &key, "v1").await;

    proxy.set_mode("stale-list").await;
    wait_for("a listing to be frozen", TIMEOUT, || async {
        let faulted = proxy.faulted().await;
        (faulted >= 2).then_some(()).ok_or(faulted)
    })
    .await;
    // The rotation reaches the Secret by a full read; the listing still says v1 is current.
    t.put_remote(&key, "v2").await;
    t.force_sync("db", "after-rotation").await;
    t.wait_for_value("db", "v2").await;
    let reads_before = common::value_reads(&key).len();
    let lagging = Duration::from_secs(8);
    let started = Instant::now();
    while started.elapsed() < lagging {
        let data = t.secret_data("db").await.unwrap();
        assert_eq!(data["value"], "v2", "rolled back while ListSecrets lagged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let confirming_reads = common::value_reads(&key).len() - reads_before;
    let stale_lists = proxy.faulted().await;
    println!(
        "lagging ListSecrets for {}s ({stale_lists} stale pages served): the Secret stayed at v2; {confirming_reads} confirming reads",
        lagging.as_secs()
    );
    assert!(
        confirming_reads <= 2 * lagging.as_secs() as usize + 2,
        "{confirming_reads} reads in {}s of 1s checks: more than the confirmations of a lagging listing",
        lagging.as_secs()
    );
    proxy.set_mode("pass").await;
}

/// A policy written for External Secrets Operator allows GetSecretValue only, so every batched read is
/// denied and its asked keys are read one by one. First syncs that joined a batch while it was under way,
/// for a key it read ahead for them (slowed here, so that many do), still get their value and never fail.
#[tokio::test]
async fn first_syncs_under_a_get_secret_value_only_policy_never_fail() {
    const COUNT: usize = 80;
    let t = TestContext::new("fault-eso-policy").await;
    let role = t
        .create_role(
            "eso",
            "trust-assumed-by-operator.json",
            &["read-policy.json"],
        )
        .await;
    let mut policy: serde_json::Value =
        serde_json::from_str(&common::documented_policy("read-policy.json", &t.namespace)).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .retain(|statement| statement["Action"] != "secretsmanager:BatchGetSecretValue");
    common::iam()
        .await
        .put_role_policy()
        .role_name(t.role_name("eso"))
        .policy_name("read-policy")
        .policy_document(policy.to_string())
        .send()
        .await
        .expect("PutRolePolicy");
    let mut keys = Vec::new();
    for i in 0..COUNT.div_ceil(4) {
        keys.push(t.create_remote(&format!("s{i}"), &format!("v1-{i}")).await);
    }
    let store = json!({
        "apiVersion": "secretsync.io/v1alpha1", "kind": "SecretStore",
        "metadata": {"name": "aws"},
        "spec": {"provider": {"aws": {"service": "SecretsManager", "region": "us-east-1", "role": role}}},
    });
    t.apply_yaml(&store.to_string()).await;
    for i in 0..COUNT {
        let manifest = json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": format!("es-{i}")},
            "spec": {
                "refreshInterval": "1h",
                "secretStoreRef": {"name": "aws"},
                "data": [{"secretKey": "value", "remoteRef": {"key": keys[i / 4]}}],
            },
        });
        t.apply_yaml(&manifest.to_string()).await;
    }
    let proxy = FaultProxy::start().await;
    proxy.set_mode("slow").await;
    let _operator = proxy.operator(&t.namespace, &[]);
    let took = all_synced(&t, COUNT, 1, Duration::from_secs(120)).await;

    let mut warnings = Vec::new();
    for i in 0..COUNT {
        let name = format!("es-{i}");
        for (type_, reason, note) in t.events_for(&name).await {
            if type_ == "Warning" {
                warnings.push(format!("{name}: {reason}: {note}"));
            }
        }
    }
    let calls = common::recorded_calls();
    let denied_batches = calls
        .iter()
        .filter(|call| {
            call.action == "BatchGetSecretValue"
                && call.secret_ids.iter().any(|id| keys.contains(id))
        })
        .count();
    println!(
        "GetSecretValue-only policy, AWS slowed by 0.3 s a call: {COUNT} first syncs in {:.1}s, {denied_batches} batched reads (all denied)",
        took.as_secs_f64()
    );
    assert!(warnings.is_empty(), "first syncs failed: {warnings:?}");
    proxy.set_mode("pass").await;
}
