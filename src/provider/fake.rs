//! The `fake` provider: fixed values from the store's spec, for demos and tests. It has no tags, so
//! `metadataPolicy: Fetch` reads `{}` and a `find` by tags matches nothing.

use std::collections::BTreeMap;

use super::{RemoteSecret, RemoteValue, SecretProvider, Version};
use crate::api;
use crate::error::{Error, Result};

pub struct FakeProvider {
    data: Vec<api::FakeProviderData>,
}

impl FakeProvider {
    pub fn new(spec: &api::FakeProvider) -> Self {
        FakeProvider {
            data: spec.data.clone(),
        }
    }

    fn find(&self, key: &str, version: &Version) -> Option<&api::FakeProviderData> {
        let current = Version::parse(None);
        self.data.iter().find(|entry| {
            entry.key == key
                && match &entry.version {
                    None => *version == current,
                    Some(v) => Version::parse(Some(v)) == *version,
                }
        })
    }

    fn exists(&self, key: &str) -> Result<()> {
        match self.data.iter().any(|entry| entry.key == key) {
            true => Ok(()),
            false => Err(not_found(key, "no such key in the fake store")),
        }
    }
}

fn not_found(key: &str, detail: &str) -> Error {
    Error::RemoteKeyNotFound {
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

impl SecretProvider for FakeProvider {
    async fn get_secret(&self, key: &str, version: &Version) -> Result<RemoteSecret> {
        let entry = self.find(key, version).ok_or_else(|| {
            not_found(
                key,
                &format!("no value for version {version} in the fake store"),
            )
        })?;
        Ok(RemoteSecret {
            version_id: entry.version.clone(),
            stages: Vec::new(),
            value: RemoteValue::Text(entry.value.clone()),
            read_at: None,
            replica: None,
        })
    }

    async fn get_current_batch(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        let current = Version::parse(None);
        let mut read = Vec::new();
        for key in keys {
            read.push((key.clone(), self.get_secret(key, &current).await));
        }
        Ok(read)
    }

    async fn get_tags(&self, key: &str) -> Result<BTreeMap<String, String>> {
        self.exists(key).map(|()| BTreeMap::new())
    }

    async fn list_names(
        &self,
        path: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        if !tags.is_empty() {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = self
            .data
            .iter()
            .filter(|entry| path.is_none_or(|p| entry.key.starts_with(p)))
            .map(|entry| entry.key.clone())
            .collect();
        names.dedup();
        Ok(names)
    }

    async fn validate(&self) -> Result<String> {
        Ok("the built-in fake provider".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> FakeProvider {
        let spec: api::FakeProvider = serde_json::from_value(serde_json::json!({"data": [
            {"key": "app/db", "value": "current"},
            {"key": "app/db", "value": "old", "version": "AWSPREVIOUS"},
            {"key": "other", "value": "x"},
        ]}))
        .unwrap();
        FakeProvider::new(&spec)
    }

    #[tokio::test]
    async fn versions_and_listing() {
        let fake = fake();
        let read = |v: Option<&str>| {
            let version = Version::parse(v);
            let fake = &fake;
            async move { fake.get_secret("app/db", &version).await }
        };
        assert!(matches!(read(None).await.unwrap().value, RemoteValue::Text(v) if v == "current"));
        assert!(
            matches!(read(Some("AWSPREVIOUS")).await.unwrap().value, RemoteValue::Text(v) if v == "old")
        );
        assert_eq!(
            read(Some("custom")).await.unwrap_err().reason(),
            "RemoteKeyNotFound"
        );
        assert_eq!(
            fake.list_names(Some("app/"), &BTreeMap::new())
                .await
                .unwrap(),
            ["app/db"]
        );
        let tags = BTreeMap::from([("team".to_string(), "a".to_string())]);
        assert!(fake.list_names(None, &tags).await.unwrap().is_empty());
        assert!(fake.get_tags("other").await.unwrap().is_empty());
        assert!(fake.get_tags("missing").await.is_err());
    }
}
