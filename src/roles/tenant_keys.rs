//! Tenant signing keys (issuers, verifiers): generated once, sealed in the store, unsealed on first
//! use and cached. Every use checks the key against the fingerprint recorded in the tenant, so a key
//! swapped behind a tenant's back (or a stale cache entry after delete + recreate) is refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::crypto::{CryptoError, SigningKey};
use crate::error::{Code, ErrorCode};
use crate::roles::RoleContext;
use crate::store::{Sealer, Store, StoreError};

/// Why a tenant key could not be stored or used. Only [`KeyError::Busy`] is the client's to
/// retry; the rest are the server's (a store that failed, a key that no longer matches).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} `{id}` is being changed concurrently; retry")]
    Busy { what: &'static str, id: String },
    #[error("{what} `{id}` has no signing key in the store")]
    Missing { what: &'static str, id: String },
    #[error("the key of {what} `{id}` does not parse: {source}")]
    Unreadable {
        what: &'static str,
        id: String,
        source: CryptoError,
    },
    #[error("the signing key of {what} `{id}` is not the one recorded at creation (fingerprint {fingerprint}): what it signed would no longer verify. Refusing to use it; restore the original key (store import) or delete and recreate the {what}")]
    Mismatch {
        what: &'static str,
        id: String,
        fingerprint: String,
    },
}

impl ErrorCode for KeyError {
    fn error_code(&self) -> Code {
        match self {
            KeyError::Store(e) => e.error_code(),
            KeyError::Busy { .. } => Code::Conflict,
            _ => Code::Internal,
        }
    }
    fn retry_after(&self) -> Option<u64> {
        match self {
            KeyError::Store(e) => e.retry_after(),
            _ => None,
        }
    }
    fn public_detail(&self) -> String {
        match self {
            KeyError::Store(e) => e.public_detail(),
            _ => self.to_string(),
        }
    }
}

pub struct TenantKeys {
    store: Arc<dyn Store>,
    sealer: Sealer,
    keyspace: &'static str,
    /// What the tenants are called in messages ("issuer", "verifier").
    what: &'static str,
    cache: RwLock<HashMap<String, (String, Arc<SigningKey>)>>,
}

impl TenantKeys {
    pub fn new(ctx: &RoleContext, keyspace: &'static str, what: &'static str) -> Self {
        Self {
            store: ctx.store.clone(),
            sealer: ctx.sealer.clone(),
            keyspace,
            what,
            cache: RwLock::default(),
        }
    }

    fn aad(&self, id: &str) -> String {
        format!("{}/{id}", self.keyspace)
    }

    /// Stores `key` as the key of tenant `id` unless one is stored already, and returns the key
    /// that is: `key`, or the one another creator stored first (two nodes creating the same
    /// tenant at once, e.g. the default issuer when stateless nodes start together on one Redis),
    /// or one a creation that crashed before writing its tenant left behind. Every creator then
    /// records the same fingerprint, whichever wins the tenant record.
    pub async fn put_new(&self, id: &str, key: SigningKey) -> Result<Arc<SigningKey>, KeyError> {
        let sealed = self
            .sealer
            .seal(self.aad(id).as_bytes(), key.to_private_jwk().as_bytes())?;
        match self
            .store
            .compare_and_swap(self.keyspace, id, None, Some((sealed, None)))
            .await?
        {
            crate::store::Cas::Swapped => {
                self.evict(id);
                Ok(Arc::new(key))
            }
            crate::store::Cas::Conflict(Some(stored)) => Ok(Arc::new(self.unseal(id, &stored)?)),
            crate::store::Cas::Conflict(None) => Err(KeyError::Busy {
                what: self.what,
                id: id.to_string(),
            }),
        }
    }

    fn unseal(&self, id: &str, sealed: &[u8]) -> Result<SigningKey, KeyError> {
        let jwk = self.sealer.open(self.aad(id).as_bytes(), sealed)?;
        SigningKey::from_private_jwk(&String::from_utf8_lossy(&jwk)).map_err(|source| {
            KeyError::Unreadable {
                what: self.what,
                id: id.to_string(),
                source,
            }
        })
    }

    pub async fn remove(&self, id: &str) -> Result<(), KeyError> {
        self.store.delete(self.keyspace, id).await?;
        self.evict(id);
        Ok(())
    }

    fn evict(&self, id: &str) {
        if let Ok(mut m) = self.cache.write() {
            m.remove(id);
        }
    }

    /// The key of tenant `id`, which must have the thumbprint `fingerprint`.
    pub async fn get(&self, id: &str, fingerprint: &str) -> Result<Arc<SigningKey>, KeyError> {
        if let Some((fp, k)) = self.cache.read().ok().and_then(|m| m.get(id).cloned()) {
            if fp == fingerprint {
                return Ok(k);
            }
        }
        let sealed = self
            .store
            .get(self.keyspace, id)
            .await?
            .ok_or_else(|| KeyError::Missing {
                what: self.what,
                id: id.to_string(),
            })?;
        let key = self.unseal(id, &sealed)?;
        if key.verifying_key().thumbprint() != fingerprint {
            return Err(KeyError::Mismatch {
                what: self.what,
                id: id.to_string(),
                fingerprint: fingerprint.to_string(),
            });
        }
        let key = Arc::new(key);
        if let Ok(mut m) = self.cache.write() {
            m.insert(id.to_string(), (fingerprint.to_string(), key.clone()));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::crypto::KeyType;

    #[tokio::test]
    async fn first_key_stored_wins_and_fingerprint_is_checked_on_every_use() {
        let keys = TenantKeys::new(
            &RoleContext::for_tests(FakeClock::new(0)),
            "test_keys",
            "tenant",
        );
        let a = SigningKey::generate(KeyType::Ed25519);
        let b = SigningKey::generate(KeyType::P256);
        let (fa, fb) = (
            a.verifying_key().thumbprint(),
            b.verifying_key().thumbprint(),
        );
        let got = keys.put_new("t", a.clone()).await.unwrap();
        assert_eq!(got.verifying_key(), a.verifying_key());
        // a second creator gets the stored key back, not its own
        let got = keys.put_new("t", b.clone()).await.unwrap();
        assert_eq!(got.verifying_key(), a.verifying_key());
        assert_eq!(
            keys.get("t", &fa).await.unwrap().verifying_key(),
            a.verifying_key()
        );
        let e = keys.get("t", &fb).await.unwrap_err().to_string();
        assert!(e.contains("not the one recorded"), "{e}");
        // deleted and recreated with another key: the cached one is not served
        keys.remove("t").await.unwrap();
        assert!(keys.get("t", &fa).await.is_err());
        keys.put_new("t", b.clone()).await.unwrap();
        assert_eq!(
            keys.get("t", &fb).await.unwrap().verifying_key(),
            b.verifying_key()
        );
    }
}
