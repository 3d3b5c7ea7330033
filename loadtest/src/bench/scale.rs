//! `fanout-load scale`: what one more tenant costs a gateway.
//!
//! For each registry size (the large one, then a baseline of 100
//! Deployments carrying the same traffic), on a fresh data directory:
//!
//! - Registry: C clusters × D Deployments, each with its own Deployment
//!   export to a distinct endpoint path (`/t/<deployment>/api/v1/write`) on
//!   the sink `own`, plus one Workspace export auto-linked to every
//!   Deployment, to the sink `shared`: D×C + 1 targets.
//! - Start: from spawning `fanout serve --registry FILE` to `/readyz`.
//! - Idle (no traffic, 10 s after 5 s of rest): CPU and RSS; RSS per target
//!   is the idle RSS less that of the same gateway with an empty registry,
//!   over the targets.
//! - Admin API (median of 5): `GET /api/v1/targets?limit=100`, one
//!   Deployment export's status, one Deployment's effective exports.
//! - Apply (median of 3): `PATCH` one Deployment export's endpoint; the
//!   answer, and "in force": until `GET /api/v1/targets?q=<new path>` lists
//!   the target at its new endpoint.
//! - Load: the generator at `--rate` for `--seconds`, every request
//!   interleaving `--per-request` Deployments; CPU counted until both sinks
//!   hold every acknowledged sample (each sample goes to its Deployment's
//!   own endpoint and to the Workspace export). Lost = acknowledged samples
//!   missing at either sink after the drain timeout.
//!
//! No figure is asserted: the report is for docs/benchmarks.md "Scale".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{await_every_sample, config, free_port, http_request, procfs, Proc};
use crate::generator::{self, GeneratorConfig};
use crate::scenario::Scenario;
use crate::sink::{Sink, SinkConfig, SinkHandle};

/// How to measure.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Clusters of the large registry.
    pub clusters: u32,
    /// Deployments per cluster of the large registry.
    pub deployments: u32,
    /// Deployments of the baseline (one cluster); 0: no baseline.
    pub baseline: u32,
    /// Series per Deployment (the baseline's Deployments get more, so the
    /// series count is the same).
    pub series_per_deployment: u32,
    /// Deployments interleaved in every request.
    pub per_request: u32,
    /// Samples per second offered.
    pub rate: f64,
    /// How long traffic flows.
    pub duration: Duration,
    /// The `fanout` binary.
    pub fanout_bin: PathBuf,
}

/// What one registry size cost.
#[derive(Clone, Debug, Default)]
pub struct ScaleReport {
    /// Deployments in the registry.
    pub deployments: u32,
    /// Targets (Deployment exports plus the Workspace export).
    pub targets: u32,
    /// Spawn to `/readyz`, seconds.
    pub ready_s: f64,
    /// RSS at rest, bytes.
    pub idle_rss: u64,
    /// CPU at rest, percent of one core.
    pub idle_cpu_pct: f64,
    /// (Idle RSS − RSS with an empty registry) / targets, bytes.
    pub rss_per_target: f64,
    /// `GET /api/v1/targets?limit=100`, ms.
    pub targets_page_ms: f64,
    /// `GET /api/v1/metrics-exports/{id}/status` of a Deployment export, ms.
    pub export_status_ms: f64,
    /// `GET /api/v1/deployments/{id}/metrics-exports`, ms.
    pub effective_ms: f64,
    /// `PATCH` of one export answered, ms.
    pub apply_ms: f64,
    /// `PATCH` sent to the target running at its new endpoint, ms.
    pub in_force_ms: f64,
    /// Samples acknowledged.
    pub acked: u64,
    /// Acknowledged samples missing at a sink after the drain.
    pub lost: u64,
    /// Samples that arrived more than once at a sink.
    pub duplicates: u64,
    /// Other problems (misrouted, mislabelled), at most 5.
    pub other: Vec<String>,
    /// Gateway CPU seconds from the start of the load until the sinks held
    /// everything, per million acknowledged samples.
    pub cpu_s_per_m: f64,
    /// Peak RSS of the gateway over its life, bytes.
    pub peak_rss: u64,
}

