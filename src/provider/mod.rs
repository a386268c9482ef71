//! Where secret values come from. A provider reads one remote secret at a time; mapping a value into Secret
//! keys (`property`, decoding) is provider-independent and lives in `mapping`.

pub mod aws;
pub mod mapping;

use std::fmt;

use crate::error::Result;

/// A remote secret's value and the version it came from.
pub struct RemoteSecret {
    pub version_id: Option<String>,
    pub value: RemoteValue,
}

pub enum RemoteValue {
    Text(String),
    Binary(Vec<u8>),
}

// Values must never reach a log line, even through `{:?}`.
impl fmt::Debug for RemoteSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSecret")
            .field("version_id", &self.version_id)
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

pub trait SecretProvider: Send + Sync {
    /// Reads one secret; `key` is as written in the ExternalSecret (the provider adds any prefix).
    fn get_secret(
        &self,
        key: &str,
        version: &Version,
    ) -> impl Future<Output = Result<RemoteSecret>> + Send;

    /// Checks that the credentials work and names the identity they resolve to.
    fn validate(&self) -> impl Future<Output = Result<String>> + Send;
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
            value: RemoteValue::Text("canary-value".into()),
        };
        assert!(!format!("{secret:?}").contains("canary-value"));
    }
}
