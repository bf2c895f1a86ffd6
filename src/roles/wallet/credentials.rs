//! Credentials held in a wallet: storing what an issuer sent (after checking the issuer's
//! signature and key), listing, reading, deleting, checking status lists, and the history of
//! exchanges. The raw credential is sealed at rest; its summary drives listing and matching.

use serde_json::{json, Value};

use super::access::{Owner, Viewer};
use super::error::{OrInternal, OrNotFound, OrRemote, WalletError, WalletResult};
use super::ks;
use super::model::*;
use super::service::{cred_aad, device_key_aad, summary_aad, SealedRecord, WalletService};
use crate::clock::random_id;
use crate::crypto::status::{self, StatusArray};
use crate::crypto::{binding, jws, sdjwt, SigningKey, VerifyingKey};
use crate::dcql::{self, CredentialView};

/// A held credential, unsealed: its record, the raw credential and the view queries match on.
pub(super) type HeldCredential = (CredentialRecord, String, CredentialView);

/// The largest credential a wallet keeps (an mdoc with a portrait fits), and the most it holds:
/// every list and every presentation request reads all of a wallet's credentials (attacker review:
/// an issuer of the attacker's own sent 4 MB credentials, 56 MB per accepted offer, without end).
pub const MAX_CREDENTIAL_BYTES: usize = 256 * 1024;

/// The most a wallet's stored credential records take together, in bytes (sealed, with their
/// summaries): [`MAX_CREDENTIALS`] of [`MAX_CREDENTIAL_BYTES`] were 170 MB per wallet, and every
/// presentation request unseals all of a wallet's credentials ([`WalletService::held`]), four
/// wallets at a time per node. Typical credentials take 1–10 KB, an mdoc with a portrait 50–100 KB.
pub const MAX_WALLET_BYTES: usize = 32 * 1024 * 1024;

/// The history entries a wallet keeps (the newest; older ones are deleted as new ones come).
/// Before, the list read the oldest 10,000 and never showed a later one: an owner who filled the
/// history (cheap failing presentations) hid what came after from the others (attacker review).
pub const MAX_HISTORY: usize = 10_000;

/// How many requests of a node read all of a wallet's credentials (or its history) at once
/// ([`WholeReads`]).
pub const HELD_AT_ONCE: usize = 4;
/// Of those, how many one account's requests may hold (past it: 503 at once).
pub const HELD_PER_ACCOUNT: usize = 2;
/// How long a request waits for one of those places.
pub const HELD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's places for requests that read a whole wallet (its credentials to match or list,
/// its history): a wallet holds up to 32 MiB of sealed credentials, and each such request held
/// all of it at once (attacker review: 64 concurrent listings of one full wallet held
/// gigabytes). [`HELD_AT_ONCE`] in all, [`HELD_PER_ACCOUNT`] of them for one account, so one
/// account cannot keep every other waiting (review).
pub(super) type WholeReads = Places;

/// How many exchanges (resolve or accept an offer, resolve or answer a request, check a status)
/// a node runs at once, and how many of them for one account: each holds what the other party
/// sent (offers, metadata, request objects, several MiB parsed) across slow fetches, and each
/// takes the node's outbound places, which the verifier and webhooks share (attacker review: one
/// account's 256 concurrent exchanges against a slow server took every outbound place on the
/// node, so status checks failed and presentations with them).
pub const EXCHANGES_AT_ONCE: usize = 64;
pub const EXCHANGES_PER_ACCOUNT: usize = 4;
/// Credential status checks a node runs at once, and of them one account's.
pub const STATUS_CHECKS_AT_ONCE: usize = 32;
pub const STATUS_CHECKS_PER_ACCOUNT: usize = 4;

/// Places a node has for one kind of request: so many in all, so many of them for one account
/// (past its share: 503 at once; no free place within [`HELD_WAIT`]: 503).
pub(super) struct Places {
    places: tokio::sync::Semaphore,
    per_account: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    account_max: usize,
    /// 503 details: past the account's share, and no place free.
    yours: &'static str,
    full: &'static str,
}

/// One of the places of [`Places`], given back when dropped.
pub(super) struct Place<'a> {
    // dropped in this order: the account's share before the place, so the account's next
    // request never finds its share taken by one whose place is free already
    _share: AccountShare<'a>,
    _place: tokio::sync::SemaphorePermit<'a>,
}

/// One account's count of places taken, decremented when dropped.
struct AccountShare<'a> {
    places: &'a Places,
    account: String,
}

impl Drop for AccountShare<'_> {
    fn drop(&mut self) {
        let mut g = self
            .places
            .per_account
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = g.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(&self.account);
            }
        }
    }
}

impl Places {
    /// The places for requests that read a whole wallet ([`WholeReads`]).
    pub(super) fn whole_reads() -> Self {
        Self::new(
            HELD_AT_ONCE,
            HELD_PER_ACCOUNT,
            "your other requests are reading whole wallets on this node; try again",
            "too many requests are reading whole wallets on this node; try again",
        )
    }

    /// The places for credential status checks: each fetches a status list another party
    /// chose, and took the node's outbound places without bound (review).
    pub(super) fn status_checks() -> Self {
        Self::new(
            STATUS_CHECKS_AT_ONCE,
            STATUS_CHECKS_PER_ACCOUNT,
            "your other status checks are still running on this node; try again",
            "too many status checks are running on this node; try again",
        )
    }

