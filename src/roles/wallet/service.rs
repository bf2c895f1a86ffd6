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
use super::model::{Account, KeyRecord};
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
    /// Keys the email index and login counters ([`WalletService::email_key`]).
    emails: crate::store::MacKey,
    /// Keys the account password hashes ([`super::passwords`]).
    pub(super) passwords: super::passwords::PasswordKey,
    /// Places for requests that read a whole wallet.
    pub(super) whole_reads: super::credentials::WholeReads,
    /// Places for exchanges with issuers and verifiers ([`super::credentials::EXCHANGES_AT_ONCE`]).
    pub(super) exchanges: super::credentials::Places,
    /// Places for credential status checks.
    pub(super) status_checks: super::credentials::Places,
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
            emails: ctx.sealer.mac_key(b"idstack wallet email v1"),
            passwords: super::passwords::PasswordKey::new(&ctx.sealer),
            whole_reads: super::credentials::Places::whole_reads(),
            exchanges: super::credentials::Places::exchanges(),
            status_checks: super::credentials::Places::status_checks(),
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

impl WalletService {
    /// What the store knows an email by (the email index, the login failure counters): a MAC
    /// under a key of this deployment, so a store reader gets no list of the users' emails.
    /// Emails an earlier release indexed are keyed by the email itself ([`Self::account_for_email`]).
    pub(super) fn email_key(&self, email: &str) -> String {
        use hmac::Mac;
        let mac = self.emails.over(&[email.as_bytes()]);
        format!("h:{}", crate::crypto::hex(&mac.finalize().into_bytes()))
    }

    /// The account registered under `email` (lowercased), if any, and whether an earlier
    /// release indexed it (by the email in clear: [`Self::seal_legacy_email`] moves it).
    pub(super) async fn account_for_email(
        &self,
        email: &str,
    ) -> WalletResult<Option<(String, bool)>> {
        let store = &self.ctx.store;
        if let Some(id) = store.get_json(ks::EMAILS, &self.email_key(email)).await? {
            return Ok(Some((id, false)));
        }
        Ok(store
            .get_json::<String>(ks::EMAILS, email)
            .await?
            .map(|id| (id, true)))
    }

    /// Moves an account an earlier release stored (email in clear in its record and as its
    /// index key) to the sealed form: the record rewritten with its email sealed, the index
    /// entry put under the email's HMAC, the clear one deleted. Done at the account's next
    /// successful login; a step that fails is done at the next one.
    pub(super) async fn seal_legacy_email(&self, id: &str, email: &str) -> WalletResult<()> {
        let store = &self.ctx.store;
        store
            .update_json::<Account, WalletError, _>(ks::ACCOUNTS, id, None, |a| {
                if a.sealed_email.is_some() || a.email.is_empty() {
                    return Ok(a);
                }
                self.stored_account(&a)
            })
            .await?;
        let key = self.email_key(email);
        match store.get_json::<String>(ks::EMAILS, &key).await? {
            Some(named) if named != id => return Ok(()),
            Some(_) => {}
            None => {
                store.insert_new_json(ks::EMAILS, &key, &id, None).await?;
            }
        }
        store.delete(ks::EMAILS, email).await?;
        Ok(())
    }

    /// `a` as the store keeps it: its email sealed to its record.
    pub(super) fn stored_account(&self, a: &Account) -> WalletResult<Account> {
        let mut stored = a.clone();
        stored.sealed_email = Some(self.seal(&account_email_aad(&a.id), a.email.as_bytes())?);
        stored.email = String::new();
        Ok(stored)
    }

    /// A stored account with its email opened.
    pub(super) fn opened_account(&self, mut a: Account) -> WalletResult<Account> {
        if let Some(sealed) = a.sealed_email.take() {
            a.email = self.open_email(&a.id, &sealed)?;
        }
        Ok(a)
    }

    fn open_email(&self, id: &str, sealed: &str) -> WalletResult<String> {
        let plain = self.unseal(&account_email_aad(id), sealed)?;
        String::from_utf8(plain.to_vec()).or_internal()
    }

    /// A stored account with its email opened; one whose email does not open (a damaged record,
    /// another master key) is shown without it, and a warning says so, rather than failing a
    /// whole list.
    pub(super) fn opened_or_unreadable(&self, mut a: Account) -> Account {
        if let Some(sealed) = a.sealed_email.take() {
            a.email = self.open_email(&a.id, &sealed).unwrap_or_else(|e| {
                tracing::warn!(account = %a.id, error = %e, "an account's email does not open");
                String::new()
            });
        }
        a
    }

