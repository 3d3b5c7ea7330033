//! `fanout spill replay` (issue 14): the disk backlog of a gateway that is
//! not coming back is delivered from its data dir to its targets, resolved
//! from the registry store, then removed. The real `fanout` binary and
//! fanout-load's verifying sink in this process, on 127.0.0.1.
//!
//! - `replay_delivers_an_orphaned_data_dir`: a gateway in `wal` durability
//!   acknowledges rounds while its target is down and is killed (kill -9).
//!   A replay while the target is still down gives up at its `--timeout`,
//!   fails naming the target and leaves the backlog; once the target is up a
//!   replay delivers every acknowledged sample in order per series, exits 0
//!   and leaves no backlog. A second replay finds nothing to do.
//! - `replay_resolves_targets_from_the_shared_registry` (PostgreSQL, run by
//!   `.ci/run`): the same with the fleet's store, and the export's config
//!   changed through another gateway after the kill, so the backlog belongs
//!   to a target id that no longer exists: the replay hands it to the
//!   export's new target, which sends it with the new header.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fanout_loadtest::verify::Problem;
use fanout_tests::fanout::{fanout_bin, free_port, tempfile_dir::TempDir, Gateway};
use fanout_tests::rounds::{self, client, in_order, round, sink_at};

const TOKEN: &str = "replay-ingest-token";
const ROUNDS: u32 = 30;

/// Export `s` of d1 to a sink on `port`, with header `X-Config: {tag}`.
fn registry(port: u16, tag: &str) -> String {
    rounds::registry(
        TOKEN,
        &format!(
            "endpoint: '{}', headers: {{X-Config: {tag}}}, delivery: {{batchSendDeadline: 50ms, maxSamplesPerSend: 500, maxBackoff: 200ms}}",
            rounds::endpoint(port)
        ),
    )
}

/// Starts a gateway (`wal` durability) whose target on `port` is down,
/// has it acknowledge [`ROUNDS`] rounds of cluster 0, kills it (kill -9) and
/// returns its data dir.
async fn orphaned_data_dir(name: &str, port: u16, store: &[&str]) -> TempDir {
    let dir = TempDir::new(&format!("{name}-registry"));
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(port, "old")).unwrap();
    let mut args = vec!["--registry", path.to_str().unwrap(), "--durability", "wal"];
    args.extend_from_slice(store);
    let mut gw = Gateway::start(name, &args);
    let http = client();
    for seq in 0..ROUNDS {
        let status = rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await;
        assert_eq!(status / 100, 2, "round {seq}: {status}; log:\n{}", gw.log());
    }
    gw.kill();
    gw.take_data_dir()
}

/// Runs `fanout spill replay` on `data` (bounded by its own `--timeout`
/// plus a margin).
fn replay(data: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(fanout_bin())
        .args(["spill", "replay", "--data-dir", data.to_str().unwrap()])
        .args(extra)
        .env("FANOUT_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fanout runs");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fanout spill replay did not end within 90s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Segment files under `<data>/spill/`.
fn segments(data: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(data.join("spill")) else {
        return 0;
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| f.path().extension().is_some_and(|x| x == "seg"))
        .count()
}

/// Target directories left under `<data>/spill/`.
fn spill_dirs(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("spill"))
        .map(|dirs| {
            dirs.flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Requires every acknowledged round at the sink, in order per series;
/// returns the duplicate samples.
fn delivered_in_order(sink: &fanout_loadtest::sink::SinkHandle, log: &str) -> u64 {
    let acked: Vec<u32> = (0..ROUNDS).collect();
    let (duplicates, problems): (Vec<Problem>, Vec<Problem>) = in_order("t", &acked)
        .check(&[sink.report()])
        .into_iter()
        // A batch sent just before the kill may arrive twice; never out of
        // order, and nothing may be missing.
        .partition(|p| matches!(p, Problem::Duplicated { .. }));
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}\n{log}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    duplicates
        .iter()
        .map(|p| match p {
            Problem::Duplicated { copies, .. } => *copies,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_delivers_an_orphaned_data_dir() {
    let port = free_port();
    let data = orphaned_data_dir("replay", port, &[]).await;
    let on_disk = segments(data.path());
    assert!(on_disk > 0, "a backlog on disk");

    // The target still down: the replay gives up, says why, keeps the backlog.
    let out = tokio::task::block_in_place(|| replay(data.path(), &["--timeout", "2s"]));
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("not every backlog") && all.contains("records not delivered"),
        "{all}"
    );
    assert!(all.contains("--timeout 2s ended"), "{all}");
    assert!(segments(data.path()) > 0, "the backlog stays: {all}");

    let sink = sink_at(port, "t", &[("X-Config", "old")]).await;
    let out = tokio::task::block_in_place(|| replay(data.path(), &["--timeout", "60s"]));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("every backlog delivered and removed"), "{all}");
    let duplicates = delivered_in_order(&sink, &all);
    assert_eq!(spill_dirs(data.path()), Vec::<String>::new(), "{all}");
    eprintln!(
        "replay: {ROUNDS} acknowledged rounds of {} series delivered in order, {duplicates} duplicate samples\n{all}",
        rounds::SERIES
    );

    // Nothing left: a second replay says so and succeeds.
    let out = tokio::task::block_in_place(|| replay(data.path(), &[]));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("no disk backlog to deliver"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (FANOUT_TEST_POSTGRES_URL); run by .ci/run"]
async fn replay_resolves_targets_from_the_shared_registry() {
    let store = std::env::var("FANOUT_TEST_POSTGRES_URL").expect(
        "FANOUT_TEST_POSTGRES_URL: an empty PostgreSQL database for this test (.ci/run starts one)",
    );
    let port = free_port();
    let data = orphaned_data_dir("replay-pg", port, &["--store", &store]).await;
    assert!(segments(data.path()) > 0, "a backlog on disk");

    // Another gateway of the fleet changes the export: a new header, so a
    // new target id; the killed gateway's backlog is under the old one.
    let other = Gateway::start("replay-pg-other", &["--store", &store]);
    let patch = r#"{"metricsExport": {"headers": {"X-Config": "new"}}}"#;
    let (status, body) = other.request(
        "PATCH",
        "/api/v1/metrics-exports/s",
        Some(("application/json", patch)),
    );
    assert_eq!(status, 200, "{body}");

    let sink = sink_at(port, "t", &[("X-Config", "new")]).await;
    let out = tokio::task::block_in_place(|| {
        replay(data.path(), &["--store", &store, "--timeout", "60s"])
    });
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("resuming the disk backlog of its previous target"),
        "{all}"
    );
    delivered_in_order(&sink, &all);
    assert_eq!(spill_dirs(data.path()), Vec::<String>::new(), "{all}");
    eprintln!("replay through the shared registry:\n{all}");
}
