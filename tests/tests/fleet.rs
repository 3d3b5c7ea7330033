//! A fleet: three `fanout serve --store postgres://… --durability wal`
//! gateways behind HAProxy (TCP mode, health checks on `/readyz`), three
//! simulated clusters writing through HAProxy and retrying like Prometheus
//! (429, 5xx, connection errors and timeouts: the same body again), while
//! the test
//!
//! 1. restarts every gateway in turn with SIGTERM, waiting for `/readyz`
//!    before the next (a rolling restart);
//! 2. kills one with SIGKILL and restarts it on the same data dir;
//! 3. changes the registry through one gateway while traffic flows: an
//!    export added for Deployment `d-1`, the export of `d-0` removed;
//! 4. makes the shared target answer 503 for a while.
//!
//! The console (`fanout-tui` with the three admin URLs, in tmux) watches:
//! it must show every gateway up, flag the killed one and see it back, and
//! list each target once, merged over the gateways.
//!
//! Then every acknowledged sample must be at every target it should reach,
//! nothing at a target it should not, and the clients must have seen only
//! retryable answers. Duplicates (a request whose answer a kill cut off is
//! sent again) are counted and printed, not failures; so are the figures of
//! `docs/fleet.md` (acknowledged, duplicates, longest pause a client saw).
//!
//! Needs `FANOUT_TEST_POSTGRES_URL` (an empty database; `.ci/run` starts a
//! private PostgreSQL) and `haproxy` (`FANOUT_HAPROXY_BIN` or `PATH`,
//! `.ci/run` installs Debian's).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fanout_loadtest::identity::SeriesId;
use fanout_loadtest::sink::{Fault, SinkHandle};
use fanout_tests::fanout::free_port;
use fanout_tests::fleet::{
    clusters_and_deployments, settle, Balancer, Member, Sent, Writers, ADMIN_TOKEN,
};
use fanout_tests::prometheus::{built, temp_dir};
use fanout_tests::rounds::{self, sink_at};
use fanout_tests::tmux::Tmux;

const CLUSTERS: u32 = 3;
const SERIES: u32 = 100;
/// How long a registry change may take to reach every gateway (LISTEN/NOTIFY
/// takes well under a second).
const PROPAGATION: Duration = Duration::from_secs(3);

/// Clusters `cl-0..2`, each with Deployment `d-c` (namespace `ns-1`, the
/// namespace `round_of` writes); export `shared` linked to every
/// Deployment, `own0` of `d-0` only; with `changed`, `own0` is gone and
/// `new1` of `d-1` exists.
fn registry(sinks: &HashMap<&str, u16>, changed: bool) -> String {
    let mut y = clusters_and_deployments(CLUSTERS);
    let export = |id: &str, scope: &str, entity: &str, extra: &str| {
        format!(
            "  - {{id: {id}, objectKey: {id}, scope: {scope}, scopeEntityId: {entity}{extra}, metricsExport: {{endpoint: '{}', delivery: {{batchSendDeadline: 100ms, maxBackoff: 500ms}}}}}}\n",
            rounds::endpoint(sinks[id])
        )
    };
    y.push_str("metricsExports:\n");
    y.push_str(&export(
        "shared",
        "WORKSPACE",
        "ws",
        ", autoLinkDeployments: true",
    ));
    if changed {
        y.push_str(&export("new1", "DEPLOYMENT", "d-1", ""));
    } else {
        y.push_str(&export("own0", "DEPLOYMENT", "d-0", ""));
    }
    y
}

/// One gateway of the fleet: fixed ports (HAProxy knows them) and data dir.
/// `fanout-tui` on every member's admin API, in a 160x48 tmux pane.
struct Console {
    tmux: Tmux,
}

impl Console {
    fn start(members: &[Member]) -> Console {
        Tmux::require();
        let tui = built(&["-p", "fanout-tui", "--bin", "fanout-tui"], "fanout-tui");
        let admins: Vec<String> = members
            .iter()
            .map(|m| format!("--admin http://{}", m.admin))
            .collect();
        let script = format!(
            "{} {}; echo TUI-EXITED-$?; exec sleep 600",
            tui.display(),
            admins.join(" ")
        );
        Console {
            tmux: Tmux::start(
                "fanout-fleet-console",
                &script,
                160,
                48,
                &[("FANOUT_ADMIN_TOKEN", ADMIN_TOKEN)],
            ),
        }
    }

