//! Wallet logic: accounts and sessions, wallets and membership, keys, DIDs, credentials, history,
//! and the OpenID4VCI / OpenID4VP exchanges. Everything touching one wallet runs under a tenant
//! session from the coordinator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde_json::{json, Map, Value};

use super::ks;
use super::model::*;
use crate::client::oid4vci::{self, Holder};
use crate::client::oid4vp::{self, Held};
use crate::client::ClientError;
use crate::clock::{random_id, random_token};
use crate::config::WalletConfig;
use crate::crypto::{binding, did, jws, sdjwt, sha256_hex, KeyType, SigningKey};
use crate::dcql::{self, CredentialView};
use crate::error::{ApiError, ApiResult, Code};
use crate::roles::RoleContext;
use crate::store::BatchOp;
use crate::tenancy::{AcquireError, Coordinator, CoordinatorConfig, TenantSession};

const SESSION_TTL: i64 = 24 * 3600;

/// An opened wallet: its keys, unsealed once and shared by concurrent sessions.
pub struct WalletContext {
    pub wallet: String,
    pub keys: HashMap<String, Arc<SigningKey>>,
}

pub type WalletSession = TenantSession<WalletContext>;

pub struct WalletService {
    pub(crate) ctx: RoleContext,
    cfg: WalletConfig,
    pub coordinator: Arc<Coordinator<WalletContext>>,
}

fn now_of(ctx: &RoleContext) -> i64 {
    ctx.clock.now_secs()
}

fn client_err(e: ClientError) -> ApiError {
    match e {
        ClientError::Input(m) => ApiError::validation(m),
        ClientError::Outbound(o) if o.is_refused() => {
            ApiError::new(Code::OutboundRefused, o.to_string())
        }
        other => ApiError::new(Code::RemoteFailed, other.to_string()),
    }
}

/// An issuer-key binding failure as an API error (refusals by the outbound guard keep their code).
fn binding_err(e: binding::BindingError) -> ApiError {
    match e {
        binding::BindingError::Refused(d) => ApiError::new(Code::OutboundRefused, d),
        other => ApiError::new(
            Code::RemoteFailed,
            format!("the issuer's credential does not verify: {other}"),
        ),
    }
}

fn seal(ctx: &RoleContext, aad: &str, data: &[u8]) -> ApiResult<String> {
    Ok(crate::crypto::b64url(
        ctx.sealer
            .seal(aad.as_bytes(), data)
            .map_err(ApiError::internal)?,
    ))
}

fn unseal(ctx: &RoleContext, aad: &str, sealed: &str) -> ApiResult<zeroize::Zeroizing<Vec<u8>>> {
    let raw = crate::crypto::b64url_decode(sealed).map_err(ApiError::internal)?;
    ctx.sealer
        .open(aad.as_bytes(), &raw)
        .map_err(ApiError::internal)
}

