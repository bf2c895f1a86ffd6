//! The mdoc PKI of a sandbox deployment: one IACA root (ISO 18013-5 Annex B) created on first
//! use and one document signer certificate per issuer tenant, signed by it. Keys are P-256,
//! sealed at rest with the master key; records are insert-only (the first one stored wins, so
//! nodes creating them at once agree, and no later write replaces a signing key).
//!
//! A verifier in sandbox mode trusts this IACA next to `x509.trust_anchors`, as it trusts the
//! deployment's own issuers; in production only the configured anchors count. A production
//! issuer brings its own IACA-issued chain (not built yet: see docs/ARCHITECTURE.md, mdoc).

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::RoleContext;
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

#[derive(Serialize, Deserialize)]
struct Record {
    /// The sealed PKCS#8 DER private key (base64).
    sealed_key: String,
    /// The certificate, DER (base64).
    cert: String,
}

/// A P-256 key with its certificate.
pub struct Signer {
    pub key: SigningKey,
    /// DER.
    pub cert: Vec<u8>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn open(ctx: &RoleContext, id: &str, rec: &Record) -> anyhow::Result<(rcgen::KeyPair, Signer)> {
    use p256::pkcs8::DecodePrivateKey;
    let sealed = b64().decode(&rec.sealed_key)?;
    let der = ctx
        .sealer
        .open(format!("{KEYSPACE}/{id}").as_bytes(), &sealed)?;
    let pair = rcgen::KeyPair::try_from(der.as_slice())?;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(&der)?;
    Ok((
        pair,
        Signer {
            key: SigningKey::P256(key),
            cert: b64().decode(&rec.cert)?,
        },
    ))
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
    })
}

fn validity(p: &mut rcgen::CertificateParams, now: i64, days: i64) {
    let t = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(s).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    p.not_before = t(now - 60);
    p.not_after = t(now + days * 86_400);
}

async fn iaca(ctx: &RoleContext) -> anyhow::Result<(rcgen::KeyPair, rcgen::Certificate, Signer)> {
    let id = "iaca";
    let rec = match ctx.store.get(KEYSPACE, id).await? {
        Some(b) => serde_json::from_slice(&b)?,
        None => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = iaca_params(ctx)?.self_signed(&pair)?;
            insert_or_get(ctx, id, new_record(ctx, id, &pair, cert.der())?).await?
        }
    };
    let (pair, signer) = open(ctx, id, &rec)?;
    // rcgen needs the issuer as a Certificate: rebuild it from the same parameters and key (the
    // DER the verifier trusts is the stored one; the issuer name and key are what count).
    let cert = iaca_params(ctx)?.self_signed(&pair)?;
    Ok((pair, cert, signer))
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
    let b = ctx.store.get(KEYSPACE, "iaca").await.ok()??;
    let rec: Record = serde_json::from_slice(&b).ok()?;
    b64().decode(rec.cert).ok()
}

/// The anchors an mdoc's document signer must chain to on this node: `x509.trust_anchors`, plus
/// this deployment's sandbox IACA in sandbox mode (as sandbox verifiers and wallets trust the
/// deployment's own issuers). Never an IACA an issuer serves: that would trust whoever answers.
pub async fn trust_anchors(ctx: &RoleContext) -> crate::crypto::x509::TrustAnchors {
    let mut anchors = (*ctx.x509_anchors).clone();
    if ctx.mode == crate::config::Mode::Sandbox {
        if let Some(der) = sandbox_anchor(ctx).await {
            use x509_cert::der::Decode;
            if let Ok(c) = x509_cert::Certificate::from_der(&der) {
                anchors = anchors.with([c]);
            }
        }
    }
    anchors
}

/// The document signer of issuer tenant `issuer` (created with the IACA on first use): its key
/// and the x5chain to put into issuerAuth (the document signer certificate).
pub async fn document_signer(ctx: &RoleContext, issuer: &str) -> anyhow::Result<Signer> {
    let id = format!("ds/{issuer}");
    if let Some(b) = ctx.store.get(KEYSPACE, &id).await? {
        return Ok(open(ctx, &id, &serde_json::from_slice(&b)?)?.1);
    }
    let (iaca_pair, iaca_cert, _) = iaca(ctx).await?;
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
    let rec = insert_or_get(ctx, &id, new_record(ctx, &id, &pair, cert.der())?).await?;
    Ok(open(ctx, &id, &rec)?.1)
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
}
