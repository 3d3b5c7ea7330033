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
//! shared budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

const KIB: u64 = 1024;

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(KIB)
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
    sem: Arc<Semaphore>,
    total_kib: u64,
}

impl MemoryBudget {
    /// A budget of `bytes` (rounded up to whole KiB).
    pub fn new(bytes: u64) -> Self {
        let total_kib = kib(bytes).clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Size of the whole budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_kib * KIB
    }

    /// Bytes currently not held by any permit.
    pub fn available_bytes(&self) -> u64 {
        self.sem.available_permits() as u64 * KIB
    }

    fn check(&self, bytes: u64) -> Result<u32, BudgetError> {
        let n = kib(bytes);
        if n > self.total_kib || n > u64::from(u32::MAX) {
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
        match self.sem.clone().try_acquire_many_owned(n) {
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
        match tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(n)).await {
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
        if kib(permit.bytes() + bytes) > self.total_kib {
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
    sem: Arc<Semaphore>,
    total_kib: u64,
}

impl ConnReadBudget {
    /// A connection budget of `bytes` (the compressed body limit).
    pub fn new(bytes: u64) -> Self {
        let total_kib = kib(bytes).clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
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
        let need = kib(total);
        if need > self.total_kib {
            return false;
        }
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u64);
        if need <= have {
            return true;
        }
        let more = (need - have) as u32;
        let permit = match self.sem.clone().try_acquire_many_owned(more) {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout_at(deadline, self.sem.clone().acquire_many_owned(more))
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => return false,
                }
            }
        };
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