    /// Waits (30 s at most) until the screen satisfies `ok`.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        tokio::task::block_in_place(|| {
            self.tmux
                .wait_screen(what, Duration::from_secs(30), &String::new, ok)
        })
    }

    fn keys(&self, keys: &[&str]) {
        self.tmux.keys(keys);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (FANOUT_TEST_POSTGRES_URL) and haproxy; run by .ci/run"]
async fn a_fleet_behind_haproxy_loses_nothing_acknowledged() {
    let store = std::env::var("FANOUT_TEST_POSTGRES_URL").expect(
        "FANOUT_TEST_POSTGRES_URL: an empty PostgreSQL database for this test (.ci/run starts one)",
    );
    let dir = temp_dir("fleet");
    let mut ports: HashMap<&str, u16> = HashMap::new();
    let mut sinks: HashMap<&str, SinkHandle> = HashMap::new();
    for name in ["shared", "own0", "new1"] {
        let port = free_port();
        ports.insert(name, port);
        sinks.insert(name, sink_at(port, name, &[]).await);
    }
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::new(&format!("g{i}"), &dir, &store))
        .collect();
    members[0].start();
    let (status, body) =
        members[0].admin("PUT", "/api/v1/registry", Some(&registry(&ports, false)));
    assert_eq!(status, 200, "{body}");
    for m in &mut members[1..] {
        m.start();
    }
    let lb = Balancer::start_ready(&dir, &members);
    let writers = Writers::start(CLUSTERS, lb.addr, SERIES, Duration::from_millis(20));
    let pause = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    pause(1500).await;
    let console = Console::start(&members);
    console.wait("every gateway up", |s| {
        s.contains("gateways 3/3 up")
            && members
                .iter()
                .all(|m| s.contains(&format!(":{}  up", m.admin.port())))
    });

    // 1. Rolling restart.
    for m in &mut members {
        m.stop();
        m.start();
        pause(1000).await;
    }
    // 2. kill -9 and restart on the same data dir.
    members[1].kill();
    console.wait("the killed gateway flagged", |s| {
        s.contains("gateways 2/3 up")
            && s.contains(&format!(":{}  disconnected", members[1].admin.port()))
    });
    pause(1000).await;
    members[1].start();
    console.wait("the gateway back", |s| s.contains("gateways 3/3 up"));
    pause(1000).await;
    // 3. A registry change through one gateway while traffic flows.
    let changed_at = Instant::now();
    let (status, body) = members[2].admin("PUT", "/api/v1/registry", Some(&registry(&ports, true)));
    assert_eq!(status, 200, "{body}");
    pause(PROPAGATION.as_millis() as u64 + 1000).await;
    // 4. The shared target fails for a while and comes back.
    sinks["shared"].set_fault(Fault {
        status: Some(503),
        status_for: Some(Duration::from_secs(3)),
        ..Fault::default()
    });
    pause(5000).await;

    let client = writers.finish().await;
    // The merged targets: one row per target, whatever gateways have it.
    console.keys(&["2"]);
    let screen = console.wait("the merged targets", |s| {
        let rows = |name: &str| {
            s.lines()
                .filter(|l| l.starts_with(&format!("│{name} ")))
                .count()
        };
        rows("shared") == 1 && rows("new1") == 1
    });
    eprintln!("the console on the fleet:\n{screen}");
    console.keys(&["q"]);
    console.wait("the console to exit", |s| s.contains("TUI-EXITED-0"));
    assert!(
        client.non_retryable.is_empty(),
        "the clients saw answers they may not retry: {:?}",
        client.non_retryable
    );

    // What each target must hold, and what it must not.
    let acked = |c: u32| -> Vec<Sent> {
        client.sent[c as usize]
            .iter()
            .filter(|s| s.acked.is_some())
            .copied()
            .collect()
    };
    let before = |s: &Sent| s.acked.is_some_and(|a| a < changed_at);
    let after = |s: &Sent| s.first > changed_at + PROPAGATION;
    let must = |target: &str, c: u32| -> Vec<u32> {
        acked(c)
            .iter()
            .filter(|s| match target {
                "shared" => true,
                "own0" => c == 0 && before(s),
                "new1" => c == 1 && after(s),
                _ => false,
            })
            .map(|s| s.seq)
            .collect()
    };
    let must_not = |target: &str, c: u32| -> Vec<u32> {
        client.sent[c as usize]
            .iter()
            .filter(|s| match target {
                "shared" => false,
                "own0" => c != 0 || after(s),
                "new1" => c != 1 || s.acked.is_some_and(|a| a < changed_at),
                _ => true,
            })
            .map(|s| s.seq)
            .collect()
    };
    let reports = settle(&sinks, Duration::from_secs(60), |reports| {
        let mut problems = Vec::new();
        for (target, r) in reports {
            for c in 0..CLUSTERS {
                for i in 0..SERIES {
                    let got = r.series.get(&SeriesId {
                        cluster: c,
                        series: i,
                    });
                    let has = |seq: u32| got.is_some_and(|g| g.seqs.contains(seq));
                    if let Some(seq) = must(target, c).into_iter().find(|&q| !has(q)) {
                        problems.push(format!(
                            "{target}: cluster {c} series {i} round {seq} missing"
                        ));
                    }
                    if let Some(seq) = must_not(target, c).into_iter().find(|&q| has(q)) {
                        problems.push(format!(
                            "{target}: cluster {c} series {i} round {seq} should not be there"
                        ));
                    }
                    let deployment = format!("d-{c}");
                    if got.is_some_and(|g| {
                        !g.label_sets.iter().all(|l| {
                            l.iter()
                                .any(|(k, v)| k == "deploymentId" && *v == deployment)
                        })
                    }) {
                        problems.push(format!(
                            "{target}: cluster {c} series {i} without deploymentId {deployment}"
                        ));
                    }
                }
            }
        }
        problems
    })
    .await;

    let acked_samples: usize =
        (0..CLUSTERS).map(|c| acked(c).len()).sum::<usize>() * SERIES as usize;
    let duplicates: u64 = reports
        .values()
        .flat_map(|r| r.series.values())
        .map(|s| s.duplicates)
        .sum();
    let unanswered: usize = client
        .sent
        .iter()
        .flatten()
        .filter(|s| s.acked.is_none())
        .count();
    println!(
        "fleet: {acked_samples} samples acknowledged ({} rounds of {SERIES} series), {} client retries, \
         {unanswered} rounds unanswered at the end, {duplicates} duplicate deliveries, longest pause a client saw {:?}; \
         delivered: shared {}, own0 {}, new1 {}",
        acked_samples / SERIES as usize,
        client.retries,
        client.longest_pause,
        reports["shared"].samples,
        reports["own0"].samples,
        reports["new1"].samples,
    );
    assert!(acked_samples > 0);
    for m in &mut members {
        m.stop();
    }
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
