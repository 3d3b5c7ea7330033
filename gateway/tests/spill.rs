//! The spill disk queue against real files: recovery from damage, the disk
//! budget, resume after close, and group commit.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_gateway::deliver::spill::{
    list_backlogs, lock_queue, target_dir, DiskQueue, DiskQueueConfig, GroupCommit, Manifest,
    Record, SpillError, RECORD_OVERHEAD,
};

fn record(i: u64, len: usize) -> Record {
    let body: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
    Record {
        body: Bytes::from(body),
        samples: i as u32 + 1,
        enqueued_ms: 1_700_000_000_000 + i,
        tag: i * 7,
    }
}

fn cfg(segment_bytes: u64, budget_bytes: u64) -> DiskQueueConfig {
    DiskQueueConfig {
        segment_bytes,
        budget_bytes,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Reads everything left and returns the (seq, tag) pairs, checking bodies.
fn drain_seqs(q: &mut DiskQueue, len: usize) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let batch = q.read(7, usize::MAX).unwrap();
        if batch.is_empty() {
            return out;
        }
        for r in batch {
            let i = r.record.tag / 7;
            assert_eq!(r.record, record(i, len), "seq {}", r.seq);
            out.push(i);
        }
    }
}

#[test]
fn reopen_after_clean_close_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let len = 20_000; // several records per 64 KiB segment, several segments
    let (mut q, rec) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    assert_eq!(rec.records, 0);
    for i in 1..=20 {
        assert_eq!(q.append(&record(i, len)).unwrap().seq, i);
    }
    assert!(segments(&dir).len() >= 5);
    let first = q.read(8, usize::MAX).unwrap();
    assert_eq!(
        first.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    // Records 1..=5 delivered; 6..=8 were in flight when we stopped.
    assert_eq!(q.ack_through(5), 5);
    let before = q.stats();
    assert_eq!(before.records, 15);
    assert_eq!(before.oldest_enqueued_ms, Some(1_700_000_000_006));
    q.close().unwrap();

    let (mut q, rec) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    assert_eq!(rec.records, 15);
    assert_eq!(rec.bytes, 15 * (RECORD_OVERHEAD + len) as u64);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.corrupt_records_dropped, 0);
    assert!(!rec.torn_tail && !rec.ledger_reset);
    assert_eq!(q.stats().records, before.records);
    assert_eq!(q.stats().bytes, before.bytes);
    assert_eq!(q.stats().oldest_enqueued_ms, before.oldest_enqueued_ms);
    // Numbering goes on after the last record.
    assert_eq!(q.append(&record(21, len)).unwrap().seq, 21);
    assert_eq!(drain_seqs(&mut q, len), (6..=21).collect::<Vec<_>>());
    // Nothing acked this time: all of it comes back again, in order.
    q.close().unwrap();
    let (mut q, _) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    let all = q.read(100, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (6..=21).collect::<Vec<_>>()
    );
    // Rewind hands out the same records again.
    q.rewind();
    assert_eq!(q.read(1, usize::MAX).unwrap()[0].seq, 6);
    // Ack everything: every segment is deleted after the synced flush.
    q.ack_through(21);
    q.flush(true).unwrap();
    assert!(segments(&dir).len() <= 1, "{:?}", segments(&dir));
    q.close().unwrap();
    let (mut q, rec) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    assert_eq!(rec.records, 0);
    assert!(segments(&dir).is_empty() || q.stats().records == 0);
    // Numbering never restarts below acked data.
    assert_eq!(q.append(&record(22, 10)).unwrap().seq, 22);
}

/// Byte offset of record `n` (1-based) in a segment of equal records.
fn offset_of(n: u64, len: usize) -> u64 {
    (n - 1) * (RECORD_OVERHEAD + len) as u64
}

fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x5a;
    fs::write(path, b).unwrap();
}

/// A queue in `<tmp>/t` (1 MiB segments) holding records 1..=10 of `len`
/// bytes each, all in its first segment.
fn ten_records(len: usize) -> (tempfile::TempDir, DiskQueue) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut q, _) = DiskQueue::open(tmp.path().join("t"), cfg(1 << 20, 1 << 30)).unwrap();
    for i in 1..=10 {
        q.append(&record(i, len)).unwrap();
    }
    (tmp, q)
}

