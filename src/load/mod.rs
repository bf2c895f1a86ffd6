//! `idstack load`: a load harness whose simulated holders are tokio tasks with their own keys, doing
//! the holder crypto themselves (proofs, key binding) through the same clients the wallet uses.

pub mod agent;
mod mdoc;
mod mediator;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::{oid4vci, oid4vp};
use crate::crypto::{KeyType, SigningKey};
use crate::dcql::CredentialView;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// GET /health/ready.
    Health,
    /// GET the default issuer's Token Status List (`/issuers/default/status-lists/token-1`) as an
    /// anonymous verifier would, without If-None-Match: what serving a list costs.
    StatusList,
    /// Full OpenID4VCI pre-authorized flow (offer via the admin API, token, nonce, proof, credential).
    Issue,
    /// OpenID4VP: session via the admin API, resolve the signed request, present an SD-JWT with key
    /// binding, poll the result.
    Verify,
    /// ISO 18013-5 mDL: each flow issues one over OpenID4VCI (ES256 device key) and presents it
    /// over OpenID4VP (DCQL `mso_mdoc`, a DeviceResponse over the SessionTranscript), then polls
    /// the result (sandbox issuer: `issuing_country` "UT").
    Mdoc,
    /// Wallet API: list credentials and accept an offer, per logged-in user.
    Wallet,
    /// Wallet API: log in (argon2id verification), per user with its own account and wallet.
    WalletLogin,
    /// Wallet API: list the credentials of the user's own wallet (one tenant per user: with more
    /// users than the coordinator's idle cache, tenant contexts are evicted and reopened).
    WalletList,
    /// DIDComm mediator: each user connects (out-of-band + DID exchange), gets mediation, registers
    /// a key, opens a WebSocket with pickup 2.0 live mode and holds it open for the duration.
    MediatorConnect,
    /// DIDComm mediator: trust ping with response over each user's WebSocket, in a loop.
    MediatorPing,
    /// DIDComm mediator: a sender forwards a message to each user's key over HTTP; the user receives
    /// it live on its WebSocket and acknowledges it (end-to-end latency per message).
    MediatorMessage,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of a node or of a balancer in front of a cluster.
    #[arg(long)]
    pub target: String,
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Concurrent simulated users.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// How long to run, e.g. 30s, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Cap on flows per second across all users (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Users started per second, as Locust's spawn rate (default: all at once). Each user still
    /// runs `--duration` after its setup, so the run lasts about users / spawn-rate + duration.
    #[arg(long)]
    pub spawn_rate: Option<f64>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Exit non-zero when errors / operations exceeds this.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,
    /// Admin token for creating offers and sessions.
    #[arg(long, env = "IDSTACK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.trim().len()),
    );
    let n: f64 = num.parse().map_err(|_| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in `{s}` (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Per-operation latency histograms (µs) and errors by kind.
#[derive(Default)]
struct Stats {
    ops: Mutex<BTreeMap<String, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Stats {
    fn record(&self, op: &str, took: Duration) {
        if let Ok(mut m) = self.ops.lock() {
            let h = m.entry(op.to_string()).or_insert_with(|| {
                Histogram::new_with_bounds(1, 120_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()))
            });
            let _ = h.record(took.as_micros().clamp(1, 120_000_000) as u64);
        }
    }
    fn error(&self, op: &str, kind: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(op.to_string())
                .or_default()
                .entry(kind)
                .or_default() += 1;
        }
    }
}

#[allow(clippy::unwrap_used)]
fn unreachable_hist() -> Histogram<u64> {
    Histogram::new(1).unwrap()
}

/// Times `f` as operation `op`; errors are counted by a short kind.
async fn timed<T, E: std::fmt::Display>(
    stats: &Stats,
    op: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    let t = Instant::now();
    match f.await {
        Ok(v) => {
            stats.record(op, t.elapsed());
            Some(v)
        }
        Err(e) => {
            stats.error(op, error_kind(&e.to_string()));
            None
        }
    }
}

/// The error kind an error is counted under: its text up to the first `{`, plus the `code` and
/// `detail` of a problem document (or OAuth `error` / `error_description`) in it, so two different
/// refusals never share a row and the row still says why; at most 200 characters.
fn error_kind(msg: &str) -> String {
    let (head, body) = match msg.find('{') {
        Some(i) => (&msg[..i], Some(&msg[i..])),
        None => (msg, None),
    };
    let mut kind = head.trim_end().to_string();
    if let Some(v) = body.and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok()) {
        let code = v["code"]
            .as_str()
            .or(v["error"].as_str())
            .unwrap_or_default();
        let detail = v["detail"]
            .as_str()
            .or(v["error_description"].as_str())
            .unwrap_or_default();
        kind = format!("{kind} {code}: {detail}");
    } else if let Some(b) = body {
        kind.push(' ');
        kind.push_str(b);
    }
    kind.chars().take(200).collect()
}

