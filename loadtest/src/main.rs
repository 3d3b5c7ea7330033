//! `fanout-load`: remote-write traffic generator (`run`), verifying sinks
//! (`sink`) and the side-by-side benchmark (`bench`, `plot`). See
//! `docs/loadtest.md` and `docs/benchmarks.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use fanout_loadtest::client::Transport;
use fanout_loadtest::generator::{self, AuthMode, GeneratorConfig, Protocol};
use fanout_loadtest::scenario::Scenario;
use fanout_loadtest::sink::{ExpectedAuth, Fault, Sink, SinkConfig, SinkHandle};
use fanout_loadtest::verify;

#[derive(Parser)]
#[command(
    name = "fanout-load",
    version,
    about = "Remote-write load generator and verifying sinks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send realistic Airflow and infrastructure series of simulated clusters.
    Run(RunArgs),
    /// Receive remote-write on loopback ports, count, verify and measure latency.
    Sink(SinkArgs),
    /// Fanout and vmagent side by side on a scenario file.
    Bench(BenchArgs),
    /// Draw bench JSON reports as an SVG (throughput and latency).
    Plot(PlotArgs),
    /// A long run of one fanout serve under load while a target flaps, the
    /// registry changes and the gateway restarts; reports what leaks.
    Soak(SoakArgs),
    /// Print a registry (YAML) for `run`'s simulated clusters: their tokens,
    /// one Workspace, their Deployments with the generator's namespaces, and
    /// one Workspace export per --target linked to every Deployment. Apply it
    /// with `fanout apply -f FILE` or `fanout serve --registry FILE`.
    PrintRegistry(PrintRegistryArgs),
    /// What one more tenant costs: a gateway with thousands of Deployments,
    /// each exporting to its own endpoint, against a baseline of 100
    /// (docs/benchmarks.md "Scale")
    Scale(ScaleArgs),
}

#[derive(Args)]
struct ScaleArgs {
    /// Clusters of the large registry.
    #[arg(long, default_value_t = 100)]
    clusters: u32,
    /// Deployments per cluster of the large registry.
    #[arg(long, default_value_t = 100)]
    deployments: u32,
    /// Deployments of the baseline that carries the same traffic (0: none).
    #[arg(long, default_value_t = 100)]
    baseline: u32,
    /// Series per Deployment of the large registry.
    #[arg(long, default_value_t = 10)]
    series_per_deployment: u32,
    /// Deployments interleaved in every request.
    #[arg(long, default_value_t = 100)]
    per_request: u32,
    /// Samples per second offered.
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// How long traffic flows, in seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// The fanout binary.
    #[arg(long, env = "FANOUT_BIN", default_value = "target/release/fanout")]
    fanout_bin: PathBuf,
}

#[derive(Args)]
struct PrintRegistryArgs {
    /// Remote-write URL of a target that every Deployment exports to
    /// (repeatable; e.g. a `fanout-load sink`).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    #[command(flatten)]
    scenario: ScenarioArgs,
}

