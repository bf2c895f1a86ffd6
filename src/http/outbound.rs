//! The one guard for every server-side HTTP request (wallet fetches of offers, metadata, request
//! objects and response URIs; verifier status lists and did:web documents; mediator forwards to
//! peer endpoints; webhooks). It is built into the shared [`reqwest::Client`] (`AppState::http`),
//! so nothing that uses that client can bypass it:
//!
//! - **DNS**: a resolver that drops addresses the policy refuses (a name resolving to a private
//!   address is refused before any connection is made);
//! - **every connection**: a connector layer checks the peer address the socket actually connected
//!   to (this also covers IP-literal hosts, which bypass DNS, and every redirect hop);
//! - **redirects**: each hop's URL is checked too, and at most `max_redirects` are followed;
//! - **no proxies**: a proxy would resolve names itself, out of the guard's sight.
//!
//! Bodies are read with [`read_capped`]: the cap is enforced chunk by chunk while reading, and a
//! `Content-Length` over the cap is refused before reading anything.
//!
//! Refused: loopback, private (RFC 1918, CGNAT), link-local (incl. 169.254.169.254), unique-local
//! (fc00::/7), multicast, unspecified, broadcast, reserved and documentation ranges, and the
//! IPv4-mapped / NAT64 / 6to4 forms of those. `http.outbound.allow_private` relaxes it (sandbox
//! default: loopback only) and `http.outbound.allow` admits listed hosts, addresses and CIDRs.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use ipnet::IpNet;

use crate::config::{AllowPrivate, Mode, OutboundConfig};

/// Why an outbound request was not made or its answer not used. The texts never contain what the
/// remote party sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The destination is not allowed (`outbound_refused`).
    #[error("outbound request refused: {0}")]
    Refused(String),
    /// The destination's name resolves to no address we may reach: unknown (perhaps only for
    /// now) or internal only, one answer for both so an outsider cannot tell which internal names
    /// exist. A refusal like [`OutboundError::Refused`], but not final: a webhook tries again.
    #[error("outbound request refused: {0}")]
    Unreachable(String),
    /// The answer is larger than the configured cap.
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// The other party was unreachable, timed out or broke the connection.
    #[error("the other party is unreachable or failed ({0})")]
    Upstream(String),
}

impl OutboundError {
    /// From a reqwest error: a refusal by the guard (anywhere in the source chain) stays a
    /// refusal; anything else is an upstream failure described by its kind only.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        if let Some(r) = refusal(e) {
            return r;
        }
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_redirect() {
            "redirect error"
        } else if e.is_body() || e.is_decode() {
            "broken response body"
        } else {
            "request failed"
        };
        OutboundError::Upstream(kind.into())
    }

    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            OutboundError::Refused(_) | OutboundError::Unreachable(_)
        )
    }

    /// A refusal that trying again cannot change (the destination is not allowed).
    pub fn is_final(&self) -> bool {
        matches!(self, OutboundError::Refused(_))
    }
}

/// The guard's refusal inside a reqwest error, if that is what it is.
pub fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<OutboundError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(o) = err.downcast_ref::<OutboundError>() {
            return Some(o.clone());
        }
        cur = err.source();
    }
    None
}

/// Body-size limits of outbound answers, set once at start from `http.outbound`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub did_document_max_bytes: usize,
    pub status_list_cache_bytes: usize,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();
static NO_REDIRECT: OnceLock<reqwest::Client> = OnceLock::new();
static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();

/// [`Policy::plain_http_allowed`] of this node (no policy, as in CLI tools: allowed).
pub fn plain_http_allowed(url: &str) -> bool {
    match (POLICY.get(), reqwest::Url::parse(url)) {
        (Some(p), Ok(u)) => p.plain_http_allowed(&u),
        (None, _) => true,
        (Some(_), Err(_)) => false,
    }
}

/// Checks a URL against the node's policy before anything is sent, so that an IP-literal host
/// that is refused is never even connected to (no probing of internal ports by timing). Names
/// are checked by the resolver, every connection and redirect hop by the client itself. In a
/// process that never built the server's client (CLI tools) there is no policy and no check.
pub fn check_url(url: &str) -> Result<(), OutboundError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| OutboundError::Refused("not a valid URL".into()))?;
    match POLICY.get() {
        Some(p) => p.check_url(&parsed),
        None => Ok(()),
    }
}

tokio::task_local! {
    /// What [`send`] may still fetch in this task ([`with_budget`]).
    static BUDGET: std::cell::RefCell<Budget>;
}

/// Requests one task may still make: distinct URLs (outsiders it may be sent to) and requests in
/// all (the same document asked for once per credential that names it).
struct Budget {
    distinct_left: u32,
    total_left: u32,
    seen: std::collections::HashSet<String>,
    /// No request is started after this.
    until: std::time::Instant,
}

/// How long the requests of one [`with_budget`] may go on starting: each takes at most the
/// client's 15 s, and 256 of them one after the other held a wallet request (and what it had
/// read) for an hour (attacker review). Room for an offer of 10 configurations from a slow
/// issuer (metadata, token, nonce and ten credential requests).
pub const BUDGET_TIME: Duration = Duration::from_secs(180);

/// Runs `f` allowing it requests through [`send`] to at most `distinct` URLs, and at most four
/// times that many requests in all; the next ones are refused (`outbound_refused`). For work
/// whose URLs an outsider chooses (one verification: DID documents, issuer metadata, status
/// lists), so one request cannot fan out into hundreds.
pub async fn with_budget<F: std::future::Future>(distinct: u32, f: F) -> F::Output {
    let budget = Budget {
        distinct_left: distinct,
        total_left: distinct.saturating_mul(4),
        seen: Default::default(),
        until: std::time::Instant::now() + BUDGET_TIME,
    };
    BUDGET.scope(std::cell::RefCell::new(budget), f).await
}

/// Distinct URLs one client request may have the server fetch ([`budgeted`]).
pub const REQUEST_BUDGET: u32 = 64;

