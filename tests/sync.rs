//! ExternalSecret sync against the real API server and moto.

mod common;

use std::time::Duration;

use common::{Operator, TIMEOUT, TestContext, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

/// An ExternalSecret manifest: `data` is (secretKey, remote key, property).
fn external_secret(
    name: &str,
    store: &str,
    refresh: &str,
    data: &[(&str, &str, Option<&str>)],
) -> String {
    let entries: Vec<_> = data
        .iter()
        .map(|(secret_key, key, property)| {
            let mut remote_ref = json!({"key": key});
            if let Some(p) = property {
                remote_ref["property"] = json!(p);
            }
            json!({"secretKey": secret_key, "remoteRef": remote_ref})
        })
        .collect();
    json!({
        "apiVersion": "secretsync.io/v1alpha1",
        "kind": "ExternalSecret",
        "metadata": {"name": name},
        "spec": {
            "refreshInterval": refresh,
            "secretStoreRef": {"name": store, "kind": "SecretStore"},
            "data": entries,
        }
    })
    .to_string()
}

async fn secret_value(t: &TestContext, name: &str, key: &str) -> Result<String, String> {
    match t.secret_data(name).await {
        Some(data) => data
            .get(key)
            .cloned()
            .ok_or_else(|| format!("no key {key}: {data:?}")),
        None => Err("no Secret".into()),
    }
}

/// Waits until Secret `name` holds `expected` under `key`.
async fn wait_for_value(t: &TestContext, name: &str, key: &str, expected: &str) {
    wait_for(
        &format!("{name}[{key}] = {expected:?}"),
        TIMEOUT,
        || async {
            secret_value(t, name, key)
                .await
                .and_then(|v| (v == expected).then_some(()).ok_or(v))
        },
    )
    .await
}

/// The common start: remote secret "api" holding `value`, a store, the operator, and an ExternalSecret
/// "api" writing it to Secret "api" under "key", synced once. Returns the remote key and the operator.
async fn synced_api(t: &TestContext, value: &str, refresh: &str) -> (String, Operator) {
    let key = t.create_remote("api", value).await;
    t.default_store("aws").await;
    let operator = t.start_operator();
    t.apply_yaml(&external_secret(
        "api",
        "aws",
        refresh,
        &[("key", &key, None)],
    ))
    .await;
    wait_for_value(t, "api", "key", value).await;
    (key, operator)
}

/// Waits until ExternalSecret `name` is Ready=False; returns (reason, message).
/// Waits for Ready=False with ESO's reason `SecretSyncedError`; returns the error class that starts the
/// message, and the message.
async fn wait_for_failure(t: &TestContext, name: &str) -> (String, String) {
    let (_, reason, message) = wait_for(&format!("{name} Ready=False"), TIMEOUT, || async {
        t.es_ready(name)
            .await
            .filter(|c| c.0 == "False")
            .ok_or("no failure yet")
    })
    .await;
    assert_eq!(reason, "SecretSyncedError", "{message}");
    let class = message.split(':').next().unwrap_or_default().to_string();
    (class, message)
}

#[tokio::test]
async fn first_sync_writes_owned_secret_and_status() {
    let t = TestContext::new("first-sync").await;
    let db = t
        .create_remote("db", r#"{"username":"app","password":"pw-1","port":5432}"#)
        .await;
    let token = t.create_remote("token", "plain-token").await;
    let blob = t.create_remote_binary("blob", &[0, 1, 254, 255]).await;
    t.default_store("aws").await;
    let operator = t.start_operator();
    let manifest = external_secret(
        "app",
        "aws",
        "1h",
        &[
            ("username", &db, Some("username")),
            ("password", &db, Some("password")),
            ("port", &db, Some("port")),
            ("token", &token, None),
            ("blob", &blob, None),
        ],
    );
    t.apply_yaml(&manifest).await;

    let secret = wait_for("the Secret", TIMEOUT, || async {
        t.secrets().get_opt("app").await.unwrap().ok_or("absent")
    })
    .await;
    let data = secret.data.clone().unwrap();
    assert_eq!(data["username"].0, b"app");
    assert_eq!(data["password"].0, b"pw-1");
    assert_eq!(data["port"].0, b"5432");
    assert_eq!(data["token"].0, b"plain-token");
    assert_eq!(data["blob"].0, vec![0, 1, 254, 255]);
    assert_eq!(secret.labels()["secretsync.io/managed"], "true");
    assert_eq!(secret.annotations()["secretsync.io/data-hash"].len(), 64);
    let es = t.external_secrets().get("app").await.unwrap();
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ExternalSecret", Some(true))
    );
    assert_eq!(Some(&owner.uid), es.meta().uid.as_ref());

    let (status, reason, _) = wait_for("Ready=True", TIMEOUT, || async {
        t.es_ready("app")
            .await
            .filter(|c| c.0 == "True")
            .ok_or("not ready")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "SecretSynced"));
    let status = t
        .external_secrets()
        .get("app")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.binding.unwrap().name, "app");
    assert!(status.refresh_time.is_some());
    assert!(status.synced_resource_version.unwrap().starts_with("1-"));
    let current = t
        .secrets_manager
        .describe_secret()
        .secret_id(&db)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages
        .unwrap()
        .into_iter()
        .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
        .unwrap()
        .0;
    assert_eq!(status.synced_versions.get(&db), Some(&current));
    assert_eq!(status.synced_versions.len(), 3);
    let condition = &t
        .external_secrets()
        .get("app")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions[0];
    assert_eq!(condition.observed_generation, Some(1));

    wait_for("a Created event", TIMEOUT, || async {
        let events = t.events_for("app").await;
        events
            .iter()
            .any(|(ty, reason, _)| ty == "Normal" && reason == "Created")
            .then_some(())
            .ok_or(events)
    })
    .await;

    assert_eq!(operator.http_get("/readyz").await.unwrap().0, 200);
    assert_eq!(operator.http_get("/healthz").await.unwrap().0, 200);
    let (code, metrics) = operator.http_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    let ns = &t.namespace;
    for series in [
        format!(r#"externalsecret_sync_calls_total{{name="app",namespace="{ns}"}} 1"#),
        format!(r#"externalsecret_status_condition{{condition="Ready",name="app",namespace="{ns}",status="True"}} 1"#),
        format!(r#"secretstore_status_condition{{condition="Ready",name="aws",namespace="{ns}",status="True"}} 1"#),
        // Three remote secrets, one batched read.
        r#"externalsecret_provider_api_calls_count{call="BatchGetSecretValue",provider="AWS/SecretsManager",status="success"} 1"#.to_string(),
    ] {
        assert!(metrics.contains(&series), "missing {series} in:\n{metrics}");
    }
    assert!(!metrics.contains(r#"call="GetSecretValue""#), "{metrics}");
    assert!(metrics.contains("secretsync_reconcile_duration_seconds_bucket"));
}

#[tokio::test]
async fn force_sync_annotation_picks_up_a_rotation() {
    let t = TestContext::new("force-sync").await;
    let (key, _operator) = synced_api(&t, "value-1", "1h").await;

    let version = t.put_remote(&key, "value-2").await;
    t.force_sync("api", "1").await;
    wait_for_value(&t, "api", "key", "value-2").await;
    wait_for("syncedVersions to follow", TIMEOUT, || async {
        let status = t
            .external_secrets()
            .get("api")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        (status.synced_versions.get(&key) == Some(&version))
            .then_some(())
            .ok_or(status.synced_versions)
    })
    .await;
    wait_for("an Updated event", TIMEOUT, || async {
        let events = t.events_for("api").await;
        events
            .iter()
            .any(|(_, reason, _)| reason == "Updated")
            .then_some(())
            .ok_or(events)
    })
    .await;
}

#[tokio::test]
async fn refresh_interval_picks_up_a_rotation() {
    let t = TestContext::new("refresh").await;
    let (key, _operator) = synced_api(&t, "value-1", "2s").await;
    t.put_remote(&key, "value-2").await;
    wait_for_value(&t, "api", "key", "value-2").await;
}

#[tokio::test]
async fn deleted_or_edited_secret_is_restored() {
    let t = TestContext::new("restore").await;
    let (_key, _operator) = synced_api(&t, "the-value", "1h").await;
    let first_uid = t.secrets().get("api").await.unwrap().uid();

    t.secrets()
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the Secret to be recreated", TIMEOUT, || async {
        let secret = t.secrets().get_opt("api").await.unwrap().ok_or("absent")?;
        (secret.uid() != first_uid)
            .then_some(())
            .ok_or("still the old one")
    })
    .await;
    assert_eq!(secret_value(&t, "api", "key").await.unwrap(), "the-value");

    let edit = json!({"data": {"key": "dGFtcGVyZWQ="}}); // "tampered"
    t.secrets()
        .patch("api", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    wait_for_value(&t, "api", "key", "the-value").await;
}

#[tokio::test]
async fn deleting_the_external_secret_garbage_collects_the_secret() {
    let t = TestContext::new("gc").await;
    let (_key, operator) = synced_api(&t, "v", "1h").await;

    let series = format!(r#"name="api",namespace="{}""#, t.namespace);
    let (_, metrics) = operator.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains(&series),
        "no series before deletion:\n{metrics}"
    );

    t.external_secrets()
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    // kube-controller-manager's garbage collector follows the ownerReference.
    wait_for(
        "the Secret to be garbage-collected",
        Duration::from_secs(60),
        || async {
            match t.secrets().get_opt("api").await.unwrap() {
                None => Ok(()),
                Some(s) => Err(s.owner_references().to_vec()),
            }
        },
    )
    .await;

    // Its metric series go with it, so no alert fires for an object that no longer exists.
    let (_, metrics) = operator.http_get("/metrics").await.unwrap();
    let series = format!(r#"name="api",namespace="{}""#, t.namespace);
    assert!(
        !metrics.contains(&series),
        "stale series for a deleted ExternalSecret:\n{metrics}"
    );
}

#[tokio::test]
async fn missing_remote_key_is_reported_and_writes_nothing() {
    let t = TestContext::new("missing-key").await;
    t.default_store("aws").await;
    let _operator = t.start_operator();
    let missing = t.remote_key("does-not-exist");
    t.apply_yaml(&external_secret(
        "api",
        "aws",
        "1h",
        &[("key", &missing, None)],
    ))
    .await;

    let (reason, message) = wait_for_failure(&t, "api").await;
    assert_eq!(reason, "RemoteKeyNotFound");
    assert!(
        message.contains(&missing),
        "message names the key: {message}"
    );
    assert!(t.secrets().get_opt("api").await.unwrap().is_none());
    let events = wait_for("a warning event", TIMEOUT, || async {
        let events = t.events_for("api").await;
        events
            .iter()
            .any(|(ty, _, _)| ty == "Warning")
            .then_some(events.clone())
            .ok_or(events)
    })
    .await;
    assert!(
        events
            .iter()
            .any(|(_, reason, note)| reason == "ProviderError" && note.contains(&missing))
    );

    // Reported once: waiting longer adds no second warning for the same failure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warnings = t
        .events_for("api")
        .await
        .into_iter()
        .filter(|e| e.0 == "Warning")
        .count();
    assert_eq!(warnings, 1);
}

#[tokio::test]
async fn bad_credentials_make_the_store_not_ready() {
    let t = TestContext::new("bad-creds").await;
    let key = t.create_remote("api", "v").await;
    let credentials = Secret {
        metadata: ObjectMeta {
            name: Some("aws-creds".into()),
            ..Default::default()
        },
        string_data: Some(
            [
                ("id".to_string(), "AKIANOTAREALKEY00000".to_string()),
                (
                    "secret".to_string(),
                    "not-a-real-secret-access-key".to_string(),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    t.secrets()
        .create(&PostParams::default(), &credentials)
        .await
        .unwrap();
    t.apply_yaml(
        "apiVersion: secretsync.io/v1alpha1\nkind: SecretStore\nmetadata: {name: aws}\nspec:\n  provider:\n    aws:\n      \
         service: SecretsManager\n      region: us-east-1\n      auth:\n        secretRef:\n          \
         accessKeyIDSecretRef: {name: aws-creds, key: id}\n          secretAccessKeySecretRef: {name: aws-creds, key: secret}\n",
    )
    .await;
    let _operator = t.start_operator();
    t.apply_yaml(&external_secret("api", "aws", "1h", &[("key", &key, None)]))
        .await;

    let stores =
        kube::Api::<secretsync::api::SecretStore>::namespaced(t.client.clone(), &t.namespace);
    let condition = wait_for("store Ready=False", TIMEOUT, || async {
        let store = stores.get("aws").await.unwrap();
        let conditions = store.status.map(|s| s.conditions).unwrap_or_default();
        conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
            .ok_or("not failed yet")
    })
    .await;
    assert_eq!(condition.reason, "ValidationFailed");
    assert!(
        !condition.message.contains("not-a-real-secret"),
        "{}",
        condition.message
    );
    let (reason, _) = wait_for_failure(&t, "api").await;
    assert_eq!(reason, "InvalidCredentials");
    assert!(t.secrets().get_opt("api").await.unwrap().is_none());
}

#[tokio::test]
async fn stores_in_other_namespaces_are_out_of_reach() {
    let t = TestContext::new("cross-ns").await;
    let other = TestContext::new("cross-ns-other").await;
    let key = t.create_remote("api", "v").await;
    other.default_store("theirs").await;
    let _operator = t.start_operator();

    // A SecretStore is looked up only in the ExternalSecret's own namespace.
    t.apply_yaml(&external_secret(
        "api",
        "theirs",
        "1h",
        &[("key", &key, None)],
    ))
    .await;
    let (reason, message) = wait_for_failure(&t, "api").await;
    assert_eq!(reason, "StoreNotFound");
    assert!(
        message.contains("theirs") && message.contains(&t.namespace),
        "{message}"
    );

    // A SecretStore may not read credentials from another namespace.
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: SecretStore\nmetadata: {{name: sneaky}}\nspec:\n  provider:\n    aws:\n      \
         service: SecretsManager\n      region: us-east-1\n      auth:\n        secretRef:\n          \
         accessKeyIDSecretRef: {{name: creds, key: id, namespace: {ns}}}\n          \
         secretAccessKeySecretRef: {{name: creds, key: secret, namespace: {ns}}}\n",
        ns = other.namespace
    ))
    .await;
    t.apply_yaml(&external_secret(
        "sneaky",
        "sneaky",
        "1h",
        &[("key", &key, None)],
    ))
    .await;
    let (reason, message) = wait_for_failure(&t, "sneaky").await;
    assert_eq!(reason, "InvalidStoreConfig");
    assert!(message.contains("own namespace"), "{message}");
    assert!(t.secrets().get_opt("api").await.unwrap().is_none());
    assert!(t.secrets().get_opt("sneaky").await.unwrap().is_none());
}

#[tokio::test]
async fn an_unrelated_secret_is_never_overwritten() {
    let t = TestContext::new("conflict").await;
    let key = t.create_remote("api", "from-aws").await;
    t.default_store("aws").await;
    let mine = Secret {
        metadata: ObjectMeta {
            name: Some("api".into()),
            ..Default::default()
        },
        string_data: Some([("key".to_string(), "hand-made".to_string())].into()),
        ..Default::default()
    };
    t.secrets()
        .create(&PostParams::default(), &mine)
        .await
        .unwrap();
    let _operator = t.start_operator();
    t.apply_yaml(&external_secret("api", "aws", "1h", &[("key", &key, None)]))
        .await;

    let (reason, _) = wait_for_failure(&t, "api").await;
    assert_eq!(reason, "SecretConflict");
    assert_eq!(secret_value(&t, "api", "key").await.unwrap(), "hand-made");
}

#[tokio::test]
async fn cluster_store_with_referent_credentials_syncs() {
    let t = TestContext::new("cluster-store").await;
    let key = t.create_remote("api", "through-the-cluster-store").await;
    let vars = common::env_vars();
    let credentials = Secret {
        metadata: ObjectMeta {
            name: Some("aws-creds".into()),
            ..Default::default()
        },
        string_data: Some(
            [
                ("id".to_string(), vars["AWS_ACCESS_KEY_ID"].clone()),
                ("secret".to_string(), vars["AWS_SECRET_ACCESS_KEY"].clone()),
            ]
            .into(),
        ),
        ..Default::default()
    };
    t.secrets()
        .create(&PostParams::default(), &credentials)
        .await
        .unwrap();
    // Cluster-scoped, so named after the test namespace to stay out of other tests' way.
    let store = format!("{}-store", t.namespace);
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ClusterSecretStore\nmetadata: {{name: {store}}}\nspec:\n  provider:\n    aws:\n      \
         service: SecretsManager\n      region: us-east-1\n      auth:\n        secretRef:\n          \
         accessKeyIDSecretRef: {{name: aws-creds, key: id}}\n          secretAccessKeySecretRef: {{name: aws-creds, key: secret}}\n"
    ))
    .await;
    let _operator = t.start_operator();
    let manifest = external_secret("api", &store, "1h", &[("key", &key, None)])
        .replace("\"SecretStore\"", "\"ClusterSecretStore\"");
    t.apply_yaml(&manifest).await;

    wait_for_value(&t, "api", "key", "through-the-cluster-store").await;
    let stores = kube::Api::<secretsync::api::ClusterSecretStore>::all(t.client.clone());
    let condition = wait_for("store Ready", TIMEOUT, || async {
        let conditions = stores
            .get(&store)
            .await
            .unwrap()
            .status
            .map(|s| s.conditions)
            .unwrap_or_default();
        conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .ok_or("no condition yet")
    })
    .await;
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Valid")
    );
    stores
        .delete(&store, &DeleteParams::default())
        .await
        .unwrap();
}

/// The ConfigMap that `templateFrom` names is watched: syncs render from memory, and an edit is used by the
/// next sync.
#[tokio::test]
async fn template_sources_come_from_a_watch_and_follow_edits() {
    let t = TestContext::new("template-watched").await;
    let key = t.create_remote("db", "v1").await;
    t.default_store("aws").await;
    let template = |text: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tpl"},
               "data": {"dsn": text}})
        .to_string()
    };
    t.apply_yaml(&template("db://{{ value }}")).await;
    let mut es: serde_json::Value = serde_json::from_str(&common::value_external_secret(
        "api",
        "aws",
        "SecretStore",
        &key,
        None,
    ))
    .unwrap();
    es["spec"]["target"] = json!({"template": {"templateFrom": [
        {"configMap": {"name": "tpl", "items": [{"key": "dsn"}]}}
    ]}});
    t.apply_yaml(&es.to_string()).await;
    let operator = t.start_operator();
    wait_for_value(&t, "api", "dsn", "db://v1").await;
    for forced in 1..=3 {
        t.force_sync("api", &forced.to_string()).await;
    }
    t.apply_yaml(&template("pg://{{ value }}")).await;
    let mut forced = 3;
    wait_for("the edited template used", TIMEOUT, || {
        forced += 1;
        let forced = forced.to_string();
        let t = &t;
        async move {
            t.force_sync("api", &forced).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let value = secret_value(t, "api", "dsn").await?;
            (value == "pg://v1").then_some(()).ok_or(value)
        }
    })
    .await;
    let requests = operator.api_requests().await;
    assert_eq!(requests.get("get configmaps"), None, "{requests:?}");
}
