//! An agent-side DIDComm v1 client, just enough to use a mediator the way a mobile wallet does:
//! connect through an out-of-band invitation (DID exchange 1.1 with a `did:key`), request
//! mediation, register keys, trust-ping, open a WebSocket for pickup 2.0 live mode, and send
//! forwards as a sender. The load harness, the stdio agent and the tests drive mediators with it.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{envelope, peer};
use crate::clock::random_id;

pub const CONTENT_TYPE: &str = "application/didcomm-envelope-enc";
const DIDCOMM: &str = "https://didcomm.org/";

/// A key pair acting as one DIDComm agent.
#[derive(Clone)]
pub struct AgentKey {
    key: SigningKey,
    pub verkey: String,
}

impl AgentKey {
    pub fn generate() -> Self {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let verkey = envelope::verkey_b58(&key.verifying_key().to_bytes());
        Self { key, verkey }
    }

    pub fn verkey_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn did_key(&self) -> String {
        peer::did_key_of(&self.verkey).unwrap_or_default()
    }

    /// Authcrypts `msg` to `to`.
    pub fn pack(&self, msg: &Value, to: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        self.pack_to_all(msg, &[*to])
    }

    /// Authcrypts `msg` to every key of `to` (one envelope they all open).
    pub fn pack_to_all(&self, msg: &Value, to: &[[u8; 32]]) -> anyhow::Result<Vec<u8>> {
        Ok(envelope::pack(
            msg.to_string().as_bytes(),
            to,
            Some(&self.key),
        )?)
    }

    /// Opens an envelope for whichever of `keys` it is addressed to: (message, recipient verkey,
    /// authenticated sender verkey).
    pub fn unpack_any(
        keys: &[AgentKey],
        env: &[u8],
    ) -> anyhow::Result<(Value, String, Option<String>)> {
        let u = envelope::unpack(env, |kid| {
            keys.iter().find(|k| k.verkey == kid).map(|k| k.key.clone())
        })?;
        Ok((
            serde_json::from_slice(&u.message)?,
            u.recipient_verkey,
            u.sender_verkey,
        ))
    }

    /// Opens an envelope for this key: (message, authenticated sender verkey).
    pub fn unpack(&self, env: &[u8]) -> anyhow::Result<(Value, Option<String>)> {
        let own = &self.verkey;
        let u = envelope::unpack(env, |kid| (kid == own).then(|| self.key.clone()))?;
        Ok((serde_json::from_slice(&u.message)?, u.sender_verkey))
    }
}

/// The parts of an out-of-band invitation a client needs.
#[derive(Debug, Clone)]
pub struct Invitation {
    pub id: String,
    pub recipient_key: [u8; 32],
    pub http_endpoint: String,
    pub ws_endpoint: Option<String>,
}

/// Parses an `…?oob=` (or legacy `…?c_i=`) invitation URL.
pub fn parse_invitation(url: &str) -> anyhow::Result<Invitation> {
    let parsed = reqwest::Url::parse(url).context("invitation URL")?;
    let enc = parsed
        .query_pairs()
        .find(|(k, _)| k == "oob" || k == "c_i")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow!("the invitation URL has no oob= parameter"))?;
    let raw = URL_SAFE_NO_PAD
        .decode(enc.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(&enc))
        .context("invitation base64")?;
    let inv: Value = serde_json::from_slice(&raw).context("invitation JSON")?;
    let services = inv
        .get("services")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut http_endpoint = None;
    let mut ws_endpoint = None;
    let mut recipient_key = None;
    for s in &services {
        let ep = s
            .get("serviceEndpoint")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if recipient_key.is_none() {
            recipient_key = s
                .pointer("/recipientKeys/0")
                .and_then(Value::as_str)
                .and_then(|k| peer::normalize_key(k).ok());
        }
        if ep.starts_with("http") && http_endpoint.is_none() {
            http_endpoint = Some(ep.to_string());
        } else if ep.starts_with("ws") && ws_endpoint.is_none() {
            ws_endpoint = Some(ep.to_string());
        }
    }
    let rk = recipient_key
        .ok_or_else(|| anyhow!("the invitation has no inline service with a recipient key"))?;
    let rk = key32(&rk)?;
    Ok(Invitation {
        id: inv
            .get("@id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        recipient_key: rk,
        http_endpoint: http_endpoint
            .ok_or_else(|| anyhow!("the invitation has no http(s) endpoint"))?,
        ws_endpoint,
    })
}

