//! Issuing `mso_mdoc` credentials (OpenID4VCI 1.0 Appendix A.2): the built-in doc types (the
//! ISO 18013-5 mDL and the EUDI PID), the claim values as CBOR, and the IssuerSigned signed by
//! the issuer tenant's document signer ([`crate::roles::mdoc_pki`]).

use ciborium::Value as Cbor;
use serde_json::{json, Map, Value};

use super::error::IssuerError;
use crate::crypto::mdoc;
use crate::crypto::VerifyingKey;
use crate::roles::mdoc_pki::{self, SignerInfo};
use crate::roles::RoleContext;

pub const MDL_DOCTYPE: &str = "org.iso.18013.5.1.mDL";
pub const MDL_NAMESPACE: &str = "org.iso.18013.5.1";
pub const PID_DOCTYPE: &str = "eu.europa.ec.eudi.pid.1";
pub const PID_NAMESPACE: &str = "eu.europa.ec.eudi.pid.1";

/// The mDL's data elements (ISO 18013-5 §7.2.1) idstack issues: (identifier, mandatory).
pub const MDL_ELEMENTS: &[(&str, bool)] = &[
    ("family_name", true),
    ("given_name", true),
    ("birth_date", true),
    ("issue_date", true),
    ("expiry_date", true),
    ("issuing_country", true),
    ("issuing_authority", true),
    ("document_number", true),
    ("portrait", false),
    ("driving_privileges", true),
    ("un_distinguishing_sign", true),
    ("age_over_18", false),
];

/// The PID's attributes (EUDI PID rulebook, mdoc encoding): (identifier, mandatory).
pub const PID_ELEMENTS: &[(&str, bool)] = &[
    ("family_name", true),
    ("given_name", true),
    ("birth_date", true),
    ("age_over_18", false),
    ("nationality", false),
    ("issuance_date", true),
    ("expiry_date", true),
    ("issuing_authority", true),
    ("issuing_country", true),
];

/// Elements whose ISO/PID type is `full-date` (tag 1004) when given as `YYYY-MM-DD`.
const DATE_ELEMENTS: &[&str] = &["birth_date", "issue_date", "expiry_date", "issuance_date"];

/// One claim as its CBOR element value: dates as `full-date`, `portrait` (base64url in the
/// offer) as a byte string, the rest as JSON maps to CBOR.
pub fn element_value(name: &str, v: &Value) -> Result<Cbor, String> {
    if name == "portrait" {
        let s = v
            .as_str()
            .ok_or("portrait must be base64url bytes (a JPEG)")?;
        return crate::crypto::b64url_decode(s)
            .map(Cbor::Bytes)
            .map_err(|_| "portrait must be base64url bytes (a JPEG)".to_string());
    }
    if name == "driving_privileges" {
        // each privilege's issue/expiry dates are full-dates too
        return Ok(mdoc::from_json(v, true));
    }
    Ok(mdoc::from_json(v, DATE_ELEMENTS.contains(&name)))
}

impl super::IssuerService {
    /// The IACA (PEM) issuer `issuer_id`'s mdocs chain to: the one imported with its document
    /// signer, or in sandbox mode the sandbox IACA (the document signer is created on first use).
    /// Not found in production mode until a chain is imported.
    pub async fn mdoc_iaca_pem(&self, issuer_id: &str) -> Result<String, IssuerError> {
        use base64::Engine;
        self.get_issuer(issuer_id).await?;
        let signer = self.mdoc_document_signer(issuer_id).await?;
        let der = match signer.iaca() {
            Some(der) => der.to_vec(),
            None => crate::roles::mdoc_pki::sandbox_anchor(&self.ctx)
                .await
                .ok_or(IssuerError::NoMdocIaca)?,
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        Ok(format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ))
    }

    /// Issuer `issuer_id`'s document signer (never its key).
    pub async fn mdoc_signer(&self, issuer_id: &str) -> Result<SignerInfo, IssuerError> {
        self.get_issuer(issuer_id).await?;
        let signer = self.mdoc_document_signer(issuer_id).await?;
        mdoc_pki::info(&signer).map_err(|e| IssuerError::Mdoc(e.to_string()))
    }

