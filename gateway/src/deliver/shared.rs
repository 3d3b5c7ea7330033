//! Compressed batches shared between targets that form the same batch
//! (SPEC §5 "Fan-out cost": built and compressed once, bytes shared).
//!
//! # Why a memo, not a shared queue
//! Targets that receive the same series with the same labels (one label
//! variant of a Deployment) get the very same chunks: refcounted slices of
//! one encoded request buffer, pushed to each of them in the same order at
//! the same instant. Each target still keeps its own queue of those slices,
//! so a slow target lags on its own position and only holds what it has not
//! sent (the slices, not copies). When two such targets form a batch they
//! take the same slices in the same order (oldest first across their lanes,
//! same `maxSamplesPerSend`), so the second can reuse the first's
//! compressed body instead of copying and compressing the same bytes again.
//! [`SharedBatches`] is that memo: the first target to form a batch
//! publishes `(recipe, body)`, the others find it by recipe.
//!
//! # Identity
//! A recipe is the exact list of slices a batch is made of, compared by
//! address and length. An entry holds clones of those slices, so the
//! buffers they point into stay allocated while the entry lives and an
//! address can never be reused by other bytes: equal addresses and lengths
//! are equal contents. A target whose batch differs (another lane count,
//! a retry split, data copied out on lag, a variant it alone receives)
//! simply misses and compresses its own.
//!
//! # Bounds
//! Only batches made wholly of chunks that several targets were given are
//! published, and an entry leaves as soon as the other targets that were
//! given them found it (`sharers - 1` finds), or after [`MAX_AGE`], and
//! the memo holds at most [`MAX_ENTRIES`] (oldest evicted first). The
//! slices an entry holds are counted in the memory budget by the chunks
//! that queued them; an entry keeps them alive at most [`MAX_AGE`] longer.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long a published batch can be found.
pub const MAX_AGE: Duration = Duration::from_millis(500);
/// Most batches kept.
pub const MAX_ENTRIES: usize = 128;

/// A batch published for the targets that form the same one.
#[derive(Debug, Clone)]
pub struct SharedBody {
    /// The snappy-compressed `WriteRequest`.
    pub body: Bytes,
}

#[derive(Debug)]
struct Entry {
    key: u64,
    pieces: Vec<Bytes>,
    body: Bytes,
    at: Instant,
    /// Finds still expected.
    remaining: u16,
}

/// The memo of recently compressed batches, shared by every target of a
/// gateway. Cheap to consult: one short lock per batch formed.
#[derive(Debug, Default)]
pub struct SharedBatches {
    entries: Mutex<VecDeque<Entry>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The key of a recipe: a hash of its slices' addresses and lengths.
pub fn recipe_key<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in pieces {
        (p.as_ptr() as usize).hash(&mut h);
        p.len().hash(&mut h);
    }
    h.finish()
}

fn same<'a>(a: &[Bytes], b: impl ExactSizeIterator<Item = &'a [u8]>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.as_ptr() == y.as_ptr() && x.len() == y.len())
}

impl SharedBatches {
    /// An empty memo.
    pub fn new() -> SharedBatches {
        SharedBatches::default()
    }

    /// The body published for exactly the slices `pieces` (key `key`), if
    /// it is still there.
    pub fn find<'a, I>(&self, key: u64, pieces: I, now: Instant) -> Option<SharedBody>
    where
        I: ExactSizeIterator<Item = &'a [u8]> + Clone,
    {
        let found = self.entries.lock().ok().and_then(|mut e| {
            expire(&mut e, now);
            let at = e
                .iter()
                .rposition(|x| x.key == key && same(&x.pieces, pieces.clone()))?;
            let x = &mut e[at];
            let body = x.body.clone();
            x.remaining = x.remaining.saturating_sub(1);
            if x.remaining == 0 {
                e.remove(at);
            }
            Some(SharedBody { body })
        });
        match &found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Publishes `body`, made of exactly `pieces` (key `key`), for
    /// `remaining` other targets.
    pub fn publish(&self, key: u64, pieces: Vec<Bytes>, body: Bytes, remaining: u16, now: Instant) {
        if remaining == 0 {
            return;
        }
        if let Ok(mut e) = self.entries.lock() {
            expire(&mut e, now);
            if e.len() >= MAX_ENTRIES {
                e.pop_front();
            }
            e.push_back(Entry {
                key,
                pieces,
                body,
                at: now,
                remaining,
            });
        }
    }

    /// Batches found (compression saved) and not found so far.
    pub fn hits_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expire(e: &mut VecDeque<Entry>, now: Instant) {
    while e
        .front()
        .is_some_and(|x| now.saturating_duration_since(x.at) > MAX_AGE)
    {
        e.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_batches_match_by_slice_identity_and_expire() {
        let t0 = Instant::now();
        let memo = SharedBatches::new();
        let buf = Bytes::from(vec![7u8; 100]);
        let (a, b) = (buf.slice(0..40), buf.slice(40..100));
        let key = recipe_key([&a[..], &b[..]].into_iter());
        assert!(memo.find(key, [&a[..], &b[..]].into_iter(), t0).is_none());
        memo.publish(
            key,
            vec![a.clone(), b.clone()],
            Bytes::from_static(b"z"),
            2,
            t0,
        );
        // Another target's clones of the same slices: found.
        let (a2, b2) = (a.clone(), b.clone());
        let hit = memo.find(
            key,
            [&a2[..], &b2[..]].into_iter(),
            t0 + Duration::from_millis(5),
        );
        assert_eq!(hit.map(|h| h.body), Some(Bytes::from_static(b"z")));
        // Equal contents elsewhere are not the same slices.
        let copy = Bytes::copy_from_slice(&a);
        let key2 = recipe_key([&copy[..], &b[..]].into_iter());
        assert!(memo
            .find(key2, [&copy[..], &b[..]].into_iter(), t0)
            .is_none());
        // Another split of the same buffer: not found.
        let c = buf.slice(0..50);
        let key3 = recipe_key([&c[..]].into_iter());
        assert!(memo.find(key3, [&c[..]].into_iter(), t0).is_none());
        assert_eq!(memo.hits_misses(), (1, 3));
        // Gone after MAX_AGE.
        assert!(memo
            .find(
                key,
                [&a[..], &b[..]].into_iter(),
                t0 + MAX_AGE + Duration::from_millis(1)
            )
            .is_none());
        assert!(memo.is_empty());
        // Gone once every other sharer found it.
        memo.publish(key, vec![a.clone(), b.clone()], Bytes::new(), 1, t0);
        assert!(memo.find(key, [&a[..], &b[..]].into_iter(), t0).is_some());
        assert!(memo.is_empty());
    }

    #[test]
    fn shared_batches_are_bounded() {
        let t0 = Instant::now();
        let memo = SharedBatches::new();
        let buf = Bytes::from(vec![0u8; MAX_ENTRIES + 10]);
        for i in 0..MAX_ENTRIES + 10 {
            let s = buf.slice(i..i + 1);
            memo.publish(
                recipe_key([&s[..]].into_iter()),
                vec![s],
                Bytes::new(),
                1,
                t0,
            );
        }
        assert_eq!(memo.len(), MAX_ENTRIES);
    }
}