/// A connection to a mediator, spoken over HTTP with return-route.
pub struct MediatorConnection {
    pub agent: AgentKey,
    pub invitation: Invitation,
    /// The mediator's connection key (from its DID exchange response).
    pub mediator_key: [u8; 32],
    pub routing_keys: Vec<String>,
    http: reqwest::Client,
}

/// [`new_message`] asking for replies on the same HTTP request (return route).
fn msg(t: &str, body: Value) -> Value {
    let mut m = new_message(t, body);
    m["~transport"] = json!({"return_route": "all"});
    m
}

fn typ(m: &Value) -> &str {
    m.get("@type").and_then(Value::as_str).unwrap_or_default()
}

impl MediatorConnection {
    /// DID exchange 1.1 with the invitation's key, over HTTP; ends with `complete`.
    pub async fn connect(
        http: reqwest::Client,
        invitation_url: &str,
        label: &str,
    ) -> anyhow::Result<Self> {
        let invitation = parse_invitation(invitation_url)?;
        let agent = AgentKey::generate();
        let mut conn = Self {
            mediator_key: invitation.recipient_key,
            agent,
            invitation,
            routing_keys: Vec::new(),
            http,
        };
        let mut req = didexchange_request(label, &conn.agent.did_key(), &conn.invitation.id);
        req["~transport"] = json!({"return_route": "all"});
        let resp = conn
            .post_to(&req, &conn.invitation.recipient_key.clone())
            .await?
            .ok_or_else(|| anyhow!("no DID exchange response (return-route)"))?;
        if !typ(&resp).ends_with("didexchange/1.1/response") {
            bail!("expected a DID exchange response, got {resp}");
        }
        let did = resp.get("did").and_then(Value::as_str).unwrap_or_default();
        let info = peer::resolve(did, None).map_err(|e| anyhow!("mediator DID: {e}"))?;
        let vk = info
            .verkeys
            .first()
            .ok_or_else(|| anyhow!("mediator DID has no key"))?;
        conn.mediator_key = key32(vk)?;
        let mut complete = msg("didexchange/1.1/complete", json!({}));
        complete["~thread"] = json!({"thid": req["@id"], "pthid": conn.invitation.id});
        conn.request(complete).await?;
        Ok(conn)
    }

    async fn post_to(&self, m: &Value, to: &[u8; 32]) -> anyhow::Result<Option<Value>> {
        let reply = post_envelope_for_reply(
            &self.http,
            &self.invitation.http_endpoint,
            self.agent.pack(m, to)?,
        )
        .await?;
        reply.map(|env| Ok(self.agent.unpack(&env)?.0)).transpose()
    }

    /// Sends `m` and returns the raw envelope of the answer, if any (implicit pickup answers with
    /// a queued message, encrypted for a recipient key rather than for this connection's key).
    pub async fn request_raw(&self, m: Value) -> anyhow::Result<Option<Vec<u8>>> {
        post_envelope_for_reply(
            &self.http,
            &self.invitation.http_endpoint,
            self.agent.pack(&m, &self.mediator_key)?,
        )
        .await
    }

    /// Sends `m` (with return-route) and returns the reply, if any.
    pub async fn request(&self, m: Value) -> anyhow::Result<Option<Value>> {
        let to = self.mediator_key;
        self.post_to(&m, &to).await
    }

