//! Outbound webhooks: JSON POSTs signed with HMAC-SHA256 over the body, twice: under the
//! deployment's key (`X-Idstack-Signature: sha256=<hex>`) and under the sending tenant's own key
//! (`X-Idstack-Tenant-Signature`). Both are subkeys of the master key, so every node of a
//! deployment signs alike. A receiver that serves one tenant is given that tenant's key: with the
//! deployment's, the receiver of one tenant's events could forge another tenant's (attacker
//! review), e.g. a `verification.finished` for a session that never verified. Retried with back-off. Delivery is best effort and never blocks the request that caused it.
//! It goes through the outbound guard (the role context's `http`, `http.outbound`): a webhook URL on a
//! non-public address is refused unless allowed there.
//!
//! Every body carries `delivery_id` (the same on each retry of one event) and `sent_at` (unix
//! seconds), inside what the signature covers: a receiver refuses an old `sent_at` and a
//! `delivery_id` it has seen, so a captured delivery cannot be played to it again. In production
//! mode a webhook goes over plain http only to a host `http.outbound.allow` names (the body
//! carries disclosed claims and `response_code`s). Logs name only the URL's origin: webhook URLs
//! often carry a secret in their path or query.

use std::time::Duration;

use hmac::Mac;

use crate::store::Sealer;

pub const SIGNATURE_HEADER: &str = "X-Idstack-Signature";
/// The signature under the sending tenant's own key ([`tenant_key`]).
pub const TENANT_SIGNATURE_HEADER: &str = "X-Idstack-Tenant-Signature";

const LABEL: &[u8] = b"idstack webhook signing v1";

/// Whose events a webhook carries: a role's tenant, in one incarnation.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// `issuer` or `verifier`.
    pub role: &'static str,
    /// The tenant's id.
    pub tenant: &'a str,
    /// When the tenant was created: a tenant deleted and created again under its id (for
    /// someone else, say) signs with another key, which the old one's receiver does not hold
    /// (diff review).
    pub created_at: i64,
}

/// The HMAC key of one tenant's webhooks: a subkey of the master key under a label naming the
/// role, the tenant and its creation (lengths prefixed, so no two triples give one label).
pub fn tenant_key(sealer: &Sealer, sender: Sender<'_>) -> Vec<u8> {
    let label = format!(
        "idstack webhook signing v1 tenant/{}:{}/{}:{}/{}",
        sender.role.len(),
        sender.role,
        sender.tenant.len(),
        sender.tenant,
        sender.created_at
    );
    sealer.derive_subkey(label.as_bytes())
}

/// A webhook signing key as the admin API gives it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// Hex HMAC-SHA256 key: webhook bodies carry `<header>: sha256=<hex HMAC of the body>`.
    pub secret: String,
    /// The header whose signature this key checks: `X-Idstack-Signature` (the deployment's key,
    /// every tenant's events) or `X-Idstack-Tenant-Signature` (one tenant's key, its events only).
    pub header: &'static str,
}

impl WebhookSecret {
    /// The deployment's key.
    pub fn deployment(sealer: &Sealer) -> Self {
        Self::of(&signing_key(sealer), SIGNATURE_HEADER)
    }

    /// `sender`'s own key.
    pub fn tenant(sealer: &Sealer, sender: Sender<'_>) -> Self {
        Self::of(&tenant_key(sealer, sender), TENANT_SIGNATURE_HEADER)
    }