    /// Imports issuer `issuer_id`'s document signer and its chain ([`mdoc_pki::import_document_signer`]).
    pub async fn import_mdoc_signer(
        &self,
        issuer_id: &str,
        req: &ImportMdocSigner,
    ) -> Result<SignerInfo, IssuerError> {
        self.get_issuer(issuer_id).await?;
        mdoc_pki::import_document_signer(
            &self.ctx,
            issuer_id,
            &req.private_key_pem,
            &req.certificate_chain_pem,
        )
        .await
        .map_err(|e| match e {
            mdoc_pki::ImportError::Invalid(m) => IssuerError::Invalid(m),
            mdoc_pki::ImportError::Conflict => IssuerError::SignerChanged,
            mdoc_pki::ImportError::Internal(e) => IssuerError::Mdoc(e.to_string()),
        })
    }

    /// The document signer, or not found in production mode when none was imported (one store
    /// read, unsealed once per stored record; callers have checked the issuer exists).
    pub(super) async fn mdoc_document_signer(
        &self,
        issuer_id: &str,
    ) -> Result<std::sync::Arc<mdoc_pki::Signer>, IssuerError> {
        mdoc_pki::find_document_signer(&self.ctx, issuer_id)
            .await
            .map_err(|e| match e.downcast::<crate::store::StoreError>() {
                // (a cluster creating the sandbox PKI at this instant answers "retry": 503)
                Ok(store) => IssuerError::Store(store),
                Err(e) => IssuerError::Mdoc(e.to_string()),
            })?
            .ok_or(IssuerError::NoMdocIaca)
    }
}

/// An issuer's own mdoc document signer and chain (production mode; admin API).
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct ImportMdocSigner {
    /// The document signer's P-256 private key, PKCS#8 PEM. Sealed at rest; never returned.
    pub private_key_pem: String,
    /// PEM certificates: the document signer first, any intermediates, the IACA last.
    pub certificate_chain_pem: String,
}

/// Without the private key: a request logged or put in an error by `{:?}` must not carry it.
impl std::fmt::Debug for ImportMdocSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportMdocSigner")
            .field("private_key_pem", &"[redacted]")
            .field("certificate_chain_pem", &self.certificate_chain_pem)
            .finish()
    }
}

/// The error for a document signer outside its validity.
pub(super) fn ds_expired() -> String {
    "this issuer's mdoc document signer certificate is expired or not yet valid: import a new chain (PUT /api/issuers/{issuer}/mdoc-signer)".into()
}

/// The error for an `issuing_country` other than the document signer's `country`.
pub(super) fn wrong_country(country: Option<&str>) -> String {
    format!(
        "issuing_country must be {} (the country of this issuer's document signer certificate, ISO 18013-5 Annex B)",
        country.unwrap_or("the document signer's countryName")
    )
}

/// What to issue.
pub struct MdocIssue<'a> {
    pub issuer_id: &'a str,
    pub doctype: &'a str,
    pub namespace: &'a str,
    pub claims: &'a Map<String, Value>,
    pub holder: &'a VerifyingKey,
    pub now: i64,
    pub expires_at: Option<i64>,
    /// Token Status List (CWT form): (index, list URI).
    pub status: Option<(u64, String)>,
}

/// Default validity when a configuration sets none (an mdoc must have a validUntil).
const DEFAULT_VALIDITY: i64 = 365 * 86_400;

/// The base64url IssuerSigned for one holder.
pub async fn issue(ctx: &RoleContext, req: &MdocIssue<'_>) -> Result<String, MdocIssueError> {
    if !matches!(req.holder, VerifyingKey::P256(_)) {
        return Err("an mdoc's device key must be P-256: send a proof signed with ES256".into());
    }
    let signer = crate::roles::mdoc_pki::document_signer(ctx, req.issuer_id)
        .await
        .map_err(|e| match e.downcast_ref::<crate::store::StoreError>() {
            // the store, not the request: 503, retried (attacker review: was a 400 that used
            // up the wallet's nonce)
            Some(crate::store::StoreError::Unavailable(d)) => {
                MdocIssueError::Store(crate::store::StoreError::Unavailable(d.clone()))
            }
            // nothing the wallet sent decides which document signer there is: ours, logged and
            // not shown (attacker review: a 400 carrying record names and seal failures)
            _ => MdocIssueError::Signer(format!("document signer: {e:#}")),
        })?;
    if let Some(c) = req.claims.get("issuing_country") {
        let country = signer.country();
        if c.as_str() != country.as_deref() {
            return Err(wrong_country(country.as_deref()).into());
        }
    }
    let mut elements = Vec::new();
    for (name, v) in req.claims {
        elements.push((name.clone(), element_value(name, v)?));
    }
    // An mdoc outlives neither its document signer nor is signed outside its validity (ISO
    // 18013-5 §9.3.1): an expired signer issues nothing.
    let (ds_from, ds_until) = signer
        .validity()
        .ok_or("document signer: unreadable certificate validity")?;
    if req.now < ds_from || req.now >= ds_until {
        return Err(ds_expired().into());
    }
    let valid_until = req
        .expires_at
        .unwrap_or(req.now + DEFAULT_VALIDITY)
        .min(ds_until);
    let bytes = mdoc::issue::issuer_signed(&mdoc::issue::IssueRequest {
        doc_type: req.doctype,
        namespaces: &[(req.namespace.to_string(), elements)],
        device_key: req.holder,
        signer: &signer.key,
        x5chain: &signer.x5chain(),
        signed: req.now,
        valid_from: req.now,
        valid_until,
        status: req.status.clone(),
    })
    .map_err(|e| e.to_string())?;
    Ok(crate::crypto::b64url(bytes))
}

