//! Credentials and tenancy against the real API server and moto with IAM enforcement on: every auth mode,
//! least privilege per feature, namespace boundaries, and STS calls counted in moto's recording.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use common::{
    ADMIN_ARN, Call, EXTERNAL_ID, MOTO_ACCOUNT, Operator, TIMEOUT, TestContext, env_vars,
    recorded_calls, session_keys, value_external_secret, value_reads, wait_for,
};
use serde_json::json;

fn store(kind: &str, name: &str, aws: serde_json::Value) -> String {
    let mut provider = json!({"service": "SecretsManager", "region": "us-east-1"});
    provider
        .as_object_mut()
        .unwrap()
        .extend(aws.as_object().unwrap().clone());
    json!({
        "apiVersion": "secretsync.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"provider": {"aws": provider}},
    })
    .to_string()
}

/// `count` ExternalSecrets on `store` reading remote `key` ("v1"): synced, then all re-read after a rotation
/// to "v2", so that every one of them has used the store's identity twice.
async fn sync_twice(t: &TestContext, store: &str, key: &str, count: usize) {
    let names: Vec<String> = (0..count).map(|i| format!("app-{i}")).collect();
    for name in &names {
        t.apply_yaml(&value_external_secret(
            name,
            store,
            "SecretStore",
            key,
            None,
        ))
        .await;
    }
    for name in &names {
        t.wait_for_value(name, "v1").await;
    }
    t.put_remote(key, "v2").await;
    for name in &names {
        t.force_sync(name, "1").await;
    }
    for name in &names {
        t.wait_for_value(name, "v2").await;
    }
    // The first forced read wakes the other readers, which may show v2 from the kept value before their
    // own forced read has run, and syncs share reads: wait until the reads stop, so that callers see all.
    let mut seen = value_reads(key).len();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reads = value_reads(key).len();
        if reads != seen {
            seen = reads;
            quiet_since = std::time::Instant::now();
        }
    }
}

/// Waits for the ExternalSecret to fail and returns its condition message (which starts with the class).
async fn wait_for_failure(t: &TestContext, name: &str) -> String {
    let (_, reason, message) = wait_for(&format!("{name} to fail"), TIMEOUT, || async {
        t.es_ready(name)
            .await
            .filter(|c| c.0 == "False")
            .ok_or("not failed yet")
    })
    .await;
    assert_eq!(reason, "SecretSyncedError", "{message}");
    message
}

fn calls(action: &str, param: &str, value: &str) -> Vec<Call> {
    recorded_calls()
        .into_iter()
        .filter(|c| c.action == action && c.params.get(param).map(String::as_str) == Some(value))
        .collect()
}

/// Session tags of a recorded AssumeRole, as key=value.
fn session_tags(call: &Call) -> Vec<String> {
    (1..)
        .map_while(|i| {
            let key = call.params.get(&format!("Tags.member.{i}.Key"))?;
            let value = call.params.get(&format!("Tags.member.{i}.Value"))?;
            Some(format!("{key}={value}"))
        })
        .collect()
}

