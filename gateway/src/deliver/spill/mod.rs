//! Spill: a durable disk queue per target (SPEC §5, issue 6).
//!
//! A target whose backlog outgrows memory moves its batches here; on restart
//! every target's backlog is found again with [`list_backlogs`] and reopened
//! with [`DiskQueue::open`]. The queue stores the *final compressed request
//! bodies*, so replay sends the same bytes without re-encoding.
//!
//! # On-disk layout
//! ```text
//! <data-dir>/spill/<target-dir>/            target id, percent-encoded (target_dir)
//!     00000000000000000001.seg              segments, append-only, ids increasing
//!     00000000000000000002.seg
//!     ledger                                acked seq: two slots, rewritten in place
//!     target.json                           manifest: target id, lanes, routes (manifest.rs)
//! ```
//! A segment is a sequence of records, all integers little-endian:
//! ```text
//! magic "FSP1" | body_len u32 | crc32 u32 | seq u64 | enqueued_ms u64 | tag u64 | samples u32 | payload
//!                \____________ crc32 (IEEE, crc32fast) covers body_len and everything after ____/
//! ```
//! `body_len` is 28 + payload length, at most 28 + 128 MiB. A record that
//! recovery retired has its magic overwritten with `"FSPX"` (a tombstone);
//! scans skip it. The ledger is 1 KiB: two 512-byte slots, each
//! `"FSPLDG01" | acked_seq u64 | crc32 u32`. An ack is written in place into
//! the slot of its parity and fsynced; open takes the highest valid slot (a
//! torn write leaves the other). The whole file is written when the queue
//! opens, so an ack never needs a free block: on a full disk acks are still
//! recorded and delivered segments deleted, and the disk frees itself as the
//! backlog drains (a ledger replaced through a temp file and a rename needed
//! space, and a full disk stayed full).
//!
//! # Invariants
//! - Every record has a queue-wide sequence number, strictly increasing
//!   across segments from 1; after all segments are deleted numbering goes
//!   on from the ledger, so a new record is never mistaken for an acked one.
//! - A record is acked (delivered, or dropped for the budget) iff its seq is
//!   `<= acked_seq`; acks are a prefix ([`DiskQueue::ack_through`]), so
//!   delivery acks the contiguous run of completed batches. Unacked records
//!   are replayed on open, in seq order; acked ones never are, once the
//!   ledger that covers them is durable.
//! - A segment is deleted only when all its records are acked, and only after
//!   the ledger recording that is fsynced: a crash can never leave a gap that
//!   recovery would mistake for loss. The segment being written goes too once
//!   all of it is acked and it holds 1 MiB, or an append just failed for lack
//!   of space (on a disk smaller than a segment it would never roll).
//! - Budget: the bytes of unacked records (frames, as on disk) stay within
//!   `budget_bytes`; an append that would exceed it first drops the oldest
//!   records, counted in [`AppendOutcome`] (`disk_full`). Disk use can exceed
//!   the budget by the acked part of the oldest segment, so segments are at
//!   most a quarter of the budget ([`DiskQueueConfig::effective_segment_bytes`]).
//! - Memory: an index entry (about 56 bytes) per unacked record; no payload
//!   is kept in memory.
//!
//! # Failure handling
//! - Open verifies every frame of every segment. A frame with a bad checksum
//!   whose length field is vouched for (the next frame starts with a valid
//!   magic, or it ends exactly at the end of the file) is retired with a
//!   tombstone and the records after it are kept; otherwise the segment is
//!   cut at the last good record. [`Recovery`] reports the bytes cut, the
//!   records lost and whether the last segment had a torn tail; the queue is
//!   never thrown away. A damaged ledger replays everything (duplicates, not
//!   loss).
//! - A checksum failure while reading drops that record, counted in
//!   [`SpillStats::corrupt_records`]. An I/O error while reading skips
//!   nothing: [`DiskQueue::read`] hands out the records read before it and
//!   returns the error only when it read none (delivery then marks the
//!   queue broken so the reopen below retries).
//! - Every I/O error is returned as [`SpillError::Io`] naming the operation
//!   and path; nothing panics and nothing exits. A failed write (ENOSPC in
//!   the middle of a record) is taken back (truncate; segments are
//!   `O_APPEND`) or the segment abandoned; it does not break the queue, and
//!   the next append works once there is space.
//! - A failed sync round (fsync, ledger write, directory fsync, segment
//!   delete) marks the queue broken (after a failed fsync the kernel may
//!   have dropped dirty pages): appends and sync plans then fail with
//!   [`SpillError::Broken`], reads go on, delivery falls back to memory and
//!   load shedding. [`DiskQueue::reopen`] (or [`DiskQueue::recover`] without
//!   a lock, then [`DiskQueue::adopt`]) re-runs the open recovery on the
//!   directory, fsyncs what stays, and continues in place: seqs keep rising,
//!   the in-memory acked seq and read cursor are kept, and unread records no
//!   longer on disk are reported ([`Reopened`]). Recovery never creates
//!   the directory (one that was moved away must not come back empty),
//!   except for [`DiskQueue::unopened`], the broken placeholder of a queue
//!   whose first open failed. Open deletes only `ledger.tmp`, not the temp
//!   files of other writers (`target.json.tmp`).
//!   [`ReopenBackoff`] paces the attempts (1 s, doubling to 30 s, also
//!   across a reopen that breaks again within 30 s). Pages the
//!   kernel dropped but still caches can read back fine without being on
//!   disk; the reopen cannot see that (`wal` requests that wrote them were
//!   answered 503, so clients resend them).
//!
//! # Durability
//! Appends are `write(2)`s straight to the segment (no user-space buffer),
//! so a process crash loses nothing appended. [`GroupCommit`] runs a thread
//! per queue that fsyncs: for `durability: wal` ingest awaits
//! [`GroupCommit::durable`] for its seq before answering 2xx, and every
//! request waiting while one fsync runs is answered by the next one; for
//! `memory` it syncs every `flush_interval`.

