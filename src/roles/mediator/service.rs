//! The mediator's protocol engine: unpacks an inbound envelope, runs the DIDComm v1 protocol it
//! carries (handshakes, trust ping, coordinate-mediation, forward, pickup 1.0/2.0) and returns the
//! replies to send back. Transport-free: `routes.rs` feeds it HTTP bodies and WebSocket frames.
//!
//! Delivery semantics (DESIGN.md §7): a forward is stored (and flushed) before the sender's 202;
//! `mediator.queued` goes on the bus; whoever holds the recipient's live socket pushes a pickup
//! `delivery`; a message leaves the queue only when `messages-received` names it; a new socket or
//! live-mode switch redelivers everything unacknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::envelope::{self, EnvelopeError};
use super::ks;
use super::model::*;
use super::peer;
use super::queue::{Change, ConnQueue, Entry};
use crate::clock::random_id;
use crate::config::MediatorConfig;
use crate::error::{ApiError, ApiResult, Code};
use crate::roles::RoleContext;
use crate::store::Cas;

/// Bus topic of a message queued (payload `{connection}\n{origin node}`): wakes the socket that
/// holds the connection live; other nodes also drop their index of that queue.
pub const BUS_TOPIC: &str = "mediator.queued";
/// Bus topic of messages acknowledged (same payload): other nodes drop their index of that queue.
pub const BUS_TOPIC_ACKED: &str = "mediator.acked";
const DIDCOMM: &str = "https://didcomm.org/";
const LEGACY_PREFIX: &str = "did:sov:BzCbsNYhMrjHiqZDTUASHg;spec/";
/// Most messages in one pickup `delivery`.
const DELIVERY_BATCH: usize = 50;
/// Most messages handed to one socket and not yet acknowledged; beyond it the pump waits.
const MAX_INFLIGHT: usize = 500;
/// Live mode: most `delivery` messages on one socket awaiting their `messages-received`. While one
/// is out, what arrives waits and goes in the next delivery (up to `DELIVERY_BATCH`): a recipient
/// slower than its senders gets fewer, fuller deliveries instead of one per message, each of which
/// costs it an unpack, a `messages-received` and a `status` (credo-ts 0.6.3 fell behind at about
/// 10 msg/s on 2 shared cores with one message per delivery; see BENCHMARKS.md).
const LIVE_WINDOW: usize = 1;
/// Longest a held-back message waits for the answer to the delivery before it: then it goes out
/// anyway (a socket timer), so a client that is slow to acknowledge, or never does, still gets
/// new messages at once, just gathered in fewer deliveries.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// A frame for a WebSocket. `implicit` names the queued message (connection, id) the frame
/// carries raw (implicit pickup): it is deleted from the queue once the frame is written.
pub struct Outgoing {
    pub frame: Vec<u8>,
    pub implicit: Option<(String, String)>,
}

/// How a socket gets its connection's queue pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Pickup 2.0 live mode: `delivery` messages, deleted on `messages-received`.
    Live,
    /// Implicit pickup (return-route `all` on the recipient's own socket, as ACA-Py serves): the
    /// forwarded envelopes themselves, deleted once written.
    Implicit,
}

/// A live WebSocket, as the engine sees it.
pub struct Socket {
    pub id: u64,
    /// Outgoing frames (bounded: a slow client backs up its own pump, nobody else's).
    pub tx: mpsc::Sender<Outgoing>,
    /// The connection whose queue is pushed here, and how.
    mode: Mutex<Option<(String, Mode)>>,
    /// Message ids delivered on this socket and not yet acknowledged.
    inflight: Mutex<HashSet<String>>,
    /// Live mode: deliveries sent on this socket and not yet answered by `messages-received`, and
    /// when the last one went out.
    unanswered: AtomicUsize,
    last_delivery: Mutex<Option<std::time::Instant>>,
    /// When the pump must run again without being woken: a delivery held back for want of an
    /// answer (`ACK_WAIT` after the last one), or messages another transport leased whose lease
    /// runs out (nothing else would wake this socket for them).
    pump_at: Mutex<Option<std::time::Instant>>,
    /// The client spoke a pickup protocol on this socket: it picks up explicitly, never implicitly.
    pickup_client: AtomicBool,
    closed: AtomicBool,
    pub wake: Notify,
}

