//! [`DiskQueue`]: one target's append-only segment queue (synchronous core).
//!
//! See the parent module for the on-disk layout and the invariants.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::files::{recover_segment, reserve_ledger, segment_name, sync_dir, write_ledger};
use super::format::{self, Header, FRAME_PREFIX, RECORD_OVERHEAD};
use super::manifest::Manifest;
use super::types::{
    AppendOutcome, DiskQueueConfig, QueuedRecord, Record, Recovered, Recovery, Reopened, SpillStats,
};
use super::{SpillError, LEDGER_FILE, SEGMENT_EXT};

/// A fully acked active segment at least this large is retired (deleted at
/// the next sync round) instead of growing until it rolls.
const RETIRE_ACKED_ACTIVE: u64 = 1 << 20;

/// The temp file through which older versions replaced the ledger; deleted
/// on open.
const LEDGER_TMP: &str = "ledger.tmp";

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    len: u64,
    /// Highest seq stored in it (0 when none).
    last_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    segment: u64,
    offset: u64,
    frame_len: u64,
    samples: u32,
    enqueued_ms: u64,
    tag: u64,
}

/// Work for one durability round, captured under the queue lock and run
/// without it (see [`DiskQueue::plan_sync`]).
#[derive(Debug)]
pub struct SyncPlan {
    files: Vec<(PathBuf, Arc<File>)>,
    dir: Option<PathBuf>,
    ledger: Option<(PathBuf, u64)>,
    delete: Vec<PathBuf>,
    /// Every record with a seq up to this one is durable once the plan ran.
    pub written_seq: u64,
}

impl SyncPlan {
    /// True when running it would not touch the disk.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.dir.is_none()
            && self.ledger.is_none()
            && self.delete.is_empty()
    }

    /// True when it deletes segments: space comes back once it ran (then
    /// call [`DiskQueue::space_freed`]).
    pub fn frees_space(&self) -> bool {
        !self.delete.is_empty()
    }

    /// True when it calls fsync on segment data.
    pub fn syncs_data(&self) -> bool {
        !self.files.is_empty()
    }

    /// Runs the round: fsyncs written segments, writes the ledger (in place,
    /// fsync), fsyncs the directory, then deletes consumed segments
    /// (deletion must follow a durable ledger, or a crash would look like
    /// data loss).
    pub fn execute(self) -> Result<(), SpillError> {
        for (path, f) in &self.files {
            f.sync_data()
                .map_err(|e| SpillError::io("fsync", path, e))?;
        }
        if let Some((path, acked)) = &self.ledger {
            write_ledger(path, *acked, true)?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir)?;
        }
        for p in &self.delete {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpillError::io("delete", p, e)),
            }
        }
        Ok(())
    }
}

/// A per-target durable queue of compressed batches: see the module docs.
#[derive(Debug)]
pub struct DiskQueue {
    dir: PathBuf,
    cfg: DiskQueueConfig,
    /// Segments on disk, oldest first; the last one takes appends when
    /// `active` is set.
    segments: VecDeque<Segment>,
    active: Option<Arc<File>>,
    /// Unacked records, oldest first.
    index: VecDeque<Entry>,
    /// Records at the front of `index` already handed out by `read`.
    in_flight: usize,
    queued_bytes: u64,
    next_seq: u64,
    acked_seq: u64,
    /// What the last ledger write recorded, and the last fsynced one.
    ledger_written: u64,
    ledger_synced: u64,
    /// Highest segment id ever used in this directory.
    last_segment_id: u64,
    /// Segments closed since the last sync plan, still to fsync.
    unsynced: Vec<(PathBuf, Arc<File>)>,
    active_dirty: bool,
    dir_dirty: bool,
    /// Consumed segments, deleted after the next durable ledger.
    consumed: Vec<PathBuf>,
    reader: Option<(u64, File)>,
    broken: Option<String>,
    /// Budget drops of appends that then failed, for the next outcome.
    unreported: AppendOutcome,
    /// False for a placeholder made by [`DiskQueue::unopened`].
    opened: bool,
    /// Made by [`DiskQueue::open_deferred`] on a directory that did not
    /// exist: nothing is on disk until the first append makes it.
    deferred: bool,
    /// The manifest to write when a deferred queue makes its directory
    /// ([`DiskQueue::defer_manifest`]).
    manifest: Option<Manifest>,
    dropped_records: u64,
    corrupt_records: u64,
    /// See [`SpillStats::space_short`].
    space_short: bool,
}

