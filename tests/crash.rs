//! The operator SIGKILLed in the middle of a first sync of 1,000 ExternalSecrets and in the middle of a
//! rotation of all of them, then started again: every Secret converges, and every workload whose Secret
//! changed is restarted exactly once (restarts are level-triggered: owed restarts survive the kill).

mod common;

use std::time::{Duration, Instant};

use common::{Operator, TestContext, numbered_holding, value_external_secret, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;

const COUNT: usize = 1000;
/// Every this many ExternalSecrets, a Deployment restarted when its Secret changes.
const DEPLOYMENT_EVERY: usize = 25;

/// How many Secrets `es-<i>` hold `v<generation>-<i/4>`.
async fn at_generation(t: &TestContext, generation: u32) -> usize {
    let secrets = t.secrets().list(&Default::default()).await.unwrap();
    numbered_holding(&secrets.items, |i| format!("v{generation}-{}", i / 4))
}

async fn wait_until_at_least(t: &TestContext, generation: u32, count: usize, within: Duration) {
    wait_for(
        &format!("{count} Secrets at v{generation}"),
        within,
        || async {
            let done = at_generation(t, generation).await;
            (done >= count).then_some(()).ok_or(done)
        },
    )
    .await
}

#[tokio::test]
async fn sigkill_mid_sync_and_mid_rotation_converges_and_restarts_each_workload_once() {
    let t = TestContext::new("crash").await;
    let mut keys = Vec::new();
    for i in 0..COUNT / 4 {
        keys.push(t.create_remote(&format!("s{i}"), &format!("v1-{i}")).await);
    }
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "2s"}))
        .await;
    for i in (0..COUNT).step_by(DEPLOYMENT_EVERY) {
        t.restartable_deployment(&format!("web-{i}"), &format!("es-{i}"))
            .await;
    }
    let mut operator = Operator::start(&t.namespace, &[]);
    for i in 0..COUNT {
        t.apply_yaml(&value_external_secret(
            &format!("es-{i}"),
            "aws",
            "SecretStore",
            &keys[i / 4],
            None,
        ))
        .await;
    }

    // Killed part way through the first sync.
    wait_until_at_least(&t, 1, COUNT / 4, Duration::from_secs(180)).await;
    operator.kill();
    let killed_at = at_generation(&t, 1).await;
    let started = Instant::now();
    let mut operator = Operator::start(&t.namespace, &[]);
    wait_until_at_least(&t, 1, COUNT, Duration::from_secs(300)).await;
    let first_sync = started.elapsed();

    // A rotation of every remote secret, killed part way through its propagation.
    for (i, key) in keys.iter().enumerate() {
        t.put_remote(key, &format!("v2-{i}")).await;
    }
    wait_until_at_least(&t, 2, COUNT / 4, Duration::from_secs(180)).await;
    operator.kill();
    let rotated_at_kill = at_generation(&t, 2).await;
    let started = Instant::now();
    let _operator = Operator::start(&t.namespace, &[]);
    wait_until_at_least(&t, 2, COUNT, Duration::from_secs(300)).await;
    let rotation = started.elapsed();

    // Every Deployment's template changed exactly once: generation 1 at creation, 2 after its restart.
    let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &t.namespace);
    let expected = COUNT / DEPLOYMENT_EVERY;
    let generations = wait_for(
        "every Deployment restarted",
        Duration::from_secs(60),
        || async {
            let generations: Vec<(String, i64)> = deployments
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .map(|d| {
                    (
                        d.metadata.name.unwrap_or_default(),
                        d.metadata.generation.unwrap_or_default(),
                    )
                })
                .collect();
            let restarted = generations.iter().filter(|(_, g)| *g >= 2).count();
            (restarted == expected)
                .then_some(generations.clone())
                .ok_or(format!("{restarted} of {expected} restarted"))
        },
    )
    .await;
    // Restarts settle: nothing restarts a second time afterwards.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (name, generation) in &generations {
        let now = deployments.get(name).await.unwrap().metadata.generation;
        assert_eq!(
            now,
            Some(2),
            "{name} was restarted {} times",
            now.unwrap_or(1) - 1
        );
        assert_eq!(*generation, 2, "{name}");
    }
    println!(
        "SIGKILL with {killed_at} of {COUNT} Secrets written: all {COUNT} in sync {:.1}s after the restart; \
         SIGKILL with {rotated_at_kill} of {COUNT} rotated: all rotated {:.1}s after the restart; \
         {expected} Deployments restarted exactly once",
        first_sync.as_secs_f64(),
        rotation.as_secs_f64()
    );
}