impl Socket {
    pub fn new(id: u64, tx: mpsc::Sender<Outgoing>) -> Self {
        Self {
            id,
            tx,
            mode: Mutex::new(None),
            inflight: Mutex::default(),
            unanswered: AtomicUsize::new(0),
            last_delivery: Mutex::new(None),
            pump_at: Mutex::new(None),
            pickup_client: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }
    fn mode(&self) -> Option<(String, Mode)> {
        self.mode.lock().ok().and_then(|g| g.clone())
    }
    /// The connection in pickup 2.0 live mode on this socket.
    pub fn live_connection(&self) -> Option<String> {
        self.mode()
            .and_then(|(c, m)| (m == Mode::Live).then_some(c))
    }
    fn inflight_len(&self) -> usize {
        self.inflight.lock().map(|g| g.len()).unwrap_or(0)
    }
    /// Live mode: when `LIVE_WINDOW` deliveries are out and the last one went out less than
    /// `ACK_WAIT` ago, the moment the next may go out without an answer.
    fn awaiting_answer_until(&self) -> Option<std::time::Instant> {
        if self.unanswered.load(Ordering::Relaxed) < LIVE_WINDOW {
            return None;
        }
        let until = self.last_delivery.lock().ok().and_then(|g| *g)? + ACK_WAIT;
        (until > std::time::Instant::now()).then_some(until)
    }
    /// When the pump must run again even if nothing wakes it.
    pub fn pump_deadline(&self) -> Option<std::time::Instant> {
        self.pump_at.lock().ok().and_then(|g| *g)
    }
    fn set_pump_deadline(&self, at: Option<std::time::Instant>) {
        if let Ok(mut g) = self.pump_at.lock() {
            *g = at;
        }
    }
    fn delivery_sent(&self) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.last_delivery.lock() {
            *g = Some(std::time::Instant::now());
        }
    }
    /// A `messages-received` for ids this socket was handed; `all_answered`: nothing it was
    /// handed is unacknowledged any more (so no delivery awaits an answer, whatever the count
    /// says: a client may answer two deliveries at once, or leave one unanswered).
    fn delivery_answered(&self, all_answered: bool) {
        if all_answered {
            self.unanswered.store(0, Ordering::Relaxed);
        } else {
            let _ = self
                .unanswered
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

/// Who holds a message handed out and not yet acknowledged.
enum Holder {
    /// A socket, until it closes.
    Socket(u64, Weak<Socket>),
    /// An HTTP pickup, until the lease runs out.
    Http { until_ms: i64 },
}

impl Holder {
    fn alive(&self, now: i64) -> bool {
        match self {
            Holder::Socket(_, w) => w
                .upgrade()
                .is_some_and(|s| !s.closed.load(Ordering::Relaxed)),
            Holder::Http { until_ms } => now < *until_ms,
        }
    }
}

enum Slot {
    /// Being built from a store scan; changes made meanwhile are applied when it is done.
    Loading(Vec<Change>),
    Ready(ConnQueue),
}

/// The node's bookkeeping of queues and leases, per connection.
#[derive(Default)]
struct Book {
    queues: HashMap<String, Slot>,
    /// Connection → message id → holder. Kept apart from `queues` (which other nodes' changes
    /// invalidate) so a lease outlives an index rebuild.
    leases: HashMap<String, HashMap<String, Holder>>,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    delivered: AtomicU64,
    acknowledged: AtomicU64,
}

pub struct MediatorService {
    ctx: RoleContext,
    cfg: MediatorConfig,
    key: SigningKey,
    pub verkey: String,
    pub did: String,
    pub did_key: String,
    /// Connection id → the socket that has live mode on for it (last one wins).
    live: Mutex<HashMap<String, Weak<Socket>>>,
    open_sockets: AtomicU64,
    next_socket: AtomicU64,
    /// Queue indexes and leases: each message is handed out once per socket or HTTP lease,
    /// whichever transport asks.
    book: Mutex<Book>,
    /// This node's id on the bus (tells its own events from other nodes').
    origin: String,
    counters: Counters,
    metrics: Option<Metrics>,
}

struct Metrics {
    forwarded: prometheus::IntCounter,
    delivered: prometheus::IntCounter,
    acknowledged: prometheus::IntCounter,
    rejected: prometheus::IntCounterVec,
}

/// What a message asked of the transport it came on.
#[derive(Debug, Default)]
pub struct Replies {
    /// Packed envelopes to return on the same transport (`~transport.return_route`).
    pub envelopes: Vec<Vec<u8>>,
    /// Implicit pickup over HTTP: the message asked for return-route `all`, came from a mediated
    /// connection (this one) and has no reply, so the response may carry a queued message.
    pub implicit_for: Option<String>,
}

fn didcomm_error(code: Code, detail: impl Into<String>) -> ApiError {
    ApiError::new(code, detail)
}

/// `https://didcomm.org/<protocol>/<version>/<name>` with the legacy `did:sov:…;spec/` prefix
/// mapped to the modern one.
pub fn normalize_type(t: &str) -> String {
    match t.strip_prefix(LEGACY_PREFIX) {
        Some(rest) => format!("{DIDCOMM}{rest}"),
        None => t.to_string(),
    }
}

fn thread_id(msg: &Value) -> String {
    msg.pointer("/~thread/thid")
        .and_then(Value::as_str)
        .or_else(|| msg.get("@id").and_then(Value::as_str))
        .unwrap_or_default()
        .to_string()
}

fn wants_return_route(msg: &Value) -> bool {
    matches!(
        msg.pointer("/~transport/return_route")
            .and_then(Value::as_str),
        Some("all" | "thread")
    )
}

fn wants_return_route_all(msg: &Value) -> bool {
    msg.pointer("/~transport/return_route")
        .and_then(Value::as_str)
        == Some("all")
}

fn verkey_bytes(b58: &str) -> ApiResult<[u8; 32]> {
    bs58::decode(b58)
        .into_vec()
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| didcomm_error(Code::DidcommBadMessage, "not a base58 Ed25519 verkey"))
}

impl MediatorService {
    pub async fn new(ctx: RoleContext, cfg: MediatorConfig) -> anyhow::Result<Self> {
        let key = load_or_create_key(&ctx).await?;
        let vk = key.verifying_key().to_bytes();
        let verkey = envelope::verkey_b58(&vk);
        let endpoints = endpoints(&ctx);
        let did = peer::did_peer_2(&vk, &endpoints, &[]).map_err(anyhow::Error::msg)?;
        let did_key = peer::did_key_of(&verkey).map_err(anyhow::Error::msg)?;
        let metrics = register_metrics(&ctx).ok();
        Ok(Self {
            ctx,
            cfg,
            key,
            verkey,
            did,
            did_key,
            live: Mutex::default(),
            open_sockets: AtomicU64::new(0),
            next_socket: AtomicU64::new(1),
            book: Mutex::default(),
            origin: random_id(),
            counters: Counters::default(),
            metrics,
        })
    }

    fn now(&self) -> i64 {
        self.ctx.clock.now_ms()
    }

    // ---- invitations -------------------------------------------------------------------------

    pub async fn invitation(&self, q: &InvitationQuery) -> ApiResult<InvitationResponse> {
        let mut protocols = Vec::new();
        let wanted = q.handshake.as_deref().unwrap_or("didexchange,connections");
        for p in wanted.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p {
                "didexchange" => {
                    protocols.push(format!("{DIDCOMM}didexchange/1.1"));
                    protocols.push(format!("{DIDCOMM}didexchange/1.0"));
                }
                "connections" => protocols.push(format!("{DIDCOMM}connections/1.0")),
                other => {
                    return Err(ApiError::new(
                        Code::InvalidQuery,
                        format!("unknown handshake protocol {other:?} (didexchange, connections)"),
                    ))
                }
            }
        }
        let id = if q.single_use {
            let id = random_id();
            let rec = InvitationRecord {
                id: id.clone(),
                multi_use: false,
                used: false,
                connections: 0,
            };
            self.ctx
                .store
                .put_json(
                    ks::INVITATIONS,
                    &id,
                    &rec,
                    Some(std::time::Duration::from_secs(7 * 86400)),
                )
                .await?;
            id
        } else {
            self.public_invitation_id().await?
        };
        let services: Vec<Value> = endpoints(&self.ctx)
            .into_iter()
            .enumerate()
            .map(|(i, ep)| {
                json!({
                    "id": format!("#inline-{i}"),
                    "type": "did-communication",
                    "recipientKeys": [self.did_key],
                    "routingKeys": [],
                    "serviceEndpoint": ep,
                })
            })
            .collect();
        let invitation = json!({
            "@type": format!("{DIDCOMM}out-of-band/1.1/invitation"),
            "@id": id,
            "label": self.cfg.label,
            "goal_code": "aries.vc.mediate",
            "goal": "Mediation",
            "accept": ["didcomm/aip1", "didcomm/aip2;env=rfc19"],
            "handshake_protocols": protocols,
            "services": services,
        });
        let invitation_url = format!(
            "{}/didcomm?oob={}",
            self.ctx.public_url,
            URL_SAFE_NO_PAD.encode(invitation.to_string())
        );
        Ok(InvitationResponse {
            invitation_url,
            invitation,
        })
    }

    /// The reusable invitation's id: created once, the same on every node and after restarts.
    async fn public_invitation_id(&self) -> ApiResult<String> {
        const KEY: &str = "public";
        if let Some(rec) = self
            .ctx
            .store
            .get_json::<InvitationRecord>(ks::INVITATIONS, KEY)
            .await?
        {
            return Ok(rec.id);
        }
        let rec = InvitationRecord {
            id: random_id(),
            multi_use: true,
            used: false,
            connections: 0,
        };
        // The invitation record first, then the pointer to it: whoever reads the pointer (on any
        // node) finds the record. (The other order let a concurrent first caller hand out an id
        // whose record did not exist yet, and its DID exchange was refused.)
        self.ctx
            .store
            .put_json(ks::INVITATIONS, &rec.id, &rec, None)
            .await?;
        let bytes = serde_json::to_vec(&rec).map_err(ApiError::internal)?;
        match self
            .ctx
            .store
            .compare_and_swap(ks::INVITATIONS, KEY, None, Some((bytes, None)))
            .await?
        {
            Cas::Swapped => Ok(rec.id),
            Cas::Conflict(Some(cur)) => {
                // another caller won: ours was never handed out
                self.ctx.store.delete(ks::INVITATIONS, &rec.id).await?;
                serde_json::from_slice::<InvitationRecord>(&cur)
                    .map(|r| r.id)
                    .map_err(ApiError::internal)
            }
            Cas::Conflict(None) => Err(ApiError::internal("public invitation vanished")),
        }
    }

    /// Accepts a handshake on invitation `pthid`: reusable ones up to
    /// `max_connections_per_invitation` connections (one compare-and-swap on a counter), single-use
    /// ones once. Returns (invitation id, single-use).
    async fn use_invitation(&self, pthid: Option<&str>) -> ApiResult<(String, bool)> {
        let Some(pthid) = pthid else {
            return Err(didcomm_error(
                Code::DidcommBadMessage,
                "handshake request without ~thread.pthid naming our invitation",
            ));
        };
        let store = &self.ctx.store;
        let max = self.cfg.max_connections_per_invitation;
        let mut tries = 0;
        let (raw, mut rec) = loop {
            let Some(raw) = store.get(ks::INVITATIONS, pthid).await? else {
                return Err(didcomm_error(
                    Code::DidcommBadMessage,
                    "the invitation this request answers is unknown or expired",
                ));
            };
            let mut rec: InvitationRecord =
                serde_json::from_slice(&raw).map_err(ApiError::internal)?;
            if !rec.multi_use {
                break (raw, rec);
            }
            if rec.connections >= max {
                return Err(self.reject(
                    Code::Gone,
                    format!("this invitation has reached its limit of {max} connections"),
                ));
            }
            rec.connections += 1;
            let new = serde_json::to_vec(&rec).map_err(ApiError::internal)?;
            if store
                .compare_and_swap(ks::INVITATIONS, pthid, Some(raw), Some((new, None)))
                .await?
                == Cas::Swapped
            {
                return Ok((rec.id, false));
            }
            tries += 1;
            if tries >= 64 {
                return Err(ApiError::new(
                    Code::Conflict,
                    "too many connections on this invitation at once; retry",
                ));
            }
        };
        if rec.used {
            return Err(didcomm_error(
                Code::Gone,
                "this single-use invitation was already used",
            ));
        }
        rec.used = true;
        rec.connections = 1;
        let new = serde_json::to_vec(&rec).map_err(ApiError::internal)?;
        match store
            .compare_and_swap(
                ks::INVITATIONS,
                pthid,
                Some(raw),
                Some((new, Some(std::time::Duration::from_secs(86400)))),
            )
            .await?
        {
            Cas::Swapped => Ok((rec.id, true)),
            Cas::Conflict(_) => Err(didcomm_error(
                Code::Gone,
                "this single-use invitation was already used",
            )),
        }
    }

    // ---- inbound -----------------------------------------------------------------------------

    /// Handles one inbound envelope. `socket` is set when it came on a WebSocket.
    pub async fn receive(&self, body: &[u8], socket: Option<&Arc<Socket>>) -> ApiResult<Replies> {
        if body.len() > self.cfg.max_message_bytes {
            return Err(self.reject(Code::PayloadTooLarge, "DIDComm message too large"));
        }
        let key = &self.key;
        let own = &self.verkey;
        let unpacked =
            envelope::unpack(body, |kid| (kid == own).then(|| key.clone())).map_err(|e| {
                let code = match e {
                    EnvelopeError::UnknownRecipient => Code::DidcommUnknownRecipient,
                    _ => Code::DidcommUnpackFailed,
                };
                self.reject(code, e.to_string())
            })?;
        let msg: Value = serde_json::from_slice(&unpacked.message).map_err(|e| {
            self.reject(
                Code::DidcommBadMessage,
                format!("plaintext is not JSON: {e}"),
            )
        })?;
        let typ = msg
            .get("@type")
            .and_then(Value::as_str)
            .map(normalize_type)
            .ok_or_else(|| self.reject(Code::DidcommBadMessage, "message has no @type"))?;
        tracing::debug!(%typ, sender = ?unpacked.sender_verkey, "didcomm message");
        let ty = typ.strip_prefix(DIDCOMM).unwrap_or(&typ);

        if ty == "routing/1.0/forward" {
            self.forward(&msg).await?;
            return Ok(Replies::default());
        }
        let Some(sender) = unpacked.sender_verkey else {
            return Err(self.reject(
                Code::DidcommBadMessage,
                "only forward messages may be anoncrypted; everything else must be authcrypted",
            ));
        };
        let return_route = wants_return_route(&msg);
        let mut implicit: Option<String> = None;
        let mut replies: Vec<(Value, String)> = Vec::new(); // (message, recipient verkey)
        let proto = ty.rsplit_once('/').map(|(p, _)| p).unwrap_or(ty);
        let name = ty.rsplit('/').next().unwrap_or(ty);

        match (proto, name) {
            ("didexchange/1.1" | "didexchange/1.0", "request") => {
                let v = if proto.ends_with("1.1") { "1.1" } else { "1.0" };
                let resp = self.didexchange_request(&msg, &sender, v).await?;
                replies.push((resp, sender.clone()));
            }
            ("connections/1.0", "request") => {
                let resp = self.connections_request(&msg, &sender).await?;
                replies.push((resp, sender.clone()));
            }
            ("out-of-band/1.1" | "out-of-band/1.0", "handshake-reuse") => {
                self.connection_by_key(&sender).await?;
                replies.push((
                    json!({
                        "@type": format!("{DIDCOMM}{proto}/handshake-reuse-accepted"),
                        "@id": random_id(),
                        "~thread": {"thid": thread_id(&msg), "pthid": msg.pointer("/~thread/pthid")},
                    }),
                    sender.clone(),
                ));
            }
            _ => {
                let conn = self.connection_by_key(&sender).await?;
                let pickup = proto.starts_with("messagepickup/");
                if pickup {
                    if let Some(s) = socket {
                        s.pickup_client.store(true, Ordering::Relaxed);
                    }
                }
                let reply = self.on_connection(&conn, proto, name, &msg, socket).await?;
                // Implicit pickup: a message that asks for return-route `all`, has nothing of its
                // own to return (credo's implicit mode opens with a ping that wants no response)
                // and comes from a mediated connection leaves the route to its queue.
                if reply.is_none()
                    && !pickup
                    && conn.mediation == "granted"
                    && wants_return_route_all(&msg)
                {
                    implicit = Some(conn.id.clone());
                }
                if let Some(reply) = reply {
                    replies.push((reply, sender.clone()));
                }
            }
        }

        let mut out = Replies::default();
        for (reply, to) in replies {
            let packed = self.pack_for(&reply, &to)?;
            if return_route {
                out.envelopes.push(packed);
            } else {
                self.send_to_peer(&to, packed).await?;
            }
        }
        if let Some(conn_id) = implicit {
            match socket {
                Some(s) => {
                    if !s.pickup_client.load(Ordering::Relaxed) && s.mode().is_none() {
                        self.set_mode(&conn_id, s, Some(Mode::Implicit));
                    }
                }
                None => out.implicit_for = Some(conn_id),
            }
        }
        if let Some(s) = socket {
            if s.mode().is_some() {
                s.wake.notify_one();
            }
        }
        Ok(out)
    }

    /// Implicit pickup over HTTP: the oldest message of `conn_id` not handed out elsewhere, as the
    /// forwarded envelope itself, deleted from the queue as it goes into the response (there is no
    /// acknowledgement in implicit pickup; ACA-Py does the same).
    pub async fn take_implicit(&self, conn_id: &str) -> ApiResult<Option<Vec<u8>>> {
        let Some(m) = self.claim(conn_id, None, 1, None).await?.into_iter().next() else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec(&m.msg).map_err(ApiError::internal)?;
        self.acknowledge(conn_id, std::slice::from_ref(&m.id), None)
            .await?;
        Ok(Some(bytes))
    }

    /// A raw frame of implicit pickup was written on `s`: the message leaves the queue.
    pub async fn implicit_written(
        &self,
        conn_id: &str,
        id: String,
        s: &Arc<Socket>,
    ) -> ApiResult<()> {
        self.acknowledge(conn_id, &[id], Some(s)).await
    }

    fn reject(&self, code: Code, detail: impl Into<String>) -> ApiError {
        if let Some(m) = &self.metrics {
            m.rejected.with_label_values(&[code.as_str()]).inc();
        }
        didcomm_error(code, detail)
    }

    fn pack_for(&self, msg: &Value, verkey: &str) -> ApiResult<Vec<u8>> {
        let vk = verkey_bytes(verkey)?;
        envelope::pack(msg.to_string().as_bytes(), &[vk], Some(&self.key))
            .map_err(ApiError::internal)
    }

    /// A reply that cannot go back on the inbound transport: POSTed to an http(s) endpoint, else
    /// queued for the peer's own pickup.
    async fn send_to_peer(&self, verkey: &str, packed: Vec<u8>) -> ApiResult<()> {
        let conn = self.connection_by_key(verkey).await.ok();
        let endpoint = conn.as_ref().and_then(|c| c.their_endpoint.clone());
        match endpoint {
            Some(ep) if ep.starts_with("http://") || ep.starts_with("https://") => {
                let http = self.ctx.http.clone();
                tokio::spawn(async move {
                    let res = crate::http::outbound::send(
                        http.post(&ep)
                            .header("content-type", "application/didcomm-envelope-enc")
                            .body(packed),
                    )
                    .await;
                    if let Err(e) = res {
                        tracing::warn!(endpoint = %ep, error = %e, "could not deliver a DIDComm reply");
                    }
                });
                Ok(())
            }
            _ => match conn {
                Some(c) => {
                    let msg: Value = serde_json::from_slice(&packed).map_err(ApiError::internal)?;
                    self.enqueue(&c.id, &c.their_verkey, msg).await
                }
                None => Ok(()),
            },
        }
    }

    // ---- handshakes --------------------------------------------------------------------------

    async fn didexchange_request(
        &self,
        msg: &Value,
        sender: &str,
        version: &str,
    ) -> ApiResult<Value> {
        let pthid = msg.pointer("/~thread/pthid").and_then(Value::as_str);
        let invitation = self.use_invitation(pthid).await?;
        let did = msg.get("did").and_then(Value::as_str).ok_or_else(|| {
            self.reject(Code::DidcommBadMessage, "DID exchange request without did")
        })?;
        let attached = match msg.get("did_doc~attach") {
            Some(att) => Some(
                serde_json::from_slice::<Value>(
                    &peer::attachment_bytes(att)
                        .map_err(|e| self.reject(Code::DidcommBadMessage, e))?,
                )
                .map_err(|e| {
                    self.reject(Code::DidcommBadMessage, format!("did_doc~attach: {e}"))
                })?,
            ),
            None => None,
        };
        self.open_connection(
            msg,
            sender,
            did,
            attached.as_ref(),
            format!("didexchange/{version}"),
            invitation,
        )
        .await?;
        let rotate = self.signed_attachment(self.did.as_bytes(), None);
        Ok(json!({
            "@type": format!("{DIDCOMM}didexchange/{version}/response"),
            "@id": random_id(),
            "~thread": {"thid": thread_id(msg), "pthid": pthid},
            "did": self.did,
            "did_rotate~attach": rotate,
        }))
    }

    /// A detached-payload JWS attachment signed with the mediator key, as RFC 0023 / credo do.
    fn signed_attachment(&self, payload: &[u8], mime: Option<&str>) -> Value {
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
        });
        let protected = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "jwk": jwk}).to_string());
        let payload_b64 = URL_SAFE_NO_PAD.encode(payload);
        let sig = self
            .key
            .sign(format!("{protected}.{payload_b64}").as_bytes());
        let mut att = json!({
            "@id": random_id(),
            "data": {
                "base64": payload_b64,
                "jws": {
                    "header": {"kid": self.did_key},
                    "protected": protected,
                    "signature": URL_SAFE_NO_PAD.encode(sig.to_bytes()),
                }
            }
        });
        if let Some(m) = mime {
            att["mime-type"] = json!(m);
        }
        att
    }

    async fn connections_request(&self, msg: &Value, sender: &str) -> ApiResult<Value> {
        let pthid = msg.pointer("/~thread/pthid").and_then(Value::as_str);
        let invitation = self.use_invitation(pthid).await?;
        let c = msg.get("connection").ok_or_else(|| {
            self.reject(
                Code::DidcommBadMessage,
                "connection request without connection",
            )
        })?;
        let did = c
            .get("DID")
            .or_else(|| c.get("did"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                self.reject(Code::DidcommBadMessage, "connection request without DID")
            })?;
        let doc = c.get("DIDDoc").or_else(|| c.get("did_doc"));
        self.open_connection(msg, sender, did, doc, "connections/1.0".into(), invitation)
            .await?;
        // Legacy DID (first 16 bytes of the verkey, base58) and DIDDoc, as connections 1.0 wants.
        let vk = self.key.verifying_key().to_bytes();
        let our_did = bs58::encode(&vk[..16]).into_string();
        let services: Vec<Value> = endpoints(&self.ctx)
            .into_iter()
            .enumerate()
            .map(|(i, ep)| {
                json!({
                    "id": format!("did:sov:{our_did};indy{}", if i == 0 { String::new() } else { i.to_string() }),
                    "type": "IndyAgent",
                    "priority": i,
                    "recipientKeys": [self.verkey],
                    "routingKeys": [],
                    "serviceEndpoint": ep,
                })
            })
            .collect();
        let connection = json!({
            "DID": our_did,
            "DIDDoc": {
                "@context": "https://w3id.org/did/v1",
                "id": format!("did:sov:{our_did}"),
                "publicKey": [{
                    "id": format!("did:sov:{our_did}#1"),
                    "type": "Ed25519VerificationKey2018",
                    "controller": format!("did:sov:{our_did}"),
                    "publicKeyBase58": self.verkey,
                }],
                "authentication": [{"type": "Ed25519SignatureAuthentication2018", "publicKey": format!("did:sov:{our_did}#1")}],
                "service": services,
            }
        });
        let mut sig_data = (self.now() / 1000).to_be_bytes().to_vec();
        sig_data.extend_from_slice(connection.to_string().as_bytes());
        let signature = self.key.sign(&sig_data);
        Ok(json!({
            "@type": format!("{DIDCOMM}connections/1.0/response"),
            "@id": random_id(),
            "~thread": {"thid": thread_id(msg)},
            "connection~sig": {
                "@type": format!("{DIDCOMM}signature/1.0/ed25519Sha512_single"),
                "signature": URL_SAFE_NO_PAD.encode(signature.to_bytes()),
                "sig_data": URL_SAFE_NO_PAD.encode(&sig_data),
                "signer": self.verkey,
            }
        }))
    }

    /// Records a connection from a handshake request, after checking that the authcrypt sender
    /// is a key of the DID the request presents.
    async fn open_connection(
        &self,
        msg: &Value,
        sender: &str,
        did: &str,
        attached_doc: Option<&Value>,
        protocol: String,
        (invitation_id, via_single_use): (String, bool),
    ) -> ApiResult<Connection> {
        let info = peer::resolve(did, attached_doc)
            .map_err(|e| self.reject(Code::DidcommBadMessage, e))?;
        if !info.verkeys.iter().any(|k| k == sender) {
            return Err(self.reject(
                Code::DidcommBadMessage,
                "the request was not authcrypted with a key of the DID it presents",
            ));
        }
        let conn = Connection {
            id: random_id(),
            their_did: did.to_string(),
            their_verkey: sender.to_string(),
            their_endpoint: info.endpoint,
            their_label: msg
                .get("label")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            protocol,
            state: "response-sent".into(),
            mediation: "none".into(),
            invitation_id: Some(invitation_id),
            via_single_use,
            keys: Some(0),
            created_at_ms: self.now(),
        };
        self.save_connection(&conn).await?;
        Ok(conn)
    }

    async fn save_connection(&self, conn: &Connection) -> ApiResult<()> {
        let bytes = serde_json::to_vec(conn).map_err(ApiError::internal)?;
        self.ctx
            .store
            .batch(vec![
                crate::store::BatchOp::Put {
                    keyspace: ks::CONNECTIONS,
                    key: conn.id.clone(),
                    value: bytes,
                    ttl: None,
                },
                crate::store::BatchOp::Put {
                    keyspace: ks::BY_KEY,
                    key: conn.their_verkey.clone(),
                    value: conn.id.clone().into_bytes(),
                    ttl: None,
                },
            ])
            .await?;
        Ok(())
    }

    async fn connection_by_key(&self, verkey: &str) -> ApiResult<Connection> {
        let id = self
            .ctx
            .store
            .get(ks::BY_KEY, verkey)
            .await?
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                self.reject(
                    Code::DidcommNoConnection,
                    "no connection with the sender's key: connect through our invitation first",
                )
            })?;
        self.ctx
            .store
            .get_json::<Connection>(ks::CONNECTIONS, &id)
            .await?
            .ok_or_else(|| {
                self.reject(
                    Code::DidcommNoConnection,
                    "the sender's connection was removed",
                )
            })
    }

    async fn update_connection(
        &self,
        id: &str,
        f: impl Fn(&mut Connection),
    ) -> ApiResult<Connection> {
        let store = &self.ctx.store;
        for _ in 0..16 {
            let Some(raw) = store.get(ks::CONNECTIONS, id).await? else {
                return Err(didcomm_error(
                    Code::DidcommNoConnection,
                    "connection removed",
                ));
            };
            let mut c: Connection = serde_json::from_slice(&raw).map_err(ApiError::internal)?;
            f(&mut c);
            let new = serde_json::to_vec(&c).map_err(ApiError::internal)?;
            if store
                .compare_and_swap(ks::CONNECTIONS, id, Some(raw), Some((new, None)))
                .await?
                == Cas::Swapped
            {
                return Ok(c);
            }
        }
        Err(ApiError::new(
            Code::Conflict,
            "connection record kept changing; retry",
        ))
    }

    // ---- protocols on an established connection ----------------------------------------------

    async fn on_connection(
        &self,
        conn: &Connection,
        proto: &str,
        name: &str,
        msg: &Value,
        socket: Option<&Arc<Socket>>,
    ) -> ApiResult<Option<Value>> {
        let thid = thread_id(msg);
        let reply = |t: &str, body: Value| -> Value {
            let mut m = body;
            m["@type"] = json!(format!("{DIDCOMM}{t}"));
            m["@id"] = json!(random_id());
            m["~thread"] = json!({"thid": thid});
            m
        };
        if conn.state != "completed" {
            // Any authenticated message on the connection completes the handshake (credo sends a
            // DID exchange `complete`, connections 1.0 peers a trust ping as ack).
            self.update_connection(&conn.id, |c| c.state = "completed".into())
                .await?;
        }
        Ok(match (proto, name) {
            ("didexchange/1.1" | "didexchange/1.0", "complete") => None,
            ("notification/1.0", "ack") | ("connections/1.0", "ack") => None,
            ("trust_ping/1.0", "ping") => {
                let requested = msg
                    .get("response_requested")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                requested.then(|| reply("trust_ping/1.0/ping_response", json!({})))
            }
            ("trust_ping/1.0", "ping_response") => None,
            ("coordinate-mediation/1.0", "mediate-request")
                if self.cfg.grant_requires_single_use_invitation && !conn.via_single_use =>
            {
                Some(reply("coordinate-mediation/1.0/mediate-deny", json!({})))
            }
            ("coordinate-mediation/1.0", "mediate-request") => {
                self.update_connection(&conn.id, |c| c.mediation = "granted".into())
                    .await?;
                Some(reply(
                    "coordinate-mediation/1.0/mediate-grant",
                    json!({
                        "endpoint": endpoints(&self.ctx).into_iter().next().unwrap_or_default(),
                        "routing_keys": [self.did_key],
                    }),
                ))
            }
            ("coordinate-mediation/1.0", "keylist-update") => Some(reply(
                "coordinate-mediation/1.0/keylist-update-response",
                self.keylist_update(conn, msg).await?,
            )),
            ("coordinate-mediation/1.0", "keylist-query") => {
                let keys = self.keys_of(&conn.id).await?;
                let keys: Vec<Value> = keys
                    .iter()
                    .filter_map(|k| peer::did_key_of(k).ok())
                    .map(|k| json!({"recipient_key": k}))
                    .collect();
                let n = keys.len();
                Some(reply(
                    "coordinate-mediation/1.0/keylist",
                    json!({"keys": keys, "pagination": {"count": n, "offset": 0, "remaining": 0}}),
                ))
            }
            ("messagepickup/2.0", "status-request") => Some(reply(
                "messagepickup/2.0/status",
                self.status(&conn.id, msg, socket).await?,
            )),
            ("messagepickup/2.0", "delivery-request") => {
                let limit = msg
                    .get("limit")
                    .and_then(Value::as_u64)
                    .unwrap_or(10)
                    .clamp(1, 1000) as usize;
                let filter = recipient_filter(msg);
                let batch = self
                    .claim(&conn.id, socket, limit, filter.as_deref())
                    .await?;
                if batch.is_empty() {
                    Some(reply(
                        "messagepickup/2.0/status",
                        self.status(&conn.id, msg, socket).await?,
                    ))
                } else {
                    Some(self.delivery_message(&batch, Some(&thid), filter.as_deref()))
                }
            }
            ("messagepickup/2.0", "messages-received") => {
                let ids: Vec<String> = msg
                    .get("message_id_list")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                self.acknowledge(&conn.id, &ids, socket).await?;
                let live_here =
                    socket.is_some_and(|s| s.live_connection().as_deref() == Some(&conn.id));
                if live_here {
                    // Live mode on this socket: whatever waits is pushed here as soon as this
                    // acknowledgement lets the next delivery out, so nothing waits for a
                    // delivery-request (credo answers a non-zero count with one: a second round
                    // trip, and a second delivery, for messages already on their way).
                    Some(reply(
                        "messagepickup/2.0/status",
                        json!({"message_count": 0, "live_delivery": true}),
                    ))
                } else {
                    Some(reply(
                        "messagepickup/2.0/status",
                        self.status(&conn.id, &json!({}), socket).await?,
                    ))
                }
            }
            ("messagepickup/2.0", "live-delivery-change") => {
                let on = msg
                    .get("live_delivery")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let Some(s) = socket else {
                    return Ok(Some(problem_report(
                        &thid,
                        "live-delivery-unsupported",
                        "live delivery needs a persistent connection: use the WebSocket endpoint",
                    )));
                };
                self.set_mode(&conn.id, s, on.then_some(Mode::Live));
                let mut status = self.status(&conn.id, &json!({}), socket).await?;
                status["live_delivery"] = json!(on);
                Some(reply("messagepickup/2.0/status", status))
            }
            ("messagepickup/1.0", "batch-pickup") => {
                // Pickup 1.0 has no acknowledgement: a batch is the hand-over, so it is deleted
                // once packed for the transport. Clients that can, use 2.0.
                let size = msg
                    .get("batch_size")
                    .and_then(Value::as_u64)
                    .unwrap_or(10)
                    .clamp(1, 1000) as usize;
                let batch = self.claim(&conn.id, None, size, None).await?;
                let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
                // RFC 0212 writes `@id`; credo (0.4-0.6) parses `id` and refuses the batch
                // without it; ACA-Py writes `id`. Both, so every client finds its key.
                let reply_msg = reply(
                    "messagepickup/1.0/batch",
                    json!({"messages~attach": batch.iter().map(|m| json!({"@id": m.id, "id": m.id, "message": m.msg})).collect::<Vec<_>>()}),
                );
                self.acknowledge(&conn.id, &ids, None).await?;
                Some(reply_msg)
            }
            ("messagepickup/1.0", "status-request") => {
                let n = self.status(&conn.id, &json!({}), None).await?["message_count"].take();
                Some(reply(
                    "messagepickup/1.0/status",
                    json!({"message_count": n}),
                ))
            }
            (
                "notification/1.0"
                | "report-problem/1.0"
                | "coordinate-mediation/1.0"
                | "messagepickup/2.0",
                "problem-report",
            ) => {
                tracing::info!(connection = %conn.id, report = %msg, "problem report from peer");
                None
            }
            ("discover-features/1.0", "query") => Some(reply(
                "discover-features/1.0/disclose",
                json!({"protocols": [
                    {"pid": format!("{DIDCOMM}coordinate-mediation/1.0"), "roles": ["mediator"]},
                    {"pid": format!("{DIDCOMM}messagepickup/2.0"), "roles": ["mediator"]},
                    {"pid": format!("{DIDCOMM}messagepickup/1.0"), "roles": ["mediator"]},
                    {"pid": format!("{DIDCOMM}routing/1.0"), "roles": ["mediator"]},
                    {"pid": format!("{DIDCOMM}trust_ping/1.0"), "roles": ["receiver"]},
                ]}),
            )),
            _ => Some(problem_report(
                &thid,
                "unsupported-message-type",
                &format!("this mediator does not handle {proto}/{name}"),
            )),
        })
    }

    async fn keylist_update(&self, conn: &Connection, msg: &Value) -> ApiResult<Value> {
        let store = &self.ctx.store;
        let max = self.cfg.max_keys_per_connection;
        // The connection record carries its key count: the cap is checked in O(1). Records from
        // before the count was kept are counted once (bounded by the cap).
        let start = match conn.keys {
            Some(n) => n,
            None => {
                store
                    .count_prefix(
                        ks::ROUTE_BY_CONN,
                        &format!("{}/", conn.id),
                        usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1),
                    )
                    .await? as u64
            }
        };
        let mut have = start;
        let mut updated = Vec::new();
        for u in msg
            .get("updates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let given = u
                .get("recipient_key")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let action = u.get("action").and_then(Value::as_str).unwrap_or_default();
            let result = if conn.mediation != "granted" {
                "client_error"
            } else {
                match (peer::normalize_key(given), action) {
                    (Err(_), _) => "client_error",
                    (Ok(_), "add") if have >= max => "client_error",
                    (Ok(k), "add") => {
                        let res = store
                            .compare_and_swap(
                                ks::ROUTES,
                                &k,
                                None,
                                Some((conn.id.clone().into_bytes(), None)),
                            )
                            .await?;
                        match res {
                            Cas::Swapped => {
                                store
                                    .put(
                                        ks::ROUTE_BY_CONN,
                                        &format!("{}/{k}", conn.id),
                                        Vec::new(),
                                        None,
                                    )
                                    .await?;
                                have += 1;
                                "success"
                            }
                            Cas::Conflict(Some(owner)) if owner == conn.id.as_bytes() => {
                                "no_change"
                            }
                            // Another connection registered this key: not ours to take.
                            Cas::Conflict(_) => "client_error",
                        }
                    }
                    (Ok(k), "remove") => {
                        let res = store
                            .compare_and_swap(
                                ks::ROUTES,
                                &k,
                                Some(conn.id.clone().into_bytes()),
                                None,
                            )
                            .await?;
                        if res == Cas::Swapped {
                            store
                                .delete(ks::ROUTE_BY_CONN, &format!("{}/{k}", conn.id))
                                .await?;
                            have = have.saturating_sub(1);
                            "success"
                        } else {
                            "no_change"
                        }
                    }
                    _ => "client_error",
                }
            };
            updated.push(json!({"recipient_key": given, "action": action, "result": result}));
        }
        if have != start || conn.keys.is_none() {
            let delta = have as i64 - start as i64;
            self.update_connection(&conn.id, |c| {
                let base = c.keys.unwrap_or(start) as i64;
                c.keys = Some((base + delta).max(0) as u64);
            })
            .await?;
        }
        Ok(json!({"updated": updated}))
    }

    async fn keys_of(&self, conn_id: &str) -> ApiResult<Vec<String>> {
        let prefix = format!("{conn_id}/");
        Ok(self
            .ctx
            .store
            .scan_prefix(ks::ROUTE_BY_CONN, &prefix, 10_000)
            .await?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect())
    }

    // ---- the queue ---------------------------------------------------------------------------

    async fn forward(&self, msg: &Value) -> ApiResult<()> {
        let to = msg
            .get("to")
            .and_then(Value::as_str)
            .ok_or_else(|| self.reject(Code::DidcommBadMessage, "forward without to"))?;
        let key = peer::normalize_key(to).map_err(|e| self.reject(Code::DidcommBadMessage, e))?;
        let inner = msg
            .get("msg")
            .filter(|m| m.is_object() || m.is_string())
            .ok_or_else(|| self.reject(Code::DidcommBadMessage, "forward without msg"))?;
        let inner = match inner {
            Value::String(s) => serde_json::from_str(s)
                .map_err(|e| self.reject(Code::DidcommBadMessage, format!("forward msg: {e}")))?,
            v => v.clone(),
        };
        let conn_id = self
            .ctx
            .store
            .get(ks::ROUTES, &key)
            .await?
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                self.reject(
                    Code::DidcommUnknownRecipient,
                    "no mediation registered for the forward's recipient key",
                )
            })?;
        self.enqueue(&conn_id, &key, inner).await?;
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.forwarded.inc();
        }
        Ok(())
    }

    /// Stores a message for connection `conn_id` durably, then announces it on the bus. The
    /// queue caps (messages and bytes per connection) are checked against the index: O(1).
    pub async fn enqueue(&self, conn_id: &str, recipient_key: &str, msg: Value) -> ApiResult<()> {
        // Sortable, unique id: millisecond time then randomness.
        let now = self.now();
        let id = format!("{:013}{}", now.max(0), random_id());
        let rec = QueuedMessage {
            id: id.clone(),
            recipient_key: recipient_key.to_string(),
            received_at_ms: now,
            msg,
        };
        let raw = serde_json::to_vec(&rec).map_err(ApiError::internal)?;
        let (count, bytes) = self
            .with_queue(conn_id, |q, _| (q.len(), q.bytes()))
            .await?;
        let max = self.cfg.max_queue_per_recipient as u64;
        if count >= max {
            return Err(self.reject(
                Code::MediatorQueueFull,
                format!("the recipient's queue holds {max} messages already; it must pick some up first"),
            ));
        }
        let max_bytes = self.cfg.max_queue_bytes_per_connection;
        if bytes.saturating_add(raw.len() as u64) > max_bytes {
            return Err(self.reject(
                Code::MediatorQueueFull,
                format!("the recipient's queue holds {bytes} of its {max_bytes} bytes already; it must pick some up first"),
            ));
        }
        let ttl = std::time::Duration::from_secs(self.cfg.message_ttl_seconds);
        let len = raw.len() as u64;
        self.ctx
            .store
            .put(ks::QUEUE, &format!("{conn_id}/{id}"), raw, Some(ttl))
            .await?;
        if self.cfg.flush_before_ack {
            self.ctx.store.flush().await?;
        }
        self.note(
            conn_id,
            Change::Add(
                id,
                Entry {
                    bytes: len,
                    recipient: recipient_key.to_string(),
                    at_ms: now,
                },
            ),
        );
        self.ctx
            .bus
            .publish(BUS_TOPIC, &format!("{conn_id}\n{}", self.origin))
            .await;
        Ok(())
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a change this node made to a queue in its index (if it has one, or is building one).
    fn note(&self, conn_id: &str, c: Change) {
        match self.book().queues.get_mut(conn_id) {
            Some(Slot::Ready(q)) => q.apply(c),
            Some(Slot::Loading(pending)) => pending.push(c),
            None => {}
        }
    }

    /// Runs `f` on the index of `conn_id`'s queue (with its live leases' ids), building the index
    /// with one store scan when this node has none.
    async fn with_queue<R>(
        &self,
        conn_id: &str,
        f: impl FnOnce(&mut ConnQueue, &HashSet<&str>) -> R,
    ) -> ApiResult<R> {
        let now = self.now();
        let horizon = now.saturating_sub(
            i64::try_from(self.cfg.message_ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
        );
        let run = |q: &mut ConnQueue, leases: Option<&HashMap<String, Holder>>| {
            q.expire(horizon);
            let leased: HashSet<&str> = leases
                .into_iter()
                .flatten()
                .filter(|(_, h)| h.alive(now))
                .map(|(id, _)| id.as_str())
                .collect();
            f(q, &leased)
        };
        let builder = {
            let mut b = self.book();
            let Book { queues, leases } = &mut *b;
            match queues.get_mut(conn_id) {
                Some(Slot::Ready(q)) => return Ok(run(q, leases.get(conn_id))),
                Some(Slot::Loading(_)) => false,
                None => {
                    queues.insert(conn_id.to_string(), Slot::Loading(Vec::new()));
                    true
                }
            }
        };
        let rows = match self
            .ctx
            .store
            .scan_prefix(ks::QUEUE, &format!("{conn_id}/"), usize::MAX)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                if builder {
                    let mut b = self.book();
                    if matches!(b.queues.get(conn_id), Some(Slot::Loading(_))) {
                        b.queues.remove(conn_id);
                    }
                }
                return Err(e.into());
            }
        };
        let mut q = ConnQueue::from_entries(rows.into_iter().filter_map(|(_, raw)| {
            let m = serde_json::from_slice::<QueuedMessage>(&raw).ok()?;
            Some((
                m.id,
                Entry {
                    bytes: raw.len() as u64,
                    recipient: m.recipient_key,
                    at_ms: m.received_at_ms,
                },
            ))
        }));
        let mut b = self.book();
        let Book { queues, leases } = &mut *b;
        if builder {
            // Changes made while the scan ran are applied on top; if the index was dropped
            // meanwhile (another node changed the queue), this one answers once and is not kept.
            if let Some(Slot::Loading(pending)) = queues.remove(conn_id) {
                for c in pending {
                    q.apply(c);
                }
                let out = run(&mut q, leases.get(conn_id));
                queues.insert(conn_id.to_string(), Slot::Ready(q));
                return Ok(out);
            }
        }
        Ok(run(&mut q, leases.get(conn_id)))
    }

    /// A bus event: wake the local socket holding the connection; if another node changed the
    /// queue, drop this node's index of it.
    pub fn on_event(&self, topic: &str, payload: &str) {
        let (conn_id, origin) = payload.split_once('\n').unwrap_or((payload, ""));
        if origin != self.origin {
            self.book().queues.remove(conn_id);
        }
        if topic == BUS_TOPIC {
            self.wake(conn_id);
        }
    }

    /// Missed bus events: every index may be stale.
    pub fn forget_indexes(&self) {
        self.book().queues.clear();
    }

    /// Messages not handed out (to any socket or HTTP lease), oldest first, leased to `socket`
    /// (until it closes) or to an HTTP lease (`pickup_lease_seconds`). Reads at most
    /// `limit` + the connection's leases rows.
    async fn claim(
        &self,
        conn_id: &str,
        socket: Option<&Arc<Socket>>,
        limit: usize,
        recipient: Option<&str>,
    ) -> ApiResult<Vec<QueuedMessage>> {
        let now = self.now();
        let leased = {
            let mut b = self.book();
            match b.leases.get_mut(conn_id) {
                Some(l) => {
                    l.retain(|_, h| h.alive(now));
                    l.len()
                }
                None => 0,
            }
        };
        let rows = self
            .ctx
            .store
            .scan_prefix(
                ks::QUEUE,
                &format!("{conn_id}/"),
                limit.saturating_add(leased),
            )
            .await?;
        let until_ms = now.saturating_add(
            i64::try_from(self.cfg.pickup_lease_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
        );
        let mut out = Vec::new();
        {
            let mut b = self.book();
            let leases = b.leases.entry(conn_id.to_string()).or_default();
            for (_, raw) in rows {
                if out.len() >= limit {
                    break;
                }
                let Ok(m) = serde_json::from_slice::<QueuedMessage>(&raw) else {
                    continue;
                };
                if recipient.is_some_and(|r| r != m.recipient_key) {
                    continue;
                }
                if leases.get(&m.id).is_some_and(|h| h.alive(now)) {
                    continue;
                }
                let holder = match socket {
                    Some(s) => Holder::Socket(s.id, Arc::downgrade(s)),
                    None => Holder::Http { until_ms },
                };
                leases.insert(m.id.clone(), holder);
                out.push(m);
            }
            if leases.is_empty() {
                b.leases.remove(conn_id);
            }
        }
        if let Some(s) = socket {
            if let Ok(mut g) = s.inflight.lock() {
                g.extend(out.iter().map(|m| m.id.clone()));
            }
        }
        self.counters
            .delivered
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.delivered.inc_by(out.len() as u64);
        }
        Ok(out)
    }

    /// When the first HTTP lease on `conn_id`'s messages runs out (they are offered again then).
    fn http_lease_end(&self, conn_id: &str) -> Option<std::time::Instant> {
        let now = self.now();
        let first = self
            .book()
            .leases
            .get(conn_id)?
            .values()
            .filter_map(|h| match h {
                Holder::Http { until_ms } if *until_ms > now => Some(*until_ms),
                _ => None,
            })
            .min()?;
        let wait = u64::try_from(first - now).unwrap_or(0);
        Some(std::time::Instant::now() + std::time::Duration::from_millis(wait))
    }

    /// Gives back leases `socket` took and did not get onto the wire.
    fn release(&self, conn_id: &str, s: &Arc<Socket>, ids: &[String]) {
        {
            let mut b = self.book();
            if let Some(l) = b.leases.get_mut(conn_id) {
                for id in ids {
                    if matches!(l.get(id), Some(Holder::Socket(sid, _)) if *sid == s.id) {
                        l.remove(id);
                    }
                }
            }
        }
        if let Ok(mut g) = s.inflight.lock() {
            for id in ids {
                g.remove(id);
            }
        }
    }

    fn delivery_message(
        &self,
        batch: &[QueuedMessage],
        thid: Option<&str>,
        recipient: Option<&str>,
    ) -> Value {
        let mut m = json!({
            "@type": format!("{DIDCOMM}messagepickup/2.0/delivery"),
            "@id": random_id(),
            "~attach": batch.iter().map(|q| json!({
                "@id": q.id,
                "lastmod_time": crate::crypto::rfc3339(q.received_at_ms / 1000),
                "data": {"json": q.msg},
            })).collect::<Vec<_>>(),
        });
        if let Some(t) = thid {
            m["~thread"] = json!({"thid": t});
        }
        if let Some(r) = recipient.and_then(|r| peer::did_key_of(r).ok()) {
            m["recipient_key"] = json!(r);
        }
        m
    }

    /// Deletes acknowledged messages and ends their leases, wherever they were handed out (a
    /// socket's delivery may be acknowledged over HTTP, as credo does). O(acknowledged).
    async fn acknowledge(
        &self,
        conn_id: &str,
        ids: &[String],
        socket: Option<&Arc<Socket>>,
    ) -> ApiResult<()> {
        let ids: Vec<&String> = ids
            .iter()
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .collect();
        let n = ids.len() as u64;
        if ids.is_empty() {
            return Ok(());
        }
        let ops = ids
            .iter()
            .map(|id| crate::store::BatchOp::Delete {
                keyspace: ks::QUEUE,
                key: format!("{conn_id}/{id}"),
            })
            .collect();
        self.ctx.store.batch(ops).await?;
        let mut holders: Vec<Arc<Socket>> = socket.into_iter().cloned().collect();
        {
            let mut b = self.book();
            let Book { queues, leases } = &mut *b;
            match queues.get_mut(conn_id) {
                Some(Slot::Ready(q)) => {
                    for id in &ids {
                        q.remove(id);
                    }
                }
                Some(Slot::Loading(pending)) => {
                    pending.extend(ids.iter().map(|id| Change::Remove((*id).clone())))
                }
                None => {}
            }
            if let Some(l) = leases.get_mut(conn_id) {
                for id in &ids {
                    if let Some(Holder::Socket(sid, w)) = l.remove(id.as_str()) {
                        if !holders.iter().any(|h| h.id == sid) {
                            holders.extend(w.upgrade());
                        }
                    }
                }
                if l.is_empty() {
                    leases.remove(conn_id);
                }
            }
        }
        for h in holders {
            let mut held = false;
            let mut empty = false;
            if let Ok(mut g) = h.inflight.lock() {
                for id in &ids {
                    held |= g.remove(id.as_str());
                }
                empty = g.is_empty();
            }
            if held {
                h.delivery_answered(empty);
            }
            h.wake.notify_one();
        }
        self.counters.acknowledged.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.acknowledged.inc_by(n);
        }
        self.ctx
            .bus
            .publish(BUS_TOPIC_ACKED, &format!("{conn_id}\n{}", self.origin))
            .await;
        Ok(())
    }

    /// Pickup 2.0 `status`: what waits and is not handed out, from the index (no store scan).
    async fn status(
        &self,
        conn_id: &str,
        req: &Value,
        socket: Option<&Arc<Socket>>,
    ) -> ApiResult<Value> {
        let filter = recipient_filter(req);
        let sum = self
            .with_queue(conn_id, |q, leased| q.summary(leased, filter.as_deref()))
            .await?;
        let mut s = json!({"message_count": sum.count, "total_bytes": sum.bytes});
        if let Some(o) = sum.oldest_ms {
            s["longest_waited_seconds"] = json!(((self.now() - o) / 1000).max(0));
        }
        if let Some(r) = filter.and_then(|r| peer::did_key_of(&r).ok()) {
            s["recipient_key"] = json!(r);
        }
        let live = socket
            .and_then(|s| s.live_connection())
            .is_some_and(|c| c == conn_id);
        s["live_delivery"] = json!(live);
        Ok(s)
    }

    // ---- live sockets ------------------------------------------------------------------------

    pub fn new_socket(&self, tx: mpsc::Sender<Outgoing>) -> Arc<Socket> {
        self.open_sockets.fetch_add(1, Ordering::Relaxed);
        Arc::new(Socket::new(
            self.next_socket.fetch_add(1, Ordering::Relaxed),
            tx,
        ))
    }

    /// The socket is gone: its leases end (what it was handed and did not acknowledge is offered
    /// again, to the next socket or poll).
    pub fn close_socket(&self, s: &Arc<Socket>) {
        self.open_sockets.fetch_sub(1, Ordering::Relaxed);
        s.closed.store(true, Ordering::Relaxed);
        if let Some((conn, _)) = s.mode() {
            if let Ok(mut live) = self.live.lock() {
                if live
                    .get(&conn)
                    .and_then(Weak::upgrade)
                    .is_some_and(|cur| cur.id == s.id)
                {
                    live.remove(&conn);
                }
            }
        }
    }

    /// Sets how `s` gets `conn_id`'s queue pushed (`None`: not at all).
    fn set_mode(&self, conn_id: &str, s: &Arc<Socket>, mode: Option<Mode>) {
        if let Ok(mut g) = s.mode.lock() {
            *g = mode.map(|m| (conn_id.to_string(), m));
        }
        if let Ok(mut live) = self.live.lock() {
            if mode.is_some() {
                live.insert(conn_id.to_string(), Arc::downgrade(s));
            } else if live
                .get(conn_id)
                .and_then(Weak::upgrade)
                .is_some_and(|cur| cur.id == s.id)
            {
                live.remove(conn_id);
            }
        }
        if mode == Some(Mode::Live) {
            // A reconnect: everything unacknowledged is delivered again on this socket, also what
            // an older socket of the connection (maybe half-open) still holds. What this socket
            // holds already is not sent twice.
            let mut others: Vec<(Arc<Socket>, String)> = Vec::new();
            {
                let mut b = self.book();
                if let Some(l) = b.leases.get_mut(conn_id) {
                    l.retain(|id, h| match h {
                        Holder::Socket(sid, w) if *sid != s.id => {
                            if let Some(o) = w.upgrade() {
                                others.push((o, id.clone()));
                            }
                            false
                        }
                        _ => true,
                    });
                }
            }
            for (o, id) in others {
                if let Ok(mut g) = o.inflight.lock() {
                    g.remove(&id);
                }
            }
        }
        if mode.is_some() {
            s.wake.notify_one();
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.cfg.max_message_bytes
    }

    /// (ping interval, idle timeout) for WebSockets.
    pub fn ws_timers(&self) -> (std::time::Duration, std::time::Duration) {
        (
            std::time::Duration::from_secs(self.cfg.ws_ping_seconds.max(1)),
            std::time::Duration::from_secs(self.cfg.ws_idle_timeout_seconds.max(2)),
        )
    }

    /// Queues a reply that could not travel back on HTTP for the pickup of its recipient.
    pub async fn queue_reply_for_sender(&self, packed: &[u8]) -> ApiResult<()> {
        let v: Value = serde_json::from_slice(packed).map_err(ApiError::internal)?;
        let kid = v
            .get("protected")
            .and_then(Value::as_str)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|h| {
                h.pointer("/recipients/0/header/kid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        if let Some(kid) = kid {
            if let Ok(c) = self.connection_by_key(&kid).await {
                self.enqueue(&c.id, &c.their_verkey, v).await?;
            }
        }
        Ok(())
    }

    pub fn wake_all(&self) {
        let all: Vec<Arc<Socket>> = self
            .live
            .lock()
            .map(|l| l.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for s in all {
            s.wake.notify_one();
        }
    }

    /// Wakes the local socket holding `conn_id` live, if any (called for bus events).
    pub fn wake(&self, conn_id: &str) {
        let s = self
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(conn_id).and_then(Weak::upgrade));
        if let Some(s) = s {
            s.wake.notify_one();
        }
    }

    /// Pushes what the live connection of `s` has queued and `s` has not been handed yet.
    pub async fn pump(&self, s: &Arc<Socket>) -> ApiResult<()> {
        let Some((conn_id, mode)) = s.mode() else {
            return Ok(());
        };
        let their_verkey = match mode {
            Mode::Implicit => None,
            Mode::Live => match self
                .ctx
                .store
                .get_json::<Connection>(ks::CONNECTIONS, &conn_id)
                .await?
            {
                Some(c) => Some(c.their_verkey),
                None => return Ok(()),
            },
        };
        s.set_pump_deadline(None);
        loop {
            if mode == Mode::Live {
                if let Some(until) = s.awaiting_answer_until() {
                    s.set_pump_deadline(Some(until));
                    return Ok(());
                }
            }
            let room = MAX_INFLIGHT.saturating_sub(s.inflight_len());
            // The socket task that drains `tx` is the one running this pump: never wait on a full
            // channel; what is left goes out on the next wake (every acknowledgement wakes it).
            let free = s.tx.capacity();
            if room == 0 || free == 0 {
                return Ok(());
            }
            let want = match mode {
                Mode::Live => room.min(DELIVERY_BATCH),
                Mode::Implicit => room.min(DELIVERY_BATCH).min(free),
            };
            let batch = self.claim(&conn_id, Some(s), want, None).await?;
            if batch.is_empty() {
                s.set_pump_deadline(self.http_lease_end(&conn_id));
                return Ok(());
            }
            let frames: Vec<Outgoing> = match &their_verkey {
                Some(vk) => vec![Outgoing {
                    frame: self.pack_for(&self.delivery_message(&batch, None, None), vk)?,
                    implicit: None,
                }],
                None => batch
                    .iter()
                    .map(|m| {
                        Ok(Outgoing {
                            frame: serde_json::to_vec(&m.msg).map_err(ApiError::internal)?,
                            implicit: Some((conn_id.clone(), m.id.clone())),
                        })
                    })
                    .collect::<ApiResult<_>>()?,
            };
            let mut sent = 0;
            for f in frames {
                if s.tx.try_send(f).is_err() {
                    break;
                }
                sent += 1;
            }
            // Not expected (capacity checked, one producer): give back what did not go out.
            let unsent: Vec<String> = match (&their_verkey, sent) {
                (Some(_), 0) => batch.iter().map(|m| m.id.clone()).collect(),
                (Some(_), _) => Vec::new(),
                (None, n) => batch[n..].iter().map(|m| m.id.clone()).collect(),
            };
            if !unsent.is_empty() {
                self.release(&conn_id, s, &unsent);
                return Ok(());
            }
            if their_verkey.is_some() {
                s.delivery_sent();
            }
        }
    }

    // ---- admin -------------------------------------------------------------------------------

    pub async fn stats(&self) -> ApiResult<MediatorStats> {
        let store = &self.ctx.store;
        let conns = store.scan_prefix(ks::CONNECTIONS, "", usize::MAX).await?;
        let granted = conns
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice::<Connection>(v).ok())
            .filter(|c| c.mediation == "granted")
            .count();
        let live = self
            .live
            .lock()
            .map(|l| l.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0);
        Ok(MediatorStats {
            did: self.did.clone(),
            routing_key: self.did_key.clone(),
            connections: conns.len() as u64,
            mediations_granted: granted as u64,
            registered_keys: store.count_prefix(ks::ROUTES, "", usize::MAX).await? as u64,
            live_sockets: live as u64,
            open_sockets: self.open_sockets.load(Ordering::Relaxed),
            queued_messages: store.count_prefix(ks::QUEUE, "", usize::MAX).await? as u64,
            forwarded_total: self.counters.forwarded.load(Ordering::Relaxed),
            delivered_total: self.counters.delivered.load(Ordering::Relaxed),
            acknowledged_total: self.counters.acknowledged.load(Ordering::Relaxed),
        })
    }

    pub async fn connections(&self, limit: usize) -> ApiResult<Vec<Connection>> {
        Ok(self
            .ctx
            .store
            .scan_prefix(ks::CONNECTIONS, "", limit)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }
}

fn recipient_filter(msg: &Value) -> Option<String> {
    msg.get("recipient_key")
        .and_then(Value::as_str)
        .and_then(|k| peer::normalize_key(k).ok())
}

fn problem_report(thid: &str, code: &str, explain: &str) -> Value {
    json!({
        "@type": format!("{DIDCOMM}report-problem/1.0/problem-report"),
        "@id": random_id(),
        "~thread": {"thid": thid},
        "description": {"en": explain, "code": code},
    })
}

/// The mediator's endpoints: `public_url/didcomm` and its WebSocket form.
pub fn endpoints(ctx: &RoleContext) -> Vec<String> {
    let http = format!("{}/didcomm", ctx.public_url);
    let ws = if let Some(rest) = http.strip_prefix("https://") {
        format!("wss://{rest}/ws")
    } else if let Some(rest) = http.strip_prefix("http://") {
        format!("ws://{rest}/ws")
    } else {
        format!("{http}/ws")
    };
    vec![http, ws]
}

const KEY_ID: &str = "mediator";
const KEY_AAD: &[u8] = b"mediator_keys/mediator";

fn open_key(ctx: &RoleContext, sealed: &[u8]) -> anyhow::Result<SigningKey> {
    let seed = ctx.sealer.open(KEY_AAD, sealed)?;
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("mediator key has the wrong length"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// How the stored mediator key compares with the one a node holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKey {
    /// The store holds this node's key.
    Same,
    /// The store holds no mediator key (a store that lost its data, e.g. Redis restarted
    /// without persistence).
    Missing,
    /// The store holds another key (created by a node after a data loss): this node's DID is
    /// no longer the mediator's.
    Different,
}

impl MediatorService {
    /// Compares the stored mediator key with the one this node serves with.
    pub async fn stored_key(&self) -> anyhow::Result<StoredKey> {
        match self.ctx.store.get(ks::KEYS, KEY_ID).await? {
            None => Ok(StoredKey::Missing),
            Some(sealed) => Ok(self.same_key(&sealed)?),
        }
    }

    fn same_key(&self, sealed: &[u8]) -> anyhow::Result<StoredKey> {
        let stored = open_key(&self.ctx, sealed)?;
        Ok(if stored.to_bytes() == self.key.to_bytes() {
            StoredKey::Same
        } else {
            StoredKey::Different
        })
    }

    /// After the store lost its data: writes this node's key back, insert-only (every node of a
    /// deployment loaded the same key, so whichever writes first writes the same one), and drops
    /// the queue indexes built from records that are gone. Returns how the stored key compares
    /// with this node's afterwards.
    pub async fn restore_key(&self) -> anyhow::Result<StoredKey> {
        let sealed = self
            .ctx
            .sealer
            .seal(KEY_AAD, self.key.to_bytes().as_slice())?;
        let res = match self
            .ctx
            .store
            .compare_and_swap(ks::KEYS, KEY_ID, None, Some((sealed, None)))
            .await?
        {
            Cas::Swapped => StoredKey::Same,
            Cas::Conflict(Some(other)) => self.same_key(&other)?,
            Cas::Conflict(None) => StoredKey::Missing,
        };
        self.forget_indexes();
        self.wake_all();
        Ok(res)
    }
}

/// The mediator key: created once (compare-and-swap, so two nodes starting together agree),
/// sealed at rest, stable across restarts.
async fn load_or_create_key(ctx: &RoleContext) -> anyhow::Result<SigningKey> {
    const ID: &str = KEY_ID;
    const AAD: &[u8] = KEY_AAD;
    let open = |sealed: &[u8]| open_key(ctx, sealed);
    if let Some(sealed) = ctx.store.get(ks::KEYS, ID).await? {
        return open(&sealed);
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let sealed = ctx.sealer.seal(AAD, key.to_bytes().as_slice())?;
    match ctx
        .store
        .compare_and_swap(ks::KEYS, ID, None, Some((sealed, None)))
        .await?
    {
        Cas::Swapped => Ok(key),
        Cas::Conflict(Some(other)) => open(&other),
        Cas::Conflict(None) => anyhow::bail!("mediator key vanished while being created"),
    }
}

fn register_metrics(ctx: &RoleContext) -> Result<Metrics, prometheus::Error> {
    let forwarded =
        prometheus::IntCounter::new("mediator_forwarded_total", "forward messages queued")?;
    let delivered = prometheus::IntCounter::new(
        "mediator_delivered_total",
        "queued messages handed to recipients (redeliveries included)",
    )?;
    let acknowledged = prometheus::IntCounter::new(
        "mediator_acknowledged_total",
        "queued messages deleted on messages-received",
    )?;
    let rejected = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "mediator_rejected_total",
            "inbound DIDComm messages refused, by error code",
        ),
        &["code"],
    )?;
    let r = &ctx.metrics.registry;
    r.register(Box::new(forwarded.clone()))?;
    r.register(Box::new(delivered.clone()))?;
    r.register(Box::new(acknowledged.clone()))?;
    r.register(Box::new(rejected.clone()))?;
    Ok(Metrics {
        forwarded,
        delivered,
        acknowledged,
        rejected,
    })
}
