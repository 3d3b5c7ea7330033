//! Memory accounting by bytes.
//!
//! [`MemoryBudget`] is the gateway-wide in-flight budget (`--memory-budget`,
//! default 512 MiB) shared by ingest and delivery: a request is admitted only
//! once its decompressed body, the scanned series and (for 2.0) the converted
//! 1.0 body fit, and the [`MemoryPermit`] travels with the data to delivery,
//! which releases it (or splits it) as batches leave memory.
//!
//! The budget is a tokio semaphore whose permits are KiB, so a 512 MiB budget
//! is 524,288 permits and a permit's size is rounded up to whole KiB.
//!
//! [`ConnReadBudget`] bounds what one connection may hold in bodies that are
//! still arriving (HTTP/2 and HTTP/3 multiplex many streams on one
//! connection): at most the compressed body limit, before any global budget is
//! taken. A slow client therefore holds its own connection's bytes, never the
//! shared memory budget.
//!
//! [`ReadBudget`] bounds the same bytes over all connections together
//! (`--body-read-budget`, default 64 MiB): without it, 10,000 connections
//! each trickling a partial body could hold 10,000 times the body limit.
//! Each body being read is a [`Reader`] that grows its share as bytes
//! arrive. When a body needs more than is left, the reader that started
//! first and still holds some is *evicted*: told to stop (its request is
//! answered 503 with `Retry-After`), which gives its bytes back. A flood of
//! slow partial bodies is therefore what gives way, and a client that sends
//! its body at once keeps being served. A body that still finds nothing
//! within [`READ_WAIT`] is answered 503 itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

const KIB: u64 = 1024;

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(KIB)
}

/// A tokio semaphore counting KiB: what every budget here is made of.
#[derive(Clone, Debug)]
struct KibSemaphore {
    sem: Arc<Semaphore>,
    total_kib: u64,
}

impl KibSemaphore {
    /// `bytes`, rounded up to whole KiB (at least one).
    fn new(bytes: u64) -> Self {
        let total_kib = kib(bytes).clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    fn available_bytes(&self) -> u64 {
        self.sem.available_permits() as u64 * KIB
    }

    /// The KiB still to take for `held` to cover `total` bytes (0 when it
    /// does); `None` when `total` is more than the whole budget.
    fn shortfall(&self, held: &Option<OwnedSemaphorePermit>, total: u64) -> Option<u32> {
        let need = kib(total);
        if need > self.total_kib {
            return None;
        }
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u64);
        Some(need.saturating_sub(have) as u32)
    }
}

/// Adds `permit` to what `held` holds.
fn hold(held: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match held {
        Some(h) => h.merge(permit),
        None => *held = Some(permit),
    }
}

/// Why a [`MemoryBudget`] did not grant a permit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    /// The request is larger than the whole budget and can never be admitted.
    #[error("{bytes} bytes exceed the whole memory budget of {budget} bytes")]
    TooLarge {
        /// Bytes asked for.
        bytes: u64,
        /// Size of the whole budget.
        budget: u64,
    },
    /// The budget stayed exhausted for the whole wait.
    #[error("memory budget exhausted: {bytes} bytes not available within {waited:?}")]
    Exhausted {
        /// Bytes asked for.
        bytes: u64,
        /// How long the caller waited.
        waited: Duration,
    },
}

/// The shared in-flight memory budget; cheap to clone.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    kib: KibSemaphore,
}

impl MemoryBudget {
    /// A budget of `bytes` (rounded up to whole KiB).
    pub fn new(bytes: u64) -> Self {
        Self {
            kib: KibSemaphore::new(bytes),
        }
    }

