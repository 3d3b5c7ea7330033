//! `fanout-load soak`: a long run of one `fanout serve` under steady load
//! while things go wrong, watching what would leak.
//!
//! - Traffic: the generator at a fixed rate (`--rate`, default 50,000
//!   samples/s) from 2 clusters × 3 Deployments, with `--retry` (429, 503
//!   and missing answers sent again), for `--minutes`.
//! - Three targets, every Deployment to all: `t0` healthy; `t1` flapping,
//!   10 s per phase: 503, slow (2 s per answer), connections reset every
//!   3rd request, healthy; `t2` added to and removed from the registry every
//!   30 s through the admin API.
//! - The gateway (`--durability wal`, `--shutdown-grace 10s`) is
//!   restarted with SIGTERM halfway; the generator sends again what it
//!   could not get answered meanwhile.
//! - Every 5 s: the gateway's RSS, open file descriptors, threads, and the
//!   bytes of its disk spill. Slopes per minute are fitted (least squares)
//!   per gateway process, after its first 30 s.
//! - At the end, `t1` healthy again, the run waits until `t0` and `t1` hold
//!   every acknowledged sample (lost = what is still missing after 120 s).
//!   `t2` is only checked for data of unknown origin.
//!
//! The run fails when a sample is lost, or when open descriptors or threads
//! grow by more than 128 / 16 over a process's life after warm-up: leaks,
//! not performance (no timing is asserted).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::spec::BenchSpec;
use super::{await_every_sample, config, free_port, http_request, Proc};
use crate::generator::{self, GeneratorConfig};
use crate::sink::{Fault, Sink, SinkConfig, SinkHandle};

/// How to soak.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// How long traffic flows.
    pub duration: Duration,
    /// Samples per second offered.
    pub rate: f64,
    /// The `fanout` binary.
    pub fanout_bin: PathBuf,
    /// Print each sample line as it is taken.
    pub progress: bool,
}

/// One sample of the gateway's resources.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Seconds since the start of the run.
    pub at: f64,
    /// Which gateway process (0, then 1 after the restart).
    pub process: u32,
    /// Resident set size, bytes.
    pub rss: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
    /// Bytes under the data dir's `spill/`.
    pub spill: u64,
}

/// Fitted growth per minute of one gateway process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slopes {
    /// RSS, MiB per minute.
    pub rss_mib: f64,
    /// Open descriptors per minute.
    pub fds: f64,
    /// Threads per minute.
    pub threads: f64,
    /// Spill, MiB per minute.
    pub spill_mib: f64,
    /// Descriptors at the last sample minus the first after warm-up.
    pub fds_grown: i64,
    /// Threads, the same.
    pub threads_grown: i64,
}

/// What a soak saw.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// Samples acknowledged by the gateway.
    pub acked: u64,
    /// Requests sent again (429/503, missing answers).
    pub retries: u64,
    /// Acknowledged samples missing at `t0` or `t1` after the drain.
    pub lost: u64,
    /// Samples that arrived more than once.
    pub duplicates: u64,
    /// Other problems (misrouted, unidentified, mislabelled).
    pub other: Vec<String>,
    /// Registry changes made.
    pub registry_changes: u32,
    /// Every resource sample.
    pub usage: Vec<Usage>,
    /// Slopes per gateway process.
    pub slopes: Vec<Slopes>,
}

impl SoakReport {
    /// Whether the run shows a loss or a leak.
    pub fn failed(&self) -> Option<String> {
        if self.lost > 0 {
            return Some(format!("{} acknowledged samples lost", self.lost));
        }
        if !self.other.is_empty() {
            return Some(format!("problems: {}", self.other.join("; ")));
        }
        for (p, s) in self.slopes.iter().enumerate() {
            if s.fds_grown > 128 || s.threads_grown > 16 {
                return Some(format!(
                    "gateway process {p}: descriptors grew by {}, threads by {} after warm-up",
                    s.fds_grown, s.threads_grown
                ));
            }
        }
        None
    }

