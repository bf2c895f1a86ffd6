//! Per-client-IP rate limits on the unauthenticated endpoints that cost the server something
//! (`server.rate_limit`): wallet sign-up and login (argon2id), the issuer's token and nonce
//! endpoints, the mediator's inbound endpoint and WebSocket upgrade, and the frames on its
//! WebSockets and how many one address holds open ([`SocketBudget`]).
//!
//! Buckets are `governor` GCRA limiters keyed by client address, one per endpoint group, shared
//! by every worker of a node (counted per node, not per cluster). The client address is the TCP
//! peer; `X-Forwarded-For` is believed only when the peer is a configured trusted proxy, and then
//! the client is the right-most address in it that is not itself a trusted proxy. IPv6 clients
//! are counted per /64 (one host usually holds a whole /64). Over a limit: 429 problem+json
//! `rate_limited` with `Retry-After`.
//!
//! Routes opt in with `wrap = "from_fn(crate::http::ratelimit::login)"` (and friends) on their
//! route macro, so the limit is visible where the route is declared.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::web;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::RateLimitConfig;
use crate::error::{ApiError, Code};

/// The endpoint groups with a bucket of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Signup,
    Login,
    Token,
    Nonce,
    /// `POST /didcomm` and `GET /didcomm/ws` together.
    Didcomm,
    /// Frames on `GET /didcomm/ws` sockets (see [`SocketBudget`]).
    DidcommFrame,
    /// Wrong admin or metrics tokens ([`charge_failed_token`]): the `login` numbers, in a bucket
    /// of their own so a stale scraper token does not use up wallet logins behind one address.
    FailedToken,
    /// The VC-API verification endpoints.
    Verify,
}

impl Endpoint {
    const ALL: [Endpoint; 8] = [
        Endpoint::Signup,
        Endpoint::Login,
        Endpoint::Token,
        Endpoint::Nonce,
        Endpoint::Didcomm,
        Endpoint::DidcommFrame,
        Endpoint::FailedToken,
        Endpoint::Verify,
    ];

    /// The endpoint's `(key, per_minute, burst)` from `server.rate_limit` (which validates them).
    fn rate(self, c: &RateLimitConfig) -> (&'static str, u32, u32) {
        c.rates()[self as usize]
    }

    fn key(self) -> &'static str {
        self.rate(&RateLimitConfig::default()).0
    }
}