    /// Size of the whole budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.kib.total_kib * KIB
    }

    /// Bytes currently not held by any permit.
    pub fn available_bytes(&self) -> u64 {
        self.kib.available_bytes()
    }

    fn check(&self, bytes: u64) -> Result<u32, BudgetError> {
        let n = kib(bytes);
        if n > self.kib.total_kib || n > u64::from(u32::MAX) {
            return Err(BudgetError::TooLarge {
                bytes,
                budget: self.total_bytes(),
            });
        }
        Ok(n as u32)
    }

    /// Takes `bytes` now or fails with [`BudgetError::Exhausted`].
    pub fn try_acquire(&self, bytes: u64) -> Result<MemoryPermit, BudgetError> {
        let n = self.check(bytes)?;
        match self.kib.sem.clone().try_acquire_many_owned(n) {
            Ok(permit) => Ok(MemoryPermit {
                permit: Some(permit),
            }),
            Err(TryAcquireError::NoPermits) | Err(TryAcquireError::Closed) => {
                Err(BudgetError::Exhausted {
                    bytes,
                    waited: Duration::ZERO,
                })
            }
        }
    }

    /// Takes `bytes`, waiting at most `wait` for other permits to be released.
    pub async fn acquire_timeout(
        &self,
        bytes: u64,
        wait: Duration,
    ) -> Result<MemoryPermit, BudgetError> {
        let n = self.check(bytes)?;
        let exhausted = BudgetError::Exhausted {
            bytes,
            waited: wait,
        };
        match tokio::time::timeout(wait, self.kib.sem.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(MemoryPermit {
                permit: Some(permit),
            }),
            Ok(Err(_)) | Err(_) => Err(exhausted),
        }
    }

    /// Grows `permit` by `bytes`, waiting at most `wait`.
    pub async fn grow(
        &self,
        permit: &mut MemoryPermit,
        bytes: u64,
        wait: Duration,
    ) -> Result<(), BudgetError> {
        if bytes == 0 {
            return Ok(());
        }
        if kib(permit.bytes() + bytes) > self.kib.total_kib {
            return Err(BudgetError::TooLarge {
                bytes: permit.bytes() + bytes,
                budget: self.total_bytes(),
            });
        }
        let more = self.acquire_timeout(bytes, wait).await?;
        permit.merge(more);
        Ok(())
    }
}

/// Bytes held in a [`MemoryBudget`]; released on drop.
#[derive(Debug, Default)]
pub struct MemoryPermit {
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryPermit {
    /// A permit for nothing (for tests and for data that is not accounted).
    pub fn empty() -> Self {
        Self { permit: None }
    }

    /// Bytes held (a multiple of 1 KiB).
    pub fn bytes(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64) * KIB
    }

    /// Adds `other`'s bytes to this permit.
    pub fn merge(&mut self, other: MemoryPermit) {
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    /// Splits off a permit for `bytes` (rounded up to KiB), or `None` when this
    /// permit holds fewer.
    pub fn split(&mut self, bytes: u64) -> Option<MemoryPermit> {
        let n = usize::try_from(kib(bytes)).ok()?;
        if n == 0 {
            return Some(MemoryPermit::empty());
        }
        let permit = self.permit.as_mut()?.split(n)?;
        Some(MemoryPermit {
            permit: Some(permit),
        })
    }

    /// Keeps at most `bytes` (rounded up to KiB) and releases the rest now.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = kib(bytes);
        let held = self.bytes() / KIB;
        if held > keep {
            drop(self.split((held - keep) * KIB));
        }
    }
}

/// Per-connection bound on body bytes read but not yet admitted.
#[derive(Clone, Debug)]
pub struct ConnReadBudget {
    kib: KibSemaphore,
}

impl ConnReadBudget {
    /// A connection budget of `bytes` (the compressed body limit).
    pub fn new(bytes: u64) -> Self {
        Self {
            kib: KibSemaphore::new(bytes),
        }
    }

    /// Reserves until the reservation covers `total` bytes; waits until
    /// `deadline`. Returns false when the deadline passed first or `total` can
    /// never fit.
    pub async fn reserve_to(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        total: u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let more = match self.kib.shortfall(held, total) {
            None => return false,
            Some(0) => return true,
            Some(more) => more,
        };
        let sem = &self.kib.sem;
        let permit = match sem.clone().try_acquire_many_owned(more) {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout_at(deadline, sem.clone().acquire_many_owned(more)).await
                {
                    Ok(Ok(p)) => p,
                    _ => return false,
                }
            }
        };
        hold(held, permit);
        true
    }
}

/// How long a body waits for read budget (evicting older readers meanwhile)
/// before its request is answered 503.
pub const READ_WAIT: Duration = Duration::from_secs(1);

