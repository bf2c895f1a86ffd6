//! Account password hashes: argon2id keyed with a secret of this deployment (a subkey of the
//! master key, argon2's `secret` input), so a store reader — a copied sled directory, a Redis
//! dump, a backup — cannot test guesses against them without the master key as well. A hash
//! made this way says so in its PHC string (`keyid=<PASSWORD_KEY_ID>`); a hash of an earlier
//! release (no keyid) still checks, and is replaced at its account's next successful login.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, KeyId, Params, ParamsBuilder, Version};
use zeroize::Zeroizing;

use super::error::{OrInternal, WalletError, WalletResult};

/// The keyid of a hash keyed with [`PasswordKey`]: the version of its derivation. Another
/// derivation (a rotated secret) takes another id, and the hashes it cannot check are told apart.
const PASSWORD_KEY_ID: &[u8] = b"idsk1";

/// A valid argon2id hash (keyed like every new one) of a random password, checked for unknown
/// accounts so that timing does not tell which emails have one.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1,keyid=aWRzazE$c29tZXNhbHRzb21lc2FsdA$pM8QsDB6uC2mQm1J+3VJlm4q8mLHuIUNZ7jPO9r8Yyc";

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checked {
    Wrong,
    Right,
    /// Right, against a hash of an earlier release (unkeyed): hash it again with the key.
    RightUnkeyed,
}

/// The deployment's password key (derived from the master key, the same on every node).
#[derive(Clone)]
pub(super) struct PasswordKey(Arc<Zeroizing<Vec<u8>>>);

impl PasswordKey {
    pub(super) fn new(sealer: &crate::store::Sealer) -> Self {
        Self(Arc::new(Zeroizing::new(
            sealer.derive_subkey(b"idstack wallet password v1"),
        )))
    }

    /// A new hash of `password`, keyed.
    pub(super) async fn hash(&self, password: Arc<Zeroizing<String>>) -> WalletResult<String> {
        let key = self.0.clone();
        password_work(move || keyed_hash(&key, password.as_bytes()))
            .await?
            .or_internal()
    }

    /// Checks `password` against `stored` (an account's hash), or against a dummy hash when there
    /// is no account, at the same cost.
    pub(super) async fn check(
        &self,
        stored: Option<String>,
        password: Arc<Zeroizing<String>>,
    ) -> WalletResult<Checked> {
        let key = self.0.clone();
        let real = stored.is_some();
        let hash = stored.unwrap_or_else(|| DUMMY_HASH.to_string());
        let checked = password_work(move || check(&key, &hash, password.as_bytes())).await?;
        Ok(if real { checked } else { Checked::Wrong })
    }
}

impl std::fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordKey(..)")
    }
}

fn keyed(key: &[u8], params: Params) -> Result<Argon2<'_>, argon2::Error> {
    Argon2::new_with_secret(key, Algorithm::Argon2id, Version::V0x13, params)
}

fn keyed_hash(key: &[u8], password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let params = ParamsBuilder::new()
        .m_cost(Params::DEFAULT_M_COST)
        .t_cost(Params::DEFAULT_T_COST)
        .p_cost(Params::DEFAULT_P_COST)
        .keyid(KeyId::new(PASSWORD_KEY_ID)?)
        .build()?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(keyed(key, params)?
        .hash_password(password, &salt)?
        .to_string())
}

/// `password` against `hash`: keyed hashes with the key, unkeyed ones (earlier releases) without;
/// a hash keyed under another id, or that does not parse, matches nothing. argon2's verify takes
/// the cost parameters from the PHC string: only the ones every release has used are checked
/// (argon2id v19, the default m/t/p, 32 bytes, no associated data), so a hash with others — a
/// planted `m=4294967295` would allocate 4 TiB — costs nothing and matches nothing.
fn check(key: &[u8], hash: &str, password: &[u8]) -> Checked {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return Checked::Wrong;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return Checked::Wrong;
    };
    let ours = parsed.algorithm == argon2::ARGON2ID_IDENT
        && parsed.version == Some(u32::from(Version::V0x13))
        && params.m_cost() == Params::DEFAULT_M_COST
        && params.t_cost() == Params::DEFAULT_T_COST
        && params.p_cost() == Params::DEFAULT_P_COST
        && params.data().is_empty()
        && parsed
            .hash
            .is_some_and(|h| h.len() == Params::DEFAULT_OUTPUT_LEN);
    if !ours {
        return Checked::Wrong;
    }
    let (hasher, found) = match params.keyid() {
        PASSWORD_KEY_ID => match keyed(key, Params::default()) {
            Ok(a) => (a, Checked::Right),
            Err(_) => return Checked::Wrong,
        },
        [] => (Argon2::default(), Checked::RightUnkeyed),
        _ => return Checked::Wrong,
    };
    if hasher.verify_password(password, &parsed).is_ok() {
        found
    } else {
        Checked::Wrong
    }
}

