//! A stream that gathers what h2 writes between two scheduler turns into one `write`.
//!
//! h2 writes the client preface, its SETTINGS, a request's HEADERS and its DATA from
//! separate polls of the connection task, flushing after each: four writes for one unary
//! rpc on a new connection. Each write to the Unix socket wakes gpukilld, and on a small
//! machine the woken daemon thread runs on the client's CPU before the client goes on, so
//! every extra write puts a round of the daemon's work on the client's clock. [`Coalesced`]
//! holds written bytes back and, on a flush, returns `Pending` after waking its own task as
//! long as the previous turn added bytes: the tasks already queued (hyper's dispatch task,
//! the request body's pipe) run first and add their frames, and the flush that finds nothing
//! new writes them all at once. A flush still always completes: it is put off at most
//! [`MAX_DEFERRALS`] turns of the runtime, and never once [`HOLD_LIMIT`] bytes are held.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many held bytes a write drains them first, and a write this large on its own
/// goes straight through: coalescing is for small frames, not for copying bulk data.
const HOLD_LIMIT: usize = 16 * 1024;

/// How many turns a flush may be put off. A new connection's first rpc needs three: the
/// preface and SETTINGS, then the request's HEADERS, then its DATA (from the body's task).
const MAX_DEFERRALS: u8 = 4;

/// A stream whose writes are held until the flush after next (see the module docs).
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// Bytes written and not yet sent; `held[sent..]` is what is left to send.
    held: Vec<u8>,
    sent: usize,
    /// How many times the flush of the bytes held now was put off, and how many bytes were
    /// held at the last time.
    deferrals: u8,
    held_when_deferred: usize,
}

impl<T> Coalesced<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            held: Vec::new(),
            sent: 0,
            deferrals: 0,
            held_when_deferred: 0,
        }
    }

    fn holding(&self) -> bool {
        self.sent < self.held.len()
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Sends everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.holding() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        self.deferrals = 0;
        self.held_when_deferred = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: drains what is held when that would pass the limit.
    /// `Ready(true)` when the bytes should go straight through instead of being held.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.held.len() + len > HOLD_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len >= HOLD_LIMIT))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if ready!(self.poll_room(cx, buf.len()))? {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        if ready!(self.poll_room(cx, len))? {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let grew = self.held.len() > self.held_when_deferred;
        if self.holding() && grew && self.deferrals < MAX_DEFERRALS {
            // Put off by a turn: the tasks queued before this one run and may add frames.
            self.deferrals += 1;
            self.held_when_deferred = self.held.len();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that records each write it is given.
    #[derive(Debug, Default)]
    struct Recorder(Vec<Vec<u8>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_written_between_flushes_go_out_in_one_write() {
        let mut stream = Coalesced::new(Recorder::default());
        stream.write_all(b"preface").await.expect("write");
        stream.write_all(b"settings").await.expect("write");
        assert!(stream.inner.0.is_empty(), "held until a flush");
        // The flush completes (after putting itself off a turn) with one write.
        stream.flush().await.expect("flush");
        assert_eq!(stream.inner.0, [b"prefacesettings".to_vec()]);
        // Nothing held: a flush writes nothing.
        stream.flush().await.expect("flush");
        assert_eq!(stream.inner.0.len(), 1);
    }

    #[tokio::test]
    async fn a_flush_is_put_off_a_bounded_number_of_turns() {
        let mut stream = Coalesced::new(Recorder::default());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut pending = 0;
        // Bytes added before every flush: it still completes after MAX_DEFERRALS turns.
        loop {
            stream.write_all(b"frame").await.expect("write");
            match Pin::new(&mut stream).poll_flush(&mut cx) {
                Poll::Pending => pending += 1,
                Poll::Ready(result) => break result.expect("flush"),
            }
        }
        assert_eq!(pending, usize::from(MAX_DEFERRALS));
        assert_eq!(stream.inner.0, [b"frame".repeat(pending + 1)]);
    }

    #[tokio::test]
    async fn large_writes_are_not_held() {
        let mut stream = Coalesced::new(Recorder::default());
        stream.write_all(b"head").await.expect("write");
        let bulk = vec![7; HOLD_LIMIT];
        stream.write_all(&bulk).await.expect("write");
        // What was held goes first, then the bulk write as it is, before any flush.
        assert_eq!(stream.inner.0, [b"head".to_vec(), bulk]);
    }
}
