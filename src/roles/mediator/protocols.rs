//! What an established connection may say, by `(protocol, name)`: the end of a handshake, trust
//! ping, coordinate-mediation ([`super::mediation`]), message pickup 2.0 and 1.0
//! ([`super::pickup`]), discover features and problem reports. Anything else is answered with an
//! `unsupported-message-type` problem report.

use std::sync::Arc;

use serde_json::{json, Value};

use super::error::MediatorResult;
use super::message::{problem_report, reply, thread_id, DIDCOMM};
use super::model::Connection;
use super::service::MediatorService;
use super::socket::Socket;

/// A message on an established connection, as the step that runs it sees it.
pub(super) struct ConnMessage<'a> {
    pub conn: &'a Connection,
    pub msg: &'a Value,
    /// Set when it came on a WebSocket.
    pub socket: Option<&'a Arc<Socket>>,
    /// The thread replies belong to.
    pub thid: String,
}

impl ConnMessage<'_> {
    /// A reply of type `<DIDCOMM><t>` in this message's thread.
    pub(super) fn reply(&self, t: &str, body: Value) -> Value {
        reply(&self.thid, t, body)
    }
}

impl MediatorService {
    /// Runs `proto`/`name` from connection `conn`; the reply, if the message has one.
    pub(super) async fn on_connection(
        &self,
        conn: &Connection,
        proto: &str,
        name: &str,
        msg: &Value,
        socket: Option<&Arc<Socket>>,
    ) -> MediatorResult<Option<Value>> {
        let m = ConnMessage {
            conn,
            msg,
            socket,
            thid: thread_id(msg),
        };
        let thid = m.thid.as_str();
        if conn.state != "completed" {
            // Any authenticated message on the connection completes the handshake (credo sends a
            // DID exchange `complete`, connections 1.0 peers a trust ping as ack).
            self.update_connection(&conn.id, |c| c.state = "completed".into())
                .await?;
        }
        Ok(match (proto, name) {
            ("didexchange/1.1" | "didexchange/1.0", "complete") => None,
            ("notification/1.0", "ack") | ("connections/1.0", "ack") => None,
            ("trust_ping/1.0", "ping") => trust_ping(&m),
            ("trust_ping/1.0", "ping_response") => None,
            ("coordinate-mediation/1.0", "mediate-request") => {
                Some(self.mediate_request(&m).await?)
            }
            ("coordinate-mediation/1.0", "keylist-update") => Some(m.reply(
                "coordinate-mediation/1.0/keylist-update-response",
                self.keylist_update(conn, msg).await?,
            )),
            ("coordinate-mediation/1.0", "keylist-query") => Some(self.keylist_query(&m).await?),
            ("messagepickup/2.0", "status-request") => Some(m.reply(
                "messagepickup/2.0/status",
                self.status(&conn.id, msg, socket).await?,
            )),
            ("messagepickup/2.0", "delivery-request") => Some(self.delivery_request(&m).await?),
            ("messagepickup/2.0", "messages-received") => Some(self.messages_received(&m).await?),
            ("messagepickup/2.0", "live-delivery-change") => {
                Some(self.live_delivery_change(&m).await?)
            }
            ("messagepickup/1.0", "batch-pickup") => Some(self.batch_pickup(&m).await?),
            ("messagepickup/1.0", "status-request") => Some(self.status_v1(&m).await?),
            (
                "notification/1.0"
                | "report-problem/1.0"
                | "coordinate-mediation/1.0"
                | "messagepickup/2.0",
                "problem-report",
            ) => {
                let code = msg
                    .pointer("/description/code")
                    .and_then(Value::as_str)
                    .map(crate::error::outward_detail);
                tracing::info!(connection = %conn.id, code = ?code, "problem report from peer");
                None
            }
            ("discover-features/1.0", "query") => Some(disclose(&m)),
            _ => Some(problem_report(
                thid,
                "unsupported-message-type",
                &format!("this mediator does not handle {proto}/{name}"),
            )),
        })
    }
}

/// Trust ping: a `ping_response` unless the ping says `response_requested: false`.
fn trust_ping(m: &ConnMessage<'_>) -> Option<Value> {
    let requested = m
        .msg
        .get("response_requested")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    requested.then(|| m.reply("trust_ping/1.0/ping_response", json!({})))
}

/// Discover features 1.0: the protocols this mediator speaks, and in which role.
fn disclose(m: &ConnMessage<'_>) -> Value {
    m.reply(
        "discover-features/1.0/disclose",
        json!({"protocols": [
            {"pid": format!("{DIDCOMM}coordinate-mediation/1.0"), "roles": ["mediator"]},
            {"pid": format!("{DIDCOMM}messagepickup/2.0"), "roles": ["mediator"]},
            {"pid": format!("{DIDCOMM}messagepickup/1.0"), "roles": ["mediator"]},
            {"pid": format!("{DIDCOMM}routing/1.0"), "roles": ["mediator"]},
            {"pid": format!("{DIDCOMM}trust_ping/1.0"), "roles": ["receiver"]},
        ]}),
    )
}