mod commit;
mod files;
pub(crate) mod format;
mod manifest;
mod queue;
mod types;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use commit::{lock_queue, Durable, GroupCommit};
pub use format::{MAX_PAYLOAD, RECORD_OVERHEAD};
pub use manifest::{
    move_dir, successor, sync_parent, take_over, LaneKey, Manifest, ManifestRoute, Successor,
    MANIFEST_FILE, MANIFEST_VERSION,
};
pub use queue::{DiskQueue, SyncPlan};
pub use types::{
    AppendOutcome, DiskQueueConfig, QueuedRecord, Record, Recovered, Recovery, ReopenBackoff,
    Reopened, SpillStats,
};

/// Name of the ledger file in a queue directory.
pub const LEDGER_FILE: &str = "ledger";
/// Extension of segment files.
pub const SEGMENT_EXT: &str = ".seg";
/// Folder under `--data-dir` that holds one directory per target.
pub const SPILL_DIR: &str = "spill";
/// Marker file of an orphan backlog (a queue directory whose target is not
/// running): its modification time is when the gateway first found it so.
/// The retention of orphans counts from there, not from the age of the data,
/// so a backlog that built up for days is still kept for the whole retention
/// after its target leaves the registry. A target that opens the directory
/// again removes the marker ([`clear_orphan_mark`]).
pub const ORPHAN_MARK: &str = "orphaned";

/// A spill failure; every variant names what and where.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpillError {
    /// An operating-system error on a spill file.
    #[error("spill: {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `fsync`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A record cannot be stored at all.
    #[error("spill: record of {size} bytes exceeds the {what} of {limit} bytes")]
    TooLarge {
        /// Its size on disk.
        size: u64,
        /// The limit.
        limit: u64,
        /// Which limit.
        what: &'static str,
    },
    /// An earlier sync failed; the queue must be reopened.
    #[error("spill: queue {} unusable after an earlier error ({reason}); it is reopened to recover", path.display())]
    Broken {
        /// The queue directory.
        path: PathBuf,
        /// The earlier error.
        reason: String,
    },
    /// The group-commit thread is gone.
    #[error("spill: sync thread stopped")]
    Closed,
}

