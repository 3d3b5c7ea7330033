//! The chaos suite: a real fleet while a fault runner breaks, one after the
//! other, what Fanout does not control (docs/reliability.md "Chaos").
//!
//! Two `fanout serve --store postgres://… --durability wal` gateways behind
//! HAProxy, two clusters writing through it and retrying like Prometheus,
//! three exports linked to both Deployments: `a` and `b` healthy sinks, `c`
//! a sink behind a TCP proxy the test switches between behaviours. Faults:
//!
//! 1. `baseline`: none (the healthy targets' p99 to compare with);
//! 2. `postgres-down`: PostgreSQL stopped (`pg_ctl stop -m immediate`) for
//!    30 s, gateway `g1` restarted inside the outage (it must come back from
//!    its last known registry); then a registry change must reach both
//!    gateways within 2 s;
//! 3. `postgres-restart`: PostgreSQL restarted (every connection reset);
//! 4. `c-silent`, `c-trickle`, `c-reset`: `c`'s endpoint accepts and never
//!    answers, answers a byte per 100 ms, or resets every connection;
//! 5. `disk-full`: the gateways' data dirs (a tmpfs) full for 10 s;
//! 6. `kill-in-replay`: `c` refuses for 8 s, `g0` is SIGKILLed, restarted,
//!    and SIGKILLed again while it replays `c`'s backlog from disk.
//!
//! After each: the phase's acknowledged samples, the healthy targets'
//! end-to-end p99 (of the samples they received during the phase), each
//! gateway's peak RSS and open descriptors before and after. At the end
//! every acknowledged sample must be at every target (duplicates allowed:
//! a killed gateway's unanswered batches are sent again). Bounds checked:
//! peak RSS within the memory budget (256 MiB) plus 128 MiB; descriptors
//! back within 16 of where they were; for the faults at `c` and the
//! PostgreSQL restart, the healthy p99 within 20 % of the baseline (plus
//! 100 ms: this machine is shared and noisy). The faults that refuse or
//! move ingest (PostgreSQL down with a restart, a full disk, a killed
//! gateway) hold the clients' writes back by design; their p99, which
//! includes the clients' retries, is reported, not bounded.
//!
//! Needs `FANOUT_TEST_POSTGRES_URL` (an empty database),
//! `FANOUT_TEST_PG_STOP` / `FANOUT_TEST_PG_START` (shell commands that stop
//! PostgreSQL immediately and start it, `.ci/run` sets them) and `haproxy`;
//! the full-disk fault needs root (a tmpfs mount), and is skipped without.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout_loadtest::bench::procfs;
use fanout_loadtest::identity::SeriesId;
use fanout_loadtest::sink::{Fault, SinkHandle};
use fanout_tests::fanout::free_port;
use fanout_tests::fleet::{clusters_and_deployments, settle, Balancer, Client, Member, Writers};
use fanout_tests::prometheus::{http, temp_dir, wait_for};
use fanout_tests::rounds::{self, sink_at};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLUSTERS: u32 = 2;
const SERIES: u32 = 100;
const BUDGET_MIB: u64 = 256;

/// Clusters `cl-0..1` with Deployment `d-c` each; exports `a`, `b`, `c`
/// linked to every Deployment; `label` is stamped by `a` (a change bumps
/// the version).
fn registry(ports: &HashMap<&str, u16>, label: &str) -> String {
    let mut y = clusters_and_deployments(CLUSTERS);
    y.push_str("metricsExports:\n");
    for id in ["a", "b", "c"] {
        let labels = if id == "a" {
            format!(", labels: {{chaos: {label}}}")
        } else {
            String::new()
        };
        y.push_str(&format!(
            "  - {{id: {id}, objectKey: {id}, scope: WORKSPACE, scopeEntityId: ws, autoLinkDeployments: true, metricsExport: {{endpoint: '{}'{labels}, delivery: {{batchSendDeadline: 100ms, maxBackoff: 1s, timeout: 3s}}}}}}\n",
            rounds::endpoint(ports[id])
        ));
    }
    y
}

/// What `c`'s proxy does with a connection.
const PASS: u8 = 0;
const SILENT: u8 = 1;
const TRICKLE: u8 = 2;
const RESET: u8 = 3;

