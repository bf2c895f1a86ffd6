//! Authenticated gossip: chitchat's UDP transport with every datagram sealed under a key derived
//! from the cluster secret and cluster id.
//!
//! A datagram is `magic ‖ timestamp (ms, big-endian) ‖ 12 random bytes ‖ chitchat envelope ‖
//! HMAC-SHA256 tag` over everything before the tag. A receiver drops (and never hands to chitchat)
//! a datagram whose tag does not verify, whose timestamp is outside [`auth::WINDOW_MS`] of its own
//! clock, or whose random part it has already seen inside the window. So a process without the
//! cluster secret can neither join (its Syn is dropped, nothing it says reaches the membership)
//! nor forge or replay state into the cluster; chitchat's own `cluster_id` check is only a
//! misconfiguration guard on top.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;
use hmac::{Hmac, Mac};
use prometheus::IntCounter;
use rand::RngCore;
use sha2::Sha256;

use super::auth;
use crate::clock::SharedClock;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"IDG1";
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = MAGIC.len() + 8 + NONCE_LEN;
const TAG_LEN: usize = 32;
/// Largest UDP payload (IPv4).
const MAX_DATAGRAM: usize = 65_507;

/// Why a datagram was dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("not an idstack gossip datagram")]
    Malformed,
    #[error("bad tag (another cluster secret or id, or forged)")]
    BadTag,
    /// Authentic, but stamped `offset_ms` away from this node's clock (beyond the window).
    #[error("timestamp outside the accepted window ({offset_ms} ms from this node's clock)")]
    Stale { offset_ms: i64 },
    #[error("replayed datagram")]
    Replay,
}

/// Random parts seen inside the window, and the order they expire in.
type Seen = (
    HashMap<[u8; NONCE_LEN], i64>,
    VecDeque<(i64, std::time::Instant, [u8; NONCE_LEN])>,
);

/// Seals and opens datagrams; remembers the random parts seen inside the window.
pub struct Sealer {
    /// HMAC keyed with the gossip key, cloned for each datagram.
    mac: HmacSha256,
    seen: Mutex<Seen>,
    /// Timestamps at or below this are refused: a datagram whose random part left the cache
    /// carried one (as the RPC verifier's `forgotten_until`: a wall clock stepped back cannot
    /// bring it inside the window again).
    forgotten_until: std::sync::atomic::AtomicI64,
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> anyhow::Result<Self> {
        Ok(Self {
            mac: HmacSha256::new_from_slice(&key).context("gossip key")?,
            seen: Mutex::default(),
            forgotten_until: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    pub fn seal(&self, now_ms: i64, payload: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(payload);
        let mut mac = self.mac();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// The payload of an authentic, fresh, first-seen datagram.
    pub fn open<'a>(&self, now_ms: i64, datagram: &'a [u8]) -> Result<&'a [u8], Dropped> {
        if datagram.len() < HEADER_LEN + TAG_LEN || !datagram.starts_with(MAGIC) {
            return Err(Dropped::Malformed);
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| Dropped::BadTag)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&signed[MAGIC.len()..MAGIC.len() + 8]);
        let ts = i64::from_be_bytes(ts);
        let offset_ms = ts.saturating_sub(now_ms);
        if offset_ms.saturating_abs() > auth::WINDOW_MS {
            return Err(Dropped::Stale { offset_ms });
        }
        if ts
            <= self
                .forgotten_until
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Dropped::Replay);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&signed[MAGIC.len() + 8..HEADER_LEN]);
        let mut guard = self.seen.lock().map_err(|_| Dropped::Replay)?;
        let (set, order) = &mut *guard;
        while order
            .front()
            .is_some_and(|(t, since, _)| auth::expired(*t, *since, now_ms))
        {
            if let Some((t, _, n)) = order.pop_front() {
                self.forgotten_until.fetch_max(
                    t.saturating_add(auth::WINDOW_MS),
                    std::sync::atomic::Ordering::SeqCst,
                );
                set.remove(&n);
            }
        }
        if set.insert(nonce, now_ms).is_some() {
            return Err(Dropped::Replay);
        }
        order.push_back((now_ms, std::time::Instant::now(), nonce));
        Ok(&signed[HEADER_LEN..])
    }
}

/// Peers whose authentic gossip was refused as stale (their clock is off by more than the
/// window from this node's), by gossip address, with when that was last seen (unix ms).
#[derive(Debug, Default)]
pub struct SkewSeen(Mutex<HashMap<SocketAddr, i64>>);

/// How long a peer counts as skewed after its last stale datagram.
pub const SKEW_MEMORY_MS: i64 = 30_000;

