//! Configuration: built-in defaults → `config.toml` → `IDSTACK__SECTION__KEY` env → CLI flags.
//!
//! Two tiers, as in lldap/pict-rs: [`Config`] is the raw, serde-shaped document (unknown keys are an
//! error), [`Settings`] is the validated form the server runs on. Secrets are [`Secret`]s: they can
//! come from a `*_file` key instead of the value, and they are redacted whenever config is printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::role::{parse_role_list, Role};

pub const ENV_PREFIX: &str = "IDSTACK__";
pub const CONFIG_VERSION: u32 = 1;

/// A secret string: never printed, never logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(scalar_to_string(d)?))
    }
}

/// Env values like `123` arrive as numbers; string-typed keys accept any scalar.
fn scalar_to_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::U(u) => u.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// `url` with any `user:password@` part replaced, for logs and `config print`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}<credentials>{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

fn redacted_urls<S: serde::Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| redact_url(u)))
}

/// A list that may be written as a TOML array or, in env vars, as one comma-separated string.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<Secret>),
        One(Secret),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(v) => v.into_iter().map(|s| s.0).collect(),
        ListOrString::One(s) => {
            s.0.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        }
    })
}

fn opt_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    string_list(d).map(Some)
}

fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    Ok(string_list(d)?.into_iter().map(Secret).collect())
}

fn redact_list<S: Serializer>(v: &[Secret], s: S) -> Result<S::Ok, S::Error> {
    v.serialize(s)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub version: u32,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub issuer: IssuerConfig,
    pub verifier: VerifierConfig,
    pub wallet: WalletConfig,
    pub mediator: MediatorConfig,
    pub cluster: ClusterConfig,
    pub http: HttpConfig,
    pub jsonld: JsonLdConfig,
    pub metrics: MetricsConfig,
    pub x509: X509Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            server: ServerConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            admin: AdminConfig::default(),
            issuer: IssuerConfig::default(),
            verifier: VerifierConfig::default(),
            wallet: WalletConfig::default(),
            mediator: MediatorConfig::default(),
            cluster: ClusterConfig::default(),
            http: HttpConfig::default(),
            jsonld: JsonLdConfig::default(),
            x509: X509Config::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Generates what is missing (master key, admin token) on first start and says so loudly.
    Sandbox,
    /// Refuses to start without a configured master key; no admin token means the admin API is off.
    Production,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    pub public_url: String,
    #[serde(deserialize_with = "scalar_to_string")]
    pub roles: String,
    pub mode: Mode,
    pub body_limit_bytes: usize,
    pub shutdown_timeout_seconds: u64,
    pub workers: usize,
    /// Public URLs of other idstack deployments whose `<url>/contexts/credentials/v1` the JSON-LD
    /// loader resolves offline to the bundled idstack context (never fetched).
    pub trusted_context_origins: Vec<String>,
    /// A client must send a request head within this many ms: of connecting for its first
    /// request (else 408), of the head's first byte for later ones on a kept-alive connection
    /// (else the connection is closed).
    pub client_request_timeout_ms: u64,
    /// After the response, a closing connection gets this long to shut down cleanly, in ms.
    pub client_disconnect_timeout_ms: u64,
    /// The whole request body must arrive within this many ms of the head (slow bodies get 408).
    pub body_read_timeout_ms: u64,
    /// A connection whose client takes nothing of what the node writes (a response, a WebSocket
    /// frame) for this many ms is closed.
    pub write_stall_timeout_ms: u64,
    /// Readiness is 503 while an HTTP worker's event loop has not run for this many ms (a
    /// blocked handler); 0 = not checked.
    pub worker_stall_ms: u64,
    pub rate_limit: RateLimitConfig,
}

/// Per-client-IP request rates on unauthenticated, costly endpoints (`http::ratelimit`).
/// Each pair is a sustained rate per minute and a burst (the bucket size). Counted per node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed; nobody else's is.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    pub signup_per_minute: u32,
    pub signup_burst: u32,
    pub login_per_minute: u32,
    pub login_burst: u32,
    pub token_per_minute: u32,
    pub token_burst: u32,
    pub nonce_per_minute: u32,
    pub nonce_burst: u32,
    pub didcomm_per_minute: u32,
    pub didcomm_burst: u32,
    /// Frames received on the mediator's WebSockets (`GET /didcomm/ws`), pings included, per
    /// client address across all its sockets. Over the rate the sockets are not closed: the
    /// server stops reading them until the budget refills.
    pub didcomm_frame_per_minute: u32,
    pub didcomm_frame_burst: u32,
    /// The VC-API verification endpoints (`POST /vc-api/credentials/verify`,
    /// `/vc-api/presentations/verify`): open to anyone, and each call may fetch DID documents and
    /// status lists (up to 64 URLs).
    pub verify_per_minute: u32,
    pub verify_burst: u32,
    /// Mediator WebSockets one client address may hold open at once (per node).
    pub didcomm_sockets_per_address: u32,
    /// TCP connections one peer address (IPv4 address, IPv6 /64) may hold open to this node at
    /// once, its WebSockets included; further ones are closed as they are accepted. Trusted
    /// proxies are not counted. 0: twice `didcomm_sockets_per_address`, at least 512
    /// ([`RateLimitConfig::connections_cap`]).
    pub connections_per_address: u32,
    /// How many times a /64's budget (every rate above, and the WebSockets) one IPv6 /48 has in
    /// all; 0: no /48 tier.
    pub ipv6_wide_factor: u32,
}

impl RateLimitConfig {
    /// `(key, per_minute, burst)` of every endpoint group, in the order of `http::ratelimit::Endpoint`.
    /// Wrong admin or metrics tokens take the `login` numbers in a bucket of their own.
    pub fn rates(&self) -> [(&'static str, u32, u32); 8] {
        [
            ("signup", self.signup_per_minute, self.signup_burst),
            ("login", self.login_per_minute, self.login_burst),
            ("token", self.token_per_minute, self.token_burst),
            ("nonce", self.nonce_per_minute, self.nonce_burst),
            ("didcomm", self.didcomm_per_minute, self.didcomm_burst),
            (
                "didcomm_frame",
                self.didcomm_frame_per_minute,
                self.didcomm_frame_burst,
            ),
            ("login", self.login_per_minute, self.login_burst),
            ("verify", self.verify_per_minute, self.verify_burst),
        ]
    }

    /// The connections one address may hold: `connections_per_address`, or when 0 twice
    /// `didcomm_sockets_per_address` and at least 512.
    pub fn connections_cap(&self) -> u32 {
        match self.connections_per_address {
            0 => self.didcomm_sockets_per_address.saturating_mul(2).max(512),
            n => n,
        }
    }

    /// `trusted_proxies` parsed: each an IP address or a CIDR.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("rate_limit.trusted_proxies: `{p}` is not an IP address or CIDR")
                    })
            })
            .collect()
    }
}

