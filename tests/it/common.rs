//! Test fixture: the real `idstack` binary on port 0 in a temp data dir, polled until ready and
//! stopped with SIGTERM (its exit status checked) at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idstack")
}

pub struct Server {
    pub child: Option<Child>,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

pub struct Builder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<tempfile::TempDir>,
    admin: bool,
    store: StoreChoice,
    bind: String,
    /// A command the server is started under (`ip netns exec <ns>`), empty for none.
    wrap: Vec<String>,
}

/// Which store a spawned server uses.
#[derive(Clone)]
enum StoreChoice {
    /// `IDSTACK_TEST_STORE=redis` → the shared test Redis with a prefix derived from the data dir
    /// (so a restart on the same dir sees its data, and no two test servers collide); else sled.
    FromEnv,
    Sled,
    /// This Redis URL and key prefix (multi-node and outage tests).
    Redis {
        url: String,
        prefix: String,
    },
}

/// Master key every Redis-backed test server shares (nodes of one deployment must).
pub const TEST_MASTER_KEY: &str =
    "0101010101010101010101010101010101010101010101010101010101010101";

/// `IDSTACK_TEST_STORE=redis`: every spawned server runs on Redis.
pub fn redis_mode() -> bool {
    std::env::var("IDSTACK_TEST_STORE").is_ok_and(|v| v == "redis")
}

/// The shared test Redis: `IDSTACK_TEST_REDIS_URL` (scripts/test.sh starts one), else a
/// redis-server started once per test process on a free port (stopped by a watchdog when the
/// test process exits).
pub fn redis_url() -> String {
    use std::sync::OnceLock;
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("IDSTACK_TEST_REDIS_URL") {
            if !u.is_empty() {
                return u;
            }
        }
        let r = RedisServer::start(false);
        let url = r.url();
        r.detach_with_watchdog();
        url
    })
    .clone()
}

/// A redis-server child on a free 127.0.0.1 port in its own temp dir.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// `persistent`: append-only file fsynced on every write, so a kill -9 loses nothing acknowledged.
    pub fn start(persistent: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            persistent,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and dir and waits until it answers PING.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--loglevel")
            .arg("warning");
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 7];
                if c.write_all(b"PING\r\n").is_ok()
                    && c.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Leaves the server running until this test process exits.
    fn detach_with_watchdog(mut self) {
        if let Some(c) = self.child.take() {
            let script = format!(
                "while kill -0 {} 2>/dev/null && kill -0 {} 2>/dev/null; do sleep 1; done; kill {} 2>/dev/null",
                std::process::id(),
                c.id(),
                c.id()
            );
            let _ = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            std::mem::forget(c);
        }
        // keep the dir for the server's lifetime
        std::mem::forget(std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().unwrap(),
        ));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Builder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Reuse a data dir (restart tests).
    pub fn dir(mut self, d: tempfile::TempDir) -> Self {
        self.dir = Some(d);
        self
    }
    /// Don't configure an admin token (sandbox generation tests).
    pub fn no_admin_token(mut self) -> Self {
        self.admin = false;
        self
    }
    /// Listen here instead of a port-0 address (nodes behind a balancer started before them).
    pub fn bind(mut self, addr: &str) -> Self {
        self.bind = addr.into();
        self
    }
    /// Start the server under this command (e.g. `ip netns exec <ns>`, which execs it: the
    /// child's pid is the server's).
    pub fn wrapped(mut self, cmd: &[&str]) -> Self {
        self.wrap = cmd.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Always sled, whatever `IDSTACK_TEST_STORE` says (tests of the embedded store itself).
    pub fn sled(mut self) -> Self {
        self.store = StoreChoice::Sled;
        self
    }
    /// This Redis and key prefix, whatever `IDSTACK_TEST_STORE` says.
    pub fn redis(mut self, url: &str, prefix: &str) -> Self {
        self.store = StoreChoice::Redis {
            url: url.into(),
            prefix: prefix.into(),
        };
        self
    }

    pub fn spawn(self) -> (Child, tempfile::TempDir, PathBuf, PathBuf) {
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let ready = dir.path().join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = dir
            .path()
            .join(format!("server-{}.log", std::process::id()));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.current_dir(dir.path())
            .arg("serve")
            .arg("--bind")
            .arg(&self.bind)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env("IDSTACK__LOG__FILTER", "info,sled=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf));
        for (k, _) in std::env::vars() {
            if k.starts_with("IDSTACK__") {
                cmd.env_remove(k);
            }
        }
        if self.admin {
            cmd.env("IDSTACK__ADMIN__TOKENS", ADMIN_TOKEN);
        }
        let redis = match &self.store {
            StoreChoice::Redis { url, prefix } => Some((url.clone(), prefix.clone())),
            StoreChoice::FromEnv if redis_mode() => {
                // The prefix follows the data dir: a restart on the same dir finds its data.
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&dir.path(), &mut h);
                let prefix = format!(
                    "it-{}-{:016x}",
                    std::process::id(),
                    std::hash::Hasher::finish(&h)
                );
                Some((redis_url(), prefix))
            }
            _ => None,
        };
        if let Some((url, prefix)) = redis {
            cmd.env("IDSTACK__STORE__BACKEND", "redis")
                .env("IDSTACK__STORE__REDIS__URL", url)
                .env("IDSTACK__STORE__REDIS__KEY_PREFIX", prefix)
                .env("IDSTACK__STORE__MASTER_KEY", TEST_MASTER_KEY);
        }
        // Every test client is 127.0.0.1: per-IP limits would throttle the functional and load
        // tests. tests/it/abuse_limits.rs turns them back on.
        cmd.env("IDSTACK__SERVER__RATE_LIMIT__ENABLED", "false");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn idstack");
        (child, dir, ready, log)
    }

    pub async fn start(self) -> Server {
        let (mut child, dir, ready, log) = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            if let Ok(body) = std::fs::read_to_string(&ready) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                    break format!("http://{}", v["http"].as_str().unwrap());
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "idstack exited early ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "idstack did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{base}/health/ready")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "idstack never became ready; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server {
            child: Some(child),
            base,
            dir,
            log,
        }
    }
}

