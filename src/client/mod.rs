//! Outbound OpenID4VC clients (holder side): used by the wallet role and the load harness. They talk
//! to any conforming issuer or verifier, not only ours.

pub mod oid4vci;
pub mod oid4vp;

use std::time::Duration;

use serde_json::Value;

/// What went wrong talking to the other party.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid input: {0}")]
    Input(String),
    #[error("{0}")]
    Remote(String),
    #[error("the other party answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
}

pub type ClientResult<T> = Result<T, ClientError>;

const MAX_BODY: usize = 2 * 1024 * 1024;

fn remote(e: impl std::fmt::Display) -> ClientError {
    ClientError::Remote(e.to_string())
}

/// Reads a bounded response body.
pub(crate) async fn body(resp: reqwest::Response) -> ClientResult<(u16, String)> {
    let status = resp.status().as_u16();
    if resp.content_length().is_some_and(|l| l as usize > MAX_BODY) {
        return Err(ClientError::Remote("response too large".into()));
    }
    let bytes = resp.bytes().await.map_err(remote)?;
    if bytes.len() > MAX_BODY {
        return Err(ClientError::Remote("response too large".into()));
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> ClientResult<Value> {
    check_url(url)?;
    let r = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ClientError::Remote(format!("GET {url}: {e}")))?;
    let (status, text) = body(r).await?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Status {
            status,
            body: truncate(&text),
        });
    }
    serde_json::from_str(&text)
        .map_err(|e| ClientError::Remote(format!("GET {url}: not JSON: {e}")))
}

pub(crate) fn check_url(url: &str) -> ClientResult<()> {
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
    let r = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ClientError::Remote(format!("GET {url}: {e}")))?;
    let (status, text) = body(r).await?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Status {
            status,
            body: truncate(&text),
        });
    }
    Ok(text)
}