impl ServerConfig {
    /// Checks the `server.*` limit settings.
    pub(crate) fn validate_limits(&self) -> Result<(), String> {
        for (key, per_minute, burst) in self.rate_limit.rates() {
            if per_minute == 0 || burst == 0 {
                return Err(format!(
                    "rate_limit.{key}_per_minute and rate_limit.{key}_burst must be at least 1 (set rate_limit.enabled = false to turn limits off)"
                ));
            }
        }
        if self.rate_limit.didcomm_sockets_per_address == 0 {
            return Err("rate_limit.didcomm_sockets_per_address must be at least 1 (set rate_limit.enabled = false to turn limits off)".into());
        }
        let connections = self.rate_limit.connections_per_address;
        if connections != 0 && connections <= self.rate_limit.didcomm_sockets_per_address {
            return Err("rate_limit.connections_per_address must be more than rate_limit.didcomm_sockets_per_address (a client's WebSockets are connections too), or 0 (twice that, at least 512)".into());
        }
        self.rate_limit.trusted_proxy_nets()?;
        if self.client_request_timeout_ms == 0
            || self.body_read_timeout_ms == 0
            || self.write_stall_timeout_ms == 0
        {
            return Err(
                "client_request_timeout_ms, body_read_timeout_ms and write_stall_timeout_ms must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: Vec::new(),
            signup_per_minute: 10,
            signup_burst: 10,
            login_per_minute: 60,
            login_burst: 20,
            token_per_minute: 600,
            token_burst: 100,
            nonce_per_minute: 600,
            nonce_burst: 100,
            didcomm_per_minute: 1200,
            didcomm_burst: 200,
            didcomm_frame_per_minute: 12_000,
            didcomm_frame_burst: 1000,
            verify_per_minute: 120,
            verify_burst: 30,
            didcomm_sockets_per_address: 256,
            connections_per_address: 0,
            ipv6_wide_factor: 16,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: String::new(),
            roles: "all".into(),
            mode: Mode::Sandbox,
            body_limit_bytes: 1024 * 1024,
            shutdown_timeout_seconds: 10,
            workers: 0,
            trusted_context_origins: Vec::new(),
            client_request_timeout_ms: 5_000,
            client_disconnect_timeout_ms: 2_000,
            body_read_timeout_ms: 10_000,
            write_stall_timeout_ms: 30_000,
            worker_stall_ms: 2000,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info,sled=warn".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub path: PathBuf,
    pub master_key: Secret,
    pub master_key_file: PathBuf,
    pub sweep_interval_seconds: u64,
    pub cache_capacity_bytes: u64,
    pub redis: RedisConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sled,
            path: PathBuf::from("./data"),
            master_key: Secret::default(),
            master_key_file: PathBuf::new(),
            sweep_interval_seconds: 30,
            cache_capacity_bytes: 64 * 1024 * 1024,
            redis: RedisConfig::default(),
        }
    }
}

/// Which engine holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded sled database under `store.path` (one node, or the built-in cluster).
    Sled,
    /// An external Redis / Valkey (single server or Redis Cluster); nodes are stateless.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One `redis://` / `rediss://` URL, or several: the seed nodes of a Redis Cluster. A
    /// password may be written inside (`redis://:pw@host`); `config print` shows it redacted.
    #[serde(deserialize_with = "string_list", serialize_with = "redacted_urls")]
    pub url: Vec<String>,
    /// Treat a single URL as a Redis Cluster seed (several URLs always mean cluster).
    pub cluster: bool,
    /// Every key is `{<key_prefix>}:...`; deployments sharing a Redis use distinct prefixes.
    #[serde(deserialize_with = "scalar_to_string")]
    pub key_prefix: String,
    /// Multiplexed connections per node (single-server mode).
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// Upper bound for one store operation; past it the request fails with 503.
    pub command_timeout_ms: u64,
    pub password: Secret,
    pub password_file: PathBuf,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            key_prefix: "idstack".into(),
            pool_size: 4,
            connect_timeout_ms: 1_000,
            command_timeout_ms: 2_000,
            password: Secret::default(),
            password_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(deserialize_with = "secret_list", serialize_with = "redact_list")]
    pub tokens: Vec<Secret>,
    pub tokens_file: PathBuf,
}

/// Longest offer lifetime the configuration may allow (a year).
pub const MAX_TTL_SECONDS: u64 = 365 * 86_400;

/// Longest verification session a request may ask for (a week).
pub const MAX_SESSION_TTL_SECONDS: u64 = 7 * 86_400;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    pub default_offer_ttl_seconds: u64,
    pub max_offer_ttl_seconds: u64,
    /// The redirect URIs the authorization endpoint answers to: exact URIs (for
    /// `http://127.0.0.1` and `http://[::1]` any port, RFC 8252), or `*` for any absolute URI
    /// without user-info (`http` only to loopback). Unset: `*` in sandbox mode, none in
    /// production mode (the authorization code grant is then off).
    #[serde(
        deserialize_with = "opt_string_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub redirect_uris: Option<Vec<String>>,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            default_offer_ttl_seconds: 600,
            max_offer_ttl_seconds: 7 * 24 * 3600,
            redirect_uris: None,
        }
    }
}

/// `[http]`: HTTP the server itself makes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub outbound: OutboundConfig,
}

/// Which non-public destinations outbound requests may reach (besides `http.outbound.allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowPrivate {
    /// Sandbox mode: loopback only; production mode: none.
    Auto,
    None,
    Loopback,
    /// Loopback, private, link-local, unique-local: everything (trusted networks only).
    All,
}

/// `[http.outbound]`: the guard of every server-side fetch (src/http/outbound.rs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    pub allow_private: AllowPrivate,
    /// Hosts, host:port, IPs, IP:port or CIDRs reachable even when not public.
    #[serde(deserialize_with = "string_list")]
    pub allow: Vec<String>,
    pub connect_timeout_seconds: u64,
    pub timeout_seconds: u64,
    pub max_redirects: usize,
    pub max_body_bytes: usize,
    pub did_document_max_bytes: usize,
    pub status_list_cache_bytes: usize,
    /// Requests this node makes at once, all callers together; the next waits up to 2 s for one
    /// to end, then fails as the other party's failure would.
    pub max_in_flight: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allow_private: AllowPrivate::Auto,
            allow: Vec::new(),
            connect_timeout_seconds: 5,
            timeout_seconds: 15,
            max_redirects: 5,
            max_body_bytes: 4 * 1024 * 1024,
            did_document_max_bytes: 256 * 1024,
            status_list_cache_bytes: 64 * 1024 * 1024,
            max_in_flight: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    pub default_session_ttl_seconds: u64,
    /// Where every verifier's trust in issuers comes from: its own `trusted_issuers`, or (`any`)
    /// every issuer whose binding and signature verify — for all verifiers, lists or not.
    pub trust: VerifierTrust,
    /// Production mode: fetch status lists over plain `http` too (default: `https` only; sandbox
    /// mode always allows `http`).
    pub status_lists_over_http: bool,
    /// A status list signed longer ago than this (its `iat`) fails the `status` policy, even
    /// before its `exp`: an old list replayed at its URI must not hide a revocation for long.
    /// 0: no maximum age (only `exp`).
    pub status_list_max_age_seconds: u64,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            default_session_ttl_seconds: 300,
            trust: VerifierTrust::Configured,
            status_lists_over_http: false,
            status_list_max_age_seconds: 86_400,
        }
    }
}