#[test]
fn flipped_payload_byte_loses_that_record_only() {
    let len = 1000;
    let (tmp, q) = ten_records(len);
    let dir = tmp.path().join("t");
    q.close().unwrap();
    let seg = &segments(&dir)[0];
    flip(seg, offset_of(4, len) + RECORD_OVERHEAD as u64 + 500);

    let (mut q, rec) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    assert_eq!(rec.corrupt_records_dropped, 1);
    assert_eq!(rec.truncated_bytes, 0);
    assert!(!rec.torn_tail);
    assert_eq!(rec.records, 9);
    let mut want: Vec<u64> = (1..=10).collect();
    want.retain(|&i| i != 4);
    assert_eq!(drain_seqs(&mut q, len), want);
    q.close().unwrap();
    // The retired record is not reported again.
    let (_, rec) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    assert_eq!((rec.records, rec.corrupt_records_dropped), (9, 0));
}

#[test]
fn a_record_damaged_after_open_is_dropped_at_read_and_its_run_goes_on() {
    // Records side by side are read with one pread: a frame that fails its
    // checksum there (damaged after the open's check) is dropped and
    // counted, and the records before and after it in the same read are
    // handed out, in order.
    let len = 1000;
    let (tmp, mut q) = ten_records(len);
    let dir = tmp.path().join("t");
    let seg = &segments(&dir)[0];
    flip(seg, offset_of(1, len) + RECORD_OVERHEAD as u64 + 10);
    flip(seg, offset_of(6, len) + RECORD_OVERHEAD as u64 + 500);
    let got = q.read(100, usize::MAX).unwrap();
    assert_eq!(
        got.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 7, 8, 9, 10]
    );
    for r in &got {
        assert_eq!(r.record, record(r.seq, len), "seq {}", r.seq);
    }
    assert_eq!(q.stats().records, 8);
    // The dropped first record counts as done: acking the rest empties it.
    assert_eq!(q.ack_through(10), 8);
    assert_eq!(q.stats().records, 0);
}

#[test]
fn flipped_length_byte_keeps_everything_before_the_damage() {
    let len = 1000;
    let (tmp, q) = ten_records(len);
    let dir = tmp.path().join("t");
    q.close().unwrap();
    let seg = &segments(&dir)[0];
    let size = fs::metadata(seg).unwrap().len();
    flip(seg, offset_of(7, len) + 5); // a byte of record 7's length field

    let (mut q, rec) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    assert_eq!(rec.records, 6);
    assert_eq!(rec.truncated_bytes, size - offset_of(7, len));
    assert!(rec.corrupt_records_dropped >= 1);
    assert_eq!(drain_seqs(&mut q, len), (1..=6).collect::<Vec<_>>());
    assert_eq!(fs::metadata(seg).unwrap().len(), offset_of(7, len));
    // The queue goes on after the cut (the cut seqs were never handed out
    // since this open, so numbering resumes after the last good record).
    assert_eq!(q.append(&record(11, len)).unwrap().seq, 7);
}

#[test]
fn truncated_mid_record_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let len = 3000;
    let c = cfg(64 << 10, 1 << 30);
    let (mut q, _) = DiskQueue::open(&dir, c).unwrap();
    for i in 1..=30 {
        q.append(&record(i, len)).unwrap();
    }
    q.read(3, usize::MAX).unwrap();
    q.ack_through(3);
    q.close().unwrap();
    let segs = segments(&dir);
    assert!(segs.len() >= 2);
    let last = segs.last().unwrap();
    let size = fs::metadata(last).unwrap().len();
    let cut = 1234;
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(size - cut)
        .unwrap();

    let (mut q, rec) = DiskQueue::open(&dir, c).unwrap();
    assert!(rec.torn_tail);
    assert_eq!(rec.truncated_bytes, (RECORD_OVERHEAD + len) as u64 - cut);
    assert_eq!(rec.corrupt_records_dropped, 1);
    assert_eq!(rec.records, 26);
    assert_eq!(drain_seqs(&mut q, len), (4..=29).collect::<Vec<_>>());
    // Appends after the repair get a fresh seq and survive a reopen.
    assert_eq!(q.append(&record(30, len)).unwrap().seq, 30);
    q.close().unwrap();
    let (mut q, rec) = DiskQueue::open(&dir, c).unwrap();
    assert!(!rec.torn_tail);
    assert_eq!(rec.corrupt_records_dropped, 0);
    assert_eq!(drain_seqs(&mut q, len), (4..=30).collect::<Vec<_>>());
}