#[derive(Args)]
struct SoakArgs {
    /// How long traffic flows, in minutes.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Samples per second offered.
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// The fanout binary.
    #[arg(long, env = "FANOUT_BIN", default_value = "target/release/fanout")]
    fanout_bin: PathBuf,
    /// No line per resource sample.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Scenario file (loadtest/scenarios/*.yaml).
    #[arg(long)]
    scenario: PathBuf,
    /// Gateways to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fanout,vmagent"
    )]
    gateways: Vec<fanout_loadtest::bench::Gateway>,
    /// The fanout binary (cargo build --release -p fanout-gateway --bin fanout).
    #[arg(long, env = "FANOUT_BIN", default_value = "target/release/fanout")]
    fanout_bin: PathBuf,
    /// The vmagent binary (default: $FANOUT_VMAGENT_BIN, else vmagent on PATH).
    #[arg(long)]
    vmagent_bin: Option<PathBuf>,
    /// Override the scenario's sample count.
    #[arg(long)]
    samples: Option<u64>,
    /// Override the scenario's rate (samples/s; rate mode).
    #[arg(long)]
    rate: Option<f64>,
    /// rate: open loop at the scenario's rate. saturation: closed loop, each
    /// connection sends its next request as soon as the previous is answered
    /// (429/503 and missing answers sent again), for the scenario's samples or maxDuration.
    #[arg(long, value_enum, default_value = "rate")]
    mode: fanout_loadtest::bench::Mode,
    /// Override the scenario's generator connections (traffic.connections).
    #[arg(long)]
    connections: Option<usize>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    /// Keep each run's directory (registry, vmagent config, gateway logs).
    #[arg(long)]
    keep: bool,
    /// Fanout's `--durability`: `memory`, or `wal` (what the shipped
    /// manifests run: every acknowledged request on disk first).
    #[arg(long, default_value = "memory", value_parser = ["memory", "wal"])]
    durability: String,
}

#[derive(Args)]
struct PlotArgs {
    /// JSON reports of `bench --out`, one bar pair per file.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// SVG file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// Remote-write URL.
    #[arg(long, default_value = "http://127.0.0.1:9555/api/v1/write")]
    url: String,
    /// HTTP version.
    #[arg(long, value_enum, default_value = "http1")]
    transport: Transport,
    /// Remote-write version.
    #[arg(long, value_enum, default_value = "v1")]
    protocol: Protocol,
    /// How clusters authenticate (token: <token-prefix><cluster index>).
    #[arg(long, value_enum, default_value = "bearer")]
    auth: AuthMode,
    /// Extra header NAME=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_kv)]
    headers: Vec<(String, String)>,
    /// Connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent requests per HTTP/2 or HTTP/3 connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Samples per request.
    #[arg(long, default_value_t = 2000)]
    samples_per_request: usize,
    /// Target rate in samples per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this long (e.g. 30s, 2m); default 10s unless --samples is given.
    #[arg(long, value_parser = fanout_proto::units::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many samples.
    #[arg(long)]
    samples: Option<u64>,
    /// Timeout of one request.
    #[arg(long, value_parser = fanout_proto::units::parse_duration, default_value = "30s")]
    timeout: Duration,
    /// PEM certificate to trust (pinned) for https URLs and HTTP/3.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// First round (sequence number) to send, so that several runs against
    /// one sink carry distinct sample identities.
    #[arg(long, default_value_t = 0)]
    first_round: u32,
    /// Send a request answered 429 or 503, or not answered (refused, reset,
    /// timed out), again like Prometheus (Retry-After, else backoff 30 ms
    /// doubling to 5 s; a new connection if needed), until --duration ends.
    #[arg(long)]
    retry: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    scenario: ScenarioArgs,
}

#[derive(Args)]
struct ScenarioArgs {
    /// Simulated clusters.
    #[arg(long, default_value_t = 4)]
    clusters: u32,
    /// Deployments per cluster.
    #[arg(long, default_value_t = 5)]
    deployments: u32,
    /// DAGs per Deployment.
    #[arg(long, default_value_t = 20)]
    dags: u32,
    /// Tasks per DAG.
    #[arg(long, default_value_t = 8)]
    tasks: u32,
    /// DAG files per Deployment.
    #[arg(long, default_value_t = 8)]
    dag_files: u32,
    /// Pools per Deployment.
    #[arg(long, default_value_t = 3)]
    pools: u32,
    /// Long-lived pods per Deployment.
    #[arg(long, default_value_t = 8)]
    pods: u32,
    /// Churning task pod slots per Deployment (pod churn; 0: none).
    #[arg(long, default_value_t = 0)]
    task_pods: u32,
    /// Rounds a task pod lives before a new one replaces it.
    #[arg(long, default_value_t = 10)]
    churn_rounds: u32,
    /// Add a deploymentId label to every series.
    #[arg(long)]
    deployment_id: bool,
    /// Ingest token prefix: cluster c sends <prefix><c>.
    #[arg(long, default_value = "fanout-load-token-")]
    token_prefix: String,
    /// Interleave the series of this many Deployments in a cluster's round
    /// (round-robin within groups of N), so that a request carries N
    /// Deployments, like a sharded Prometheus; 1: Deployment after Deployment.
    #[arg(long, default_value_t = 1)]
    deployments_per_request: u32,
    /// Keep only the first N series of each Deployment (many small Deployments).
    #[arg(long)]
    series_per_deployment: Option<u32>,
    /// Print the scenario (tokens, namespaces, Deployment ids) as JSON and exit.
    #[arg(long)]
    print_scenario: bool,
}