#[derive(Serialize)]
pub struct OpReport {
    pub operation: String,
    pub count: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub users: usize,
    pub duration_s: f64,
    pub flows: u64,
    pub flows_per_s: f64,
    pub failed: u64,
    pub error_rate: f64,
    pub operations: Vec<OpReport>,
}

struct Ctx {
    http: reqwest::Client,
    target: String,
    admin: Option<String>,
    stats: Stats,
}

impl Ctx {
    async fn admin_post(&self, path: &str, body: Value) -> Result<Value, String> {
        let token = self
            .admin
            .as_deref()
            .ok_or("this scenario needs --admin-token (or IDSTACK_ADMIN_TOKEN)")?;
        let r = self
            .http
            .post(format!("{}{path}", self.target))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| format!("POST {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("POST {path}: HTTP {status} {}", v["code"]));
        }
        Ok(v)
    }

    async fn offer(&self, config: &str) -> Result<String, String> {
        let claims =
            json!({"given_name": "Load", "family_name": "Tester", "email": "load@example.org"});
        self.offer_with(config, claims).await
    }

    /// An offer of `config` with `claims` (admin API); returns its URI.
    async fn offer_with(&self, config: &str, claims: Value) -> Result<String, String> {
        let v = self
            .admin_post(
                "/api/issuers/default/offers",
                json!({"credential_configuration_ids": [config], "claims": claims}),
            )
            .await?;
        v["offer_uri"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "offer without offer_uri".into())
    }
}

/// One OID4VCI flow; returns the credential.
async fn issue_flow(
    ctx: &Ctx,
    key: &SigningKey,
    config: &str,
    now: i64,
) -> Option<oid4vci::Received> {
    let offer = timed(&ctx.stats, "admin: create offer", ctx.offer(config)).await?;
    receive(ctx, key, config, &offer, now).await
}

/// Redeems `offer` for one `config` credential bound to `key`.
async fn receive(
    ctx: &Ctx,
    key: &SigningKey,
    config: &str,
    offer: &str,
    now: i64,
) -> Option<oid4vci::Received> {
    let s = &ctx.stats;
    let resolved = timed(
        s,
        "resolve offer + metadata",
        oid4vci::resolve_offer(&ctx.http, offer),
    )
    .await?;
    let token = timed(s, "token", oid4vci::token(&ctx.http, &resolved, None)).await?;
    let holder = oid4vci::Holder { key, kid: None };
    let mut got = timed(
        s,
        "nonce + proof + credential",
        oid4vci::credential(&ctx.http, &resolved, &token, config, &holder, now),
    )
    .await?;
    got.pop()
}

fn unix_now() -> i64 {
    crate::clock::Clock::now_secs(&crate::clock::SystemClock)
}