#[test]
fn damaged_ledger_replays_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let (mut q, _) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    for i in 1..=5 {
        q.append(&record(i, 100)).unwrap();
    }
    q.ack_through(2);
    q.close().unwrap();
    fs::write(dir.join("ledger"), b"garbage").unwrap();
    let (mut q, rec) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    assert!(rec.ledger_reset);
    assert_eq!(drain_seqs(&mut q, 100), (1..=5).collect::<Vec<_>>());
}

#[test]
fn budget_drops_oldest_and_counts_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let len = 1000;
    let frame = (RECORD_OVERHEAD + len) as u64;
    let c = cfg(1 << 20, 10 * frame + frame / 2); // room for 10 records
    let (mut q, _) = DiskQueue::open(&dir, c).unwrap();
    let (mut dropped, mut bytes, mut samples) = (0, 0, 0);
    for i in 1..=25 {
        let out = q.append(&record(i, len)).unwrap();
        if i <= 10 {
            assert_eq!(out.dropped_records, 0);
        } else {
            assert_eq!(out.dropped_records, 1, "append {i}");
            assert_eq!(out.dropped_through, Some(i - 10));
        }
        dropped += out.dropped_records;
        bytes += out.dropped_bytes;
        samples += out.dropped_samples;
        assert!(q.stats().bytes <= c.budget_bytes);
    }
    assert_eq!(dropped, 15);
    assert_eq!(bytes, 15 * frame);
    assert_eq!(samples, (1..=15u64).map(|i| i + 1).sum::<u64>());
    let s = q.stats();
    assert_eq!(
        (s.records, s.bytes, s.dropped_records),
        (10, 10 * frame, 15)
    );
    assert_eq!(s.oldest_enqueued_ms, Some(1_700_000_000_016));
    // A record bigger than the whole budget is refused, nothing dropped.
    let huge = record(99, 20 * len);
    assert!(matches!(q.append(&huge), Err(SpillError::TooLarge { .. })));
    assert_eq!(q.stats().records, 10);
    q.close().unwrap();
    // The drops are durable: a reopen resumes with the 10 newest.
    let (mut q, rec) = DiskQueue::open(&dir, c).unwrap();
    assert_eq!(rec.records, 10);
    assert_eq!(drain_seqs(&mut q, len), (16..=25).collect::<Vec<_>>());
}

#[test]
fn budget_keeps_disk_use_near_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let len = 4000;
    let c = cfg(64 << 20, 1 << 20);
    let (mut q, _) = DiskQueue::open(&dir, c).unwrap();
    for i in 1..=2000 {
        q.append(&record(i, len)).unwrap();
        if i % 100 == 0 {
            q.flush(true).unwrap();
        }
    }
    q.flush(true).unwrap();
    let on_disk: u64 = segments(&dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        on_disk <= c.budget_bytes + c.effective_segment_bytes(),
        "{on_disk}"
    );
    assert!(q.stats().bytes <= c.budget_bytes);
}