impl ScenarioArgs {
    fn scenario(&self) -> Scenario {
        Scenario {
            clusters: self.clusters,
            deployments: self.deployments,
            dags: self.dags,
            tasks: self.tasks,
            dag_files: self.dag_files,
            pools: self.pools,
            pods: self.pods,
            task_pods: self.task_pods,
            churn_rounds: self.churn_rounds,
            deployment_id_label: self.deployment_id,
            token_prefix: self.token_prefix.clone(),
            deployments_per_request: self.deployments_per_request,
            series_limit: self.series_per_deployment,
        }
    }
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Start N sinks on free loopback ports (in addition to --listen).
    #[arg(long, default_value_t = 0)]
    targets: usize,
    /// Require `Authorization: Bearer TOKEN`.
    #[arg(long, conflicts_with = "basic")]
    bearer: Option<String>,
    /// Require basic auth USER:PASSWORD.
    #[arg(long)]
    basic: Option<String>,
    /// Require header NAME=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_kv)]
    headers: Vec<(String, String)>,
    /// Play a receiver that speaks only remote-write 1.0: `refuse` answers
    /// 2.0 bodies 415, `misread` reads them as 1.0 (storing nothing) and
    /// answers 204 without the Written headers, as Prometheus 2.x does.
    #[arg(long, value_enum, default_value = "no")]
    v1_only: fanout_loadtest::sink::V1Only,
    /// Answer every write with this status (failure injection).
    #[arg(long)]
    fail_status: Option<u16>,
    /// ... for this long from the start (default: for the whole run).
    #[arg(long, value_parser = fanout_proto::units::parse_duration)]
    fail_for: Option<Duration>,
    /// Delay every answer by this much.
    #[arg(long, value_parser = fanout_proto::units::parse_duration)]
    delay: Option<Duration>,
    /// Delay every answer by a further 0 to this much, uniformly (with
    /// --delay: a far endpoint's spread).
    #[arg(long, value_parser = fanout_proto::units::parse_duration)]
    jitter: Option<Duration>,
    /// Reset the connection of every N-th request.
    #[arg(long, default_value_t = 0)]
    reset_every: u64,
    /// Record every N-th accepted request, then answer it 503 (a lost
    /// answer: the sender's retry makes duplicates).
    #[arg(long, default_value_t = 0)]
    lose_answer_every: u64,
    /// Also serve HTTP/3 on the same ports (UDP) with a self-signed certificate.
    #[arg(long)]
    http3: bool,
    /// With --http3: write the certificate (PEM) here, for `run --ca-cert`.
    #[arg(long, requires = "http3")]
    cert_out: Option<PathBuf>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = fanout_proto::units::parse_duration)]
    duration: Option<Duration>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout-load: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Sink(a) => sink(a).await,
            Cmd::Bench(a) => bench(a).await,
            Cmd::Plot(a) => plot(a),
            Cmd::Soak(a) => soak(a).await,
            Cmd::PrintRegistry(a) => print_registry(a),
            Cmd::Scale(a) => scale(a).await,
        }
    });
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("fanout-load: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<i32> {
    let scenario = a.scenario.scenario();
    if a.scenario.print_scenario {
        scenario.validate()?;
        println!("{}", scenario_json(&scenario)?);
        return Ok(0);
    }
    let duration = match (a.duration, a.samples) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config = GeneratorConfig {
        url: a.url,
        scenario,
        protocol: a.protocol,
        transport: a.transport,
        auth: a.auth,
        headers: a.headers,
        connections: a.connections,
        streams: a.streams,
        samples_per_request: a.samples_per_request,
        rate: a.rate,
        duration,
        total_samples: a.samples,
        timeout: a.timeout,
        ca_cert: a.ca_cert,
        first_round: a.first_round,
        progress: !a.quiet,
        retry: a.retry,
        interrupt: Some(interrupt.clone()),
    };
    // The first Ctrl-C ends the run (requests in flight get their answer)
    // and the summary is printed; a second one quits at once.
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.store(true, std::sync::atomic::Ordering::Relaxed);
            eprintln!("interrupted: waiting for the requests in flight (Ctrl-C again quits now)");
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let summary = generator::run(config).await?;
    if a.json {
        let mut v = serde_json::to_value(&summary)?;
        // Acknowledged ranges can be long; the JSON summary is for people and scripts.
        if let Some(o) = v.as_object_mut() {
            o.remove("acked");
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", summary.table());
    }
    if summary.samples_ok == 0 {
        match (&summary.last_answer, &summary.last_transport_error) {
            (None, None) => {}
            (Some(a), None) => bail!("no sample was acknowledged; last answer: {a}"),
            (None, Some(e)) => bail!("no sample was acknowledged; no answer: {e}"),
            (Some(a), Some(e)) => bail!(
                "no sample was acknowledged; last answer: {a}; last request without an answer: {e}"
            ),
        }
    }
    Ok(0)
}

fn print_registry(a: PrintRegistryArgs) -> anyhow::Result<i32> {
    let scenario = a.scenario.scenario();
    scenario.validate()?;
    let doc = fanout_loadtest::bench::config::registry_for(&scenario, &a.targets);
    print!(
        "# fanout-load print-registry: {} clusters x {} Deployments, {} target(s)\n{}",
        scenario.clusters,
        scenario.deployments,
        a.targets.len(),
        serde_yaml_ng::to_string(&doc)?
    );
    Ok(0)
}

fn scenario_json(s: &Scenario) -> anyhow::Result<String> {
    let clusters: Vec<serde_json::Value> = (0..s.clusters)
        .map(|c| {
            let deps: Vec<serde_json::Value> = (0..s.deployments)
                .map(|d| serde_json::json!({"id": s.deployment_id(c, d), "namespace": s.namespace(c, d)}))
                .collect();
            serde_json::json!({"id": s.cluster_id(c), "ingestToken": s.cluster_token(c), "deployments": deps})
        })
        .collect();
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "scenario": s,
        "seriesPerCluster": s.series_per_cluster(),
        // The Deployment of each series index of a round: what one request carries.
        "roundOrder": round_order(s),
        "clusters": clusters,
    }))?)
}

