//! The verifier service: its state, constructor and the helpers its steps share. The steps live one
//! per file beside it: `tenants`, `sessions` (creation, request objects), `response`; `verify`
//! checks credentials and presentations.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::broadcast;

use super::error::{encryption_key_broken, VerifierError};
use super::ks;
use super::model::*;
use crate::config::VerifierConfig;
use crate::crypto::jwe::EncryptionKey;
use crate::crypto::SigningKey;
use crate::roles::tenants::Tenants;
use crate::roles::RoleContext;

pub struct VerifierService {
    pub(crate) ctx: RoleContext,
    pub(super) cfg: VerifierConfig,
    pub(super) tenants: Tenants<Verifier>,
    /// Session ids whose state changed, for SSE subscribers on this node.
    pub(super) events: broadcast::Sender<String>,
    pub(super) status_cache: super::verify::StatusCache,
}

impl VerifierService {
    pub fn new(ctx: RoleContext, cfg: VerifierConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            tenants: Tenants::new(&ctx, ks::TENANTS, ks::KEYS),
            ctx,
            cfg,
            events,
            status_cache: Default::default(),
        }
    }

    pub(super) fn now(&self) -> i64 {
        self.ctx.clock.now_secs()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    /// Whether long-lived streams (session events) may go on: not once the node stops or a
    /// rolling upgrade holds it back; the client then reconnects, to a node that serves.
    pub fn streams_open(&self) -> bool {
        *self.ctx.sessions.borrow() == crate::readiness::Sessions::Open
    }

    pub(super) fn base(&self, verifier: &str) -> String {
        format!("{}/verifiers/{verifier}", self.ctx.public_url)
    }

    pub(super) async fn signing_key(
        &self,
        v: &Verifier,
    ) -> Result<Option<Arc<SigningKey>>, VerifierError> {
        Ok(self.tenants.signing_key(v).await?)
    }

    /// Session `id`'s response encryption key, opened from its record. Sealed to the verifier,
    /// the session and the field; a key sealed before that binding (`session-enc/{id}`, sessions
    /// made by an earlier release, gone with their TTL) opens as it was.
    pub(super) fn encryption_key(
        &self,
        verifier_id: &str,
        id: &str,
        sealed_b64: &str,
    ) -> Result<EncryptionKey, VerifierError> {
        let sealed = crate::crypto::b64url_decode(sealed_b64).map_err(encryption_key_broken)?;
        let sealer = &self.ctx.sealer;
        let raw = sealer
            .open(session_key_aad(verifier_id, id).as_bytes(), &sealed)
            .or_else(|_| sealer.open(format!("session-enc/{id}").as_bytes(), &sealed))
            .map_err(encryption_key_broken)?;
        EncryptionKey::from_bytes(&raw).map_err(encryption_key_broken)
    }

    /// The wallet's authorization response (direct_post / direct_post.jwt form fields).
    pub(super) fn notify(&self, s: &Session) {
        let _ = self.events.send(s.id.clone());
        if s.state == SessionState::Pending {
            return;
        }
        if let Some(url) = self.targets_or_none(s).webhook_url {
            let ctx = self.ctx.clone();
            let now = self.now();
            let s = match self.opened(s) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(session = s.id, error = %e, "webhook not sent: the session's claims do not open");
                    return;
                }
            };
            let event = json!({"type": "verification.finished", "verifier": s.verifier, "session": s.view(now)});
            let verifier_id = s.verifier.clone();
            tokio::spawn(async move {
                let verifier = match ctx
                    .store
                    .get_json::<Verifier>(super::ks::TENANTS, &verifier_id)
                    .await
                {
                    Ok(Some(v)) => v,
                    Ok(None) => return, // the verifier was deleted meanwhile
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook not sent: the verifier could not be read");
                        return;
                    }
                };
                let sender = webhook_sender(&verifier);
                crate::http::webhook::deliver(&ctx.http, &ctx.sealer, sender, &url, &event, now)
                    .await
            });
        }
    }
}

pub(super) fn session_key(verifier: &str, id: &str) -> String {
    format!("{verifier}/{id}")
}

/// What a session's sealed `field` (its disclosed claims, its response code) is sealed to: its
/// keyspace, verifier, session and field.
fn field_aad(verifier: &str, id: &str, field: &str) -> String {
    format!("{}/{verifier}/{id}/{field}", super::ks::SESSIONS)
}

impl VerifierService {
    /// `plain` sealed as `field` of session `id` of `verifier` (base64url), as the record keeps it.
    fn seal_field(
        &self,
        verifier: &str,
        id: &str,
        field: &str,
        plain: &[u8],
    ) -> Result<String, VerifierError> {
        let sealed = self
            .ctx
            .sealer
            .seal(field_aad(verifier, id, field).as_bytes(), plain)?;
        Ok(crate::crypto::b64url(sealed))
    }