/// Runs an argon2id hash or verification on the blocking pool, at most one per core at a time.
/// Each one holds 19 MiB (the default memory cost): without the bound a burst of logins would
/// allocate that 512 times over (tokio's blocking pool) instead of queueing. The permit lives in
/// the blocking task, so a request cancelled while hashing (client gone) does not free a slot for
/// another hash before its own has finished. A request that waits more than 10 s for a slot gets a
/// 503 with Retry-After instead of an unbounded queue.
async fn password_work<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> WalletResult<T> {
    static PERMITS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        ))
    });
    let permit = tokio::time::timeout(Duration::from_secs(10), permits.clone().acquire_owned())
        .await
        .map_err(|_| WalletError::Busy {
            detail: "too many logins in progress; try again shortly",
            retry_after: 2,
        })?
        .or_internal()?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .or_internal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Vec<u8> {
        crate::store::Sealer::new(&[byte; 32]).derive_subkey(b"idstack wallet password v1")
    }

    fn unkeyed_hash(password: &[u8]) -> String {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password, &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_keyed_hash_checks_only_with_its_key() {
        let k = key(1);
        let h = keyed_hash(&k, b"correct horse").unwrap();
        assert!(h.contains(",keyid=aWRzazE$"), "{h}");
        assert_eq!(check(&k, &h, b"correct horse"), Checked::Right);
        assert_eq!(check(&k, &h, b"correct horsf"), Checked::Wrong);
        // a store reader without the master key: another key, no key, the keyid taken out
        assert_eq!(check(&key(2), &h, b"correct horse"), Checked::Wrong);
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_err());
        let stripped = h.replace(",keyid=aWRzazE", "");
        assert_eq!(check(&k, &stripped, b"correct horse"), Checked::Wrong);
        // a keyid this release does not know matches nothing
        let other = h.replace("keyid=aWRzazE", "keyid=aWRzazI");
        assert_eq!(check(&k, &other, b"correct horse"), Checked::Wrong);
        assert_eq!(check(&k, "not a hash", b"correct horse"), Checked::Wrong);
    }

    /// Costs other than the ones every release used are not computed: a stored hash asking for
    /// 4 TiB or a billion passes (a planted record) matches nothing, at once.
    #[test]
    fn a_hash_with_other_costs_is_not_computed() {
        let k = key(1);
        let h = keyed_hash(&k, b"correct horse").unwrap();
        for (from, to) in [
            ("m=19456", "m=4294967295"),
            ("t=2", "t=1000000000"),
            ("p=1", "p=16"),
            ("$argon2id$", "$argon2i$"),
            ("$v=19$", "$v=16$"),
            (",keyid=aWRzazE", ",keyid=aWRzazE,data=YWJj"),
        ] {
            let odd = h.replacen(from, to, 1);
            assert_ne!(odd, h, "{from}");
            assert_eq!(check(&k, &odd, b"correct horse"), Checked::Wrong, "{odd}");
        }
        let unkeyed = unkeyed_hash(b"correct horse").replacen("m=19456", "m=4294967295", 1);
        assert_eq!(check(&k, &unkeyed, b"correct horse"), Checked::Wrong);
    }

    #[test]
    fn an_earlier_releases_hash_checks_and_asks_to_be_keyed() {
        let k = key(1);
        let h = unkeyed_hash(b"correct horse");
        assert_eq!(check(&k, &h, b"correct horse"), Checked::RightUnkeyed);
        assert_eq!(check(&k, &h, b"wrong horse"), Checked::Wrong);
    }

    #[test]
    fn the_dummy_hash_is_keyed_like_a_real_one() {
        // the same work as a real account's check (same parameters, keyed), matching nothing
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(params.keyid(), PASSWORD_KEY_ID);
        assert_eq!(params.m_cost(), Params::DEFAULT_M_COST);
        assert_eq!(params.t_cost(), Params::DEFAULT_T_COST);
        assert_eq!(params.p_cost(), Params::DEFAULT_P_COST);
        assert_eq!(check(&key(1), DUMMY_HASH, b""), Checked::Wrong);
    }
}
