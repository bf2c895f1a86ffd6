//! A WebSocket as the engine sees it: how its connection's queue is pushed to it, what it was
//! handed and not yet acknowledged, and when its pump must run again. Transport-free: `routes.rs`
//! owns the real socket and drains [`Socket::tx`]; `live.rs` fills it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

/// Live mode: most `delivery` messages on one socket awaiting their `messages-received`. While one
/// is out, what arrives waits and goes in the next delivery (up to `DELIVERY_BATCH`): a recipient
/// slower than its senders gets fewer, fuller deliveries instead of one per message, each of which
/// costs it an unpack, a `messages-received` and a `status` (credo-ts 0.6.3 fell behind at about
/// 10 msg/s on 2 shared cores with one message per delivery; see BENCHMARKS.md).
const LIVE_WINDOW: usize = 1;
/// Longest a held-back message waits for the answer to the delivery before it: then it goes out
/// anyway (a socket timer), so a client that is slow to acknowledge, or never does, still gets
/// new messages at once, just gathered in fewer deliveries.
const ACK_WAIT: Duration = Duration::from_millis(250);

/// A frame for a WebSocket. `implicit` names the queued message (connection, id) the frame
/// carries raw (implicit pickup): it is deleted from the queue once the frame is written.
pub struct Outgoing {
    pub frame: Vec<u8>,
    pub implicit: Option<(String, String)>,
}

/// How a socket gets its connection's queue pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Pickup 2.0 live mode: `delivery` messages, deleted on `messages-received`.
    Live,
    /// Implicit pickup (return-route `all` on the recipient's own socket, as ACA-Py serves): the
    /// forwarded envelopes themselves, deleted once written.
    Implicit,
}

/// Handshakes (DID exchange, connections 1.0) one socket may carry: an agent opens one
/// connection. The upgrade is rate limited per client address, frames are not (attacker review:
/// 2,000 handshakes on one socket in 0.8 s, each a connection record and a place of the public
/// invitation's `max_connections_per_invitation`).
pub(super) const MAX_HANDSHAKES_PER_SOCKET: usize = 4;

/// The messages a socket was handed and has not acknowledged, and their bytes.
#[derive(Default)]
struct Inflight {
    sizes: HashMap<String, u64>,
    bytes: u64,
}

impl Inflight {
    fn add(&mut self, id: String, bytes: u64) {
        if let Some(old) = self.sizes.insert(id, bytes) {
            self.bytes = self.bytes.saturating_sub(old);
        }
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.sizes.remove(id) {
            Some(bytes) => {
                self.bytes = self.bytes.saturating_sub(bytes);
                true
            }
            None => false,
        }
    }
}

/// A live WebSocket, as the engine sees it.
pub struct Socket {
    pub(super) id: u64,
    /// Outgoing frames (bounded: a slow client backs up its own pump, nobody else's).
    pub(super) tx: mpsc::Sender<Outgoing>,
    /// The connection whose queue is pushed here, and how.
    mode: Mutex<Option<(String, Mode)>>,
    /// Messages delivered on this socket and not yet acknowledged.
    inflight: Mutex<Inflight>,
    /// Live mode: deliveries sent on this socket and not yet answered by `messages-received`, and
    /// when the last one went out.
    unanswered: AtomicUsize,
    last_delivery: Mutex<Option<Instant>>,
    /// When the pump must run again without being woken: a delivery held back for want of an
    /// answer (`ACK_WAIT` after the last one), or messages another transport leased whose lease
    /// runs out (nothing else would wake this socket for them).
    pump_at: Mutex<Option<Instant>>,
    /// The client spoke a pickup protocol on this socket: it picks up explicitly, never implicitly.
    pickup_client: AtomicBool,
    /// Handshake requests answered on this socket ([`MAX_HANDSHAKES_PER_SOCKET`]).
    handshakes: AtomicUsize,
    closed: AtomicBool,
    /// Woken when the pump has something to do (a message queued, an acknowledgement, a mode).
    pub wake: Notify,
}