    /// The account `id`, its email opened.
    pub async fn get_account(&self, id: &str) -> WalletResult<Option<Account>> {
        match self.ctx.store.get_json::<Account>(ks::ACCOUNTS, id).await? {
            Some(a) => self.opened_account(a).map(Some),
            None => Ok(None),
        }
    }
}

/// What an account's email is sealed to.
fn account_email_aad(id: &str) -> String {
    format!("{}/{id}/email", ks::ACCOUNTS)
}

/// A record kept sealed to its place (`{keyspace}/{key}`: a copy moved elsewhere does not open),
/// or, written by an earlier release, the plain value.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub(super) enum SealedRecord<T> {
    Sealed { sealed: String },
    Plain(T),
}

impl WalletService {
    /// Stores `value` at `key` of `keyspace`, sealed to that place.
    pub(super) async fn put_sealed<T: serde::Serialize>(
        &self,
        keyspace: &'static str,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> WalletResult<()> {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(value).or_internal()?);
        let stored: SealedRecord<T> = SealedRecord::Sealed {
            sealed: self.seal(&format!("{keyspace}/{key}"), &plain)?,
        };
        self.ctx.store.put_json(keyspace, key, &stored, ttl).await?;
        Ok(())
    }

    /// The value of a record read from `key` of `keyspace` ([`WalletService::put_sealed`]).
    pub(super) fn open_sealed<T: serde::de::DeserializeOwned>(
        &self,
        keyspace: &str,
        key: &str,
        stored: SealedRecord<T>,
    ) -> WalletResult<T> {
        match stored {
            SealedRecord::Sealed { sealed } => {
                let plain = self.unseal(&format!("{keyspace}/{key}"), &sealed)?;
                serde_json::from_slice(&plain).or_internal()
            }
            SealedRecord::Plain(value) => Ok(value),
        }
    }

    /// The record at `key` of `keyspace`, opened.
    pub(super) async fn get_sealed<T: serde::de::DeserializeOwned>(
        &self,
        keyspace: &'static str,
        key: &str,
    ) -> WalletResult<Option<T>> {
        match self
            .ctx
            .store
            .get_json::<SealedRecord<T>>(keyspace, key)
            .await?
        {
            Some(stored) => self.open_sealed(keyspace, key, stored).map(Some),
            None => Ok(None),
        }
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

/// What a credential's sealed summary is bound to.
pub(super) fn summary_aad(wallet: &str, id: &str) -> String {
    format!("{}/{wallet}/{id}/summary", ks::CREDS)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    /// A record kept with `put_sealed` holds nothing of its value in clear, opens only at its own
    /// place, and a plain record of an earlier release is still read (the history and resolved
    /// presentation requests are kept this way: who the user dealt with, a verifier's `state`).
    #[tokio::test]
    async fn sealed_records_open_only_at_their_place() {
        let svc = WalletService::new(
            RoleContext::for_tests(FakeClock::new(1_700_000_000_000)),
            WalletConfig::default(),
        );
        let value =
            serde_json::json!({"client_id": "https://verifier.example", "state": "s3cr3t-state"});
        svc.put_sealed(ks::RESOLVED, "w/a", &value, None)
            .await
            .unwrap();
        let store = &svc.ctx.store;
        let raw = store.get(ks::RESOLVED, "w/a").await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(
            !text.contains("verifier.example") && !text.contains("s3cr3t"),
            "{text}"
        );
        let opened: Option<serde_json::Value> = svc.get_sealed(ks::RESOLVED, "w/a").await.unwrap();
        assert_eq!(opened, Some(value.clone()));
        // moved to another place (or keyspace) it does not open
        store
            .put(ks::RESOLVED, "w/b", raw.clone(), None)
            .await
            .unwrap();
        assert!(svc
            .get_sealed::<serde_json::Value>(ks::RESOLVED, "w/b")
            .await
            .is_err());
        store
            .put(ks::HISTORY, "w/a", raw.clone(), None)
            .await
            .unwrap();
        assert!(svc
            .get_sealed::<serde_json::Value>(ks::HISTORY, "w/a")
            .await
            .is_err());
        // an earlier release's plain record
        store
            .put_json(ks::RESOLVED, "w/c", &value, None)
            .await
            .unwrap();
        let plain: Option<serde_json::Value> = svc.get_sealed(ks::RESOLVED, "w/c").await.unwrap();
        assert_eq!(plain, Some(value));
    }
}
