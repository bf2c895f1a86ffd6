//! Shares need the invitee's consent: an owner invites an email, the account with that email sees
//! the invitation and accepts it (or declines; the owners can revoke it). Until then the invitee
//! sees no wallet, and the wallet shows in nobody's list against their will.
//!
//! Inviting answers the same whether or not an account has the email (202), so it tells nobody
//! which emails have accounts; an email that signs up later finds its invitation. An invitation
//! lives [`INVITATION_TTL_SECS`], lapses when its inviter is no longer an owner (a removed owner's
//! last-minute invitations do not outlive it), and is part of the wallet's record, so accepting
//! it is one compare-and-swap judged on the current roster like every other membership change.
//! `i/<sha256(email)>/<wallet>` in `wallet_members` finds an email's invitations; the record
//! decides.

use std::collections::BTreeMap;

use super::access::{Owner, SignedIn};
use super::error::{OrNotFound, WalletError, WalletResult};
use super::ks;
use super::members::{member_ops, owner_in, MAX_MEMBERS};
use super::model::*;
use super::service::WalletService;
use crate::crypto::sha256_hex;
use crate::error::ErrorCode;
use crate::store::BatchOp;

/// How long an invitation waits for its invitee (seconds).
pub const INVITATION_TTL_SECS: i64 = 7 * 24 * 3600;
/// Most invitations pending on one wallet.
pub const MAX_INVITATIONS: usize = 64;

/// Whether `inv` can still be accepted: unexpired, and its inviter still an owner.
pub(super) fn is_live(roster: &BTreeMap<String, MemberRole>, inv: &Invitation, now: i64) -> bool {
    inv.expires_at > now && roster.get(&inv.invited_by) == Some(&MemberRole::Owner)
}

/// The live invitation of `email` in `rec`.
fn live_invitation<'r>(rec: &'r WalletRecord, email: &str, now: i64) -> Option<&'r Invitation> {
    let inv = rec.invitations.get(email)?;
    is_live(rec.roster.as_ref()?, inv, now).then_some(inv)
}

/// Where an email's invitation to `wallet` is found.
fn index_key(email: &str, wallet: &str) -> String {
    format!("{}{wallet}", index_prefix(email))
}

fn index_prefix(email: &str) -> String {
    format!("i/{}/", sha256_hex(email))
}