impl VerifierConfig {
    /// `status_list_max_age_seconds` as the verifier applies it (`None`: no maximum).
    pub fn status_max_age(&self) -> Option<i64> {
        match self.status_list_max_age_seconds {
            0 => None,
            s => Some(i64::try_from(s).unwrap_or(i64::MAX)),
        }
    }
}

/// `verifier.trust`: where a verifier's trust in issuers comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifierTrust {
    /// Each verifier's `trusted_issuers`; an empty list is this node's own issuers in sandbox
    /// mode and no one in production (such a verifier refuses to create sessions).
    Configured,
    /// Any issuer whose key binding and signature verify (logged at startup as a warning): for
    /// test suites and development only.
    Any,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalletConfig {
    pub max_open_sessions: usize,
    pub max_sessions_per_tenant: usize,
    pub acquire_timeout_ms: u64,
    /// Failed logins of one email before it is locked.
    pub login_lock_after: u32,
    /// First lock period in seconds; it doubles with each further failure.
    pub login_lock_seconds: u64,
    /// Longest lock period in seconds.
    pub login_lock_max_seconds: u64,
    /// Wallets one account may create and keep (shared ones do not count).
    pub max_wallets_per_account: usize,
}

impl Default for WalletConfig {
    fn default() -> Self {
        Self {
            max_open_sessions: 10_000,
            max_sessions_per_tenant: 64,
            acquire_timeout_ms: 5_000,
            max_wallets_per_account: 100,
            login_lock_after: 5,
            login_lock_seconds: 30,
            login_lock_max_seconds: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediatorConfig {
    pub label: String,
    pub max_message_bytes: usize,
    pub max_queue_per_recipient: usize,
    pub message_ttl_seconds: u64,
    pub flush_before_ack: bool,
    pub ws_ping_seconds: u64,
    pub ws_idle_timeout_seconds: u64,
    /// Seconds a message handed out over HTTP pickup waits for `messages-received` before it is
    /// offered again (socket deliveries are held until the socket closes).
    pub pickup_lease_seconds: u64,
    /// Most bytes queued for one connection (all its recipient keys together).
    pub max_queue_bytes_per_connection: u64,
    /// Most recipient keys one connection may register (coordinate-mediation keylist).
    pub max_keys_per_connection: u64,
    /// Most connections made through one invitation (the reusable public one included).
    pub max_connections_per_invitation: u64,
    /// Grant mediation only to connections made through a single-use invitation an admin created
    /// (`GET /api/mediator/invitation?single_use=true`), not the reusable public one.
    pub grant_requires_single_use_invitation: bool,
    /// Most WebSockets open on this node at once (all clients together).
    pub max_sockets: usize,
}

impl Default for MediatorConfig {
    fn default() -> Self {
        Self {
            label: "idstack mediator".into(),
            max_message_bytes: 256 * 1024,
            max_queue_per_recipient: 10_000,
            message_ttl_seconds: 14 * 24 * 3600,
            flush_before_ack: true,
            ws_ping_seconds: 20,
            ws_idle_timeout_seconds: 60,
            pickup_lease_seconds: 60,
            max_queue_bytes_per_connection: 64 * 1024 * 1024,
            max_keys_per_connection: 1_000,
            max_connections_per_invitation: 100_000,
            grant_requires_single_use_invitation: false,
            max_sockets: 20_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    pub node_id: String,
    pub id: String,
    pub gossip_addr: String,
    pub rpc_addr: String,
    #[serde(deserialize_with = "string_list")]
    pub seeds: Vec<String>,
    pub secret: Secret,
    pub secret_file: PathBuf,
    /// Host or IP other nodes use to reach this one when gossip_addr/rpc_addr bind 0.0.0.0.
    pub advertise_host: String,
    /// Copies of each write acknowledged before the client gets its answer (this node included); 0 = min(3, N).
    pub replication_factor: usize,
    /// A node with an empty data dir waits until this many members (itself included) are live before creating anything. 0 = every seed plus this node.
    pub bootstrap_expect: usize,
    /// Node ids retired for good: no longer counted among the configured nodes a majority is
    /// counted against (every node id this node has ever listed as a member is, otherwise).
    #[serde(deserialize_with = "string_list")]
    pub retired_nodes: Vec<String>,
    /// A node that has joined before waits this long for a live peer from its seeds before going on alone.
    pub join_timeout_seconds: u64,
    /// Gossip round interval in milliseconds (failure detection takes roughly 20 rounds).
    pub gossip_interval_ms: u64,
    /// Phi-accrual threshold above which a silent node is marked dead.
    pub phi_threshold: f64,
    /// Timeout of one internal RPC call in milliseconds.
    pub rpc_timeout_ms: u64,
    /// Seconds between anti-entropy rounds (digest exchange with every live peer).
    pub anti_entropy_interval_seconds: u64,
    /// How long a delete is remembered (tombstone) so a node that was down cannot resurrect the record.
    pub tombstone_ttl_seconds: u64,
    /// A gap this long (ms) between two heartbeats of a node (paused, stalled) makes it catch up again before acting as a primary.
    pub pause_threshold_ms: u64,
    /// Single-use transitions (codes, nonces, access-token use, verifier session results):
    /// `available` (any side of a partition may complete them) or `consistent` (a majority of the
    /// configured nodes must acknowledge them); `auto` = consistent with 3 or more nodes.
    pub single_use: Consistency,
    /// Every other update of an existing record (revocations and status lists, wallets,
    /// accounts, tenants, mediator connections): `available` (the key's primary applies it; two
    /// nodes that disagree on membership for a moment may both, and one update is lost) or
    /// `consistent` (prepared by a majority first, like single-use transitions); `auto` =
    /// consistent with 3 or more nodes.
    pub updates: Consistency,
}

/// `cluster.single_use` and `cluster.updates`: what a compare-and-swap needs (docs/cluster.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// `consistent` when there are 3 or more configured nodes (`bootstrap_expect`), else `available`.
    #[default]
    Auto,
    /// Applied by the key's primary wherever it is: both sides of a partition (or two nodes that
    /// briefly disagree on membership) may apply one.
    Available,
    /// Prepared by a majority of the configured nodes first; a minority side answers 503.
    Consistent,
}

impl Consistency {
    /// Resolved for a cluster of `configured` nodes.
    pub fn is_consistent(self, configured: usize) -> bool {
        match self {
            Self::Auto => configured >= 3,
            Self::Available => false,
            Self::Consistent => true,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            id: "idstack".into(),
            gossip_addr: "127.0.0.1:7946".into(),
            rpc_addr: String::new(),
            seeds: Vec::new(),
            secret: Secret::default(),
            secret_file: PathBuf::new(),
            advertise_host: String::new(),
            replication_factor: 0,
            bootstrap_expect: 0,
            retired_nodes: Vec::new(),
            join_timeout_seconds: 10,
            gossip_interval_ms: 250,
            phi_threshold: 8.0,
            rpc_timeout_ms: 2000,
            anti_entropy_interval_seconds: 10,
            tombstone_ttl_seconds: 7 * 24 * 3600,
            pause_threshold_ms: 2000,
            single_use: Consistency::Auto,
            updates: Consistency::Auto,
        }
    }
}

/// Highest `jsonld.max_recursion_depth` accepted.
pub const MAX_JSONLD_RECURSION: usize = 256;

/// Limits on verifying and signing Data Integrity (JSON-LD) credentials and presentations, whose RDF
/// canonicalization is exponential in the worst case (src/crypto/di.rs; docs/security.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonLdConfig {
    pub max_bytes: usize,
    pub max_blank_nodes: usize,
    pub max_work: u64,
    pub max_recursion_depth: usize,
    pub time_budget_ms: u64,
    pub max_concurrent: usize,
    pub queue_timeout_ms: u64,
}

impl Default for JsonLdConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024,
            max_blank_nodes: 1000,
            max_work: 20_000,
            max_recursion_depth: 32,
            time_budget_ms: 5_000,
            max_concurrent: 0,
            queue_timeout_ms: 2_000,
        }
    }
}

