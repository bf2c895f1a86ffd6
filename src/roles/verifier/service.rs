//! Verifier logic: tenants, sessions, request objects, responses, results.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::ks;
use super::model::*;
use super::query;
use super::verify::{Audience, Ctx, Trust};
use crate::clock::{random_id, random_token};
use crate::config::VerifierConfig;
use crate::crypto::jwe::{self, EncryptionKey};
use crate::crypto::{did, jws, SigningKey};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::oauth::OAuthError;
use crate::http::urlencode;
use crate::roles::RoleContext;
use crate::store::Cas;

const MAX_FAILED_ATTEMPTS: usize = 3;

pub struct VerifierService {
    pub(crate) ctx: RoleContext,
    cfg: VerifierConfig,
    keys: crate::roles::tenant_keys::TenantKeys,
    /// Session ids whose state changed, for SSE subscribers on this node.
    events: broadcast::Sender<String>,
    pub(super) status_cache: super::verify::StatusCache,
}

/// What the response endpoint answers the wallet.
pub struct ResponseOutcome {
    pub redirect_uri: Option<String>,
}

fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl VerifierService {
    pub fn new(ctx: RoleContext, cfg: VerifierConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            keys: crate::roles::tenant_keys::TenantKeys::new(&ctx, ks::KEYS, "verifier"),
            ctx,
            cfg,
            events,
            status_cache: Default::default(),
        }
    }

    fn now(&self) -> i64 {
        self.ctx.clock.now_secs()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    fn base(&self, verifier: &str) -> String {
        format!("{}/verifiers/{verifier}", self.ctx.public_url)
    }

    // ---- tenants -------------------------------------------------------------------------------

    pub async fn get_verifier(&self, id: &str) -> ApiResult<Verifier> {
        self.ctx
            .store
            .get_json::<Verifier>(ks::TENANTS, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no verifier `{id}`")))
    }

    /// The issuers `v` trusts: its `trusted_issuers` when it lists any (an explicit list is the
    /// whole truth); when it lists none, in sandbox mode this node's own issuer tenants (read from
    /// the issuer role's records, whichever node wrote them) and in production no one; everything
    /// when `verifier.trust = "any"`.
    pub(super) async fn trust(&self, v: &Verifier) -> ApiResult<Trust> {
        if self.cfg.trust == crate::config::VerifierTrust::Any {
            return Ok(Trust::Any);
        }
        let mut list = v.trusted_issuers.clone();
        if list.is_empty() && self.ctx.mode == crate::config::Mode::Sandbox {
            // The issuer role's tenant records (keyspace `issuer_tenants`); read as data so a
            // verifier-only build needs no issuer code.
            for (_, issuer) in self
                .ctx
                .store
                .scan_json::<Value>("issuer_tenants", "", 10_000)
                .await?
            {
                if let Some(did) = issuer["did"].as_str() {
                    if !list.iter().any(|t| t == did) {
                        list.push(did.to_string());
                    }
                }
            }
        }
        Ok(Trust::Only(list))
    }

    pub async fn list_verifiers(&self) -> ApiResult<Vec<Verifier>> {
        Ok(self
            .ctx
            .store
            .scan_json::<Verifier>(ks::TENANTS, "", 10_000)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub async fn create_verifier(&self, req: CreateVerifier) -> ApiResult<Verifier> {
        if !id_ok(&req.id) {
            return Err(ApiError::validation(
                "verifier id: 1-64 characters of a-z, 0-9, - and _",
            ));
        }
        if self.ctx.store.get(ks::TENANTS, &req.id).await?.is_some() {
            return Err(ApiError::conflict(format!("verifier `{}` exists", req.id)));
        }
        let mut v = Verifier {
            id: req.id.clone(),
            display_name: req.display_name.unwrap_or_else(|| req.id.clone()),
            key_type: None,
            did: None,
            verification_method: None,
            key_fingerprint: None,
            trusted_issuers: req.trusted_issuers,
            created_at: self.now(),
        };
        if let Some(kt) = req.signing_key_type {
            // insert-only: a concurrent creator's key wins for both (see TenantKeys::put_new)
            let key = self.keys.put_new(&v.id, SigningKey::generate(kt)).await?;
            if key.key_type() != kt {
                return Err(ApiError::conflict(format!(
                    "verifier `{}` is being created concurrently with another key type",
                    v.id
                )));
            }
            let did = did::did_key(&key.verifying_key());
            v.key_type = Some(kt);
            v.verification_method = Some(did::verification_method(&did));
            v.did = Some(did);
            v.key_fingerprint = Some(key.verifying_key().thumbprint());
        }
        if !self
            .ctx
            .store
            .insert_new_json(ks::TENANTS, &v.id, &v, None)
            .await?
        {
            return Err(ApiError::conflict(format!("verifier `{}` exists", v.id)));
        }
        Ok(v)
    }

    pub async fn update_verifier(&self, id: &str, req: UpdateVerifier) -> ApiResult<Verifier> {
        self.ctx
            .store
            .update_json::<Verifier, ApiError, _>(ks::TENANTS, id, None, |mut v| {
                if let Some(n) = &req.display_name {
                    v.display_name = n.clone();
                }
                if let Some(t) = &req.trusted_issuers {
                    v.trusted_issuers = t.clone();
                }
                Ok(v)
            })
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no verifier `{id}`")))
    }

    pub async fn delete_verifier(&self, id: &str) -> ApiResult<()> {
        if id == "default" {
            return Err(ApiError::conflict("the default verifier cannot be deleted"));
        }
        if !self.ctx.store.delete(ks::TENANTS, id).await? {
            return Err(ApiError::not_found(format!("no verifier `{id}`")));
        }
        self.keys.remove(id).await
    }

    async fn signing_key(&self, v: &Verifier) -> anyhow::Result<Option<Arc<SigningKey>>> {
        match &v.key_fingerprint {
            None => Ok(None),
            Some(fp) => self.keys.get(&v.id, fp).await.map(Some),
        }
    }

    pub async fn init(&self) -> anyhow::Result<()> {
        if self.cfg.trust == crate::config::VerifierTrust::Any {
            tracing::warn!("verifier.trust = \"any\": every issuer whose signature verifies is trusted; for conformance suites and development only");
        }
        if self.ctx.store.get(ks::TENANTS, "default").await?.is_none() {
            // Signed request objects by default: wallets (e.g. the Animo client) refuse unsigned
            // request objects fetched by reference.
            let req = CreateVerifier {
                id: "default".into(),
                display_name: Some("idstack sandbox verifier".into()),
                signing_key_type: Some(crate::crypto::KeyType::Ed25519),
                trusted_issuers: Vec::new(),
            };
            match self.create_verifier(req).await {
                Ok(_)
                | Err(ApiError {
                    code: Code::Conflict,
                    ..
                }) => {}
                Err(e) => anyhow::bail!("creating the default verifier: {e}"),
            }
        }
        for v in self
            .list_verifiers()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            self.signing_key(&v).await?;
        }
        Ok(())
    }

    // ---- sessions ------------------------------------------------------------------------------

    pub async fn create_session(
        &self,
        verifier_id: &str,
        req: CreateSession,
    ) -> ApiResult<SessionCreated> {
        let v = self.get_verifier(verifier_id).await?;
        if self.trust(&v).await? == Trust::Only(Vec::new()) {
            return Err(ApiError::validation(format!(
                "verifier `{verifier_id}` trusts no issuer: set its trusted_issuers (or verifier.trust = \"any\" for development)"
            )));
        }
        match (&req.dcql_query, &req.presentation_definition) {
            (Some(q), None) => validate_dcql(q)?,
            (None, Some(pd)) => {
                if pd["input_descriptors"].as_array().is_none_or(Vec::is_empty) {
                    return Err(ApiError::validation(
                        "presentation_definition needs input_descriptors",
                    ));
                }
            }
            _ => {
                return Err(ApiError::validation(
                    "send exactly one of dcql_query or presentation_definition",
                ))
            }
        }
        let ttl = req
            .ttl_seconds
            .unwrap_or(self.cfg.default_session_ttl_seconds);
        if ttl == 0 || ttl > 7 * 86_400 {
            return Err(ApiError::validation("ttl_seconds must be 1..=604800"));
        }
        let policies = match req.policies {
            None => ALL_POLICIES.iter().map(|p| p.to_string()).collect(),
            Some(list) => {
                if let Some(bad) = list.iter().find(|p| !ALL_POLICIES.contains(&p.as_str())) {
                    return Err(ApiError::validation(format!(
                        "unknown policy `{bad}`; known: {}",
                        ALL_POLICIES.join(", ")
                    )));
                }
                let mut l: Vec<String> = list;
                for must in [
                    "signature",
                    "holder_binding",
                    "nonce_audience",
                    "query_match",
                ] {
                    if !l.iter().any(|p| p == must) {
                        l.push(must.into());
                    }
                }
                l
            }
        };
        for u in [&req.webhook_url, &req.success_redirect]
            .into_iter()
            .flatten()
        {
            if !(u.starts_with("https://") || u.starts_with("http://")) || u.len() > 2048 {
                return Err(ApiError::validation(
                    "webhook_url and success_redirect must be http(s) URLs",
                ));
            }
        }
        let id = random_id();
        let response_uri = format!("{}/responses/{id}", self.base(verifier_id));
        // OpenID4VP 1.0 client identifier prefixes; presentation_definition requests are for
        // pre-1.0 wallets, which expect the draft form (plain id + client_id_scheme).
        let legacy = req.presentation_definition.is_some();
        let client_id = match (&v.did, legacy) {
            (Some(d), false) => format!("decentralized_identifier:{d}"),
            (None, false) => format!("redirect_uri:{response_uri}"),
            (Some(d), true) => d.clone(),
            (None, true) => response_uri.clone(),
        };
        let response_mode = req.response_mode.unwrap_or(ResponseMode::DirectPost);
        let encryption_key = match response_mode {
            ResponseMode::DirectPost => None,
            ResponseMode::DirectPostJwt => {
                let k = EncryptionKey::generate();
                let sealed = self
                    .ctx
                    .sealer
                    .seal(format!("session-enc/{id}").as_bytes(), &k.to_bytes())
                    .map_err(ApiError::internal)?;
                Some(crate::crypto::b64url(sealed))
            }
        };
        let now = self.now();
        let session = Session {
            id: id.clone(),
            verifier: verifier_id.to_string(),
            nonce: random_token(24),
            state_param: random_token(24),
            client_id: client_id.clone(),
            response_uri,
            dcql_query: req.dcql_query,
            presentation_definition: req.presentation_definition,
            response_mode,
            policies,
            require_status: req.require_status.unwrap_or(false),
            webhook_url: req.webhook_url,
            success_redirect: req.success_redirect,
            encryption_key,
            created_at: now,
            expires_at: now + ttl as i64,
            state: SessionState::Pending,
            verified: false,
            policy_results: Vec::new(),
            credentials: Vec::new(),
            error: None,
            failed_attempts: Vec::new(),
            completed_at: None,
        };
        // Kept a day past expiry so the result (or "expired") stays readable.
        self.ctx
            .store
            .put_json(
                ks::SESSIONS,
                &session_key(verifier_id, &id),
                &session,
                Some(Duration::from_secs(ttl + 86_400)),
            )
            .await?;
        let request_uri = format!("{}/requests/{id}", self.base(verifier_id));
        let authorization_request = if v.did.is_some() {
            format!(
                "openid4vp://?client_id={}&request_uri={}",
                urlencode(&client_id),
                urlencode(&request_uri)
            )
        } else {
            // redirect_uri client identifiers cannot sign, and wallets refuse unsigned request
            // objects by reference: pass the request by value.
            let mut q = format!(
                "openid4vp://?client_id={}&response_type=vp_token&response_mode={}&response_uri={}&nonce={}&state={}",
                urlencode(&client_id),
                response_mode.as_str(),
                urlencode(&session.response_uri),
                urlencode(&session.nonce),
                urlencode(&session.state_param)
            );
            if let Some(dq) = &session.dcql_query {
                q.push_str(&format!("&dcql_query={}", urlencode(&dq.to_string())));
            }
            if let Some(pd) = &session.presentation_definition {
                q.push_str(&format!(
                    "&presentation_definition={}&client_id_scheme=redirect_uri",
                    urlencode(&pd.to_string())
                ));
            }
            q.push_str(&format!(
                "&client_metadata={}",
                urlencode(&client_metadata(&v, &session, self)?.to_string())
            ));
            q
        };
        Ok(SessionCreated {
            id,
            authorization_request,
            request_uri,
            expires_at: session.expires_at,
        })
    }

    async fn load_session(&self, verifier_id: &str, id: &str) -> ApiResult<Session> {
        self.ctx
            .store
            .get_json::<Session>(ks::SESSIONS, &session_key(verifier_id, id))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no session `{id}`")))
    }

    pub async fn session_view(&self, verifier_id: &str, id: &str) -> ApiResult<SessionView> {
        self.get_verifier(verifier_id).await?;
        Ok(self.load_session(verifier_id, id).await?.view(self.now()))
    }

    pub async fn list_sessions(&self, verifier_id: &str) -> ApiResult<Vec<SessionView>> {
        self.get_verifier(verifier_id).await?;
        let now = self.now();
        Ok(self
            .ctx
            .store
            .scan_json::<Session>(ks::SESSIONS, &format!("{verifier_id}/"), 1000)
            .await?
            .into_iter()
            .map(|(_, s)| s.view(now))
            .collect())
    }

    /// The request object (`request_uri`): signed when the verifier has a key, else `alg: none`.
    pub async fn request_object(
        &self,
        verifier_id: &str,
        id: &str,
        wallet_nonce: Option<String>,
    ) -> ApiResult<String> {
        let v = self.get_verifier(verifier_id).await?;
        let s = self.load_session(verifier_id, id).await?;
        if s.expires_at <= self.now() {
            return Err(ApiError::new(
                Code::Gone,
                "this verification session has expired",
            ));
        }
        if s.state != SessionState::Pending {
            return Err(ApiError::new(
                Code::Gone,
                "this verification session is already finished",
            ));
        }
        let client_metadata = client_metadata(&v, &s, self)?;
        let now = self.now();
        let mut payload = json!({
            "response_type": "vp_token",
            "client_id": s.client_id,
            "response_uri": s.response_uri,
            "response_mode": s.response_mode.as_str(),
            "nonce": s.nonce,
            "state": s.state_param,
            "client_metadata": client_metadata,
            "iat": now,
            "exp": s.expires_at,
            "aud": "https://self-issued.me/v2",
        });
        if let Some(q) = &s.dcql_query {
            payload["dcql_query"] = q.clone();
        }
        if let Some(pd) = &s.presentation_definition {
            payload["presentation_definition"] = pd.clone();
            payload["client_id_scheme"] = json!(if v.did.is_some() {
                "did"
            } else {
                "redirect_uri"
            });
        }
        if let Some(wn) = wallet_nonce {
            payload["wallet_nonce"] = json!(wn);
        }
        match self.signing_key(&v).await.map_err(ApiError::internal)? {
            Some(key) => Ok(jws::sign(
                &key,
                json!({"typ": "oauth-authz-req+jwt", "kid": v.verification_method}),
                &payload,
            )),
            None => {
                let h = crate::crypto::b64url(
                    json!({"alg": "none", "typ": "oauth-authz-req+jwt"}).to_string(),
                );
                Ok(format!(
                    "{h}.{}.",
                    crate::crypto::b64url(payload.to_string())
                ))
            }
        }
    }

    fn encryption_key(&self, id: &str, sealed_b64: &str) -> ApiResult<EncryptionKey> {
        let sealed = crate::crypto::b64url_decode(sealed_b64).map_err(ApiError::internal)?;
        let raw = self
            .ctx
            .sealer
            .open(format!("session-enc/{id}").as_bytes(), &sealed)
            .map_err(ApiError::internal)?;
        EncryptionKey::from_bytes(&raw).map_err(ApiError::internal)
    }

    /// The wallet's authorization response (direct_post / direct_post.jwt form fields).
    pub async fn handle_response(
        &self,
        verifier_id: &str,
        id: &str,
        form: HashMap<String, String>,
    ) -> Result<ResponseOutcome, OAuthError> {
        let v = self.get_verifier(verifier_id).await.map_err(|e| {
            OAuthError::unless_unavailable(e, OAuthError::invalid_request("unknown verifier"))
        })?;
        let key = session_key(verifier_id, id);
        let store = &self.ctx.store;
        let Some(raw) = store.get(ks::SESSIONS, &key).await? else {
            return Err(OAuthError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                "invalid_request",
                "unknown verification session",
            ));
        };
        let session: Session = serde_json::from_slice(&raw).map_err(OAuthError::server)?;
        let now = self.now();
        if session.expires_at <= now {
            return Err(OAuthError::new(
                actix_web::http::StatusCode::GONE,
                "invalid_request",
                "this verification session has expired",
            ));
        }
        if session.state != SessionState::Pending {
            return Err(OAuthError::invalid_request(
                "this verification session has already been answered",
            ));
        }
        // direct_post.jwt: everything is inside the encrypted `response`.
        let fields: HashMap<String, Value> = match (session.response_mode, form.get("response")) {
            (ResponseMode::DirectPostJwt, Some(jwe_s)) => {
                let sealed = session
                    .encryption_key
                    .as_deref()
                    .ok_or_else(|| OAuthError::server("session has no encryption key"))?;
                let k = self
                    .encryption_key(&session.id, sealed)
                    .map_err(OAuthError::server)?;
                let (_, plain) = jwe::decrypt(jwe_s, &k)
                    .map_err(|e| OAuthError::invalid_request(format!("response JWE: {e}")))?;
                let v: Value = serde_json::from_slice(&plain)
                    .map_err(|e| OAuthError::invalid_request(format!("decrypted response: {e}")))?;
                v.as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .collect()
            }
            (ResponseMode::DirectPostJwt, None) if !form.contains_key("error") => {
                return Err(OAuthError::invalid_request(
                    "this session expects an encrypted `response` (direct_post.jwt)",
                ));
            }
            _ => form
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        };
        let state_ok =
            fields.get("state").and_then(Value::as_str) == Some(session.state_param.as_str());
        if !state_ok {
            return Err(OAuthError::invalid_request(
                "state does not match the session",
            ));
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
            let vp_token = match fields.get("vp_token") {
                Some(Value::String(s)) => {
                    serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.clone()))
                }
                Some(other) => other.clone(),
                None => return Err(OAuthError::invalid_request("vp_token is missing")),
            };
            let submission = match fields.get("presentation_submission") {
                Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
                Some(other) => Some(other.clone()),
                None => None,
            };
            let trust = self
                .trust(&v)
                .await
                .map_err(|e| OAuthError::unless_unavailable(e, OAuthError::server("trust")))?;
            let transcript = self.mdoc_transcript(&session).map_err(OAuthError::server)?;
            let anchors = self.anchors().await;
            let ctx = Ctx {
                mdoc_transcript: Some(&transcript),
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
            };
            let outcome = query::evaluate(&ctx, &vp_token, submission.as_ref()).await;
            let results = outcome.results(&session.policies);
            let verified = results.iter().all(|r| r.passed);
            if !verified && session.failed_attempts.len() + 1 < MAX_FAILED_ATTEMPTS {
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
                        &key,
                        Some(raw),
                        Some((
                            crate::store::to_json(&updated)?,
                            Some(Duration::from_secs(
                                (session.expires_at - now).max(1) as u64 + 86_400,
                            )),
                        )),
                    )
                    .await?;
                self.notify(&updated);
                return Err(OAuthError::invalid_request(format!(
                    "presentation rejected: {}",
                    updated.failed_attempts.last().cloned().unwrap_or_default()
                )));
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
            return Err(OAuthError::invalid_request(
                "this verification session has already been answered",
            ));
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

    fn notify(&self, s: &Session) {
        let _ = self.events.send(s.id.clone());
        if s.state == SessionState::Pending {
            return;
        }
        if let Some(url) = s.webhook_url.clone() {
            let ctx = self.ctx.clone();
            let event = json!({"type": "verification.finished", "verifier": s.verifier, "session": s.view(self.now())});
            tokio::spawn(async move {
                crate::http::webhook::deliver(&ctx.http, &ctx.sealer, &url, &event).await
            });
        }
    }
}

impl VerifierService {
    /// The SessionTranscript an mdoc in this session's response must be device-signed over
    /// (OpenID4VP 1.0 Appendix B.2.6.1): client_id, nonce, the response encryption key's
    /// thumbprint (direct_post.jwt) and the response_uri.
    /// The X.509 anchors: `x509.trust_anchors`, plus this deployment's sandbox mdoc IACA in
    /// sandbox mode (as the sandbox verifier trusts its own issuers).
    async fn anchors(&self) -> crate::crypto::x509::TrustAnchors {
        let mut anchors = (*self.ctx.x509_anchors).clone();
        if self.ctx.mode == crate::config::Mode::Sandbox {
            if let Some(der) = crate::roles::mdoc_pki::sandbox_anchor(&self.ctx).await {
                use x509_cert::der::Decode;
                if let Ok(c) = x509_cert::Certificate::from_der(&der) {
                    anchors = anchors.with([c]);
                }
            }
        }
        anchors
    }

    fn mdoc_transcript(&self, s: &Session) -> ApiResult<Vec<u8>> {
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

fn client_metadata(v: &Verifier, s: &Session, svc: &VerifierService) -> ApiResult<Value> {
    let algs = json!(["EdDSA", "ES256", "ES256K"]);
    let mut m = if s.presentation_definition.is_some() {
        // the draft (pre-1.0) shape that presentation_definition wallets understand
        json!({
            "vp_formats": {
                "vc+sd-jwt": {"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs},
                "dc+sd-jwt": {"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs},
                "jwt_vp_json": {"alg": algs},
                "jwt_vc_json": {"alg": algs},
            },
            "client_name": v.display_name,
        })
    } else {
        // Every format a query of this session asks for (OID4VP 1.0 §5.1, Appendix B).
        let mut formats = serde_json::Map::new();
        formats.insert(
            "dc+sd-jwt".into(),
            json!({"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs}),
        );
        formats.insert("jwt_vc_json".into(), json!({"alg_values": algs}));
        let asked = s
            .dcql_query
            .as_ref()
            .and_then(|q| q["credentials"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c["format"].as_str());
        for f in asked {
            let entry = match f {
                "vc+sd-jwt" => json!({"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs}),
                "ldp_vc" => json!({
                    "proof_type_values": ["DataIntegrityProof"],
                    "cryptosuite_values": ["eddsa-rdfc-2022"],
                }),
                // COSE ES256 (-7) for issuerAuth and deviceSignature (OID4VP 1.0 B.2.1)
                "mso_mdoc" => json!({
                    "issuerauth_alg_values": [-7],
                    "deviceauth_alg_values": [-7],
                }),
                _ => continue,
            };
            formats.insert(f.to_string(), entry);
        }
        json!({
            "vp_formats_supported": formats,
            "client_name": v.display_name,
        })
    };
    if let Some(sealed) = &s.encryption_key {
        let k = svc.encryption_key(&s.id, sealed)?;
        m["jwks"] = json!({"keys": [k.public_jwk(&format!("enc-{}", s.id))]});
        m["encrypted_response_enc_values_supported"] = json!(["A128GCM", "A256GCM"]);
        // pre-1.0 wallets read these
        m["authorization_encrypted_response_alg"] = json!("ECDH-ES");
        m["authorization_encrypted_response_enc"] = json!("A256GCM");
    }
    Ok(m)
}

fn validate_dcql(q: &Value) -> ApiResult<()> {
    let creds = q["credentials"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::validation("dcql_query.credentials must be a non-empty array"))?;
    let mut ids = Vec::new();
    for c in creds {
        let id = c["id"]
            .as_str()
            .filter(|i| {
                !i.is_empty()
                    && i.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            })
            .ok_or_else(|| {
                ApiError::validation(
                    "each credential query needs an id of letters, digits, _ and -",
                )
            })?;
        if ids.contains(&id) {
            return Err(ApiError::validation(format!(
                "duplicate credential query id `{id}`"
            )));
        }
        ids.push(id);
        match c["format"].as_str() {
            Some("dc+sd-jwt" | "vc+sd-jwt" | "jwt_vc_json" | "ldp_vc") => {}
            Some("mso_mdoc") => {
                if !c["meta"]["doctype_value"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty())
                {
                    return Err(ApiError::validation(format!(
                        "credential query `{id}`: mso_mdoc needs meta.doctype_value (e.g. \"org.iso.18013.5.1.mDL\")"
                    )));
                }
            }
            other => {
                return Err(ApiError::validation(format!(
                    "credential query `{id}`: unsupported format {other:?}"
                )))
            }
        }
        // `meta` is REQUIRED (OID4VP 1.0 §6.1); its members are per format (Appendix B).
        let meta = c["meta"].as_object().ok_or_else(|| {
            ApiError::validation(format!(
                "credential query `{id}`: `meta` is required (an object; e.g. {{\"vct_values\": [...]}} for dc+sd-jwt, {{\"type_values\": [[...]]}} for W3C formats, or {{}})"
            ))
        })?;
        if let Some(v) = meta.get("vct_values") {
            let ok = v.as_array().is_some_and(|a| {
                !a.is_empty() && a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
            });
            if !ok {
                return Err(ApiError::validation(format!(
                    "credential query `{id}`: meta.vct_values must be a non-empty array of strings"
                )));
            }
        }
        if let Some(v) = meta.get("type_values") {
            let ok = v.as_array().is_some_and(|sets| {
                !sets.is_empty()
                    && sets.iter().all(|set| {
                        set.as_array().is_some_and(|ts| {
                            !ts.is_empty()
                                && ts.iter().all(|t| t.as_str().is_some_and(|s| !s.is_empty()))
                        })
                    })
            });
            if !ok {
                return Err(ApiError::validation(format!(
                    "credential query `{id}`: meta.type_values must be a non-empty array of non-empty arrays of strings"
                )));
            }
        }
        if let Some(b) = c.get("require_cryptographic_holder_binding") {
            if !b.is_boolean() {
                return Err(ApiError::validation(format!(
                    "credential query `{id}`: require_cryptographic_holder_binding must be a boolean"
                )));
            }
        }
        if let Some(claims) = c.get("claims") {
            let ok = claims.as_array().is_some_and(|a| {
                a.iter()
                    .all(|cl| cl["path"].as_array().is_some_and(|p| !p.is_empty()))
            });
            if !ok {
                return Err(ApiError::validation(format!(
                    "credential query `{id}`: every claim needs a non-empty path"
                )));
            }
        }
    }
    Ok(())
}

fn session_key(verifier: &str, id: &str) -> String {
    format!("{verifier}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    #[tokio::test]
    async fn expired_sessions_are_410_and_reported_expired() {
        let clock = FakeClock::new(1_800_000_000_000);
        let svc = VerifierService::new(
            RoleContext::for_tests(clock.clone()),
            VerifierConfig::default(),
        );
        svc.init().await.unwrap();
        // no issuer role here: the default verifier trusts one named issuer
        svc.update_verifier(
            "default",
            UpdateVerifier {
                display_name: None,
                trusted_issuers: Some(vec!["did:example:issuer".into()]),
            },
        )
        .await
        .unwrap();
        let req = CreateSession {
            dcql_query: Some(
                json!({"credentials": [{"id": "a", "format": "dc+sd-jwt", "meta": {}}]}),
            ),
            presentation_definition: None,
            response_mode: None,
            ttl_seconds: Some(30),
            policies: None,
            require_status: None,
            webhook_url: None,
            success_redirect: None,
        };
        let created = svc.create_session("default", req).await.unwrap();
        assert!(svc
            .request_object("default", &created.id, None)
            .await
            .is_ok());
        clock.advance_ms(31_000);
        let e = svc
            .request_object("default", &created.id, None)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Gone);
        let mut form = HashMap::new();
        form.insert("vp_token".to_string(), "{}".to_string());
        form.insert("state".to_string(), "x".to_string());
        let e = svc
            .handle_response("default", &created.id, form)
            .await
            .err()
            .unwrap();
        assert_eq!(e.status.as_u16(), 410);
        assert_eq!(
            svc.session_view("default", &created.id)
                .await
                .unwrap()
                .state,
            SessionState::Expired
        );
    }
}