    /// The places for exchanges with other parties ([`EXCHANGES_AT_ONCE`]).
    pub(super) fn exchanges() -> Self {
        Self::new(
            EXCHANGES_AT_ONCE,
            EXCHANGES_PER_ACCOUNT,
            "your other exchanges with issuers and verifiers are still running on this node; try again",
            "too many exchanges with issuers and verifiers are running on this node; try again",
        )
    }

    fn new(at_once: usize, account_max: usize, yours: &'static str, full: &'static str) -> Self {
        Self {
            places: tokio::sync::Semaphore::new(at_once),
            per_account: Default::default(),
            account_max,
            yours,
            full,
        }
    }

    /// A place for `account`'s request: 503 at once past its share, or after [`HELD_WAIT`]
    /// without a free place.
    pub(super) async fn take(&self, account: &str) -> WalletResult<Place<'_>> {
        let busy = |detail| WalletError::Busy {
            detail,
            retry_after: 1,
        };
        let share = {
            let mut g = self.per_account.lock().unwrap_or_else(|e| e.into_inner());
            let n = g.entry(account.to_string()).or_insert(0);
            if *n >= self.account_max {
                return Err(busy(self.yours));
            }
            *n += 1;
            AccountShare {
                places: self,
                account: account.to_string(),
            }
        };
        let place = tokio::time::timeout(HELD_WAIT, self.places.acquire())
            .await
            .map_err(|_| busy(self.full))?
            .map_err(|_| busy(self.full))?;
        Ok(Place {
            _share: share,
            _place: place,
        })
    }
}

/// A wallet's credentials, unsealed ([`WalletService::held`]), and the place they take: dropped
/// together.
pub(super) struct HeldSet<'a> {
    pub creds: Vec<HeldCredential>,
    _place: Place<'a>,
}

impl std::ops::Deref for HeldSet<'_> {
    type Target = Vec<HeldCredential>;
    fn deref(&self) -> &Self::Target {
        &self.creds
    }
}

/// A credential the wallet can keep by size: checked before anything about it is fetched.
pub(super) fn fits(raw: &str) -> WalletResult<()> {
    if raw.len() > MAX_CREDENTIAL_BYTES {
        return Err(WalletError::invalid(format!(
            "the credential is {} bytes; a wallet keeps credentials of at most {MAX_CREDENTIAL_BYTES}",
            raw.len()
        )));
    }
    Ok(())
}

fn full() -> WalletError {
    WalletError::conflict(format!(
        "this wallet holds {MAX_CREDENTIALS} credentials, the most it can: delete some first"
    ))
}
/// Longest counterparty and outcome text a history entry keeps, in bytes (then clipped).
pub const MAX_HISTORY_TEXT: usize = 512;
pub const MAX_CREDENTIALS: usize = 500;

/// A credential's summary without what it says of its holder: what the record keeps in clear.
fn blank_summary(id: &str, format: &str, received_at: i64) -> CredentialSummary {
    CredentialSummary {
        id: id.to_string(),
        format: format.to_string(),
        issuer: String::new(),
        credential_type: String::new(),
        configuration_id: None,
        issued_at: None,
        expires_at: None,
        received_at,
        mdoc: None,
    }
}

impl WalletService {
    /// Credentials, filtered by format, issuer and type (`type` also matches a type URI's last
    /// segment).
    pub async fn list_credentials(
        &self,
        viewer: &Viewer,
        f: &CredentialFilter,
    ) -> WalletResult<Vec<CredentialSummary>> {
        let _place = self.whole_reads.take(viewer.member()).await?;
        let mut out = Vec::new();
        for (_, rec) in self
            .ctx
            .store
            .scan_json::<CredentialRecord>(ks::CREDS, &format!("{}/", viewer.id()), 100_000)
            .await?
        {
            let c = self.summary_of(viewer.id(), &rec);
            let wanted = f.format.as_deref().is_none_or(|x| x == c.format)
                && f.issuer.as_deref().is_none_or(|x| x == c.issuer)
                && f.credential_type.as_deref().is_none_or(|x| {
                    c.credential_type == x || c.credential_type.ends_with(&format!("/{x}"))
                });
            if wanted {
                let mdoc = self.mdoc_contents(viewer, &rec)?;
                out.push(CredentialSummary { mdoc, ..c });
            }
        }
        Ok(out)
    }

    async fn load_credential(
        &self,
        viewer: &Viewer,
        id: &str,
    ) -> WalletResult<(CredentialRecord, String)> {
        let wallet = viewer.id();
        let rec: CredentialRecord = self
            .ctx
            .store
            .get_json(ks::CREDS, &format!("{wallet}/{id}"))
            .await?
            .or_not_found(format!("no credential `{id}`"))?;
        let raw = self.unseal(&cred_aad(wallet, id), &rec.sealed)?;
        Ok((rec, String::from_utf8_lossy(&raw).into_owned()))
    }

