//! A small pool of body buffers.
//!
//! Compressed request bodies are read into pooled `Vec<u8>`s so a steady
//! stream of similar-sized requests reuses the same few allocations. The pool
//! is bounded twice: it keeps at most `max_buffers` buffers, and a buffer that
//! grew beyond `max_keep` bytes is freed rather than kept, so one huge request
//! does not pin its memory forever.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Shared pool of byte buffers; cheap to clone.
#[derive(Clone, Debug)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    free: Mutex<Vec<Vec<u8>>>,
    max_buffers: usize,
    max_keep: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_buffers` buffers of at most `max_keep` bytes.
    pub fn new(max_buffers: usize, max_keep: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                free: Mutex::new(Vec::with_capacity(max_buffers)),
                max_buffers,
                max_keep,
            }),
        }
    }

    /// An empty buffer with at least `capacity` bytes reserved.
    pub fn get(&self, capacity: usize) -> PooledBuf {
        let mut buf = self
            .inner
            .free
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }

    /// Buffers currently waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.inner.free.lock().map(|f| f.len()).unwrap_or(0)
    }

    fn put(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.inner.max_keep {
            return;
        }
        if let Ok(mut free) = self.inner.free.lock() {
            if free.len() < self.inner.max_buffers {
                free.push(buf);
            }
        }
    }
}

/// A buffer that goes back to its pool on drop.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_pool_reuses_and_bounds_buffers() {
        let pool = BufferPool::new(1, 1024);
        let mut a = pool.get(100);
        a.extend_from_slice(b"hello");
        let cap = a.capacity();
        drop(a);
        assert_eq!(pool.pooled(), 1);
        let b = pool.get(10);
        assert!(b.is_empty());
        assert_eq!(b.capacity(), cap);
        let c = pool.get(10);
        drop(b);
        drop(c);
        assert_eq!(pool.pooled(), 1, "at most max_buffers are kept");
        let big = pool.get(4096);
        drop(big);
        assert_eq!(pool.pooled(), 0, "oversized buffers are freed");
    }
}