#[test]
fn group_commit_satisfies_concurrent_waiters_with_fewer_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let (q, _) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    let q = Arc::new(Mutex::new(q));
    let gc = Arc::new(GroupCommit::start(q.clone(), None));
    let n = 16;
    let appended = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n as u64)
        .map(|i| {
            let (q, gc, appended) = (q.clone(), gc.clone(), appended.clone());
            std::thread::spawn(move || {
                let seq = lock_queue(&q).append(&record(i, 500)).unwrap().seq;
                // Every appender has written before any asks for durability.
                appended.wait();
                gc.durable(seq).wait().unwrap();
                seq
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
    assert!(gc.durable_seq() >= n as u64);
    let fsyncs = gc.fsyncs();
    assert!(
        fsyncs >= 1 && fsyncs < n as u64,
        "{fsyncs} fsyncs for {n} waiters"
    );

    // A free-running mix of appends and waits still shares fsyncs, and a
    // seq already durable costs none.
    let before = gc.fsyncs();
    gc.durable(1).wait().unwrap();
    assert_eq!(gc.fsyncs(), before);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (q, gc) = (q.clone(), gc.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let seq = lock_queue(&q)
                        .append(&record(t * 100 + i, 200))
                        .unwrap()
                        .seq;
                    gc.durable(seq).wait().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(gc.fsyncs() - before <= 200);
    assert_eq!(gc.durable_seq(), n as u64 + 200);
}

#[tokio::test]
async fn durable_is_a_future() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::open(tmp.path().join("t"), DiskQueueConfig::default()).unwrap();
    let q = Arc::new(Mutex::new(q));
    let gc = GroupCommit::start(q.clone(), None);
    let seq = lock_queue(&q).append(&record(1, 10)).unwrap().seq;
    gc.durable(seq).await.unwrap();
    assert_eq!(gc.durable_seq(), 1);
    assert_eq!(gc.fsyncs(), 1);
}

#[test]
fn memory_durability_syncs_on_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let (q, _) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
    let q = Arc::new(Mutex::new(q));
    let gc = GroupCommit::start(q.clone(), Some(Duration::from_millis(20)));
    let seq = lock_queue(&q).append(&record(1, 10)).unwrap().seq;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gc.durable_seq() < seq {
        assert!(Instant::now() < deadline, "never synced");
        std::thread::sleep(Duration::from_millis(5));
    }
    lock_queue(&q).ack_through(seq);
    drop(gc); // a last sync on shutdown writes the ledger
    let q = Arc::try_unwrap(q).unwrap().into_inner().unwrap();
    drop(q);
    let (_, rec) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
    assert_eq!(rec.records, 0);
}

#[test]
fn disk_errors_are_errors_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    // A queue directory that is a file.
    let file = tmp.path().join("f");
    fs::write(&file, b"x").unwrap();
    let err = DiskQueue::open(&file, DiskQueueConfig::default()).unwrap_err();
    assert!(matches!(err, SpillError::Io { .. }));
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");

    // The directory vanishes under a running queue: appends fail, no panic.
    let dir = tmp.path().join("gone");
    let (mut q, _) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let err = q.append(&record(1, 10)).unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
    assert_eq!(q.stats().records, 0);
}

#[test]
fn backlogs_are_listed_per_target() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(list_backlogs(tmp.path()).unwrap().is_empty());
    for (id, n) in [("prom-dev", 3), ("https://x/api/v1/write", 1)] {
        let (mut q, _) =
            DiskQueue::open(target_dir(tmp.path(), id), DiskQueueConfig::default()).unwrap();
        for i in 0..n {
            q.append(&record(i, 100)).unwrap();
        }
        q.close().unwrap();
    }
    let b = list_backlogs(tmp.path()).unwrap();
    let ids: Vec<&str> = b.iter().map(|b| b.target_id.as_str()).collect();
    assert_eq!(ids, ["https://x/api/v1/write", "prom-dev"]);
    assert_eq!(b[1].disk_bytes, 3 * (RECORD_OVERHEAD + 100) as u64);
    assert!(b[1].oldest_modified.is_some());
}

#[test]
fn process_crash_without_close_replays_only_unacked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let (mut q, _) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
    for i in 1..=5 {
        q.append(&record(i, 300)).unwrap();
    }
    q.ack_through(2);
    // Memory durability: the ledger reaches the OS, nothing is fsynced.
    q.flush(false).unwrap();
    q.append(&record(6, 300)).unwrap();
    drop(q); // no close: as if the process died here
    let (mut q, rec) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
    assert_eq!(rec.records, 4);
    assert_eq!(drain_seqs(&mut q, 300), (3..=6).collect::<Vec<_>>());
}

#[test]
fn read_respects_its_limits_and_always_makes_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut q, _) = DiskQueue::open(tmp.path().join("t"), DiskQueueConfig::default()).unwrap();
    for i in 1..=6 {
        q.append(&record(i, 1000)).unwrap();
    }
    let seqs = |v: Vec<fanout_gateway::deliver::spill::QueuedRecord>| {
        v.into_iter().map(|r| r.seq).collect::<Vec<_>>()
    };
    assert_eq!(seqs(q.read(10, 2500).unwrap()), [1, 2]);
    assert_eq!(seqs(q.read(1, 0).unwrap()), [3]);
    assert_eq!(seqs(q.read(10, 10).unwrap()), [4]);
    assert_eq!(seqs(q.read(10, usize::MAX).unwrap()), [5, 6]);
    assert!(q.read(10, usize::MAX).unwrap().is_empty());
    // Acking out of the middle is a prefix ack: 1..=3 go, 4.. are replayed.
    q.ack_through(3);
    q.rewind();
    assert_eq!(seqs(q.read(10, usize::MAX).unwrap()), [4, 5, 6]);
}

