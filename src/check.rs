//! `secretsync check`: resolve a store's credentials exactly as the operator would and say who they are,
//! in which region, and whether a key can be read. For debugging IRSA and role chains; it never prints a
//! value or a credential.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::api::{ClusterSecretStore, SecretStore, SecretStoreSpec, StoreKind};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::provider::{Provider, SecretProvider, Version};
use crate::store::{StoreScope, Stores};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The store's name, read from the cluster (or give --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub name: Option<String>,

    /// A YAML file holding the store, as it would be applied.
    #[arg(long)]
    pub file: Option<PathBuf>,

    #[arg(long, value_enum, default_value = "SecretStore")]
    pub kind: KindArg,

    /// A SecretStore's namespace; for a ClusterSecretStore, the namespace asking for it (its conditions
    /// and referent credentials apply). Default: the kubeconfig's namespace.
    #[arg(long, short)]
    pub namespace: Option<String>,

    /// A remote key to try reading (GetSecretValue; the value is not shown).
    #[arg(long)]
    pub key: Option<String>,

    /// The version to read: a stage, or `uuid/<VersionId>`.
    #[arg(long, requires = "key")]
    pub version: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
#[value(rename_all = "PascalCase")]
pub enum KindArg {
    SecretStore,
    ClusterSecretStore,
}

/// Prints the report; returns whether every check passed.
pub async fn check(client: Client, args: CheckArgs) -> Result<bool, BoxError> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let LoadedStore {
        kind,
        name,
        spec,
        cluster_store,
    } = load(&client, &args, &namespace).await?;
    let aws = crate::provider::aws::load_config().await;
    let stores = Stores::new(client, aws, Arc::new(Metrics::default()));
    let scope = StoreScope {
        kind,
        name: &name,
        store_namespace: (kind == StoreKind::SecretStore).then_some(namespace.as_str()),
        requester_namespace: Some(&namespace),
    };
    match kind {
        StoreKind::SecretStore => println!("store: SecretStore {namespace}/{name}"),
        StoreKind::ClusterSecretStore => {
            println!("store: ClusterSecretStore {name}, asked from namespace {namespace}")
        }
    }
    if let Some(store) = cluster_store
        && let Err(err) = stores.check_conditions(&store, &namespace).await
    {
        report("conditions", &err);
        return Ok(false);
    }
    let provider = match (&spec.provider.aws, &spec.provider.fake) {
        (Some(aws), None) => {
            let plan = match stores.plan(aws, &scope).await {
                Ok(plan) => plan,
                Err(err) => {
                    report("credentials", &err);
                    return Ok(false);
                }
            };
            println!("region: {}", plan.region);
            println!("credentials: {plan}");
            match stores.aws_provider(aws, &plan, &scope).await {
                Ok(aws) => Provider::Aws(Box::new(aws)),
                Err(err) => {
                    report("identity", &err);
                    return Ok(false);
                }
            }
        }
        _ => {
            println!("provider: fake");
            match stores.provider(&spec, &scope).await {
                Ok(provider) => provider,
                Err(err) => {
                    report("identity", &err);
                    return Ok(false);
                }
            }
        }
    };
    let mut passed = match provider.validate().await {
        Ok(identity) => {
            println!("identity: {identity}");
            true
        }
        Err(err) => {
            report("identity", &err);
            false
        }
    };
    if let Some(key) = &args.key {
        match provider
            .get_secret(key, &Version::parse(args.version.as_deref()))
            .await
        {
            Ok(secret) => println!(
                "key {key}: readable (version {})",
                secret.version_id.as_deref().unwrap_or("unknown")
            ),
            Err(err) => {
                report(&format!("key {key}"), &err);
                passed = false;
            }
        }
    }
    Ok(passed)
}

fn report(what: &str, err: &Error) {
    println!("{what}: FAILED {}: {err}", err.reason());
}

struct LoadedStore {
    kind: StoreKind,
    name: String,
    spec: SecretStoreSpec,
    /// A ClusterSecretStore whole, for its conditions.
    cluster_store: Option<ClusterSecretStore>,
}

impl From<SecretStore> for LoadedStore {
    fn from(store: SecretStore) -> Self {
        LoadedStore {
            kind: StoreKind::SecretStore,
            name: store.name_any(),
            spec: store.spec,
            cluster_store: None,
        }
    }
}

impl From<ClusterSecretStore> for LoadedStore {
    fn from(store: ClusterSecretStore) -> Self {
        LoadedStore {
            kind: StoreKind::ClusterSecretStore,
            name: store.name_any(),
            spec: store.spec.store.clone(),
            cluster_store: Some(store),
        }
    }
}

async fn load(client: &Client, args: &CheckArgs, namespace: &str) -> Result<LoadedStore, BoxError> {
    if let Some(file) = &args.file {
        return load_file(file);
    }
    let name = args.name.clone().expect("clap requires a name or a file");
    Ok(match args.kind {
        KindArg::SecretStore => Api::<SecretStore>::namespaced(client.clone(), namespace)
            .get(&name)
            .await
            .map_err(|err| format!("SecretStore {namespace}/{name}: {err}"))?
            .into(),
        KindArg::ClusterSecretStore => Api::<ClusterSecretStore>::all(client.clone())
            .get(&name)
            .await
            .map_err(|err| format!("ClusterSecretStore {name}: {err}"))?
            .into(),
    })
}

fn load_file(file: &Path) -> Result<LoadedStore, BoxError> {
    let text = std::fs::read_to_string(file).map_err(|err| format!("{}: {err}", file.display()))?;
    let value: serde_json::Value = serde_saphyr::from_str(&text)?;
    Ok(match value["kind"].as_str() {
        Some("SecretStore") => serde_json::from_value::<SecretStore>(value)?.into(),
        Some("ClusterSecretStore") => serde_json::from_value::<ClusterSecretStore>(value)?.into(),
        other => {
            return Err(format!(
                "{}: expected a SecretStore or ClusterSecretStore, found kind {other:?}",
                file.display()
            )
            .into());
        }
    })
}
