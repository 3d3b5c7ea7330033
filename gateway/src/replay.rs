//! `fanout spill replay`: delivers the disk backlog of a gateway that is not
//! coming back (docs/fleet.md, "A gateway that never comes back").
//!
//! It is the delivery half of `fanout serve` on that data dir, without
//! ingest or the admin API:
//! - the data dir is locked as a gateway locks it, so a dir that a gateway
//!   still runs on is refused, naming its pid;
//! - the registry comes from the store that gateway used (the fleet's
//!   PostgreSQL, or the SQLite file in the data dir), so every backlog is
//!   sent with its target's *current* endpoint, credentials and options;
//! - delivery starts on the data dir exactly as after a restart: each
//!   target of the registry opens its backlog and sends it oldest first, in
//!   order per series, with the usual retries and backoff; a backlog whose
//!   export's config changed since is resumed by its successor target
//!   (the spill manifest's routes, docs/spill.md);
//! - once every target is idle (nothing in memory, nothing unread or
//!   unacked on disk) delivery stops and the spill directory of each target
//!   is removed.
//!
//! Backlogs of targets no longer in the registry, and backlogs still
//! undelivered when `--timeout` ends (their endpoint failing), stay on disk
//! as they were; the command then fails, naming each and why, so that a
//! script notices and can run it again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::ReplayArgs;
use crate::deliver::service::SpillLeft;
use crate::deliver::{spill, DeliveryArgs, FanoutDelivery};
use crate::ingest::{IngestArgs, MemoryBudget};

/// Default of `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs `fanout spill replay`.
pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    crate::serve::init_tracing();
    crate::serve::runtime("fanout-replay")?.block_on(replay(args))
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.as_path();
    anyhow::ensure!(
        dir.is_dir(),
        "{} is not a directory: give the data dir of the gateway whose backlog to deliver",
        dir.display()
    );
    let _lock = crate::serve::lock_data_dir(dir)?;
    let found = spill::list_backlogs(dir).context("cannot list the disk backlogs")?;
    let (backlogs, bytes) = found
        .iter()
        .filter(|b| b.segments > 0)
        .fold((0, 0), |(n, bytes), b| (n + 1, bytes + b.disk_bytes));
    if backlogs == 0 {
        println!("{}: no disk backlog to deliver", dir.display());
        return Ok(());
    }
    println!(
        "{}: delivering {backlogs} disk backlog(s), {bytes} bytes on disk",
        dir.display()
    );

    let live = crate::serve::open_live(args.store.as_deref(), dir).await?;
    let mut settings = DeliveryArgs::default()
        .settings()
        .context("cannot load the catalog")?;
    settings.data_dir = Some(dir.to_path_buf());
    let budget = MemoryBudget::new(IngestArgs::default().config().memory_budget);
    let delivery = FanoutDelivery::start(&live, budget, settings);
    delivery.sweep_orphans_now();

    let timeout = args.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    let ended = deliver_until_idle(&delivery, timeout).await;
    let lost = delivery
        .shutdown(Duration::from_secs(5))
        .await
        .abandoned_samples;
    let statuses = delivery.target_statuses();
    let left = delivery.remove_delivered_spills();
    let orphans = delivery.orphan_backlogs();

    let mut problems = Vec::new();
    for t in &statuses {
        let records_left = left.iter().find_map(|(id, why)| match why {
            SpillLeft::Records(n) if *id == t.id => Some(*n),
            _ => None,
        });
        if t.samples_sent == 0 && records_left.is_none() {
            continue;
        }
        let mut line = format!(
            "  target {} [{}] ({}): {} samples delivered in {} requests",
            target_name(t),
            t.id,
            t.endpoint,
            t.samples_sent,
            t.requests_sent
        );
        if let Some(n) = records_left {
            let why = t
                .last_error
                .as_ref()
                .map_or_else(|| "no error seen".to_owned(), |e| e.message.clone());
            line.push_str(&format!("; {n} records left on disk (last error: {why})"));
            problems.push(format!(
                "target {} [{}]: {n} records not delivered",
                target_name(t),
                t.id
            ));
        }
        println!("{line}");
    }
    for (id, e) in left.iter().filter_map(|(id, why)| match why {
        SpillLeft::NotRemoved(e) => Some((id, e)),
        SpillLeft::Records(_) => None,
    }) {
        println!("  target {id}: delivered, but its spill directory cannot be removed: {e}");
        problems.push(format!("target {id}: directory not removed: {e}"));
    }
    for (id, bytes) in &orphans {
        println!(
            "  backlog {id}: {bytes} bytes left on disk: no target of the registry has it (its export was removed, or changed so that it no longer matches one target)"
        );
        problems.push(format!("backlog {id}: its target is not in the registry"));
    }
    if lost > 0 {
        problems.push(format!("{lost} samples could not be written back to disk"));
    }
    if problems.is_empty() {
        println!("{}: every backlog delivered and removed", dir.display());
        return Ok(());
    }
    let why = match ended {
        Ended::Idle => String::new(),
        Ended::Timeout => format!(
            " (--timeout {} ended)",
            fanout_proto::units::format_duration(timeout)
        ),
        Ended::Interrupted => " (interrupted)".to_owned(),
    };
    Err(left_behind(dir, &problems, &why))
}

/// Why the delivery loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Idle,
    Timeout,
    Interrupted,
}

/// Waits until every target is idle (seen twice, 200 ms apart), `timeout`
/// ends, or ctrl-c / SIGTERM; logs progress meanwhile.
async fn deliver_until_idle(delivery: &FanoutDelivery, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    let mut next_report = Instant::now() + PROGRESS_EVERY;
    let mut idle_seen = 0;
    let mut stop = std::pin::pin!(crate::serve::shutdown_signal());
    loop {
        if delivery.is_idle() {
            idle_seen += 1;
            if idle_seen >= 2 {
                return Ended::Idle;
            }
        } else {
            idle_seen = 0;
        }
        let now = Instant::now();
        if now >= deadline {
            return Ended::Timeout;
        }
        if now >= next_report {
            next_report = now + PROGRESS_EVERY;
            for t in delivery.target_statuses() {
                if t.spill_bytes == 0 && t.queue_samples == 0 {
                    continue;
                }
                tracing::info!(
                    exports = %target_name(&t),
                    target_id = %t.id,
                    state = %t.state,
                    samples_sent = t.samples_sent,
                    spill_bytes = t.spill_bytes,
                    last_error = t.last_error.as_ref().map_or("", |e| e.message.as_str()),
                    "replay: delivering"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut stop => return Ended::Interrupted,
        }
    }
}

fn left_behind(dir: &Path, problems: &[String], why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "not every backlog in {} was delivered{why}; what is left stays on disk, and running this again resumes it:\n  {}",
        dir.display(),
        problems.join("\n  ")
    )
}

/// Its exports and Deployment count, as the gateway's log names targets.
fn target_name(t: &fanout_proto::api::Target) -> String {
    fanout_proto::api::target_label(
        t.feeds
            .iter()
            .map(|f| (f.export_id.as_str(), f.deployment_id.as_str())),
    )
    .unwrap_or_else(|| t.id.clone())
}
