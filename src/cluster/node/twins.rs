//! Other processes gossiping under this node's id: a copied data dir, a cloned VM or volume, two
//! containers given one `cluster.node_id`. Two writers under one id break what the id stands for:
//! their record versions may tie (same stamp, same node: two values every node takes for equal,
//! so anti-entropy never repairs them), and the majority counts them as one node.
//!
//! Gossip cannot tell such a twin from an earlier incarnation of this node (a restart, perhaps at
//! another address): both are this id with another generation. What tells them apart is the
//! heartbeat: only a running process advances its own, while an earlier incarnation's stays where
//! it stopped (peers only pass on what they saw). So an incarnation counts as running when its
//! heartbeat went on advancing for [`EVIDENCE_ROUNDS`] gossip intervals after this node first saw
//! it, and advanced again within the last such span — a stopped one's relayed heartbeat settles
//! within a few rounds.

use std::collections::HashMap;

/// Gossip intervals of advancing heartbeats that make an incarnation count as running (10 s at
/// the default interval of 250 ms).
pub const EVIDENCE_ROUNDS: u64 = 40;

/// Advances needed besides the span (one late value relayed by a slow peer is not a process).
const MIN_ADVANCES: u32 = 3;

/// One incarnation under this node's id: its gossip address and generation.
pub type Incarnation = (String, u64);

#[derive(Debug, Clone)]
struct Seen {
    heartbeat: u64,
    first_ms: u64,
    advanced_ms: u64,
    advances: u32,
}

/// What gossip showed of the other incarnations under this node's id.
#[derive(Debug, Default)]
pub struct Twins {
    seen: HashMap<Incarnation, Seen>,
}

impl Twins {
    /// One gossip round's view at `now_ms` (monotonic): every other incarnation under this node's
    /// id with its heartbeat. One gossip no longer lists is forgotten.
    pub fn observe(&mut self, round: impl IntoIterator<Item = (Incarnation, u64)>, now_ms: u64) {
        let mut next = HashMap::new();
        for (who, heartbeat) in round {
            let seen = match self.seen.remove(&who) {
                None => Seen {
                    heartbeat,
                    first_ms: now_ms,
                    advanced_ms: now_ms,
                    advances: 0,
                },
                Some(mut s) => {
                    if heartbeat > s.heartbeat {
                        s.heartbeat = heartbeat;
                        s.advanced_ms = now_ms;
                        s.advances = s.advances.saturating_add(1);
                    }
                    s
                }
            };
            next.insert(who, seen);
        }
        self.seen = next;
    }

    /// The incarnations running now, by the rule above, for gossip every `interval_ms`.
    pub fn running(&self, now_ms: u64, interval_ms: u64) -> Vec<Incarnation> {
        let span = EVIDENCE_ROUNDS.saturating_mul(interval_ms.max(1));
        let mut out: Vec<_> = self
            .seen
            .iter()
            .filter(|(_, s)| {
                s.advances >= MIN_ADVANCES
                    && s.advanced_ms.saturating_sub(s.first_ms) >= span
                    && now_ms.saturating_sub(s.advanced_ms) <= span
            })
            .map(|(who, _)| who.clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(addr: &str, generation: u64) -> Incarnation {
        (addr.to_string(), generation)
    }

    const TICK: u64 = 250;

    /// An earlier incarnation (a restart): its heartbeat arrives a little higher from a few peers
    /// for a few rounds, then stays. Never running.
    #[test]
    fn an_earlier_incarnation_is_not_a_twin() {
        let mut t = Twins::default();
        let old = who("10.0.0.1:7946", 1);
        for round in 0..200u64 {
            let hb = 500 + round.min(5);
            t.observe([(old.clone(), hb)], round * TICK);
            assert!(t.running(round * TICK, TICK).is_empty(), "round {round}");
        }
    }

    /// A second process under this id: its heartbeat advances every round. Running once it has
    /// done so for the evidence span, and no longer once it stops (or gossip forgets it).
    #[test]
    fn a_running_process_under_this_id_is_a_twin() {
        let mut t = Twins::default();
        let twin = who("10.0.0.9:7946", 2);
        let mut flagged_at = None;
        for round in 0..100u64 {
            t.observe([(twin.clone(), 10 + round)], round * TICK);
            if flagged_at.is_none() && !t.running(round * TICK, TICK).is_empty() {
                flagged_at = Some(round);
            }
        }
        assert_eq!(flagged_at, Some(EVIDENCE_ROUNDS));
        assert_eq!(t.running(99 * TICK, TICK), vec![twin.clone()]);
        // it stops: its heartbeat stays
        for round in 100..100 + EVIDENCE_ROUNDS + 2 {
            t.observe([(twin.clone(), 109)], round * TICK);
        }
        assert!(t.running((101 + EVIDENCE_ROUNDS) * TICK, TICK).is_empty());
        // seen again advancing: the evidence starts over
        t.observe([], 200 * TICK);
        t.observe([(twin.clone(), 200)], 201 * TICK);
        t.observe([(twin.clone(), 201)], 202 * TICK);
        assert!(t.running(202 * TICK, TICK).is_empty());
    }

    /// A relayed value that jumps once, late, is not enough: a running process advances often.
    #[test]
    fn one_late_jump_is_not_a_twin() {
        let mut t = Twins::default();
        let old = who("10.0.0.1:7946", 1);
        t.observe([(old.clone(), 500)], 0);
        t.observe([(old.clone(), 501)], TICK);
        t.observe([(old.clone(), 530)], (EVIDENCE_ROUNDS + 5) * TICK);
        assert!(t.running((EVIDENCE_ROUNDS + 5) * TICK, TICK).is_empty());
    }
}
