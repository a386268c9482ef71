//! End to end, as a user runs secretsync: `helm install` of the chart, then syncs, a rotation reaching the
//! Secret and restarting a Deployment, events, metrics, and what the chart's RBAC does not allow.
//!
//! Two ways to run it, the same tests:
//! - **local** (`make test`): the local control plane and moto (`hack/testenv.sh`). Nothing runs pods, so
//!   the operator binary runs out of cluster with a token of the chart's ServiceAccount: it has exactly the
//!   chart's RBAC, and a missing permission fails the suite.
//! - **in cluster** (`e2e/run-kind.sh`, also in CI on GitHub Actions): `E2E_IMAGE` names the image loaded
//!   into kind and `E2E_AWS_ENDPOINT` moto's address inside the cluster; the chart runs the operator's pod.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{MANIFEST_DIR, Operator, TIMEOUT, TestContext, env_vars, helm, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/secretsync");

/// Where the operator runs: in the cluster from an image, or out of cluster as the chart's ServiceAccount.
enum Runner {
    InCluster { image: String, aws_endpoint: String },
    OutOfCluster,
}

impl Runner {
    fn from_env() -> Self {
        match std::env::var("E2E_IMAGE") {
            Ok(image) => Runner::InCluster {
                image,
                aws_endpoint: std::env::var("E2E_AWS_ENDPOINT").expect(
                    "E2E_AWS_ENDPOINT: moto's URL inside the cluster (e2e/run-kind.sh sets it)",
                ),
            },
            Err(_) => Runner::OutOfCluster,
        }
    }
}

/// The chart installed into the test's namespace and scoped to it, with its operator running.
struct Installed {
    release: String,
    fullname: String,
    /// Out of cluster only: the operator process.
    operator: Option<Operator>,
}

impl Installed {
    async fn new(t: &TestContext) -> Self {
        let release = t.namespace.clone();
        let fullname = format!("{release}-secretsync");
        let mut args = vec![
            "install".to_string(),
            release.clone(),
            CHART.to_string(),
            "--namespace".into(),
            release.clone(),
            "--skip-crds".into(),
            "--set".into(),
            format!("watchNamespace={release}"),
        ];
        let runner = Runner::from_env();
        if let Runner::InCluster {
            image,
            aws_endpoint,
        } = &runner
        {
            let (repository, tag) = image.rsplit_once(':').expect("E2E_IMAGE is repository:tag");
            let values = json!({
                "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                "awsRegion": "us-east-1",
                "extraEnv": [
                    {"name": "AWS_ENDPOINT_URL", "value": aws_endpoint},
                    {"name": "AWS_ACCESS_KEY_ID", "value": "e2e"},
                    {"name": "AWS_SECRET_ACCESS_KEY", "value": "e2e"},
                ],
            });
            let file = Path::new(MANIFEST_DIR)
                .join("target/test-logs")
                .join(format!("{release}.values.json"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, values.to_string()).unwrap();
            args.extend([
                "--values".into(),
                file.display().to_string(),
                "--wait".into(),
            ]);
        }
        helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let operator = match runner {
            Runner::InCluster { .. } => None,
            Runner::OutOfCluster => {
                let kubeconfig = service_account_kubeconfig(t, &fullname).await;
                let lease = format!("{fullname}-leader");
                let hash_key = format!("{fullname}-hash-key");
                Some(Operator::start(
                    &t.namespace,
                    &[
                        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                        // As the chart's Deployment runs it.
                        ("SECRETSYNC_HASH_KEY_SECRET", &hash_key),
                        ("SECRETSYNC_LEADER_ELECT", "true"),
                        ("SECRETSYNC_LEADER_ELECTION_LEASE", &lease),
                        ("POD_NAME", "e2e-0"),
                    ],
                ))
            }
        };
        Installed {
            release,
            fullname,
            operator,
        }
    }

    /// The operator's log, wherever it runs.
    fn log(&self) -> String {
        match &self.operator {
            Some(operator) => operator.log(),
            None => {
                let output = Command::new("kubectl")
                    .args([
                        "logs",
                        "-n",
                        &self.release,
                        &format!("deployment/{}", self.fullname),
                    ])
                    .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
                    .output()
                    .expect("kubectl is required");
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.operator.take();
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new(&env_vars()["HELM"])
            .args(["uninstall", &self.release, "--namespace", &self.release])
            .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
            .output();
    }
}

/// A kubeconfig for the local stack that authenticates as a ServiceAccount.
async fn service_account_kubeconfig(t: &TestContext, account: &str) -> std::path::PathBuf {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(t.client.clone(), &t.namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("token")
        .token;
    let mut kubeconfig = Kubeconfig::read_from(&env_vars()["KUBECONFIG"]).unwrap();
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let path = Path::new(MANIFEST_DIR)
        .join("target/test-logs")
        .join(format!("{}.kubeconfig", t.namespace));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn syncs_rotates_and_restarts_with_the_chart_rbac() {
    let t = TestContext::new("e2e-sync").await;
    let installed = Installed::new(&t).await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    t.restartable_deployment("web", "app").await;
    t.sync_value("app", "aws", &key, "v1").await;

    // A rotation reaches the Secret by the version check, and rolls the Deployment that asked for it.
    t.put_remote(&key, "v2").await;
    t.wait_for_value("app", "v2").await;
    wait_for("the restart", TIMEOUT, || async {
        let web = Api::<Deployment>::namespaced(t.client.clone(), &t.namespace)
            .get("web")
            .await
            .unwrap();
        let annotations = web.spec.unwrap().template.metadata.unwrap().annotations;
        annotations
            .filter(|a| a.contains_key("secretsync.io/restarted-at"))
            .map(|_| ())
            .ok_or("not restarted")
    })
    .await;
    wait_for("the Created event", TIMEOUT, || async {
        let events = t.events_for("app").await;
        events
            .iter()
            .any(|e| e.1 == "Created")
            .then_some(())
            .ok_or(events)
    })
    .await;

    // Deleting the ExternalSecret takes its Secret with it (owner reference, garbage collection).
    t.external_secrets()
        .delete("app", &Default::default())
        .await
        .unwrap();
    wait_for("the Secret to be collected", TIMEOUT, || async {
        let secret = t.secrets().get_opt("app").await.unwrap();
        secret.is_none().then_some(()).ok_or("still there")
    })
    .await;
    let log = installed.log();
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
}

#[tokio::test]
async fn the_chart_rbac_allows_no_more_than_it_needs() {
    let t = TestContext::new("e2e-rbac").await;
    let other = TestContext::new("e2e-other").await;
    let installed = Installed::new(&t).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "theirs"},
                        "stringData": {"password": "not-yours"}});
    other.apply_yaml(&secret.to_string()).await;
    let scoped = client_from(&service_account_kubeconfig(&t, &installed.fullname).await).await;
    let denied = Api::<Secret>::namespaced(scoped.clone(), &other.namespace)
        .get("theirs")
        .await
        .expect_err("read another namespace's Secret");
    assert!(
        matches!(&denied, kube::Error::Api(status) if status.code == 403),
        "{denied}"
    );
    let listed = Api::<Secret>::all(scoped)
        .list(&ListParams::default())
        .await
        .expect_err("list Secrets cluster-wide");
    assert!(
        matches!(&listed, kube::Error::Api(status) if status.code == 403),
        "{listed}"
    );
}
