//! Tenant records of the issuer and the verifier, kept one way: create (id rules, an optional
//! signing key generated and sealed insert-only, the record written insert-only), get, list,
//! update, delete (key included; the `default` tenant stays), the signing key checked against its
//! recorded fingerprint, and the startup check. A role describes its record with [`Tenant`]: what
//! a creation request asks for, how the record is built from it and its key, what an update
//! changes. Everything else is here, so the two roles cannot drift apart.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::{KeyType, SigningKey, VerifyingKey};
use crate::error::{Code, ErrorCode};
use crate::roles::tenant_keys::{KeyError, TenantKeys};
use crate::roles::RoleContext;
use crate::store::{Sealer, StoreError};

/// The tenant that exists from the first start and cannot be deleted.
pub const DEFAULT: &str = "default";

/// A tenant record and its API shapes.
pub trait Tenant: Serialize + DeserializeOwned + Clone + Send + Sync {
    /// What the tenants are called in messages ("issuer", "verifier").
    const KIND: &'static str;
    type Create: Send + Sync + Clone;
    type Update: Send + Sync;

    fn id(&self) -> &str;
    /// Thumbprint of the signing key recorded at creation; `None`: the tenant has no key.
    fn key_fingerprint(&self) -> Option<&str>;

    /// The id a creation request asks for.
    fn requested_id(req: &Self::Create) -> &str;
    /// The key a creation request asks for; `None`: no key.
    fn requested_key(req: &Self::Create) -> Option<KeyType>;
    /// The role's rules on a creation request (checked after the id, before anything is stored).
    fn check_create(_req: &Self::Create) -> Result<(), String> {
        Ok(())
    }
    /// The record for a creation request, with its key when it asked for one (a role whose
    /// tenants always have a key refuses to build one without).
    fn build(
        req: Self::Create,
        key: Option<&VerifyingKey>,
        at: &Creation<'_>,
    ) -> Result<Self, String>;
    /// The role's rules on an update of this record.
    fn check_update(&self, _req: &Self::Update) -> Result<(), String> {
        Ok(())
    }
    fn apply(&mut self, req: &Self::Update);
    /// The record as the store keeps it: fields a store reader must not get sealed (under
    /// `sealer`, to this record). Every write goes through it.
    fn seal(&mut self, _sealer: &Sealer) -> Result<(), StoreError> {
        Ok(())
    }
    /// The stored record with its sealed fields opened (a field that does not open is left
    /// out, with an error logged: the tenant stays usable). Every read goes through it.
    fn open(&mut self, _sealer: &Sealer) {}
}