/// Middleware for routes whose fetches an outsider steers (a wallet accepting an offer, opening
/// a presentation request, checking a credential's status): the request's fetches share one
/// [`with_budget`] of [`REQUEST_BUDGET`] (attacker review: one accepted offer could fetch a
/// did:web document per received credential, each naming another host, about 250 requests).
pub async fn budgeted(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    with_budget(REQUEST_BUDGET, next.call(req)).await
}

/// Takes a request to `url` from the task's budget, if it has one.
fn take_budget(url: &str) -> Result<(), OutboundError> {
    let spent =
        || OutboundError::Refused("this task has made all the outbound requests it may".into());
    BUDGET
        .try_with(|b| {
            let mut b = b.borrow_mut();
            if b.total_left == 0 {
                return Err(spent());
            }
            if std::time::Instant::now() >= b.until {
                return Err(OutboundError::Refused(format!(
                    "this task has made outbound requests for {} s, all it may",
                    BUDGET_TIME.as_secs()
                )));
            }
            if !b.seen.contains(url) {
                if b.distinct_left == 0 {
                    return Err(spent());
                }
                b.distinct_left -= 1;
                b.seen.insert(url.to_string());
            }
            b.total_left -= 1;
            Ok(())
        })
        .unwrap_or(Ok(()))
}

/// The node's places for outbound requests in flight (`http.outbound.max_in_flight`; the
/// default until the server has built its client).
static IN_FLIGHT: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();

/// How long a request waits for a place in flight before it fails.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

fn in_flight() -> &'static Arc<tokio::sync::Semaphore> {
    IN_FLIGHT.get_or_init(|| {
        Arc::new(tokio::sync::Semaphore::new(
            OutboundConfig::default().max_in_flight,
        ))
    })
}

#[cfg(test)]
tokio::task_local! {
    /// Tests: the places in flight of this task, instead of the node's.
    static TEST_PLACES: Arc<tokio::sync::Semaphore>;
}

fn places() -> Arc<tokio::sync::Semaphore> {
    #[cfg(test)]
    if let Ok(p) = TEST_PLACES.try_with(Arc::clone) {
        return p;
    }
    in_flight().clone()
}

/// A place in flight, held by the response (in its extensions) until the response is dropped,
/// so a body read slowly keeps it.
#[derive(Clone)]
struct InFlight(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// Sends a request built on the guarded client, checking its URL first ([`check_url`]), taking
/// it from the task's budget ([`with_budget`]) and taking one of the node's places in flight
/// (`http.outbound.max_in_flight`: every task's budget is its own, so requests from many tasks
/// at once had no bound but file descriptors).
pub async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, OutboundError> {
    send_placed(req, true).await
}

/// [`send`] outside the node's places in flight, for a caller whose requests have a bound of
/// their own (the mediator's reply POSTs: anonymous peers must not fill the places every other
/// role's fetches and webhooks wait for).
pub async fn send_own_bound(
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, OutboundError> {
    send_placed(req, false).await
}

async fn send_placed(
    req: reqwest::RequestBuilder,
    placed: bool,
) -> Result<reqwest::Response, OutboundError> {
    let (client, request) = req.build_split();
    let request = request.map_err(|e| OutboundError::from_reqwest(&e))?;
    check_url(request.url().as_str())?;
    take_budget(request.url().as_str())?;
    if !placed {
        return client
            .execute(request)
            .await
            .map_err(|e| OutboundError::from_reqwest(&e));
    }
    let place = tokio::time::timeout(IN_FLIGHT_WAIT, places().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            OutboundError::Upstream("this node has too many outbound requests in flight".into())
        })?;
    let mut resp = client
        .execute(request)
        .await
        .map_err(|e| OutboundError::from_reqwest(&e))?;
    resp.extensions_mut().insert(InFlight(Arc::new(place)));
    Ok(resp)
}

/// The same guard without following redirects (for flows that read `Location` themselves, like
/// the authorization-code step of issuance). In a process that never built the server's client
/// (the CLI's load harness, which talks to a target it was pointed at), it admits any destination.
pub fn no_redirect_client() -> reqwest::Client {
    NO_REDIRECT
        .get_or_init(|| {
            let cfg = OutboundConfig {
                allow_private: AllowPrivate::All,
                ..OutboundConfig::default()
            };
            build(&cfg, Mode::Sandbox, false).unwrap_or_default()
        })
        .clone()
}

/// The configured limits (the defaults until the server has started).
pub fn limits() -> Limits {
    *LIMITS.get_or_init(|| limits_of(&OutboundConfig::default()))
}

fn limits_of(c: &OutboundConfig) -> Limits {
    Limits {
        max_body_bytes: c.max_body_bytes,
        did_document_max_bytes: c.did_document_max_bytes,
        status_list_cache_bytes: c.status_list_cache_bytes,
    }
}

/// Reads a response body, refusing it once it exceeds `max` bytes: a `Content-Length` above the
/// cap is refused before reading, a streamed body is cut as soon as it passes the cap.
pub async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, OutboundError> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(OutboundError::TooLarge(max));
    }
    let hint = resp.content_length().unwrap_or(0).min(64 * 1024) as usize;
    let mut buf = Vec::with_capacity(hint);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| OutboundError::from_reqwest(&e))?
    {
        if buf.len() + chunk.len() > max {
            return Err(OutboundError::TooLarge(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// What an address is, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Public,
    Loopback,
    /// Private, link-local, unique-local, multicast, unspecified, reserved, documentation.
    Internal,
}

/// Classifies an address, looking through IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms.
pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if ip.is_loopback() {
        return Class::Loopback;
    }
    let internal = ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || o[0] == 0 // 0.0.0.0/8 "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || o[0] >= 240; // 240.0.0.0/4 reserved
    if internal {
        Class::Internal
    } else {
        Class::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip.is_loopback() {
        return Class::Loopback;
    }
    let s = ip.segments();
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::a.b.c.d (NAT64)
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_unspecified() {
        return classify_v4(embedded_v4(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(s[6], s[7]));
    }
    // ::ffff:0:a.b.c.d (IPv4-translated, SIIT): the IPv4 address is the last 32 bits
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return classify_v4(embedded_v4(s[6], s[7]));
    }
    // 64:ff9b:1::/48 (local-use NAT64, RFC 8215): a site's own translator, whose prefix length
    // (and so where the IPv4 address sits, RFC 6052) we cannot know: internal
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Class::Internal;
    }
    // 2002:a.b.c.d::/48 (6to4)
    if s[0] == 0x2002 {
        return classify_v4(embedded_v4(s[1], s[2]));
    }
    let internal = ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20 documentation (RFC 9637)
        || (s[0] == 0x2001 && s[1] == 0) // 2001::/32 Teredo (an IPv4 address in disguise)
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]); // 100::/64 discard
    if internal {
        Class::Internal
    } else {
        Class::Public
    }
}