impl Socket {
    /// Counts a handshake request on this socket: `false` past [`MAX_HANDSHAKES_PER_SOCKET`].
    pub(super) fn count_handshake(&self) -> bool {
        self.handshakes.fetch_add(1, Ordering::SeqCst) < MAX_HANDSHAKES_PER_SOCKET
    }

    pub(super) fn new(id: u64, tx: mpsc::Sender<Outgoing>) -> Self {
        Self {
            id,
            tx,
            mode: Mutex::new(None),
            inflight: Mutex::default(),
            unanswered: AtomicUsize::new(0),
            last_delivery: Mutex::new(None),
            pump_at: Mutex::new(None),
            pickup_client: AtomicBool::new(false),
            handshakes: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    pub(super) fn mode(&self) -> Option<(String, Mode)> {
        self.mode.lock().ok().and_then(|g| g.clone())
    }

    pub(super) fn set_mode(&self, conn_id: &str, mode: Option<Mode>) {
        if let Ok(mut g) = self.mode.lock() {
            *g = mode.map(|m| (conn_id.to_string(), m));
        }
    }

    /// The connection in pickup 2.0 live mode on this socket.
    pub(super) fn live_connection(&self) -> Option<String> {
        self.mode()
            .and_then(|(c, m)| (m == Mode::Live).then_some(c))
    }

    pub(super) fn is_pickup_client(&self) -> bool {
        self.pickup_client.load(Ordering::Relaxed)
    }

    pub(super) fn spoke_pickup(&self) {
        self.pickup_client.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    pub(super) fn inflight_len(&self) -> usize {
        self.inflight.lock().map(|g| g.sizes.len()).unwrap_or(0)
    }

    /// Bytes (as stored) of the messages delivered here and not yet acknowledged.
    pub(super) fn inflight_bytes(&self) -> u64 {
        self.inflight.lock().map(|g| g.bytes).unwrap_or(0)
    }

    /// These messages (id, stored bytes) were handed to this socket.
    pub(super) fn hold(&self, messages: impl IntoIterator<Item = (String, u64)>) {
        if let Ok(mut g) = self.inflight.lock() {
            for (id, bytes) in messages {
                g.add(id, bytes);
            }
        }
    }

    /// These ids are no longer this socket's (given back, or taken over by another socket).
    pub(super) fn drop_held<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut g) = self.inflight.lock() {
            for id in ids {
                g.remove(id);
            }
        }
    }

    /// These ids were acknowledged: if this socket held any of them, that answers a delivery.
    pub(super) fn acknowledged<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut held = false;
        let mut empty = false;
        if let Ok(mut g) = self.inflight.lock() {
            for id in ids {
                held |= g.remove(id);
            }
            empty = g.sizes.is_empty();
        }
        if held {
            self.delivery_answered(empty);
        }
    }

    /// Live mode: when `LIVE_WINDOW` deliveries are out and the last one went out less than
    /// `ACK_WAIT` ago, the moment the next may go out without an answer.
    pub(super) fn awaiting_answer_until(&self) -> Option<Instant> {
        if self.unanswered.load(Ordering::Relaxed) < LIVE_WINDOW {
            return None;
        }
        let until = self.last_delivery.lock().ok().and_then(|g| *g)? + ACK_WAIT;
        (until > Instant::now()).then_some(until)
    }

    /// When the pump must run again even if nothing wakes it.
    pub fn pump_deadline(&self) -> Option<Instant> {
        self.pump_at.lock().ok().and_then(|g| *g)
    }

    pub(super) fn set_pump_deadline(&self, at: Option<Instant>) {
        if let Ok(mut g) = self.pump_at.lock() {
            *g = at;
        }
    }

    pub(super) fn delivery_sent(&self) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.last_delivery.lock() {
            *g = Some(Instant::now());
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