    /// A credential decoded, with all its claims and which of them can be withheld.
    pub async fn credential_detail(
        &self,
        viewer: &Viewer,
        id: &str,
    ) -> WalletResult<CredentialDetail> {
        let (rec, raw) = self.load_credential(viewer, id).await?;
        let (view, disclosable) = dcql::credential_view(&rec.format, &raw);
        let mdoc = self.mdoc_contents(viewer, &rec)?;
        let claims = match rec.format.as_str() {
            "dc+sd-jwt" | "mso_mdoc" => view.root.as_object().cloned().unwrap_or_default(),
            _ => view.root["credentialSubject"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let raw_value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
        Ok(CredentialDetail {
            summary: CredentialSummary {
                mdoc,
                ..self.summary_of(viewer.id(), &rec)
            },
            claims,
            disclosable,
            raw: raw_value,
        })
    }

    /// Credential `rec`'s summary in `wallet`: opened, or in clear in a record of an earlier
    /// release. One that does not open (a damaged record) is shown by its id, format and
    /// arrival alone, with a warning, rather than failing the list; it can still be deleted.
    fn summary_of(&self, wallet: &str, rec: &CredentialRecord) -> CredentialSummary {
        let opened = match (&rec.sealed_summary, &rec.summary) {
            (Some(sealed), _) => self
                .unseal(&summary_aad(wallet, &rec.id), sealed)
                .and_then(|plain| serde_json::from_slice(&plain).or_internal()),
            (None, Some(clear)) => Ok(clear.clone()),
            (None, None) => Err(WalletError::Internal("no summary".into())),
        };
        opened.unwrap_or_else(|e| {
            tracing::warn!(wallet, credential = %rec.id, error = %e, "a credential's summary does not open");
            blank_summary(&rec.id, &rec.format, rec.received_at)
        })
    }

    pub async fn delete_credential(&self, owner: &Owner, id: &str) -> WalletResult<()> {
        if !self
            .ctx
            .store
            .delete(ks::CREDS, &format!("{}/{id}", owner.id()))
            .await?
        {
            return Err(WalletError::not_found(format!("no credential `{id}`")));
        }
        Ok(())
    }

    /// Checks the credential against its issuer's status list: `valid`, `revoked`, `suspended`
    /// (or `no_status`). The list must be signed by the key bound to the credential's issuer.
    pub async fn credential_status(&self, viewer: &Viewer, id: &str) -> WalletResult<Value> {
        let (rec, raw) = self.load_credential(viewer, id).await?;
        if rec.format == "mso_mdoc" {
            let status = self.mdoc_status(&raw).await?;
            return Ok(json!({"id": id, "status": status, "checked_at": self.now()}));
        }
        let (view, _) = dcql::credential_view(&rec.format, &raw);
        let key = self.bound_issuer_key(&rec.format, &raw).await?.key;
        let lists = StatusLists {
            http: &self.ctx.http,
            key: &key,
            now: self.now(),
        };
        let status = if rec.format == "dc+sd-jwt" {
            lists.token_status(&view.root).await?
        } else {
            lists.bitstring_status(&view.root).await?
        };
        Ok(json!({"id": id, "status": status, "checked_at": self.now()}))
    }

    /// Exchanges of the wallet, newest first. An entry that does not open (damaged, or sealed
    /// under another master key) is left out, with a warning, rather than failing the list.
    pub async fn history(&self, viewer: &Viewer) -> WalletResult<Vec<HistoryEntry>> {
        let _place = self.whole_reads.take(viewer.member()).await?;
        let mut h: Vec<HistoryEntry> = self
            .ctx
            .store
            .scan_json::<SealedRecord<HistoryEntry>>(
                ks::HISTORY,
                &format!("{}/", viewer.id()),
                MAX_HISTORY,
            )
            .await?
            .into_iter()
            .filter_map(
                |(key, stored)| match self.open_sealed(ks::HISTORY, &key, stored) {
                    Ok(entry) => Some(entry),
                    Err(e) => {
                        tracing::warn!(wallet = %viewer.id(), error = %e, "a history entry does not open");
                        None
                    }
                },
            )
            .collect();
        h.reverse();
        Ok(h)
    }

    pub(super) async fn record(&self, owner: &Owner, entry: HistoryEntry) -> WalletResult<()> {
        self.record_keeping(owner, entry, MAX_HISTORY).await
    }

    /// Records `entry` and keeps the newest `keep` entries of the wallet's history.
    pub(super) async fn record_keeping(
        &self,
        owner: &Owner,
        entry: HistoryEntry,
        keep: usize,
    ) -> WalletResult<()> {
        // what the other party chose (its client_id, its error text) is kept bounded
        let mut entry = entry;
        for text in [&mut entry.counterparty, &mut entry.outcome] {
            if text.len() > MAX_HISTORY_TEXT {
                *text = crate::crypto::mdoc::clip_to(text, MAX_HISTORY_TEXT);
            }
        }
        let key = format!(
            "{}/{:020}-{}",
            owner.id(),
            self.ctx.clock.now_ms(),
            random_id()
        );
        // sealed: who the user dealt with, and when, is personal data (kept only sealed in the
        // store and in what replicates between nodes)
        self.put_sealed(ks::HISTORY, &key, &entry, None).await?;
        self.unless_deleted(owner.id(), ks::HISTORY, &key).await?;
        // the newest `keep` are kept: older ones go, so the list (oldest first in the store)
        // always shows the latest exchanges
        let prefix = format!("{}/", owner.id());
        let store = &self.ctx.store;
        let n = store.count_prefix(ks::HISTORY, &prefix, keep + 16).await?;
        if n > keep {
            for (old, _) in store.scan_prefix(ks::HISTORY, &prefix, n - keep).await? {
                store.delete(ks::HISTORY, &old).await?;
            }
        }
        Ok(())
    }

    /// Verifies the issuer's signature, that the credential is bound to the holder the wallet
    /// proved (`holder`: its key and DID) and not expired, then seals and stores it.
    /// `config`: the configuration's id and whether the issuer's metadata says it binds its
    /// credentials to a key; then a credential naming no holder (a bearer credential) is refused.
    pub(super) async fn store_credential(
        &self,
        owner: &Owner,
        holder: (&VerifyingKey, &str),
        key_id: &str,
        (config_id, binding): (&str, Binding),
        format: &str,
        credential: &Value,
    ) -> WalletResult<CredentialSummary> {
        let raw = match credential {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        fits(&raw)?;
        // The issuer's key, proven to be the issuer's (crypto::binding), before anything is stored.
        let bound = self.bound_issuer_key(format, &raw).await?;
        verify_issued(format, &raw, &bound.key, self.now()).await?;
        let (view, _) = dcql::credential_view(format, &raw);
        let payload = dcql::jwt_payload(format, &raw);
        issued_to(format, &raw, &payload, holder, binding, self.now())?;
        let summary = CredentialSummary {
            id: String::new(),
            format: if format == "vc+sd-jwt" {
                "dc+sd-jwt".into()
            } else {
                format.to_string()
            },
            issuer: bound.issuer,
            credential_type: view
                .vct
                .clone()
                .or_else(|| view.types.last().cloned())
                .unwrap_or_default(),
            configuration_id: Some(config_id.to_string()),
            issued_at: payload["iat"].as_i64().or(payload["nbf"].as_i64()),
            expires_at: payload["exp"].as_i64(),
            received_at: self.now(),
            mdoc: None,
        };
        self.put_credential(owner, summary, &raw, key_id, None)
            .await
    }

    /// Seals and stores a verified credential under a new id, with its own device key (mso_mdoc)
    /// sealed next to it. The stored summary never holds claim values (`mdoc` is left out).
    /// At most [`MAX_CREDENTIAL_BYTES`] each, [`MAX_CREDENTIALS`] and [`MAX_WALLET_BYTES`] per
    /// wallet.
    pub(super) async fn put_credential(
        &self,
        owner: &Owner,
        mut summary: CredentialSummary,
        raw: &str,
        key_id: &str,
        device_key: Option<&SigningKey>,
    ) -> WalletResult<CredentialSummary> {
        let wallet = owner.id();
        fits(raw)?;
        let held = self
            .ctx
            .store
            .count_prefix(ks::CREDS, &format!("{wallet}/"), MAX_CREDENTIALS)
            .await?;
        if held >= MAX_CREDENTIALS {
            return Err(full());
        }
        let id = random_id();
        summary.id = id.clone();
        let device_key = device_key
            .map(|k| self.seal(&device_key_aad(wallet, &id), k.to_private_jwk().as_bytes()))
            .transpose()?;
        let rec = CredentialRecord {
            id: id.clone(),
            format: summary.format.clone(),
            sealed: self.seal(&cred_aad(wallet, &id), raw.as_bytes())?,
            summary: Some(blank_summary(&id, &summary.format, summary.received_at)),
            sealed_summary: Some(
                self.seal(
                    &summary_aad(wallet, &id),
                    &serde_json::to_vec(&CredentialSummary {
                        mdoc: None,
                        ..summary.clone()
                    })
                    .or_internal()?,
                )?,
            ),
            key_id: key_id.to_string(),
            received_at: summary.received_at,
            device_key,
        };
        let key = format!("{wallet}/{id}");
        self.ctx.store.put_json(ks::CREDS, &key, &rec, None).await?;
        self.unless_deleted(wallet, ks::CREDS, &key).await?;
        // Counted (and weighed) again once written: writes at once (an issuer releasing many
        // responses together) each counted the others out. Over a cap, this one goes again.
        let (now_held, bytes) = self
            .ctx
            .store
            .measure_prefix(ks::CREDS, &format!("{wallet}/"), MAX_CREDENTIALS + 1)
            .await?;
        if now_held > MAX_CREDENTIALS {
            self.ctx.store.delete(ks::CREDS, &key).await?;
            return Err(full());
        }
        if bytes > MAX_WALLET_BYTES {
            self.ctx.store.delete(ks::CREDS, &key).await?;
            return Err(WalletError::conflict(format!(
                "this wallet's credentials would take {bytes} bytes, over the {MAX_WALLET_BYTES} \
                 a wallet keeps: delete some first"
            )));
        }
        Ok(summary)
    }

    /// Every credential of the wallet, unsealed, for matching against a presentation request.
    /// Up to [`MAX_CREDENTIALS`] of [`MAX_CREDENTIAL_BYTES`] each, unsealed and parsed: a few
    /// sets at a time per node ([`HELD_AT_ONCE`], each held until the set is dropped; a request
    /// waiting longer than [`HELD_WAIT`] gets 503), without their sealed copies (attacker
    /// review: ten requests at once on one full wallet held gigabytes).
    pub(super) async fn held(&self, viewer: &Viewer) -> WalletResult<HeldSet<'_>> {
        let place = self.whole_reads.take(viewer.member()).await?;
        let wallet = viewer.id();
        let mut out = Vec::new();
        for (_, rec) in self
            .ctx
            .store
            .scan_json::<CredentialRecord>(ks::CREDS, &format!("{wallet}/"), 100_000)
            .await?
        {
            let mut rec = rec;
            let raw = self.unseal(&cred_aad(wallet, &rec.id), &rec.sealed)?;
            rec.sealed = String::new();
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (view, _) = dcql::credential_view(&rec.format, &raw);
            out.push((rec, raw, view));
        }
        Ok(HeldSet {
            creds: out,
            _place: place,
        })
    }

    /// The issuer's key for a credential, bound to the issuer it names by [`binding`]'s rule
    /// (for JWTs the issuer signature is checked on the way).
    async fn bound_issuer_key(&self, format: &str, raw: &str) -> WalletResult<binding::IssuerKey> {
        let http = &self.ctx.http;
        let bound = match format {
            "ldp_vc" => {
                let v: Value = serde_json::from_str(raw)
                    .map_err(|e| binding::BindingError::Token(e.to_string()))?;
                let vm = v["proof"]["verificationMethod"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                binding::ld_issuer_key(&v, &vm, http).await
            }
            "dc+sd-jwt" | "vc+sd-jwt" => {
                let jwt = raw.split('~').next().unwrap_or_default();
                let issuers = binding::Issuers::DidOrHttps {
                    anchors: &self.ctx.x509_anchors,
                    now: self.now(),
                };
                binding::verify_issuer_jwt(jwt, issuers, http)
                    .await
                    .map(|(k, _, _)| k)
            }
            _ => binding::verify_issuer_jwt(raw, binding::Issuers::Did, http)
                .await
                .map(|(k, _, _)| k),
        };
        Ok(bound?)
    }
}

/// The issuer's signature over the credential, by format (SD-JWT, JWT VC, Data Integrity).
async fn verify_issued(format: &str, raw: &str, key: &VerifyingKey, now: i64) -> WalletResult<()> {
    match format {
        "dc+sd-jwt" | "vc+sd-jwt" => sdjwt::verify(raw, key).map(drop).or_rejected(),
        "jwt_vc_json" => jws::verify(raw, key).map(drop).or_rejected(),
        "ldp_vc" => {
            let v: Value = serde_json::from_str(raw).or_remote()?;
            crate::crypto::di::verify_credential_bounded(v, now)
                .await
                .map(drop)
                .or_rejected()
        }
        other => Err(WalletError::Remote(format!(
            "unsupported credential format {other}"
        ))),
    }
}

/// Whether a credential configuration binds its credentials to the holder's key (the issuer's
/// metadata names `cryptographic_binding_methods_supported`), or issues bearer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Binding {
    Bound,
    Bearer,
}

impl Binding {
    /// What an issuer's metadata says of one of its credential configurations.
    pub(super) fn of_config(config: &Value) -> Self {
        match config["cryptographic_binding_methods_supported"].as_array() {
            Some(methods) if !methods.is_empty() => Binding::Bound,
            _ => Binding::Bearer,
        }
    }
}

/// A received credential must be this wallet's: bound to the key it proved (SD-JWT `cnf.jwk`)
/// or naming its DID as the subject (`sub`, `credentialSubject.id`), and not expired. Otherwise
/// an issuer could hand over another holder's credential (valid, from a trusted issuer) and the
/// wallet would present it as its own. A credential that names no holder is a bearer credential:
/// kept only from a configuration that says it issues bearer credentials. From one that binds,
/// it would be someone else's credential stripped of its binding, or a hostile issuer's way to
/// make the holder carry a token anyone may present.
fn issued_to(
    format: &str,
    raw: &str,
    payload: &Value,
    (key, did): (&VerifyingKey, &str),
    binding: Binding,
    now: i64,
) -> WalletResult<()> {
    let refused = |why: String| Err(WalletError::CredentialRejected(why));
    if payload["exp"].as_i64().is_some_and(|exp| exp <= now) {
        return refused("the credential has already expired".into());
    }
    let unbound = || {
        refused(
            "the configuration binds credentials to the holder's key, but this one names no holder"
                .into(),
        )
    };
    match format {
        "dc+sd-jwt" | "vc+sd-jwt" => match payload["cnf"].get("jwk") {
            Some(jwk) => match VerifyingKey::from_jwk(jwk) {
                Ok(k) if k.thumbprint() == key.thumbprint() => Ok(()),
                _ => refused(
                    "the credential is bound (cnf) to another key than this wallet's".into(),
                ),
            },
            // bound by a DID URL (credo binds so to a holder that proved with a `kid`): a key of
            // this wallet's DID
            None => match payload["cnf"].get("kid").map(Value::as_str) {
                Some(Some(kid)) => {
                    let of = kid.split('#').next().unwrap_or_default();
                    if of == did || of == crate::crypto::did::did_jwk(key) {
                        Ok(())
                    } else {
                        refused(
                            "the credential is bound (cnf) to another DID than this wallet's"
                                .into(),
                        )
                    }
                }
                // a `cnf` by another method (jku, x5t, …) names no key this wallet can use
                _ if payload.get("cnf").is_some() => refused(
                    "the credential is bound (cnf) by a method other than jwk or kid".into(),
                ),
                _ if binding == Binding::Bound => unbound(),
                _ => Ok(()),
            },
        },
        _ => {
            let vc: Value = if format == "ldp_vc" {
                serde_json::from_str(raw).unwrap_or_default()
            } else {
                payload["vc"].clone()
            };
            let subjects: Vec<&str> = std::iter::once(payload["sub"].as_str())
                .chain(match &vc["credentialSubject"] {
                    Value::Array(a) => a.iter().map(|s| s["id"].as_str()).collect::<Vec<_>>(),
                    s => vec![s["id"].as_str()],
                })
                .flatten()
                .collect();
            // a key named by JWK (a did:web holder, for issuers that cannot resolve it) is did:jwk
            let as_jwk = crate::crypto::did::did_jwk(key);
            if subjects.is_empty() && binding == Binding::Bound {
                unbound()
            } else if subjects.iter().all(|s| *s == did || *s == as_jwk) {
                Ok(())
            } else {
                refused(format!(
                    "the credential is issued to another subject than this wallet's DID {did}"
                ))
            }
        }
    }
}

/// The most status entries of one credential the wallet checks (each is a fetch and up to 16 MiB
/// inflated): a credential naming more is answered `unknown` (attacker review: 4,000 entries in
/// one credential, one fetch each).
pub const MAX_STATUS_ENTRIES: usize = 4;

/// Status lists of one issuer, fetched through the guarded client and checked with its key: the
/// list must be the one at the URI it came from and not expired (`exp`, and a Token Status List
/// must say when it was made) — [`crate::crypto::status`]'s rules, as the verifier applies them.
struct StatusLists<'a> {
    http: &'a reqwest::Client,
    key: &'a VerifyingKey,
    now: i64,
}

impl StatusLists<'_> {
    /// The list's JWT header and payload, if the issuer's key signed it and it is fresh.
    async fn fetch(&self, uri: &str, token_list: bool) -> WalletResult<(Value, Value)> {
        let token = crate::client::get_text(self.http, uri).await?;
        let refused = |e: String| WalletError::Remote(format!("status list: {e}"));
        let (header, list) =
            jws::verify(token.trim(), self.key).map_err(|e| refused(e.to_string()))?;
        let numeric = |name: &str| list[name].as_f64().map(|n| n.floor() as i64);
        if token_list {
            status::token_list_ok(&header, &list, uri).map_err(refused)?;
        } else {
            status::bitstring_list_ok(&list, uri).map_err(refused)?;
        }
        // a Bitstring Status List credential ends at its validUntil (expirationDate) too
        let vc = if list["vc"].is_object() {
            &list["vc"]
        } else {
            &list
        };
        let until = ["validUntil", "expirationDate"]
            .iter()
            .filter_map(|k| vc[*k].as_str())
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|d| d.timestamp())
                    .map_err(|_| refused(format!("{t} is not a date-time")))
            })
            .collect::<WalletResult<Vec<i64>>>()?;
        let exp = numeric("exp").into_iter().chain(until).min();
        status::freshness(numeric("iat"), exp, self.now, None, token_list).map_err(refused)?;
        Ok((header, list))
    }

    /// IETF Token Status List (SD-JWT VC `status.status_list`).
    async fn token_status(&self, root: &Value) -> WalletResult<&'static str> {
        let sl = &root["status"]["status_list"];
        let (Some(uri), Some(idx)) = (sl["uri"].as_str(), sl["idx"].as_u64()) else {
            return Ok("no_status");
        };
        let (_, list) = self.fetch(uri, true).await?;
        let bits = list["status_list"]["bits"].as_u64().unwrap_or(1);
        let bits = u8::try_from(bits)
            .ok()
            .filter(|b| [1, 2, 4, 8].contains(b))
            .ok_or_else(|| WalletError::Remote("status list: bits must be 1, 2, 4 or 8".into()))?;
        let v = StatusArray::from_token_lst(
            bits,
            list["status_list"]["lst"].as_str().unwrap_or_default(),
        )
        .and_then(|a| a.get_lsb(idx))
        .or_remote()?;
        Ok(match v {
            0 => "valid",
            1 => "revoked",
            2 => "suspended",
            _ => "unknown",
        })
    }

    /// W3C Bitstring Status List (`credentialStatus`, one entry or several).
    async fn bitstring_status(&self, root: &Value) -> WalletResult<&'static str> {
        let entries = match &root["credentialStatus"] {
            Value::Array(a) => a.clone(),
            Value::Null => Vec::new(),
            other => vec![other.clone()],
        };
        if entries.len() > MAX_STATUS_ENTRIES {
            return Ok("unknown");
        }
        let mut result = if entries.is_empty() {
            "no_status"
        } else {
            "valid"
        };
        for e in entries {
            let (purpose, idx) = status::bitstring_entry(&e).map_err(WalletError::Remote)?;
            let uri = e["statusListCredential"].as_str().unwrap_or_default();
            let (_, list) = self.fetch(uri, false).await?;
            let set = status::bitstring_bit(&list, &purpose, idx).map_err(WalletError::Remote)?;
            // (a set bit of another purpose, `refresh` or `message`, revokes nothing)
            match purpose.as_str() {
                "revocation" if set => result = "revoked",
                "suspension" if set && result != "revoked" => result = "suspended",
                _ => {}
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Serves `bodies(base)[path]` for each GET path on a loopback port; returns its base URL
    /// and how many requests it answered.
    fn serve(bodies: impl FnOnce(&str) -> HashMap<String, String>) -> (String, Arc<AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let bodies = bodies(&base);
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                counter.fetch_add(1, Ordering::SeqCst);
                let body = bodies.get(&path).cloned().unwrap_or_default();
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        (base, served)
    }

    /// The wallet's status check believes a list only as the verifier does: the list at the URI
    /// it came from (`sub`), saying when it was made, not expired, with a sound `bits`; and it
    /// reads a few entries of a credential, not thousands (attacker review: one fetch per entry,
    /// 4,000 entries in a 256 KiB credential).
    #[tokio::test]
    async fn status_lists_are_believed_only_when_they_are_the_right_fresh_list() {
        let key = SigningKey::generate(crate::crypto::KeyType::P256);
        let now = 1_800_000_000;
        let lst = StatusArray::new(1, 16).unwrap().to_token_lst();
        let token = |sub: String, iat: Option<i64>, exp: i64, bits: u8| {
            let mut p = json!({"sub": sub, "exp": exp, "status_list": {"bits": bits, "lst": lst}});
            if let Some(iat) = iat {
                p["iat"] = iat.into();
            }
            jws::sign(&key, json!({"typ": "statuslist+jwt"}), &p)
        };
        let mut bits = StatusArray::new(1, 16 * 1024).unwrap();
        bits.set_msb(5, true).unwrap();
        let encoded = bits.to_encoded_list();
        let bsl = |id: String, purpose: &str, valid_until: &str| {
            let p = json!({"id": id, "type": ["VerifiableCredential", "BitstringStatusListCredential"],
                "validUntil": valid_until, "exp": now + 100,
                "credentialSubject": {"type": "BitstringStatusList", "statusPurpose": purpose,
                    "encodedList": encoded}});
            jws::sign(&key, json!({"typ": "vc+jwt"}), &p)
        };
        let (base, served) = serve(|base| {
            let at = |p: &str| format!("{base}{p}");
            [
                (
                    "/bsl",
                    bsl(at("/bsl"), "revocation", "2099-01-01T00:00:00Z"),
                ),
                (
                    "/bsl-susp",
                    bsl(at("/bsl-susp"), "suspension", "2099-01-01T00:00:00Z"),
                ),
                (
                    "/bsl-old",
                    bsl(at("/bsl-old"), "revocation", "2020-01-01T00:00:00Z"),
                ),
                ("/ok", token(at("/ok"), Some(now - 10), now + 100, 1)),
                ("/moved", token(at("/ok"), Some(now - 10), now + 100, 1)),
                (
                    "/expired",
                    token(at("/expired"), Some(now - 10), now - 1, 1),
                ),
                ("/undated", token(at("/undated"), None, now + 100, 1)),
                ("/bits", token(at("/bits"), Some(now - 10), now + 100, 3)),
            ]
            .into_iter()
            .map(|(p, t)| (p.to_string(), t))
            .collect()
        });
        let http = reqwest::Client::new();
        let vk = key.verifying_key();
        let lists = StatusLists {
            http: &http,
            key: &vk,
            now,
        };
        let entry =
            |p: &str| json!({"status": {"status_list": {"uri": format!("{base}{p}"), "idx": 3}}});
        assert_eq!(lists.token_status(&entry("/ok")).await.unwrap(), "valid");
        for bad in ["/moved", "/expired", "/undated", "/bits"] {
            assert!(lists.token_status(&entry(bad)).await.is_err(), "{bad}");
        }
        // Bitstring: the bit of the entry's index, in a list for the entry's purpose, not past
        // its validUntil; an entry without an index is no answer (it read bit 0)
        let w3c = |p: &str, idx: Value, purpose: &str| {
            json!({"credentialStatus": {"statusListCredential": format!("{base}{p}"),
                "statusListIndex": idx, "statusPurpose": purpose}})
        };
        let lists = &lists;
        let check = |c: Value| async move { lists.bitstring_status(&c).await };
        assert_eq!(
            check(w3c("/bsl", json!("4"), "revocation")).await.unwrap(),
            "valid"
        );
        assert_eq!(
            check(w3c("/bsl", json!("5"), "revocation")).await.unwrap(),
            "revoked"
        );
        assert_eq!(
            check(w3c("/bsl", json!(5), "revocation")).await.unwrap(),
            "revoked"
        );
        for bad in [
            w3c("/bsl", Value::Null, "revocation"),
            w3c("/bsl-susp", json!("5"), "revocation"),
            w3c("/bsl-old", json!("5"), "revocation"),
        ] {
            assert!(check(bad.clone()).await.is_err(), "{bad}");
        }
        // more entries than are checked: not fetched at all
        let before = served.load(Ordering::SeqCst);
        let many: Vec<Value> = (0..=MAX_STATUS_ENTRIES)
            .map(|i| json!({"statusListCredential": format!("{base}/bsl/{i}"), "statusListIndex": "0", "statusPurpose": "revocation"}))
            .collect();
        let status = lists
            .bitstring_status(&json!({"credentialStatus": many}))
            .await
            .unwrap();
        assert_eq!(status, "unknown");
        assert_eq!(served.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn an_unknown_format_is_the_issuers_failure() {
        let key = crate::crypto::SigningKey::generate(crate::crypto::KeyType::Ed25519);
        let e = verify_issued("vc+cose", "x", &key.verifying_key(), 0)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "unsupported credential format vc+cose");
    }
}

#[cfg(test)]
mod issued_to_tests {
    use super::*;
    use crate::crypto::{KeyType, SigningKey};
    use serde_json::json;

    /// A credential another holder's key is bound to, or another subject is named in, is refused
    /// (an issuer handing over someone else's valid credential); this wallet's, and a bearer
    /// credential naming no holder, are kept; an expired one is refused.
    #[test]
    fn only_a_credential_issued_to_this_wallet_is_kept() {
        let mine = SigningKey::generate(KeyType::Ed25519).verifying_key();
        let other = SigningKey::generate(KeyType::Ed25519).verifying_key();
        let did = "did:key:z6Mkmine";
        let now = 1_800_000_000;
        let check = |format: &str, payload: Value| {
            let raw = if format == "ldp_vc" {
                payload.to_string()
            } else {
                String::new()
            };
            issued_to(format, &raw, &payload, (&mine, did), Binding::Bound, now).is_ok()
        };
        let bearer_ok = |format: &str, payload: Value| {
            let raw = payload.to_string();
            issued_to(format, &raw, &payload, (&mine, did), Binding::Bearer, now).is_ok()
        };
        assert!(check("dc+sd-jwt", json!({"cnf": {"jwk": mine.to_jwk()}})));
        assert!(!check("dc+sd-jwt", json!({"cnf": {"jwk": other.to_jwk()}})));
        // a bearer credential only from a configuration that issues bearer credentials
        let methods = |m: Value| json!({"cryptographic_binding_methods_supported": m});
        assert_eq!(Binding::of_config(&methods(json!(["jwk"]))), Binding::Bound);
        assert_eq!(Binding::of_config(&methods(json!([]))), Binding::Bearer);
        assert_eq!(
            Binding::of_config(&json!({"format": "jwt_vc_json"})),
            Binding::Bearer
        );
        assert!(!check("dc+sd-jwt", json!({"vct": "bearer"})));
        assert!(bearer_ok("dc+sd-jwt", json!({"vct": "bearer"})));
        assert!(!check(
            "jwt_vc_json",
            json!({"vc": {"credentialSubject": {"name": "x"}}})
        ));
        assert!(bearer_ok(
            "jwt_vc_json",
            json!({"vc": {"credentialSubject": {"name": "x"}}})
        ));
        assert!(!check(
            "ldp_vc",
            json!({"credentialSubject": {"name": "x"}})
        ));
        assert!(bearer_ok(
            "ldp_vc",
            json!({"credentialSubject": {"name": "x"}})
        ));
        // bound by a DID URL of this wallet's DID (as credo binds), or of another's
        assert!(check(
            "dc+sd-jwt",
            json!({"cnf": {"kid": "did:key:z6Mkmine#z6Mkmine"}})
        ));
        let theirs = json!({"cnf": {"kid": "did:key:z6Mkother#z6Mkother"}});
        assert!(!check("dc+sd-jwt", theirs.clone()));
        assert!(!bearer_ok("dc+sd-jwt", theirs));
        // bound by a method that names no key this wallet can use: refused either way
        let by_thumbprint = json!({"cnf": {"jkt": "abc"}});
        assert!(!check("dc+sd-jwt", by_thumbprint.clone()));
        assert!(!bearer_ok("dc+sd-jwt", by_thumbprint));
        assert!(!bearer_ok(
            "dc+sd-jwt",
            json!({"cnf": {"jwk": other.to_jwk()}})
        ));
        assert!(!bearer_ok(
            "jwt_vc_json",
            json!({"sub": "did:key:z6Mkother"})
        ));
        assert!(!check(
            "dc+sd-jwt",
            json!({"cnf": {"jwk": mine.to_jwk()}, "exp": now - 1})
        ));
        assert!(check(
            "jwt_vc_json",
            json!({"sub": did, "vc": {"credentialSubject": {"id": did}}})
        ));
        let as_jwk = crate::crypto::did::did_jwk(&mine);
        assert!(check("jwt_vc_json", json!({"sub": as_jwk})));
        assert!(!check("jwt_vc_json", json!({"sub": "did:key:z6Mkother"})));
        assert!(!check(
            "jwt_vc_json",
            json!({"vc": {"credentialSubject": [{"id": did}, {"id": "did:key:z6Mkother"}]}})
        ));
        assert!(check("ldp_vc", json!({"credentialSubject": {"id": did}})));
        assert!(!check(
            "ldp_vc",
            json!({"credentialSubject": {"id": "did:key:z6Mkother"}})
        ));
    }
}
