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
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
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

fn run_kubectl(kubeconfig: &str, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .args(args)
        .current_dir(MANIFEST_DIR)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl is required: install it (https://kubernetes.io/docs/tasks/tools/)");
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// kubectl against the stack, from the repository root; panics with its error when it fails.
pub fn kubectl(args: &[&str]) -> String {
    run_kubectl(&env_vars()["KUBECONFIG"], args)
}

/// helm against the stack: whether it succeeded, and its output.
pub fn try_helm(args: &[&str]) -> (bool, String) {
    let vars = env_vars();
    let output = Command::new(&vars["HELM"])
        .args(args)
        .env("KUBECONFIG", &vars["KUBECONFIG"])
        .output()
        .expect("helm runs (hack/build-helm.sh builds it; `make test` does that)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// helm against the stack; panics with its output when it fails.
pub fn helm(args: &[&str]) -> String {
    let (ok, text) = try_helm(args);
    assert!(ok, "helm {}:\n{text}", args.join(" "));
    text
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

    /// An SQS queue named after the test's namespace, and a client for it: (client, queue URL).
    pub async fn create_queue(&self) -> (aws_sdk_sqs::Client, String) {
        let sqs = aws_sdk_sqs::Client::new(&aws_config().await);
        let url = sqs
            .create_queue()
            .queue_name(&self.namespace)
            .send()
            .await
            .expect("CreateQueue")
            .queue_url
            .expect("QueueUrl");
        (sqs, url)
    }

    /// A SecretStore using the operator's own credentials (the test env's admin keys).
    pub async fn store_with_check(&self, name: &str, version_check: serde_json::Value) {
        let manifest = json!({
            "apiVersion": "secretsync.io/v1alpha1",
            "kind": "SecretStore",
            "metadata": {"name": name},
            "spec": {"provider": {"aws": {
                "service": "SecretsManager", "region": "us-east-1", "versionCheck": version_check,
            }}},
        });
        self.apply_yaml(&manifest.to_string()).await
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

    /// An IAM role named after this test, trusting and allowing what the documented policies in `docs/iam/`
    /// say, so that the documentation is what the tests prove: the operator (the stack's admin user) may
    /// assume it for this test's namespace. Returns its ARN.
    pub async fn create_role(&self, name: &str, trust: &str, policies: &[&str]) -> String {
        self.create_role_with(name, trust, policies, ADMIN_ARN, &[&self.namespace])
            .await
    }

    /// A documented role that `principal` may assume on behalf of `tenants` (namespaces).
    pub async fn create_role_with(
        &self,
        name: &str,
        trust: &str,
        policies: &[&str],
        principal: &str,
        tenants: &[&str],
    ) -> String {
        let iam = iam().await;
        let role_name = self.role_name(name);
        let trust = documented_policy(trust, &self.namespace)
            .replace(OPERATOR_ROLE_PLACEHOLDER, principal)
            .replace("\"team-a\"", &json!(tenants).to_string());
        let role = iam
            .create_role()
            .role_name(&role_name)
            .assume_role_policy_document(trust)
            .send()
            .await
            .expect("CreateRole");
        for policy in policies {
            iam.put_role_policy()
                .role_name(&role_name)
                .policy_name(policy.trim_end_matches(".json"))
                .policy_document(documented_policy(policy, &self.namespace))
                .send()
                .await
                .expect("PutRolePolicy");
        }
        role.role.expect("role").arn
    }

    /// The IAM name of this test's role `name`; documented policies let the operator assume `secretsync-*`.
    pub fn role_name(&self, name: &str) -> String {
        format!("secretsync-{}-{name}", self.namespace)
    }

    /// An IAM user with the documented `policies` and an access key: (access key id, secret access key).
    pub async fn create_user(&self, name: &str, policies: &[&str]) -> (String, String) {
        let iam = iam().await;
        let user_name = format!("{}-{name}", self.namespace);
        iam.create_user()
            .user_name(&user_name)
            .send()
            .await
            .expect("CreateUser");
        for policy in policies {
            iam.put_user_policy()
                .user_name(&user_name)
                .policy_name(policy.trim_end_matches(".json"))
                .policy_document(documented_policy(policy, &self.namespace))
                .send()
                .await
                .expect("PutUserPolicy");
        }
        let key = iam
            .create_access_key()
            .user_name(&user_name)
            .send()
            .await
            .expect("CreateAccessKey")
            .access_key
            .expect("access key");
        (key.access_key_id, key.secret_access_key)
    }

    /// A ServiceAccount in this test's namespace, with the IRSA role annotation when `role_arn` is given.
    pub async fn create_service_account(&self, name: &str, role_arn: Option<&str>) {
        let annotations = role_arn.map(|arn| json!({"eks.amazonaws.com/role-arn": arn}));
        self.apply_yaml(
            &json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "annotations": annotations},
            })
            .to_string(),
        )
        .await
    }

    /// A token of a ServiceAccount for STS, as the kubelet projects one for IRSA.
    pub async fn service_account_token(&self, name: &str) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec!["sts.amazonaws.com".into()],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("token")
            .token
    }
}

/// How many of `secrets` are named `es-<i>` and hold `expected(i)` under the key `value`: the Secrets of
/// numbered ExternalSecrets made with `value_external_secret`.
pub fn numbered_holding(secrets: &[Secret], expected: impl Fn(usize) -> String) -> usize {
    secrets
        .iter()
        .filter(|secret| {
            let Some(i) = secret
                .metadata
                .name
                .as_deref()
                .and_then(|name| name.strip_prefix("es-"))
                .and_then(|i| i.parse::<usize>().ok())
            else {
                return false;
            };
            secret
                .data
                .as_ref()
                .and_then(|data| data.get("value"))
                .map(|value| value.0.as_slice())
                == Some(expected(i).as_bytes())
        })
        .count()
}

/// An ExternalSecret writing remote `key` (at `version`, if given) to the Secret key `value`, refreshed hourly.
pub fn value_external_secret(
    name: &str,
    store: &str,
    store_kind: &str,
    key: &str,
    version: Option<&str>,
) -> String {
    let mut remote_ref = json!({"key": key});
    if let Some(version) = version {
        remote_ref["version"] = json!(version);
    }
    json!({
        "apiVersion": "secretsync.io/v1alpha1",
        "kind": "ExternalSecret",
        "metadata": {"name": name},
        "spec": {
            "refreshInterval": "1h",
            "secretStoreRef": {"name": store, "kind": store_kind},
            "data": [{"secretKey": "value", "remoteRef": remote_ref}],
        },
    })
    .to_string()
}

impl TestContext {
    /// `count` remote secrets `<prefix><i>` holding `v1-<i>`; returns their keys.
    pub async fn numbered_remotes(&self, prefix: &str, count: usize) -> Vec<String> {
        let mut keys = Vec::new();
        for i in 0..count {
            keys.push(
                self.create_remote(&format!("{prefix}{i}"), &format!("v1-{i}"))
                    .await,
            );
        }
        keys
    }

    /// ExternalSecrets `es-<i>` for `i` below `count`, through the SecretStore `store`, each reading
    /// `keys[i % keys.len()]`: neighbours read different secrets.
    pub async fn numbered_external_secrets(&self, store: &str, count: usize, keys: &[String]) {
        for i in 0..count {
            self.apply_yaml(&value_external_secret(
                &format!("es-{i}"),
                store,
                "SecretStore",
                &keys[i % keys.len()],
                None,
            ))
            .await;
        }
    }

    /// Applies a one-key ExternalSecret on a SecretStore and waits for its Secret to hold `expected`.
    pub async fn sync_value(&self, name: &str, store: &str, key: &str, expected: &str) {
        self.apply_yaml(&value_external_secret(
            name,
            store,
            "SecretStore",
            key,
            None,
        ))
        .await;
        self.wait_for_value(name, expected).await;
    }

    /// A Deployment that asks to be restarted when the Secret `secret` changes.
    pub async fn restartable_deployment(&self, name: &str, secret: &str) {
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "annotations": {"secretsync.io/restart-on-change": secret}},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": name, "image": "registry.invalid/web:1"}]}},
            },
        });
        self.apply_yaml(&deployment.to_string()).await;
    }

    pub async fn wait_for_value(&self, name: &str, expected: &str) {
        wait_for(
            &format!("Secret {name} = {expected:?}"),
            TIMEOUT,
            || async {
                let data = self.secret_data(name).await.ok_or("no Secret")?;
                match data.get("value") {
                    Some(v) if v == expected => Ok(()),
                    other => Err(format!("{other:?}; Ready: {:?}", self.es_ready(name).await)),
                }
            },
        )
        .await
    }
}

