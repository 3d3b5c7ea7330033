//! The disk spill on a full disk (issue 6: "disk errors handled by falling
//! back to memory and load shedding, never by exiting"), with a real full
//! file system: a small tmpfs mounted on `<data-dir>/spill` (the registry
//! database stays on the normal disk). Needs root for `mount`; `.ci/run`
//! runs it.
//!
//! `full_disk_sheds_load_then_recovers`:
//! 1. target down, traffic through a 64 KiB memory queue: the spill fills
//!    the tmpfs, appends fail with ENOSPC, the overflow is dropped as
//!    `queue_full` and counted in `fanout_spill_errors_total`; ingest keeps
//!    answering;
//! 2. the last free byte is taken by a filler file and the target comes up:
//!    the backlog is sent from disk, but the ledger recording the acks
//!    cannot be written, so the queue is marked broken (memory-only);
//! 3. space is freed: the sender reopens the queue (retried with backoff)
//!    and spilling goes on; every acknowledged sample that was not counted
//!    as dropped arrives (duplicates allowed).
//!
//! `wal_full_disk_refuses_with_503_until_reopened`: the same with
//! `--durability wal`: 2xx while the disk has room, 503 for every request
//! while it is full and while the queue is broken, 2xx again once it is
//! reopened; every sample answered 2xx arrives.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fanout_loadtest::sink::SinkHandle;
use fanout_loadtest::verify::{Expectation, Problem};
use fanout_tests::fanout::tempfile_dir::TempDir;
use fanout_tests::fanout::{free_port, Gateway};
use fanout_tests::rounds::{self, client, expect_rounds, round, sink_at, target, HttpClient};

const TOKEN: &str = "disk-full-ingest-token";

/// A tmpfs mounted on a directory; unmounted (and the directory removed) on
/// drop, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "`mount -t tmpfs -o size={size} tmpfs {}` failed: {}\n\
             this test needs root (it is run by .ci/run, which runs as root)",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process not yet gone): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Takes every free byte of the file system holding `path`.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0xeeu8; 4096];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&[0xee]).is_ok() {}
}

fn registry(port: u16) -> String {
    rounds::registry(TOKEN, &format!("endpoint: '{}'", rounds::endpoint(port)))
}

/// One write; true when answered 2xx (see [`status`]).
async fn write(client: &HttpClient, gw: &Gateway, seq: u32) -> bool {
    status(client, gw, seq).await / 100 == 2
}

/// One write; the gateway must answer within 10 s, with 2xx, 429 or 503.
async fn status(client: &HttpClient, gw: &Gateway, seq: u32) -> u16 {
    let Some(status) = rounds::try_write(client, &gw.ingest, TOKEN, round(0, seq)).await else {
        panic!(
            "request {seq}: gateway unreachable or no answer within 10s; log:\n{}",
            gw.log()
        )
    };
    assert!(
        status / 100 == 2 || status == 429 || status == 503,
        "request {seq}: status {status}"
    );
    status
}

/// Samples the target dropped (`queue_full` + `disk_full`).
fn dropped(gw: &Gateway) -> u64 {
    let t = target(gw);
    t["dropped"]["queue_full"].as_u64().unwrap_or(0)
        + t["dropped"]["disk_full"].as_u64().unwrap_or(0)
}

