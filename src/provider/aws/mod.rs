//! AWS Secrets Manager, and the STS calls that give a store its identity.

mod errors;
pub mod sts;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};

use super::{RemoteSecret, RemoteValue, SecretProvider, Version};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use errors::classify;

const PROVIDER: &str = "AWS/SecretsManager";

pub struct AwsSecretsManager {
    secrets: aws_sdk_secretsmanager::Client,
    sts: aws_sdk_sts::Client,
    prefix: String,
    metrics: Arc<Metrics>,
}

impl AwsSecretsManager {
    /// Clients for one store: `config` carries the store's region and identity; `prefix` is prepended to
    /// every remote key.
    pub fn new(config: &SdkConfig, prefix: Option<&str>, metrics: Arc<Metrics>) -> Self {
        AwsSecretsManager {
            secrets: aws_sdk_secretsmanager::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            prefix: prefix.unwrap_or_default().to_string(),
            metrics,
        }
    }

    fn record<T, E>(&self, call: &str, result: &std::result::Result<T, E>) {
        self.metrics.provider_call(PROVIDER, call, result.is_ok());
    }
}

impl SecretProvider for AwsSecretsManager {
    async fn get_secret(&self, key: &str, version: &Version) -> Result<RemoteSecret> {
        let request = self
            .secrets
            .get_secret_value()
            .secret_id(format!("{}{key}", self.prefix));
        let request = match version {
            Version::Stage(stage) => request.version_stage(stage),
            Version::Id(id) => request.version_id(id),
        };
        let result = request.send().await;
        self.record("GetSecretValue", &result);
        let label = match version {
            Version::Stage(stage) if stage == Version::CURRENT => key.to_string(),
            other => format!("{key}@{other}"),
        };
        let output = result.map_err(|err| classify("GetSecretValue", Some(&label), err))?;
        let value = match (output.secret_string, output.secret_binary) {
            (Some(text), _) => RemoteValue::Text(text),
            (None, Some(blob)) => RemoteValue::Binary(blob.into_inner()),
            (None, None) => {
                return Err(Error::InvalidRemoteValue {
                    key: key.to_string(),
                    problem: "the version holds no value".into(),
                });
            }
        };
        Ok(RemoteSecret {
            version_id: output.version_id,
            value,
        })
    }

    async fn get_tags(&self, key: &str) -> Result<BTreeMap<String, String>> {
        let result = self
            .secrets
            .describe_secret()
            .secret_id(format!("{}{key}", self.prefix))
            .send()
            .await;
        self.record("DescribeSecret", &result);
        let output = result.map_err(|err| classify("DescribeSecret", Some(key), err))?;
        Ok(tag_map(output.tags()))
    }

    async fn list_names(
        &self,
        path: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        let name_prefix = format!("{}{}", self.prefix, path.unwrap_or_default());
        let mut filters = Vec::new();
        if !name_prefix.is_empty() {
            filters.push(filter(FilterNameStringType::Name, name_prefix.clone()));
        }
        // The service matches tag keys and values independently; pairs are checked below.
        for (key, value) in tags {
            filters.push(filter(FilterNameStringType::TagKey, key.clone()));
            filters.push(filter(FilterNameStringType::TagValue, value.clone()));
        }
        let mut names = Vec::new();
        let mut next_token = None;
        loop {
            let result = self
                .secrets
                .list_secrets()
                .set_filters(Some(filters.clone()))
                .set_next_token(next_token)
                .max_results(100)
                .send()
                .await;
            self.record("ListSecrets", &result);
            let page = result.map_err(|err| classify("ListSecrets", None, err))?;
            for entry in page.secret_list() {
                let secret_tags = tag_map(entry.tags());
                let tagged = tags.iter().all(|(k, v)| secret_tags.get(k) == Some(v));
                // The name filter matches words anywhere in the name; only a true prefix counts.
                let name = entry
                    .name()
                    .and_then(|n| n.strip_prefix(&name_prefix).map(|_| n));
                if let (true, Some(name)) = (tagged, name) {
                    names.push(name[self.prefix.len()..].to_string());
                }
            }
            next_token = page.next_token;
            if next_token.is_none() {
                break;
            }
        }
        Ok(names)
    }

    async fn validate(&self) -> Result<String> {
        sts::caller_identity(&self.sts, &self.metrics).await
    }
}

fn filter(key: FilterNameStringType, value: String) -> Filter {
    Filter::builder().key(key).values(value).build()
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
        .collect()
}
