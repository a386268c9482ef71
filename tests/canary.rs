//! A planted secret value must never reach the operator's logs (at trace level, every crate), events or status.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Operator, TIMEOUT, TestContext, wait_for};

const CANARY: &str = "canary-8c1f0e6b-do-not-log";
/// ExternalSecrets that fail on a value holding the canary.
const BROKEN: [&str; 5] = [
    "broken",
    "broken-template",
    "broken-decoding",
    "broken-lookup",
    "broken-label",
];

#[tokio::test]
async fn canary_value_never_appears_in_logs_events_or_status() {
    let t = TestContext::new("canary").await;
    let json_value = format!(r#"{{"password":"{CANARY}","user":"app"}}"#);
    let json_key = t.create_remote("json", &json_value).await;
    let plain_key = t.create_remote("plain", CANARY).await;
    t.default_store("aws").await;
    let operator = Operator::start(&t.namespace, &[("RUST_LOG", "trace")]);
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {{name: canary}}\nspec:\n  \
         refreshInterval: 1h\n  secretStoreRef: {{name: aws}}\n  data:\n  \
         - {{secretKey: password, remoteRef: {{key: {json_key}, property: password}}}}\n  \
         - {{secretKey: whole, remoteRef: {{key: {plain_key}}}}}\n"
    ))
    .await;
    // An error path on a value holding the canary too: a property that does not exist.
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {{name: broken}}\nspec:\n  \
         secretStoreRef: {{name: aws}}\n  data:\n  - {{secretKey: x, remoteRef: {{key: {json_key}, property: nope}}}}\n"
    ))
    .await;

    // Error paths that handle the value itself: a template that cannot convert it, a decoding that fails.
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {{name: broken-template}}\nspec:\n  \
         secretStoreRef: {{name: aws}}\n  dataFrom: [{{extract: {{key: {json_key}}}}}]\n  \
         target: {{template: {{data: {{x: '{{{{ password | int }}}}', y: '{{{{ password ~ 1 + 2 }}}}'}}}}}}\n"
    ))
    .await;
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {{name: broken-decoding}}\nspec:\n  \
         secretStoreRef: {{name: aws}}\n  data:\n  - {{secretKey: x, remoteRef: {{key: {plain_key}, decodingStrategy: Base64}}}}\n"
    ))
    .await;

    // `lookup(password)` for `lookup("password")`: the value becomes the name looked up.
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {{name: broken-lookup}}\nspec:\n  \
         secretStoreRef: {{name: aws}}\n  dataFrom: [{{extract: {{key: {json_key}}}}}]\n  \
         target: {{template: {{data: {{x: '{{{{ lookup(password) }}}}'}}}}}}\n"
    ))
    .await;
    // A templated label the API server refuses: its 422 quotes the value.
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {{name: broken-label}}\nspec:\n  \
         secretStoreRef: {{name: aws}}\n  dataFrom: [{{extract: {{key: {json_key}}}}}]\n  \
         target: {{template: {{metadata: {{labels: {{l: '{{{{ password }}}}!'}}}}}}}}\n"
    ))
    .await;

    wait_for("the canary Secret", TIMEOUT, || async {
        let data = t.secret_data("canary").await.ok_or("absent")?;
        (data.get("password").map(String::as_str) == Some(CANARY))
            .then_some(())
            .ok_or("not synced")
    })
    .await;
    for broken in BROKEN {
        wait_for(&format!("{broken} to fail"), TIMEOUT, || async {
            t.es_ready(broken)
                .await
                .filter(|c| c.0 == "False")
                .ok_or("no failure yet")
        })
        .await;
    }
    let lookup = t.es_ready("broken-lookup").await.unwrap();
    assert!(lookup.2.starts_with("TemplateError: "), "{lookup:?}");
    let label = t.es_ready("broken-label").await.unwrap();
    assert!(
        label.2.contains("Invalid") && label.2.contains("metadata.labels"),
        "the refusal names the field: {label:?}"
    );

    // A rotation, so that update paths are logged too.
    t.put_remote(&plain_key, &format!("{CANARY}-2")).await;
    t.force_sync("canary", "1").await;
    wait_for("the rotation", TIMEOUT, || async {
        let data = t.secret_data("canary").await.ok_or("absent")?;
        (data.get("whole").map(String::as_str) == Some(&format!("{CANARY}-2")))
            .then_some(())
            .ok_or("old value")
    })
    .await;

    let log = operator.log();
    assert!(
        log.lines().count() > 100,
        "trace logging was on: {} lines",
        log.lines().count()
    );
    let forms = [
        CANARY.to_string(),
        STANDARD.encode(CANARY),
        STANDARD.encode(format!("{CANARY}-2")),
        STANDARD.encode(&json_value),
    ];
    for form in &forms {
        assert!(
            !log.contains(form.as_str()),
            "the operator log contains {form:?} ({})",
            operator.log_path.display()
        );
    }

    let mut reported = String::new();
    for name in std::iter::once("canary").chain(BROKEN) {
        reported += &format!("{:?}", t.events_for(name).await);
        let es = t.external_secrets().get(name).await.unwrap();
        reported += &serde_json::to_string(&es.status).unwrap();
    }
    for form in &forms {
        assert!(
            !reported.contains(form.as_str()),
            "events or status contain {form:?}: {reported}"
        );
    }
}

