//! The mdoc PKI of a sandbox deployment: one IACA root (ISO 18013-5 Annex B) created on first
//! use and one document signer certificate per issuer tenant, signed by it. Keys are P-256,
//! sealed at rest with the master key; records are created once (the first one stored wins, so
//! nodes creating them at once agree). A sandbox document signer is renewed 30 days before it
//! expires (one compare-and-swap; every node then reads the new one).
//!
//! A verifier in sandbox mode trusts this IACA next to `x509.trust_anchors`, as it trusts the
//! deployment's own issuers; in production only the configured anchors count. A production
//! issuer brings its own IACA-issued chain ([`import_document_signer`], admin API
//! `PUT /api/issuers/{issuer}/mdoc-signer`): nothing is created for it in production mode.
//! Importing is the one deliberate replacement of a document signer (a compare-and-swap on the
//! record the admin saw); nothing else ever overwrites one.
//!
//! Opening a document signer (unsealing its key) and building the anchor set are done once per
//! stored record ([`Cache`]): every use still reads the record, and one that changed (an import,
//! a renewal, a deletion, on this node or another) is opened anew.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::RoleContext;
use crate::crypto::x509::TrustAnchors;
use crate::crypto::SigningKey;
use crate::store::Cas;

/// Keyspace of the IACA (`iaca`) and document signer (`ds/<issuer>`) records.
pub const KEYSPACE: &str = "mdoc_pki";
/// The country of the sandbox IACA and document signers (ISO 3166 user-assigned "UT"): an mdoc's
/// `issuing_country` must equal its document signer's countryName (ISO 18013-5 Annex B).
pub const SANDBOX_COUNTRY: &str = "UT";
/// Validity of the sandbox IACA (ISO allows up to 20 years) and of a document signer (≤ 457 days).
const IACA_DAYS: i64 = 3650;
const DS_DAYS: i64 = 450;
/// A sandbox document signer is replaced this many days before it expires.
const RENEW_BEFORE_DAYS: i64 = 30;

#[derive(Serialize, Deserialize)]
struct Record {
    /// The sealed PKCS#8 DER private key (base64).
    sealed_key: String,
    /// The certificate, DER (base64).
    cert: String,
    /// Imported chains: the intermediates between the document signer and its IACA, then the
    /// IACA itself (DER, base64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chain: Vec<String>,
}

/// A P-256 key with its certificate.
pub struct Signer {
    pub key: SigningKey,
    /// DER.
    pub cert: Vec<u8>,
    /// Imported chains: the intermediates (DER), then the IACA; empty for sandbox signers.
    pub chain: Vec<Vec<u8>>,
}

impl Signer {
    /// What goes into issuerAuth's `x5chain`: the document signer and any intermediates (not the
    /// IACA: verifiers hold it as their anchor).
    pub fn x5chain(&self) -> Vec<Vec<u8>> {
        let intermediates = self.chain.len().saturating_sub(1);
        std::iter::once(self.cert.clone())
            .chain(self.chain[..intermediates].iter().cloned())
            .collect()
    }

    /// The IACA this signer chains to, when it was imported with its chain.
    pub fn iaca(&self) -> Option<&[u8]> {
        self.chain.last().map(Vec::as_slice)
    }

    /// The document signer certificate's validity (Unix seconds: not before, not after).
    pub fn validity(&self) -> Option<(i64, i64)> {
        let cert = <x509_cert::Certificate as x509_cert::der::Decode>::from_der(&self.cert).ok()?;
        let v = &cert.tbs_certificate.validity;
        Some((
            v.not_before.to_unix_duration().as_secs() as i64,
            v.not_after.to_unix_duration().as_secs() as i64,
        ))
    }

    /// The countryName of the document signer certificate (an mdoc's `issuing_country`).
    pub fn country(&self) -> Option<String> {
        let cert = <x509_cert::Certificate as x509_cert::der::Decode>::from_der(&self.cert).ok()?;
        crate::crypto::x509::country(&cert)
    }
}

