//! Reads per secret, not per ExternalSecret: syncs that need the same secrets at about the same time share
//! their reads, a first sync takes what the version watch already keeps, and a restart reads again only
//! what changed while the operator was down.

mod common;

use std::time::{Duration, Instant};

use common::{
    TestContext, numbered_holding, recorded_calls, requests_between, value_external_secret,
    wait_for,
};
use kube::api::{Patch, PatchParams};
use serde_json::json;

const SECRETS: usize = 40;
const PER_SECRET: usize = 4;

/// `SECRETS` remote secrets (`v1-<i>`), a store checking them with ListSecrets every `interval`, and
/// `PER_SECRET` ExternalSecrets `es-<i>` on each, neighbours reading different secrets. Returns the keys.
async fn numbered_external_secrets(t: &TestContext, interval: &str) -> Vec<String> {
    let keys = t.numbered_remotes("s", SECRETS).await;
    t.store_with_check(
        "aws",
        json!({"strategy": "ListSecrets", "interval": interval}),
    )
    .await;
    t.numbered_external_secrets("aws", SECRETS * PER_SECRET, &keys)
        .await;
    keys
}

#[tokio::test]
async fn a_first_sync_reads_each_secret_about_once() {
    let t = TestContext::new("shared-reads").await;
    // All exist before the operator starts, so that their first syncs run together.
    let keys = numbered_external_secrets(&t, "1m").await;
    let count = SECRETS * PER_SECRET;
    // A key that does not exist, read in the same batches: its error is its ExternalSecret's alone.
    let missing = t.remote_key("missing");
    t.apply_yaml(&value_external_secret(
        "es-missing",
        "aws",
        "SecretStore",
        &missing,
        None,
    ))
    .await;
    let operator = t.start_operator();
    let started = Instant::now();
    wait_for("every Secret written", Duration::from_secs(120), || async {
        let secrets = t.secrets().list(&Default::default()).await.unwrap();
        let written = numbered_holding(&secrets.items, |i| format!("v1-{}", i % SECRETS));
        (written == count).then_some(()).ok_or(written)
    })
    .await;
    let synced = started.elapsed();
    wait_for(
        "es-missing to report its key",
        Duration::from_secs(30),
        || async {
            match t.es_ready("es-missing").await {
                Some((status, _, message))
                    if status == "False" && message.starts_with("RemoteKeyNotFound") =>
                {
                    Ok(())
                }
                other => Err(other),
            }
        },
    )
    .await;

    // A new Secret is created by its apply alone, not read first: one read per first sync was 160. The
    // operator reads its hash key, and a sync that runs again before the watch shows its own Secret reads it.
    let asked = requests_between(&Default::default(), &operator.api_requests().await);
    let secret_reads = asked.get("get secrets").copied().unwrap_or_default();
    assert!(secret_reads <= 5.0, "API server requests: {asked:?}");
    let reads: Vec<_> = recorded_calls()
        .into_iter()
        .filter(|call| keys.iter().any(|key| call.reads(key)))
        .collect();
    let ids_read: usize = reads
        .iter()
        .flat_map(|call| &call.secret_ids)
        .filter(|id| keys.contains(id))
        .count();
    println!(
        "first sync of {count} ExternalSecrets over {SECRETS} secrets: {:.1}s, {} value calls ({}), {ids_read} secret values read",
        synced.as_secs_f64(),
        reads.len(),
        reads
            .iter()
            .map(|call| format!("{} x{}", call.action, call.secret_ids.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        reads
            .iter()
            .all(|call| call.action == "BatchGetSecretValue"),
        "every read is batched"
    );
    // One read per ExternalSecret would be 160 calls reading 160 values. Calls carry the keys of the first
    // syncs to come, so the 40 secrets take R/20 = 2 full calls; one more is allowed for the missing key,
    // which may fall into a call of its own, and a tenth more values for syncs that overlap unluckily.
    assert!(
        reads.len() <= SECRETS.div_ceil(20) + 1,
        "{} value calls for {SECRETS} secrets",
        reads.len()
    );
    assert!(
        ids_read <= SECRETS + SECRETS / 10,
        "{ids_read} values read for {SECRETS} secrets"
    );
}

#[tokio::test]
async fn a_restart_reads_only_what_changed_meanwhile() {
    let t = TestContext::new("restart-reads").await;
    let keys = numbered_external_secrets(&t, "2s").await;
    let count = SECRETS * PER_SECRET;
    let mut operator = t.start_operator();
    let written = |expected: fn(usize) -> String| {
        let t = &t;
        move || async move {
            let secrets = t.secrets().list(&Default::default()).await.unwrap();
            let written = numbered_holding(&secrets.items, expected);
            (written == count).then_some(()).ok_or(written)
        }
    };
    wait_for(
        "every Secret written",
        Duration::from_secs(120),
        written(|i| format!("v1-{}", i % SECRETS)),
    )
    .await;
    let (code, _) = operator.terminate();
    assert_eq!(code, Some(0));

    // One secret rotates while the operator is down, and one Secret is edited by hand.
    t.put_remote(&keys[0], "v2-0").await;
    let edit = json!({"data": {"value": "dGFtcGVyZWQ="}}); // "tampered"
    t.secrets()
        .patch("es-1", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let calls_before = recorded_calls().len();
    let started = Instant::now();
    let operator = t.start_operator();
    wait_for(
        "the rotated secret's readers and the edited Secret rewritten",
        Duration::from_secs(60),
        written(|i| match i % SECRETS {
            0 => "v2-0".to_string(),
            other => format!("v1-{other}"),
        }),
    )
    .await;
    let caught_up = started.elapsed();
    // Every ExternalSecret has been looked at by the new process, and a few checks have run since.
    wait_for(
        "every ExternalSecret reconciled",
        Duration::from_secs(60),
        || async {
            let done = operator.reconciles().await;
            (done >= count as f64).then_some(()).ok_or(done)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let calls: Vec<_> = recorded_calls()
        .into_iter()
        .skip(calls_before)
        .filter(|call| {
            call.secret_ids.is_empty() || keys.iter().any(|key| call.secret_ids.contains(key))
        })
        .collect();
    let reads: Vec<_> = calls
        .iter()
        .filter(|call| keys.iter().any(|key| call.reads(key)))
        .collect();
    let values: Vec<&String> = reads.iter().flat_map(|call| &call.secret_ids).collect();
    println!(
        "restart with {count} ExternalSecrets over {SECRETS} secrets, one rotated and one Secret edited meanwhile: rewritten {:.1}s after the start; {} AWS calls in {:.0}s ({} value calls, reading {values:?})",
        caught_up.as_secs_f64(),
        calls.len(),
        started.elapsed().as_secs_f64(),
        reads.len(),
    );
    // The edited Secret's ExternalSecret reads its secret again to write it back.
    assert!(
        values
            .iter()
            .all(|key| **key == keys[0] || **key == keys[1]),
        "only the rotated secret and the edited Secret's are read again: {values:?}"
    );
    assert!(values.contains(&&keys[0]), "the rotated secret is read");
    // The list of our Secrets' metadata tells what each holds: only the rewritten ones are read (the
    // rotated secret's readers before their apply, the edited one to see what it holds), and the operator's
    // hash key.
    let asked = requests_between(&Default::default(), &operator.api_requests().await);
    let secret_reads = asked.get("get secrets").copied().unwrap_or_default();
    println!("API server requests after the restart: {asked:?}");
    // The workloads to restart come from watches: one list of each kind, not one per data change.
    for kind in ["deployments", "statefulsets", "daemonsets"] {
        let lists = asked
            .get(&format!("list {kind}"))
            .copied()
            .unwrap_or_default();
        assert!(lists <= 1.0, "{lists} lists of {kind}");
    }
    assert!(
        secret_reads <= (PER_SECRET + 2) as f64,
        "{secret_reads} Secret reads for {} rewritten Secrets",
        PER_SECRET + 1
    );
}

#[tokio::test]
async fn a_refresh_that_changes_nothing_asks_the_api_server_nothing() {
    let t = TestContext::new("quiet-refresh").await;
    let key = t.create_remote("s", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1m"}))
        .await;
    const COUNT: usize = 5;
    for i in 0..COUNT {
        let mut es: serde_json::Value = serde_json::from_str(&value_external_secret(
            &format!("es-{i}"),
            "aws",
            "SecretStore",
            &key,
            None,
        ))
        .unwrap();
        es["spec"]["refreshInterval"] = json!("2s");
        t.apply_yaml(&es.to_string()).await;
    }
    let operator = t.start_operator();
    wait_for("every Secret written", Duration::from_secs(60), || async {
        let secrets = t.secrets().list(&Default::default()).await.unwrap();
        let written = numbered_holding(&secrets.items, |_| "v1".to_string());
        (written == COUNT).then_some(()).ok_or(written)
    })
    .await;
    // Past the first syncs' status writes and events.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (requests_before, reconciles_before, calls_before) = (
        operator.api_requests().await,
        operator.reconciles().await,
        recorded_calls().len(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let asked = requests_between(&requests_before, &operator.api_requests().await);
    let refreshes = operator.reconciles().await - reconciles_before;
    let value_calls = recorded_calls()
        .into_iter()
        .skip(calls_before)
        .filter(|call| call.reads(&key))
        .count();
    println!(
        "{COUNT} ExternalSecrets refreshing every 2s, over 10s: {refreshes} reconciles, {value_calls} value calls, API server requests {asked:?}"
    );
    assert!(
        refreshes >= COUNT as f64 * 3.0 && value_calls > 0,
        "the refreshes ran: {refreshes} reconciles, {value_calls} value calls"
    );
    assert!(asked.is_empty(), "API server requests: {asked:?}");
}
