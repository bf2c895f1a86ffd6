//! The node's bookkeeping per connection, kept in memory under one lock: the index of its queue
//! ([`ConnQueue`], built from the store on first use) and the leases on messages handed out and
//! not yet acknowledged. Each message is handed out once per socket or HTTP lease, whichever
//! transport asks; the store stays the source of truth (`queue.rs` reads and writes it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};

use tokio::sync::watch;

use super::index::{Change, ConnQueue};
use super::socket::Socket;

/// How long an index is trusted once another node is known to change queues (cluster, Redis):
/// bus events are best effort, so an index older than this is rebuilt from the store on next use.
/// A single node never rebuilds: every change to its queues is its own.
pub(super) const SHARED_INDEX_MAX_AGE_MS: i64 = 10_000;

/// Who holds a message handed out and not yet acknowledged.
#[derive(Clone)]
pub(super) enum Holder {
    /// A socket, until it closes.
    Socket(u64, Weak<Socket>),
    /// An HTTP pickup, until the lease runs out.
    Http { until_ms: i64 },
}

impl Holder {
    /// `s`'s lease, or (no socket) an HTTP lease until `until_ms`.
    pub(super) fn of(socket: Option<&Arc<Socket>>, until_ms: i64) -> Self {
        match socket {
            Some(s) => Holder::Socket(s.id, Arc::downgrade(s)),
            None => Holder::Http { until_ms },
        }
    }

    fn alive(&self, now: i64) -> bool {
        match self {
            Holder::Socket(_, w) => w.upgrade().is_some_and(|s| !s.is_closed()),
            Holder::Http { until_ms } => now < *until_ms,
        }
    }
}

/// Message id → holder, for one connection.
pub(super) type Leases = HashMap<String, Holder>;

enum Slot {
    /// Being built from a store scan; changes made meanwhile are applied when it is done. Callers
    /// that find it wait for the build: `done` is dropped when the slot leaves this state.
    Loading {
        pending: Vec<Change>,
        done: watch::Sender<()>,
        /// Which build (a later build may replace a dropped one: only its own builder keeps it).
        build: u64,
    },
    /// Built at `built_ms`.
    Ready { queue: ConnQueue, built_ms: i64 },
}

/// Why [`Book::try_run`] did not run: nobody had the index (this caller builds it, as build
/// number `n`, and [`Book::finish_index`] keeps it), or another caller is building it (wait on
/// the receiver: it returns once that build is over, kept or not).
pub(super) enum Pending {
    Started(u64),
    Loading(watch::Receiver<()>),
}

/// The node's bookkeeping of queues and leases, per connection.
#[derive(Default)]
pub(super) struct Book {
    queues: HashMap<String, Slot>,
    /// Connection → message id → holder. Kept apart from `queues` (which other nodes' changes
    /// invalidate) so a lease outlives an index rebuild.
    leases: HashMap<String, Leases>,
    /// Another node changes queues too (a bus event from another origin): indexes are then
    /// rebuilt once older than [`SHARED_INDEX_MAX_AGE_MS`].
    shared: bool,
    next_build: u64,
    /// Once shared: the (connection, id) pairs removed from queues in the last
    /// [`SHARED_INDEX_MAX_AGE_MS`], so another node's announcement of one that arrives after its
    /// removal (events from different nodes have no common order) does not bring it back into
    /// the index. Node-wide and bounded ([`REMOVED_KEPT`]), oldest first out.
    removed: Removed,
}

/// Most removals remembered node-wide (acknowledgements within the window; past it the oldest
/// are forgotten first, and a late announcement of one of those makes a ghost entry that the
/// 10 s rebuild clears).
const REMOVED_KEPT: usize = 65_536;

#[derive(Default)]
struct Removed {
    order: VecDeque<(i64, String, String)>,
    set: HashSet<(String, String)>,
}

impl Removed {
    fn prune(&mut self, now: i64) {
        while let Some((at, _, _)) = self.order.front() {
            if now.saturating_sub(*at) < SHARED_INDEX_MAX_AGE_MS && self.order.len() <= REMOVED_KEPT
            {
                break;
            }
            if let Some((_, conn, id)) = self.order.pop_front() {
                self.set.remove(&(conn, id));
            }
        }
    }

    fn remember(&mut self, conn_id: &str, id: &str, now: i64) {
        let key = (conn_id.to_string(), id.to_string());
        if self.set.insert(key.clone()) {
            self.order.push_back((now, key.0, key.1));
        }
        self.prune(now);
    }

