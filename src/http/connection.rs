//! What one TCP connection to the public listener may hold, below HTTP: actix bounds the first
//! request head of a connection (`client_request_timeout`) and idle time between requests
//! (keep-alive, which also ends a partial head left behind a pipelined request), but not a
//! later head sent a byte at a time, nor a client that stops reading what the node writes (a
//! response, a WebSocket's frames), nor how many connections one address holds. Each accepted connection is therefore wrapped in a
//! [`Guarded`] stream:
//!
//! - **per address**: at most `server.rate_limit.connections_per_address` open connections per
//!   IPv4 address or IPv6 /64 (the /48 `ipv6_wide_factor` times that); further ones are closed as
//!   they are accepted ([`RateLimits::open_connection`]; trusted proxies are not counted);
//! - **later heads**: a head whose first byte arrives while no request is with the app must reach
//!   the app within `server.client_request_timeout_ms`; not after a WebSocket handshake;
//! - **write stalls**: a write that makes no progress for `server.write_stall_timeout_ms` closes
//!   the connection.
//!
//! The stream knows nothing of HTTP framing: [`mark_request`] (the outermost middleware) tells it
//! when a head reached the app and when its response ended. Bytes read while a request is with
//! the app (its body, under `body_deadline`, or a request pipelined behind it, which actix reads
//! after the response and times with its keep-alive) are not timed as a head: a pipelining client
//! is not cut off while a long response streams. Each close is counted in
//! `idstack_http_connections_closed_total{reason}`.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::http::ratelimit::{HeldSlot, RateLimits};

/// What the app tells a connection's stream: shared by [`Guarded`] and the connection's
/// extensions (`conn_data`), where [`mark_request`] finds it.
#[derive(Debug, Default)]
pub struct ConnWatch {
    /// Request heads the app has received on this connection.
    heads: AtomicU64,
    /// Of those, the ones whose response has ended (its body written, or dropped).
    finished: AtomicU64,
    /// A WebSocket handshake was answered (101): what follows is no HTTP request.
    upgraded: AtomicBool,
}

/// The outermost middleware: counts the request's head and the end of its response on its
/// connection's [`ConnWatch`], and marks the connection upgraded when the answer is 101. A
/// request without a watch (the unit tests' service calls) passes untouched.
pub async fn mark_request(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(watch) = req.conn_data::<Arc<ConnWatch>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    watch.heads.fetch_add(1, Ordering::Release);
    match next.call(req).await {
        Ok(res) => {
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                watch.upgraded.store(true, Ordering::Release);
            }
            Ok(res.map_body(|_, body| {
                BoxBody::new(Watched {
                    body: body.boxed(),
                    watch: Some(watch),
                })
            }))
        }
        Err(e) => {
            // actix renders the error into a small response of its own right away
            watch.finished.fetch_add(1, Ordering::Release);
            Err(e)
        }
    }
}

/// A response body that counts its response as ended when it is dropped (written whole, or the
/// connection gone).
struct Watched {
    body: BoxBody,
    watch: Option<Arc<ConnWatch>>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.finished.fetch_add(1, Ordering::Release);
        }
    }
}

impl MessageBody for Watched {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// The timeouts of [`Guarded`] streams.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A later request's head, from its first byte (`client_request_timeout_ms`).
    pub head: Duration,
    /// A write that makes no progress (`write_stall_timeout_ms`).
    pub write_stall: Duration,
}

/// A deadline for a request head: met once the app has received more than `after` heads.
#[derive(Debug, Clone, Copy)]
struct HeadDeadline {
    after: u64,
    at: Instant,
}

/// A TCP connection of the public listener with the bounds of the module doc.
pub struct Guarded {
    io: TcpStream,
    watch: Arc<ConnWatch>,
    timeouts: Timeouts,
    /// A WebSocket handshake was answered: what follows is no request (and no head is timed).
    upgraded: bool,
    /// The head whose first byte was read while no request was with the app.
    head: Option<HeadDeadline>,
    /// When a write pending since then fails.
    stall_deadline: Option<Instant>,
    /// Fires at the earliest deadline (and wakes the connection's task then).
    timer: Pin<Box<Sleep>>,
    /// Closes counted here, by reason (`None` in tests without metrics).
    closed: Option<IntCounterVec>,
    /// A deadline has passed (counted once).
    timed_out: bool,
    /// The connection's place among its address's ([`RateLimits::open_connection`]).
    _slot: HeldSlot,
}