/// The claims of a JWT, unverified: what STS would read.
fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test]
async fn operator_identity_comes_from_irsa() {
    let t = TestContext::new("irsa").await;
    let role = t
        .create_role(
            "operator",
            "trust-operator-irsa.json",
            &["read-policy.json"],
        )
        .await;
    // What EKS does for a pod: a projected token of its ServiceAccount, and two variables.
    t.create_service_account("secretsync", Some(&role)).await;
    let token = t.service_account_token("secretsync").await;
    let token_file = std::env::temp_dir().join(format!("{}.token", t.namespace));
    std::fs::write(&token_file, &token).unwrap();
    let key = t.create_remote("db", "from-irsa").await;
    t.default_store("aws").await;
    let operator = Operator::start_with(
        &t.namespace,
        &[
            ("AWS_ROLE_ARN", &role),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    );
    for name in ["one", "two", "three"] {
        t.apply_yaml(&value_external_secret(
            name,
            "aws",
            "SecretStore",
            &key,
            None,
        ))
        .await;
    }
    for name in ["one", "two", "three"] {
        t.wait_for_value(name, "from-irsa").await;
    }

    let exchanges = calls("AssumeRoleWithWebIdentity", "RoleArn", &role);
    assert_eq!(exchanges.len(), 1, "one token exchange: {exchanges:?}");
    assert_eq!(exchanges[0].params["WebIdentityToken"], token);
    assert_eq!(exchanges[0].access_key, None, "the exchange is unsigned");
    let role_keys = session_keys(&role).await;
    let reads = value_reads(&key);
    assert!(!reads.is_empty());
    for read in &reads {
        let signer = read.access_key.as_ref().expect("signed");
        assert!(
            role_keys.contains(signer),
            "{signer} is not {role}'s session"
        );
    }
    assert!(
        !operator.log().contains(&token),
        "the token reached the log"
    );
    std::fs::remove_file(token_file).ok();
}

#[tokio::test]
async fn store_service_account_web_identity_makes_one_session() {
    let t = TestContext::new("store-jwt").await;
    let role = t
        .create_role(
            "reader",
            "trust-service-account.json",
            &["read-policy.json"],
        )
        .await;
    t.create_service_account("secrets-reader", Some(&role))
        .await;
    let key = t.create_remote("db", "v1").await;
    t.apply_yaml(&store(
        "SecretStore",
        "team",
        json!({"auth": {"jwt": {"serviceAccountRef": {"name": "secrets-reader"}}}}),
    ))
    .await;
    let operator = t.start_operator();
    sync_twice(&t, "team", &key, 5).await;

    let exchanges = calls("AssumeRoleWithWebIdentity", "RoleArn", &role);
    assert_eq!(exchanges.len(), 1, "one token exchange: {exchanges:?}");
    let token = &exchanges[0].params["WebIdentityToken"];
    let claims = jwt_claims(token);
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{}:secrets-reader", t.namespace)
    );
    assert_eq!(claims["aud"], json!(["sts.amazonaws.com"]));
    assert_eq!(
        exchanges[0].params["RoleSessionName"],
        format!("secretsync-{}-team", t.namespace)
    );
    let role_keys = session_keys(&role).await;
    let reads = value_reads(&key);
    assert!(!reads.is_empty());
    assert!(
        reads
            .iter()
            .all(|r| role_keys.contains(r.access_key.as_ref().unwrap()))
    );
    assert!(!operator.log().contains(token.as_str()));
    // The ServiceAccount is watched: ten syncs read it from memory.
    let requests = operator.api_requests().await;
    assert_eq!(requests.get("get serviceaccounts"), None, "{requests:?}");
}

/// A store's credentials Secret is watched, not read for every sync, and new keys put in it are used from
/// then on.
#[tokio::test]
async fn static_keys_come_from_a_watch_and_follow_their_secret() {
    let t = TestContext::new("keys-watched").await;
    let (first_id, first_secret) = t.create_user("first", &["read-policy.json"]).await;
    let (second_id, second_secret) = t.create_user("second", &["read-policy.json"]).await;
    let keys = |id: &str, secret: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-keys"},
               "stringData": {"id": id, "secret": secret}})
        .to_string()
    };
    t.apply_yaml(&keys(&first_id, &first_secret)).await;
    let key = t.create_remote("db", "v1").await;
    t.apply_yaml(&store(
        "SecretStore",
        "team",
        json!({"auth": {"secretRef": {
            "accessKeyIDSecretRef": {"name": "aws-keys", "key": "id"},
            "secretAccessKeySecretRef": {"name": "aws-keys", "key": "secret"},
        }}}),
    ))
    .await;
    let operator = t.start_operator();
    sync_twice(&t, "team", &key, 5).await;
    let requests = operator.api_requests().await;
    // The syncs read their own target Secrets, at most once each: ten. Reading the two keys for each of the
    // ten syncs added twenty.
    let secret_reads = requests.get("get secrets").copied().unwrap_or(0.0);
    assert!(secret_reads <= 10.0, "{requests:?}");
    assert!(
        value_reads(&key)
            .iter()
            .all(|r| r.access_key.as_deref() == Some(first_id.as_str()))
    );

    t.apply_yaml(&keys(&second_id, &second_secret)).await;
    let mut forced = 1;
    wait_for("a read with the new keys", TIMEOUT, || {
        forced += 1;
        let forced = forced.to_string();
        let (t, key, second_id) = (&t, &key, &second_id);
        async move {
            t.force_sync("app-0", &forced).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            value_reads(key)
                .iter()
                .any(|r| r.access_key.as_deref() == Some(second_id.as_str()))
                .then_some(())
                .ok_or("no read with them yet")
        }
    })
    .await;
}

