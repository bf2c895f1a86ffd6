//! Verification of a wallet's presentation against a session: every check is a named policy whose
//! result (passed, reason) goes into the session result.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::model::{PolicyResult, PresentedCredential, Session, ALL_POLICIES};
use crate::crypto::{did, jws, sdjwt, status::StatusArray, VerifyingKey};

const SKEW: i64 = 60;
const KB_MAX_AGE: i64 = 300;

/// Context a verification runs in.
pub struct Ctx<'a> {
    pub session: &'a Session,
    pub now: i64,
    pub http: &'a reqwest::Client,
    pub trusted_issuers: &'a [String],
    pub status_cache: &'a StatusCache,
}

/// Fetched status-list tokens by URI with their ETag: every use revalidates with `If-None-Match`
/// (a revocation is seen at once; an unchanged list costs a 304 with no body). Only tokens whose
/// signature verified are kept, and the cache is bounded by total bytes
/// (`http.outbound.status_list_cache_bytes`), oldest first out. The signature is re-checked on
/// every use.
#[derive(Default)]
pub struct StatusCache {
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// uri → (etag, token, generation)
    entries: std::collections::HashMap<String, (String, String, u64)>,
    /// Insertion order for eviction: (uri, generation); stale generations are skipped.
    order: std::collections::VecDeque<(String, u64)>,
    bytes: usize,
    next_gen: u64,
}

impl StatusCache {
    fn get(&self, uri: &str) -> Option<(String, String)> {
        let m = self.inner.lock().ok()?;
        m.entries.get(uri).map(|(e, t, _)| (e.clone(), t.clone()))
    }