const CANARY_SECRET_KEY: &str = "canarysecretkey0c5e1d7a9b3f2e4d6c8a0b1c";
const CANARY_SESSION_TOKEN: &str = "canary-session-token-3f9d2b7e-do-not-log";

/// Credentials planted in a Secret never reach the operator's logs (at trace level), events or status, when
/// AWS refuses them or accepts them.
#[tokio::test]
async fn canary_credentials_never_appear_in_logs_events_or_status() {
    let t = TestContext::new("canary-keys").await;
    let key = t.create_remote("db", "v1").await;
    let (id, secret) = t.create_user("keys", &["read-policy.json"]).await;
    for (name, secret_key, token) in [
        ("good", secret.as_str(), None),
        ("wrong-key", CANARY_SECRET_KEY, None),
        ("wrong-token", CANARY_SECRET_KEY, Some(CANARY_SESSION_TOKEN)),
    ] {
        let keys = format!("{name}-keys");
        let mut data = serde_json::json!({"id": id, "secret": secret_key});
        let mut auth = serde_json::json!({
            "accessKeyIDSecretRef": {"name": keys, "key": "id"},
            "secretAccessKeySecretRef": {"name": keys, "key": "secret"},
        });
        if let Some(token) = token {
            data["token"] = token.into();
            auth["sessionTokenSecretRef"] = serde_json::json!({"name": keys, "key": "token"});
        }
        t.apply_yaml(
            &serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": keys}, "stringData": data})
            .to_string(),
        )
        .await;
        t.apply_yaml(
            &serde_json::json!({
                "apiVersion": "secretsync.io/v1alpha1", "kind": "SecretStore",
                "metadata": {"name": name},
                "spec": {"provider": {"aws": {"service": "SecretsManager", "region": "us-east-1",
                                              "auth": {"secretRef": auth}}}},
            })
            .to_string(),
        )
        .await;
        t.apply_yaml(
            &serde_json::json!({
                "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
                "metadata": {"name": name},
                "spec": {"secretStoreRef": {"name": name},
                         "data": [{"secretKey": "value", "remoteRef": {"key": key}}]},
            })
            .to_string(),
        )
        .await;
    }
    let operator = Operator::start(&t.namespace, &[("RUST_LOG", "trace")]);
    wait_for("the good keys to sync", TIMEOUT, || async {
        t.secret_data("good").await.ok_or("absent").map(|_| ())
    })
    .await;
    for name in ["wrong-key", "wrong-token"] {
        let (_, _, message) = wait_for(&format!("{name} to fail"), TIMEOUT, || async {
            t.es_ready(name)
                .await
                .filter(|c| c.0 == "False")
                .ok_or("no failure yet")
        })
        .await;
        assert!(
            message.starts_with("InvalidCredentials: "),
            "{name}: {message}"
        );
    }

    let stores: kube::Api<secretsync::api::SecretStore> =
        kube::Api::namespaced(t.client.clone(), &t.namespace);
    let mut reported = operator.log();
    for name in ["good", "wrong-key", "wrong-token"] {
        reported += &format!("{:?}", t.events_for(name).await);
        let es = t.external_secrets().get(name).await.unwrap();
        reported += &serde_json::to_string(&es.status).unwrap();
        reported += &serde_json::to_string(&stores.get(name).await.unwrap().status).unwrap();
    }
    for canary in [CANARY_SECRET_KEY, CANARY_SESSION_TOKEN, secret.as_str()] {
        assert!(
            !reported.contains(canary),
            "a credential ({canary}) reached the log, events or status ({})",
            operator.log_path.display()
        );
    }
}
