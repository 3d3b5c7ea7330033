//! [`GroupCommit`]: a dedicated thread that makes appends durable, one fsync
//! for every waiter that arrived while the previous fsync ran.
//!
//! An appender appends under the queue lock, gets its seq, and asks
//! [`GroupCommit::durable`] for a [`Durable`] it can `.await` (or `wait()` on
//! outside async code). The thread takes every pending request, captures a
//! [`SyncPlan`] under the lock (the highest written seq and the files to
//! fsync), releases the lock so appends go on, runs the fsyncs, and then
//! answers every request whose seq the plan covered. A request for a seq that
//! is already durable is answered at once without an fsync. With a
//! `flush_interval` the thread also syncs on that period (`durability:
//! memory`), and on shutdown it syncs once more.
//!
//! A round (plan and fsyncs) runs under the round lock
//! ([`GroupCommit::hold_rounds`]), so a caller that must change the queue's
//! paths (a live rename of its directory) or sync it itself can wait for the
//! round in progress and keep the next one from starting. Lock order: the
//! round lock before the queue lock, never the other way round (the thread
//! takes the queue lock only inside a round; nobody waits for the round lock
//! while holding the queue lock).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{DiskQueue, SpillError};

type Reply = oneshot::Sender<Result<(), SpillError>>;

#[derive(Debug, Default)]
struct Counters {
    durable_seq: AtomicU64,
    fsyncs: AtomicU64,
}

/// The group-commit thread of one [`DiskQueue`].
#[derive(Debug)]
pub struct GroupCommit {
    counters: Arc<Counters>,
    tx: Option<mpsc::Sender<(u64, Reply)>>,
    thread: Option<JoinHandle<()>>,
    round: Arc<Mutex<()>>,
}

/// Locks the queue even if a holder panicked: the queue's own state stays
/// consistent between calls, and a sync thread must not die of it.
pub fn lock_queue(q: &Mutex<DiskQueue>) -> MutexGuard<'_, DiskQueue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupCommit {
    /// Starts the thread for `queue`; with `flush_interval` it also syncs
    /// periodically (memory durability).
    pub fn start(
        queue: Arc<Mutex<DiskQueue>>,
        flush_interval: Option<Duration>,
    ) -> std::io::Result<Self> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel();
        let c = counters.clone();
        let round = Arc::new(Mutex::new(()));
        let r = round.clone();
        let thread = std::thread::Builder::new()
            .name("fanout-spill-sync".into())
            .spawn(move || run(queue, rx, c, r, flush_interval))?;
        Ok(Self {
            counters,
            tx: Some(tx),
            thread: Some(thread),
            round,
        })
    }

    /// Waits for the sync round in progress, if any, and keeps the next one
    /// from starting while the guard lives. Take it before the queue lock
    /// (see the module docs); blocking.
    pub fn hold_rounds(&self) -> MutexGuard<'_, ()> {
        self.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once every record up to `seq` is on stable storage.
    pub fn durable(&self, seq: u64) -> Durable {
        if seq <= self.counters.durable_seq.load(Ordering::Acquire) {
            return Durable(State::Ready(Some(Ok(()))));
        }
        let (reply, rx) = oneshot::channel();
        match &self.tx {
            Some(tx) if tx.send((seq, reply)).is_ok() => Durable(State::Wait(rx)),
            _ => Durable(State::Ready(Some(Err(SpillError::Closed)))),
        }
    }

    /// Sync rounds that fsynced segment data so far.
    pub fn fsyncs(&self) -> u64 {
        self.counters.fsyncs.load(Ordering::Acquire)
    }

    /// Highest seq known durable.
    pub fn durable_seq(&self) -> u64 {
        self.counters.durable_seq.load(Ordering::Acquire)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the channel makes the thread sync one last time and exit.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    queue: Arc<Mutex<DiskQueue>>,
    rx: mpsc::Receiver<(u64, Reply)>,
    counters: Arc<Counters>,
    round_lock: Arc<Mutex<()>>,
    flush_interval: Option<Duration>,
) {
    let mut next_tick = flush_interval.map(|d| Instant::now() + d);
    let mut waiters: Vec<(u64, Reply)> = Vec::new();
    loop {
        let first = match next_tick {
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let tick = matches!(first, Err(RecvTimeoutError::Timeout));
        let closing = match first {
            Ok(w) => {
                waiters.push(w);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        waiters.extend(rx.try_iter());
        if let (Some(t), Some(d)) = (next_tick, flush_interval) {
            if Instant::now() >= t {
                next_tick = Some(Instant::now() + d);
            }
        }
        let durable = counters.durable_seq.load(Ordering::Acquire);
        let need = waiters.iter().any(|(s, _)| *s > durable);
        let result = if need || tick || closing {
            let _round = round_lock.lock().unwrap_or_else(|p| p.into_inner());
            round(&queue, &counters)
        } else {
            Ok(())
        };
        let durable = counters.durable_seq.load(Ordering::Acquire);
        for (seq, reply) in waiters.drain(..) {
            let r = match &result {
                Ok(()) if seq <= durable => Ok(()),
                Ok(()) => Err(SpillError::Broken {
                    path: lock_queue(&queue).dir().to_path_buf(),
                    reason: format!("seq {seq} was never appended"),
                }),
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(r);
        }
        if closing {
            return;
        }
    }
}

/// One durability round; the fsyncs run without the queue lock.
fn round(queue: &Mutex<DiskQueue>, counters: &Counters) -> Result<(), SpillError> {
    let plan = lock_queue(queue).plan_sync()?;
    if plan.is_empty() {
        counters
            .durable_seq
            .fetch_max(plan.written_seq, Ordering::AcqRel);
        return Ok(());
    }
    let written = plan.written_seq;
    let syncs = plan.syncs_data();
    let frees = plan.frees_space();
    match plan.execute() {
        Ok(()) => {
            if frees {
                lock_queue(queue).space_freed();
            }
            if syncs {
                counters.fsyncs.fetch_add(1, Ordering::AcqRel);
            }
            counters.durable_seq.fetch_max(written, Ordering::AcqRel);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "spill sync failed; queue marked broken");
            lock_queue(queue).mark_broken(e.to_string());
            Err(e)
        }
    }
}

/// A pending durability request; `.await` it, or [`Durable::wait`] outside
/// async code.
#[derive(Debug)]
pub struct Durable(State);

#[derive(Debug)]
enum State {
    Ready(Option<Result<(), SpillError>>),
    Wait(oneshot::Receiver<Result<(), SpillError>>),
}

impl Durable {
    /// Blocks the thread until durable; must not be called on an async
    /// runtime thread.
    pub fn wait(self) -> Result<(), SpillError> {
        match self.0 {
            State::Ready(r) => r.unwrap_or(Err(SpillError::Closed)),
            State::Wait(rx) => rx.blocking_recv().unwrap_or(Err(SpillError::Closed)),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), SpillError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(SpillError::Closed))),
            State::Wait(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(SpillError::Closed))),
        }
    }
}