/// AWS IAM with the test stack's admin keys.
pub async fn iam() -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&aws_config().await)
}

/// A policy document from `docs/iam/` for `namespace`'s secrets (the docs' `team-a/`), in the test stack's
/// account and region. Compact: moto checks signatures of form bodies after re-encoding them, and the
/// Rust SDK's encoding of spaces differs from Python's.
pub fn documented_policy(file: &str, namespace: &str) -> String {
    let path = Path::new(MANIFEST_DIR).join("docs/iam").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .replace("OPERATOR_ACCOUNT_ID", MOTO_ACCOUNT)
        .replace("ACCOUNT_ID", MOTO_ACCOUNT)
        .replace("REPLICA_REGION", "us-west-2")
        .replace("REGION", "us-east-1")
        .replace("EXTERNAL_ID", EXTERNAL_ID)
        .replace("QUEUE_NAME", namespace)
        .replace("team-a/", &format!("{namespace}/"));
    let document: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    document.to_string()
}

/// moto's default account, where every test resource lives.
pub const MOTO_ACCOUNT: &str = "123456789012";
/// The identity the operator runs with in tests (the stack's admin user).
pub const ADMIN_ARN: &str = "arn:aws:iam::123456789012:user/secretsync-testenv-admin";
/// The operator role the documented trust policies name.
const OPERATOR_ROLE_PLACEHOLDER: &str = "arn:aws:iam::123456789012:role/secretsync-operator";
/// The externalID the documented cross-account trust policy expects, in tests.
pub const EXTERNAL_ID: &str = "ext-4711";

