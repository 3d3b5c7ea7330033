//! Ingest alone: 2,000-sample remote-write 1.0 requests (200 series x 10
//! samples) over HTTP/1.1, h2c and HTTP/3 into the real listeners, with the
//! counting delivery behind them. Criterion reports requests/s (and samples/s
//! through its element throughput); after it, a fixed run per transport
//! prints samples per CPU-second of this process (client and server share
//! the process, so the figure is a lower bound for the gateway alone).
//!
//! Run: `cargo bench -p fanout-gateway --bench ingest -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fanout_gateway::deliver::CountingDelivery;
use fanout_gateway::ingest::testing::{v1_body, H1Client, H2Client, H3Client, StaticAuth};
use fanout_gateway::ingest::{start, IngestConfig, IngestOptions, IngestServer, MemoryBudget};

const SERIES: usize = 200;
const SAMPLES: usize = 10;
const IN_FLIGHT: usize = 8;
const AUTH: (&str, &str) = ("authorization", "Bearer bench-token");

struct Env {
    rt: tokio::runtime::Runtime,
    server: IngestServer,
    body: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = IngestConfig::default();
    let server = rt
        .block_on(start(
            IngestOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                data_dir: dir.path().to_owned(),
                tls_cert: None,
                tls_key: None,
                config: config.clone(),
            },
            Arc::new(StaticAuth::default().with("bench", "bench-token")),
            Arc::new(CountingDelivery::new()),
            MemoryBudget::new(config.memory_budget),
        ))
        .expect("ingest starts");
    Env {
        rt,
        server,
        body: v1_body(SERIES, SAMPLES),
        _dir: dir,
    }
}

/// Sends `n` requests, `IN_FLIGHT` at a time, with `post` cloned per lane.
async fn drive<F, Fut>(n: u64, post: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let lanes = left.min(IN_FLIGHT as u64);
        let mut tasks = Vec::with_capacity(lanes as usize);
        for _ in 0..lanes {
            tasks.push(tokio::spawn(post()));
        }
        for t in tasks {
            t.await.expect("request task");
        }
        left -= lanes;
    }
    start.elapsed()
}

#[derive(Clone)]
enum Client {
    H1(Vec<Arc<tokio::sync::Mutex<H1Client>>>),
    H2(H2Client),
    H3(H3Client),
}

impl Client {
    async fn connect(kind: &str, server: &IngestServer) -> Client {
        let addr = server.local_addr();
        match kind {
            "http1" => {
                let mut conns = Vec::new();
                for _ in 0..IN_FLIGHT {
                    let c = H1Client::connect(addr).await.expect("h1 connect");
                    conns.push(Arc::new(tokio::sync::Mutex::new(c)));
                }
                Client::H1(conns)
            }
            "h2c" => Client::H2(H2Client::connect(addr).await.expect("h2 connect")),
            _ => Client::H3(
                H3Client::connect(addr, server.quic_certificate().clone())
                    .await
                    .expect("h3 connect"),
            ),
        }
    }

    fn post(
        &self,
        lane: usize,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let reply = match this {
                Client::H1(conns) => {
                    let c = conns[lane % conns.len()].clone();
                    let mut c = c.lock().await;
                    c.post("/api/v1/write", &[AUTH], body).await
                }
                Client::H2(mut c) => c.post("/api/v1/write", &[AUTH], body).await,
                Client::H3(mut c) => c.post("/api/v1/write", &[AUTH], body).await,
            };
            let status = reply.expect("request").status;
            assert_eq!(status, http::StatusCode::NO_CONTENT);
        }
    }
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn bench(c: &mut Criterion) {
    let env = env();
    let mut group = c.benchmark_group("ingest_2000_samples");
    group.throughput(Throughput::Elements(1));
    for kind in ["http1", "h2c", "h3"] {
        let client = env.rt.block_on(Client::connect(kind, &env.server));
        group.bench_function(kind, |b| {
            b.iter_custom(|iters| {
                let lane = std::sync::atomic::AtomicUsize::new(0);
                env.rt.block_on(drive(iters, || {
                    let i = lane.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    client.post(i, env.body.clone())
                }))
            })
        });
        // Fixed run for samples per CPU-second.
        let n = 2_000u64;
        let cpu0 = cpu_seconds();
        let lane = std::sync::atomic::AtomicUsize::new(0);
        let wall = env.rt.block_on(drive(n, || {
            let i = lane.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            client.post(i, env.body.clone())
        }));
        let cpu = (cpu_seconds() - cpu0).max(0.01);
        let samples = (n as usize * SERIES * SAMPLES) as f64;
        println!(
            "{kind}: {n} requests in {:.2}s wall, {:.2} CPU-s: {:.0} requests/s, {:.0} samples/s, {:.0} samples per CPU-second",
            wall.as_secs_f64(),
            cpu,
            n as f64 / wall.as_secs_f64(),
            samples / wall.as_secs_f64(),
            samples / cpu
        );
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