/// `GET /metrics` access.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Bearer token `/metrics` requires; empty = open. Secret.
    pub token: Secret,
    pub token_file: PathBuf,
}

/// X.509 trust for credentials whose issuer key comes with a certificate chain (`x5c`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct X509Config {
    /// PEM files of CA certificates trusted for both purposes below (an SD-JWT VC issuer's
    /// `x5c`, an mdoc's document signer). Prefer the two lists of one purpose each: an IACA
    /// listed here can also vouch for any `https` SD-JWT VC issuer.
    #[serde(deserialize_with = "string_list")]
    pub trust_anchors: Vec<String>,
    /// PEM files of CA certificates an SD-JWT VC issuer's `x5c` chain (with an `https` issuer)
    /// may end at, and nothing else.
    #[serde(deserialize_with = "string_list")]
    pub sd_jwt_anchors: Vec<String>,
    /// PEM files of IACA certificates an mdoc's document signer (and its status list's signer)
    /// must chain to, and nothing else.
    #[serde(deserialize_with = "string_list")]
    pub iaca_anchors: Vec<String>,
    /// Anchor files (of `trust_anchors` or `iaca_anchors`) whose IACAs vouch for these mdoc
    /// doc types only (exact, or a prefix ending in `*`); a file not named here vouches for any.
    pub iaca_doc_types: std::collections::BTreeMap<String, Vec<String>>,
}

impl X509Config {
    /// The anchor files of SD-JWT VC issuers: `trust_anchors` and `sd_jwt_anchors`.
    pub fn sd_jwt_files(&self) -> Vec<String> {
        [&self.trust_anchors[..], &self.sd_jwt_anchors[..]].concat()
    }
    /// The anchor files of mdoc document signers: `trust_anchors` and `iaca_anchors`.
    pub fn iaca_files(&self) -> Vec<String> {
        [&self.trust_anchors[..], &self.iaca_anchors[..]].concat()
    }
}

/// Where the config came from, for error messages.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Loads the layered configuration. `file` is the TOML file (a missing default `config.toml` is
/// fine; an explicitly named missing file is an error). `cli` holds CLI overrides as dotted keys.
pub fn load(file: Option<&Path>, cli: &[(&str, toml::Value)]) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    match file {
        Some(p) => {
            if !p.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    p.display()
                )));
            }
            check_inline_secrets(p)?;
            fig = fig.merge(Toml::file_exact(p));
        }
        None if Path::new("config.toml").exists() => {
            check_inline_secrets(Path::new("config.toml"))?;
            fig = fig.merge(Toml::file_exact("config.toml"))
        }
        None => {}
    }
    fig = fig.merge(env_provider(std::env::vars()));
    for (k, v) in cli {
        fig = fig.merge(Serialized::global(k, v.clone()));
    }
    let cfg: Config = fig.extract().map_err(Box::new)?;
    if cfg.version != CONFIG_VERSION {
        return Err(ConfigError::Invalid(format!(
            "config version {} is not supported (this build reads version {CONFIG_VERSION})",
            cfg.version
        )));
    }
    Ok(cfg)
}

/// `IDSTACK__SECTION__KEY` env vars, restricted to keys the schema knows; others are warned about.
fn env_provider(vars: impl Iterator<Item = (String, String)>) -> figment::providers::Env {
    let known = known_keys();
    let unknown: Vec<String> = vars
        .filter_map(|(k, _)| k.strip_prefix(ENV_PREFIX).map(|r| r.to_ascii_lowercase()))
        .map(|k| k.replace("__", "."))
        .filter(|k| !known.contains(k))
        .collect();
    for k in unknown {
        // Logging may not be set up yet; config problems go to stderr.
        eprintln!(
            "warning: ignoring unknown environment variable {ENV_PREFIX}{}",
            k.to_ascii_uppercase().replace('.', "__")
        );
    }
    Env::prefixed(ENV_PREFIX)
        .split("__")
        .filter(move |k| known.contains(&k.as_str().to_ascii_lowercase()))
}

/// Every dotted leaf key of the schema, derived from the defaults.
pub fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            // an empty map (e.g. x509.iaca_doc_types) is one key, set whole
            toml::Value::Table(t) if t.is_empty() && !prefix.is_empty() => {
                out.push(prefix.to_string())
            }
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = toml::Value::try_from(Config::default()) {
        walk("", &v, &mut out);
    }
    // keys unset by default (`None` is not in the defaults' TOML)
    out.extend(UNSET_BY_DEFAULT.iter().map(|k| k.to_string()));
    out
}

/// Keys whose default is "unset" (an `Option` field): known although the defaults do not show
/// them.
const UNSET_BY_DEFAULT: [&str; 1] = ["issuer.redirect_uris"];

