//! mso_mdoc (ISO 18013-5) in the wallet. Every mdoc gets its own P-256 device key: generated for
//! the credential request (the OpenID4VCI proof carries its `jwk`), sealed with the credential,
//! used for nothing but that mdoc's DeviceResponses. What the issuer sends is checked as a
//! verifier would before it is stored: issuerAuth by a document signer chaining to an anchor
//! this node trusts ([`mdoc_pki::trust_anchors`]: `x509.trust_anchors`, plus the deployment's own
//! sandbox IACA in sandbox mode — never an IACA the issuer itself serves), the offered doc type,
//! digests, the validity window, and the MSO's device key being the one this wallet proved.

use std::time::Duration;

use super::access::{Owner, Viewer};
use super::error::{OrInternal, OrRemote, WalletError, WalletResult};
use super::model::{CredentialRecord, CredentialSummary, MdocContents};
use super::service::{device_key_aad, WalletService};
use crate::client::oid4vci::{self, AccessToken, Holder, ResolvedOffer};
use crate::crypto::mdoc::{self, status, verify::Verified, MdocError};
use crate::crypto::x509::TrustAnchors;
use crate::crypto::{KeyType, SigningKey, VerifyingKey};
use crate::roles::mdoc_pki;

pub const FORMAT: &str = "mso_mdoc";

impl WalletService {
    /// One mso_mdoc configuration of an offer: a new device key proves possession, and each
    /// credential received is verified and stored with it.
    pub(super) async fn receive_mdoc(
        &self,
        o: &Owner,
        r: &ResolvedOffer,
        token: &AccessToken,
        config_id: &str,
    ) -> WalletResult<Vec<CredentialSummary>> {
        let doctype = r.issuer_metadata["credential_configurations_supported"][config_id]
            ["doctype"]
            .as_str()
            .ok_or_else(|| {
                WalletError::Remote(format!(
                    "the issuer's mso_mdoc configuration `{config_id}` names no doctype"
                ))
            })?
            .to_string();
        let device = SigningKey::generate(KeyType::P256);
        let holder = Holder {
            key: &device,
            kid: None,
        };
        let http = &self.ctx.http;
        let received = oid4vci::credential(http, r, token, config_id, &holder, self.now()).await?;
        let anchors = mdoc_pki::trust_anchors(&self.ctx).await;
        let mut stored = Vec::new();
        for rc in received {
            let raw = rc.credential.as_str().ok_or_else(|| {
                WalletError::CredentialRejected(
                    "an mso_mdoc credential is a base64url string".into(),
                )
            })?;
            super::credentials::fits(raw)?;
            let v = check_issued(raw, &doctype, &device.verifying_key(), &anchors, self.now())?;
            let summary = CredentialSummary {
                id: String::new(),
                format: FORMAT.into(),
                issuer: v.signer,
                credential_type: v.doc_type.clone(),
                configuration_id: Some(config_id.to_string()),
                issued_at: Some(v.valid_from),
                expires_at: Some(v.valid_until),
                received_at: self.now(),
                mdoc: Some(MdocContents {
                    doctype: v.doc_type,
                    namespaces: v.claims,
                }),
            };
            let key_id = device.verifying_key().thumbprint();
            stored.push(
                self.put_credential(o, summary, raw, &key_id, Some(&device))
                    .await?,
            );
        }
        Ok(stored)
    }

    /// The doc type and elements of a held mdoc (verified when it was received).
    pub(super) fn mdoc_contents(
        &self,
        viewer: &Viewer,
        rec: &CredentialRecord,
    ) -> WalletResult<Option<MdocContents>> {
        if rec.format != FORMAT {
            return Ok(None);
        }
        let raw = self.unseal(&super::service::cred_aad(viewer.id(), &rec.id), &rec.sealed)?;
        let bytes =
            crate::crypto::b64url_decode(std::str::from_utf8(&raw).or_internal()?).or_internal()?;
        let (doctype, namespaces) = mdoc::verify::parse_unverified(&bytes).or_internal()?;
        Ok(Some(MdocContents {
            doctype,
            namespaces,
        }))
    }

    /// The credential's own device key, when it has one (mso_mdoc).
    pub(super) fn device_key(
        &self,
        wallet: &str,
        rec: &CredentialRecord,
    ) -> WalletResult<Option<SigningKey>> {
        let Some(sealed) = &rec.device_key else {
            return Ok(None);
        };
        let jwk = self.unseal(&device_key_aad(wallet, &rec.id), sealed)?;
        let key =
            SigningKey::from_private_jwk(std::str::from_utf8(&jwk).or_internal()?).or_internal()?;
        Ok(Some(key))
    }

    /// An mdoc's Token Status List entry (CWT form, signed by the mdoc's own document signer):
    /// `valid`, `revoked`, `suspended`, `no_status` when the MSO names no list, or `unknown` (a
    /// status value or reference this wallet cannot read).
    pub(super) async fn mdoc_status(&self, raw: &str) -> WalletResult<&'static str> {
        let anchors = mdoc_pki::trust_anchors(&self.ctx).await;
        let bytes = crate::crypto::b64url_decode(raw).or_internal()?;
        let v = mdoc::decode(&bytes)
            .and_then(|signed| mdoc::verify::issuer_signed(&signed, None, &anchors, self.now()))
            .map_err(rejected)?;
        let (idx, uri) = match v.status.clone() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok("no_status"),
            // a status this wallet cannot read is not "no status"
            Err(_) => return Ok("unknown"),
        };
        let token = crate::client::get_bytes(
            &self.ctx.http,
            &uri,
            status::MEDIA_TYPE,
            status::MAX_TOKEN_BYTES,
            Duration::from_secs(10),
        )
        .await?;
        // (the holder's own view: no maximum age beyond the token's own exp)
        let (list, _) = status::verify(&token, &uri, &v, &anchors, self.now(), None)
            .map_err(|e| WalletError::Remote(format!("status list: {e}")))?;
        Ok(match list.get_lsb(idx).or_remote()? {
            0 => "valid",
            1 => "revoked",
            2 => "suspended",
            _ => "unknown",
        })
    }
}

/// A refusal naming the failed check by its stable code (`mdoc_untrusted_signer`, ...).
fn rejected(e: MdocError) -> WalletError {
    WalletError::CredentialRejected(format!("{}: {e}", e.code()))
}

/// What an issuer sent, checked before it is stored: base64url CBOR IssuerSigned whose
/// issuerAuth verifies under a document signer chaining to `anchors`, of the offered `doctype`,
/// valid now, every element matching its digest, bound to `device` (the key the wallet proved).
pub(super) fn check_issued(
    raw: &str,
    doctype: &str,
    device: &VerifyingKey,
    anchors: &TrustAnchors,
    now: i64,
) -> WalletResult<Verified> {
    let bytes = crate::crypto::b64url_decode(raw).map_err(|_| {
        rejected(MdocError::Malformed(
            "the IssuerSigned is not base64url".into(),
        ))
    })?;
    let signed = mdoc::decode(&bytes).map_err(rejected)?;
    let v = mdoc::verify::issuer_signed(&signed, Some(doctype), anchors, now).map_err(rejected)?;
    if v.device_key != *device {
        return Err(rejected(MdocError::DeviceAuth(
            "the MSO's device key is not the key this wallet proved possession of".into(),
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