/// Most document signers [`Cache`] keeps opened (there is one per issuer tenant); past this it
/// starts over.
const MAX_CACHED_SIGNERS: usize = 1024;

/// What a node keeps of the mdoc PKI between uses, each entry keyed by the exact bytes of the
/// stored record it was made from: callers read the record on every use (a cheap read) and get
/// an entry only for those very bytes, so a record replaced or deleted — by an import, a sandbox
/// renewal, a tenant's deletion, or another node of the cluster — is never served from here. One
/// per node, shared by its roles ([`RoleContext::mdoc_pki`]).
#[derive(Default)]
pub struct Cache {
    /// By record id (`ds/<issuer>`). Bounded by [`MAX_CACHED_SIGNERS`]; an entry is dropped
    /// when its tenant is deleted here.
    signers: RwLock<HashMap<String, CachedSigner>>,
    /// The anchor set [`trust_anchors`] built from the configured anchors (this very `Arc`) and
    /// the sandbox IACA record (`None`: there was none). One entry.
    anchors: RwLock<Option<CachedAnchors>>,
}

struct CachedSigner {
    /// The stored record, exactly.
    record: Vec<u8>,
    /// The signer unsealed from it.
    signer: Arc<Signer>,
}

struct CachedAnchors {
    configured: Arc<TrustAnchors>,
    iaca: Option<Vec<u8>>,
    anchors: Arc<TrustAnchors>,
}

impl Cache {
    /// The signer opened from record `id` when it was stored as `stored`.
    fn signer(&self, id: &str, stored: &[u8]) -> Option<Arc<Signer>> {
        let m = self.signers.read().ok()?;
        m.get(id)
            .filter(|c| c.record == stored)
            .map(|c| c.signer.clone())
    }

    fn keep_signer(&self, id: &str, stored: &[u8], signer: Arc<Signer>) {
        if let Ok(mut m) = self.signers.write() {
            if m.len() >= MAX_CACHED_SIGNERS && !m.contains_key(id) {
                m.clear();
            }
            let record = stored.to_vec();
            m.insert(id.to_string(), CachedSigner { record, signer });
        }
    }

    fn forget_signer(&self, id: &str) {
        if let Ok(mut m) = self.signers.write() {
            m.remove(id);
        }
    }

