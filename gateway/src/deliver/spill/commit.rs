//! [`GroupCommit`]: makes a [`DiskQueue`]'s appends durable, one fsync for
//! every waiter that arrived while the previous fsync ran.
//!
//! An appender appends under the queue lock, gets its seq, and asks
//! [`GroupCommit::durable`] for a [`Durable`] it can `.await` (or `wait()` on
//! outside async code). A sync worker takes every pending request of the
//! queue, captures a [`SyncPlan`](super::SyncPlan) under the lock (the
//! highest written seq and the files to fsync), releases the lock so appends
//! go on, runs the fsyncs, and then answers every request whose seq the plan
//! covered. A request for a seq that is already durable is answered at once
//! without an fsync. With a `flush_interval` the queue is also synced on that
//! period when it has anything unsynced (`durability: memory`), and when its
//! [`GroupCommit`] is dropped it syncs once more.
//!
//! # One pool for every queue
//! The workers are shared by every queue of the process: [`SYNC_WORKERS`]
//! threads take queues that have waiters, and one ticker thread looks every
//! [`TICK`] for queues whose flush period is due and that hold something
//! unsynced. A queue with nothing to sync costs no thread, no wake-up and no
//! fsync: 10,000 targets used to mean 10,000 threads, each waking every
//! second (about 13 % of a core and 64 KiB each, idle). Several queues sync
//! in parallel (up to the worker count); two rounds of one queue never do.
//!
//! A round (plan and fsyncs) runs under the queue's round lock
//! ([`GroupCommit::hold_rounds`]), so a caller that must change the queue's
//! paths (a live rename of its directory) or sync it itself can wait for the
//! round in progress and keep the next one from starting. Lock order: the
//! round lock before the queue lock, never the other way round (a worker
//! takes the queue lock only inside a round; nobody waits for the round lock
//! while holding the queue lock).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{DiskQueue, SpillError};

type Reply = oneshot::Sender<Result<(), SpillError>>;

/// Sync worker threads shared by every queue.
pub const SYNC_WORKERS: usize = 16;
/// How often the ticker looks for queues whose flush period is due.
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Counters {
    durable_seq: AtomicU64,
    fsyncs: AtomicU64,
}

/// One queue as the pool knows it.
#[derive(Debug)]
struct Entry {
    queue: Arc<Mutex<DiskQueue>>,
    counters: Counters,
    round: Mutex<()>,
    waiters: Mutex<Vec<(u64, Reply)>>,
    /// Handed to a worker and not yet taken up.
    scheduled: AtomicBool,
    /// Its period (`durability: memory`); only such queues are ticked.
    flush_interval: Option<Duration>,
    /// When its periodic sync is due (ms since the pool started).
    due_ms: AtomicU64,
}

/// The workers, the ticker and the queues they serve.
struct Pool {
    /// Many senders, many receivers: a job wakes one idle worker.
    jobs: crossbeam_channel::Sender<(Arc<Entry>, bool)>,
    entries: Mutex<Vec<Weak<Entry>>>,
    started: Instant,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<(Arc<Entry>, bool)>();
        for i in 0..SYNC_WORKERS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fanout-spill-sync-{i}"))
                .spawn(move || {
                    for (entry, force) in rx {
                        serve(&entry, force);
                    }
                });
            if let Err(e) = spawned {
                // Fewer workers: slower group commit, never a lost one (a
                // pool without any is caught below).
                tracing::error!(error = %e, "cannot start a spill sync worker");
            }
        }
        let spawned = std::thread::Builder::new()
            .name("fanout-spill-tick".into())
            .spawn(|| loop {
                std::thread::sleep(TICK);
                pool().tick();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the spill sync ticker; periodic syncs only at shutdown");
        }
        Pool {
            jobs: tx,
            entries: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    })
}

impl Pool {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn schedule(&self, entry: &Arc<Entry>, force: bool) {
        let sent = self.jobs.send((entry.clone(), force));
        if sent.is_err() {
            // No worker left: serve it here (never the case in practice).
            serve(entry, force);
        }
    }

    /// Schedules every periodic queue whose flush period is due and that
    /// holds something unsynced; forgets dropped ones.
    fn tick(&self) {
        let now = self.now_ms();
        let due: Vec<(Arc<Entry>, Duration)> = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.retain(|e| e.strong_count() > 0);
            entries
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|e| e.due_ms.load(Ordering::Relaxed) <= now)
                .filter_map(|e| e.flush_interval.map(|d| (e, d)))
                .collect()
        };
        for (e, period) in due {
            e.due_ms
                .store(now + (period.as_millis() as u64).max(1), Ordering::Relaxed);
            if lock_queue(&e.queue).needs_sync() {
                self.schedule(&e, true);
            }
        }
    }
}

