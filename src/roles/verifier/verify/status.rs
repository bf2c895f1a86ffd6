//! The `status` policy: status lists fetched through the outbound guard (bounded, revalidated
//! with their ETag) and verified with the credential issuer's own key — Token Status List for
//! SD-JWT VCs (JWT) and mdocs (CWT), Bitstring Status List for W3C credentials.

use std::time::Duration;

use serde_json::Value;

use super::policy::Outcome;
use super::Ctx;
use crate::crypto::binding::{self, IssuerKey};
use crate::crypto::{jws, status::StatusArray, VerifyingKey};

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
        if let Some(got) = self.0.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return got;
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
        _ => Ok(()),
    }
}

/// Fetches a status list token (size/time bounded, through the outbound guard) and verifies it
/// with the issuer's key; only a verified token is cached. Error texts never carry the remote body.
async fn fetch_status(ctx: &Ctx<'_>, uri: &str, key: &VerifyingKey) -> Result<Value, String> {
    use crate::http::outbound::{limits, read_capped};
    status_uri_ok(ctx, uri)?;
    let limits = limits();
    let (body, fresh_etag) = ctx
        .fetched
        .get_or("jwt", uri, async {
            let cached = ctx.status_cache.get(uri);
            let mut req = ctx.http.get(uri).timeout(Duration::from_secs(5));
            if let Some((etag, _)) = &cached {
                req = req.header("If-None-Match", etag);
            }
            let r = crate::http::outbound::send(req)
                .await
                .map_err(|e| format!("status list: {e}"))?;
            match (r.status().as_u16(), cached) {
                (304, Some((_, t))) => Ok((t.into_bytes(), None)),
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
                    Ok((body.to_vec(), etag))
                }
                (s, _) => Err(format!("status list: HTTP {s}")),
            }
        })
        .await?;
    let token = String::from_utf8_lossy(&body).trim().to_string();
    let (_, payload) =
        jws::verify(&token, key).map_err(|e| format!("status list signature: {e}"))?;
    // (a second credential under the same list puts the same token again: harmless)
    if let Some(etag) = fresh_etag {
        ctx.status_cache
            .put(uri, etag, token, limits.status_list_cache_bytes);
    }
    Ok(payload)
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
        return no_status(ctx, out, query_id);
    };
    let idx = sl.get("idx").and_then(Value::as_u64);
    let uri = sl.get("uri").and_then(Value::as_str).unwrap_or_default();
    let list = match (idx, fetch_status(ctx, uri, &issuer.key).await) {
        (None, _) => return out.fail("status", format!("{query_id}: status entry has no idx")),
        (_, Err(e)) => return out.fail("status", format!("{query_id}: {e}")),
        (Some(idx), Ok(list)) => (idx, list),
    };
    let (idx, list) = list;
    if let Err(e) = list_issuer_ok(&list, issuer) {
        return out.fail("status", format!("{query_id}: {e}"));
    }
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

pub(super) async fn w3c_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    status: &Value,
    issuer: &IssuerKey,
) {
    let entries: Vec<&Value> = match status {
        Value::Array(a) if !a.is_empty() => a.iter().collect(),
        Value::Object(_) => vec![status],
        _ => return no_status(ctx, out, query_id),
    };
    for e in entries {
        let purpose = e["statusPurpose"].as_str().unwrap_or("revocation");
        let idx = e["statusListIndex"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or(e["statusListIndex"].as_u64());
        let uri = e["statusListCredential"].as_str().unwrap_or_default();
        let list = match (idx, fetch_status(ctx, uri, &issuer.key).await) {
            (None, _) => {
                out.fail("status", format!("{query_id}: status entry without index"));
                continue;
            }
            (_, Err(e)) => {
                out.fail("status", format!("{query_id}: {e}"));
                continue;
            }
            (Some(idx), Ok(list)) => (idx, list),
        };
        let (idx, list) = list;
        if let Err(e) = list_issuer_ok(&list, issuer) {
            out.fail("status", format!("{query_id}: {e}"));
            continue;
        }
        let subject = if list["credentialSubject"].is_object() {
            &list["credentialSubject"]
        } else {
            &list["vc"]["credentialSubject"]
        };
        match StatusArray::from_encoded_list(subject["encodedList"].as_str().unwrap_or_default())
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
    use crate::http::outbound::read_capped;
    if let Err(e) = status_uri_ok(ctx, uri) {
        return out.fail("status", format!("{query_id}: {e}"));
    }
    let body = ctx
        .fetched
        .get_or("cwt", uri, async {
            let req = ctx
                .http
                .get(uri)
                .header("Accept", status::MEDIA_TYPE)
                .timeout(Duration::from_secs(5));
            match crate::http::outbound::send(req).await {
                Ok(r) if r.status().is_success() => read_capped(r, status::MAX_TOKEN_BYTES)
                    .await
                    .map(|b| (b.to_vec(), None))
                    .map_err(|e| format!("status list: {e}")),
                Ok(r) => Err(format!("status list: HTTP {}", r.status())),
                Err(e) => Err(format!("status list: {e}")),
            }
        })
        .await;
    let list = body.and_then(|(b, _)| {
        status::verify(&b, uri, mdoc, ctx.anchors, ctx.now).map_err(|e| e.to_string())
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