/// A TCP proxy in front of sink `c` whose behaviour the test switches;
/// switching closes every connection it holds, so pooled connections
/// meet the new behaviour.
struct ChaosProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl ChaosProxy {
    async fn start(upstream: u16) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (m, c) = (mode.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let task = tokio::spawn(proxy(conn, upstream, m.load(Ordering::SeqCst)));
                let mut held = c.lock().unwrap();
                held.retain(|h| !h.is_finished());
                held.push(task.abort_handle());
            }
        });
        ChaosProxy { port, mode, conns }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

async fn proxy(mut conn: TcpStream, upstream: u16, mode: u8) {
    let mut buf = vec![0u8; 16 << 10];
    match mode {
        SILENT => while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {},
        RESET => {
            let _ = conn.set_zero_linger();
        }
        _ => {
            let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            if mode == PASS {
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                return;
            }
            // Requests go up at once; answers come back a byte per 100 ms.
            let (mut cr, mut cw) = conn.into_split();
            let (mut ur, mut uw) = up.into_split();
            let upward = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut uw).await;
            });
            let mut byte = [0u8; 1];
            while matches!(ur.read(&mut byte).await, Ok(1)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if cw.write_all(&byte).await.is_err() {
                    break;
                }
            }
            upward.abort();
        }
    }
}

