//! The mediator engine: the service struct, its constructor and what the protocol steps share
//! (the clock, packing a reply, counting refusals, the endpoints). The steps are one file each:
//! [`super::inbound`] (unpack, dispatch by `@type`, replies), [`super::invitations`],
//! [`super::handshake`] (DID exchange, connections 1.0), [`super::connections`],
//! [`super::protocols`] (what an established connection may say), [`super::mediation`]
//! (coordinate-mediation), [`super::pickup`] (message pickup 2.0 / 1.0), [`super::queue`]
//! (forward, the stored queue, leases, acknowledgements, status), [`super::live`] (WebSocket
//! delivery) and [`super::keys`] (the mediator key). Transport-free: `routes.rs` feeds it HTTP
//! bodies and WebSocket frames.
//!
//! Delivery semantics (DESIGN.md §7): a forward is stored (and flushed) before the sender's 202;
//! `mediator.queued` goes on the bus; whoever holds the recipient's live socket pushes a pickup
//! `delivery`; a message leaves the queue only when `messages-received` names it; a new socket or
//! live-mode switch redelivers everything unacknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ed25519_dalek::SigningKey;
use serde_json::Value;

use super::book::Book;
use super::error::{bad_message, MediatorError, MediatorResult, OrInternal as _};
use super::message::verkey_bytes;
use super::socket::Socket;
use crate::clock::random_id;
use crate::config::MediatorConfig;
use crate::didcomm::{envelope, peer};
use crate::error::Code;
use crate::roles::RoleContext;

pub struct MediatorService {
    pub(super) ctx: RoleContext,
    pub(super) cfg: MediatorConfig,
    pub(super) key: SigningKey,
    /// The mediator key, base58: the invitation, connection and routing key.
    pub(super) verkey: String,
    /// Its `did:peer:2` (with the HTTP and WebSocket services) and `did:key`.
    pub(super) did: String,
    pub(super) did_key: String,
    /// Connection id → the socket that has live mode on for it (last one wins).
    pub(super) live: Mutex<HashMap<String, Weak<Socket>>>,
    pub(super) open_sockets: AtomicU64,
    /// Places for WebSockets on this node (`mediator.max_sockets`): each socket holds one.
    pub(super) socket_places: Arc<tokio::sync::Semaphore>,
    pub(super) next_socket: AtomicU64,
    /// Queue indexes and leases: each message is handed out once per socket or HTTP lease,
    /// whichever transport asks.
    book: Arc<Mutex<Book>>,
    /// This node's id on the bus (tells its own events from other nodes').
    pub(super) origin: String,
    pub(super) counters: Counters,
    /// Reply POSTs in flight to peers' endpoints.
    pub(super) reply_posts: super::inbound::ReplyPosts,
}

pub(super) fn lock_book(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

impl MediatorService {
    /// The service around the mediator `key` ([`super::keys::load_or_create`]).
    pub(super) fn new(
        ctx: RoleContext,
        cfg: MediatorConfig,
        key: SigningKey,
    ) -> anyhow::Result<Self> {
        let vk = key.verifying_key().to_bytes();
        let verkey = envelope::verkey_b58(&vk);
        let endpoints = endpoints(&ctx);
        let did = peer::did_peer_2(&vk, &endpoints, &[]).map_err(anyhow::Error::msg)?;
        let did_key = peer::did_key_of(&verkey).map_err(anyhow::Error::msg)?;
        let metrics = register_metrics(&ctx).ok();
        let socket_places = Arc::new(tokio::sync::Semaphore::new(cfg.max_sockets.max(1)));
        Ok(Self {
            ctx,
            cfg,
            key,
            verkey,
            did,
            did_key,
            live: Mutex::default(),
            open_sockets: AtomicU64::new(0),
            socket_places,
            next_socket: AtomicU64::new(1),
            book: Arc::default(),
            origin: random_id(),
            counters: Counters {
                metrics,
                ..Counters::default()
            },
            reply_posts: Default::default(),
        })
    }

    pub(super) fn now(&self) -> i64 {
        self.ctx.clock.now_ms()
    }

    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        lock_book(&self.book)
    }

    /// The book, shared (a task that must finish even if its caller is dropped).
    pub(super) fn shared_book(&self) -> Arc<Mutex<Book>> {
        self.book.clone()
    }

    /// Counts one inbound message (or frame, or request body) refused with `code` in
    /// `mediator_rejected_total`. Called once per refusal, where it leaves the mediator:
    /// [`MediatorService::receive`] for everything the engine refuses, the transports for what
    /// they refuse before the engine sees it.
    pub fn count_refused(&self, code: Code) {
        self.counters.rejected(code);
    }

    /// A malformed or unacceptable message (`didcomm_bad_message`).
    pub(super) fn refuse(&self, detail: impl Into<String>) -> MediatorError {
        bad_message(detail)
    }

    /// `msg` authcrypted from the mediator key to `verkey`.
    pub(super) fn pack_for(&self, msg: &Value, verkey: &str) -> MediatorResult<Vec<u8>> {
        let vk = verkey_bytes(verkey)?;
        envelope::pack(msg.to_string().as_bytes(), &[vk], Some(&self.key)).or_internal()
    }

    pub fn max_message_bytes(&self) -> usize {
        self.cfg.max_message_bytes
    }
}