    /// The summary as text.
    pub fn table(&self) -> String {
        let mut s = format!(
            "acked {}  sent again {}  lost {}  duplicates {}  registry changes {}\n",
            self.acked, self.retries, self.lost, self.duplicates, self.registry_changes
        );
        for (p, sl) in self.slopes.iter().enumerate() {
            s.push_str(&format!(
                "process {p}: RSS {:+.2} MiB/min  fds {:+.2}/min ({:+})  threads {:+.2}/min ({:+})  spill {:+.2} MiB/min\n",
                sl.rss_mib, sl.fds, sl.fds_grown, sl.threads, sl.threads_grown, sl.spill_mib
            ));
        }
        if let (Some(first), Some(last)) = (self.usage.first(), self.usage.last()) {
            s.push_str(&format!(
                "RSS first {:.1} MiB, last {:.1} MiB, peak {:.1} MiB; fds {} → {}; threads {} → {}\n",
                mib(first.rss),
                mib(last.rss),
                mib(self.usage.iter().map(|u| u.rss).max().unwrap_or(0)),
                first.fds,
                last.fds,
                first.threads,
                last.threads
            ));
        }
        s
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

const SPEC: &str = "
name: soak
description: steady load while a target flaps, the registry changes and the gateway restarts
fleet: {clusters: 2, deployments: 3}
targets: 3
traffic: {samples: 1000000000000, connections: 2, samplesPerRequest: 500}
batch: 1000
drainTimeout: 120s
";

/// Runs a soak.
pub async fn run(opts: &SoakOptions) -> anyhow::Result<SoakReport> {
    let spec = BenchSpec::parse("<soak>", SPEC)?;
    let dir = tempfile::Builder::new().prefix("fanout-soak-").tempdir()?;
    let mut sinks: Vec<SinkHandle> = Vec::new();
    for t in 0..spec.targets {
        sinks.push(
            Sink::start(SinkConfig {
                name: BenchSpec::target_name(t),
                ..SinkConfig::default()
            })
            .await?,
        );
    }
    let urls: Vec<String> = sinks.iter().map(|s| s.url()).collect();
    let yaml = |n: usize| serde_yaml_ng::to_string(&config::registry(&spec, &urls[..n]));
    let (with_t2, without_t2) = (yaml(3)?, yaml(2)?);
    let registry = dir.path().join("registry.yaml");
    std::fs::write(&registry, &with_t2)?;
    let (ingest, admin) = (free_port()?, free_port()?);
    let data = dir.path().join("data");
    let args: Vec<String> = vec![
        "serve".into(),
        format!("--ingest-listen={ingest}"),
        format!("--admin-listen={admin}"),
        format!("--data-dir={}", data.display()),
        format!("--registry={}", registry.display()),
        "--durability=wal".into(),
        "--drain-delay=1s".into(),
        // A flapping target would otherwise hold the restart for the
        // default 30 s before the rest is spilled.
        "--shutdown-grace=10s".into(),
    ];
    let start_gateway = |n: u32| {
        let args = args.clone();
        let log = dir.path().join(format!("fanout-{n}.log"));
        let bin = opts.fanout_bin.clone();
        async move {
            let mut p = Proc::spawn(&bin, &args, log)?;
            p.wait_ready(admin, "/readyz", Duration::from_secs(60))
                .await?;
            anyhow::Ok(p)
        }
    };
    let mut gateway = start_gateway(0).await?;
    let traffic = tokio::spawn(generator::run(GeneratorConfig {
        url: format!("http://{ingest}/api/v1/write"),
        scenario: spec.fleet.clone(),
        connections: spec.traffic.connections,
        samples_per_request: spec.traffic.samples_per_request,
        rate: Some(opts.rate),
        duration: Some(opts.duration),
        total_samples: None,
        timeout: Duration::from_secs(10),
        retry: true,
        ..GeneratorConfig::default()
    }));

    let start = Instant::now();
    let mut report = SoakReport::default();
    let (mut process, mut restarted, mut t2_on) = (0u32, false, true);
    let mut next_sample = Duration::ZERO;
    let flap = [
        Fault {
            status: Some(503),
            ..Fault::default()
        },
        Fault {
            delay: Duration::from_secs(2),
            ..Fault::default()
        },
        Fault {
            reset_every: 3,
            ..Fault::default()
        },
        Fault::default(),
    ];
    let mut phase = usize::MAX;
    while start.elapsed() < opts.duration {
        let t = start.elapsed();
        let p = (t.as_secs() / 10) as usize % flap.len();
        if p != phase {
            phase = p;
            sinks[1].set_fault(flap[p].clone());
        }
        if t.as_secs() / 30 > u64::from(report.registry_changes) {
            t2_on = !t2_on;
            let body = if t2_on { &with_t2 } else { &without_t2 };
            let (status, text) = http_request(
                admin,
                "PUT",
                "/api/v1/registry",
                Some(("application/yaml", body)),
                Duration::from_secs(10),
            )
            .await?;
            if status != 200 {
                bail!("registry change answered {status}: {text}");
            }
            report.registry_changes += 1;
        }
        if !restarted && t >= opts.duration / 2 {
            restarted = true;
            signal(gateway.pid, "TERM")?;
            let status = tokio::time::timeout(Duration::from_secs(60), gateway.child.wait())
                .await
                .context("the gateway did not stop within 60 s of SIGTERM")??;
            if !status.success() {
                bail!(
                    "the gateway exited {status} on SIGTERM:\n{}",
                    gateway.log_tail()
                );
            }
            process += 1;
            gateway = start_gateway(process).await?;
        }
        let t = start.elapsed();
        if t >= next_sample {
            next_sample = t + Duration::from_secs(5);
            let u = usage(gateway.pid, &data, t.as_secs_f64(), process)?;
            if opts.progress {
                eprintln!(
                    "[{:>6.1}s] process {} RSS {:.1} MiB  fds {}  threads {}  spill {:.1} MiB",
                    u.at,
                    u.process,
                    mib(u.rss),
                    u.fds,
                    u.threads,
                    mib(u.spill)
                );
            }
            report.usage.push(u);
        }
        if let Some(st) = gateway.child.try_wait()? {
            bail!("the gateway exited with {st}:\n{}", gateway.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sinks[1].set_fault(Fault::default());
    let summary = traffic.await??;
    report.acked = summary.samples_ok;
    report.retries = summary.retries;

    // Every acked sample at t0 and t1 (t2 came and went).
    let tally = await_every_sample(
        &summary,
        &spec.fleet,
        &sinks[..2],
        spec.drain_timeout,
        Duration::from_millis(500),
    )
    .await;
    report.lost = tally.lost;
    report.duplicates = tally.duplicates;
    report.other = tally.other;
    let t2 = sinks[2].report();
    if t2.unidentified > 0 {
        report
            .other
            .push(format!("t2: {} samples of unknown origin", t2.unidentified));
    }
    gateway.stop().await;
    report.slopes = (0..=process)
        .map(|p| {
            let of: Vec<&Usage> = report.usage.iter().filter(|u| u.process == p).collect();
            let first = of.first().map_or(0.0, |u| u.at);
            let warm: Vec<&Usage> = of.into_iter().filter(|u| u.at >= first + 30.0).collect();
            slopes(&warm)
        })
        .collect();
    Ok(report)
}

/// Least-squares slopes per minute over `samples`.
fn slopes(samples: &[&Usage]) -> Slopes {
    let fit = |f: &dyn Fn(&Usage) -> f64| -> f64 {
        let n = samples.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let mx = samples.iter().map(|u| u.at).sum::<f64>() / n;
        let my = samples.iter().map(|u| f(u)).sum::<f64>() / n;
        let sxy: f64 = samples.iter().map(|u| (u.at - mx) * (f(u) - my)).sum();
        let sxx: f64 = samples.iter().map(|u| (u.at - mx).powi(2)).sum();
        if sxx == 0.0 {
            0.0
        } else {
            sxy / sxx * 60.0
        }
    };
    let grown = |f: &dyn Fn(&Usage) -> u64| -> i64 {
        match (samples.first(), samples.last()) {
            (Some(a), Some(b)) => f(b) as i64 - f(a) as i64,
            _ => 0,
        }
    };
    Slopes {
        rss_mib: fit(&|u| mib(u.rss)),
        fds: fit(&|u| u.fds as f64),
        threads: fit(&|u| u.threads as f64),
        spill_mib: fit(&|u| mib(u.spill)),
        fds_grown: grown(&|u| u.fds),
        threads_grown: grown(&|u| u.threads),
    }
}

/// The gateway's resources now.
fn usage(pid: u32, data: &Path, at: f64, process: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        at,
        process,
        rss: super::procfs::rss(pid)?,
        fds: super::procfs::open_fds(pid)?,
        threads: field("Threads:"),
        spill: dir_bytes(&data.join("spill")),
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()?
        .success();
    if !ok {
        bail!("kill -s {sig} {pid} failed");
    }
    Ok(())
}
