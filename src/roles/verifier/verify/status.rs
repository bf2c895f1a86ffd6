//! The `status` policy: status lists fetched through the outbound guard (bounded, revalidated
//! with their ETag) and verified with the credential issuer's own key — Token Status List for
//! SD-JWT VCs (JWT) and mdocs (CWT), Bitstring Status List for W3C credentials.

use std::time::Duration;

use serde_json::Value;

use super::policy::Outcome;
use super::Ctx;
use crate::crypto::binding::{self, IssuerKey};
use crate::crypto::status::{bitstring_list_ok, token_list_ok, StatusArray};
use crate::crypto::{jws, VerifyingKey};

/// Fetched status-list tokens (JWT and CWT forms, keyed by form and URI) with their ETag: every
/// use revalidates with `If-None-Match` (a revocation is seen at once; an unchanged list costs a
/// 304 with no body). Only tokens whose signature verified are kept, and the cache is bounded by
/// total bytes (`http.outbound.status_list_cache_bytes`), oldest first out. The signature is
/// re-checked on every use.
#[derive(Default)]
pub struct StatusCache {
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// "<form> <uri>" → (etag, token, generation, until when the token may be used: its `exp`,
    /// or `iat` + the maximum age, whichever comes first)
    entries: std::collections::HashMap<String, (String, Vec<u8>, u64, Option<i64>)>,
    /// Insertion order for eviction: (uri, generation); stale generations are skipped.
    order: std::collections::VecDeque<(String, u64)>,
    bytes: usize,
    next_gen: u64,
}

impl StatusCache {
    /// The cached token and its ETag, unless it has expired (or aged out) by `now`: a server
    /// whose ETag does not change when it re-signs would answer 304 to it, and such a token
    /// fails.
    fn get(&self, uri: &str, now: i64) -> Option<(String, Vec<u8>)> {
        let m = self.inner.lock().ok()?;
        m.entries
            .get(uri)
            .filter(|(_, _, _, exp)| exp.is_none_or(|exp| exp > now))
            .map(|(e, t, _, _)| (e.clone(), t.clone()))
    }

    /// Drops the entry at `key`: its token no longer verifies (say it expired while the server
    /// kept its ETag), so the next fetch must not revalidate it.
    fn forget(&self, key: &str) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some((e, t, _, _)) = m.entries.remove(key) {
                m.bytes -= key.len() + e.len() + t.len();
            }
        }
    }

    /// Stores a verified token, evicting the oldest entries to stay within `max_bytes`.
    fn put(&self, uri: &str, etag: String, token: Vec<u8>, exp: Option<i64>, max_bytes: usize) {
        let size = uri.len() + etag.len() + token.len();
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        if let Some((e, t, _, _)) = m.entries.remove(uri) {
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
                .is_some_and(|(_, _, g, _)| *g == generation)
            {
                if let Some((e, t, _, _)) = m.entries.remove(&old) {
                    m.bytes -= old.len() + e.len() + t.len();
                }
            }
        }
        let generation = m.next_gen;
        m.next_gen += 1;
        m.bytes += size;
        m.entries
            .insert(uri.to_string(), (etag, token, generation, exp));
        m.order.push_back((uri.to_string(), generation));
        // Stale order entries (replaced URIs) are bounded by the live ones.
        if m.order.len() > 2 * m.entries.len() + 16 {
            let CacheInner { entries, order, .. } = &mut *m;
            order.retain(|(u, g)| entries.get(u).is_some_and(|(_, _, eg, _)| eg == g));
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().map(|m| m.bytes).unwrap_or(0)
    }
}

/// Most distinct status lists one evaluation fetches (each is an outbound request whose URI
/// the presentation's author chose, issuer trusted or not).
const MAX_STATUS_LISTS_PER_EVALUATION: usize = 16;

/// Most `credentialStatus` entries read from one W3C credential (one per purpose is the norm).
const MAX_STATUS_ENTRIES: usize = 4;

/// Status list bodies fetched during one evaluation, by URI: a response presenting many
/// credentials under one list fetches it once (each is still verified on its own). Bounded by
/// the presentations one evaluation takes.
#[derive(Default)]
pub struct Fetched(std::sync::Mutex<std::collections::HashMap<String, Result<Body, String>>>);

