//! `fanout-load bench`: Fanout and vmagent side by side on one scenario.
//!
//! For each gateway in turn: start fresh sinks (one per live target,
//! answering after the scenario's `targetDelay` + `targetJitter`; a dead
//! target is a loopback port nothing listens on), start the gateway with
//! config derived from the scenario ([`config`]), wait until it is ready,
//! read its CPU ticks, drive it with the generator (a fixed number of
//! samples, bounded in time: at the scenario's rate in [`Mode::Rate`], as
//! fast as the gateway answers over `connections` in [`Mode::Saturation`]),
//! wait until every acknowledged sample reached
//! every live target it should reach or the drain timeout passed, read CPU
//! ticks and peak RSS again, stop the gateway and verify the sinks' records
//! against the acknowledged samples ([`crate::verify::Expectation`]). A
//! scenario's `outage` is set on every live sink just before the generator
//! starts, so it runs from the start of the traffic. The drain time is
//! counted from the end of the load (the generator's last answer).
//!
//! Children are spawned with `kill_on_drop`, so an error or Ctrl-C anywhere
//! kills them; every listener is on 127.0.0.1. The numbers are reported, not
//! asserted: a benchmark is not a test.

pub mod config;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod scale;
pub mod soak;
pub mod spec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

use crate::generator::{self, GeneratorConfig};
use crate::identity::SeriesId;
use crate::sink::{Fault, Sink, SinkConfig, SinkHandle};
use crate::verify::{Expectation, Problem};
pub use report::{BenchReport, GatewayResult, Mode};
pub use spec::BenchSpec;

/// Which gateway to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Gateway {
    /// `target/release/fanout serve`.
    Fanout,
    /// vmagent from Debian's `victoria-metrics` package.
    Vmagent,
}

impl Gateway {
    fn name(self) -> &'static str {
        match self {
            Gateway::Fanout => "fanout",
            Gateway::Vmagent => "vmagent",
        }
    }
}

/// How to run a bench.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The scenario (with any command-line overrides applied).
    pub spec: BenchSpec,
    /// How the load is offered.
    pub mode: Mode,
    /// Gateways, in the order they run.
    pub gateways: Vec<Gateway>,
    /// The `fanout` binary.
    pub fanout_bin: PathBuf,
    /// The `vmagent` binary, if one was found.
    pub vmagent_bin: Option<PathBuf>,
    /// Progress lines on stderr.
    pub progress: bool,
    /// The command line, recorded in the report.
    pub command: String,
    /// Keep each run's directory (registry, vmagent config, logs) and say where.
    pub keep: bool,
    /// Fanout's `--durability` (`memory` or `wal`); vmagent always writes
    /// its queue to disk without an fsync per request.
    pub durability: String,
}

/// The `vmagent` to use: `$FANOUT_VMAGENT_BIN`, else `vmagent` on `PATH`.
pub fn find_vmagent() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FANOUT_VMAGENT_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("vmagent"))
        .find(|p| p.is_file())
}

/// Runs every gateway of `opts` on its scenario.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let spec = &opts.spec;
    let f = &spec.fleet;
    let mut report = BenchReport {
        scenario: spec.name.clone(),
        mode: opts.mode,
        durability: opts.durability.clone(),
        summary: format!(
            "{} clusters x {} Deployments ({} series{}), {} targets{}{}, {} per Deployment, {} samples{}",
            f.clusters,
            f.deployments,
            report::thousands(f.series_per_cluster() * u64::from(f.clusters)),
            if f.deployments_per_request > 1 {
                format!(", {} Deployments interleaved", f.deployments_per_request)
            } else {
                String::new()
            },
            spec.targets,
            if spec.dead_targets.is_empty() {
                String::new()
            } else {
                format!(" ({} dead)", spec.dead_targets.len())
            },
            target_behaviour(spec),
            spec.targets_per_deployment,
            report::thousands(spec.traffic.samples),
            traffic_summary(opts.mode, spec),
        ),
        command: opts.command.clone(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        time: utc_now(),
        results: Vec::new(),
    };
    for &g in &opts.gateways {
        let bin = match g {
            Gateway::Fanout => {
                if opts.fanout_bin.is_file() {
                    Some(opts.fanout_bin.clone())
                } else {
                    report.results.push(skipped(
                        g,
                        format!(
                            "{} not found (cargo build --release -p fanout-gateway --bin fanout)",
                            opts.fanout_bin.display()
                        ),
                    ));
                    None
                }
            }
            Gateway::Vmagent => match &opts.vmagent_bin {
                Some(p) => Some(p.clone()),
                None => {
                    report.results.push(skipped(
                        g,
                        "vmagent not found (set FANOUT_VMAGENT_BIN or put it on PATH)".into(),
                    ));
                    None
                }
            },
        };
        let Some(bin) = bin else { continue };
        if opts.progress {
            eprintln!("== {} on {}", g.name(), spec.name);
        }
        let r = run_one(opts, g, &bin)
            .await
            .with_context(|| format!("{} run", g.name()))?;
        report.results.push(r);
    }
    Ok(report)
}

