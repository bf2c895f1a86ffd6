//! Issuer records and API shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::crypto::KeyType;

/// Credential formats this issuer can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Format {
    #[serde(rename = "jwt_vc_json")]
    JwtVcJson,
    #[serde(rename = "dc+sd-jwt")]
    SdJwt,
    #[serde(rename = "ldp_vc")]
    LdpVc,
    /// ISO 18013-5 mdoc (`doctype` and `namespace` in the configuration).
    #[serde(rename = "mso_mdoc")]
    MsoMdoc,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::JwtVcJson => "jwt_vc_json",
            Format::SdJwt => "dc+sd-jwt",
            Format::LdpVc => "ldp_vc",
            Format::MsoMdoc => "mso_mdoc",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DidMethod {
    Key,
    Jwk,
    Web,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Display {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One claim a credential configuration carries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ClaimSpec {
    pub name: String,
    #[serde(default)]
    pub mandatory: bool,
    /// SD-JWT: whether the holder may withhold it (default true).
    #[serde(default = "yes")]
    pub selectively_disclosable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// A credential configuration (`credential_configurations_supported` entry).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct CredentialConfig {
    pub format: Format,
    /// W3C formats: the credential type after `VerifiableCredential`; SD-JWT: informational.
    pub credential_type: String,
    /// SD-JWT VC type; defaults to `<public_url>/issuers/<issuer>/vct/<credential_type>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vct: Option<String>,
    pub claims: Vec<ClaimSpec>,
    #[serde(default)]
    pub display: Vec<Display>,
    /// Default validity of issued credentials, seconds (none = no `exp`; an mdoc then gets a
    /// year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u64>,
    /// mso_mdoc: the document type (e.g. `org.iso.18013.5.1.mDL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doctype: Option<String>,
    /// mso_mdoc: the namespace the claims go into (default: the doctype without its last
    /// `.` component for the mDL, else the doctype).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl CredentialConfig {
    /// mso_mdoc: (doctype, namespace).
    pub fn mdoc_names(&self) -> Option<(&str, String)> {
        let doctype = self.doctype.as_deref()?;
        let ns = self.namespace.clone().unwrap_or_else(|| {
            if doctype == crate::roles::issuer::mdoc::MDL_DOCTYPE {
                crate::roles::issuer::mdoc::MDL_NAMESPACE.to_string()
            } else {
                doctype.to_string()
            }
        });
        Some((doctype, ns))
    }
}

/// An issuer tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Issuer {
    pub id: String,
    pub display_name: String,
    pub key_type: KeyType,
    pub did_method: DidMethod,
    pub did: String,
    /// `kid` used in JWS headers and Data Integrity `verificationMethod`.
    pub verification_method: String,
    pub key_fingerprint: String,
    pub credential_configurations: BTreeMap<String, CredentialConfig>,
    // (in the store only in records of releases before `sealed_webhook_url`: read, never
    // written)
    /// Receives a signed JSON event when the state of one of its offers changes. Kept sealed at
    /// rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// `webhook_url` as the store keeps it: sealed to this issuer (base64url). A webhook URL
    /// can carry its receiver's secret (a token in its path or query). In the API only when it
    /// does not open (then shown as stored, and kept by updates until the URL is set again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub sealed_webhook_url: Option<String>,
    pub created_at: i64,
}

/// `POST /api/issuers`
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIssuer {
    pub id: String,
    pub display_name: Option<String>,
    pub key_type: Option<KeyType>,
    pub did_method: Option<DidMethod>,
    #[serde(default)]
    pub credential_configurations: BTreeMap<String, CredentialConfig>,
    /// Receives a signed JSON event when the state of one of its offers changes (`X-Idstack-Tenant-Signature: sha256=<hex HMAC of
    /// the body>` under this tenant's key, `GET /api/issuers/{id}/webhook-secret`, and
    /// `X-Idstack-Signature` under the deployment's; the body's `delivery_id` and `sent_at` let
    /// the receiver refuse replays). http(s), no fragment; in production mode plain http only to
    /// a host `http.outbound.allow` names.
    pub webhook_url: Option<String>,
}

/// `PUT /api/issuers/{issuer}`: what may change after creation (the key and DID may not).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIssuer {
    pub display_name: Option<String>,
    pub credential_configurations: Option<BTreeMap<String, CredentialConfig>>,
    /// As on creation; an empty string clears it.
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfferState {
    Offered,
    TokenIssued,
    CredentialIssued,
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TxCodeSpec {
    /// `numeric` or `text`.
    #[serde(default = "numeric")]
    pub input_mode: String,
    #[serde(default = "six")]
    pub length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn numeric() -> String {
    "numeric".into()
}
fn six() -> u32 {
    6
}

/// `POST /api/issuers/{issuer}/offers`
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOffer {
    pub credential_configuration_ids: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub claims: serde_json::Map<String, Value>,
    /// Ask for a transaction code; it is generated and returned once. Not with
    /// `authorization_code` (422): that flow's `issuer_state` would redeem the offer without it.
    pub tx_code: Option<TxCodeSpec>,
    /// Offer lifetime (default issuer.default_offer_ttl_seconds, max issuer.max_offer_ttl_seconds).
    pub ttl_seconds: Option<u64>,
    /// Validity of the issued credential, seconds from issuance (overrides the configuration).
    pub credential_validity_seconds: Option<u64>,
    /// Also offer the authorization code flow (with this `issuer_state`-bound pre-identified holder).
    #[serde(default)]
    pub authorization_code: bool,
}

/// 201 answer to an offer creation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OfferCreated {
    pub id: String,
    /// `openid-credential-offer://?credential_offer_uri=...`
    pub offer_uri: String,
    /// The same offer by value: `openid-credential-offer://?credential_offer=...`
    pub offer_uri_by_value: String,
    #[schema(value_type = Object)]
    pub credential_offer: Value,
    /// Only when requested; shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_code: Option<String>,
    pub expires_at: i64,
}

/// A stored offer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    pub id: String,
    pub issuer: String,
    pub credential_configuration_ids: Vec<String>,
    /// The claims in clear: only in records written before `sealed_claims` (read, never
    /// written).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub claims: serde_json::Map<String, Value>,
    /// The claims the offer's credentials carry (personal data), sealed to the offer's record
    /// (base64url): not kept, nor replicated between nodes, in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_claims: Option<String>,
    /// SHA-256 of the pre-authorized code (the code itself is never stored).
    pub pre_auth_code_hash: String,
    pub tx_code: Option<StoredTxCode>,
    pub tx_code_failures: u32,
    pub state: OfferState,
    pub created_at: i64,
    pub expires_at: i64,
    pub credential_validity_seconds: Option<u64>,
    /// Ids of credentials issued from this offer.
    #[serde(default)]
    pub issued: Vec<String>,
    /// Configurations its access token has been used for (each once): recorded with the ids of
    /// the credentials in one compare-and-swap, which is the token's use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issued_configs: Vec<String>,
    /// Ids of credentials sent again to their holder (a retry by the same key after an answer
    /// that did not arrive or said "retry"): known delivered, never taken back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resent: Vec<String>,
    /// Legacy: the OpenID4VCI credential offer object in clear (pre-authorized code included), as
    /// records written before it was sealed hold it; read until they expire, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_offer: Option<Value>,
    /// The OpenID4VCI credential offer object (served by reference while redeemable), sealed
    /// under the master key and bound to this record's place (base64url): it carries the
    /// pre-authorized code and issuer_state, which redeem the offer, so a reader of the store
    /// (backup, export, a read-only Redis user) must not find them in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_offer: Option<String>,
    /// SHA-256 of the secret half of the offer's `credential_offer_uri` (`<id>.<secret>`): the id
    /// is in clear in the store, so it alone must not fetch the offer (and its pre-authorized
    /// code). `None`: a record written before, fetched by its id until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_hash: Option<String>,
    /// SHA-256 of the access token its redemption handed out: the token is usable only when its
    /// offer names it (the token is stored first, the offer's transition to `TokenIssued` with
    /// this hash is the redemption — one store operation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTxCode {
    /// Legacy: unsalted SHA-256 hex of the code, as records written before the MAC hold it (4–12
    /// characters fall to an offline search in a second). Read, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// HMAC-SHA256 (base64url) of the code under a master-key subkey, bound to the offer's
    /// place: without the master key a copy of the store cannot test guesses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub input_mode: String,
    pub length: u32,
    pub description: Option<String>,
}

/// `GET /api/issuers/{issuer}/offers/{id}`
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OfferView {
    pub id: String,
    pub issuer: String,
    pub state: OfferState,
    pub credential_configuration_ids: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub issued_credentials: Vec<String>,
}

/// How long an offer's record outlives the offer, so its final state stays visible.
pub const OFFER_RECORD_GRACE_SECS: i64 = 86_400;

impl Offer {
    /// What is left at `now` of the record's lifetime (the offer's, and a day): every write of the
    /// record passes it on (attacker review: updates stored without it made every redeemed offer,
    /// and every offer that met one wrong tx_code, live for ever, its claims included).
    pub fn record_ttl(&self, now: i64) -> std::time::Duration {
        let left = self.expires_at + OFFER_RECORD_GRACE_SECS - now;
        std::time::Duration::from_secs(left.max(1) as u64)
    }

    pub fn view(&self, now_ms: i64) -> OfferView {
        let expired = self.expires_at * 1000 <= now_ms && self.state == OfferState::Offered;
        OfferView {
            id: self.id.clone(),
            issuer: self.issuer.clone(),
            state: if expired {
                OfferState::Expired
            } else {
                self.state
            },
            credential_configuration_ids: self.credential_configuration_ids.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            issued_credentials: self.issued.clone(),
        }
    }
}

/// An access token's record (opaque token; the store key is its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessGrant {
    pub offer_id: String,
    pub issuer: String,
    pub credential_configuration_ids: Vec<String>,
    pub expires_at: i64,
    /// Credential requests made with the token so far (each may ask for a batch of signatures).
    #[serde(default)]
    pub requests: u32,
    /// The client the token was issued to, when the token request (or the authorization request
    /// behind its code) named one: a proof's `iss`, when present, must be it (OID4VCI 1.0 F.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The token response carried `authorization_details`: only then may a credential request
    /// name a `credential_identifier` (OID4VCI 1.0 §8.2).
    #[serde(default)]
    pub authorization_details: bool,
}

