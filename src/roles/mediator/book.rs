//! The node's bookkeeping per connection, kept in memory under one lock: the index of its queue
//! ([`ConnQueue`], built from the store on first use) and the leases on messages handed out and
//! not yet acknowledged. Each message is handed out once per socket or HTTP lease, whichever
//! transport asks; the store stays the source of truth (`queue.rs` reads and writes it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use super::index::{Change, ConnQueue};
use super::model::QueuedMessage;
use super::socket::Socket;

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
    /// Being built from a store scan; changes made meanwhile are applied when it is done.
    Loading(Vec<Change>),
    Ready(ConnQueue),
}

/// What [`Book::lookup`] found for a connection's index.
pub(super) enum Lookup<'a> {
    /// The index, with the connection's leases.
    Ready(&'a mut ConnQueue, Option<&'a Leases>),
    /// Another caller is building it: scan for yourself, keep nothing.
    Loading,
    /// Nobody was: this caller builds it ([`Book::finish_index`] keeps it).
    Started,
}

/// The node's bookkeeping of queues and leases, per connection.
#[derive(Default)]
pub(super) struct Book {
    queues: HashMap<String, Slot>,
    /// Connection → message id → holder. Kept apart from `queues` (which other nodes' changes
    /// invalidate) so a lease outlives an index rebuild.
    leases: HashMap<String, Leases>,
}

/// The ids among `leases` whose holder is still alive at `now`.
pub(super) fn live_ids(leases: Option<&Leases>, now: i64) -> HashSet<&str> {
    leases
        .into_iter()
        .flatten()
        .filter(|(_, h)| h.alive(now))
        .map(|(id, _)| id.as_str())
        .collect()
}

impl Book {
    /// Records a change this node made to a queue in its index (if it has one, or is building one).
    pub(super) fn note(&mut self, conn_id: &str, c: Change) {
        match self.queues.get_mut(conn_id) {
            Some(Slot::Ready(q)) => q.apply(c),
            Some(Slot::Loading(pending)) => pending.push(c),
            None => {}
        }
    }