type Bucket<C> =
    RateLimiter<IpAddr, HashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Most clients whose tokens are locked at once (expired ones are dropped first; past it, no new
/// lock: the failed-token bucket still answers each wrong token).
const MAX_TOKEN_LOCKS: usize = 100_000;

/// Stale entries (clients whose bucket has refilled) are dropped every this many checks of a
/// bucket, so the maps stay as small as the set of recently active clients.
const CLEANUP_EVERY: u64 = 4096;

/// The rate limiters of one node.
pub struct RateLimits<C: Clock = DefaultClock> {
    enabled: bool,
    trusted: Vec<IpNet>,
    /// Each endpoint group's bucket, its check count and its burst.
    buckets: Vec<(Bucket<C>, AtomicU64, u32)>,
    /// The same per IPv6 /48, at `wide_factor` times the rate and burst (none when it is 0):
    /// per-/64 budgets alone gave the holder of a /56 256 of them (connections review: one /56
    /// took every mediator socket of a node).
    wide_buckets: Vec<(Bucket<C>, AtomicU64, u32)>,
    /// `server.rate_limit.ipv6_wide_factor`.
    wide_factor: u32,
    clock: C,
    /// Open mediator WebSockets per client (`didcomm_sockets_per_address`).
    sockets: Held,
    /// Open TCP connections per peer address (`connections_per_address`; not the trusted
    /// proxies'): [`crate::http::connection`].
    connections: Held,
    /// Clients (bucket keys) whose failed-token budget ran out, and until when every token they
    /// send is refused, the right one too ([`tokens_locked`]).
    token_locks: Mutex<HashMap<IpAddr, std::time::Instant>>,
}

/// Things a client address holds open at once (WebSockets, connections): per bucket key (IPv4
/// address or IPv6 /64) at most `max`, per IPv6 /48 at most `wide_factor` times that.
struct Held {
    open: Mutex<HashMap<IpAddr, u32>>,
    /// Per IPv6 /48.
    wide_open: Mutex<HashMap<IpAddr, u32>>,
    max: u32,
}

impl Held {
    fn new(max: u32) -> Self {
        Self {
            open: Mutex::default(),
            wide_open: Mutex::default(),
            max: max.max(1),
        }
    }
}

/// Which [`Held`] of [`RateLimits`] a [`HeldSlot`] counts in.
#[derive(Clone, Copy)]
enum Kind {
    Socket,
    Connection,
}

impl RateLimits<DefaultClock> {
    pub fn new(c: &RateLimitConfig) -> Result<Self, String> {
        Self::with_clock(c, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(c: &RateLimitConfig, clock: C) -> Result<Self, String> {
        let buckets_at = |factor: u32| {
            Endpoint::ALL
                .iter()
                .map(|ep| {
                    let (key, per_minute, burst) = ep.rate(c);
                    let (per_minute, burst) = (
                        per_minute.saturating_mul(factor),
                        burst.saturating_mul(factor),
                    );
                    let quota = quota(per_minute, burst)
                        .ok_or_else(|| format!("rate_limit.{key}: rate must be positive"))?;
                    Ok((
                        RateLimiter::new(quota, HashMapStateStore::default(), clock.clone()),
                        AtomicU64::new(0),
                        burst,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Self {
            enabled: c.enabled,
            trusted: c.trusted_proxy_nets()?,
            buckets: buckets_at(1)?,
            wide_buckets: match c.ipv6_wide_factor {
                0 => Vec::new(),
                f => buckets_at(f)?,
            },
            wide_factor: c.ipv6_wide_factor,
            clock,
            sockets: Held::new(c.didcomm_sockets_per_address),
            connections: Held::new(c.connections_cap()),
            token_locks: Mutex::default(),
        })
    }

    /// The wider bucket of an IPv6 client: its /48 (none for IPv4, or with no /48 tier).
    fn wide_key(&self, ip: IpAddr) -> Option<IpAddr> {
        match canonical(ip) {
            IpAddr::V6(v6) if self.wide_factor > 0 => {
                let s = v6.segments();
                Some(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0)))
            }
            _ => None,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client behind a request from `peer` carrying these `X-Forwarded-For` values (in
    /// header order). Only a trusted peer's header is read; from the right, trusted proxies are
    /// skipped and the first other address is the client. A malformed entry stops the walk at
    /// the last good address, so garbage cannot pick an arbitrary key.
    pub fn client_ip<'a>(&self, peer: IpAddr, forwarded: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            if self.trusted.is_empty() {
                warn_unused_forwarded_for(peer, forwarded);
            }
            return peer;
        }
        let entries: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            match parse_forwarded(entry.trim()) {
                Some(ip) => {
                    client = canonical(ip);
                    if !self.is_trusted(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }

    /// Takes one request of `ep` for `client`; `Err(wait)` when over the limit.
    pub fn check(&self, ep: Endpoint, client: IpAddr) -> Result<(), Duration> {
        self.check_n(ep, client, 1)
    }

    /// Takes `n` units of `ep` for `client` at once (at most the burst: a larger `n` is taken
    /// as a whole burst); `Err(wait)` when they do not fit yet, and then nothing is taken from
    /// the client's /64 — unless it is its /48 they do not fit (then the /64's are spent).
    pub fn check_n(&self, ep: Endpoint, client: IpAddr, n: u32) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let take = |buckets: &[(Bucket<C>, AtomicU64, u32)], key: &IpAddr| {
            let Some((bucket, checks, burst)) = buckets.get(ep as usize) else {
                return Ok(());
            };
            if checks.fetch_add(1, Ordering::Relaxed) % CLEANUP_EVERY == CLEANUP_EVERY - 1 {
                bucket.retain_recent();
                bucket.shrink_to_fit();
            }
            let n = NonZeroU32::new(n.clamp(1, *burst)).unwrap_or(NonZeroU32::MIN);
            match bucket.check_key_n(key, n) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
                // not reachable (n is at most the burst); refuse for a second rather than let
                // it through
                Err(_) => Err(Duration::from_secs(1)),
            }
        };
        take(&self.buckets, &bucket_key(client))?;
        match self.wide_key(client) {
            Some(wide) => take(&self.wide_buckets, &wide),
            None => Ok(()),
        }
    }

    /// Refuses every token `client` sends for `wait` (its failed-token budget ran out).
    pub fn lock_tokens(&self, client: IpAddr, wait: Duration) {
        if let Ok(mut m) = self.token_locks.lock() {
            let now = std::time::Instant::now();
            if m.len() >= MAX_TOKEN_LOCKS {
                m.retain(|_, until| *until > now);
            }
            if m.len() < MAX_TOKEN_LOCKS {
                m.insert(bucket_key(client), now + wait);
            }
        }
    }

    /// How long every token from `client` is still refused, if it is.
    pub fn token_lock_left(&self, client: IpAddr) -> Option<Duration> {
        let mut m = self.token_locks.lock().ok()?;
        let key = bucket_key(client);
        let left = m
            .get(&key)?
            .checked_duration_since(std::time::Instant::now());
        if left.is_none() {
            m.remove(&key);
        }
        left
    }

    /// Clients currently tracked for `ep` (tests, metrics).
    pub fn tracked(&self, ep: Endpoint) -> usize {
        self.buckets.get(ep as usize).map_or(0, |(b, _, _)| b.len())
    }
}

impl RateLimits<DefaultClock> {
    /// The client address of `req` (the TCP peer, or what a trusted proxy forwarded for).
    pub fn client_of(&self, req: &actix_web::HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        Some(self.client_ip(peer, forwarded_values(req.headers())))
    }

    fn held(&self, kind: Kind) -> &Held {
        match kind {
            Kind::Socket => &self.sockets,
            Kind::Connection => &self.connections,
        }
    }

    /// One more `kind` held by `client` until the slot is dropped; `Err(max)` when its /64 (or
    /// /48) holds its share already. Always granted with limits off.
    fn hold(self: &Arc<Self>, kind: Kind, client: IpAddr) -> Result<HeldSlot, u32> {
        let key = bucket_key(client);
        let wide = self.wide_key(client);
        if !self.enabled {
            return Ok(HeldSlot { counted: None });
        }
        let held = self.held(kind);
        let mut open = held.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut wide_open = held.wide_open.lock().unwrap_or_else(|p| p.into_inner());
        let max_wide = held.max.saturating_mul(self.wide_factor);
        if open.get(&key).is_some_and(|n| *n >= held.max) {
            return Err(held.max);
        }
        if let Some(w) = wide {
            if wide_open.get(&w).is_some_and(|n| *n >= max_wide) {
                return Err(max_wide);
            }
            *wide_open.entry(w).or_insert(0) += 1;
        }
        *open.entry(key).or_insert(0) += 1;
        Ok(HeldSlot {
            counted: Some((self.clone(), kind, key, wide)),
        })
    }

    /// One more open WebSocket for `client`, held until the slot is dropped; `Err(max)` when the
    /// address holds `didcomm_sockets_per_address` already. Always granted with limits off.
    pub fn open_socket(self: &Arc<Self>, client: IpAddr) -> Result<HeldSlot, u32> {
        self.hold(Kind::Socket, client)
    }

    /// One more TCP connection from `peer` (the TCP peer itself: nothing of the request is known
    /// yet), held until the slot is dropped; `Err(max)` when its address holds
    /// `connections_per_address` already. A trusted proxy's connections are not counted: they
    /// carry everybody's requests.
    pub fn open_connection(self: &Arc<Self>, peer: IpAddr) -> Result<HeldSlot, u32> {
        if self.is_trusted(canonical(peer)) {
            return Ok(HeldSlot { counted: None });
        }
        self.hold(Kind::Connection, peer)
    }

    /// Open WebSockets of `client`'s address (tests).
    pub fn open_sockets(&self, client: IpAddr) -> u32 {
        let open = self.sockets.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&bucket_key(client)).copied().unwrap_or(0)
    }

    /// Open connections of `peer`'s address (tests).
    pub fn open_connections(&self, peer: IpAddr) -> u32 {
        let open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.get(&bucket_key(peer)).copied().unwrap_or(0)
    }
}

/// One WebSocket or connection a client address holds ([`RateLimits::open_socket`],
/// [`RateLimits::open_connection`]); given back when dropped.
pub struct HeldSlot {
    /// Where it is counted: the limits, which count, its bucket key and its IPv6 /48 (`None`:
    /// not counted — limits off, or a trusted proxy).
    counted: Option<(Arc<RateLimits>, Kind, IpAddr, Option<IpAddr>)>,
}

impl HeldSlot {
    /// A slot counted nowhere (no limits known, e.g. no peer address).
    pub fn uncounted() -> Self {
        Self { counted: None }
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let Some((limits, kind, key, wide)) = &self.counted else {
            return;
        };
        let release = |map: &Mutex<HashMap<IpAddr, u32>>, key: &IpAddr| {
            let mut open = map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(key);
                }
            }
        };
        let held = limits.held(*kind);
        release(&held.open, key);
        if let Some(w) = wide {
            release(&held.wide_open, w);
        }
    }
}

/// What a mediator WebSocket may receive: its address's share of the open sockets (held for
/// the socket's life) and of the frame budget (`didcomm_frame_*`, shared by the address's
/// sockets). Without the node's limits (unit tests) everything is allowed.
pub struct SocketBudget {
    limits: Option<Arc<RateLimits>>,
    client: IpAddr,
    _slot: Option<HeldSlot>,
}

impl SocketBudget {
    /// The budget of the socket `req` upgrades to, or 429 `rate_limited` when its address holds
    /// its share of sockets already.
    pub fn for_upgrade(req: &actix_web::HttpRequest) -> Result<Self, ApiError> {
        let Some(limits) = req
            .app_data::<web::Data<RateLimits>>()
            .map(|d| d.clone().into_inner())
        else {
            return Ok(Self::unlimited());
        };
        let Some(client) = limits.client_of(req) else {
            return Ok(Self::unlimited());
        };
        let slot = limits.open_socket(client).map_err(|max| ApiError {
            retry_after: Some(10),
            ..ApiError::new(
                Code::RateLimited,
                format!("this address holds {max} mediator WebSockets already; close one first"),
            )
        })?;
        Ok(Self {
            limits: Some(limits),
            client,
            _slot: Some(slot),
        })
    }

    fn unlimited() -> Self {
        Self {
            limits: None,
            client: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            _slot: None,
        }
    }

    /// Charges one received frame (of any kind: a ping costs an answer too); `Err(wait)`: not
    /// yet (its /64 may be charged when its /48 is the one out) — read nothing more until then.
    /// One unit whatever its size (frames are bounded by `mediator.max_message_bytes`): a large
    /// frame needing several units at once could wait for ever behind small ones from the same
    /// address.
    pub fn take(&self) -> Result<(), Duration> {
        match &self.limits {
            Some(l) => l.check(Endpoint::DidcommFrame, self.client),
            None => Ok(()),
        }
    }
}

fn quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let per_minute = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst)?;
    Some(Quota::per_minute(per_minute).allow_burst(burst))
}

/// IPv4-mapped IPv6 addresses are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The bucket of a client: its IPv4 address, or its IPv6 /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_forwarded(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// Says once per process that `X-Forwarded-For` arrives while no proxy is trusted: behind a
/// balancer that is a misconfiguration (every client is the balancer, one rate-limit bucket that
/// one outsider can spend for everyone, admin included; attacker review of the shipped examples).
fn warn_unused_forwarded_for<'a>(peer: IpAddr, mut forwarded: impl Iterator<Item = &'a str>) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if forwarded.next().is_some() && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            %peer,
            "requests carry X-Forwarded-For but server.rate_limit.trusted_proxies is empty: every client behind this proxy is limited as one; list the proxy's addresses there"
        );
    }
}