/// Authorization-code flow state between /authorize and /token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthCodeGrant {
    pub offer_id: String,
    pub issuer: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub credential_configuration_ids: Vec<String>,
    /// The authorization request used `authorization_details`: the token response answers with them.
    #[serde(default)]
    pub authorization_details: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    Valid,
    Revoked,
    Suspended,
}

/// What is kept of an issued credential: metadata, not the claims.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedCredential {
    pub id: String,
    pub issuer: String,
    pub credential_configuration_id: String,
    pub format: Format,
    pub offer_id: String,
    /// The holder key, as an HMAC-SHA256 of its JWK thumbprint under a key of this deployment
    /// (credentials issued by earlier releases: a bare SHA-256), hex.
    pub subject_hash: String,
    pub status_list: String,
    pub status_index: u64,
    pub status: CredentialStatus,
    pub issued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// Credential endpoint body (OID4VCI 1.0 `proofs`, and the draft `proof` form older wallets send).
#[derive(Debug, Clone, Deserialize)]
pub struct CredentialRequest {
    pub credential_configuration_id: Option<String>,
    pub credential_identifier: Option<String>,
    pub proofs: Option<Proofs>,
    pub proof: Option<SingleProof>,
    /// Draft-13 wallets send `format` (+ type info) instead of a configuration id.
    pub format: Option<String>,
    pub vct: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Proofs {
    #[serde(default)]
    pub jwt: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SingleProof {
    pub proof_type: String,
    pub jwt: Option<String>,
}