fn seq_list(recs: &[fanout_gateway::deliver::spill::QueuedRecord]) -> Vec<u64> {
    recs.iter().map(|r| r.seq).collect()
}

#[test]
fn broken_queue_reopens_keeping_seqs_read_cursor_and_acks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let len = 2_000;
    let (q, _) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    let q = Arc::new(Mutex::new(q));
    let commit = GroupCommit::start(q.clone(), None);
    for i in 1..=10 {
        lock_queue(&q).append(&record(i, len)).unwrap();
    }
    commit.durable(10).wait().unwrap();
    // 1..=4 handed out (delivery holds them), 1..=2 acked; the ledger on
    // disk still says 0.
    assert_eq!(
        seq_list(&lock_queue(&q).read(4, usize::MAX).unwrap()),
        [1, 2, 3, 4]
    );
    lock_queue(&q).ack_through(2);

    lock_queue(&q).mark_broken("fsync: Input/output error (test)".into());
    assert!(lock_queue(&q).is_broken());
    let err = lock_queue(&q).append(&record(11, len)).unwrap_err();
    assert!(matches!(err, SpillError::Broken { .. }), "{err}");
    assert!(
        commit.durable(11).wait().is_err(),
        "a broken queue is not durable"
    );

    let r = lock_queue(&q).reopen().unwrap();
    assert!(!lock_queue(&q).is_broken());
    assert!(!r.first_open);
    assert_eq!(r.lost_records, 0);
    assert_eq!(r.recovery.records, 10, "the ledger on disk was behind");
    assert_eq!(r.recovery.truncated_bytes, 0);
    let st = lock_queue(&q).stats();
    assert_eq!(st.records, 8, "3..=10: acked records are gone");

    // The group-commit thread holds the same queue: appends after the reopen
    // get higher seqs and become durable.
    let seq = lock_queue(&q).append(&record(11, len)).unwrap().seq;
    assert_eq!(seq, 11);
    commit.durable(seq).wait().unwrap();
    // The read cursor is kept: 3 and 4 are not handed out again.
    assert_eq!(
        seq_list(&lock_queue(&q).read(100, usize::MAX).unwrap()),
        (5..=11).collect::<Vec<_>>()
    );
    lock_queue(&q).ack_through(6);
    drop(commit);

    // After a restart only 7..=11 come back, in order.
    let q = Arc::try_unwrap(q).unwrap().into_inner().unwrap();
    q.close().unwrap();
    let (mut q, rec) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    assert_eq!(rec.records, 5);
    assert_eq!(rec.corrupt_records_dropped, 0);
    assert_eq!(drain_seqs(&mut q, len), [7, 8, 9, 10, 11]);
}

#[test]
fn reopen_counts_records_lost_on_disk_and_numbering_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let len = 1_000;
    let (mut q, _) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    for i in 1..=6 {
        q.append(&record(i, len)).unwrap();
    }
    assert_eq!(seq_list(&q.read(2, usize::MAX).unwrap()), [1, 2]);
    // The failed fsync lost the pages of 4..=6 (record 4 cut short).
    let seg = &segments(&dir)[0];
    OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(offset_of(4, len) + 100)
        .unwrap();
    q.mark_broken("fsync failed (test)".into());
    let r = q.reopen().unwrap();
    assert_eq!(r.lost_records, 3);
    assert_eq!(r.lost_samples, 5 + 6 + 7, "samples of records 4, 5 and 6");
    assert!(r.recovery.torn_tail);
    assert_eq!(r.recovery.truncated_bytes, 100);
    assert_eq!(q.stats().corrupt_records, 3);
    // Numbering goes on above every seq handed out before, even though the
    // disk now ends at 3.
    assert_eq!(q.append(&record(7, len)).unwrap().seq, 7);
    assert_eq!(seq_list(&q.read(10, usize::MAX).unwrap()), [3, 7]);
    q.ack_through(7);
    q.close().unwrap();
    let (_, rec) = DiskQueue::open(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    assert_eq!(rec.records, 0);
    assert_eq!(rec.truncated_bytes, 0, "no torn frame left behind");
}