    /// coordinate-mediation: request → grant; remembers the routing keys.
    pub async fn mediate(&mut self) -> anyhow::Result<Vec<String>> {
        let grant = self
            .request(msg("coordinate-mediation/1.0/mediate-request", json!({})))
            .await?
            .ok_or_else(|| anyhow!("no mediation answer"))?;
        if !typ(&grant).ends_with("mediate-grant") {
            bail!("mediation not granted: {grant}");
        }
        self.routing_keys = grant
            .get("routing_keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().and_then(|k| peer::normalize_key(k).ok()))
            .collect();
        Ok(self.routing_keys.clone())
    }

    /// keylist-update: add or remove `verkey`; returns the mediator's `result`.
    pub async fn keylist_update(&self, verkey: &str, action: &str) -> anyhow::Result<String> {
        let r = self
            .request(msg(
                "coordinate-mediation/1.0/keylist-update",
                json!({"updates": [{"recipient_key": peer::did_key_of(verkey).map_err(anyhow::Error::msg)?, "action": action}]}),
            ))
            .await?
            .ok_or_else(|| anyhow!("no keylist-update-response"))?;
        Ok(r.pointer("/updated/0/result")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Trust ping with response requested, over HTTP.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let r = self
            .request(msg(
                "trust_ping/1.0/ping",
                json!({"response_requested": true}),
            ))
            .await?
            .ok_or_else(|| anyhow!("no ping response"))?;
        if !typ(&r).ends_with("ping_response") {
            bail!("expected ping_response, got {r}");
        }
        Ok(())
    }

    /// Opens the mediator's WebSocket.
    pub async fn websocket(&self) -> anyhow::Result<WsConnection> {
        let url = self
            .invitation
            .ws_endpoint
            .clone()
            .ok_or_else(|| anyhow!("the mediator lists no WebSocket endpoint"))?;
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .context("WebSocket connect")?;
        Ok(WsConnection {
            agent: self.agent.clone(),
            mediator_key: self.mediator_key,
            ws,
        })
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to the mediator, for one [`MediatorConnection`].
pub struct WsConnection {
    agent: AgentKey,
    mediator_key: [u8; 32],
    ws: WsStream,
}

impl WsConnection {
    pub async fn send(&mut self, m: Value) -> anyhow::Result<()> {
        let body = self.agent.pack(&m, &self.mediator_key)?;
        self.ws.send(WsMessage::binary(body)).await?;
        Ok(())
    }

    /// Sends raw bytes as a binary frame (tests of bad input).
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(WsMessage::binary(bytes)).await?;
        Ok(())
    }

    /// The next binary frame as it came (implicit pickup pushes forwarded envelopes, encrypted
    /// for a recipient key, not for this connection's key).
    pub async fn recv_raw(&mut self, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("nothing received on the WebSocket within {timeout:?}"))?;
            match next.ok_or_else(|| anyhow!("WebSocket closed"))?? {
                WsMessage::Binary(b) => return Ok(b.to_vec()),
                WsMessage::Text(t) => return Ok(t.as_bytes().to_vec()),
                WsMessage::Close(_) => bail!("WebSocket closed by the mediator"),
                _ => {}
            }
        }
    }

    /// The next DIDComm message on the socket (pings answered, problem documents as errors).
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("nothing received on the WebSocket within {timeout:?}"))?;
            let frame = next.ok_or_else(|| anyhow!("WebSocket closed"))??;
            match frame {
                WsMessage::Binary(b) => return Ok(self.agent.unpack(&b)?.0),
                WsMessage::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v.get("protected").is_some() {
                        return Ok(self.agent.unpack(t.as_bytes())?.0);
                    }
                    bail!("mediator refused a message: {v}");
                }
                WsMessage::Close(_) => bail!("WebSocket closed by the mediator"),
                _ => {}
            }
        }
    }

    /// Sends `m` and waits for the first message of type ending in `reply_suffix`; other
    /// messages that arrive meanwhile (live deliveries) are returned too.
    pub async fn call(
        &mut self,
        m: Value,
        reply_suffix: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Value, Vec<Value>)> {
        self.send(m).await?;
        let mut others = Vec::new();
        loop {
            let r = self.recv(timeout).await?;
            if typ(&r).ends_with(reply_suffix) {
                return Ok((r, others));
            }
            others.push(r);
        }
    }

    /// Turns pickup 2.0 live mode on.
    pub async fn live(&mut self, on: bool) -> anyhow::Result<()> {
        self.send(msg(
            "messagepickup/2.0/live-delivery-change",
            json!({"live_delivery": on}),
        ))
        .await
    }

    /// Acknowledges delivered messages by id.
    pub async fn ack(&mut self, ids: &[String]) -> anyhow::Result<()> {
        self.send(msg(
            "messagepickup/2.0/messages-received",
            json!({"message_id_list": ids}),
        ))
        .await
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Waits for the mediator to close the socket; its close code (1005 when it gave none).
    pub async fn close_code(&mut self, timeout: Duration) -> anyhow::Result<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("the WebSocket stayed open for {timeout:?}"))?;
            let frame = next.ok_or_else(|| anyhow!("WebSocket ended without a close frame"))??;
            if let WsMessage::Close(frame) = frame {
                return Ok(frame.map_or(1005, |f| u16::from(f.code)));
            }
        }
    }
}

