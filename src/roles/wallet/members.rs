//! Who may use a wallet: owners share it, change roles, list and remove members; any member may
//! leave. A wallet always keeps an owner, and has at most [`MAX_MEMBERS`] members.
//!
//! The roster lives in the wallet's own record ([`WalletRecord::roster`]) and every change is one
//! compare-and-swap of that record, its checks (the caller still an owner, an owner remaining,
//! room for one more) run on the value being swapped: two owners demoting each other at the same
//! moment cannot both pass, on any node or on Redis, however long either is paused — the later
//! swap finds the record changed and judges again. (A lease record did this before; a holder
//! paused past its TTL between renewing it and writing could still race.) A change to a deleted
//! wallet finds no record (404). The `a/`/`w/` membership index is written after the swap, for
//! listing an account's wallets, and written again while the roster read back says otherwise (two
//! changes' index writes can land out of order); access takes the lesser of the two roles
//! (`viewer`), so a member
//! the roster does not name gets nothing, and a removal made in the index only — by a node of the
//! release before rosters — holds.

use std::collections::BTreeMap;

use super::access::{Owner, Viewer};
use super::error::{OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::*;
use super::service::WalletService;
use crate::store::BatchOp;

/// Most members one wallet can have.
pub const MAX_MEMBERS: usize = 256;

impl WalletService {
    /// The wallet's members, with their emails and roles (owners only: emails are personal).
    pub async fn list_members(&self, owner: &Owner) -> WalletResult<Vec<MemberView>> {
        let mut out = Vec::new();
        for (account, role) in self.members(owner.id()).await? {
            // A member whose account is gone (none is deleted today) is left out.
            if let Some(a) = self
                .ctx
                .store
                .get_json::<Account>(ks::ACCOUNTS, &account)
                .await?
                .map(|a| self.opened_or_unreadable(a))
            {
                out.push(MemberView {
                    account,
                    email: a.email,
                    role,
                });
            }
        }
        Ok(out)
    }

    /// Removes `account` from the wallet (an owner removing anyone, the last owner excepted).
    pub async fn remove_member(&self, owner: &Owner, account: &str) -> WalletResult<()> {
        self.set_role(owner.id(), owner.member(), account, None)
            .await
    }

    /// The signed-in member leaves the wallet (its last owner cannot).
    pub async fn leave_wallet(&self, wallet: &Viewer) -> WalletResult<()> {
        let me = wallet.member();
        self.set_role(wallet.id(), me, me, None).await
    }

    /// Gives `account` `role` in `wallet`, or removes it (`None`), as `caller` asks: one
    /// compare-and-swap of the wallet's record, judged on the roster being replaced. 404 when the
    /// wallet is gone or `caller` is no longer a member (an owner removed while its request was
    /// on the way cannot add itself back), 403 when `caller` is not an owner (leaving excepted),
    /// 409 when no owner would remain or the wallet is full, 404 when removing a non-member.
    ///
    /// The membership index follows the swap ([`Self::write_member_index`]); if writing it
    /// fails the change stands and the caller gets the error: asking again writes the index
    /// again.
    pub(super) async fn set_role(
        &self,
        wallet: &str,
        caller: &str,
        account: &str,
        role: Option<MemberRole>,
    ) -> WalletResult<()> {
        self.change_record(wallet, |roster, _| {
            change_roster(roster, caller, account, role)
        })
        .await?;
        self.write_member_index(wallet, account, role, Vec::new())
            .await
    }

    /// Writes `account`'s entries of the `a/`/`w/` membership index after a change of its role
    /// in `wallet` (`extra`: more index operations of that change, written with the first
    /// round), then reads the roster again and writes them anew while it says otherwise. The
    /// index writes of two changes can land in the other order than their swaps (a removal
    /// and a re-add by two owners at once: the removal's delete landing last): the index then
    /// no longer named a member the roster does, who could open nothing — now whoever writes
    /// last sees the last roster. (In cluster mode "last" is by version stamp: two nodes whose
    /// clocks are apart can still order an index write against real time and lose an entry,
    /// which the next change of that member writes again. A record without a roster, written
    /// by a node of the release before rosters, is left to its index: `role` is written once.)
    pub(super) async fn write_member_index(
        &self,
        wallet: &str,
        account: &str,
        role: Option<MemberRole>,
        extra: Vec<BatchOp>,
    ) -> WalletResult<()> {
        let store = &self.ctx.store;
        let mut ops = member_ops(wallet, account, role)?;
        ops.extend(extra);
        store.batch(ops).await?;
        let mut written = role;
        // a few rounds: each one follows a membership change of this account made meanwhile
        for _ in 0..4 {
            // at the primary: this node's copy may lag a change just made on another node
            let now = match store
                .get_settled_json::<WalletRecord>(ks::WALLETS, wallet)
                .await?
            {
                Some(rec) => match rec.roster {
                    Some(roster) => roster.get(account).copied(),
                    None => return Ok(()),
                },
                None => None,
            };
            if now == written {
                return Ok(());
            }
            store.batch(member_ops(wallet, account, now)?).await?;
            written = now;
        }
        Ok(())
    }

    /// One change of the wallet's record by compare-and-swap: `f` judges and makes it on the
    /// record with its roster in place (for a record from before rosters, built from the index
    /// read at the primaries); it runs again on the newer record when the swap loses. Expired
    /// invitations, and those of inviters no longer owners, are dropped on the way. 404 when the
    /// wallet is gone; the new record otherwise.
    pub(super) async fn change_record<F>(
        &self,
        wallet: &str,
        mut f: F,
    ) -> WalletResult<WalletRecord>
    where
        F: FnMut(&mut BTreeMap<String, MemberRole>, &mut WalletRecord) -> WalletResult<()>,
    {
        let store = &self.ctx.store;
        // at the primary: this node's copy may lag a change just made on another node
        let current = store
            .get_settled(ks::WALLETS, wallet)
            .await?
            .or_not_found("no such wallet")?;
        let rec: WalletRecord = crate::store::decode_json(ks::WALLETS, wallet, &current)?;
        let legacy = match rec.roster {
            Some(_) => None,
            None => Some(self.index_members_settled(wallet).await?),
        };
        let now = self.now();
        store
            .update_json_from::<WalletRecord, WalletError, _>(
                ks::WALLETS,
                wallet,
                None,
                Some(current),
                |mut rec| {
                    let mut roster =
                        rec.roster
                            .take()
                            .or_else(|| legacy.clone())
                            .ok_or(WalletError::Busy {
                                detail: "this wallet's members changed meanwhile; retry",
                                retry_after: 1,
                            })?;
                    // before `f` too: a lapsed invitation takes no place under the limit
                    rec.invitations.retain(|_, i| i.is_live(&roster, now));
                    f(&mut roster, &mut rec)?;
                    rec.invitations.retain(|_, i| i.is_live(&roster, now));
                    rec.roster = Some(roster);
                    Ok(rec)
                },
            )
            .await?
            .or_not_found("no such wallet")
    }

    /// Refuses (409) a new wallet to `account` once it has created
    /// `wallet.max_wallets_per_account` that still exist: wallets cost storage, and sign-up is
    /// open. Only wallets it created count (the `c/<account>/<wallet>` index), never wallets
    /// shared with it: a share needs no consent, so counting those let anyone fill another's
    /// quota. Checked before the write, so creations racing each other can pass it together (as
    /// many as run at once), never without bound.
    pub(super) async fn check_may_create(&self, account: &str) -> WalletResult<()> {
        let max = self.cfg.max_wallets_per_account;
        let store = &self.ctx.store;
        let prefix = format!("c/{account}/");
        let mut created = store
            .count_prefix(ks::MEMBERS, &prefix, max.saturating_add(1))
            .await?;
        if created >= max {
            // At the limit, entries of wallets that are gone do not count: a delete that died
            // after the wallet record and before its indexes left one, and nobody can delete
            // that wallet again. Dropped here (at most the limit's worth of reads, only then).
            created = 0;
            for (key, _) in store.scan_prefix(ks::MEMBERS, &prefix, 10_000).await? {
                let wallet = key.rsplit('/').next().unwrap_or_default();
                // at the primary: this node's copy may lag a wallet just created elsewhere
                if store.get_settled(ks::WALLETS, wallet).await?.is_some() {
                    created += 1;
                } else {
                    store.delete(ks::MEMBERS, &key).await?;
                }
            }
        }
        if created >= max {
            return Err(WalletError::conflict(format!(
                "an account creates at most {max} wallets (wallet.max_wallets_per_account): delete one first"
            )));
        }
        Ok(())
    }

    /// The wallet's members and their roles: its roster, or for a record from before rosters,
    /// its `w/<wallet>/` index.
    async fn members(&self, wallet: &str) -> WalletResult<Vec<(String, MemberRole)>> {
        let rec: WalletRecord = self
            .ctx
            .store
            .get_json(ks::WALLETS, wallet)
            .await?
            .or_not_found("no such wallet")?;
        Ok(match rec.roster {
            Some(roster) => roster.into_iter().collect(),
            None => self.index_members(wallet).await?.into_iter().collect(),
        })
    }

    /// The `w/<wallet>/` index: the members of a wallet whose record has no roster yet.
    async fn index_members(&self, wallet: &str) -> WalletResult<BTreeMap<String, MemberRole>> {
        Ok(self
            .ctx
            .store
            .scan_json::<MemberRole>(ks::MEMBERS, &format!("w/{wallet}/"), 100_000)
            .await?
            .into_iter()
            .filter_map(|(k, role)| Some((k.rsplit('/').next()?.to_string(), role)))
            .collect())
    }

    /// [`Self::index_members`] as the keys' primaries hold them (this node's copy of the index
    /// can lag a change made on another node): what a roster is first built from. A member
    /// added elsewhere and not yet seen here is missed, which can only make a check refuse.
    async fn index_members_settled(
        &self,
        wallet: &str,
    ) -> WalletResult<BTreeMap<String, MemberRole>> {
        let mut out = BTreeMap::new();
        for account in self.index_members(wallet).await?.into_keys() {
            let key = format!("w/{wallet}/{account}");
            if let Some(raw) = self.ctx.store.get_settled(ks::MEMBERS, &key).await? {
                if let Ok(role) = serde_json::from_slice::<MemberRole>(&raw) {
                    out.insert(account, role);
                }
            }
        }
        Ok(out)
    }
}

/// One membership change judged and made on `roster`: `caller` must be a member (404), an owner
/// unless it leaves (403); removing a non-member is 404, a new member beyond [`MAX_MEMBERS`] or
/// a roster left without an owner 409.
pub(super) fn change_roster(
    roster: &mut BTreeMap<String, MemberRole>,
    caller: &str,
    account: &str,
    role: Option<MemberRole>,
) -> WalletResult<()> {
    let leaving = caller == account && role.is_none();
    if leaving {
        roster
            .get(caller)
            .ok_or_else(|| WalletError::not_found("no such wallet"))?;
    } else {
        owner_in(roster, caller)?;
    }
    match role {
        None => {
            roster
                .remove(account)
                .ok_or_else(|| WalletError::not_found("no such member"))?;
        }
        Some(r) => {
            if !roster.contains_key(account) && roster.len() >= MAX_MEMBERS {
                return Err(WalletError::conflict(format!(
                    "a wallet has at most {MAX_MEMBERS} members"
                )));
            }
            roster.insert(account.to_string(), r);
        }
    }
    if !roster.values().any(|r| *r == MemberRole::Owner) {
        return Err(WalletError::conflict(
            "a wallet keeps at least one owner: make another member owner first",
        ));
    }
    Ok(())
}

/// 404 unless `caller` is a member of the roster (an owner removed meanwhile sees no wallet),
/// 403 unless it is an owner.
pub(super) fn owner_in(roster: &BTreeMap<String, MemberRole>, caller: &str) -> WalletResult<()> {
    match roster.get(caller) {
        None => Err(WalletError::not_found("no such wallet")),
        Some(MemberRole::Owner) => Ok(()),
        Some(_) => Err(WalletError::Forbidden(
            "only an owner changes a wallet's members",
        )),
    }
}

/// The two index entries of one membership, `a/<account>/<wallet>` and `w/<wallet>/<account>`:
/// written with `role`, or deleted (`None`).
pub(super) fn member_ops(
    wallet: &str,
    account: &str,
    role: Option<MemberRole>,
) -> WalletResult<Vec<BatchOp>> {
    let keys = [
        format!("a/{account}/{wallet}"),
        format!("w/{wallet}/{account}"),
    ];
    Ok(match role {
        Some(role) => {
            let value = crate::store::to_json(&role)?;
            keys.into_iter()
                .map(|key| BatchOp::Put {
                    keyspace: ks::MEMBERS,
                    key,
                    value: value.clone(),
                    ttl: None,
                })
                .collect()
        }
        None => keys
            .into_iter()
            .map(|key| BatchOp::Delete {
                keyspace: ks::MEMBERS,
                key,
            })
            .collect(),
    })
}