/// A tmpfs mounted at a directory for the members' data dirs; unmounted
/// when dropped. `None` when it cannot be mounted (not root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }

    /// Fills it but for `leave` bytes; the filler is removed by [`Self::drain`].
    fn fill(&self, leave: u64) {
        let free = free_bytes(&self.0);
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = free.saturating_sub(leave);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if std::io::Write::write_all(&mut f, &chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
    }

    fn drain(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of a running member (0 when it is not running).
fn fds(pid: Option<u32>) -> usize {
    pid.and_then(|p| procfs::open_fds(p).ok())
        .map_or(0, |n| n as usize)
}

/// Resident memory of a running member, in MiB.
fn rss_mib(pid: Option<u32>) -> u64 {
    pid.and_then(|p| procfs::rss(p).ok()).map_or(0, |b| b >> 20)
}

fn shell(env: &str) {
    let cmd =
        std::env::var(env).unwrap_or_else(|_| panic!("{env}: a shell command (.ci/run sets it)"));
    let ok = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{env} failed: {cmd}");
}

/// One phase's figures.
#[derive(Debug, Default)]
struct Phase {
    name: &'static str,
    acked: u64,
    p99_ms: u64,
    peak_rss_mib: u64,
    fds_before: Vec<usize>,
    fds_after: Vec<usize>,
    bounded_p99: bool,
    note: String,
}

/// Samples acknowledged so far.
fn acked(out: &Mutex<Client>) -> u64 {
    let o = out.lock().unwrap();
    o.sent
        .iter()
        .flatten()
        .filter(|s| s.acked.is_some())
        .count() as u64
        * u64::from(SERIES)
}

/// The healthy sinks' merged latency histogram (ms).
fn healthy_latency(sinks: &HashMap<&str, SinkHandle>) -> Histogram<u64> {
    let mut h = sinks["a"].latency_histogram().expect("a's latencies");
    h.add(sinks["b"].latency_histogram().expect("b's latencies"))
        .expect("same bounds");
    h
}

/// The p99 of what `now` recorded since `start`.
fn p99_since(now: &Histogram<u64>, start: &Histogram<u64>) -> u64 {
    let mut d = now.clone();
    let _ = d.subtract(start);
    if d.is_empty() {
        0
    } else {
        d.value_at_quantile(0.99)
    }
}

/// Runs a phase: `fault` does its work (sampling memory meanwhile through
/// the [`Watch`] it gets); then the fleet gets `recover` to settle.
struct Watch<'a> {
    members: &'a mut [Member],
    peak: u64,
}

impl Watch<'_> {
    /// Waits `d`, sampling the members' RSS every 250 ms.
    async fn wait(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            for m in self.members.iter() {
                self.peak = self.peak.max(rss_mib(m.pid()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The registry version a member has installed.
fn version(m: &Member) -> Option<u64> {
    let (status, body) = http(
        m.admin,
        "GET",
        "/api/v1/stats",
        &[(
            "Authorization",
            &format!("Bearer {}", fanout_tests::fleet::ADMIN_TOKEN),
        )],
        b"",
    )?;
    (status == 200).then_some(())?;
    serde_json::from_str::<serde_json::Value>(&body).ok()?["configVersion"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL, pg_ctl commands and haproxy; run by .ci/run"]
async fn the_fleet_outlives_its_postgres_its_disk_and_hostile_endpoints() {
    let store = std::env::var("FANOUT_TEST_POSTGRES_URL")
        .expect("FANOUT_TEST_POSTGRES_URL: an empty PostgreSQL database (.ci/run starts one)");
    let dir = temp_dir("chaos");
    let disk = Tmpfs::mount(&dir.join("disk"));
    let data_root = disk.as_ref().map_or_else(|| dir.clone(), |t| t.0.clone());

    let mut ports: HashMap<&str, u16> = HashMap::new();
    let mut sinks: HashMap<&str, SinkHandle> = HashMap::new();
    let c_port = free_port();
    for (name, port) in [("a", free_port()), ("b", free_port()), ("c", c_port)] {
        sinks.insert(name, sink_at(port, name, &[]).await);
        ports.insert(name, port);
    }
    let chaos = ChaosProxy::start(c_port).await;
    ports.insert("c", chaos.port);

    let mut members: Vec<Member> = (0..2)
        .map(|i| {
            let mut m = Member::new(&format!("g{i}"), &data_root, &store);
            m.extra = vec!["--memory-budget".into(), format!("{BUDGET_MIB}MiB")];
            m
        })
        .collect();
    members[0].start();
    let (status, body) = members[0].admin("PUT", "/api/v1/registry", Some(&registry(&ports, "v0")));
    assert_eq!(status, 200, "{body}");
    members[1].start();
    let lb = Balancer::start_ready(&dir, &members);
    let writers = Writers::start(CLUSTERS, lb.addr, SERIES, Duration::from_millis(50));
    let out = writers.out.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut phases: Vec<Phase> = Vec::new();
    let mut propagation = None;
    let names: [&'static str; 8] = [
        "baseline",
        "postgres-down",
        "postgres-restart",
        "c-silent",
        "c-trickle",
        "c-reset",
        "disk-full",
        "kill-in-replay",
    ];
    for name in names {
        let fds_before: Vec<usize> = members.iter().map(|m| fds(m.pid())).collect();
        let (acked0, lat0) = (acked(&out), healthy_latency(&sinks));
        let mut w = Watch {
            members: &mut members,
            peak: 0,
        };
        let mut note = String::new();
        let mut bounded_p99 = false;
        match name {
            "baseline" => w.wait(Duration::from_secs(15)).await,
            "postgres-down" => {
                shell("FANOUT_TEST_PG_STOP");
                w.wait(Duration::from_secs(5)).await;
                // A restart inside the outage: from the last known registry.
                w.members[1].kill();
                let restarted = Instant::now();
                w.members[1].start();
                note = format!(
                    "g1 ready {:.1} s after its restart",
                    restarted.elapsed().as_secs_f64()
                );
                w.wait(Duration::from_secs(23)).await;
                shell("FANOUT_TEST_PG_START");
                // A change once the store is back reaches both gateways.
                let put = Instant::now();
                let v = loop {
                    let (status, body) = w.members[0].admin(
                        "PUT",
                        "/api/v1/registry",
                        Some(&registry(&ports, "v1")),
                    );
                    if status == 200 {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        break v["version"].as_u64().unwrap();
                    }
                    assert!(
                        put.elapsed() < Duration::from_secs(20),
                        "admin write after the outage: {status} {body}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let applied = Instant::now();
                let reached = wait_for(Duration::from_secs(10), || {
                    (version(&w.members[1]) >= Some(v)).then(Instant::now)
                })
                .expect("the change reaches g1");
                propagation = Some((reached - applied, applied - put));
                w.wait(Duration::from_secs(2)).await;
            }
            "postgres-restart" => {
                bounded_p99 = true;
                shell("FANOUT_TEST_PG_STOP");
                shell("FANOUT_TEST_PG_START");
                w.wait(Duration::from_secs(10)).await;
            }
            "c-silent" | "c-trickle" | "c-reset" => {
                bounded_p99 = true;
                chaos.set(match name {
                    "c-silent" => SILENT,
                    "c-trickle" => TRICKLE,
                    _ => RESET,
                });
                w.wait(Duration::from_secs(15)).await;
                chaos.set(PASS);
                w.wait(Duration::from_secs(3)).await;
            }
            "disk-full" => match &disk {
                Some(t) => {
                    t.fill(256 << 10);
                    w.wait(Duration::from_secs(10)).await;
                    t.drain();
                    w.wait(Duration::from_secs(5)).await;
                }
                None => note = "skipped: no tmpfs (not root)".into(),
            },
            "kill-in-replay" => {
                sinks["c"].set_fault(Fault {
                    status: Some(503),
                    status_for: Some(Duration::from_secs(8)),
                    ..Fault::default()
                });
                w.wait(Duration::from_secs(6)).await;
                w.members[0].kill();
                w.wait(Duration::from_secs(3)).await;
                w.members[0].start();
                // It reads c's backlog back from disk: killed again meanwhile.
                w.wait(Duration::from_millis(500)).await;
                w.members[0].kill();
                w.members[0].start();
                w.wait(Duration::from_secs(5)).await;
            }
            _ => unreachable!(),
        }
        let peak = w.peak;
        // Descriptors once the fleet settled (connections to a recovered
        // endpoint re-made, the old ones closed).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let fds_after: Vec<usize> = members.iter().map(|m| fds(m.pid())).collect();
        let phase = Phase {
            name,
            acked: acked(&out) - acked0,
            p99_ms: p99_since(&healthy_latency(&sinks), &lat0),
            peak_rss_mib: peak,
            fds_before,
            fds_after,
            bounded_p99,
            note,
        };
        println!("chaos: {phase:?}");
        phases.push(phase);
    }

    let client = writers.finish().await;
    assert!(
        client.non_retryable.is_empty(),
        "the clients saw answers they may not retry: {:?}",
        client.non_retryable
    );
    // Every acknowledged sample at every target.
    let must: Vec<Vec<u32>> = client
        .sent
        .iter()
        .map(|rounds| {
            rounds
                .iter()
                .filter(|s| s.acked.is_some())
                .map(|s| s.seq)
                .collect()
        })
        .collect();
    let reports = settle(&sinks, Duration::from_secs(120), |reports| {
        let mut problems = Vec::new();
        for (target, r) in reports {
            for (c, seqs) in must.iter().enumerate() {
                for i in 0..SERIES {
                    let got = r.series.get(&SeriesId {
                        cluster: c as u32,
                        series: i,
                    });
                    if let Some(seq) = seqs
                        .iter()
                        .find(|&&q| !got.is_some_and(|g| g.seqs.contains(q)))
                    {
                        problems.push(format!(
                            "{target}: cluster {c} series {i} round {seq} missing"
                        ));
                    }
                }
            }
        }
        problems
    })
    .await;
    let acked_total: u64 = must.iter().map(|s| s.len() as u64).sum::<u64>() * u64::from(SERIES);
    let duplicates: u64 = reports
        .values()
        .flat_map(|r| r.series.values())
        .map(|s| s.duplicates)
        .sum();

    let baseline = phases[0].p99_ms;
    println!(
        "\n| fault | acknowledged | lost | healthy p99 | peak RSS | descriptors before → after | |"
    );
    println!("|---|---:|---:|---:|---:|---|---|");
    for p in &phases {
        println!(
            "| {} | {} | 0 | {} ms | {} MiB | {:?} → {:?} | {} |",
            p.name, p.acked, p.p99_ms, p.peak_rss_mib, p.fds_before, p.fds_after, p.note
        );
    }
    let (reach, write_after) = propagation.expect("the postgres-down phase ran");
    println!(
        "\nchaos: {acked_total} samples acknowledged, 0 lost, {duplicates} duplicate deliveries, {} client retries; \
         after PostgreSQL came back the first admin write succeeded {:.2} s later and reached g1 {:.2} s after it",
        client.retries,
        write_after.as_secs_f64(),
        reach.as_secs_f64()
    );
    for p in &phases {
        assert!(
            p.peak_rss_mib <= BUDGET_MIB + 128,
            "{}: peak RSS {} MiB",
            p.name,
            p.peak_rss_mib
        );
        for (b, a) in p.fds_before.iter().zip(&p.fds_after) {
            // A gateway restarted in the phase starts from scratch.
            if *b > 0 && *a > 0 {
                assert!(a <= &(b + 16), "{}: descriptors {b} -> {a}", p.name);
            }
        }
        if p.bounded_p99 {
            let bound = (baseline as f64 * 1.2).max(baseline as f64 + 100.0) as u64;
            assert!(
                p.p99_ms <= bound,
                "{}: healthy p99 {} ms against {baseline} ms without faults",
                p.name,
                p.p99_ms
            );
        }
    }
    assert!(
        reach < Duration::from_secs(2),
        "a change after the outage reached g1 after {reach:?}"
    );
    for m in &mut members {
        m.stop();
    }
    drop(lb);
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}
