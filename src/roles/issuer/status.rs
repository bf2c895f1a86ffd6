//! Credential status: index allocation, revoke / suspend / reinstate, the signed status lists.

use super::error::*;
use super::formats::{self, StatusRef};
use super::ks;
use super::model::*;
use super::service::*;
use crate::crypto::{b64url, sha256_hex, status::StatusArray};
use crate::store::Cas;

/// Entries per status list (the W3C minimum for herd privacy).
pub const STATUS_LIST_SIZE: u64 = 131_072;
pub const TOKEN_STATUS_BITS: u8 = 2;
/// How long a signed status list is valid (`exp`, `validUntil`): a day, while its ETag changes
/// every half-day, so a revalidated copy never outlives it. Verifiers (ours by
/// `verifier.status_list_max_age_seconds`) refuse a list older than that.
pub const STATUS_LIST_LIFETIME_SECS: i64 = 24 * 3600;

/// Most times one status change writes the lists (each after another change of the same
/// credential won the record): changes of one credential are admin calls, so two or three
/// rounds are already a contest.
const MAX_LIST_ROUNDS: usize = 8;

/// Status-list indices are reserved from the issuer's shared counter in blocks of this many, one
/// compare-and-swap per block instead of one per credential: with every credential taking the
/// next index from one record, concurrent issuance (and, in a cluster, every node) contended on
/// that record. A block's unused indices are skipped when the process restarts — they stay
/// "valid" bits no credential points at. Divides [`STATUS_LIST_SIZE`], so a block never straddles
/// two lists.
pub(super) const STATUS_BLOCK: u64 = 64;

/// Where, within its list, the `n`-th credential of an issuer gets its index. Bitstring Status
/// List v1.0 (§ privacy) asks for indices assigned at random: in order, an index tells a
/// verifier when the credential was issued relative to others, and how many the issuer issued.
/// Here they are a keyed permutation of the order of issuance: every index of a list exactly
/// once, so no two credentials share one, in an order only the key tells. Issuers whose first
/// index was handed out before this (no key) keep the order of issuance, so old and new
/// credentials never meet on one index. The key is part of the counter record itself
/// ([`StatusCounter`]): every reservation reads it with the block it takes, so no process can
/// hold another order than the record's.
#[derive(Clone)]
pub(super) struct IndexOrder(Option<[u8; 32]>);

/// An issuer's status-list counter: the next index to reserve and, for counters created since
/// indices are permuted, the key of the issuer's [`IndexOrder`]. A bare number is a counter of
/// an earlier release (issuance order); it never gains a key.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub(super) enum StatusCounter {
    Ordered(u64),
    Keyed { next: u64, order: String },
}

impl StatusCounter {
    fn next(&self) -> u64 {
        match self {
            StatusCounter::Ordered(n) | StatusCounter::Keyed { next: n, .. } => *n,
        }
    }

    fn advanced(self, by: u64) -> Self {
        match self {
            StatusCounter::Ordered(n) => StatusCounter::Ordered(n + by),
            StatusCounter::Keyed { next, order } => StatusCounter::Keyed {
                next: next + by,
                order,
            },
        }
    }

    pub(super) fn order(&self) -> Result<IndexOrder, IssuerError> {
        match self {
            StatusCounter::Ordered(_) => Ok(IndexOrder(None)),
            StatusCounter::Keyed { order, .. } => crate::crypto::b64url_decode(order)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(|k| IndexOrder(Some(k)))
                .ok_or_else(|| IssuerError::Internal("status counter: bad order key".into())),
        }
    }
}

impl IndexOrder {
    pub(super) fn index(&self, n: u64) -> u64 {
        let i = n % STATUS_LIST_SIZE;
        match &self.0 {
            None => i,
            Some(key) => permuted(key, i),
        }
    }
}

/// Bits of the Feistel network [`permuted`] runs on: the smallest even width holding a list.
const FEISTEL_BITS: u32 = 18;
const FEISTEL_HALF: u32 = FEISTEL_BITS / 2;
const FEISTEL_ROUNDS: u8 = 4;

