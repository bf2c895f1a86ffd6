//! Secret sealing: XChaCha20-Poly1305 under a 256-bit master key that never enters the store or
//! the logs. Sealed blobs are `[1][24-byte nonce][ciphertext+tag]`, bound to their location by AAD
//! (keyspace and key), so a sealed value copied to another record does not open.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use zeroize::Zeroizing;

use super::StoreError;
use crate::config::Secret;

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
pub const MASTER_KEY_FILE: &str = "master.key";

/// Derives a 32-byte key for `purpose` from the cluster secret and cluster id (HMAC-SHA256): the
/// master key of a cluster without `store.master_key` (purpose "master key"), and the cluster's
/// RPC and gossip keys.
pub fn derive_cluster_key(secret: &[u8], cluster_id: &str, purpose: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret) {
        mac.update(b"idstack cluster key v1\0");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(cluster_id.as_bytes());
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// The master key every node derives from the cluster secret when `store.master_key` is not set,
/// so sealed records replicated from another node open here too.
pub fn derive_master_key(cluster_secret: &str, cluster_id: &str) -> [u8; 32] {
    derive_cluster_key(cluster_secret.as_bytes(), cluster_id, "master key")
}

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// The master key itself, for [`Self::derive_subkey`] (the cipher above holds it too).
    key: Zeroizing<[u8; 32]>,
    /// The [`MacKey`]s derived so far, by label (a handful, derived once each).
    mac_keys: std::sync::Arc<std::sync::Mutex<MacKeys>>,
}

/// Derived [`MacKey`]s by label.
type MacKeys = Vec<(&'static [u8], MacKey)>;

/// An HMAC-SHA256 key for one purpose, derived from the master key ([`Sealer::mac_key`]): what
/// stateless tokens (c_nonces, login device tokens), tx_code digests and webhook signatures are
/// MAC'd with. Every node of a deployment derives the same one.
#[derive(Clone)]
pub struct MacKey(Hmac<sha2::Sha256>);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// The MAC of `parts`, a NUL between each two (a part holding a NUL must be the last, or be
    /// one whose NULs the caller's format makes unambiguous); finalize or verify it.
    pub fn over(&self, parts: &[&[u8]]) -> Hmac<sha2::Sha256> {
        let mut mac = self.0.clone();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"\0");
            }
            mac.update(part);
        }
        mac
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            key: Zeroizing::new(*key),
            mac_keys: Default::default(),
        }
    }

    /// Parses a master key given as base64 (standard or URL-safe) or 64 hex digits.
    pub fn from_secret(secret: &Secret) -> Result<Self, StoreError> {
        let s = secret.expose().trim();
        let bytes = Zeroizing::new(
            if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
                (0..32)
                    .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|e| StoreError::Seal(format!("master key: {e}")))?
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
                    .map_err(|_| {
                        StoreError::Seal("master key must be 32 bytes as base64 or hex".into())
                    })?
            },
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            StoreError::Seal(format!("master key must be 32 bytes, got {}", bytes.len()))
        })?;
        let key = Zeroizing::new(key);
        Ok(Self::new(&key))
    }

    /// A deterministic 32-byte subkey for another purpose (HMAC keys), never the master key itself.
    pub fn derive_subkey(&self, label: &[u8]) -> Vec<u8> {
        // The XChaCha20 keystream under a label-derived nonce is a PRF of the master key. These
        // are the bytes XChaCha20-Poly1305 encrypts 32 zero bytes with (its block 0 keys the
        // MAC, so the message starts at byte 64) — the derivation every stored MAC was made
        // with — computed by the bare stream cipher, which cannot fail: the AEAD call returned
        // a Result, and a failure would have given an empty key.
        use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
        let mut nonce = [0u8; NONCE_LEN];
        let digest = <sha2::Sha256 as sha2::Digest>::digest(label);
        nonce.copy_from_slice(&digest[..NONCE_LEN]);
        let mut out = Zeroizing::new([0u8; 32]);
        let mut stream = chacha20::XChaCha20::new((&*self.key).into(), (&nonce).into());
        stream.seek(64u64);
        stream.apply_keystream(&mut *out);
        out.to_vec()
    }

    /// The HMAC key for `label`'s purpose: [`Self::derive_subkey`] of it, derived on first use
    /// and kept (a c_nonce or tx_code check then costs no derivation).
    pub fn mac_key(&self, label: &'static [u8]) -> MacKey {
        let mut keys = match self.mac_keys.lock() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, key)) = keys.iter().find(|(l, _)| *l == label) {
            return key.clone();
        }
        let raw = Zeroizing::new(self.derive_subkey(label));
        // HMAC pads a key shorter than its 64-byte block with zeros: keyed with the padded block
        // (infallible), it is the same MAC as under the 32-byte subkey.
        let mut block = Zeroizing::new([0u8; 64]);
        let n = raw.len().min(64);
        block[..n].copy_from_slice(&raw[..n]);
        let key = MacKey(<Hmac<sha2::Sha256> as KeyInit>::new(&(*block).into()));
        keys.push((label, key.clone()));
        key
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| StoreError::Seal("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEAL_VERSION {
            return Err(StoreError::Seal("not a sealed value".into()));
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                StoreError::Seal(
                    "cannot open sealed value: wrong master key or tampered data".into(),
                )
            })
    }
}