/// The Deployments of a cluster's round in runs, e.g. `d0 x1850, d1 x1850`
/// or `d0 d1 d2 d0 d1 d2 ...`: the first 24 runs, so `--print-scenario`
/// shows what a request carries.
fn round_order(s: &Scenario) -> String {
    const SHOWN: usize = 24;
    let mut runs: Vec<(u32, u64)> = Vec::new();
    for i in 0..s.series_per_cluster() as u32 {
        let d = s.deployment_of(i);
        match runs.last_mut() {
            Some((last, count)) if *last == d => *count += 1,
            _ => {
                if runs.len() > SHOWN {
                    break;
                }
                runs.push((d, 1));
            }
        }
    }
    let mut out: Vec<String> = runs
        .iter()
        .take(SHOWN)
        .map(|&(d, c)| {
            if c == 1 {
                format!("d{d}")
            } else {
                format!("d{d} x{c}")
            }
        })
        .collect();
    if runs.len() > SHOWN {
        out.push("...".to_owned());
    }
    out.join(" ")
}

async fn sink(a: SinkArgs) -> anyhow::Result<i32> {
    let mut addrs = a.listen.clone();
    for _ in 0..a.targets {
        addrs.push(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    if addrs.is_empty() {
        bail!("give --listen ADDR or --targets N");
    }
    let auth = match (&a.bearer, &a.basic) {
        (Some(t), _) => Some(ExpectedAuth::Bearer(t.clone())),
        (None, Some(b)) => {
            let (user, password) = b
                .split_once(':')
                .context("--basic: expected USER:PASSWORD")?;
            Some(ExpectedAuth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        }
        (None, None) => None,
    };
    let fault = Fault {
        status: a.fail_status,
        status_for: a.fail_for,
        no_retry_after: false,
        delay: a.delay.unwrap_or_default(),
        jitter: a.jitter.unwrap_or_default(),
        reset_every: a.reset_every,
        lose_answer_every: a.lose_answer_every,
    };
    let mut sinks: Vec<SinkHandle> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let h = Sink::start(SinkConfig {
            name: format!("t{i}"),
            listen: *addr,
            auth: auth.clone(),
            headers: a.headers.clone(),
            fault: fault.clone(),
            http3: a.http3,
            v1_only: a.v1_only,
            ..SinkConfig::default()
        })
        .await?;
        println!("sink {} listening on {}", h.name(), h.url());
        if let (Some(path), Some(pem)) = (&a.cert_out, h.cert_pem()) {
            // One file holds every sink's certificate, so one --ca-cert trusts them all.
            let mut all = if i == 0 {
                String::new()
            } else {
                std::fs::read_to_string(path).unwrap_or_default()
            };
            all.push_str(pem);
            std::fs::write(path, all).with_context(|| format!("writing {}", path.display()))?;
        }
        sinks.push(h);
    }
    let start = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if a.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {
                if !a.quiet {
                    let stats: Vec<_> = sinks.iter().map(|s| s.stats()).collect();
                    let total: u64 = stats.iter().map(|s| s.samples).sum();
                    let per: Vec<String> = sinks.iter().zip(&stats).map(|(h, s)| format!("{} {} req {} samples {} refused", h.name(), s.requests, s.samples, s.refused)).collect();
                    eprintln!("[{:>5.1}s] {:>9} samples/s  {}", start.elapsed().as_secs_f64(), total - last, per.join(" | "));
                    last = total;
                }
            }
        }
    }
    let reports: Vec<_> = sinks.iter().map(|s| s.report()).collect();
    let mut problems = Vec::new();
    for r in &reports {
        problems.extend(verify::self_check(r));
    }
    // Arrival order per series: reported as counts, not problems, because
    // `fanout-load run` writes over parallel connections and does not order
    // a series' rounds at the source (tests that do use `require_order`).
    let out_of_order = |r: &fanout_loadtest::sink::SinkReport| -> u64 {
        r.series.values().map(|s| s.out_of_order).sum()
    };
    if a.json {
        let out: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "addr": r.addr, "requests": r.requests, "responses": r.responses,
                    "samples": r.samples, "series": r.series.len(), "unidentified": r.unidentified,
                    "outOfOrderSamples": out_of_order(r),
                    "badRequests": r.bad_requests, "authFailures": r.auth_failures,
                    "headerMismatches": r.header_mismatches, "injected": r.injected,
                    "lastError": r.last_error, "protocols": r.protocols, "latencyMs": r.latency_ms,
                })
            })
            .collect();
        let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"sinks": out, "problems": problems}))?
        );
    } else {
        for r in &reports {
            let codes: Vec<String> = r
                .responses
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let l = &r.latency_ms;
            println!(
                "{}  {} requests ({})  {} samples  {} series  {} unidentified  {} out of order  e2e ms p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}",
                r.name,
                r.requests,
                codes.join(", "),
                r.samples,
                r.series.len(),
                r.unidentified,
                out_of_order(r),
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            );
        }
        println!("{} problems", problems.len());
        for p in problems.iter().take(20) {
            println!("  {p}");
        }
    }
    Ok(if problems.is_empty() { 0 } else { 2 })
}