/// `i` (below [`STATUS_LIST_SIZE`]) through a keyed permutation of `0..STATUS_LIST_SIZE`: a
/// four-round Feistel network on 18 bits (HMAC-SHA256 rounds), walked along its cycle until it
/// lands inside the list (cycle walking keeps it a bijection of the smaller domain).
fn permuted(key: &[u8; 32], i: u64) -> u64 {
    use hmac::Mac;
    let mask = (1u64 << FEISTEL_HALF) - 1;
    // (HMAC takes a key of any length: new_from_slice cannot fail)
    let keyed = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).ok();
    let round = |r: u8, half: u64| -> u64 {
        keyed.clone().map_or(0, |mut mac| {
            mac.update(&[r]);
            mac.update(&half.to_be_bytes());
            let out = mac.finalize().into_bytes();
            u64::from(u16::from_be_bytes([out[0], out[1]])) & mask
        })
    };
    let mut x = i;
    loop {
        let (mut left, mut right) = (x >> FEISTEL_HALF, x & mask);
        for r in 0..FEISTEL_ROUNDS {
            (left, right) = (right, left ^ round(r, right));
        }
        x = (left << FEISTEL_HALF) | right;
        if x < STATUS_LIST_SIZE {
            return x;
        }
    }
}

impl IssuerService {
    pub(super) async fn allocate_status(&self, issuer: &Issuer) -> Result<StatusRef, IssuerError> {
        let (n, order) = {
            let mut blocks = self.status_blocks.lock().await;
            let (block, order) = match blocks.get_mut(&issuer.id) {
                Some(b) if !b.0.is_empty() => b,
                _ => {
                    let (start, order) = self.reserve_status_block(&issuer.id).await?;
                    blocks.insert(issuer.id.clone(), (start..start + STATUS_BLOCK, order));
                    blocks
                        .get_mut(&issuer.id)
                        .ok_or(IssuerError::NoStatusList)?
                }
            };
            let n = block.start;
            block.start += 1;
            (n, order.clone())
        };
        Ok(self.status_ref(&issuer.id, status_list_number(n), order.index(n)))
    }

    /// The issuer's [`IndexOrder`], as its counter record holds it (issuance order before the
    /// first credential).
    #[cfg(test)]
    pub(super) async fn index_order(&self, issuer_id: &str) -> Result<IndexOrder, IssuerError> {
        let counter = self
            .ctx
            .store
            .get_json::<StatusCounter>(ks::COUNTERS, &format!("{issuer_id}/status"))
            .await?;
        counter.map_or(Ok(IndexOrder(None)), |c| c.order())
    }

    /// Where index `index` of list `list` (1-based) of an issuer's status lists is published.
    pub(super) fn status_ref(&self, issuer_id: &str, list: u64, index: u64) -> StatusRef {
        let base = format!("{}/status-lists", self.issuer_url(issuer_id));
        StatusRef {
            list,
            index,
            token_list: format!("{base}/token-{list}"),
            revocation_list: format!("{base}/revocation-{list}"),
            suspension_list: format!("{base}/suspension-{list}"),
        }
    }

    /// Reserves the next [`STATUS_BLOCK`] indices of an issuer's status lists; returns the first
    /// and the issuer's index order, from the very record the reservation changed.
    pub(super) async fn reserve_status_block(
        &self,
        issuer_id: &str,
    ) -> Result<(u64, IndexOrder), IssuerError> {
        let key = format!("{issuer_id}/status");
        loop {
            let updated = self
                .ctx
                .store
                .update_json::<StatusCounter, IssuerError, _>(ks::COUNTERS, &key, None, |c| {
                    Ok(c.advanced(STATUS_BLOCK))
                })
                .await?;
            if let Some(c) = updated {
                // durable before any index of the block is handed out: a crash that rolled the
                // counter back would give the next credentials the same indices as ones already
                // delivered (revoking one would revoke the other)
                self.ctx.store.flush().await?;
                return Ok((c.next() - STATUS_BLOCK, c.order()?));
            }
            // first credential of this issuer: create the counter at 0 with a fresh index order,
            // then reserve through the update above like every later block (in a cluster's
            // consistent mode that update is held by a majority; two inserts at once cannot both
            // hand out 0, and the order is the one of the insert that won)
            let first = StatusCounter::Keyed {
                next: 0,
                order: b64url(rand::random::<[u8; 32]>()),
            };
            self.ctx
                .store
                .insert_new_json(ks::COUNTERS, &key, &first, None)
                .await?;
        }
    }

