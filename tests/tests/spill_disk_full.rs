//! The disk spill on a full disk, with a real full file system: a small
//! tmpfs mounted as the gateway's `--data-dir` (spill and registry database
//! on it; the log elsewhere). Needs root for `mount`; `.ci/run` runs it.
//!
//! A dead target fills the disk with its backlog while traffic flows:
//! appends fail with ENOSPC, the target's `spillState` is `disk_full`, the
//! overflow is dropped as `queue_full` (`durability: memory`) or requests
//! are answered 503 (`wal`), admin writes are 2xx or 503, never 500. Then
//! the target comes back and nobody frees any space: the backlog drains,
//! the acks are recorded in place (the ledger needs no new block), the
//! delivered segments are deleted, and within 30 s of the backlog draining
//! the disk is free again, `wal` ingest answers 2xx, nothing more is
//! dropped, and the target receives the new data. Every sample answered 2xx
//! and not counted as dropped arrives.

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

/// Free and total bytes of the file system holding `path` (`df`).
fn disk_space(path: &Path) -> (u64, u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=avail,size"])
        .arg(path)
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "df output: {text}");
    (nums[0], nums[1])
}

/// An admin write (a new Workspace): 2xx, or 503 naming the cause with
/// `Retry-After` while the disk is full; never a 500.
fn admin_write(gw: &Gateway, n: u32) -> u16 {
    let body = format!(r#"{{"id": "ws-x{n}", "organizationId": "org-x", "name": "x{n}"}}"#);
    let (status, text) = gw.request(
        "POST",
        "/api/v1/workspaces",
        Some(("application/json", &body)),
    );
    assert!(
        status / 100 == 2 || (status == 503 && text.contains("disk full")),
        "admin write {n}: {status} {text}"
    );
    status
}

fn registry(port: u16) -> String {
    rounds::registry(TOKEN, &format!("endpoint: '{}'", rounds::endpoint(port)))
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

/// How one run went, for the report line.
#[derive(Debug, Default)]
struct Run {
    requests: u32,
    acked: Vec<u32>,
    refused: u32,
    admin_503: u32,
}

impl Run {
    async fn write(&mut self, http: &HttpClient, gw: &Gateway) -> u16 {
        let seq = self.requests;
        let status = status(http, gw, seq).await;
        if status / 100 == 2 {
            self.acked.push(seq);
        } else {
            self.refused += 1;
        }
        self.requests += 1;
        status
    }
}

/// One run with `--durability durability` and `--target-queue-memory
/// queue_memory`.
async fn fill_then_recover(durability: &str, queue_memory: &str) {
    let started = Instant::now();
    let port = free_port();
    let home = TempDir::new(&format!("fanout-disk-full-{durability}"));
    let data = home.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "4m");
    let registry_path = home.path().join("registry.yaml");
    std::fs::write(&registry_path, registry(port)).unwrap();
    let gw = Gateway::start_in(
        &format!("disk-full-{durability}"),
        home,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--registry",
            registry_path.to_str().unwrap(),
            "--target-queue-memory",
            queue_memory,
            "--durability",
            durability,
        ],
    );
    let http = client();
    let mut run = Run::default();
    let mut admin_n = 0;
    let mut admin = |gw: &Gateway, run: &mut Run| {
        admin_n += 1;
        if admin_write(gw, admin_n) == 503 {
            run.admin_503 += 1;
        }
    };

    // 1. Target down until the disk is full, then 20 more requests.
    let mut after_full = 0;
    while after_full < 20 {
        run.write(&http, &gw).await;
        if spill_errors(&gw) > 0 {
            after_full += 1;
            if after_full % 5 == 0 {
                admin(&gw, &mut run);
            }
        }
        assert!(run.requests < 6000, "the tmpfs never filled");
    }
    let t = target(&gw);
    assert_eq!(t["spillState"], "disk_full", "{t}");
    assert!(
        metric(&gw, "fanout_target_spill_disk_full") == 1,
        "/metrics shows the full disk"
    );
    let log = gw.log();
    assert!(log.contains("No space left on device"), "log:\n{log}");
    assert!(log.contains("the disk spill is full"), "log:\n{log}");
    if durability == "wal" {
        assert!(run.refused > 0, "wal requests on a full disk are refused");
    } else {
        assert_eq!(run.refused, 0, "memory mode answers 2xx and sheds");
        assert!(dropped(&gw) > 0, "{t}");
    }
    let (free_full, size) = disk_space(&data);
    println!(
        "{durability} step 1: {} requests, {} acked, {} refused, spill errors {}, dropped {}, \
         {free_full} of {size} bytes free",
        run.requests,
        run.acked.len(),
        run.refused,
        spill_errors(&gw),
        dropped(&gw)
    );

    // 2. The target comes back; nobody frees any space.
    let sink = sink_at(port, "t", &[]).await;
    let t0 = Instant::now();
    let mut drained_at = None;
    let mut recovered_at = None;
    let mut ok_in_a_row = 0;
    while ok_in_a_row < 20 {
        // Only a write sent after the recovery was seen must be 2xx (one
        // sent just before may still meet the full disk).
        let sent_recovered = recovered_at.is_some();
        let status = run.write(&http, &gw).await;
        if run.requests % 10 == 0 {
            admin(&gw, &mut run);
        }
        let t = target(&gw);
        let backlog = t["spillBytes"].as_u64().unwrap_or(u64::MAX)
            + t["queueBytes"].as_u64().unwrap_or(u64::MAX);
        if drained_at.is_none() && backlog < 256 << 10 {
            drained_at = Some(Instant::now());
        }
        let (free, _) = disk_space(&data);
        let recovered = t["spillState"] == "ok" && free > size / 2;
        if recovered && recovered_at.is_none() {
            recovered_at = Some(Instant::now());
        }
        if recovered && status / 100 == 2 {
            ok_in_a_row += 1;
        } else if sent_recovered {
            assert!(
                status / 100 == 2,
                "request {} answered {status} after the disk had room again ({free} bytes free); \
                 target: {t}\nlog:\n{}",
                run.requests - 1,
                gw.log()
            );
        }
        if let Some(d) = drained_at {
            assert!(
                d.elapsed() < Duration::from_secs(30) || recovered_at.is_some(),
                "backlog drained {:?} ago, but the disk is not free again: {free} of {size} \
                 bytes free, target: {t}\nlog:\n{}",
                d.elapsed(),
                gw.log()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the backlog did not drain within 60s: {t}\nlog:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = drained_at.expect("drained").duration_since(t0);
    let recovered = recovered_at.expect("recovered").duration_since(t0);
    assert_eq!(
        admin_write(&gw, 10_000),
        201,
        "an admin write once space is back"
    );
    let dropped_recovered = dropped(&gw);

    // 3. Everything answered 2xx and not counted as dropped arrives, the
    // new data included; nothing is dropped after the recovery.
    let e = expectation(&run.acked);
    wait_for(
        "delivery of every sample not dropped",
        &gw,
        Duration::from_secs(20),
        || {
            let (miss, other) = missing(&e, &sink, durability == "wal");
            assert!(other.is_empty(), "{other:?}");
            miss <= dropped(&gw)
        },
    )
    .await;
    let (miss, _) = missing(&e, &sink, durability == "wal");
    if durability == "wal" {
        assert_eq!(miss, 0, "every sample answered 2xx arrives");
    }
    assert_eq!(
        dropped(&gw),
        dropped_recovered,
        "nothing dropped once the disk had room again: {}",
        target(&gw)
    );
    assert!(
        gw.log().contains("the disk spill has space again"),
        "log:\n{}",
        gw.log()
    );
    assert!(
        !gw.log().contains("marked broken"),
        "a full disk does not break the queue; log:\n{}",
        gw.log()
    );
    let (free_end, _) = disk_space(&data);
    println!(
        "{durability} end: {} requests, {} acked, {} refused, {miss} samples missing, {} dropped, \
         admin writes answered 503: {}; backlog drained {drained:?} and disk free again \
         {recovered:?} after the target came back ({free_end} of {size} bytes free); {:?} in all",
        run.requests,
        run.acked.len(),
        run.refused,
        dropped(&gw),
        run.admin_503,
        started.elapsed()
    );
    drop(gw);
}

/// A sample of a `/metrics` gauge or counter (the first series of `name`).
fn metric(gw: &Gateway, name: &str) -> u64 {
    let (status, text) = gw.request("GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root to mount a small tmpfs; run by .ci/run"]
async fn dead_target_fills_the_disk_then_memory_mode_recovers_by_itself() {
    // The memory queue of the report that found a returned target
    // stalling behind a full disk.
    fill_then_recover("memory", "1MiB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root to mount a small tmpfs; run by .ci/run"]
async fn dead_target_fills_the_disk_then_wal_mode_recovers_by_itself() {
    fill_then_recover("wal", "64KiB").await;
}