fn forwarded_values(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all("x-forwarded-for").filter_map(|v| v.to_str().ok())
}

/// The middleware behind the per-endpoint functions below.
async fn limit(
    ep: Endpoint,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let (Some(limits), Some(peer)) = (
        req.app_data::<web::Data<RateLimits>>(),
        req.peer_addr().map(|a| a.ip()),
    ) {
        let client = limits.client_ip(peer, forwarded_values(req.headers()));
        if let Err(wait) = limits.check(ep, client) {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let refusal = ApiError {
                retry_after: Some(secs.max(1)),
                ..ApiError::new(
                    Code::RateLimited,
                    format!(
                        "too many {} requests from this address; retry later",
                        ep.key()
                    ),
                )
            };
            return Err(crate::http::oauth::middleware_error(
                crate::http::routed_path(&req),
                refusal,
            ));
        }
    }
    next.call(req).await
}

/// The node's limits and the client of `req`, when both are known.
fn limits_and_client(req: &actix_web::HttpRequest) -> Option<(&RateLimits, IpAddr)> {
    let limits = req.app_data::<web::Data<RateLimits>>()?;
    let peer = req.peer_addr()?.ip();
    Some((
        limits,
        limits.client_ip(peer, forwarded_values(req.headers())),
    ))
}

/// Charges one failed credential (a wrong admin or metrics token) to the client's budget of
/// them (the `login` numbers, a bucket of its own): `Err` with the wait once its failures are
/// over the limit, and then every token from the client is refused for that wait
/// ([`tokens_locked`]), so a weak token cannot be guessed online at the server's speed. A correct
/// token is never charged.
pub fn charge_failed_token(req: &actix_web::HttpRequest) -> Result<(), ApiError> {
    let Some((limits, client)) = limits_and_client(req) else {
        return Ok(());
    };
    limits.check(Endpoint::FailedToken, client).map_err(|wait| {
        limits.lock_tokens(client, wait);
        too_many_failed_tokens(wait)
    })
}