/// One `http.outbound.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Net(IpNet, Option<u16>),
    Host(String, Option<u16>),
}

fn parse_allowed(s: &str) -> Result<Allowed, String> {
    let s = s.trim();
    let bad =
        || format!("http.outbound.allow: `{s}` is not a host, host:port, IP, IP:port or CIDR");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(net) = IpNet::from_str(s) {
        return Ok(Allowed::Net(net, None));
    }
    if let Ok(ip) = IpAddr::from_str(s) {
        return Ok(Allowed::Net(IpNet::from(ip), None));
    }
    if let Ok(sa) = SocketAddr::from_str(s) {
        return Ok(Allowed::Net(IpNet::from(sa.ip()), Some(sa.port())));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
        None => (s, None),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid {
        return Err(bad());
    }
    Ok(Allowed::Host(host.to_ascii_lowercase(), port))
}

/// The destination policy shared by the resolver, the connector layer and the redirect policy.
#[derive(Debug)]
pub struct Policy {
    loopback_ok: bool,
    internal_ok: bool,
    /// Sandbox mode: plain `http` to anyone the policy admits.
    plain_http_ok: bool,
    allowed: Vec<Allowed>,
    /// Addresses an allow-listed host name resolved to (with that entry's port, if any).
    vetted: Mutex<HashSet<(IpAddr, Option<u16>)>>,
}

impl Policy {
    pub fn new(cfg: &OutboundConfig, mode: Mode) -> Result<Self, String> {
        let (loopback_ok, internal_ok) = match (cfg.allow_private, mode) {
            (AllowPrivate::Auto, Mode::Sandbox) | (AllowPrivate::Loopback, _) => (true, false),
            (AllowPrivate::Auto, Mode::Production) | (AllowPrivate::None, _) => (false, false),
            (AllowPrivate::All, _) => (true, true),
        };
        let allowed = cfg
            .allow
            .iter()
            .map(|s| parse_allowed(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            loopback_ok,
            internal_ok,
            allowed,
            vetted: Mutex::default(),
            plain_http_ok: mode == Mode::Sandbox,
        })
    }

    /// Whether connecting to `ip` on `port` is allowed. Without a port (at DNS resolution), only
    /// allow-list entries without a port admit a non-public address. Also admits an address an
    /// allow-listed host name resolved to: for the connection made to that name (only the
    /// resolver hands such an address out, and only for that name).
    pub fn ip_allowed(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let ip = canonical(ip);
        let port_ok = |p: &Option<u16>| p.is_none() || *p == port;
        self.ip_listed(ip, port)
            || self
                .vetted
                .lock()
                .map(|v| v.iter().any(|(a, p)| *a == ip && port_ok(p)))
                .unwrap_or(false)
    }

    /// [`Self::ip_allowed`] by class and allow-list alone: for an address a URL names, or another
    /// name resolves to. An address an allow-listed name resolved to is that name's, not every
    /// URL's (attacker review: `allow = ["issuer.corp"]` resolving to 10.0.0.5 admitted
    /// `http://10.0.0.5:6379/` and any hostile name resolving to 10.0.0.5).
    fn ip_listed(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let ip = canonical(ip);
        match classify(ip) {
            Class::Public => return true,
            Class::Loopback if self.loopback_ok || self.internal_ok => return true,
            Class::Internal if self.internal_ok => return true,
            _ => {}
        }
        self.ip_listed_by_entry(ip, port)
    }

    fn host_entries(&self, name: &str) -> Vec<Option<u16>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.allowed
            .iter()
            .filter_map(|a| match a {
                Allowed::Host(h, p) if *h == name => Some(*p),
                _ => None,
            })
            .collect()
    }

    /// Whether the wallet may send to `url` over plain `http`: in sandbox mode, yes; in
    /// production only to a host `http.outbound.allow` names (an operator's choice). What the
    /// wallet sends (pre-authorized codes, transaction codes, access tokens, proofs, vp_tokens)
    /// must not cross the network in clear because a link said `http://`.
    pub fn plain_http_allowed(&self, url: &reqwest::Url) -> bool {
        if self.plain_http_ok || url.scheme() != "http" {
            return true;
        }
        let port = url.port_or_known_default();
        let Some(host) = url.host_str() else {
            return false;
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match IpAddr::from_str(bare) {
            Ok(ip) => self.ip_listed_by_entry(canonical(ip), port),
            Err(_) => self
                .host_entries(bare)
                .iter()
                .any(|p| p.is_none() || *p == port),
        }
    }

    /// A redirect to plain `http` in production mode stays on the host (and port) it was
    /// already speaking plain http with, or goes to one [`Self::plain_http_allowed`] admits:
    /// otherwise an allow-listed plain-http host could send the request (a wallet's codes and
    /// tokens, a verifier's status-list fetch) on in clear to anyone.
    fn plain_http_hop(
        &self,
        previous: &[reqwest::Url],
        next: &reqwest::Url,
    ) -> Result<(), OutboundError> {
        if next.scheme() != "http" || self.plain_http_allowed(next) {
            return Ok(());
        }
        let same_host = previous.last().is_some_and(|p| {
            p.scheme() == "http"
                && p.host_str() == next.host_str()
                && p.port_or_known_default() == next.port_or_known_default()
        });
        if same_host {
            Ok(())
        } else {
            Err(OutboundError::Refused(
                "a redirect to plain http on another host (production mode)".into(),
            ))
        }
    }

    /// Whether an allow-list network entry names `ip` (on `port`).
    fn ip_listed_by_entry(&self, ip: IpAddr, port: Option<u16>) -> bool {
        self.allowed.iter().any(|a| match a {
            Allowed::Net(net, p) => net.contains(&ip) && (p.is_none() || *p == port),
            Allowed::Host(..) => false,
        })
    }

    /// Checks a URL before a request or a redirect hop: http(s) only, and an IP-literal host
    /// must be allowed (names are checked when resolved; every connection is checked again).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), OutboundError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::Refused(format!(
                "scheme {} is not http(s)",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::Refused("URL with userinfo".into()));
        }
        let port = url.port_or_known_default();
        let host = url
            .host_str()
            .ok_or_else(|| OutboundError::Refused("URL without host".into()))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match IpAddr::from_str(bare) {
            Ok(ip) if !self.ip_listed(ip, port) => Err(OutboundError::Refused(format!(
                "address {ip} is not allowed"
            ))),
            Ok(_) => Ok(()),
            // Names are checked when resolved, and every connection is checked again. A name
            // the allow list admits only on some ports is refused on any other before anything
            // is sent: its internal addresses would be connected to first and refused after
            // (attacker review: "connection failed" against "refused" scanned that host's ports).
            Err(_) => {
                let entries = self.host_entries(bare);
                if !entries.is_empty() && entries.iter().all(|p| p.is_some_and(|p| Some(p) != port))
                {
                    Err(OutboundError::Refused(format!(
                        "{bare} is allowed on other ports only"
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn resolve(&self, name: &str) -> Result<Vec<SocketAddr>, OutboundError> {
        // One answer for a name that does not resolve and one that resolves only to addresses
        // we may not reach: two would tell an outsider which internal names exist.
        let unreachable = || {
            OutboundError::Unreachable(format!(
                "{name} does not resolve to an address this server may reach"
            ))
        };
        let addrs = lookup(name).await?.ok_or_else(unreachable)?;
        let entries = self.host_entries(name);
        let mut kept = Vec::new();
        for a in addrs {
            let ip = canonical(a.ip());
            if !entries.is_empty() && classify(ip) != Class::Public {
                if let Ok(mut v) = self.vetted.lock() {
                    for p in &entries {
                        v.insert((ip, *p));
                    }
                }
                kept.push(a);
            } else if self.ip_listed(ip, None) {
                kept.push(a);
            }
        }
        if kept.is_empty() {
            return Err(unreachable());
        }
        Ok(kept)
    }
}

/// How long a request waits for a lookup place, and for its lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lookups running at once on this node with the async resolver: each is a few UDP exchanges
/// and holds no thread, so the cap only bounds the queries one node sends at once.
const MAX_LOOKUPS: usize = 256;
/// Lookups running at once on the system resolver (the fallback where `/etc/resolv.conf` cannot
/// be read). Each holds a thread of the blocking pool until the resolver answers, whoever stopped
/// waiting for it (attacker review: names under a slow DNS server, one per request, filled the
/// pool that store calls and password hashing share). A permit is given back when the lookup
/// itself ends.
const MAX_SYSTEM_LOOKUPS: usize = 32;

/// The addresses of `name` (`None`: it does not resolve). By hickory's async resolver on the
/// system's configuration (`/etc/resolv.conf`, `/etc/hosts`): a lookup holds no thread and ends
/// at [`LOOKUP_TIMEOUT`], so names under a slow nameserver cost a pending future each, not a
/// thread (attacker review: with the system resolver, one client within the VC-API rate limit
/// kept every lookup place busy). Where that configuration cannot be read, the system resolver
/// on the blocking pool.
async fn lookup(name: &str) -> Result<Option<Vec<SocketAddr>>, OutboundError> {
    match resolver() {
        Some(r) => lookup_with(&r, name, LOOKUP_TIMEOUT).await,
        None => lookup_system(name).await,
    }
}

/// A lookup place (waiting at most [`LOOKUP_TIMEOUT`] for one).
async fn lookup_place(
    places: &'static tokio::sync::Semaphore,
) -> Result<tokio::sync::SemaphorePermit<'static>, OutboundError> {
    let busy = || OutboundError::Upstream("too many name lookups on this node; retry".into());
    tokio::time::timeout(LOOKUP_TIMEOUT, places.acquire())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())
}

fn lookup_timed_out() -> OutboundError {
    OutboundError::Upstream("name lookup timed out".into())
}

/// [`lookup`] with `resolver`, given up after `timeout`. Every failure other than a timeout is
/// "does not resolve", as the system resolver reports it: one answer for a name that does not
/// exist and one whose nameserver refuses (see [`Policy::resolve`]).
async fn lookup_with(
    resolver: &hickory_resolver::TokioResolver,
    name: &str,
    timeout: Duration,
) -> Result<Option<Vec<SocketAddr>>, OutboundError> {
    static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LOOKUPS);
    let _place = lookup_place(&LOOKUPS).await?;
    match tokio::time::timeout(timeout, resolver.lookup_ip(name)).await {
        Err(_) => Err(lookup_timed_out()),
        Ok(Ok(ips)) => Ok(Some(ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect())),
        Ok(Err(e)) => match e.proto().map(|p| p.kind()) {
            Some(hickory_resolver::proto::ProtoErrorKind::Timeout) => Err(lookup_timed_out()),
            _ => Ok(None),
        },
    }
}

/// The system's resolver configuration, read once, with our bounds on what one lookup costs
/// (`None`: it cannot be read; lookups fall back to the system resolver).
fn system_config() -> Option<&'static (
    hickory_resolver::config::ResolverConfig,
    hickory_resolver::config::ResolverOpts,
)> {
    static SYSTEM: OnceLock<
        Option<(
            hickory_resolver::config::ResolverConfig,
            hickory_resolver::config::ResolverOpts,
        )>,
    > = OnceLock::new();
    SYSTEM
        .get_or_init(|| match hickory_resolver::system_conf::read_system_conf() {
            Ok((config, mut opts)) => {
                opts.timeout = opts.timeout.min(Duration::from_secs(2));
                opts.attempts = opts.attempts.clamp(1, 2);
                opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
                opts.cache_size = 1024;
                Some((config, opts))
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "the system's resolver configuration cannot be read; name lookups use the \
                     system resolver, at most {MAX_SYSTEM_LOOKUPS} at once"
                );
                None
            }
        })
        .as_ref()
}

