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
use crate::clock::random_token;
use crate::crypto::jwe::{self};
use crate::error::{unless_unavailable, OAuthCode::*};
use crate::http::urlencode;

const MAX_FAILED_ATTEMPTS: usize = 3;

/// How long a presentation's place among those being evaluated is held (the evaluation itself
/// is bounded to 30 s by `verify::bounded`): a response whose handler never answered gives its
/// place back after this.
const EVALUATION_PLACE_SECS: i64 = 60;

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
        // What this response says: declined by the wallet, or the evaluation of its presentation.
        let answer = match fields.get("error").and_then(Value::as_str) {
            Some(err) => Answer::Declined(super::verify::clip_reason(format!(
                "{err}: {}",
                fields
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ))),
            None => {
                if !fields.contains_key("vp_token") {
                    return Err(InvalidRequest.because("vp_token is missing").into());
                }
                self.take_evaluation(&key, &session, raw).await?;
                let outcome = self.evaluate(&v, &session, &fields, now).await?;
                let results = outcome.results(&session.policies);
                Answer::Evaluated(outcome, results)
            }
        };
        // Written once, on the record's latest value (a compare-and-swap, retried): a racing
        // response never makes this one's answer vanish, every failed attempt counts, and the
        // session leaves `pending` exactly once.
        let ttl = Duration::from_secs((session.expires_at - now).max(1) as u64 + 86_400);
        // the evaluation may have taken a while (status list fetches): the session must still be
        // live when it is answered, as `view` would show it
        let now = self.now();
        let code = random_token(24);
        // the claims a verified answer keeps, sealed before the write (the update cannot fail
        // half way on a sealing error)
        let sealed = match &answer {
            Answer::Evaluated(outcome, _) if !outcome.credentials.is_empty() => {
                Some(self.seal_credentials(verifier_id, id, &outcome.credentials)?)
            }
            _ => None,
        };
        // and the response code a verified answer sends the user to `success_redirect` with
        let success_redirect = self.targets_or_none(&session).success_redirect;
        let sealed_code = match success_redirect {
            Some(_) => Some(self.seal_response_code(verifier_id, id, &code)?),
            None => None,
        };
        let updated = store
            .update_json_from::<Session, VerifierError, _>(
                ks::SESSIONS,
                &key,
                Some(ttl),
                None,
                |s| answer.apply(s, now, (sealed_code.as_deref(), sealed.as_deref())),
            )
            .await?
            .ok_or_else(|| {
                VerifierError::from(UnknownSession.because("unknown verification session"))
            })?;
        self.notify(&updated);
        if updated.state == SessionState::Pending {
            return Err(InvalidRequest
                .because(format!(
                    "presentation rejected: {}",
                    updated.failed_attempts.last().cloned().unwrap_or_default()
                ))
                .into());
        }
        tracing::info!(verifier = verifier_id, session = id, verified = updated.verified, state = ?updated.state, "verification session finished");
        Ok(ResponseOutcome {
            redirect_uri: redirect_of(&updated, success_redirect.as_deref(), &code),
        })
    }

    /// Takes a place among the session's presentations being evaluated before one is evaluated
    /// (a compare-and-swap, so on every node): the places taken and the failed attempts together
    /// stay within [`MAX_FAILED_ATTEMPTS`] (attacker review: the attempt count was only kept
    /// after the evaluation, so any number of responses sent at once to one session were each
    /// evaluated in full, each with its own budget of outbound fetches). A place is given back
    /// by the answer, or lapses after [`EVALUATION_PLACE_SECS`] (a dropped or failed handler
    /// must not leave the session unanswerable) and then counts as a failed attempt.
    async fn take_evaluation(
        &self,
        key: &str,
        session: &Session,
        raw: Vec<u8>,
    ) -> Result<(), VerifierError> {
        let now = self.now();
        let ttl = Duration::from_secs((session.expires_at - now).max(1) as u64 + 86_400);
        let updated = self
            .ctx
            .store
            .update_json_from::<Session, VerifierError, _>(
                ks::SESSIONS,
                key,
                Some(ttl),
                Some(raw),
                |mut s| {
                    if s.state != SessionState::Pending {
                        return Err(InvalidRequest
                            .because("this verification session has already been answered")
                            .into());
                    }
                    // a lapsed place is an attempt that never answered: it counts as a failed
                    // one, so responses dropped mid-evaluation get no more evaluations than
                    // failed ones (diff review: three every minute, for the session's life)
                    let lapsed = s.evaluating.iter().filter(|l| **l <= now).count();
                    s.evaluating.retain(|lapses| *lapses > now);
                    for _ in 0..lapsed {
                        s.failed_attempts
                            .push("a presentation whose evaluation never answered".into());
                    }
                    if s.failed_attempts.len() >= MAX_FAILED_ATTEMPTS {
                        s.state = SessionState::Failed;
                        s.error = Some("verification failed".into());
                        s.completed_at = Some(now);
                        return Ok(s);
                    }
                    if s.evaluating.len() + s.failed_attempts.len() >= MAX_FAILED_ATTEMPTS {
                        return Err(InvalidRequest
                            .because("this verification session is evaluating as many presentations as it has attempts left; retry once they are answered")
                            .into());
                    }
                    s.evaluating.push(now + EVALUATION_PLACE_SECS);
                    Ok(s)
                },
            )
            .await?
            .ok_or_else(|| {
                VerifierError::from(UnknownSession.because("unknown verification session"))
            })?;
        if updated.state != SessionState::Pending {
            self.notify(&updated);
            return Err(InvalidRequest
                .because("this verification session has already been answered")
                .into());
        }
        Ok(())
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
                let k = self.encryption_key(&session.verifier, &session.id, sealed)?;
                let (_, plain) = jwe::decrypt(jwe_s, &k)
                    .map_err(|e| InvalidRequest.because(format!("response JWE: {e}")))?;
                let v: Value = crate::json_cost::parse(&plain, crate::json_cost::INBOUND_MAX)
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
        let mdoc_anchors = match transcript {
            Some(_) => self.anchors().await,
            None => self.ctx.iaca_anchors.clone(),
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
            issuer_allowlist: session.policies.iter().any(|p| p == "issuer_allowlist"),
            status_cache: &self.status_cache,
            anchors: &self.ctx.x509_anchors,
            mdoc_anchors: &mdoc_anchors,
            require_status: session.require_status,
            mdoc_transcript: transcript.as_deref(),
            fetched: Default::default(),
            https_only: self.ctx.mode == crate::config::Mode::Production
                && !self.cfg.status_lists_over_http,
            status_max_age: self.cfg.status_max_age(),
        };
        Ok(
            super::verify::bounded(query::evaluate(&ctx, &vp_token, submission.as_ref()))
                .await
                .unwrap_or_else(super::verify::too_slow),
        )
    }
}