/// Where and when a tenant is created.
pub struct Creation<'a> {
    pub now: i64,
    pub public_url: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("{kind} id: 1-64 characters of a-z, 0-9, - and _")]
    BadId { kind: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error("no {kind} `{id}`")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} `{id}` exists")]
    Exists { kind: &'static str, id: String },
    #[error("the default {kind} cannot be deleted")]
    DefaultKept { kind: &'static str },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ErrorCode for TenantError {
    fn error_code(&self) -> Code {
        match self {
            TenantError::BadId { .. } | TenantError::Invalid(_) => Code::Validation,
            TenantError::NotFound { .. } => Code::NotFound,
            TenantError::Exists { .. } | TenantError::DefaultKept { .. } => Code::Conflict,
            TenantError::Key(e) => e.error_code(),
            TenantError::Store(e) => e.error_code(),
        }
    }
    fn retry_after(&self) -> Option<u64> {
        match self {
            TenantError::Key(e) => e.retry_after(),
            TenantError::Store(e) => e.retry_after(),
            _ => None,
        }
    }
    fn public_detail(&self) -> String {
        match self {
            TenantError::Key(e) => e.public_detail(),
            TenantError::Store(e) => e.public_detail(),
            _ => self.to_string(),
        }
    }
}

/// 1-64 characters of a-z, 0-9, `-` and `_` (tenant ids, which appear in URLs and store keys).
pub fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// How many records one round of [`purge_tenant_records`] deletes (one store batch each).
#[cfg(any(feature = "issuer", feature = "verifier"))]
const PURGE_BATCH: usize = 100;

/// Deletes every live record of `keyspace` under `{tenant}/`, [`PURGE_BATCH`] per store batch,
/// together with the records `also` names for each (other keyspaces' records that hang off it).
/// Used when a tenant is deleted: its records are keyed by its id, so without this a tenant
/// created later under the same id would inherit them (redeem the old one's offers and tokens,
/// answer its pending sessions). Returns how many records of `keyspace` went.
#[cfg(any(feature = "issuer", feature = "verifier"))]
pub(crate) async fn purge_tenant_records(
    ctx: &RoleContext,
    keyspace: &'static str,
    tenant: &str,
    also: impl Fn(&str, &[u8]) -> Vec<crate::store::BatchOp>,
) -> Result<u64, StoreError> {
    use crate::store::BatchOp;
    let prefix = format!("{tenant}/");
    let mut deleted = 0u64;
    let mut previous: Option<String> = None;
    loop {
        let page = ctx
            .store
            .scan_prefix(keyspace, &prefix, PURGE_BATCH)
            .await?;
        let Some((first, _)) = page.first() else {
            return Ok(deleted);
        };
        // A page that starts where the last one did made no progress (the deletes did not take
        // here); stop with an error rather than loop forever.
        if previous.as_deref() == Some(first.as_str()) {
            return Err(StoreError::Unavailable(format!(
                "deleting the records of `{tenant}` in {keyspace} made no progress"
            )));
        }
        previous = Some(first.clone());
        let n = page.len() as u64;
        let mut ops = Vec::with_capacity(page.len() * 2);
        for (key, value) in page {
            ops.extend(also(&key, &value));
            ops.push(BatchOp::Delete { keyspace, key });
        }
        ctx.store.batch(ops).await?;
        deleted += n;
    }
}

/// The tenants of one role: records in `keyspace`, keys in the role's key keyspace.
pub struct Tenants<T> {
    ctx: RoleContext,
    keyspace: &'static str,
    keys: TenantKeys,
    _record: PhantomData<fn() -> T>,
}

impl<T: Tenant> Tenants<T> {
    pub fn new(ctx: &RoleContext, keyspace: &'static str, keys_keyspace: &'static str) -> Self {
        Self {
            keys: TenantKeys::new(ctx, keys_keyspace, T::KIND),
            ctx: ctx.clone(),
            keyspace,
            _record: PhantomData,
        }
    }

    fn not_found(id: &str) -> TenantError {
        TenantError::NotFound {
            kind: T::KIND,
            id: id.to_string(),
        }
    }

    fn exists(id: &str) -> TenantError {
        TenantError::Exists {
            kind: T::KIND,
            id: id.to_string(),
        }
    }

    /// `t` as read from the store, opened.
    fn opened(&self, mut t: T) -> T {
        t.open(&self.ctx.sealer);
        t
    }

    pub async fn get(&self, id: &str) -> Result<T, TenantError> {
        self.ctx
            .store
            .get_json::<T>(self.keyspace, id)
            .await?
            .map(|t| self.opened(t))
            .ok_or_else(|| Self::not_found(id))
    }

    pub async fn list(&self) -> Result<Vec<T>, TenantError> {
        Ok(self
            .ctx
            .store
            .scan_json::<T>(self.keyspace, "", 10_000)
            .await?
            .into_iter()
            .map(|(_, t)| self.opened(t))
            .collect())
    }

    pub async fn create(&self, req: T::Create) -> Result<T, TenantError> {
        let id = T::requested_id(&req).to_string();
        if !id_ok(&id) {
            return Err(TenantError::BadId { kind: T::KIND });
        }
        T::check_create(&req).map_err(TenantError::Invalid)?;
        if self.ctx.store.get(self.keyspace, &id).await?.is_some() {
            return Err(Self::exists(&id));
        }
        // Key first (its own record, insert-only), then the tenant, inserted once: a concurrent
        // creation of the same tenant stores its own key and loses the record, and removes it.
        let key = match T::requested_key(&req) {
            None => None,
            Some(kt) => {
                let key = self.keys.put_new(&id, SigningKey::generate(kt)).await?;
                Some(key.verifying_key())
            }
        };
        let at = Creation {
            now: self.ctx.clock.now_secs(),
            public_url: &self.ctx.public_url,
        };
        let record = T::build(req, key.as_ref(), &at).map_err(TenantError::Invalid)?;
        let mut stored = record.clone();
        stored.seal(&self.ctx.sealer)?;
        if !self
            .ctx
            .store
            .insert_new_json(self.keyspace, &id, &stored, None)
            .await?
        {
            // ours unless the record that is there names it (an insert that was retried)
            if let Some(fp) = key.as_ref().map(|k| k.thumbprint()) {
                let stored: Option<T> = self.ctx.store.get_json(self.keyspace, &id).await?;
                if stored.is_some_and(|t| t.key_fingerprint() != Some(fp.as_str())) {
                    self.keys.discard(&id, &fp).await;
                }
            }
            return Err(Self::exists(&id));
        }
        tracing::info!(kind = T::KIND, id = %id, "tenant created");
        Ok(record)
    }

    pub async fn update(&self, id: &str, req: T::Update) -> Result<T, TenantError> {
        let current = self.get(id).await?;
        current.check_update(&req).map_err(TenantError::Invalid)?;
        self.ctx
            .store
            .update_json::<T, TenantError, _>(self.keyspace, id, None, |t| {
                let mut t = self.opened(t);
                t.apply(&req);
                t.seal(&self.ctx.sealer)?;
                Ok(t)
            })
            .await?
            .map(|t| self.opened(t))
            .ok_or_else(|| Self::not_found(id))
    }

    pub async fn delete(&self, id: &str) -> Result<(), TenantError> {
        if id == DEFAULT {
            return Err(TenantError::DefaultKept { kind: T::KIND });
        }
        if !self.ctx.store.delete(self.keyspace, id).await? {
            return Err(Self::not_found(id));
        }
        Ok(self.keys.remove(id).await?)
    }

    /// [`Self::delete`] for a caller that then purges the tenant's records (`{id}/...`): the
    /// delete's own outcome — done, or not found, for the purge runs then too, finishing one a
    /// failure left half way — and whether to purge (only a well-formed id owns its prefix,
    /// never what another id's keys start with). Any other failure is the error.
    pub async fn delete_to_purge(
        &self,
        id: &str,
    ) -> Result<(Result<(), TenantError>, bool), TenantError> {
        let deleted = match self.delete(id).await {
            Ok(()) => Ok(()),
            Err(e @ TenantError::NotFound { .. }) => Err(e),
            Err(e) => return Err(e),
        };
        Ok((deleted, id_ok(id)))
    }

    /// The tenant's signing key (unsealed once and cached), which must match the recorded
    /// fingerprint; `None` for a tenant without a key.
    pub async fn signing_key(&self, t: &T) -> Result<Option<Arc<SigningKey>>, KeyError> {
        match t.key_fingerprint() {
            None => Ok(None),
            Some(fp) => self.keys.get(t.id(), fp).await.map(Some),
        }
    }

    /// Startup: the default tenant exists (created from `default` unless another node just did),
    /// and every tenant's key opens and matches its fingerprint.
    pub async fn init(&self, default: T::Create) -> anyhow::Result<()> {
        let mut attempt = 0u32;
        while self.ctx.store.get(self.keyspace, DEFAULT).await?.is_none() {
            match self.create(default.clone()).await {
                Ok(_) => break,
                // another node created it meanwhile
                Err(e) if e.error_code() == Code::Conflict => break,
                // the store says when to retry (see `INIT_RETRIES`)
                Err(e) if e.retry_after().is_some() && attempt < super::INIT_RETRIES => {
                    attempt += 1;
                    tracing::info!(kind = T::KIND, error = %e, attempt, "default tenant not created yet; retrying");
                    tokio::time::sleep(super::init_retry_pause(attempt)).await;
                }
                Err(e) => anyhow::bail!("creating the default {}: {e}", T::KIND),
            }
        }
        for t in self.list().await? {
            self.signing_key(&t).await?;
        }
        Ok(())
    }
}