impl SpillError {
    /// True for a failure for lack of space (ENOSPC, or a disk quota): it
    /// ends by itself once space is freed, delivered segments included.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }

    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

/// The queue directory of `target_id` under `data_dir`.
///
/// Ids are percent-encoded except ASCII letters, digits, `-` and `_`, so any
/// id maps to one safe file name (`.` and `/` are encoded too).
pub fn target_dir(data_dir: &Path, target_id: &str) -> PathBuf {
    let mut name = String::with_capacity(target_id.len());
    for b in target_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.is_empty() {
        name.push('%');
    }
    data_dir.join(SPILL_DIR).join(name)
}

/// Inverse of the file name encoding of [`target_dir`].
fn decode_target(name: &str) -> Option<String> {
    if name == "%" {
        return Some(String::new());
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A target backlog found on disk by [`list_backlogs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The target id.
    pub target_id: String,
    /// Its queue directory.
    pub dir: PathBuf,
    /// Bytes of its segment files (acked data not yet deleted included).
    pub disk_bytes: u64,
    /// Number of segment files.
    pub segments: u64,
    /// Modification time of its oldest segment.
    pub oldest_modified: Option<SystemTime>,
    /// Since when it is an orphan ([`ORPHAN_MARK`]), if marked.
    pub orphaned_since: Option<SystemTime>,
}

/// Marks the queue directory `dir` as an orphan since `now`, unless it is
/// marked already; returns since when it is one.
pub fn mark_orphan(dir: &Path, now: SystemTime) -> Result<SystemTime, SpillError> {
    let path = dir.join(ORPHAN_MARK);
    if let Ok(since) = std::fs::metadata(&path).and_then(|m| m.modified()) {
        return Ok(since);
    }
    let file = std::fs::File::create(&path).map_err(|e| SpillError::io("create", &path, e))?;
    file.set_modified(now)
        .map_err(|e| SpillError::io("set time of", &path, e))?;
    Ok(now)
}

/// Removes the orphan mark of `dir` (its target runs again).
pub fn clear_orphan_mark(dir: &Path) -> Result<(), SpillError> {
    let path = dir.join(ORPHAN_MARK);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpillError::io("remove", &path, e)),
    }
}

/// Every target queue under `data_dir`, including targets no longer in the
/// registry, from directory metadata only (cheap at start-up). Open each with
/// [`DiskQueue::open`] for exact records and ages.
pub fn list_backlogs(data_dir: &Path) -> Result<Vec<Backlog>, SpillError> {
    let root = data_dir.join(SPILL_DIR);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SpillError::io("list", &root, e)),
    };
    let mut out = Vec::new();
    for ent in entries {
        let ent = ent.map_err(|e| SpillError::io("list", &root, e))?;
        let dir = ent.path();
        if !dir.is_dir() {
            continue;
        }
        let Some(target_id) = ent.file_name().to_str().and_then(decode_target) else {
            tracing::warn!(path = %dir.display(), "spill: ignoring directory with a name that is no target id");
            continue;
        };
        let mut b = Backlog {
            target_id,
            dir: dir.clone(),
            disk_bytes: 0,
            segments: 0,
            oldest_modified: None,
            orphaned_since: std::fs::metadata(dir.join(ORPHAN_MARK))
                .and_then(|m| m.modified())
                .ok(),
        };
        for seg in std::fs::read_dir(&dir).map_err(|e| SpillError::io("list", &dir, e))? {
            let seg = seg.map_err(|e| SpillError::io("list", &dir, e))?;
            if !seg.file_name().to_string_lossy().ends_with(SEGMENT_EXT) {
                continue;
            }
            let md = seg
                .metadata()
                .map_err(|e| SpillError::io("stat", &seg.path(), e))?;
            b.disk_bytes += md.len();
            b.segments += 1;
            if let Ok(m) = md.modified() {
                b.oldest_modified = Some(b.oldest_modified.map_or(m, |o| o.min(m)));
            }
        }
        out.push(b);
    }
    out.sort_by(|a, b| a.target_id.cmp(&b.target_id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_round_trip() {
        for id in ["prom-dev", "a/b", "..", "", "é x.y", "%41"] {
            let d = target_dir(Path::new("/d"), id);
            let name = d.file_name().unwrap().to_str().unwrap();
            assert!(!name.contains('/') && name != "." && name != "..");
            assert_eq!(decode_target(name).as_deref(), Some(id), "{id}");
        }
    }
}