/// `fanout_spill_errors_total` from `/metrics`.
fn spill_errors(gw: &Gateway) -> u64 {
    let (status, text) = gw.request("GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find(|l| l.starts_with("fanout_spill_errors_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn expectation(acked: &[u32]) -> Expectation {
    let mut e = Expectation::new();
    expect_rounds(&mut e, "t", 0, acked);
    e
}

/// Samples of acknowledged requests that did not arrive, and problems other
/// than duplicates and (with `refused_ok`) samples of refused requests.
fn missing(e: &Expectation, sink: &SinkHandle, refused_ok: bool) -> (u64, Vec<Problem>) {
    let mut n = 0;
    let mut other = Vec::new();
    for p in e.check(&[sink.report()]) {
        match p {
            Problem::Missing { count, .. } => n += count,
            Problem::Duplicated { .. } => {}
            Problem::Misrouted { .. } if refused_ok => {}
            p => other.push(p),
        }
    }
    (n, other)
}

async fn wait_for(what: &str, gw: &Gateway, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} not within {timeout:?}; targets: {}\nlog:\n{}",
            gw.request("GET", "/api/v1/targets", None).1,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root to mount a small tmpfs; run by .ci/run"]
async fn full_disk_sheds_load_then_recovers() {
    let started = Instant::now();
    let port = free_port();
    let data = TempDir::new("fanout-disk-full");
    let spill = data.path().join("spill");
    let _tmpfs = Tmpfs::mount(&spill, "4m");
    // Space to free in step 3: more than the ~40 requests (about 26 KiB of
    // records each) written there before the backlog's segments can go, so
    // the disk does not fill again however slowly the target drains.
    std::fs::write(spill.join("reserve"), vec![0u8; 2560 << 10]).expect("reserve file");
    let conf = TempDir::new("fanout-disk-full-conf");
    let registry_path = conf.path().join("registry.yaml");
    std::fs::write(&registry_path, registry(port)).unwrap();
    let gw = Gateway::start_in(
        "disk-full",
        data,
        &[
            "--registry",
            registry_path.to_str().unwrap(),
            "--target-queue-memory",
            "64KiB",
        ],
    );
    let http = client();
    let mut acked = Vec::new();
    let mut seq = 0u32;

    // 1. Target down until the spill hits ENOSPC, then 20 more requests.
    let mut after_full = 0;
    while after_full < 20 {
        if write(&http, &gw, seq).await {
            acked.push(seq);
        }
        seq += 1;
        if spill_errors(&gw) > 0 {
            after_full += 1;
        }
        assert!(seq < 400, "the tmpfs never filled");
    }
    let errors_full = spill_errors(&gw);
    assert!(errors_full > 0);
    let dropped_full = dropped(&gw);
    println!(
        "step 1: {seq} requests, {} acked, spill errors {errors_full}, dropped {dropped_full}",
        acked.len()
    );
    assert!(
        dropped_full > 0,
        "overflow beyond the full disk is dropped and counted: {}",
        target(&gw)
    );
    assert!(
        gw.log().contains("No space left on device"),
        "log:\n{}",
        gw.log()
    );

    // 2. Not one byte left; the target comes up and drains from disk, but
    // the ledger of its acks cannot be written: the queue breaks.
    fill(&spill.join("filler"));
    let sink = sink_at(port, "t", &[]).await;
    let t0 = Instant::now();
    while !gw.log().contains("queue marked broken") && t0.elapsed() < Duration::from_secs(10) {
        if write(&http, &gw, seq).await {
            acked.push(seq);
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.log().contains("queue marked broken"),
        "the failed ledger write marks the queue broken; log:\n{}",
        gw.log()
    );
    println!("step 2: broken after {:?}; {seq} requests", t0.elapsed());

    // 3. Space comes back: the queue is reopened (first attempt 1 s after
    // the sender saw it broken) and spilling goes on.
    std::fs::remove_file(spill.join("filler")).unwrap();
    std::fs::remove_file(spill.join("reserve")).unwrap();
    let t1 = Instant::now();
    while !gw.log().contains("disk spill reopened") && t1.elapsed() < Duration::from_secs(10) {
        if write(&http, &gw, seq).await {
            acked.push(seq);
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.log().contains("disk spill reopened"),
        "the queue is reopened once space is back; log:\n{}",
        gw.log()
    );
    println!("step 3: reopened after {:?}", t1.elapsed());
    let dropped_before = dropped(&gw);
    for _ in 0..20 {
        if write(&http, &gw, seq).await {
            acked.push(seq);
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everything acknowledged and not counted as dropped arrives.
    let e = expectation(&acked);
    let deadline = Duration::from_secs(20);
    wait_for(
        "delivery of every sample not dropped",
        &gw,
        deadline,
        || {
            let (miss, other) = missing(&e, &sink, false);
            assert!(other.is_empty(), "{other:?}");
            miss <= dropped(&gw) && target(&gw)["spillBytes"].as_u64() == Some(0)
        },
    )
    .await;
    let (miss, _) = missing(&e, &sink, false);
    let dropped_end = dropped(&gw);
    println!(
        "end: {seq} requests, {} acked, {miss} samples missing, {dropped_end} dropped \
         ({dropped_before} before the last 20 requests), spill errors {}, {:?} in all",
        acked.len(),
        spill_errors(&gw),
        started.elapsed()
    );
    assert_eq!(
        dropped_end,
        dropped_before,
        "nothing dropped once the disk had room again: {}\nlog:\n{}",
        target(&gw),
        gw.log()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    for line in gw.log().lines().filter(|l| {
        l.contains("marked broken") || l.contains("reopen") || l.contains("No space left")
    }) {
        println!("log: {}", line.chars().take(300).collect::<String>());
    }
    drop(gw);
}

/// `--durability wal` on the same full disk: a request is answered 2xx only
/// once its data is fsynced on disk, so while the disk is full (appends fail
/// with ENOSPC) and while the queue is broken (its ledger could not be
/// written) requests are refused with 503, and after space is freed and the
/// queue reopened they are answered 2xx again; every sample answered 2xx
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root to mount a small tmpfs; run by .ci/run"]
async fn wal_full_disk_refuses_with_503_until_reopened() {
    let started = Instant::now();
    let port = free_port();
    let data = TempDir::new("fanout-disk-full-wal");
    let spill = data.path().join("spill");
    let _tmpfs = Tmpfs::mount(&spill, "2m");
    let conf = TempDir::new("fanout-disk-full-wal-conf");
    let registry_path = conf.path().join("registry.yaml");
    std::fs::write(&registry_path, registry(port)).unwrap();
    let gw = Gateway::start_in(
        "disk-full-wal",
        data,
        &[
            "--registry",
            registry_path.to_str().unwrap(),
            "--durability",
            "wal",
        ],
    );
    let http = client();
    let mut acked = Vec::new();
    let mut seq = 0u32;

    // Target down, disk with room: everything is made durable, answered 2xx.
    for _ in 0..10 {
        assert!(
            write(&http, &gw, seq).await,
            "request {seq} with room on disk"
        );
        acked.push(seq);
        seq += 1;
    }

    // Not one byte left: nothing can be made durable, so nothing is 2xx.
    fill(&spill.join("filler"));
    let mut refused = 0;
    for _ in 0..10 {
        let status = status(&http, &gw, seq).await;
        assert_eq!(status, 503, "request {seq} on a full disk");
        refused += 1;
        seq += 1;
    }
    // The target comes up: its acks cannot be written, the queue breaks;
    // requests keep being refused.
    let sink = sink_at(port, "t", &[]).await;
    let t0 = Instant::now();
    while !gw.log().contains("queue marked broken") && t0.elapsed() < Duration::from_secs(10) {
        let status = status(&http, &gw, seq).await;
        assert_eq!(status, 503, "request {seq} on a full disk");
        refused += 1;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.log().contains("queue marked broken"),
        "the failed ledger write marks the queue broken; log:\n{}",
        gw.log()
    );
    for _ in 0..5 {
        let status = status(&http, &gw, seq).await;
        assert_eq!(status, 503, "request {seq} with the queue broken");
        refused += 1;
        seq += 1;
    }

    // Space back: once reopened, requests are made durable again.
    std::fs::remove_file(spill.join("filler")).unwrap();
    let t1 = Instant::now();
    let mut ok_after = 0;
    while ok_after < 20 {
        let reopened = gw.log().contains("disk spill reopened");
        let status = status(&http, &gw, seq).await;
        if status / 100 == 2 {
            acked.push(seq);
            if reopened {
                ok_after += 1;
            }
        } else {
            assert!(
                !reopened,
                "request {seq} refused ({status}) after the reopen"
            );
            refused += 1;
        }
        seq += 1;
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "not reopened within 15s; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let e = expectation(&acked);
    wait_for(
        "every sample answered 2xx",
        &gw,
        Duration::from_secs(20),
        || {
            let (miss, other) = missing(&e, &sink, true);
            assert!(other.is_empty(), "{other:?}");
            miss == 0
        },
    )
    .await;
    println!(
        "wal: {seq} requests, {} answered 2xx and delivered, {refused} refused with 503, \
         spill errors {}, reopened {:?} after space was freed, {:?} in all",
        acked.len(),
        spill_errors(&gw),
        t1.elapsed(),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    drop(gw);
}
