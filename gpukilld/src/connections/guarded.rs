//! A connection with deadlines: its first bytes within `first_bytes` (the HTTP/2 preface, a
//! request line), then never silent for longer than `idle`, and never stuck writing to a
//! peer that does not read for longer than `write`. A deadline that passes fails the read
//! or write with `TimedOut`, which ends the connection, and the slot it held is given back.
//!
//! Live clients are never silent for long: the gRPC servers send HTTP/2 keep-alive pings
//! more often than `idle`, and a client answers them; a `watch` stream's client sends
//! window updates as it reads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::{AdmissionCounters, Permit};

/// The deadlines of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Until the first byte from the peer (TLS is done before: it has its own deadline).
    pub first_bytes: Duration,
    /// The longest silence of the peer after that.
    pub idle: Duration,
    /// The longest a write may wait for the peer to read.
    pub write: Duration,
}

/// Since when a connection has waited on its peer (to read a request or to write an
/// answer), for the HTTP endpoints' choice of which connection to close when all slots are
/// taken.
#[derive(Debug)]
pub struct Activity {
    base: std::time::Instant,
    /// Milliseconds since `base` plus one when it began waiting; 0 while not waiting.
    waiting_since: AtomicU64,
}

impl Activity {
    /// A connection that has not waited yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: std::time::Instant::now(),
            waiting_since: AtomicU64::new(0),
        })
    }

    fn waiting(&self) {
        if self.waiting_since.load(Ordering::Relaxed) == 0 {
            let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.waiting_since.store(now + 1, Ordering::Relaxed);
        }
    }

    fn progressed(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    /// How long it has waited on its peer; `None` while it is not waiting.
    pub fn waiting_for(&self) -> Option<Duration> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
                Some(Duration::from_millis(now.saturating_sub(since - 1)))
            }
        }
    }
}

/// A connection `IO` with deadlines, holding its listener's slot until it is dropped.
pub struct Guarded<IO> {
    io: IO,
    timeouts: Timeouts,
    seen_bytes: bool,
    read_timer: Pin<Box<Sleep>>,
    read_armed: bool,
    write_timer: Pin<Box<Sleep>>,
    write_armed: bool,
    activity: Option<Arc<Activity>>,
    counters: Option<Arc<AdmissionCounters>>,
    _permit: Option<Permit>,
}

impl<IO> Guarded<IO> {
    /// `io` with `timeouts`, holding `permit`; a deadline that passes is counted in
    /// `counters`.
    pub fn new(
        io: IO,
        timeouts: Timeouts,
        permit: Option<Permit>,
        counters: Option<Arc<AdmissionCounters>>,
    ) -> Self {
        let now = Instant::now();
        Self {
            io,
            timeouts,
            seen_bytes: false,
            read_timer: Box::pin(tokio::time::sleep_until(now + timeouts.first_bytes)),
            read_armed: false,
            write_timer: Box::pin(tokio::time::sleep_until(now + timeouts.write)),
            write_armed: false,
            activity: None,
            counters,
            _permit: permit,
        }
    }

    /// Reports into `activity` when the connection waits on its peer.
    pub fn with_activity(mut self, activity: Arc<Activity>) -> Self {
        self.activity = Some(activity);
        self
    }

    fn progressed(&mut self) {
        if let Some(activity) = &self.activity {
            activity.progressed();
        }
    }

    fn timed_out(&self, what: String) -> io::Error {
        if let Some(counters) = &self.counters {
            counters.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!("closing a connection: {what}");
        io::Error::new(io::ErrorKind::TimedOut, what)
    }

    /// Polls the write deadline after the peer did not take a write.
    fn write_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.write_armed {
            self.write_armed = true;
            let at = Instant::now() + self.timeouts.write;
            self.write_timer.as_mut().reset(at);
            if let Some(activity) = &self.activity {
                activity.waiting();
            }
        }
        match self.write_timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(self.timed_out(format!(
                "the peer read nothing for {}",
                humantime::format_duration(self.timeouts.write)
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_ready(&mut self) {
        if self.write_armed {
            self.write_armed = false;
            self.progressed();
        }
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.read_armed = false;
                if buf.filled().len() > before {
                    this.seen_bytes = true;
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !this.read_armed {
                    this.read_armed = true;
                    let limit = if this.seen_bytes {
                        this.timeouts.idle
                    } else {
                        this.timeouts.first_bytes
                    };
                    this.read_timer.as_mut().reset(Instant::now() + limit);
                    if let Some(activity) = &this.activity {
                        activity.waiting();
                    }
                }
                match this.read_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let what = if this.seen_bytes {
                            format!(
                                "the peer sent nothing for {}",
                                humantime::format_duration(this.timeouts.idle)
                            )
                        } else {
                            format!(
                                "the peer sent no request within {}",
                                humantime::format_duration(this.timeouts.first_bytes)
                            )
                        };
                        Poll::Ready(Err(this.timed_out(what)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.write_ready();
                Poll::Ready(result)
            }
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.write_ready();
                Poll::Ready(result)
            }
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(result) => {
                this.write_ready();
                Poll::Ready(result)
            }
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SHORT: Timeouts = Timeouts {
        first_bytes: Duration::from_millis(100),
        idle: Duration::from_millis(300),
        write: Duration::from_millis(100),
    };

    #[tokio::test]
    async fn a_peer_that_sends_nothing_is_closed_after_first_bytes() {
        let (server, _client) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server, SHORT, None, None);
        let started = std::time::Instant::now();
        let error = guarded.read_u8().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(
            error.to_string().contains("no request within 100ms"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn traffic_keeps_a_connection_open_and_silence_ends_it() {
        let (server, mut client) = tokio::io::duplex(64);
        let counters = Arc::new(AdmissionCounters::default());
        let mut guarded = Guarded::new(server, SHORT, None, Some(Arc::clone(&counters)));
        // Bytes every 50 ms for longer than `first_bytes` and `idle` together.
        let talker = tokio::spawn(async move {
            for _ in 0..10 {
                client.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            client
        });
        for _ in 0..10 {
            assert_eq!(guarded.read_u8().await.unwrap(), b'x');
        }
        let _client = talker.await.unwrap();
        let error = guarded.read_u8().await.unwrap_err();
        assert!(
            error.to_string().contains("sent nothing for 300ms"),
            "{error}"
        );
        assert_eq!(counters.timed_out.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_is_closed_and_waiting_is_reported() {
        let (server, _client) = tokio::io::duplex(16);
        let activity = Activity::new();
        let mut guarded =
            Guarded::new(server, SHORT, None, None).with_activity(Arc::clone(&activity));
        assert_eq!(activity.waiting_for(), None);
        let error = guarded.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(
            error.to_string().contains("read nothing for 100ms"),
            "{error}"
        );
        assert!(activity.waiting_for().unwrap() >= Duration::from_millis(90));
    }
}
