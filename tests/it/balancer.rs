//! The round-robin balancer in front of the multi-node tests: a real nginx (Debian `nginx-light`,
//! installed by scripts/test.sh), as a deployment would run it — plain round robin per request
//! (no upstream keep-alive, so keep-alive clients still spread per request), WebSocket upgrades
//! passed through, and a node that refuses connections skipped (`proxy_next_upstream`, which also
//! re-sends a POST whose node died before answering, as a production proxy is configured to).
//! Backends can be replaced while it runs (a restarted node listens on a new port): a graceful
//! reload keeps the open WebSockets on the old worker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

pub struct Balancer {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    nginx: Mutex<Child>,
    /// Runs the shipped `deploy/balancers/nginx.conf` instead of the test configuration.
    shipped: bool,
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

fn nginx_bin() -> &'static str {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is not installed: scripts/test.sh installs it (apt-get install nginx-light)")
}

impl Balancer {
    pub async fn start(backends: Vec<String>) -> Balancer {
        Self::start_with(backends, false).await
    }

    /// nginx with the settings shipped for deployments (`deploy/balancers/nginx.conf`: short
    /// upstream timeouts, retries on the next node, passive health checks), on loopback.
    pub async fn start_shipped(backends: Vec<String>) -> Balancer {
        Self::start_with(backends, true).await
    }

    async fn start_with(backends: Vec<String>, shipped: bool) -> Balancer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        write(dir.path(), addr, &backends, shipped);
        let nginx = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(conf_path(dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lb = Balancer {
            addr,
            dir,
            nginx: Mutex::new(nginx),
            shipped,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return lb;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(lb.dir.path().join("error.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the backend list: new configuration, graceful reload.
    pub fn set_backends(&self, backends: Vec<String>) {
        write(self.dir.path(), self.addr, &backends, self.shipped);
        self.signal("reload");
        // the new workers take over within milliseconds; give them a moment
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Requests nginx passed to `backend` (by its base URL), from the access log.
    pub fn hits(&self, backend: &str) -> usize {
        let hp = host_port(backend);
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .flat_map(|l| l.split(", "))
            .filter(|u| u.trim() == hp)
            .count()
    }

    fn signal(&self, s: &str) {
        let st = Command::new(nginx_bin())
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(conf_path(self.dir.path()))
            .args(["-s", s])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success() || s == "stop", "nginx -s {s} failed");
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // `-s stop` lets the master take its workers down (a SIGKILLed master would orphan them)
        self.signal("stop");
        let mut child = self.nginx.lock().unwrap();
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn conf_path(dir: &Path) -> PathBuf {
    dir.join("nginx.conf")
}

fn write(dir: &Path, addr: SocketAddr, backends: &[String], shipped: bool) {
    if shipped {
        write_shipped_conf(dir, addr, backends)
    } else {
        write_conf(dir, addr, backends)
    }
}

/// `deploy/balancers/nginx.conf` as shipped, its example upstream servers replaced by
/// `backends` (same parameters) and its TLS listener by `addr`.
fn write_shipped_conf(dir: &Path, addr: SocketAddr, backends: &[String]) {
    let d = dir.display();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/balancers/nginx.conf"),
    )
    .unwrap();
    let mut body = String::new();
    let mut servers_done = false;
    for line in shipped.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("server 10.0.0.") {
            if !servers_done {
                let params = rest.split_once(' ').map(|(_, p)| p).unwrap_or(";");
                for b in backends {
                    body.push_str(&format!("    server {} {params}\n", host_port(b)));
                }
                servers_done = true;
            }
        } else if t.starts_with("listen 443 ssl;") {
            body.push_str(&format!("    listen {addr};\n"));
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    assert!(
        servers_done,
        "no example upstream servers in deploy/balancers/nginx.conf"
    );
    std::fs::write(dir.join("idstack.conf"), body).unwrap();
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        r#"{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  log_format upstream '$upstream_addr';
  access_log {d}/access.log upstream;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  include {d}/idstack.conf;
}}
"#
    );
    std::fs::write(conf_path(dir), conf).unwrap();
}

fn write_conf(dir: &Path, addr: SocketAddr, backends: &[String]) {
    let d = dir.display();
    let servers = if backends.is_empty() {
        // nginx needs one; nothing listens there (connections refused → 502)
        "    server 127.0.0.1:9 max_fails=1 fail_timeout=1s;\n".to_string()
    } else {
        backends
            .iter()
            .map(|b| format!("    server {} max_fails=1 fail_timeout=1s;\n", host_port(b)))
            .collect()
    };
    // the master re-reads the file on reload, as whoever started it; workers as root when root
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        r#"{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  log_format upstream '$upstream_addr';
  access_log {d}/access.log upstream;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream idstack {{
{servers}  }}
  server {{
    listen {addr};
    client_max_body_size 10m;
    location / {{
      proxy_pass http://idstack;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_connect_timeout 2s;
      proxy_read_timeout 300s;
      proxy_buffering off;
      proxy_next_upstream error timeout non_idempotent;
    }}
  }}
}}
"#
    );
    std::fs::write(conf_path(dir), conf).unwrap();
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}