    /// `configured` plus the IACA of the sandbox record `iaca`, built once for these inputs.
    fn anchors(&self, configured: &Arc<TrustAnchors>, iaca: Option<Vec<u8>>) -> Arc<TrustAnchors> {
        if let Some(c) = self.anchors.read().ok().as_deref().and_then(Option::as_ref) {
            if Arc::ptr_eq(&c.configured, configured) && c.iaca == iaca {
                return c.anchors.clone();
            }
        }
        let mut anchors = (**configured).clone();
        if let Some(cert) = iaca.as_deref().and_then(record_cert) {
            use x509_cert::der::Decode;
            if let Ok(c) = x509_cert::Certificate::from_der(&cert) {
                anchors = anchors.with([c]);
            }
        }
        let anchors = Arc::new(anchors);
        if let Ok(mut slot) = self.anchors.write() {
            *slot = Some(CachedAnchors {
                configured: configured.clone(),
                iaca,
                anchors: anchors.clone(),
            });
        }
        anchors
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The PKCS#8 DER key of record `id`.
fn unseal(
    ctx: &RoleContext,
    id: &str,
    rec: &Record,
) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let sealed = b64().decode(&rec.sealed_key)?;
    Ok(ctx
        .sealer
        .open(format!("{KEYSPACE}/{id}").as_bytes(), &sealed)?)
}

fn open(ctx: &RoleContext, id: &str, rec: &Record) -> anyhow::Result<Signer> {
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(&unseal(ctx, id, rec)?)?;
    Ok(Signer {
        key: SigningKey::P256(key),
        cert: b64().decode(&rec.cert)?,
        chain: rec
            .chain
            .iter()
            .map(|c| b64().decode(c))
            .collect::<Result<_, _>>()?,
    })
}

/// The signer of record `id` stored as `stored`: opened once for these bytes ([`Cache`]).
fn opened(ctx: &RoleContext, id: &str, stored: &[u8]) -> anyhow::Result<Arc<Signer>> {
    if let Some(signer) = ctx.mdoc_pki.signer(id, stored) {
        return Ok(signer);
    }
    let signer = Arc::new(open(ctx, id, &serde_json::from_slice(stored)?)?);
    ctx.mdoc_pki.keep_signer(id, stored, signer.clone());
    Ok(signer)
}

/// The certificate (DER) of a stored record.
fn record_cert(stored: &[u8]) -> Option<Vec<u8>> {
    let rec: Record = serde_json::from_slice(stored).ok()?;
    b64().decode(rec.cert).ok()
}

/// Stores `fresh` under `id` unless a record is there, and returns the stored one.
async fn insert_or_get(ctx: &RoleContext, id: &str, fresh: Record) -> anyhow::Result<Record> {
    let bytes = serde_json::to_vec(&fresh)?;
    match ctx
        .store
        .compare_and_swap(KEYSPACE, id, None, Some((bytes, None)))
        .await?
    {
        Cas::Swapped => Ok(fresh),
        Cas::Conflict(Some(stored)) => Ok(serde_json::from_slice(&stored)?),
        Cas::Conflict(None) => anyhow::bail!("mdoc PKI record {id} is being created; retry"),
    }
}

fn new_record(
    ctx: &RoleContext,
    id: &str,
    pair: &rcgen::KeyPair,
    cert: &[u8],
) -> anyhow::Result<Record> {
    let sealed = ctx
        .sealer
        .seal(format!("{KEYSPACE}/{id}").as_bytes(), &pair.serialize_der())?;
    Ok(Record {
        sealed_key: b64().encode(sealed),
        cert: b64().encode(cert),
        chain: Vec::new(),
    })
}

fn validity(p: &mut rcgen::CertificateParams, now: i64, days: i64) {
    let t = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(s).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    p.not_before = t(now - 60);
    p.not_after = t(now + days * 86_400);
}

async fn iaca(ctx: &RoleContext) -> anyhow::Result<(rcgen::KeyPair, rcgen::Certificate)> {
    let id = "iaca";
    let rec = match ctx.store.get(KEYSPACE, id).await? {
        Some(b) => serde_json::from_slice(&b)?,
        None => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = iaca_params(ctx)?.self_signed(&pair)?;
            insert_or_get(ctx, id, new_record(ctx, id, &pair, cert.der())?).await?
        }
    };
    let pair = rcgen::KeyPair::try_from(unseal(ctx, id, &rec)?.as_slice())?;
    // rcgen needs the issuer as a Certificate: rebuild it from the same parameters and key (the
    // DER the verifier trusts is the stored one; the issuer name and key are what count).
    let cert = iaca_params(ctx)?.self_signed(&pair)?;
    Ok((pair, cert))
}

fn iaca_params(ctx: &RoleContext) -> anyhow::Result<rcgen::CertificateParams> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "idstack sandbox IACA");
    p.distinguished_name
        .push(rcgen::DnType::CountryName, SANDBOX_COUNTRY);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.subject_alt_names = vec![rcgen::SanType::URI(ctx.public_url.to_string().try_into()?)];
    validity(&mut p, ctx.clock.now_secs(), IACA_DAYS);
    Ok(p)
}

/// The IACA certificate (DER) verifiers of this deployment trust in sandbox mode, if it exists.
pub async fn sandbox_anchor(ctx: &RoleContext) -> Option<Vec<u8>> {
    record_cert(&ctx.store.get(KEYSPACE, "iaca").await.ok()??)
}

