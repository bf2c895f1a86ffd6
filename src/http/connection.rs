//! What one TCP connection to the public listener may hold, below HTTP: actix bounds the first
//! request head of a connection (`client_request_timeout`) and idle time between requests
//! (keep-alive), but not a later head sent a byte at a time, nor a client that stops reading what
//! the node writes (a response, a WebSocket's frames), nor how many connections one address
//! holds. Each accepted connection is therefore wrapped in a [`Guarded`] stream:
//!
//! - **per address**: at most `server.rate_limit.connections_per_address` open connections per
//!   IPv4 address or IPv6 /64 (the /48 `ipv6_wide_factor` times that); further ones are closed as
//!   they are accepted ([`RateLimits::open_connection`]; trusted proxies are not counted);
//! - **later heads**: once a request's first byte arrives on a kept-alive connection, its head must
//!   reach the app within `server.client_request_timeout_ms` ([`mark_request`] tells the stream it
//!   did), else the connection is closed; not after a WebSocket handshake;
//! - **write stalls**: a write that makes no progress for `server.write_stall_timeout_ms` closes
//!   the connection.
//!
//! The stream knows nothing of HTTP framing: it learns from [`mark_request`] (the outermost
//! middleware) when a head reached the app and when the app answered it. A byte read while the
//! app has answered every head it received begins the next request's head.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
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
    /// Of those, the ones it has answered (its response produced; the body may still stream).
    answered: AtomicU64,
    /// A WebSocket handshake was answered (101): what follows is no HTTP request.
    upgraded: AtomicBool,
}

/// The outermost middleware: counts the request's head and its answer on its connection's
/// [`ConnWatch`], and marks the connection upgraded when the answer is 101. A request without a
/// watch (the unit tests' service calls) passes untouched.
pub async fn mark_request(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let watch = req.conn_data::<Arc<ConnWatch>>().cloned();
    if let Some(w) = &watch {
        w.heads.fetch_add(1, Ordering::Release);
    }
    let res = next.call(req).await;
    if let Some(w) = &watch {
        if res
            .as_ref()
            .is_ok_and(|r| r.status() == StatusCode::SWITCHING_PROTOCOLS)
        {
            w.upgraded.store(true, Ordering::Release);
        }
        w.answered.fetch_add(1, Ordering::Release);
    }
    res
}

/// The timeouts of [`Guarded`] streams.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A later request's head, from its first byte (`client_request_timeout_ms`).
    pub head: Duration,
    /// A write that makes no progress (`write_stall_timeout_ms`).
    pub write_stall: Duration,
}

/// A TCP connection of the public listener with the bounds of the module doc.
pub struct Guarded {
    io: TcpStream,
    watch: Arc<ConnWatch>,
    timeouts: Timeouts,
    /// A WebSocket handshake was answered: what follows is no request (and no head is timed).
    upgraded: bool,
    /// A request's first byte was read when the app had received this many heads: one more
    /// must reach it by `head_deadline`.
    head_after: Option<u64>,
    /// When the head being read must have reached the app.
    head_deadline: Option<Instant>,
    /// When a write pending since then fails.
    stall_deadline: Option<Instant>,
    /// Fires at the earlier of the two deadlines (and wakes the connection's task then).
    timer: Pin<Box<Sleep>>,
    /// The connection's place among its address's ([`RateLimits::open_connection`]).
    _slot: HeldSlot,
}

impl Guarded {
    /// Admits a connection from `peer` (`Err(max)`: its address holds `max` already).
    pub fn admit(
        io: TcpStream,
        peer: Option<IpAddr>,
        limits: Option<&Arc<RateLimits>>,
        timeouts: Timeouts,
    ) -> Result<Self, u32> {
        let slot = match (limits, peer) {
            (Some(l), Some(p)) => l.open_connection(p)?,
            _ => HeldSlot::uncounted(),
        };
        Ok(Self::new(io, slot, timeouts))
    }

    fn new(io: TcpStream, slot: HeldSlot, timeouts: Timeouts) -> Self {
        Self {
            io,
            watch: Arc::default(),
            timeouts,
            upgraded: false,
            head_after: None,
            head_deadline: None,
            stall_deadline: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            _slot: slot,
        }
    }

    /// The watch [`mark_request`] updates (put into the connection's extensions).
    pub fn watch(&self) -> Arc<ConnWatch> {
        self.watch.clone()
    }

    /// Ends the head deadline once the head it waits for has reached the app (or the
    /// connection has become a WebSocket).
    fn refresh(&mut self) {
        if !self.upgraded && self.watch.upgraded.load(Ordering::Acquire) {
            self.upgraded = true;
            self.head_after = None;
            self.head_deadline = None;
        }
        if let Some(seen) = self.head_after {
            if self.watch.heads.load(Ordering::Acquire) > seen {
                self.head_after = None;
                self.head_deadline = None;
            }
        }
    }

    /// `Err(TimedOut)` once a deadline has passed; otherwise the timer is set to the next one
    /// and registered with `cx`, so the connection's task is polled again then.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.refresh();
        let Some(deadline) = [self.head_deadline, self.stall_deadline]
            .into_iter()
            .flatten()
            .min()
        else {
            return Ok(());
        };
        let what = if Some(deadline) == self.head_deadline {
            "request head not received in time"
        } else {
            "client took nothing written for too long"
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::TimedOut, what)),
            Poll::Pending => Ok(()),
        }
    }

    /// Bytes read while the app has answered every head it received begin a new request's
    /// head (actix times a connection's first head itself, from the connection's start; this
    /// times it too). Bytes read while a request is with the app are its body (`body_deadline`)
    /// or a pipelined request, which the app reads after answering.
    fn on_read(&mut self, n: usize) {
        if n == 0 || self.upgraded || self.head_after.is_some() {
            return;
        }
        let heads = self.watch.heads.load(Ordering::Acquire);
        if self.watch.answered.load(Ordering::Acquire) >= heads {
            self.head_after = Some(heads);
            self.head_deadline = Some(Instant::now() + self.timeouts.head);
        }
    }

    fn on_write(&mut self, n: usize) {
        if n > 0 {
            self.stall_deadline = None;
        }
    }

    fn on_write_pending(&mut self) {
        if self.stall_deadline.is_none() {
            self.stall_deadline = Some(Instant::now() + self.timeouts.write_stall);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.on_read(buf.filled().len() - before);
            // a head deadline just set must wake the task even if nothing more arrives
            if let Err(e) = this.check(cx) {
                return Poll::Ready(Err(e));
            }
        }
        res
    }
}

impl Guarded {
    /// A write through `write`, timed: progress ends a stall, a pending write starts one.
    fn timed_write(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        match write(Pin::new(&mut self.io), cx) {
            Poll::Ready(Ok(n)) => {
                self.on_write(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                self.on_write_pending();
                self.check(cx)?;
                Poll::Pending
            }
            other => other,
        }
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