/// One request moto recorded.
#[derive(Debug, Clone)]
pub struct Call {
    /// `GetSecretValue`, `AssumeRole`, ...
    pub action: String,
    /// The access key that signed it; none for unsigned calls.
    pub access_key: Option<String>,
    /// Form parameters (query protocol) or top-level string fields (JSON protocol).
    pub params: HashMap<String, String>,
    /// The secrets a Secrets Manager call names: `SecretId`, or every id of `SecretIdList`.
    pub secret_ids: Vec<String>,
    /// The whole JSON body (JSON protocol), `Null` otherwise.
    pub body: serde_json::Value,
}

impl Call {
    /// Whether the call read `key`'s value (GetSecretValue, or BatchGetSecretValue naming it).
    pub fn reads(&self, key: &str) -> bool {
        matches!(
            self.action.as_str(),
            "GetSecretValue" | "BatchGetSecretValue"
        ) && self.secret_ids.iter().any(|id| id == key)
    }
}

/// Every recorded read of `key`'s value.
pub fn value_reads(key: &str) -> Vec<Call> {
    recorded_calls()
        .into_iter()
        .filter(|call| call.reads(key))
        .collect()
}

/// Every AWS request moto has answered since the stack started (the stack records from the start).
pub fn recorded_calls() -> Vec<Call> {
    recorded_calls_since(RecordingMark(0)).0
}

/// Where moto's recording ends now, to read only what comes after it.
#[derive(Clone, Copy)]
pub struct RecordingMark(u64);

pub fn recording_mark() -> RecordingMark {
    let path = &env_vars()["MOTO_RECORDING"];
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    RecordingMark(
        bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1) as u64,
    )
}