/// How the master key was obtained, so startup can warn about generated keys.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    ExistingFile,
    Generated,
}

/// Sandbox fallback: use `data_dir/master.key`, creating it (0600) when absent.
pub fn load_or_generate_master_key(data_dir: &Path) -> Result<(Sealer, KeySource), StoreError> {
    let path = data_dir.join(MASTER_KEY_FILE);
    if path.exists() {
        let secret =
            crate::config::read_secret_file(&path).map_err(|e| StoreError::Seal(e.to_string()))?;
        return Ok((Sealer::from_secret(&secret)?, KeySource::ExistingFile));
    }
    create_private_dir(data_dir)
        .map_err(|e| StoreError::Seal(format!("cannot create {}: {e}", data_dir.display())))?;
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.as_ref()));
    write_private_file(&path, encoded.as_bytes())?;
    Ok((Sealer::new(&key), KeySource::Generated))
}

/// Creates `dir` (and its parents) readable by this user only, as the data directory must be:
/// the store holds claims, account emails and password hashes (attacker review: 0755 and 0644
/// under the usual umask). A directory that exists keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

fn write_private_file(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| StoreError::Seal(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(data)
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::Seal(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {

    /// The derived master key a production cluster must now pin as `store.master_key` is what
    /// docs/cluster.md's shell command computes (printf + openssl dgst -hmac), as hex.
    #[test]
    fn the_derived_master_key_is_what_the_documented_command_prints() {
        let k = derive_master_key("it-cluster-secret-0123", "it-cluster");
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "74a0948eadd344cbf08da9f9c5e6ecbc1dc3a012f13cd5d56725e6cb9fc7ed60"
        );
    }
    use super::*;

    /// A subkey is the bytes the AEAD encrypts 32 zero bytes with under the label's nonce (the
    /// derivation webhook signing keys, c_nonces, tx_code digests and device tokens already
    /// issued were made with), now from the bare stream cipher, which cannot fail.
    #[test]
    fn a_subkey_is_the_aead_keystream_it_always_was() {
        for (master, label) in [
            ([7u8; 32], &b"idstack webhook v1"[..]),
            ([0u8; 32], &b""[..]),
            (
                [0xa5; 32],
                &b"a label longer than one sixty-four byte chacha block, to be sure of it"[..],
            ),
        ] {
            let s = Sealer::new(&master);
            let digest = <sha2::Sha256 as sha2::Digest>::digest(label);
            let aead = s
                .cipher
                .encrypt(
                    XNonce::from_slice(&digest[..NONCE_LEN]),
                    Payload {
                        msg: &[0u8; 32],
                        aad: label,
                    },
                )
                .unwrap();
            assert_eq!(s.derive_subkey(label), aead[..32].to_vec());
        }
        assert_ne!(
            Sealer::new(&[1u8; 32]).derive_subkey(b"x"),
            Sealer::new(&[1u8; 32]).derive_subkey(b"y")
        );
    }

    /// A MacKey's MAC is HMAC-SHA256 under `derive_subkey(label)` over the parts joined by NUL
    /// — the framing the tokens and digests already stored were made with — and labels differ.
    #[test]
    fn a_mac_key_is_the_labelled_subkey_over_nul_joined_parts() {
        let s = Sealer::new(&[7u8; 32]);
        let label: &'static [u8] = b"idstack test label v1";
        let mut plain =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(&s.derive_subkey(label)).unwrap();
        plain.update(b"scope\0body");
        let expected = plain.finalize().into_bytes();
        for _ in 0..2 {
            // the second call comes from the cache
            let got = s
                .mac_key(label)
                .over(&[b"scope", b"body"])
                .finalize()
                .into_bytes();
            assert_eq!(got, expected);
        }
        let other = s
            .mac_key(b"idstack other label v1")
            .over(&[b"scope", b"body"]);
        assert_ne!(other.finalize().into_bytes(), expected);
        let other_master = Sealer::new(&[8u8; 32])
            .mac_key(label)
            .over(&[b"scope", b"body"]);
        assert_ne!(other_master.finalize().into_bytes(), expected);
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let s = Sealer::new(&[7u8; 32]);
        let sealed = s.seal(b"keys/k1", b"private jwk").unwrap();
        assert_eq!(
            s.open(b"keys/k1", &sealed).unwrap().as_slice(),
            b"private jwk"
        );
        // a flipped ciphertext bit
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(s.open(b"keys/k1", &bad).is_err());
        // moved to another record
        assert!(s.open(b"keys/k2", &sealed).is_err());
        // another master key
        assert!(Sealer::new(&[8u8; 32]).open(b"keys/k1", &sealed).is_err());
        // two seals of the same plaintext differ (random nonce)
        assert_ne!(sealed, s.seal(b"keys/k1", b"private jwk").unwrap());
    }

    #[test]
    fn master_key_formats() {
        let hex = "00".repeat(32);
        assert!(Sealer::from_secret(&Secret::new(hex)).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(Sealer::from_secret(&Secret::new(b64)).is_ok());
        assert!(Sealer::from_secret(&Secret::new("short")).is_err());
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, src) = load_or_generate_master_key(dir.path()).unwrap();
        assert_eq!(src, KeySource::Generated);
        let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, src) = load_or_generate_master_key(dir.path()).unwrap();
        assert_eq!(src, KeySource::ExistingFile);
        let sealed = a.seal(b"x", b"y").unwrap();
        assert_eq!(b.open(b"x", &sealed).unwrap().as_slice(), b"y");
    }

    /// Attacker review: the data directory (sled's files, the store's claims, emails and
    /// password hashes) was created 0755 under the usual umask, readable by every local user.
    #[test]
    fn a_created_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        load_or_generate_master_key(&data).unwrap();
        let store = dir.path().join("store");
        crate::store::sled_store::SledStore::open(
            &store,
            1 << 20,
            std::sync::Arc::new(crate::clock::SystemClock),
        )
        .unwrap();
        // sled's own directory too, under a data directory that was already there, open to all
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        crate::store::sled_store::SledStore::open(
            &shared,
            1 << 20,
            std::sync::Arc::new(crate::clock::SystemClock),
        )
        .unwrap();
        let sled_dir = std::fs::read_dir(&shared)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("sled-v")
            })
            .unwrap();
        // and one an earlier release let sled make 0755 is made private when opened
        let old = dir.path().join("old");
        let old_sled = old.join(format!("sled-v{}", crate::store::LAYOUT_VERSION));
        std::fs::create_dir_all(&old_sled).unwrap();
        std::fs::set_permissions(&old_sled, std::fs::Permissions::from_mode(0o755)).unwrap();
        crate::store::sled_store::SledStore::open(
            &old,
            1 << 20,
            std::sync::Arc::new(crate::clock::SystemClock),
        )
        .unwrap();
        for d in [data, store, sled_dir, old_sled] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {:o}", d.display(), mode & 0o777);
        }
    }
}