    /// The index of `conn_id`'s queue, or who builds it (a caller finding none starts it).
    pub(super) fn lookup(&mut self, conn_id: &str) -> Lookup<'_> {
        let Book { queues, leases } = self;
        if !queues.contains_key(conn_id) {
            queues.insert(conn_id.to_string(), Slot::Loading(Vec::new()));
            return Lookup::Started;
        }
        match queues.get_mut(conn_id) {
            Some(Slot::Ready(q)) => Lookup::Ready(q, leases.get(conn_id)),
            _ => Lookup::Loading,
        }
    }

    /// The scan that was to build `conn_id`'s index failed: nobody is building it any more.
    pub(super) fn abandon_index(&mut self, conn_id: &str) {
        if matches!(self.queues.get(conn_id), Some(Slot::Loading(_))) {
            self.queues.remove(conn_id);
        }
    }

    /// Runs `run` on the index `q` a scan built, with the connection's leases. The builder
    /// (`started`) applies the changes made while the scan ran on top and keeps it; if the
    /// index was dropped meanwhile (another node changed the queue), it answers once and is not
    /// kept.
    pub(super) fn finish_index<R>(
        &mut self,
        conn_id: &str,
        mut q: ConnQueue,
        started: bool,
        run: impl FnOnce(&mut ConnQueue, Option<&Leases>) -> R,
    ) -> R {
        let Book { queues, leases } = self;
        if started {
            if let Some(Slot::Loading(pending)) = queues.remove(conn_id) {
                for c in pending {
                    q.apply(c);
                }
                let out = run(&mut q, leases.get(conn_id));
                queues.insert(conn_id.to_string(), Slot::Ready(q));
                return out;
            }
        }
        run(&mut q, leases.get(conn_id))
    }

    /// Another node changed `conn_id`'s queue: its index is stale.
    pub(super) fn drop_index(&mut self, conn_id: &str) {
        self.queues.remove(conn_id);
    }

    /// Every index may be stale.
    pub(super) fn drop_indexes(&mut self) {
        self.queues.clear();
    }

    /// Ends the leases on `conn_id` that ran out or whose socket closed; how many are left.
    pub(super) fn live_leases(&mut self, conn_id: &str, now: i64) -> usize {
        match self.leases.get_mut(conn_id) {
            Some(l) => {
                l.retain(|_, h| h.alive(now));
                l.len()
            }
            None => 0,
        }
    }

    /// Leases to `holder` up to `limit` of the messages in `rows` (a queue scan, oldest first)
    /// that no live lease holds and that are for `recipient` (when given).
    pub(super) fn lease(
        &mut self,
        conn_id: &str,
        rows: Vec<(String, Vec<u8>)>,
        limit: usize,
        recipient: Option<&str>,
        holder: Holder,
        now: i64,
    ) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        let leases = self.leases.entry(conn_id.to_string()).or_default();
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
            leases.insert(m.id.clone(), holder.clone());
            out.push(m);
        }
        if leases.is_empty() {
            self.leases.remove(conn_id);
        }
        out
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
    ) -> Vec<(u64, Weak<Socket>)> {
        let Book { queues, leases } = self;
        match queues.get_mut(conn_id) {
            Some(Slot::Ready(q)) => {
                for id in ids {
                    q.remove(id);
                }
            }
            Some(Slot::Loading(pending)) => {
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

    fn row(id: &str, recipient: &str) -> (String, Vec<u8>) {
        let m = QueuedMessage {
            id: id.into(),
            recipient_key: recipient.into(),
            received_at_ms: 0,
            msg: serde_json::json!({}),
        };
        (format!("c/{id}"), serde_json::to_vec(&m).unwrap())
    }

    fn socket(id: u64) -> Arc<Socket> {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        Arc::new(Socket::new(id, tx))
    }

    fn ids(ms: &[QueuedMessage]) -> Vec<&str> {
        ms.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn a_message_is_leased_once_until_its_lease_ends() {
        let mut b = Book::default();
        let rows = || vec![row("1", "a"), row("2", "b"), row("3", "a")];
        let http = Holder::Http { until_ms: 100 };
        assert_eq!(
            ids(&b.lease("c", rows(), 10, Some("a"), http.clone(), 0)),
            ["1", "3"]
        );
        assert_eq!(ids(&b.lease("c", rows(), 10, None, http, 0)), ["2"]);
        assert_eq!(b.live_leases("c", 50), 3);
        assert_eq!(b.first_http_lease_end("c", 50), Some(100));
        // the HTTP leases run out: offered again, this time to a socket
        assert_eq!(b.live_leases("c", 100), 0);
        let s = socket(7);
        let held = b.lease("c", rows(), 2, None, Holder::of(Some(&s), 0), 100);
        assert_eq!(ids(&held), ["1", "2"]);
        // the socket gives one back; a closed socket holds nothing
        b.release("c", 7, &["2".to_string()]);
        assert_eq!(b.live_leases("c", 100), 1);
        s.mark_closed();
        assert_eq!(b.live_leases("c", 100), 0);
    }

    #[test]
    fn an_acknowledgement_ends_leases_and_updates_the_index() {
        let mut b = Book::default();
        assert!(matches!(b.lookup("c"), Lookup::Started));
        assert!(matches!(b.lookup("c"), Lookup::Loading));
        let e = |n| Entry {
            bytes: n,
            recipient: "a".into(),
            at_ms: 0,
        };
        b.note("c", Change::Add("2".into(), e(20)));
        let scanned = ConnQueue::from_entries([("1".to_string(), e(10))]);
        assert_eq!(b.finish_index("c", scanned, true, |q, _| q.len()), 2);
        let (s, t) = (socket(1), socket(2));
        b.lease(
            "c",
            vec![row("1", "a")],
            1,
            None,
            Holder::of(Some(&s), 0),
            0,
        );
        b.lease(
            "c",
            vec![row("2", "a")],
            1,
            None,
            Holder::of(Some(&t), 0),
            0,
        );
        let one = "1".to_string();
        let holders = b.acknowledged("c", &[&one]);
        assert_eq!(holders.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1]);
        match b.lookup("c") {
            Lookup::Ready(q, leases) => {
                assert_eq!((q.len(), q.bytes()), (1, 20));
                assert_eq!(live_ids(leases, 0), HashSet::from(["2"]));
            }
            _ => panic!("the index was kept"),
        }
        // live mode moves to socket 1: socket 2's lease ends
        let taken = b.take_over("c", 1);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].0.id, taken[0].1.as_str()), (2, "2"));
        assert_eq!(b.live_leases("c", 0), 0);
    }

    #[test]
    fn an_index_dropped_during_its_scan_answers_once_and_is_not_kept() {
        let mut b = Book::default();
        assert!(matches!(b.lookup("c"), Lookup::Started));
        b.drop_index("c");
        assert_eq!(
            b.finish_index("c", ConnQueue::default(), true, |q, _| q.len()),
            0
        );
        assert!(matches!(b.lookup("c"), Lookup::Started));
        b.abandon_index("c");
        assert!(matches!(b.lookup("c"), Lookup::Started));
    }
}
