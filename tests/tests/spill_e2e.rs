//! End-to-end disk spill tests (SPEC §5, issue 6): the real `fanout` binary
//! and fanout-load's verifying sinks in this process, all on 127.0.0.1.
//!
//! - `down_target_spills_then_replays`: a target is down while traffic
//!   flows through a tiny memory queue, then comes up and flaps (5xx, then
//!   connection resets, in 800 ms cycles) while traffic continues; every
//!   acknowledged sample arrives exactly once, in order per series.
//! - `sigterm_spills_and_restart_resumes`: SIGTERM with a backlog for a down
//!   target; the restarted gateway delivers all of it, in order and before
//!   the traffic it takes after the restart, once the target is up.
//! - `a_backlog_of_the_previous_format_is_delivered`: a backlog spilled as
//!   snappy parts, rewritten as the previous release wrote it (records),
//!   is delivered after an upgrade, in order and before new data.
//! - `kill_9_in_wal_mode_loses_nothing_acknowledged`: `--durability wal`,
//!   three `kill -9` at random moments under load, then a clean start: every
//!   acknowledged sample arrives (duplicates allowed and counted), and no new
//!   sample arrives after a newer one of its series.
//! - `orphan_backlog_is_reported_then_deleted_after_retention`: a target
//!   with a disk backlog is removed from the registry across a restart; its
//!   backlog is listed in `/api/v1/stats` `orphanBacklogs` until
//!   `--spill-retention` is over, then deleted from `<data-dir>/spill/`.
//!
//! Order: every writer sends one request at a time and awaits the answer,
//! with rising rounds per series, so per-series order at the source is the
//! round order and the sink must see new rounds in ascending order
//! (`Expectation::require_order`; re-sent rounds are duplicates, not out of
//! order). The kill -9 test runs four writers at once, each on its own
//! cluster (its own series), for the same reason.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_loadtest::sink::Fault;
use fanout_loadtest::verify::{Expectation, Problem};
use fanout_tests::fanout::{free_port, Gateway};
use fanout_tests::rounds::{
    self, await_all, client, expect_rounds, in_order, orphans, round, sink_at, target, HttpClient,
    SERIES,
};

const TOKEN: &str = "spill-ingest-token";

fn registry(port: u16) -> String {
    rounds::registry(
        TOKEN,
        &format!(
            "endpoint: '{}', delivery: {{batchSendDeadline: 50ms, maxSamplesPerSend: 500, maxConcurrency: 4, maxBackoff: 200ms}}",
            rounds::endpoint(port)
        ),
    )
}

/// The same cluster, workspace and deployment, and no metrics export: the
/// target of [`registry`] is gone (not changed into a successor).
fn registry_without_export() -> String {
    rounds::registry(TOKEN, "")
}

/// Round `seq` of cluster 0.
fn body(seq: u32) -> Bytes {
    round(0, seq)
}

async fn write(client: &HttpClient, ingest: &str, body: Bytes) -> u16 {
    rounds::write(client, ingest, TOKEN, body).await
}

/// Every series of cluster 0 in the `acked` rounds, at target `t`, in order.
fn expectation(acked: &[u32]) -> Expectation {
    in_order("t", acked)
}

/// Panics at once on samples out of order: waiting cannot repair that.
fn fail_on_disorder(problems: &[Problem], gw: &Gateway) {
    let disorder: Vec<String> = problems
        .iter()
        .filter(|p| matches!(p, Problem::OutOfOrder { .. }))
        .map(|p| p.to_string())
        .collect();
    if !disorder.is_empty() {
        panic!(
            "{} series got samples out of order, first:\n{}\nlog:\n{}",
            disorder.len(),
            disorder[..disorder.len().min(10)].join("\n"),
            gw.log()
        );
    }
}

/// Sends rounds `seqs` one at a time; the acknowledged ones go to `acked`.
async fn write_rounds(
    http: &HttpClient,
    gw: &Gateway,
    seqs: std::ops::Range<u32>,
    acked: &mut Vec<u32>,
) {
    for seq in seqs {
        if write(http, &gw.ingest, body(seq)).await / 100 == 2 {
            acked.push(seq);
        }
    }
}

