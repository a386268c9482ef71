//! The `secretsync.io/data-hash` annotation: an HMAC of the Secret's data, keyed by a per-installation key.
//! An unkeyed hash of a short password, readable by anyone who may read metadata, could be brute-forced.

use std::collections::BTreeMap;
use std::fmt;

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
        self.hash_bytes(data).to_string()
    }

    /// The same hash, as bytes.
    pub fn hash_bytes(&self, data: &BTreeMap<String, ByteString>) -> HashBytes {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for (key, value) in data {
            mac.update(&(key.len() as u64).to_be_bytes());
            mac.update(key.as_bytes());
            mac.update(&(value.0.len() as u64).to_be_bytes());
            mac.update(&value.0);
        }
        HashBytes(mac.finalize().into_bytes().into())
    }
}

/// A hash kept for every Secret we manage: 32 bytes in place rather than 64 hex digits on the heap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashBytes([u8; 32]);

impl HashBytes {
    /// Reads the lowercase hex that `Display` writes; anything else is not one of our hashes.
    pub fn from_hex(digits: &str) -> Option<HashBytes> {
        if digits.bytes().any(|d| d.is_ascii_uppercase()) {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).ok()?;
        Some(HashBytes(bytes))
    }
}

impl fmt::Display for HashBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 64];
        hex::encode_to_slice(self.0, &mut digits).expect("64 digits for 32 bytes");
        f.write_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for HashBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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

    #[test]
    fn bytes_read_back_from_their_hex_and_nothing_else() {
        let hash = DataHasher::new(b"key".to_vec()).hash_bytes(&data(&[("a", "b")]));
        assert_eq!(HashBytes::from_hex(&hash.to_string()), Some(hash));
        let upper = hash.to_string().to_uppercase();
        for other in ["", "ab", &upper, &format!("+{}", &hash.to_string()[1..])] {
            assert_eq!(HashBytes::from_hex(other), None, "{other:?}");
        }
    }
}
