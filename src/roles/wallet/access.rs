//! Who may touch which wallet, as values (lldap's capability handlers). A wallet session token
//! becomes a [`SignedIn`]; a signed-in account that is a member of a wallet gets a [`Viewer`]
//! (any member) or an [`Owner`] (owners only); a capability with a tenant session open on its
//! wallet is an [`Opened`]. Their fields are private and this module holds their only
//! constructors, so a service method that takes `&Owner` cannot be reached without the owner
//! check having passed, and a viewer has no way to turn its `Viewer` into an `Owner`.
//! An `Owner` is also a `Viewer` (`Deref`), so owners read through the same methods.

use std::ops::Deref;

use super::error::{OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::{Account, MemberRole, SessionRecord, Wallet, WalletRecord};
use super::service::{load_context, WalletService, WalletSession};
use crate::crypto::sha256_hex;
use crate::tenancy::AcquireError;

/// An account that presented a live wallet session token.
pub struct SignedIn {
    account: Account,
    token: String,
}

impl SignedIn {
    pub fn account(&self) -> &Account {
        &self.account
    }
    /// The session token, so that logging out can revoke it.
    pub(super) fn token(&self) -> &str {
        &self.token
    }
}

/// Proof that the signed-in account is a member of `wallet` (viewer or owner): it may read.
#[derive(Debug)]
pub struct Viewer {
    wallet: Wallet,
    role: MemberRole,
    /// The member's account id.
    member: String,
}

impl Viewer {
    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }
    /// The wallet's id: the only wallet this proof opens.
    pub fn id(&self) -> &str {
        &self.wallet.id
    }
    /// The member's actual role (an owner reading through a `Viewer` is still an owner here).
    pub fn role(&self) -> MemberRole {
        self.role
    }
    /// The account this proof was made for.
    pub fn member(&self) -> &str {
        &self.member
    }
}

/// Proof that the signed-in account owns `wallet`: it may change it. Reads go through `Deref`.
#[derive(Debug)]
pub struct Owner(Viewer);

impl Deref for Owner {
    type Target = Viewer;
    fn deref(&self) -> &Viewer {
        &self.0
    }
}

/// A capability on a wallet: what [`WalletService::open`] opens a tenant session for.
pub trait Capability: sealed::Sealed {
    fn viewer(&self) -> &Viewer;
}

impl Capability for Viewer {
    fn viewer(&self) -> &Viewer {
        self
    }
}

impl Capability for Owner {
    fn viewer(&self) -> &Viewer {
        &self.0
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Viewer {}
    impl Sealed for super::Owner {}
}

/// A capability with a tenant session held on its wallet for the request (admission counted:
/// at most `max_sessions_per_tenant` at once per wallet). Reads the capability through `Deref`.
/// The exchanges, which call out to issuers and verifiers, take a plain [`Owner`] instead and a
/// session only around their signing ([`WalletService::session_for`]).
pub struct Opened<C> {
    cap: C,
    /// Held, not read: dropping it ends the session.
    _session: WalletSession,
}

impl<C> Deref for Opened<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.cap
    }
}

impl WalletService {
    /// The account behind a bearer token, if the token is live and the account enabled.
    pub async fn authenticate(&self, token: &str) -> WalletResult<SignedIn> {
        const UNAUTHORIZED: WalletError = WalletError::Unauthorized(
            "log in: the wallet session token is missing, expired or revoked",
        );
        let store = &self.ctx.store;
        // A node cut off from most of the cluster (consistent mode) answers 503: a logout, an
        // account disabled or a member removed on the other side is not here, and the session
        // must not go on working on this side until the partition heals (cluster review).
        store.current()?;
        let s: SessionRecord = store
            .get_json(ks::SESSIONS, &sha256_hex(token))
            .await?
            .ok_or(UNAUTHORIZED)?;
        // the record's own expiry too, not only the store's: a record without a store ttl (an
        // edited import, a backend that lost it) must not make a session for ever
        if s.expires_at <= self.now() {
            return Err(UNAUTHORIZED);
        }
        let account: Account = self.get_account(&s.account).await?.ok_or(UNAUTHORIZED)?;
        // ended by a password change or a logout everywhere (sessions of earlier releases are
        // of epoch 0, and end with the first such change)
        if s.epoch != account.session_epoch {
            return Err(UNAUTHORIZED);
        }
        if account.disabled {
            return Err(WalletError::Forbidden("this account is disabled"));
        }
        Ok(SignedIn {
            account,
            token: token.to_string(),
        })
    }

    /// Read access to `wallet`, as its roster has it (the membership index of a record from
    /// before rosters). Not a member → 404, so wallet ids cannot be probed.
    pub async fn viewer(&self, who: &SignedIn, wallet: &str) -> WalletResult<Viewer> {
        let store = &self.ctx.store;
        let not_found = || format!("no wallet `{wallet}`");
        let rec: WalletRecord = store
            .get_json(ks::WALLETS, wallet)
            .await?
            .or_not_found(not_found())?;
        let indexed: Option<MemberRole> = store
            .get_json(ks::MEMBERS, &format!("a/{}/{wallet}", who.account.id))
            .await?;
        // With a roster, the lesser of its role and the index's: a node of the release before
        // rosters (a rolling upgrade on Redis, a rollback) removes or demotes in the index only,
        // and that must hold; an index entry the roster does not back grants nothing.
        let role = match (&rec.roster, indexed) {
            (Some(_), Some(i)) => rec.role_of(&who.account.id).map(|r| r.min(i)),
            (Some(_), None) => None,
            (None, indexed) => indexed,
        }
        .or_not_found(not_found())?;
        Ok(Viewer {
            wallet: rec.wallet,
            role,
            member: who.account.id.clone(),
        })
    }

    /// Owner access to `wallet`: 404 for non-members (as [`Self::viewer`]), 403 for viewers.
    pub async fn owner(&self, who: &SignedIn, wallet: &str) -> WalletResult<Owner> {
        let viewer = self.viewer(who, wallet).await?;
        if viewer.role < MemberRole::Owner {
            return Err(WalletError::Forbidden(
                "this needs the owner role on the wallet",
            ));
        }
        Ok(Owner(viewer))
    }

    /// Opens a tenant session on the capability's wallet (unsealing its keys on first open).
    pub async fn open<C: Capability>(&self, cap: C) -> WalletResult<Opened<C>> {
        let session = self.acquire(cap.viewer().id()).await?;
        Ok(Opened {
            cap,
            _session: session,
        })
    }

    /// A tenant session on the owner's wallet, for a step that needs the keys and no more: the
    /// exchanges take one around their signing only, never across a call to an issuer or a
    /// verifier (a slow one would hold a slot of the wallet's and of the node's for as long).
    /// Only an [`Owner`] gets the keys.
    pub(super) async fn session_for(&self, owner: &Owner) -> WalletResult<WalletSession> {
        self.acquire(owner.id()).await
    }