#[tokio::test]
async fn role_chain_is_assumed_once_per_identity_with_tenant_tags() {
    let t = TestContext::new("chain").await;
    let hop = t
        .create_role(
            "hop",
            "trust-assumed-by-operator.json",
            &["operator-assume-policy.json"],
        )
        .await;
    // The reader trusts the hop's session, and only with the externalID and this namespace's tag.
    let hop_session = format!(
        "arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/{}/secretsync-{}-chain",
        t.role_name("hop"),
        t.namespace
    );
    let reader = t
        .create_role_with(
            "reader",
            "trust-cross-account.json",
            &["read-policy.json"],
            &hop_session,
            &[&t.namespace],
        )
        .await;
    let key = t.create_remote("db", "v1").await;
    t.apply_yaml(&store(
        "SecretStore",
        "chain",
        json!({
            "additionalRoles": [hop],
            "role": reader,
            "externalID": EXTERNAL_ID,
            "sessionTags": [{"key": "team", "value": "payments"}],
            "transitiveTagKeys": ["team"],
        }),
    ))
    .await;
    let _operator = t.start_operator();
    sync_twice(&t, "chain", &key, 10).await;

    let hops = calls("AssumeRole", "RoleArn", &hop);
    let reads = calls("AssumeRole", "RoleArn", &reader);
    assert_eq!(
        hops.len(),
        1,
        "10 ExternalSecrets, 20 syncs, one session: {hops:?}"
    );
    assert_eq!(reads.len(), 1, "{reads:?}");
    let tenant = [
        format!("secretsync-namespace={}", t.namespace),
        "secretsync-store=SecretStore/chain".to_string(),
    ];
    assert_eq!(session_tags(&hops[0]), tenant);
    assert_eq!(hops[0].params.get("ExternalId"), None);
    assert_eq!(
        session_tags(&reads[0]),
        [&tenant[..], &["team=payments".to_string()]].concat()
    );
    assert_eq!(reads[0].params["ExternalId"], EXTERNAL_ID);
    assert_eq!(reads[0].params["TransitiveTagKeys.member.1"], "team");
    // Each step signs with the session of the step before.
    assert_eq!(
        hops[0].access_key.as_deref(),
        Some(env_vars()["AWS_ACCESS_KEY_ID"].as_str())
    );
    assert!(
        session_keys(&hop)
            .await
            .contains(reads[0].access_key.as_ref().unwrap())
    );
    let reader_keys = session_keys(&reader).await;
    let values = value_reads(&key);
    assert!(!values.is_empty());
    assert!(
        values
            .iter()
            .all(|v| reader_keys.contains(v.access_key.as_ref().unwrap()))
    );

    // `secretsync check` resolves the same identity and says what it can read, without the value.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_secretsync"))
        .args(["check", "--namespace", &t.namespace, "chain", "--key", &key])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(
            env_vars()
                .iter()
                .filter(|(k, _)| k.starts_with("AWS_") || *k == "KUBECONFIG"),
        )
        .output()
        .expect("run secretsync check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("region: us-east-1"), "{stdout}");
    assert!(
        stdout.contains(&format!("then assume {reader}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "identity: arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/{}/secretsync-{}-chain",
            t.role_name("reader"),
            t.namespace
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("key {key}: readable")), "{stdout}");
    assert!(!stdout.contains("v2"), "check printed the value: {stdout}");
}

#[tokio::test]
async fn version_checks_need_only_their_documented_policy() {
    let t = TestContext::new("check-policy").await;
    let trust = "trust-assumed-by-operator.json";
    let read_only = t
        .create_role("read-only", trust, &["read-policy.json"])
        .await;
    let checks = t
        .create_role(
            "checks",
            trust,
            &["read-policy.json", "version-check-policy.json"],
        )
        .await;
    let key = t.create_remote("db", "v1").await;
    for (store_name, role, strategy) in [
        ("read-only", &read_only, "ListSecrets"),
        ("checks-list", &checks, "ListSecrets"),
        ("checks-describe", &checks, "DescribeSecret"),
    ] {
        let check = json!({"strategy": strategy, "interval": "1s"});
        t.apply_yaml(&store(
            "SecretStore",
            store_name,
            json!({"role": role, "versionCheck": check}),
        ))
        .await;
        t.apply_yaml(&value_external_secret(
            &format!("es-{store_name}"),
            store_name,
            "SecretStore",
            &key,
            None,
        ))
        .await;
    }
    let _operator = t.start_operator();
    for name in ["es-read-only", "es-checks-list", "es-checks-describe"] {
        t.wait_for_value(name, "v1").await;
    }

    t.put_remote(&key, "v2").await;
    t.wait_for_value("es-checks-list", "v2").await;
    t.wait_for_value("es-checks-describe", "v2").await;
    let warning = wait_for("VersionCheckFailed on the store", TIMEOUT, || async {
        let events = t.events_for("read-only").await;
        events
            .iter()
            .find(|(type_, reason, _)| type_ == "Warning" && reason == "VersionCheckFailed")
            .map(|(_, _, note)| note.clone())
            .ok_or(events)
    })
    .await;
    assert!(
        warning.starts_with("AccessDenied: ") && warning.contains("ListSecrets"),
        "{warning}"
    );
    // Without checks, the rotation waits for the refresh; the sync itself still works.
    assert_eq!(t.secret_data("es-read-only").await.unwrap()["value"], "v1");
    assert_eq!(
        t.es_ready("es-read-only").await.map(|c| c.0).as_deref(),
        Some("True")
    );
}

#[tokio::test]
async fn each_feature_needs_only_its_documented_permissions() {
    let t = TestContext::new("least-privilege").await;
    let trust = "trust-assumed-by-operator.json";
    let read = t.create_role("read", trust, &["read-policy.json"]).await;
    let find = t
        .create_role("find", trust, &["read-policy.json", "find-policy.json"])
        .await;
    let meta = t
        .create_role("meta", trust, &["read-policy.json", "metadata-policy.json"])
        .await;
    let none = t.create_role("none", trust, &[]).await;
    // A role another namespace owns: its trust policy names that namespace, not this one.
    let foreign = t
        .create_role_with(
            "foreign",
            trust,
            &["read-policy.json"],
            ADMIN_ARN,
            &["another-team"],
        )
        .await;
    for (name, role) in [
        ("read", &read),
        ("find", &find),
        ("meta", &meta),
        ("none", &none),
        ("foreign", &foreign),
    ] {
        t.apply_yaml(&store("SecretStore", name, json!({"role": role})))
            .await;
    }
    let key = t.remote_key("db");
    t.secrets_manager
        .create_secret()
        .name(&key)
        .secret_string("v1")
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("owner")
                .value("payments")
                .build(),
        )
        .send()
        .await
        .expect("CreateSecret");
    let _operator = t.start_operator();
    let find_es = |name: &str, store: &str| {
        json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": name},
            "spec": {"secretStoreRef": {"name": store},
                     "dataFrom": [{"find": {"path": format!("{}/", t.namespace)}}]},
        })
        .to_string()
    };
    let tags_es = |name: &str, store: &str| {
        json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": name},
            "spec": {"secretStoreRef": {"name": store},
                     "data": [{"secretKey": "value",
                               "remoteRef": {"key": key, "metadataPolicy": "Fetch", "property": "owner"}}]},
        })
        .to_string()
    };
    t.apply_yaml(&value_external_secret(
        "read",
        "read",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    t.apply_yaml(&value_external_secret(
        "denied",
        "none",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    t.apply_yaml(&value_external_secret(
        "foreign",
        "foreign",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    // The documented read policy is scoped to the namespace's prefix: a secret outside it stays closed.
    let outside = format!("outside-{}/db", t.namespace);
    t.secrets_manager
        .create_secret()
        .name(&outside)
        .secret_string("v1")
        .send()
        .await
        .expect("CreateSecret");
    t.apply_yaml(&value_external_secret(
        "outside",
        "read",
        "SecretStore",
        &outside,
        None,
    ))
    .await;
    t.apply_yaml(&find_es("find", "find")).await;
    t.apply_yaml(&find_es("find-denied", "read")).await;
    t.apply_yaml(&tags_es("meta", "meta")).await;
    t.apply_yaml(&tags_es("meta-denied", "read")).await;

    t.wait_for_value("read", "v1").await;
    t.wait_for_value("meta", "payments").await;
    wait_for("find to sync", TIMEOUT, || async {
        let data = t.secret_data("find").await.ok_or("no Secret")?;
        (data.len() == 1).then_some(()).ok_or(format!("{data:?}"))
    })
    .await;
    for (name, detail) in [
        ("denied", "GetSecretValue"),
        ("find-denied", "ListSecrets"),
        ("meta-denied", "DescribeSecret"),
        ("foreign", "assuming "),
        ("outside", "GetSecretValue"),
    ] {
        let message = wait_for_failure(&t, name).await;
        assert!(message.starts_with("AccessDenied: "), "{name}: {message}");
        assert!(message.contains(detail), "{name}: {message}");
        // The event is recorded after the status is written: wait for it too.
        wait_for(
            &format!("{name}'s ProviderError event"),
            TIMEOUT,
            || async {
                let events = t.events_for(name).await;
                events
                    .iter()
                    .any(|(type_, reason, _)| type_ == "Warning" && reason == "ProviderError")
                    .then_some(())
                    .ok_or(events)
            },
        )
        .await;
    }

    // A denial is permanent: reported once, retried slowly, not hot-looped.
    let calls_so_far = || {
        (
            calls("AssumeRole", "RoleArn", &none).len(),
            calls("AssumeRole", "RoleArn", &foreign).len(),
            value_reads(&key).len(),
        )
    };
    // The failure's own status write brings one more reconcile (which writes nothing): let it finish.
    let mut before = calls_so_far();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = calls_so_far();
        if now == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "calls never settled after the denials: {now:?}"
        );
        before = now;
    }
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(calls_so_far(), before, "calls continued after a denial");
}

#[tokio::test]
async fn service_account_mistakes_are_reported_by_name() {
    let t = TestContext::new("sa-errors").await;
    let other = TestContext::new("sa-elsewhere").await;
    let role = t
        .create_role(
            "reader",
            "trust-service-account.json",
            &["read-policy.json"],
        )
        .await;
    other.create_service_account("reader", Some(&role)).await;
    t.create_service_account("unannotated", None).await;
    let key = t.create_remote("db", "v1").await;
    let jwt = |name: &str, namespace: Option<&str>| json!({"auth": {"jwt": {"serviceAccountRef": {"name": name, "namespace": namespace}}}});
    t.apply_yaml(&store(
        "SecretStore",
        "elsewhere",
        jwt("reader", Some(&other.namespace)),
    ))
    .await;
    t.apply_yaml(&store("SecretStore", "missing", jwt("nobody", None)))
        .await;
    t.apply_yaml(&store(
        "SecretStore",
        "unannotated",
        jwt("unannotated", None),
    ))
    .await;
    let _operator = t.start_operator();
    for name in ["elsewhere", "missing", "unannotated"] {
        t.apply_yaml(&value_external_secret(
            name,
            name,
            "SecretStore",
            &key,
            None,
        ))
        .await;
    }
    let expected = [
        ("elsewhere", "InvalidStoreConfig: ", "in its own namespace"),
        ("missing", "ServiceAccountNotFound: ", "nobody"),
        (
            "unannotated",
            "MissingRoleAnnotation: ",
            "eks.amazonaws.com/role-arn",
        ),
    ];
    for (name, class, detail) in expected {
        let message = wait_for_failure(&t, name).await;
        assert!(message.starts_with(class), "{name}: {message}");
        assert!(message.contains(detail), "{name}: {message}");
    }
    // The stores say the same, as a configuration problem.
    for (name, _, detail) in expected {
        wait_for(&format!("store {name} not ready"), TIMEOUT, || async {
            let store: secretsync::api::SecretStore =
                kube::Api::namespaced(t.client.clone(), &t.namespace)
                    .get(name)
                    .await
                    .map_err(|e| e.to_string())?;
            let ready = store
                .status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                .ok_or("no condition")?;
            (ready.status == "False"
                && ready.reason == "InvalidProviderConfig"
                && ready.message.contains(detail))
            .then_some(())
            .ok_or(format!("{ready:?}"))
        })
        .await;
    }
    assert!(calls("AssumeRoleWithWebIdentity", "RoleArn", &role).is_empty());
}

/// Removes a cluster-scoped object when the test ends, pass or fail.
struct ClusterScoped(String);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args(["delete", "--wait=false", &self.0])
            .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
            .output();
    }
}

#[tokio::test]
async fn cluster_store_conditions_and_tenant_sessions() {
    let a = TestContext::new("css-a").await;
    let b = TestContext::new("css-b").await;
    let c = TestContext::new("css-c").await;
    let group = format!("group-{}", a.namespace);
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(b.client.clone())
        .patch(
            &b.namespace,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"secretsync-test-group": group}}}),
            ),
        )
        .await
        .unwrap();
    let reader = a
        .create_role_with(
            "reader",
            "trust-assumed-by-operator.json",
            &["read-policy.json"],
            ADMIN_ARN,
            &[&a.namespace, &b.namespace],
        )
        .await;
    let key = a.create_remote("shared", "for-tenants").await;
    let store_name = a.namespace.clone();
    let mut manifest: serde_json::Value = serde_json::from_str(&store(
        "ClusterSecretStore",
        &store_name,
        json!({"role": reader}),
    ))
    .unwrap();
    manifest["spec"]["conditions"] = json!([
        {"namespaces": [a.namespace]},
        {"namespaceSelector": {"matchLabels": {"secretsync-test-group": group}}},
    ]);
    a.apply_yaml(&manifest.to_string()).await;
    let _cleanup = ClusterScoped(format!("clustersecretstore/{store_name}"));
    // Referent static keys: each namespace brings its own.
    let referent = format!("{store_name}-keys");
    a.apply_yaml(&store(
        "ClusterSecretStore",
        &referent,
        json!({"auth": {"secretRef": {
            "accessKeyIDSecretRef": {"name": "aws-keys", "key": "id"},
            "secretAccessKeySecretRef": {"name": "aws-keys", "key": "secret"},
        }}}),
    ))
    .await;
    let _cleanup_referent = ClusterScoped(format!("clustersecretstore/{referent}"));
    let (id, secret) = a.create_user("keys", &["read-policy.json"]).await;
    a.apply_yaml(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-keys"},
                "stringData": {"id": id, "secret": secret}})
        .to_string(),
    )
    .await;

    let operators: Vec<Operator> = [&a, &b, &c].iter().map(|t| t.start_operator()).collect();
    for t in [&a, &b, &c] {
        t.apply_yaml(&value_external_secret(
            "app",
            &store_name,
            "ClusterSecretStore",
            &key,
            None,
        ))
        .await;
    }
    a.apply_yaml(&value_external_secret(
        "referent",
        &referent,
        "ClusterSecretStore",
        &key,
        None,
    ))
    .await;
    a.wait_for_value("app", "for-tenants").await;
    b.wait_for_value("app", "for-tenants").await;
    a.wait_for_value("referent", "for-tenants").await;
    let message = wait_for_failure(&c, "app").await;
    assert!(message.starts_with("StoreNotAllowed: "), "{message}");
    assert!(message.contains(&c.namespace), "{message}");
    assert!(c.secret_data("app").await.is_none());
    // Namespaces' labels come from a watch: the one Namespace read is the operator's own, at start.
    for operator in &operators {
        let requests = operator.api_requests().await;
        assert_eq!(requests.get("get namespaces"), Some(&1.0), "{requests:?}");
    }

    // Its sessions are per namespace, so the store-level check does not assume the role on its own.
    let stores: kube::Api<secretsync::api::ClusterSecretStore> = kube::Api::all(a.client.clone());
    wait_for("the cluster store's Ready condition", TIMEOUT, || async {
        let status = stores
            .get(&store_name)
            .await
            .map_err(|e| e.to_string())?
            .status;
        let ready = status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .ok_or("no condition")?;
        (ready.status == "True" && ready.message.contains("checked when it syncs"))
            .then_some(())
            .ok_or(format!("{ready:?}"))
    })
    .await;

    // One session per tenant namespace, each tagged with the namespace that asked.
    let sessions = calls("AssumeRole", "RoleArn", &reader);
    let mut per_namespace: HashMap<String, usize> = HashMap::new();
    for call in &sessions {
        for tag in session_tags(call) {
            if let Some(namespace) = tag.strip_prefix("secretsync-namespace=") {
                *per_namespace.entry(namespace.to_string()).or_default() += 1;
            }
        }
    }
    assert_eq!(
        per_namespace,
        HashMap::from([(a.namespace.clone(), 1), (b.namespace.clone(), 1)]),
        "{sessions:?}"
    );
    let user_reads: Vec<Call> = value_reads(&key)
        .into_iter()
        .filter(|c| c.access_key.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(
        user_reads.len(),
        1,
        "the referent read signs with a's own keys"
    );
    drop(operators);
}