/// The validated configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    pub bind: SocketAddr,
    pub roles: Vec<Role>,
    pub admin_tokens: Vec<Secret>,
    pub master_key: Option<Secret>,
    pub cluster_secret: Option<Secret>,
    /// `store.redis.password(_file)`, when set (a password in the URL also works).
    pub redis_password: Option<Secret>,
    /// `metrics.token(_file)`, when set: `/metrics` then wants it as a bearer token.
    pub metrics_token: Option<Secret>,
}

impl Config {
    /// Cross-field checks and secret resolution (`*_file` keys).
    // Over 80 lines: the cross-field checks of every section in one place, a flat list of
    // independent checks.
    pub fn finish(self) -> Result<Settings, ConfigError> {
        let bind: SocketAddr = self.server.bind.parse().map_err(|e| {
            ConfigError::Invalid(format!("server.bind `{}`: {e}", self.server.bind))
        })?;
        let roles = parse_role_list(&self.server.roles)
            .map_err(|e| ConfigError::Invalid(format!("server.roles: {e}")))?;
        if !self.server.public_url.is_empty() {
            let u = &self.server.public_url;
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "server.public_url `{u}` must start with http:// or https://"
                )));
            }
        }
        for u in &self.server.trusted_context_origins {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "server.trusted_context_origins: `{u}` must start with http:// or https://"
                )));
            }
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "server.body_limit_bytes must be at least 1024".into(),
            ));
        }
        self.server
            .validate_limits()
            .map_err(|e| ConfigError::Invalid(format!("server: {e}")))?;
        // lifetimes the issuer and verifier add to `now`: bounded, and a default a request
        // without one can be given (a default over the maximum refused every such request)
        let (offer_default, offer_max) = (
            self.issuer.default_offer_ttl_seconds,
            self.issuer.max_offer_ttl_seconds,
        );
        if offer_default == 0 || offer_default > offer_max || offer_max > MAX_TTL_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "issuer: 1 <= default_offer_ttl_seconds <= max_offer_ttl_seconds <= {MAX_TTL_SECONDS} is required"
            )));
        }
        if !(1..=MAX_SESSION_TTL_SECONDS).contains(&self.verifier.default_session_ttl_seconds) {
            return Err(ConfigError::Invalid(format!(
                "verifier.default_session_ttl_seconds must be 1..={MAX_SESSION_TTL_SECONDS}"
            )));
        }
        if self.wallet.login_lock_after == 0 || self.wallet.login_lock_seconds == 0 {
            return Err(ConfigError::Invalid(
                "wallet.login_lock_after and wallet.login_lock_seconds must be at least 1".into(),
            ));
        }
        let mut admin_tokens: Vec<Secret> = self
            .admin
            .tokens
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect();
        if !self.admin.tokens_file.as_os_str().is_empty() {
            let s = read_secret_file(&self.admin.tokens_file)?;
            admin_tokens.extend(
                s.expose()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(Secret::new),
            );
        }
        if admin_tokens.iter().any(|t| t.expose().len() < 16) {
            return Err(ConfigError::Invalid(
                "admin.tokens: every token must be at least 16 characters".into(),
            ));
        }
        let master_key = secret_from(
            &self.store.master_key,
            &self.store.master_key_file,
            "store.master_key",
        )?;
        let cluster_secret = secret_from(
            &self.cluster.secret,
            &self.cluster.secret_file,
            "cluster.secret",
        )?;
        if self.cluster.enabled {
            if !cfg!(feature = "cluster") {
                return Err(ConfigError::Invalid(
                    "cluster.enabled is set but this build has no `cluster` feature".into(),
                ));
            }
            match &cluster_secret {
                None => {
                    return Err(ConfigError::Invalid(
                        "cluster mode needs cluster.secret (or cluster.secret_file)".into(),
                    ))
                }
                Some(s) if s.expose().len() < 16 => {
                    return Err(ConfigError::Invalid(
                        "cluster.secret must be at least 16 characters".into(),
                    ))
                }
                Some(_) => {}
            }
            // Without store.master_key the master key is derived from cluster.secret: anyone who
            // guesses the secret offline (from a MAC'd gossip or RPC message seen on the wire, or
            // a copied store's canary) opens every sealed key; and the secret could never be
            // rotated without losing them.
            if self.server.mode == Mode::Production && master_key.is_none() {
                return Err(ConfigError::Invalid(
                    "production cluster mode needs store.master_key (or store.master_key_file), the same on every node: a master key derived from cluster.secret is only as strong as that secret (a cluster that ran on the derived key pins it: docs/cluster.md, 'Keys that must be equal on every node')".into(),
                ));
            }
            let c = &self.cluster;
            if c.gossip_interval_ms < 20 || c.rpc_timeout_ms < 50 || c.pause_threshold_ms < 100 {
                return Err(ConfigError::Invalid(
                    "cluster: gossip_interval_ms >= 20, rpc_timeout_ms >= 50 and pause_threshold_ms >= 100 are required".into(),
                ));
            }
            if c.phi_threshold.is_nan() || c.phi_threshold <= 0.0 {
                return Err(ConfigError::Invalid(
                    "cluster.phi_threshold must be positive".into(),
                ));
            }
        }
        let redis_password = secret_from(
            &self.store.redis.password,
            &self.store.redis.password_file,
            "store.redis.password",
        )?;
        if self.store.backend == StoreBackend::Redis {
            if self.cluster.enabled {
                // Redis already shares every record between nodes; the gossip cluster replicates
                // a node's own embedded store. Running both would replicate Redis into itself.
                return Err(ConfigError::Invalid(
                    "cluster.enabled and store.backend = \"redis\" exclude each other: Redis nodes are already stateless; use one or the other".into(),
                ));
            }
            validate_redis(&self.store.redis, master_key.is_some())?;
        }
        let metrics_token = secret_from(
            &self.metrics.token,
            &self.metrics.token_file,
            "metrics.token",
        )?;
        // The deploy manifests ship `REPLACE-with-...` placeholders of valid length: an operator
        // who replaces only some of them must not run with a published admin token or secret.
        let placeholders = admin_tokens
            .iter()
            .map(|t| ("admin.tokens", t))
            .chain(master_key.iter().map(|t| ("store.master_key", t)))
            .chain(cluster_secret.iter().map(|t| ("cluster.secret", t)))
            .chain(redis_password.iter().map(|t| ("store.redis.password", t)))
            .chain(metrics_token.iter().map(|t| ("metrics.token", t)));
        for (key, secret) in placeholders {
            if secret
                .expose()
                .trim()
                .to_ascii_lowercase()
                .starts_with("replace")
            {
                return Err(ConfigError::Invalid(format!(
                    "{key} is still the placeholder from the deploy manifests: set a random value (e.g. openssl rand -base64 32)"
                )));
            }
        }
        if metrics_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(ConfigError::Invalid(
                "metrics.token must be at least 16 characters".into(),
            ));
        }
        let j = &self.jsonld;
        if j.max_bytes == 0
            || j.max_blank_nodes == 0
            || j.max_work == 0
            || j.max_recursion_depth == 0
            || j.time_budget_ms == 0
            || j.queue_timeout_ms == 0
        {
            return Err(ConfigError::Invalid(
                "jsonld.*: every limit must be positive (max_concurrent 0 = one per CPU)".into(),
            ));
        }
        // the recursion runs on a JSON-LD thread's stack (crypto::di): a bound it can hold
        if j.max_recursion_depth > MAX_JSONLD_RECURSION {
            return Err(ConfigError::Invalid(format!(
                "jsonld.max_recursion_depth must be at most {MAX_JSONLD_RECURSION}"
            )));
        }
        Ok(Settings {
            raw: self,
            bind,
            roles,
            admin_tokens,
            master_key,
            cluster_secret,
            redis_password,
            metrics_token,
        })
    }

    /// TOML of the effective config with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Checks a Redis backend configuration: the build, the URLs, the prefix, and a shared master key.