/// What one response answers a session with.
enum Answer {
    /// The wallet's `error` (the user declined, or the wallet failed): a final answer.
    Declined(String),
    /// The presentation's evaluation and its policy results.
    Evaluated(Outcome, Vec<PolicyResult>),
}

impl Answer {
    /// The session record `s` (its latest value) with this answer: a rejected presentation while
    /// attempts are left keeps it pending and adds the failure to `failed_attempts`; anything
    /// else finishes it. A session already finished is not changed (another response won).
    fn apply(
        &self,
        mut s: Session,
        now: i64,
        (sealed_code, sealed): (Option<&str>, Option<&str>),
    ) -> Result<Session, VerifierError> {
        if s.state != SessionState::Pending {
            return Err(InvalidRequest
                .because("this verification session has already been answered")
                .into());
        }
        if s.expires_at <= now {
            return Err(ExpiredSession
                .because("this verification session has expired")
                .into());
        }
        match self {
            Answer::Declined(why) => {
                s.state = SessionState::Failed;
                s.error = Some(why.clone());
            }
            Answer::Evaluated(_, results) => {
                // its place among those being evaluated is given back (the earliest to lapse)
                s.evaluating.sort_unstable();
                if !s.evaluating.is_empty() {
                    s.evaluating.remove(0);
                }
                let verified = results.iter().all(|r| r.passed);
                s.policy_results = results.clone();
                if !verified && s.failed_attempts.len() + 1 < MAX_FAILED_ATTEMPTS {
                    let reasons: Vec<String> = results
                        .iter()
                        .filter(|r| !r.passed)
                        .map(|r| format!("{}: {}", r.name, r.reason.clone().unwrap_or_default()))
                        .collect();
                    s.failed_attempts.push(reasons.join("; "));
                    return Ok(s);
                }
                s.verified = verified;
                s.state = if verified {
                    SessionState::Completed
                } else {
                    SessionState::Failed
                };
                // claims are kept only from a presentation that verified: a failed one's are an
                // attacker's (or a replayed victim's) words, and would reach the admin API,
                // SSE and the webhook as this session's
                if verified {
                    s.sealed_credentials = sealed.map(str::to_string);
                }
                if !verified {
                    s.error = Some("verification failed".into());
                } else {
                    // (a code was sealed only for a session with a success redirect)
                    s.sealed_response_code = sealed_code.map(str::to_string);
                }
            }
        }
        s.completed_at = Some(now);
        Ok(s)
    }
}

/// Where a verified session sends the wallet's user: its `success_redirect` with its
/// `response_code`, `code` (the one this response sealed into the record).
fn redirect_of(s: &Session, success_redirect: Option<&str>, code: &str) -> Option<String> {
    match (success_redirect, &s.sealed_response_code) {
        (Some(to), Some(_)) if s.verified => {
            let sep = if to.contains('?') { '&' } else { '?' };
            Some(format!("{to}{sep}response_code={}", urlencode(code)))
        }
        _ => None,
    }
}

impl VerifierService {
    /// The mdoc anchors: `x509.trust_anchors` and `x509.iaca_anchors`, plus this deployment's
    /// sandbox mdoc IACA in sandbox mode (as the sandbox verifier trusts its own issuers).
    async fn anchors(&self) -> std::sync::Arc<crate::crypto::x509::TrustAnchors> {
        crate::roles::mdoc_pki::trust_anchors(&self.ctx).await
    }

    /// The SessionTranscript an mdoc in this session's response must be device-signed over
    /// (OpenID4VP 1.0 Appendix B.2.6.1): client_id, nonce, the response encryption key's
    /// thumbprint (direct_post.jwt) and the response_uri.
    fn mdoc_transcript(&self, s: &Session) -> Result<Vec<u8>, super::error::VerifierError> {
        let thumbprint = match &s.encryption_key {
            Some(sealed) => Some(
                self.encryption_key(&s.verifier, &s.id, sealed)?
                    .thumbprint(),
            ),
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
