//! Accounts: sign-up, login with lockout, logout, and the admin's list / disable / enable.
//! Checking a session token is [`super::access`]'s (it makes the [`SignedIn`] proof).

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::access::SignedIn;
use super::error::{OrInternal, OrNotFound, WalletError, WalletResult};
use super::ks;
use super::model::*;
use super::passwords::Checked;
use super::service::WalletService;
use crate::clock::{random_id, random_token};
use crate::crypto::sha256_hex;
use crate::store::Cas;

const SESSION_TTL: i64 = 24 * 3600;

impl WalletService {
    pub async fn register(&self, mut req: Credentials) -> WalletResult<AccountView> {
        let email = req.email.trim().to_ascii_lowercase();
        if !valid_email(&email) {
            return Err(WalletError::invalid("a valid email address is required"));
        }
        if req.password.len() < 8 || req.password.len() > 256 {
            return Err(WalletError::invalid(
                "the password needs 8 to 256 characters",
            ));
        }
        let password = Arc::new(Zeroizing::new(std::mem::take(&mut req.password)));
        let hash = self.passwords.hash(password).await?;
        let account = Account {
            id: random_id(),
            email: email.clone(),
            sealed_email: None,
            password_hash: hash,
            created_at: self.now(),
            disabled: false,
            session_epoch: 0,
        };
        // The account first, then the email index, the uniqueness guard (insert-only): an email
        // always names an account that exists. A claim that was applied but answered 503 (its
        // outcome unknown in a cluster) or a claim made before this order, whose account was
        // never written, names none: the next sign-up takes it over (a compare-and-swap from
        // the id it names), instead of the email being lost for good.
        let store = &self.ctx.store;
        // an email an earlier release indexed in clear is taken as well
        if let Some(id) = store.get_json::<String>(ks::EMAILS, &email).await? {
            if store.get_settled(ks::ACCOUNTS, &id).await?.is_some() {
                return Err(WalletError::conflict("an account with this email exists"));
            }
        }
        store
            .put_json(
                ks::ACCOUNTS,
                &account.id,
                &self.stored_account(&account)?,
                None,
            )
            .await?;
        let mine = crate::store::to_json(&account.id)?;
        let email_key = self.email_key(&email);
        let mut expected = None;
        for _ in 0..3 {
            match store
                .compare_and_swap(
                    ks::EMAILS,
                    &email_key,
                    expected.clone(),
                    Some((mine.clone(), None)),
                )
                .await?
            {
                Cas::Swapped => return Ok(AccountView::from(&account)),
                Cas::Conflict(Some(named)) => {
                    let id: String = serde_json::from_slice(&named).or_internal()?;
                    if store.get_settled(ks::ACCOUNTS, &id).await?.is_some() {
                        break;
                    }
                    expected = Some(named);
                }
                Cas::Conflict(None) => expected = None,
            }
        }
        // not ours: the record written above names no email that leads to it
        if let Err(e) = store.delete(ks::ACCOUNTS, &account.id).await {
            tracing::debug!(error = %e, "an unused account record stays (unreachable)");
        }
        Err(WalletError::conflict("an account with this email exists"))
    }