#[test]
fn a_queue_whose_open_failed_opens_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let (mut q, _) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    for i in 1..=3 {
        q.append(&record(i, 100)).unwrap();
    }
    q.close().unwrap();
    // The first open fails (here: the directory cannot be listed).
    let bad = tmp.path().join("not-a-dir");
    fs::write(&bad, b"x").unwrap();
    let err = DiskQueue::open(&bad, cfg(64 << 10, 1 << 30)).unwrap_err();
    let mut q = DiskQueue::unopened(&dir, cfg(64 << 10, 1 << 30), &err);
    assert!(q.is_broken());
    assert!(matches!(
        q.append(&record(4, 100)),
        Err(SpillError::Broken { .. })
    ));
    let r = q.reopen().unwrap();
    assert!(r.first_open);
    assert_eq!(r.recovery.records, 3);
    assert_eq!(q.append(&record(4, 100)).unwrap().seq, 4);
    assert_eq!(drain_seqs(&mut q, 100), [1, 2, 3, 4]);
}

#[test]
fn reopen_backoff_doubles_to_thirty_seconds_also_across_quick_rebreaks() {
    use fanout_gateway::deliver::spill::ReopenBackoff;
    let t0 = Instant::now();
    let mut b = ReopenBackoff::default();
    assert_eq!(b.next_at(), None);
    assert!(!b.due(t0), "the first sighting only schedules");
    assert_eq!(b.next_at(), Some(t0 + Duration::from_secs(1)));
    assert!(!b.due(t0 + Duration::from_millis(999)));
    let mut now = t0 + Duration::from_secs(1);
    let mut delays = Vec::new();
    for _ in 0..7 {
        assert!(b.due(now));
        b.failed(now);
        let next = b.next_at().unwrap();
        delays.push((next - now).as_secs());
        now = next;
    }
    assert_eq!(delays, [2, 4, 8, 16, 30, 30, 30]);

    // Reopened, and broken again within 30 s (the disk is still full): no
    // starting over at 1 s.
    assert!(b.due(now));
    b.reopened(now);
    assert_eq!(b.next_at(), None);
    let now = now + Duration::from_secs(2);
    assert!(!b.due(now));
    assert_eq!(b.next_at(), Some(now + Duration::from_secs(30)));

    // Reopened and healthy for 30 s: the next failure starts at 1 s again.
    let mut b = ReopenBackoff::default();
    assert!(!b.due(t0));
    assert!(b.due(t0 + Duration::from_secs(1)));
    b.reopened(t0 + Duration::from_secs(1));
    let later = t0 + Duration::from_secs(31);
    assert!(!b.due(later));
    assert_eq!(b.next_at(), Some(later + Duration::from_secs(1)));
    // A quick second break after that reopen doubles: 2 s.
    assert!(b.due(later + Duration::from_secs(1)));
    b.reopened(later + Duration::from_secs(1));
    let again = later + Duration::from_secs(3);
    assert!(!b.due(again));
    assert_eq!(b.next_at(), Some(again + Duration::from_secs(2)));
}

/// A small tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} on {} failed (this test needs root; .ci/run runs it): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// Fills what is left of the file system holding `path` (to the byte).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    let block = vec![0xeeu8; 4096];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&[0xee]).is_ok() {}
}

