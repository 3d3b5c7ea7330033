//! Throughput of `--durability memory` vs `wal`, side by side: samples
//! acknowledged per CPU-second of the gateway (user + system, from
//! `/proc/<pid>/stat`), with a healthy in-process sink as the target and
//! eight concurrent writers of 500-series requests for 8 s per mode.
//!
//! ```text
//! cargo build --release -p fanout-gateway --bin fanout
//! FANOUT_BIN=target/release/fanout cargo run --release -p fanout-tests --example spill_bench
//! ```
//! A benchmark, not a test: it reports numbers and asserts nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_loadtest::sink::{Sink, SinkConfig};
use fanout_tests::fanout::{free_port, Gateway};
use fanout_tests::rounds::{self, client, round_of};

const TOKEN: &str = "bench-ingest-token";
const SERIES: u32 = 500;
const WRITERS: u32 = 8;
const RUN: Duration = Duration::from_secs(8);

fn registry(port: u16) -> String {
    rounds::registry(TOKEN, &format!("endpoint: '{}'", rounds::endpoint(port)))
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

async fn run(mode: &str, registry: &std::path::Path) -> (u64, f64, f64) {
    let gw = Gateway::start(
        &format!("bench-{mode}"),
        &[
            "--registry",
            registry.to_str().unwrap(),
            "--durability",
            mode,
        ],
    );
    let pid = gw.pid();
    let cpu0 = cpu_seconds(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (ingest, stop, acked) = (gw.ingest.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let status = rounds::write(&http, &ingest, TOKEN, round_of(w, seq, SERIES)).await;
                if status / 100 == 2 {
                    acked.fetch_add(u64::from(SERIES), Ordering::Relaxed);
                }
                seq += 1;
            }
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    (acked.load(Ordering::Relaxed), cpu, wall)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port = free_port();
    let _sink = Sink::start(SinkConfig {
        name: "t".to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..SinkConfig::default()
    })
    .await
    .expect("sink starts");
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("spill-bench");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(port)).expect("registry file");
    println!("mode    samples_acked  wall_s  gateway_cpu_s  samples/s  samples/cpu_s");
    for mode in ["memory", "wal"] {
        let (samples, cpu, wall) = run(mode, &path).await;
        println!(
            "{mode:<7} {samples:>13} {wall:>7.1} {cpu:>14.2} {:>10.0} {:>14.0}",
            samples as f64 / wall,
            samples as f64 / cpu.max(0.01)
        );
    }
}