    fn contains(&mut self, conn_id: &str, id: &str, now: i64) -> bool {
        self.prune(now);
        self.set.contains(&(conn_id.to_string(), id.to_string()))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// How long a message the index holds but the store did not (yet) is skipped before it is
/// tried again, when another node may have queued it and its record not reached this node.
const MISSING_RETRY_MS: i64 = 1000;

/// The ids among `leases` whose holder is still alive at `now`.
pub(super) fn live_ids(leases: &Leases, now: i64) -> HashSet<&str> {
    leases
        .iter()
        .filter(|(_, h)| h.alive(now))
        .map(|(id, _)| id.as_str())
        .collect()
}

/// Runs `f` on `conn_id`'s leases (an empty set when it has none; only a set left non-empty
/// is kept).
fn with_leases<R>(
    leases: &mut HashMap<String, Leases>,
    conn_id: &str,
    f: impl FnOnce(&mut Leases) -> R,
) -> R {
    match leases.get_mut(conn_id) {
        Some(l) => {
            let out = f(l);
            if l.is_empty() {
                leases.remove(conn_id);
            }
            out
        }
        None => {
            let mut l = Leases::new();
            let out = f(&mut l);
            if !l.is_empty() {
                leases.insert(conn_id.to_string(), l);
            }
            out
        }
    }
}

/// Live leases one connection may hold (its sockets' and HTTP pickups' together): every pickup,
/// status and acknowledgement walks them under the node's book lock, so a client that asked for
/// its whole queue and never acknowledged made each of its requests stall every connection of
/// the node (attacker review: 10,000 leases, ~30,000 map operations per status frame). Twice a
/// live socket's window ([`super::live`]'s 500 in flight).
pub(super) const MAX_LEASES: usize = 1000;

/// Leases to `holder` up to `limit` of the messages in `q` (oldest first) that no live lease
/// holds and that are for `recipient` (when given), and no more than `max_bytes` of them (the
/// first always: a message the mediator took is never too big to hand out); their ids. The byte
/// bound keeps one delivery near one message's size (attacker review: `limit` 1,000 on a full
/// queue made one delivery of the whole queue, 85 MB, POSTed to the connection's endpoint each
/// time the lease ended). A walk of the index in memory (of
/// that recipient's messages only, when given): what is leased already costs a map lookup, not a
/// store read. Leases that ran out, or whose
/// socket closed, end first. A connection holds at most [`MAX_LEASES`] live leases: past them
/// nothing more is handed out until some are acknowledged or end.
pub(super) fn lease_from(
    q: &ConnQueue,
    leases: &mut Leases,
    limit: usize,
    max_bytes: u64,
    recipient: Option<&str>,
    holder: &Holder,
    now: i64,
) -> Vec<String> {
    leases.retain(|_, h| h.alive(now));
    let limit = limit.min(MAX_LEASES.saturating_sub(leases.len()));
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for (id, entry) in q.entries_for(recipient) {
        if out.len() >= limit {
            break;
        }
        if leases.contains_key(id) {
            continue;
        }
        bytes = bytes.saturating_add(entry.bytes);
        if !out.is_empty() && bytes > max_bytes {
            break;
        }
        leases.insert(id.clone(), holder.clone());
        out.push(id.clone());
    }
    out
}

impl Book {
    /// Records a change this node made to a queue in its index (if it has one, or is building one).
    pub(super) fn note(&mut self, conn_id: &str, c: Change) {
        match self.queues.get_mut(conn_id) {
            Some(Slot::Ready { queue, .. }) => queue.apply(c),
            Some(Slot::Loading { pending, .. }) => pending.push(c),
            None => {}
        }
    }

    /// Runs `f` on the index of `conn_id`'s queue and the connection's leases, or says who builds
    /// the index (a caller finding none, or one too old to trust, starts it).
    pub(super) fn try_run<R, F>(&mut self, conn_id: &str, now: i64, f: F) -> Result<R, (F, Pending)>
    where
        F: FnOnce(&mut ConnQueue, &mut Leases) -> R,
    {
        let Book {
            queues,
            leases,
            shared,
            next_build,
            ..
        } = self;
        match queues.get_mut(conn_id) {
            Some(Slot::Ready { queue, built_ms })
                if !*shared || now.saturating_sub(*built_ms) < SHARED_INDEX_MAX_AGE_MS =>
            {
                Ok(with_leases(leases, conn_id, |l| f(queue, l)))
            }
            Some(Slot::Loading { done, .. }) => Err((f, Pending::Loading(done.subscribe()))),
            _ => {
                let (done, _) = watch::channel(());
                *next_build += 1;
                queues.insert(
                    conn_id.to_string(),
                    Slot::Loading {
                        pending: Vec::new(),
                        done,
                        build: *next_build,
                    },
                );
                Err((f, Pending::Started(*next_build)))
            }
        }
    }

    /// Build `build` of `conn_id`'s index failed or was dropped: nobody is building it any more
    /// (those waiting for it are released, and the next caller builds anew).
    pub(super) fn abandon_index(&mut self, conn_id: &str, build: u64) {
        if matches!(self.queues.get(conn_id), Some(Slot::Loading { build: b, .. }) if *b == build) {
            self.queues.remove(conn_id);
        }
    }

    /// Runs `run` on the index `q` a scan built (started at `built_ms`), with the connection's
    /// leases. The builder (`started`: its build number) applies the changes made while the scan
    /// ran on top and keeps it; if the index was dropped meanwhile (another node changed the
    /// queue), or another build replaced this one, it answers once and is not kept.
    pub(super) fn finish_index<R>(
        &mut self,
        conn_id: &str,
        mut q: ConnQueue,
        started: Option<u64>,
        built_ms: i64,
        run: impl FnOnce(&mut ConnQueue, &mut Leases) -> R,
    ) -> R {
        let Book { queues, leases, .. } = self;
        let mine = |slot: Option<&Slot>| matches!((slot, started), (Some(Slot::Loading { build, .. }), Some(s)) if *build == s);
        if mine(queues.get(conn_id)) {
            if let Some(Slot::Loading { pending, .. }) = queues.remove(conn_id) {
                for c in pending {
                    q.apply(c);
                }
                let out = with_leases(leases, conn_id, |l| run(&mut q, l));
                queues.insert(conn_id.to_string(), Slot::Ready { queue: q, built_ms });
                return out;
            }
        }
        with_leases(leases, conn_id, |l| run(&mut q, l))
    }

    /// `conn_id`'s index may not say what the store holds (a read of it failed): rebuilt on next
    /// use.
    pub(super) fn abandon_ready_index(&mut self, conn_id: &str) {
        if matches!(self.queues.get(conn_id), Some(Slot::Ready { .. })) {
            self.queues.remove(conn_id);
        }
    }

    /// Another node changed `conn_id`'s queue: its index is stale.
    pub(super) fn drop_index(&mut self, conn_id: &str) {
        self.shared = true;
        self.queues.remove(conn_id);
    }

    /// Every index may be stale (missed bus events).
    pub(super) fn drop_indexes(&mut self) {
        self.queues.clear();
    }

    /// Ends the leases on `conn_id` that ran out or whose socket closed; how many are left.
    #[cfg(test)]
    pub(super) fn live_leases(&mut self, conn_id: &str, now: i64) -> usize {
        match self.leases.get_mut(conn_id) {
            Some(l) => {
                l.retain(|_, h| h.alive(now));
                l.len()
            }
            None => 0,
        }
    }

    /// Ends the leases on `ids` whatever holds them (leased and then not handed out).
    pub(super) fn unlease(&mut self, conn_id: &str, ids: &[String]) {
        with_leases(&mut self.leases, conn_id, |l| {
            for id in ids {
                l.remove(id);
            }
        });
    }

    /// `ids` are no longer in the store (acknowledged elsewhere, expired, unreadable): out of the
    /// index, and their leases ended.
    pub(super) fn forget(&mut self, conn_id: &str, ids: &[String]) {
        for id in ids {
            self.note(conn_id, Change::Remove(id.clone()));
        }
        self.unlease(conn_id, ids);
    }

    /// `ids` were in the index but not in the store when read: their leases end, and they leave
    /// the index — unless other nodes change queues and the message is younger than
    /// [`SHARED_INDEX_MAX_AGE_MS`]: another node's enqueue reaches the index on the bus, maybe
    /// before its record reaches this node's copy of the store.
    /// A young one is skipped for [`MISSING_RETRY_MS`] (an HTTP lease of that length: a live
    /// socket pumps again when it ends), so the messages behind it are not held up.
    pub(super) fn missing(&mut self, conn_id: &str, ids: &[String], now: i64) {
        let young = |b: &Book, id: &str| {
            b.shared
                && matches!(b.queues.get(conn_id), Some(Slot::Ready { queue, .. })
                    if queue.get(id).is_some_and(|e| now.saturating_sub(e.at_ms) < SHARED_INDEX_MAX_AGE_MS))
        };
        let (young, gone): (Vec<String>, Vec<String>) =
            ids.iter().cloned().partition(|id| young(self, id));
        self.unlease(conn_id, ids);
        self.forget(conn_id, &gone);
        let retry = Holder::Http {
            until_ms: now.saturating_add(MISSING_RETRY_MS),
        };
        with_leases(&mut self.leases, conn_id, |l| {
            for id in young {
                l.insert(id, retry.clone());
            }
        });
    }

    /// Changes another node made to `conn_id`'s queue, from its bus event (at `now`). An added
    /// message this node saw removed already stays out. (Its removals are remembered by
    /// [`Book::acknowledged`], which the event handler calls for them.)
    pub(super) fn note_remote(&mut self, conn_id: &str, changes: Vec<Change>, now: i64) {
        self.shared = true;
        for c in changes {
            if let Change::Add(id, _) = &c {
                if self.removed.contains(conn_id, id, now) {
                    continue;
                }
            }
            self.note(conn_id, c);
        }
    }

    /// Remembers (once shared) that `ids` left `conn_id`'s queue at `now`.
    fn remember_removed<'a>(
        &mut self,
        conn_id: &str,
        ids: impl IntoIterator<Item = &'a str>,
        now: i64,
    ) {
        if !self.shared {
            return;
        }
        for id in ids {
            self.removed.remember(conn_id, id, now);
        }
    }

    #[cfg(test)]
    fn was_removed(&mut self, conn_id: &str, id: &str, now: i64) -> bool {
        self.removed.contains(conn_id, id, now)
    }

    /// Whether another node changes queues too (indexes may lag its changes by a bus event).
    pub(super) fn is_shared(&self) -> bool {
        self.shared
    }

    /// Of `ids`, those `conn_id`'s ready index or its leases hold (no index is built).
    pub(super) fn known(&self, conn_id: &str, ids: &[String]) -> Vec<String> {
        let queue = match self.queues.get(conn_id) {
            Some(Slot::Ready { queue, .. }) => Some(queue),
            _ => None,
        };
        let leases = self.leases.get(conn_id);
        ids.iter()
            .filter(|id| {
                queue.is_some_and(|q| q.get(id).is_some())
                    || leases.is_some_and(|l| l.contains_key(*id))
            })
            .cloned()
            .collect()
    }

    /// When (ms) the first HTTP lease on `conn_id`'s messages still running at `now` runs out.
    pub(super) fn first_http_lease_end(&self, conn_id: &str, now: i64) -> Option<i64> {
        self.leases
            .get(conn_id)?
            .values()
            .filter_map(|h| match h {
                Holder::Http { until_ms } if *until_ms > now => Some(*until_ms),
                _ => None,
            })
            .min()
    }

    /// Gives back the leases socket `socket_id` holds on `ids`.
    pub(super) fn release(&mut self, conn_id: &str, socket_id: u64, ids: &[String]) {
        if let Some(l) = self.leases.get_mut(conn_id) {
            for id in ids {
                if matches!(l.get(id), Some(Holder::Socket(sid, _)) if *sid == socket_id) {
                    l.remove(id);
                }
            }
        }
    }

    /// `ids` were acknowledged (and deleted): out of the index and their leases ended. Returns
    /// the sockets that held them, in the order found (a socket once per id it held).
    pub(super) fn acknowledged(
        &mut self,
        conn_id: &str,
        ids: &[&String],
        now: i64,
    ) -> Vec<(u64, Weak<Socket>)> {
        self.remember_removed(conn_id, ids.iter().map(|id| id.as_str()), now);
        let Book { queues, leases, .. } = self;
        match queues.get_mut(conn_id) {
            Some(Slot::Ready { queue, .. }) => {
                for id in ids {
                    queue.remove(id);
                }
            }
            Some(Slot::Loading { pending, .. }) => {
                pending.extend(ids.iter().map(|id| Change::Remove((*id).clone())))
            }
            None => {}
        }
        let mut holders = Vec::new();
        if let Some(l) = leases.get_mut(conn_id) {
            for id in ids {
                if let Some(Holder::Socket(sid, w)) = l.remove(id.as_str()) {
                    holders.push((sid, w));
                }
            }
            if l.is_empty() {
                leases.remove(conn_id);
            }
        }
        holders
    }

    /// Live mode moved to socket `socket_id`: the leases other sockets hold on `conn_id`'s
    /// messages end (they are delivered again there). Returns those sockets (still alive) and
    /// the ids each lost.
    pub(super) fn take_over(
        &mut self,
        conn_id: &str,
        socket_id: u64,
    ) -> Vec<(Arc<Socket>, String)> {
        let mut others = Vec::new();
        if let Some(l) = self.leases.get_mut(conn_id) {
            l.retain(|id, h| match h {
                Holder::Socket(sid, w) if *sid != socket_id => {
                    if let Some(o) = w.upgrade() {
                        others.push((o, id.clone()));
                    }
                    false
                }
                _ => true,
            });
        }
        others
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::mediator::index::Entry;

    fn e(bytes: u64, recipient: &str) -> Entry {
        Entry {
            bytes,
            recipient: recipient.into(),
            at_ms: 0,
        }
    }

    fn socket(id: u64) -> Arc<Socket> {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        Arc::new(Socket::new(id, tx))
    }

    /// Starts a build of "c"'s index: its number.
    fn start(b: &mut Book, now: i64) -> u64 {
        match b.try_run("c", now, |_, _| ()) {
            Err((_, Pending::Started(n))) => n,
            _ => panic!("a build should start"),
        }
    }

    /// A book whose index of "c" holds `entries`.
    fn ready(entries: &[(&str, &str)]) -> Book {
        let mut b = Book::default();
        let n = start(&mut b, 0);
        let q = ConnQueue::from_entries(entries.iter().map(|(id, r)| (id.to_string(), e(1, r))));
        b.finish_index("c", q, Some(n), 0, |_, _| ());
        b
    }

    fn lease(
        b: &mut Book,
        limit: usize,
        recipient: Option<&str>,
        holder: &Holder,
        now: i64,
    ) -> Vec<String> {
        b.try_run("c", now, |q, l| {
            lease_from(q, l, limit, u64::MAX, recipient, holder, now)
        })
        .ok()
        .expect("the index is ready")
    }

    /// One delivery holds at most `max_bytes` of messages (the first one always), whatever
    /// `limit` asks for; the rest wait for the next request.
    #[test]
    fn a_delivery_is_bounded_in_bytes() {
        let mut b = Book::default();
        let n = start(&mut b, 0);
        let sizes = [100u64, 100, 100, 500, 100];
        let q = ConnQueue::from_entries(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &bytes)| (format!("m{i}"), e(bytes, "k"))),
        );
        b.finish_index("c", q, Some(n), 0, |_, _| ());
        let holder = Holder::Http { until_ms: i64::MAX };
        let mut take = |max_bytes| {
            b.try_run("c", 0, |q, l| {
                lease_from(q, l, 1000, max_bytes, None, &holder, 0)
            })
            .ok()
            .unwrap()
        };
        assert_eq!(take(250), vec!["m0", "m1"]);
        assert_eq!(take(250), vec!["m2"], "the next one would pass the bound");
        assert_eq!(take(250), vec!["m3"], "one over the bound goes alone");
        assert_eq!(take(250), vec!["m4"]);
        assert!(take(250).is_empty());
    }

