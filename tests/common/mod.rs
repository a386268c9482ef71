//! Test harness: the local stack from `hack/testenv.sh`, a throwaway namespace per test, moto as AWS, and the
//! operator binary running out of cluster against them.
#![allow(dead_code)] // each test binary uses part of the harness

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::primitives::Blob;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use secretsync::api::ExternalSecret;
use serde_json::json;

pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The `export` lines written by `hack/testenv.sh up`.
pub fn env_vars() -> &'static HashMap<String, String> {
    static VARS: OnceLock<HashMap<String, String>> = OnceLock::new();
    VARS.get_or_init(|| {
        let dir = std::env::var("SECRETSYNC_TESTENV")
            .unwrap_or_else(|_| format!("{MANIFEST_DIR}/target/testenv"));
        let path = Path::new(&dir).join("env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "the local test stack is not running ({}: {err}).\n\
                 Start it with `make test-env` (or run everything with `make test`).",
                path.display()
            )
        });
        let vars: HashMap<String, String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        install_crds(&vars["KUBECONFIG"]);
        vars
    })
}

/// `kubectl apply -f crds/`, as a user would, once per test binary.
fn install_crds(kubeconfig: &str) {
    let crds = format!("{MANIFEST_DIR}/crds");
    run_kubectl(
        kubeconfig,
        &["apply", "--server-side", "--force-conflicts", "-f", &crds],
    );
    run_kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &crds,
        ],
    );
}