impl Guarded {
    /// Admits a connection from `peer` (`Err(max)`: its address holds `max` already; counted
    /// in `closed` and said in a warning at most once a minute).
    pub fn admit(
        io: TcpStream,
        peer: Option<IpAddr>,
        limits: Option<&Arc<RateLimits>>,
        timeouts: Timeouts,
        closed: Option<IntCounterVec>,
    ) -> Result<Self, u32> {
        let slot = match (limits, peer) {
            (Some(l), Some(p)) => match l.open_connection(p) {
                Ok(slot) => slot,
                Err(max) => {
                    refused(p, max, closed.as_ref());
                    return Err(max);
                }
            },
            _ => HeldSlot::uncounted(),
        };
        Ok(Self {
            io,
            watch: Arc::default(),
            timeouts,
            upgraded: false,
            head: None,
            stall_deadline: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            closed,
            timed_out: false,
            _slot: slot,
        })
    }

    /// The watch [`mark_request`] updates (put into the connection's extensions).
    pub fn watch(&self) -> Arc<ConnWatch> {
        self.watch.clone()
    }

    /// Brings the head deadline up to date with what the app has seen: a head received meets
    /// it, a WebSocket handshake ends it.
    fn refresh(&mut self) {
        if self.upgraded {
            return;
        }
        if self.watch.upgraded.load(Ordering::Acquire) {
            self.upgraded = true;
            self.head = None;
            return;
        }
        if self
            .head
            .is_some_and(|d| self.watch.heads.load(Ordering::Acquire) > d.after)
        {
            self.head = None;
        }
    }

    /// `Err(TimedOut)` once a deadline has passed; otherwise the timer is set to the next one
    /// and registered with `cx`, so the connection's task is polled again then.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.refresh();
        let head_at = self.head.map(|d| d.at);
        let Some(at) = [head_at, self.stall_deadline].into_iter().flatten().min() else {
            return Ok(());
        };
        let reason = if Some(at) == head_at {
            "head_timeout"
        } else {
            "write_stall"
        };
        if Instant::now() < at {
            if self.timer.deadline() != at {
                self.timer.as_mut().reset(at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
        }
        if !std::mem::replace(&mut self.timed_out, true) {
            if let Some(c) = &self.closed {
                c.with_label_values(&[reason]).inc();
            }
            tracing::debug!(reason, "connection closed");
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, reason))
    }

    /// Bytes read while no request is with the app begin a new request's head (actix times a
    /// connection's first head itself, from the connection's start; this times it too).
    fn on_read(&mut self, n: usize) {
        if n == 0 || self.upgraded || self.head.is_some() {
            return;
        }
        let heads = self.watch.heads.load(Ordering::Acquire);
        if self.watch.finished.load(Ordering::Acquire) >= heads {
            self.head = Some(HeadDeadline {
                after: heads,
                at: Instant::now() + self.timeouts.head,
            });
        }
    }

    /// A write through `write`, timed: progress ends a stall, a pending write starts one.
    fn timed_write(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        match write(Pin::new(&mut self.io), cx) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.stall_deadline = None;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if self.stall_deadline.is_none() {
                    self.stall_deadline = Some(Instant::now() + self.timeouts.write_stall);
                }
                self.check(cx)?;
                Poll::Pending
            }
            other => other,
        }
    }
}

/// Counts a connection refused for its address's share, and says so at most once a minute (an
/// operator whose clients all arrive from one address — an untrusted balancer, a NAT — sees why).
fn refused(peer: IpAddr, max: u32, closed: Option<&IntCounterVec>) {
    static LAST_WARNED_S: AtomicI64 = AtomicI64::new(i64::MIN);
    if let Some(c) = closed {
        c.with_label_values(&["refused"]).inc();
    }
    let now = crate::clock::Clock::now_secs(&crate::clock::SystemClock);
    let last = LAST_WARNED_S.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60
        && LAST_WARNED_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            %peer,
            max,
            "connections refused: this address holds server.rate_limit.connections_per_address; if it is a balancer or proxy, list it in server.rate_limit.trusted_proxies"
        );
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.on_read(buf.filled().len() - before);
            // a head deadline just set must wake the task even if nothing more arrives
            this.check(cx)?;
        }
        res
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .timed_write(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .timed_write(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