    fn of(key: &[u8], header: &'static str) -> Self {
        Self {
            secret: crate::crypto::hex(key),
            header,
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of body under key>`.
fn signature_with(key: &[u8], body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!(
        "sha256={}",
        crate::crypto::hex(&mac.finalize().into_bytes())
    )
}

/// The HMAC key: derived from the master-key sealer so every node of a deployment signs alike.
pub fn signing_key(sealer: &Sealer) -> Vec<u8> {
    sealer.derive_subkey(LABEL)
}

pub fn sign(sealer: &Sealer, body: &[u8]) -> String {
    signature_with(&signing_key(sealer), body)
}

/// Longest webhook (or redirect) URL accepted.
pub const MAX_URL_CHARS: usize = 2048;

/// Whether `url` may be a webhook or a redirect target: an http(s) URL of at most
/// [`MAX_URL_CHARS`] without a fragment, and in production mode plain http only to a host
/// `http.outbound.allow` names ([`crate::http::outbound::plain_http_allowed`]).
pub fn check_target(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).ok().filter(|u| {
        matches!(u.scheme(), "https" | "http")
            && u.host_str().is_some()
            && u.fragment().is_none()
            && u.username().is_empty()
            && u.password().is_none()
    });
    if parsed.is_none() || url.len() > MAX_URL_CHARS {
        return Err(format!(
            "URLs must be http(s), without user-info or a fragment, and at most {MAX_URL_CHARS} characters"
        ));
    }
    plain_http_rule(url)
}

/// In production mode, plain http only to a host `http.outbound.allow` names.
fn plain_http_rule(url: &str) -> Result<(), String> {
    if !crate::http::outbound::plain_http_allowed(url) {
        return Err(
            "plain http in production mode: use https, or list the host in http.outbound.allow"
                .into(),
        );
    }
    Ok(())
}

/// `url` as logged: its origin only (`https://host:port`), never its path, query or user-info.
pub fn origin_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "(not a URL)".into(),
    }
}

/// POSTs `event` (a JSON object) of `sender` to `url` through the guarded outbound client
/// `http`, with `delivery_id` and `sent_at` (`now`) added, signed with subkeys of `sealer`'s
/// master key: the deployment's and the sender's.
pub async fn deliver(
    http: &reqwest::Client,
    sealer: &Sealer,
    sender: Sender<'_>,
    url: &str,
    event: &serde_json::Value,
    now: i64,
) {
    let origin = origin_of(url);
    // a URL stored before production mode (or before this rule) is held to it at sending time
    // (only to it: one stored with a fragment before is still sent to)
    if let Err(why) = plain_http_rule(url) {
        tracing::warn!(url = %origin, %why, "webhook not sent");
        return;
    }
    let mut event = event.clone();
    if let Some(o) = event.as_object_mut() {
        o.insert("delivery_id".into(), crate::clock::random_token(16).into());
        o.insert("sent_at".into(), now.into());
    }
    let body = event.to_string();
    let signature = sign(sealer, body.as_bytes());
    let tenant_signature = signature_with(&tenant_key(sealer, sender), body.as_bytes());
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 * 4u64.pow(attempt - 1))).await;
        }
        let res = crate::http::outbound::send(
            http.post(url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header(TENANT_SIGNATURE_HEADER, &tenant_signature)
                .timeout(Duration::from_secs(5))
                .body(body.clone()),
        )
        .await;
        match res {
            Ok(r) if r.status().is_success() => return,
            // Only the status: the receiver's body is neither read nor logged.
            Ok(r) => {
                tracing::warn!(url = %origin, status = %r.status(), attempt, "webhook rejected")
            }
            Err(e) => {
                tracing::warn!(url = %origin, error = %e, attempt, "webhook failed");
                if e.is_final() {
                    // The destination is not allowed (`http.outbound`): retrying cannot help.
                    return;
                }
            }
        }
    }
    tracing::warn!(url = %origin, "webhook given up after 4 attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each tenant's key is its own (per role and id, and not the deployment's); the
    /// deployment's signature is what it was (an HMAC under the subkey receivers were given).
    #[test]
    fn each_tenant_signs_with_a_key_of_its_own() {
        let sealer = Sealer::new(&[7u8; 32]);
        let s = |role, tenant, created_at| {
            tenant_key(
                &sealer,
                Sender {
                    role,
                    tenant,
                    created_at,
                },
            )
        };
        let keys = [
            s("verifier", "a", 1),
            s("verifier", "b", 1),
            s("issuer", "a", 1),
            s("verifier", "a:1", 1),
            s("verifier:a", "1", 1),
            s("verifier", "a", 2),
            signing_key(&sealer),
        ];
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(k.len(), 32);
            for other in &keys[i + 1..] {
                assert_ne!(k, other);
            }
        }
        assert_eq!(s("verifier", "a", 1), s("verifier", "a", 1));
        let body = br#"{"type":"verification.finished"}"#;
        let deployment = sealer.mac_key(LABEL).over(&[body]).finalize().into_bytes();
        let hex = crate::crypto::hex(&deployment);
        assert_eq!(sign(&sealer, body), format!("sha256={hex}"));
        assert_ne!(
            signature_with(&keys[0], body),
            signature_with(&keys[1], body)
        );
    }

    /// Logs name a webhook by its origin: a secret in its path, query or user-info stays out.
    #[test]
    fn webhook_urls_are_logged_by_origin_and_checked_for_shape() {
        assert_eq!(
            origin_of("https://user:pw@hooks.example:8443/T0/B1/s3cr3t?token=t"),
            "https://hooks.example:8443"
        );
        assert_eq!(origin_of("http://10.0.0.5/x"), "http://10.0.0.5");
        assert_eq!(origin_of("not a url"), "(not a URL)");
        assert!(check_target("https://hooks.example/x?y=1").is_ok());
        for bad in [
            "ftp://hooks.example/x",
            "https://hooks.example/x#frag",
            "https://user:pw@hooks.example/x",
            "https://",
            "javascript:alert(1)",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
        let long = format!("https://hooks.example/{}", "a".repeat(MAX_URL_CHARS));
        assert!(check_target(&long).is_err());
    }
}