    /// Stores a verified token, evicting the oldest entries to stay within `max_bytes`.
    fn put(&self, uri: &str, etag: String, token: String, max_bytes: usize) {
        let size = uri.len() + etag.len() + token.len();
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        if let Some((e, t, _)) = m.entries.remove(uri) {
            m.bytes -= uri.len() + e.len() + t.len();
        }
        if size > max_bytes {
            return;
        }
        while m.bytes + size > max_bytes {
            let Some((old, generation)) = m.order.pop_front() else {
                break;
            };
            if m.entries
                .get(&old)
                .is_some_and(|(_, _, g)| *g == generation)
            {
                if let Some((e, t, _)) = m.entries.remove(&old) {
                    m.bytes -= old.len() + e.len() + t.len();
                }
            }
        }
        let generation = m.next_gen;
        m.next_gen += 1;
        m.bytes += size;
        m.entries.insert(uri.to_string(), (etag, token, generation));
        m.order.push_back((uri.to_string(), generation));
        // Stale order entries (replaced URIs) are bounded by the live ones.
        if m.order.len() > 2 * m.entries.len() + 16 {
            let CacheInner { entries, order, .. } = &mut *m;
            order.retain(|(u, g)| entries.get(u).is_some_and(|(_, _, eg)| eg == g));
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().map(|m| m.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod status_cache_tests {
    use super::StatusCache;

    #[test]
    fn bounded_by_bytes_oldest_out_replacements_counted_once() {
        let c = StatusCache::default();
        let token = "t".repeat(1000);
        for i in 0..100 {
            c.put(&format!("https://s/{i}"), "e".into(), token.clone(), 10_000);
            assert!(c.bytes() <= 10_000);
        }
        assert!(c.get("https://s/0").is_none());
        assert!(c.get("https://s/99").is_some());
        // Replacing one URI over and over keeps one entry's bytes.
        for _ in 0..100 {
            c.put("https://s/99", "e".into(), token.clone(), 10_000);
        }
        assert!(c.bytes() <= 10_000);
        // A token larger than the whole budget is not kept (and drops the old one).
        c.put("https://s/99", "e".into(), "x".repeat(20_000), 10_000);
        assert!(c.get("https://s/99").is_none());
    }
}

/// Accumulates policy outcomes: a policy passes when it ran and nothing failed it.
#[derive(Default)]
pub struct Outcome {
    failures: BTreeMap<&'static str, Vec<String>>,
    ran: std::collections::BTreeSet<&'static str>,
    pub credentials: Vec<PresentedCredential>,
}

impl Outcome {
    pub fn pass(&mut self, policy: &'static str) {
        self.ran.insert(policy);
    }
    pub fn fail(&mut self, policy: &'static str, reason: impl Into<String>) {
        self.ran.insert(policy);
        self.failures.entry(policy).or_default().push(reason.into());
    }
    pub fn results(&self, enabled: &[String]) -> Vec<PolicyResult> {
        ALL_POLICIES
            .iter()
            .filter(|p| enabled.iter().any(|e| e == *p))
            .map(|p| match self.failures.get(p) {
                Some(reasons) => PolicyResult {
                    name: p.to_string(),
                    passed: false,
                    reason: Some(reasons.join("; ")),
                },
                None if self.ran.contains(p) => PolicyResult {
                    name: p.to_string(),
                    passed: true,
                    reason: None,
                },
                None => PolicyResult {
                    name: p.to_string(),
                    passed: false,
                    reason: Some("not evaluated: no credential reached this check".into()),
                },
            })
            .collect()
    }
}

/// A verified credential as the query matcher sees it.
pub struct Checked {
    pub query_id: String,
    pub format: String,
    /// The object DCQL claim paths are resolved against (SD-JWT: disclosed claims; W3C: the VC).
    pub root: Value,
    /// vct (SD-JWT) or types (W3C).
    pub vct: Option<String>,
    pub types: Vec<String>,
    pub issuer: Option<String>,
}

async fn issuer_key(kid: &str, http: &reqwest::Client) -> Result<VerifyingKey, String> {
    did::resolve(kid, http).await.map_err(|e| e.to_string())
}

fn check_time(out: &mut Outcome, payload: &Value, now: i64, what: &str) {
    if let Some(exp) = payload["exp"].as_i64() {
        if exp + SKEW <= now {
            out.fail("validity", format!("{what} expired at {exp}"));
            return;
        }
    }
    if let Some(nbf) = payload["nbf"].as_i64() {
        if nbf - SKEW > now {
            out.fail("validity", format!("{what} not valid before {nbf}"));
            return;
        }
    }
    out.pass("validity");
}

fn check_issuer(out: &mut Outcome, ctx: &Ctx<'_>, iss: &str) {
    if ctx.trusted_issuers.is_empty() || ctx.trusted_issuers.iter().any(|t| t == iss) {
        out.pass("issuer_allowlist");
    } else {
        out.fail("issuer_allowlist", format!("issuer {iss} is not trusted"));
    }
}

/// Fetches a status list token (size/time bounded, through the outbound guard) and verifies it
/// with the issuer's key; only a verified token is cached. Error texts never carry the remote body.
async fn fetch_status(ctx: &Ctx<'_>, uri: &str, key: &VerifyingKey) -> Result<Value, String> {
    use crate::http::outbound::{limits, read_capped};
    if !(uri.starts_with("https://") || uri.starts_with("http://")) {
        return Err("status list URI is not http(s)".into());
    }
    let limits = limits();
    let cached = ctx.status_cache.get(uri);
    let mut req = ctx.http.get(uri).timeout(Duration::from_secs(5));
    if let Some((etag, _)) = &cached {
        req = req.header("If-None-Match", etag);
    }
    let r = crate::http::outbound::send(req)
        .await
        .map_err(|e| format!("status list: {e}"))?;
    let (token, fresh_etag) = match (r.status().as_u16(), cached) {
        (304, Some((_, t))) => (t, None),
        (s, _) if (200..300).contains(&s) => {
            let etag = r
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .filter(|e| e.len() <= 256)
                .map(str::to_string);
            let body = read_capped(r, limits.max_body_bytes)
                .await
                .map_err(|e| format!("status list: {e}"))?;
            (String::from_utf8_lossy(&body).trim().to_string(), etag)
        }
        (s, _) => return Err(format!("status list: HTTP {s}")),
    };
    let (_, payload) =
        jws::verify(&token, key).map_err(|e| format!("status list signature: {e}"))?;
    if let Some(etag) = fresh_etag {
        ctx.status_cache
            .put(uri, etag, token, limits.status_list_cache_bytes);
    }
    Ok(payload)
}

/// dc+sd-jwt presentation with key binding.
pub async fn sd_jwt(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    presentation: &str,
) -> Option<Checked> {
    let parsed = match sdjwt::parse(presentation) {
        Ok(p) => p,
        Err(e) => {
            out.fail("signature", format!("{query_id}: not an SD-JWT: {e}"));
            return None;
        }
    };
    let (header, payload) = match jws::decode_unverified(&parsed.jwt) {
        Ok((h, p, _, _)) => (h, p),
        Err(e) => {
            out.fail("signature", format!("{query_id}: {e}"));
            return None;
        }
    };
    let kid = did::signer_kid(&header, &payload);
    let key = match issuer_key(&kid, ctx.http).await {
        Ok(k) => k,
        Err(e) => {
            out.fail("signature", format!("{query_id}: issuer key: {e}"));
            return None;
        }
    };
    if let Err(e) = jws::verify(&parsed.jwt, &key) {
        out.fail("signature", format!("{query_id}: issuer signature: {e}"));
        return None;
    }
    out.pass("signature");
    let verified = match sdjwt::verify(presentation, &key) {
        Ok(v) => {
            out.pass("disclosure_integrity");
            v
        }
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("KB-JWT") || msg.contains("signature") {
                out.fail("holder_binding", format!("{query_id}: {msg}"));
            } else {
                out.fail("disclosure_integrity", format!("{query_id}: {msg}"));
            }
            return None;
        }
    };
    match &verified.key_binding {
        None => out.fail("holder_binding", format!("{query_id}: no key-binding JWT")),
        Some(kb) => {
            out.pass("holder_binding");
            let aud_ok = kb["aud"].as_str() == Some(ctx.session.client_id.as_str());
            let nonce_ok = kb["nonce"].as_str() == Some(ctx.session.nonce.as_str());
            let iat = kb["iat"].as_i64().unwrap_or(0);
            if !nonce_ok {
                out.fail(
                    "nonce_audience",
                    format!("{query_id}: KB-JWT nonce does not match the session"),
                );
            } else if !aud_ok {
                out.fail(
                    "nonce_audience",
                    format!("{query_id}: KB-JWT aud is not {}", ctx.session.client_id),
                );
            } else if iat < ctx.now - KB_MAX_AGE || iat > ctx.now + SKEW {
                out.fail(
                    "nonce_audience",
                    format!("{query_id}: KB-JWT iat outside the accepted window"),
                );
            } else {
                out.pass("nonce_audience");
            }
        }
    }
    check_time(out, &payload, ctx.now, query_id);
    let iss = payload["iss"].as_str().unwrap_or_default().to_string();
    check_issuer(out, ctx, &iss);
    match payload["status"]["status_list"].as_object() {
        None => out.pass("status"),
        Some(sl) => {
            let idx = sl.get("idx").and_then(Value::as_u64);
            let uri = sl.get("uri").and_then(Value::as_str).unwrap_or_default();
            match (idx, fetch_status(ctx, uri, &key).await) {
                (Some(idx), Ok(list)) => {
                    let bits = list["status_list"]["bits"].as_u64().unwrap_or(1) as u8;
                    let lst = list["status_list"]["lst"].as_str().unwrap_or_default();
                    match StatusArray::from_token_lst(bits, lst).and_then(|a| a.get_lsb(idx)) {
                        Ok(0) => out.pass("status"),
                        Ok(1) => out.fail("status", format!("{query_id}: revoked")),
                        Ok(2) => out.fail("status", format!("{query_id}: suspended")),
                        Ok(v) => out.fail("status", format!("{query_id}: status {v}")),
                        Err(e) => out.fail("status", format!("{query_id}: status list: {e}")),
                    }
                }
                (None, _) => out.fail("status", format!("{query_id}: status entry has no idx")),
                (_, Err(e)) => out.fail("status", format!("{query_id}: {e}")),
            }
        }
    }
    let mut claims: Map<String, Value> = verified.claims.clone();
    for k in [
        "cnf", "status", "iat", "nbf", "exp", "iss", "vct", "_sd", "_sd_alg",
    ] {
        claims.remove(k);
    }
    out.credentials.push(PresentedCredential {
        query_id: query_id.to_string(),
        format: "dc+sd-jwt".into(),
        issuer: Some(iss.clone()),
        claims: claims.clone(),
    });
    Some(Checked {
        query_id: query_id.to_string(),
        format: "dc+sd-jwt".into(),
        root: Value::Object(verified.claims),
        vct: payload["vct"].as_str().map(str::to_string),
        types: Vec::new(),
        issuer: Some(iss),
    })
}

/// jwt_vc_json: a JWT VP (signed by the holder) carrying JWT VCs.
pub async fn jwt_vp(ctx: &Ctx<'_>, out: &mut Outcome, query_id: &str, vp: &str) -> Vec<Checked> {
    let (header, payload) = match jws::decode_unverified(vp) {
        Ok((h, p, _, _)) => (h, p),
        Err(e) => {
            out.fail(
                "signature",
                format!("{query_id}: presentation is not a JWT: {e}"),
            );
            return Vec::new();
        }
    };
    if payload.get("vp").is_none() {
        out.fail("holder_binding", format!("{query_id}: a bare credential was sent; a verifiable presentation signed by the holder is required"));
        return Vec::new();
    }
    let (holder_key, holder_did) = match header_holder(&header, &payload, ctx.http).await {
        Ok(v) => v,
        Err(e) => {
            out.fail("signature", format!("{query_id}: presentation key: {e}"));
            return Vec::new();
        }
    };
    if let Err(e) = jws::verify(vp, &holder_key) {
        out.fail(
            "signature",
            format!("{query_id}: presentation signature: {e}"),
        );
        return Vec::new();
    }
    let aud_ok = match &payload["aud"] {
        Value::String(a) => a == &ctx.session.client_id,
        Value::Array(a) => a
            .iter()
            .any(|x| x.as_str() == Some(ctx.session.client_id.as_str())),
        _ => false,
    };
    if payload["nonce"].as_str() != Some(ctx.session.nonce.as_str()) {
        out.fail(
            "nonce_audience",
            format!("{query_id}: presentation nonce does not match the session"),
        );
    } else if !aud_ok {
        out.fail(
            "nonce_audience",
            format!(
                "{query_id}: presentation aud is not {}",
                ctx.session.client_id
            ),
        );
    } else {
        out.pass("nonce_audience");
    }
    check_time(out, &payload, ctx.now, &format!("{query_id} presentation"));
    let vcs: Vec<String> = match &payload["vp"]["verifiableCredential"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    };
    if vcs.is_empty() {
        out.fail(
            "query_match",
            format!("{query_id}: the presentation carries no JWT credential"),
        );
    }
    let mut checked = Vec::new();
    for vc in vcs {
        let (h, p) = match jws::decode_unverified(&vc) {
            Ok((h, p, _, _)) => (h, p),
            Err(e) => {
                out.fail("signature", format!("{query_id}: credential: {e}"));
                continue;
            }
        };
        let kid = did::signer_kid(&h, &p);
        let key = match issuer_key(&kid, ctx.http).await {
            Ok(k) => k,
            Err(e) => {
                out.fail("signature", format!("{query_id}: issuer key: {e}"));
                continue;
            }
        };
        if let Err(e) = jws::verify(&vc, &key) {
            out.fail(
                "signature",
                format!("{query_id}: credential signature: {e}"),
            );
            continue;
        }
        out.pass("signature");
        let subject = p["vc"]["credentialSubject"]["id"]
            .as_str()
            .or(p["sub"].as_str())
            .unwrap_or_default();
        if holder_did.as_deref() == Some(subject) {
            out.pass("holder_binding");
        } else {
            out.fail(
                "holder_binding",
                format!("{query_id}: the presentation signer is not the credential subject"),
            );
        }
        check_time(out, &p, ctx.now, query_id);
        let iss = p["iss"].as_str().unwrap_or_default().to_string();
        check_issuer(out, ctx, &iss);
        w3c_status(ctx, out, query_id, &p["vc"]["credentialStatus"], &key).await;
        out.pass("disclosure_integrity");
        let vc_obj = p["vc"].clone();
        let mut claims = vc_obj["credentialSubject"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        claims.remove("id");
        out.credentials.push(PresentedCredential {
            query_id: query_id.to_string(),
            format: "jwt_vc_json".into(),
            issuer: Some(iss.clone()),
            claims,
        });
        checked.push(Checked {
            query_id: query_id.to_string(),
            format: "jwt_vc_json".into(),
            types: vc_obj["type"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            root: vc_obj,
            vct: None,
            issuer: Some(iss),
        });
    }
    checked
}

async fn w3c_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    status: &Value,
    key: &VerifyingKey,
) {
    let entries: Vec<&Value> = match status {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![status],
        _ => {
            out.pass("status");
            return;
        }
    };
    for e in entries {
        let purpose = e["statusPurpose"].as_str().unwrap_or("revocation");
        let idx = e["statusListIndex"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or(e["statusListIndex"].as_u64());
        let uri = e["statusListCredential"].as_str().unwrap_or_default();
        match (idx, fetch_status(ctx, uri, key).await) {
            (Some(idx), Ok(list)) => {
                let subject = if list["credentialSubject"].is_object() {
                    &list["credentialSubject"]
                } else {
                    &list["vc"]["credentialSubject"]
                };
                match StatusArray::from_encoded_list(
                    subject["encodedList"].as_str().unwrap_or_default(),
                )
                .and_then(|a| a.get_msb(idx))
                {
                    Ok(false) => out.pass("status"),
                    Ok(true) => out.fail(
                        "status",
                        format!(
                            "{query_id}: {}",
                            if purpose == "suspension" {
                                "suspended"
                            } else {
                                "revoked"
                            }
                        ),
                    ),
                    Err(e) => out.fail("status", format!("{query_id}: status list: {e}")),
                }
            }
            (None, _) => out.fail("status", format!("{query_id}: status entry without index")),
            (_, Err(e)) => out.fail("status", format!("{query_id}: {e}")),
        }
    }
}

async fn header_holder(
    header: &Value,
    payload: &Value,
    http: &reqwest::Client,
) -> Result<(VerifyingKey, Option<String>), String> {
    if header.get("jwk").is_none() {
        let kid = did::signer_kid(header, payload);
        if kid.starts_with("did:") {
            let key = did::resolve(&kid, http).await.map_err(|e| e.to_string())?;
            return Ok((key, Some(kid.split('#').next().unwrap_or(&kid).to_string())));
        }
    }
    let (key, _) = jws::header_key(header).map_err(|e| e.to_string())?;
    let did = did::did_jwk(&key);
    Ok((key, Some(did)))
}

/// ldp_vc: a Data Integrity presentation (challenge = nonce, domain = client_id) of DI credentials.
pub async fn ldp_vp(ctx: &Ctx<'_>, out: &mut Outcome, query_id: &str, vp: Value) -> Vec<Checked> {
    if !vp.is_object() {
        out.fail(
            "signature",
            format!("{query_id}: an ldp_vc presentation must be a JSON object"),
        );
        return Vec::new();
    }
    let (nonce, client_id, now) = (
        ctx.session.nonce.clone(),
        ctx.session.client_id.clone(),
        ctx.now,
    );
    let vp2 = vp.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let holder = crate::crypto::di::verify_presentation(&vp2, &nonce, &client_id, now);
        let creds: Vec<Value> = match &vp2["verifiableCredential"] {
            Value::Array(a) => a.clone(),
            Value::Object(_) => vec![vp2["verifiableCredential"].clone()],
            _ => Vec::new(),
        };
        let verified: Vec<Result<Value, String>> = creds
            .iter()
            .map(|c| crate::crypto::di::verify_credential(c, now).map_err(|e| e.to_string()))
            .collect();
        (holder.map_err(|e| e.to_string()), verified)
    })
    .await;
    let Ok((holder, creds)) = checked else {
        out.fail("signature", format!("{query_id}: verification task failed"));
        return Vec::new();
    };
    let holder = match holder {
        Ok((h, _)) => {
            out.pass("nonce_audience");
            h
        }
        Err(e) if e.contains("challenge") || e.contains("domain") => {
            out.fail("nonce_audience", format!("{query_id}: {e}"));
            return Vec::new();
        }
        Err(e) => {
            out.fail("signature", format!("{query_id}: presentation proof: {e}"));
            return Vec::new();
        }
    };
    if creds.is_empty() {
        out.fail(
            "query_match",
            format!("{query_id}: the presentation carries no credential"),
        );
    }
    let mut checked = Vec::new();
    for c in creds {
        let vc = match c {
            Ok(vc) => vc,
            Err(e) => {
                out.fail("signature", format!("{query_id}: credential proof: {e}"));
                continue;
            }
        };
        out.pass("signature");
        out.pass("disclosure_integrity");
        if vc["credentialSubject"]["id"].as_str() == Some(holder.as_str()) {
            out.pass("holder_binding");
        } else {
            out.fail(
                "holder_binding",
                format!("{query_id}: the presentation signer is not the credential subject"),
            );
        }
        let parse = |k: &str| {
            vc[k]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.timestamp())
        };
        let mut times = serde_json::json!({});
        if let Some(e) = parse("validUntil") {
            times["exp"] = e.into();
        }
        if let Some(n) = parse("validFrom") {
            times["nbf"] = n.into();
        }
        check_time(out, &times, ctx.now, query_id);
        let iss = match &vc["issuer"] {
            Value::String(s) => s.clone(),
            other => other["id"].as_str().unwrap_or_default().to_string(),
        };
        check_issuer(out, ctx, &iss);
        match did::resolve(&iss, ctx.http).await {
            Ok(key) => w3c_status(ctx, out, query_id, &vc["credentialStatus"], &key).await,
            Err(e) => out.fail(
                "status",
                format!("{query_id}: issuer key for the status list: {e}"),
            ),
        }
        let mut claims = vc["credentialSubject"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        claims.remove("id");
        out.credentials.push(PresentedCredential {
            query_id: query_id.to_string(),
            format: "ldp_vc".into(),
            issuer: Some(iss.clone()),
            claims,
        });
        checked.push(Checked {
            query_id: query_id.to_string(),
            format: "ldp_vc".into(),
            types: vc["type"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            root: vc,
            vct: None,
            issuer: Some(iss),
        });
    }
    checked
}