    /// A connection holds at most MAX_LEASES live leases, whatever its requests ask for; an
    /// acknowledgement (or a lease's end) makes room again.
    #[test]
    fn a_connection_holds_a_bounded_number_of_leases() {
        let ids: Vec<String> = (0..MAX_LEASES + 500).map(|i| format!("m{i:05}")).collect();
        let entries: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "k")).collect();
        let mut b = ready(&entries);
        let http = Holder::Http { until_ms: 100 };
        assert_eq!(lease(&mut b, 600, None, &http, 0).len(), 600);
        assert_eq!(lease(&mut b, 600, None, &http, 0).len(), MAX_LEASES - 600);
        assert!(lease(&mut b, 600, None, &http, 0).is_empty());
        let done: Vec<&String> = ids.iter().take(10).collect();
        b.acknowledged("c", &done, 0);
        assert_eq!(lease(&mut b, 600, None, &http, 0).len(), 10);
        // the leases run out: the next request is served again
        assert_eq!(lease(&mut b, 600, None, &http, 100).len(), 600);
    }

    #[test]
    fn a_message_is_leased_once_until_its_lease_ends() {
        let mut b = ready(&[("1", "a"), ("2", "b"), ("3", "a")]);
        let http = Holder::Http { until_ms: 100 };
        assert_eq!(lease(&mut b, 10, Some("a"), &http, 0), ["1", "3"]);
        assert_eq!(lease(&mut b, 10, None, &http, 0), ["2"]);
        assert_eq!(b.live_leases("c", 50), 3);
        assert_eq!(b.first_http_lease_end("c", 50), Some(100));
        // the HTTP leases run out: offered again, this time to a socket
        assert_eq!(b.live_leases("c", 100), 0);
        let s = socket(7);
        let held = lease(&mut b, 2, None, &Holder::of(Some(&s), 0), 100);
        assert_eq!(held, ["1", "2"]);
        // the socket gives one back; a closed socket holds nothing
        b.release("c", 7, &["2".to_string()]);
        assert_eq!(b.live_leases("c", 100), 1);
        s.mark_closed();
        assert_eq!(b.live_leases("c", 100), 0);
    }

    #[test]
    fn a_filtered_lease_is_not_starved_by_other_keys_messages() {
        // 600 messages for key "b" ahead of the two for "a": a filtered pickup still finds "a"'s
        let mut entries: Vec<(String, &str)> =
            (0..600).map(|i| (format!("0{i:04}"), "b")).collect();
        entries.push(("1".into(), "a"));
        entries.push(("2".into(), "a"));
        let entries: Vec<(&str, &str)> = entries.iter().map(|(i, r)| (i.as_str(), *r)).collect();
        let mut b = ready(&entries);
        let http = Holder::Http { until_ms: 100 };
        assert_eq!(lease(&mut b, 10, Some("a"), &http, 0), ["1", "2"]);
        // and what another caller holds is skipped without reading it
        assert_eq!(lease(&mut b, 600, None, &http, 0).len(), 600);
        assert!(lease(&mut b, 10, None, &http, 0).is_empty());
        // forgotten messages (gone from the store) leave the index and their leases
        b.forget("c", &["1".to_string()]);
        assert_eq!(b.live_leases("c", 0), 601);
        assert_eq!(b.try_run("c", 0, |q, _| q.len()).ok(), Some(601));
    }

    #[test]
    fn an_acknowledgement_ends_leases_and_updates_the_index() {
        let mut b = Book::default();
        let n = start(&mut b, 0);
        assert!(matches!(
            b.try_run("c", 0, |_, _| ()),
            Err((_, Pending::Loading(_)))
        ));
        b.note("c", Change::Add("2".into(), e(20, "a")));
        let scanned = ConnQueue::from_entries([("1".to_string(), e(10, "a"))]);
        assert_eq!(b.finish_index("c", scanned, Some(n), 0, |q, _| q.len()), 2);
        let (s, t) = (socket(1), socket(2));
        assert_eq!(lease(&mut b, 1, None, &Holder::of(Some(&s), 0), 0), ["1"]);
        assert_eq!(lease(&mut b, 1, None, &Holder::of(Some(&t), 0), 0), ["2"]);
        let one = "1".to_string();
        let holders = b.acknowledged("c", &[&one], 0);
        assert_eq!(holders.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1]);
        let (len, bytes, live) = b
            .try_run("c", 0, |q, l| {
                let live: Vec<String> = live_ids(l, 0).into_iter().map(String::from).collect();
                (q.len(), q.bytes(), live)
            })
            .ok()
            .expect("the index was kept");
        assert_eq!((len, bytes, live), (1, 20, vec!["2".to_string()]));
        // live mode moves to socket 1: socket 2's lease ends
        let taken = b.take_over("c", 1);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].0.id, taken[0].1.as_str()), (2, "2"));
        assert_eq!(b.live_leases("c", 0), 0);
    }

    #[test]
    fn an_index_dropped_during_its_scan_answers_once_and_is_not_kept() {
        let mut b = Book::default();
        let first = start(&mut b, 0);
        let Err((_, Pending::Loading(waiter))) = b.try_run("c", 0, |_, _| ()) else {
            panic!("it is being built");
        };
        b.drop_index("c");
        // a caller waiting on the build is released when the build ends, kept or not
        assert!(waiter.has_changed().is_err());
        // a second build starts; the first one's late answer neither keeps its older scan nor
        // ends the second build
        let second = start(&mut b, 0);
        assert_eq!(
            b.finish_index("c", ConnQueue::default(), Some(first), 0, |q, _| q.len()),
            0
        );
        b.abandon_index("c", first);
        assert!(matches!(
            b.try_run("c", 0, |_, _| ()),
            Err((_, Pending::Loading(_)))
        ));
        // its own builder's abandon (a failed scan, or a builder dropped mid-scan) ends it
        b.abandon_index("c", second);
        start(&mut b, 0);
    }

    #[test]
    fn an_index_is_rebuilt_when_old_only_once_other_nodes_change_queues() {
        let mut b = ready(&[("1", "a")]);
        let old = SHARED_INDEX_MAX_AGE_MS + 1;
        // a single node trusts its index however old
        assert!(b.try_run("c", old, |_, _| ()).is_ok());
        // another node's change: this index goes, and the next one is trusted only so long
        b.drop_index("other");
        let n = start(&mut b, old);
        b.finish_index("c", ConnQueue::default(), Some(n), old, |_, _| ());
        assert!(b.try_run("c", old + 1, |_, _| ()).is_ok());
        // missed events drop every index, but do not make a single node "shared"
        let mut single = ready(&[("1", "a")]);
        single.drop_indexes();
        let n = start(&mut single, 0);
        single.finish_index("c", ConnQueue::default(), Some(n), 0, |_, _| ());
        assert!(single.try_run("c", old, |_, _| ()).is_ok());
    }

    #[test]
    fn a_message_missing_from_the_store_stays_indexed_only_while_another_nodes_record_may_lag() {
        let http = Holder::Http { until_ms: 100 };
        let len = |b: &mut Book| b.try_run("c", 5, |q, _| q.len()).ok();
        // a single node: what the store lacks is gone
        let mut b = ready(&[("1", "a")]);
        assert_eq!(lease(&mut b, 1, None, &http, 0), ["1"]);
        b.missing("c", &["1".to_string()], 5);
        assert_eq!((len(&mut b), b.live_leases("c", 5)), (Some(0), 0));
        // other nodes change queues: a young message may not have reached this copy yet
        let mut b = ready(&[("1", "a")]);
        b.note_remote("c", vec![], 0);
        assert_eq!(lease(&mut b, 1, None, &http, 0), ["1"]);
        b.missing("c", &["1".to_string()], 5);
        // kept, and skipped for a second (the messages behind it go first)
        assert_eq!((len(&mut b), b.live_leases("c", 5)), (Some(1), 1));
        assert_eq!(b.live_leases("c", 5 + MISSING_RETRY_MS), 0);
        b.missing("c", &["1".to_string()], SHARED_INDEX_MAX_AGE_MS);
        assert_eq!(len(&mut b), Some(0));
    }

    #[test]
    fn another_nodes_late_announcement_of_a_removed_message_does_not_bring_it_back() {
        let mut b = ready(&[("1", "a")]);
        // from another node, out of order: the removal first (its event handler notes it and
        // then ends its leases: `acknowledged`), then the addition
        b.note_remote("c", vec![Change::Remove("2".into())], 0);
        let two = "2".to_string();
        b.acknowledged("c", &[&two], 0);
        b.note_remote("c", vec![Change::Add("2".into(), e(5, "a"))], 10);
        let one = "1".to_string();
        b.acknowledged("c", &[&one], 20);
        b.note_remote("c", vec![Change::Add("1".into(), e(5, "a"))], 30);
        assert_eq!(b.try_run("c", 30, |q, _| q.len()).ok(), Some(0));
        // what is remembered goes once the window has passed
        assert!(b.was_removed("c", "1", 30));
        assert!(!b.was_removed("c", "1", 20 + SHARED_INDEX_MAX_AGE_MS));
        assert!(b.removed.is_empty());
        // however many removals one window holds, the node remembers a bounded number
        let ids: Vec<String> = (0..REMOVED_KEPT + 100).map(|i| format!("{i}")).collect();
        let refs: Vec<&String> = ids.iter().collect();
        b.acknowledged("c", &refs, 50_000);
        assert_eq!(b.removed.order.len(), REMOVED_KEPT);
        assert_eq!(b.removed.set.len(), REMOVED_KEPT);
        assert!(!b.was_removed("c", "0", 50_000) && b.was_removed("c", "100", 50_000));
    }
}