/// The anchors an mdoc's document signer must chain to on this node: `x509.trust_anchors` and
/// `x509.iaca_anchors`, plus
/// this deployment's sandbox IACA in sandbox mode (as sandbox verifiers and wallets trust the
/// deployment's own issuers). Never an IACA an issuer serves: that would trust whoever answers.
/// Built once per sandbox IACA record: a created or replaced one is trusted on the next call.
pub async fn trust_anchors(ctx: &RoleContext) -> Arc<TrustAnchors> {
    if ctx.mode != crate::config::Mode::Sandbox {
        return ctx.iaca_anchors.clone();
    }
    match ctx.store.get(KEYSPACE, "iaca").await {
        Ok(iaca) => ctx.mdoc_pki.anchors(&ctx.iaca_anchors, iaca),
        // (unreadable: the configured anchors alone, as when there is no sandbox IACA)
        Err(_) => ctx.iaca_anchors.clone(),
    }
}

/// The document signer of issuer tenant `issuer`: the imported one, or in sandbox mode one
/// created with the sandbox IACA on first use. Production mode creates nothing: an error says to
/// import one.
pub async fn document_signer(ctx: &RoleContext, issuer: &str) -> anyhow::Result<Arc<Signer>> {
    find_document_signer(ctx, issuer)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{}", no_signer(issuer)))
}

/// [`document_signer`], or `None` in production mode when none was imported. One store read;
/// the key is unsealed once per stored record ([`Cache`]).
pub async fn find_document_signer(
    ctx: &RoleContext,
    issuer: &str,
) -> anyhow::Result<Option<Arc<Signer>>> {
    let id = format!("ds/{issuer}");
    let sandbox = ctx.mode == crate::config::Mode::Sandbox;
    let stored = ctx.store.get(KEYSPACE, &id).await?;
    if let Some(b) = &stored {
        let signer = opened(ctx, &id, b)?;
        // a sandbox signer is renewed before it expires (ISO caps a document signer at 457
        // days; an imported one is the operator's to rotate)
        let renew = sandbox
            && signer.chain.is_empty()
            && signer.validity().is_some_and(|(_, until)| {
                until - ctx.clock.now_secs() < RENEW_BEFORE_DAYS * 86_400
            });
        if !renew {
            return Ok(Some(signer));
        }
    } else if !sandbox {
        return Ok(None);
    }
    let fresh = sandbox_document_signer(ctx, issuer, &id).await?;
    let bytes = serde_json::to_vec(&fresh)?;
    // created or renewed once: a node that loses the race reads the winner's
    let rec = match ctx
        .store
        .compare_and_swap(KEYSPACE, &id, stored, Some((bytes.clone(), None)))
        .await?
    {
        Cas::Swapped => bytes,
        Cas::Conflict(Some(other)) => other,
        Cas::Conflict(None) => anyhow::bail!("mdoc document signer {id} changed; retry"),
    };
    Ok(Some(opened(ctx, &id, &rec)?))
}

/// A new sandbox document signer for `issuer` under the sandbox IACA (record `id`).
async fn sandbox_document_signer(
    ctx: &RoleContext,
    issuer: &str,
    id: &str,
) -> anyhow::Result<Record> {
    let (iaca_pair, iaca_cert) = iaca(ctx).await?;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("idstack document signer {issuer}"),
    );
    p.distinguished_name
        .push(rcgen::DnType::CountryName, SANDBOX_COUNTRY);
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    // ISO 18013-5 mdlDS extended key usage
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
        1, 0, 18013, 5, 1, 2,
    ])];
    validity(&mut p, ctx.clock.now_secs(), DS_DAYS);
    let cert = p.signed_by(&pair, &iaca_cert, &iaca_pair)?;
    new_record(ctx, id, &pair, cert.der())
}

/// Why issuer `issuer` cannot sign mdocs in production mode yet.
pub fn no_signer(issuer: &str) -> String {
    format!("issuer `{issuer}` has no mdoc document signer: import its IACA-issued chain with PUT /api/issuers/{issuer}/mdoc-signer")
}

