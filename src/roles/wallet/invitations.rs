//! Shares need the invitee's consent: an owner invites the account registered under an email,
//! that account sees the invitation and accepts it (or declines; the owners can revoke it). Until
//! then the invitee sees no wallet, and no wallet shows in anybody's list against their will.
//!
//! An invitation names the account the email belongs to when it is made (404 when none does):
//! an invitation to an email nobody has registered yet would go to whoever registers it first,
//! and sign-up checks no ownership of the email. An invitation lives [`INVITATION_TTL_SECS`],
//! lapses when its inviter is no longer an owner or is disabled (a removed owner's last-minute
//! invitations do not outlive it), and is part of the wallet's record, so accepting it is one
//! compare-and-swap judged on the current roster like every other membership change. An account
//! has at most [`MAX_RECEIVED`] pending. `i/<account>/<wallet>` in `wallet_members` finds an
//! account's invitations; the record decides.

use super::access::{Owner, SignedIn};
use super::error::{OrInternal, OrNotFound, WalletError, WalletResult};
use super::ks;
use super::members::{owner_in, MAX_MEMBERS};
use super::model::*;
use super::service::WalletService;
use crate::error::ErrorCode;
use crate::store::BatchOp;

/// How long an invitation waits for its invitee (seconds).
pub const INVITATION_TTL_SECS: i64 = 7 * 24 * 3600;
/// Most invitations pending on one wallet.
pub const MAX_INVITATIONS: usize = 64;

/// Most invitations pending for one account: invitations cost their invitee a read each when
/// listed, and sign-up is open (anyone can make wallets that invite anyone).
pub const MAX_RECEIVED: usize = 100;

/// The live invitation of `account` in `rec`.
fn live_invitation<'r>(rec: &'r WalletRecord, account: &str, now: i64) -> Option<&'r Invitation> {
    let inv = rec.invitations.get(account)?;
    inv.is_live(rec.roster.as_ref()?, now).then_some(inv)
}

/// Where `account`'s invitation to `wallet` is found.
fn index_key(account: &str, wallet: &str) -> String {
    format!("{}{wallet}", index_prefix(account))
}

fn index_prefix(account: &str) -> String {
    format!("i/{account}/")
}

