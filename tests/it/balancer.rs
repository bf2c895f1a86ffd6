//! An in-test HTTP/1.1 reverse proxy with per-request round robin, standing in for the load
//! balancer in front of stateless nodes. Each request (not each connection) goes to the next
//! backend; a backend that refuses the connection is skipped (as a balancer with passive health
//! checks does), WebSocket upgrades are passed through and then piped both ways, and responses
//! stream through (SSE works).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on a free 127.0.0.1 port and proxies to `backends` (`http://host:port`).
pub async fn start(backends: Vec<String>) -> Balancer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backends: Arc<Vec<String>> = Arc::new(
        backends
            .into_iter()
            .map(|b| {
                b.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (backends, next) = (backends.clone(), next.clone());
            tokio::spawn(async move {
                let _ = serve(conn, backends, next).await;
            });
        }
    });
    Balancer { addr, task }
}

type Io<T> = std::io::Result<T>;

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads an HTTP head (up to the blank line); `None` at a clean EOF before any byte.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Io<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(bad("eof in head"))
            };
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between requests
            }
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads the request body as framed by Content-Length or chunked encoding, returning its raw bytes.
async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, head: &[String]) -> Io<Vec<u8>> {
    if header(head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut raw = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            raw.extend_from_slice(line.as_bytes());
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("chunk size"))?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t).await?;
                    raw.extend_from_slice(t.as_bytes());
                    if t.trim_end_matches(['\r', '\n']).is_empty() {
                        return Ok(raw);
                    }
                }
            }
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk).await?;
            raw.extend_from_slice(&chunk);
        }
    }
    let len: usize = header(head, "content-length")
        .map(|v| v.parse().map_err(|_| bad("content-length")))
        .transpose()?
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn connect(backends: &[String], next: &AtomicUsize) -> Io<TcpStream> {
    let mut last = bad("no backends");
    for _ in 0..backends.len() {
        let i = next.fetch_add(1, Ordering::SeqCst) % backends.len();
        match TcpStream::connect(&backends[i]).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn serve(conn: TcpStream, backends: Arc<Vec<String>>, next: Arc<AtomicUsize>) -> Io<()> {
    let mut client = BufReader::new(conn);
    loop {
        let Some(head) = read_head(&mut client).await? else {
            return Ok(());
        };
        let upgrade = header(&head, "upgrade").is_some()
            && header(&head, "connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
        let body = if upgrade {
            Vec::new()
        } else {
            read_body(&mut client, &head).await?
        };
        let mut backend = match connect(&backends, &next).await {
            Ok(b) => b,
            Err(_) => {
                client
                    .get_mut()
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                    .await?;
                continue;
            }
        };
        // Forward the request; one backend connection per request (`connection: close`).
        let mut out = String::new();
        out.push_str(&head[0]);
        out.push_str("\r\n");
        for l in head.iter().skip(1) {
            let name = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !upgrade && (name == "connection" || name == "keep-alive") {
                continue;
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
        if !upgrade {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        backend.write_all(out.as_bytes()).await?;
        backend.write_all(&body).await?;
        if upgrade {
            // Hand over whatever the client already sent, then pipe both ways until either closes.
            let pending = client.buffer().to_vec();
            backend.write_all(&pending).await?;
            let mut client = client.into_inner();
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            return Ok(());
        }
        // Response: parse the head to know whether the client can keep the connection, then
        // stream the rest through until the backend closes (it was asked to).
        let mut resp = BufReader::new(backend);
        let Some(rhead) = read_head(&mut resp).await? else {
            client
                .get_mut()
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        };
        let framed = header(&rhead, "content-length").is_some()
            || header(&rhead, "transfer-encoding").is_some()
            || rhead[0].contains(" 204 ")
            || rhead[0].contains(" 304 ")
            || head[0].starts_with("HEAD ");
        let mut out = String::new();
        for l in &rhead {
            let name = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if name == "connection" || name == "keep-alive" {
                continue;
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
        if !framed {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        let w = client.get_mut();
        w.write_all(out.as_bytes()).await?;
        let pending = resp.buffer().to_vec();
        w.write_all(&pending).await?;
        let mut backend = resp.into_inner();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = backend.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).await?;
        }
        if !framed {
            return Ok(());
        }
    }
}
