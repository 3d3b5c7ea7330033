//! What the real `fanout serve` logs for its operator, read from its log
//! file the way a person reads it. Every wait is bounded; everything talks
//! to 127.0.0.1.
//!
//! - `shutdown_says_what_it_does_and_what_it_leaves_on_disk`: SIGTERM with
//!   one export's endpoint down: a line at least every 5 s while it waits
//!   (never 10 s of silence), then per export what stays on disk, the same
//!   records and bytes the next start says it resumes.
//! - `a_refused_cluster_is_one_warn_line_without_its_token`: writes with a
//!   wrong token (bearer, and basic auth naming the cluster) are each one
//!   WARN line per minute naming the cluster (or `unknown token`) and the
//!   remote address, never the token.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use fanout_tests::fanout::{free_port, Gateway};
use fanout_tests::rounds::{self, client, round, sink_at};

const TOKEN: &str = "operator-log-ingest-token";

/// Cluster `cl-a`, Deployment `d1` (namespace `ns-1`) and its two exports:
/// `live` to `live_port`, `dead` to `dead_port`.
fn registry(live_port: u16, dead_port: u16) -> String {
    let export = |id: &str, port: u16| {
        format!(
            "  - {{id: {id}, objectKey: {id}, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', delivery: {{maxBackoff: 500ms}}}}}}\n",
            rounds::endpoint(port)
        )
    };
    format!(
        "{}metricsExports:\n{}{}",
        rounds::registry(TOKEN, ""),
        export("live", live_port),
        export("dead", dead_port)
    )
}