fn normalized(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

impl WalletService {
    /// Shares the wallet with `req.email` as owner or viewer: an invitation its account accepts
    /// (`Some`), or, when that account is a member already, its role changed at once (`None`;
    /// the last owner cannot be made a viewer, 409).
    pub async fn add_member(&self, owner: &Owner, req: AddMember) -> WalletResult<Option<Invited>> {
        let email = normalized(&req.email);
        if !super::accounts::valid_email(&email) {
            return Err(WalletError::invalid("a valid email address is required"));
        }
        let store = &self.ctx.store;
        let account: Option<String> = store.get_json(ks::EMAILS, &email).await?;
        let caller = owner.member();
        let inviter: Account = store
            .get_json(ks::ACCOUNTS, caller)
            .await?
            .or_not_found("no such wallet")?;
        let expires_at = self.now() + INVITATION_TTL_SECS;
        let mut invited = None;
        self.change_record(owner.id(), |roster, rec| {
            invited = None;
            if let Some(member) = account.as_deref().filter(|a| roster.contains_key(*a)) {
                return super::members::change_roster(roster, caller, member, Some(req.role));
            }
            owner_in(roster, caller)?;
            if roster.len() >= MAX_MEMBERS {
                return Err(WalletError::conflict(format!(
                    "a wallet has at most {MAX_MEMBERS} members"
                )));
            }
            if !rec.invitations.contains_key(&email) && rec.invitations.len() >= MAX_INVITATIONS {
                return Err(WalletError::conflict(format!(
                    "a wallet has at most {MAX_INVITATIONS} pending invitations: revoke one, or wait for them to expire"
                )));
            }
            rec.invitations.insert(
                email.clone(),
                Invitation {
                    role: req.role,
                    invited_by: caller.to_string(),
                    invited_by_email: inviter.email.clone(),
                    expires_at,
                },
            );
            invited = Some(Invited {
                email: email.clone(),
                role: req.role,
                expires_at,
            });
            Ok(())
        })
        .await?;
        match &invited {
            Some(_) => {
                let ttl = std::time::Duration::from_secs(INVITATION_TTL_SECS as u64);
                store
                    .put_json(
                        ks::MEMBERS,
                        &index_key(&email, owner.id()),
                        &req.role,
                        Some(ttl),
                    )
                    .await?
            }
            None => {
                let member = account.as_deref().unwrap_or_default();
                store
                    .batch(member_ops(owner.id(), member, Some(req.role))?)
                    .await?
            }
        }
        Ok(invited)
    }

    /// The wallet's pending invitations (owners).
    pub async fn list_invitations(&self, owner: &Owner) -> WalletResult<Vec<InvitationView>> {
        let rec: WalletRecord = self
            .ctx
            .store
            .get_json(ks::WALLETS, owner.id())
            .await?
            .or_not_found("no such wallet")?;
        let now = self.now();
        Ok(rec
            .invitations
            .iter()
            .filter(|(email, _)| live_invitation(&rec, email, now).is_some())
            .map(|(email, i)| InvitationView {
                email: email.clone(),
                role: i.role,
                invited_by_email: i.invited_by_email.clone(),
                expires_at: i.expires_at,
            })
            .collect())
    }

    /// Withdraws the invitation of `email` (owners); 404 when none is pending.
    pub async fn revoke_invitation(&self, owner: &Owner, email: &str) -> WalletResult<()> {
        let email = normalized(email);
        let caller = owner.member();
        self.change_record(owner.id(), |roster, rec| {
            owner_in(roster, caller)?;
            rec.invitations
                .remove(&email)
                .map(|_| ())
                .ok_or_else(|| WalletError::not_found("no pending invitation for this email"))
        })
        .await?;
        self.ctx
            .store
            .delete(ks::MEMBERS, &index_key(&email, owner.id()))
            .await?;
        Ok(())
    }

    /// The invitations pending for the signed-in account's email.
    pub async fn received_invitations(
        &self,
        who: &SignedIn,
    ) -> WalletResult<Vec<ReceivedInvitation>> {
        let email = normalized(&who.account().email);
        let store = &self.ctx.store;
        let now = self.now();
        let mut out = Vec::new();
        for (key, _) in store
            .scan_prefix(ks::MEMBERS, &index_prefix(&email), 10_000)
            .await?
        {
            let wallet = key.rsplit('/').next().unwrap_or_default();
            let Some(rec) = store.get_json::<WalletRecord>(ks::WALLETS, wallet).await? else {
                continue;
            };
            if let Some(inv) = live_invitation(&rec, &email, now) {
                out.push(ReceivedInvitation {
                    wallet: rec.wallet.id.clone(),
                    wallet_name: rec.wallet.name.clone(),
                    role: inv.role,
                    invited_by_email: inv.invited_by_email.clone(),
                    expires_at: inv.expires_at,
                });
            }
        }
        Ok(out)
    }

    /// Accepts the signed-in account's invitation to `wallet`: it becomes a member with the
    /// invitation's role (a member already keeps the higher of the two). 404 when no live
    /// invitation is pending (the same for a wallet that does not exist), 409 when the wallet
    /// is full.
    pub async fn accept_invitation(
        &self,
        who: &SignedIn,
        wallet: &str,
    ) -> WalletResult<WalletView> {
        let email = normalized(&who.account().email);
        let me = who.account().id.as_str();
        let now = self.now();
        let none = || WalletError::not_found("no pending invitation to this wallet");
        let mut role = MemberRole::Viewer;
        let rec = self
            .change_record(wallet, |roster, rec| {
                let inv = rec.invitations.get(&email).cloned().ok_or_else(none)?;
                if !is_live(roster, &inv, now) {
                    return Err(none());
                }
                rec.invitations.remove(&email);
                role = match roster.get(me) {
                    Some(r) => (*r).max(inv.role),
                    None if roster.len() >= MAX_MEMBERS => {
                        return Err(WalletError::conflict(format!(
                            "a wallet has at most {MAX_MEMBERS} members"
                        )))
                    }
                    None => inv.role,
                };
                roster.insert(me.to_string(), role);
                Ok(())
            })
            .await
            .map_err(|e| match e.error_code() {
                crate::error::Code::NotFound => none(),
                _ => e,
            })?;
        let mut ops = member_ops(wallet, me, Some(role))?;
        ops.push(BatchOp::Delete {
            keyspace: ks::MEMBERS,
            key: index_key(&email, wallet),
        });
        self.ctx.store.batch(ops).await?;
        Ok(WalletView {
            wallet: rec.wallet,
            role,
        })
    }

    /// Declines the signed-in account's invitation to `wallet`; 404 when none is pending.
    pub async fn decline_invitation(&self, who: &SignedIn, wallet: &str) -> WalletResult<()> {
        let email = normalized(&who.account().email);
        let none = || WalletError::not_found("no pending invitation to this wallet");
        self.change_record(wallet, |_, rec| {
            rec.invitations.remove(&email).map(|_| ()).ok_or_else(none)
        })
        .await
        .map_err(|e| match e.error_code() {
            crate::error::Code::NotFound => none(),
            _ => e,
        })?;
        self.ctx
            .store
            .delete(ks::MEMBERS, &index_key(&email, wallet))
            .await?;
        Ok(())
    }
}

/// The index entries of a deleted wallet's invitations.
pub(super) fn invitation_index_deletes(wallet: &str, rec: &WalletRecord) -> Vec<BatchOp> {
    rec.invitations
        .keys()
        .map(|email| BatchOp::Delete {
            keyspace: ks::MEMBERS,
            key: index_key(email, wallet),
        })
        .collect()
}
