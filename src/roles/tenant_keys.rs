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

    /// Where the key with thumbprint `fp` of tenant `id` is stored, and what its seal is bound
    /// to: `{id}/{fp}`. One record per key, never shared by two creations of a tenant (cluster
    /// review: with one record per tenant id, a node away while a tenant was deleted and
    /// recreated brought the old key back as the first created, every node refused the tenant
    /// and none could restart). Keys stored before that are at `{id}` ([`Self::legacy_aad`]).
    fn place(id: &str, fp: &str) -> String {
        format!("{id}/{fp}")
    }

    fn aad(&self, place: &str) -> String {
        format!("{}/{place}", self.keyspace)
    }

    /// Stores `key` as a key of tenant `id` (insert-only; storing the same key again is no
    /// change) and returns it. Concurrent creators of one tenant each store their own key; the
    /// tenant record, inserted once, names the one that counts ([`Self::discard`] the others).
    pub async fn put_new(&self, id: &str, key: SigningKey) -> Result<Arc<SigningKey>, KeyError> {
        let place = Self::place(id, &key.verifying_key().thumbprint());
        let sealed = self
            .sealer
            .seal(self.aad(&place).as_bytes(), key.to_private_jwk().as_bytes())?;
        match self
            .store
            .compare_and_swap(self.keyspace, &place, None, Some((sealed, None)))
            .await?
        {
            crate::store::Cas::Swapped => Ok(Arc::new(key)),
            crate::store::Cas::Conflict(Some(stored)) => {
                Ok(Arc::new(self.unseal(id, &self.aad(&place), &stored)?))
            }
            crate::store::Cas::Conflict(None) => Err(KeyError::Busy {
                what: self.what,
                id: id.to_string(),
            }),
        }
    }

    /// Removes a key [`Self::put_new`] stored for a creation that did not win the tenant record
    /// (best effort: an orphan key is never used, since no record names it).
    pub async fn discard(&self, id: &str, fp: &str) {
        if let Err(e) = self.store.delete(self.keyspace, &Self::place(id, fp)).await {
            tracing::warn!(what = self.what, id, error = %e, "an unused tenant key was not removed");
        }
    }

    fn unseal(&self, id: &str, aad: &str, sealed: &[u8]) -> Result<SigningKey, KeyError> {
        let jwk = self.sealer.open(aad.as_bytes(), sealed)?;
        SigningKey::from_private_jwk(&String::from_utf8_lossy(&jwk)).map_err(|source| {
            KeyError::Unreadable {
                what: self.what,
                id: id.to_string(),
                source,
            }
        })
    }

    /// Removes every key of tenant `id` (its own records and one stored before keys had their
    /// own places).
    pub async fn remove(&self, id: &str) -> Result<(), KeyError> {
        self.store.delete(self.keyspace, id).await?;
        loop {
            let left = self
                .store
                .scan_prefix(self.keyspace, &format!("{id}/"), 64)
                .await?;
            for (place, _) in &left {
                self.store.delete(self.keyspace, place).await?;
            }
            if left.len() < 64 {
                break;
            }
        }
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
        let place = Self::place(id, fingerprint);
        let key =
            match self.store.get(self.keyspace, &place).await? {
                Some(sealed) => self.unseal(id, &self.aad(&place), &sealed)?,
                // stored before keys had their own places: under the tenant id
                None => {
                    let sealed = self.store.get(self.keyspace, id).await?.ok_or_else(|| {
                        KeyError::Missing {
                            what: self.what,
                            id: id.to_string(),
                        }
                    })?;
                    self.unseal(id, &self.aad(id), &sealed)?
                }
            };
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
    async fn each_creator_stores_its_own_key_and_the_fingerprint_is_checked_on_every_use() {
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
        // a second creator stores its own key; the tenant record names the one that counts
        let got = keys.put_new("t", b.clone()).await.unwrap();
        assert_eq!(got.verifying_key(), b.verifying_key());
        assert_eq!(
            keys.get("t", &fa).await.unwrap().verifying_key(),
            a.verifying_key()
        );
        keys.discard("t", &fb).await;
        assert!(matches!(
            keys.get("t", &fb).await,
            Err(KeyError::Missing { .. })
        ));
        // deleted and recreated with another key: the cached one is not served
        keys.remove("t").await.unwrap();
        assert!(keys.get("t", &fa).await.is_err());
        keys.put_new("t", b.clone()).await.unwrap();
        assert_eq!(
            keys.get("t", &fb).await.unwrap().verifying_key(),
            b.verifying_key()
        );
    }

    /// A key stored before keys had their own places (under the tenant id) is still used, and
    /// checked against the fingerprint; removing the tenant removes it too.
    #[tokio::test]
    async fn a_key_stored_under_the_tenant_id_is_still_read() {
        let ctx = RoleContext::for_tests(FakeClock::new(0));
        let keys = TenantKeys::new(&ctx, "test_keys", "tenant");
        let a = SigningKey::generate(KeyType::Ed25519);
        let fa = a.verifying_key().thumbprint();
        let sealed = ctx
            .sealer
            .seal(b"test_keys/t", a.to_private_jwk().as_bytes())
            .unwrap();
        ctx.store.put("test_keys", "t", sealed, None).await.unwrap();
        assert_eq!(
            keys.get("t", &fa).await.unwrap().verifying_key(),
            a.verifying_key()
        );
        let other = SigningKey::generate(KeyType::Ed25519)
            .verifying_key()
            .thumbprint();
        let e = keys.get("t", &other).await.unwrap_err().to_string();
        assert!(e.contains("not the one recorded"), "{e}");
        keys.remove("t").await.unwrap();
        assert_eq!(ctx.store.get("test_keys", "t").await.unwrap(), None);
    }

    /// A tenant deleted and recreated while a cluster node was away: the node's old key record
    /// and the new one have different places, so neither can replace the other.
    #[tokio::test]
    async fn each_key_of_a_tenant_has_its_own_record() {
        let ctx = RoleContext::for_tests(FakeClock::new(0));
        let keys = TenantKeys::new(&ctx, "test_keys", "tenant");
        let (a, b) = (
            SigningKey::generate(KeyType::Ed25519),
            SigningKey::generate(KeyType::Ed25519),
        );
        keys.put_new("t", a.clone()).await.unwrap();
        keys.remove("t").await.unwrap();
        keys.put_new("t", b.clone()).await.unwrap();
        let places: Vec<String> = ctx
            .store
            .scan_prefix("test_keys", "", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            places,
            vec![format!("t/{}", b.verifying_key().thumbprint())]
        );
    }
}