    pub async fn list_credentials(
        &self,
        issuer_id: &str,
    ) -> Result<Vec<IssuedCredential>, IssuerError> {
        self.get_issuer(issuer_id).await?;
        Ok(self
            .ctx
            .store
            .scan_json::<IssuedCredential>(ks::CREDS, &format!("{issuer_id}/"), 10_000)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// revoke | suspend | reinstate. Revocation is final; a `jwt_vc_json` credential cannot be
    /// suspended (it names no suspension list).
    ///
    /// The record changes first (one compare-and-swap), then the three lists are written from
    /// it, then the record is read again: if another change won meanwhile (two admins at once),
    /// the lists are written again from the record as it now is. Whichever change writes the
    /// lists last has read the record after its own writes, so the lists end as the record says
    /// (before, a reinstate racing a revoke could leave a confirmed revocation out of the lists).
    pub async fn set_status(
        &self,
        issuer_id: &str,
        credential_id: &str,
        to: CredentialStatus,
    ) -> Result<IssuedCredential, IssuerError> {
        self.get_issuer(issuer_id).await?;
        let key = format!("{issuer_id}/{credential_id}");
        let store = &self.ctx.store;
        let updated = store
            .update_json::<IssuedCredential, IssuerError, _>(ks::CREDS, &key, None, |mut c| {
                match (c.status, to) {
                    (CredentialStatus::Revoked, CredentialStatus::Revoked) => {}
                    (CredentialStatus::Revoked, _) => return Err(IssuerError::Revoked),
                    (_, CredentialStatus::Suspended) if c.format == Format::JwtVcJson => {
                        return Err(IssuerError::NoSuspension("jwt_vc_json"))
                    }
                    _ => {}
                }
                c.status = to;
                Ok(c)
            })
            .await?
            .ok_or_else(|| IssuerError::NoCredential(credential_id.to_string()))?;
        let mut written = updated.status;
        let mut settled = false;
        for _ in 0..MAX_LIST_ROUNDS {
            self.write_status_bits(issuer_id, &updated, written).await?;
            let now = store
                .get_settled_json::<IssuedCredential>(ks::CREDS, &key)
                .await?
                .map_or(written, |c| c.status);
            if now == written {
                settled = true;
                break;
            }
            written = now;
        }
        if !settled {
            // never confirmed while the lists may say otherwise than the record: the last
            // change to finish writes them
            return Err(IssuerError::Busy(
                "the credential's status kept changing; retry".into(),
            ));
        }
        // durable before it is confirmed: a revocation must not be lost to a crash
        store.flush().await?;
        tracing::info!(issuer = issuer_id, credential = credential_id, status = ?to, "credential status changed");
        Ok(updated)
    }

    /// The bits of credential `c` in its three lists, set to say `status`.
    async fn write_status_bits(
        &self,
        issuer_id: &str,
        c: &IssuedCredential,
        status: CredentialStatus,
    ) -> Result<(), IssuerError> {
        let list = status_list_number_from(c);
        let token_value: u8 = match status {
            CredentialStatus::Valid => 0,
            CredentialStatus::Revoked => 1,
            CredentialStatus::Suspended => 2,
        };
        let idx = c.status_index;
        self.update_list(
            issuer_id,
            &format!("token-{list}"),
            TOKEN_STATUS_BITS,
            |a| a.set_lsb(idx, token_value),
        )
        .await?;
        self.update_list(issuer_id, &format!("revocation-{list}"), 1, |a| {
            a.set_msb(idx, status == CredentialStatus::Revoked)
        })
        .await?;
        self.update_list(issuer_id, &format!("suspension-{list}"), 1, |a| {
            a.set_msb(idx, status == CredentialStatus::Suspended)
        })
        .await
    }

    pub(super) async fn update_list(
        &self,
        issuer_id: &str,
        list: &str,
        bits: u8,
        f: impl Fn(&mut StatusArray) -> Result<(), crate::crypto::CryptoError>,
    ) -> Result<(), IssuerError> {
        let key = format!("{issuer_id}/{list}");
        let store = &self.ctx.store;
        loop {
            let current = store.get(ks::STATUS, &key).await?;
            let mut arr = match &current {
                Some(raw) => StatusArray {
                    bits,
                    bytes: raw.clone(),
                },
                None => {
                    StatusArray::new(bits, STATUS_LIST_SIZE).map_err(IssuerError::StatusList)?
                }
            };
            f(&mut arr).map_err(IssuerError::StatusList)?;
            if store
                .compare_and_swap(ks::STATUS, &key, current, Some((arr.bytes, None)))
                .await?
                == Cas::Swapped
            {
                return Ok(());
            }
        }
    }

    /// A status list as served: its ETag, and (content type, signed token) unless the caller
    /// already holds that version (`if_none_match` is the ETag): then nothing is signed, and the
    /// answer is a 304. `cwt`: a `token-N` list in CWT form (`application/statuslist+cwt`,
    /// signed by the issuer's mdoc document signer, for mdocs), else the JWT form.
    pub async fn status_list(
        &self,
        issuer_id: &str,
        list: &str,
        cwt: bool,
        if_none_match: Option<&str>,
    ) -> Result<(String, Option<(&'static str, Vec<u8>)>), IssuerError> {
        let issuer = self.get_issuer(issuer_id).await?;
        let (kind, number) = list.rsplit_once('-').ok_or(IssuerError::NoStatusList)?;
        // before any read: a name of no list costs nothing
        if !matches!(kind, "token" | "revocation" | "suspension") {
            return Err(IssuerError::NoStatusList);
        }
        // one name per list: `token-01` or `token-+1` would be signed as lists of their own
        let number: u64 = number
            .parse()
            .ok()
            .filter(|n: &u64| n.to_string() == number)
            .ok_or(IssuerError::NoStatusList)?;
        self.check_allocated(issuer_id, number).await?;
        let bits = if kind == "token" {
            TOKEN_STATUS_BITS
        } else {
            1
        };
        // this node's copy: a public endpoint must not queue every fetch at the primary; a
        // revocation reaches every node with its replication, or within the anti-entropy
        // interval for one that missed it (docs/cluster.md). A node cut off from a majority in
        // consistent mode answers 503 instead: its copy may lack a revocation made on the other
        // side, and a list it signs now would show it valid
        self.ctx.store.current()?;
        let arr = match self
            .ctx
            .store
            .get(ks::STATUS, &format!("{issuer_id}/{list}"))
            .await?
        {
            Some(bytes) => StatusArray { bits, bytes },
            None => StatusArray::new(bits, STATUS_LIST_SIZE).map_err(IssuerError::StatusList)?,
        };
        let signer = match (kind, cwt) {
            ("token", true) => Some(self.cwt_signer(issuer_id).await?),
            _ => None,
        };
        let signed_by = match &signer {
            Some(ds) => sha256_hex(&ds.cert),
            None => issuer.key_fingerprint.clone(),
        };
        let etag = list_etag(list, &arr, &signed_by, cwt, self.now());
        if if_none_match == Some(etag.as_str()) {
            return Ok((etag, None));
        }
        let cache_key = (issuer_id.to_string(), list.to_string(), cwt);
        if let Some(signed) = self.served_lists.get(&cache_key, &etag, self.now()) {
            return Ok((etag, Some(signed)));
        }
        let key = self.signing_key(&issuer).await?;
        let uri = format!("{}/status-lists/{list}", self.issuer_url(issuer_id));
        let now = self.now();
        let signed = match kind {
            "token" if cwt => {
                let ds = signer.ok_or(IssuerError::NoStatusList)?;
                let token = crate::crypto::mdoc::status::sign(
                    &uri,
                    now,
                    Some(now + STATUS_LIST_LIFETIME_SECS),
                    Some(REUSE_SECS.unsigned_abs()),
                    &arr,
                    &ds.key,
                    &ds.x5chain(),
                )
                .map_err(|e| {
                    IssuerError::StatusList(crate::crypto::CryptoError::Malformed(e.to_string()))
                })?;
                (crate::crypto::mdoc::status::MEDIA_TYPE, token)
            }
            "token" => (
                "application/statuslist+jwt",
                formats::token_status_list(
                    &issuer,
                    &key,
                    &uri,
                    bits,
                    arr.to_token_lst(),
                    now,
                    REUSE_SECS,
                )
                .into_bytes(),
            ),
            _ => (
                "application/vc+jwt",
                formats::bitstring_status_credential(
                    &issuer,
                    &key,
                    &uri,
                    kind,
                    arr.to_encoded_list(),
                    now,
                )
                .into_bytes(),
            ),
        };
        self.served_lists.put(cache_key, &etag, now, &signed);
        Ok((etag, Some(signed)))
    }

    /// Whether list `number` (1-based, from the URL) holds an allocated index: overflow or an
    /// unallocated list is "no such list".
    async fn check_allocated(&self, issuer_id: &str, number: u64) -> Result<(), IssuerError> {
        let allocated = self
            .ctx
            .store
            .get_json::<StatusCounter>(ks::COUNTERS, &format!("{issuer_id}/status"))
            .await?
            .map_or(0, |c| c.next());
        let start = number
            .checked_sub(1)
            .and_then(|n| n.checked_mul(STATUS_LIST_SIZE));
        if start.is_none_or(|start| start >= allocated.max(1)) {
            return Err(IssuerError::NoStatusList);
        }
        Ok(())
    }

    /// The signer of the CWT form: the mdoc document signer (none in production mode without an
    /// imported chain: no such list).
    async fn cwt_signer(
        &self,
        issuer_id: &str,
    ) -> Result<std::sync::Arc<crate::roles::mdoc_pki::Signer>, IssuerError> {
        self.mdoc_document_signer(issuer_id)
            .await
            .map_err(|e| match e {
                IssuerError::NoMdocIaca => IssuerError::NoStatusList,
                e => e,
            })
    }
}

/// Status lists as last signed on this node, by (issuer, list, CWT form), with their ETag and
/// when they were signed. The ETag names everything a signed list says but its `iat` (content,
/// signer, form, half-day), so a request for the same ETag within [`REUSE_SECS`] of the signing
/// gets the same bytes: a list is compressed and signed at most once a minute per node, not on
/// every anonymous GET (attacker review: milliseconds of CPU each, with no rate limit). Not
/// longer: a verifier that wants lists younger than some age fetches again past it and must get
/// a fresh `iat` (review: reused for the whole half-day, a verifier with a one-hour maximum age
/// refused every list). The minute is the `ttl` the token states. At most [`MAX_SERVED_LISTS`]
/// are kept.
#[derive(Default)]
pub struct ServedLists(std::sync::Mutex<std::collections::HashMap<ListKey, SignedList>>);

/// (issuer, list, CWT form).
type ListKey = (String, String, bool);
/// (ETag, signed at, media type, signed bytes).
type SignedList = (String, i64, &'static str, Vec<u8>);

/// Signed lists kept per node (each a few KiB).
const MAX_SERVED_LISTS: usize = 1024;

/// How long a signed list is handed out again (seconds; the token's `ttl`).
pub const REUSE_SECS: i64 = 60;

impl ServedLists {
    fn get(&self, key: &ListKey, etag: &str, now: i64) -> Option<(&'static str, Vec<u8>)> {
        let held = self.0.lock().ok()?;
        let (tag, signed_at, media, bytes) = held.get(key)?;
        let young = (0..REUSE_SECS).contains(&(now - signed_at));
        (tag == etag && young).then(|| (*media, bytes.clone()))
    }

    fn put(&self, key: ListKey, etag: &str, now: i64, signed: &(&'static str, Vec<u8>)) {
        if let Ok(mut held) = self.0.lock() {
            if held.len() >= MAX_SERVED_LISTS && !held.contains_key(&key) {
                held.clear();
            }
            held.insert(key, (etag.to_string(), now, signed.0, signed.1.clone()));
        }
    }
}

/// A status list's ETag: its name, content and signer (key or document signer certificate), and
/// the half-day it was signed in, not the exact signing time: unchanged → 304, a rotated signer
/// → a new ETag. The half-day keeps a revalidated copy well inside the JWT's 24 h `exp`: a 304
/// never hands back an expired token.
fn list_etag(list: &str, arr: &StatusArray, signed_by: &str, cwt: bool, now: i64) -> String {
    let half_day = now.div_euclid(12 * 3600).to_be_bytes();
    let tag = [
        list.as_bytes(),
        &arr.bytes,
        signed_by.as_bytes(),
        if cwt { b"cwt" } else { b"jwt" },
        &half_day,
    ]
    .concat();
    format!("\"{}\"", &sha256_hex(tag)[..32])
}

fn status_list_number(n: u64) -> u64 {
    n / STATUS_LIST_SIZE + 1
}

fn status_list_number_from(c: &IssuedCredential) -> String {
    c.status_list.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keyed order is a permutation of a whole list (every index exactly once: no two
    /// credentials share one), differs by key, and is not the order of issuance; an issuer
    /// without a key keeps that order (its credentials issued before keep their indices).
    #[test]
    fn index_orders_are_permutations_of_a_list() {
        let (a, b) = (IndexOrder(Some([1; 32])), IndexOrder(Some([2; 32])));
        let mut seen = vec![false; STATUS_LIST_SIZE as usize];
        for n in 0..STATUS_LIST_SIZE {
            let i = a.index(n);
            assert!(i < STATUS_LIST_SIZE, "{n} -> {i}");
            assert!(!std::mem::replace(&mut seen[i as usize], true), "{i} twice");
        }
        // the next list runs through the same order
        assert_eq!(a.index(STATUS_LIST_SIZE + 7), a.index(7));
        let first: Vec<u64> = (0..64).map(|n| a.index(n)).collect();
        assert_ne!(first, (0..64).map(|n| b.index(n)).collect::<Vec<_>>());
        assert_ne!(first, (0..64).collect::<Vec<u64>>());
        assert_eq!(IndexOrder(None).index(STATUS_LIST_SIZE + 5), 5);
    }
}
