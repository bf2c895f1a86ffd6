//! Who may use a wallet: owners share it, change roles, list and remove members; any member may
//! leave. A wallet always keeps an owner, and has at most [`MAX_MEMBERS`] members.
//!
//! Changes to one wallet's members are made one at a time, on every node, under a short lease
//! record taken insert-only in the store ([`WalletService::members_lock`]): the check that an
//! owner remains and the write are then one step. Without it two owners demoting (or removing)
//! each other at the same moment each saw the other still owner, and the wallet was left with
//! none. In a cluster the lease is taken at its key's primary like any compare-and-swap, and
//! the roles it decides on are read there too.

use std::time::Duration;

use super::access::{Owner, Viewer};
use super::error::{OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::*;
use super::service::WalletService;
use crate::clock::random_id;
use crate::store::{BatchOp, Cas};

/// Most members one wallet can have.
pub const MAX_MEMBERS: usize = 256;
/// How long a membership lease lives if its holder never releases it (a process that died).
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a change waits for another change of the same wallet before 503.
const LOCK_WAIT: Duration = Duration::from_secs(3);

impl WalletService {
    /// Shares the wallet with the account registered under `req.email`, as owner or viewer, or
    /// changes that member's role.
    pub async fn add_member(&self, owner: &Owner, req: AddMember) -> WalletResult<()> {
        let email = req.email.trim().to_ascii_lowercase();
        let other: String = self
            .ctx
            .store
            .get_json(ks::EMAILS, &email)
            .await?
            .or_not_found("no account with this email")?;
        self.set_role(owner.id(), owner.member(), &other, Some(req.role))
            .await
    }

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

    /// Gives `account` `role` in `wallet`, or removes it (`None`), as `caller` asks, under the
    /// wallet's membership lease. Everything it depends on is read again under the lease, at
    /// the keys' primaries: that the wallet still exists (404: a deleted wallet gets no member
    /// back), that `caller` is still an owner — or a member, to leave (an owner removed while
    /// its request waited for the lease cannot add itself back: 403/404) — and then 409 when no
    /// owner would remain or the wallet is full, 404 when removing a non-member.
    async fn set_role(
        &self,
        wallet: &str,
        caller: &str,
        account: &str,
        role: Option<MemberRole>,
    ) -> WalletResult<()> {
        let lease = self.members_lock(wallet).await?;
        let changed = async {
            if self
                .ctx
                .store
                .get_settled(ks::WALLETS, wallet)
                .await?
                .is_none()
            {
                return Err(WalletError::not_found("no such wallet"));
            }
            let mut members = self.members_settled(wallet).await?;
            let caller_role = members
                .iter()
                .find(|(a, _)| a == caller)
                .map(|(_, r)| *r)
                .ok_or_else(|| WalletError::not_found("no such wallet"))?;
            let leaving = caller == account && role.is_none();
            if !leaving && caller_role != MemberRole::Owner {
                return Err(WalletError::Forbidden(
                    "only an owner changes a wallet's members",
                ));
            }
            let before = members.iter().position(|(a, _)| a == account);
            match (role, before) {
                (None, None) => return Err(WalletError::not_found("no such member")),
                (None, Some(i)) => {
                    members.remove(i);
                }
                (Some(r), Some(i)) => members[i].1 = r,
                (Some(r), None) => {
                    if members.len() >= MAX_MEMBERS {
                        return Err(WalletError::conflict(format!(
                            "a wallet has at most {MAX_MEMBERS} members"
                        )));
                    }
                    members.push((account.to_string(), r));
                }
            }
            if !members.iter().any(|(_, r)| *r == MemberRole::Owner) {
                return Err(WalletError::conflict(
                    "a wallet keeps at least one owner: make another member owner first",
                ));
            }
            // Still the lease's holder? (Reading up to 256 roles at their primaries can outlast
            // its TTL, and another change may have begun.) Renewed in one compare-and-swap.
            self.members_renew(wallet, &lease).await?;
            self.ctx
                .store
                .batch(member_ops(wallet, account, role)?)
                .await?;
            Ok(())
        }
        .await;
        self.members_unlock(wallet, lease).await;
        changed
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

    /// The wallet's members and their roles, from the `w/<wallet>/` index.
    async fn members(&self, wallet: &str) -> WalletResult<Vec<(String, MemberRole)>> {
        Ok(self
            .ctx
            .store
            .scan_json::<MemberRole>(ks::MEMBERS, &format!("w/{wallet}/"), 100_000)
            .await?
            .into_iter()
            .filter_map(|(k, role)| Some((k.rsplit('/').next()?.to_string(), role)))
            .collect())
    }

    /// [`Self::members`] as the keys' primaries hold them: in a cluster this node's copy of the
    /// index can lag a change just made on another node. Each listed role is read again where it
    /// is decided; a member added elsewhere and not yet seen here is missed, which can only make
    /// the owner check refuse, never pass wrongly.
    async fn members_settled(&self, wallet: &str) -> WalletResult<Vec<(String, MemberRole)>> {
        let mut out = Vec::new();
        for (account, _) in self.members(wallet).await? {
            let key = format!("w/{wallet}/{account}");
            if let Some(raw) = self.ctx.store.get_settled(ks::MEMBERS, &key).await? {
                if let Ok(role) = serde_json::from_slice::<MemberRole>(&raw) {
                    out.push((account, role));
                }
            }
        }
        Ok(out)
    }

    /// Takes the wallet's membership lease (an insert-only record, so one holder on every node
    /// and on Redis), waiting up to [`LOCK_WAIT`] for another change to finish; 503 after that.
    /// Returns the lease's value, which only its holder releases.
    pub(super) async fn members_lock(&self, wallet: &str) -> WalletResult<String> {
        let lease = random_id();
        let start = tokio::time::Instant::now();
        let mut wait_ms = 5u64;
        loop {
            if self
                .ctx
                .store
                .insert_new_json(ks::MEMBER_LOCKS, wallet, &lease, Some(LOCK_TTL))
                .await?
            {
                return Ok(lease);
            }
            if start.elapsed() >= LOCK_WAIT {
                return Err(WalletError::Busy {
                    detail: "another change to this wallet's members is in progress; retry",
                    retry_after: 1,
                });
            }
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            wait_ms = (wait_ms * 2).min(200);
        }
    }

    /// Renews the lease if it is still `lease` (one compare-and-swap): 503 when it expired and
    /// perhaps went to another change meanwhile.
    async fn members_renew(&self, wallet: &str, lease: &str) -> WalletResult<()> {
        let ours = crate::store::to_json(lease)?;
        let swapped = self
            .ctx
            .store
            .compare_and_swap(
                ks::MEMBER_LOCKS,
                wallet,
                Some(ours.clone()),
                Some((ours, Some(LOCK_TTL))),
            )
            .await?;
        if swapped != Cas::Swapped {
            return Err(WalletError::Busy {
                detail: "this change to the wallet's members took too long; retry",
                retry_after: 1,
            });
        }
        Ok(())
    }

    /// Releases a lease taken by [`Self::members_lock`] if it is still ours. A failure is only
    /// logged: the lease then ends with its TTL.
    pub(super) async fn members_unlock(&self, wallet: &str, lease: String) {
        let ours = match crate::store::to_json(&lease) {
            Ok(v) => v,
            Err(_) => return,
        };
        match self
            .ctx
            .store
            .compare_and_swap(ks::MEMBER_LOCKS, wallet, Some(ours), None)
            .await
        {
            Ok(Cas::Swapped) | Ok(Cas::Conflict(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "wallet membership lease not released; it expires")
            }
        }
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