impl Server {
    pub fn builder() -> Builder {
        Builder {
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            admin: true,
            store: StoreChoice::FromEnv,
            bind: "127.0.0.1:0".into(),
            wrap: Vec::new(),
        }
    }

    pub async fn start() -> Server {
        Self::builder().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The DID of the `default` issuer (what VC-API `issue` credentials name as `issuer`).
    pub async fn default_issuer_did(&self) -> String {
        let issuer: serde_json::Value = client()
            .get(self.url("/api/issuers/default"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        issuer["did"].as_str().unwrap().to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; asserts a clean exit. Returns the data dir for restarts.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "idstack did not exit cleanly: {status}\n{}",
                        self.log()
                    );
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("idstack did not stop after SIGTERM\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return;
        }
        self.terminate();
    }
}

pub fn client() -> reqwest::Client {
    // Tests block their runtime while a Node peer starts (seconds): a pooled connection idle
    // past the server's keep-alive must not be reused.
    reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Asserts an RFC 9457 problem with the given status and code; returns the body.
pub async fn expect_problem(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type {ct}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().unwrap().ends_with(code));
    assert!(body["title"].is_string());
    body
}

/// Runs the binary with arguments in `dir`, returning (status, stdout, stderr).
pub fn run_cli(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("IDSTACK__") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process speaking a line protocol: one JSON command per stdin line, one JSON answer
/// line on stdout (`idstack agent --stdio`, the credo-ts helpers).
pub(crate) struct LineChild {
    pub child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// The child's stderr, kept for the failure message when it stops answering.
    stderr: tempfile::NamedTempFile,
}

impl LineChild {
    pub(crate) fn spawn(mut cmd: std::process::Command) -> Self {
        use std::process::Stdio;
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr.reopen().unwrap()))
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Sends one command and reads its one answer line; a child that answers no JSON line fails
    /// the test with its exit status and the end of its stderr.
    pub(crate) fn ask(&mut self, cmd: &serde_json::Value) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let _ = writeln!(self.stdin, "{cmd}");
        let _ = self.stdin.flush();
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        serde_json::from_str(&line).unwrap_or_else(|e| {
            let status = self.child.try_wait().ok().flatten();
            let err = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
            let tail: String = err.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("not one JSON line ({e}) answering {cmd}: {line:?}; child exit: {status:?}; stderr ends:\n{tail}")
        })
    }

    /// Writes a line without waiting for an answer (a last `shutdown`).
    pub(crate) fn tell(&mut self, cmd: &serde_json::Value) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "{cmd}");
        let _ = self.stdin.flush();
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
