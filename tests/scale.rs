//! Reads per secret, not per ExternalSecret: syncs that need the same secrets at about the same time share
//! their reads, and a first sync takes what the version watch already keeps.

mod common;

use std::time::{Duration, Instant};

use common::{TestContext, numbered_holding, recorded_calls, value_external_secret, wait_for};
use serde_json::json;

const SECRETS: usize = 40;
const PER_SECRET: usize = 4;

#[tokio::test]
async fn a_first_sync_reads_each_secret_about_once() {
    let t = TestContext::new("shared-reads").await;
    let mut keys = Vec::new();
    for i in 0..SECRETS {
        keys.push(t.create_remote(&format!("s{i}"), &format!("v1-{i}")).await);
    }
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1m"}))
        .await;
    // All exist before the operator starts, so that their first syncs run together; neighbours read
    // different secrets.
    let count = SECRETS * PER_SECRET;
    for i in 0..count {
        t.apply_yaml(&value_external_secret(
            &format!("es-{i}"),
            "aws",
            "SecretStore",
            &keys[i % SECRETS],
            None,
        ))
        .await;
    }
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
    let _operator = t.start_operator();
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
    // One read per ExternalSecret would be 160 calls reading 160 values. How full each call gets depends
    // on how the syncs happen to overlap, so the bounds leave room: at least two secrets a call, and each
    // secret read about once.
    assert!(
        reads.len() <= SECRETS / 2,
        "{} value calls for {SECRETS} secrets",
        reads.len()
    );
    assert!(
        ids_read <= SECRETS + SECRETS / 2,
        "{ids_read} values read for {SECRETS} secrets"
    );
}