/// Why an mdoc was not issued: the request's fault, or the store's.
#[derive(Debug, thiserror::Error)]
pub enum MdocIssueError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(crate::store::StoreError),
    /// The issuer's document signer could not be had: ours (500, the detail logged only).
    #[error("{0}")]
    Signer(String),
}

impl From<String> for MdocIssueError {
    fn from(s: String) -> Self {
        MdocIssueError::Refused(s)
    }
}

impl From<&str> for MdocIssueError {
    fn from(s: &str) -> Self {
        MdocIssueError::Refused(s.to_string())
    }
}

/// The `credential_configurations_supported` members particular to mso_mdoc (OID4VCI 1.0
/// Appendix A.2): the doctype, COSE key binding, ES256 (-7) and claim paths [namespace, element].
pub fn metadata(
    doctype: &str,
    namespace: &str,
    claims: &[(String, bool, Option<String>)],
) -> Value {
    let claims: Vec<Value> = claims
        .iter()
        .map(|(name, mandatory, display)| {
            let mut c = json!({"path": [namespace, name], "mandatory": mandatory});
            if let Some(d) = display {
                c["display"] = json!([{"name": d, "locale": "en-US"}]);
            }
            c
        })
        .collect();
    json!({
        "doctype": doctype,
        "cryptographic_binding_methods_supported": ["cose_key"],
        "credential_signing_alg_values_supported": [-7],
        "proof_types_supported": {"jwt": {"proof_signing_alg_values_supported": ["ES256"]}},
        "claims": claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::crypto::{KeyType, SigningKey};

    /// An mDL request of the default issuer for `holder`, without status or expiry.
    fn mdl_request<'a>(
        claims: &'a serde_json::Map<String, serde_json::Value>,
        holder: &'a VerifyingKey,
        now: i64,
    ) -> MdocIssue<'a> {
        MdocIssue {
            issuer_id: "default",
            doctype: MDL_DOCTYPE,
            namespace: MDL_NAMESPACE,
            claims,
            holder,
            now,
            expires_at: None,
            status: None,
        }
    }

    /// An mDL issued with the tenant's document signer verifies against the sandbox IACA, with
    /// dates as full-dates and the portrait as bytes.
    #[tokio::test]
    async fn an_mdl_verifies_against_the_sandbox_iaca() {
        let now = 1_800_000_000;
        let ctx = RoleContext::for_tests(FakeClock::new(now * 1000));
        let holder = SigningKey::generate(KeyType::P256);
        let claims: Map<String, Value> = serde_json::from_value(json!({
            "family_name": "Mustermann", "given_name": "Erika", "birth_date": "1984-01-26",
            "issue_date": "2026-01-01", "expiry_date": "2036-01-01", "issuing_country": "UT",
            "issuing_authority": "Sandbox DMV", "document_number": "D-123",
            "portrait": crate::crypto::b64url([0xff, 0xd8, 0xff]),
            "driving_privileges": [{"vehicle_category_code": "B", "issue_date": "2026-01-01"}],
            "un_distinguishing_sign": "D",
        }))
        .unwrap();
        let cred = issue(
            &ctx,
            &MdocIssue {
                issuer_id: "default",
                doctype: MDL_DOCTYPE,
                namespace: MDL_NAMESPACE,
                claims: &claims,
                holder: &holder.verifying_key(),
                now,
                expires_at: None,
                status: Some((3, "https://issuer.example/status/1".into())),
            },
        )
        .await
        .unwrap();
        let root = crate::roles::mdoc_pki::sandbox_anchor(&ctx).await.unwrap();
        let anchors = crate::crypto::x509::TrustAnchors::default()
            .with([<x509_cert::Certificate as x509_cert::der::Decode>::from_der(&root).unwrap()]);
        let bytes = crate::crypto::b64url_decode(&cred).unwrap();
        let v = mdoc::verify::issuer_signed(
            &mdoc::decode(&bytes).unwrap(),
            Some(MDL_DOCTYPE),
            &anchors,
            now,
        )
        .unwrap();
        let got = &v.claims[MDL_NAMESPACE];
        assert_eq!(got["birth_date"], "1984-01-26");
        assert_eq!(got["portrait"], crate::crypto::b64url([0xff, 0xd8, 0xff]));
        assert_eq!(got["driving_privileges"][0]["vehicle_category_code"], "B");
        assert_eq!(v.device_key, holder.verifying_key());
        assert_eq!(v.valid_until, now + DEFAULT_VALIDITY);
        // a holder key that cannot be an mdoc device key
        let ed = SigningKey::generate(KeyType::Ed25519).verifying_key();
        let e = issue(&ctx, &mdl_request(&claims, &ed, now))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("P-256"), "{e}");
    }

    /// A store that cannot be read (every get: unavailable).
    struct Unreadable {
        inner: std::sync::Arc<dyn crate::store::Store>,
    }

    crate::store::test_wrapper::store_wrapper!(Unreadable, only get {
        async fn get(
            &self,
            _: &'static str,
            _: &str,
        ) -> crate::store::StoreResult<Option<Vec<u8>>> {
            Err(crate::store::StoreError::Unavailable("down".into()))
        }
    });

    /// A document signer the store cannot give now is the store's failure (503, retried), not
    /// the request's (it was a 400 that used up the wallet's nonce).
    #[tokio::test]
    async fn a_store_outage_is_not_the_requests_fault() {
        let now = 1_800_000_000;
        let mut ctx = RoleContext::for_tests(FakeClock::new(now * 1000));
        ctx.store = std::sync::Arc::new(Unreadable {
            inner: ctx.store.clone(),
        });
        let holder = SigningKey::generate(KeyType::P256).verifying_key();
        let claims = serde_json::Map::new();
        let e = issue(&ctx, &mdl_request(&claims, &holder, now))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                MdocIssueError::Store(crate::store::StoreError::Unavailable(_))
            ),
            "{e:?}"
        );
    }

    /// The very next mdoc after its document signer was replaced (here by another node: the
    /// same store, its own cache) is signed by the new one.
    #[tokio::test]
    async fn the_next_mdoc_is_signed_by_a_replaced_document_signer() {
        use crate::roles::mdoc_pki;
        let now = 1_800_000_000;
        let ctx = RoleContext::for_tests(FakeClock::new(now * 1000));
        let holder = SigningKey::generate(KeyType::P256).verifying_key();
        let claims: Map<String, Value> =
            serde_json::from_value(json!({"family_name": "Mustermann"})).unwrap();
        let req = MdocIssue {
            issuer_id: "default",
            doctype: MDL_DOCTYPE,
            namespace: MDL_NAMESPACE,
            claims: &claims,
            holder: &holder,
            now,
            expires_at: None,
            status: None,
        };
        let signed_by = |cred: String| {
            let ctx = ctx.clone();
            async move {
                let anchors = mdoc_pki::trust_anchors(&ctx).await;
                let bytes = crate::crypto::b64url_decode(&cred).unwrap();
                let doc = mdoc::decode(&bytes).unwrap();
                let v = mdoc::verify::issuer_signed(&doc, None, &anchors, now).unwrap();
                v.signer_key
            }
        };
        let first = signed_by(issue(&ctx, &req).await.unwrap()).await;
        let node2 = RoleContext {
            mdoc_pki: Default::default(),
            ..ctx.clone()
        };
        mdoc_pki::forget_document_signer(&node2, "default")
            .await
            .unwrap();
        let replaced = mdoc_pki::document_signer(&node2, "default").await.unwrap();
        assert_ne!(first, replaced.key.verifying_key());
        let next = signed_by(issue(&ctx, &req).await.unwrap()).await;
        assert_eq!(next, replaced.key.verifying_key());
    }
}
