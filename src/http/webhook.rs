//! Outbound webhooks: JSON POSTs signed with HMAC-SHA256 over the body (header
//! `X-Idstack-Signature: sha256=<hex>`, keyed by a subkey of the master key, so every node of a
//! deployment signs alike and receivers configure one secret),
//! retried with back-off. Delivery is best effort and never blocks the request that caused it.
//! It goes through the outbound guard (the role context's `http`, `http.outbound`): a webhook URL on a
//! non-public address is refused unless allowed there.

use std::time::Duration;

use hmac::Mac;

use crate::store::Sealer;

pub const SIGNATURE_HEADER: &str = "X-Idstack-Signature";

const LABEL: &[u8] = b"idstack webhook signing v1";

/// The HMAC key: derived from the master-key sealer so every node of a deployment signs alike.
pub fn signing_key(sealer: &Sealer) -> Vec<u8> {
    sealer.derive_subkey(LABEL)
}

pub fn sign(sealer: &Sealer, body: &[u8]) -> String {
    let tag = sealer.mac_key(LABEL).over(&[body]).finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// POSTs `event` to `url` through the guarded outbound client `http`, signed with a subkey of
/// `sealer`'s master key.
pub async fn deliver(
    http: &reqwest::Client,
    sealer: &Sealer,
    url: &str,
    event: &serde_json::Value,
) {
    let body = event.to_string();
    let signature = sign(sealer, body.as_bytes());
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 * 4u64.pow(attempt - 1))).await;
        }
        let res = crate::http::outbound::send(
            http.post(url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .timeout(Duration::from_secs(5))
                .body(body.clone()),
        )
        .await;
        match res {
            Ok(r) if r.status().is_success() => return,
            // Only the status: the receiver's body is neither read nor logged.
            Ok(r) => tracing::warn!(%url, status = %r.status(), attempt, "webhook rejected"),
            Err(e) => {
                tracing::warn!(%url, error = %e, attempt, "webhook failed");
                if e.is_refused() {
                    // The destination is not allowed (`http.outbound`): retrying cannot help.
                    return;
                }
            }
        }
    }
    tracing::warn!(%url, "webhook given up after 4 attempts");
}
