//! `fanout serve`: wires store, registry, ingest, delivery and admin together.
//!
//! Start order: configuration, store (migrated), live registry (loaded, then
//! the `--registry` file applied on top), admin listener bound (so a bad
//! address fails before anything serves), ingest, then readiness. The current
//! registry is shared as `Arc<ArcSwap<Snapshot>>` ([`Gateway::snapshot`]).
//!
//! One gateway per data dir: `<data-dir>/fanout.lock` is locked (`flock`)
//! for the life of the process and holds its pid; a second gateway on the
//! same dir refuses to start, naming that pid (two would write into the same
//! spill queues and lose each other's data).
//!
//! Stop: SIGTERM or ctrl-c marks the gateway draining (`/readyz` and new
//! writes 503 with `Retry-After` for `--drain-delay`, while writes in flight
//! finish), closes ingest, delivers for up to `--shutdown-grace`, spills the
//! rest, ends the stats streams (a last `stopped` event), stops the admin
//! server and returns `Ok(())`, so the process exits 0. A second signal cuts
//! every wait short: what is queued is spilled at once and the process exits.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;

use crate::admin::{self, AdminState, Health};
use crate::config::{ServeArgs, ServeConfig};
use crate::registry::live::Live;
use crate::registry::model::Document;
use crate::registry::{ops, store, Snapshot};

/// The running parts that other parts are handed.
#[derive(Clone)]
pub struct Gateway {
    /// Merged configuration.
    pub config: Arc<ServeConfig>,
    /// The live registry (writes, reloads, target diffs).
    pub live: Arc<Live>,
    /// The current registry snapshot; ingest and delivery `load()` it per request.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Readiness and drain state of the probes.
    pub health: Arc<Health>,
}

/// Default of `--drain-delay`.
pub const DEFAULT_DRAIN_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
/// Name of the lock file in the data dir.
pub const LOCK_FILE: &str = "fanout.lock";

/// Runs `fanout serve` until SIGTERM or ctrl-c.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = ServeConfig::load(args)?;
    runtime("fanout")?.block_on(serve(config))
}

/// The multi-threaded runtime of a `fanout` command, its threads named `name`.
pub(crate) fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests) is harmless.
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A log line that cannot be written (stderr piped into a process that
    // is gone, as with `fanout serve 2>&1 | tee log` and Ctrl-C) is lost,
    // never a panic: the subscriber would otherwise report it with
    // `eprintln!`, which panics on the same closed stderr and skips the drain.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false)
        .try_init();
}

/// Locks `<data-dir>/fanout.lock` for the life of the process (the returned
/// file), writing this process's pid into it.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Seek, Write};
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // flock(2): released by the kernel when the process ends, however it ends.
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let holder = if holder.is_empty() { "unknown" } else { holder };
            anyhow::bail!(
                "the data dir {} is in use by another fanout serve (pid {holder}); \
                 two gateways on one data dir would overwrite each other's disk spill: \
                 give each its own --data-dir",
                dir.display()
            );
        }
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

/// Opens the store and loads the registry, applying `config.registry` if set.
pub async fn open_registry(config: &ServeConfig) -> anyhow::Result<Arc<Live>> {
    let live = open_live(config.store.as_deref(), &config.data_dir).await?;
    if let Some(path) = &config.registry {
        if live.store().reachable() {
            apply_file(&live, path).await?;
        } else {
            tracing::warn!(file = %path.display(), "registry file not applied: the store is unreachable (apply it again when it is back)");
        }
    }
    Ok(live)
}