/// Helpers for pickup messages.
pub mod pickup {
    use super::*;

    pub fn status_request() -> Value {
        msg("messagepickup/2.0/status-request", json!({}))
    }
    pub fn delivery_request(limit: usize) -> Value {
        msg(
            "messagepickup/2.0/delivery-request",
            json!({"limit": limit}),
        )
    }
    pub fn messages_received(ids: &[String]) -> Value {
        msg(
            "messagepickup/2.0/messages-received",
            json!({"message_id_list": ids}),
        )
    }
    pub fn ping() -> Value {
        msg("trust_ping/1.0/ping", json!({"response_requested": true}))
    }
    /// The trust ping credo's implicit pickup opens its socket with: no response, return-route `all`.
    pub fn ping_no_response() -> Value {
        msg("trust_ping/1.0/ping", json!({"response_requested": false}))
    }
    /// (attachment id, envelope) of a `delivery`.
    pub fn attachments(delivery: &Value) -> Vec<(String, Value)> {
        delivery
            .get("~attach")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let id = a.get("@id")?.as_str()?.to_string();
                let data = a.pointer("/data/json").cloned().or_else(|| {
                    let b = peer::attachment_bytes(a).ok()?;
                    serde_json::from_slice(&b).ok()
                })?;
                Some((id, data))
            })
            .collect()
    }
}

/// The envelope a sender posts to the mediator for `recipient` (packed inner message wrapped in a
/// routing forward to the mediator's routing key, anoncrypted).
pub fn forward_envelope(
    inner: &[u8],
    recipient_verkey: &str,
    routing_key_b58: &str,
) -> anyhow::Result<Vec<u8>> {
    route(
        inner.to_vec(),
        &key32(recipient_verkey)?,
        &[key32(routing_key_b58)?],
    )
}

/// A DIDComm connection with another agent (not the mediator) that reaches us through our
/// mediator: messages to it go to its service endpoint (wrapped in forwards for its routing keys),
/// its messages to us arrive as pickup deliveries for `key`.
pub struct PeerConnection {
    /// Our key on this connection (registered with the mediator).
    pub key: AgentKey,
    pub their_did: String,
    pub their_key: [u8; 32],
    pub endpoint: String,
    pub routing_keys: Vec<[u8; 32]>,
}

/// A new message of `t` (`protocol/version/name`) without transport decorators.
pub fn new_message(t: &str, body: Value) -> Value {
    let mut m = body;
    m["@type"] = json!(format!("{DIDCOMM}{t}"));
    m["@id"] = json!(random_id());
    m
}

/// The DID exchange 1.1 request of an agent reachable at `did` (a `did:peer:2` naming its
/// mediator's endpoint and routing keys) answering invitation `invitation_id`.
pub fn didexchange_request(label: &str, did: &str, invitation_id: &str) -> Value {
    let mut req = new_message(
        "didexchange/1.1/request",
        json!({"label": label, "did": did}),
    );
    req["~thread"] = json!({"thid": req["@id"], "pthid": invitation_id});
    req
}