impl DiskQueue {
    /// Opens (creating if needed) the queue in `dir`, verifies every segment
    /// and cuts or retires what is damaged. See [`Recovery`].
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: DiskQueueConfig,
    ) -> Result<(DiskQueue, Recovery), SpillError> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| SpillError::io("create", dir, e))?;
        DiskQueue::open_existing(dir, cfg)
    }

    /// [`Self::open`], except that a directory that does not exist is made
    /// (with its ledger and manifest) only at the first append: a target
    /// that never spills touches no file. At 10,000 targets, making them
    /// all at start (a directory, a ledger and a manifest each, with their
    /// fsyncs) took most of the 8-15 s to ready.
    pub fn open_deferred(
        dir: impl AsRef<Path>,
        cfg: DiskQueueConfig,
    ) -> Result<(DiskQueue, Recovery), SpillError> {
        let dir = dir.as_ref();
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut q = DiskQueue::blank(dir.to_path_buf(), cfg, 0);
                q.deferred = true;
                Ok((q, Recovery::default()))
            }
            _ => DiskQueue::open(dir, cfg),
        }
    }

    /// Whether its directory is still to be made ([`Self::open_deferred`]).
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// Keeps `m` to write when this deferred queue makes its directory, or
    /// hands it back to be written into [`Self::dir`] now.
    pub fn defer_manifest(&mut self, m: Manifest) -> Option<Manifest> {
        if self.deferred {
            self.manifest = Some(m);
            return None;
        }
        Some(m)
    }

    /// Makes the directory of a deferred queue, durably (its entry in the
    /// parent too), with its ledger and manifest. On an error nothing
    /// changes: the next append tries again.
    fn make_dir(&mut self) -> Result<(), SpillError> {
        fs::create_dir_all(&self.dir).map_err(|e| SpillError::io("create", &self.dir, e))?;
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent)?;
        }
        write_ledger(&self.dir.join(LEDGER_FILE), self.acked_seq, true)?;
        match &self.manifest {
            Some(m) => m.write(&self.dir)?,
            None => sync_dir(&self.dir)?,
        }
        self.deferred = false;
        self.manifest = None;
        Ok(())
    }

    /// [`Self::open`] of a directory that must exist: never creates it.
    fn open_existing(
        dir: &Path,
        cfg: DiskQueueConfig,
    ) -> Result<(DiskQueue, Recovery), SpillError> {
        let dir = dir.to_path_buf();
        let mut rec = Recovery::default();

        let ledger_path = dir.join(LEDGER_FILE);
        let acked_seq = match fs::read(&ledger_path) {
            Ok(b) => match format::decode_ledger_file(&b) {
                Some(a) => a,
                None => {
                    rec.ledger_reset = true;
                    0
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(SpillError::io("read", &ledger_path, e)),
        };

        let mut ids = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| SpillError::io("list", &dir, e))? {
            let ent = ent.map_err(|e| SpillError::io("list", &dir, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == LEDGER_TMP {
                // Left by a version that replaced the ledger through a
                // temp file (a write that never reached its rename). Other temp
                // files (`target.json.tmp`) belong to writers that may run
                // while a broken queue is recovered: left alone.
                let _ = fs::remove_file(ent.path());
            } else if let Some(id) = name
                .strip_suffix(SEGMENT_EXT)
                .and_then(|s| s.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let mut q = DiskQueue::blank(dir.clone(), cfg, acked_seq);
        let mut max_seq = acked_seq;
        // Highest seq seen on disk: seqs must increase across segments too.
        let mut seen_seq = 0;
        let n = ids.len();
        for (i, id) in ids.into_iter().enumerate() {
            let path = dir.join(segment_name(id));
            let scan = recover_segment(&path, seen_seq + 1, i + 1 == n, &mut rec)?;
            let mut last_seq = 0;
            for f in &scan.records {
                last_seq = f.header.seq;
                max_seq = max_seq.max(f.header.seq);
                seen_seq = f.header.seq;
                if f.header.seq <= acked_seq {
                    continue;
                }
                q.index.push_back(Entry {
                    seq: f.header.seq,
                    segment: id,
                    offset: f.offset,
                    frame_len: f.frame_len,
                    samples: f.header.samples,
                    enqueued_ms: f.header.enqueued_ms,
                    tag: f.header.tag,
                });
                q.queued_bytes += f.frame_len;
            }
            q.last_segment_id = id;
            let seg = Segment {
                id,
                path,
                len: scan.good_end,
                last_seq,
            };
            if last_seq <= acked_seq {
                // Fully delivered (or empty): its deletion may not have
                // reached the disk before the last stop.
                q.consumed.push(seg.path);
            } else {
                q.segments.push_back(seg);
            }
        }
        q.next_seq = max_seq + 1;
        rec.records = q.index.len() as u64;
        rec.bytes = q.queued_bytes;
        if rec.ledger_reset {
            // Force a rewrite at the next flush.
            q.ledger_written = u64::MAX;
            q.ledger_synced = u64::MAX;
        } else {
            reserve_ledger(&ledger_path, acked_seq);
        }
        Ok((q, rec))
    }

    /// A queue with nothing in it and no file touched.
    fn blank(dir: PathBuf, cfg: DiskQueueConfig, acked_seq: u64) -> DiskQueue {
        DiskQueue {
            dir,
            cfg,
            segments: VecDeque::new(),
            active: None,
            index: VecDeque::new(),
            in_flight: 0,
            queued_bytes: 0,
            next_seq: acked_seq + 1,
            acked_seq,
            ledger_written: acked_seq,
            ledger_synced: acked_seq,
            last_segment_id: 0,
            unsynced: Vec::new(),
            active_dirty: false,
            dir_dirty: false,
            consumed: Vec::new(),
            reader: None,
            broken: None,
            space_short: false,
            unreported: AppendOutcome::default(),
            opened: true,
            deferred: false,
            manifest: None,
            dropped_records: 0,
            corrupt_records: 0,
        }
    }

    /// A placeholder for a queue whose [`Self::open`] failed with `error`:
    /// broken (appends fail) until [`Self::reopen`] succeeds.
    pub fn unopened(dir: impl AsRef<Path>, cfg: DiskQueueConfig, error: &SpillError) -> DiskQueue {
        let mut q = DiskQueue::blank(dir.as_ref().to_path_buf(), cfg, 0);
        q.opened = false;
        q.broken = Some(error.to_string());
        q
    }

    /// The directory of this queue.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The caller renamed this queue's directory to `dir` while holding the
    /// queue lock (its target's config changed live). Open files stay
    /// valid; every path the queue keeps (segments, segments to delete, the
    /// ledger) now points into `dir`. A sync round planned before the rename
    /// would fail on the old paths (breaking the queue): rename while holding
    /// [`super::GroupCommit::hold_rounds`], and never while the queue is
    /// broken (a reopen may be recovering the old path without the lock).
    pub fn moved_to(&mut self, dir: &Path) {
        let old = std::mem::replace(&mut self.dir, dir.to_path_buf());
        let rebase = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix(&old) {
                *p = dir.join(rest);
            }
        };
        for s in &mut self.segments {
            rebase(&mut s.path);
        }
        for p in &mut self.consumed {
            rebase(p);
        }
        for (p, _) in &mut self.unsynced {
            rebase(p);
        }
    }

    /// Appends one record, first dropping the oldest records if the budget
    /// would be exceeded. The data reaches the OS at once; it is durable after
    /// the next synced flush (see [`super::GroupCommit`]).
    pub fn append(&mut self, record: &Record) -> Result<AppendOutcome, SpillError> {
        if let Some(reason) = &self.broken {
            return Err(SpillError::Broken {
                path: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        if self.deferred {
            self.make_dir().inspect_err(|e| {
                if e.is_out_of_space() {
                    self.space_short = true;
                }
            })?;
        }
        let payload = &record.body[..];
        if payload.len() > format::MAX_PAYLOAD {
            return Err(SpillError::TooLarge {
                size: payload.len() as u64,
                limit: format::MAX_PAYLOAD as u64,
                what: "maximum record size",
            });
        }
        let frame_len = (RECORD_OVERHEAD + payload.len()) as u64;
        if frame_len > self.cfg.budget_bytes {
            return Err(SpillError::TooLarge {
                size: frame_len,
                limit: self.cfg.budget_bytes,
                what: "disk budget",
            });
        }
        // Drops of appends that failed after dropping are reported here.
        let mut out = std::mem::take(&mut self.unreported);
        let before = out.dropped_records;
        while self.queued_bytes + frame_len > self.cfg.budget_bytes {
            let Some(e) = self.index.pop_front() else {
                break;
            };
            self.in_flight = self.in_flight.saturating_sub(1);
            self.queued_bytes -= e.frame_len;
            self.acked_seq = e.seq;
            out.dropped_records += 1;
            out.dropped_bytes += e.frame_len;
            out.dropped_samples += u64::from(e.samples);
            out.dropped_through = Some(e.seq);
        }
        self.dropped_records += out.dropped_records - before;
        if out.dropped_records > before {
            self.collect_consumed();
        }
        match self.write_record(record, frame_len) {
            Ok(seq) => {
                out.seq = seq;
                Ok(out)
            }
            Err(e) => {
                self.unreported = out;
                Err(e)
            }
        }
    }

    /// Writes one frame at the end of the active segment (rolling first if
    /// needed) and indexes it; a failed write is taken back.
    fn write_record(&mut self, record: &Record, frame_len: u64) -> Result<u64, SpillError> {
        let payload = &record.body[..];
        let seg_limit = self.cfg.effective_segment_bytes();
        let need_roll = match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(s)) => s.len > 0 && s.len + frame_len > seg_limit,
            _ => true,
        };
        if need_roll {
            self.roll()?;
        }
        let (Some(file), Some(seg)) = (self.active.clone(), self.segments.back_mut()) else {
            return Err(SpillError::Broken {
                path: self.dir.clone(),
                reason: "no active segment".into(),
            });
        };
        let seq = self.next_seq;
        let header = Header {
            seq,
            enqueued_ms: record.enqueued_ms,
            tag: record.tag,
            samples: record.samples,
        };
        let prefix = format::encode_prefix(&header, payload);
        let res = write_frame(&file, &prefix, payload);
        if let Err(e) = res {
            // Take the partial frame back; if even that fails, stop appending
            // to this segment (recovery cuts the torn tail on the next open).
            if file.set_len(seg.len).is_err() {
                self.active = None;
            }
            let err = SpillError::io("write", &seg.path, e);
            if err.is_out_of_space() {
                // Delivered data may be what fills the disk: the active
                // segment goes too once all of it is acked.
                self.space_short = true;
                self.collect_consumed();
            }
            return Err(err);
        }
        let offset = seg.len;
        seg.len += frame_len;
        seg.last_seq = seq;
        self.active_dirty = true;
        self.space_short = false;
        self.next_seq += 1;
        self.index.push_back(Entry {
            seq,
            segment: seg.id,
            offset,
            frame_len,
            samples: record.samples,
            enqueued_ms: record.enqueued_ms,
            tag: record.tag,
        });
        self.queued_bytes += frame_len;
        Ok(seq)
    }

    /// Starts a new segment; the old one is left for the next sync to fsync.
    fn roll(&mut self) -> Result<(), SpillError> {
        let id = self.last_segment_id + 1;
        let path = self.dir.join(segment_name(id));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| SpillError::io("create", &path, e))?;
        if let (Some(old), Some(seg)) = (self.active.take(), self.segments.back()) {
            if self.active_dirty {
                self.unsynced.push((seg.path.clone(), old));
            }
        }
        self.last_segment_id = id;
        self.active = Some(Arc::new(file));
        self.active_dirty = false;
        self.dir_dirty = true;
        self.segments.push_back(Segment {
            id,
            path,
            len: 0,
            last_seq: 0,
        });
        self.collect_consumed();
        Ok(())
    }

    /// Hands out up to `max_records` records (and at most `max_bytes` of
    /// payload, but always at least one) after those already handed out.
    /// They stay queued until [`Self::ack_through`]; [`Self::rewind`] hands
    /// them out again. A record whose checksum fails is dropped and counted.
    ///
    /// An I/O error ends the read: the records read before it are returned
    /// (handed out), and the error only when there are none; the record that
    /// failed and those after it stay unread, so a later read (or a read
    /// after [`Self::reopen`]) hands them out. Nothing is skipped.
    pub fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedRecord>, SpillError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_records {
            // A run of frames side by side in one segment is read with one
            // pread (records are appended so: a backlog's replay was two
            // syscalls and an allocation per record).
            let mut run: Vec<Entry> = Vec::new();
            let mut run_bytes = bytes;
            while out.len() + run.len() < max_records {
                let Some(e) = self.index.get(self.in_flight + run.len()).copied() else {
                    break;
                };
                let payload = e.frame_len as usize - RECORD_OVERHEAD;
                if (!out.is_empty() || !run.is_empty()) && run_bytes + payload > max_bytes {
                    break;
                }
                if let Some(last) = run.last() {
                    if e.segment != last.segment || e.offset != last.offset + last.frame_len {
                        break;
                    }
                }
                run_bytes += payload;
                run.push(e);
            }
            let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
                break;
            };
            let frames = match self.read_run(&first, &last) {
                Ok(x) => x,
                Err(err) if out.is_empty() => return Err(err),
                Err(err) => {
                    tracing::debug!(error = %err, seq = first.seq, handed_out = out.len(),
                        "spill read stopped at an I/O error; the records before it are handed out");
                    break;
                }
            };
            for e in run {
                // Each entry is now at `in_flight`: the ones before it were
                // handed out (`in_flight` moved past them) or removed.
                let payload = e.frame_len as usize - RECORD_OVERHEAD;
                let start = (e.offset - first.offset) as usize;
                let frame = frames.slice(start..start + e.frame_len as usize);
                match verify_frame(&frame, e.seq) {
                    Some(body) => {
                        self.in_flight += 1;
                        bytes += payload;
                        out.push(QueuedRecord {
                            seq: e.seq,
                            record: Record {
                                body,
                                samples: e.samples,
                                enqueued_ms: e.enqueued_ms,
                                tag: e.tag,
                            },
                        });
                    }
                    None => {
                        tracing::warn!(dir = %self.dir.display(), segment = e.segment, offset = e.offset, seq = e.seq,
                            "spill record failed its checksum on read; dropped");
                        self.corrupt_records += 1;
                        self.queued_bytes -= e.frame_len;
                        self.index.remove(self.in_flight);
                        if self.in_flight == 0 {
                            self.acked_seq = e.seq;
                            self.collect_consumed();
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads the frames from `first` to `last` (side by side in one
    /// segment) with one pread.
    fn read_run(&mut self, first: &Entry, last: &Entry) -> Result<Bytes, SpillError> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(segment_name(first.segment));
        let f = match &mut self.reader {
            Some((id, f)) if *id == first.segment => f,
            reader => {
                let f = File::open(&path).map_err(|err| SpillError::io("open", &path, err))?;
                &mut reader.insert((first.segment, f)).1
            }
        };
        let mut buf = vec![0u8; (last.offset + last.frame_len - first.offset) as usize];
        f.read_exact_at(&mut buf, first.offset)
            .map_err(|err| SpillError::io("read", &path, err))?;
        Ok(Bytes::from(buf))
    }

    /// Hands out again, from the oldest, every record not yet acked.
    pub fn rewind(&mut self) {
        self.in_flight = 0;
    }

    /// Marks every record with `seq <= through` delivered; returns how many
    /// records that removed. Segments whose records are all acked are deleted
    /// after the next synced flush.
    pub fn ack_through(&mut self, through: u64) -> u64 {
        let mut n = 0;
        while self.index.front().is_some_and(|e| e.seq <= through) {
            if let Some(e) = self.index.pop_front() {
                self.queued_bytes -= e.frame_len;
                self.in_flight = self.in_flight.saturating_sub(1);
                n += 1;
            }
        }
        let through = through.min(self.next_seq.saturating_sub(1));
        if through > self.acked_seq {
            self.acked_seq = through;
            self.collect_consumed();
        }
        n
    }

    /// Moves segments all of whose records are acked out of the live list.
    /// The active segment goes too once all of it is acked and it holds at
    /// least [`RETIRE_ACKED_ACTIVE`] (or the disk is short of space): on a
    /// disk smaller than a segment it would otherwise never roll, and the
    /// delivered data it holds would keep the disk full.
    fn collect_consumed(&mut self) {
        while let Some(s) = self.segments.front() {
            if s.last_seq > self.acked_seq {
                break;
            }
            let is_active = self.active.is_some() && self.segments.len() == 1;
            if is_active {
                let retire = s.len > 0 && (s.len >= RETIRE_ACKED_ACTIVE || self.space_short);
                if !retire {
                    break;
                }
                // The next append starts a new segment.
                self.active = None;
                self.active_dirty = false;
            }
            if let Some(s) = self.segments.pop_front() {
                if self.reader.as_ref().is_some_and(|(id, _)| *id == s.id) {
                    self.reader = None;
                }
                self.unsynced.retain(|(p, _)| *p != s.path);
                self.consumed.push(s.path);
            }
        }
    }

    /// Whether a sync round would have anything to do: records or a
    /// ledger not yet synced, consumed segments to delete, a directory
    /// change (or a broken queue, whose round reports it).
    pub fn needs_sync(&self) -> bool {
        self.broken.is_some()
            || !self.unsynced.is_empty()
            || self.active_dirty
            || self.acked_seq != self.ledger_synced
            || !self.consumed.is_empty()
            || self.dir_dirty
    }

    /// Captures what the next durability round must do, so it can run without
    /// holding the queue (group commit). Fails if the queue is broken.
    pub fn plan_sync(&mut self) -> Result<SyncPlan, SpillError> {
        if let Some(reason) = &self.broken {
            return Err(SpillError::Broken {
                path: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        let mut files = std::mem::take(&mut self.unsynced);
        if self.active_dirty {
            if let (Some(f), Some(s)) = (&self.active, self.segments.back()) {
                files.push((s.path.clone(), f.clone()));
            }
            self.active_dirty = false;
        }
        let ledger = (self.acked_seq != self.ledger_synced)
            .then(|| (self.dir.join(LEDGER_FILE), self.acked_seq));
        let delete = std::mem::take(&mut self.consumed);

        if ledger.is_some() {
            self.ledger_synced = self.acked_seq;
            self.ledger_written = self.acked_seq;
        }
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        Ok(SyncPlan {
            files,
            dir,
            ledger,
            delete,
            written_seq: self.next_seq - 1,
        })
    }

    /// A sync round deleted segments: the disk is no longer taken as full
    /// (the next append finds out).
    pub fn space_freed(&mut self) {
        self.space_short = false;
    }

    /// Marks the queue unusable after a failed fsync (the kernel may have
    /// dropped the dirty pages): appends fail until it is reopened.
    pub fn mark_broken(&mut self, reason: String) {
        self.broken = Some(reason);
    }

    /// False for the placeholder of a queue whose first open failed
    /// ([`Self::unopened`]), until a successful [`Self::reopen`] or
    /// [`Self::adopt`].
    pub fn is_opened(&self) -> bool {
        self.opened
    }

    /// True after a failed sync (or a failed first open) until a
    /// successful [`Self::reopen`].
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Recovers a broken queue in place: drops every file handle, runs the
    /// [`Self::open`] recovery on the directory and goes on where the queue
    /// was. Same as [`Self::recover`] then [`Self::adopt`]; use those two to
    /// run the recovery (which reads every segment) without holding a lock
    /// around the queue. On an error the queue is left as it was (still
    /// broken): try again later.
    pub fn reopen(&mut self) -> Result<Reopened, SpillError> {
        self.active = None;
        self.reader = None;
        self.unsynced.clear();
        if !self.opened {
            fs::create_dir_all(&self.dir).map_err(|e| SpillError::io("create", &self.dir, e))?;
        }
        let fresh = DiskQueue::recover(&self.dir, self.cfg)?;
        Ok(self.adopt(fresh))
    }

    /// The configuration the queue was opened with.
    pub fn config(&self) -> DiskQueueConfig {
        self.cfg
    }

    /// First half of [`Self::reopen`]: [`Self::open`] on `dir`, then fsyncs
    /// every segment that stays (what was written before a failed fsync may
    /// never have reached the disk) and the directory. Only safe while the
    /// queue living on `dir` is broken (it then takes no appends) and no
    /// sync round of its [`GroupCommit`](super::GroupCommit) runs (hold
    /// `hold_rounds`: a round planned earlier would still write the ledger).
    ///
    /// It never creates `dir`: a directory that is gone (moved away by a
    /// live config change) is an error, not an empty queue. Create it first
    /// for a queue that never opened ([`Self::is_opened`]).
    pub fn recover(dir: &Path, cfg: DiskQueueConfig) -> Result<Recovered, SpillError> {
        let (queue, recovery) = DiskQueue::open_existing(dir, cfg)?;
        for seg in &queue.segments {
            File::open(&seg.path)
                .and_then(|f| f.sync_all())
                .map_err(|e| SpillError::io("fsync", &seg.path, e))?;
        }
        sync_dir(&queue.dir)?;
        Ok(Recovered { queue, recovery })
    }

    /// Second half of [`Self::reopen`]: replaces this queue's state by the
    /// recovered one, keeping what delivery relies on:
    /// - seqs stay monotonic: the next append gets a seq above every seq
    ///   ever handed out, in a new segment;
    /// - nothing acked comes back: records up to the in-memory acked seq
    ///   are skipped even if the ledger on disk is older (it is rewritten at
    ///   the next sync);
    /// - the read cursor is kept: records already handed out by
    ///   [`Self::read`] are not handed out again (only [`Self::rewind`] does
    ///   that);
    /// - unacked, not yet read records that recovery no longer found are
    ///   reported in [`Reopened::lost_records`] and counted in
    ///   [`SpillStats::corrupt_records`].
    ///
    /// The queue is replaced in place, so a [`super::GroupCommit`] holding
    /// it goes on working.
    pub fn adopt(&mut self, recovered: Recovered) -> Reopened {
        let Recovered {
            queue: mut fresh,
            recovery,
        } = recovered;
        let acked = fresh.acked_seq.max(self.acked_seq);
        let handed = self
            .in_flight
            .checked_sub(1)
            .and_then(|i| self.index.get(i))
            .map_or(acked, |e| e.seq.max(acked));
        while fresh.index.front().is_some_and(|e| e.seq <= acked) {
            if let Some(e) = fresh.index.pop_front() {
                fresh.queued_bytes -= e.frame_len;
            }
        }
        if acked > fresh.acked_seq {
            // The ledger on disk is behind: the next sync rewrites it.
            fresh.acked_seq = acked;
        }
        fresh.collect_consumed();
        fresh.in_flight = fresh.index.iter().take_while(|e| e.seq <= handed).count();

        let mut out = Reopened {
            recovery,
            first_open: !self.opened || self.deferred,
            ..Reopened::default()
        };
        let kept: std::collections::HashSet<u64> = fresh.index.iter().map(|e| e.seq).collect();
        for e in self.index.iter().filter(|e| e.seq > handed) {
            if !kept.contains(&e.seq) {
                out.lost_records += 1;
                out.lost_samples += u64::from(e.samples);
            }
        }
        fresh.next_seq = fresh.next_seq.max(self.next_seq);
        fresh.dropped_records += self.dropped_records;
        fresh.corrupt_records += self.corrupt_records + out.lost_records;
        fresh.unreported = self.unreported;
        fresh.space_short = self.space_short;
        *self = fresh;
        out
    }

    /// Appends reach the OS at once; `flush(false)` also writes the ledger
    /// (no fsync), so a process crash does not replay acked records.
    /// `flush(true)` fsyncs data and ledger and deletes consumed segments; if
    /// that fails the queue is marked broken (reopen it to recover).
    pub fn flush(&mut self, sync: bool) -> Result<(), SpillError> {
        if !sync {
            if self.acked_seq != self.ledger_written {
                write_ledger(&self.dir.join(LEDGER_FILE), self.acked_seq, false)?;
                self.ledger_written = self.acked_seq;
            }
            return Ok(());
        }
        let plan = self.plan_sync()?;
        let frees = plan.frees_space();
        plan.execute()
            .inspect_err(|e| self.mark_broken(e.to_string()))?;
        if frees {
            self.space_freed();
        }
        Ok(())
    }

    /// Flushes with fsync and closes: the next open resumes exactly here.
    pub fn close(mut self) -> Result<(), SpillError> {
        self.flush(true)
    }

    /// Highest seq appended so far (0 before the first).
    pub fn written_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Samples of the unacked records (a walk over the index: for the
    /// shutdown report, not for gauges).
    pub fn queued_samples(&self) -> u64 {
        self.index.iter().map(|e| u64::from(e.samples)).sum()
    }

    /// Current gauges and counters.
    pub fn stats(&self) -> SpillStats {
        let disk: u64 = self.segments.iter().map(|s| s.len).sum();
        SpillStats {
            records: self.index.len() as u64,
            bytes: self.queued_bytes,
            disk_bytes: disk,
            segments: self.segments.len() as u64,
            oldest_enqueued_ms: self.index.front().map(|e| e.enqueued_ms),
            dropped_records: self.dropped_records,
            corrupt_records: self.corrupt_records,
            space_short: self.space_short,
        }
    }
}

/// Writes a frame's prefix and payload with one `writev(2)` (a regular
/// file takes both whole; the loop finishes a short write).
fn write_frame(file: &File, prefix: &[u8], payload: &[u8]) -> io::Result<()> {
    let mut w = file;
    let total = prefix.len() + payload.len();
    let mut done = 0;
    while done < total {
        let n = if done < prefix.len() {
            w.write_vectored(&[io::IoSlice::new(&prefix[done..]), io::IoSlice::new(payload)])?
        } else {
            w.write(&payload[done - prefix.len()..])?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// The body of `frame` (one whole frame as read) if it verifies as `seq`.
fn verify_frame(frame: &Bytes, seq: u64) -> Option<Bytes> {
    if frame.len() < RECORD_OVERHEAD {
        return None;
    }
    let mut prefix = [0u8; FRAME_PREFIX];
    prefix.copy_from_slice(&frame[..FRAME_PREFIX]);
    match format::decode_frame(&prefix, &frame[FRAME_PREFIX..]) {
        Ok(h) if h.seq == seq => Some(frame.slice(RECORD_OVERHEAD..)),
        _ => None,
    }
}
