//! Verifier records and API shapes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::crypto::KeyType;

/// A verifier tenant. Without a signing key its requests are unsigned and its client identifier
/// uses the `redirect_uri:` prefix; with one they are signed (`oauth-authz-req+jwt`) and the client
/// identifier is `decentralized_identifier:<did>`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Verifier {
    pub id: String,
    pub display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<KeyType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Issuer DIDs accepted by the `issuer_allowlist` policy (empty: any issuer).
    #[serde(default)]
    pub trusted_issuers: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVerifier {
    pub id: String,
    pub display_name: Option<String>,
    /// Give the verifier a key (signed request objects, `decentralized_identifier:` client id).
    pub signing_key_type: Option<KeyType>,
    /// The issuers it trusts: DIDs and `https` issuer identifiers, and for mso_mdoc
    /// `aki:<base64url key identifier>` of an authority over the document signer (its IACA's
    /// Subject Key Identifier). Empty: this node's own issuers in sandbox mode, no one in
    /// production.
    #[serde(default)]
    pub trusted_issuers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVerifier {
    pub display_name: Option<String>,
    pub trusted_issuers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ResponseMode {
    #[serde(rename = "direct_post")]
    DirectPost,
    #[serde(rename = "direct_post.jwt")]
    DirectPostJwt,
}

impl ResponseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::DirectPost => "direct_post",
            ResponseMode::DirectPostJwt => "direct_post.jwt",
        }
    }
}

/// Names of the verification policies.
pub const ALL_POLICIES: &[&str] = &[
    "signature",
    "holder_binding",
    "nonce_audience",
    "validity",
    "status",
    "issuer_allowlist",
    "query_match",
    "disclosure_integrity",
];

/// `POST /api/verifiers/{verifier}/sessions`
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[schema(value_type = Object)]
    pub dcql_query: Option<Value>,
    /// DIF Presentation Exchange 2.0 definition. A field's `filter` may use the JSON Schema
    /// keywords `type`, `const`, `enum`, `pattern`, `minimum`, `maximum`, `exclusiveMinimum`,
    /// `exclusiveMaximum`, `minLength`, `maxLength`, `minItems`, `maxItems`, `contains`, `items`,
    /// `not`, `format` (`date`, `date-time`) with `formatMinimum`, `formatMaximum`,
    /// `formatExclusiveMinimum`, `formatExclusiveMaximum`, and annotations; any other keyword is
    /// refused (422), never ignored.
    #[schema(value_type = Object)]
    pub presentation_definition: Option<Value>,
    pub response_mode: Option<ResponseMode>,
    pub ttl_seconds: Option<u64>,
    /// Policies to run (default: all). `signature`, `holder_binding`, `nonce_audience` and
    /// `query_match` always run.
    pub policies: Option<Vec<String>>,
    /// The `status` policy fails for a credential without a status reference (default false:
    /// a credential that was issued without one passes `status`).
    pub require_status: Option<bool>,
    /// Receives a signed JSON event when the session finishes (`X-Idstack-Tenant-Signature: sha256=<hex HMAC of
    /// the body>` under this tenant's key, `GET /api/verifiers/{id}/webhook-secret`, and
    /// `X-Idstack-Signature` under the deployment's; the body's `delivery_id` and `sent_at` let
    /// the receiver refuse replays). http(s), no fragment; in production mode plain http only to
    /// a host `http.outbound.allow` names.
    pub webhook_url: Option<String>,
    /// Where the wallet sends the user after a successful response, with `response_code` added
    /// to its query. http(s), no fragment; in production mode plain http only to a host
    /// `http.outbound.allow` names.
    pub success_redirect: Option<String>,
}

/// The OpenAPI schema of the session-creation body: [`CreateSession`]'s members, and exactly one
/// of `dcql_query` / `presentation_definition` (`allOf` the members, `oneOf` the two queries).
/// Documentation only; the handler deserializes [`CreateSession`] and checks the same rule.
pub struct CreateSessionRequest;

impl utoipa::PartialSchema for CreateSessionRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder};
        let only = |member: &str, other: &str| {
            ObjectBuilder::new()
                .required(member)
                .description(Some(format!("a `{member}` query (no `{other}`)")))
                .build()
        };
        AllOfBuilder::new()
            .item(<CreateSession as utoipa::PartialSchema>::schema())
            .item(
                OneOfBuilder::new()
                    .item(only("dcql_query", "presentation_definition"))
                    .item(only("presentation_definition", "dcql_query")),
            )
            .description(Some(
                "A verification session: exactly one of `dcql_query` (OpenID4VP 1.0 DCQL) or \
                 `presentation_definition` (DIF PE 2.0, for legacy wallets), plus options.",
            ))
            .into()
    }
}