    /// A tenant session on wallet `wid` (its keys unsealed on first open), or 503 at capacity.
    async fn acquire(&self, wid: &str) -> WalletResult<WalletSession> {
        let ctx = self.ctx.clone();
        let id = wid.to_string();
        self.coordinator
            .acquire(wid, || async move {
                load_context(&ctx, &id).await.map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| match e {
                AcquireError::Timeout => WalletError::Busy {
                    detail: "the wallet service is at capacity; retry shortly",
                    retry_after: 1,
                },
                AcquireError::Open(m) => WalletError::Internal(m),
            })
    }

    /// [`Self::viewer`], then [`Self::open`].
    pub async fn open_viewer(&self, who: &SignedIn, wallet: &str) -> WalletResult<Opened<Viewer>> {
        self.open(self.viewer(who, wallet).await?).await
    }

    /// [`Self::owner`], then [`Self::open`].
    pub async fn open_owner(&self, who: &SignedIn, wallet: &str) -> WalletResult<Opened<Owner>> {
        self.open(self.owner(who, wallet).await?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::error::{ApiError, Code};
    use crate::roles::wallet::model::{
        AddMember, Credentials, LoginRequest, LoginResponse, WalletRecord,
    };
    use crate::roles::RoleContext;
    use std::sync::Arc;

    fn service() -> WalletService {
        let ctx = RoleContext::for_tests(FakeClock::new(1_700_000_000_000));
        WalletService::new(ctx, crate::config::WalletConfig::default())
    }

    /// The summary of a credential stored without being received (for the caps).
    pub(super) fn stored_summary() -> crate::roles::wallet::model::CredentialSummary {
        crate::roles::wallet::model::CredentialSummary {
            id: String::new(),
            format: "jwt_vc_json".into(),
            issuer: "did:example:issuer".into(),
            credential_type: "T".into(),
            configuration_id: None,
            issued_at: None,
            expires_at: None,
            received_at: 0,
            mdoc: None,
        }
    }

    pub(super) async fn sign_up(svc: &WalletService, email: &str) -> SignedIn {
        let creds = || Credentials {
            email: email.into(),
            password: "correct horse".into(),
        };
        svc.register(creds()).await.unwrap();
        let login = log_in(svc, email, "correct horse").await.unwrap();
        svc.authenticate(&login.token).await.unwrap()
    }

    /// A login of `email` with `password`, from no device signed in on before.
    async fn log_in(
        svc: &WalletService,
        email: impl Into<String>,
        password: &str,
    ) -> WalletResult<LoginResponse> {
        svc.login(LoginRequest {
            email: email.into(),
            password: password.into(),
            device_token: None,
        })
        .await
    }

    /// A password change ends every session of the account (a leaked password, and every
    /// session made with it, stop working), after checking the current password under the
    /// email's failure count; logging out everywhere ends them without a change (security
    /// review: neither existed, so a leaked password was an account lost).
    #[tokio::test]
    async fn a_password_change_ends_every_session() {
        let svc = service();
        let mine = sign_up(&svc, "gina@example.org").await;
        let thief = log_in(&svc, "gina@example.org", "correct horse")
            .await
            .unwrap();
        svc.authenticate(&thief.token).await.unwrap();
        let change = |current: &str, new: &str| crate::roles::wallet::model::ChangePassword {
            current_password: current.into(),
            new_password: new.into(),
        };
        let e = svc
            .change_password(&mine, change("wrong guess!", "battery staple"))
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::Forbidden);
        let e = svc
            .change_password(&mine, change("correct horse", "short"))
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::Validation);
        // nothing changed so far
        svc.authenticate(&thief.token).await.unwrap();
        svc.change_password(&mine, change("correct horse", "battery staple"))
            .await
            .unwrap();
        for token in [mine.token(), thief.token.as_str()] {
            let refused = svc.authenticate(token).await.err().map(code);
            assert_eq!(refused, Some(Code::Unauthorized));
        }
        assert!(log_in(&svc, "gina@example.org", "correct horse")
            .await
            .is_err());
        let fresh = log_in(&svc, "gina@example.org", "battery staple")
            .await
            .unwrap();
        let fresh = svc.authenticate(&fresh.token).await.unwrap();
        // logging out everywhere ends the sessions and keeps the password
        svc.logout_everywhere(&fresh).await.unwrap();
        assert!(svc.authenticate(fresh.token()).await.is_err());
        let again = log_in(&svc, "gina@example.org", "battery staple")
            .await
            .unwrap();
        svc.authenticate(&again.token).await.unwrap();
        // wrong current passwords count against the email like failed logins
        let again = svc.authenticate(&again.token).await.unwrap();
        let locked = loop {
            match svc
                .change_password(&again, change("wrong guess!", "battery staple 2"))
                .await
            {
                Err(WalletError::LoginLocked { .. }) => break true,
                Err(_) => continue,
                Ok(()) => break false,
            }
        };
        assert!(locked);
    }

    /// A login with an email no account can have (here 300 KiB) is refused like a wrong
    /// password, and leaves nothing in the store: the failure counter is keyed by the email.
    #[tokio::test]
    async fn a_login_with_an_impossible_email_stores_nothing() {
        let svc = service();
        sign_up(&svc, "dave@example.org").await;
        for email in [
            format!("{}@example.org", "a".repeat(300 * 1024)),
            "no-at-sign".into(),
        ] {
            let e = svc
                .login(LoginRequest {
                    email,
                    password: "x".into(),
                    device_token: None,
                })
                .await
                .unwrap_err();
            assert_eq!(ApiError::from(e).code, Code::Unauthorized);
        }
        let stored = svc.ctx.store.count_prefix(ks::LOGIN_FAILURES, "", 10).await;
        assert_eq!(stored.unwrap(), 0);
        // a possible email is counted as before
        let _ = log_in(&svc, "dave@example.org", "wrong").await.unwrap_err();
        let stored = svc.ctx.store.count_prefix(ks::LOGIN_FAILURES, "", 10).await;
        assert_eq!(stored.unwrap(), 1);
    }

    /// A second sign-up with `email` is refused (409).
    async fn assert_sign_up_refused(svc: &WalletService, email: &str) {
        let again = svc
            .register(Credentials {
                email: email.into(),
                password: "another password".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(ApiError::from(again).code, Code::Conflict);
    }

    /// Whoever reads the store finds no email: the index and the login counters are keyed by
    /// a MAC of it, the account keeps it sealed. An account an earlier release stored (email in
    /// clear, indexed by the email itself) still logs in, shows its email, is moved to the sealed
    /// form by that login, and its email cannot be signed up again.
    #[tokio::test]
    async fn the_store_keeps_no_email_in_clear() {
        let svc = service();
        let store = svc.ctx.store.clone();
        let erin = sign_up(&svc, "erin@example.org").await;
        let _ = log_in(&svc, "erin@example.org", "wrong password")
            .await
            .unwrap_err();
        for keyspace in [ks::ACCOUNTS, ks::EMAILS, ks::LOGIN_FAILURES] {
            let records = store.scan_prefix(keyspace, "", 100).await.unwrap();
            assert!(!records.is_empty(), "{keyspace}");
            for (key, value) in records {
                let all = format!("{key} {}", String::from_utf8_lossy(&value));
                assert!(!all.contains("erin"), "{keyspace}: {all}");
            }
        }
        let accounts = svc.list_accounts().await.unwrap();
        assert_eq!(accounts[0].email, "erin@example.org");
        assert_eq!(erin.account().email, "erin@example.org");
        // an earlier release's account
        let legacy = Account {
            id: "legacy-1".into(),
            email: "frank@example.org".into(),
            sealed_email: None,
            password_hash: svc
                .get_account(&erin.account().id)
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            created_at: 1,
            disabled: false,
            session_epoch: 0,
        };
        store
            .put_json(ks::ACCOUNTS, &legacy.id, &legacy, None)
            .await
            .unwrap();
        store
            .insert_new_json(ks::EMAILS, "frank@example.org", &legacy.id, None)
            .await
            .unwrap();
        let log_in = || log_in(&svc, "frank@example.org", "correct horse");
        let frank = log_in().await.unwrap();
        let signed_in = svc.authenticate(&frank.token).await.unwrap();
        assert_eq!(signed_in.account().email, "frank@example.org");
        // and that login moved it to the sealed form: nothing of its email in clear any more
        for keyspace in [ks::ACCOUNTS, ks::EMAILS] {
            for (key, value) in store.scan_prefix(keyspace, "", 100).await.unwrap() {
                let all = format!("{key} {}", String::from_utf8_lossy(&value));
                assert!(!all.contains("frank"), "{keyspace}: {all}");
            }
        }
        let again = log_in().await.unwrap();
        assert_eq!(again.account.email, "frank@example.org");
        assert_sign_up_refused(&svc, "frank@example.org").await;
    }

    /// A password hash is keyed with the deployment's password key: the stored hash does not
    /// check a guess without it. An account of an earlier release (unkeyed hash) still logs in,
    /// that login replaces its hash by a keyed one of the same password, and a wrong password
    /// changes nothing.
    #[tokio::test]
    async fn password_hashes_are_keyed_and_an_earlier_releases_is_keyed_at_login() {
        use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
        let svc = service();
        let grace = sign_up(&svc, "grace@example.org").await;
        let id = grace.account().id.clone();
        let stored_hash = || async { svc.get_account(&id).await.unwrap().unwrap().password_hash };
        let unkeyed_check = |hash: &str| {
            argon2::Argon2::default()
                .verify_password(b"correct horse", &PasswordHash::new(hash).unwrap())
                .is_ok()
        };
        let keyed = stored_hash().await;
        assert!(keyed.contains(",keyid="), "{keyed}");
        assert!(!unkeyed_check(&keyed), "a store reader checks no guess");
        // an earlier release's hash of the same password
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let legacy = argon2::Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        svc.ctx
            .store
            .update_json::<Account, WalletError, _>(ks::ACCOUNTS, &id, None, |mut a| {
                a.password_hash = legacy.clone();
                Ok(a)
            })
            .await
            .unwrap();
        let grace = "grace@example.org";
        log_in(&svc, grace, "wrong horse").await.unwrap_err();
        assert_eq!(stored_hash().await, legacy, "a wrong password keys nothing");
        log_in(&svc, grace, "correct horse").await.unwrap();
        let rekeyed = stored_hash().await;
        assert!(rekeyed.contains(",keyid="), "{rekeyed}");
        assert!(!unkeyed_check(&rekeyed));
        log_in(&svc, grace, "correct horse").await.unwrap();
        log_in(&svc, grace, "wrong horse").await.unwrap_err();
    }

    /// An email claimed for an account that was never written (a claim applied but answered
    /// 503 in a cluster, or one from before accounts were written first) is taken over by the
    /// next sign-up, instead of the email being lost for good (attacker review); an email whose
    /// account exists is still refused, and the refused sign-up leaves no account behind.
    #[tokio::test]
    async fn an_email_claimed_for_no_account_is_taken_over_by_the_next_sign_up() {
        let svc = service();
        let store = svc.ctx.store.clone();
        let key = svc.email_key("carol@example.org");
        store
            .insert_new_json(ks::EMAILS, &key, "never-written", None)
            .await
            .unwrap();
        let carol = sign_up(&svc, "carol@example.org").await;
        let named: Option<String> = store.get_json(ks::EMAILS, &key).await.unwrap();
        assert_eq!(named.as_deref(), Some(carol.account().id.as_str()));
        let before = store.count_prefix(ks::ACCOUNTS, "", 100).await.unwrap();
        assert_sign_up_refused(&svc, "carol@example.org").await;
        assert_eq!(
            store.count_prefix(ks::ACCOUNTS, "", 100).await.unwrap(),
            before
        );
    }

    /// A service with Alice's wallet "home" and a second signed-in account (not a member).
    async fn alice_home_and(other: &str) -> (WalletService, SignedIn, SignedIn, String) {
        let svc = service();
        let alice = sign_up(&svc, "alice@example.org").await;
        let other = sign_up(&svc, other).await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        (svc, alice, other, w.wallet.id)
    }

    fn code(e: WalletError) -> Code {
        ApiError::from(e).code
    }

    /// Alice's wallet "home" on a service whose clock the test moves.
    async fn clocked_alice_home() -> (WalletService, Arc<FakeClock>, SignedIn, String) {
        let clock = FakeClock::new(1_700_000_000_000);
        let ctx = RoleContext::for_tests(clock.clone());
        let svc = WalletService::new(ctx, crate::config::WalletConfig::default());
        let alice = sign_up(&svc, "alice@example.org").await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        (svc, clock, alice, w.wallet.id)
    }

    /// `owner` invites the account of `email` to its wallet as a viewer.
    async fn invite_viewer(
        svc: &WalletService,
        owner: &Owner,
        email: &str,
    ) -> Option<crate::roles::wallet::model::Invited> {
        let invite = AddMember {
            email: email.into(),
            role: MemberRole::Viewer,
        };
        svc.add_member(owner, invite).await.unwrap()
    }

    /// `owner` invites `invitee` to its wallet as `role`, and the invitee accepts.
    async fn share_with(svc: &WalletService, owner: &Owner, invitee: &SignedIn, role: MemberRole) {
        let share = AddMember {
            email: invitee.account().email.clone(),
            role,
        };
        let invited = svc.add_member(owner, share).await.unwrap();
        assert!(invited.is_some(), "a non-member gets an invitation");
        svc.accept_invitation(invitee, owner.id()).await.unwrap();
    }

    #[tokio::test]
    async fn a_viewer_cannot_obtain_the_owner_capability() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        share_with(&svc, &owner, &bob, MemberRole::Viewer).await;

        let viewer = svc.viewer(&bob, &w).await.unwrap();
        assert_eq!(viewer.role(), MemberRole::Viewer);
        assert_eq!(viewer.id(), w);
        let refused = svc.owner(&bob, &w).await.unwrap_err();
        assert_eq!(code(refused), Code::Forbidden);
        let refused = svc.open_owner(&bob, &w).await.err().unwrap();
        assert_eq!(code(refused), Code::Forbidden);
        // the viewer still reads
        let opened = svc.open_viewer(&bob, &w).await.unwrap();
        assert!(svc.list_keys(&opened).await.unwrap().is_empty());
        // and an owner reads through the same methods
        let opened = svc.open_owner(&alice, &w).await.unwrap();
        assert_eq!(opened.role(), MemberRole::Owner);
        assert!(svc.list_dids(&opened).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn another_accounts_wallet_is_not_found_at_every_level() {
        let (svc, _alice, mallory, w) = alice_home_and("mallory@example.org").await;
        for e in [
            svc.viewer(&mallory, &w).await.unwrap_err(),
            svc.owner(&mallory, &w).await.unwrap_err(),
            svc.open_viewer(&mallory, &w).await.err().unwrap(),
            svc.viewer(&mallory, "no-such-wallet").await.unwrap_err(),
        ] {
            assert_eq!(code(e), Code::NotFound);
        }
    }

    #[tokio::test]
    async fn a_capability_reaches_only_its_own_wallet() {
        let svc = service();
        let alice = sign_up(&svc, "alice@example.org").await;
        let a = svc.create_wallet(alice.account(), "a").await.unwrap();
        let b = svc.create_wallet(alice.account(), "b").await.unwrap();
        let owner_a = svc.open_owner(&alice, &a.wallet.id).await.unwrap();
        svc.generate_key(&owner_a, crate::crypto::KeyType::Ed25519)
            .await
            .unwrap();
        let viewer_b = svc.open_viewer(&alice, &b.wallet.id).await.unwrap();
        assert!(svc.list_keys(&viewer_b).await.unwrap().is_empty());
        assert_eq!(svc.list_keys(&owner_a).await.unwrap().len(), 1);
    }

    /// A service with alice's wallet `a`: its id and its owner's capability.
    async fn alices_wallet() -> (WalletService, String, Opened<Owner>) {
        let svc = service();
        let alice = sign_up(&svc, "alice@example.org").await;
        let w = svc
            .create_wallet(alice.account(), "a")
            .await
            .unwrap()
            .wallet
            .id;
        let owner = svc.open_owner(&alice, &w).await.unwrap();
        (svc, w, owner)
    }

    /// Which credentials a user holds (issuer, type, dates) is sealed to each credential's place:
    /// not in the store in clear, listed and filtered opened. A summary copied to another
    /// credential does not open there (that one is listed by its id and format alone); a record
    /// of an earlier release (summary in clear) is listed as it is.
    #[tokio::test]
    async fn a_credentials_summary_is_sealed_in_its_record() {
        use crate::roles::wallet::model::{CredentialFilter, CredentialRecord, CredentialSummary};
        let (svc, w, owner) = alices_wallet().await;
        let summary = CredentialSummary {
            issuer: "did:example:Health-Issuer".into(),
            credential_type: "DisabilityCard".into(),
            ..stored_summary()
        };
        let a = svc
            .put_credential(&owner, summary.clone(), "a.b.c", "k", None)
            .await
            .unwrap();
        let b = svc
            .put_credential(&owner, stored_summary(), "d.e.f", "k", None)
            .await
            .unwrap();
        let store = svc.ctx.store.clone();
        for (key, value) in store.scan_prefix(ks::CREDS, "", 100).await.unwrap() {
            let all = format!("{key} {}", String::from_utf8_lossy(&value));
            assert!(
                !all.contains("Health-Issuer") && !all.contains("DisabilityCard"),
                "{all}"
            );
        }
        let by_type = |t: &str| CredentialFilter {
            credential_type: Some(t.into()),
            issuer: None,
            format: None,
        };
        let listed = svc
            .list_credentials(&owner, &by_type("DisabilityCard"))
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, a.id);
        assert_eq!(listed[0].issuer, "did:example:Health-Issuer");
        // a's sealed summary copied to b's record: b is listed without it
        let key = |id: &str| format!("{w}/{id}");
        let rec_a: CredentialRecord = store
            .get_json(ks::CREDS, &key(&a.id))
            .await
            .unwrap()
            .unwrap();
        let mut rec_b: CredentialRecord = store
            .get_json(ks::CREDS, &key(&b.id))
            .await
            .unwrap()
            .unwrap();
        rec_b.sealed_summary = rec_a.sealed_summary.clone();
        store
            .put_json(ks::CREDS, &key(&b.id), &rec_b, None)
            .await
            .unwrap();
        let all = CredentialFilter {
            credential_type: None,
            issuer: None,
            format: None,
        };
        let listed = svc.list_credentials(&owner, &all).await.unwrap();
        let shown_b = listed.iter().find(|c| c.id == b.id).unwrap();
        assert!(shown_b.issuer.is_empty() && shown_b.credential_type.is_empty());
        // an earlier release's record: the summary in clear, listed as it is
        rec_b.sealed_summary = None;
        rec_b.summary = Some(CredentialSummary {
            id: b.id.clone(),
            ..summary
        });
        store
            .put_json(ks::CREDS, &key(&b.id), &rec_b, None)
            .await
            .unwrap();
        let listed = svc
            .list_credentials(&owner, &by_type("DisabilityCard"))
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
    }

    /// Attacker review: a wallet took keys and credentials without end, and every list, key
    /// change and presentation request reads all of them. Keys, credentials and a credential's
    /// size are bounded, with a 409 / 422 that says so.
    #[tokio::test]
    async fn a_wallet_holds_bounded_keys_and_credentials() {
        use crate::roles::wallet::credentials::{MAX_CREDENTIALS, MAX_CREDENTIAL_BYTES};
        use crate::roles::wallet::keys::MAX_KEYS;
        let (svc, w, owner) = alices_wallet().await;
        for _ in 0..MAX_KEYS {
            svc.generate_key(&owner, crate::crypto::KeyType::Ed25519)
                .await
                .unwrap();
        }
        let e = svc
            .generate_key(&owner, crate::crypto::KeyType::Ed25519)
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::Conflict);

        let summary = stored_summary;
        let big = "a".repeat(MAX_CREDENTIAL_BYTES + 1);
        let e = svc
            .put_credential(&owner, summary(), &big, "k", None)
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::Validation);
        svc.put_credential(&owner, summary(), "a.b.c", "k", None)
            .await
            .unwrap();
        let store = svc.ctx.store.clone();
        for i in 1..MAX_CREDENTIALS {
            store
                .put(ks::CREDS, &format!("{w}/filler-{i}"), b"{}".to_vec(), None)
                .await
                .unwrap();
        }
        let e = svc
            .put_credential(&owner, summary(), "a.b.c", "k", None)
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::Conflict);
    }