impl SkewSeen {
    pub fn note(&self, from: SocketAddr, now_ms: i64) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, at| now_ms.saturating_sub(*at) < SKEW_MEMORY_MS);
            // bounded as the relays are; when full the oldest goes, so replays from many ports
            // cannot keep a real peer's stale datagrams out (review)
            if m.len() >= MAX_RELAYS && !m.contains_key(&from) {
                if let Some(oldest) = m.iter().min_by_key(|(_, at)| **at).map(|(a, _)| *a) {
                    m.remove(&oldest);
                }
            }
            m.insert(from, now_ms);
        }
    }

    /// How many of the gossip addresses `known` (members and seeds) were seen skewed within
    /// [`SKEW_MEMORY_MS`]. Only those count: a datagram captured once is authentic and stale for
    /// ever, and replayed from a few ports of the attacker's own it made every node take itself
    /// for the skewed one (review).
    /// (`known` in [`canonical`] form.)
    pub fn recent(&self, now_ms: i64, known: &std::collections::HashSet<SocketAddr>) -> usize {
        self.0
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(from, at)| {
                        now_ms.saturating_sub(**at) < SKEW_MEMORY_MS
                            && known.contains(&canonical(**from))
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

/// `a` with an IPv4-mapped IPv6 address as IPv4 (a dual-stack socket receives IPv4 peers so) and
/// no scope id: one spelling per peer address.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Why this node takes no traffic for its clock, given how many peers' gossip it refuses as
/// stale (`skewed`) and how many it hears (`live_peers`): when its clock disagrees with more
/// peers than agree with it (itself counted), the clock that is off is its own (cluster review:
/// a node whose clock stepped past the window was cut off from every peer and went on alone, its
/// readiness green). With as many on each side (two nodes) neither can tell: each logs it.
pub fn skew_verdict(skewed: usize, live_peers: usize) -> Option<String> {
    (skewed > live_peers + 1).then(|| {
        format!(
            "this node's clock differs by more than {} s from {skewed} cluster peers' (their gossip is authentic but refused as stale), more than agree with it: fix this node's clock (NTP)",
            auth::WINDOW_MS / 1000
        )
    })
}

/// chitchat [`Transport`] over UDP with every datagram sealed by a [`Sealer`].
///
/// chitchat 0.13 keeps its wire encoding private, so the transport does not re-encode messages:
/// chitchat's own UDP socket ([`UdpSocket`]) is bound on loopback and talks to one loopback
/// *relay* socket per peer. A relay seals what chitchat sends it and sends that from the public
/// gossip socket to its peer; an authentic datagram from a peer is opened and handed to chitchat
/// from that peer's relay, so chitchat sees the relay as the sender and its answers go back through
/// it. Only datagrams from chitchat's own socket are relayed out, only datagrams from a relay are
/// passed to chitchat (a loopback sender cannot use those ports: they are bound here), and relays
/// exist only for peers that sent an authentic datagram or that chitchat addressed (at most
/// [`MAX_RELAYS`], least recently used closed first).
pub struct AuthUdpTransport {
    pub sealer: Arc<Sealer>,
    pub clock: SharedClock,
    /// Datagrams dropped (`idstack_cluster_gossip_dropped_total`).
    pub dropped: IntCounter,
    /// Peers seen with a skewed clock.
    pub skewed: Arc<SkewSeen>,
}

/// Most relays one node keeps (cluster mode targets a handful of nodes). When full, the relay
/// used least recently is closed: someone replaying captured datagrams from many spoofed source
/// addresses (each copy is opened once, then dropped as a replay) cannot lock real peers out.
const MAX_RELAYS: usize = 256;

struct Relay {
    sock: Arc<tokio::net::UdpSocket>,
    task: tokio::task::JoinHandle<()>,
    last_used: std::time::Instant,
}

struct Shared {
    public: tokio::net::UdpSocket,
    sealer: Arc<Sealer>,
    clock: SharedClock,
    dropped: IntCounter,
    skewed: Arc<SkewSeen>,
    /// chitchat's own (loopback) socket address.
    inner_addr: SocketAddr,
    /// peer → its relay socket; relay address → peer.
    relays: Mutex<HashMap<SocketAddr, Relay>>,
    peers: Mutex<HashMap<SocketAddr, SocketAddr>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    /// The relay for `peer`, created (with its outbound task) on first use.
    async fn relay(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> anyhow::Result<Arc<tokio::net::UdpSocket>> {
        if let Some(r) = self.relays.lock().ok().and_then(|mut m| {
            m.get_mut(&peer).map(|r| {
                r.last_used = std::time::Instant::now();
                r.sock.clone()
            })
        }) {
            return Ok(r);
        }
        let sock = Arc::new(tokio::net::UdpSocket::bind((self.inner_addr.ip(), 0)).await?);
        let local = sock.local_addr()?;
        let shared = self.clone();
        let out = sock.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let Ok((n, from)) = out.recv_from(&mut buf).await else {
                    continue;
                };
                if from != shared.inner_addr {
                    shared.dropped.inc();
                    continue;
                }
                let sealed = shared.sealer.seal(shared.clock.now_ms(), &buf[..n]);
                if sealed.len() > MAX_DATAGRAM {
                    tracing::warn!(
                        bytes = sealed.len(),
                        "gossip message does not fit a datagram"
                    );
                    continue;
                }
                if let Err(e) = shared.public.send_to(&sealed, peer).await {
                    tracing::debug!(%peer, error = %e, "gossip send failed");
                }
            }
        });
        let mut relays = self
            .relays
            .lock()
            .map_err(|_| anyhow::anyhow!("relay table poisoned"))?;
        if let Some(r) = relays.get(&peer) {
            // created meanwhile by the other direction
            task.abort();
            return Ok(r.sock.clone());
        }
        if relays.len() >= MAX_RELAYS {
            let oldest = relays
                .iter()
                .min_by_key(|(_, r)| r.last_used)
                .map(|(a, _)| *a);
            if let Some(r) = oldest.and_then(|a| relays.remove(&a)) {
                r.task.abort();
                if let (Ok(mut p), Ok(addr)) = (self.peers.lock(), r.sock.local_addr()) {
                    p.remove(&addr);
                }
            }
        }
        relays.insert(
            peer,
            Relay {
                sock: sock.clone(),
                task,
                last_used: std::time::Instant::now(),
            },
        );
        if let Ok(mut p) = self.peers.lock() {
            p.insert(local, peer);
        }
        Ok(sock)
    }

    /// Opens datagrams arriving on the public socket and hands authentic ones to chitchat.
    async fn inbound(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = match self.public.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip recv error");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let payload = match self.sealer.open(self.clock.now_ms(), &buf[..n]) {
                Ok(p) => p.to_vec(),
                Err(Dropped::Stale { offset_ms }) => {
                    self.dropped.inc();
                    self.skewed.note(from, self.clock.now_ms());
                    // authentic (its MAC verified): a peer whose clock is off by more than the
                    // window, whose gossip and calls are all refused — said once a minute, not
                    // at debug level only (cluster review: a node silently cut off)
                    static SAID_AT: std::sync::atomic::AtomicI64 =
                        std::sync::atomic::AtomicI64::new(i64::MIN);
                    let now = self.clock.now_ms();
                    let said = SAID_AT.load(std::sync::atomic::Ordering::Relaxed);
                    if now.saturating_sub(said) >= 60_000 {
                        SAID_AT.store(now, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(%from, offset_ms, window_ms = auth::WINDOW_MS, "a cluster peer's clock differs from this node's by more than the window: its gossip and calls are refused, so each side sees the other as dead. Synchronize the clocks (NTP)");
                    }
                    continue;
                }
                Err(e) => {
                    self.dropped.inc();
                    tracing::debug!(%from, reason = %e, "gossip datagram dropped");
                    continue;
                }
            };
            match self.relay(from).await {
                Ok(relay) => {
                    let _ = relay.send_to(&payload, self.inner_addr).await;
                }
                Err(e) => tracing::warn!(%from, error = %e, "no gossip relay for peer"),
            }
        }
    }
}