/// `Err` (429) while the client's failed-token budget is spent: then every token it sends is
/// refused, the right one too. Were the right one let through, 429 for a wrong guess and an
/// answer for the right one would tell a guesser which token is right at full speed (review).
pub fn tokens_locked(req: &actix_web::HttpRequest) -> Result<(), ApiError> {
    let Some((limits, client)) = limits_and_client(req) else {
        return Ok(());
    };
    match limits.token_lock_left(client) {
        Some(wait) => Err(too_many_failed_tokens(wait)),
        None => Ok(()),
    }
}

fn too_many_failed_tokens(wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError {
        retry_after: Some(secs.max(1)),
        ..ApiError::new(
            Code::RateLimited,
            "too many failed tokens from this address; retry later",
        )
    }
}

/// `server.rate_limit.signup_*`.
pub async fn signup(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    limit(Endpoint::Signup, req, next).await
}

/// `server.rate_limit.login_*`.
pub async fn login(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    limit(Endpoint::Login, req, next).await
}

/// `server.rate_limit.token_*`.
pub async fn token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    limit(Endpoint::Token, req, next).await
}

/// `server.rate_limit.nonce_*`.
pub async fn nonce(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    limit(Endpoint::Nonce, req, next).await
}

/// `server.rate_limit.verify_*`. A caller with a valid admin token (a relying party's own
/// backend, one address for all its users) is not limited.
pub async fn verify(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let token = crate::http::auth::bearer_token(req.request());
    let tokens = req.app_data::<web::Data<crate::http::auth::AdminTokens>>();
    if token.is_some() {
        tokens_locked(req.request())?;
    }
    match (tokens, token) {
        (Some(tokens), Some(token)) if tokens.is_enabled() && tokens.check(token) => {
            return Ok(next.call(req).await?.map_into_boxed_body());
        }
        // a wrong token costs what it costs at the admin API (review: once the verify budget
        // was spent, 429 for a wrong token and an answer for the right one was a free oracle)
        (Some(tokens), Some(_)) if tokens.is_enabled() => charge_failed_token(req.request())?,
        _ => {}
    }
    Ok(limit(Endpoint::Verify, req, next)
        .await?
        .map_into_boxed_body())
}