    /// A wallet's credentials are bounded in bytes too: credentials of the largest size fill
    /// it long before their number does, and the one over the budget is not kept.
    #[tokio::test]
    async fn a_wallets_credentials_are_bounded_in_bytes() {
        use crate::roles::wallet::credentials::{MAX_CREDENTIAL_BYTES, MAX_WALLET_BYTES};
        let (svc, w, owner) = alices_wallet().await;
        let big = "a".repeat(MAX_CREDENTIAL_BYTES);
        svc.put_credential(&owner, stored_summary(), &big, "k", None)
            .await
            .unwrap();
        // what earlier credentials take: all but 100 KB of the budget
        let store = svc.ctx.store.clone();
        let prefix = format!("{w}/");
        let used = |store: Arc<dyn crate::store::Store>| {
            let prefix = prefix.clone();
            async move {
                let all = store.scan_prefix(ks::CREDS, &prefix, 10_000).await.unwrap();
                (all.len(), all.iter().map(|(_, v)| v.len()).sum::<usize>())
            }
        };
        let (_, first) = used(store.clone()).await;
        let filler = MAX_WALLET_BYTES - first - 100 * 1024;
        for (i, part) in [filler / 2, filler - filler / 2].into_iter().enumerate() {
            let value = vec![b' '; part];
            store
                .put(ks::CREDS, &format!("{w}/filler-{i}"), value, None)
                .await
                .unwrap();
        }
        let e = svc
            .put_credential(&owner, stored_summary(), &big, "k", None)
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::Conflict);
        assert_eq!(
            used(store.clone()).await.0,
            3,
            "the refused one is not kept"
        );
        // a small one still fits
        svc.put_credential(&owner, stored_summary(), "a.b.c", "k", None)
            .await
            .unwrap();
        assert!(used(store).await.1 <= MAX_WALLET_BYTES);
    }

    #[tokio::test]
    async fn a_revoked_or_unknown_token_is_unauthorized() {
        let svc = service();
        let alice = sign_up(&svc, "alice@example.org").await;
        let token = alice.token().to_string();
        svc.logout(&alice).await.unwrap();
        let e = svc.authenticate(&token).await.err().unwrap();
        assert_eq!(code(e), Code::Unauthorized);
        let e = svc.authenticate("nonsense").await.err().unwrap();
        assert_eq!(code(e), Code::Unauthorized);
        // a session record whose store ttl is gone (an edited import) ends at its expires_at
        let bob = sign_up(&svc, "bob@example.org").await;
        let key = crate::crypto::sha256_hex(bob.token());
        let store = svc.ctx.store.clone();
        let mut rec: SessionRecord = store.get_json(ks::SESSIONS, &key).await.unwrap().unwrap();
        rec.expires_at = svc.now();
        store
            .put_json(ks::SESSIONS, &key, &rec, None)
            .await
            .unwrap();
        let e = svc.authenticate(bob.token()).await.err().unwrap();
        assert_eq!(code(e), Code::Unauthorized);
    }

    /// Two owners demoting each other at the same moment: one change wins, the other finds it
    /// would leave no owner (409). Before the membership lease both passed the check, each on
    /// a scan taken before the other's write, and the wallet was left with no owner.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn owners_demoting_each_other_at_once_leave_an_owner() {
        let (svc, alice, bob, _) = alice_home_and("bob@example.org").await;
        let svc = std::sync::Arc::new(svc);
        for round in 0..10 {
            let w = svc.create_wallet(alice.account(), "shared").await.unwrap();
            let w = w.wallet.id;
            let share = |email: &str, role| AddMember {
                email: email.into(),
                role,
            };
            let owner = svc.owner(&alice, &w).await.unwrap();
            share_with(&svc, &owner, &bob, MemberRole::Owner).await;
            let (by_alice, by_bob) = (
                svc.owner(&alice, &w).await.unwrap(),
                svc.owner(&bob, &w).await.unwrap(),
            );
            let (s1, s2) = (svc.clone(), svc.clone());
            let (r1, r2) = tokio::join!(
                tokio::spawn(async move {
                    s1.add_member(&by_alice, share("bob@example.org", MemberRole::Viewer))
                        .await
                }),
                tokio::spawn(async move {
                    s2.add_member(&by_bob, share("alice@example.org", MemberRole::Viewer))
                        .await
                }),
            );
            let (r1, r2) = (r1.unwrap(), r2.unwrap());
            assert!(r1.is_ok() != r2.is_ok(), "round {round}: {r1:?} / {r2:?}");
            // the second finds either no other owner left (409) or itself no owner any more
            let refused = code(r1.err().or(r2.err()).unwrap());
            assert!(
                matches!(refused, Code::Conflict | Code::Forbidden),
                "round {round}: {refused:?}"
            );
            let alice_owns = svc.owner(&alice, &w).await.is_ok();
            let bob_owns = svc.owner(&bob, &w).await.is_ok();
            assert!(
                alice_owns != bob_owns,
                "round {round}: exactly one owner left"
            );
        }
    }

    /// A key deleted through another node (no invalidation reaches this one) signs nothing more
    /// here, even from a tenant context this node still holds with the key unsealed in it.
    #[tokio::test]
    async fn a_key_deleted_elsewhere_no_longer_signs_from_a_cached_context() {
        let ctx = RoleContext::for_tests(FakeClock::new(1_700_000_000_000));
        let here = WalletService::new(ctx.clone(), crate::config::WalletConfig::default());
        let elsewhere = WalletService::new(ctx, crate::config::WalletConfig::default());
        let alice = sign_up(&here, "alice@example.org").await;
        let w = here.create_wallet(alice.account(), "w").await.unwrap();
        let w = w.wallet.id;
        let key = here
            .generate_key(
                &here.owner(&alice, &w).await.unwrap(),
                crate::crypto::KeyType::Ed25519,
            )
            .await
            .unwrap();
        let opened = here
            .session_for(&here.owner(&alice, &w).await.unwrap())
            .await
            .unwrap();
        assert!(here.signing_key(&opened, &key.id).await.is_ok());
        elsewhere
            .delete_key(&elsewhere.owner(&alice, &w).await.unwrap(), &key.id)
            .await
            .unwrap();
        let e = here.signing_key(&opened, &key.id).await.err().unwrap();
        assert_eq!(code(e), Code::NotFound);
    }

    /// An account creates at most `max_wallets_per_account` wallets that still exist. Wallets
    /// shared with it, as owner too, do not count: a share needs no consent, so counting them
    /// let anyone fill another's quota (share as owner, then leave).
    #[tokio::test]
    async fn an_account_creates_at_most_the_configured_number_of_wallets() {
        let ctx = RoleContext::for_tests(FakeClock::new(1_700_000_000_000));
        let cfg = crate::config::WalletConfig {
            max_wallets_per_account: 2,
            ..Default::default()
        };
        let svc = WalletService::new(ctx, cfg);
        let alice = sign_up(&svc, "alice@example.org").await;
        let mallory = sign_up(&svc, "mallory@example.org").await;
        // Mallory shares wallets with Alice as owner and leaves them: nothing of Alice's quota
        for name in ["m1", "m2", "m3"] {
            let m = svc
                .create_wallet(mallory.account(), name)
                .await
                .unwrap()
                .wallet
                .id;
            let owner = svc.owner(&mallory, &m).await.unwrap();
            share_with(&svc, &owner, &alice, MemberRole::Owner).await;
            let gone = svc.viewer(&mallory, &m).await.unwrap();
            svc.leave_wallet(&gone).await.unwrap();
            // (Mallory's own creations count while the wallets live, left or not)
            if name == "m2" {
                let e = svc
                    .create_wallet(mallory.account(), "m9")
                    .await
                    .unwrap_err();
                assert_eq!(code(e), Code::Conflict);
                break;
            }
        }
        for name in ["a1", "a2"] {
            svc.create_wallet(alice.account(), name).await.unwrap();
        }
        let e = svc.create_wallet(alice.account(), "a3").await.unwrap_err();
        assert_eq!(code(e), Code::Conflict);
        // Deleting one of hers makes room.
        let mine = svc.list_wallets(alice.account()).await.unwrap();
        let a1 = mine.iter().find(|w| w.wallet.name == "a1").unwrap();
        svc.delete_wallet(&svc.owner(&alice, &a1.wallet.id).await.unwrap())
            .await
            .unwrap();
        svc.create_wallet(alice.account(), "a3").await.unwrap();
        // A delete that died after the wallet record (its creation index left behind) does not
        // hold a place for ever.
        let mine = svc.list_wallets(alice.account()).await.unwrap();
        let a2 = &mine
            .iter()
            .find(|w| w.wallet.name == "a2")
            .unwrap()
            .wallet
            .id;
        svc.ctx.store.delete(ks::WALLETS, a2).await.unwrap();
        svc.create_wallet(alice.account(), "a4").await.unwrap();
    }

    /// A membership change is judged on the roster it replaces: a share decided before the
    /// wallet was deleted adds nobody to it (a dangling membership nobody can open or leave),
    /// and an owner removed while its request was on the way cannot add itself back.
    #[tokio::test]
    async fn a_membership_change_is_judged_on_the_current_roster() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let share = |email: &str, role| AddMember {
            email: email.into(),
            role,
        };
        let alices = svc.owner(&alice, &w).await.unwrap();
        share_with(&svc, &alices, &bob, MemberRole::Owner).await;
        let bobs = svc.owner(&bob, &w).await.unwrap();
        let bob_id = bob.account().id.clone();
        svc.remove_member(&alices, &bob_id).await.unwrap();
        let e = svc
            .add_member(&bobs, share("bob@example.org", MemberRole::Owner))
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        assert!(svc.owner(&bob, &w).await.is_err());
        // a share decided before the delete
        let early = svc.owner(&alice, &w).await.unwrap();
        svc.delete_wallet(&svc.owner(&alice, &w).await.unwrap())
            .await
            .unwrap();
        let e = svc
            .add_member(&early, share("bob@example.org", MemberRole::Owner))
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        assert!(svc.list_wallets(bob.account()).await.unwrap().is_empty());
    }

    /// Holds back the first batch with an `a/` membership index write of the armed kind (a
    /// delete, or a put), until released: one change's index write landing after a later
    /// change's.
    struct HeldIndexWrite {
        inner: Arc<dyn crate::store::Store>,
        /// `Some(true)`: hold a delete; `Some(false)`: hold a put; `None`: hold nothing
        armed: std::sync::Mutex<Option<bool>>,
        entered: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    crate::store::test_wrapper::store_wrapper!(HeldIndexWrite, only batch {
        async fn batch(&self, ops: Vec<crate::store::BatchOp>) -> crate::store::StoreResult<()> {
            use crate::store::BatchOp;
            let index = |ks: &str, key: &str| ks == ks::MEMBERS && key.starts_with("a/");
            let kind = ops.iter().find_map(|op| match op {
                BatchOp::Delete { keyspace, key } if index(keyspace, key) => Some(true),
                BatchOp::Put { keyspace, key, .. } if index(keyspace, key) => Some(false),
                _ => None,
            });
            let hold = kind.is_some() && {
                let mut armed = self.armed.lock().unwrap();
                let hit = *armed == kind;
                if hit {
                    *armed = None;
                }
                hit
            };
            if hold {
                self.entered.notify_one();
                self.release.notified().await;
            }
            self.inner.batch(ops).await
        }
    });

    /// A by-value OpenID4VP request (no fetch), told apart by `nonce`.
    fn by_value_request(nonce: usize) -> String {
        let cb = "https://rp.example/cb";
        let q = serde_urlencoded::to_string([
            ("client_id", format!("redirect_uri:{cb}")),
            ("response_uri", cb.to_string()),
            ("response_type", "vp_token".to_string()),
            ("response_mode", "direct_post".to_string()),
            ("nonce", format!("n{nonce}")),
            (
                "dcql_query",
                serde_json::json!({"credentials": [{"id": "q", "format": "dc+sd-jwt", "meta": {}}]})
                    .to_string(),
            ),
        ])
        .unwrap();
        format!("openid4vp://?{q}")
    }

    /// A resolved request is kept per member: a viewer's resolutions fill its own places, not
    /// the owner's (attacker review: a viewer resolving 32 requests made the owner's
    /// resolve-request answer 503 for ten minutes, renewably, and re-resolving the owner's
    /// request text replaced the copy the owner was shown).
    #[tokio::test]
    async fn a_members_resolved_requests_are_its_own() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let alices = svc.owner(&alice, &w).await.unwrap();
        share_with(&svc, &alices, &bob, MemberRole::Viewer).await;
        let bobs = svc.viewer(&bob, &w).await.unwrap();
        for i in 0..32 {
            svc.resolve_request(&bobs, &by_value_request(i))
                .await
                .unwrap();
        }
        let e = svc
            .resolve_request(&bobs, &by_value_request(32))
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::Unavailable);
        // the owner's places are untouched, and the same request text is kept apart for each
        svc.resolve_request(&alices, &by_value_request(0))
            .await
            .unwrap();
        let kept = svc
            .ctx
            .store
            .count_prefix(ks::RESOLVED, &format!("{w}/{}/", alice.account().id), 100)
            .await
            .unwrap();
        assert_eq!(kept, 1);
    }

    /// Requests resolved at once stay within a member's 32 places (attacker review: each
    /// counted the others out before writing, and concurrent 64 KB requests went past the cap).
    #[tokio::test]
    async fn concurrent_resolutions_stay_within_the_places() {
        let mut ctx = RoleContext::for_tests(FakeClock::new(1_700_000_000_000));
        ctx.store = Arc::new(crate::store::test_wrapper::Yielding {
            inner: ctx.store.clone(),
        });
        let svc = WalletService::new(ctx, crate::config::WalletConfig::default());
        let alice = sign_up(&svc, "alice@example.org").await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        let owner = svc.owner(&alice, &w.wallet.id).await.unwrap();
        let texts: Vec<String> = (0..40).map(by_value_request).collect();
        let answers =
            futures_util::future::join_all(texts.iter().map(|t| svc.resolve_request(&owner, t)))
                .await;
        assert!(answers.iter().any(|a| a.is_err()), "40 at once, 32 places");
        let kept = svc
            .ctx
            .store
            .count_prefix(ks::RESOLVED, &format!("{}/", w.wallet.id), 100)
            .await
            .unwrap();
        assert!(kept <= 32, "{kept} kept");
    }

    /// `present` refuses choices it cannot read (422) before anything else: read as no choice,
    /// `null` for "not selected" answered an optional credential set with the first match, and a
    /// disclosure that was not a list disclosed every claim asked for (attacker review).
    #[tokio::test]
    async fn present_refuses_choices_it_cannot_read() {
        let svc = service();
        let alice = sign_up(&svc, "alice@example.org").await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        let owner = svc.owner(&alice, &w.wallet.id).await.unwrap();
        let input = |choices: serde_json::Value| {
            let mut i: crate::roles::wallet::model::RequestInput =
                serde_json::from_value(choices).unwrap();
            i.request = "openid4vp://?client_id=x".into();
            i
        };
        for (choices, says) in [
            (
                serde_json::json!({"request": "", "selections": {"q": null}}),
                "selections.q",
            ),
            (
                serde_json::json!({"request": "", "selections": {"q": ["c1"]}}),
                "selections.q",
            ),
            (
                serde_json::json!({"request": "", "disclose": {"q": "given_name"}}),
                "disclose.q",
            ),
            (
                serde_json::json!({"request": "", "disclose": {"q": [1]}}),
                "disclose.q",
            ),
            (
                serde_json::json!({"request": "", "disclose": {"q": [[]]}}),
                "disclose.q",
            ),
        ] {
            let e = svc
                .present(&owner, input(choices.clone()))
                .await
                .unwrap_err();
            assert_eq!(
                crate::error::ErrorCode::error_code(&e),
                Code::Validation,
                "{choices}: {e}"
            );
            assert!(e.to_string().contains(says), "{choices}: {e}");
        }
        // well-formed choices get past it (to the request, which this one is not)
        let e = svc
            .present(
                &owner,
                input(serde_json::json!({"request": "", "selections": {"q": "c1"},
                    "disclose": {"q": ["given_name", ["address", "country"], ["degrees", null, "name"], ["list", 0]]}})),
            )
            .await
            .unwrap_err();
        assert!(!e.to_string().contains("disclose.q"), "{e}");
        assert!(!e.to_string().contains("selections.q"), "{e}");
    }

    /// Listing a wallet's credentials or its history reads the whole wallet (up to 32 MiB of
    /// sealed credentials): it takes one of the node's places for that, as matching a
    /// presentation request does — four in all, two per account — and answers 503 when none
    /// frees up (attacker review: 64 concurrent listings of one full wallet held gigabytes).
    /// Time is paused: the 10 s wait passes at once.
    #[tokio::test(start_paused = true)]
    async fn whole_wallet_reads_wait_for_one_of_the_nodes_places() {
        let svc = service();
        let alice = sign_up(&svc, "alice@example.org").await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        let owner = svc.owner(&alice, &w.wallet.id).await.unwrap();
        let all = crate::roles::wallet::model::CredentialFilter {
            credential_type: None,
            issuer: None,
            format: None,
        };
        let busy = |r: WalletResult<()>| match r {
            Err(WalletError::Busy { .. }) => {}
            other => panic!("expected 503, got {other:?}"),
        };
        let list = || async { svc.list_credentials(&owner, &all).await.map(|_| ()) };
        let history = || async { svc.history(&owner).await.map(|_| ()) };
        // Alice's own two requests hold her share: a third is refused at once, places free
        let alices = [
            svc.whole_reads.take(owner.member()).await.unwrap(),
            svc.whole_reads.take(owner.member()).await.unwrap(),
        ];
        let at = tokio::time::Instant::now();
        busy(list().await);
        busy(history().await);
        assert_eq!(tokio::time::Instant::now(), at, "refused without waiting");
        drop(alices);
        // another account holds its share, two places
        let others = [
            svc.whole_reads.take("other").await.unwrap(),
            svc.whole_reads.take("other").await.unwrap(),
        ];
        busy(svc.whole_reads.take("other").await.map(|_| ()));
        list().await.unwrap();
        history().await.unwrap();
        // every place of the node taken: she waits, then 503
        let more = [
            svc.whole_reads.take("third").await.unwrap(),
            svc.whole_reads.take("fourth").await.unwrap(),
        ];
        busy(list().await);
        drop((others, more));
        list().await.unwrap();
    }

    /// A wallet service on a [`HeldIndexWrite`] store, Alice's wallet "home" on it with Carol
    /// as a second owner, and Bob signed up (not a member).
    async fn held_home() -> (
        WalletService,
        Arc<HeldIndexWrite>,
        SignedIn,
        SignedIn,
        SignedIn,
        String,
    ) {
        let mut ctx = RoleContext::for_tests(FakeClock::new(1_700_000_000_000));
        let held = Arc::new(HeldIndexWrite {
            inner: ctx.store.clone(),
            armed: std::sync::Mutex::new(None),
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        });
        ctx.store = held.clone();
        let svc = WalletService::new(ctx, crate::config::WalletConfig::default());
        let alice = sign_up(&svc, "alice@example.org").await;
        let bob = sign_up(&svc, "bob@example.org").await;
        let carol = sign_up(&svc, "carol@example.org").await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        let alices = svc.owner(&alice, &w.wallet.id).await.unwrap();
        share_with(&svc, &alices, &carol, MemberRole::Owner).await;
        (svc, held, alice, bob, carol, w.wallet.id)
    }

    /// Two owners at once: Alice removes Bob, Carol invites him back and he accepts, and the
    /// removal's index write lands last. Bob is in the roster, so he must be able to open the
    /// wallet and find it in his list: the removal's index write, read back against the
    /// roster, is written again. Before, the index kept the removal: the roster named Bob, the
    /// index did not, and the lesser of the two gave him a 404.
    #[tokio::test]
    async fn a_removal_whose_index_write_lands_after_a_re_add_does_not_lock_the_member_out() {
        let (svc, held, alice, bob, carol, w) = held_home().await;
        let alices = svc.owner(&alice, &w).await.unwrap();
        share_with(&svc, &alices, &bob, MemberRole::Viewer).await;
        *held.armed.lock().unwrap() = Some(true);
        let bob_id = bob.account().id.clone();
        let re_add = async {
            // the removal's roster swap is done; its index write waits
            held.entered.notified().await;
            let carols = svc.owner(&carol, &w).await.unwrap();
            share_with(&svc, &carols, &bob, MemberRole::Viewer).await;
            held.release.notify_one();
        };
        let (removed, ()) = tokio::join!(svc.remove_member(&alices, &bob_id), re_add);
        removed.unwrap();
        let opened = svc.viewer(&bob, &w).await;
        assert!(opened.is_ok(), "{:?}", opened.err());
        let listed = svc.list_wallets(bob.account()).await.unwrap();
        assert!(listed.iter().any(|v| v.wallet.id == w), "{listed:?}");
    }

    /// The other way round: Bob accepts Carol's invitation while Alice removes him, and the
    /// accept's index write lands after the removal. The roster no longer names Bob: he opens
    /// nothing, lists nothing, and no index entry of his is left behind (the accept's write, read
    /// back against the roster, is deleted again).
    #[tokio::test]
    async fn an_accept_whose_index_write_lands_after_a_removal_leaves_no_entry() {
        let (svc, held, alice, bob, carol, w) = held_home().await;
        let carols = svc.owner(&carol, &w).await.unwrap();
        let invite = AddMember {
            email: "bob@example.org".into(),
            role: MemberRole::Viewer,
        };
        assert!(svc.add_member(&carols, invite).await.unwrap().is_some());
        *held.armed.lock().unwrap() = Some(false);
        let alices = svc.owner(&alice, &w).await.unwrap();
        let bob_id = bob.account().id.clone();
        let removal = async {
            // the accept's roster swap is done; its index write waits
            held.entered.notified().await;
            svc.remove_member(&alices, &bob_id).await.unwrap();
            held.release.notify_one();
        };
        let (accepted, ()) = tokio::join!(svc.accept_invitation(&bob, &w), removal);
        accepted.unwrap();
        assert!(svc.viewer(&bob, &w).await.is_err());
        assert!(svc.list_wallets(bob.account()).await.unwrap().is_empty());
        let entry: Option<MemberRole> = svc
            .ctx
            .store
            .get_json(ks::MEMBERS, &format!("a/{bob_id}/{w}"))
            .await
            .unwrap();
        assert_eq!(entry, None);
    }

    /// The roster decides access, not the index: an index entry that outlived its membership
    /// (a change or a delete that failed half-way, a lagging replica) opens nothing and lists
    /// nothing.
    #[tokio::test]
    async fn a_stale_index_entry_grants_no_access() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let bob_id = bob.account().id.clone();
        svc.ctx
            .store
            .batch(
                crate::roles::wallet::members::member_ops(&w, &bob_id, Some(MemberRole::Owner))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            code(svc.viewer(&bob, &w).await.unwrap_err()),
            Code::NotFound
        );
        assert!(svc.list_wallets(bob.account()).await.unwrap().is_empty());
        // and Alice's own access is unchanged
        assert_eq!(
            svc.owner(&alice, &w).await.unwrap().role(),
            MemberRole::Owner
        );
    }

    /// A wallet record written before rosters: its index decides until the first change, which
    /// builds the roster from it (members kept, roles kept).
    #[tokio::test]
    async fn a_wallet_from_before_rosters_gets_its_roster_from_the_index() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let carol = sign_up(&svc, "carol@example.org").await;
        let bob_id = bob.account().id.clone();
        let store = &svc.ctx.store;
        let mut rec: WalletRecord = store.get_json(ks::WALLETS, &w).await.unwrap().unwrap();
        rec.roster = None;
        store.put_json(ks::WALLETS, &w, &rec, None).await.unwrap();
        store
            .batch(
                crate::roles::wallet::members::member_ops(&w, &bob_id, Some(MemberRole::Viewer))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            svc.viewer(&bob, &w).await.unwrap().role(),
            MemberRole::Viewer
        );
        let owner = svc.owner(&alice, &w).await.unwrap();
        share_with(&svc, &owner, &carol, MemberRole::Owner).await;
        let rec: WalletRecord = store.get_json(ks::WALLETS, &w).await.unwrap().unwrap();
        let roster = rec.roster.expect("built by the change");
        assert_eq!(roster.len(), 3);
        assert_eq!(roster[&bob_id], MemberRole::Viewer);
        assert_eq!(roster[&carol.account().id], MemberRole::Owner);
        assert_eq!(roster[&alice.account().id], MemberRole::Owner);
        // the API never shows the roster with the wallet
        let listed = serde_json::to_value(svc.list_wallets(bob.account()).await.unwrap()).unwrap();
        assert!(listed[0].get("roster").is_none(), "{listed}");
    }

    /// A pending invitation's emails (the invitee's, the inviter's) are sealed to the wallet and
    /// the invitee: the wallet record holds neither in clear; the owners and the invitee see them
    /// opened; an invitation copied to another invitee's place does not open there; one of an
    /// earlier release (emails in clear) is still shown and revoked by its email.
    #[tokio::test]
    async fn an_invitations_emails_are_sealed_in_the_wallet_record() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        let store = svc.ctx.store.clone();
        let raw_record = || async {
            let raw = store.get(ks::WALLETS, &w).await.unwrap().unwrap();
            String::from_utf8_lossy(&raw).to_string()
        };
        invite_viewer(&svc, &owner, "bob@example.org")
            .await
            .expect("an invitation");
        let raw = raw_record().await;
        assert!(!raw.contains("bob@") && !raw.contains("alice@"), "{raw}");
        // shown opened to the owners and to the invitee
        assert_eq!(
            svc.list_invitations(&owner).await.unwrap()[0].email,
            "bob@example.org"
        );
        assert_eq!(
            svc.received_invitations(&bob).await.unwrap()[0].invited_by_email,
            "alice@example.org"
        );
        // copied to another invitee's place they do not open (shown empty, the list answers)
        let mut rec: WalletRecord = store.get_json(ks::WALLETS, &w).await.unwrap().unwrap();
        let bobs = rec.invitations[&bob.account().id].clone();
        rec.invitations.insert("someone-else".into(), bobs.clone());
        store.put_json(ks::WALLETS, &w, &rec, None).await.unwrap();
        let listed = svc.list_invitations(&owner).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|i| i.email.is_empty()));
        // revoked by its email
        svc.revoke_invitation(&owner, "Bob@example.org")
            .await
            .unwrap();
        assert!(svc.received_invitations(&bob).await.unwrap().is_empty());
        // an earlier release's invitation (emails in clear) is shown and revoked the same way
        let mut rec: WalletRecord = store.get_json(ks::WALLETS, &w).await.unwrap().unwrap();
        rec.invitations.clear();
        rec.invitations.insert(
            bob.account().id.clone(),
            crate::roles::wallet::model::Invitation {
                email: "bob@example.org".into(),
                invited_by_email: "alice@example.org".into(),
                sealed_emails: None,
                ..bobs
            },
        );
        store.put_json(ks::WALLETS, &w, &rec, None).await.unwrap();
        assert_eq!(
            svc.list_invitations(&owner).await.unwrap()[0].email,
            "bob@example.org"
        );
        svc.revoke_invitation(&owner, "bob@example.org")
            .await
            .unwrap();
        assert!(svc.list_invitations(&owner).await.unwrap().is_empty());
    }

    /// A share is an invitation until its invitee accepts: before, the invitee sees no wallet
    /// and opens nothing. Declined or revoked, it is gone; an invitation whose inviter is no
    /// longer an owner lapses; someone else cannot accept it.
    #[tokio::test]
    async fn a_share_takes_effect_only_when_the_invitee_accepts() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        let invite = |email: &str, role| AddMember {
            email: email.into(),
            role,
        };
        svc.add_member(&owner, invite("Bob@Example.org ", MemberRole::Owner))
            .await
            .unwrap()
            .expect("an invitation");
        assert_eq!(
            code(svc.viewer(&bob, &w).await.unwrap_err()),
            Code::NotFound
        );
        assert!(svc.list_wallets(bob.account()).await.unwrap().is_empty());
        let pending = svc.received_invitations(&bob).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].wallet.as_str(), pending[0].wallet_name.as_str()),
            (w.as_str(), "home")
        );
        assert_eq!(pending[0].invited_by_email, "alice@example.org");
        let listed = svc.list_invitations(&owner).await.unwrap();
        assert_eq!(listed[0].email, "bob@example.org");
        // someone else cannot accept Bob's invitation, nor one to a wallet that does not exist
        let eve = sign_up(&svc, "eve@example.org").await;
        for wallet in [w.as_str(), "no-such-wallet"] {
            let e = svc.accept_invitation(&eve, wallet).await.unwrap_err();
            assert_eq!(code(e), Code::NotFound);
        }
        // Dora declines hers
        let dora = sign_up(&svc, "dora@example.org").await;
        svc.add_member(&owner, invite("dora@example.org", MemberRole::Owner))
            .await
            .unwrap();
        assert_eq!(svc.received_invitations(&dora).await.unwrap().len(), 1);
        svc.decline_invitation(&dora, &w).await.unwrap();
        assert!(svc.received_invitations(&dora).await.unwrap().is_empty());
        assert_eq!(
            code(svc.accept_invitation(&dora, &w).await.unwrap_err()),
            Code::NotFound
        );
        // Bob accepts: a member now, once
        let view = svc.accept_invitation(&bob, &w).await.unwrap();
        assert_eq!(view.role, MemberRole::Owner);
        assert_eq!(svc.owner(&bob, &w).await.unwrap().role(), MemberRole::Owner);
        assert!(svc.received_invitations(&bob).await.unwrap().is_empty());
        assert_eq!(
            code(svc.accept_invitation(&bob, &w).await.unwrap_err()),
            Code::NotFound
        );
        // a member's role changes at once (no invitation)
        let changed = svc
            .add_member(&owner, invite("bob@example.org", MemberRole::Viewer))
            .await
            .unwrap();
        assert!(changed.is_none());
        assert_eq!(
            svc.viewer(&bob, &w).await.unwrap().role(),
            MemberRole::Viewer
        );
        // revoked: gone for its invitee
        let carol = sign_up(&svc, "carol@example.org").await;
        svc.add_member(&owner, invite("carol@example.org", MemberRole::Viewer))
            .await
            .unwrap();
        svc.revoke_invitation(&owner, "Carol@example.org")
            .await
            .unwrap();
        assert_eq!(
            code(svc.accept_invitation(&carol, &w).await.unwrap_err()),
            Code::NotFound
        );
        // an invitation made by an owner who is then demoted lapses
        let bob_owner = {
            svc.add_member(&owner, invite("bob@example.org", MemberRole::Owner))
                .await
                .unwrap();
            svc.owner(&bob, &w).await.unwrap()
        };
        svc.add_member(&bob_owner, invite("carol@example.org", MemberRole::Owner))
            .await
            .unwrap();
        svc.add_member(&owner, invite("bob@example.org", MemberRole::Viewer))
            .await
            .unwrap();
        assert!(svc.received_invitations(&carol).await.unwrap().is_empty());
        assert_eq!(
            code(svc.accept_invitation(&carol, &w).await.unwrap_err()),
            Code::NotFound
        );
    }

    /// An email nobody has registered gets no invitation (404): it would go to whoever
    /// registers the email first, and sign-up does not check that one owns the address
    /// (attacker review: Mallory registered Dora's address and became owner).
    #[tokio::test]
    async fn an_invitation_names_an_existing_account_not_an_email() {
        let (svc, alice, _, w) = alice_home_and("bob@example.org").await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        let e = svc
            .add_member(
                &owner,
                AddMember {
                    email: "dora@corp.example".into(),
                    role: MemberRole::Owner,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        let mallory = sign_up(&svc, "dora@corp.example").await;
        assert!(svc.received_invitations(&mallory).await.unwrap().is_empty());
        assert_eq!(
            code(svc.accept_invitation(&mallory, &w).await.unwrap_err()),
            Code::NotFound
        );
    }

    /// An invitation from an owner whose account was disabled since cannot be accepted.
    #[tokio::test]
    async fn an_invitation_from_a_disabled_owner_lapses() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        svc.add_member(
            &owner,
            AddMember {
                email: "bob@example.org".into(),
                role: MemberRole::Owner,
            },
        )
        .await
        .unwrap();
        let store = &svc.ctx.store;
        let mut acc: Account = store
            .get_json(ks::ACCOUNTS, &alice.account().id)
            .await
            .unwrap()
            .unwrap();
        acc.disabled = true;
        store
            .put_json(ks::ACCOUNTS, &acc.id, &acc, None)
            .await
            .unwrap();
        let e = svc.accept_invitation(&bob, &w).await.unwrap_err();
        assert_eq!(code(e), Code::NotFound);
    }

    /// Expired invitations take no place under the wallet's limit (attacker review: after 64
    /// expired, the owner saw none pending and could invite nobody).
    #[tokio::test]
    async fn expired_invitations_do_not_block_new_ones() {
        let (svc, clock, alice, w) = clocked_alice_home().await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        let n = super::super::invitations::MAX_INVITATIONS;
        for i in 0..=n {
            sign_up(&svc, &format!("u{i}@example.org")).await;
        }
        let invite = |i: usize| AddMember {
            email: format!("u{i}@example.org"),
            role: MemberRole::Viewer,
        };
        for i in 0..n {
            svc.add_member(&owner, invite(i)).await.unwrap();
        }
        let e = svc.add_member(&owner, invite(n)).await.unwrap_err();
        assert_eq!(code(e), Code::Conflict);
        clock.advance_ms((super::super::invitations::INVITATION_TTL_SECS + 1) * 1000);
        assert!(svc.list_invitations(&owner).await.unwrap().is_empty());
        svc.add_member(&owner, invite(n)).await.unwrap();
    }

    /// An account's limit of pending invitations counts live ones: index entries of invitations
    /// that lapsed, were revoked or whose wallet is gone (which the account can neither see nor
    /// decline) are dropped at the limit, and declining one drops its entry (attacker review:
    /// anyone could block invitations to a chosen account for a week, renewably).
    #[tokio::test]
    async fn stale_invitation_entries_do_not_block_an_account() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        let bob_id = bob.account().id.clone();
        let store = svc.ctx.store.clone();
        // entries of 100 invitations to wallets that are gone, as lapsed ones leave
        let plant = || async {
            for i in 0..super::super::invitations::MAX_RECEIVED {
                let key = format!("i/{bob_id}/gone{i}");
                store
                    .put_json(ks::MEMBERS, &key, &MemberRole::Viewer, None)
                    .await
                    .unwrap();
            }
        };
        plant().await;
        assert!(svc.received_invitations(&bob).await.unwrap().is_empty());
        // the listing dropped them; planted again, the limit drops them
        plant().await;
        svc.add_member(
            &owner,
            AddMember {
                email: "bob@example.org".into(),
                role: MemberRole::Viewer,
            },
        )
        .await
        .unwrap();
        let left = store
            .count_prefix(ks::MEMBERS, &format!("i/{bob_id}/"), 1000)
            .await
            .unwrap();
        assert_eq!(left, 1, "only the live invitation's entry is left");
        // declining a wallet with no pending invitation is 404 and drops a stale entry
        let key = format!("i/{bob_id}/gone0");
        store
            .put_json(ks::MEMBERS, &key, &MemberRole::Viewer, None)
            .await
            .unwrap();
        let e = svc.decline_invitation(&bob, "gone0").await.unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        assert!(store.get(ks::MEMBERS, &key).await.unwrap().is_none());
    }

    /// An owner removed while its delete was on the way deletes nothing (attacker review: the
    /// delete's swap did not check the caller, and the contents went before it).
    #[tokio::test]
    async fn a_removed_owner_deletes_nothing() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let alices = svc.owner(&alice, &w).await.unwrap();
        share_with(&svc, &alices, &bob, MemberRole::Owner).await;
        svc.generate_key(&alices, crate::crypto::KeyType::Ed25519)
            .await
            .unwrap();
        let bobs = svc.owner(&bob, &w).await.unwrap();
        svc.remove_member(&alices, &bob.account().id).await.unwrap();
        let e = svc.delete_wallet(&bobs).await.unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        let opened = svc.open_owner(&alice, &w).await.unwrap();
        assert_eq!(svc.list_keys(&opened).await.unwrap().len(), 1);
    }

    /// A removal or demotion made in the index only — by a node of the release before rosters,
    /// on a shared Redis or after a rollback — holds: access is the lesser of the roster's and
    /// the index's role (attacker review: the roster alone kept the removed member in).
    #[tokio::test]
    async fn a_removal_in_the_index_only_holds() {
        let (svc, alice, bob, w) = alice_home_and("bob@example.org").await;
        let alices = svc.owner(&alice, &w).await.unwrap();
        share_with(&svc, &alices, &bob, MemberRole::Owner).await;
        let bob_id = bob.account().id.clone();
        let index = |role| crate::roles::wallet::members::member_ops(&w, &bob_id, role).unwrap();
        svc.ctx
            .store
            .batch(index(Some(MemberRole::Viewer)))
            .await
            .unwrap();
        assert_eq!(
            svc.viewer(&bob, &w).await.unwrap().role(),
            MemberRole::Viewer
        );
        assert_eq!(
            code(svc.owner(&bob, &w).await.unwrap_err()),
            Code::Forbidden
        );
        assert_eq!(
            svc.list_wallets(bob.account()).await.unwrap()[0].role,
            MemberRole::Viewer
        );
        svc.ctx.store.batch(index(None)).await.unwrap();
        assert_eq!(
            code(svc.viewer(&bob, &w).await.unwrap_err()),
            Code::NotFound
        );
    }

    /// An invitation expires: after its lifetime it cannot be accepted and is not listed.
    #[tokio::test]
    async fn an_invitation_expires() {
        let (svc, clock, alice, w) = clocked_alice_home().await;
        let bob = sign_up(&svc, "bob@example.org").await;
        let owner = svc.owner(&alice, &w).await.unwrap();
        invite_viewer(&svc, &owner, "bob@example.org").await;
        clock.advance_ms((super::super::invitations::INVITATION_TTL_SECS + 1) * 1000);
        assert!(svc.received_invitations(&bob).await.unwrap().is_empty());
        assert_eq!(
            code(svc.accept_invitation(&bob, &w).await.unwrap_err()),
            Code::NotFound
        );
    }

    /// A request let in before its wallet was deleted writes nothing that outlives the wallet:
    /// before, a key generated (or a DID, credential, history entry written) after the delete's
    /// sweep stayed in the store for ever, sealed private key and all, reachable by nobody.
    #[tokio::test]
    async fn a_write_that_lands_after_its_wallet_was_deleted_is_taken_back() {
        let (svc, alice, _, w) = alice_home_and("bob@example.org").await;
        let early = svc.owner(&alice, &w).await.unwrap();
        svc.generate_key(&early, crate::crypto::KeyType::Ed25519)
            .await
            .unwrap();
        svc.delete_wallet(&svc.owner(&alice, &w).await.unwrap())
            .await
            .unwrap();
        let e = svc
            .generate_key(&early, crate::crypto::KeyType::P256)
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        let e = svc
            .create_did(
                &early,
                crate::roles::wallet::model::CreateDid {
                    method: None,
                    key_id: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        for keyspace in [ks::KEYS, ks::DIDS, ks::CREDS, ks::HISTORY] {
            let left = svc
                .ctx
                .store
                .scan_prefix(keyspace, &format!("{w}/"), 100)
                .await
                .unwrap();
            assert!(left.is_empty(), "{keyspace}: {} records left", left.len());
        }
    }
}

#[cfg(test)]
mod credential_cap_tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::clock::FakeClock;
    use crate::roles::wallet::credentials::MAX_CREDENTIALS;
    use crate::roles::RoleContext;

    /// A store whose next count of the wallet's credentials misses one write: what a count sees
    /// when another credential of the wallet is written at the same moment.
    struct StaleCount {
        inner: Arc<dyn crate::store::Store>,
        stale: AtomicBool,
    }

    crate::store::test_wrapper::store_wrapper!(StaleCount, only batch {
        async fn batch(&self, ops: Vec<crate::store::BatchOp>) -> crate::store::StoreResult<()> {
            self.inner.batch(ops).await
        }
        async fn count_prefix(
            &self,
            ks: &'static str,
            prefix: &str,
            limit: usize,
        ) -> crate::store::StoreResult<usize> {
            let n = self.inner.count_prefix(ks, prefix, limit).await?;
            Ok(if self.stale.swap(false, Ordering::SeqCst) {
                n.saturating_sub(1)
            } else {
                n
            })
        }
    });

    /// The credential cap holds when writes race: a credential whose count missed another
    /// write (both counted under the cap) is counted again once written and goes again when the
    /// wallet is over its cap. Before, racing writes (an issuer releasing many responses at once)
    /// each passed the count and the cap meant nothing.
    #[tokio::test]
    async fn racing_credential_writes_do_not_pass_the_cap() {
        let mut ctx = RoleContext::for_tests(FakeClock::new(1_700_000_000_000));
        let stale = Arc::new(StaleCount {
            inner: ctx.store.clone(),
            stale: AtomicBool::new(false),
        });
        ctx.store = stale.clone();
        let svc = WalletService::new(ctx, crate::config::WalletConfig::default());
        let alice = super::tests::sign_up(&svc, "alice@example.org").await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        let owner = svc.owner(&alice, &w.wallet.id).await.unwrap();
        let summary = super::tests::stored_summary;
        for _ in 0..MAX_CREDENTIALS {
            svc.put_credential(&owner, summary(), "x", "k", None)
                .await
                .unwrap();
        }
        let count = || {
            let store = stale.inner.clone();
            let wallet = w.wallet.id.clone();
            async move {
                store
                    .count_prefix(ks::CREDS, &format!("{wallet}/"), 10 * MAX_CREDENTIALS)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(count().await, MAX_CREDENTIALS);
        // a full wallet refuses the next one...
        assert!(svc
            .put_credential(&owner, summary(), "x", "k", None)
            .await
            .is_err());
        // ...also when its count misses a racing write
        stale.stale.store(true, Ordering::SeqCst);
        let e = svc
            .put_credential(&owner, summary(), "x", "k", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("the most it can"), "{e}");
        assert_eq!(count().await, MAX_CREDENTIALS);
    }

    /// The history keeps the newest entries, and lists them: before, it listed the oldest
    /// 10,000 and never a later one, so an owner who filled it hid later exchanges from the
    /// others.
    #[tokio::test]
    async fn the_history_keeps_and_lists_the_newest_entries() {
        let clock = FakeClock::new(1_700_000_000_000);
        let svc = WalletService::new(
            RoleContext::for_tests(clock.clone()),
            crate::config::WalletConfig::default(),
        );
        let alice = super::tests::sign_up(&svc, "alice@example.org").await;
        let w = svc.create_wallet(alice.account(), "home").await.unwrap();
        let owner = svc.owner(&alice, &w.wallet.id).await.unwrap();
        for i in 0..8 {
            clock.advance_ms(1000);
            let entry = crate::roles::wallet::model::HistoryEntry {
                at: i,
                kind: "present".into(),
                counterparty: format!("verifier {i}"),
                credential_ids: Vec::new(),
                outcome: "failed".into(),
            };
            svc.record_keeping(&owner, entry, 3).await.unwrap();
        }
        let listed: Vec<i64> = svc
            .history(&owner)
            .await
            .unwrap()
            .iter()
            .map(|e| e.at)
            .collect();
        assert_eq!(listed, [7, 6, 5]);
        // kept sealed: no counterparty in the stored records; an entry of an earlier release
        // (plain) is still listed, one that does not open is left out
        let prefix = format!("{}/", owner.id());
        let stored = svc
            .ctx
            .store
            .scan_prefix(ks::HISTORY, &prefix, 100)
            .await
            .unwrap();
        assert_eq!(stored.len(), 3);
        for (_, raw) in &stored {
            assert!(!String::from_utf8_lossy(raw).contains("verifier"));
        }
        let plain = crate::roles::wallet::model::HistoryEntry {
            at: 8,
            kind: "receive".into(),
            counterparty: "an older issuer".into(),
            credential_ids: Vec::new(),
            outcome: "ok".into(),
        };
        let store = &svc.ctx.store;
        store
            .put_json(
                ks::HISTORY,
                &format!("{prefix}{:020}-old", 1_800_000_000_000_i64),
                &plain,
                None,
            )
            .await
            .unwrap();
        // a sealed entry moved to another place does not open there
        store
            .put(
                ks::HISTORY,
                &format!("{prefix}{:020}-moved", 1_800_000_000_001_i64),
                stored[0].1.clone(),
                None,
            )
            .await
            .unwrap();
        let listed: Vec<i64> = svc
            .history(&owner)
            .await
            .unwrap()
            .iter()
            .map(|e| e.at)
            .collect();
        assert_eq!(listed, [8, 7, 6, 5]);
        // what the other party chose is kept bounded
        let long = crate::roles::wallet::model::HistoryEntry {
            at: 9,
            kind: "present".into(),
            counterparty: "v".repeat(500_000),
            credential_ids: Vec::new(),
            outcome: format!("rejected: {}", "e".repeat(500_000)),
        };
        clock.advance_ms(1000);
        svc.record_keeping(&owner, long, 3).await.unwrap();
        let h = svc.history(&owner).await.unwrap();
        let long = h.iter().find(|e| e.at == 9).unwrap();
        assert!(long.counterparty.len() <= 4 * crate::roles::wallet::credentials::MAX_HISTORY_TEXT);
        assert!(long.outcome.len() <= 4 * crate::roles::wallet::credentials::MAX_HISTORY_TEXT);
    }
}
