//! Delivery on a WebSocket without being asked: pickup 2.0 live mode (`delivery` messages,
//! deleted on `messages-received`) and implicit pickup (the forwarded envelopes themselves,
//! deleted once written). A socket's pump runs when woken (a message queued on any node, an
//! acknowledgement, a mode change) or at its deadline (a delivery held back for an answer, an
//! HTTP lease running out); it hands out what the socket may take and leases it to the socket.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::error::{MediatorError, MediatorResult, OrInternal as _};
use super::message::delivery;
use super::model::ks;
use super::model::{Connection, QueuedMessage};
use super::service::MediatorService;
use super::socket::{Mode, Outgoing, Socket};
use crate::readiness::Sessions;

/// Most messages in one pickup `delivery`.
const DELIVERY_BATCH: usize = 50;
/// Most messages handed to one socket and not yet acknowledged; beyond it the pump waits.
const MAX_INFLIGHT: usize = 500;
/// Most bytes (as stored) of those messages, in largest messages (`max_message_bytes`): beyond
/// it the pump waits too. Counted in messages only, a socket that never read held up to 500
/// large messages' frames in memory (attacker review: ~11–17 MB per socket, 256 sockets per
/// address).
const MAX_INFLIGHT_LARGEST_MESSAGES: u64 = 4;

impl MediatorService {
    pub(super) fn new_socket(&self, tx: mpsc::Sender<Outgoing>) -> Arc<Socket> {
        self.open_sockets.fetch_add(1, Ordering::Relaxed);
        Arc::new(Socket::new(
            self.next_socket.fetch_add(1, Ordering::Relaxed),
            tx,
        ))
    }

    /// The socket is gone: its leases end (what it was handed and did not acknowledge is offered
    /// again, to the next socket or poll).
    pub(super) fn close_socket(&self, s: &Arc<Socket>) {
        self.open_sockets.fetch_sub(1, Ordering::Relaxed);
        s.mark_closed();
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

    /// Whether a new WebSocket may open here: not while the node stops or a rolling upgrade holds
    /// it back (its readiness is failing then, so a balancer sends the client to another node).
    pub fn accept_socket(&self) -> MediatorResult<tokio::sync::OwnedSemaphorePermit> {
        match *self.ctx.sessions.borrow() {
            Sessions::Open => self.socket_places.clone().try_acquire_owned().map_err(|_| {
                MediatorError::NotServing(
                    "this node holds as many WebSockets as it takes (mediator.max_sockets); connect again later, or to another node",
                )
            }),
            Sessions::Stopping => Err(MediatorError::NotServing(
                "this node is stopping; connect again (to another node)",
            )),
            Sessions::HeldBack => Err(MediatorError::NotServing(
                "this node does not serve during a rolling upgrade; connect again (to another node)",
            )),
        }
    }

    /// What a socket's loop watches to close when the node stops serving ([`Sessions`]).
    pub(super) fn sessions(&self) -> tokio::sync::watch::Receiver<Sessions> {
        self.ctx.sessions.clone()
    }

    /// (ping interval, idle timeout) for WebSockets.
    pub(super) fn ws_timers(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.cfg.ws_ping_seconds.max(1)),
            Duration::from_secs(self.cfg.ws_idle_timeout_seconds.max(2)),
        )
    }

    /// Sets how `s` gets `conn_id`'s queue pushed (`None`: not at all).
    pub(super) fn set_mode(&self, conn_id: &str, s: &Arc<Socket>, mode: Option<Mode>) {
        s.set_mode(conn_id, mode);
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
            let others = self.book().take_over(conn_id, s.id);
            for (o, id) in others {
                o.drop_held([id.as_str()]);
            }
        }
        if mode.is_some() {
            s.wake.notify_one();
        }
    }

    pub(super) fn wake_all(&self) {
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
    pub(super) fn wake(&self, conn_id: &str) {
        let s = self
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(conn_id).and_then(Weak::upgrade));
        if let Some(s) = s {
            s.wake.notify_one();
        }
    }

    /// A raw frame of implicit pickup was written on `s`: the message leaves the queue.
    pub(super) async fn implicit_written(
        &self,
        conn_id: &str,
        id: String,
        s: &Arc<Socket>,
    ) -> MediatorResult<()> {
        self.acknowledge(conn_id, &[id], Some(s)).await
    }

    /// Pushes what the live connection of `s` has queued and `s` has not been handed yet.
    pub(super) async fn pump(&self, s: &Arc<Socket>) -> MediatorResult<()> {
        let Some((conn_id, mode)) = s.mode() else {
            return Ok(());
        };
        // Live mode packs deliveries for the recipient's key; implicit pickup sends raw.
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
            let max_bytes =
                MAX_INFLIGHT_LARGEST_MESSAGES.saturating_mul(self.cfg.max_message_bytes as u64);
            // The socket task that drains `tx` is the one running this pump: never wait on a full
            // channel; what is left goes out on the next wake (every acknowledgement wakes it).
            let free = s.tx.capacity();
            if room == 0 || free == 0 || s.inflight_bytes() >= max_bytes {
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
            if !self.send_batch(s, &conn_id, &batch, their_verkey.as_deref())? {
                return Ok(());
            }
        }
    }

    /// Puts `batch` on `s`'s channel: one `delivery` packed for `their_verkey` (live mode), or
    /// each message raw (implicit pickup). Whether it all went; what did not is given back.
    fn send_batch(
        &self,
        s: &Arc<Socket>,
        conn_id: &str,
        batch: &[QueuedMessage],
        their_verkey: Option<&str>,
    ) -> MediatorResult<bool> {
        let frames: Vec<Outgoing> = match their_verkey {
            Some(vk) => vec![Outgoing {
                frame: self.pack_for(&delivery(batch, None, None), vk)?,
                implicit: None,
            }],
            None => batch
                .iter()
                .map(|m| {
                    Ok(Outgoing {
                        frame: serde_json::to_vec(&m.msg).or_internal()?,
                        implicit: Some((conn_id.to_string(), m.id.clone())),
                    })
                })
                .collect::<MediatorResult<_>>()?,
        };
        let mut sent = 0;
        for f in frames {
            if s.tx.try_send(f).is_err() {
                break;
            }
            sent += 1;
        }
        // Not expected (capacity checked, one producer): give back what did not go out.
        let unsent: Vec<String> = match (their_verkey, sent) {
            (Some(_), 0) => batch.iter().map(|m| m.id.clone()).collect(),
            (Some(_), _) => Vec::new(),
            (None, n) => batch[n..].iter().map(|m| m.id.clone()).collect(),
        };
        if !unsent.is_empty() {
            self.release(conn_id, s, &unsent);
            return Ok(false);
        }
        if their_verkey.is_some() {
            s.delivery_sent();
        }
        Ok(true)
    }
}