/// Opens the store `store` (`None`: SQLite in `data_dir`) and loads the
/// registry from it.
/// On a shared store (PostgreSQL) the registry is also kept as the last
/// known one in `data_dir`; when the store cannot be reached at start, the
/// gateway starts from that and reconnects in the background
/// (`store::last_known`). A gateway that never had a registry refuses to
/// start.
pub async fn open_live(store: Option<&str>, data_dir: &Path) -> anyhow::Result<Arc<Live>> {
    let shared = store.is_some_and(|s| s.starts_with("postgres"));
    let last_known = shared.then(|| store::last_known::path(data_dir));
    let opened = store::open(store, data_dir).await;
    let error = match opened {
        Ok(s) => {
            tracing::info!(store = %s.describe(), "registry store opened");
            return Live::open_keeping(s, last_known)
                .await
                .context("cannot load the registry");
        }
        Err(e) => e,
    };
    let (Some(url), Some(path)) = (store.filter(|_| error.unavailable().is_some()), last_known)
    else {
        return Err(anyhow::Error::new(error).context("cannot open the registry store"));
    };
    let Some((stored, saved)) = store::last_known::load(&path)
        .context("the registry store is unreachable and the last known registry cannot be read")?
    else {
        return Err(anyhow::Error::new(error).context(format!(
            "cannot open the registry store, and {} holds no last known registry (a gateway \
             that never loaded one cannot start without its store)",
            data_dir.display()
        )));
    };
    let age = std::time::SystemTime::now()
        .duration_since(saved)
        .unwrap_or_default();
    tracing::warn!(
        error = %error,
        version = stored.version,
        age_seconds = age.as_secs(),
        "registry store unreachable: starting from the last known registry; ingest and \
         delivery go on, admin writes answer 503 until the store is back"
    );
    let url = url.to_owned();
    let reconnecting = store::last_known::Reconnecting::start(store::redact_url(&url), move || {
        let url = url.clone();
        Box::pin(async move { store::open(Some(&url), Path::new(".")).await })
    });
    let version = stored.version;
    let live = Live::open_from(Arc::new(reconnecting), stored, Some(path.clone())).await;
    if live.current().version() != version || version == 0 {
        anyhow::bail!(
            "the registry store is unreachable and the last known registry in {} (version \
             {version}) is not valid for this gateway; it cannot start without its store",
            path.display()
        );
    }
    Ok(live)
}