impl ScaleReport {
    /// One line per figure.
    pub fn table(&self) -> String {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        format!(
            "{} Deployments, {} targets\n  ready {:.2} s; idle RSS {:.0} MiB ({:.1} KiB per target), idle CPU {:.1}% of a core\n  \
             targets?limit=100 {:.1} ms; export status {:.1} ms; Deployment's exports {:.1} ms\n  \
             PATCH one export: answered {:.0} ms, in force {:.0} ms\n  \
             load: {} acknowledged, {} lost, {} duplicated; {:.3} CPU-s per million samples ({:.0} k samples per CPU-s); peak RSS {:.0} MiB{}\n",
            self.deployments,
            self.targets,
            self.ready_s,
            mib(self.idle_rss as f64),
            self.rss_per_target / 1024.0,
            self.idle_cpu_pct,
            self.targets_page_ms,
            self.export_status_ms,
            self.effective_ms,
            self.apply_ms,
            self.in_force_ms,
            self.acked,
            self.lost,
            self.duplicates,
            self.cpu_s_per_m,
            if self.cpu_s_per_m > 0.0 { 1000.0 / self.cpu_s_per_m } else { 0.0 },
            mib(self.peak_rss as f64),
            if self.other.is_empty() {
                String::new()
            } else {
                format!("\n  problems: {}", self.other.join("; "))
            }
        )
    }
}

/// The id of the Deployment export of Deployment `d` of cluster `c`.
fn own_export(c: u32, d: u32) -> String {
    format!("own-{c}-{d}")
}

/// The registry of a scale run: `fleet`'s clusters and Deployments, one
/// Workspace export to `shared` linked to all, and per Deployment an export
/// of its own to a path of its own under `own` (the sink's address).
pub fn registry(fleet: &Scenario, shared: &str, own: SocketAddr) -> Value {
    let mut doc = config::registry_for(fleet, &[shared.to_owned()]);
    let Some(exports) = doc["metricsExports"].as_array_mut() else {
        return doc;
    };
    for c in 0..fleet.clusters {
        for d in 0..fleet.deployments {
            let id = own_export(c, d);
            exports.push(json!({
                "id": id,
                "objectKey": id.replace('-', "_"),
                "scope": "DEPLOYMENT",
                "scopeEntityId": fleet.deployment_id(c, d),
                "metricsExport": {
                    "endpoint": format!("http://{own}/t/{c}-{d}/api/v1/write"),
                    "exporterType": "PROMETHEUS",
                },
            }));
        }
    }
    doc
}

/// Runs the large registry, then the baseline.
pub async fn run(opts: &ScaleOptions) -> anyhow::Result<Vec<ScaleReport>> {
    let sinks = [
        Sink::start(named("own")).await?,
        Sink::start(named("shared")).await?,
    ];
    let empty_rss = empty_gateway_rss(opts).await?;
    let series = opts.series_per_deployment;
    let mut sizes = vec![(opts.clusters, opts.deployments, series)];
    if opts.baseline > 0 {
        let total = u64::from(opts.clusters) * u64::from(opts.deployments) * u64::from(series);
        let per = (total / u64::from(opts.baseline)).max(1) as u32;
        sizes.push((1, opts.baseline, per));
    }
    let mut reports = Vec::new();
    for (clusters, deployments, series) in sizes {
        let fleet = Scenario {
            clusters,
            deployments,
            deployments_per_request: opts.per_request.min(deployments).max(1),
            series_limit: Some(series),
            ..Scenario::default()
        };
        fleet.validate().context("the scale run's fleet")?;
        for s in &sinks {
            s.reset();
        }
        reports.push(measure(opts, &fleet, &sinks, empty_rss).await?);
    }
    Ok(reports)
}

fn named(name: &str) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        ..SinkConfig::default()
    }
}