/// Serves `entry`: takes its waiters, runs a round if one of them needs it
/// (or `force`), answers them.
fn serve(entry: &Entry, force: bool) {
    // The waiters are taken once the round lock is held: those that arrive
    // while another round of this queue runs all go in the next one (as
    // with a thread per queue), not one round each.
    let _round = entry.round.lock().unwrap_or_else(|p| p.into_inner());
    entry.scheduled.store(false, Ordering::SeqCst);
    let waiters = std::mem::take(&mut *entry.waiters.lock().unwrap_or_else(|p| p.into_inner()));
    let durable = entry.counters.durable_seq.load(Ordering::Acquire);
    let need = force || waiters.iter().any(|(s, _)| *s > durable);
    let result = if need {
        round(&entry.queue, &entry.counters)
    } else {
        Ok(())
    };
    answer(entry, waiters, &result);
}

fn answer(entry: &Entry, waiters: Vec<(u64, Reply)>, result: &Result<(), SpillError>) {
    let durable = entry.counters.durable_seq.load(Ordering::Acquire);
    for (seq, reply) in waiters {
        let r = match result {
            Ok(()) if seq <= durable => Ok(()),
            Ok(()) => Err(SpillError::Broken {
                path: lock_queue(&entry.queue).dir().to_path_buf(),
                reason: format!("seq {seq} was never appended"),
            }),
            Err(e) => Err(e.clone()),
        };
        let _ = reply.send(r);
    }
}

/// The group commit of one [`DiskQueue`].
#[derive(Debug)]
pub struct GroupCommit {
    entry: Arc<Entry>,
}

/// Locks the queue even if a holder panicked: the queue's own state stays
/// consistent between calls, and a sync worker must not die of it.
pub fn lock_queue(q: &Mutex<DiskQueue>) -> MutexGuard<'_, DiskQueue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupCommit {
    /// Serves `queue` from the shared pool; with `flush_interval` it is
    /// also synced periodically when it holds anything unsynced (memory
    /// durability).
    pub fn start(queue: Arc<Mutex<DiskQueue>>, flush_interval: Option<Duration>) -> Self {
        let pool = pool();
        let period = flush_interval.map_or(0, |d| d.as_millis() as u64);
        let entry = Arc::new(Entry {
            queue,
            counters: Counters::default(),
            round: Mutex::new(()),
            waiters: Mutex::new(Vec::new()),
            scheduled: AtomicBool::new(false),
            flush_interval,
            due_ms: AtomicU64::new(pool.now_ms() + period),
        });
        // Only the ticker needs to know of it, and only if it is periodic.
        if flush_interval.is_some() {
            pool.entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(&entry));
        }
        Self { entry }
    }

    /// Waits for the sync round in progress, if any, and keeps the next one
    /// from starting while the guard lives. Take it before the queue lock
    /// (see the module docs); blocking.
    pub fn hold_rounds(&self) -> MutexGuard<'_, ()> {
        self.entry.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once every record up to `seq` is on stable storage.
    pub fn durable(&self, seq: u64) -> Durable {
        let e = &self.entry;
        if seq <= e.counters.durable_seq.load(Ordering::Acquire) {
            return Durable(State::Ready(Some(Ok(()))));
        }
        let (reply, rx) = oneshot::channel();
        e.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((seq, reply));
        // One job per batch of waiters: those arriving while it waits or
        // runs are taken by it, or by the next one.
        if !e.scheduled.swap(true, Ordering::SeqCst) {
            pool().schedule(e, false);
        }
        Durable(State::Wait(rx))
    }

    /// Sync rounds that fsynced segment data so far.
    pub fn fsyncs(&self) -> u64 {
        self.entry.counters.fsyncs.load(Ordering::Acquire)
    }

    /// Highest seq known durable.
    pub fn durable_seq(&self) -> u64 {
        self.entry.counters.durable_seq.load(Ordering::Acquire)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // One last round here, for whatever is appended and every waiter
        // (blocking, as joining the queue's own thread was).
        let e = &self.entry;
        e.scheduled.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(&mut *e.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        let result = {
            let _round = e.round.lock().unwrap_or_else(|p| p.into_inner());
            round(&e.queue, &e.counters)
        };
        answer(e, waiters, &result);
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