/// The loopback address of the peer's address family.
fn loopback(peer: SocketAddr) -> std::net::IpAddr {
    if peer.is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    }
}

#[async_trait]
impl Transport for AuthUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let inner = UdpSocket::open(SocketAddr::new(loopback(listen_addr), 0)).await?;
        let shared = Arc::new(Shared {
            public,
            sealer: self.sealer.clone(),
            clock: self.clock.clone(),
            dropped: self.dropped.clone(),
            skewed: self.skewed.clone(),
            inner_addr: inner.local_addr()?,
            relays: Mutex::default(),
            peers: Mutex::default(),
            tasks: Mutex::default(),
        });
        let inbound = tokio::spawn(shared.clone().inbound());
        if let Ok(mut t) = shared.tasks.lock() {
            t.push(inbound);
        }
        Ok(Box::new(AuthUdpSocket {
            inner,
            listen: listen_addr,
            shared,
        }))
    }
}

struct AuthUdpSocket {
    inner: UdpSocket,
    listen: SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for AuthUdpSocket {
    fn drop(&mut self) {
        if let Ok(mut t) = self.shared.tasks.lock() {
            for task in t.drain(..) {
                task.abort();
            }
        }
        if let Ok(mut r) = self.shared.relays.lock() {
            for (_, relay) in r.drain() {
                relay.task.abort();
            }
        }
    }
}

#[async_trait]
impl Socket for AuthUdpSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.shared.public.local_addr().unwrap_or(self.listen))
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let relay = self.shared.relay(to).await?;
        self.inner.send(relay.local_addr()?, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let mut got = self.inner.recv().await?;
            let peer = self
                .shared
                .peers
                .lock()
                .ok()
                .and_then(|p| p.get(&got.from_addr).copied());
            match peer {
                Some(peer) => {
                    got.from_addr = peer;
                    return Ok(got);
                }
                // not from a relay: another local process writing to chitchat's loopback port
                None => self.shared.dropped.inc(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_whose_clock_disagrees_with_most_peers_says_so() {
        let seen = SkewSeen::default();
        let now = 1_700_000_000_000;
        for port in [1, 2, 3, 4, 5] {
            seen.note(SocketAddr::from(([127, 0, 0, 1], port)), now);
        }
        // only members' and seeds' addresses count: a replayed datagram comes from anywhere
        let known: std::collections::HashSet<SocketAddr> = [
            SocketAddr::from(([127, 0, 0, 1], 1)),
            // as a dual-stack socket would report it
            canonical("[::ffff:127.0.0.1]:2".parse().unwrap()),
        ]
        .into();
        assert_eq!(seen.recent(now + 1, &known), 2);
        assert_eq!(seen.recent(now + 1, &Default::default()), 0);
        assert_eq!(seen.recent(now + SKEW_MEMORY_MS, &known), 0);
        // three nodes, this one's clock off: both peers refused, none heard
        assert!(skew_verdict(seen.recent(now, &known), 0).is_some());
        // three nodes, a peer's clock off: one refused, one heard
        assert!(skew_verdict(1, 1).is_none());
        // two nodes: neither can tell
        assert!(skew_verdict(1, 0).is_none());
        // five nodes, this one off
        assert!(skew_verdict(4, 0).is_some());
        assert!(skew_verdict(1, 3).is_none());
    }

    #[test]
    fn only_fresh_datagrams_under_the_cluster_key_open_once() {
        let key = auth::derive_key(b"a cluster secret of some length", "idstack", "gossip");
        let s = Sealer::new(key).unwrap();
        let now = 1_700_000_000_000;
        let d = s.seal(now, b"chitchat bytes");
        assert_eq!(s.open(now + 10, &d), Ok(&b"chitchat bytes"[..]));
        // replayed inside the window
        assert_eq!(s.open(now + 20, &d), Err(Dropped::Replay));
        // sealed under another secret or another cluster id
        for other in [
            auth::derive_key(b"another secret of some length!!", "idstack", "gossip"),
            auth::derive_key(b"a cluster secret of some length", "other", "gossip"),
        ] {
            let rogue = Sealer::new(other).unwrap().seal(now, b"chitchat bytes");
            assert_eq!(s.open(now, &rogue), Err(Dropped::BadTag));
        }
        // any flipped bit
        let mut t = s.seal(now, b"chitchat bytes");
        let i = HEADER_LEN + 3;
        t[i] ^= 1;
        assert_eq!(s.open(now, &t), Err(Dropped::BadTag));
        // a plain chitchat datagram and garbage
        assert_eq!(s.open(now, b"\x00\x01plain"), Err(Dropped::Malformed));
        // too old, too new
        let old = s.seal(now - auth::WINDOW_MS - 1, b"x");
        assert!(
            matches!(s.open(now, &old), Err(Dropped::Stale { offset_ms }) if offset_ms < -auth::WINDOW_MS)
        );
        let future = s.seal(now + auth::WINDOW_MS + 1, b"x");
        assert!(
            matches!(s.open(now, &future), Err(Dropped::Stale { offset_ms }) if offset_ms > auth::WINDOW_MS)
        );
    }

    /// A datagram whose random part left the cache stays refused when the wall clock steps back.
    #[test]
    fn a_forgotten_datagram_stays_refused_after_the_clock_steps_back() {
        let key = auth::derive_key(b"a cluster secret of some length", "idstack", "gossip");
        let s = Sealer::new(key).unwrap();
        let now = 1_700_000_000_000;
        let d = s.seal(now, b"chitchat bytes");
        assert!(s.open(now, &d).is_ok());
        // its entry is old by both clocks and goes with the next datagram
        if let Ok(mut g) = s.seen.lock() {
            for e in g.1.iter_mut() {
                e.1 -= std::time::Duration::from_millis(3 * auth::WINDOW_MS as u64);
            }
        }
        let later = now + 3 * auth::WINDOW_MS;
        assert!(s.open(later, &s.seal(later, b"next")).is_ok());
        assert_eq!(s.seen.lock().unwrap().0.len(), 1);
        // the clock steps back to when `d` was sent
        assert_eq!(s.open(now + 1, &d), Err(Dropped::Replay));
    }
}