/// A fetched status list: its bytes, and the ETag it came with when it was fetched anew (not a
/// 304 answered from [`StatusCache`]).
type Body = (Vec<u8>, Option<String>);

impl Fetched {
    /// The body fetched for `uri` as `kind` (the JWT or the CWT form: fetched with their own
    /// media type and size cap) in this evaluation, or `fetch`'s, kept for the next use.
    async fn get_or<F>(&self, kind: &str, uri: &str, fetch: F) -> Result<Body, String>
    where
        F: std::future::Future<Output = Result<Body, String>>,
    {
        let key = format!("{kind} {uri}");
        let known = self.0.lock().ok().map(|m| (m.get(&key).cloned(), m.len()));
        match known {
            Some((Some(got), _)) => return got,
            // every new list is an outbound request a presentation's author chose
            Some((None, n)) if n >= MAX_STATUS_LISTS_PER_EVALUATION => {
                return Err(format!(
                "the presentation names more than {MAX_STATUS_LISTS_PER_EVALUATION} status lists"
            ))
            }
            _ => {}
        }
        let got = fetch.await;
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, got.clone());
        }
        got
    }
}

/// A status list URI this verifier fetches: `https` (in sandbox mode `http` too).
fn status_uri_ok(ctx: &Ctx<'_>, uri: &str) -> Result<(), String> {
    if uri.starts_with("https://") || (!ctx.https_only && uri.starts_with("http://")) {
        return Ok(());
    }
    Err(if ctx.https_only {
        "status list URI is not https (production mode)".into()
    } else {
        "status list URI is not http(s)".into()
    })
}

/// The `status` policy when the credential carries no status reference.
pub(super) fn no_status(ctx: &Ctx<'_>, out: &mut Outcome, what: &str) {
    if ctx.require_status {
        out.fail(
            "status",
            format!("{what}: no status reference, and this verifier requires one"),
        );
    } else {
        out.pass("status");
    }
}

/// A fetched status list (signature already checked with the credential issuer's key) must not
/// name another issuer.
fn list_issuer_ok(list: &Value, issuer: &IssuerKey) -> Result<(), String> {
    match binding::jwt_issuer(list) {
        Ok(i) if i != issuer.issuer => Err(format!(
            "the status list is issued by {i}, not by the credential's issuer"
        )),
        Ok(_) => Ok(()),
        // a list that names no issuer at all is the signer's (its key is the issuer's)
        Err(binding::BindingError::NoIssuer)
            if ["iss", "issuer"]
                .iter()
                .all(|k| list[*k].is_null() && list["vc"][*k].is_null()) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("the status list's issuer: {e}")),
    }
}

/// The status list at `uri` in one form (`jwt`, or `cwt` asked for with its media type): fetched
/// once per evaluation (size/time bounded, through the outbound guard), revalidated against the
/// [`StatusCache`] with its ETag. Returns the body and the ETag to cache it under once its
/// signature verifies (none when the body came from the cache). Error texts never carry the
/// remote body.
async fn fetch_list(
    ctx: &Ctx<'_>,
    form: &'static str,
    uri: &str,
    accept: Option<&'static str>,
    max_bytes: usize,
) -> Result<Body, String> {
    use crate::http::outbound::read_capped;
    status_uri_ok(ctx, uri)?;
    ctx.fetched
        .get_or(form, uri, async {
            let cached = ctx.status_cache.get(&format!("{form} {uri}"), ctx.now);
            let mut req = ctx.http.get(uri).timeout(Duration::from_secs(5));
            if let Some(accept) = accept {
                req = req.header("Accept", accept);
            }
            if let Some((etag, _)) = &cached {
                req = req.header("If-None-Match", etag);
            }
            let r = crate::http::outbound::send(req)
                .await
                .map_err(|e| format!("status list: {e}"))?;
            match (r.status().as_u16(), cached) {
                (304, Some((_, t))) => Ok((t, None)),
                (s, _) if (200..300).contains(&s) => {
                    let etag = r
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .filter(|e| e.len() <= 256)
                        .map(str::to_string);
                    let body = read_capped(r, max_bytes)
                        .await
                        .map_err(|e| format!("status list: {e}"))?;
                    Ok((body.to_vec(), etag))
                }
                (s, _) => Err(format!("status list: HTTP {s}")),
            }
        })
        .await
}