    pub async fn login(&self, mut req: LoginRequest) -> WalletResult<LoginResponse> {
        let password = Arc::new(Zeroizing::new(std::mem::take(&mut req.password)));
        let email = req.email.trim().to_ascii_lowercase();
        // No account has an email sign-up refuses: answered before anything is stored (attacker
        // review: the failure counter is keyed by the email, so a 1 MiB "email" per request kept
        // 1 MiB in the store for an hour each).
        if !valid_email(&email) {
            return Err(WalletError::Unauthorized("wrong email or password"));
        }
        let now = self.now();
        let store = &self.ctx.store;
        let (account_id, legacy_index) = match self.account_for_email(&email).await? {
            Some((id, legacy)) => (Some(id), legacy),
            None => (None, false),
        };
        let email_key = self.email_key(&email);
        // A device this account signed in on before counts its own attempts; every other client
        // shares the email's (see `devices`).
        let device = match (&req.device_token, &account_id) {
            (Some(token), Some(id)) => self.devices.check(token, id, now),
            _ => None,
        };
        let (counter, counter_key) = match &device {
            Some(d) => (ks::DEVICE_LOGIN_FAILURES, d.counter_key.as_str()),
            None => (ks::LOGIN_FAILURES, email_key.as_str()),
        };
        // Counted before the password is checked, atomically in the store: parallel guesses (on
        // any node) each take one of the allowed attempts, and a locked email costs no hashing.
        self.take_login_attempt(counter, counter_key, now).await?;
        let account: Option<Account> = match &account_id {
            Some(id) => self.get_account(id).await?,
            None => None,
        };
        // Checked against a real hash even for unknown emails, so timing does not reveal accounts.
        let checked = self
            .passwords
            .check(
                account.as_ref().map(|a| a.password_hash.clone()),
                password.clone(),
            )
            .await?;
        let account = match account {
            Some(a) if checked != Checked::Wrong => a,
            // The failure was counted when the attempt was taken.
            _ => return Err(WalletError::Unauthorized("wrong email or password")),
        };
        if account.disabled {
            return Err(WalletError::Forbidden("this account is disabled"));
        }
        // Only the counter this attempt came from is cleared: signing in on a known device
        // leaves the email's lock (someone else's guesses) in place.
        store.delete(counter, counter_key).await?;
        if legacy_index {
            if let Err(e) = self.seal_legacy_email(&account.id, &email).await {
                tracing::warn!(account = %account.id, error = %e, "an account of an earlier release keeps its email in clear until its next login");
            }
        }
        if checked == Checked::RightUnkeyed {
            if let Err(e) = self.key_password_hash(&account, password).await {
                tracing::warn!(account = %account.id, error = %e, "an account of an earlier release keeps its unkeyed password hash until its next login");
            }
        }
        let device_token = match (device, req.device_token) {
            (Some(d), Some(token)) if !d.due_for_renewal(now) => token,
            _ => self.devices.mint(&account.id, now),
        };
        let token = random_token(32);
        let expires_at = now + SESSION_TTL;
        store
            .put_json(
                ks::SESSIONS,
                &sha256_hex(&token),
                &SessionRecord {
                    account: account.id.clone(),
                    expires_at,
                    epoch: account.session_epoch,
                },
                Some(Duration::from_secs(SESSION_TTL as u64)),
            )
            .await?;
        Ok(LoginResponse {
            token,
            token_type: "Bearer",
            expires_at,
            account: AccountView::from(&account),
            device_token,
        })
    }