async fn apply_file(live: &Live, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let yaml = path
        .extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case("json"));
    let doc = Document::parse(&text, yaml).map_err(|problems| {
        anyhow::anyhow!(
            "{} is not a valid registry document:\n  {}",
            path.display(),
            problems.join("\n  ")
        )
    })?;
    let snapshot = live
        .update(move |r| ops::replace_all(r, doc))
        .await
        .map_err(|e| match e {
            store::UpdateError::Invalid(ps) | store::UpdateError::Conflict(ps) => {
                anyhow::anyhow!("{} was not applied:\n  {}", path.display(), ps.join("\n  "))
            }
            other => anyhow::Error::new(other).context(format!("cannot apply {}", path.display())),
        })?;
    tracing::info!(
        file = %path.display(),
        version = snapshot.version(),
        "registry file applied"
    );
    Ok(())
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let _lock = lock_data_dir(&config.data_dir)?;
    let live = open_registry(&config).await?;
    let health = Arc::new(Health::default());
    let gateway = Gateway {
        config: config.clone(),
        snapshot: live.shared(),
        live: live.clone(),
        health: health.clone(),
    };

    let admin_listener = admin::bind(config.admin_listen, config.admin_token.as_ref()).await?;
    let admin_addr = admin_listener.local_addr()?;

    // Delivery shares the in-memory budget with ingest (SPEC §5).
    let ingest_config = config.args.ingest.config();
    let budget = crate::ingest::MemoryBudget::new(ingest_config.memory_budget);
    let mut settings = config
        .args
        .delivery
        .settings()
        .context("cannot load the catalog")?;
    settings.data_dir = Some(config.data_dir.clone());
    let shutdown_grace = settings.shutdown_grace;
    tracing::info!(
        catalog_entries = settings.catalog.len(),
        export_all = settings.catalog.is_all(),
        "delivery catalog loaded"
    );
    // The recorder first: delivery registers its per-target metrics at start.
    let metrics_handle = install_metrics(&config.data_dir);
    metrics::gauge!(crate::deliver::stats::names::MEMORY_BUDGET)
        .set(ingest_config.memory_budget as f64);
    live.publish_reachable();
    let delivery = crate::deliver::FanoutDelivery::start(&live, budget.clone(), settings);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let reporting = admin::status::Reporting {
        gateway: format!("{}:{}", hostname(), admin_addr.port()),
        interval: config
            .args
            .status_report_interval
            .map_or(DEFAULT_STATUS_REPORT_INTERVAL, |d| {
                d.0.max(std::time::Duration::from_millis(100))
            }),
    };
    if live.store().is_shared() {
        tokio::spawn(report_status(
            live.clone(),
            delivery.clone(),
            reporting.clone(),
            stop_rx.clone(),
        ));
    }
    let router = admin::router(AdminState {
        live: live.clone(),
        token: config.admin_token.clone(),
        health: health.clone(),
        status: Some(Arc::new(delivery.clone())),
        reporting: reporting.clone(),
    })
    .merge(crate::deliver::api::routes(
        crate::deliver::api::DeliveryApi {
            delivery: delivery.clone(),
            health: health.clone(),
            token: config.admin_token.clone(),
            metrics: metrics_handle,
            gateway: reporting.gateway.clone(),
            draining: draining.clone(),
            stopped: stop_rx.clone(),
            store_reachable: Some({
                let live = live.clone();
                Arc::new(move || live.reachable())
            }),
        },
    ));

    // ===== INGEST: start the remote-write listeners here =====
    let ingest = crate::ingest::start(
        crate::ingest::IngestOptions {
            listen: config.ingest_listen,
            data_dir: config.data_dir.clone(),
            tls_cert: config.tls_cert.clone(),
            tls_key: config.tls_key.clone(),
            config: ingest_config,
        },
        gateway.snapshot.clone(),
        Arc::new(delivery.clone()),
        budget,
    )
    .await?;
    // ===== end INGEST =====

    let admin_stop = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let admin_tls = admin_tls_config(&config)?;
    let https = admin_tls.is_some();
    let admin_task = match admin_tls {
        Some(tls) => {
            let listener = admin::tls::TlsListener::new(admin_listener, tls)?;
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(admin_stop)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(admin_listener, router)
                .with_graceful_shutdown(admin_stop)
                .await
        }),
    };
    health.set_ready();
    tracing::info!(admin = %admin_addr, admin_https = https, version = live.current().version(), "fanout gateway ready");

    // Every SIGTERM / ctrl-c counts: the first starts the drain, the second
    // cuts it short.
    let (signals_tx, signals) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            shutdown_signal().await;
            signals_tx.send_modify(|n| *n += 1);
        }
    });
    let signal = |n: u32| {
        let mut signals = signals.clone();
        async move {
            let _ = signals.wait_for(|s| *s >= n).await;
        }
    };
    signal(1).await;
    let drain_delay = config.args.drain_delay.map_or(DEFAULT_DRAIN_DELAY, |d| d.0);
    tracing::info!(
        drain_delay_seconds = drain_delay.as_secs(),
        shutdown_grace_seconds = shutdown_grace.as_secs(),
        "shutting down: new writes are answered 503 for the drain delay, then queued data is delivered for the shutdown grace and the rest goes to disk (a second SIGTERM or ctrl-c stops at once)"
    );
    health.set_draining();
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
    let hurry = signal(2);
    tokio::spawn(async move {
        hurry.await;
        tracing::warn!("second signal: not waiting any more; what is queued goes to disk now");
    });

    let in_flight = ingest.drain_state().clone();
    let drained = ingest.drain_and_stop(drain_delay, std::time::Duration::from_secs(30), signal(2));
    tokio::pin!(drained);
    let drain_end = tokio::time::Instant::now() + drain_delay;
    let mut progress = tokio::time::interval(crate::deliver::service::PROGRESS_EVERY);
    progress.tick().await;
    loop {
        tokio::select! {
            () = &mut drained => break,
            _ = progress.tick() => tracing::info!(
                seconds_left = drain_end
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs(),
                writes_in_flight = in_flight.in_flight(),
                "shutting down: new writes are answered 503 until the drain delay ends"
            ),
        }
    }
    tracing::info!(
        shutdown_grace_seconds = shutdown_grace.as_secs(),
        "ingest stopped; delivering what is queued"
    );

    // It logs its progress and what it leaves on disk, by target.
    delivery.shutdown_or(shutdown_grace, signal(2)).await;

    // Stats streams end now (a last `stopped` event), so the admin server's
    // graceful stop does not wait for their clients.
    let _ = stop_tx.send(true);
    match tokio::time::timeout(std::time::Duration::from_secs(5), admin_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server task failed"),
        Err(_) => tracing::warn!("admin connections still open after 5s; closing them"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The admin API's TLS configuration, when `--admin-tls-cert` is set.
fn admin_tls_config(config: &ServeConfig) -> anyhow::Result<Option<rustls::ServerConfig>> {
    use crate::ingest::tls;
    match (&config.admin_tls_cert, &config.admin_tls_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            tls::install_crypto_provider();
            let pair = tls::load_pem(cert, key).context("admin TLS certificate")?;
            Ok(Some(tls::tcp_server_config(&pair).context("admin TLS")?))
        }
        _ => anyhow::bail!("--admin-tls-cert and --admin-tls-key go together"),
    }
}

/// Installs the Prometheus recorder behind `/metrics` (once per process) and
/// starts its upkeep: histogram samples are drained into their buckets every
/// [`stats::UPKEEP_EVERY`](crate::deliver::stats::UPKEEP_EVERY) whether or
/// not anyone scrapes (with `install_recorder` the crate leaves that to the
/// caller, and samples would pile up in memory), and counters and gauges of
/// targets not forgotten are kept out of the idle timeout that removes the
/// series of forgotten ones (`deliver::stats` module docs). The same tick
/// sets `fanout_data_dir_free_bytes` (what an unprivileged writer may still
/// use on `data_dir`'s filesystem) and the `process_*` metrics. Call within
/// the runtime.
fn install_metrics(data_dir: &Path) -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use crate::deliver::stats::{self, KeepAlive};
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use metrics_util::MetricKindMask;
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .ok()?
        .idle_timeout(
            MetricKindMask::COUNTER | MetricKindMask::GAUGE,
            Some(stats::IDLE_TIMEOUT),
        )
        .build_recorder();
    let handle = recorder.handle();
    match KeepAlive::new(recorder).install() {
        Ok(keep) => {
            stats::describe();
            metrics::gauge!(
                stats::names::BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"),
                "revision" => env!("FANOUT_REVISION")
            )
            .set(1.0);
            let upkeep = handle.clone();
            let free = metrics::gauge!(stats::names::DATA_DIR_FREE);
            let process = stats::ProcessMetrics::new();
            let data_dir = data_dir.to_owned();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(stats::UPKEEP_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    process.sample();
                    if let Ok(fs) = rustix::fs::statvfs(&data_dir) {
                        free.set(fs.f_bavail.saturating_mul(fs.f_frsize) as f64);
                    }
                    keep.keep_alive();
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics is unavailable");
            None
        }
    }
}

/// Default `--status-report-interval`.
const DEFAULT_STATUS_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes this gateway's export status to the shared store every interval
/// until the gateway stops (docs/registry.md "Export status").
async fn report_status(
    live: Arc<crate::registry::live::Live>,
    delivery: crate::deliver::FanoutDelivery,
    reporting: admin::status::Reporting,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(reporting.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut reported = admin::status::Reported::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        let snapshot = live.current();
        match admin::status::report(
            live.store(),
            &delivery,
            &snapshot,
            &reporting,
            &mut reported,
        )
        .await
        {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("export status: reporting to the shared store again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "export status: cannot report to the shared store (other gateways answer without this one's part until it can)");
            }
            Err(_) => {}
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