/// Keeps a fetched list whose signature verified, for revalidation next time (until `until`).
fn keep(
    ctx: &Ctx<'_>,
    form: &str,
    uri: &str,
    fresh_etag: Option<String>,
    body: Vec<u8>,
    until: Option<i64>,
) {
    // (a second credential under the same list puts the same token again: harmless)
    if let Some(etag) = fresh_etag {
        let budget = crate::http::outbound::limits().status_list_cache_bytes;
        ctx.status_cache
            .put(&format!("{form} {uri}"), etag, body, until, budget);
    }
}

/// Fetches a status list token (JWT form) and verifies it with the issuer's key, and that it
/// is fresh ([`crate::crypto::status::freshness`]: `exp` — which a relying party must check —
/// and `iat` against `verifier.status_list_max_age_seconds`). A Token Status List token must
/// carry `iat` (`token_list`); a Bitstring Status List credential is aged by its `iat`, else
/// its `nbf`, when it has one. Only a verified token is cached.
async fn fetch_status(
    ctx: &Ctx<'_>,
    uri: &str,
    key: &VerifyingKey,
    token_list: bool,
) -> Result<(Value, Value), String> {
    let max = crate::http::outbound::limits().max_body_bytes;
    // (the draft: a Token Status List is asked for by its media type)
    let accept = token_list.then_some("application/statuslist+jwt");
    // the two JWT forms are asked for differently: fetched and cached apart
    let form = if token_list { "tsl" } else { "jwt" };
    let (body, fresh_etag) = fetch_list(ctx, form, uri, accept, max).await?;
    let token = String::from_utf8_lossy(&body).trim().to_string();
    let checked = (|| {
        let (header, payload) =
            jws::verify(&token, key).map_err(|e| format!("status list signature: {e}"))?;
        let numeric = |name: &str| {
            super::policy::numeric(&payload[name], name)
                .map_err(|e| format!("status list token: {e}"))
        };
        let (iat, exp) = if token_list {
            (numeric("iat")?, numeric("exp")?)
        } else {
            // a Bitstring Status List credential: its JWT times and its own validity window
            let vc = if payload["vc"].is_object() {
                &payload["vc"]
            } else {
                &payload
            };
            let (from, until) = super::policy::window(&payload, vc)
                .map_err(|e| format!("status list credential: {e}"))?;
            (numeric("iat")?.or(from), until)
        };
        // a list that says nothing of when it was made cannot be aged: with a maximum age set,
        // it is not believed (it could be any old list, replayed)
        let when_required = token_list || ctx.status_max_age.is_some();
        let until =
            crate::crypto::status::freshness(iat, exp, ctx.now, ctx.status_max_age, when_required)?;
        Ok((header, payload, until))
    })();
    match checked {
        Ok((header, payload, until)) => {
            keep(ctx, form, uri, fresh_etag, body, until);
            Ok((header, payload))
        }
        Err(e) => {
            ctx.status_cache.forget(&format!("{form} {uri}"));
            Err(e)
        }
    }
}

/// The SD-JWT VC status entry (Token Status List).
pub(super) async fn token_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    status: &Value,
    issuer: &IssuerKey,
) {
    let Some(sl) = status["status_list"].as_object() else {
        if status.is_null() {
            return no_status(ctx, out, query_id);
        }
        // a status this verifier cannot read (another mechanism, a malformed status_list) is
        // not "no status"
        return out.fail(
            "status",
            format!("{query_id}: a status without a readable status_list"),
        );
    };
    let Some(idx) = sl.get("idx").and_then(Value::as_u64) else {
        return out.fail("status", format!("{query_id}: status entry has no idx"));
    };
    let uri = sl.get("uri").and_then(Value::as_str).unwrap_or_default();
    let (header, list) = match fetch_status(ctx, uri, &issuer.key, true).await {
        Err(e) => return out.fail("status", format!("{query_id}: {e}")),
        Ok(list) => list,
    };
    if let Err(e) = list_issuer_ok(&list, issuer).and_then(|_| token_list_ok(&header, &list, uri)) {
        return out.fail("status", format!("{query_id}: {e}"));
    }
    // `bits` is required, and one of 1, 2, 4, 8 (`from_token_lst`): 0 divided by zero once
    let Some(bits) = list["status_list"]["bits"]
        .as_u64()
        .and_then(|b| u8::try_from(b).ok())
    else {
        return out.fail(
            "status",
            format!("{query_id}: status list: bits missing or out of range"),
        );
    };
    let lst = list["status_list"]["lst"].as_str().unwrap_or_default();
    match StatusArray::from_token_lst(bits, lst).and_then(|a| a.get_lsb(idx)) {
        Ok(0) => out.pass("status"),
        Ok(1) => out.fail("status", format!("{query_id}: revoked")),
        Ok(2) => out.fail("status", format!("{query_id}: suspended")),
        Ok(v) => out.fail("status", format!("{query_id}: status {v}")),
        Err(e) => out.fail("status", format!("{query_id}: status list: {e}")),
    }
}

