//! The stored queue, `{connection}/{time-ordered id}` in [`ks::QUEUE`]: routing forwards into it
//! (durably, before the sender's 202), handing messages out under leases, deleting them when
//! acknowledged, and `status` from the in-memory index ([`super::index`], kept in
//! [`super::book`]). Every change is announced on the bus with what changed, so the node holding
//! the recipient's live socket pumps and other nodes apply it to their index of that queue.

use std::sync::Arc;

use serde_json::{json, Value};

use super::book::{lease_from, live_ids, Holder, Leases, Pending};
use super::error::{MediatorError, MediatorResult, OrInternal as _};
use super::index::{Change, ConnQueue, Entry};
use super::message::recipient_filter;
use super::model::ks;
use super::model::QueuedMessage;
use super::service::{lock_book, MediatorService, OrRefused as _, Required as _};
use super::socket::Socket;
use crate::clock::random_id;
use crate::didcomm::peer;

/// Bus topic of a message queued (payload `{connection}\n{origin node}\n{changes}`, see
/// [`MediatorService::on_event`]): wakes the socket that holds the connection live; other nodes
/// also add the message to their index of that queue.
pub(super) const BUS_TOPIC: &str = "mediator.queued";
/// Bus topic of messages acknowledged (same payload): other nodes take them out of their index
/// of that queue and end their leases.
pub(super) const BUS_TOPIC_ACKED: &str = "mediator.acked";
/// Bus topic of acknowledged ids the acknowledging node did not know (same payload, `remove`
/// changes): the node that handed them out — its socket's leases, its index — acknowledges them.
pub(super) const BUS_TOPIC_ACK_ELSEWHERE: &str = "mediator.ack-elsewhere";

/// Most unknown ids one acknowledgement passes on the bus (to every node): two live deliveries'
/// worth; made-up ids past them cost nothing. A message past them stays queued and comes again.
const MAX_PASSED_ON: usize = 100;

/// Longest a caller waits for another caller's build of an index before scanning for itself.
const INDEX_BUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Gives build `build` of `conn_id`'s index up when dropped unfinished (build 0: finished).
struct AbandonOnDrop<'a> {
    svc: &'a MediatorService,
    conn_id: &'a str,
    build: u64,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.build != 0 {
            self.svc.book().abandon_index(self.conn_id, self.build);
        }
    }
}

