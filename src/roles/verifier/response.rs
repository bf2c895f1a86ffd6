//! The response endpoint: the wallet's answer (direct_post, direct_post.jwt), verified once and
//! recorded exactly once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::error::{encryption_key_broken, VerifierError};
use super::ks;
use super::model::*;
use super::query;
use super::service::*;
use super::verify::{Audience, Ctx, Outcome};
use crate::crypto::jwe::{self};
use crate::error::{unless_unavailable, OAuthCode::*};
use crate::store::Cas;

const MAX_FAILED_ATTEMPTS: usize = 3;

/// What the response endpoint answers the wallet.
pub struct ResponseOutcome {
    pub redirect_uri: Option<String>,
}

impl VerifierService {
    /// The wallet's authorization response (direct_post / direct_post.jwt form fields). (About
    /// 100 lines: the session's whole transition, checked and written once, reads in one place.)
    pub async fn handle_response(
        &self,
        verifier_id: &str,
        id: &str,
        form: HashMap<String, String>,
    ) -> Result<ResponseOutcome, VerifierError> {
        let v = self.get_verifier(verifier_id).await.map_err(|e| {
            unless_unavailable(e, || InvalidRequest.because("unknown verifier").into())
        })?;
        let key = session_key(verifier_id, id);
        let store = &self.ctx.store;
        let Some(raw) = store.get(ks::SESSIONS, &key).await? else {
            return Err(UnknownSession
                .because("unknown verification session")
                .into());
        };
        let session: Session = serde_json::from_slice(&raw)
            .map_err(|e| VerifierError::Internal(format!("session record: {e}")))?;
        let now = self.now();
        if session.expires_at <= now {
            return Err(ExpiredSession
                .because("this verification session has expired")
                .into());
        }
        if session.state != SessionState::Pending {
            return Err(InvalidRequest
                .because("this verification session has already been answered")
                .into());
        }
        let fields = self.response_fields(&session, form)?;
        let state_ok =
            fields.get("state").and_then(Value::as_str) == Some(session.state_param.as_str());
        if !state_ok {
            return Err(InvalidRequest
                .because("state does not match the session")
                .into());
        }
        let mut updated = session.clone();
        if let Some(err) = fields.get("error").and_then(Value::as_str) {
            // The wallet (user) declined or failed: a final answer per OpenID4VP.
            updated.state = SessionState::Failed;
            updated.error = Some(format!(
                "{err}: {}",
                fields
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ));
        } else {
            let outcome = self.evaluate(&v, &session, &fields, now).await?;
            let results = outcome.results(&session.policies);
            let verified = results.iter().all(|r| r.passed);
            if !verified && session.failed_attempts.len() + 1 < MAX_FAILED_ATTEMPTS {
                self.record_failed_attempt(&key, raw, &mut updated, results, now)
                    .await?;
                return Err(InvalidRequest
                    .because(format!(
                        "presentation rejected: {}",
                        updated.failed_attempts.last().cloned().unwrap_or_default()
                    ))
                    .into());
            }
            updated.verified = verified;
            updated.state = if verified {
                SessionState::Completed
            } else {
                SessionState::Failed
            };
            updated.policy_results = results;
            updated.credentials = outcome.credentials;
            if !verified {
                updated.error = Some("verification failed".into());
            }
        }
        updated.completed_at = Some(now);
        // Exactly once: only the response that moves this exact pending record wins.
        let ttl = Duration::from_secs((session.expires_at - now).max(1) as u64 + 86_400);
        if store
            .compare_and_swap(
                ks::SESSIONS,
                &key,
                Some(raw),
                Some((crate::store::to_json(&updated)?, Some(ttl))),
            )
            .await?
            != Cas::Swapped
        {
            return Err(InvalidRequest
                .because("this verification session has already been answered")
                .into());
        }
        self.notify(&updated);
        tracing::info!(verifier = verifier_id, session = id, verified = updated.verified, state = ?updated.state, "verification session finished");
        Ok(ResponseOutcome {
            redirect_uri: if updated.verified {
                updated.success_redirect.clone()
            } else {
                None
            },
        })
    }

    /// The response's fields: the form itself, or (direct_post.jwt) what the encrypted `response`
    /// holds.
    fn response_fields(
        &self,
        session: &Session,
        form: HashMap<String, String>,
    ) -> Result<HashMap<String, Value>, VerifierError> {
        // direct_post.jwt: everything is inside the encrypted `response`.
        Ok(match (session.response_mode, form.get("response")) {
            (ResponseMode::DirectPostJwt, Some(jwe_s)) => {
                let sealed = session
                    .encryption_key
                    .as_deref()
                    .ok_or_else(|| encryption_key_broken("the session has none"))?;
                let k = self.encryption_key(&session.id, sealed)?;
                let (_, plain) = jwe::decrypt(jwe_s, &k)
                    .map_err(|e| InvalidRequest.because(format!("response JWE: {e}")))?;
                let v: Value = serde_json::from_slice(&plain)
                    .map_err(|e| InvalidRequest.because(format!("decrypted response: {e}")))?;
                v.as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .collect()
            }
            (ResponseMode::DirectPostJwt, None) if !form.contains_key("error") => {
                return Err(InvalidRequest
                    .because("this session expects an encrypted `response` (direct_post.jwt)")
                    .into());
            }
            _ => form
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        })
    }