/// Whether a credential's status is checked: unless it names a status list (a URL the presenter
/// chose) and its issuer is one `issuer_allowlist` refuses — the credential fails already, and
/// nothing is fetched for it. A session that turns `issuer_allowlist` off checks every status.
pub(super) fn status_checked(ctx: &Ctx<'_>, trusted: bool, status: &Value) -> bool {
    trusted || !ctx.issuer_allowlist || status.is_null()
}

/// The `status` policy of a credential whose issuer is not trusted: it fails already, and its
/// status list (a URL the presenter chose) is not fetched.
pub(super) fn status_not_checked(out: &mut Outcome, query_id: &str) {
    out.fail(
        "status",
        format!("{query_id}: not checked: the issuer is not trusted"),
    );
}

pub(super) async fn w3c_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    status: &Value,
    issuer: &IssuerKey,
) {
    let entries: Vec<&Value> = match status {
        Value::Null => return no_status(ctx, out, query_id),
        Value::Array(a) if !a.is_empty() => a.iter().collect(),
        Value::Object(_) => vec![status],
        // a credentialStatus this verifier cannot read is not "no status"
        _ => {
            return out.fail(
                "status",
                format!("{query_id}: a credentialStatus that is no status entry"),
            )
        }
    };
    if entries.len() > MAX_STATUS_ENTRIES {
        return out.fail(
            "status",
            format!("{query_id}: more than {MAX_STATUS_ENTRIES} credentialStatus entries"),
        );
    }
    for e in entries {
        let (purpose, idx) = match crate::crypto::status::bitstring_entry(e) {
            Ok(entry) => entry,
            Err(why) => {
                out.fail("status", format!("{query_id}: {why}"));
                continue;
            }
        };
        let uri = e["statusListCredential"].as_str().unwrap_or_default();
        let list = match fetch_status(ctx, uri, &issuer.key, false).await {
            Err(e) => {
                out.fail("status", format!("{query_id}: {e}"));
                continue;
            }
            Ok((_, list)) => list,
        };
        if let Err(e) = list_issuer_ok(&list, issuer).and_then(|_| bitstring_list_ok(&list, uri)) {
            out.fail("status", format!("{query_id}: {e}"));
            continue;
        }
        match crate::crypto::status::bitstring_bit(&list, &purpose, idx) {
            // a set bit means revoked or suspended for those purposes only (`refresh`,
            // `message`: something to fetch, not a refusal)
            Ok(false) => out.pass("status"),
            Ok(true) if !matches!(purpose.as_str(), "revocation" | "suspension") => {
                out.pass("status")
            }
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
            Err(e) => out.fail("status", format!("{query_id}: {e}")),
        }
    }
}