/// `server.rate_limit.didcomm_*`.
pub async fn didcomm(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    limit(Endpoint::Didcomm, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    use std::path::Path;

    fn cfg(per_minute: u32, burst: u32, proxies: &[&str]) -> RateLimitConfig {
        RateLimitConfig {
            trusted_proxies: proxies.iter().map(|s| s.to_string()).collect(),
            login_per_minute: per_minute,
            login_burst: burst,
            ..RateLimitConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refusal_then_refill_per_client() {
        let clock = FakeRelativeClock::default();
        let l = RateLimits::with_clock(&cfg(60, 3, &[]), clock.clone()).unwrap();
        let a = ip("203.0.113.7");
        for _ in 0..3 {
            assert!(l.check(Endpoint::Login, a).is_ok());
        }
        let wait = l.check(Endpoint::Login, a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // another client and another endpoint have buckets of their own
        assert!(l.check(Endpoint::Login, ip("203.0.113.8")).is_ok());
        assert!(l.check(Endpoint::Signup, a).is_ok());
        // one request per second comes back at 60/minute
        clock.advance(Duration::from_secs(1));
        assert!(l.check(Endpoint::Login, a).is_ok());
        assert!(l.check(Endpoint::Login, a).is_err());
    }

    #[test]
    fn disabled_limits_let_everything_through() {
        let mut c = cfg(1, 1, &[]);
        c.enabled = false;
        let l = RateLimits::with_clock(&c, FakeRelativeClock::default()).unwrap();
        for _ in 0..100 {
            assert!(l.check(Endpoint::Login, ip("198.51.100.1")).is_ok());
        }
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let l = RateLimits::with_clock(&cfg(1, 1, &[]), FakeRelativeClock::default()).unwrap();
        assert!(l.check(Endpoint::Login, ip("2001:db8:1:2::1")).is_ok());
        assert!(l
            .check(Endpoint::Login, ip("2001:db8:1:2:ffff::9"))
            .is_err());
        assert!(l.check(Endpoint::Login, ip("2001:db8:1:3::1")).is_ok());
        // an IPv4-mapped address is the IPv4 client
        assert!(l.check(Endpoint::Login, ip("192.0.2.1")).is_ok());
        assert!(l.check(Endpoint::Login, ip("::ffff:192.0.2.1")).is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = RateLimits::with_clock(
            &cfg(60, 1, &["10.0.0.0/8", "192.168.1.5"]),
            FakeRelativeClock::default(),
        )
        .unwrap();
        // an untrusted peer's header is ignored: it cannot pick its own bucket
        assert_eq!(
            l.client_ip(ip("203.0.113.9"), ["198.51.100.1"].into_iter()),
            ip("203.0.113.9")
        );
        // a trusted proxy's: the right-most untrusted entry (a client-sent prefix is ignored)
        assert_eq!(
            l.client_ip(
                ip("10.1.1.1"),
                ["6.6.6.6, 198.51.100.1", "192.168.1.5"].into_iter()
            ),
            ip("198.51.100.1")
        );
        assert_eq!(
            l.client_ip(ip("10.1.1.1"), ["[2001:db8::7]:443"].into_iter()),
            ip("2001:db8::7")
        );
        // garbage stops the walk at the last good address
        assert_eq!(
            l.client_ip(ip("10.1.1.1"), ["198.51.100.1, nonsense"].into_iter()),
            ip("10.1.1.1")
        );
        // no header: the proxy itself
        assert_eq!(
            l.client_ip(ip("10.1.1.1"), std::iter::empty()),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn stale_clients_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = RateLimits::with_clock(&cfg(600, 1, &[]), clock.clone()).unwrap();
        for i in 0..CLEANUP_EVERY - 1 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            let _ = l.check(Endpoint::Login, a);
        }
        assert_eq!(l.tracked(Endpoint::Login), (CLEANUP_EVERY - 1) as usize);
        clock.advance(Duration::from_secs(60));
        // the next check runs the cleanup: every earlier client's bucket has refilled
        let _ = l.check(Endpoint::Login, ip("192.0.2.200"));
        assert!(
            l.tracked(Endpoint::Login) <= 1,
            "{}",
            l.tracked(Endpoint::Login)
        );
    }

    #[test]
    fn weighted_checks_take_all_or_nothing_and_at_most_a_burst() {
        let clock = FakeRelativeClock::default();
        let c = RateLimitConfig {
            didcomm_frame_per_minute: 60,
            didcomm_frame_burst: 4,
            ..RateLimitConfig::default()
        };
        let l = RateLimits::with_clock(&c, clock.clone()).unwrap();
        let a = ip("203.0.113.7");
        assert!(l.check_n(Endpoint::DidcommFrame, a, 3).is_ok());
        // two more do not fit: nothing is taken, and one still fits
        assert!(l.check_n(Endpoint::DidcommFrame, a, 2).is_err());
        assert!(l.check_n(Endpoint::DidcommFrame, a, 1).is_ok());
        assert!(l.check_n(Endpoint::DidcommFrame, a, 1).is_err());
        // more than the burst counts as the whole burst (it would never fit otherwise)
        clock.advance(Duration::from_secs(4));
        assert!(l.check_n(Endpoint::DidcommFrame, a, 1000).is_ok());
        assert!(l.check_n(Endpoint::DidcommFrame, a, 1).is_err());
    }

    /// The shipped examples behind a balancer trust it: an outsider who spends the failed-token
    /// budget through it locks only its own address, not every client of the balancer (attacker
    /// review: with `trusted_proxies` unset, one bucket for the whole internet, admin included).
    #[test]
    fn the_shipped_examples_limit_clients_behind_their_balancer_apart() {
        for example in [
            "deploy/cluster/docker-compose.yml",
            "deploy/role-split/docker-compose.yml",
            "deploy/kubernetes/idstack.yaml",
            "deploy/kubernetes/idstack-cluster.yaml",
        ] {
            let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(example))
                .unwrap();
            let line = text
                .lines()
                .find(|l| l.contains("IDSTACK__SERVER__RATE_LIMIT__TRUSTED_PROXIES"))
                .unwrap_or_else(|| panic!("{example}: no trusted proxies"));
            let value = line.rsplit(':').next().unwrap();
            let value = value
                .trim()
                .trim_matches(|c| c == '"' || c == '}' || c == ' ');
            let proxies: Vec<&str> = value.split(',').collect();
            // a trusted range wider than the balancer's own address comes with a policy that
            // lets only the ingress reach the HTTP port (any other pod in it could name any client)
            if proxies.iter().any(|p| p.contains('/')) {
                assert!(
                    text.contains("kind: NetworkPolicy") && text.contains("port: 8080"),
                    "{example}: a trusted range without a NetworkPolicy"
                );
            }
            let balancer = text
                .lines()
                .find_map(|l| l.split("ipv4_address: ").nth(1))
                .map(|a| a.split_whitespace().next().unwrap().to_string())
                .unwrap_or_else(|| "10.1.2.3".into()); // an ingress pod in 10.0.0.0/8
            let l = RateLimits::with_clock(&cfg(60, 5, &proxies), FakeRelativeClock::default())
                .unwrap_or_else(|e| panic!("{example}: {e}"));
            let through = |client: &str| l.client_ip(ip(&balancer), [client].into_iter());
            let guesser = through("198.51.100.66");
            for _ in 0..5 {
                assert!(l.check(Endpoint::FailedToken, guesser).is_ok());
            }
            let wait = l.check(Endpoint::FailedToken, guesser).unwrap_err();
            l.lock_tokens(guesser, wait);
            assert!(l.token_lock_left(guesser).is_some(), "{example}");
            assert_eq!(
                l.token_lock_left(through("203.0.113.5")),
                None,
                "{example}: the admin behind the same balancer"
            );
        }
    }

    #[test]
    fn an_address_holds_its_share_of_sockets_until_they_close() {
        let c = RateLimitConfig {
            didcomm_sockets_per_address: 2,
            ..RateLimitConfig::default()
        };
        let l = Arc::new(RateLimits::new(&c).unwrap());
        let a = ip("2001:db8:1:2::1");
        let first = l.open_socket(a).unwrap();
        // the same /64 is the same client
        let _second = l.open_socket(ip("2001:db8:1:2::9")).unwrap();
        assert_eq!(l.open_socket(a).err(), Some(2));
        assert!(l.open_socket(ip("2001:db8:1:3::1")).is_ok());
        drop(first);
        assert_eq!(l.open_sockets(a), 1);
        assert!(l.open_socket(a).is_ok());
        // with limits off every socket is let through
        let off = Arc::new(
            RateLimits::new(&RateLimitConfig {
                enabled: false,
                ..c
            })
            .unwrap(),
        );
        let held: Vec<_> = (0..10).map(|_| off.open_socket(a).unwrap()).collect();
        assert_eq!(held.len(), 10);
    }

    /// Connections are counted per address like sockets, in a count of their own; a trusted
    /// proxy's are not counted (they carry everybody's requests).
    #[test]
    fn connections_are_counted_per_address_except_a_trusted_proxys() {
        let c = RateLimitConfig {
            didcomm_sockets_per_address: 1,
            connections_per_address: 2,
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..RateLimitConfig::default()
        };
        let l = Arc::new(RateLimits::new(&c).unwrap());
        let a = ip("198.51.100.7");
        let first = l.open_connection(a).unwrap();
        let _second = l.open_connection(a).unwrap();
        assert_eq!(l.open_connection(a).err(), Some(2));
        // sockets are a count of their own
        let _socket = l.open_socket(a).unwrap();
        assert_eq!(l.open_connections(a), 2);
        drop(first);
        assert!(l.open_connection(a).is_ok());
        // the balancer's connections are not counted, however many
        let proxy = ip("10.1.2.3");
        let held: Vec<_> = (0..50).map(|_| l.open_connection(proxy).unwrap()).collect();
        assert_eq!((held.len(), l.open_connections(proxy)), (50, 0));
        // a /48 holds 16 times a /64's
        let in_48 = |i: u32| ip(&format!("2001:db8:7:{i:x}::1"));
        let held: Vec<_> = (0..40)
            .filter_map(|i| l.open_connection(in_48(i)).ok())
            .collect();
        assert_eq!(held.len(), 32);
        // connections_per_address must leave room above a client's WebSockets; 0 (the
        // default) is twice those, at least 512
        let mut s = crate::config::ServerConfig::default();
        assert_eq!(s.rate_limit.connections_cap(), 512);
        s.rate_limit.didcomm_sockets_per_address = 1000;
        assert_eq!(s.rate_limit.connections_cap(), 2000);
        assert!(s.validate_limits().is_ok());
        s.rate_limit.connections_per_address = 1000;
        assert!(s.validate_limits().is_err());
    }

    /// An IPv6 /48 has `ipv6_wide_factor` (16) times a /64's budget in all, however many
    /// /64s it spreads over: requests and sockets (connections review: one /56 took every
    /// mediator socket of a node, 256 /64s of 256 sockets each).
    #[test]
    fn an_ipv6_slash_48_has_a_budget_of_its_own_across_its_slash_64s() {
        let l = RateLimits::with_clock(&cfg(1, 1, &[]), FakeRelativeClock::default()).unwrap();
        let in_48 = |i: u32| ip(&format!("2001:db8:7:{i:x}::1"));
        let taken = (0..40)
            .filter(|i| l.check(Endpoint::Login, in_48(*i)).is_ok())
            .count();
        assert_eq!(taken, 16);
        // another /48 has its own
        assert!(l.check(Endpoint::Login, ip("2001:db8:8::1")).is_ok());
        // IPv4 has no wider tier
        assert!((0..40).all(|i| l
            .check(Endpoint::Login, ip(&format!("198.51.100.{i}")))
            .is_ok()));

        let c = RateLimitConfig {
            didcomm_sockets_per_address: 1,
            ..RateLimitConfig::default()
        };
        let l = Arc::new(RateLimits::new(&c).unwrap());
        let held: Vec<_> = (0..40)
            .filter_map(|i| l.open_socket(in_48(i)).ok())
            .collect();
        assert_eq!(held.len(), 16);
        assert!(l.open_socket(ip("2001:db8:8::1")).is_ok());
        drop(held);
        assert!(
            l.open_socket(in_48(39)).is_ok(),
            "places come back when sockets close"
        );
        // 0: no /48 tier
        let mut off = cfg(1, 1, &[]);
        off.ipv6_wide_factor = 0;
        let l = RateLimits::with_clock(&off, FakeRelativeClock::default()).unwrap();
        assert!((0..40).all(|i| l.check(Endpoint::Login, in_48(i)).is_ok()));
    }
}