/// Deletes issuer `issuer`'s document signer (its tenant was deleted), and this node's opened
/// copy (other nodes' copies are never served again: their record is gone).
pub async fn forget_document_signer(
    ctx: &RoleContext,
    issuer: &str,
) -> Result<(), crate::store::StoreError> {
    let id = format!("ds/{issuer}");
    ctx.store.delete(KEYSPACE, &id).await?;
    ctx.mdoc_pki.forget_signer(&id);
    Ok(())
}

/// A document signer as the admin API shows it (never its key).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignerInfo {
    /// The document signer certificate's subject.
    pub subject: String,
    /// Its countryName: the `issuing_country` of the mdocs it signs.
    pub country: Option<String>,
    /// End of its validity (Unix seconds).
    pub not_after: i64,
    /// The IACA's subject (imported chains), or `null` for the sandbox IACA.
    pub iaca: Option<String>,
    /// Whether the chain was imported (production) rather than created here (sandbox).
    pub imported: bool,
}

/// [`SignerInfo`] of `signer`.
pub fn info(signer: &Signer) -> anyhow::Result<SignerInfo> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(&signer.cert)?;
    let (subject, not_after) = crate::crypto::x509::subject_and_expiry(&cert);
    let iaca = match signer.iaca() {
        Some(der) => {
            Some(crate::crypto::x509::subject_and_expiry(&x509_cert::Certificate::from_der(der)?).0)
        }
        None => None,
    };
    Ok(SignerInfo {
        subject,
        country: crate::crypto::x509::country(&cert),
        not_after,
        iaca,
        imported: !signer.chain.is_empty(),
    })
}

/// Why an import was refused (the request's fault) or failed (ours).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("the document signer changed while importing; retry")]
    Conflict,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Largest PEM accepted for a key or a chain.
const MAX_PEM: usize = 64 * 1024;