impl ToSchema for CreateSessionRequest {}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionCreated {
    pub id: String,
    /// `openid4vp://?client_id=...&request_uri=...`
    pub authorization_request: String,
    pub request_uri: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Pending,
    Completed,
    Failed,
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PolicyResult {
    pub name: String,
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PresentedCredential {
    pub query_id: String,
    pub format: String,
    /// Who issued it, as trust was decided: a DID or `https` issuer identifier, or for mso_mdoc
    /// the `aki:<base64url key identifier>` of the authority its document signer chains to (the
    /// `trusted_issuers` entry that matched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// mso_mdoc: the document signer certificate's subject (RFC 4514), as the signer wrote it.
    /// Informative only: nothing checks it against `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_name: Option<String>,
    /// The disclosed claims.
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
}

/// Where a session's result goes, sealed together in its record (`Session::sealed_targets`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_redirect: Option<String>,
}

/// A stored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub verifier: String,
    pub nonce: String,
    pub state_param: String,
    pub client_id: String,
    pub response_uri: String,
    pub dcql_query: Option<Value>,
    pub presentation_definition: Option<Value>,
    pub response_mode: ResponseMode,
    pub policies: Vec<String>,
    #[serde(default)]
    pub require_status: bool,
    /// Where the result is posted, and where a verified wallet's user is sent: in clear only in
    /// records written by releases before `sealed_targets` (read, never written); see
    /// [`targets`].
    ///
    /// [`targets`]: super::service::VerifierService::targets
    pub webhook_url: Option<String>,
    pub success_redirect: Option<String>,
    /// `webhook_url` and `success_redirect`, sealed to this verifier and session (base64url): a
    /// webhook or redirect URL can carry its receiver's secret (a token in its path or query),
    /// and the store must not give it away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_targets: Option<String>,
    /// Sealed ephemeral encryption key (direct_post.jwt).
    pub encryption_key: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub state: SessionState,
    #[serde(default)]
    pub verified: bool,
    #[serde(default)]
    pub policy_results: Vec<PolicyResult>,
    /// The disclosed claims, in clear: only in records written by releases before
    /// `sealed_credentials` (read, never written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<PresentedCredential>,
    /// The disclosed claims of a verified presentation, sealed to this verifier and session
    /// (base64url): personal data is not kept (nor replicated between nodes) in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_credentials: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// Rejected responses (kept pending for the real wallet), with why.
    #[serde(default)]
    pub failed_attempts: Vec<String>,
    /// Presentations being evaluated, each by the time (unix seconds) its place lapses: a
    /// response takes a place before its presentation is evaluated, so responses sent at once
    /// cannot all be evaluated (their fetches and signature checks) before any counts as an
    /// attempt; its answer gives the place back, and one whose handler never answered (dropped,
    /// failed) lapses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluating: Vec<i64>,
    pub completed_at: Option<i64>,
    /// The `response_code` in clear: only in records written by releases before
    /// `sealed_response_code` (read, never written), and in a session [`opened`] for its view.
    ///
    /// [`opened`]: super::service::VerifierService::opened
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<String>,
    /// Made when a verified response sends the user to `success_redirect` (OpenID4VP 1.0
    /// `response_code`): it rides on that redirect, so only the browser the wallet sends back
    /// carries it. Sealed to this verifier and session like the claims: whoever reads the store
    /// could otherwise finish, with it, a session they started and a victim's wallet answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_response_code: Option<String>,
}

/// `GET /api/verifiers/{verifier}/sessions/{id}`
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub state: SessionState,
    pub verified: bool,
    pub policies: Vec<PolicyResult>,
    pub credentials: Vec<PresentedCredential>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub failed_attempts: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// With `success_redirect`, once verified: the `response_code` the wallet's redirect carries
    /// to that URL. Accept the result only in the browser session that comes back with it
    /// (OpenID4VP 1.0 §13.3): a session started by someone else and answered by a victim's
    /// wallet sends the victim's browser there, never the one that started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_code: Option<String>,
    /// Set in a session list when this session's sealed claims could not be opened (its record
    /// was damaged, or sealed under another master key): the list shows the session without
    /// them instead of failing as a whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claims_unavailable: bool,
}

impl Session {
    pub fn view(&self, now: i64) -> SessionView {
        let state = if self.state == SessionState::Pending && self.expires_at <= now {
            SessionState::Expired
        } else {
            self.state
        };
        SessionView {
            id: self.id.clone(),
            state,
            verified: self.verified,
            policies: self.policy_results.clone(),
            credentials: self.credentials.clone(),
            error: self.error.clone(),
            failed_attempts: self.failed_attempts.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            completed_at: self.completed_at,
            response_code: self.response_code.clone(),
            claims_unavailable: false,
        }
    }
}
