//! The dashboard and alerts against a real Prometheus (Debian's package) scraping the running operator:
//! every PromQL expression parses (`promtool`), the rules load and evaluate, and every dashboard panel
//! returns data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{MANIFEST_DIR, TIMEOUT, TestContext, env_vars, value_external_secret, wait_for};
use serde_json::{Value, json};

const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/secretsync/files/alerts.yaml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/secretsync/files/dashboard.json"
);

fn prometheus_tool(name: &str) -> PathBuf {
    let dir = env_vars().get("PROMETHEUS_BIN").unwrap_or_else(|| {
        panic!("PROMETHEUS_BIN is not set: restart the stack (`hack/testenv.sh down; make test`), which fetches Debian's prometheus package")
    });
    Path::new(dir).join(name)
}

/// Every expression of the dashboard's panels, with Grafana's `$__rate_interval` made concrete.
fn dashboard_queries(rate_interval: &str) -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| {
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| {
                    (
                        panel["title"].as_str().unwrap().to_string(),
                        target["expr"]
                            .as_str()
                            .unwrap()
                            .replace("$__rate_interval", rate_interval),
                    )
                })
        })
        .collect()
}

fn promtool_check_rules(file: &Path) {
    let output = Command::new(prometheus_tool("promtool"))
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check rules {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_promql_expression_parses() {
    promtool_check_rules(Path::new(ALERTS));
    // promtool checks expressions in rule files: the dashboard's become recording rules.
    let queries = dashboard_queries("5m");
    assert!(queries.len() >= 15, "{queries:?}");
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("secretsync:dashboard_query_{i}"), "expr": expr}))
        .collect();
    let file = Path::new(MANIFEST_DIR).join("target/test-logs/dashboard-queries.rules.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let groups = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_json::to_string(&groups).unwrap()).unwrap();
    promtool_check_rules(&file);
}

/// Prometheus, stopped by PID when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(name: &str, target: &str) -> Self {
        let dir = Path::new(MANIFEST_DIR).join("target/test-logs").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [ALERTS],
            "scrape_configs": [{"job_name": "secretsync", "static_configs": [{"targets": [target]}]}],
        });
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn api(&self, path: &str, query: Option<&str>) -> Result<Value, String> {
        let mut command = tokio::process::Command::new("curl");
        command.args(["-sf", "-G", &format!("{}{path}", self.url)]);
        if let Some(query) = query {
            command.args(["--data-urlencode", &format!("query={query}")]);
        }
        let output = command.output().await.map_err(|err| err.to_string())?;
        if !output.status.success() {
            return Err(format!("curl exit {:?}", output.status.code()));
        }
        let body: Value = serde_json::from_slice(&output.stdout).map_err(|err| err.to_string())?;
        (body["status"] == "success")
            .then(|| body["data"].clone())
            .ok_or_else(|| body.to_string())
    }

    /// The series an instant query returns.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", Some(expr)).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_operator_and_every_panel_has_data() {
    let t = TestContext::new("prometheus").await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    t.restartable_deployment("web", "app").await;
    let operator = t.start_operator();
    let target = operator.http_url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&t.namespace, &target);

    // A healthy sync with a rotation and a restart, and one that fails (the remote key does not exist).
    t.apply_yaml(&value_external_secret(
        "app",
        "aws",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    let missing = t.remote_key("missing");
    t.apply_yaml(&value_external_secret(
        "broken",
        "aws",
        "SecretStore",
        &missing,
        None,
    ))
    .await;
    t.wait_for_value("app", "v1").await;
    t.put_remote(&key, "v2").await;
    t.wait_for_value("app", "v2").await;

    wait_for("Prometheus to scrape the operator", TIMEOUT, || async {
        let up = prometheus.query(r#"up{job="secretsync"} == 1"#).await;
        up.as_ref()
            .is_ok_and(|series| !series.is_empty())
            .then_some(())
            .ok_or(up)
    })
    .await;
    for (panel, expr) in dashboard_queries("30s") {
        wait_for(
            &format!("data for panel {panel:?}: {expr}"),
            TIMEOUT,
            || async {
                let series = prometheus.query(&expr).await;
                series
                    .as_ref()
                    .is_ok_and(|series| !series.is_empty())
                    .then_some(())
                    .ok_or(series)
            },
        )
        .await;
    }

    // The alert rules load and evaluate; the broken ExternalSecret's alert is pending with its reason.
    wait_for("the not-ready alert to be pending", TIMEOUT, || async {
        let alerts = prometheus.api("/api/v1/alerts", None).await?;
        alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|alert| {
                alert["labels"]["alertname"] == "SecretsyncExternalSecretNotReady"
                    && alert["labels"]["name"] == "broken"
            })
            .map(|alert| {
                assert_eq!(alert["labels"]["reason"], "RemoteKeyNotFound", "{alert}");
                assert_eq!(alert["state"], "pending", "{alert}");
            })
            .ok_or_else(|| alerts.to_string())
    })
    .await;
    let rules = prometheus.api("/api/v1/rules", None).await.unwrap();
    let rules: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 6, "{rules:?}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    drop(operator);
}
