//! The wallet engine: the service struct, its constructor and what the protocol steps share
//! (sealing, key loading, the tenant context). The steps themselves are one file each:
//! [`super::access`] (who may touch which wallet), [`super::accounts`], [`super::wallets`],
//! [`super::keys`], [`super::credentials`], [`super::exchange`]. Everything touching one wallet
//! runs under a tenant session from the coordinator, opened through a capability
//! ([`super::access::Opened`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::error::{OrInternal, OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::KeyRecord;
use crate::config::WalletConfig;
use crate::crypto::SigningKey;
use crate::roles::RoleContext;
use crate::tenancy::{Coordinator, CoordinatorConfig, TenantSession};

/// An opened wallet: its keys, unsealed once and shared by concurrent sessions.
pub struct WalletContext {
    pub wallet: String,
    pub keys: HashMap<String, Arc<SigningKey>>,
}

pub type WalletSession = TenantSession<WalletContext>;

pub struct WalletService {
    pub(crate) ctx: RoleContext,
    pub(super) cfg: WalletConfig,
    pub coordinator: Arc<Coordinator<WalletContext>>,
    /// Makes and checks login device tokens.
    pub(super) devices: super::devices::DeviceKey,
}

impl WalletService {
    pub fn new(ctx: RoleContext, cfg: WalletConfig) -> Self {
        let coordinator = CoordinatorConfig {
            max_open_sessions: cfg.max_open_sessions,
            max_sessions_per_tenant: cfg.max_sessions_per_tenant,
            acquire_timeout: Duration::from_millis(cfg.acquire_timeout_ms),
            ..CoordinatorConfig::default()
        };
        Self {
            coordinator: Coordinator::new(coordinator),
            devices: super::devices::DeviceKey::new(&ctx.sealer),
            ctx,
            cfg,
        }
    }

    pub(super) fn now(&self) -> i64 {
        self.ctx.clock.now_secs()
    }

    /// Called right after writing the wallet's content record `keyspace`/`key` (a key, DID,
    /// credential or history entry): if the wallet has been deleted meanwhile — its access was
    /// checked before the delete, the write landed after the delete's sweeps — the write is
    /// taken back and the answer is 404. `delete_wallet` deletes the record, then sweeps the
    /// contents: a write is either before that sweep (swept) or sees the record gone here, so a
    /// deleted wallet leaves no sealed key or credential behind. Read at the primary.
    pub(super) async fn unless_deleted(
        &self,
        wallet: &str,
        keyspace: &'static str,
        key: &str,
    ) -> WalletResult<()> {
        let store = &self.ctx.store;
        if store.get_settled(ks::WALLETS, wallet).await?.is_some() {
            return Ok(());
        }
        store.delete(keyspace, key).await?;
        Err(super::error::WalletError::not_found("no such wallet"))
    }

    /// Seals `data` with the node's master key, bound to `aad` (the record's place).
    pub(super) fn seal(&self, aad: &str, data: &[u8]) -> WalletResult<String> {
        seal(&self.ctx, aad, data)
    }

    pub(super) fn unseal(
        &self,
        aad: &str,
        sealed: &str,
    ) -> WalletResult<zeroize::Zeroizing<Vec<u8>>> {
        unseal(&self.ctx, aad, sealed)
    }

    /// A wallet's signing key: from the open session when it is cached there, else unsealed.
    /// Either way only while its record exists: a tenant context cached on this node (open
    /// sessions, or idle until evicted) still holds a key deleted meanwhile, perhaps on another
    /// node, and a deleted key must sign nothing more. The record is read, not unsealed again:
    /// a key's id is its thumbprint, so the record under that id is that key.
    pub(super) async fn signing_key(
        &self,
        s: &WalletSession,
        key_id: &str,
    ) -> WalletResult<Arc<SigningKey>> {
        Ok(match s.keys.get(key_id) {
            Some(k) => {
                let place = format!("{}/{key_id}", s.wallet);
                if self.ctx.store.get(ks::KEYS, &place).await?.is_none() {
                    return Err(WalletError::not_found(format!("no key `{key_id}`")));
                }
                k.clone()
            }
            None => Arc::new(load_key(&self.ctx, &s.wallet, key_id).await?),
        })
    }
}

fn seal(ctx: &RoleContext, aad: &str, data: &[u8]) -> WalletResult<String> {
    let sealed = ctx.sealer.seal(aad.as_bytes(), data).or_internal()?;
    Ok(crate::crypto::b64url(sealed))
}

fn unseal(ctx: &RoleContext, aad: &str, sealed: &str) -> WalletResult<zeroize::Zeroizing<Vec<u8>>> {
    let raw = crate::crypto::b64url_decode(sealed).or_internal()?;
    ctx.sealer.open(aad.as_bytes(), &raw).or_internal()
}

/// Where a wallet's key is stored, and what its sealing is bound to.
pub(super) fn key_aad(wallet: &str, id: &str) -> String {
    format!("{}/{wallet}/{id}", ks::KEYS)
}

pub(super) fn cred_aad(wallet: &str, id: &str) -> String {
    format!("{}/{wallet}/{id}", ks::CREDS)
}

/// What a credential's sealed device key (mso_mdoc) is bound to.
pub(super) fn device_key_aad(wallet: &str, id: &str) -> String {
    format!("{}/{wallet}/{id}/device-key", ks::CREDS)
}

async fn load_key(ctx: &RoleContext, wallet: &str, id: &str) -> WalletResult<SigningKey> {
    let rec: KeyRecord = ctx
        .store
        .get_json(ks::KEYS, &format!("{wallet}/{id}"))
        .await?
        .or_not_found(format!("no key `{id}`"))?;
    let jwk = unseal(ctx, &key_aad(wallet, id), &rec.sealed)?;
    SigningKey::from_private_jwk(&String::from_utf8_lossy(&jwk)).or_internal()
}

/// Opening a tenant: unseal every key of the wallet once.
pub(super) async fn load_context(ctx: &RoleContext, wallet: &str) -> WalletResult<WalletContext> {
    let mut keys = HashMap::new();
    for (_, rec) in ctx
        .store
        .scan_json::<KeyRecord>(ks::KEYS, &format!("{wallet}/"), 10_000)
        .await?
    {
        keys.insert(
            rec.id.clone(),
            Arc::new(load_key(ctx, wallet, &rec.id).await?),
        );
    }
    Ok(WalletContext {
        wallet: wallet.to_string(),
        keys,
    })
}
