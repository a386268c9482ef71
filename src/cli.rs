//! Command line: `secretsync run` (the operator), `secretsync check`, `secretsync crds` and
//! `secretsync convert`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::watch;

use crate::api::{self, ExternalSecret};
use crate::check::{self, CheckArgs};
use crate::controller::{self, Context};
use crate::data_hash::DataHasher;
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;
use crate::server;
use crate::store::Stores;
use crate::telemetry::{self, LogFormat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(
    name = "secretsync",
    version,
    about = "Sync AWS Secrets Manager into Kubernetes Secrets"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds,
    /// Resolve a store's credentials as the operator would, and report the identity, the region and
    /// whether a key can be read. Exit status 1 when something failed.
    Check {
        #[command(flatten)]
        args: CheckArgs,
        /// Kubeconfig to use; without it, in-cluster configuration or $KUBECONFIG.
        #[arg(long, env = "SECRETSYNC_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
    },
    /// Rewrite External Secrets Operator manifests as secretsync ones (YAML on stdout). What could not be
    /// converted is listed on stderr, and the exit status is then 3.
    Convert {
        /// A YAML file of one or more documents; `-` (the default) reads standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Kubeconfig to use; without it, in-cluster configuration or $KUBECONFIG.
    #[arg(long, env = "SECRETSYNC_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "SECRETSYNC_NAMESPACE")]
    pub namespace: Option<String>,

    /// Namespace the operator runs in; holds the data-hash key Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "secretsync-system")]
    pub operator_namespace: String,

    /// Secret (in the operator's namespace) holding the key for the data-hash annotation; created if missing.
    #[arg(
        long,
        env = "SECRETSYNC_HASH_KEY_SECRET",
        default_value = "secretsync-hash-key"
    )]
    pub hash_key_secret: String,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "SECRETSYNC_METRICS_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_address: SocketAddr,

    #[arg(
        long,
        env = "SECRETSYNC_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,

    /// Log filter (`info`, `debug`, `secretsync=trace`, ...); RUST_LOG overrides it.
    #[arg(long, env = "SECRETSYNC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How often stores re-check their credentials unless they set `refreshInterval`.
    #[arg(long, env = "SECRETSYNC_STORE_REFRESH_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub store_refresh_interval: Duration,

    /// ExternalSecrets synced at the same time. Bounds memory and the burst on the API server and AWS when
    /// many are due at once (startup, a store change).
    #[arg(long, env = "SECRETSYNC_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,

    /// Bytes of secret values kept in memory for rotations and first syncs (`64Mi`, `1Gi`, or a number of
    /// bytes). Past it the oldest are dropped, and read again from AWS when needed.
    #[arg(long, env = "SECRETSYNC_KEPT_VALUES_BUDGET", default_value = "64Mi", value_parser = parse_bytes)]
    pub kept_values_budget: usize,

    /// Run the controllers only while holding a Lease in the operator's namespace, so that several
    /// replicas can run with one active. Standbys serve probes and metrics.
    #[arg(long, env = "SECRETSYNC_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "SECRETSYNC_LEADER_ELECTION_LEASE",
        default_value = "secretsync-leader"
    )]
    pub leader_election_lease: String,

    /// This replica's name as lease holder; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// On SIGTERM, how long syncs in flight may take to finish; keep it under the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "SECRETSYNC_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Why the controllers stopped.
enum Stop {
    Signal,
    LeaseLost,
}

