//! Where secret values come from. A provider reads remote secrets, their tags, and lists names; mapping a
//! value into Secret keys (`property`, decoding) is provider-independent and lives in `crate::mapping`.

pub mod aws;
pub mod fake;

use std::collections::BTreeMap;

use std::fmt;

use std::time::Instant;

use crate::error::Result;

/// A remote secret's value, the version it came from and that version's stages (labels) when read.
#[derive(Clone)]
pub struct RemoteSecret {
    pub version_id: Option<String>,
    pub stages: Vec<String>,
    pub value: RemoteValue,
    /// When the read started, if before the sync asked (a value read ahead for a first sync); otherwise
    /// the read is at least as recent as the sync.
    pub read_at: Option<Instant>,
    /// The failover region that answered, while the primary region fails; none from the primary.
    pub replica: Option<String>,
}

impl RemoteSecret {
    /// What holding it costs, roughly: its value, VersionId and stages.
    pub fn bytes(&self) -> usize {
        let value = match &self.value {
            RemoteValue::Text(text) => text.len(),
            RemoteValue::Binary(bytes) => bytes.len(),
        };
        value
            + self.version_id.as_ref().map_or(0, String::len)
            + self.stages.iter().map(String::len).sum::<usize>()
    }
}

#[derive(Clone)]
pub enum RemoteValue {
    Text(String),
    Binary(Vec<u8>),
}

// Values must never reach a log line, even through `{:?}`.
impl fmt::Debug for RemoteSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSecret")
            .field("version_id", &self.version_id)
            .field("stages", &self.stages)
            .field("replica", &self.replica)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Which version of a remote secret to read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    Stage(String),
    Id(String),
}

impl Version {
    pub const CURRENT: &'static str = "AWSCURRENT";

    /// ESO's `remoteRef.version`: `uuid/<id>` is a VersionId, anything else a stage; unset is AWSCURRENT.
    pub fn parse(version: Option<&str>) -> Version {
        match version {
            None | Some("") => Version::Stage(Self::CURRENT.to_string()),
            Some(v) => match v.strip_prefix("uuid/") {
                Some(id) => Version::Id(id.to_string()),
                None => Version::Stage(v.to_string()),
            },
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Stage(stage) => f.write_str(stage),
            Version::Id(id) => write!(f, "uuid/{id}"),
        }
    }
}

pub trait SecretProvider: Send + Sync {
    /// Reads one secret; `key` is as written in the ExternalSecret (the provider adds any prefix).
    fn get_secret(
        &self,
        key: &str,
        version: &Version,
    ) -> impl Future<Output = Result<RemoteSecret>> + Send;

    /// Reads the current version (AWSCURRENT) of several secrets, in as few calls as the provider allows,
    /// with each secret's own result.
    fn get_current_batch(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Result<RemoteSecret>)>>> + Send;

    /// The secret's tags (`metadataPolicy: Fetch`).
    fn get_tags(&self, key: &str) -> impl Future<Output = Result<BTreeMap<String, String>>> + Send;

    /// Names (as an ExternalSecret would write them) of the secrets that start with `path` and carry every
    /// one of `tags`; secrets scheduled for deletion are left out.
    fn list_names(
        &self,
        path: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Checks that the credentials work and names the identity they resolve to.
    fn validate(&self) -> impl Future<Output = Result<String>> + Send;
}

/// The provider a store configures.
pub enum Provider {
    // Boxed: the AWS clients are large next to the fake provider.
    Aws(Box<aws::AwsSecretsManager>),
    Fake(fake::FakeProvider),
}

impl SecretProvider for Provider {
    async fn get_secret(&self, key: &str, version: &Version) -> Result<RemoteSecret> {
        match self {
            Provider::Aws(aws) => aws.get_secret(key, version).await,
            Provider::Fake(fake) => fake.get_secret(key, version).await,
        }
    }

    async fn get_current_batch(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        match self {
            Provider::Aws(aws) => aws.get_current_batch(keys).await,
            Provider::Fake(fake) => fake.get_current_batch(keys).await,
        }
    }

    async fn get_tags(&self, key: &str) -> Result<BTreeMap<String, String>> {
        match self {
            Provider::Aws(aws) => aws.get_tags(key).await,
            Provider::Fake(fake) => fake.get_tags(key).await,
        }
    }

    async fn list_names(
        &self,
        path: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        match self {
            Provider::Aws(aws) => aws.list_names(path, tags).await,
            Provider::Fake(fake) => fake.list_names(path, tags).await,
        }
    }

    async fn validate(&self) -> Result<String> {
        match self {
            Provider::Aws(aws) => aws.validate().await,
            Provider::Fake(fake) => fake.validate().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_forms() {
        assert_eq!(Version::parse(None), Version::Stage("AWSCURRENT".into()));
        assert_eq!(
            Version::parse(Some("AWSPREVIOUS")),
            Version::Stage("AWSPREVIOUS".into())
        );
        assert_eq!(Version::parse(Some("uuid/abc")), Version::Id("abc".into()));
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = RemoteSecret {
            version_id: Some("v1".into()),
            stages: Vec::new(),
            value: RemoteValue::Text("canary-value".into()),
            read_at: None,
            replica: None,
        };
        assert!(!format!("{secret:?}").contains("canary-value"));
    }
}