/// A gateway started on `registry` (none: empty) in a fresh data dir.
struct Gateway {
    proc: Proc,
    admin: SocketAddr,
    ingest: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(opts: &ScaleOptions, registry: Option<&Value>) -> anyhow::Result<(Gateway, f64)> {
    let dir = tempfile::Builder::new().prefix("fanout-scale-").tempdir()?;
    let (ingest, admin) = (free_port()?, free_port()?);
    let mut args = vec![
        "serve".to_owned(),
        format!("--ingest-listen={ingest}"),
        format!("--admin-listen={admin}"),
        format!("--data-dir={}", dir.path().join("data").display()),
        "--drain-delay=0s".into(),
    ];
    if let Some(r) = registry {
        let file = dir.path().join("registry.yaml");
        std::fs::write(&file, serde_yaml_ng::to_string(r)?)?;
        args.push(format!("--registry={}", file.display()));
    }
    let started = Instant::now();
    let mut proc = Proc::spawn(&opts.fanout_bin, &args, dir.path().join("fanout.log"))?;
    proc.wait_ready(admin, "/readyz", Duration::from_secs(120))
        .await?;
    let ready = started.elapsed().as_secs_f64();
    Ok((
        Gateway {
            proc,
            admin,
            ingest,
            _dir: dir,
        },
        ready,
    ))
}

/// RSS of a gateway at rest with an empty registry.
async fn empty_gateway_rss(opts: &ScaleOptions) -> anyhow::Result<u64> {
    let (g, _) = start(opts, None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = procfs::rss(g.proc.pid)?;
    g.proc.stop().await;
    Ok(rss)
}

async fn measure(
    opts: &ScaleOptions,
    fleet: &Scenario,
    sinks: &[SinkHandle; 2],
    empty_rss: u64,
) -> anyhow::Result<ScaleReport> {
    let own = sinks[0]
        .report()
        .addr
        .context("the own sink has no address")?;
    let doc = registry(fleet, &sinks[1].url(), own);
    let deployments = fleet.clusters * fleet.deployments;
    let mut r = ScaleReport {
        deployments,
        targets: deployments + 1,
        ..ScaleReport::default()
    };
    let (g, ready) = start(opts, Some(&doc)).await?;
    r.ready_s = ready;
    let pid = g.proc.pid;

    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu0, at0) = (procfs::cpu(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = procfs::cpu(pid)?
        .since(cpu0)
        .duration(procfs::ticks_per_sec());
    r.idle_cpu_pct = 100.0 * idle.as_secs_f64() / at0.elapsed().as_secs_f64();
    r.idle_rss = procfs::rss(pid)?;
    r.rss_per_target = r.idle_rss.saturating_sub(empty_rss) as f64 / f64::from(r.targets);

    let export = own_export(0, 0);
    let dep = fleet.deployment_id(0, 0);
    r.targets_page_ms = median_ms(g.admin, "/api/v1/targets?limit=100").await?;
    r.export_status_ms =
        median_ms(g.admin, &format!("/api/v1/metrics-exports/{export}/status")).await?;
    r.effective_ms = median_ms(
        g.admin,
        &format!("/api/v1/deployments/{dep}/metrics-exports"),
    )
    .await?;
    let (apply, in_force) = apply_latency(g.admin, &export, own).await?;
    r.apply_ms = apply;
    r.in_force_ms = in_force;

    let cpu0 = procfs::cpu(pid)?;
    let summary = generator::run(GeneratorConfig {
        url: format!("http://{}/api/v1/write", g.ingest),
        scenario: fleet.clone(),
        connections: 4,
        samples_per_request: (fleet.deployments_per_request * opts.series_per_deployment.max(1))
            .clamp(100, 10_000) as usize,
        rate: Some(opts.rate),
        duration: Some(opts.duration),
        timeout: Duration::from_secs(10),
        retry: true,
        ..GeneratorConfig::default()
    })
    .await?;
    r.acked = summary.samples_ok;
    if r.acked == 0 {
        bail!("no sample was acknowledged:\n{}", g.proc.log_tail());
    }
    let tally = await_every_sample(
        &summary,
        fleet,
        sinks,
        Duration::from_secs(120),
        Duration::from_millis(200),
    )
    .await;
    let cpu = procfs::cpu(pid)?
        .since(cpu0)
        .duration(procfs::ticks_per_sec());
    r.cpu_s_per_m = cpu.as_secs_f64() / r.acked as f64 * 1e6;
    r.peak_rss = procfs::peak_rss(pid)?;
    (r.lost, r.duplicates, r.other) = (tally.lost, tally.duplicates, tally.other);
    g.proc.stop().await;
    Ok(r)
}

/// The median of 5 `GET path`s, ms; a status other than 200 is an error.
async fn median_ms(admin: SocketAddr, path: &str) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (status, body) =
            http_request(admin, "GET", path, None, Duration::from_secs(30)).await?;
        if status != 200 {
            bail!("GET {path} answered {status}: {body}");
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(times))
}

/// Three `PATCH`es of `export`'s endpoint: the medians of their answer
/// and of their coming in force (the target listed at its new endpoint).
async fn apply_latency(
    admin: SocketAddr,
    export: &str,
    own: SocketAddr,
) -> anyhow::Result<(f64, f64)> {
    let (mut answered, mut in_force) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let path = format!("/t/moved-{i}/api/v1/write");
        let body =
            json!({"metricsExport": {"endpoint": format!("http://{own}{path}")}}).to_string();
        let t = Instant::now();
        let (status, text) = http_request(
            admin,
            "PATCH",
            &format!("/api/v1/metrics-exports/{export}"),
            Some(("application/json", &body)),
            Duration::from_secs(30),
        )
        .await?;
        if status != 200 {
            bail!("PATCH {export} answered {status}: {text}");
        }
        answered.push(t.elapsed().as_secs_f64() * 1000.0);
        let query = format!("/api/v1/targets?limit=1&q=moved-{i}/");
        loop {
            let (_, list) =
                http_request(admin, "GET", &query, None, Duration::from_secs(30)).await?;
            if list.contains(&path) {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("the change of {export} was not in force 30 s after it was applied");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        in_force.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((median(answered), median(in_force)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