fn valid_email(e: &str) -> bool {
    let e = e.trim();
    e.len() <= 254
        && e.contains('@')
        && !e.starts_with('@')
        && !e.ends_with('@')
        && !e.contains(char::is_whitespace)
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
            ctx,
            cfg,
        }
    }

    fn now(&self) -> i64 {
        now_of(&self.ctx)
    }

    // ---- accounts ------------------------------------------------------------------------------

    pub async fn register(&self, req: Credentials) -> ApiResult<AccountView> {
        let email = req.email.trim().to_ascii_lowercase();
        if !valid_email(&email) {
            return Err(ApiError::validation("a valid email address is required"));
        }
        if req.password.len() < 8 || req.password.len() > 256 {
            return Err(ApiError::validation(
                "the password needs 8 to 256 characters",
            ));
        }
        let password = req.password.clone();
        let hash = password_work(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(ApiError::internal)?;
        let account = Account {
            id: random_id(),
            email: email.clone(),
            password_hash: hash,
            created_at: self.now(),
            disabled: false,
        };
        // The email index is the uniqueness guard: insert-only.
        if !self
            .ctx
            .store
            .insert_new_json(ks::EMAILS, &email, &account.id, None)
            .await?
        {
            return Err(ApiError::conflict("an account with this email exists"));
        }
        self.ctx
            .store
            .put_json(ks::ACCOUNTS, &account.id, &account, None)
            .await?;
        Ok(AccountView::from(&account))
    }

    pub async fn login(&self, req: Credentials) -> ApiResult<LoginResponse> {
        let email = req.email.trim().to_ascii_lowercase();
        let now = self.now();
        let store = &self.ctx.store;
        // Counted before the password is checked, atomically in the store: parallel guesses (on
        // any node) each take one of the allowed attempts, and a locked email costs no hashing.
        self.take_login_attempt(&email, now).await?;
        let account: Option<Account> = match store.get_json::<String>(ks::EMAILS, &email).await? {
            Some(id) => store.get_json(ks::ACCOUNTS, &id).await?,
            None => None,
        };
        // Verify against a real hash even for unknown emails, so timing does not reveal accounts.
        let hash = account
            .as_ref()
            .map(|a| a.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_string());
        let password = req.password.clone();
        let ok = password_work(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        let account = match account {
            Some(a) if ok => a,
            // The failure was counted when the attempt was taken.
            _ => return Err(ApiError::new(Code::Unauthorized, "wrong email or password")),
        };
        if account.disabled {
            return Err(ApiError::new(Code::Forbidden, "this account is disabled"));
        }
        store.delete(ks::LOGIN_FAILURES, &email).await?;
        let token = random_token(32);
        let expires_at = now + SESSION_TTL;
        store
            .put_json(
                ks::SESSIONS,
                &sha256_hex(&token),
                &SessionRecord {
                    account: account.id.clone(),
                    expires_at,
                },
                Some(Duration::from_secs(SESSION_TTL as u64)),
            )
            .await?;
        Ok(LoginResponse {
            token,
            token_type: "Bearer",
            expires_at,
            account: AccountView::from(&account),
        })
    }

    /// Takes one login attempt for `email`: refuses (429 + Retry-After) while the email is
    /// locked, else counts the attempt as a failure by compare-and-swap — a correct password
    /// clears the count afterwards. The attempt that reaches `login_lock_after` also sets the
    /// lock, so at most `login_lock_after` passwords are checked per lock period however many
    /// requests race, and one per period after that.
    async fn take_login_attempt(&self, email: &str, now: i64) -> ApiResult<()> {
        let w = &self.cfg;
        let store = &self.ctx.store;
        for attempt in 0..64u32 {
            if attempt > 0 {
                let cap = 1u64 << attempt.min(5);
                let wait = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let old = store.get(ks::LOGIN_FAILURES, email).await?;
            let current: LoginFailures = match &old {
                // An unreadable record counts as a fresh start rather than locking forever.
                Some(bytes) => serde_json::from_slice(bytes).unwrap_or_default(),
                None => LoginFailures::default(),
            };
            if current.locked_until > now {
                return Err(ApiError {
                    retry_after: Some((current.locked_until - now) as u64),
                    ..ApiError::new(
                        Code::TooManyRequests,
                        "too many failed logins; try again later",
                    )
                });
            }
            let next = next_login_failures(
                current.failures,
                now,
                w.login_lock_after,
                w.login_lock_seconds,
                w.login_lock_max_seconds,
            );
            let ttl = Duration::from_secs(3600u64.max(w.login_lock_max_seconds.saturating_mul(2)));
            let bytes = crate::store::to_json(&next)?;
            if let crate::store::Cas::Swapped = store
                .compare_and_swap(ks::LOGIN_FAILURES, email, old, Some((bytes, Some(ttl))))
                .await?
            {
                return Ok(());
            }
        }
        Err(ApiError::unavailable(
            "too many logins in progress for this account; try again shortly",
            2,
        ))
    }

    pub async fn logout(&self, token: &str) -> ApiResult<()> {
        self.ctx
            .store
            .delete(ks::SESSIONS, &sha256_hex(token))
            .await?;
        Ok(())
    }

    /// The account behind a bearer token, if the token is live and the account enabled.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Account> {
        let unauthorized = || {
            ApiError::new(
                Code::Unauthorized,
                "log in: the wallet session token is missing, expired or revoked",
            )
        };
        let s: SessionRecord = self
            .ctx
            .store
            .get_json(ks::SESSIONS, &sha256_hex(token))
            .await?
            .ok_or_else(unauthorized)?;
        let a: Account = self
            .ctx
            .store
            .get_json(ks::ACCOUNTS, &s.account)
            .await?
            .ok_or_else(unauthorized)?;
        if a.disabled {
            return Err(ApiError::new(Code::Forbidden, "this account is disabled"));
        }
        Ok(a)
    }

    pub async fn list_accounts(&self) -> ApiResult<Vec<AccountView>> {
        Ok(self
            .ctx
            .store
            .scan_json::<Account>(ks::ACCOUNTS, "", 100_000)
            .await?
            .iter()
            .map(|(_, a)| AccountView::from(a))
            .collect())
    }

    pub async fn set_disabled(&self, id: &str, disabled: bool) -> ApiResult<AccountView> {
        let a = self
            .ctx
            .store
            .update_json::<Account, ApiError, _>(ks::ACCOUNTS, id, None, |mut a| {
                a.disabled = disabled;
                Ok(a)
            })
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no account `{id}`")))?;
        Ok(AccountView::from(&a))
    }

    // ---- wallets -------------------------------------------------------------------------------

    pub async fn create_wallet(&self, account: &Account, name: &str) -> ApiResult<WalletView> {
        let name = check_name(name)?;
        let wallet = Wallet {
            id: random_id(),
            name,
            created_at: self.now(),
            default_did: None,
        };
        self.ctx
            .store
            .batch(vec![
                BatchOp::Put {
                    keyspace: ks::WALLETS,
                    key: wallet.id.clone(),
                    value: crate::store::to_json(&wallet)?,
                    ttl: None,
                },
                BatchOp::Put {
                    keyspace: ks::MEMBERS,
                    key: format!("a/{}/{}", account.id, wallet.id),
                    value: crate::store::to_json(&MemberRole::Owner)?,
                    ttl: None,
                },
                BatchOp::Put {
                    keyspace: ks::MEMBERS,
                    key: format!("w/{}/{}", wallet.id, account.id),
                    value: crate::store::to_json(&MemberRole::Owner)?,
                    ttl: None,
                },
            ])
            .await?;
        Ok(WalletView {
            wallet,
            role: MemberRole::Owner,
        })
    }

    pub async fn list_wallets(&self, account: &Account) -> ApiResult<Vec<WalletView>> {
        let mut out = Vec::new();
        for (k, role) in self
            .ctx
            .store
            .scan_json::<MemberRole>(ks::MEMBERS, &format!("a/{}/", account.id), 10_000)
            .await?
        {
            let wid = k.rsplit('/').next().unwrap_or_default();
            if let Some(wallet) = self.ctx.store.get_json::<Wallet>(ks::WALLETS, wid).await? {
                out.push(WalletView { wallet, role });
            }
        }
        Ok(out)
    }

    /// The wallet if `account` is a member with at least `need`. Not a member → 404 (no probing).
    pub async fn access(
        &self,
        account: &Account,
        wallet: &str,
        need: MemberRole,
    ) -> ApiResult<(Wallet, MemberRole)> {
        let not_found = || ApiError::not_found(format!("no wallet `{wallet}`"));
        let role: MemberRole = self
            .ctx
            .store
            .get_json(ks::MEMBERS, &format!("a/{}/{wallet}", account.id))
            .await?
            .ok_or_else(not_found)?;
        let w: Wallet = self
            .ctx
            .store
            .get_json(ks::WALLETS, wallet)
            .await?
            .ok_or_else(not_found)?;
        if role < need {
            return Err(ApiError::new(
                Code::Forbidden,
                "this needs the owner role on the wallet",
            ));
        }
        Ok((w, role))
    }

    /// Opens a tenant session on the wallet (unsealing its keys on first open).
    pub async fn open(
        &self,
        account: &Account,
        wallet: &str,
        need: MemberRole,
    ) -> ApiResult<(Wallet, WalletSession)> {
        let (w, _) = self.access(account, wallet, need).await?;
        let ctx = self.ctx.clone();
        let wid = w.id.clone();
        let session = self
            .coordinator
            .acquire(&w.id, || async move {
                load_context(&ctx, &wid).await.map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| match e {
                AcquireError::Timeout => {
                    ApiError::unavailable("the wallet service is at capacity; retry shortly", 1)
                }
                AcquireError::Open(m) => ApiError::internal(m),
            })?;
        Ok((w, session))
    }

    pub async fn rename_wallet(
        &self,
        account: &Account,
        wallet: &str,
        name: &str,
    ) -> ApiResult<Wallet> {
        let name = check_name(name)?;
        self.access(account, wallet, MemberRole::Owner).await?;
        self.ctx
            .store
            .update_json::<Wallet, ApiError, _>(ks::WALLETS, wallet, None, |mut w| {
                w.name = name.clone();
                Ok(w)
            })
            .await?
            .ok_or_else(|| ApiError::not_found("no such wallet"))
    }

    pub async fn delete_wallet(&self, account: &Account, wallet: &str) -> ApiResult<()> {
        self.access(account, wallet, MemberRole::Owner).await?;
        let store = &self.ctx.store;
        let mut ops = vec![BatchOp::Delete {
            keyspace: ks::WALLETS,
            key: wallet.to_string(),
        }];
        for (k, _) in store
            .scan_prefix(ks::MEMBERS, &format!("w/{wallet}/"), 100_000)
            .await?
        {
            let acc = k.rsplit('/').next().unwrap_or_default().to_string();
            ops.push(BatchOp::Delete {
                keyspace: ks::MEMBERS,
                key: format!("a/{acc}/{wallet}"),
            });
            ops.push(BatchOp::Delete {
                keyspace: ks::MEMBERS,
                key: k,
            });
        }
        for keyspace in [ks::KEYS, ks::DIDS, ks::CREDS, ks::HISTORY] {
            for (k, _) in store
                .scan_prefix(keyspace, &format!("{wallet}/"), 1_000_000)
                .await?
            {
                ops.push(BatchOp::Delete { keyspace, key: k });
            }
        }
        store.batch(ops).await?;
        self.coordinator.invalidate(wallet);
        Ok(())
    }

    pub async fn add_member(
        &self,
        account: &Account,
        wallet: &str,
        req: AddMember,
    ) -> ApiResult<()> {
        self.access(account, wallet, MemberRole::Owner).await?;
        let email = req.email.trim().to_ascii_lowercase();
        let other: String = self
            .ctx
            .store
            .get_json(ks::EMAILS, &email)
            .await?
            .ok_or_else(|| ApiError::not_found("no account with this email"))?;
        self.ctx
            .store
            .batch(vec![
                BatchOp::Put {
                    keyspace: ks::MEMBERS,
                    key: format!("a/{other}/{wallet}"),
                    value: crate::store::to_json(&req.role)?,
                    ttl: None,
                },
                BatchOp::Put {
                    keyspace: ks::MEMBERS,
                    key: format!("w/{wallet}/{other}"),
                    value: crate::store::to_json(&req.role)?,
                    ttl: None,
                },
            ])
            .await?;
        Ok(())
    }

    // ---- keys and DIDs ---------------------------------------------------------------------------

    async fn store_key(&self, wallet: &str, key: &SigningKey) -> ApiResult<KeyRecord> {
        let id = key.verifying_key().thumbprint();
        let rec = KeyRecord {
            id: id.clone(),
            key_type: key.key_type(),
            public_jwk: key.verifying_key().to_jwk(),
            sealed: seal(
                &self.ctx,
                &key_aad(wallet, &id),
                key.to_private_jwk().as_bytes(),
            )?,
            created_at: self.now(),
        };
        if !self
            .ctx
            .store
            .insert_new_json(ks::KEYS, &format!("{wallet}/{id}"), &rec, None)
            .await?
        {
            return Err(ApiError::conflict("this key is already in the wallet"));
        }
        self.coordinator.invalidate(wallet);
        Ok(rec)
    }

    pub async fn generate_key(&self, s: &WalletSession, kt: KeyType) -> ApiResult<KeyView> {
        let rec = self.store_key(&s.wallet, &SigningKey::generate(kt)).await?;
        Ok(key_view(&rec))
    }

    pub async fn import_key(&self, s: &WalletSession, jwk: &Value) -> ApiResult<KeyView> {
        let key = SigningKey::from_private_jwk(&jwk.to_string())
            .map_err(|e| ApiError::validation(format!("jwk: {e}")))?;
        let rec = self.store_key(&s.wallet, &key).await?;
        Ok(key_view(&rec))
    }

    pub async fn list_keys(&self, wallet: &str) -> ApiResult<Vec<KeyView>> {
        Ok(self
            .ctx
            .store
            .scan_json::<KeyRecord>(ks::KEYS, &format!("{wallet}/"), 10_000)
            .await?
            .iter()
            .map(|(_, k)| key_view(k))
            .collect())
    }

    pub async fn get_key(&self, wallet: &str, id: &str) -> ApiResult<KeyView> {
        let k: KeyRecord = self
            .ctx
            .store
            .get_json(ks::KEYS, &format!("{wallet}/{id}"))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no key `{id}`")))?;
        Ok(key_view(&k))
    }

    pub async fn delete_key(&self, wallet: &str, id: &str) -> ApiResult<()> {
        let dids = self.list_dids(wallet).await?;
        if dids.iter().any(|d| d.key_id == id) {
            return Err(ApiError::conflict(
                "a DID uses this key; delete the DID first",
            ));
        }
        if !self
            .ctx
            .store
            .delete(ks::KEYS, &format!("{wallet}/{id}"))
            .await?
        {
            return Err(ApiError::not_found(format!("no key `{id}`")));
        }
        self.coordinator.invalidate(wallet);
        Ok(())
    }

    pub async fn create_did(&self, s: &WalletSession, req: CreateDid) -> ApiResult<DidRecord> {
        let wallet = s.wallet.clone();
        let method = req.method.unwrap_or(DidMethod::Key);
        let key_id = match req.key_id {
            Some(k) => {
                self.get_key(&wallet, &k).await?;
                k
            }
            None => {
                self.store_key(&wallet, &SigningKey::generate(KeyType::Ed25519))
                    .await?
                    .id
            }
        };
        let krec: KeyRecord = self
            .ctx
            .store
            .get_json(ks::KEYS, &format!("{wallet}/{key_id}"))
            .await?
            .ok_or_else(|| ApiError::not_found("no such key"))?;
        let vk =
            crate::crypto::VerifyingKey::from_jwk(&krec.public_jwk).map_err(ApiError::internal)?;
        let did = match method {
            DidMethod::Key => did::did_key(&vk),
            DidMethod::Jwk => did::did_jwk(&vk),
            DidMethod::Web => did::did_web(
                &self.ctx.public_url,
                &format!("wallets/{wallet}/dids/{key_id}"),
            ),
        };
        let first = self.list_dids(&wallet).await?.is_empty();
        let rec = DidRecord {
            verification_method: did::verification_method(&did),
            did: did.clone(),
            method,
            key_id,
            created_at: self.now(),
            is_default: false,
        };
        if !self
            .ctx
            .store
            .insert_new_json(
                ks::DIDS,
                &format!("{wallet}/{}", sha256_hex(&did)),
                &rec,
                None,
            )
            .await?
        {
            return Err(ApiError::conflict("this DID exists in the wallet"));
        }
        if first {
            self.set_default_did(&wallet, &did).await?;
        }
        Ok(DidRecord {
            is_default: first,
            ..rec
        })
    }

    pub async fn list_dids(&self, wallet: &str) -> ApiResult<Vec<DidRecord>> {
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

    pub async fn set_default_did(&self, wallet: &str, did: &str) -> ApiResult<()> {
        if self
            .ctx
            .store
            .get(ks::DIDS, &format!("{wallet}/{}", sha256_hex(did)))
            .await?
            .is_none()
        {
            return Err(ApiError::not_found("no such DID in this wallet"));
        }
        self.ctx
            .store
            .update_json::<Wallet, ApiError, _>(ks::WALLETS, wallet, None, |mut w| {
                w.default_did = Some(did.to_string());
                Ok(w)
            })
            .await?;
        Ok(())
    }

    pub async fn delete_did(&self, wallet: &str, did: &str) -> ApiResult<()> {
        if !self
            .ctx
            .store
            .delete(ks::DIDS, &format!("{wallet}/{}", sha256_hex(did)))
            .await?
        {
            return Err(ApiError::not_found("no such DID in this wallet"));
        }
        self.ctx
            .store
            .update_json::<Wallet, ApiError, _>(ks::WALLETS, wallet, None, |mut w| {
                if w.default_did.as_deref() == Some(did) {
                    w.default_did = None;
                }
                Ok(w)
            })
            .await?;
        Ok(())
    }

    /// DID document of a wallet's did:web.
    pub async fn did_web_document(&self, wallet: &str, key_id: &str) -> ApiResult<Value> {
        let did = did::did_web(
            &self.ctx.public_url,
            &format!("wallets/{wallet}/dids/{key_id}"),
        );
        let rec: DidRecord = self
            .ctx
            .store
            .get_json(ks::DIDS, &format!("{wallet}/{}", sha256_hex(&did)))
            .await?
            .ok_or_else(|| ApiError::not_found("no such DID"))?;
        let krec: KeyRecord = self
            .ctx
            .store
            .get_json(ks::KEYS, &format!("{wallet}/{}", rec.key_id))
            .await?
            .ok_or_else(|| ApiError::not_found("no such key"))?;
        let vk =
            crate::crypto::VerifyingKey::from_jwk(&krec.public_jwk).map_err(ApiError::internal)?;
        Ok(did::did_web_document(&did, &vk))
    }

    /// The holder key for an exchange: the named DID, the default DID, or a new Ed25519 did:key.
    async fn holder(
        &self,
        s: &WalletSession,
        did_name: Option<&str>,
    ) -> ApiResult<(Arc<SigningKey>, DidRecord)> {
        let dids = self.list_dids(&s.wallet).await?;
        let chosen = match did_name {
            Some(d) => dids
                .into_iter()
                .find(|r| r.did == d)
                .ok_or_else(|| ApiError::not_found("no such DID in this wallet"))?,
            None => match dids.into_iter().find(|d| d.is_default) {
                Some(d) => d,
                None => {
                    self.create_did(
                        s,
                        CreateDid {
                            method: Some(DidMethod::Key),
                            key_id: None,
                        },
                    )
                    .await?
                }
            },
        };
        let key = match s.keys.get(&chosen.key_id) {
            Some(k) => k.clone(),
            None => Arc::new(load_key(&self.ctx, &s.wallet, &chosen.key_id).await?),
        };
        Ok((key, chosen))
    }

    // ---- credentials -----------------------------------------------------------------------------

    pub async fn list_credentials(
        &self,
        wallet: &str,
        f: &CredentialFilter,
    ) -> ApiResult<Vec<CredentialSummary>> {
        Ok(self
            .ctx
            .store
            .scan_json::<CredentialRecord>(ks::CREDS, &format!("{wallet}/"), 100_000)
            .await?
            .into_iter()
            .map(|(_, c)| c.summary)
            .filter(|c| f.format.as_deref().is_none_or(|x| x == c.format))
            .filter(|c| f.issuer.as_deref().is_none_or(|x| x == c.issuer))
            .filter(|c| {
                f.credential_type.as_deref().is_none_or(|x| {
                    c.credential_type == x || c.credential_type.ends_with(&format!("/{x}"))
                })
            })
            .collect())
    }

    async fn load_credential(
        &self,
        wallet: &str,
        id: &str,
    ) -> ApiResult<(CredentialRecord, String)> {
        let rec: CredentialRecord = self
            .ctx
            .store
            .get_json(ks::CREDS, &format!("{wallet}/{id}"))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no credential `{id}`")))?;
        let raw = unseal(&self.ctx, &cred_aad(wallet, id), &rec.sealed)?;
        Ok((rec, String::from_utf8_lossy(&raw).into_owned()))
    }

    pub async fn credential_detail(&self, wallet: &str, id: &str) -> ApiResult<CredentialDetail> {
        let (rec, raw) = self.load_credential(wallet, id).await?;
        let (view, disclosable) = dcql::credential_view(&rec.format, &raw);
        let claims = match rec.format.as_str() {
            "dc+sd-jwt" => view.root.as_object().cloned().unwrap_or_default(),
            _ => view.root["credentialSubject"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let raw_value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
        Ok(CredentialDetail {
            summary: rec.summary,
            claims,
            disclosable,
            raw: raw_value,
        })
    }

    pub async fn delete_credential(&self, wallet: &str, id: &str) -> ApiResult<()> {
        if !self
            .ctx
            .store
            .delete(ks::CREDS, &format!("{wallet}/{id}"))
            .await?
        {
            return Err(ApiError::not_found(format!("no credential `{id}`")));
        }
        Ok(())
    }

    /// Checks the credential against its issuer's status list: `valid`, `revoked`, `suspended`.
    pub async fn credential_status(&self, wallet: &str, id: &str) -> ApiResult<Value> {
        let (rec, raw) = self.load_credential(wallet, id).await?;
        let (view, _) = dcql::credential_view(&rec.format, &raw);
        let key = bound_issuer_key(
            &rec.format,
            &raw,
            &self.ctx.http,
            &self.ctx.x509_anchors,
            self.now(),
        )
        .await
        .map_err(binding_err)?
        .key;
        let fetch = |uri: String| {
            let http = self.ctx.http.clone();
            let key = key.clone();
            async move {
                let v = crate::client::get_text(&http, &uri)
                    .await
                    .map_err(client_err)?;
                jws::verify(v.trim(), &key)
                    .map(|(_, p)| p)
                    .map_err(|e| ApiError::new(Code::RemoteFailed, format!("status list: {e}")))
            }
        };
        let status = if rec.format == "dc+sd-jwt" {
            let sl = &view.root["status"]["status_list"];
            match (sl["uri"].as_str(), sl["idx"].as_u64()) {
                (Some(uri), Some(idx)) => {
                    let list = fetch(uri.to_string()).await?;
                    let bits = list["status_list"]["bits"].as_u64().unwrap_or(1) as u8;
                    let v = crate::crypto::status::StatusArray::from_token_lst(
                        bits,
                        list["status_list"]["lst"].as_str().unwrap_or_default(),
                    )
                    .and_then(|a| a.get_lsb(idx))
                    .map_err(|e| ApiError::new(Code::RemoteFailed, e.to_string()))?;
                    match v {
                        0 => "valid",
                        1 => "revoked",
                        2 => "suspended",
                        _ => "unknown",
                    }
                }
                _ => "no_status",
            }
        } else {
            let entries = match &view.root["credentialStatus"] {
                Value::Array(a) => a.clone(),
                Value::Null => Vec::new(),
                other => vec![other.clone()],
            };
            let mut result = if entries.is_empty() {
                "no_status"
            } else {
                "valid"
            };
            for e in entries {
                let uri = e["statusListCredential"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let idx: u64 = e["statusListIndex"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let list = fetch(uri).await?;
                let set = crate::crypto::status::StatusArray::from_encoded_list(
                    list["credentialSubject"]["encodedList"]
                        .as_str()
                        .unwrap_or_default(),
                )
                .and_then(|a| a.get_msb(idx))
                .map_err(|e| ApiError::new(Code::RemoteFailed, e.to_string()))?;
                if set {
                    result = if e["statusPurpose"] == "suspension" {
                        "suspended"
                    } else {
                        "revoked"
                    };
                }
            }
            result
        };
        Ok(json!({"id": id, "status": status, "checked_at": self.now()}))
    }

    pub async fn history(&self, wallet: &str) -> ApiResult<Vec<HistoryEntry>> {
        let mut h: Vec<HistoryEntry> = self
            .ctx
            .store
            .scan_json::<HistoryEntry>(ks::HISTORY, &format!("{wallet}/"), 10_000)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        h.reverse();
        Ok(h)
    }

    async fn record(&self, wallet: &str, entry: HistoryEntry) -> ApiResult<()> {
        let key = format!("{wallet}/{:020}-{}", self.ctx.clock.now_ms(), random_id());
        self.ctx
            .store
            .put_json(ks::HISTORY, &key, &entry, None)
            .await?;
        Ok(())
    }

    // ---- exchanges -------------------------------------------------------------------------------

    pub async fn resolve_offer(&self, offer: &str) -> ApiResult<Value> {
        let r = oid4vci::resolve_offer(&self.ctx.http, offer)
            .await
            .map_err(client_err)?;
        let configs = &r.issuer_metadata["credential_configurations_supported"];
        let offered: Vec<Value> = r
            .config_ids()
            .iter()
            .map(|id| {
                let c = &configs[id];
                json!({"id": id, "format": c["format"], "display": c["credential_metadata"]["display"].as_array().or(c["display"].as_array()).cloned().unwrap_or_default()})
            })
            .collect();
        Ok(json!({
            "credential_issuer": r.issuer(),
            "display": r.issuer_metadata["display"],
            "credentials": offered,
            "tx_code": r.tx_code(),
            "grants": r.offer["grants"].as_object().map(|g| g.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
        }))
    }

    pub async fn accept_offer(
        &self,
        s: &WalletSession,
        input: OfferInput,
    ) -> ApiResult<Vec<CredentialSummary>> {
        let http = &self.ctx.http;
        let r = oid4vci::resolve_offer(http, &input.offer)
            .await
            .map_err(client_err)?;
        let (key, didrec) = self.holder(s, input.did.as_deref()).await?;
        // did:web cannot be resolved by every issuer offline: name the key by JWK then.
        let kid = (didrec.method != DidMethod::Web).then(|| didrec.verification_method.clone());
        let holder = Holder { key: &key, kid };
        let token = oid4vci::token(http, &r, input.tx_code.as_deref())
            .await
            .map_err(client_err)?;
        let mut stored = Vec::new();
        for config_id in r.config_ids() {
            let received = oid4vci::credential(http, &r, &token, &config_id, &holder, self.now())
                .await
                .map_err(client_err)?;
            for rc in received {
                stored.push(
                    self.store_credential(
                        &s.wallet,
                        &didrec.key_id,
                        &config_id,
                        &rc.format,
                        &rc.credential,
                    )
                    .await?,
                );
            }
        }
        self.record(
            &s.wallet,
            HistoryEntry {
                at: self.now(),
                kind: "receive".into(),
                counterparty: r.issuer().to_string(),
                credential_ids: stored.iter().map(|c| c.id.clone()).collect(),
                outcome: "received".into(),
            },
        )
        .await?;
        Ok(stored)
    }

    /// Verifies the issuer's signature, then seals and stores the credential.
    async fn store_credential(
        &self,
        wallet: &str,
        key_id: &str,
        config_id: &str,
        format: &str,
        credential: &Value,
    ) -> ApiResult<CredentialSummary> {
        let raw = match credential {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // The issuer's key, proven to be the issuer's (crypto::binding), before anything is stored.
        let bound = bound_issuer_key(
            format,
            &raw,
            &self.ctx.http,
            &self.ctx.x509_anchors,
            self.now(),
        )
        .await
        .map_err(binding_err)?;
        let key = bound.key;
        match format {
            "dc+sd-jwt" | "vc+sd-jwt" => {
                sdjwt::verify(&raw, &key).map_err(|e| {
                    ApiError::new(
                        Code::RemoteFailed,
                        format!("the issuer's credential does not verify: {e}"),
                    )
                })?;
            }
            "jwt_vc_json" => {
                jws::verify(&raw, &key).map_err(|e| {
                    ApiError::new(
                        Code::RemoteFailed,
                        format!("the issuer's credential does not verify: {e}"),
                    )
                })?;
            }
            "ldp_vc" => {
                let v: Value = serde_json::from_str(&raw)
                    .map_err(|e| ApiError::new(Code::RemoteFailed, e.to_string()))?;
                crate::crypto::di::verify_credential_bounded(v, self.now())
                    .await
                    .map_err(|e| {
                        ApiError::new(
                            Code::RemoteFailed,
                            format!("the issuer's credential does not verify: {e}"),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::new(
                    Code::RemoteFailed,
                    format!("unsupported credential format {other}"),
                ))
            }
        }
        let (view, _) = dcql::credential_view(format, &raw);
        let id = random_id();
        let payload = dcql::jwt_payload(format, &raw);
        let summary = CredentialSummary {
            id: id.clone(),
            format: if format == "vc+sd-jwt" {
                "dc+sd-jwt".into()
            } else {
                format.to_string()
            },
            issuer: bound.issuer,
            credential_type: view
                .vct
                .clone()
                .or_else(|| view.types.last().cloned())
                .unwrap_or_default(),
            configuration_id: Some(config_id.to_string()),
            issued_at: payload["iat"].as_i64().or(payload["nbf"].as_i64()),
            expires_at: payload["exp"].as_i64(),
            received_at: self.now(),
        };
        let rec = CredentialRecord {
            id: id.clone(),
            format: summary.format.clone(),
            sealed: seal(&self.ctx, &cred_aad(wallet, &id), raw.as_bytes())?,
            summary: summary.clone(),
            key_id: key_id.to_string(),
            received_at: summary.received_at,
        };
        self.ctx
            .store
            .put_json(ks::CREDS, &format!("{wallet}/{id}"), &rec, None)
            .await?;
        Ok(summary)
    }

    async fn held(
        &self,
        wallet: &str,
    ) -> ApiResult<Vec<(CredentialRecord, String, CredentialView)>> {
        let mut out = Vec::new();
        for (_, rec) in self
            .ctx
            .store
            .scan_json::<CredentialRecord>(ks::CREDS, &format!("{wallet}/"), 100_000)
            .await?
        {
            let raw = unseal(&self.ctx, &cred_aad(wallet, &rec.id), &rec.sealed)?;
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (view, _) = dcql::credential_view(&rec.format, &raw);
            out.push((rec, raw, view));
        }
        Ok(out)
    }

    pub async fn resolve_request(&self, s: &WalletSession, request: &str) -> ApiResult<Value> {
        let req = oid4vp::resolve_request(&self.ctx.http, request)
            .await
            .map_err(client_err)?;
        let held = self.held(&s.wallet).await?;
        let mut matches = Map::new();
        let mut satisfiable = true;
        if let Some(q) = req.dcql() {
            for cq in q["credentials"].as_array().cloned().unwrap_or_default() {
                let ids: Vec<Value> = held
                    .iter()
                    .filter(|(_, _, v)| dcql::mismatch(v, &cq).is_none())
                    .map(|(r, _, _)| json!(r.id))
                    .collect();
                satisfiable &= !ids.is_empty();
                matches.insert(
                    cq["id"].as_str().unwrap_or_default().to_string(),
                    Value::Array(ids),
                );
            }
        } else if let Some(pd) = req.params.get("presentation_definition") {
            for d in pd["input_descriptors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let ids: Vec<Value> = held
                    .iter()
                    .filter(|(_, _, v)| pex_match(v, &d))
                    .map(|(r, _, _)| json!(r.id))
                    .collect();
                satisfiable &= !ids.is_empty();
                matches.insert(
                    d["id"].as_str().unwrap_or_default().to_string(),
                    Value::Array(ids),
                );
            }
        }
        Ok(json!({
            "client_id": req.client_id,
            "verified_signer": req.signed_by,
            "verifier": req.params["client_metadata"]["client_name"],
            "response_mode": req.params["response_mode"],
            "dcql_query": req.params.get("dcql_query"),
            "presentation_definition": req.params.get("presentation_definition"),
            "matches": matches,
            "satisfiable": satisfiable,
        }))
    }

    pub async fn present(&self, s: &WalletSession, input: RequestInput) -> ApiResult<Value> {
        let http = &self.ctx.http;
        let req = oid4vp::resolve_request(http, &input.request)
            .await
            .map_err(client_err)?;
        let held = self.held(&s.wallet).await?;
        let now = self.now();
        let pick = |qid: &str, ok: &dyn Fn(&CredentialView) -> bool| -> ApiResult<usize> {
            match input.selections.get(qid).and_then(Value::as_str) {
                Some(chosen) => held
                    .iter()
                    .position(|(r, _, v)| r.id == chosen && ok(v))
                    .ok_or_else(|| {
                        ApiError::validation(format!(
                            "credential `{chosen}` does not answer `{qid}`"
                        ))
                    }),
                None => held.iter().position(|(_, _, v)| ok(v)).ok_or_else(|| {
                    ApiError::validation(format!("no credential in this wallet answers `{qid}`"))
                }),
            }
        };
        let disclose_for = |qid: &str, default: Vec<String>| -> Vec<String> {
            input
                .disclose
                .get(qid)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or(default)
        };
        let mut used = Vec::new();
        let (vp_token, submission) = if let Some(q) = req.dcql() {
            let mut token = Map::new();
            for cq in q["credentials"].as_array().cloned().unwrap_or_default() {
                let qid = cq["id"].as_str().unwrap_or_default().to_string();
                let i = pick(&qid, &|v| dcql::mismatch(v, &cq).is_none())?;
                let names = disclose_for(&qid, dcql::requested_claim_names(&cq));
                token.insert(
                    qid,
                    json!([self.present_one(s, &req, &held[i], &names, now).await?]),
                );
                used.push(held[i].0.id.clone());
            }
            (Value::Object(token), None)
        } else if let Some(pd) = req.params.get("presentation_definition").cloned() {
            let descriptors = pd["input_descriptors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut tokens = Vec::new();
            let mut map = Vec::new();
            for (n, d) in descriptors.iter().enumerate() {
                let did_ = d["id"].as_str().unwrap_or_default().to_string();
                let i = pick(&did_, &|v| pex_match(v, d))?;
                let names = disclose_for(&did_, pex_claim_names(d));
                tokens.push(self.present_one(s, &req, &held[i], &names, now).await?);
                let format = match held[i].0.format.as_str() {
                    "dc+sd-jwt" => "vc+sd-jwt",
                    "ldp_vc" => "ldp_vp",
                    _ => "jwt_vp_json",
                };
                map.push(json!({"id": did_, "format": format, "path": if descriptors.len() == 1 { "$".to_string() } else { format!("$[{n}]") }}));
                used.push(held[i].0.id.clone());
            }
            let token = if tokens.len() == 1 {
                tokens.remove(0)
            } else {
                Value::Array(tokens)
            };
            (
                token,
                Some(json!({"id": random_id(), "definition_id": pd["id"], "descriptor_map": map})),
            )
        } else {
            return Err(ApiError::validation(
                "the request carries neither dcql_query nor presentation_definition",
            ));
        };
        let result = oid4vp::submit(http, &req, vp_token, submission).await;
        let outcome = match &result {
            Ok(_) => "accepted".to_string(),
            Err(e) => format!("rejected: {e}"),
        };
        self.record(
            &s.wallet,
            HistoryEntry {
                at: now,
                kind: "present".into(),
                counterparty: req.client_id.clone(),
                credential_ids: used.clone(),
                outcome,
            },
        )
        .await?;
        // A summary (status, redirect_uri) from oid4vp::submit, never the verifier's raw body.
        let answer = result.map_err(client_err)?;
        Ok(
            json!({"presented": used, "verifier_response": answer, "redirect_uri": answer.get("redirect_uri")}),
        )
    }

    async fn present_one(
        &self,
        s: &WalletSession,
        req: &oid4vp::ResolvedRequest,
        h: &(CredentialRecord, String, CredentialView),
        names: &[String],
        now: i64,
    ) -> ApiResult<Value> {
        let (rec, raw, view) = h;
        let key = match s.keys.get(&rec.key_id) {
            Some(k) => k.clone(),
            None => Arc::new(load_key(&self.ctx, &s.wallet, &rec.key_id).await?),
        };
        let kid = view.root["credentialSubject"]["id"]
            .as_str()
            .filter(|d| d.starts_with("did:key:") || d.starts_with("did:jwk:"))
            .map(did::verification_method);
        if rec.format == "ldp_vc" {
            // Data Integrity signing is CPU-heavy: off the async workers.
            let (req, raw, view, names, format, id) = (
                req.clone(),
                raw.clone(),
                view.clone(),
                names.to_vec(),
                rec.format.clone(),
                rec.id.clone(),
            );
            return tokio::task::spawn_blocking(move || {
                let held = Held {
                    id,
                    format,
                    raw,
                    view,
                    key: &key,
                    kid,
                };
                oid4vp::presentation(&req, &held, &names, now)
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(client_err);
        }
        let held = Held {
            id: rec.id.clone(),
            format: rec.format.clone(),
            raw: raw.clone(),
            view: view.clone(),
            key: &key,
            kid,
        };
        oid4vp::presentation(req, &held, names, now).map_err(client_err)
    }
}

/// Runs an argon2id hash or verification on the blocking pool, at most one per core at a time.
/// Each one holds 19 MiB (the default memory cost): without the bound a burst of logins would
/// allocate that 512 times over (tokio's blocking pool) instead of queueing. The permit lives in
/// the blocking task, so a request cancelled while hashing (client gone) does not free a slot for
/// another hash before its own has finished. A request that waits more than 10 s for a slot gets a
/// 503 with Retry-After instead of an unbounded queue.
async fn password_work<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    static PERMITS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        ))
    });
    let permit = tokio::time::timeout(Duration::from_secs(10), permits.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::unavailable("too many logins in progress; try again shortly", 2))?
        .map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(ApiError::internal)
}

/// The failure record after one more failed attempt: from the `lock_after`-th failure on, the
/// email is locked for `lock_secs`, doubling per further failure, at most `max_lock_secs`.
fn next_login_failures(
    failures: u32,
    now: i64,
    lock_after: u32,
    lock_secs: u64,
    max_lock_secs: u64,
) -> LoginFailures {
    let n = failures.saturating_add(1);
    let locked_until = if n >= lock_after {
        let doublings = (n - lock_after).min(20);
        let secs = lock_secs
            .saturating_mul(1u64 << doublings)
            .min(max_lock_secs);
        now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
    } else {
        0
    };
    LoginFailures {
        failures: n,
        locked_until,
    }
}

/// A valid argon2id hash of a random password, to spend the same time on unknown accounts.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0Mo2cmtJYmzd1tkd8kQbvo+X+2JXTuvUjBGi0XXpUn8";

fn check_name(name: &str) -> ApiResult<String> {
    let n = name.trim();
    if n.is_empty() || n.len() > 100 {
        return Err(ApiError::validation("name: 1 to 100 characters"));
    }
    Ok(n.to_string())
}

fn key_view(k: &KeyRecord) -> KeyView {
    KeyView {
        id: k.id.clone(),
        key_type: k.key_type,
        public_jwk: k.public_jwk.clone(),
        created_at: k.created_at,
    }
}

fn key_aad(wallet: &str, id: &str) -> String {
    format!("{}/{wallet}/{id}", ks::KEYS)
}

fn cred_aad(wallet: &str, id: &str) -> String {
    format!("{}/{wallet}/{id}", ks::CREDS)
}

async fn load_key(ctx: &RoleContext, wallet: &str, id: &str) -> ApiResult<SigningKey> {
    let rec: KeyRecord = ctx
        .store
        .get_json(ks::KEYS, &format!("{wallet}/{id}"))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no key `{id}`")))?;
    let jwk = unseal(ctx, &key_aad(wallet, id), &rec.sealed)?;
    SigningKey::from_private_jwk(&String::from_utf8_lossy(&jwk)).map_err(ApiError::internal)
}

/// Opening a tenant: unseal every key of the wallet once.
async fn load_context(ctx: &RoleContext, wallet: &str) -> ApiResult<WalletContext> {
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

/// The issuer's key for a credential, bound to the issuer it names by [`binding`]'s rule (for JWTs
/// the issuer signature is checked on the way).
async fn bound_issuer_key(
    format: &str,
    raw: &str,
    http: &reqwest::Client,
    anchors: &crate::crypto::x509::TrustAnchors,
    now: i64,
) -> Result<binding::IssuerKey, binding::BindingError> {
    match format {
        "ldp_vc" => {
            let v: Value = serde_json::from_str(raw)
                .map_err(|e| binding::BindingError::Token(e.to_string()))?;
            let vm = v["proof"]["verificationMethod"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            binding::ld_issuer_key(&v, &vm, http).await
        }
        "dc+sd-jwt" | "vc+sd-jwt" => {
            let jwt = raw.split('~').next().unwrap_or_default();
            binding::verify_issuer_jwt(jwt, binding::Issuers::DidOrHttps { anchors, now }, http)
                .await
                .map(|(k, _, _)| k)
        }
        _ => binding::verify_issuer_jwt(raw, binding::Issuers::Did, http)
            .await
            .map(|(k, _, _)| k),
    }
}

/// Presentation-definition input descriptor fields → first-level claim names.
fn pex_claim_names(d: &Value) -> Vec<String> {
    d["constraints"]["fields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter_map(|f| f["path"][0].as_str())
                .filter_map(|p| {
                    p.trim_start_matches("$.")
                        .trim_start_matches("vc.")
                        .trim_start_matches("credentialSubject.")
                        .split('.')
                        .next()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a held credential has every required field of an input descriptor.
fn pex_match(v: &CredentialView, d: &Value) -> bool {
    pex_claim_names(d).iter().all(|name| {
        let root = if v.format == "dc+sd-jwt" {
            &v.root
        } else {
            &v.root["credentialSubject"]
        };
        root.get(name).is_some()
    })
}

#[cfg(test)]
mod lockout_tests {
    use super::next_login_failures;

    #[test]
    fn lock_starts_at_the_limit_and_doubles_up_to_the_cap() {
        let now = 1_000;
        let mut f = 0;
        for _ in 0..4 {
            let r = next_login_failures(f, now, 5, 30, 900);
            assert_eq!(r.locked_until, 0);
            f = r.failures;
        }
        let r = next_login_failures(f, now, 5, 30, 900);
        assert_eq!((r.failures, r.locked_until), (5, now + 30));
        assert_eq!(
            next_login_failures(5, now, 5, 30, 900).locked_until,
            now + 60
        );
        assert_eq!(
            next_login_failures(9, now, 5, 30, 900).locked_until,
            now + 900
        );
        // absurd counts neither overflow nor exceed the cap
        assert_eq!(
            next_login_failures(u32::MAX, now, 5, 30, 900).locked_until,
            now + 900
        );
    }
}