/// An mdoc's Token Status List (CWT form, fetched through the outbound guard, bounded), which
/// must be signed by the mdoc's own document signer or another one under its IACA.
pub(super) async fn mdoc_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    idx: u64,
    uri: &str,
    mdoc: &crate::crypto::mdoc::verify::Verified,
) {
    use crate::crypto::mdoc::status;
    let fetched = fetch_list(
        ctx,
        "cwt",
        uri,
        Some(status::MEDIA_TYPE),
        status::MAX_TOKEN_BYTES,
    )
    .await;
    let list = fetched.and_then(|(body, fresh_etag)| {
        let (list, until) = status::verify(
            &body,
            uri,
            mdoc,
            ctx.mdoc_anchors,
            ctx.now,
            ctx.status_max_age,
        )
        .map_err(|e| {
            // an expired CWT under an unchanged ETag would fail from the cache for ever
            ctx.status_cache.forget(&format!("cwt {uri}"));
            e.to_string()
        })?;
        keep(ctx, "cwt", uri, fresh_etag, body, until);
        Ok(list)
    });
    match list.and_then(|l| l.get_lsb(idx).map_err(|e| e.to_string())) {
        Ok(0) => out.pass("status"),
        Ok(1) => out.fail("status", format!("{query_id}: revoked")),
        Ok(2) => out.fail("status", format!("{query_id}: suspended")),
        Ok(v) => out.fail("status", format!("{query_id}: status {v}")),
        Err(e) => out.fail("status", format!("{query_id}: {e}")),
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
            let t = token.clone().into_bytes();
            c.put(&format!("https://s/{i}"), "e".into(), t, None, 10_000);
            assert!(c.bytes() <= 10_000);
        }
        assert!(c.get("https://s/0", 0).is_none());
        assert!(c.get("https://s/99", 0).is_some());
        // Replacing one URI over and over keeps one entry's bytes.
        for _ in 0..100 {
            c.put(
                "https://s/99",
                "e".into(),
                token.clone().into_bytes(),
                None,
                10_000,
            );
        }
        assert!(c.bytes() <= 10_000);
        // A token larger than the whole budget is not kept (and drops the old one).
        c.put(
            "https://s/99",
            "e".into(),
            "x".repeat(20_000).into_bytes(),
            None,
            10_000,
        );
        assert!(c.get("https://s/99", 0).is_none());
        // An expired token is not offered for revalidation (a 304 would bring it back).
        c.put("https://s/1", "e".into(), b"t".to_vec(), Some(100), 10_000);
        assert!(c.get("https://s/1", 99).is_some());
        assert!(c.get("https://s/1", 100).is_none());
        // a token that stopped verifying is forgotten, and its bytes with it
        let before = c.bytes();
        c.forget("https://s/1");
        assert!(c.get("https://s/1", 99).is_none());
        assert!(c.bytes() < before);
    }
}

#[cfg(test)]
mod list_checks {
    use super::super::policy::Trust;
    use super::super::testing::ctx_at;
    use super::*;
    use crate::crypto::{KeyType, SigningKey};
    use serde_json::json;

    #[test]
    fn a_token_list_is_the_list_at_its_uri() {
        let uri = "https://i.example/status-lists/token-1";
        let h = json!({"typ": "statuslist+jwt"});
        assert!(token_list_ok(&h, &json!({"sub": uri}), uri).is_ok());
        // another list of the same issuer, a list naming none, a token that is no status list
        assert!(token_list_ok(&h, &json!({"sub": format!("{uri}0")}), uri).is_err());
        assert!(token_list_ok(&h, &json!({}), uri).is_err());
        assert!(token_list_ok(&json!({"typ": "vc+jwt"}), &json!({"sub": uri}), uri).is_err());
        // a Bitstring list credential naming itself must name its URI
        assert!(bitstring_list_ok(&json!({"id": uri}), uri).is_ok());
        assert!(bitstring_list_ok(&json!({"vc": {"id": uri}}), uri).is_ok());
        assert!(bitstring_list_ok(&json!({}), uri).is_ok());
        assert!(bitstring_list_ok(&json!({"id": "https://i.example/other"}), uri).is_err());
    }