/// The gateway-wide budget of request bodies still arriving (module docs).
#[derive(Clone, Debug)]
pub struct ReadBudget {
    inner: Arc<ReadInner>,
}

#[derive(Debug)]
struct ReadInner {
    kib: KibSemaphore,
    next_id: AtomicU64,
    /// Readers by start order, with whether they hold any and their
    /// eviction signal.
    readers: Mutex<BTreeMap<u64, Arc<Signal>>>,
}

#[derive(Debug, Default)]
struct Signal {
    /// It holds some of the budget (only such a reader is worth evicting).
    holding: AtomicBool,
    evicted: AtomicBool,
    notify: tokio::sync::Notify,
}

/// Why a [`Reader`] could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadBudgetError {
    /// Nothing was freed within [`READ_WAIT`].
    #[error("the gateway is reading as many request bodies as it can hold (--body-read-budget)")]
    Full,
    /// This reader was evicted for a newer one.
    #[error("request body stopped: the gateway needed its memory for other requests, and this body had been arriving the longest (--body-read-budget)")]
    Evicted,
}

impl ReadBudget {
    /// A budget of `bytes` (in KiB, rounded up).
    pub fn new(bytes: u64) -> Self {
        Self {
            inner: Arc::new(ReadInner {
                kib: KibSemaphore::new(bytes),
                next_id: AtomicU64::new(0),
                readers: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Bytes not held by any reader.
    pub fn available_bytes(&self) -> u64 {
        self.inner.kib.available_bytes()
    }

    /// Registers a body about to be read.
    pub fn reader(&self) -> Reader {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal::default());
        self.lock().insert(id, signal.clone());
        Reader {
            budget: self.clone(),
            id,
            signal,
            held: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Signal>>> {
        self.inner.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the oldest reader other than `me` that holds bytes to stop;
    /// false when there is none.
    fn evict_oldest(&self, me: u64) -> bool {
        let readers = self.lock();
        let victim = readers.iter().find(|(id, s)| {
            **id != me && s.holding.load(Ordering::Relaxed) && !s.evicted.load(Ordering::Relaxed)
        });
        match victim {
            Some((_, s)) => {
                s.evicted.store(true, Ordering::Relaxed);
                s.notify.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One body's share of the [`ReadBudget`]; dropping it gives the share back.
pub struct Reader {
    budget: ReadBudget,
    id: u64,
    signal: Arc<Signal>,
    held: Option<OwnedSemaphorePermit>,
}

impl Reader {
    /// Grows the share to cover `total` bytes, evicting older readers if the
    /// budget is short, waiting at most [`READ_WAIT`].
    pub async fn reserve_to(&mut self, total: u64) -> Result<(), ReadBudgetError> {
        if self.signal.evicted.load(Ordering::Relaxed) {
            return Err(ReadBudgetError::Evicted);
        }
        let kib = &self.budget.inner.kib;
        let more = match kib.shortfall(&self.held, total) {
            None => return Err(ReadBudgetError::Full),
            Some(0) => return Ok(()),
            Some(more) => more,
        };
        let permit = match kib.sem.clone().try_acquire_many_owned(more) {
            Ok(p) => p,
            Err(_) => {
                let deadline = tokio::time::Instant::now() + READ_WAIT;
                loop {
                    let evicted = self.budget.evict_oldest(self.id);
                    // An evicted reader gives its bytes back when its task
                    // next runs; look again soon.
                    let wait = if evicted {
                        Duration::from_millis(50)
                    } else {
                        Duration::from_millis(200)
                    };
                    let until = (tokio::time::Instant::now() + wait).min(deadline);
                    match tokio::time::timeout_at(until, kib.sem.clone().acquire_many_owned(more))
                        .await
                    {
                        Ok(Ok(p)) => break p,
                        Ok(Err(_)) => return Err(ReadBudgetError::Full),
                        Err(_) if tokio::time::Instant::now() >= deadline => {
                            return Err(ReadBudgetError::Full)
                        }
                        Err(_) => {}
                    }
                    if self.signal.evicted.load(Ordering::Relaxed) {
                        return Err(ReadBudgetError::Evicted);
                    }
                }
            }
        };
        hold(&mut self.held, permit);
        self.signal.holding.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Resolves once this reader has been evicted.
    pub async fn evicted(&self) {
        while !self.signal.evicted.load(Ordering::Relaxed) {
            self.signal.notify.notified().await;
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("id", &self.id)
            .field("held", &self.held.as_ref().map_or(0, |p| p.num_permits()))
            .field("evicted", &self.signal.evicted.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.budget.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_budget_evicts_the_oldest_reader_for_a_new_one() {
        let budget = ReadBudget::new(100 * 1024);
        let mut slow = budget.reader();
        slow.reserve_to(60 * 1024).await.unwrap();
        let mut slower = budget.reader();
        slower.reserve_to(30 * 1024).await.unwrap();
        assert_eq!(budget.available_bytes(), 10 * 1024);
        // A new body needs 50 KiB: the oldest reader is told to stop, and
        // when it lets go, the new one gets its bytes.
        let mut fresh = budget.reader();
        let evicted = tokio::spawn(async move {
            slow.evicted().await;
            assert_eq!(
                slow.reserve_to(70 * 1024).await,
                Err(ReadBudgetError::Evicted)
            );
            drop(slow);
        });
        fresh.reserve_to(50 * 1024).await.unwrap();
        evicted.await.unwrap();
        assert!(
            !slower.signal.evicted.load(Ordering::Relaxed),
            "only the oldest"
        );
        drop((fresh, slower));
        assert_eq!(budget.available_bytes(), 100 * 1024);
        assert!(budget.lock().is_empty());
    }

    #[tokio::test]
    async fn read_budget_full_when_nothing_can_be_freed() {
        let budget = ReadBudget::new(10 * 1024);
        let mut only = budget.reader();
        assert_eq!(only.reserve_to(20 * 1024).await, Err(ReadBudgetError::Full));
        only.reserve_to(10 * 1024).await.unwrap();
        // A reader holding nothing is no victim: `only` is told to stop,
        // `idle` (older than `other`, holding nothing) is not. `only` never
        // lets go here, so the new reader gets nothing within READ_WAIT.
        let mut idle = budget.reader();
        let started = std::time::Instant::now();
        let mut other = budget.reader();
        assert_eq!(other.reserve_to(1024).await, Err(ReadBudgetError::Full));
        assert!(started.elapsed() >= READ_WAIT);
        assert!(only.signal.evicted.load(Ordering::Relaxed));
        assert!(!idle.signal.evicted.load(Ordering::Relaxed));
        assert_eq!(
            only.reserve_to(10 * 1024).await,
            Err(ReadBudgetError::Evicted)
        );
        assert_eq!(idle.reserve_to(0).await, Ok(()));
    }

    #[tokio::test]
    async fn ingest_budget_counts_kib_and_releases_on_drop() {
        let budget = MemoryBudget::new(10 * 1024);
        let p = budget.try_acquire(1).unwrap();
        assert_eq!(p.bytes(), 1024);
        assert_eq!(budget.available_bytes(), 9 * 1024);
        let mut q = budget.try_acquire(9 * 1024).unwrap();
        assert!(matches!(
            budget.try_acquire(1),
            Err(BudgetError::Exhausted { .. })
        ));
        assert!(matches!(
            budget.try_acquire(11 * 1024),
            Err(BudgetError::TooLarge { .. })
        ));
        let part = q.split(4 * 1024).unwrap();
        assert_eq!(q.bytes(), 5 * 1024);
        drop(part);
        assert_eq!(budget.available_bytes(), 4 * 1024);
        q.shrink_to(1024);
        assert_eq!(budget.available_bytes(), 8 * 1024);
        drop((p, q));
        assert_eq!(budget.available_bytes(), 10 * 1024);
    }

    #[tokio::test]
    async fn ingest_budget_wait_times_out_then_succeeds_after_release() {
        let budget = MemoryBudget::new(4 * 1024);
        let held = budget.try_acquire(4 * 1024).unwrap();
        let err = budget
            .acquire_timeout(1024, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, BudgetError::Exhausted { .. }));
        let b2 = budget.clone();
        let waiter =
            tokio::spawn(async move { b2.acquire_timeout(1024, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap().bytes(), 1024);
    }
}
