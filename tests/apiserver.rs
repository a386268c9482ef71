//! The kube-apiserver stopped in the middle of a sync of 200 ExternalSecrets and started again on the same
//! etcd: the operator's watches resume, nothing is lost, and it does not spin while the API server is gone.
//! The API server is one of this test's own (`hack/testenv.sh control-plane`), so the stack that the other
//! tests share keeps running.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    MANIFEST_DIR, Operator, TestContext, numbered_holding, value_external_secret, wait_for,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use secretsync::api::ExternalSecret;
use serde_json::json;

const COUNT: usize = 200;

/// A control plane of the test's own, stopped by its PIDs on drop.
struct ControlPlane {
    dir: PathBuf,
}

impl ControlPlane {
    fn run(&self, action: &str) {
        let status = Command::new(format!("{MANIFEST_DIR}/hack/testenv.sh"))
            .args(["control-plane", &self.dir.to_string_lossy(), action])
            .env("KUBECONFIG", &common::env_vars()["KUBECONFIG"])
            .status()
            .expect("hack/testenv.sh runs");
        assert!(status.success(), "control-plane {action}");
    }

    fn kubeconfig(&self) -> String {
        self.dir.join("kubeconfig").to_string_lossy().into_owned()
    }

    fn kubectl(&self, args: &[&str], input: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .current_dir(MANIFEST_DIR)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.unwrap_or_default().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn client(&self) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.run("down");
    }
}

/// Secrets `es-<i>` holding `v1-<i/4>`, and ExternalSecrets Ready.
async fn synced(client: &kube::Client, namespace: &str) -> (usize, usize) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Ok(secrets) = secrets.list(&Default::default()).await else {
        return (0, 0);
    };
    let written = numbered_holding(&secrets.items, |i| format!("v1-{}", i / 4));
    let external_secrets: Api<ExternalSecret> = Api::namespaced(client.clone(), namespace);
    let ready = external_secrets
        .list(&Default::default())
        .await
        .map(|list| {
            list.items
                .iter()
                .filter(|es| {
                    es.status.as_ref().is_some_and(|status| {
                        status
                            .conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count()
        })
        .unwrap_or_default();
    (written, ready)
}

#[tokio::test]
async fn the_api_server_stopped_mid_sync_and_restarted_loses_nothing() {
    let t = TestContext::new("apiserver-restart").await;
    let plane = ControlPlane {
        dir: PathBuf::from(format!(
            "{MANIFEST_DIR}/target/test-logs/{}-control-plane",
            t.namespace
        )),
    };
    plane.run("up");
    plane.kubectl(&["apply", "--server-side", "-f", "crds"], None);
    plane.kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            "crds",
        ],
        None,
    );
    plane.kubectl(&["create", "namespace", &t.namespace], None);
    let mut keys = Vec::new();
    for i in 0..COUNT / 4 {
        keys.push(t.create_remote(&format!("s{i}"), &format!("v1-{i}")).await);
    }
    let mut items = vec![json!({
        "apiVersion": "secretsync.io/v1alpha1", "kind": "SecretStore", "metadata": {"name": "aws"},
        "spec": {"provider": {"aws": {"service": "SecretsManager", "region": "us-east-1"}}},
    })];
    for i in 0..COUNT {
        let manifest =
            value_external_secret(&format!("es-{i}"), "aws", "SecretStore", &keys[i / 4], None);
        items.push(serde_json::from_str(&manifest).unwrap());
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    plane.kubectl(
        &["apply", "--server-side", "-n", &t.namespace, "-f", "-"],
        Some(&list),
    );

    let kubeconfig = plane.kubeconfig();
    let operator = Operator::start(
        &t.namespace,
        &[
            ("KUBECONFIG", &kubeconfig),
            (
                "RUST_LOG",
                "info,secretsync=debug,kube_runtime::watcher=debug",
            ),
        ],
    );
    let client = plane.client().await;
    wait_for(
        "the sync to be under way",
        Duration::from_secs(60),
        || async {
            let (written, _) = synced(&client, &t.namespace).await;
            (written >= COUNT / 5).then_some(()).ok_or(written)
        },
    )
    .await;

    let (written_at_stop, _) = synced(&client, &t.namespace).await;
    plane.run("stop-apiserver");
    let cpu_before = operator.cpu_seconds();
    let outage = Duration::from_secs(15);
    tokio::time::sleep(outage).await;
    let cpu_in_outage = operator.cpu_seconds() - cpu_before;
    plane.run("start-apiserver");
    let restarted = Instant::now();
    let client = plane.client().await;
    // Deleted before the operator's watches are back: it may only learn of it from a relist.
    let external_secrets: Api<ExternalSecret> = Api::namespaced(client.clone(), &t.namespace);
    external_secrets
        .delete(&format!("es-{}", COUNT - 1), &DeleteParams::default())
        .await
        .unwrap();

    wait_for(
        &format!("the other {} synced and Ready", COUNT - 1),
        Duration::from_secs(120),
        || async {
            let (written, ready) = synced(&client, &t.namespace).await;
            (written >= COUNT - 1 && ready == COUNT - 1)
                .then_some(())
                .ok_or((written, ready))
        },
    )
    .await;
    let converged = restarted.elapsed();

    // The watches work again: a deleted Secret is written back, a new ExternalSecret synced.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
    secrets
        .delete("es-0", &DeleteParams::default())
        .await
        .unwrap();
    let new = value_external_secret("es-new", "aws", "SecretStore", &keys[0], None);
    plane.kubectl(
        &["apply", "--server-side", "-n", &t.namespace, "-f", "-"],
        Some(&new),
    );
    let resuming = Instant::now();
    wait_for(
        "the watches to resume",
        Duration::from_secs(120),
        || async {
            let restored = secrets.get_opt("es-0").await.ok().flatten().is_some();
            let new = secrets.get_opt("es-new").await.ok().flatten().is_some();
            (restored && new).then_some(()).ok_or((restored, new))
        },
    )
    .await;
    let resumed = resuming.elapsed();
    // What was kept for the deleted one is gone: its metric series.
    let gone = format!("name=\"es-{}\"", COUNT - 1);
    wait_for(
        "the deleted ExternalSecret's series to go",
        Duration::from_secs(30),
        || async {
            let (_, metrics) = operator.http_get("/metrics").await?;
            (!metrics.contains(&gone))
                .then_some(())
                .ok_or("still there".to_string())
        },
    )
    .await;
    println!(
        "kube-apiserver stopped for {}s with {written_at_stop} of {COUNT} Secrets written: {cpu_in_outage:.2} CPU seconds \
         while it was down; the {} left all synced and Ready {:.1}s after it was back, and the one deleted meanwhile forgotten; a Secret deleted and a new ExternalSecret {:.1}s after that",
        outage.as_secs(),
        COUNT - 1,
        converged.as_secs_f64(),
        resumed.as_secs_f64()
    );
    // A hot loop burns a core, 15 s. The debug operator's backed-off retries of the ~160 unsynced
    // ExternalSecrets measured 2.5-4.0 s on a 2-core machine, so a fifth of the outage failed without one.
    assert!(
        cpu_in_outage < outage.as_secs_f64() / 3.0,
        "{cpu_in_outage:.2} CPU seconds in {}s without an API server: a hot loop",
        outage.as_secs()
    );
    assert!(
        !operator.log().contains("panicked"),
        "{}",
        operator.log_path.display()
    );
}