/// How the samples are sent, for the report's summary line.
fn traffic_summary(mode: Mode, spec: &BenchSpec) -> String {
    let t = &spec.traffic;
    let rate = match (mode, t.rate) {
        (Mode::Saturation, _) => "as fast as answered".to_owned(),
        (Mode::Rate, Some(r)) => format!("at {} /s", report::thousands(r as u64)),
        (Mode::Rate, None) => "unpaced".to_owned(),
    };
    format!(
        " {rate} over {} connections, {} per request",
        t.connections,
        report::thousands(t.samples_per_request as u64)
    )
}

fn skipped(g: Gateway, why: String) -> GatewayResult {
    GatewayResult {
        gateway: g.name().to_owned(),
        skipped: Some(why),
        ..GatewayResult::default()
    }
}

/// What the sinks of a soak or scale run hold of its acknowledged samples.
#[derive(Debug, Default)]
struct Tally {
    /// Acknowledged samples missing at a sink after the wait.
    lost: u64,
    /// Samples that arrived more than once.
    duplicates: u64,
    /// Other problems (misrouted, mislabelled, unidentified), at most 5.
    other: Vec<String>,
}

/// Waits up to `timeout` (looking every `every`) until every one of
/// `sinks` holds every sample `summary` says was acknowledged, with the
/// labels of its Deployment in `fleet`; what is still missing then is lost.
async fn await_every_sample(
    summary: &generator::RunSummary,
    fleet: &crate::scenario::Scenario,
    sinks: &[SinkHandle],
    timeout: Duration,
    every: Duration,
) -> Tally {
    let mut rounds: HashMap<SeriesId, Vec<u32>> = HashMap::new();
    for s in summary.acked_samples() {
        rounds.entry(s.id).or_default().push(s.seq);
    }
    let names: Vec<String> = sinks.iter().map(|s| s.name().to_owned()).collect();
    let mut expectation = Expectation::new();
    for (id, seqs) in &rounds {
        let d = fleet.deployment_of(id.series);
        expectation.expect(
            *id,
            seqs.iter().copied(),
            names.iter().cloned(),
            config::fleet_labels(fleet, id.cluster, d),
        );
    }
    let deadline = Instant::now() + timeout;
    let problems = loop {
        let reports: Vec<_> = sinks.iter().map(|s| s.report()).collect();
        let problems = expectation.check(&reports);
        let missing = problems
            .iter()
            .any(|p| matches!(p, Problem::Missing { .. }));
        if !missing || Instant::now() >= deadline {
            break problems;
        }
        tokio::time::sleep(every).await;
    };
    let mut tally = Tally::default();
    for p in &problems {
        match p {
            Problem::Missing { count, .. } => tally.lost += count,
            Problem::Duplicated { copies, .. } => tally.duplicates += copies,
            other if tally.other.len() < 5 => tally.other.push(other.to_string()),
            _ => {}
        }
    }
    tally
}

