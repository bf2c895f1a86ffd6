//! The mediator key: one Ed25519 key, created once by compare-and-swap (so nodes starting
//! together agree), sealed at rest, stable across restarts. It is the invitation, connection and
//! routing key. After a data loss a node puts it back ([`MediatorService::restore_key`]) and the
//! first-start guard compares it with the stored one ([`MediatorService::stored_key`]).

use ed25519_dalek::SigningKey;

use super::model::ks;
use super::service::MediatorService;
use crate::roles::RoleContext;
use crate::store::Cas;

const KEY_ID: &str = "mediator";
const KEY_AAD: &[u8] = b"mediator_keys/mediator";

/// How the stored mediator key compares with the one a node holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKey {
    /// The store holds this node's key.
    Same,
    /// The store holds no mediator key (a store that lost its data, e.g. Redis restarted
    /// without persistence).
    Missing,
    /// The store holds another key (created by a node after a data loss): this node's DID is
    /// no longer the mediator's.
    Different,
}

fn open_key(ctx: &RoleContext, sealed: &[u8]) -> anyhow::Result<SigningKey> {
    let seed = ctx.sealer.open(KEY_AAD, sealed)?;
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("mediator key has the wrong length"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The mediator key: the stored one, else a new one stored insert-only (whoever stores first,
/// every node uses that one).
/// A creation the store answers "retry" to is retried ([`crate::roles::INIT_RETRIES`]).
pub(super) async fn load_or_create(ctx: &RoleContext) -> anyhow::Result<SigningKey> {
    let mut attempt = 0u32;
    loop {
        if let Some(sealed) = ctx.store.get(ks::KEYS, KEY_ID).await? {
            return open_key(ctx, &sealed);
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let sealed = ctx.sealer.seal(KEY_AAD, key.to_bytes().as_slice())?;
        match ctx
            .store
            .compare_and_swap(ks::KEYS, KEY_ID, None, Some((sealed, None)))
            .await
        {
            Ok(Cas::Swapped) => return Ok(key),
            Ok(Cas::Conflict(Some(other))) => return open_key(ctx, &other),
            Ok(Cas::Conflict(None)) => anyhow::bail!("mediator key vanished while being created"),
            Err(e @ crate::store::StoreError::Unavailable(_))
                if attempt < crate::roles::INIT_RETRIES =>
            {
                attempt += 1;
                tracing::info!(error = %e, attempt, "mediator key not created yet; retrying");
                tokio::time::sleep(crate::roles::init_retry_pause(attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl MediatorService {
    /// Compares the stored mediator key with the one this node serves with.
    pub async fn stored_key(&self) -> anyhow::Result<StoredKey> {
        match self.ctx.store.get(ks::KEYS, KEY_ID).await? {
            None => Ok(StoredKey::Missing),
            Some(sealed) => Ok(self.same_key(&sealed)?),
        }
    }

    fn same_key(&self, sealed: &[u8]) -> anyhow::Result<StoredKey> {
        let stored = open_key(&self.ctx, sealed)?;
        Ok(if stored.to_bytes() == self.key.to_bytes() {
            StoredKey::Same
        } else {
            StoredKey::Different
        })
    }

    /// After the store lost its data: writes this node's key back, insert-only (every node of a
    /// deployment loaded the same key, so whichever writes first writes the same one), and drops
    /// the queue indexes built from records that are gone. Returns how the stored key compares
    /// with this node's afterwards.
    pub async fn restore_key(&self) -> anyhow::Result<StoredKey> {
        let sealed = self
            .ctx
            .sealer
            .seal(KEY_AAD, self.key.to_bytes().as_slice())?;
        let res = match self
            .ctx
            .store
            .compare_and_swap(ks::KEYS, KEY_ID, None, Some((sealed, None)))
            .await?
        {
            Cas::Swapped => StoredKey::Same,
            Cas::Conflict(Some(other)) => self.same_key(&other)?,
            Cas::Conflict(None) => StoredKey::Missing,
        };
        self.forget_indexes();
        self.wake_all();
        Ok(res)
    }
}