/// A ClusterSecretStore whose conditions stop admitting a namespace: its ExternalSecrets there report
/// `StoreNotAllowed`, and their version watches stop (nothing keeps checking AWS for them).
#[tokio::test]
async fn a_namespace_no_longer_admitted_stops_its_watches() {
    let t = TestContext::new("cluster-store-revoked").await;
    let key = t.create_remote("db", "v1").await;
    let store_name = format!("{}-store", t.namespace);
    let conditions = |namespaces: &[&str]| {
        let mut manifest: serde_json::Value = serde_json::from_str(&store(
            "ClusterSecretStore",
            &store_name,
            json!({"versionCheck": {"strategy": "ListSecrets", "interval": "1s"}}),
        ))
        .unwrap();
        manifest["spec"]["conditions"] = json!([{"namespaces": namespaces}]);
        manifest.to_string()
    };
    t.apply_yaml(&conditions(&[&t.namespace])).await;
    let _cleanup = ClusterScoped(format!("clustersecretstore/{store_name}"));
    let operator = t.start_operator();
    t.apply_yaml(&value_external_secret(
        "app",
        &store_name,
        "ClusterSecretStore",
        &key,
        None,
    ))
    .await;
    t.wait_for_value("app", "v1").await;
    let watched = r#"secretsync_remote_secrets_watched{strategy="ListSecrets"}"#;
    let gauge = || operator.metric(watched);
    assert_eq!(gauge().await, Some(1.0));

    t.apply_yaml(&conditions(&["some-other-namespace"])).await;
    wait_for("StoreNotAllowed", TIMEOUT, || async {
        match t.es_ready("app").await {
            Some(ready) if ready.2.starts_with("StoreNotAllowed") => Ok(()),
            other => Err(other),
        }
    })
    .await;
    wait_for("its watch to stop", TIMEOUT, || async {
        let value = gauge().await;
        (value == Some(0.0)).then_some(()).ok_or(value)
    })
    .await;
    assert_eq!(t.secret_data("app").await.unwrap()["value"], "v1");
}