impl WalletService {
    /// Shares the wallet with the account registered under `req.email` as owner or viewer: an
    /// invitation it accepts (`Some`), or, when it is a member already, its role changed at once
    /// (`None`; the last owner cannot be made a viewer, 409). 404 when no account has the email;
    /// 409 when the wallet has [`MAX_INVITATIONS`] pending or the account [`MAX_RECEIVED`].
    pub async fn add_member(&self, owner: &Owner, req: AddMember) -> WalletResult<Option<Invited>> {
        let email = req.email.trim().to_ascii_lowercase();
        let store = &self.ctx.store;
        let (account, _) = self
            .account_for_email(&email)
            .await?
            .or_not_found("no account with this email")?;
        let caller = owner.member();
        let inviter: Account = self
            .get_account(caller)
            .await?
            .or_not_found("no such wallet")?;
        let received = self.received_count(&account).await?;
        let expires_at = self.now() + INVITATION_TTL_SECS;
        let sealed_emails =
            self.seal_invitation_emails(owner.id(), &account, &email, &inviter.email)?;
        let mut invited = None;
        self.change_record(owner.id(), |roster, rec| {
            invited = None;
            if roster.contains_key(&account) {
                return super::members::change_roster(roster, caller, &account, Some(req.role));
            }
            owner_in(roster, caller)?;
            if roster.len() >= MAX_MEMBERS {
                return Err(WalletError::conflict(format!(
                    "a wallet has at most {MAX_MEMBERS} members"
                )));
            }
            let renewal = rec.invitations.contains_key(&account);
            if !renewal && rec.invitations.len() >= MAX_INVITATIONS {
                return Err(WalletError::conflict(format!(
                    "a wallet has at most {MAX_INVITATIONS} pending invitations: revoke one, or wait for them to expire"
                )));
            }
            if !renewal && received >= MAX_RECEIVED {
                return Err(WalletError::conflict(format!(
                    "this account has {MAX_RECEIVED} pending invitations; it must answer some first"
                )));
            }
            rec.invitations.insert(
                account.clone(),
                Invitation {
                    email: String::new(),
                    role: req.role,
                    invited_by: caller.to_string(),
                    invited_by_email: String::new(),
                    sealed_emails: Some(sealed_emails.clone()),
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
                        &index_key(&account, owner.id()),
                        &req.role,
                        Some(ttl),
                    )
                    .await?
            }
            None => {
                self.write_member_index(owner.id(), &account, Some(req.role), Vec::new())
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
            .filter(|(account, _)| live_invitation(&rec, account, now).is_some())
            .map(|(account, i)| {
                let (email, invited_by_email) =
                    self.shown_invitation_emails(owner.id(), account, i);
                InvitationView {
                    email,
                    role: i.role,
                    invited_by_email,
                    expires_at: i.expires_at,
                }
            })
            .collect())
    }

    /// Withdraws the invitation of `email` (owners); 404 when none is pending.
    pub async fn revoke_invitation(&self, owner: &Owner, email: &str) -> WalletResult<()> {
        let email = email.trim().to_ascii_lowercase();
        let caller = owner.member();
        let none = || WalletError::not_found("no pending invitation for this email");
        let mut revoked = None;
        self.change_record(owner.id(), |roster, rec| {
            owner_in(roster, caller)?;
            let account = rec
                .invitations
                .iter()
                .find(|(a, i)| self.shown_invitation_emails(owner.id(), a, i).0 == email)
                .map(|(a, _)| a.clone())
                .ok_or_else(none)?;
            rec.invitations.remove(&account);
            revoked = Some(account);
            Ok(())
        })
        .await?;
        if let Some(account) = revoked {
            self.ctx
                .store
                .delete(ks::MEMBERS, &index_key(&account, owner.id()))
                .await?;
        }
        Ok(())
    }

    /// How many invitations `account` has pending, up to [`MAX_RECEIVED`]. At the limit, index
    /// entries of invitations that are no longer live (lapsed, revoked, their wallet deleted;
    /// the entries outlive them by their TTL) are dropped and the rest counted again: anyone
    /// could otherwise fill an account's limit with invitations it can neither see nor decline
    /// (attacker review). At most [`MAX_RECEIVED`] wallet reads, only at the limit.
    async fn received_count(&self, account: &str) -> WalletResult<usize> {
        let store = &self.ctx.store;
        let prefix = index_prefix(account);
        let n = store
            .count_prefix(ks::MEMBERS, &prefix, MAX_RECEIVED)
            .await?;
        if n < MAX_RECEIVED {
            return Ok(n);
        }
        let mut live = 0;
        for (key, _) in store
            .scan_prefix(ks::MEMBERS, &prefix, MAX_RECEIVED)
            .await?
        {
            let wallet = key.rsplit('/').next().unwrap_or_default();
            // live in this node's copy: live (only a stale-looking one is read at the primary)
            let here = store.get_json::<WalletRecord>(ks::WALLETS, wallet).await?;
            let now = self.now();
            if here.is_some_and(|r| live_invitation(&r, account, now).is_some())
                || !self.drop_if_stale(account, wallet, &key).await?
            {
                live += 1;
            }
        }
        Ok(live)
    }

    /// Drops `account`'s invitation index entry `key` for `wallet` when the wallet, read at its
    /// primary (a node's own copy may lag the invitation: review), holds no live invitation for
    /// it; whether it did.
    async fn drop_if_stale(&self, account: &str, wallet: &str, key: &str) -> WalletResult<bool> {
        let store = &self.ctx.store;
        let rec = store
            .get_settled_json::<WalletRecord>(ks::WALLETS, wallet)
            .await?;
        if rec.is_some_and(|r| live_invitation(&r, account, self.now()).is_some()) {
            return Ok(false);
        }
        store.delete(ks::MEMBERS, key).await?;
        Ok(true)
    }

    /// The invitations pending for the signed-in account (at most [`MAX_RECEIVED`]); index
    /// entries of ones no longer live are dropped on the way.
    pub async fn received_invitations(
        &self,
        who: &SignedIn,
    ) -> WalletResult<Vec<ReceivedInvitation>> {
        let me = who.account().id.as_str();
        let store = &self.ctx.store;
        let now = self.now();
        let mut out = Vec::new();
        for (key, _) in store
            .scan_prefix(ks::MEMBERS, &index_prefix(me), MAX_RECEIVED)
            .await?
        {
            let wallet = key.rsplit('/').next().unwrap_or_default();
            let Some(rec) = store.get_json::<WalletRecord>(ks::WALLETS, wallet).await? else {
                // not here: gone, or not replicated here yet (then it stays)
                self.drop_if_stale(me, wallet, &key).await?;
                continue;
            };
            if let Some(inv) = live_invitation(&rec, me, now) {
                out.push(ReceivedInvitation {
                    wallet: rec.wallet.id.clone(),
                    wallet_name: rec.wallet.name.clone(),
                    role: inv.role,
                    invited_by_email: self.shown_invitation_emails(wallet, me, inv).1,
                    expires_at: inv.expires_at,
                });
            }
        }
        Ok(out)
    }

    /// Accepts the signed-in account's invitation to `wallet`: it becomes a member with the
    /// invitation's role (a member already keeps the higher of the two). 404 when no live
    /// invitation is pending (the same for a wallet that does not exist, and for one whose
    /// inviter has been disabled since), 409 when the wallet is full.
    pub async fn accept_invitation(
        &self,
        who: &SignedIn,
        wallet: &str,
    ) -> WalletResult<WalletView> {
        let me = who.account().id.as_str();
        let now = self.now();
        let none = || WalletError::not_found("no pending invitation to this wallet");
        let store = &self.ctx.store;
        // an inviter disabled since (a compromised account, say) invites nobody any more
        let pending = store
            .get_settled_json::<WalletRecord>(ks::WALLETS, wallet)
            .await?
            .and_then(|rec| rec.invitations.get(me).map(|i| i.invited_by.clone()))
            .ok_or_else(none)?;
        let inviter: Option<Account> = self.get_account(&pending).await?;
        if inviter.is_none_or(|a| a.disabled) {
            return Err(none());
        }
        let mut role = MemberRole::Viewer;
        let rec = self
            .change_record(wallet, |roster, rec| {
                let inv = rec.invitations.get(me).cloned().ok_or_else(none)?;
                if !inv.is_live(roster, now) || inv.invited_by != pending {
                    return Err(none());
                }
                rec.invitations.remove(me);
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
        let invitation = BatchOp::Delete {
            keyspace: ks::MEMBERS,
            key: index_key(me, wallet),
        };
        self.write_member_index(wallet, me, Some(role), vec![invitation])
            .await?;
        Ok(WalletView {
            wallet: rec.wallet,
            role,
        })
    }

    /// Declines the signed-in account's invitation to `wallet`; 404 when none is pending.
    pub async fn decline_invitation(&self, who: &SignedIn, wallet: &str) -> WalletResult<()> {
        let me = who.account().id.as_str();
        let none = || WalletError::not_found("no pending invitation to this wallet");
        let declined = self
            .change_record(wallet, |_, rec| {
                rec.invitations.remove(me).map(|_| ()).ok_or_else(none)
            })
            .await;
        match declined {
            Err(e) if e.error_code() != crate::error::Code::NotFound => return Err(e),
            // none pending: an index entry left of one that lapsed goes all the same
            _ => {
                self.ctx
                    .store
                    .delete(ks::MEMBERS, &index_key(me, wallet))
                    .await?;
            }
        }
        declined.map(|_| ()).map_err(|_| none())
    }
}

impl WalletService {
    /// An invitation's `[email, invited_by_email]` as its record keeps them: sealed to the
    /// wallet and the invitee's account.
    fn seal_invitation_emails(
        &self,
        wallet: &str,
        account: &str,
        email: &str,
        invited_by_email: &str,
    ) -> WalletResult<String> {
        let plain = serde_json::to_vec(&[email, invited_by_email]).or_internal()?;
        self.seal(&invitation_aad(wallet, account), &plain)
    }

    /// Invitation `i` of `account` to `wallet`: (the invitee's email, the inviter's), opened, or
    /// in clear in a record of an earlier release. Emails that do not open (a damaged record)
    /// are shown empty, with a warning, rather than failing the lists.
    fn shown_invitation_emails(
        &self,
        wallet: &str,
        account: &str,
        i: &Invitation,
    ) -> (String, String) {
        let Some(sealed) = &i.sealed_emails else {
            return (i.email.clone(), i.invited_by_email.clone());
        };
        let opened = self
            .unseal(&invitation_aad(wallet, account), sealed)
            .and_then(|plain| serde_json::from_slice::<[String; 2]>(&plain).or_internal());
        match opened {
            Ok([email, invited_by_email]) => (email, invited_by_email),
            Err(e) => {
                tracing::warn!(wallet, error = %e, "an invitation's emails do not open");
                (String::new(), String::new())
            }
        }
    }
}

/// What an invitation's emails are sealed to: the wallet record's place and the invitee.
fn invitation_aad(wallet: &str, account: &str) -> String {
    format!("{}/{wallet}/invitations/{account}", ks::WALLETS)
}

/// The index entries of a deleted wallet's invitations.
pub(super) fn invitation_index_deletes(wallet: &str, rec: &WalletRecord) -> Vec<BatchOp> {
    rec.invitations
        .keys()
        .map(|account| BatchOp::Delete {
            keyspace: ks::MEMBERS,
            key: index_key(account, wallet),
        })
        .collect()
}