/// Resolvers kept, one per tokio runtime: a node runs one per HTTP worker (one per core) and the
/// main one; tests run many, one after another.
const MAX_RESOLVERS: usize = 64;

/// The async resolver for the current tokio runtime. Its nameserver connections are tasks of
/// the runtime that first used them, so each runtime gets its own; past [`MAX_RESOLVERS`] the
/// oldest is dropped (review: cleared all at once at 8, a node on 8 cores rebuilt them over
/// and over, losing their caches).
fn resolver() -> Option<hickory_resolver::TokioResolver> {
    static BUILT: Mutex<
        std::collections::VecDeque<(tokio::runtime::Id, hickory_resolver::TokioResolver)>,
    > = Mutex::new(std::collections::VecDeque::new());
    let (config, opts) = system_config()?;
    let runtime = tokio::runtime::Handle::try_current().ok()?.id();
    let mut built = BUILT.lock().ok()?;
    if let Some((_, r)) = built.iter().find(|(id, _)| *id == runtime) {
        return Some(r.clone());
    }
    if built.len() >= MAX_RESOLVERS {
        built.pop_front();
    }
    let r = hickory_resolver::Resolver::builder_with_config(
        config.clone(),
        hickory_resolver::name_server::TokioConnectionProvider::default(),
    )
    .with_options(opts.clone())
    .build();
    built.push_back((runtime, r.clone()));
    Some(r)
}

