//! WebSocket frame sizes enforced while the bytes arrive.
//!
//! actix-ws 0.4 reads everything the client sends into one buffer and actix-http 3.20's frame
//! parser compares a frame's declared length with `max_frame_size` only once the whole frame is
//! buffered: a client declaring a 200 MB frame made the server hold 200 MB before it was refused.
//! [`FrameLimit`] sits between the connection and actix-ws and reads the frame headers
//! (RFC 6455 §5.2) itself: a frame declaring more than the limit ends the stream with
//! `PayloadError::Overflow` as soon as its header is in, before any of its payload is kept.
//!
//! It also times fragmented messages: actix-ws keeps the fragments of a message until its last
//! one (up to `max_message_bytes`) and passes pings and pongs through meanwhile, so a client that
//! sent all fragments but the last and then only answered pings held that memory for as long as
//! the socket lived (attacker review). A message still unfinished [`FRAGMENT_DEADLINE`] after its
//! first fragment ends the stream at the next frame header.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

/// Where the scanner is in the frame sequence.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a header: `have` of its bytes seen.
    Header { buf: [u8; 14], have: usize },
    /// Skipping `left` payload bytes.
    Payload { left: u64 },
}

/// How long the fragments of one message may take, from the first to the last.
pub const FRAGMENT_DEADLINE: Duration = Duration::from_secs(30);

/// Why the scanner ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A frame declares this many payload bytes, over the limit.
    TooLarge(u64),
    /// A fragmented message was not finished within [`FRAGMENT_DEADLINE`].
    Unfinished,
}

/// Follows frame boundaries in a client→server WebSocket byte stream.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    max: u64,
    state: State,
    /// When the fragmented message in progress began (its first frame's header).
    fragmented_since: Option<Instant>,
}

impl FrameScanner {
    pub fn new(max: usize) -> Self {
        Self {
            max: max as u64,
            state: State::Header {
                buf: [0; 14],
                have: 0,
            },
            fragmented_since: None,
        }
    }

    /// Feeds the next bytes, arrived at `now`: `Err` when a frame declares more than the limit,
    /// or a frame header comes while a fragmented message has been unfinished for longer than
    /// [`FRAGMENT_DEADLINE`].
    pub fn feed(&mut self, mut chunk: &[u8], now: Instant) -> Result<(), Refused> {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Payload { left } => {
                    let n = (*left).min(chunk.len() as u64);
                    *left -= n;
                    chunk = &chunk[n as usize..];
                    if *left == 0 {
                        self.state = State::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                State::Header { buf, have } => {
                    let need = header_len(&buf[..*have]);
                    let take = (need - *have).min(chunk.len());
                    buf[*have..*have + take].copy_from_slice(&chunk[..take]);
                    *have += take;
                    chunk = &chunk[take..];
                    // The full length is known once the extended length bytes are in.
                    if *have < 2 || *have < header_len(&buf[..*have]) {
                        continue;
                    }
                    let len = payload_len(&buf[..*have]);
                    if len > self.max {
                        return Err(Refused::TooLarge(len));
                    }
                    let (fin, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x0f);
                    match (opcode, fin) {
                        // a text or binary frame without FIN opens a fragmented message
                        (1 | 2, false) => {
                            self.fragmented_since = self.fragmented_since.or(Some(now))
                        }
                        // a final continuation (or a whole data frame) ends it
                        (0..=2, true) => self.fragmented_since = None,
                        _ => {}
                    }
                    if self
                        .fragmented_since
                        .is_some_and(|t| now.saturating_duration_since(t) > FRAGMENT_DEADLINE)
                    {
                        return Err(Refused::Unfinished);
                    }
                    self.state = if len == 0 {
                        State::Header {
                            buf: [0; 14],
                            have: 0,
                        }
                    } else {
                        State::Payload { left: len }
                    };
                }
            }
        }
        Ok(())
    }
}

/// Header length as far as the bytes seen tell: 2 until the second byte is in.
fn header_len(seen: &[u8]) -> usize {
    if seen.len() < 2 {
        return 2;
    }
    let mask = if seen[1] & 0x80 != 0 { 4 } else { 0 };
    let ext = match seen[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + mask
}

fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes(h[2..10].try_into().unwrap_or([0xff; 8])),
        n => u64::from(n),
    }
}

