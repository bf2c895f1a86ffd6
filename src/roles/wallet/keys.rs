//! Keys and DIDs of a wallet: generate / import / delete keys (the private part sealed at rest),
//! did:key / did:jwk / did:web on them, the default DID, and the public did:web documents.

use serde_json::Value;

use super::access::{Owner, Viewer};
use super::error::{OrInternal, OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::*;
use super::service::{key_aad, WalletService};
use crate::crypto::{did, sha256_hex, KeyType, SigningKey, VerifyingKey};

/// The most keys a wallet holds: a change of its keys has every one of them unsealed and parsed
/// again on the next use (attacker review: generating keys without end cost work quadratic in
/// their number, an hour of CPU for 10,000).
pub const MAX_KEYS: usize = 100;

impl WalletService {
    async fn store_key(&self, owner: &Owner, key: &SigningKey) -> WalletResult<KeyRecord> {
        let wallet = owner.id();
        let held = self
            .ctx
            .store
            .count_prefix(ks::KEYS, &format!("{wallet}/"), MAX_KEYS)
            .await?;
        if held >= MAX_KEYS {
            return Err(WalletError::conflict(format!(
                "this wallet holds {MAX_KEYS} keys, the most it can: delete some first"
            )));
        }
        let id = key.verifying_key().thumbprint();
        let rec = KeyRecord {
            id: id.clone(),
            key_type: key.key_type(),
            public_jwk: key.verifying_key().to_jwk(),
            sealed: self.seal(&key_aad(wallet, &id), key.to_private_jwk().as_bytes())?,
            created_at: self.now(),
        };
        if !self
            .ctx
            .store
            .insert_new_json(ks::KEYS, &format!("{wallet}/{id}"), &rec, None)
            .await?
        {
            return Err(WalletError::conflict("this key is already in the wallet"));
        }
        self.unless_deleted(wallet, ks::KEYS, &format!("{wallet}/{id}"))
            .await?;
        self.coordinator.invalidate(wallet);
        Ok(rec)
    }

    pub async fn generate_key(&self, owner: &Owner, kt: KeyType) -> WalletResult<KeyView> {
        let rec = self.store_key(owner, &SigningKey::generate(kt)).await?;
        Ok(key_view(&rec))
    }

    /// Imports a private JWK (OKP Ed25519, EC P-256 or secp256k1 with `d`).
    pub async fn import_key(&self, owner: &Owner, jwk: &Value) -> WalletResult<KeyView> {
        let key = SigningKey::from_private_jwk(&jwk.to_string())
            .map_err(|e| WalletError::invalid(format!("jwk: {e}")))?;
        let rec = self.store_key(owner, &key).await?;
        Ok(key_view(&rec))
    }

    pub async fn list_keys(&self, viewer: &Viewer) -> WalletResult<Vec<KeyView>> {
        Ok(self
            .ctx
            .store
            .scan_json::<KeyRecord>(ks::KEYS, &format!("{}/", viewer.id()), 10_000)
            .await?
            .iter()
            .map(|(_, k)| key_view(k))
            .collect())
    }

    pub async fn get_key(&self, viewer: &Viewer, id: &str) -> WalletResult<KeyView> {
        Ok(key_view(&self.key_record(viewer.id(), id).await?))
    }

    /// Deletes a key that no DID uses (409 while one does).
    pub async fn delete_key(&self, owner: &Owner, id: &str) -> WalletResult<()> {
        let dids = self.list_dids(owner).await?;
        if dids.iter().any(|d| d.key_id == id) {
            return Err(WalletError::conflict(
                "a DID uses this key; delete the DID first",
            ));
        }
        if !self
            .ctx
            .store
            .delete(ks::KEYS, &format!("{}/{id}", owner.id()))
            .await?
        {
            return Err(WalletError::not_found(format!("no key `{id}`")));
        }
        self.coordinator.invalidate(owner.id());
        Ok(())
    }

    /// A DID on an existing key, or on a new Ed25519 key; the wallet's first DID is its default.
    pub async fn create_did(&self, owner: &Owner, req: CreateDid) -> WalletResult<DidRecord> {
        let wallet = owner.id();
        let method = req.method.unwrap_or(DidMethod::Key);
        let krec = match req.key_id {
            Some(k) => self.key_record(wallet, &k).await?,
            None => {
                self.store_key(owner, &SigningKey::generate(KeyType::Ed25519))
                    .await?
            }
        };
        let vk = VerifyingKey::from_jwk(&krec.public_jwk).or_internal()?;
        let did = match method {
            DidMethod::Key => did::did_key(&vk),
            DidMethod::Jwk => did::did_jwk(&vk),
            DidMethod::Web => did::did_web(&self.ctx.public_url, &did_web_path(wallet, &krec.id)),
        };
        let first = self.list_dids(owner).await?.is_empty();
        let rec = DidRecord {
            verification_method: did::verification_method(&did),
            did: did.clone(),
            method,
            key_id: krec.id,
            created_at: self.now(),
            is_default: false,
        };
        if !self
            .ctx
            .store
            .insert_new_json(ks::DIDS, &did_key(wallet, &did), &rec, None)
            .await?
        {
            return Err(WalletError::conflict("this DID exists in the wallet"));
        }
        self.unless_deleted(wallet, ks::DIDS, &did_key(wallet, &did))
            .await?;
        if first {
            self.set_default_did(owner, &did).await?;
        }
        Ok(DidRecord {
            is_default: first,
            ..rec
        })
    }

    pub async fn list_dids(&self, viewer: &Viewer) -> WalletResult<Vec<DidRecord>> {
        let wallet = viewer.id();
        let default = self
            .ctx
            .store
            .get_json::<Wallet>(ks::WALLETS, wallet)
            .await?
            .and_then(|w| w.default_did);
        Ok(self
            .ctx
            .store
            .scan_json::<DidRecord>(ks::DIDS, &format!("{wallet}/"), 10_000)
            .await?
            .into_iter()
            .map(|(_, mut d)| {
                d.is_default = default.as_deref() == Some(d.did.as_str());
                d
            })
            .collect())
    }

    pub async fn set_default_did(&self, owner: &Owner, did: &str) -> WalletResult<()> {
        let wallet = owner.id();
        self.ctx
            .store
            .get(ks::DIDS, &did_key(wallet, did))
            .await?
            .or_not_found("no such DID in this wallet")?;
        self.ctx
            .store
            .update_json::<WalletRecord, WalletError, _>(ks::WALLETS, wallet, None, |mut r| {
                r.wallet.default_did = Some(did.to_string());
                Ok(r)
            })
            .await?;
        Ok(())
    }

    pub async fn delete_did(&self, owner: &Owner, did: &str) -> WalletResult<()> {
        let wallet = owner.id();
        if !self
            .ctx
            .store
            .delete(ks::DIDS, &did_key(wallet, did))
            .await?
        {
            return Err(WalletError::not_found("no such DID in this wallet"));
        }
        self.ctx
            .store
            .update_json::<WalletRecord, WalletError, _>(ks::WALLETS, wallet, None, |mut r| {
                if r.wallet.default_did.as_deref() == Some(did) {
                    r.wallet.default_did = None;
                }
                Ok(r)
            })
            .await?;
        Ok(())
    }

    /// The DID document of a wallet's did:web. Public by design (anyone resolving the DID
    /// fetches it), so it takes the wallet id from the URL and no capability.
    pub async fn did_web_document(&self, wallet: &str, key_id: &str) -> WalletResult<Value> {
        let did = did::did_web(&self.ctx.public_url, &did_web_path(wallet, key_id));
        let rec: DidRecord = self
            .ctx
            .store
            .get_json(ks::DIDS, &did_key(wallet, &did))
            .await?
            .or_not_found("no such DID")?;
        let krec: KeyRecord = self
            .ctx
            .store
            .get_json(ks::KEYS, &format!("{wallet}/{}", rec.key_id))
            .await?
            .or_not_found("no such key")?;
        let vk = VerifyingKey::from_jwk(&krec.public_jwk).or_internal()?;
        Ok(did::did_web_document(&did, &vk))
    }

    async fn key_record(&self, wallet: &str, id: &str) -> WalletResult<KeyRecord> {
        self.ctx
            .store
            .get_json(ks::KEYS, &format!("{wallet}/{id}"))
            .await?
            .or_not_found(format!("no key `{id}`"))
    }
}

/// The store key of a wallet's DID record.
fn did_key(wallet: &str, did: &str) -> String {
    format!("{wallet}/{}", sha256_hex(did))
}

/// Where a wallet's did:web document is served (`/wallets/<w>/dids/<key>/did.json`).
fn did_web_path(wallet: &str, key_id: &str) -> String {
    format!("wallets/{wallet}/dids/{key_id}")
}

fn key_view(k: &KeyRecord) -> KeyView {
    KeyView {
        id: k.id.clone(),
        key_type: k.key_type,
        public_jwk: k.public_jwk.clone(),
        created_at: k.created_at,
    }
}
