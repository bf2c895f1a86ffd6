//! VC-API verification as a step of the verifier (its HTTP adapter is `vc_api.rs`): a credential
//! or a presentation checked by the same engine as an OpenID4VP response ([`super::verify`]) —
//! the issuer-key binding, the validity window (not-before included), status and the issuer
//! allow-list of the `default` verifier — with the VC-API's own set of policies.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::VerifierError;
use super::service::VerifierService;
use super::verify::{self, Audience, Ctx, Outcome, Trust};

/// The verification result (VC-API). A failed verification is a 400 problem document with these
/// same members added.
#[derive(Debug, Serialize, ToSchema, Default)]
pub struct VerifyResult {
    pub verified: bool,
    /// The checks that ran and passed (policy names: `signature`, `validity`, `status`, ...).
    pub checks: Vec<String>,
    pub warnings: Vec<String>,
    /// `<policy>: <reason>` for every check that failed.
    pub errors: Vec<String>,
}

impl VerifierService {
    /// A credential: a JWT (VC-JWT 1.1 or VC-JOSE `vc+jwt`), an `EnvelopedVerifiableCredential`
    /// of one, or a Data Integrity (JSON-LD) object.
    pub async fn vc_api_verify_credential(
        &self,
        vc: &Value,
    ) -> Result<VerifyResult, VerifierError> {
        let trust = self.vc_api_trust().await?;
        let ctx = self.vc_api_ctx(&trust, None);
        let mut out = Outcome::default();
        match (vc, crate::crypto::envelope::enveloped_vc_jwt(vc)) {
            (Value::String(jwt), _) => {
                verify::jwt_credential(&ctx, &mut out, "credential", jwt).await;
            }
            (Value::Object(_), Some(jwt)) => {
                let jwt = jwt.map_err(|e| malformed(format!("verifiableCredential: {e}")))?;
                verify::jwt_credential(&ctx, &mut out, "credential", jwt).await;
            }
            (Value::Object(_), None) => {
                verify::ldp_credential(&ctx, &mut out, "credential", vc).await;
            }
            _ => {
                return Err(malformed(
                    "verifiableCredential must be a JWT string or a JSON-LD object",
                ))
            }
        }
        verdict(out, &policies(false, true))
    }

    /// A presentation and the credentials in it: a JWT (`vp` claim or VC-JOSE `vp+jwt`), an
    /// `EnvelopedVerifiablePresentation` of one, or a Data Integrity object. `challenge` /
    /// `domain`, when given, are checked against the proof (Data Integrity) or `nonce` / `aud`.
    pub async fn vc_api_verify_presentation(
        &self,
        vp: &Value,
        challenge: Option<&str>,
        domain: Option<&str>,
    ) -> Result<VerifyResult, VerifierError> {
        let trust = self.vc_api_trust().await?;
        let audience = (challenge.is_some() || domain.is_some()).then_some(Audience {
            nonce: challenge,
            client_id: domain,
        });
        let ctx = self.vc_api_ctx(&trust, audience);
        let mut out = Outcome::default();
        let jwt = match (vp, crate::crypto::envelope::enveloped_vp_jwt(vp)) {
            (Value::String(jwt), _) => Some(jwt.as_str()),
            (Value::Object(_), Some(jwt)) => {
                Some(jwt.map_err(|e| malformed(format!("verifiablePresentation: {e}")))?)
            }
            (Value::Object(_), None) => None,
            _ => return Err(malformed(
                "verifiablePresentation must be a JWT string, an EnvelopedVerifiablePresentation or a JSON-LD object",
            )),
        };
        let credentials = match jwt {
            Some(jwt) => {
                verify::jwt_vp(&ctx, &mut out, "presentation", jwt, true).await;
                crate::crypto::jws::decode_unverified(jwt)
                    .map(|(_, payload, _, _)| carries_credentials(&payload))
                    .unwrap_or(true)
            }
            None => {
                verify::ldp_vp(&ctx, &mut out, "presentation", vp.clone()).await;
                carries_credentials(vp)
            }
        };
        verdict(out, &policies(audience.is_some(), credentials))
    }

    /// The trust of the `default` verifier (no verifier: no issuer is trusted).
    async fn vc_api_trust(&self) -> Result<Trust, VerifierError> {
        match self.get_verifier("default").await {
            Ok(v) => self.trusted(&v).await,
            Err(_) => Ok(Trust::Only(Vec::new())),
        }
    }

    /// A verification outside an OpenID4VP session: no query, no transcript, status optional.
    fn vc_api_ctx<'a>(&'a self, trust: &'a Trust, audience: Option<Audience<'a>>) -> Ctx<'a> {
        Ctx {
            dcql_query: None,
            presentation_definition: None,
            audience,
            now: self.ctx.clock.now_secs(),
            http: &self.ctx.http,
            trust,
            // VC-API always runs it
            issuer_allowlist: true,
            status_cache: &self.status_cache,
            anchors: &self.ctx.x509_anchors,
            mdoc_anchors: &self.ctx.iaca_anchors,
            require_status: false,
            mdoc_transcript: None,
            fetched: Default::default(),
            https_only: self.ctx.mode == crate::config::Mode::Production
                && !self.cfg.status_lists_over_http,
            status_max_age: self.cfg.status_max_age(),
        }
    }
}

fn malformed(detail: impl Into<String>) -> VerifierError {
    VerifierError::Malformed(detail.into())
}

/// The policies a VC-API verification runs. A presentation that carries no credential has only
/// its own: its proof (`signature`) and, when asked, `nonce_audience`; the credential-level checks
/// do not apply to it.
fn policies(audience: bool, credentials: bool) -> Vec<String> {
    let mut p = vec!["signature"];
    if credentials {
        p.extend([
            "validity",
            "status",
            "issuer_allowlist",
            "disclosure_integrity",
        ]);
    }
    // Holder binding (the presenter is the subject) is a relying party's policy, not part of
    // VC-API verification: a presentation may carry credentials about someone else.
    if audience {
        p.push("nonce_audience");
    }
    p.into_iter().map(str::to_string).collect()
}

/// The result of the policies `enabled`; a JSON-LD input over this server's limits is not judged
/// (that error instead of a verdict).
fn verdict(out: Outcome, enabled: &[String]) -> Result<VerifyResult, VerifierError> {
    if let Some(e) = out.limit {
        return Err(VerifierError::Limit(e));
    }
    let mut r = VerifyResult::default();
    for p in out.results(enabled) {
        if p.passed {
            r.checks.push(p.name);
        } else {
            r.errors
                .push(format!("{}: {}", p.name, p.reason.unwrap_or_default()));
        }
    }
    r.verified = r.errors.is_empty() && !r.checks.is_empty();
    Ok(r)
}

/// Whether a presentation (a JSON-LD object, a VC-JOSE `vp+jwt` payload or a VCDM 1.1 JWT's
/// claims with `vp`) names any credential.
fn carries_credentials(vp: &Value) -> bool {
    let vp = if vp["vp"].is_object() { &vp["vp"] } else { vp };
    match &vp["verifiableCredential"] {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}
