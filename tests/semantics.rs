//! The ExternalSecret API, field by field, against the real API server and moto: a table of cases, each
//! asserting the exact Secret (type, labels, annotations, data) or the exact condition. All cases run at
//! once in one namespace, with one operator; each has its own store (whose `prefix` is the case's own
//! remote-key prefix), ExternalSecret and Secret, all named after the case.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Operator, TIMEOUT, TestContext, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::json;

const DATA_HASH: &str = "secretsync.io/data-hash";
const APPLIED_HASH: &str = "secretsync.io/applied-hash";
const MANAGED: &str = "secretsync.io/managed";
const WRITER: &str = "secretsync.io/external-secret";

/// A remote secret of the case: its values are successive versions (the first is also staged `STAGED`).
enum Remote {
    Text(&'static str, &'static [&'static str]),
    Binary(&'static str, &'static [u8]),
    Tagged(
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    ),
}

#[derive(Clone, Copy)]
enum Store {
    Aws,
    /// A fake store; its `data` list as YAML.
    Fake(&'static str),
}

#[derive(Clone, Copy)]
enum Ownership {
    /// Written by us with `Owner` (controller reference) or `Orphan` (no owner).
    Owner,
    Orphan,
    /// Someone else's Secret (`creationPolicy: Merge`): only the listed labels and annotations.
    Foreign,
}

enum Expect {
    Secret {
        ownership: Ownership,
        type_: &'static str,
        labels: &'static [(&'static str, &'static str)],
        annotations: &'static [(&'static str, &'static str)],
        data: &'static [(&'static str, &'static [u8])],
        immutable: bool,
    },
    /// Ready=False with this reason, and the message starting with this class.
    Failure(&'static str, &'static str),
    /// Ready=True and no Secret (`creationPolicy: None`).
    NoSecret,
    /// Ready=False/SecretDeleted and no Secret.
    Deleted,
    /// Ready=False/SecretDeleted; the Secret holds exactly this data.
    KeysRemoved(&'static [(&'static str, &'static [u8])]),
}

enum Step {
    /// Delete a remote secret for good, then force a sync.
    DeleteRemote(&'static str),
    /// A new AWSCURRENT value, then force a sync.
    Rotate(&'static str, &'static str),
    /// A new AWSCURRENT value, no sync forced; wait this long.
    RotateQuietly(&'static str, &'static str, Duration),
    /// Wait; neither the ExternalSecret nor the Secret may change (no status churn).
    StaysQuiet(Duration),
}

struct Case {
    name: &'static str,
    store: Store,
    remote: &'static [Remote],
    /// Objects to create first (ConfigMaps, Secrets), as YAML documents.
    objects: &'static str,
    /// The ExternalSecret's spec, without `secretStoreRef` (the case's store is used).
    spec: &'static str,
    expect: Expect,
    then: Option<(Step, Expect)>,
}

impl Case {
    fn aws(
        name: &'static str,
        remote: &'static [Remote],
        spec: &'static str,
        expect: Expect,
    ) -> Case {
        Case {
            name,
            store: Store::Aws,
            remote,
            objects: "",
            spec,
            expect,
            then: None,
        }
    }

    fn fake(name: &'static str, data: &'static str, spec: &'static str, expect: Expect) -> Case {
        Case {
            store: Store::Fake(data),
            ..Case::aws(name, &[], spec, expect)
        }
    }

    fn with_objects(self, objects: &'static str) -> Case {
        Case { objects, ..self }
    }

    fn then(self, step: Step, expect: Expect) -> Case {
        Case {
            then: Some((step, expect)),
            ..self
        }
    }
}

fn owned(data: &'static [(&'static str, &'static [u8])]) -> Expect {
    Expect::Secret {
        ownership: Ownership::Owner,
        type_: "Opaque",
        labels: &[],
        annotations: &[],
        data,
        immutable: false,
    }
}

fn failure(class: &'static str) -> Expect {
    Expect::Failure("SecretSyncedError", class)
}

fn cases() -> Vec<Case> {
    vec![
        Case::aws(
            "property-paths",
            &[Remote::Text(
                "db",
                &[
                    r#"{"conn":{"host":"h1","port":5432},"list":[{"n":"a"},{"n":"b"}],"dot.key":"lit","a":{"b.c":"esc"}}"#,
                ],
            )],
            r#"
data:
- {secretKey: host, remoteRef: {key: db, property: conn.host}}
- {secretKey: port, remoteRef: {key: db, property: conn.port}}
- {secretKey: second, remoteRef: {key: db, property: list.1.n}}
- {secretKey: literal, remoteRef: {key: db, property: dot.key}}
- {secretKey: escaped, remoteRef: {key: db, property: 'a.b\.c'}}
- {secretKey: object, remoteRef: {key: db, property: conn}}
"#,
            owned(&[
                ("host", b"h1"),
                ("port", b"5432"),
                ("second", b"b"),
                ("literal", b"lit"),
                ("escaped", b"esc"),
                ("object", br#"{"host":"h1","port":5432}"#),
            ]),
        ),
        Case::aws(
            "versions",
            &[Remote::Text("app", &["v1", "v2", "v3"])],
            r#"
data:
- {secretKey: current, remoteRef: {key: app}}
- {secretKey: explicit, remoteRef: {key: app, version: AWSCURRENT}}
- {secretKey: previous, remoteRef: {key: app, version: AWSPREVIOUS}}
- {secretKey: staged, remoteRef: {key: app, version: STAGED}}
- {secretKey: pinned, remoteRef: {key: app, version: "uuid/{version:app:1}"}}
"#,
            owned(&[
                ("current", b"v3"),
                ("explicit", b"v3"),
                ("previous", b"v2"),
                ("staged", b"v1"),
                ("pinned", b"v2"),
            ]),
        ),
        Case::aws(
            "decoding",
            &[
                Remote::Text("std", &["aGk/Pz4+"]),
                Remote::Text("url", &["aGk_Pz4-"]),
                Remote::Text("raw", &["not base64!"]),
                Remote::Text("json", &[r#"{"cert":"Y2VydA=="}"#]),
            ],
            r#"
data:
- {secretKey: base64, remoteRef: {key: std, decodingStrategy: Base64}}
- {secretKey: base64url, remoteRef: {key: url, decodingStrategy: Base64URL}}
- {secretKey: auto-url, remoteRef: {key: url, decodingStrategy: Auto}}
- {secretKey: auto-raw, remoteRef: {key: raw, decodingStrategy: Auto}}
- {secretKey: none, remoteRef: {key: std, decodingStrategy: None}}
- {secretKey: property, remoteRef: {key: json, property: cert, decodingStrategy: Base64}}
"#,
            owned(&[
                ("base64", b"hi??>>"),
                ("base64url", b"hi??>>"),
                ("auto-url", b"hi??>>"),
                ("auto-raw", b"not base64!"),
                ("none", b"aGk/Pz4+"),
                ("property", b"cert"),
            ]),
        ),
        Case::aws(
            "invalid-base64",
            &[Remote::Text("raw", &["not base64!"])],
            "data: [{secretKey: x, remoteRef: {key: raw, decodingStrategy: Base64}}]",
            failure("InvalidRemoteValue"),
        ),
        Case::aws(
            "metadata-fetch",
            &[Remote::Tagged(
                "tagged",
                "value",
                &[("team", "payments"), ("env", "prod")],
            )],
            r#"
data:
- {secretKey: tags, remoteRef: {key: tagged, metadataPolicy: Fetch}}
- {secretKey: team, remoteRef: {key: tagged, metadataPolicy: Fetch, property: team}}
"#,
            owned(&[
                ("tags", br#"{"env":"prod","team":"payments"}"#),
                ("team", b"payments"),
            ]),
        ),
        Case::aws(
            "binary",
            &[Remote::Binary("blob", &[0, 1, 127, 128, 254, 255])],
            "data: [{secretKey: blob, remoteRef: {key: blob}}]",
            owned(&[("blob", &[0, 1, 127, 128, 254, 255])]),
        ),
        Case::aws(
            "extract",
            &[Remote::Text(
                "cfg",
                &[r#"{"user":"u","port":1,"a/b":"slash","nested":{"x y":"space","t":"dG9r"}}"#],
            )],
            r#"
dataFrom:
- extract: {key: cfg}
- extract: {key: cfg, property: nested, conversionStrategy: Unicode}
  rewrite: [{regexp: {source: "^(.*)$", target: "nested-$1"}}]
"#,
            owned(&[
                ("user", b"u"),
                ("port", b"1"),
                ("a_b", b"slash"),
                ("nested", br#"{"t":"dG9r","x y":"space"}"#),
                ("nested-x_U0020_y", b"space"),
                ("nested-t", b"dG9r"),
            ]),
        ),
        Case::aws(
            "find",
            &[
                Remote::Tagged("app/one", "1", &[("team", "a")]),
                Remote::Tagged("app/two", "2", &[("team", "b")]),
                Remote::Tagged("app/three", "3", &[("team", "a")]),
                Remote::Tagged("other/four", "4", &[("team", "a")]),
            ],
            r#"
dataFrom:
- find: {path: app/, name: {regexp: "t"}}
- find: {tags: {team: a}}
  rewrite: [{regexp: {source: "/", target: "-"}}, {transform: {template: "tag-{{ value | upper }}"}}]
- find: {path: app/, tags: {team: a}, name: {regexp: "e$"}, decodingStrategy: Auto}
  rewrite: [{regexp: {source: "^app/(.*)$", target: "combined.$1"}}]
"#,
            owned(&[
                ("app_two", b"2"),
                ("app_three", b"3"),
                ("tag-APP-ONE", b"1"),
                ("tag-APP-THREE", b"3"),
                ("tag-OTHER-FOUR", b"4"),
                ("combined.one", b"1"),
                ("combined.three", b"3"),
            ]),
        ),
        Case::aws(
            "template",
            &[Remote::Text(
                "reg",
                &[r#"{"user":"robot","pass-word":"pw","host":"registry.example"}"#],
            )],
            r#"
dataFrom: [{extract: {key: reg}}]
target:
  template:
    type: kubernetes.io/dockerconfigjson
    metadata:
      labels: {registry: "{{ host | replace('.', '-') }}"}
      annotations: {user: "{{ user | upper }}"}
    data:
      .dockerconfigjson: '{"auths":{"{{ host }}":{"auth":"{{ (user ~ ":" ~ lookup("pass-word")) | b64enc }}"}}}'
"#,
            Expect::Secret {
                ownership: Ownership::Owner,
                type_: "kubernetes.io/dockerconfigjson",
                labels: &[("registry", "registry-example")],
                annotations: &[("user", "ROBOT")],
                data: &[(
                    ".dockerconfigjson",
                    br#"{"auths":{"registry.example":{"auth":"cm9ib3Q6cHc="}}}"#,
                )],
                immutable: false,
            },
        ),
        Case::aws(
            "template-merge",
            &[Remote::Text("db", &[r#"{"user":"u","password":"p"}"#])],
            r#"
dataFrom: [{extract: {key: db}}]
target:
  template:
    mergePolicy: Merge
    data: {dsn: "pg://{{ user }}:{{ password }}@db", user: "{{ user | upper }}"}
"#,
            owned(&[("user", b"U"), ("password", b"p"), ("dsn", b"pg://u:p@db")]),
        ),
        Case::aws(
            "template-from",
            &[Remote::Text("db", &[r#"{"user":"u","password":"p"}"#])],
            r#"
dataFrom: [{extract: {key: db}}]
target:
  template:
    templateFrom:
    - configMap: {name: template-from-config, items: [{key: app.yaml}, {key: extra, templateAs: KeysAndValues}]}
    - secret: {name: template-from-secret, items: [{key: token}]}
    - literal: "owner: '{{ user }}'"
      target: Labels
    - literal: "note: for {{ user }}"
      target: Annotations
"#,
            Expect::Secret {
                ownership: Ownership::Owner,
                type_: "Opaque",
                labels: &[("owner", "u")],
                annotations: &[("note", "for u")],
                data: &[
                    ("app.yaml", b"user: u\n"),
                    ("k1", b"p"),
                    ("k2", b"fixed"),
                    ("token", b"cA=="),
                ],
                immutable: false,
            },
        )
        .with_objects(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: template-from-config}
data:
  app.yaml: "user: {{ user }}\n"
  extra: "k1: '{{ password }}'\nk2: fixed"
---
apiVersion: v1
kind: Secret
metadata: {name: template-from-secret}
stringData:
  token: "{{ password | b64enc }}"
"#),
        Case::aws(
            "template-error",
            &[Remote::Text("db", &[r#"{"user":"u"}"#])],
            r#"
dataFrom: [{extract: {key: db}}]
target: {template: {data: {x: "{{ missing_key }}"}}}
"#,
            failure("TemplateError"),
        ),
        Case::aws(
            "invalid-property",
            &[Remote::Text("db", &[r#"{"user":"u"}"#])],
            "data: [{secretKey: x, remoteRef: {key: db, property: nope.deeper}}]",
            failure("PropertyNotFound"),
        ),
        Case::aws(
            "invalid-regexp",
            &[Remote::Text("db", &["x"])],
            "dataFrom: [{find: {name: {regexp: '(unclosed'}}}]",
            failure("InvalidSpec"),
        ),
        Case::aws(
            "invalid-key",
            &[Remote::Text("db", &[r#"{"user":"u"}"#])],
            r#"
dataFrom: [{extract: {key: db}}]
target: {template: {templateFrom: [{literal: "bad key: '{{ user }}'"}]}}
"#,
            failure("InvalidKey"),
        ),
        Case::aws(
            "key-collision",
            &[Remote::Text("db", &[r#"{"user":"u"}"#])],
            r#"
dataFrom: [{extract: {key: db}}]
data: [{secretKey: user, remoteRef: {key: db, property: user}}]
"#,
            failure("KeyCollision"),
        ),
        Case::aws(
            "orphan",
            &[Remote::Text("db", &["v"])],
            r#"
data: [{secretKey: v, remoteRef: {key: db}}]
target: {creationPolicy: Orphan}
"#,
            Expect::Secret {
                ownership: Ownership::Orphan,
                type_: "Opaque",
                labels: &[],
                annotations: &[],
                data: &[("v", b"v")],
                immutable: false,
            },
        ),
        Case::aws(
            "merge",
            &[Remote::Text("db", &["ours"])],
            r#"
data: [{secretKey: password, remoteRef: {key: db}}, {secretKey: extra, remoteRef: {key: db}}]
target: {creationPolicy: Merge, deletionPolicy: Merge}
"#,
            Expect::Secret {
                ownership: Ownership::Foreign,
                type_: "kubernetes.io/basic-auth",
                labels: &[("app", "theirs")],
                annotations: &[],
                data: &[
                    ("username", b"theirs"),
                    ("password", b"ours"),
                    ("extra", b"ours"),
                ],
                immutable: false,
            },
        )
        .with_objects(
            r#"
apiVersion: v1
kind: Secret
metadata: {name: merge, labels: {app: theirs}}
type: kubernetes.io/basic-auth
stringData: {username: theirs, password: old}
"#,
        )
        .then(
            Step::DeleteRemote("db"),
            Expect::KeysRemoved(&[("username", b"theirs")]),
        ),
        Case::aws(
            "merge-missing",
            &[Remote::Text("db", &["v"])],
            r#"
data: [{secretKey: v, remoteRef: {key: db}}]
target: {creationPolicy: Merge}
"#,
            Expect::Failure("SecretMissing", "SecretMissing"),
        ),
        Case::aws(
            "creation-none",
            &[Remote::Text("db", &["v"])],
            r#"
data: [{secretKey: v, remoteRef: {key: db}}]
target: {creationPolicy: None}
"#,
            Expect::NoSecret,
        ),
        Case::aws(
            "immutable",
            &[Remote::Text("db", &["v1"])],
            r#"
data: [{secretKey: v, remoteRef: {key: db}}]
target: {immutable: true}
"#,
            Expect::Secret {
                ownership: Ownership::Owner,
                type_: "Opaque",
                labels: &[],
                annotations: &[],
                data: &[("v", b"v1")],
                immutable: true,
            },
        )
        .then(Step::Rotate("db", "v2"), failure("ImmutableSecret")),
        Case::aws(
            "deleted-retain",
            &[Remote::Text("db", &["kept"])],
            "data: [{secretKey: v, remoteRef: {key: db}}]",
            owned(&[("v", b"kept")]),
        )
        .then(Step::DeleteRemote("db"), failure("RemoteKeyNotFound")),
        Case::aws(
            "deleted-delete",
            &[Remote::Text("db", &["gone"])],
            r#"
data: [{secretKey: v, remoteRef: {key: db}}]
target: {deletionPolicy: Delete}
"#,
            owned(&[("v", b"gone")]),
        )
        .then(Step::DeleteRemote("db"), Expect::Deleted),
        Case::aws(
            "deleted-merge-owned",
            &[Remote::Text("db", &["gone"])],
            r#"
data: [{secretKey: v, remoteRef: {key: db}}]
target: {deletionPolicy: Merge}
"#,
            owned(&[("v", b"gone")]),
        )
        .then(Step::DeleteRemote("db"), Expect::KeysRemoved(&[])),
        Case::aws(
            "created-once",
            &[Remote::Text("db", &["first"])],
            r#"
refreshPolicy: CreatedOnce
refreshInterval: 1s
data: [{secretKey: v, remoteRef: {key: db}}]
"#,
            owned(&[("v", b"first")]),
        )
        .then(Step::Rotate("db", "second"), owned(&[("v", b"first")])),
        Case::aws(
            "on-change",
            &[Remote::Text("db", &["first"])],
            r#"
refreshPolicy: OnChange
refreshInterval: 1s
data: [{secretKey: v, remoteRef: {key: db}}]
"#,
            owned(&[("v", b"first")]),
        )
        .then(Step::Rotate("db", "second"), owned(&[("v", b"second")])),
        Case::aws(
            "on-change-quiet",
            &[Remote::Text("db", &["first"])],
            r#"
refreshPolicy: OnChange
refreshInterval: 1s
data: [{secretKey: v, remoteRef: {key: db}}]
"#,
            owned(&[("v", b"first")]),
        )
        .then(
            Step::RotateQuietly("db", "second", Duration::from_secs(3)),
            owned(&[("v", b"first")]),
        ),
        Case::aws(
            "sync-once",
            &[Remote::Text("db", &["first"])],
            r#"
refreshInterval: "0"
data: [{secretKey: v, remoteRef: {key: db}}]
"#,
            owned(&[("v", b"first")]),
        )
        .then(
            Step::RotateQuietly("db", "second", Duration::from_secs(3)),
            owned(&[("v", b"first")]),
        ),
        Case::aws(
            "quiet-refresh",
            &[Remote::Text("db", &["same"])],
            r#"
refreshInterval: 1s
data: [{secretKey: v, remoteRef: {key: db}}]
"#,
            owned(&[("v", b"same")]),
        )
        .then(
            Step::StaysQuiet(Duration::from_secs(4)),
            owned(&[("v", b"same")]),
        ),
        Case::fake(
            "fake",
            r#"[{key: db, value: '{"user":"u","nested":{"p":"cA=="}}'}, {key: db, value: old, version: AWSPREVIOUS}, {key: app/a, value: "1"}, {key: app/b, value: "2"}]"#,
            r#"
data:
- {secretKey: previous, remoteRef: {key: db, version: AWSPREVIOUS}}
- {secretKey: p, remoteRef: {key: db, property: nested.p, decodingStrategy: Base64}}
- {secretKey: tags, remoteRef: {key: db, metadataPolicy: Fetch}}
dataFrom:
- extract: {key: db}
- find: {path: app/}
  rewrite: [{transform: {template: "found-{{ value | replace('/', '-') }}"}}]
target: {template: {mergePolicy: Merge, data: {greeting: "hello {{ user }}"}}}
"#,
            owned(&[
                ("previous", b"old"),
                ("p", b"p"),
                ("tags", b"{}"),
                ("user", b"u"),
                ("nested", br#"{"p":"cA=="}"#),
                ("found-app-a", b"1"),
                ("found-app-b", b"2"),
                ("greeting", b"hello u"),
            ]),
        ),
        Case::fake(
            "fake-missing",
            "[{key: db, value: x}]",
            "data: [{secretKey: v, remoteRef: {key: nope}}]",
            failure("RemoteKeyNotFound"),
        ),
    ]
}

#[tokio::test]
async fn external_secret_fields() {
    let t = TestContext::new("semantics").await;
    let _operator = Operator::start(&t.namespace, &[]);
    let t = std::sync::Arc::new(t);
    let tasks: Vec<_> = cases()
        .into_iter()
        .map(|case| {
            let t = t.clone();
            let name = case.name;
            (name, tokio::spawn(async move { run(&t, case).await }))
        })
        .collect();
    let mut failed = Vec::new();
    for (name, task) in tasks {
        if let Err(err) = task.await {
            let panic = err.into_panic();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{name}: {message}"));
        }
    }
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}

async fn run(t: &TestContext, case: Case) {
    let prefix = format!("{}/{}/", t.namespace, case.name);
    let mut versions = BTreeMap::new();
    for remote in case.remote {
        create_remote(t, &prefix, remote, &mut versions).await;
    }
    for document in case
        .objects
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
    {
        t.apply_yaml(document).await;
    }
    let provider = match case.store {
        Store::Aws => {
            json!({"aws": {"service": "SecretsManager", "region": "us-east-1", "prefix": prefix}})
        }
        Store::Fake(data) => {
            let data: serde_json::Value = serde_saphyr::from_str(data).expect("fake data YAML");
            json!({"fake": {"data": data}})
        }
    };
    let store = json!({
        "apiVersion": "secretsync.io/v1alpha1", "kind": "SecretStore",
        "metadata": {"name": case.name}, "spec": {"provider": provider},
    });
    t.apply_yaml(&store.to_string()).await;
    let mut spec_text = case.spec.to_string();
    for ((remote, index), id) in &versions {
        spec_text = spec_text.replace(&format!("{{version:{remote}:{index}}}"), id);
    }
    let mut spec: serde_json::Value = serde_saphyr::from_str(&spec_text).expect("case spec YAML");
    spec["secretStoreRef"] = json!({"name": case.name});
    let es = json!({
        "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
        "metadata": {"name": case.name}, "spec": spec,
    });
    t.apply_yaml(&es.to_string()).await;
    check(t, case.name, &case.expect).await;

    let Some((step, expect)) = case.then else {
        return;
    };
    match step {
        Step::DeleteRemote(name) => {
            t.secrets_manager
                .delete_secret()
                .secret_id(format!("{prefix}{name}"))
                .force_delete_without_recovery(true)
                .send()
                .await
                .expect("DeleteSecret");
            t.force_sync(case.name, "after-delete").await;
        }
        Step::Rotate(name, value) => {
            t.put_remote(&format!("{prefix}{name}"), value).await;
            t.force_sync(case.name, "after-rotate").await;
        }
        Step::RotateQuietly(name, value, wait) => {
            t.put_remote(&format!("{prefix}{name}"), value).await;
            tokio::time::sleep(wait).await;
        }
        Step::StaysQuiet(wait) => {
            let es_before = t.external_secrets().get(case.name).await.unwrap();
            let secret_before = t.secrets().get(case.name).await.unwrap();
            tokio::time::sleep(wait).await;
            let es_after = t.external_secrets().get(case.name).await.unwrap();
            let secret_after = t.secrets().get(case.name).await.unwrap();
            assert_eq!(
                (
                    es_before.resource_version(),
                    secret_before.resource_version()
                ),
                (es_after.resource_version(), secret_after.resource_version()),
                "a refresh that found nothing new changed the ExternalSecret or the Secret"
            );
        }
    }
    check(t, case.name, &expect).await;
}

async fn create_remote(
    t: &TestContext,
    prefix: &str,
    remote: &Remote,
    versions: &mut BTreeMap<(String, usize), String>,
) {
    let sm = &t.secrets_manager;
    match remote {
        Remote::Text(name, values) => {
            let id = format!("{prefix}{name}");
            let created = sm
                .create_secret()
                .name(&id)
                .secret_string(values[0])
                .send()
                .await
                .expect("CreateSecret");
            let first = created.version_id.expect("VersionId");
            for (index, value) in values.iter().enumerate().skip(1) {
                versions.insert((name.to_string(), index), t.put_remote(&id, value).await);
            }
            // After the puts: moto drops custom stages from a version that loses AWSPREVIOUS.
            sm.update_secret_version_stage()
                .secret_id(&id)
                .version_stage("STAGED")
                .move_to_version_id(&first)
                .send()
                .await
                .expect("UpdateSecretVersionStage");
            versions.insert((name.to_string(), 0), first);
        }
        Remote::Binary(name, bytes) => {
            sm.create_secret()
                .name(format!("{prefix}{name}"))
                .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(*bytes))
                .send()
                .await
                .expect("CreateSecret");
        }
        Remote::Tagged(name, value, tags) => {
            let tags = tags.iter().map(|(k, v)| {
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key(*k)
                    .value(*v)
                    .build()
            });
            sm.create_secret()
                .name(format!("{prefix}{name}"))
                .secret_string(*value)
                .set_tags(Some(tags.collect()))
                .send()
                .await
                .expect("CreateSecret");
        }
    }
}

fn bytes_map(data: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    data.iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a Secret looks like, in the terms of `Expect::Secret`, for comparing and for failure messages.
#[derive(Debug, PartialEq)]
struct Seen {
    type_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    data: BTreeMap<String, Vec<u8>>,
    immutable: bool,
    controlled: bool,
}

fn seen(secret: &Secret) -> Seen {
    let mut annotations = secret.annotations().clone();
    // The hashes are keyed per installation: their presence is checked, their values cannot be predicted.
    for name in [DATA_HASH, APPLIED_HASH] {
        if let Some(hash) = annotations.get_mut(name) {
            *hash = "<hash>".into();
        }
    }
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    Seen {
        type_: secret.type_.clone().unwrap_or_default(),
        labels: secret.labels().clone(),
        annotations,
        data: secret
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
        immutable: secret.immutable == Some(true),
        controlled: secret
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "ExternalSecret"),
    }
}

async fn check(t: &TestContext, name: &str, expect: &Expect) {
    match expect {
        Expect::Secret {
            ownership,
            type_,
            labels,
            annotations,
            data,
            immutable,
        } => {
            let mut want = Seen {
                type_: type_.to_string(),
                labels: string_map(labels),
                annotations: string_map(annotations),
                data: bytes_map(data),
                immutable: *immutable,
                controlled: matches!(ownership, Ownership::Owner),
            };
            if !matches!(ownership, Ownership::Foreign) {
                want.labels.insert(MANAGED.into(), "true".into());
                want.annotations.insert(DATA_HASH.into(), "<hash>".into());
                want.annotations
                    .insert(APPLIED_HASH.into(), "<hash>".into());
                want.annotations.insert(WRITER.into(), name.into());
            }
            wait_for(
                &format!("{name}: the Secret as expected"),
                TIMEOUT,
                || async {
                    let secret = t.secrets().get_opt(name).await.unwrap().ok_or(None)?;
                    let seen = seen(&secret);
                    let ready = t.es_ready(name).await;
                    if seen == want && ready.as_ref().is_some_and(|r| r.0 == "True") {
                        Ok(())
                    } else {
                        Err(Some((seen, ready)))
                    }
                },
            )
            .await;
        }
        Expect::Failure(reason, class) => {
            wait_for(
                &format!("{name}: Ready=False {reason} {class}"),
                TIMEOUT,
                || async {
                    let ready = t.es_ready(name).await.ok_or(None)?;
                    let matches = ready.0 == "False"
                        && ready.1 == *reason
                        && ready.2.starts_with(&format!("{class}: "));
                    if matches { Ok(()) } else { Err(Some(ready)) }
                },
            )
            .await;
        }
        Expect::NoSecret => {
            wait_for(
                &format!("{name}: Ready=True without a Secret"),
                TIMEOUT,
                || async {
                    let ready = t.es_ready(name).await;
                    let secret = t.secrets().get_opt(name).await.unwrap();
                    match (&ready, &secret) {
                        (Some(r), None) if r.0 == "True" && r.1 == "SecretSynced" => Ok(()),
                        _ => Err((ready, secret.map(|s| s.name_any()))),
                    }
                },
            )
            .await;
        }
        Expect::Deleted => {
            wait_for(
                &format!("{name}: SecretDeleted and no Secret"),
                TIMEOUT,
                || async {
                    let ready = t.es_ready(name).await;
                    let secret = t.secrets().get_opt(name).await.unwrap();
                    match (&ready, &secret) {
                        (Some(r), None) if r.0 == "False" && r.1 == "SecretDeleted" => Ok(()),
                        _ => Err((ready, secret.map(|s| s.name_any()))),
                    }
                },
            )
            .await;
        }
        Expect::KeysRemoved(data) => {
            let want = bytes_map(data);
            wait_for(
                &format!("{name}: SecretDeleted and our keys removed"),
                TIMEOUT,
                || async {
                    let ready = t.es_ready(name).await;
                    let secret = t.secrets().get_opt(name).await.unwrap().ok_or(None)?;
                    let seen = seen(&secret).data;
                    match &ready {
                        Some(r) if r.0 == "False" && r.1 == "SecretDeleted" && seen == want => {
                            Ok(())
                        }
                        _ => Err(Some((ready, seen))),
                    }
                },
            )
            .await;
        }
    }
}

/// `kubectl apply` of a manifest the CRD schema refuses fails with the rule's message.
#[tokio::test]
async fn api_server_refuses_invalid_manifests() {
    let t = TestContext::new("validation").await;
    let es = |spec: &str| {
        format!(
            "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {{name: bad}}\n\
             spec: {{secretStoreRef: {{name: s}}, {spec}}}"
        )
    };
    let cases = [
        (
            es("target: {creationPolicy: Orphan, deletionPolicy: Delete}"),
            "deletionPolicy Delete needs creationPolicy Owner",
        ),
        (
            es("target: {creationPolicy: None, deletionPolicy: Merge}"),
            "deletionPolicy Merge needs a creationPolicy that writes",
        ),
        (
            es("target: {creationPolicy: Merge, immutable: true}"),
            "immutable cannot be combined with creationPolicy Merge",
        ),
        (
            es("dataFrom: [{extract: {key: a}, find: {path: b}}]"),
            "dataFrom entries set exactly one of extract or find",
        ),
        (
            es("dataFrom: [{}]"),
            "dataFrom entries set exactly one of extract or find",
        ),
        (
            es("dataFrom: [{find: {conversionStrategy: Default}}]"),
            "find needs at least one of path, name or tags",
        ),
        (
            es(
                "dataFrom: [{extract: {key: a}, rewrite: [{regexp: {source: a, target: b}, transform: {template: x}}]}]",
            ),
            "rewrite entries set exactly one of regexp or transform",
        ),
        (
            es(
                "target: {template: {templateFrom: [{literal: a, configMap: {name: c, items: [{key: k}]}}]}}",
            ),
            "templateFrom entries set exactly one of configMap, secret or literal",
        ),
        (es("refreshInterval: soon"), "spec.refreshInterval"),
        (es("refreshPolicy: Sometimes"), "spec.refreshPolicy"),
        (
            es("data: [{secretKey: x, remoteRef: {key: a, decodingStrategy: Base32}}]"),
            "decodingStrategy",
        ),
        (
            es("data: [{secretKey: 'a/b', remoteRef: {key: a}}]"),
            "secretKey",
        ),
        (
            es("data: [{secretKey: a, remoteRef: {key: x}}, {secretKey: a, remoteRef: {key: y}}]"),
            "Duplicate value",
        ),
        (es("target: {name: Not_A_Name}"), "spec.target.name"),
        (
            es("target: {template: {data: {'bad key': x}}}"),
            "template.data keys are Secret keys",
        ),
        (
            "apiVersion: secretsync.io/v1alpha1\nkind: SecretStore\nmetadata: {name: bad}\n\
             spec: {provider: {fake: {data: []}, aws: {service: SecretsManager}}}"
                .to_string(),
            "set exactly one provider: aws or fake",
        ),
    ];
    for (manifest, message) in cases {
        let output = std::process::Command::new("kubectl")
            .args(["apply", "-n", &t.namespace, "-f", "-"])
            .env("KUBECONFIG", &common::env_vars()["KUBECONFIG"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(manifest.as_bytes())?;
                child.wait_with_output()
            })
            .expect("kubectl");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted: {manifest}");
        assert!(
            stderr.contains(message),
            "{manifest}\nwanted {message:?} in: {stderr}"
        );
    }
}

/// `kubectl get es` shows store, refresh interval, status and readiness; `kubectl describe` the events.
#[tokio::test]
async fn kubectl_shows_status_and_events() {
    let t = TestContext::new("kubectl").await;
    let _operator = Operator::start(&t.namespace, &[]);
    t.apply_yaml(
        "apiVersion: secretsync.io/v1alpha1\nkind: SecretStore\nmetadata: {name: fake}\n\
         spec: {provider: {fake: {data: [{key: k, value: v}]}}}",
    )
    .await;
    t.apply_yaml(
        "apiVersion: secretsync.io/v1alpha1\nkind: ExternalSecret\nmetadata: {name: shown}\n\
         spec: {secretStoreRef: {name: fake}, refreshInterval: 15m, data: [{secretKey: k, remoteRef: {key: k}}]}",
    )
    .await;
    let kubectl = |args: &[&str]| {
        let output = std::process::Command::new("kubectl")
            .args(args)
            .args(["-n", &t.namespace])
            .env("KUBECONFIG", &common::env_vars()["KUBECONFIG"])
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let table = wait_for("kubectl get es", TIMEOUT, || async {
        let table = kubectl(&["get", "es"]);
        let row = table.lines().nth(1).unwrap_or_default().to_string();
        let cells: Vec<_> = row.split_whitespace().collect();
        (cells.get(1..5) == Some(&["fake", "15m", "SecretSynced", "True"][..]))
            .then_some(table.clone())
            .ok_or(table)
    })
    .await;
    let header: Vec<_> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "STORE", "REFRESH", "INTERVAL", "STATUS", "READY", "AGE"
        ]
    );
    wait_for(
        "kubectl describe shows the Created event",
        TIMEOUT,
        || async {
            let described = kubectl(&["describe", "es", "shown"]);
            (described.contains("Created") && described.contains(r#"Created Secret "shown""#))
                .then_some(())
                .ok_or(described)
        },
    )
    .await;
}
