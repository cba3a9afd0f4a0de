//! A dedicated OS thread that runs blocking calls (a vendor library, /proc reads) one at a
//! time, with a timeout on the async side. A call that does not return in time is not
//! abandoned: it stays pending, no new call is queued behind it, and the next tick waits on
//! it again. So a hung driver costs one stuck thread, never a stuck runtime or a pile-up.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

type Job<I, O> = (I, oneshot::Sender<O>);

/// A thread that runs `FnMut(I) -> O` calls one at a time.
pub struct Worker<I, O> {
    name: String,
    jobs: mpsc::Sender<Job<I, O>>,
    pending: Option<(SystemTime, oneshot::Receiver<O>)>,
}

/// What became of a call.
#[derive(Debug)]
pub enum Outcome<O> {
    /// It returned.
    Done(O),
    /// It has not returned; it was made at `since`.
    Pending {
        /// When the outstanding call was made.
        since: SystemTime,
    },
    /// The call panicked, or the thread is gone.
    Failed,
}

impl<I: Send + 'static, O: Send + 'static> Worker<I, O> {
    /// Starts the thread.
    pub fn spawn(
        name: impl Into<String>,
        mut call: impl FnMut(I) -> O + Send + 'static,
    ) -> std::io::Result<Self> {
        let name = name.into();
        let (jobs, queue) = mpsc::channel::<Job<I, O>>();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                for (input, reply) in queue {
                    // A panicking call drops its reply (the caller sees `Failed`); the thread
                    // lives on for the next call.
                    if let Ok(output) = catch_unwind(AssertUnwindSafe(|| call(input))) {
                        // The receiver may be gone at shutdown; nothing to tell then.
                        let _ = reply.send(output);
                    }
                }
            })?;
        Ok(Self {
            name,
            jobs,
            pending: None,
        })
    }

    /// Starts a call with `make_input()` unless one is still outstanding.
    pub fn submit(&mut self, make_input: impl FnOnce() -> I) {
        if self.pending.is_none() {
            let (reply, receiver) = oneshot::channel();
            // If the thread is gone, the dropped reply makes `wait` report `Failed`.
            let _ = self.jobs.send((make_input(), reply));
            self.pending = Some((SystemTime::now(), receiver));
        }
    }

    /// Submits a call (see [`submit`](Self::submit)) and waits for the outstanding one.
    pub async fn call(&mut self, make_input: impl FnOnce() -> I, timeout: Duration) -> Outcome<O> {
        self.submit(make_input);
        self.wait(timeout).await
    }

    /// Waits up to `timeout` for the outstanding call.
    pub async fn wait(&mut self, timeout: Duration) -> Outcome<O> {
        let Some((since, receiver)) = self.pending.as_mut() else {
            return Outcome::Failed;
        };
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(output)) => {
                self.pending = None;
                Outcome::Done(output)
            }
            Ok(Err(_)) => {
                self.pending = None;
                tracing::error!(worker = %self.name, "a blocking call panicked");
                Outcome::Failed
            }
            Err(_) => Outcome::Pending { since: *since },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_hung_call_stays_pending_and_is_not_queued_behind() {
        let release = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (release_in, calls_in) = (Arc::clone(&release), Arc::clone(&calls));
        let mut worker = Worker::spawn("test", move |x: u32| {
            calls_in.fetch_add(1, Ordering::SeqCst);
            while !release_in.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            x * 2
        })
        .expect("spawn");
        let timeout = Duration::from_millis(50);
        assert!(matches!(
            worker.call(|| 1, timeout).await,
            Outcome::Pending { .. }
        ));
        assert!(matches!(
            worker.call(|| 2, timeout).await,
            Outcome::Pending { .. }
        ));
        release.store(true, Ordering::SeqCst);
        // The first call's answer arrives; the second input was never sent.
        assert!(matches!(
            worker.call(|| 3, Duration::from_secs(5)).await,
            Outcome::Done(2)
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(
            worker.call(|| 4, Duration::from_secs(5)).await,
            Outcome::Done(8)
        ));
    }

    #[tokio::test]
    async fn a_panicking_call_fails_and_the_thread_lives_on() {
        let mut worker = Worker::spawn("test", |x: u32| {
            assert!(x != 0, "boom");
            x
        })
        .expect("spawn");
        let timeout = Duration::from_secs(5);
        assert!(matches!(worker.call(|| 0, timeout).await, Outcome::Failed));
        assert!(matches!(worker.call(|| 7, timeout).await, Outcome::Done(7)));
    }
}
