//! Outbound OpenID4VC clients (holder side): used by the wallet role and the load harness. They talk
//! to any conforming issuer or verifier, not only ours.

pub mod oid4vci;
pub mod oid4vp;

use std::time::Duration;

use serde_json::Value;

use crate::http::outbound::{limits, read_capped, OutboundError};
use crate::json_cost;

/// What went wrong talking to the other party. Texts never carry what the other party sent (no
/// bodies, no upstream error text): they reach API callers and logs.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid input: {0}")]
    Input(String),
    #[error("{0}")]
    Remote(String),
    #[error("the other party answered HTTP {status}")]
    Status { status: u16 },
    /// Refused by the outbound guard, too large, or unreachable.
    #[error("{0}")]
    Outbound(#[from] OutboundError),
}

pub type ClientResult<T> = Result<T, ClientError>;

/// Sends a request through the (guarded) client.
pub(crate) async fn send(req: reqwest::RequestBuilder) -> ClientResult<reqwest::Response> {
    Ok(crate::http::outbound::send(req).await?)
}

/// A 2xx body, or [`ClientError::Status`] (the body of an error answer is not kept). Refused
/// when its JSON would cost more than [`json_cost::FETCHED_MAX`] parsed.
pub(crate) async fn ok_body(resp: reqwest::Response) -> ClientResult<String> {
    ok_body_within(resp, limits().max_body_bytes).await
}

/// [`ok_body`] of at most `max` bytes (or `http.outbound.max_body_bytes`, if less).
pub(crate) async fn ok_body_within(resp: reqwest::Response, max: usize) -> ClientResult<String> {
    let status = resp.status().as_u16();
    let bytes = read_capped(resp, max.min(limits().max_body_bytes)).await?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Status { status });
    }
    json_cost::check(&bytes, json_cost::FETCHED_MAX)
        .map_err(|why| ClientError::Remote(format!("the other party's answer: {why}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> ClientResult<Value> {
    get_json_within(http, url, limits().max_body_bytes).await
}

/// [`get_json`] of a document of at most `max` bytes.
pub(crate) async fn get_json_within(
    http: &reqwest::Client,
    url: &str,
    max: usize,
) -> ClientResult<Value> {
    check_url(url)?;
    let resp = send(http.get(url).timeout(Duration::from_secs(10))).await?;
    let text = ok_body_within(resp, max).await?;
    serde_json::from_str(&text)
        .map_err(|_| ClientError::Remote(format!("GET {}: not JSON", truncate(url))))
}

pub(crate) fn check_url(url: &str) -> ClientResult<()> {
    if url.starts_with("http://") && !crate::http::outbound::plain_http_allowed(url) {
        return Err(ClientError::Input(format!(
            "plain http in production mode: {} (the other party must use https, or be listed in http.outbound.allow)",
            truncate(url)
        )));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(ClientError::Input(format!(
            "not an http(s) URL: {}",
            truncate(url)
        )))
    }
}

pub(crate) fn truncate(s: &str) -> String {
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

/// Parses `scheme://?a=b&c=d` (or any URL) query parameters.
pub(crate) fn query_params(uri: &str) -> Vec<(String, String)> {
    let q = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

/// GET returning the (bounded) body text; for status lists and other JWT responses.
pub async fn get_text(http: &reqwest::Client, url: &str) -> ClientResult<String> {
    check_url(url)?;
    ok_body(send(http.get(url).timeout(Duration::from_secs(10))).await?).await
}

/// GET of a binary document (`accept` as its media type), at most `max` bytes, 2xx only; for
/// CBOR status list tokens.
pub async fn get_bytes(
    http: &reqwest::Client,
    url: &str,
    accept: &str,
    max: usize,
    timeout: Duration,
) -> ClientResult<Vec<u8>> {
    check_url(url)?;
    let resp = send(http.get(url).header("Accept", accept).timeout(timeout)).await?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(ClientError::Status { status });
    }
    Ok(read_capped(resp, max).await?)
}