/// The request body of a WebSocket upgrade, ended with `Overflow` at the first frame header that
/// declares more than the limit.
pub struct FrameLimit<S> {
    inner: S,
    scanner: FrameScanner,
    failed: bool,
}

impl<S> FrameLimit<S> {
    pub fn new(inner: S, max: usize) -> Self {
        Self {
            inner,
            scanner: FrameScanner::new(max),
            failed: false,
        }
    }
}

impl<S> Stream for FrameLimit<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => match self.scanner.feed(&bytes, Instant::now()) {
                Ok(()) => Poll::Ready(Some(Ok(bytes))),
                Err(Refused::TooLarge(declared)) => {
                    tracing::info!(
                        declared,
                        "WebSocket frame above max_message_bytes refused at its header"
                    );
                    self.failed = true;
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
                Err(Refused::Unfinished) => {
                    tracing::info!("WebSocket message left unfinished: the socket is closed");
                    self.failed = true;
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "a fragmented message was not finished in time",
                    )))))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u64, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | len as u8);
        } else if len <= u64::from(u16::MAX) {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&len.to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f
    }

    #[test]
    fn follows_frames_of_every_length_form_split_anywhere() {
        let mut stream = Vec::new();
        for len in [0u64, 5, 125, 126, 300, 65_535, 70_000] {
            stream.extend(frame(len, true));
            stream.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for split in [1, 2, 3, 7, 1000, stream.len()] {
            let mut s = FrameScanner::new(70_000);
            for c in stream.chunks(split) {
                s.feed(c, Instant::now()).unwrap();
            }
            assert!(matches!(s.state, State::Header { have: 0, .. }), "{split}");
        }
    }

    #[test]
    fn refuses_a_big_frame_at_its_header_before_any_payload() {
        for split in [1, 3, 20] {
            let mut s = FrameScanner::new(1024);
            let mut stream = frame(10, true);
            stream.extend([0u8; 10]);
            stream.extend(frame(200 * 1024 * 1024, true));
            let mut res = Ok(());
            for c in stream.chunks(split) {
                res = s.feed(c, Instant::now());
                if res.is_err() {
                    break;
                }
            }
            assert_eq!(res, Err(Refused::TooLarge(200 * 1024 * 1024)), "{split}");
        }
        let mut s = FrameScanner::new(1024);
        let now = Instant::now();
        assert_eq!(
            s.feed(&frame(1025, true), now),
            Err(Refused::TooLarge(1025))
        );
        let mut s = FrameScanner::new(1024);
        assert_eq!(s.feed(&frame(1024, true), now), Ok(()));
    }

    /// A header with FIN and opcode as given, masked, with `len` payload bytes after it.
    fn frame_op(first: u8, len: u8) -> Vec<u8> {
        let mut f = vec![first, 0x80 | len, 1, 2, 3, 4];
        f.extend(std::iter::repeat_n(0u8, len as usize));
        f
    }

    /// A fragmented message must be finished within the deadline: pings and pongs meanwhile do
    /// not keep it open; one finished in time, and whole messages, are never refused.
    #[test]
    fn an_unfinished_fragmented_message_ends_the_stream_at_the_deadline() {
        let t0 = Instant::now();
        let late = t0 + FRAGMENT_DEADLINE + Duration::from_secs(1);
        let (first, cont, last, pong, whole) = (0x02, 0x00, 0x80, 0x8a, 0x82);
        let mut s = FrameScanner::new(1024);
        s.feed(&frame_op(first, 10), t0).unwrap();
        s.feed(&frame_op(cont, 10), t0 + Duration::from_secs(1))
            .unwrap();
        s.feed(&frame_op(pong, 0), t0 + Duration::from_secs(20))
            .unwrap();
        assert_eq!(s.feed(&frame_op(pong, 0), late), Err(Refused::Unfinished));
        // finished in time: the clock starts again with the next message
        let mut s = FrameScanner::new(1024);
        s.feed(&frame_op(first, 10), t0).unwrap();
        s.feed(&frame_op(last, 10), t0 + Duration::from_secs(5))
            .unwrap();
        s.feed(&frame_op(pong, 0), late).unwrap();
        s.feed(&frame_op(whole, 10), late + FRAGMENT_DEADLINE * 3)
            .unwrap();
        s.feed(&frame_op(first, 10), late + FRAGMENT_DEADLINE * 3)
            .unwrap();
        s.feed(&frame_op(last, 10), late + FRAGMENT_DEADLINE * 3)
            .unwrap();
    }
}