/// A queued message's id as this mediator makes them: 13 digits of milliseconds, then a
/// base64url random part. Acknowledgements name nothing else (an id is a store key part, and
/// travels in bus events).
fn is_message_id(id: &str) -> bool {
    (14..=64).contains(&id.len())
        && id.as_bytes()[..13].iter().all(u8::is_ascii_digit)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `secs` as milliseconds, saturating.
fn ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The deepest forwarded message taken (an encrypted envelope nests three or four levels).
const MAX_FORWARDED_DEPTH: usize = 64;

impl MediatorService {
    /// Routing 1.0 `forward`: the inner message goes, untouched, into the queue of the
    /// connection that registered the `to` key.
    pub(super) async fn forward(&self, msg: &Value) -> MediatorResult<()> {
        let to = msg
            .get("to")
            .and_then(Value::as_str)
            .required(self, "forward without to")?;
        let key = peer::normalize_key(to).or_refused(self)?;
        let inner = msg
            .get("msg")
            .filter(|m| m.is_object() || m.is_string())
            .required(self, "forward without msg")?;
        let inner = match inner {
            Value::String(s) => serde_json::from_str(s).or_refused_in(self, "forward msg")?,
            v => v.clone(),
        };
        // stored a level down in its queue record: past serde_json's read limit the record would
        // never be read again, and the recipient's pickup would stall behind it (attacker
        // review: a 127-deep string `msg` blocked an agent's queue for the message TTL)
        if crate::store::json_depth(&inner) > MAX_FORWARDED_DEPTH {
            return Err(self.refuse(format!(
                "the forwarded message nests deeper than {MAX_FORWARDED_DEPTH}"
            )));
        }
        let conn_id = self
            .ctx
            .store
            .get(ks::ROUTES, &key)
            .await?
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(MediatorError::NoRoute)?;
        self.enqueue(&conn_id, &key, inner).await?;
        self.counters.forwarded();
        Ok(())
    }

    /// Stores a message for connection `conn_id` durably, then announces it on the bus. The
    /// queue caps (messages and bytes per connection) are checked against the index: O(1).
    pub(super) async fn enqueue(
        &self,
        conn_id: &str,
        recipient_key: &str,
        msg: Value,
    ) -> MediatorResult<()> {
        // Sortable, unique id: millisecond time then randomness.
        let now = self.now();
        let id = format!("{:013}{}", now.max(0), random_id());
        let rec = QueuedMessage {
            id: id.clone(),
            recipient_key: recipient_key.to_string(),
            received_at_ms: now,
            msg,
        };
        let raw = serde_json::to_vec(&rec).or_internal()?;
        let len = raw.len() as u64;
        self.check_room(conn_id, len).await?;
        let ttl = std::time::Duration::from_secs(self.cfg.message_ttl_seconds);
        let entry = Entry {
            bytes: len,
            recipient: recipient_key.to_string(),
            at_ms: now,
        };
        let change = Change::Add(id.clone(), entry);
        let event = self.event(conn_id, std::slice::from_ref(&change));
        // The write, its index entry and its announcement run as one task: a sender that drops
        // the request mid-write must not leave a stored message that no index knows (a claim
        // hands out only what the index holds, and the caps count it).
        let (store, bus, book) = (
            self.ctx.store.clone(),
            self.ctx.bus.clone(),
            self.shared_book(),
        );
        let (conn, flush) = (conn_id.to_string(), self.cfg.flush_before_ack);
        let stored = tokio::spawn(async move {
            store
                .put(ks::QUEUE, &format!("{conn}/{id}"), raw, Some(ttl))
                .await?;
            if flush {
                store.flush().await?;
            }
            lock_book(&book).note(&conn, change);
            bus.publish(BUS_TOPIC, &event).await;
            Ok::<_, crate::store::StoreError>(())
        });
        stored.await.or_internal()??;
        Ok(())
    }

    /// Refuses a message of `len` bytes that would take `conn_id`'s queue over its
    /// message or byte cap.
    async fn check_room(&self, conn_id: &str, len: u64) -> MediatorResult<()> {
        let (count, bytes) = self
            .with_queue(conn_id, |q, _| (q.len(), q.bytes()))
            .await?;
        let max = self.cfg.max_queue_per_recipient as u64;
        if count >= max {
            return Err(MediatorError::QueueFull(format!(
                "the recipient's queue holds {max} messages already; it must pick some up first"
            )));
        }
        let max_bytes = self.cfg.max_queue_bytes_per_connection;
        if bytes.saturating_add(len) > max_bytes {
            return Err(MediatorError::QueueFull(format!(
                "the recipient's queue holds {bytes} of its {max_bytes} bytes already; it must pick some up first"
            )));
        }
        Ok(())
    }

    /// Runs `f` on the index of `conn_id`'s queue and the connection's leases, building the index
    /// with one store scan when this node has none. Callers that find a build under way wait for
    /// it instead of scanning too (a few times at most: under a stream of other nodes' changes
    /// each build may be dropped before it is kept, and then they scan for themselves).
    async fn with_queue<R>(
        &self,
        conn_id: &str,
        f: impl FnOnce(&mut ConnQueue, &mut Leases) -> R,
    ) -> MediatorResult<R> {
        let now = self.now();
        let horizon = now.saturating_sub(ms(self.cfg.message_ttl_seconds));
        let mut run = move |q: &mut ConnQueue, l: &mut Leases| {
            q.expire(horizon);
            f(q, l)
        };
        let mut waits = 0;
        let started = loop {
            let tried = self.book().try_run(conn_id, now, run);
            match tried {
                Ok(r) => return Ok(r),
                Err((f, Pending::Started(n))) => {
                    run = f;
                    break Some(n);
                }
                Err((f, Pending::Loading(mut done))) => {
                    run = f;
                    if waits == 3 {
                        break None;
                    }
                    waits += 1;
                    // returns once the build is over (its sender is dropped then); bounded all
                    // the same, so no caller waits on a build for long whatever became of it
                    let _ = tokio::time::timeout(INDEX_BUILD_WAIT, done.changed()).await;
                }
            }
        };
        // A builder dropped mid-scan (its request cancelled) gives the build up, so callers
        // waiting for it are released and the next one builds anew.
        let mut build = started.map(|n| AbandonOnDrop {
            svc: self,
            conn_id,
            build: n,
        });
        let rows = self
            .ctx
            .store
            .scan_prefix(ks::QUEUE, &format!("{conn_id}/"), usize::MAX)
            .await?;
        let mut unreadable = Vec::new();
        let q = ConnQueue::from_entries(rows.into_iter().filter_map(|(key, raw)| {
            match serde_json::from_slice::<QueuedMessage>(&raw) {
                Ok(m)
                    if key.strip_prefix(conn_id).and_then(|k| k.strip_prefix('/'))
                        == Some(m.id.as_str()) =>
                {
                    let entry = Entry {
                        bytes: raw.len() as u64,
                        recipient: m.recipient_key,
                        at_ms: m.received_at_ms,
                    };
                    Some((m.id, entry))
                }
                _ => {
                    unreadable.push(key);
                    None
                }
            }
        }));
        let out = self.book().finish_index(conn_id, q, started, now, run);
        if let Some(b) = build.as_mut() {
            b.build = 0;
        }
        self.delete_unreadable(conn_id, unreadable).await;
        Ok(out)
    }

    /// Deletes queue records that cannot be read as a message of their key (a message nobody can
    /// hand out would otherwise wait its whole TTL, and be scanned at every index build).
    async fn delete_unreadable(&self, conn_id: &str, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        tracing::warn!(
            connection = conn_id,
            records = keys.len(),
            "unreadable mediator queue records deleted"
        );
        let ops = keys
            .into_iter()
            .map(|key| crate::store::BatchOp::Delete {
                keyspace: ks::QUEUE,
                key,
            })
            .collect();
        if let Err(e) = self.ctx.store.batch(ops).await {
            tracing::warn!(error = %e, "unreadable mediator queue records could not be deleted");
        }
    }

    /// The bus payload of `changes` to `conn_id`'s queue: `{connection}\n{origin}\n{changes as
    /// JSON}` (nodes from before the changes were carried read the first two lines only, and
    /// drop their index).
    fn event(&self, conn_id: &str, changes: &[Change]) -> String {
        let changes = serde_json::to_string(changes).unwrap_or_default();
        format!("{conn_id}\n{}\n{changes}", self.origin)
    }

    /// A bus event: wake the local socket holding the connection. Another node's change is
    /// applied to this node's index of the queue (without the changes, from an older node, or
    /// unreadable: the index is dropped, to be rebuilt on next use); its acknowledgements also
    /// end the leases this node's sockets hold on those messages, which frees their windows.
    pub(super) fn on_event(self: &Arc<Self>, topic: &str, payload: &str) {
        let mut parts = payload.splitn(3, '\n');
        let conn_id = parts.next().unwrap_or_default();
        let origin = parts.next().unwrap_or_default();
        if topic == BUS_TOPIC_ACK_ELSEWHERE {
            if origin != self.origin {
                let ids = parts
                    .next()
                    .and_then(|c| serde_json::from_str::<Vec<Change>>(c).ok())
                    .unwrap_or_default();
                self.on_ack_elsewhere(conn_id, ids);
            }
            return;
        }
        if origin != self.origin {
            let now = self.now();
            let changes = parts
                .next()
                .and_then(|c| serde_json::from_str::<Vec<Change>>(c).ok());
            match changes {
                Some(changes) => {
                    let removed: Vec<String> = changes
                        .iter()
                        .filter_map(|c| match c {
                            Change::Remove(id) => Some(id.clone()),
                            Change::Add(..) => None,
                        })
                        .collect();
                    let mut book = self.book();
                    book.note_remote(conn_id, changes, now);
                    if !removed.is_empty() {
                        let ids: Vec<&String> = removed.iter().collect();
                        let holders = book.acknowledged(conn_id, &ids, now);
                        drop(book);
                        for (_, w) in holders {
                            if let Some(h) = w.upgrade() {
                                h.acknowledged(removed.iter().map(String::as_str));
                                h.wake.notify_one();
                            }
                        }
                    }
                }
                None => self.book().drop_index(conn_id),
            }
        }
        if topic == BUS_TOPIC {
            self.wake(conn_id);
        }
    }

    /// Ids another node was asked to acknowledge and did not know: those this node's index or
    /// leases hold (without building an index: a node that handed a message out has one) are
    /// acknowledged here, the same way.
    fn on_ack_elsewhere(self: &Arc<Self>, conn_id: &str, changes: Vec<Change>) {
        let ids: Vec<String> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Remove(id) if is_message_id(&id) => Some(id),
                _ => None,
            })
            .collect();
        let known = self.book().known(conn_id, &ids);
        if known.is_empty() {
            return;
        }
        let svc = self.clone();
        let conn_id = conn_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = svc.acknowledge_here(&conn_id, &known, None, false).await {
                tracing::warn!(error = %e, "an acknowledgement passed on by another node failed");
            }
        });
    }

    /// Missed bus events: every index may be stale.
    pub(super) fn forget_indexes(&self) {
        self.book().drop_indexes();
    }

    /// Messages not handed out (to any socket or HTTP lease), oldest first, leased to `socket`
    /// (until it closes) or to an HTTP lease (`pickup_lease_seconds`). Chosen from the index
    /// (what is leased already, or for another recipient key, costs no store read), then read:
    /// `limit` store reads at most per round, whatever the queue holds. When every message chosen
    /// was missing from the store (announced by another node, its record not here yet), the
    /// messages behind them are tried too (a few rounds at most).
    pub(super) async fn claim(
        &self,
        conn_id: &str,
        socket: Option<&Arc<Socket>>,
        limit: usize,
        recipient: Option<&str>,
    ) -> MediatorResult<Vec<QueuedMessage>> {
        for _ in 0..3 {
            let (out, missed) = self.claim_once(conn_id, socket, limit, recipient).await?;
            if !out.is_empty() || !missed {
                return Ok(out);
            }
        }
        Ok(Vec::new())
    }

    /// One round of [`claim`](Self::claim): what it handed out, and whether a message chosen
    /// was missing from the store.
    async fn claim_once(
        &self,
        conn_id: &str,
        socket: Option<&Arc<Socket>>,
        limit: usize,
        recipient: Option<&str>,
    ) -> MediatorResult<(Vec<QueuedMessage>, bool)> {
        let now = self.now();
        let until_ms = now.saturating_add(ms(self.cfg.pickup_lease_seconds));
        let holder = Holder::of(socket, until_ms);
        let max_bytes = self.cfg.max_message_bytes as u64;
        let ids = self
            .with_queue(conn_id, |q, l| {
                lease_from(q, l, limit, max_bytes, recipient, &holder, now)
            })
            .await?;
        if ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{conn_id}/{id}")).collect();
        let store = &self.ctx.store;
        let read =
            futures_util::future::join_all(keys.iter().map(|k| store.get(ks::QUEUE, k))).await;
        let mut out = Vec::with_capacity(ids.len());
        let (mut gone, mut missing, mut unreadable, mut failed) =
            (Vec::new(), Vec::new(), Vec::new(), None);
        for ((id, key), r) in ids.into_iter().zip(keys).zip(read) {
            match r {
                Ok(Some(raw)) => match serde_json::from_slice::<QueuedMessage>(&raw) {
                    Ok(m) if m.id == id => out.push((m, raw.len() as u64)),
                    _ => {
                        unreadable.push(key);
                        gone.push(id);
                    }
                },
                // acknowledged on another node, or expired, since the index was built (or, from
                // another node, not in this node's copy yet)
                Ok(None) => missing.push(id),
                Err(e) => {
                    gone.push(id);
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            // nothing handed out: every lease taken here ends, and the index is rebuilt
            let mut all: Vec<String> = out.into_iter().map(|(m, _)| m.id).collect();
            all.extend(gone);
            all.extend(missing);
            let mut book = self.book();
            book.unlease(conn_id, &all);
            book.abandon_ready_index(conn_id);
            return Err(e.into());
        }
        let missed = !missing.is_empty();
        if !gone.is_empty() || missed {
            let mut book = self.book();
            book.forget(conn_id, &gone);
            book.missing(conn_id, &missing, now);
        }
        if let Some(s) = socket {
            s.hold(out.iter().map(|(m, bytes)| (m.id.clone(), *bytes)));
        }
        let out: Vec<QueuedMessage> = out.into_iter().map(|(m, _)| m).collect();
        self.counters.delivered(out.len() as u64);
        self.delete_unreadable(conn_id, unreadable).await;
        Ok((out, missed))
    }

    /// When the first HTTP lease on `conn_id`'s messages runs out (they are offered again then).
    pub(super) fn http_lease_end(&self, conn_id: &str) -> Option<std::time::Instant> {
        let now = self.now();
        let first = self.book().first_http_lease_end(conn_id, now)?;
        let wait = u64::try_from(first - now).unwrap_or(0);
        Some(std::time::Instant::now() + std::time::Duration::from_millis(wait))
    }

    /// Gives back leases `socket` took and did not get onto the wire.
    pub(super) fn release(&self, conn_id: &str, s: &Arc<Socket>, ids: &[String]) {
        self.book().release(conn_id, s.id, ids);
        s.drop_held(ids.iter().map(String::as_str));
    }

    /// Deletes acknowledged messages and ends their leases, wherever they were handed out (a
    /// socket's delivery may be acknowledged over HTTP, as credo does). O(acknowledged).
    ///
    /// Only what the connection holds is deleted: an id neither its index nor its leases know
    /// writes nothing (in a cluster each delete is a tombstone on every node, kept for
    /// `tombstone_ttl_seconds`: a client naming made-up ids filled every node's disk and memory
    /// for a week; attacker review). Once other nodes change queues too, the ids this node does
    /// not know are passed on the bus: a node that handed them out and has not been heard from
    /// yet acknowledges them ([`Self::on_ack_elsewhere`]) — no store read for made-up ids.
    pub(super) async fn acknowledge(
        &self,
        conn_id: &str,
        ids: &[String],
        socket: Option<&Arc<Socket>>,
    ) -> MediatorResult<()> {
        self.acknowledge_here(conn_id, ids, socket, true).await
    }

    /// [`Self::acknowledge`]; the ids this node does not know are passed on when `pass_on`
    /// (not when they were passed on to it: once only).
    async fn acknowledge_here(
        &self,
        conn_id: &str,
        ids: &[String],
        socket: Option<&Arc<Socket>>,
        pass_on: bool,
    ) -> MediatorResult<()> {
        let ids: Vec<&String> = ids.iter().filter(|id| is_message_id(id)).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let (ids, unknown) = self
            .with_queue(conn_id, |q, l| {
                ids.into_iter()
                    .partition::<Vec<&String>, _>(|id| q.get(id).is_some() || l.contains_key(*id))
            })
            .await?;
        // Another node may have handed these out (a socket there, acknowledged over HTTP here,
        // as credo does) before its bus event reached this node's index: that node applies them.
        if pass_on && !unknown.is_empty() && self.book().is_shared() {
            let elsewhere: Vec<Change> = unknown
                .into_iter()
                .take(MAX_PASSED_ON)
                .map(|id| Change::Remove(id.clone()))
                .collect();
            let event = self.event(conn_id, &elsewhere);
            self.ctx.bus.publish(BUS_TOPIC_ACK_ELSEWHERE, &event).await;
        }
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
        let now = self.now();
        for (sid, w) in self.book().acknowledged(conn_id, &ids, now) {
            if !holders.iter().any(|h| h.id == sid) {
                holders.extend(w.upgrade());
            }
        }
        for h in holders {
            h.acknowledged(ids.iter().map(|id| id.as_str()));
            h.wake.notify_one();
        }
        self.counters.acknowledged(n);
        let removed: Vec<Change> = ids.iter().map(|id| Change::Remove((*id).clone())).collect();
        let event = self.event(conn_id, &removed);
        self.ctx.bus.publish(BUS_TOPIC_ACKED, &event).await;
        Ok(())
    }

    /// Pickup 2.0 `status`: what waits and is not handed out, from the index (no store scan).
    pub(super) async fn status(
        &self,
        conn_id: &str,
        req: &Value,
        socket: Option<&Arc<Socket>>,
    ) -> MediatorResult<Value> {
        let filter = recipient_filter(req);
        let now = self.now();
        let sum = self
            .with_queue(conn_id, |q, l| {
                q.summary(&live_ids(l, now), filter.as_deref())
            })
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
}