/// [`lookup`] by the system resolver, at most [`MAX_SYSTEM_LOOKUPS`] at once on this node.
async fn lookup_system(name: &str) -> Result<Option<Vec<SocketAddr>>, OutboundError> {
    static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_SYSTEM_LOOKUPS);
    let permit = lookup_place(&LOOKUPS).await?;
    let host = name.to_string();
    let running = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 0))
            .map(|a| a.collect::<Vec<_>>())
            .ok()
    });
    match tokio::time::timeout(LOOKUP_TIMEOUT, running).await {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(_)) | Err(_) => Err(lookup_timed_out()),
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, so allow-list entries match either form.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The DNS resolver: resolves with [`lookup`], then keeps only allowed addresses.
struct GuardResolver(Arc<Policy>);

impl reqwest::dns::Resolve for GuardResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addrs = policy.resolve(&name).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The connector layer: checks the address every new connection actually reached.
#[derive(Clone)]
struct GuardLayer(Arc<Policy>);

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = GuardConnector<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GuardConnector {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct GuardConnector<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, R> tower_service::Service<R> for GuardConnector<S>
where
    S: tower_service::Service<R>,
    S::Response: Connection + Send + 'static,
    S::Error: From<OutboundError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let fut = self.inner.call(req);
        let policy = self.policy.clone();
        Box::pin(async move {
            let conn = fut.await?;
            let mut ext = http::Extensions::new();
            conn.connected().get_extras(&mut ext);
            let Some(remote) = ext.get::<HttpInfo>().map(HttpInfo::remote_addr) else {
                return Err(OutboundError::Refused("peer address unknown".into()).into());
            };
            if policy.ip_allowed(remote.ip(), Some(remote.port())) {
                Ok(conn)
            } else {
                Err(
                    OutboundError::Refused(format!("address {} is not allowed", remote.ip()))
                        .into(),
                )
            }
        })
    }
}

/// The shared outbound client of a node: guarded, with timeouts, no proxy. Also sets the body
/// limits ([`limits`]) and the node's [`no_redirect_client`].
pub fn client(cfg: &OutboundConfig, mode: Mode) -> anyhow::Result<reqwest::Client> {
    let _ = LIMITS.set(limits_of(cfg));
    let _ = IN_FLIGHT.set(Arc::new(tokio::sync::Semaphore::new(
        cfg.max_in_flight.max(1),
    )));
    let _ = POLICY.set(Arc::new(
        Policy::new(cfg, mode).map_err(anyhow::Error::msg)?,
    ));
    let _ = NO_REDIRECT.set(build(cfg, mode, false)?);
    build(cfg, mode, true)
}

/// A redirect never leaves `https` for plain `http`: what was asked for over TLS (a status list,
/// a DID document, metadata) must not come from whoever is on the path.
fn no_downgrade(previous: &[reqwest::Url], next: &reqwest::Url) -> Result<(), OutboundError> {
    if next.scheme() == "http" && previous.iter().any(|u| u.scheme() == "https") {
        return Err(OutboundError::Refused(
            "a redirect from https to http".into(),
        ));
    }
    Ok(())
}

