//! A real round-robin HTTP/1.1 reverse proxy for the cluster tests: every request goes to the next
//! backend (each client connection carries one request: the proxy asks the backend to close after
//! the response, so keep-alive clients still spread per request). A backend that refuses the
//! connection is skipped, like nginx's `proxy_next_upstream error`. `Upgrade` requests (the
//! mediator's WebSocket) are passed through as a tunnel.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<RwLock<Vec<String>>>,
    /// Requests sent to each backend (by its base URL).
    hits: Arc<RwLock<std::collections::HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

impl Balancer {
    pub async fn start(backends: Vec<String>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(RwLock::new(backends));
        let hits = Arc::new(RwLock::new(std::collections::HashMap::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let (b, h) = (backends.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (b, h, next) = (b.clone(), h.clone(), next.clone());
                tokio::spawn(async move {
                    let _ = proxy(conn, b, h, next).await;
                });
            }
        });
        Balancer {
            addr,
            backends,
            hits,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the backend list (a restarted node listens on a new port).
    pub fn set_backends(&self, backends: Vec<String>) {
        *self.backends.write().unwrap() = backends;
    }

    pub fn hits(&self, backend: &str) -> usize {
        self.hits.read().unwrap().get(backend).copied().unwrap_or(0)
    }
}

async fn proxy(
    mut client: TcpStream,
    backends: Arc<RwLock<Vec<String>>>,
    hits: Arc<RwLock<std::collections::HashMap<String, usize>>>,
    next: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    // read the request head
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            client
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<&str> = lines.collect();
    let upgrade = headers.iter().any(|h| {
        let l = h.to_ascii_lowercase();
        l.starts_with("upgrade:")
    });
    let mut out = format!("{request_line}\r\n");
    for h in &headers {
        let l = h.to_ascii_lowercase();
        if !upgrade
            && (l.starts_with("connection:")
                || l.starts_with("keep-alive:")
                || l.starts_with("proxy-connection:"))
        {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    if !upgrade {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");

    // pick the next backend that accepts the connection
    let list = backends.read().unwrap().clone();
    let mut backend = None;
    for _ in 0..list.len() {
        let i = next.fetch_add(1, Ordering::SeqCst) % list.len().max(1);
        let base = &list[i];
        if let Ok(s) = TcpStream::connect(host_port(base)).await {
            *hits.write().unwrap().entry(base.clone()).or_insert(0) += 1;
            backend = Some(s);
            break;
        }
    }
    let Some(mut backend) = backend else {
        client
            .write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            )
            .await?;
        return Ok(());
    };
    backend.write_all(out.as_bytes()).await?;
    backend.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut client, &mut backend).await?;
    Ok(())
}
