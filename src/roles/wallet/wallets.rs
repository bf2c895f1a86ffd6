//! Wallets: create and list (any signed-in account), rename and delete (owners: these take the
//! [`Owner`] proof). Who else may use a wallet is [`super::members`]'.

use super::access::Owner;
use super::error::{OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::*;
use super::service::WalletService;
use crate::clock::random_id;
use crate::store::BatchOp;

impl WalletService {
    /// A new wallet owned by `account`.
    pub async fn create_wallet(&self, account: &Account, name: &str) -> WalletResult<WalletView> {
        let name = check_name(name)?;
        self.check_may_create(&account.id).await?;
        let wallet = Wallet {
            id: random_id(),
            name,
            created_at: self.now(),
            default_did: None,
        };
        let mut ops = vec![BatchOp::Put {
            keyspace: ks::WALLETS,
            key: wallet.id.clone(),
            value: crate::store::to_json(&wallet)?,
            ttl: None,
        }];
        ops.extend(super::members::member_ops(
            &wallet.id,
            &account.id,
            Some(MemberRole::Owner),
        )?);
        // what counts against the creator's `max_wallets_per_account` while the wallet lives,
        // and the way back to it from the wallet (the creator may have left it by then)
        ops.push(BatchOp::Put {
            keyspace: ks::MEMBERS,
            key: format!("c/{}/{}", account.id, wallet.id),
            value: b"1".to_vec(),
            ttl: None,
        });
        ops.push(BatchOp::Put {
            keyspace: ks::MEMBERS,
            key: format!("cw/{}", wallet.id),
            value: crate::store::to_json(&account.id)?,
            ttl: None,
        });
        self.ctx.store.batch(ops).await?;
        Ok(WalletView {
            wallet,
            role: MemberRole::Owner,
        })
    }

    /// The wallets `account` is a member of, with its role in each.
    pub async fn list_wallets(&self, account: &Account) -> WalletResult<Vec<WalletView>> {
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

    pub async fn rename_wallet(&self, owner: &Owner, name: &str) -> WalletResult<Wallet> {
        let name = check_name(name)?;
        self.ctx
            .store
            .update_json::<Wallet, WalletError, _>(ks::WALLETS, owner.id(), None, |mut w| {
                w.name = name.clone();
                Ok(w)
            })
            .await?
            .or_not_found("no such wallet")
    }

    /// Deletes the wallet, under its membership lease (taken first, so a delete that cannot have
    /// it — 503 — leaves the wallet whole): its keys, DIDs, credentials and history in one
    /// batch, then the wallet record on its own, then its memberships. A share waiting for the
    /// lease then finds no wallet, and no membership is written after the scan (one would name a
    /// wallet nobody can open or leave).
    ///
    /// The wallet record is a single delete, fenced like any update in a cluster
    /// (`cluster.updates`): a batch's tombstones are last-writer-wins, and a rename decided
    /// meanwhile on an older version could be newer than one and bring the wallet back. The
    /// memberships go after it, so a delete refused there (a 503 on a minority side) leaves the
    /// owner able to ask again; memberships left by a failure after it name no wallet, and every
    /// reader skips them (404).
    pub async fn delete_wallet(&self, owner: &Owner) -> WalletResult<()> {
        let wallet = owner.id();
        let lease = self.members_lock(wallet).await?;
        let deleted = self.delete_under_lease(wallet).await;
        self.members_unlock(wallet, lease).await;
        deleted
    }

    /// [`Self::delete_wallet`]'s writes: contents, record, memberships and creation index.
    async fn delete_under_lease(&self, wallet: &str) -> WalletResult<()> {
        let store = &self.ctx.store;
        let mut contents = vec![];
        for keyspace in [ks::KEYS, ks::DIDS, ks::CREDS, ks::HISTORY] {
            for (k, _) in store
                .scan_prefix(keyspace, &format!("{wallet}/"), 1_000_000)
                .await?
            {
                contents.push(BatchOp::Delete { keyspace, key: k });
            }
        }
        if !contents.is_empty() {
            store.batch(contents).await?;
        }
        store.delete(ks::WALLETS, wallet).await?;
        self.coordinator.invalidate(wallet);
        let mut members = vec![];
        if let Some(creator) = store
            .get_json::<String>(ks::MEMBERS, &format!("cw/{wallet}"))
            .await?
        {
            for key in [format!("c/{creator}/{wallet}"), format!("cw/{wallet}")] {
                members.push(BatchOp::Delete {
                    keyspace: ks::MEMBERS,
                    key,
                });
            }
        }
        for (k, _) in store
            .scan_prefix(ks::MEMBERS, &format!("w/{wallet}/"), 100_000)
            .await?
        {
            let acc = k.rsplit('/').next().unwrap_or_default().to_string();
            members.push(BatchOp::Delete {
                keyspace: ks::MEMBERS,
                key: format!("a/{acc}/{wallet}"),
            });
            members.push(BatchOp::Delete {
                keyspace: ks::MEMBERS,
                key: k,
            });
        }
        if !members.is_empty() {
            store.batch(members).await?;
        }
        Ok(())
    }
}

fn check_name(name: &str) -> WalletResult<String> {
    let n = name.trim();
    if n.is_empty() || n.len() > 100 {
        return Err(WalletError::invalid("name: 1 to 100 characters"));
    }
    Ok(n.to_string())
}