// Over 80 lines: one simulated holder's loop for every scenario, with per-operation timing.
async fn user_loop(
    ctx: Arc<Ctx>,
    scenario: Scenario,
    duration: Duration,
    pace: Option<Duration>,
    user: usize,
) {
    // an mdoc's device key is P-256
    let key = SigningKey::generate(if user % 2 == 0 || scenario == Scenario::Mdoc {
        KeyType::P256
    } else {
        KeyType::Ed25519
    });
    let s = &ctx.stats;
    // per-user setup
    let mut held: Option<String> = None;
    let mut wallet_auth: Option<WalletUser> = None;
    match scenario {
        Scenario::Verify => {
            held = issue_flow(&ctx, &key, "IdentityCredential_dc_sd_jwt", unix_now())
                .await
                .and_then(|r| r.credential.as_str().map(str::to_string))
        }
        Scenario::Wallet | Scenario::WalletLogin | Scenario::WalletList => {
            wallet_auth = wallet_setup(&ctx, user).await
        }
        Scenario::MediatorConnect | Scenario::MediatorPing | Scenario::MediatorMessage => {
            mediator::user(&ctx, scenario, duration, pace, user).await;
            return;
        }
        _ => {}
    }
    // The measured window starts after this user's setup (registration, first credential).
    let deadline = Instant::now() + duration;
    let mut next = first_tick(pace, user);
    while Instant::now() < deadline {
        pace_wait(pace, &mut next).await;
        let t = Instant::now();
        let ok = match scenario {
            Scenario::Health => get_ok(&ctx, "GET /health/ready", "/health/ready").await,
            Scenario::StatusList => {
                let list = "/issuers/default/status-lists/token-1";
                get_ok(&ctx, "GET status list", list).await
            }
            Scenario::Issue => issue_flow(
                &ctx,
                &key,
                if user % 2 == 0 {
                    "IdentityCredential_dc_sd_jwt"
                } else {
                    "IdentityCredential_jwt_vc_json"
                },
                unix_now(),
            )
            .await
            .is_some(),
            Scenario::Mdoc => mdoc::flow(&ctx, &key).await.is_some(),
            Scenario::Verify => match &held {
                Some(cred) => verify_flow(&ctx, &key, cred).await.is_some(),
                None => {
                    s.error("setup", "no credential to present".into());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    false
                }
            },
            Scenario::MediatorConnect | Scenario::MediatorPing | Scenario::MediatorMessage => false,
            Scenario::Wallet | Scenario::WalletLogin | Scenario::WalletList => match &wallet_auth {
                Some(u) => match scenario {
                    Scenario::WalletLogin => wallet_login(&ctx, &u.credentials).await.is_some(),
                    Scenario::WalletList => wallet_list(&ctx, u).await.is_some(),
                    _ => wallet_flow(&ctx, u).await.is_some(),
                },
                None => {
                    // setup failed (its error is counted): this user has nothing to run
                    s.error("setup", "no wallet session".into());
                    return;
                }
            },
        };
        if ok {
            s.record("full flow", t.elapsed());
            s.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One timed GET of `path` that must answer 2xx (its body read).
async fn get_ok(ctx: &Ctx, op: &'static str, path: &str) -> bool {
    timed(&ctx.stats, op, async {
        let r = ctx
            .http
            .get(format!("{}{path}", ctx.target))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("HTTP {}", r.status()));
        }
        r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .is_some()
}

async fn verify_flow(ctx: &Ctx, key: &SigningKey, credential: &str) -> Option<()> {
    let query = json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["given_name"]}]}]}});
    let held = oid4vp::Held {
        id: "c".into(),
        format: "dc+sd-jwt".into(),
        raw: credential.to_string(),
        view: CredentialView {
            format: "dc+sd-jwt".into(),
            root: json!({}),
            vct: None,
            doctype: None,
            types: vec![],
        },
        key,
        kid: None,
    };
    present_flow(ctx, query, "pid", &held, &["given_name".to_string()]).await
}

/// A verifier session asking `query` (admin API), the signed request resolved, `held`
/// presented disclosing `disclose` as the answer to credential query `query_id`, and the
/// result polled: verified or an error.
async fn present_flow(
    ctx: &Ctx,
    query: Value,
    query_id: &str,
    held: &oid4vp::Held<'_>,
    disclose: &[String],
) -> Option<()> {
    let s = &ctx.stats;
    let session = timed(
        s,
        "admin: create session",
        ctx.admin_post("/api/verifiers/default/sessions", query),
    )
    .await?;
    let uri = session["authorization_request"].as_str()?.to_string();
    let id = session["id"].as_str()?.to_string();
    let req = timed(
        s,
        "resolve request (signed)",
        oid4vp::resolve_request(&ctx.http, &uri, unix_now()),
    )
    .await?;
    let pres = match oid4vp::presentation(&req, held, disclose, unix_now()) {
        Ok(p) => p,
        Err(e) => {
            s.error("presentation", e.to_string());
            return None;
        }
    };
    timed(
        s,
        "direct_post (verify)",
        oid4vp::submit(&ctx.http, &req, json!({ query_id: [pres] }), None),
    )
    .await?;
    let result = timed(s, "admin: poll result", async {
        let token = ctx.admin.as_deref().ok_or("no admin token")?;
        let r = ctx
            .http
            .get(format!(
                "{}/api/verifiers/default/sessions/{id}",
                ctx.target
            ))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json::<Value>().await.map_err(|e| e.to_string())
    })
    .await?;
    if result["verified"] != true {
        s.error("result", format!("not verified: {}", result["policies"]));
        return None;
    }
    Some(())
}