fn build(cfg: &OutboundConfig, mode: Mode, follow: bool) -> anyhow::Result<reqwest::Client> {
    let policy = Arc::new(Policy::new(cfg, mode).map_err(anyhow::Error::msg)?);
    let max_redirects = if follow { cfg.max_redirects } else { 0 };
    let hops = policy.clone();
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if max_redirects == 0 {
            return attempt.stop();
        }
        if attempt.previous().len() > max_redirects {
            return attempt.error(OutboundError::Refused("too many redirects".into()));
        }
        if let Err(e) = no_downgrade(attempt.previous(), attempt.url())
            .and_then(|()| hops.plain_http_hop(attempt.previous(), attempt.url()))
        {
            return attempt.error(e);
        }
        // each hop is a request of the task's budget too (a redirect chain is not one request)
        match hops
            .check_url(attempt.url())
            .and_then(|()| take_budget(attempt.url().as_str()))
        {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    });
    Ok(reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(GuardResolver(policy.clone())))
        .connector_layer(GuardLayer(policy))
        .redirect(redirect)
        .connect_timeout(Duration::from_secs(cfg.connect_timeout_seconds))
        // Below the 5 s keep-alive of Node and most servers: a pooled connection the peer has
        // already closed would fail the next request with "connection closed before message completed".
        .pool_idle_timeout(Duration::from_secs(4))
        .timeout(Duration::from_secs(cfg.timeout_seconds))
        .user_agent(concat!("idstack/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifier() {
        for s in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(classify(ip(s)), Class::Loopback, "{s}");
        }
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::1",
            "::10.0.0.1",
            "64:ff9b:1::a9fe:a9fe",
            "::ffff:0:a00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "3fff::1",
        ] {
            assert_eq!(classify(ip(s)), Class::Internal, "{s}");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "93.184.216.34",
        ] {
            assert_eq!(classify(ip(s)), Class::Public, "{s}");
        }
        // NAT64 / 6to4 / mapped forms of loopback are loopback
        assert_eq!(classify(ip("64:ff9b::7f00:1")), Class::Loopback);
        assert_eq!(classify(ip("2002:7f00:1::1")), Class::Loopback);
        assert_eq!(classify(ip("::ffff:0:7f00:1")), Class::Loopback);
        assert_eq!(classify(ip("64:ff9b:1::808:808")), Class::Internal);
        assert_eq!(classify(ip("3fff:1000::1")), Class::Public);
    }

    fn cfg(allow_private: AllowPrivate, allow: &[&str]) -> OutboundConfig {
        OutboundConfig {
            allow_private,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..OutboundConfig::default()
        }
    }

    #[test]
    fn policy_by_mode_and_allow_list() {
        let sandbox = Policy::new(&cfg(AllowPrivate::Auto, &[]), Mode::Sandbox).unwrap();
        assert!(sandbox.ip_allowed(ip("127.0.0.1"), Some(80)));
        assert!(sandbox.ip_allowed(ip("::ffff:127.0.0.1"), Some(80)));
        assert!(!sandbox.ip_allowed(ip("10.0.0.1"), Some(80)));
        assert!(!sandbox.ip_allowed(ip("169.254.169.254"), Some(80)));
        assert!(sandbox.ip_allowed(ip("8.8.8.8"), Some(443)));

        let prod = Policy::new(&cfg(AllowPrivate::Auto, &[]), Mode::Production).unwrap();
        assert!(!prod.ip_allowed(ip("127.0.0.1"), Some(80)));
        assert!(!prod.ip_allowed(ip("::1"), Some(80)));
        assert!(prod.ip_allowed(ip("8.8.8.8"), Some(443)));

        let listed = Policy::new(
            &cfg(
                AllowPrivate::None,
                &["127.0.0.1:9000", "10.2.0.0/16", "fd00::5"],
            ),
            Mode::Sandbox,
        )
        .unwrap();
        assert!(listed.ip_allowed(ip("127.0.0.1"), Some(9000)));
        assert!(!listed.ip_allowed(ip("127.0.0.1"), Some(9001)));
        // At DNS time the port is unknown: a port-bound entry does not admit the address.
        assert!(!listed.ip_allowed(ip("127.0.0.1"), None));
        assert!(listed.ip_allowed(ip("10.2.3.4"), Some(1)));
        assert!(!listed.ip_allowed(ip("10.3.3.4"), Some(1)));
        assert!(listed.ip_allowed(ip("fd00::5"), Some(1)));
        assert!(!listed.ip_allowed(ip("169.254.169.254"), Some(80)));

        let all = Policy::new(&cfg(AllowPrivate::All, &[]), Mode::Production).unwrap();
        assert!(all.ip_allowed(ip("10.0.0.1"), Some(80)));
    }

    #[test]
    fn allow_list_syntax() {
        assert_eq!(
            parse_allowed("Internal.Example:8443").unwrap(),
            Allowed::Host("internal.example".into(), Some(8443))
        );
        assert!(matches!(
            parse_allowed("[::1]:80").unwrap(),
            Allowed::Net(_, Some(80))
        ));
        for bad in ["", "a b", "host:notaport", "http://x", "x/y"] {
            assert!(parse_allowed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_redirect_never_leaves_https_for_http() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(no_downgrade(&[u("https://a.example/x")], &u("http://a.example/y")).is_err());
        assert!(no_downgrade(
            &[u("http://a.example/x"), u("https://a.example/y")],
            &u("http://b.example/z")
        )
        .is_err());
        assert!(no_downgrade(&[u("https://a.example/x")], &u("https://b.example/y")).is_ok());
        assert!(no_downgrade(&[u("http://a.example/x")], &u("http://b.example/y")).is_ok());
    }

    /// In production, a plain-http redirect chain that starts at an allowed host does not go on
    /// in clear to another host (the wallet's codes and tokens would follow it); it may stay on
    /// its host, or go to another allowed one. Sandbox mode allows plain http anywhere.
    #[test]
    fn a_plain_http_redirect_stays_on_its_host_in_production() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let prod = Policy::new(
            &cfg(AllowPrivate::None, &["issuer.corp:80", "other.corp:8080"]),
            Mode::Production,
        )
        .unwrap();
        let from = [u("http://issuer.corp/offer")];
        assert!(prod
            .plain_http_hop(&from, &u("http://evil.example/x"))
            .is_err());
        assert!(prod
            .plain_http_hop(&from, &u("http://issuer.corp:8081/x"))
            .is_err());
        assert!(prod
            .plain_http_hop(&from, &u("http://issuer.corp/next"))
            .is_ok());
        assert!(prod
            .plain_http_hop(&from, &u("http://other.corp:8080/x"))
            .is_ok());
        assert!(prod
            .plain_http_hop(&from, &u("https://evil.example/x"))
            .is_ok());
        // a status list fetched over http by configuration: same host only
        let status = [u("http://status.example/list")];
        assert!(prod
            .plain_http_hop(&status, &u("http://status.example/list2"))
            .is_ok());
        assert!(prod
            .plain_http_hop(&status, &u("http://else.example/list"))
            .is_err());
        let sandbox = Policy::new(&cfg(AllowPrivate::None, &[]), Mode::Sandbox).unwrap();
        assert!(sandbox
            .plain_http_hop(&from, &u("http://evil.example/x"))
            .is_ok());
    }

    #[test]
    fn urls_checked_before_and_on_redirects() {
        let p = Policy::new(&cfg(AllowPrivate::None, &["127.0.0.1:9000"]), Mode::Sandbox).unwrap();
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(p.check_url(&u("http://127.0.0.1:9000/x")).is_ok());
        assert!(p
            .check_url(&u("http://127.0.0.1:9001/x"))
            .unwrap_err()
            .is_refused());
        assert!(p.check_url(&u("http://[::ffff:169.254.169.254]/")).is_err());
        assert!(p.check_url(&u("http://2130706433/")).is_err()); // 127.0.0.1 as a number
        assert!(p.check_url(&u("file:///etc/passwd")).is_err());
        assert!(p.check_url(&u("http://a:b@example.com/")).is_err());
        assert!(p.check_url(&u("https://example.com/")).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused() {
        let p = Policy::new(&cfg(AllowPrivate::None, &[]), Mode::Sandbox).unwrap();
        assert!(p.resolve("localhost").await.unwrap_err().is_refused());
        let listed =
            Policy::new(&cfg(AllowPrivate::None, &["localhost:9000"]), Mode::Sandbox).unwrap();
        assert!(!listed.resolve("localhost").await.unwrap().is_empty());
        assert!(listed.ip_allowed(ip("127.0.0.1"), Some(9000)));
        assert!(!listed.ip_allowed(ip("127.0.0.1"), Some(9001)));
        // a name allowed on one port is refused on another before anything is sent to it
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(listed.check_url(&u("http://localhost:9000/")).is_ok());
        assert!(listed
            .check_url(&u("http://localhost:6379/"))
            .unwrap_err()
            .is_refused());
        assert!(listed.check_url(&u("http://LOCALHOST.:6379/")).is_err());
        // an unknown name and one resolving only to refused addresses read alike: refused, but
        // not for good (a webhook tries again: the name may resolve later)
        let unknown = p.resolve("no-such-name.invalid").await.unwrap_err();
        let internal = p.resolve("localhost").await.unwrap_err();
        assert!(unknown.is_refused() && !unknown.is_final());
        assert!(internal.is_refused() && !internal.is_final());
        assert_eq!(
            unknown.to_string().replace("no-such-name.invalid", "N"),
            internal.to_string().replace("localhost", "N")
        );
        // what the listed name resolved to is that name's: not a URL naming the address, nor
        // another name resolving to it
        let any_port =
            Policy::new(&cfg(AllowPrivate::None, &["localhost"]), Mode::Sandbox).unwrap();
        assert!(!any_port.resolve("localhost").await.unwrap().is_empty());
        assert!(
            any_port.ip_allowed(ip("127.0.0.1"), Some(6379)),
            "the name's connection"
        );
        assert!(any_port
            .check_url(&u("http://127.0.0.1:6379/"))
            .unwrap_err()
            .is_refused());
        // in production, plain http only to what the allow list names
        let prod = Policy::new(
            &cfg(AllowPrivate::None, &["issuer.corp", "10.9.0.0/16"]),
            Mode::Production,
        )
        .unwrap();
        assert!(!prod.plain_http_allowed(&u("http://wallet-link.example/offer")));
        assert!(prod.plain_http_allowed(&u("https://wallet-link.example/offer")));
        assert!(prod.plain_http_allowed(&u("http://issuer.corp/token")));
        assert!(prod.plain_http_allowed(&u("http://10.9.1.2:8080/token")));
        assert!(!prod.plain_http_allowed(&u("http://10.8.1.2/token")));
        assert!(
            any_port.plain_http_allowed(&u("http://wallet-link.example/offer")),
            "sandbox"
        );
        // (another name resolving to it is checked as this is: by class and list alone)
        assert!(!any_port.ip_listed(ip("127.0.0.1"), None));
    }

    /// A lookup under a nameserver that never answers holds no thread: with one blocking thread
    /// in the runtime and lookups pending, blocking work still runs (with the system resolver each
    /// pending lookup held a thread of that pool); the lookup ends as a timeout, not as "does
    /// not resolve".
    #[test]
    fn a_pending_lookup_holds_no_thread() {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        rt.block_on(async {
            // a nameserver that reads every query and answers none
            let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = silent.local_addr().unwrap().port();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while silent.recv_from(&mut buf).await.is_ok() {}
            });
            let config = ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[ip("127.0.0.1")], port, true),
            );
            let mut opts = ResolverOpts::default();
            opts.timeout = Duration::from_secs(600);
            opts.attempts = 1;
            opts.try_tcp_on_error = false;
            let resolver = hickory_resolver::Resolver::builder_with_config(
                config,
                hickory_resolver::name_server::TokioConnectionProvider::default(),
            )
            .with_options(opts)
            .build();
            let pending: Vec<_> = (0..4)
                .map(|i| {
                    let r = resolver.clone();
                    tokio::spawn(async move {
                        lookup_with(&r, &format!("n{i}.example.org."), Duration::from_secs(600))
                            .await
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            assert_eq!(tokio::task::spawn_blocking(|| 7).await.unwrap(), 7);
            assert!(pending.iter().all(|p| !p.is_finished()), "still waiting");
            for p in pending {
                p.abort();
            }
            // given up after its timeout: "timed out", so a webhook tries again
            let r = lookup_with(&resolver, "late.example.org.", Duration::from_millis(50)).await;
            assert!(r.unwrap_err().to_string().contains("timed out"));
        });
    }

    /// The resolver of a node answers what the system's would: loopback for `localhost`, nothing
    /// for a reserved name.
    #[tokio::test]
    async fn the_async_resolver_answers_like_the_system_one() {
        if system_config().is_none() {
            return; // no resolv.conf: lookups are the system resolver's (the test above covers hickory)
        }
        let r = resolver().expect("a resolver for this runtime");
        let local = lookup_with(&r, "localhost", LOOKUP_TIMEOUT)
            .await
            .unwrap()
            .unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(
            lookup_with(&r, "no-such-name.invalid", LOOKUP_TIMEOUT)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn read_capped_cuts_a_stream_and_refuses_a_big_content_length() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for chunked in [true, false] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                if chunked {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    let chunk = format!("{:x}\r\n{}\r\n", 4096, "a".repeat(4096));
                    for _ in 0..64 {
                        if s.write_all(chunk.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\nabc")
                        .await;
                }
            }
        });
        let c = client(&OutboundConfig::default(), Mode::Sandbox).unwrap();
        for _ in 0..2 {
            let r = c.get(format!("http://{addr}/")).send().await.unwrap();
            assert!(matches!(
                read_capped(r, 10_000).await,
                Err(OutboundError::TooLarge(10_000))
            ));
        }
    }

    #[tokio::test]
    async fn the_client_refuses_internal_literals_and_redirects() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let prod = client(&OutboundConfig::default(), Mode::Production).unwrap();
        let e = prod
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(OutboundError::from_reqwest(&e).is_refused(), "{e:?}");
        let e = prod
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(OutboundError::from_reqwest(&e).is_refused(), "{e:?}");
    }

    /// The node's requests in flight are bounded (`max_in_flight`), and a place is held by the
    /// response until it is dropped: an answer whose body never ends keeps its place, the next
    /// request fails after its wait, and one is made again once the answer is dropped.
    #[tokio::test]
    async fn requests_in_flight_are_bounded_until_their_answers_are_dropped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                // headers and two bytes of a ten-byte body, then nothing
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
                    .await;
                held.push(s);
            }
        });
        let c = client(&OutboundConfig::default(), Mode::Sandbox).unwrap();
        let places = Arc::new(tokio::sync::Semaphore::new(1));
        TEST_PLACES
            .scope(places.clone(), async {
                let first = send(c.get(&url)).await.unwrap();
                assert_eq!(places.available_permits(), 0);
                let e = send(c.get(&url)).await.unwrap_err();
                assert!(e.to_string().contains("too many outbound requests"), "{e}");
                drop(first);
                assert_eq!(places.available_permits(), 1);
                let again = send(c.get(&url)).await.unwrap();
                assert_eq!(places.available_permits(), 0);
                drop(again);
            })
            .await;
    }

    /// Inside [`with_budget`] a task makes at most its budget of requests through [`send`]; the
    /// next are refused before any connection. Outside one, nothing is counted.
    #[tokio::test]
    async fn a_budget_bounds_the_requests_of_one_task() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = served.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                let _ = s.read(&mut [0u8; 2048]);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        let http = reqwest::Client::new();
        // two distinct URLs (eight requests in all): a third URL is refused, the same two are
        // not until eight requests were made
        let answers = with_budget(2, async {
            let mut answers = Vec::new();
            for path in ["a", "b", "c", "a", "b", "a", "b", "a", "b", "a"] {
                answers.push(send(http.get(format!("{url}{path}"))).await.map(|_| ()));
            }
            answers
        })
        .await;
        let refused: Vec<usize> = (0..answers.len())
            .filter(|i| matches!(answers[*i], Err(OutboundError::Refused(_))))
            .collect();
        assert_eq!(refused, [2, 9], "{answers:?}");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 8);
        assert!(send(http.get(&url)).await.is_ok());
    }

    /// Redirect hops are requests of the budget too: a chain of redirects cannot make one
    /// budgeted request into several.
    #[tokio::test]
    async fn redirect_hops_are_taken_from_the_budget() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = served.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let hop: u32 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/r"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 302 Found\r\nlocation: /r{}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        hop + 1
                    )
                    .as_bytes(),
                );
            }
        });
        let cfg = OutboundConfig {
            allow_private: AllowPrivate::Loopback,
            max_redirects: 5,
            ..OutboundConfig::default()
        };
        let http = build(&cfg, Mode::Sandbox, true).unwrap();
        let r = with_budget(3, send(http.get(format!("{base}/r0")))).await;
        assert!(
            matches!(&r, Err(OutboundError::Refused(m)) if m.contains("all the outbound requests")),
            "{r:?}"
        );
        // /r0, /r1, /r2 were fetched; the hop to /r3 was refused by the budget
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A route wrapped in [`budgeted`] (the wallet's exchange and status routes) runs its handler
    /// under one budget of [`REQUEST_BUDGET`] distinct URLs per request; the next request gets a
    /// fresh one.
    #[actix_web::test]
    async fn a_budgeted_route_has_one_budget_per_request() {
        use actix_web::{test, web, App, HttpResponse};
        async fn fan_out() -> HttpResponse {
            let http = reqwest::Client::new();
            let mut refused = 0;
            for i in 0..REQUEST_BUDGET + 6 {
                // port 9 (discard) on loopback: refused by the budget or by the connection
                let r = send(http.get(format!("http://127.0.0.1:9/{i}"))).await;
                if matches!(&r, Err(OutboundError::Refused(m)) if m.contains("all the outbound requests"))
                {
                    refused += 1;
                }
            }
            HttpResponse::Ok().body(refused.to_string())
        }
        let app = test::init_service(
            App::new().route(
                "/",
                web::get()
                    .to(fan_out)
                    .wrap(actix_web::middleware::from_fn(budgeted)),
            ),
        )
        .await;
        for _ in 0..2 {
            let body =
                test::call_and_read_body(&app, test::TestRequest::get().uri("/").to_request())
                    .await;
            assert_eq!(body, "6");
        }
    }
}