async fn scale(a: ScaleArgs) -> anyhow::Result<i32> {
    if !(a.rate > 0.0 && a.rate.is_finite() && a.seconds > 0.0 && a.seconds.is_finite()) {
        anyhow::bail!("--rate and --seconds must be positive numbers");
    }
    let opts = fanout_loadtest::bench::scale::ScaleOptions {
        clusters: a.clusters,
        deployments: a.deployments,
        baseline: a.baseline,
        series_per_deployment: a.series_per_deployment,
        per_request: a.per_request,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.seconds),
        fanout_bin: a.fanout_bin,
    };
    let reports = fanout_loadtest::bench::scale::run(&opts).await?;
    for r in &reports {
        print!("{}", r.table());
    }
    if let [large, base] = &reports[..] {
        println!(
            "CPU per sample: {:.2}x the baseline's",
            large.cpu_s_per_m / base.cpu_s_per_m.max(f64::MIN_POSITIVE)
        );
    }
    Ok(i32::from(
        reports.iter().any(|r| r.lost > 0 || !r.other.is_empty()),
    ))
}

async fn soak(a: SoakArgs) -> anyhow::Result<i32> {
    if !(a.minutes > 0.0 && a.minutes.is_finite() && a.rate > 0.0 && a.rate.is_finite()) {
        anyhow::bail!("--minutes and --rate must be positive numbers");
    }
    let opts = fanout_loadtest::bench::soak::SoakOptions {
        duration: Duration::from_secs_f64(a.minutes * 60.0),
        rate: a.rate,
        fanout_bin: a.fanout_bin,
        progress: !a.quiet,
    };
    let report = fanout_loadtest::bench::soak::run(&opts).await?;
    print!("{}", report.table());
    Ok(match report.failed() {
        Some(why) => {
            eprintln!("fanout-load soak: FAILED: {why}");
            1
        }
        None => 0,
    })
}