pub async fn execute(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Crds => {
            print!("{}", api::crds_yaml());
            Ok(())
        }
        Command::Convert { file } => convert(&file),
        Command::Run(args) => run(args).await,
        Command::Check { args, kubeconfig } => {
            let client = kube_client(kubeconfig.as_deref()).await?;
            if !check::check(client, args).await? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn convert(file: &std::path::Path) -> Result<(), BoxError> {
    let input = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).map_err(|err| format!("{}: {err}", file.display()))?
    };
    let converted = crate::template::convert::convert_manifests(&input)?;
    print!("{}", converted.yaml);
    for problem in &converted.problems {
        eprintln!("not converted: {problem}");
    }
    if !converted.problems.is_empty() {
        std::process::exit(3);
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), BoxError> {
    telemetry::init(args.log_format, &args.log_level);
    let metrics = Arc::new(Metrics::default());
    let client = counted(kube_config(args.kubeconfig.as_deref()).await?, &metrics)?;
    ensure_crds_installed(&client, args.namespace.as_deref()).await?;
    ensure_operator_namespace(&client, &args.operator_namespace).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn(server::serve(
        args.metrics_address,
        metrics.clone(),
        ready.clone(),
    ));

    let hasher = DataHasher::load_or_create(
        client.clone(),
        &args.operator_namespace,
        &args.hash_key_secret,
    )
    .await?;
    // A standby is healthy: ready before it leads, so that a rollout can proceed with one leader.
    ready.store(true, Ordering::Relaxed);
    let leadership = if args.leader_elect {
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        let acquire = Leadership::acquire(
            client.clone(),
            &args.operator_namespace,
            &args.leader_election_lease,
            &identity,
        );
        tokio::select! {
            leadership = acquire => Some(leadership?),
            () = leader::stop_signal() => {
                http.abort();
                return Ok(());
            }
        }
    } else {
        None
    };
    metrics.leading(true);

    let aws = crate::provider::aws::load_config().await;
    let stores = Stores::new(client.clone(), aws, metrics.clone());
    let ctx = Arc::new(Context::new(
        client,
        stores,
        hasher,
        metrics.clone(),
        args.store_refresh_interval,
        args.concurrency,
        args.kept_values_budget,
    ));
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "secretsync started"
    );
    let (stop, stopping) = watch::channel(false);
    let stop_when = async {
        let lost = async {
            match &leadership {
                Some(leadership) => leadership.lost().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = leader::stop_signal() => Stop::Signal,
            () = lost => Stop::LeaseLost,
        };
        stop.send_replace(true);
        why
    };
    let controllers = tokio::spawn(controller::run(ctx, args.namespace, stopping));
    let why = stop_when.await;
    // In-flight syncs may finish, but a sync stuck on an unresponsive AWS must not outlast the pod's grace
    // period: what is cut short is synced again by the next leader. Without the lease there is no grace:
    // another replica may be writing already.
    let grace = match why {
        Stop::Signal => args.shutdown_timeout,
        Stop::LeaseLost => Duration::ZERO,
    };
    let abort = controllers.abort_handle();
    if tokio::time::timeout(grace, controllers).await.is_err() {
        tracing::warn!(
            seconds = args.shutdown_timeout.as_secs(),
            "syncs still in flight at the shutdown deadline are cut short"
        );
        abort.abort();
    }
    metrics.leading(false);
    http.abort();
    if let Stop::LeaseLost = why {
        // Our caches and watches may be behind what the new leader did: start again from scratch.
        return Err("lost the leader lease".into());
    }
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    tracing::info!("secretsync stopped");
    Ok(())
}

/// Outside a pod: the host name and process id, unique enough among replicas run by hand.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "secretsync".to_string());
    format!("{host}-{}", std::process::id())
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<Client, BoxError> {
    Ok(Client::try_from(kube_config(kubeconfig).await?)?)
}

/// A client that counts its requests in `secretsync_kube_api_requests_total`.
fn counted(config: Config, metrics: &Arc<Metrics>) -> Result<Client, BoxError> {
    let metrics = metrics.clone();
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            metrics.kube_request(request.method(), request.uri());
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

async fn kube_config(kubeconfig: Option<&std::path::Path>) -> Result<Config, BoxError> {
    let config = match kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(
                Kubeconfig::read_from(path)?,
                &KubeConfigOptions::default(),
            )
            .await?
        }
        None => Config::infer().await?,
    };
    Ok(config)
}

/// The hash key and the leader Lease live in the operator's own namespace: say how to make it, rather than
/// fail on the first write there.
async fn ensure_operator_namespace(client: &Client, namespace: &str) -> Result<(), BoxError> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "the operator's namespace {namespace:?} does not exist: create it with `kubectl create namespace {namespace}`, \
             or name another with --operator-namespace"
        )
        .into()),
        // Without permission to read namespaces, the first write there tells.
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        Err(err) => Err(crate::Error::from(err).into()),
    }
}

async fn ensure_crds_installed(client: &Client, namespace: Option<&str>) -> Result<(), BoxError> {
    let api: Api<ExternalSecret> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Err(kube::Error::Api(status)) if status.code == 404 => Err(
            "the secretsync CRDs are not installed: run `kubectl apply -f crds/` (or `secretsync crds | kubectl apply -f -`)"
                .into(),
        ),
        result => result
            .map(|_| ())
            .map_err(|err| crate::Error::from(err).into()),
    }
}

/// A size as Kubernetes writes quantities of memory: a number of bytes, or with `Ki`, `Mi` or `Gi`.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        other => return Err(format!("unknown unit {other:?}: use Ki, Mi or Gi")),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|number| number.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_read_as_kubernetes_writes_them() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("64MB").is_err());
        assert!(parse_bytes("Mi").is_err());
    }
}