fn validate_redis(r: &RedisConfig, has_master_key: bool) -> Result<(), ConfigError> {
    if !cfg!(feature = "redis") {
        return Err(ConfigError::Invalid(
            "store.backend = \"redis\" but this build has no `redis` feature".into(),
        ));
    }
    if r.url.is_empty() {
        return Err(ConfigError::Invalid(
            "store.redis.url is empty: give redis://host:port, rediss://host:port or the cluster nodes"
                .into(),
        ));
    }
    for u in &r.url {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            return Err(ConfigError::Invalid(format!(
                "store.redis.url `{}` must start with redis:// or rediss://",
                redact_url(u)
            )));
        }
    }
    if r.key_prefix.is_empty() || r.key_prefix.len() > 64 || r.key_prefix.contains(['{', '}', ' '])
    {
        return Err(ConfigError::Invalid(
            "store.redis.key_prefix must be 1-64 characters without braces or spaces".into(),
        ));
    }
    if r.pool_size == 0 || r.pool_size > 64 {
        return Err(ConfigError::Invalid(
            "store.redis.pool_size must be between 1 and 64".into(),
        ));
    }
    if r.command_timeout_ms == 0 || r.connect_timeout_ms == 0 {
        return Err(ConfigError::Invalid(
            "store.redis.command_timeout_ms and connect_timeout_ms must be positive".into(),
        ));
    }
    // Every node seals and opens the same records: a per-node generated key cannot work.
    if !has_master_key {
        return Err(ConfigError::Invalid(
            "store.backend = \"redis\" needs store.master_key or store.master_key_file, the same on every node (also in sandbox mode)".into(),
        ));
    }
    Ok(())
}

fn secret_from(value: &Secret, file: &Path, key: &str) -> Result<Option<Secret>, ConfigError> {
    match (value.is_empty(), file.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(value.clone())),
        (true, false) => read_secret_file(file).map(Some),
        (false, false) => Err(ConfigError::Invalid(format!(
            "{key} and {key}_file are both set; choose one"
        ))),
    }
}

/// The secrets a config file holds inline (their keys), read from its TOML: `admin.tokens`,
/// `store.master_key`, `cluster.secret`, `store.redis.password`, `metrics.token`, and a Redis URL
/// with a password in it. A file that is not TOML holds none here (figment reports it).
fn inline_secrets(text: &str) -> Vec<&'static str> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let at = |path: &[&str]| {
        let (last, tables) = path.split_last()?;
        let mut t = &doc;
        for k in tables {
            t = t.get(*k)?.as_table()?;
        }
        t.get(*last).cloned()
    };
    // (a secret may be written as a number or a boolean: `Secret` takes any scalar)
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => !s.is_empty(),
        toml::Value::Array(_) | toml::Value::Table(_) => false,
        _ => true,
    };
    let filled = |v: Option<toml::Value>| match v {
        Some(toml::Value::Array(a)) => a.iter().any(scalar),
        Some(v) => scalar(&v),
        None => false,
    };
    let mut out = Vec::new();
    for (key, path) in [
        ("admin.tokens", &["admin", "tokens"][..]),
        ("store.master_key", &["store", "master_key"]),
        ("cluster.secret", &["cluster", "secret"]),
        ("store.redis.password", &["store", "redis", "password"]),
        ("metrics.token", &["metrics", "token"]),
    ] {
        if filled(at(path)) {
            out.push(key);
        }
    }
    let urls = match at(&["store", "redis", "url"]) {
        Some(toml::Value::Array(a)) => a,
        Some(v) => vec![v],
        None => Vec::new(),
    };
    // redis://user:password@host (as `redact_url` finds the credentials)
    let with_password = |u: &str| match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => u[s + 3..at]
            .split_once(':')
            .is_some_and(|(_, p)| !p.is_empty()),
        _ => false,
    };
    if urls.iter().any(|u| u.as_str().is_some_and(with_password)) {
        out.push("store.redis.url");
    }
    out
}

/// Refuses a config file that holds secrets inline (`inline_secrets`) and that other users can
/// read, as a `*_file` secret with those permissions is refused (secrets review: only the
/// `*_file` keys were checked, so a world-readable config.toml with `admin.tokens` in it was
/// accepted). A file without secrets may be readable by anyone.
fn check_inline_secrets(path: &Path) -> Result<(), ConfigError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(()); // unreadable: figment reports it
    };
    let keys = inline_secrets(&text);
    if keys.is_empty() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError::Invalid(format!("config file {}: {e}", path.display())))?;
        if !private_to_this_process(&meta) {
            return Err(ConfigError::Invalid(format!(
                "config file {} holds secrets ({}) and is readable by others or by a group this process is not in; chmod 600 it, or move them to the *_file keys",
                path.display(),
                keys.join(", ")
            )));
        }
    }
    Ok(())
}

/// Whether a file's mode keeps it from other users: group-readable is fine when the group is this
/// process's own (Kubernetes makes a secret 0440 with the pod's fsGroup, whatever defaultMode
/// says; a root-owned 0640 file of the service's group is the same), never group-writable or for
/// others.
#[cfg(unix)]
fn private_to_this_process(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode();
    let own_group_reads = mode & 0o037 == 0 && process_groups().contains(&meta.gid());
    mode & 0o077 == 0 || own_group_reads
}

/// Reads a secret file, refusing one that other users can read.
pub fn read_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    #[cfg(unix)]
    {
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError::Invalid(format!("secret file {}: {e}", path.display())))?;
        if !private_to_this_process(&meta) {
            return Err(ConfigError::Invalid(format!(
                "secret file {} is readable by others or by a group this process is not in; chmod 600 it",
                path.display()
            )));
        }
    }
    let s = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("secret file {}: {e}", path.display())))?;
    Ok(Secret::new(s.trim_end_matches(['\n', '\r']).to_string()))
}