/// SIGTERM: the gateway must exit cleanly; returns its data dir.
fn stop(mut gw: Gateway) -> fanout_tests::fanout::tempfile_dir::TempDir {
    let status = tokio::task::block_in_place(|| gw.terminate(Duration::from_secs(15)))
        .unwrap_or_else(|| panic!("no exit; log:\n{}", gw.log()));
    assert!(status.success(), "exit {status:?}; log:\n{}", gw.log());
    gw.take_data_dir()
}

/// The target down: rounds `0..before` are spilled by SIGTERM; `on_disk`
/// sees the data dir; a restart with the target up takes rounds
/// `before..before + after` at once, and every round arrives in order, the
/// backlog before the new traffic.
async fn spill_stop_restart(
    name: &str,
    extra: &[&str],
    before: u32,
    after: u32,
    on_disk: impl FnOnce(&std::path::Path),
) {
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new(name);
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(port)).unwrap();
    let mut args = vec![
        "--registry",
        path.to_str().unwrap(),
        "--shutdown-grace",
        "1s",
    ];
    args.extend_from_slice(extra);
    let gw = Gateway::start(name, &args);
    let http = client();
    let mut acked = Vec::new();
    write_rounds(&http, &gw, 0..before, &mut acked).await;
    assert_eq!(acked.len(), before as usize);
    let data = stop(gw);
    on_disk(data.path());
    let sink = sink_at(port, "t", &[]).await;
    let gw = Gateway::start_in(name, data, &args);
    // New traffic at once: it must go after the recovered backlog.
    write_rounds(&http, &gw, before..before + after, &mut acked).await;
    assert_eq!(acked.len(), (before + after) as usize);
    await_all(&expectation(&acked), &sink, &gw, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn down_target_spills_then_replays() {
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("spill-down");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(port)).unwrap();
    let gw = Gateway::start(
        "spill-down",
        &[
            "--registry",
            path.to_str().unwrap(),
            "--target-queue-memory",
            "64KiB",
        ],
    );
    let http = client();
    let mut acked = Vec::new();
    // Down: far more than the memory queue holds.
    write_rounds(&http, &gw, 0..60, &mut acked).await;
    let t = target(&gw);
    assert!(
        t["spillBytes"].as_u64().unwrap_or(0) > 0,
        "backlog on disk: {t}"
    );
    assert!(
        t["oldestQueuedSeconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{t}"
    );
    assert_eq!(t["dropped"]["queue_full"], 0, "spilled, not dropped: {t}");
    // Up, with traffic still flowing, and flapping in 800 ms cycles: 200 ms
    // of 5xx, 200 ms healthy, 200 ms resetting every second connection,
    // 200 ms healthy; so batches (from disk and memory) are retried at the
    // head of their lane while newer data keeps spilling.
    let sink = sink_at(port, "t", &[]).await;
    let up = Instant::now();
    let mut phase = u128::MAX;
    for seq in 60..160u32 {
        let now_phase = up.elapsed().as_millis() / 200;
        if now_phase != phase {
            phase = now_phase;
            sink.set_fault(match phase % 4 {
                // 503 asks for a 1 s pause (Retry-After), 500 for the
                // endpoint's own backoff (at most 200 ms here).
                0 => Fault {
                    status: Some(if phase == 0 { 503 } else { 500 }),
                    status_for: Some(Duration::from_millis(200)),
                    ..Fault::default()
                },
                2 => Fault {
                    reset_every: 2,
                    ..Fault::default()
                },
                _ => Fault::default(),
            });
        }
        if write(&http, &gw.ingest, body(seq)).await / 100 == 2 {
            acked.push(seq);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sink.set_fault(Fault::default());
    assert!(acked.len() >= 150, "acknowledged {}", acked.len());
    await_all(&expectation(&acked), &sink, &gw, Duration::from_secs(20)).await;
    let injected = sink.report().injected;
    let t = target(&gw);
    // Both kinds of fault met batches: an error status and a reset
    // connection. (How many requests that is depends on the batch sizes:
    // a lane that is behind sends up to 25 times maxSamplesPerSend, so
    // the backlog goes in a few requests; 5 or 6 over the runs.)
    let failures = &t["failures"];
    let count = |k: &str| failures[k].as_u64().unwrap_or(0);
    assert!(
        injected >= 3 && count("503") + count("500") >= 1 && count("io") >= 1,
        "the target flapped: {injected} requests answered 5xx or reset; failures {failures}"
    );
    assert_eq!(t["dropped"]["disk_full"], 0, "{t}");
    assert_eq!(t["dropped"]["queue_full"], 0, "{t}");
    eprintln!(
        "down then flapping: {} acknowledged requests of {SERIES} series delivered in order; {injected} requests answered 5xx or reset; target retries {}, failures {}",
        acked.len(),
        t["retries"],
        t["failures"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_spills_and_restart_resumes() {
    spill_stop_restart("spill-restart", &[], 20, 20, |_| {}).await;
}

/// Rewrites every target queue under `data`'s spill the way releases
/// before 2026-12-07 wrote it (the records themselves, tagged with their
/// lane alone) and returns how many records were kept as snappy parts.
fn rewrite_as_previous_format(data: &std::path::Path) -> (usize, usize) {
    use fanout_gateway::deliver::spill::{DiskQueue, DiskQueueConfig, Record};
    const PART: u64 = 1 << 63;
    let (mut parts, mut all) = (0, 0);
    for (dir, _) in spill_dirs(data) {
        let (mut q, _) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
        let recs = q.read(usize::MAX, usize::MAX).unwrap();
        q.close().unwrap();
        let manifest = std::fs::read(dir.join("target.json")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let (mut q, _) = DiskQueue::open(&dir, DiskQueueConfig::default()).unwrap();
        for r in recs {
            all += 1;
            let (tag, body) = if r.record.tag & PART != 0 {
                parts += 1;
                let len = ((r.record.tag & !PART) >> 32) as usize;
                let records = fanout_proto::snappy::decompress_part(&r.record.body, len).unwrap();
                (r.record.tag & u64::from(u32::MAX), records)
            } else {
                (r.record.tag, r.record.body)
            };
            q.append(&Record {
                tag,
                body,
                ..r.record
            })
            .unwrap();
        }
        q.close().unwrap();
        std::fs::write(dir.join("target.json"), manifest).unwrap();
    }
    (parts, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_of_the_previous_format_is_delivered() {
    // Upgrade: a backlog that the previous release left on disk (records,
    // not the snappy parts this one writes) is delivered by this one, in
    // order and before new data.
    let rewrite = |data: &std::path::Path| {
        let (parts, all) = rewrite_as_previous_format(data);
        assert!(
            all > 0 && parts == all,
            "this release spills what goes on the wire: {parts} of {all} records were parts"
        );
    };
    spill_stop_restart(
        "spill-upgrade",
        &["--target-queue-memory", "64KiB"],
        30,
        10,
        rewrite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_wal_mode_loses_nothing_acknowledged() {
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("spill-kill");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(port)).unwrap();
    let args = ["--registry", path.to_str().unwrap(), "--durability", "wal"];
    let sink = sink_at(port, "t", &[]).await;
    const WRITERS: u32 = 4;
    // Acknowledged rounds per writer; writer w writes cluster w's series.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(vec![Vec::new(); WRITERS as usize]));
    // Rounds sent but not answered 2xx (cut by a kill, or refused): their
    // samples may arrive or not; no other sample may.
    let unanswered = std::sync::Arc::new(std::sync::Mutex::new(vec![Vec::new(); WRITERS as usize]));
    let mut data = fanout_tests::fanout::tempfile_dir::TempDir::new("fanout-spill-kill");
    // The next round of each writer: a round cut by a kill is never reused.
    let mut next_seq = [0u32; WRITERS as usize];
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    for run in 0..3 {
        let mut gw = Gateway::start_in("spill-kill", data, &args);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        // Four concurrent writers, so group commit has company; each one
        // sequential on its own series, so their order is defined.
        for w in 0..WRITERS {
            let (ingest, stop, acked) = (gw.ingest.clone(), stop.clone(), acked.clone());
            let unanswered = unanswered.clone();
            let first = next_seq[w as usize];
            writers.push(tokio::spawn(async move {
                let http = client();
                let mut seq = first;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let answer = rounds::try_write(&http, &ingest, TOKEN, round(w, seq)).await;
                    seq += 1;
                    match answer {
                        Some(s) if s / 100 == 2 => acked.lock().unwrap()[w as usize].push(seq - 1),
                        Some(_) => unanswered.lock().unwrap()[w as usize].push(seq - 1),
                        None => {
                            unanswered.lock().unwrap()[w as usize].push(seq - 1);
                            break;
                        }
                    }
                }
                seq
            }));
        }
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let wait = Duration::from_millis(200 + u64::from(rng % 800));
        tokio::time::sleep(wait).await;
        gw.kill();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for (w, writer) in writers.into_iter().enumerate() {
            next_seq[w] = writer.await.unwrap();
        }
        eprintln!(
            "run {run}: killed after {wait:?}, {} requests acknowledged so far",
            acked.lock().unwrap().iter().map(Vec::len).sum::<usize>()
        );
        data = gw.take_data_dir();
    }
    let acked: Vec<Vec<u32>> = acked.lock().unwrap().clone();
    let unanswered: Vec<Vec<u32>> = unanswered.lock().unwrap().clone();
    // Acknowledged or not answered: the only rounds that may arrive.
    let mut possible = Expectation::new();
    for (w, rounds) in acked.iter().enumerate() {
        let mut all = rounds.clone();
        all.extend(&unanswered[w]);
        all.sort_unstable();
        expect_rounds(&mut possible, "t", w as u32, &all);
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 10, "too little traffic: {total}");
    let gw = Gateway::start_in("spill-kill", data, &args);
    let mut expected = Expectation::new();
    for (w, rounds) in acked.iter().enumerate() {
        expect_rounds(&mut expected, "t", w as u32, rounds);
    }
    // Duplicates are allowed (replayed after a crash), a new sample after a
    // newer one of its series is not.
    expected.require_order();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let problems = expected.check(&[sink.report()]);
        fail_on_disorder(&problems, &gw);
        let duplicates: u64 = problems
            .iter()
            .map(|p| match p {
                Problem::Duplicated { copies, .. } => *copies,
                _ => 0,
            })
            .sum();
        // Requests cut by the kill may have reached the disk without an
        // answer: their samples arrive too (at least once), as "misrouted"
        // rounds the expectation does not list.
        let unacked: u64 = problems
            .iter()
            .map(|p| match p {
                Problem::Misrouted { samples, .. } => *samples,
                _ => 0,
            })
            .sum();
        let real: Vec<&Problem> = problems
            .iter()
            .filter(|p| !matches!(p, Problem::Duplicated { .. } | Problem::Misrouted { .. }))
            .collect();
        // A sample of a round never sent, or of another writer's series,
        // is a real misroute, not an unanswered request.
        let misrouted: Vec<Problem> = possible
            .check(&[sink.report()])
            .into_iter()
            .filter(|p| matches!(p, Problem::Misrouted { .. }))
            .collect();
        assert!(
            misrouted.is_empty(),
            "samples of rounds never sent or of other series: {:?}\nlog:\n{}",
            &misrouted[..misrouted.len().min(5)],
            gw.log()
        );
        if real.is_empty() {
            eprintln!(
                "kill -9 x3 (wal): {total} acknowledged requests of {SERIES} samples all delivered in order; {duplicates} duplicate samples, {unacked} samples of unanswered requests"
            );
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{} problems, first: {:?}\nlog:\n{}",
                real.len(),
                &real[..real.len().min(5)],
                gw.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Queue directories under `<data-dir>/spill/`, with their segment files.
fn spill_dirs(data: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<std::path::PathBuf>)> {
    let Ok(entries) = std::fs::read_dir(data.join("spill")) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|dir| {
            let segs = std::fs::read_dir(&dir)
                .map(|es| {
                    es.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                        .collect()
                })
                .unwrap_or_default();
            (dir, segs)
        })
        .collect();
    dirs.sort();
    dirs
}

/// Answers lost after the target stored the data (every third request is
/// recorded, then answered 503): the gateway retries those batches, so their
/// samples arrive twice and are counted as duplicates, while new samples
/// still arrive in order per series and none is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_make_duplicates_never_disorder() {
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("spill-lost");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(port)).unwrap();
    let sink = sink_at(port, "t", &[]).await;
    sink.set_fault(Fault {
        lose_answer_every: 3,
        ..Fault::default()
    });
    let gw = Gateway::start("spill-lost", &["--registry", path.to_str().unwrap()]);
    let http = client();
    let mut acked = Vec::new();
    for seq in 0..40u32 {
        if write(&http, &gw.ingest, body(seq)).await / 100 == 2 {
            acked.push(seq);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(acked.len(), 40);
    let e = expectation(&acked);
    let deadline = Instant::now() + Duration::from_secs(20);
    let duplicates = loop {
        let problems = e.check(&[sink.report()]);
        fail_on_disorder(&problems, &gw);
        let other: Vec<&Problem> = problems
            .iter()
            .filter(|p| !matches!(p, Problem::Duplicated { .. }))
            .collect();
        if other.is_empty() {
            break problems
                .iter()
                .map(|p| match p {
                    Problem::Duplicated { copies, .. } => *copies,
                    _ => 0,
                })
                .sum::<u64>();
        }
        assert!(
            Instant::now() < deadline,
            "{} problems, first: {}\nlog:\n{}",
            other.len(),
            other[0],
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let injected = sink.report().injected;
    assert!(injected > 0, "answers were lost");
    assert!(
        duplicates > 0,
        "a batch whose answer was lost is sent again: its samples arrive twice"
    );
    let t = target(&gw);
    assert!(t["retries"].as_u64().unwrap_or(0) > 0, "{t}");
    eprintln!(
        "lost answers: {} acknowledged requests of {SERIES} series delivered in order; {injected} answers lost, {duplicates} duplicate samples, target retries {}",
        acked.len(),
        t["retries"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_backlog_is_reported_then_deleted_after_retention() {
    const RETENTION: Duration = Duration::from_secs(4);
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("spill-orphan");
    let with = dir.path().join("registry.yaml");
    let without = dir.path().join("registry-without-export.yaml");
    std::fs::write(&with, registry(port)).unwrap();
    std::fs::write(&without, registry_without_export()).unwrap();
    // A backlog for a down target, spilled by SIGTERM.
    let gw = Gateway::start(
        "spill-orphan",
        &[
            "--registry",
            with.to_str().unwrap(),
            "--shutdown-grace",
            "1s",
        ],
    );
    let id = target(&gw)["id"].as_str().expect("target id").to_owned();
    let http = client();
    let mut acked = Vec::new();
    write_rounds(&http, &gw, 0..10, &mut acked).await;
    assert_eq!(acked.len(), 10);
    let data = stop(gw);
    let dirs = spill_dirs(data.path());
    assert!(
        matches!(&dirs[..], [(_, segs)] if !segs.is_empty()),
        "one queue directory with segments: {dirs:?}"
    );
    // The retention counts from the `orphaned` marker the restarted gateway
    // writes at its first sweep, so deletion comes at least RETENTION after
    // this instant.
    let touched = Instant::now();
    // Restart where the export is deleted: its target is gone, not changed.
    let retention = format!("{}s", RETENTION.as_secs());
    let gw = Gateway::start_in(
        "spill-orphan",
        data,
        &[
            "--registry",
            without.to_str().unwrap(),
            "--spill-retention",
            &retention,
        ],
    );
    let (status, body) = gw.request("GET", "/api/v1/targets", None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&id), "the target is gone: {body}");
    // Reported (the sweep runs at start) ...
    let deadline = Instant::now() + Duration::from_secs(3);
    let listed = loop {
        let o = orphans(&gw);
        if !o.is_empty() {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "no orphan backlog reported; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["targetId"], id.as_str(), "{listed:?}");
    assert!(
        listed[0]["diskBytes"].as_u64().unwrap_or(0) > 0,
        "{listed:?}"
    );
    assert!(
        listed[0]["segments"].as_u64().unwrap_or(0) > 0,
        "{listed:?}"
    );
    let delete_in = listed[0]["deleteInSeconds"].as_f64().unwrap_or(0.0);
    assert!(
        delete_in > 0.0 && delete_in <= RETENTION.as_secs_f64(),
        "{listed:?}"
    );
    assert_eq!(spill_dirs(gw.data_dir.path()).len(), 1, "kept on disk");
    assert!(
        dirs[0].0.join("orphaned").exists(),
        "the orphan marker its retention counts from"
    );
    // ... then deleted after the retention (the sweep period is the
    // retention, clamped to 1-60 s).
    let deadline = Instant::now() + RETENTION * 3;
    loop {
        let on_disk = spill_dirs(gw.data_dir.path());
        let listed = orphans(&gw);
        if on_disk.is_empty() && listed.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog not deleted {:?} after the retention: on disk {on_disk:?}, listed {listed:?}; log:\n{}",
            touched.elapsed(),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = touched.elapsed();
    assert!(
        took >= RETENTION - Duration::from_millis(200),
        "deleted after {took:?}, before the retention of {RETENTION:?}"
    );
    assert!(
        gw.log().contains("deleted the disk backlog"),
        "log:\n{}",
        gw.log()
    );
    eprintln!("orphan backlog of {id}: listed, deleted {took:?} after the restart began (retention counts from its orphan marker)");
}