async fn bench(a: BenchArgs) -> anyhow::Result<i32> {
    use fanout_loadtest::bench::{self, BenchOptions, BenchSpec};
    let file = a.scenario.display().to_string();
    let text = std::fs::read_to_string(&a.scenario).with_context(|| format!("reading {file}"))?;
    let mut spec = BenchSpec::parse(&file, &text)?;
    if let Some(n) = a.samples {
        spec.traffic.samples = n;
    }
    if let Some(r) = a.rate {
        spec.traffic.rate = Some(r);
    }
    if let Some(c) = a.connections {
        if c == 0 {
            bail!("--connections: at least 1");
        }
        spec.traffic.connections = c;
    }
    let vmagent_bin = match a.vmagent_bin {
        Some(p) if p.is_file() => Some(p),
        Some(p) => bail!("--vmagent-bin {}: not a file", p.display()),
        None => bench::find_vmagent(),
    };
    let opts = BenchOptions {
        spec,
        mode: a.mode,
        gateways: a.gateways,
        fanout_bin: a.fanout_bin,
        vmagent_bin,
        progress: !a.quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        keep: a.keep,
        durability: a.durability,
    };
    // Ctrl-C or SIGTERM drops the run, whose children are killed on drop
    // (a signal's default action would exit without running destructors).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let report = tokio::select! {
        r = bench::run(&opts) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    };
    if let Some(path) = &a.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(0)
}

fn plot(a: PlotArgs) -> anyhow::Result<i32> {
    let mut reports = Vec::new();
    for p in &a.reports {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let r: fanout_loadtest::bench::BenchReport = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a bench report", p.display()))?;
        reports.push(r);
    }
    fanout_loadtest::bench::plot::write_svg(&reports, &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(0)
}