/// The ids a `/proc/self/status` line lists (`Uid:`, `Gid:`, `Groups:`), in order: for
/// `Uid:`/`Gid:` real, effective, saved, filesystem. Empty where there is no such file (not
/// Linux): callers then refuse what they would have allowed.
#[cfg(unix)]
pub(crate) fn process_ids(field: &str) -> Vec<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(|ids| {
                    ids.split_whitespace()
                        .filter_map(|i| i.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// The groups this process runs with (effective and supplementary); none off Linux, so a
/// group-readable secret file is refused there.
#[cfg(unix)]
fn process_groups() -> Vec<u32> {
    let mut out: Vec<u32> = process_ids("Gid:").get(1).copied().into_iter().collect();
    out.extend(process_ids("Groups:"));
    out
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_bad_key() {
        let mut s = ServerConfig::default();
        assert!(s.validate_limits().is_ok());
        s.rate_limit.token_burst = 0;
        assert!(s.validate_limits().unwrap_err().contains("token"));
        let mut s = ServerConfig::default();
        s.rate_limit.trusted_proxies = vec!["10.0.0.0/33".into()];
        assert!(s.validate_limits().unwrap_err().contains("10.0.0.0/33"));
    }

    fn with_file(body: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), body).unwrap();
        f
    }

    /// `load` inside a figment Jail: a private cwd holding `config.toml` and a private env.
    fn extract(
        toml_body: &str,
        env: &[(&str, &str)],
        cli: &[(&str, toml::Value)],
    ) -> Result<Config, String> {
        let mut out = Err("jail did not run".to_string());
        figment::Jail::expect_with(|jail| {
            jail.create_file("config.toml", toml_body)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = load(None, cli).map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    #[test]
    fn defaults_then_file_then_env_then_cli() {
        let c = extract(
            "[server]\nbind = \"127.0.0.1:9000\"\nroles = \"issuer\"\n[store]\npath = \"/tmp/x\"\n",
            &[
                ("IDSTACK__SERVER__BIND", "127.0.0.1:9100"),
                ("IDSTACK__LOG__FORMAT", "json"),
            ],
            &[("server.bind", toml::Value::String("127.0.0.1:9200".into()))],
        )
        .unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:9200"); // CLI wins
        assert_eq!(c.log.format, LogFormat::Json); // env over default
        assert_eq!(c.store.path, PathBuf::from("/tmp/x")); // file over default
        assert_eq!(c.server.roles, "issuer");
        assert_eq!(c.server.body_limit_bytes, 1024 * 1024); // default
    }

    /// `x509.iaca_doc_types` in both forms config.toml documents: a table keyed by file, and
    /// the env form (a dict literal).
    #[test]
    fn iaca_doc_types_from_file_and_env() {
        let c = extract(
            "[x509.iaca_doc_types]\n\"/etc/a.pem\" = [\"org.iso.18013.5.1.mDL\"]\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.x509.iaca_doc_types.get("/etc/a.pem").unwrap(),
            &["org.iso.18013.5.1.mDL".to_string()]
        );
        let c = extract(
            "",
            &[(
                "IDSTACK__X509__IACA_DOC_TYPES",
                r#"{"/etc/b.pem"=["eu.europa.ec.eudi.pid.*", "x.y"]}"#,
            )],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.x509.iaca_doc_types.get("/etc/b.pem").unwrap(),
            &["eu.europa.ec.eudi.pid.*".to_string(), "x.y".to_string()]
        );
    }

    #[test]
    fn env_lists_are_comma_separated_and_numbers_are_strings() {
        let c = extract(
            "",
            &[
                (
                    "IDSTACK__ADMIN__TOKENS",
                    "aaaaaaaaaaaaaaaa1,bbbbbbbbbbbbbbbb2",
                ),
                ("IDSTACK__CLUSTER__SECRET", "12345"),
                ("IDSTACK__SERVER__ROLES", "issuer,verifier"),
                ("IDSTACK__NOT__A_KEY", "x"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.admin.tokens.len(), 2);
        assert_eq!(c.admin.tokens[1].expose(), "bbbbbbbbbbbbbbbb2");
        assert_eq!(c.cluster.secret.expose(), "12345");
        assert_eq!(c.server.roles, "issuer,verifier");
    }

    #[test]
    fn unknown_file_keys_are_an_error() {
        let f = with_file("[server]\nbindd = \"x\"\n");
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(e.contains("bindd"), "{e}");
        let f = with_file("[nosuchsection]\na = 1\n");
        assert!(load(Some(f.path()), &[]).is_err());
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let mut c = Config::default();
        c.admin.tokens = vec![Secret::new("super-secret-token-123")];
        c.store.master_key = Secret::new("another-secret");
        let out = c.to_redacted_toml();
        assert!(!out.contains("super-secret"), "{out}");
        assert!(!out.contains("another-secret"), "{out}");
        assert!(out.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("super-secret"));
    }

    #[test]
    fn a_config_file_with_secrets_in_it_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            inline_secrets("[server]\nbind = \"127.0.0.1:1\"\n[admin]\ntokens = []\n").is_empty()
        );
        assert_eq!(
            inline_secrets(
                "[admin]\ntokens = [\"tok-0123456789abcdef\"]\n[metrics]\ntoken = \"\"\n"
            ),
            vec!["admin.tokens"]
        );
        assert_eq!(
            inline_secrets("[store.redis]\nurl = [\"redis://:pw@h:6379\", \"redis://u@h\"]\n[cluster]\nsecret = \"s\"\n"),
            vec!["cluster.secret", "store.redis.url"]
        );
        assert!(inline_secrets("[store.redis]\nurl = [\"redis://u@h:6379\"]\n").is_empty());
        assert_eq!(
            inline_secrets(
                "[cluster]\nsecret = 1234567890123456\n[admin]\ntokens = [12345678901234567]\n"
            ),
            vec!["admin.tokens", "cluster.secret"]
        );
        let f = with_file("[store]\nmaster_key = \"00112233445566778899aabbccddeeff\"\n");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(
            e.contains("store.master_key") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(Some(f.path()), &[]).is_ok());
        // no secrets in it: anyone may read it
        let f = with_file("[server]\nmode = \"sandbox\"\n");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(Some(f.path()), &[]).is_ok());
    }

    #[test]
    fn secret_files_are_read_and_loose_permissions_refused() {
        use std::os::unix::fs::PermissionsExt;
        let f = with_file("tok-from-file-0123456789\n");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = Config::default();
        c.admin.tokens_file = f.path().to_path_buf();
        let s = c.clone().finish().unwrap();
        assert_eq!(s.admin_tokens[0].expose(), "tok-from-file-0123456789");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(c.clone().finish().is_err());
        // readable by this process's own group (Kubernetes: 0440 with the pod's fsGroup)
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o440)).unwrap();
        assert!(c.clone().finish().is_ok(), "our own group may read it");
        for loose in [0o460, 0o640 | 0o004, 0o444] {
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(loose)).unwrap();
            assert!(c.clone().finish().is_err(), "{loose:o}");
        }
    }

    /// Production cluster mode needs its own master key (sealing review): derived from
    /// cluster.secret, it was only as strong as a secret whose MACs cross the network.
    #[test]
    fn production_cluster_mode_needs_a_master_key() {
        let mut c = Config::default();
        c.cluster.enabled = true;
        c.cluster.secret = Secret::new("a-cluster-secret-of-some-length");
        c.server.mode = Mode::Production;
        c.admin.tokens = vec![Secret::new("an-admin-token-0123456789")];
        if cfg!(feature = "cluster") {
            let e = c.clone().finish().unwrap_err().to_string();
            assert!(e.contains("store.master_key"), "{e}");
        }
        c.store.master_key = Secret::new("k".repeat(44));
        if let Err(e) = c.finish() {
            assert!(!e.to_string().contains("master_key"), "{e}");
        }
    }

    /// Lifetimes are bounded and a default can be given: a default over the maximum refused
    /// every offer that named none, and a huge maximum wrapped `now + ttl` (attacker review).
    #[test]
    fn lifetimes_are_bounded_and_defaults_within_them() {
        assert!(Config::default().finish().is_ok());
        for (default, max) in [
            (0, 600),
            (700, 600),
            (600, MAX_TTL_SECONDS + 1),
            (1, u64::MAX),
        ] {
            let mut c = Config::default();
            c.issuer.default_offer_ttl_seconds = default;
            c.issuer.max_offer_ttl_seconds = max;
            let e = c.finish().unwrap_err().to_string();
            assert!(e.contains("max_offer_ttl_seconds"), "{default} {max}: {e}");
        }
        for ttl in [0, MAX_SESSION_TTL_SECONDS + 1] {
            let mut c = Config::default();
            c.verifier.default_session_ttl_seconds = ttl;
            let e = c.finish().unwrap_err().to_string();
            assert!(e.contains("default_session_ttl_seconds"), "{ttl}: {e}");
        }
    }

    #[test]
    fn finish_validates_cross_fields() {
        let mut c = Config::default();
        c.server.bind = "not-an-addr".into();
        assert!(c.finish().is_err());
        let mut c = Config::default();
        c.store.master_key = Secret::new("x");
        c.store.master_key_file = PathBuf::from("/nonexistent");
        assert!(c.finish().unwrap_err().to_string().contains("both set"));
        let mut c = Config::default();
        c.admin.tokens = vec![Secret::new("short")];
        assert!(c.finish().is_err());
        // a canonicalization recursion the JSON-LD threads' stack could not hold
        let mut c = Config::default();
        c.jsonld.max_recursion_depth = MAX_JSONLD_RECURSION + 1;
        assert!(c.finish().unwrap_err().to_string().contains("at most"));
        let mut c = Config::default();
        c.jsonld.max_recursion_depth = MAX_JSONLD_RECURSION;
        assert!(c.finish().is_ok());
    }

    #[test]
    fn redis_backend_is_validated() {
        let mut c = Config::default();
        c.store.backend = StoreBackend::Redis;
        let e = c.clone().finish().unwrap_err().to_string();
        if cfg!(feature = "redis") {
            assert!(e.contains("master_key"), "{e}");
            c.store.master_key = Secret::new("k");
            c.clone().finish().unwrap();
            c.store.redis.url = vec!["http://x".into()];
            assert!(c.clone().finish().is_err());
            c.store.redis.url = vec![];
            assert!(c.clone().finish().is_err());
            c.store.redis.url = vec!["redis://a:1".into()];
            c.store.redis.key_prefix = "a{b}".into();
            assert!(c.finish().is_err());
        } else {
            assert!(e.contains("redis"), "{e}");
        }
    }

    #[test]
    fn redis_settings_come_from_env() {
        let c = extract(
            "",
            &[
                ("IDSTACK__STORE__BACKEND", "redis"),
                (
                    "IDSTACK__STORE__REDIS__URL",
                    "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
                ),
                ("IDSTACK__STORE__REDIS__KEY_PREFIX", "prod1"),
                ("IDSTACK__STORE__REDIS__PASSWORD", "pw-123"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Redis);
        assert_eq!(c.store.redis.url.len(), 2);
        assert_eq!(c.store.redis.key_prefix, "prod1");
        assert_eq!(c.store.redis.password.expose(), "pw-123");
        assert!(!c.to_redacted_toml().contains("pw-123"));
    }

    #[test]
    fn placeholder_secrets_are_refused() {
        let mut c = Config::default();
        c.admin.tokens = vec![Secret::new("REPLACE-with-a-long-random-token")];
        let Err(e) = c.finish() else {
            panic!("a placeholder admin token is refused")
        };
        assert!(e.to_string().contains("admin.tokens"), "{e}");
        let mut c = Config::default();
        c.admin.tokens = vec![Secret::new("a-real-random-token-0123")];
        assert!(c.finish().is_ok());
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("redis://user:secret@h:1/0"),
            "redis://<credentials>@h:1/0"
        );
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let mut c = Config::default();
        c.store.redis.url = vec!["redis://:url-pw-456@h:6379".into()];
        let out = c.to_redacted_toml();
        assert!(!out.contains("url-pw-456"), "{out}");
        assert!(out.contains("redis://<credentials>@h:6379"), "{out}");
    }

    #[test]
    fn repo_config_toml_has_every_key_and_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let body = std::fs::read_to_string(&path).unwrap();
        let parsed: Config = toml::from_str(&body).unwrap();
        assert_eq!(parsed.version, CONFIG_VERSION);
        let table: toml::Value = toml::from_str(&body).unwrap();
        for key in known_keys() {
            if UNSET_BY_DEFAULT.contains(&key.as_str()) {
                // shown commented out, with an example value
                let leaf = key.rsplit('.').next().unwrap();
                assert!(
                    body.lines()
                        .any(|l| l.trim_start().starts_with(&format!("# {leaf} ="))),
                    "config.toml lacks a commented-out `{key}`"
                );
                continue;
            }
            let mut v = &table;
            for part in key.split('.') {
                v = v
                    .get(part)
                    .unwrap_or_else(|| panic!("config.toml lacks `{key}`"));
            }
            // every key is preceded by a comment line
            let leaf = key.rsplit('.').next().unwrap();
            let lines: Vec<&str> = body.lines().collect();
            let idx = lines
                .iter()
                .position(|l| l.trim_start().starts_with(&format!("{leaf} =")))
                .unwrap_or_else(|| panic!("no line for `{key}`"));
            assert!(
                idx > 0 && lines[idx - 1].trim_start().starts_with('#'),
                "`{key}` has no comment above it"
            );
        }
    }
}