/// When a paced user (`--rate`) sends its first request: spread over one pace interval (golden-ratio
/// offsets), so N users at rate R send a steady stream instead of N-request bursts every N/R s.
fn first_tick(pace: Option<Duration>, user: usize) -> Instant {
    let spread = (user as f64 * 0.618_033_988_75).fract();
    Instant::now() + pace.map_or(Duration::ZERO, |p| p.mul_f64(spread))
}

/// Waits for a paced user's next slot (`--rate`) and books the one after it; no-op without pace.
async fn pace_wait(pace: Option<Duration>, next: &mut Instant) {
    if let Some(p) = pace {
        if *next > Instant::now() {
            tokio::time::sleep_until((*next).into()).await;
        }
        *next += p;
    }
}

/// A registered wallet user with a session token and its own wallet (tenant).
struct WalletUser {
    credentials: Value,
    token: String,
    wallet: String,
}

async fn wallet_login(ctx: &Ctx, credentials: &Value) -> Option<String> {
    let login: Value = timed(&ctx.stats, "wallet: login", async {
        let r = ctx
            .http
            .post(format!("{}/wallet/auth/login", ctx.target))
            .json(credentials)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        r.json::<Value>().await.map_err(|e| e.to_string())
    })
    .await?;
    Some(login["token"].as_str()?.to_string())
}

async fn wallet_setup(ctx: &Ctx, user: usize) -> Option<WalletUser> {
    let s = &ctx.stats;
    let email = format!("load-{}-{user}@example.org", crate::clock::random_id());
    let credentials = json!({"email": email, "password": "load-test-password"});
    let http = &ctx.http;
    let t = &ctx.target;
    timed(s, "wallet: register", async {
        http.post(format!("{t}/wallet/auth/register"))
            .json(&credentials)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())
    })
    .await?;
    let token = wallet_login(ctx, &credentials).await?;
    let w: Value = timed(s, "wallet: create wallet", async {
        http.post(format!("{t}/wallet/wallets"))
            .bearer_auth(&token)
            .json(&json!({"name": "load"}))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json::<Value>()
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    Some(WalletUser {
        credentials,
        token,
        wallet: w["id"].as_str()?.to_string(),
    })
}

async fn wallet_list(ctx: &Ctx, u: &WalletUser) -> Option<()> {
    timed(&ctx.stats, "wallet: list credentials", async {
        ctx.http
            .get(format!(
                "{}/wallet/wallets/{}/credentials",
                ctx.target, u.wallet
            ))
            .bearer_auth(&u.token)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())
    })
    .await
    .map(drop)
}

async fn wallet_flow(ctx: &Ctx, u: &WalletUser) -> Option<()> {
    let s = &ctx.stats;
    let (http, t) = (&ctx.http, &ctx.target);
    let (token, wallet) = (&u.token, &u.wallet);
    wallet_list(ctx, u).await?;
    let offer = timed(
        s,
        "admin: create offer",
        ctx.offer("IdentityCredential_dc_sd_jwt"),
    )
    .await?;
    timed(s, "wallet: accept offer", async {
        let r = http
            .post(format!("{t}/wallet/wallets/{wallet}/exchange/accept-offer"))
            .bearer_auth(token)
            .json(&json!({"offer": offer}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", r.status()))
        }
    })
    .await?;
    Some(())
}

pub async fn run(args: LoadArgs) -> anyhow::Result<bool> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.users.max(8))
        .pool_idle_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(30))
        .build()?;
    let ctx = Arc::new(Ctx {
        http,
        target: args.target.trim_end_matches('/').to_string(),
        admin: args.admin_token.clone(),
        stats: Stats::default(),
    });
    let started = Instant::now();
    let pace = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(args.users as f64 / r));
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.duration.as_secs().max(1))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut handles = Vec::new();
    let spawn_every = args
        .spawn_rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    // Users started late by --spawn-rate run longer, so all of them overlap for --duration.
    let ramp = spawn_every.map_or(Duration::ZERO, |e| e * args.users as u32);
    for u in 0..args.users {
        let delay = spawn_every.map_or(Duration::ZERO, |e| e * u as u32);
        let ctx = ctx.clone();
        let (scenario, duration) = (args.scenario, args.duration + (ramp - delay));
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until((started + delay).into()).await;
            user_loop(ctx, scenario, duration, pace, u).await
        }));
    }
    let progress = {
        let ctx = ctx.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let done = ctx.stats.done.load(Ordering::Relaxed);
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!(
                    "{done} flows, {:.0}/s, {} errors",
                    done as f64 / secs,
                    ctx.stats.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };
    for h in handles {
        let _ = h.await;
    }
    progress.abort();
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let report = build_report(&ctx, &args, elapsed);
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if report.flows == 0 {
        eprintln!("no flow completed");
        return Ok(false);
    }
    Ok(report.error_rate <= args.max_error_rate)
}