#[test]
#[ignore = "needs root to mount a small tmpfs; run by .ci/run"]
fn full_disk_fails_appends_cleanly_then_frees_delivered_segments_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "512k");
    let dir = mnt.join("q");
    let len = 10_000;
    let c = cfg(64 << 10, 1 << 30);
    let (mut q, _) = DiskQueue::open(&dir, c).unwrap();
    let mut n = 0;
    let err = loop {
        match q.append(&record(n + 1, len)) {
            Ok(out) => {
                n += 1;
                assert_eq!(out.seq, n);
            }
            Err(e) => break e,
        }
        assert!(n < 1000, "512 KiB never filled");
    };
    assert!(n > 10, "only {n} records fit");
    let SpillError::Io { op, source, .. } = &err else {
        panic!("not an I/O error: {err}");
    };
    assert_eq!(
        source.raw_os_error(),
        Some(28),
        "ENOSPC expected from {op}: {err}"
    );
    // The failed write left no partial frame: segment files hold exactly
    // the records appended.
    let on_disk: u64 = segments(&dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, n * (RECORD_OVERHEAD + len) as u64);
    assert_eq!(q.stats().disk_bytes, on_disk);
    assert!(!q.is_broken(), "a failed append does not break the queue");

    // Nothing is left free at all, and nobody frees anything: the acks are
    // still recorded (the ledger is rewritten in place, in blocks it has
    // had since the queue opened) and the delivered segments are deleted,
    // so the queue gets its space back by itself, never breaking.
    fill(&mnt.join("filler"));
    assert!(q.append(&record(n + 1, len)).is_err());
    assert!(q.stats().space_short);
    assert_eq!(drain_seqs(&mut q, len), (1..=n).collect::<Vec<_>>());
    q.ack_through(n);
    q.flush(true).expect("acks recorded on a full disk");
    assert!(!q.is_broken());
    assert!(
        segments(&dir).is_empty(),
        "every segment was delivered, the active one too: {:?}",
        segments(&dir)
    );
    // The next append has room again, numbering goes on.
    assert_eq!(q.append(&record(n + 1, len)).unwrap().seq, n + 1);
    assert!(!q.stats().space_short);
    assert_eq!(drain_seqs(&mut q, len), [n + 1]);
    q.close().unwrap();
    let (mut q, rec) = DiskQueue::open(&dir, c).unwrap();
    assert_eq!(rec.records, 1, "{rec:?}");
    assert_eq!(rec.truncated_bytes, 0);
    assert!(!rec.ledger_reset);
    assert_eq!(drain_seqs(&mut q, len), [n + 1]);
}

#[test]
fn fully_acked_active_segment_is_deleted_once_it_holds_a_mebibyte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let len = 100 << 10;
    // 64 MiB segments: 12 records stay in the first (active) one.
    let (mut q, _) = DiskQueue::open(&dir, cfg(64 << 20, 1 << 30)).unwrap();
    for i in 1..=5 {
        q.append(&record(i, len)).unwrap();
    }
    assert_eq!(drain_seqs(&mut q, len), [1, 2, 3, 4, 5]);
    q.ack_through(5);
    q.flush(true).unwrap();
    // Half a MiB acked: the active segment goes on taking appends.
    assert_eq!(segments(&dir).len(), 1);
    for i in 6..=12 {
        q.append(&record(i, len)).unwrap();
    }
    assert_eq!(drain_seqs(&mut q, len), (6..=12).collect::<Vec<_>>());
    q.ack_through(12);
    q.flush(true).unwrap();
    // 1.2 MiB, all delivered: deleted, though it never reached its size.
    assert!(segments(&dir).is_empty(), "{:?}", segments(&dir));
    assert_eq!(q.append(&record(13, len)).unwrap().seq, 13);
    assert_eq!(segments(&dir).len(), 1);
    assert_eq!(drain_seqs(&mut q, len), [13]);
}

#[test]
fn read_error_hands_out_what_was_read_and_skips_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    // 64 KiB segments, three 20 KiB records each: seqs 1-3 and 4-6.
    let (mut q, _) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    for i in 1..=6 {
        q.append(&record(i, 20 << 10)).unwrap();
    }
    q.flush(true).unwrap();
    let segs = segments(&dir);
    assert_eq!(segs.len(), 2, "{segs:?}");
    // The second segment cannot be opened for now (EMFILE, EIO...).
    let aside = tmp.path().join("aside");
    fs::rename(&segs[1], &aside).unwrap();
    // The records read before the error are handed out, not thrown away
    // with it; the error comes with the next read, which hands out nothing.
    let first = q.read(10, usize::MAX).unwrap();
    assert_eq!(seq_list(&first), [1, 2, 3]);
    assert!(q.read(10, usize::MAX).is_err());
    // Once readable again, reading goes on exactly after them.
    fs::rename(&aside, &segs[1]).unwrap();
    assert_eq!(seq_list(&q.read(10, usize::MAX).unwrap()), [4, 5, 6]);
    assert_eq!(q.stats().records, 6);
    assert_eq!(q.stats().corrupt_records, 0);
}