/// `.or_refused(self)?` / `.or_refused_in(self, "forward msg")?`: a message the mediator cannot
/// take (`didcomm_bad_message`), its detail the error's (after `what: `).
pub(super) trait OrRefused<T> {
    fn or_refused(self, svc: &MediatorService) -> MediatorResult<T>;
    fn or_refused_in(self, svc: &MediatorService, what: &str) -> MediatorResult<T>;
}

impl<T, E: std::fmt::Display> OrRefused<T> for Result<T, E> {
    fn or_refused(self, svc: &MediatorService) -> MediatorResult<T> {
        self.map_err(|e| svc.refuse(e.to_string()))
    }
    fn or_refused_in(self, svc: &MediatorService, what: &str) -> MediatorResult<T> {
        self.map_err(|e| svc.refuse(format!("{what}: {e}")))
    }
}

/// `.required(self, "forward without to")?`: a message that lacks what it must carry.
pub(super) trait Required<T> {
    fn required(self, svc: &MediatorService, detail: &str) -> MediatorResult<T>;
}

impl<T> Required<T> for Option<T> {
    fn required(self, svc: &MediatorService, detail: &str) -> MediatorResult<T> {
        self.ok_or_else(|| svc.refuse(detail))
    }
}

/// The mediator's endpoints: `public_url/didcomm` and its WebSocket form.
pub(super) fn endpoints(ctx: &RoleContext) -> Vec<String> {
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

/// Delivery counters for `stats`, and the same as Prometheus metrics when they registered.
#[derive(Default)]
pub(super) struct Counters {
    forwarded: AtomicU64,
    delivered: AtomicU64,
    acknowledged: AtomicU64,
    metrics: Option<Metrics>,
}

struct Metrics {
    forwarded: prometheus::IntCounter,
    delivered: prometheus::IntCounter,
    acknowledged: prometheus::IntCounter,
    rejected: prometheus::IntCounterVec,
}

impl Counters {
    pub(super) fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.forwarded.inc();
        }
    }

    pub(super) fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.delivered.inc_by(n);
        }
    }

    pub(super) fn acknowledged(&self, n: u64) {
        self.acknowledged.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.acknowledged.inc_by(n);
        }
    }

    fn rejected(&self, code: Code) {
        if let Some(m) = &self.metrics {
            m.rejected.with_label_values(&[code.as_str()]).inc();
        }
    }

    /// (forwarded, delivered, acknowledged) since this node started.
    pub(super) fn totals(&self) -> (u64, u64, u64) {
        (
            self.forwarded.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.acknowledged.load(Ordering::Relaxed),
        )
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
    let m = &ctx.metrics;
    let forwarded = m.register_once(forwarded)?;
    let delivered = m.register_once(delivered)?;
    let acknowledged = m.register_once(acknowledged)?;
    let rejected = m.register_once(rejected)?;
    Ok(Metrics {
        forwarded,
        delivered,
        acknowledged,
        rejected,
    })
}