/// Imports issuer `issuer`'s document signer: a PKCS#8 P-256 private key (PEM) and its chain
/// (PEM, document signer first, the IACA last). Checked before anything is stored: the chain
/// verifies to the IACA (a self-signed CA) and is valid now, the leaf is a document signer (ISO
/// 18013-5 Annex B: mdlDS extended key usage, digitalSignature, not a CA) whose key is the
/// private key's, and the document signer and IACA name the same country. Replaces the current
/// signer by compare-and-swap (a concurrent import wins or this one says to retry). (Over 80
/// lines: the checks in the order they must hold, each with its own message, then one write.)
pub async fn import_document_signer(
    ctx: &RoleContext,
    issuer: &str,
    private_key_pem: &str,
    chain_pem: &str,
) -> Result<SignerInfo, ImportError> {
    use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let invalid = |m: String| ImportError::Invalid(m);
    if private_key_pem.len() > MAX_PEM || chain_pem.len() > MAX_PEM {
        return Err(invalid(format!(
            "the key and the chain are at most {MAX_PEM} bytes of PEM each"
        )));
    }
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(private_key_pem).map_err(|_| {
        invalid("private_key_pem must be a PKCS#8 PEM P-256 private key (ES256)".into())
    })?;
    if chain_pem.trim().is_empty() {
        return Err(invalid("certificate_chain_pem is empty".into()));
    }
    let certs = crate::crypto::x509::pem_chain(chain_pem)
        .map_err(|e| invalid(format!("certificate_chain_pem: {e}")))?;
    if certs.len() < 2 || certs.len() > crate::crypto::x509::MAX_CHAIN {
        return Err(invalid(format!(
            "certificate_chain_pem must hold the document signer, any intermediates and the IACA last (2 to {} certificates)",
            crate::crypto::x509::MAX_CHAIN
        )));
    }
    let ((iaca, iaca_der), below) = certs
        .split_last()
        .ok_or_else(|| invalid("empty chain".into()))?;
    if !crate::crypto::x509::is_self_signed_ca(iaca, iaca_der) {
        return Err(invalid(
            "the last certificate must be the IACA: a self-signed CA certificate".into(),
        ));
    }
    let below_der: Vec<Vec<u8>> = below.iter().map(|(_, d)| d.clone()).collect();
    let anchors = crate::crypto::x509::TrustAnchors::default().with([iaca.clone()]);
    let (leaf_key, leaf) = anchors
        .chain_key(&below_der, ctx.clock.now_secs())
        .map_err(|e| invalid(format!("the chain does not verify to its IACA: {e}")))?;
    crate::crypto::x509::check_document_signer(&leaf).map_err(invalid)?;
    if leaf_key != SigningKey::P256(key.clone()).verifying_key() {
        return Err(invalid(
            "the private key is not the document signer certificate's key".into(),
        ));
    }
    let country = crate::crypto::x509::country(&leaf)
        .ok_or_else(|| invalid("the document signer certificate has no countryName".into()))?;
    if crate::crypto::x509::country(iaca).as_deref() != Some(country.as_str()) {
        return Err(invalid(
            "the document signer and the IACA must name the same countryName".into(),
        ));
    }
    let id = format!("ds/{issuer}");
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| ImportError::Internal(e.into()))?;
    let sealed = ctx
        .sealer
        .seal(format!("{KEYSPACE}/{id}").as_bytes(), pkcs8.as_bytes())
        .map_err(|e| ImportError::Internal(anyhow::anyhow!("sealing the key: {e}")))?;
    let rec = Record {
        sealed_key: b64().encode(sealed),
        cert: b64().encode(&below_der[0]),
        chain: below_der[1..]
            .iter()
            .cloned()
            .chain([iaca_der.clone()])
            .map(|d| b64().encode(d))
            .collect(),
    };
    let current = ctx
        .store
        .get(KEYSPACE, &id)
        .await
        .map_err(|e| ImportError::Internal(e.into()))?;
    let bytes = serde_json::to_vec(&rec).map_err(|e| ImportError::Internal(e.into()))?;
    match ctx
        .store
        .compare_and_swap(KEYSPACE, &id, current, Some((bytes, None)))
        .await
        .map_err(|e| ImportError::Internal(e.into()))?
    {
        Cas::Swapped => Ok(info(&open(ctx, &id, &rec)?)?),
        Cas::Conflict(_) => Err(ImportError::Conflict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    /// The document signer chains to the stored IACA (what a sandbox verifier trusts), is made
    /// once per issuer, and signs mdocs that verify against that anchor.
    #[tokio::test]
    async fn document_signers_chain_to_the_sandbox_iaca_and_are_created_once() {
        let now = 1_800_000_000;
        let ctx = RoleContext::for_tests(FakeClock::new(now * 1000));
        let a = document_signer(&ctx, "default").await.unwrap();
        let again = document_signer(&ctx, "default").await.unwrap();
        assert_eq!(a.cert, again.cert);
        let other = document_signer(&ctx, "other").await.unwrap();
        assert_ne!(a.cert, other.cert);
        let root = sandbox_anchor(&ctx).await.unwrap();
        let anchors = crate::crypto::x509::TrustAnchors::default()
            .with([<x509_cert::Certificate as x509_cert::der::Decode>::from_der(&root).unwrap()]);
        let (key, leaf) = anchors
            .chain_key(std::slice::from_ref(&a.cert), now)
            .unwrap();
        assert_eq!(key, a.key.verifying_key());
        // and is a document signer (mdlDS extended key usage, digitalSignature)
        crate::crypto::x509::check_document_signer(&leaf).unwrap();
        // a second IACA read gives the same root
        assert_eq!(sandbox_anchor(&ctx).await.unwrap(), root);
    }

    /// Another node of the same deployment: the same store, its own [`Cache`].
    fn other_node(ctx: &RoleContext) -> RoleContext {
        RoleContext {
            mdoc_pki: Arc::default(),
            ..ctx.clone()
        }
    }

    /// A document signer is unsealed once per stored record, and never outlives it: one that
    /// another node replaced is used here at the next call, one it deleted is not used at all.
    #[tokio::test]
    async fn an_opened_document_signer_never_outlives_its_record() {
        let ctx = RoleContext::for_tests(FakeClock::new(1_800_000_000_000));
        let first = document_signer(&ctx, "default").await.unwrap();
        let again = document_signer(&ctx, "default").await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "opened once");
        let node2 = other_node(&ctx);
        forget_document_signer(&node2, "default").await.unwrap();
        let replaced = document_signer(&node2, "default").await.unwrap();
        assert_ne!(replaced.cert, first.cert);
        let got = document_signer(&ctx, "default").await.unwrap();
        assert_eq!(got.cert, replaced.cert);
        assert_eq!(got.key.verifying_key(), replaced.key.verifying_key());
        // production mode creates none: deleted there, there is none here
        let production = RoleContext {
            mode: crate::config::Mode::Production,
            ..ctx.clone()
        };
        assert!(find_document_signer(&production, "default")
            .await
            .unwrap()
            .is_some());
        forget_document_signer(&node2, "default").await.unwrap();
        assert!(find_document_signer(&production, "default")
            .await
            .unwrap()
            .is_none());
    }

    /// The anchor set is built once per sandbox IACA record, and an IACA created or replaced
    /// (here by another node) is trusted at the next call, its predecessor no longer.
    #[tokio::test]
    async fn a_new_sandbox_iaca_is_trusted_at_once() {
        let now = 1_800_000_000;
        let ctx = RoleContext::for_tests(FakeClock::new(now * 1000));
        assert!(trust_anchors(&ctx).await.is_empty(), "no IACA yet");
        let first = document_signer(&ctx, "default").await.unwrap();
        let anchors = trust_anchors(&ctx).await;
        let leaf = |s: &Signer| vec![s.cert.clone()];
        anchors.chain_key(&leaf(&first), now).unwrap();
        assert!(
            Arc::ptr_eq(&anchors, &trust_anchors(&ctx).await),
            "built once"
        );
        let node2 = other_node(&ctx);
        node2.store.delete(KEYSPACE, "iaca").await.unwrap();
        forget_document_signer(&node2, "default").await.unwrap();
        let second = document_signer(&node2, "default").await.unwrap();
        let anchors = trust_anchors(&ctx).await;
        anchors.chain_key(&leaf(&second), now).unwrap();
        assert!(anchors.chain_key(&leaf(&first), now).is_err());
    }

    /// A sandbox document signer near its end is replaced by a new one under the same IACA
    /// (once; later calls read it); an imported one is never replaced here.
    #[tokio::test]
    async fn a_sandbox_document_signer_is_renewed_before_it_expires() {
        let now = 1_800_000_000;
        let clock = FakeClock::new(now * 1000);
        let ctx = RoleContext::for_tests(clock.clone());
        let first = document_signer(&ctx, "default").await.unwrap();
        let (_, until) = first.validity().unwrap();
        let later = until - RENEW_BEFORE_DAYS * 86_400 + 60;
        clock.advance_ms((later - now) * 1000);
        let renewed = document_signer(&ctx, "default").await.unwrap();
        assert_ne!(renewed.cert, first.cert);
        assert!(renewed.validity().unwrap().1 > until);
        assert_eq!(
            document_signer(&ctx, "default").await.unwrap().cert,
            renewed.cert
        );
        let root = sandbox_anchor(&ctx).await.unwrap();
        let anchors = crate::crypto::x509::TrustAnchors::default()
            .with([<x509_cert::Certificate as x509_cert::der::Decode>::from_der(&root).unwrap()]);
        anchors
            .chain_key(std::slice::from_ref(&renewed.cert), later)
            .unwrap();
    }
}