    /// An expired status list token fails, and is not kept to be revalidated (a server whose
    /// ETag ignores the signing time would answer 304 to it forever).
    #[tokio::test]
    async fn an_expired_status_list_token_fails_and_is_not_cached() {
        use std::io::{Read, Write};
        let key = SigningKey::generate(KeyType::Ed25519);
        let now = 1_800_000_000;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!(
            "http://127.0.0.1:{}/status-lists/token-1",
            listener.local_addr().unwrap().port()
        );
        let token = jws::sign(
            &key,
            json!({"typ": "statuslist+jwt"}),
            &json!({"sub": uri, "iat": now - 100, "exp": now - 1,
                "status_list": {"bits": 1, "lst": "eNrbuRgAAhcBXQ"}}),
        );
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\netag: \"same\"\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    token.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(token.as_bytes());
            }
        });
        let http = reqwest::Client::new();
        let (cache, anchors) = (StatusCache::default(), Default::default());
        let ctx = ctx_at(now, &http, &cache, &anchors, &Trust::Any);
        let e = fetch_status(&ctx, &uri, &key.verifying_key(), true)
            .await
            .unwrap_err();
        assert!(e.contains("expired"), "{e}");
        assert_eq!(cache.bytes(), 0);
        // the same token is fine before its exp, and then kept until it
        let ctx = Ctx {
            now: now - 50,
            fetched: Default::default(),
            ..ctx
        };
        fetch_status(&ctx, &uri, &key.verifying_key(), true)
            .await
            .unwrap();
        assert!(cache.get(&format!("tsl {uri}"), now - 50).is_some());
        assert!(cache.get(&format!("tsl {uri}"), now).is_none());
    }

    /// The `status` policy's verdict: `None` passed, else why not.
    fn verdict(out: &Outcome) -> Option<String> {
        let r = out.results(&["status".to_string()]).remove(0);
        assert!(r.passed || r.reason.is_some());
        r.reason
    }

    /// What a status list says is believed only within bounds an attacker cannot stretch: the
    /// list must be recent (`iat` within `status_list_max_age_seconds`; a Token Status List must
    /// carry `iat`), name no other issuer, have a real width (`bits` 0 used to divide by zero: a
    /// 500), answer for the entry's purpose and size; and one credential names at most 4 lists.
    #[tokio::test]
    async fn status_lists_are_believed_only_fresh_well_formed_and_bounded() {
        let key = SigningKey::generate(KeyType::Ed25519);
        let now = 1_800_000_000;
        let day = 86_400;
        let issuer = IssuerKey {
            issuer: "did:example:issuer".into(),
            method: "did:example:issuer#k".into(),
            key: key.verifying_key(),
        };
        let lst = StatusArray::new(1, 1024).unwrap().to_token_lst();
        let encoded = StatusArray::new(1, 1024).unwrap().to_encoded_list();
        let token = |path: &str, claims: Value| (path.to_string(), claims);
        let tsl = |sub: &str, extra: Value| {
            let mut c = json!({"sub": sub, "status_list": {"bits": 1, "lst": lst}});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let paths = [
            "/fresh",
            "/old",
            "/no-iat",
            "/bits0",
            "/other-issuer",
            "/revocation",
            "/w3c-old",
            "/w3c-expired",
            "/w3c-timeless",
            "/w3c-both",
            "/min-iat",
        ];
        // a server answering each path with its token; the tokens name the server's URIs, so
        // they are made once it listens
        let table: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let base = {
            let table = table.clone();
            use std::io::{Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
            std::thread::spawn(move || {
                for s in listener.incoming() {
                    let Ok(mut s) = s else { break };
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let body = table
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, t)| t.clone())
                        .unwrap_or_default();
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            base
        };
        let uri = |p: &str| format!("{base}{p}");
        let jwt = |typ: &str, claims: Value| jws::sign(&key, json!({"typ": typ}), &claims);
        let mut entries = vec![
            token("/fresh", tsl(&uri("/fresh"), json!({"iat": now - 100}))),
            token("/old", tsl(&uri("/old"), json!({"iat": now - 2 * day}))),
            token("/no-iat", tsl(&uri("/no-iat"), json!({"exp": now + day}))),
            token(
                "/bits0",
                json!({"sub": uri("/bits0"), "iat": now, "status_list": {"bits": 0, "lst": lst}}),
            ),
            token(
                "/other-issuer",
                tsl(
                    &uri("/other-issuer"),
                    json!({"iat": now, "iss": "did:example:other"}),
                ),
            ),
        ];
        let mut table_rows: Vec<(String, String)> = entries
            .drain(..)
            .map(|(p, c)| (p, jwt("statuslist+jwt", c)))
            .collect();
        let bitstring = |p: &str, purpose: &str, iat: i64| {
            jwt(
                "vc+jwt",
                json!({"id": uri(p), "iat": iat, "credentialSubject": {
                    "type": "BitstringStatusList", "statusPurpose": purpose, "encodedList": encoded}}),
            )
        };
        table_rows.push((
            "/revocation".into(),
            bitstring("/revocation", "revocation", now),
        ));
        table_rows.push((
            "/w3c-old".into(),
            bitstring("/w3c-old", "revocation", now - 2 * day),
        ));
        // a VCDM 2.0 list whose own validity ended, one that says nothing of its age, one
        // answering for two purposes, and a Token Status List from the beginning of time
        let vcdm = |p: &str, extra: Value| {
            let mut c = json!({"id": uri(p), "credentialSubject": {"type": "BitstringStatusList",
                "statusPurpose": "revocation", "encodedList": encoded}});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            jwt("vc+jwt", c)
        };
        table_rows.push((
            "/w3c-expired".into(),
            vcdm(
                "/w3c-expired",
                json!({"validFrom": "2026-12-01T00:00:00Z", "validUntil": "2026-12-02T00:00:00Z"}),
            ),
        ));
        table_rows.push(("/w3c-timeless".into(), vcdm("/w3c-timeless", json!({}))));
        let both = vcdm(
            "/w3c-both",
            json!({"iat": now, "credentialSubject": {"type": "BitstringStatusList",
                "statusPurpose": ["revocation", "suspension"], "encodedList": encoded}}),
        );
        table_rows.push(("/w3c-both".into(), both));
        table_rows.push((
            "/min-iat".into(),
            jwt(
                "statuslist+jwt",
                tsl(&uri("/min-iat"), json!({"iat": i64::MIN})),
            ),
        ));
        assert_eq!(table_rows.len(), paths.len());
        *table.lock().unwrap() = table_rows;

        let http = reqwest::Client::new();
        let (cache, anchors) = (StatusCache::default(), Default::default());
        let ctx = ctx_at(now, &http, &cache, &anchors, &Trust::Any);
        let token_verdict = |p: &str| {
            let status = json!({"status_list": {"idx": 3, "uri": uri(p)}});
            let (ctx, issuer) = (&ctx, &issuer);
            async move {
                let mut out = Outcome::default();
                token_status(ctx, &mut out, "q", &status, issuer).await;
                verdict(&out)
            }
        };
        assert_eq!(token_verdict("/fresh").await, None);
        let why = token_verdict("/old").await.expect("a two-day-old list");
        assert!(why.contains("ago"), "{why}");
        let why = token_verdict("/no-iat").await.expect("a list without iat");
        assert!(why.contains("no iat"), "{why}");
        let why = token_verdict("/bits0").await.expect("a list of 0 bits");
        assert!(why.contains("bits"), "{why}");
        let why = token_verdict("/other-issuer")
            .await
            .expect("another issuer's list");
        assert!(why.contains("did:example:other"), "{why}");
        // (an age past i64 is refused, not overflowed)
        let why = token_verdict("/min-iat")
            .await
            .expect("iat at the beginning of time");
        assert!(why.contains("ago"), "{why}");
        // a status the verifier cannot read is no pass
        let mut out = Outcome::default();
        token_status(
            &ctx,
            &mut out,
            "q",
            &json!({"identifier_list": {}}),
            &issuer,
        )
        .await;
        assert!(verdict(&out)
            .expect("unreadable status")
            .contains("readable"));

        let w3c = |status: Value| {
            let (ctx, issuer) = (&ctx, &issuer);
            async move {
                let mut out = Outcome::default();
                w3c_status(ctx, &mut out, "q", &status, issuer).await;
                verdict(&out)
            }
        };
        let entry = |p: &str, purpose: &str| {
            json!({"type": "BitstringStatusListEntry", "statusPurpose": purpose,
                "statusListIndex": "3", "statusListCredential": uri(p)})
        };
        assert_eq!(w3c(entry("/revocation", "revocation")).await, None);
        let why = w3c(entry("/revocation", "suspension"))
            .await
            .expect("purpose");
        assert!(why.contains("purpose suspension"), "{why}");
        assert_eq!(w3c(entry("/w3c-both", "suspension")).await, None);
        let why = w3c(entry("/w3c-expired", "revocation"))
            .await
            .expect("validUntil past");
        assert!(why.contains("expired"), "{why}");
        let why = w3c(entry("/w3c-timeless", "revocation"))
            .await
            .expect("no time");
        assert!(why.contains("not known"), "{why}");
        let why = w3c(entry("/w3c-old", "revocation")).await.expect("old");
        assert!(why.contains("ago"), "{why}");
        let mut wide = entry("/revocation", "revocation");
        wide["statusSize"] = json!(2);
        assert!(w3c(wide)
            .await
            .expect("statusSize 2")
            .contains("statusSize"));
        let five = Value::Array((0..5).map(|_| entry("/revocation", "revocation")).collect());
        assert!(w3c(five).await.expect("5 entries").contains("more than 4"));
    }
}