fn run_kubectl(kubeconfig: &str, args: &[&str]) {
    let output = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl is required: install it (https://kubernetes.io/docs/tasks/tools/)");
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub async fn kube_client() -> Client {
    let kubeconfig = Kubeconfig::read_from(&env_vars()["KUBECONFIG"]).expect("readable kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("kube client")
}

pub async fn aws_config() -> aws_config::SdkConfig {
    let vars = env_vars();
    let credentials = aws_sdk_secretsmanager::config::Credentials::new(
        &vars["AWS_ACCESS_KEY_ID"],
        &vars["AWS_SECRET_ACCESS_KEY"],
        None,
        None,
        "testenv",
    );
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&vars["AWS_ENDPOINT_URL"])
        .region(aws_config::Region::new(vars["AWS_REGION"].clone()))
        .credentials_provider(credentials)
        .load()
        .await
}

/// One test's world: its namespace (deleted on drop), its remote-key prefix, and clients.
pub struct TestContext {
    pub namespace: String,
    pub client: Client,
    pub secrets_manager: aws_sdk_secretsmanager::Client,
}

impl TestContext {
    pub async fn new(test: &str) -> Self {
        let suffix: u32 = rand::random();
        let namespace = format!("{}-{:06x}", test.replace('_', "-"), suffix & 0xffffff);
        let client = kube_client().await;
        Self::create_namespace(&client, &namespace).await;
        TestContext {
            namespace,
            client,
            secrets_manager: aws_sdk_secretsmanager::Client::new(&aws_config().await),
        }
    }

    pub async fn create_namespace(client: &Client, name: &str) {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some([("secretsync.io/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create test namespace");
    }

    /// A remote secret name unique to this test.
    pub fn remote_key(&self, name: &str) -> String {
        format!("{}/{name}", self.namespace)
    }

    pub async fn create_remote(&self, name: &str, value: &str) -> String {
        let key = self.remote_key(name);
        self.secrets_manager
            .create_secret()
            .name(&key)
            .secret_string(value)
            .send()
            .await
            .expect("CreateSecret");
        key
    }

    pub async fn create_remote_binary(&self, name: &str, value: &[u8]) -> String {
        let key = self.remote_key(name);
        self.secrets_manager
            .create_secret()
            .name(&key)
            .secret_binary(Blob::new(value))
            .send()
            .await
            .expect("CreateSecret");
        key
    }

    /// A rotation: a new AWSCURRENT version. Returns its VersionId.
    pub async fn put_remote(&self, key: &str, value: &str) -> String {
        self.secrets_manager
            .put_secret_value()
            .secret_id(key)
            .secret_string(value)
            .send()
            .await
            .expect("PutSecretValue")
            .version_id
            .expect("VersionId")
    }

    pub async fn apply_yaml(&self, yaml: &str) {
        self.apply_yaml_in(&self.namespace, yaml).await
    }

    /// Server-side apply of one manifest into `namespace`, as `kubectl apply` would.
    pub async fn apply_yaml_in(&self, namespace: &str, yaml: &str) {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).expect("valid YAML manifest");
        let name = value["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let kind = value["kind"].as_str().expect("kind");
        let (group, version) = match value["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .split_once('/')
        {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                value["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .expect("known kind");
        let api: Api<kube::api::DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced
        {
            Api::namespaced_with(self.client.clone(), namespace, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        };
        api.patch(
            &name,
            &PatchParams::apply("secretsync-tests").force(),
            &Patch::Apply(&value),
        )
        .await
        .unwrap_or_else(|err| panic!("apply {kind}/{name}: {err}"));
    }

    /// A SecretStore using the operator's own credentials (the test env's admin keys).
    pub async fn default_store(&self, name: &str) {
        self.apply_yaml(&format!(
            "apiVersion: secretsync.io/v1alpha1\nkind: SecretStore\nmetadata: {{name: {name}}}\n\
             spec: {{provider: {{aws: {{service: SecretsManager, region: us-east-1}}}}}}"
        ))
        .await
    }

    pub fn external_secrets(&self) -> Api<ExternalSecret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn secret_data(&self, name: &str) -> Option<HashMap<String, String>> {
        let secret = self.secrets().get_opt(name).await.expect("get Secret")?;
        Some(
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        )
    }

    /// Events about one object, as `kubectl describe` shows them: (type, reason, note).
    pub async fn events_for(&self, name: &str) -> Vec<(String, String, String)> {
        Api::<Event>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    pub async fn force_sync(&self, name: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {"secretsync.io/force-sync": value}}});
        self.external_secrets()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate ExternalSecret");
    }

    /// The Ready condition of an ExternalSecret as (status, reason, message).
    pub async fn es_ready(&self, name: &str) -> Option<(String, String, String)> {
        let es = self
            .external_secrets()
            .get_opt(name)
            .await
            .expect("get ExternalSecret")?;
        let condition = es
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        Some((condition.status, condition.reason, condition.message))
    }

    pub fn start_operator(&self) -> Operator {
        Operator::start(&self.namespace, &[])
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.namespace, "--wait=false"])
            .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The operator binary, watching one namespace, logging to a file; stopped by PID on drop.
pub struct Operator {
    child: Child,
    pub log_path: PathBuf,
    /// Base URL of its /metrics, /healthz and /readyz.
    pub http_url: String,
}

impl Operator {
    pub fn start(namespace: &str, extra_env: &[(&str, &str)]) -> Self {
        let vars = env_vars();
        let log_dir = Path::new(MANIFEST_DIR).join("target/test-logs");
        std::fs::create_dir_all(&log_dir).expect("log directory");
        let log_path = log_dir.join(format!("{namespace}.log"));
        let log = std::fs::File::create(&log_path).expect("operator log file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let metrics_address = format!("127.0.0.1:{port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_secretsync"));
        command
            .args([
                "run",
                "--namespace",
                namespace,
                "--operator-namespace",
                namespace,
            ])
            .args([
                "--metrics-address",
                &metrics_address,
                "--log-level",
                "info,secretsync=debug",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(
                vars.iter()
                    .filter(|(k, _)| k.starts_with("AWS_") || *k == "KUBECONFIG"),
            )
            .envs(extra_env.iter().copied())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        Operator {
            child: command.spawn().expect("start the secretsync binary"),
            log_path,
            http_url: format!("http://{metrics_address}"),
        }
    }

    /// GET a path of the operator's HTTP server: (status code, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String), String> {
        let output = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                &format!("{}{path}", self.http_url),
            ])
            .output()
            .await
            .map_err(|err| format!("curl is required: {err}"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').ok_or("no response")?;
        Ok((
            code.parse()
                .map_err(|_| format!("no HTTP status in {text:?}"))?,
            body.to_string(),
        ))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, or fails with the last state seen.
pub async fn wait_for<T, S: Debug, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {state:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub const TIMEOUT: Duration = Duration::from_secs(30);
