//! Message pickup 2.0 (RFC 0685) and 1.0 (RFC 0212) requests on a connection. 2.0 hands out
//! `delivery` messages whose contents leave the queue only on `messages-received`; live mode
//! (WebSocket only) pushes them as they arrive ([`super::live`]). 1.0 has no acknowledgement: a
//! batch is the hand-over.

use serde_json::{json, Value};

use super::error::MediatorResult;
use super::message::{delivery, problem_report, recipient_filter};
use super::protocols::ConnMessage;
use super::service::MediatorService;
use super::socket::Mode;

/// Most messages one `delivery-request` or `batch-pickup` asks for (and the default).
const MAX_BATCH: u64 = 1000;
const DEFAULT_BATCH: u64 = 10;

/// A request's batch size (`limit` / `batch_size`), within 1..=[`MAX_BATCH`].
fn batch_size(msg: &Value, field: &str) -> usize {
    msg.get(field)
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_BATCH)
        .clamp(1, MAX_BATCH) as usize
}

impl MediatorService {
    /// 2.0 `delivery-request`: a `delivery` of what waits (leased to this socket or an HTTP
    /// lease), or the `status` when nothing does.
    pub(super) async fn delivery_request(&self, m: &ConnMessage<'_>) -> MediatorResult<Value> {
        let ConnMessage {
            conn, msg, socket, ..
        } = *m;
        let limit = batch_size(msg, "limit");
        let filter = recipient_filter(msg);
        let batch = self
            .claim(&conn.id, socket, limit, filter.as_deref())
            .await?;
        if batch.is_empty() {
            Ok(m.reply(
                "messagepickup/2.0/status",
                self.status(&conn.id, msg, socket).await?,
            ))
        } else {
            Ok(delivery(&batch, Some(&m.thid), filter.as_deref()))
        }
    }

    /// 2.0 `messages-received`: the named messages leave the queue; answered with the `status`.
    pub(super) async fn messages_received(&self, m: &ConnMessage<'_>) -> MediatorResult<Value> {
        let ConnMessage {
            conn, msg, socket, ..
        } = *m;
        let ids: Vec<String> = msg
            .get("message_id_list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        // one delivery hands out at most MAX_BATCH; each id named is a store delete
        if ids.len() as u64 > MAX_BATCH {
            return Err(self.refuse(format!(
                "message_id_list names more than {MAX_BATCH} messages"
            )));
        }
        self.acknowledge(&conn.id, &ids, socket).await?;
        let live_here = socket.is_some_and(|s| s.live_connection().as_deref() == Some(&conn.id));
        let status = if live_here {
            // Live mode on this socket: whatever waits is pushed here as soon as this
            // acknowledgement lets the next delivery out, so nothing waits for a
            // delivery-request (credo answers a non-zero count with one: a second round
            // trip, and a second delivery, for messages already on their way).
            json!({"message_count": 0, "live_delivery": true})
        } else {
            self.status(&conn.id, &json!({}), socket).await?
        };
        Ok(m.reply("messagepickup/2.0/status", status))
    }

    /// 2.0 `live-delivery-change`: live mode on or off for this socket (a problem report over
    /// HTTP, which cannot push).
    pub(super) async fn live_delivery_change(&self, m: &ConnMessage<'_>) -> MediatorResult<Value> {
        let ConnMessage {
            conn, msg, socket, ..
        } = *m;
        let on = msg
            .get("live_delivery")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let Some(s) = socket else {
            return Ok(problem_report(
                &m.thid,
                "live-delivery-unsupported",
                "live delivery needs a persistent connection: use the WebSocket endpoint",
            ));
        };
        self.set_mode(&conn.id, s, on.then_some(Mode::Live));
        let mut status = self.status(&conn.id, &json!({}), socket).await?;
        status["live_delivery"] = json!(on);
        Ok(m.reply("messagepickup/2.0/status", status))
    }

    /// 1.0 `batch-pickup`: a `batch` of what waits, deleted once packed for the transport.
    /// Clients that can, use 2.0.
    pub(super) async fn batch_pickup(&self, m: &ConnMessage<'_>) -> MediatorResult<Value> {
        let ConnMessage { conn, msg, .. } = *m;
        let size = batch_size(msg, "batch_size");
        let batch = self.claim(&conn.id, None, size, None).await?;
        let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
        // RFC 0212 writes `@id`; credo (0.4-0.6) parses `id` and refuses the batch
        // without it; ACA-Py writes `id`. Both, so every client finds its key.
        let reply_msg = m.reply(
            "messagepickup/1.0/batch",
            json!({"messages~attach": batch.iter().map(|m| json!({"@id": m.id, "id": m.id, "message": m.msg})).collect::<Vec<_>>()}),
        );
        self.acknowledge(&conn.id, &ids, None).await?;
        Ok(reply_msg)
    }

    /// 1.0 `status-request`: how many messages wait.
    pub(super) async fn status_v1(&self, m: &ConnMessage<'_>) -> MediatorResult<Value> {
        let n = self.status(&m.conn.id, &json!({}), None).await?["message_count"].take();
        Ok(m.reply("messagepickup/1.0/status", json!({"message_count": n})))
    }
}