/// The value of `key=` in a log line: up to the next ` word=` (a value may
/// hold spaces, `dead ·1`) or the end of the line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let end = rest
        .match_indices(' ')
        .find(|(i, _)| {
            let word = &rest[i + 1..];
            word.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

/// `exports → (records, bytes)` of the lines of `log` that hold `message`.
fn backlogs(log: &str, message: &str) -> BTreeMap<String, (u64, u64)> {
    log.lines()
        .filter(|l| l.contains(message))
        .map(|l| {
            let num = |k| {
                field(l, k)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no {k}= in {l}"))
            };
            let exports = field(l, "exports").unwrap_or_else(|| panic!("no exports= in {l}"));
            (exports.to_owned(), (num("records"), num("bytes")))
        })
        .collect()
}

/// `fanout_target_oldest_undelivered_seconds` of every target, lowest first.
fn lag(metrics: &str) -> Vec<f64> {
    let mut ages: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("fanout_target_oldest_undelivered_seconds{"))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    ages.sort_by(f64::total_cmp);
    ages
}

#[test]
fn log_field_reads_values_with_spaces() {
    let l = "INFO x: left on disk exports=dead ·1 target_id=ab12 records=3 bytes=40";
    assert_eq!(field(l, "exports"), Some("dead ·1"));
    assert_eq!(field(l, "records"), Some("3"));
    assert_eq!(field(l, "bytes"), Some("40"));
    assert_eq!(field(l, "samples"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_what_it_does_and_what_it_leaves_on_disk() {
    let (live_port, dead_port) = (free_port(), free_port());
    let _live = sink_at(live_port, "live", &[]).await;
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("operator-log");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(live_port, dead_port)).unwrap();
    let args = [
        "--registry",
        path.to_str().unwrap(),
        // Some of the dead target's data goes to disk before the shutdown,
        // the rest when the grace ends.
        "--target-queue-memory",
        "64KiB",
        "--drain-delay",
        "1s",
        "--shutdown-grace",
        "12s",
    ];
    let mut gw = Gateway::start("operator-log", &args);
    let http = client();
    for seq in 0..30u32 {
        let status = rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await;
        assert_eq!(status / 100, 2, "write {seq}: {status}\nlog:\n{}", gw.log());
    }
    // /metrics says how far behind each target is: the dead one's oldest
    // undelivered data ages, the live one has none; and which build runs.
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let (status, text) = tokio::task::block_in_place(|| gw.request("GET", "/metrics", None));
        assert_eq!(status, 200, "{text}");
        let ages = lag(&text);
        if ages.len() == 2 && ages[0] == 0.0 && ages[1] >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no lag of at least 1 s on the dead target: {ages:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let info = metrics
        .lines()
        .find(|l| l.starts_with("fanout_build_info{"))
        .unwrap_or_else(|| panic!("no fanout_build_info:\n{metrics}"));
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && info.contains("revision=\"")
            && !info.contains("revision=\"\"")
            && info.ends_with(" 1"),
        "{info}"
    );

    // SIGTERM, then watch the log grow until the process exits.
    let before = gw.log().len();
    let sent = Instant::now();
    Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .expect("kill");
    let (mut last_growth, mut len) = (Instant::now(), before);
    let mut longest_silence = Duration::ZERO;
    let status = loop {
        let exited = tokio::task::block_in_place(|| gw.wait(Duration::from_millis(100)));
        let now_len = gw.log().len();
        if now_len != len {
            longest_silence = longest_silence.max(last_growth.elapsed());
            (last_growth, len) = (Instant::now(), now_len);
        }
        if let Some(status) = exited {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(40),
            "no exit 40 s after SIGTERM; log:\n{}",
            gw.log()
        );
    };
    let took = sent.elapsed();
    let log = gw.log();
    let shutdown = &log[before..];
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    // The dead endpoint keeps the gateway waiting for the whole grace.
    assert!(
        took >= Duration::from_secs(12),
        "exited after {took:?}; log:\n{shutdown}"
    );
    assert!(
        longest_silence < Duration::from_secs(10),
        "the log was silent for {longest_silence:?} during the shutdown:\n{shutdown}"
    );
    let progress: Vec<&str> = shutdown
        .lines()
        .filter(|l| l.contains("shutting down: delivering what is queued"))
        .collect();
    assert!(progress.len() >= 2, "progress lines:\n{shutdown}");
    assert!(
        progress
            .iter()
            .all(|l| l.contains("dead ·1") && l.contains("seconds_left=")),
        "progress names the target still draining by its export:\n{shutdown}"
    );
    assert!(!shutdown.contains("undelivered_samples"), "{shutdown}");
    let stopped = shutdown
        .lines()
        .find(|l| l.contains("delivery stopped"))
        .unwrap_or_else(|| panic!("no 'delivery stopped' line:\n{shutdown}"));
    assert_eq!(field(stopped, "abandoned_samples"), Some("0"), "{stopped}");
    assert!(field(stopped, "delivered_samples").is_some(), "{stopped}");
    let left = backlogs(shutdown, "left in this target's disk backlog");
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        ["dead ·1"],
        "only the dead export's target keeps a backlog:\n{shutdown}"
    );
    let (records, bytes) = left["dead ·1"];
    assert!(records > 0 && bytes > 0, "{shutdown}");
    let on_disk: u64 = field(stopped, "on_disk_samples").unwrap().parse().unwrap();
    assert_eq!(on_disk, 30 * rounds::SERIES as u64, "{stopped}");

    // The next start resumes exactly that.
    let data = gw.take_data_dir();
    drop(gw);
    let gw = Gateway::start_in("operator-log", data, &args);
    let log = gw.log();
    let resumed = backlogs(&log[len..], "resuming the disk backlog of this target");
    assert_eq!(resumed, left, "log of the restart:\n{}", &log[len..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cluster_is_one_warn_line_without_its_token() {
    const WRONG: &str = "wrong-token-4f1e9c";
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("operator-refused");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, rounds::registry(TOKEN, "")).unwrap();
    let gw = Gateway::start("operator-refused", &["--registry", path.to_str().unwrap()]);
    let http = client();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("cl-a:{WRONG}")
        )
    );
    for seq in 0..5u32 {
        let status = rounds::write(&http, &gw.ingest, WRONG, round(0, seq)).await;
        assert_eq!(status, 401);
        let mut req = rounds::write_request(&gw.ingest, TOKEN, round(0, seq), false);
        req.headers_mut()
            .insert("authorization", basic.parse().unwrap());
        let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
            .await
            .expect("an answer within 10 s")
            .expect("an answer");
        assert_eq!(resp.status().as_u16(), 401);
    }
    // Both are logged before the answer goes out; the log file may lag a
    // little behind the process.
    let deadline = Instant::now() + Duration::from_secs(5);
    let warns = loop {
        let log = gw.log();
        let warns: Vec<String> = log
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains("cluster refused"))
            .map(str::to_owned)
            .collect();
        if warns.len() >= 2 || Instant::now() > deadline {
            break warns;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = gw.log();
    assert!(!log.contains(WRONG), "the token is in the log:\n{log}");
    assert_eq!(warns.len(), 2, "one line per cluster and reason:\n{log}");
    let line = |who: &str| {
        warns
            .iter()
            .find(|l| field(l, "cluster") == Some(who))
            .unwrap_or_else(|| panic!("no WARN line for {who}:\n{log}"))
    };
    for who in ["\"unknown token\"", "\"cl-a\""] {
        let l = line(who);
        assert!(
            field(l, "remote").is_some_and(|r| r.starts_with("127.0.0.1:")),
            "{l}"
        );
        assert_eq!(field(l, "status"), Some("401"), "{l}");
        assert_eq!(field(l, "refused_since_last_line"), Some("0"), "{l}");
    }
}