    /// Verifies the presentation in the response against the session's query and the verifier's
    /// trust.
    async fn evaluate(
        &self,
        v: &Verifier,
        session: &Session,
        fields: &HashMap<String, Value>,
        now: i64,
    ) -> Result<Outcome, VerifierError> {
        let vp_token = match fields.get("vp_token") {
            Some(Value::String(s)) => {
                serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.clone()))
            }
            Some(other) => other.clone(),
            None => return Err(InvalidRequest.because("vp_token is missing").into()),
        };
        let submission = match fields.get("presentation_submission") {
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
            Some(other) => Some(other.clone()),
            None => None,
        };
        let trust = self
            .trusted(v)
            .await
            .map_err(|e| unless_unavailable(e, || VerifierError::Internal("trust".into())))?;
        // Only a session an mdoc can answer pays for the transcript (unsealing the response key)
        // and the sandbox IACA lookup: one that asks for mso_mdoc, or a presentation definition
        // (whose wallet names the format).
        let transcript = if may_carry_mdoc(session) {
            Some(self.mdoc_transcript(session)?)
        } else {
            None
        };
        let anchors = match transcript {
            Some(_) => self.anchors().await,
            None => self.ctx.x509_anchors.clone(),
        };
        let ctx = Ctx {
            dcql_query: session.dcql_query.as_ref(),
            presentation_definition: session.presentation_definition.as_ref(),
            audience: Some(Audience {
                nonce: Some(&session.nonce),
                client_id: Some(&session.client_id),
            }),
            now,
            http: &self.ctx.http,
            trust: &trust,
            status_cache: &self.status_cache,
            anchors: &anchors,
            require_status: session.require_status,
            mdoc_transcript: transcript.as_deref(),
        };
        Ok(query::evaluate(&ctx, &vp_token, submission.as_ref()).await)
    }

    /// A rejected presentation while attempts are left: the session stays pending so the real
    /// wallet can still answer, and remembers why this one failed.
    async fn record_failed_attempt(
        &self,
        key: &str,
        raw: Vec<u8>,
        updated: &mut Session,
        results: Vec<PolicyResult>,
        now: i64,
    ) -> Result<(), VerifierError> {
        let store = &self.ctx.store;
        // Stay pending so the real wallet can still answer; remember why this one failed.
        let reasons: Vec<String> = results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| format!("{}: {}", r.name, r.reason.clone().unwrap_or_default()))
            .collect();
        updated.failed_attempts.push(reasons.join("; "));
        updated.policy_results = results;
        let _ = store
            .compare_and_swap(
                ks::SESSIONS,
                key,
                Some(raw),
                Some((
                    crate::store::to_json(&*updated)?,
                    Some(Duration::from_secs(
                        (updated.expires_at - now).max(1) as u64 + 86_400,
                    )),
                )),
            )
            .await?;
        self.notify(updated);
        Ok(())
    }
}

impl VerifierService {
    /// The X.509 anchors: `x509.trust_anchors`, plus this deployment's sandbox mdoc IACA in
    /// sandbox mode (as the sandbox verifier trusts its own issuers).
    async fn anchors(&self) -> std::sync::Arc<crate::crypto::x509::TrustAnchors> {
        crate::roles::mdoc_pki::trust_anchors(&self.ctx).await
    }

    /// The SessionTranscript an mdoc in this session's response must be device-signed over
    /// (OpenID4VP 1.0 Appendix B.2.6.1): client_id, nonce, the response encryption key's
    /// thumbprint (direct_post.jwt) and the response_uri.
    fn mdoc_transcript(&self, s: &Session) -> Result<Vec<u8>, super::error::VerifierError> {
        let thumbprint = match &s.encryption_key {
            Some(sealed) => Some(self.encryption_key(&s.id, sealed)?.thumbprint()),
            None => None,
        };
        Ok(crate::crypto::mdoc::transcript::oid4vp(
            &s.client_id,
            &s.nonce,
            thumbprint.as_deref(),
            &s.response_uri,
        ))
    }
}

/// Whether an answer to `s` may hold an mdoc.
fn may_carry_mdoc(s: &Session) -> bool {
    s.presentation_definition.is_some()
        || s.dcql_query
            .as_ref()
            .and_then(|q| q["credentials"].as_array())
            .is_some_and(|cs| cs.iter().any(|c| c["format"] == "mso_mdoc"))
}
