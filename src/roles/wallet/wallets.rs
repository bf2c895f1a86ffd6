//! Wallets: create and list (any signed-in account), rename and delete (owners: these take the
//! [`Owner`] proof). Who else may use a wallet is [`super::members`]'.

use super::access::Owner;
use super::error::{OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::*;
use super::service::WalletService;
use crate::clock::random_id;
use crate::store::{BatchOp, Cas};

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
        let record = WalletRecord {
            wallet: wallet.clone(),
            roster: Some([(account.id.clone(), MemberRole::Owner)].into()),
            invitations: Default::default(),
        };
        let mut ops = vec![BatchOp::Put {
            keyspace: ks::WALLETS,
            key: wallet.id.clone(),
            value: crate::store::to_json(&record)?,
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

    /// The wallets `account` is a member of, with its role in each: found through the `a/`
    /// index, decided by each wallet's roster (an index entry left behind by a change that
    /// failed half-way, or by a delete, shows nothing).
    pub async fn list_wallets(&self, account: &Account) -> WalletResult<Vec<WalletView>> {
        let mut out = Vec::new();
        for (k, indexed) in self
            .ctx
            .store
            .scan_json::<MemberRole>(ks::MEMBERS, &format!("a/{}/", account.id), 10_000)
            .await?
        {
            let wid = k.rsplit('/').next().unwrap_or_default();
            let Some(rec) = self
                .ctx
                .store
                .get_json::<WalletRecord>(ks::WALLETS, wid)
                .await?
            else {
                continue;
            };
            // as `viewer` decides: the lesser of the roster's and the index's role
            let role = match &rec.roster {
                Some(_) => rec.role_of(&account.id).map(|r| r.min(indexed)),
                None => Some(indexed),
            };
            if let Some(role) = role {
                out.push(WalletView {
                    wallet: rec.wallet,
                    role,
                });
            }
        }
        Ok(out)
    }

    pub async fn rename_wallet(&self, owner: &Owner, name: &str) -> WalletResult<Wallet> {
        let name = check_name(name)?;
        self.ctx
            .store
            .update_json::<WalletRecord, WalletError, _>(ks::WALLETS, owner.id(), None, |mut r| {
                r.wallet.name = name.clone();
                Ok(r)
            })
            .await?
            .map(|r| r.wallet)
            .or_not_found("no such wallet")
    }

    /// Deletes the wallet: its keys, DIDs, credentials and history in one batch, then the wallet
    /// record on its own, then the contents again (writes of requests let in before the delete),
    /// then its memberships and creation index.
    ///
    /// The record goes by compare-and-swap against the value whose roster names the
    /// memberships to delete: a share that lands first makes the swap fail and is read again,
    /// one that comes after finds no wallet (404) — no membership is left naming the wallet,
    /// and a rename decided meanwhile cannot bring it back (a batch's tombstones are
    /// last-writer-wins in a cluster; a swap is decided at the key's primary). The memberships
    /// go after the record, so a delete refused there (a 503 on a minority side) leaves the
    /// owner able to ask again; index entries left by a failure after it name no wallet, and
    /// every reader skips them.
    pub async fn delete_wallet(&self, owner: &Owner) -> WalletResult<()> {
        let wallet = owner.id();
        let store = &self.ctx.store;
        // Still an owner, as the primary has it? (The capability was checked on this node's
        // copy, before this request waited anywhere: an owner removed meanwhile deletes nothing.)
        let current = store.get_settled(ks::WALLETS, wallet).await?;
        self.still_owner(wallet, owner.member(), current.as_deref())
            .await?;
        self.delete_contents(wallet).await?;
        let mut current = store.get_settled(ks::WALLETS, wallet).await?;
        let rec = loop {
            let Some(raw) = current else {
                return Err(WalletError::not_found("no such wallet"));
            };
            let rec: WalletRecord = crate::store::decode_json(ks::WALLETS, wallet, &raw)?;
            if let Some(roster) = &rec.roster {
                super::members::owner_in(roster, owner.member())?;
            }
            match store
                .compare_and_swap(ks::WALLETS, wallet, Some(raw), None)
                .await?
            {
                Cas::Swapped => break rec,
                Cas::Conflict(now) => current = now,
            }
        };
        self.coordinator.invalidate(wallet);
        // Again, now that the record is gone: what a request let in before the delete wrote
        // after the first sweep (whatever lands later is taken back by its writer, see
        // `unless_deleted`).
        self.delete_contents(wallet).await?;
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
        // the roster's members, and what the index holds (all of a record from before rosters)
        members.extend(super::invitations::invitation_index_deletes(wallet, &rec));
        let mut accounts: std::collections::BTreeSet<String> =
            rec.roster.unwrap_or_default().into_keys().collect();
        for (k, _) in store
            .scan_prefix(ks::MEMBERS, &format!("w/{wallet}/"), 100_000)
            .await?
        {
            accounts.insert(k.rsplit('/').next().unwrap_or_default().to_string());
        }
        for acc in accounts {
            members.extend(super::members::member_ops(wallet, &acc, None)?);
        }
        if !members.is_empty() {
            store.batch(members).await?;
        }
        Ok(())
    }
}

impl WalletService {
    /// 404 unless `caller` is a member of the wallet whose record is `raw` (absent: gone), 403
    /// unless an owner: by its roster, or for a record from before rosters by the index at the
    /// primary.
    async fn still_owner(
        &self,
        wallet: &str,
        caller: &str,
        raw: Option<&[u8]>,
    ) -> WalletResult<()> {
        let raw = raw.or_not_found("no such wallet")?;
        let rec: WalletRecord = crate::store::decode_json(ks::WALLETS, wallet, raw)?;
        if let Some(roster) = &rec.roster {
            return super::members::owner_in(roster, caller);
        }
        let indexed = self
            .ctx
            .store
            .get_settled_json::<MemberRole>(ks::MEMBERS, &format!("w/{wallet}/{caller}"))
            .await?;
        super::members::owner_in(
            &indexed
                .map(|r| (caller.to_string(), r))
                .into_iter()
                .collect(),
            caller,
        )
    }

    /// Deletes the wallet's keys, DIDs, credentials and history, in one batch.
    async fn delete_contents(&self, wallet: &str) -> WalletResult<()> {
        let store = &self.ctx.store;
        let mut contents = vec![];
        for keyspace in [ks::KEYS, ks::DIDS, ks::CREDS, ks::HISTORY, ks::RESOLVED] {
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