/// A child process that is killed when dropped, with its log file.
struct Proc {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    fn spawn(bin: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Proc { child, pid, log })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `GET http://addr{path}` answers 200, the process exits or `limit` passes.
    async fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("exited with {st} before it was ready:\n{}", self.log_tail());
            }
            if let Ok((200, _)) = http_get(addr, path).await {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("not ready after {limit:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, None, Duration::from_secs(2)).await
}

/// A minimal HTTP/1.0 request on loopback, with an optional `(content type,
/// body)`, answered within `limit`: (status, body).
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
    limit: Duration,
) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some((content_type, text)) = body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                text.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        if let Some((_, text)) = body {
            s.write_all(text.as_bytes()).await?;
        }
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(limit, fut).await??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn run_one(opts: &BenchOptions, g: Gateway, bin: &Path) -> anyhow::Result<GatewayResult> {
    let spec = &opts.spec;
    let dir = tempfile::Builder::new()
        .prefix(&format!("fanout-bench-{}-", g.name()))
        .tempdir()?;
    if opts.keep {
        eprintln!("{}: keeping {}", g.name(), dir.path().display());
    }
    // Targets: a sink each, or a port nobody listens on.
    let mut sinks: Vec<SinkHandle> = Vec::new();
    let mut urls = Vec::new();
    for t in 0..spec.targets {
        if spec.dead_targets.contains(&t) {
            urls.push(format!("http://{}/api/v1/write", free_port()?));
        } else {
            let h = Sink::start(SinkConfig {
                name: BenchSpec::target_name(t),
                fault: target_fault(spec, None),
                ..SinkConfig::default()
            })
            .await?;
            urls.push(h.url());
            sinks.push(h);
        }
    }
    let ingest = free_port()?;
    let (mut proc, admin) = match g {
        Gateway::Fanout => {
            let admin = free_port()?;
            let registry = dir.path().join("registry.yaml");
            std::fs::write(
                &registry,
                serde_yaml_ng::to_string(&config::registry(spec, &urls))?,
            )?;
            let args: Vec<String> = vec![
                "serve".into(),
                format!("--ingest-listen={ingest}"),
                format!("--admin-listen={admin}"),
                format!("--data-dir={}", dir.path().join("data").display()),
                format!("--registry={}", registry.display()),
                format!("--durability={}", opts.durability),
            ];
            let mut p = Proc::spawn(bin, &args, dir.path().join("fanout.log"))?;
            p.wait_ready(admin, "/readyz", Duration::from_secs(30))
                .await?;
            (p, Some(admin))
        }
        Gateway::Vmagent => {
            let setup = config::vmagent(spec, &urls, ingest, dir.path());
            for (path, text) in &setup.files {
                std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let mut p = Proc::spawn(bin, &setup.args, dir.path().join("vmagent.log"))?;
            p.wait_ready(ingest, "/health", Duration::from_secs(30))
                .await?;
            (p, None)
        }
    };
    let ticks = procfs::ticks_per_sec();
    let cpu0 = procfs::cpu(proc.pid)?;
    let own_cpu0 = procfs::cpu(std::process::id())?;
    let sink_cpu0: Vec<u64> = sinks.iter().map(|s| s.stats().cpu_nanos).collect();
    let url = format!("http://{ingest}/api/v1/write");
    if let Some(outage) = spec.outage {
        // From the start of the traffic, not from the sinks' start.
        for s in &sinks {
            s.set_fault(target_fault(spec, Some(outage)));
        }
    }
    let gen = GeneratorConfig {
        url,
        scenario: spec.fleet.clone(),
        connections: spec.traffic.connections,
        samples_per_request: spec.traffic.samples_per_request,
        rate: match opts.mode {
            Mode::Rate => spec.traffic.rate,
            Mode::Saturation => None,
        },
        duration: Some(spec.traffic.max_duration),
        total_samples: Some(spec.traffic.samples),
        progress: opts.progress,
        retry: opts.mode == Mode::Saturation,
        ..GeneratorConfig::default()
    };
    let summary = generator::run(gen).await?;
    // The end of the load: the generator's last request was answered.
    let sent_at = Instant::now();

    // What should arrive where: every acked sample at each live target of its Deployment.
    let f = &spec.fleet;
    let mut seqs: HashMap<SeriesId, Vec<u32>> = HashMap::new();
    for s in summary.acked_samples() {
        seqs.entry(s.id).or_default().push(s.seq);
    }
    let mut expectation = Expectation::new();
    let (mut expected, mut to_dead) = (0u64, 0u64);
    for (id, rounds) in &seqs {
        let d = f.deployment_of(id.series);
        let (live, dead): (Vec<usize>, Vec<usize>) = spec
            .targets_of(id.cluster, d)
            .into_iter()
            .partition(|t| !spec.dead_targets.contains(t));
        expected += rounds.len() as u64 * live.len() as u64;
        to_dead += rounds.len() as u64 * dead.len() as u64;
        expectation.expect(
            *id,
            rounds.iter().copied(),
            live.into_iter().map(BenchSpec::target_name),
            config::expected_labels(spec, id.cluster, d),
        );
    }

    // Drain: until the sinks hold every expected delivery, or the timeout.
    let mut last_print = Instant::now();
    let (drained, missing_at_timeout) = loop {
        let got: u64 = sinks.iter().map(|s| s.stats().samples).sum();
        if got >= expected {
            break (true, 0);
        }
        if sent_at.elapsed() >= spec.drain_timeout {
            break (false, expected - got);
        }
        if let Some(st) = proc.child.try_wait()? {
            bail!(
                "{} exited with {st} while draining:\n{}",
                g.name(),
                proc.log_tail()
            );
        }
        if opts.progress && last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("draining: {got} of {expected} deliveries");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drain_secs = sent_at.elapsed().as_secs_f64();
    if opts.keep {
        // Leave the directory for inspection; the process is still stopped below.
        let _ = dir.keep();
    }
    let cpu = procfs::cpu(proc.pid)?.since(cpu0).duration(ticks);
    let own_cpu = procfs::cpu(std::process::id())?
        .since(own_cpu0)
        .duration(ticks);
    let sink_cpus: Vec<u64> = sinks
        .iter()
        .zip(&sink_cpu0)
        .map(|(s, c0)| s.stats().cpu_nanos - c0)
        .collect();
    let sink_cpu: u64 = sink_cpus.iter().sum();
    let busiest_sink_cpu = sink_cpus.iter().copied().max().unwrap_or(0);
    let rss = procfs::peak_rss(proc.pid)?;
    if let (Some(admin), true) = (admin, opts.progress) {
        // Policy drops explain a loss that is not the sinks' fault.
        if let Ok((200, body)) = http_get(admin, "/api/v1/stats").await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                eprintln!("fanout stats: drops {} out {}", v["drops"], v["out"]);
            }
        }
    }
    proc.stop().await;
    // Late arrivals after the drain would not change CPU; give none a chance.
    let reports: Vec<_> = sinks.iter().map(|s| s.report()).collect();
    // End-to-end latency over the live targets only: a dead target has no sink.
    let mut latency: Option<hdrhistogram::Histogram<u64>> = None;
    for s in &sinks {
        if let Some(h) = s.latency_histogram() {
            match &mut latency {
                Some(all) => all.add(&h).context("merging latency histograms")?,
                None => latency = Some(h),
            }
        }
    }
    let deliveries: u64 = reports
        .iter()
        .flat_map(|r| r.series.values())
        .map(|rec| rec.seqs.len())
        .sum();
    let problems = expectation.check(&reports);
    let (mut lost, mut other) = (0u64, 0u64);
    for p in &problems {
        match p {
            Problem::Missing { count, .. } => lost += count,
            Problem::Duplicated { copies, .. } => other += copies,
            Problem::Misrouted { samples, .. } => other += samples,
            Problem::Unidentified { samples, .. } => other += samples,
            _ => other += 1,
        }
    }
    let bytes_received: u64 = reports.iter().map(|r| r.bytes).sum();
    let out_of_order: u64 = reports
        .iter()
        .flat_map(|r| r.series.values())
        .map(|rec| rec.out_of_order)
        .sum();
    let cpu_secs = cpu.as_secs_f64();
    let q = |h: &Option<hdrhistogram::Histogram<u64>>, x: f64| {
        h.as_ref()
            .filter(|h| !h.is_empty())
            .map_or(0.0, |h| h.value_at_quantile(x) as f64)
    };
    Ok(GatewayResult {
        gateway: g.name().to_owned(),
        skipped: None,
        samples_acked: summary.samples_ok,
        samples_failed: summary.samples_failed,
        retries: summary.retries,
        send_secs: summary.duration_secs,
        ingest_p50_ms: summary.latency_ms.p50,
        ingest_p99_ms: summary.latency_ms.p99,
        deliveries_expected: expected,
        deliveries,
        deliveries_to_dead: to_dead,
        cpu_secs,
        ingested_per_cpu_sec: report::per(summary.samples_ok as f64, cpu_secs),
        sink_cpu_secs: sink_cpu as f64 / 1e9,
        busiest_sink_cpu_secs: busiest_sink_cpu as f64 / 1e9,
        load_cpu_secs: own_cpu.as_secs_f64(),
        deliveries_per_cpu_sec: report::per(deliveries as f64, cpu_secs),
        bytes_received,
        bytes_per_delivery: report::per(bytes_received as f64, deliveries as f64),
        requests_received: reports.iter().map(|r| r.requests).sum(),
        peak_rss_bytes: rss,
        latency_p50_ms: q(&latency, 0.5),
        latency_p99_ms: q(&latency, 0.99),
        samples_lost: lost,
        other_problems: other,
        problem_examples: problems.iter().take(5).map(|p| p.to_string()).collect(),
        out_of_order_samples: out_of_order,
        drained,
        drain_secs,
        missing_at_drain_timeout: missing_at_timeout,
    })
}