    /// Takes one login attempt from the failure count at `key` in `keyspace` (an email's, or a
    /// known device's): refuses (429 + Retry-After) while it is locked, else counts the attempt
    /// as a failure by compare-and-swap — a correct password clears the count afterwards. The
    /// attempt that reaches `login_lock_after` also sets the lock, so at most `login_lock_after`
    /// passwords are checked per lock period however many requests race, and one per period
    /// after that.
    async fn take_login_attempt(
        &self,
        keyspace: &'static str,
        key: &str,
        now: i64,
    ) -> WalletResult<()> {
        let w = &self.cfg;
        let store = &self.ctx.store;
        for attempt in 0..64u32 {
            if attempt > 0 {
                let cap = 1u64 << attempt.min(5);
                let wait = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let old = store.get(keyspace, key).await?;
            let current: LoginFailures = match &old {
                // An unreadable record counts as a fresh start rather than locking forever.
                Some(bytes) => serde_json::from_slice(bytes).unwrap_or_default(),
                None => LoginFailures::default(),
            };
            if current.locked_until > now {
                return Err(WalletError::LoginLocked {
                    retry_after: (current.locked_until - now) as u64,
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
                .compare_and_swap(keyspace, key, old, Some((bytes, Some(ttl))))
                .await?
            {
                return Ok(());
            }
        }
        Err(WalletError::Busy {
            detail: "too many logins in progress for this account; try again shortly",
            retry_after: 2,
        })
    }

    /// Replaces `account`'s unkeyed password hash (an earlier release's) by a keyed one of the
    /// password it was just signed in with, unless the hash changed meanwhile.
    async fn key_password_hash(
        &self,
        account: &Account,
        password: Arc<Zeroizing<String>>,
    ) -> WalletResult<()> {
        let old = account.password_hash.clone();
        let new = self.passwords.hash(password).await?;
        self.ctx
            .store
            .update_json::<Account, WalletError, _>(ks::ACCOUNTS, &account.id, None, |mut a| {
                if a.password_hash == old {
                    a.password_hash = new.clone();
                }
                Ok(a)
            })
            .await?;
        Ok(())
    }

    /// Changes the caller's password and ends every session of the account, the caller's too
    /// (a password that leaked stops working, and so does every session made with it). The
    /// current password is checked as a login is, under the email's failure count: a stolen
    /// session token buys no more guesses than the login form.
    pub async fn change_password(
        &self,
        who: &SignedIn,
        mut req: ChangePassword,
    ) -> WalletResult<()> {
        let current = Arc::new(Zeroizing::new(std::mem::take(&mut req.current_password)));
        let new = Arc::new(Zeroizing::new(std::mem::take(&mut req.new_password)));
        if new.len() < 8 || new.len() > 256 {
            return Err(WalletError::invalid(
                "the new password needs 8 to 256 characters",
            ));
        }
        let account = who.account();
        let email_key = self.email_key(&account.email);
        self.take_login_attempt(ks::LOGIN_FAILURES, &email_key, self.now())
            .await?;
        let checked = self
            .passwords
            .check(Some(account.password_hash.clone()), current)
            .await?;
        if checked == Checked::Wrong {
            // 403, not 401: the session itself is good
            return Err(WalletError::Forbidden("the current password is wrong"));
        }
        self.ctx
            .store
            .delete(ks::LOGIN_FAILURES, &email_key)
            .await?;
        let hash = self.passwords.hash(new).await?;
        self.end_sessions(&account.id, Some(hash)).await
    }

    /// Ends every session of the caller's account, the caller's too.
    pub async fn logout_everywhere(&self, who: &SignedIn) -> WalletResult<()> {
        self.end_sessions(&who.account().id, None).await
    }

    /// Ends every session of account `id` so far, moving its session epoch on
    /// ([`Self::authenticate`] refuses sessions of another), and sets its password hash to
    /// `hash` when given.
    async fn end_sessions(&self, id: &str, hash: Option<String>) -> WalletResult<()> {
        self.ctx
            .store
            .update_json::<Account, WalletError, _>(ks::ACCOUNTS, id, None, |mut a| {
                a.session_epoch += 1;
                if let Some(h) = &hash {
                    a.password_hash = h.clone();
                }
                Ok(a)
            })
            .await?
            .or_not_found("no such account")?;
        Ok(())
    }

    /// Revokes the session token the caller signed in with.
    pub async fn logout(&self, who: &SignedIn) -> WalletResult<()> {
        self.ctx
            .store
            .delete(ks::SESSIONS, &sha256_hex(who.token()))
            .await?;
        Ok(())
    }

    /// All accounts (the admin API; its `Admin` proof is checked at the HTTP edge).
    pub async fn list_accounts(&self) -> WalletResult<Vec<AccountView>> {
        self.ctx
            .store
            .scan_json::<Account>(ks::ACCOUNTS, "", 100_000)
            .await?
            .into_iter()
            .map(|(_, a)| Ok(AccountView::from(&self.opened_or_unreadable(a))))
            .collect()
    }

    /// Disables or enables an account (the admin API). A disabled account's sessions stop
    /// working at once ([`Self::authenticate`] checks the flag).
    pub async fn set_disabled(&self, id: &str, disabled: bool) -> WalletResult<AccountView> {
        let a = self
            .ctx
            .store
            .update_json::<Account, WalletError, _>(ks::ACCOUNTS, id, None, |mut a| {
                a.disabled = disabled;
                Ok(a)
            })
            .await?
            .or_not_found(format!("no account `{id}`"))?;
        Ok(AccountView::from(&self.opened_or_unreadable(a)))
    }
}

pub(super) fn valid_email(e: &str) -> bool {
    let e = e.trim();
    e.len() <= 254
        && e.contains('@')
        && !e.starts_with('@')
        && !e.ends_with('@')
        && !e.contains(char::is_whitespace)
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
