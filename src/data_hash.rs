//! The `secretsync.io/data-hash` annotation: an HMAC of the Secret's data, keyed by a per-installation key.
//! An unkeyed hash of a short password, readable by anyone who may read metadata, could be brute-forced.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use rand::RngCore;
use sha2::Sha256;

use crate::error::Result;

const KEY_FIELD: &str = "key";

pub struct DataHasher {
    key: Vec<u8>,
}

impl DataHasher {
    pub fn new(key: Vec<u8>) -> Self {
        DataHasher { key }
    }

    /// Reads the installation key from `namespace/name`, creating it with 32 random bytes the first time.
    pub async fn load_or_create(client: Client, namespace: &str, name: &str) -> Result<Self> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        if let Some(key) = Self::read(&api, name).await? {
            return Ok(Self::new(key));
        }
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_string(),
                        "secretsync".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([(KEY_FIELD.to_string(), ByteString(key.clone()))].into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Self::new(key)),
            // Another replica created it first: use theirs.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Self::new(Self::read(&api, name).await?.unwrap_or(key)))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn read(api: &Api<Secret>, name: &str) -> Result<Option<Vec<u8>>> {
        let secret = api.get_opt(name).await?;
        Ok(secret
            .and_then(|s| s.data)
            .and_then(|mut data| data.remove(KEY_FIELD))
            .map(|b| b.0)
            .filter(|key| !key.is_empty()))
    }

    /// Hex HMAC-SHA256 over the keys and values in order, each length-prefixed so that no two maps collide.
    pub fn hash(&self, data: &BTreeMap<String, ByteString>) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for (key, value) in data {
            mac.update(&(key.len() as u64).to_be_bytes());
            mac.update(key.as_bytes());
            mac.update(&(value.0.len() as u64).to_be_bytes());
            mac.update(&value.0);
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn depends_on_key_and_data() {
        let a = DataHasher::new(b"key-a".to_vec());
        let b = DataHasher::new(b"key-b".to_vec());
        let d = data(&[("user", "admin"), ("password", "hunter2")]);
        assert_eq!(a.hash(&d), a.hash(&d.clone()));
        assert_ne!(a.hash(&d), b.hash(&d));
        assert_ne!(
            a.hash(&d),
            a.hash(&data(&[("user", "admin"), ("password", "hunter3")]))
        );
        // Length prefixes keep a shifted boundary from producing the same input.
        assert_ne!(a.hash(&data(&[("ab", "c")])), a.hash(&data(&[("a", "bc")])));
        assert_eq!(a.hash(&d).len(), 64);
    }
}