fn key32(b58: &str) -> anyhow::Result<[u8; 32]> {
    crate::crypto::bs58_decode(b58, 32)
        .map_err(|e| anyhow!(e))?
        .try_into()
        .map_err(|_| anyhow!("key is not 32 bytes"))
}

impl PeerConnection {
    /// Completes DID exchange from the inviter's `response` to our `request`: reads the inviter's
    /// DID (key, endpoint, routing keys) and sends `complete`.
    pub async fn complete(
        http: &reqwest::Client,
        key: AgentKey,
        request: &Value,
        response: &Value,
    ) -> anyhow::Result<Self> {
        let did = response
            .get("did")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let doc = response.pointer("/did_doc~attach").and_then(|a| {
            peer::attachment_bytes(a)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        });
        let info = peer::resolve(did, doc.as_ref()).map_err(|e| anyhow!("their DID: {e}"))?;
        let their_key = key32(
            info.verkeys
                .first()
                .ok_or_else(|| anyhow!("their DID has no key"))?,
        )?;
        let endpoint = info
            .endpoint
            .filter(|e| e.starts_with("http"))
            .ok_or_else(|| anyhow!("their DID has no http(s) DIDComm endpoint"))?;
        let conn = Self {
            key,
            their_did: did.to_string(),
            their_key,
            endpoint,
            routing_keys: info
                .routing_keys
                .iter()
                .map(|k| key32(k))
                .collect::<anyhow::Result<_>>()?,
        };
        let mut complete = new_message("didexchange/1.1/complete", json!({}));
        complete["~thread"] =
            json!({"thid": request["@id"], "pthid": request.pointer("/~thread/pthid")});
        conn.send(http, &complete).await?;
        Ok(conn)
    }

    /// Authcrypts `m` to the peer, wraps it for each of its routing keys, posts it.
    pub async fn send(&self, http: &reqwest::Client, m: &Value) -> anyhow::Result<()> {
        let body = route(
            self.key.pack(m, &self.their_key)?,
            &self.their_key,
            &self.routing_keys,
        )?;
        post_envelope(http, &self.endpoint, body).await
    }
}

/// Wraps `packed` (for `to`) in one anoncrypted forward per routing key, innermost first.
pub fn route(packed: Vec<u8>, to: &[u8; 32], routing_keys: &[[u8; 32]]) -> anyhow::Result<Vec<u8>> {
    let mut body = packed;
    let mut next = envelope::verkey_b58(to);
    for rk in routing_keys {
        let fwd = json!({
            "@type": format!("{DIDCOMM}routing/1.0/forward"),
            "@id": random_id(),
            "to": next,
            "msg": serde_json::from_slice::<Value>(&body)?,
        });
        body = envelope::pack(fwd.to_string().as_bytes(), &[*rk], None)?;
        next = envelope::verkey_b58(rk);
    }
    Ok(body)
}

/// Posts one envelope to a DIDComm HTTP endpoint; any 2xx is delivery.
pub async fn post_envelope(
    http: &reqwest::Client,
    endpoint: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    post_envelope_for_reply(http, endpoint, body)
        .await
        .map(drop)
}

/// [`post_envelope`], returning the envelope the receiver answered on the same request (return
/// route), if any.
pub async fn post_envelope_for_reply(
    http: &reqwest::Client,
    endpoint: &str,
    body: Vec<u8>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let resp = http
        .post(endpoint)
        .header("content-type", CONTENT_TYPE)
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!(
            "{endpoint} answered {status}: {}",
            String::from_utf8_lossy(&resp.bytes().await.unwrap_or_default())
        );
    }
    let bytes = resp.bytes().await?;
    Ok((!bytes.is_empty()).then(|| bytes.to_vec()))
}

/// A plain basic message, for tests and load.
pub fn basic_message(content: &str) -> Value {
    json!({
        "@type": format!("{DIDCOMM}basicmessage/1.0/message"),
        "@id": random_id(),
        "sent_time": "2026-01-01T00:00:00Z",
        "content": content,
    })
}