#[test]
fn open_deletes_only_the_ledger_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let (q, _) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    q.close().unwrap();
    // A manifest being written (its temp file) while a broken queue is
    // recovered in the same directory.
    fs::write(dir.join("target.json.tmp"), b"{}").unwrap();
    fs::write(dir.join("ledger.tmp"), b"x").unwrap();
    let (_q, _) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    assert!(dir.join("target.json.tmp").exists());
    assert!(!dir.join("ledger.tmp").exists());
}

#[test]
fn recover_never_creates_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let (mut q, _) = DiskQueue::open(&dir, cfg(64 << 10, 1 << 30)).unwrap();
    q.append(&record(1, 100)).unwrap();
    q.flush(true).unwrap();
    // The directory moved away (a live config change): recovering the old
    // path is an error, not a new empty queue there.
    fs::rename(&dir, tmp.path().join("moved")).unwrap();
    assert!(DiskQueue::recover(&dir, cfg(64 << 10, 1 << 30)).is_err());
    assert!(!dir.exists());
    q.mark_broken("test".into());
    assert!(q.reopen().is_err());
    assert!(!dir.exists());
    // A queue that never opened does create its directory on reopen.
    let fresh = tmp.path().join("new");
    let err = DiskQueue::recover(&fresh, cfg(64 << 10, 1 << 30)).unwrap_err();
    let mut q = DiskQueue::unopened(&fresh, cfg(64 << 10, 1 << 30), &err);
    assert!(!q.is_opened());
    q.reopen().unwrap();
    assert!(q.is_opened() && fresh.is_dir());
}

#[test]
fn hold_rounds_keeps_sync_rounds_off_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::open(tmp.path().join("t"), cfg(64 << 10, 1 << 30)).unwrap();
    let q = Arc::new(Mutex::new(q));
    let commit = GroupCommit::start(q.clone(), None);
    let seq = lock_queue(&q).append(&record(1, 100)).unwrap().seq;
    let held = commit.hold_rounds();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = commit.durable(seq);
    let t = std::thread::spawn(move || tx.send(waiter.wait()).unwrap());
    // No round runs while the guard lives (a caller may rename the queue's
    // directory meanwhile); the queue itself stays usable.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(commit.fsyncs(), 0);
    lock_queue(&q).append(&record(2, 100)).unwrap();
    drop(held);
    rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    t.join().unwrap();
    assert_eq!(commit.fsyncs(), 1);
}

#[test]
fn a_deferred_queue_makes_its_directory_at_the_first_append() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spill").join("t1");
    let (mut q, rec) = DiskQueue::open_deferred(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    assert_eq!(rec.records, 0);
    assert!(q.is_deferred());
    let manifest = Manifest::new("t1", 4, Vec::new());
    assert!(
        q.defer_manifest(manifest.clone()).is_none(),
        "kept until the directory is made"
    );
    q.flush(true).unwrap();
    assert!(
        !tmp.path().join("spill").exists(),
        "nothing is written before the first append"
    );

    q.append(&record(0, 100)).unwrap();
    q.append(&record(1, 100)).unwrap();
    q.flush(true).unwrap();
    assert!(!q.is_deferred());
    assert_eq!(Manifest::read(&dir).unwrap(), Some(manifest.clone()));
    assert!(
        q.defer_manifest(manifest).is_some(),
        "written by the caller from now on"
    );
    drop(q);

    // A deferred open of a directory that exists is an open.
    let (mut q, rec) = DiskQueue::open_deferred(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    assert!(!q.is_deferred());
    assert_eq!(rec.records, 2);
    assert_eq!(drain_seqs(&mut q, 100), vec![0, 1]);
}

#[test]
fn a_deferred_queue_that_cannot_make_its_directory_fails_the_append_and_tries_again() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("spill");
    let dir = blocker.join("t1");
    let (mut q, _) = DiskQueue::open_deferred(&dir, cfg(1 << 20, 1 << 30)).unwrap();
    fs::write(&blocker, b"a file where the directory should be").unwrap();
    let err = q.append(&record(0, 10)).unwrap_err();
    assert!(err.to_string().contains("spill/t1"), "{err}");
    assert!(q.is_deferred() && !q.is_broken());

    fs::remove_file(&blocker).unwrap();
    q.append(&record(1, 10)).unwrap();
    q.flush(true).unwrap();
    assert_eq!(drain_seqs(&mut q, 10), vec![1]);
}