/// How the live targets answer, for the report's summary line.
fn target_behaviour(spec: &BenchSpec) -> String {
    use fanout_proto::units::format_duration;
    let mut parts = Vec::new();
    if !spec.target_delay.is_zero() || !spec.target_jitter.is_zero() {
        let mut d = format!("answering after {}", format_duration(spec.target_delay));
        if !spec.target_jitter.is_zero() {
            d.push_str(&format!(" + 0-{}", format_duration(spec.target_jitter)));
        }
        parts.push(d);
    }
    if let Some(o) = spec.outage {
        parts.push(format!(
            "{} for the first {}{}",
            o.status,
            format_duration(o.duration),
            if o.retry_after {
                ""
            } else {
                " without Retry-After"
            }
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// What every live target does: the scenario's delay and jitter, and
/// `outage` if given.
fn target_fault(spec: &BenchSpec, outage: Option<spec::Outage>) -> Fault {
    Fault {
        status: outage.map(|o| o.status),
        status_for: outage.map(|o| o.duration),
        no_retry_after: outage.is_some_and(|o| !o.retry_after),
        delay: spec.target_delay,
        jitter: spec.target_jitter,
        ..Fault::default()
    }
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_says_how_samples_are_sent() {
        let spec = BenchSpec::parse(
            "s.yaml",
            "name: s\ntargets: 1\ntraffic: {samples: 10, rate: 30000, connections: 8, samplesPerRequest: 1000}\n",
        )
        .unwrap();
        assert_eq!(
            traffic_summary(Mode::Rate, &spec),
            " at 30,000 /s over 8 connections, 1,000 per request"
        );
        assert_eq!(
            traffic_summary(Mode::Saturation, &spec),
            " as fast as answered over 8 connections, 1,000 per request"
        );
    }

    #[test]
    fn summary_says_how_targets_answer() {
        let spec = BenchSpec::parse(
            "s.yaml",
            "name: s\ntargets: 1\ntraffic: {samples: 10}\ntargetDelay: 300ms\ntargetJitter: 50ms\noutage: {status: 503, for: 30s}\n",
        )
        .unwrap();
        assert_eq!(
            target_behaviour(&spec),
            " (answering after 300ms + 0-50ms, 503 for the first 30s)"
        );
        let f = target_fault(&spec, spec.outage);
        assert_eq!(
            (f.status, f.status_for, f.delay, f.jitter),
            (
                Some(503),
                Some(Duration::from_secs(30)),
                Duration::from_millis(300),
                Duration::from_millis(50)
            )
        );
        assert_eq!(target_fault(&spec, None).status, None);
        let plain =
            BenchSpec::parse("p.yaml", "name: p\ntargets: 1\ntraffic: {samples: 10}\n").unwrap();
        assert_eq!(target_behaviour(&plain), "");
    }

    #[test]
    fn utc_format() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