fn build_report(ctx: &Ctx, args: &LoadArgs, elapsed: f64) -> Report {
    let ops = ctx.stats.ops.lock().map(|m| m.clone()).unwrap_or_default();
    let errors = ctx
        .stats
        .errors
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let mut names: Vec<String> = ops.keys().chain(errors.keys()).cloned().collect();
    names.sort();
    names.dedup();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let operations: Vec<OpReport> = names
        .into_iter()
        .map(|n| {
            let h = ops.get(&n);
            OpReport {
                count: h.map(|h| h.len()).unwrap_or(0),
                errors: errors.get(&n).cloned().unwrap_or_default(),
                throughput_per_s: h.map(|h| h.len() as f64 / elapsed).unwrap_or(0.0),
                p50_ms: h.map(|h| ms(h, 0.5)).unwrap_or(0.0),
                p90_ms: h.map(|h| ms(h, 0.9)).unwrap_or(0.0),
                p99_ms: h.map(|h| ms(h, 0.99)).unwrap_or(0.0),
                max_ms: h.map(|h| h.max() as f64 / 1000.0).unwrap_or(0.0),
                operation: n,
            }
        })
        .collect();
    let flows = ctx.stats.done.load(Ordering::Relaxed);
    let failed = ctx.stats.failed.load(Ordering::Relaxed);
    let total_ops: u64 = operations.iter().map(|o| o.count).sum::<u64>() + failed;
    Report {
        scenario: clap::ValueEnum::to_possible_value(&args.scenario)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default(),
        target: ctx.target.clone(),
        users: args.users,
        duration_s: elapsed,
        flows,
        flows_per_s: flows as f64 / elapsed,
        failed,
        error_rate: if total_ops == 0 {
            0.0
        } else {
            failed as f64 / total_ops as f64
        },
        operations,
    }
}

fn print_table(r: &Report) {
    println!(
        "scenario {} against {} — {} users, {:.1} s",
        r.scenario, r.target, r.users, r.duration_s
    );
    println!(
        "{:<32} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "operation", "count", "errors", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for o in &r.operations {
        let errs: u64 = o.errors.values().sum();
        println!(
            "{:<32} {:>8} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            o.operation, o.count, errs, o.throughput_per_s, o.p50_ms, o.p90_ms, o.p99_ms, o.max_ms
        );
        for (kind, n) in &o.errors {
            println!("    {n} × {kind}");
        }
    }
    println!(
        "flows: {} ({:.1}/s), failed operations: {}, error rate {:.4}",
        r.flows, r.flows_per_s, r.failed, r.error_rate
    );
}

#[cfg(test)]
mod tests {
    use super::error_kind;

    #[test]
    fn error_kinds_keep_the_problem_code_and_detail() {
        let k = error_kind(
            r#"mediator answered 400 Bad Request: {"type":"tag:idstack.dev,2026:problem:didcomm","code":"didcomm","status":400,"detail":"no connection for this sender key"}"#,
        );
        assert_eq!(
            k,
            "mediator answered 400 Bad Request: didcomm: no connection for this sender key"
        );
        let k = error_kind(
            r#"the other party answered HTTP 400: {"error":"invalid_nonce","error_description":"c_nonce is unknown"}"#,
        );
        assert_eq!(
            k,
            "the other party answered HTTP 400: invalid_nonce: c_nonce is unknown"
        );
        assert_eq!(error_kind("connection refused"), "connection refused");
        assert_eq!(error_kind(&"x".repeat(500)).len(), 200);
    }
}