    fn open_field(
        &self,
        s: &Session,
        field: &str,
        sealed: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VerifierError> {
        let broken = |e: String| VerifierError::Internal(format!("session {field}: {e}"));
        let raw = crate::crypto::b64url_decode(sealed).map_err(|e| broken(e.to_string()))?;
        self.ctx
            .sealer
            .open(field_aad(&s.verifier, &s.id, field).as_bytes(), &raw)
            .map_err(|e| broken(e.to_string()))
    }

    /// `targets` sealed for session `id` of `verifier` (base64url), as the record keeps them;
    /// `None` when there are none.
    pub(super) fn seal_targets(
        &self,
        verifier: &str,
        id: &str,
        targets: &Targets,
    ) -> Result<Option<String>, VerifierError> {
        if targets.webhook_url.is_none() && targets.success_redirect.is_none() {
            return Ok(None);
        }
        let plain =
            serde_json::to_vec(targets).map_err(|e| VerifierError::Internal(e.to_string()))?;
        self.seal_field(verifier, id, "targets", &plain).map(Some)
    }

    /// Session `s`'s webhook and success redirect: opened from the record, or in clear in a
    /// record of an earlier release. Sealed ones that do not open (a damaged record, another
    /// master key) are none, logged as an error: the session is still answered and its result
    /// read, without a webhook or a redirect.
    pub(super) fn targets_or_none(&self, s: &Session) -> Targets {
        self.targets(s).unwrap_or_else(|e| {
            tracing::error!(session = s.id, error = %e, "the session's webhook and redirect do not open: none is used");
            Targets::default()
        })
    }

    /// [`Self::targets_or_none`], failing when they do not open.
    pub(super) fn targets(&self, s: &Session) -> Result<Targets, VerifierError> {
        match &s.sealed_targets {
            Some(sealed) => {
                let plain = self.open_field(s, "targets", sealed)?;
                serde_json::from_slice(&plain)
                    .map_err(|e| VerifierError::Internal(format!("session targets: {e}")))
            }
            None => Ok(Targets {
                webhook_url: s.webhook_url.clone(),
                success_redirect: s.success_redirect.clone(),
            }),
        }
    }

    /// `credentials` sealed for session `id` of `verifier` (base64url), as the record keeps them.
    pub(super) fn seal_credentials(
        &self,
        verifier: &str,
        id: &str,
        credentials: &[PresentedCredential],
    ) -> Result<String, VerifierError> {
        let plain =
            serde_json::to_vec(credentials).map_err(|e| VerifierError::Internal(e.to_string()))?;
        self.seal_field(verifier, id, "credentials", &plain)
    }

    /// `code` sealed as the `response_code` of session `id` of `verifier`.
    pub(super) fn seal_response_code(
        &self,
        verifier: &str,
        id: &str,
        code: &str,
    ) -> Result<String, VerifierError> {
        self.seal_field(verifier, id, "response_code", code.as_bytes())
    }

    /// The session with its disclosed claims and response code opened (for its view, SSE and
    /// the webhook).
    pub(super) fn opened(&self, s: &Session) -> Result<Session, VerifierError> {
        let mut s = s.clone();
        if let Some(sealed) = s.sealed_credentials.take() {
            let plain = self.open_field(&s, "credentials", &sealed)?;
            s.credentials = serde_json::from_slice(&plain)
                .map_err(|e| VerifierError::Internal(format!("session claims: {e}")))?;
        }
        if let Some(sealed) = s.sealed_response_code.take() {
            let plain = self.open_field(&s, "response_code", &sealed)?;
            s.response_code = Some(
                String::from_utf8(plain.to_vec())
                    .map_err(|e| VerifierError::Internal(format!("session response_code: {e}")))?,
            );
        }
        Ok(s)
    }
}

/// What a session's response encryption key is sealed to: its keyspace, verifier, session and
/// field (a sealed key copied to another verifier's or session's record does not open).
pub(super) fn session_key_aad(verifier: &str, id: &str) -> String {
    format!("{}/{verifier}/{id}/encryption_key", super::ks::SESSIONS)
}

/// Who signs `verifier`'s webhooks ([`crate::http::webhook::Sender`]).
fn webhook_sender(verifier: &Verifier) -> crate::http::webhook::Sender<'_> {
    crate::http::webhook::Sender {
        role: "verifier",
        tenant: &verifier.id,
        created_at: verifier.created_at,
    }
}

impl VerifierService {
    /// The key of `verifier`'s own webhook signature.
    pub fn webhook_secret(&self, verifier: &Verifier) -> crate::http::webhook::WebhookSecret {
        crate::http::webhook::WebhookSecret::tenant(&self.ctx.sealer, webhook_sender(verifier))
    }
}