/// The AWS requests recorded after `mark`, and the mark after them: at 100,000 ExternalSecrets the whole
/// recording is too large to read again every second.
pub fn recorded_calls_since(mark: RecordingMark) -> (Vec<Call>, RecordingMark) {
    use std::io::{Read, Seek};
    let path = &env_vars()["MOTO_RECORDING"];
    let mut file = std::fs::File::open(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let mut text = String::new();
    file.seek(std::io::SeekFrom::Start(mark.0))
        .and_then(|_| file.read_to_string(&mut text))
        .unwrap_or_else(|err| panic!("{path}: {err}"));
    // Only whole lines: the last one may still be being written. A whole line that does not parse would
    // make every count wrong, so it fails the test.
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let next = RecordingMark(mark.0 + complete.len() as u64);
    let calls = complete
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|err| panic!("corrupt line in moto's recording {path}: {err}"))
        })
        .filter_map(|entry| {
            let headers = &entry["headers"];
            let raw = entry["body"].as_str().unwrap_or_default();
            let body = if entry["body_encoded"].as_bool() == Some(true) {
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .unwrap_or_default()
            } else {
                raw.as_bytes().to_vec()
            };
            let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
            let secret_ids: Vec<String> = json
                .as_ref()
                .and_then(|json| json["SecretIdList"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .chain(json.as_ref().map(|json| &json["SecretId"]))
                .filter_map(|id| Some(id.as_str()?.to_string()))
                .collect();
            let json_body = json.clone().unwrap_or_default();
            let mut params: HashMap<String, String> = match json {
                Some(serde_json::Value::Object(fields)) => fields
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
                    .collect(),
                _ => form_urlencoded::parse(&body).into_owned().collect(),
            };
            let action = match headers["X-Amz-Target"].as_str() {
                Some(target) => target.rsplit('.').next()?.to_string(),
                None => params.remove("Action")?,
            };
            let access_key = headers["Authorization"]
                .as_str()
                .and_then(|auth| auth.split("Credential=").nth(1))
                .and_then(|credential| credential.split('/').next())
                .map(str::to_string);
            Some(Call {
                action,
                access_key,
                params,
                secret_ids,
                body: json_body,
            })
        })
        .collect();
    (calls, next)
}

/// The access keys of the sessions moto issued for a role.
pub async fn session_keys(role_arn: &str) -> Vec<String> {
    let url = format!("{}/moto-api/data.json", env_vars()["MOTO_URL"]);
    let output = tokio::process::Command::new("curl")
        .args(["-sf", &url])
        .output()
        .await
        .expect("curl is required");
    let data: serde_json::Value = serde_json::from_slice(&output.stdout).expect("moto state");
    data["sts"]["AssumedRole"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|session| session["role_arn"] == role_arn)
        .filter_map(|session| Some(session["access_key_id"].as_str()?.to_string()))
        .collect()
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

/// The fault proxy, stopped by PID on drop.
pub struct FaultProxy {
    child: Child,
    url: String,
}

impl FaultProxy {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("python3")
            .arg(format!("{MANIFEST_DIR}/hack/fault-proxy.py"))
            .args([
                "--port",
                &port.to_string(),
                "--upstream",
                &env_vars()["MOTO_URL"],
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 is required for the fault proxy");
        let proxy = FaultProxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        wait_for("the fault proxy", TIMEOUT, || proxy.stats()).await;
        proxy
    }

    pub async fn stats(&self) -> Result<serde_json::Value, String> {
        let output = tokio::process::Command::new("curl")
            .args(["-sf", &format!("{}/fault-proxy/stats", self.url)])
            .output()
            .await
            .map_err(|err| format!("curl is required: {err}"))?;
        serde_json::from_slice(&output.stdout).map_err(|err| err.to_string())
    }

    pub async fn set_mode(&self, mode: &str) {
        self.set(json!({ "mode": mode })).await
    }

    /// Faults only the requests signed for `region`; the others pass.
    pub async fn set_mode_in(&self, mode: &str, region: &str) {
        self.set(json!({ "mode": mode, "region": region })).await
    }

    async fn set(&self, mode: serde_json::Value) {
        let status = tokio::process::Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                "-d",
                &mode.to_string(),
                &format!("{}/fault-proxy/mode", self.url),
            ])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("curl");
        assert!(status.success(), "set the fault proxy to {mode}");
    }

    pub async fn faulted(&self) -> u64 {
        self.stats().await.unwrap()["faulted"].as_u64().unwrap()
    }

    /// The operator, with every AWS call through this proxy.
    pub fn operator(&self, namespace: &str, extra_env: &[(&str, &str)]) -> Operator {
        let mut env = vec![("AWS_ENDPOINT_URL", self.url.as_str())];
        env.extend_from_slice(extra_env);
        Operator::start(namespace, &env)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Namespaces a test makes besides its own, deleted when it ends however it ends.
pub struct ExtraNamespaces(Vec<String>);

impl ExtraNamespaces {
    /// Creates them, 16 at a time.
    pub async fn create(client: &Client, names: &[String]) -> Self {
        use futures::StreamExt;
        futures::stream::iter(names)
            .for_each_concurrent(16, |name| TestContext::create_namespace(client, name))
            .await;
        ExtraNamespaces(names.to_vec())
    }
}

impl Drop for ExtraNamespaces {
    fn drop(&mut self) {
        for names in self.0.chunks(100) {
            let mut args = vec!["delete", "namespace", "--wait=false"];
            args.extend(names.iter().map(String::as_str));
            let _ = std::process::Command::new("kubectl")
                .args(&args)
                .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The operator binary, watching one namespace (or all), logging to a file; stopped by PID on drop.
pub struct Operator {
    child: Child,
    pub log_path: PathBuf,
    /// Base URL of its /metrics, /healthz and /readyz.
    pub http_url: String,
}

impl Operator {
    pub fn start(namespace: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(namespace, extra_env, &[])
    }

    /// Like `start`, leaving out the test stack's variables named in `unset` (e.g. the admin keys, so that
    /// the operator has to find its own identity).
    pub fn start_with(namespace: &str, extra_env: &[(&str, &str)], unset: &[&str]) -> Self {
        Self::spawn(Some(namespace), namespace, extra_env, unset)
    }

    /// An operator serving every namespace, as ClusterExternalSecrets need; its data-hash key and its log
    /// are `operator_namespace`'s. Only one test binary at a time runs (cargo runs them in turn), so it
    /// meets no other test's operator.
    pub fn start_cluster_wide(operator_namespace: &str) -> Self {
        Self::spawn(None, operator_namespace, &[], &[])
    }

    fn spawn(
        watched: Option<&str>,
        namespace: &str,
        extra_env: &[(&str, &str)],
        unset: &[&str],
    ) -> Self {
        let vars = env_vars();
        let log_dir = Path::new(MANIFEST_DIR).join("target/test-logs");
        std::fs::create_dir_all(&log_dir).expect("log directory");
        // Replicas of one test (POD_NAME set) log apart.
        let replica = extra_env
            .iter()
            .find(|(name, _)| *name == "POD_NAME")
            .map_or(String::new(), |(_, pod)| format!("-{pod}"));
        let log_path = log_dir.join(format!("{namespace}{replica}.log"));
        let log = std::fs::File::create(&log_path).expect("operator log file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let metrics_address = format!("127.0.0.1:{port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_secretsync"));
        command
            .args(["run", "--operator-namespace", namespace])
            .args(watched.iter().flat_map(|watched| ["--namespace", watched]))
            .args([
                "--metrics-address",
                &metrics_address,
                "--log-level",
                "info,secretsync=debug",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars.iter().filter(|(k, _)| {
                (k.starts_with("AWS_") || *k == "KUBECONFIG") && !unset.contains(&k.as_str())
            }))
            // The operator's own settings from the environment (`SECRETSYNC_CONCURRENCY` for the bench).
            .envs(
                std::env::vars()
                    .filter(|(k, _)| k.starts_with("SECRETSYNC_") && k != "SECRETSYNC_TESTENV"),
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

    /// The value of one series (a name, with its labels if it has any) in its /metrics.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, metrics) = self.http_get("/metrics").await.ok()?;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Its count of finished ExternalSecret reconciles.
    pub async fn reconciles(&self) -> f64 {
        self.metric(r#"secretsync_reconcile_duration_seconds_count{controller="externalsecret"}"#)
            .await
            .unwrap_or_default()
    }

    /// Its requests to the API server so far, by "verb resource", leaving out watches and the leader lease
    /// (what a quiet operator may hold).
    pub async fn api_requests(&self) -> HashMap<String, f64> {
        let (_, metrics) = self.http_get("/metrics").await.unwrap_or_default();
        metrics
            .lines()
            .filter_map(|line| {
                let labels = line.strip_prefix("secretsync_kube_api_requests_total{")?;
                let (labels, count) = labels.split_once("} ")?;
                let label = |name: &str| {
                    labels
                        .split(',')
                        .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                        .map(|value| value.trim_end_matches('"').to_string())
                };
                let (verb, resource) = (label("verb")?, label("resource")?);
                (verb != "watch" && resource != "leases").then(|| {
                    (
                        format!("{verb} {resource}"),
                        count.trim().parse().unwrap_or(0.0),
                    )
                })
            })
            .collect()
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

    /// The operator's resident memory in KiB: (now, peak so far), from `VmRSS` and `VmHWM`.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the operator runs");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("memory fields in /proc status")
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU seconds used so far (user and system), from `/proc/<pid>/stat` at 100 ticks a second.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the operator runs");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..]
            .split(' ')
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The exit code once the process has ended by itself (`Some(None)` for a signal).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child
            .try_wait()
            .expect("the operator's status")
            .map(|status| status.code())
    }

    /// SIGKILL, as an OOM kill or a node loss does: nothing runs after it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as the kubelet does, and waits for the exit: (exit code, seconds it took).
    pub fn terminate(&mut self) -> (Option<i32>, f64) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill is on PATH");
        assert!(sent.success(), "SIGTERM to the operator");
        let deadline = started + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("the operator's status") {
                return (status.code(), started.elapsed().as_secs_f64());
            }
            assert!(
                Instant::now() < deadline,
                "the operator did not stop within {TIMEOUT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// What was asked between two counts of `Operator::api_requests`, without the kinds asked for nothing.
pub fn requests_between(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(kind, count)| {
            (
                kind.clone(),
                count - before.get(kind).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, asked)| *asked > 0.0)
        .collect()
}
