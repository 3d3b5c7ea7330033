//! Everything the console shows, as plain data: the gateways' latest
//! snapshots, rates computed from consecutive snapshots, a few minutes of
//! history, merged targets and failures, the registry, and the UI's own
//! state (view, selection, sort, filter, help).
//!
//! Deterministic: nothing here reads a clock. Snapshot times come from the
//! gateway (`time`); the event loop sets [`State::now_ms`] before rendering.
//! That is what lets the snapshot tests render fixed states.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::api::{EffectiveExport, Feed, LastError, Registry, Snapshot, Target};
use crate::fmt;

/// Seconds of history kept for charts.
pub const HISTORY_SECONDS: i64 = 300;
/// Failures kept in the Failures view.
pub const MAX_FAILURES: usize = 1000;

/// The five views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Throughput, totals, drops, gateways.
    Overview,
    /// Targets table and target detail.
    Targets,
    /// Recent delivery errors.
    Failures,
    /// Registry tree and effective exports.
    Config,
    /// Deployments: how their exports go, sortable, with their exports'
    /// status on Enter.
    Deployments,
}

impl View {
    /// All views in tab order.
    pub const ALL: [View; 5] = [
        View::Overview,
        View::Targets,
        View::Failures,
        View::Config,
        View::Deployments,
    ];

    /// Position in tab order.
    pub fn index(self) -> usize {
        match self {
            View::Overview => 0,
            View::Targets => 1,
            View::Failures => 2,
            View::Config => 3,
            View::Deployments => 4,
        }
    }

    /// Tab title.
    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Targets => "Targets",
            View::Failures => "Failures",
            View::Config => "Config",
            View::Deployments => "Deployments",
        }
    }
}

/// The connection to one gateway's stats stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Opening the stream.
    Connecting {
        /// Since when (ms).
        since_ms: i64,
    },
    /// Receiving snapshots.
    Connected {
        /// Since when (ms).
        since_ms: i64,
    },
    /// The stream failed; a retry is scheduled.
    Disconnected {
        /// Since when (ms): the first failure of this outage.
        since_ms: i64,
        /// Why the last attempt failed.
        error: String,
        /// When the next attempt starts (ms).
        retry_at_ms: i64,
    },
}

/// Per-second rates of one gateway (or their sum).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Samples ingested per second.
    pub samples_in: f64,
    /// Bytes ingested per second.
    pub bytes_in: f64,
    /// Samples delivered per second.
    pub samples_out: f64,
    /// Bytes delivered per second.
    pub bytes_out: f64,
    /// Ingest responses per second.
    pub ingest_requests: f64,
    /// Non-2xx ingest responses per second.
    pub ingest_errors: f64,
    /// Successful delivery requests per second.
    pub delivery_requests: f64,
    /// Failed delivery attempts per second.
    pub delivery_failures: f64,
}

impl Rates {
    fn add(&mut self, o: &Rates) {
        self.samples_in += o.samples_in;
        self.bytes_in += o.bytes_in;
        self.samples_out += o.samples_out;
        self.bytes_out += o.bytes_out;
        self.ingest_requests += o.ingest_requests;
        self.ingest_errors += o.ingest_errors;
        self.delivery_requests += o.delivery_requests;
        self.delivery_failures += o.delivery_failures;
    }
}

/// One point of a target's history.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TargetPoint {
    /// Samples delivered per second.
    pub rate: f64,
    /// Queue plus spill bytes.
    pub backlog: f64,
    /// Failed attempts per second.
    pub failures: f64,
}

#[derive(Debug, Clone, Default)]
struct Previous {
    time_ms: i64,
    uptime: f64,
    samples_in: f64,
    bytes_in: f64,
    samples_out: f64,
    bytes_out: f64,
    ingest_total: f64,
    ingest_errors: f64,
    requests: f64,
    failures: f64,
    targets: HashMap<String, (f64, f64)>,
}

/// One gateway as the console knows it.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The `--admin` URL.
    pub url: String,
    /// Stream state.
    pub link: Link,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// When the latest snapshot was taken (ms).
    pub snapshot_ms: Option<i64>,
    /// Rates between the last two snapshots.
    pub rates: Rates,
    /// Rates per second of the last [`HISTORY_SECONDS`].
    pub history: BTreeMap<i64, Rates>,
    /// Per target: samples per second between the last two snapshots.
    pub target_rates: HashMap<String, f64>,
    /// Per target history.
    pub target_history: HashMap<String, BTreeMap<i64, TargetPoint>>,
    /// The last snapshot that could not be used, and why.
    pub data_error: Option<String>,
    /// Set when the stream came back after an outage: (when, outage seconds).
    pub reconnected: Option<(i64, f64)>,
    previous: Option<Previous>,
}

impl Gateway {
    /// A gateway not yet connected.
    pub fn new(url: &str, now_ms: i64) -> Gateway {
        Gateway {
            url: url.to_owned(),
            link: Link::Connecting { since_ms: now_ms },
            snapshot: None,
            snapshot_ms: None,
            rates: Rates::default(),
            history: BTreeMap::new(),
            target_rates: HashMap::new(),
            target_history: HashMap::new(),
            data_error: None,
            reconnected: None,
            previous: None,
        }
    }

    /// Its name: the snapshot's `gateway`, else the URL without scheme.
    pub fn name(&self) -> String {
        match &self.snapshot {
            Some(s) if !s.gateway.is_empty() => s.gateway.clone(),
            _ => self
                .url
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned(),
        }
    }

    /// Receiving snapshots now.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Connected { .. })
    }

    fn apply(&mut self, snap: Snapshot, received_ms: i64) {
        let time_ms = fmt::parse_time_ms(&snap.time).unwrap_or(received_ms);
        let (ingest_total, ingest_errors) = snap.ingest.responses();
        let requests = snap.targets.iter().map(|t| t.requests_sent).sum::<u64>() as f64;
        let failures = snap.targets.iter().map(Target::failures_total).sum::<u64>() as f64;
        let now = Previous {
            time_ms,
            uptime: snap.uptime_seconds,
            samples_in: snap.ingest.samples as f64,
            bytes_in: snap.ingest.bytes as f64,
            samples_out: snap.out.samples as f64,
            bytes_out: snap.out.bytes as f64,
            ingest_total: ingest_total as f64,
            ingest_errors: ingest_errors as f64,
            requests,
            failures,
            targets: snap
                .targets
                .iter()
                .map(|t| {
                    let sent = t.samples_sent as f64;
                    (t.id.clone(), (sent, t.failures_total() as f64))
                })
                .collect(),
        };
        let second = time_ms.div_euclid(1000);
        match &self.previous {
            // A restarted gateway starts its counters again: no rate across it.
            Some(p) if time_ms > p.time_ms && now.uptime >= p.uptime => {
                let dt = (time_ms - p.time_ms) as f64 / 1000.0;
                let r = |a: f64, b: f64| if a >= b { (a - b) / dt } else { 0.0 };
                self.rates = Rates {
                    samples_in: r(now.samples_in, p.samples_in),
                    bytes_in: r(now.bytes_in, p.bytes_in),
                    samples_out: r(now.samples_out, p.samples_out),
                    bytes_out: r(now.bytes_out, p.bytes_out),
                    ingest_requests: r(now.ingest_total, p.ingest_total),
                    ingest_errors: r(now.ingest_errors, p.ingest_errors),
                    delivery_requests: r(now.requests, p.requests),
                    delivery_failures: r(now.failures, p.failures),
                };
                self.history.insert(second, self.rates);
                self.target_rates.clear();
                for t in &snap.targets {
                    let (sent, failed) = now.targets[&t.id];
                    let (rate, frate) = match p.targets.get(&t.id) {
                        Some(&(ps, pf)) => (r(sent, ps), r(failed, pf)),
                        None => (0.0, 0.0),
                    };
                    self.target_rates.insert(t.id.clone(), rate);
                    self.target_history.entry(t.id.clone()).or_default().insert(
                        second,
                        TargetPoint {
                            rate,
                            backlog: (t.queue_bytes + t.spill_bytes) as f64,
                            failures: frate,
                        },
                    );
                }
            }
            Some(p) if time_ms == p.time_ms => {}
            _ => {
                self.rates = Rates::default();
                self.target_rates.clear();
            }
        }
        let oldest = second - HISTORY_SECONDS;
        self.history = self.history.split_off(&oldest);
        self.target_history.retain(|_, h| {
            *h = h.split_off(&oldest);
            !h.is_empty()
        });
        self.previous = Some(now);
        self.snapshot = Some(snap);
        self.snapshot_ms = Some(time_ms);
    }
}

/// A target merged over every gateway that has it (ids are fleet-wide).
#[derive(Debug, Clone, Default)]
pub struct TargetRow {
    /// Target id.
    pub id: String,
    /// Endpoint.
    pub endpoint: String,
    /// Remote-write version sent (a fallback on any gateway wins).
    pub protocol: String,
    /// Worst state over the gateways.
    pub state: String,
    /// Paused on every gateway that has it.
    pub paused: bool,
    /// Queue bytes (sum).
    pub queue_bytes: f64,
    /// Queued samples (sum).
    pub queue_samples: f64,
    /// Spill bytes (sum).
    pub spill_bytes: f64,
    /// Oldest queued data (max).
    pub oldest_queued_seconds: f64,
    /// Samples per second delivered (sum).
    pub rate: f64,
    /// Samples delivered (sum).
    pub samples_sent: f64,
    /// Bytes delivered (sum).
    pub bytes_sent: f64,
    /// Requests sent (sum).
    pub requests_sent: f64,
    /// Retries (sum).
    pub retries: f64,
    /// Failed attempts by kind (sum).
    pub failures: BTreeMap<String, f64>,
    /// Dropped samples by reason (sum).
    pub dropped: BTreeMap<String, f64>,
    /// The newest last error.
    pub last_error: Option<LastError>,
    /// Latency percentiles: the highest over gateways.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
    /// Concurrency limit (sum).
    pub concurrency: f64,
    /// In flight (sum).
    pub in_flight: f64,
    /// What feeds it.
    pub feeds: BTreeSet<Feed>,
    /// Indexes of the gateways that have it.
    pub gateways: Vec<usize>,
}

impl TargetRow {
    /// All failed attempts.
    pub fn failures_total(&self) -> f64 {
        self.failures.values().sum()
    }

    /// What people call the target: the export(s) that route to it and how
    /// many Deployments they carry (`prom-dev ·2`), or its id when nothing
    /// feeds it (a target being retired).
    pub fn name(&self) -> String {
        self.name_within(usize::MAX)
    }

    /// [`TargetRow::name`] in at most `width` characters: the exports are
    /// cut, the Deployment count kept.
    pub fn name_within(&self, width: usize) -> String {
        let feeds = self
            .feeds
            .iter()
            .map(|f| (f.export_id.as_str(), f.deployment_id.as_str()));
        let Some((exports, deployments)) = crate::api::target_name(feeds) else {
            return fmt::cut(&self.id, width);
        };
        let count = format!(" ·{deployments}");
        let room = width.saturating_sub(count.chars().count()).max(1);
        format!("{}{count}", fmt::cut(&exports, room))
    }
}

/// Severity order of target states (worst last).
pub fn state_rank(state: &str) -> u8 {
    match state {
        "idle" => 0,
        "healthy" => 0,
        "paused" => 1,
        "retrying" => 2,
        "failing" => 3,
        _ => 2,
    }
}

/// Column the Targets table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Worst state first.
    State,
    /// Delivery rate.
    Rate,
    /// Queue plus spill.
    Backlog,
    /// Failures.
    Failures,
    /// p99 latency.
    P99,
    /// Target id.
    Id,
}

impl SortKey {
    /// The next key (`s`).
    pub fn next(self) -> SortKey {
        match self {
            SortKey::State => SortKey::Rate,
            SortKey::Rate => SortKey::Backlog,
            SortKey::Backlog => SortKey::Failures,
            SortKey::Failures => SortKey::P99,
            SortKey::P99 => SortKey::Id,
            SortKey::Id => SortKey::State,
        }
    }

    /// Its name in the table title.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::State => "state",
            SortKey::Rate => "rate",
            SortKey::Backlog => "queue",
            SortKey::Failures => "failures",
            SortKey::P99 => "p99",
            SortKey::Id => "id",
        }
    }
}

/// Column the Deployments table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentSort {
    /// Worst state first.
    State,
    /// Samples delivered per second (last minute).
    Rate,
    /// Samples dropped in the last minute.
    Drops,
    /// Oldest undelivered data.
    Lag,
    /// Deployment id.
    Id,
}

impl DeploymentSort {
    /// The next key (`s`).
    pub fn next(self) -> DeploymentSort {
        match self {
            DeploymentSort::State => DeploymentSort::Rate,
            DeploymentSort::Rate => DeploymentSort::Drops,
            DeploymentSort::Drops => DeploymentSort::Lag,
            DeploymentSort::Lag => DeploymentSort::Id,
            DeploymentSort::Id => DeploymentSort::State,
        }
    }

    /// Its name in the table title.
    pub fn name(self) -> &'static str {
        match self {
            DeploymentSort::State => "state",
            DeploymentSort::Rate => "rate",
            DeploymentSort::Drops => "drops",
            DeploymentSort::Lag => "lag",
            DeploymentSort::Id => "id",
        }
    }
}

pub use fanout_proto::api::export_state_rank;

/// Keeps in `kept` the newer of it and `other` (errors of several gateways
/// or targets; times as the gateways wrote them, parsed).
fn keep_newest(kept: &mut Option<LastError>, other: &Option<LastError>) {
    let newer = match (&*kept, other) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => fmt::parse_time_ms(&b.time) > fmt::parse_time_ms(&a.time),
    };
    if newer {
        kept.clone_from(other);
    }
}

/// One Deployment of the Deployments view, merged over the gateways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentRow {
    /// Deployment id.
    pub id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Its exports (targets).
    pub exports: u32,
    /// The worst state reported.
    pub state: String,
    /// Samples delivered per second, over the last minute.
    pub rate: f64,
    /// Samples dropped in the last minute, by reason.
    pub dropped: BTreeMap<String, f64>,
    /// Oldest undelivered data (s).
    pub lag: f64,
    /// The newest error.
    pub last_error: Option<LastError>,
}

impl DeploymentRow {
    /// Samples dropped in the last minute.
    pub fn dropped_total(&self) -> f64 {
        self.dropped.values().sum()
    }
}

/// One delivery error of the Failures view.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRow {
    /// When (ms), if the time parsed.
    pub time_ms: Option<i64>,
    /// Gateway index.
    pub gateway: usize,
    /// Target id.
    pub target_id: String,
    /// What people call the target ([`TargetRow::name`]), as the gateway
    /// listed it with the error; its id when it was not listed.
    pub target: String,
    /// HTTP status.
    pub status: Option<u16>,
    /// Message, on one line.
    pub message: String,
}

/// What a Config row points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigItem {
    /// A heading.
    Heading,
    /// A Workspace (id).
    Workspace(String),
    /// A metrics export (index into the registry's list).
    Export(usize),
    /// A link or exclusion of an export (export index, link index; exclusions are `None`).
    Link(usize, Option<usize>),
    /// A Deployment (id).
    Deployment(String),
    /// A cluster (index).
    Cluster(usize),
}

/// One row of the Config tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRow {
    /// Nesting depth.
    pub depth: u8,
    /// Text.
    pub text: String,
    /// What it is.
    pub item: ConfigItem,
}

/// The effective exports of one Deployment, or why they could not be read.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Deployment id.
    pub deployment: String,
    /// The answer.
    pub result: Result<Vec<EffectiveExport>, String>,
}

/// A line for the status bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// When (ms).
    pub at_ms: i64,
    /// Text (never a secret).
    pub text: String,
    /// Shown as an error.
    pub error: bool,
}

/// The whole console state.
#[derive(Debug, Clone)]
pub struct State {
    /// Wall clock for "since"/"ago" texts (ms), set by the event loop.
    pub now_ms: i64,
    /// The gateways of `--admin`, in order.
    pub gateways: Vec<Gateway>,
    /// Current view.
    pub view: View,
    /// Help overlay shown.
    pub help: bool,
    /// Targets sort column.
    pub sort: SortKey,
    /// Sort descending (worst/largest first) when true.
    pub sort_desc: bool,
    /// Selected row per view.
    pub selected: [usize; 5],
    /// Target whose detail is open.
    pub detail: Option<String>,
    /// Filter text per view.
    pub filter: [String; 5],
    /// Deployments sort column.
    pub deployment_sort: DeploymentSort,
    /// Deployments sorted descending (worst/largest first) when true.
    pub deployment_sort_desc: bool,
    /// Typing a filter.
    pub editing_filter: bool,
    /// Merged recent errors, newest first.
    pub failures: Vec<FailureRow>,
    /// The registry, once read.
    pub registry: Option<Registry>,
    /// Why the registry could not be read.
    pub registry_error: Option<String>,
    /// The config version the registry was read at.
    pub registry_version: Option<u64>,
    /// Effective exports of the selected Deployment.
    pub effective: Option<Effective>,
    /// Status bar line.
    pub notice: Option<Notice>,
    /// A command waiting for `y` (pausing or resuming a target): any other
    /// key cancels it.
    pub confirm: Option<Command>,
}

/// Something the event loop has to do for the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Leave.
    Quit,
    /// Pause (`true`) or resume a target on the given gateways.
    Pause {
        /// Target id.
        id: String,
        /// Pause or resume.
        pause: bool,
        /// Gateway indexes.
        gateways: Vec<usize>,
    },
    /// Read the registry from this gateway.
    FetchRegistry(usize),
    /// Read a Deployment's effective exports from this gateway.
    FetchEffective(usize, String),
}

impl State {
    /// A console for these admin URLs.
    pub fn new<S: AsRef<str>>(urls: &[S], now_ms: i64) -> State {
        State {
            now_ms,
            gateways: urls
                .iter()
                .map(|u| Gateway::new(u.as_ref(), now_ms))
                .collect(),
            view: View::Overview,
            help: false,
            sort: SortKey::State,
            sort_desc: true,
            selected: [0; 5],
            detail: None,
            filter: Default::default(),
            deployment_sort: DeploymentSort::State,
            deployment_sort_desc: true,
            editing_filter: false,
            failures: Vec::new(),
            registry: None,
            registry_error: None,
            registry_version: None,
            effective: None,
            notice: None,
            confirm: None,
        }
    }

    /// The stream of gateway `gw` is being opened.
    pub fn on_connecting(&mut self, gw: usize) {
        let now = self.now_ms;
        if let Some(g) = self.gateways.get_mut(gw) {
            if let Link::Connected { .. } = g.link {
                g.link = Link::Connecting { since_ms: now };
            }
        }
    }

    /// A snapshot arrived from gateway `gw`.
    pub fn on_stats(&mut self, gw: usize, snap: Snapshot) -> Vec<Command> {
        let now = self.now_ms;
        let Some(g) = self.gateways.get_mut(gw) else {
            return Vec::new();
        };
        if let Link::Disconnected { since_ms, .. } = g.link {
            g.reconnected = Some((now, (now - since_ms) as f64 / 1000.0));
        }
        if !g.is_connected() {
            g.link = Link::Connected { since_ms: now };
        }
        g.data_error = None;
        let version = snap.config_version;
        for e in &snap.recent_errors {
            let target = snap
                .targets
                .iter()
                .find(|t| t.id == e.target_id)
                .and_then(|t| {
                    crate::api::target_label(
                        t.feeds
                            .iter()
                            .map(|f| (f.export_id.as_str(), f.deployment_id.as_str())),
                    )
                })
                .unwrap_or_else(|| e.target_id.clone());
            let row = FailureRow {
                time_ms: fmt::parse_time_ms(&e.time),
                gateway: gw,
                target_id: e.target_id.clone(),
                target,
                status: e.status,
                message: fmt::one_line(&e.message),
            };
            if !self.failures.contains(&row) {
                self.failures.push(row);
            }
        }
        self.failures
            .sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then(a.gateway.cmp(&b.gateway)));
        self.failures.truncate(MAX_FAILURES);
        g.apply(snap, now);
        let mut cmds = Vec::new();
        if self.registry_version != Some(version) {
            self.registry_version = Some(version);
            cmds.push(Command::FetchRegistry(gw));
            if let Some(e) = &self.effective {
                cmds.push(Command::FetchEffective(gw, e.deployment.clone()));
            }
        }
        cmds
    }

    /// Gateway `gw` sent something unreadable.
    pub fn on_bad_data(&mut self, gw: usize, error: String) {
        if let Some(g) = self.gateways.get_mut(gw) {
            g.data_error = Some(error);
        }
    }

    /// The stream of gateway `gw` failed; the next attempt is at `retry_at_ms`.
    pub fn on_disconnected(&mut self, gw: usize, error: String, retry_at_ms: i64) {
        let now = self.now_ms;
        if let Some(g) = self.gateways.get_mut(gw) {
            let since_ms = match g.link {
                Link::Disconnected { since_ms, .. } => since_ms,
                Link::Connecting { since_ms } if g.snapshot.is_none() => since_ms,
                _ => now,
            };
            g.link = Link::Disconnected {
                since_ms,
                error: fmt::one_line(&error),
                retry_at_ms,
            };
            g.reconnected = None;
        }
    }

    /// A pause or resume answered with the target's new state.
    pub fn on_target(&mut self, gw: usize, target: Target) {
        let Some(snap) = self.gateways.get_mut(gw).and_then(|g| g.snapshot.as_mut()) else {
            return;
        };
        match snap.targets.iter_mut().find(|t| t.id == target.id) {
            Some(t) => *t = target,
            None => snap.targets.push(target),
        }
    }

    /// The registry was read (or not).
    pub fn on_registry(&mut self, result: Result<Registry, String>) {
        match result {
            Ok(r) => {
                self.registry = Some(r);
                self.registry_error = None;
            }
            Err(e) => {
                self.registry_error = Some(e);
                // Read again with the next snapshot.
                self.registry_version = None;
            }
        }
    }

    /// Effective exports of a Deployment were read (or not).
    pub fn on_effective(
        &mut self,
        deployment: String,
        result: Result<Vec<EffectiveExport>, String>,
    ) {
        self.effective = Some(Effective { deployment, result });
    }

    /// Sets the status bar line.
    pub fn notify(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            at_ms: self.now_ms,
            text: fmt::one_line(&text.into()),
            error,
        });
    }

    /// Index of the first connected gateway.
    pub fn first_connected(&self) -> Option<usize> {
        self.gateways.iter().position(Gateway::is_connected)
    }

    /// Rates summed over the connected gateways.
    pub fn total_rates(&self) -> Rates {
        let mut r = Rates::default();
        for g in self.gateways.iter().filter(|g| g.is_connected()) {
            r.add(&g.rates);
        }
        r
    }

    /// History summed over gateways, per second.
    pub fn total_history(&self) -> BTreeMap<i64, Rates> {
        let mut out: BTreeMap<i64, Rates> = BTreeMap::new();
        for g in &self.gateways {
            for (s, r) in &g.history {
                out.entry(*s).or_default().add(r);
            }
        }
        out
    }

    /// A target's history summed over gateways, per second.
    pub fn target_history(&self, id: &str) -> BTreeMap<i64, TargetPoint> {
        let mut out: BTreeMap<i64, TargetPoint> = BTreeMap::new();
        for g in &self.gateways {
            if let Some(h) = g.target_history.get(id) {
                for (s, p) in h {
                    let e = out.entry(*s).or_default();
                    e.rate += p.rate;
                    e.backlog += p.backlog;
                    e.failures += p.failures;
                }
            }
        }
        out
    }

    /// Every target merged over the gateways, unfiltered, by id.
    pub fn all_targets(&self) -> Vec<TargetRow> {
        let mut rows: BTreeMap<String, TargetRow> = BTreeMap::new();
        for (gi, g) in self.gateways.iter().enumerate() {
            let Some(snap) = &g.snapshot else { continue };
            for t in &snap.targets {
                let row = rows.entry(t.id.clone()).or_insert_with(|| TargetRow {
                    id: t.id.clone(),
                    endpoint: t.endpoint.clone(),
                    state: t.state.clone(),
                    paused: true,
                    ..TargetRow::default()
                });
                if state_rank(&t.state) > state_rank(&row.state) {
                    row.state = t.state.clone();
                }
                if row.protocol.is_empty() || t.protocol.contains("fallback") {
                    row.protocol = t.protocol.clone();
                }
                row.paused &= t.paused || t.state == "paused";
                row.queue_bytes += t.queue_bytes as f64;
                row.queue_samples += t.queue_samples as f64;
                row.spill_bytes += t.spill_bytes as f64;
                row.oldest_queued_seconds = row.oldest_queued_seconds.max(t.oldest_queued_seconds);
                // A lost gateway's last rate is not a rate any more.
                if g.is_connected() {
                    row.rate += g.target_rates.get(&t.id).copied().unwrap_or(0.0);
                }
                row.samples_sent += t.samples_sent as f64;
                row.bytes_sent += t.bytes_sent as f64;
                row.requests_sent += t.requests_sent as f64;
                row.retries += t.retries as f64;
                for (k, v) in &t.failures {
                    *row.failures.entry(k.clone()).or_default() += *v as f64;
                }
                for (k, v) in &t.dropped {
                    *row.dropped.entry(k.clone()).or_default() += *v as f64;
                }
                keep_newest(&mut row.last_error, &t.last_error);
                row.p50 = row.p50.max(t.latency_ms.p50);
                row.p90 = row.p90.max(t.latency_ms.p90);
                row.p99 = row.p99.max(t.latency_ms.p99);
                row.max = row.max.max(t.latency_ms.max);
                row.concurrency += f64::from(t.concurrency);
                row.in_flight += f64::from(t.in_flight);
                row.feeds.extend(t.feeds.iter().cloned());
                row.gateways.push(gi);
            }
        }
        rows.into_values().collect()
    }

    /// The Targets table: filtered by the Targets filter and sorted.
    pub fn targets(&self) -> Vec<TargetRow> {
        let filter = self.filter[View::Targets.index()].to_lowercase();
        let mut rows: Vec<TargetRow> = self
            .all_targets()
            .into_iter()
            .filter(|r| {
                filter.is_empty()
                    || [
                        r.id.as_str(),
                        r.endpoint.as_str(),
                        r.state.as_str(),
                        r.last_error.as_ref().map_or("", |e| e.message.as_str()),
                    ]
                    .iter()
                    .any(|s| s.to_lowercase().contains(&filter))
                    || r.feeds.iter().any(|f| {
                        f.export_id.to_lowercase().contains(&filter)
                            || f.deployment_id.to_lowercase().contains(&filter)
                    })
            })
            .collect();
        let key = self.sort;
        rows.sort_by(|a, b| {
            let ord = match key {
                SortKey::State => state_rank(&a.state).cmp(&state_rank(&b.state)),
                SortKey::Rate => a.rate.total_cmp(&b.rate),
                SortKey::Backlog => {
                    (a.queue_bytes + a.spill_bytes).total_cmp(&(b.queue_bytes + b.spill_bytes))
                }
                SortKey::Failures => a.failures_total().total_cmp(&b.failures_total()),
                SortKey::P99 => a.p99.total_cmp(&b.p99),
                SortKey::Id => b.id.cmp(&a.id),
            };
            let ord = if self.sort_desc { ord.reverse() } else { ord };
            ord.then_with(|| a.id.cmp(&b.id))
        });
        rows
    }

    /// The Failures view: filtered, newest first.
    pub fn failure_rows(&self) -> Vec<&FailureRow> {
        let filter = self.filter[View::Failures.index()].to_lowercase();
        self.failures
            .iter()
            .filter(|f| {
                filter.is_empty()
                    || f.target_id.to_lowercase().contains(&filter)
                    || f.target.to_lowercase().contains(&filter)
                    || f.message.to_lowercase().contains(&filter)
                    || f.status.is_some_and(|s| format!("{s}").contains(&filter))
                    || self
                        .gateways
                        .get(f.gateway)
                        .is_some_and(|g| g.name().to_lowercase().contains(&filter))
            })
            .collect()
    }

    /// The Config tree: Workspaces → exports (links, exclusions) → Deployments,
    /// then Deployments without a known Workspace, then clusters. Filtered by
    /// the Config filter (a row matches with its ancestors shown).
    pub fn config_rows(&self) -> Vec<ConfigRow> {
        let Some(reg) = &self.registry else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        let push = |rows: &mut Vec<ConfigRow>, depth: u8, text: String, item: ConfigItem| {
            rows.push(ConfigRow { depth, text, item });
        };
        let deployment_row = |d: &crate::api::Deployment| {
            let mut t = format!("Deployment {} {} {}", d.id, d.kind, d.name);
            t = t.trim_end().to_owned();
            if !d.cluster_id.is_empty() || !d.namespace.is_empty() {
                t.push_str(&format!(" @{}/{}", d.cluster_id, d.namespace));
            }
            t
        };
        let export_row = |e: &crate::api::MetricsExport| {
            let mode = if e.scope == "DEPLOYMENT" {
                "own".to_owned()
            } else if e.auto_link_deployments {
                "linked to all".to_owned()
            } else {
                "restricted".to_owned()
            };
            let endpoint = e
                .metrics_export
                .get("endpoint")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            format!("export {} [{mode}] → {endpoint}", e.id)
        };
        for ws in &reg.workspaces {
            let mut t = format!("Workspace {}", ws.id);
            if !ws.name.is_empty() {
                t.push_str(&format!(" \"{}\"", ws.name));
            }
            if !ws.organization_id.is_empty() {
                t.push_str(&format!(" org {}", ws.organization_id));
            }
            push(&mut rows, 0, t, ConfigItem::Workspace(ws.id.clone()));
            for (ei, e) in reg.metrics_exports.iter().enumerate() {
                if e.scope != "WORKSPACE" || e.scope_entity_id != ws.id {
                    continue;
                }
                push(&mut rows, 1, export_row(e), ConfigItem::Export(ei));
                for (li, l) in e.links.iter().enumerate() {
                    let fields = l.override_fields();
                    let t = if fields.is_empty() {
                        format!("link {}", l.scope_entity_id)
                    } else {
                        format!("link {} overrides {}", l.scope_entity_id, fields.join(", "))
                    };
                    push(&mut rows, 2, t, ConfigItem::Link(ei, Some(li)));
                }
                for l in &e.exclude_links {
                    push(
                        &mut rows,
                        2,
                        format!("exclude {}", l.scope_entity_id),
                        ConfigItem::Link(ei, None),
                    );
                }
            }
            for d in reg.deployments.iter().filter(|d| d.workspace_id == ws.id) {
                push(
                    &mut rows,
                    1,
                    deployment_row(d),
                    ConfigItem::Deployment(d.id.clone()),
                );
                for (ei, e) in reg.metrics_exports.iter().enumerate() {
                    if e.scope == "DEPLOYMENT" && e.scope_entity_id == d.id {
                        push(&mut rows, 2, export_row(e), ConfigItem::Export(ei));
                    }
                }
            }
        }
        let known: BTreeSet<&str> = reg.workspaces.iter().map(|w| w.id.as_str()).collect();
        let orphans: Vec<_> = reg
            .deployments
            .iter()
            .filter(|d| !known.contains(d.workspace_id.as_str()))
            .collect();
        if !orphans.is_empty() {
            push(
                &mut rows,
                0,
                "Deployments of unknown Workspaces".into(),
                ConfigItem::Heading,
            );
            for d in orphans {
                push(
                    &mut rows,
                    1,
                    deployment_row(d),
                    ConfigItem::Deployment(d.id.clone()),
                );
            }
        }
        if !reg.clusters.is_empty() {
            push(&mut rows, 0, "Clusters".into(), ConfigItem::Heading);
            for (ci, c) in reg.clusters.iter().enumerate() {
                push(
                    &mut rows,
                    1,
                    format!(
                        "{} {}/{} org {}",
                        c.id, c.cloud_provider, c.cloud_region, c.organization_id
                    ),
                    ConfigItem::Cluster(ci),
                );
            }
        }
        let filter = self.filter[View::Config.index()].to_lowercase();
        if filter.is_empty() {
            return rows;
        }
        // Keep matching rows and their ancestors.
        let mut keep = vec![false; rows.len()];
        for i in 0..rows.len() {
            if rows[i].text.to_lowercase().contains(&filter) {
                keep[i] = true;
                let mut depth = rows[i].depth;
                for j in (0..i).rev() {
                    if rows[j].depth < depth {
                        keep[j] = true;
                        depth = rows[j].depth;
                    }
                }
            }
        }
        rows.into_iter()
            .zip(keep)
            .filter_map(|(r, k)| k.then_some(r))
            .collect()
    }

    /// Number of rows the current view's selection moves over.
    pub fn row_count(&self) -> usize {
        match self.view {
            View::Overview => 0,
            View::Targets => self.targets().len(),
            View::Failures => self.failure_rows().len(),
            View::Config => self.config_rows().len(),
            View::Deployments => self.deployments().len(),
        }
    }

    /// The selected row of the current view, clamped to the rows there are.
    pub fn selection(&self) -> usize {
        let n = self.row_count();
        self.selected[self.view.index()].min(n.saturating_sub(1))
    }

    /// The target under the selection (or the open detail).
    pub fn selected_target(&self) -> Option<TargetRow> {
        let rows = self.targets();
        if let Some(id) = &self.detail {
            return self.all_targets().into_iter().find(|r| &r.id == id);
        }
        let i = self.selected[View::Targets.index()].min(rows.len().saturating_sub(1));
        rows.into_iter().nth(i)
    }

    /// Every Deployment with exports, merged over the gateways (counts
    /// added, the worst state, the largest lag, the newest error), by id.
    pub fn all_deployments(&self) -> Vec<DeploymentRow> {
        let mut rows: BTreeMap<String, DeploymentRow> = BTreeMap::new();
        for g in &self.gateways {
            let Some(snap) = &g.snapshot else { continue };
            for d in &snap.deployments {
                let row = rows.entry(d.id.clone()).or_insert_with(|| DeploymentRow {
                    id: d.id.clone(),
                    cluster_id: d.cluster_id.clone(),
                    state: d.state.clone(),
                    ..DeploymentRow::default()
                });
                row.exports = row.exports.max(d.exports);
                if export_state_rank(&d.state) > export_state_rank(&row.state) {
                    row.state = d.state.clone();
                }
                // A lost gateway's last minute is not a rate any more.
                if g.is_connected() {
                    row.rate += d.samples_delivered_1m as f64 / 60.0;
                    for (k, v) in &d.samples_dropped_1m {
                        *row.dropped.entry(k.clone()).or_default() += *v as f64;
                    }
                }
                row.lag = row.lag.max(d.oldest_undelivered_seconds);
                keep_newest(&mut row.last_error, &d.last_error);
            }
        }
        rows.into_values().collect()
    }

    /// The Deployments table: filtered by its filter and sorted.
    pub fn deployments(&self) -> Vec<DeploymentRow> {
        let filter = self.filter[View::Deployments.index()].to_lowercase();
        let mut rows: Vec<DeploymentRow> = self
            .all_deployments()
            .into_iter()
            .filter(|r| {
                filter.is_empty()
                    || [
                        r.id.as_str(),
                        r.cluster_id.as_str(),
                        r.state.as_str(),
                        r.last_error.as_ref().map_or("", |e| e.message.as_str()),
                    ]
                    .iter()
                    .any(|s| s.to_lowercase().contains(&filter))
            })
            .collect();
        let key = self.deployment_sort;
        rows.sort_by(|a, b| {
            let ord = match key {
                DeploymentSort::State => {
                    export_state_rank(&a.state).cmp(&export_state_rank(&b.state))
                }
                DeploymentSort::Rate => a.rate.total_cmp(&b.rate),
                DeploymentSort::Drops => a.dropped_total().total_cmp(&b.dropped_total()),
                DeploymentSort::Lag => a.lag.total_cmp(&b.lag),
                DeploymentSort::Id => b.id.cmp(&a.id),
            };
            let ord = if self.deployment_sort_desc {
                ord.reverse()
            } else {
                ord
            };
            ord.then_with(|| a.id.cmp(&b.id))
        });
        rows
    }

    /// The Deployment under the selection of the Deployments view.
    pub fn selected_deployment(&self) -> Option<DeploymentRow> {
        let rows = self.deployments();
        let i = self.selected[View::Deployments.index()].min(rows.len().saturating_sub(1));
        rows.into_iter().nth(i)
    }

    /// The Config row under the selection.
    pub fn selected_config(&self) -> Option<ConfigRow> {
        let rows = self.config_rows();
        let i = self.selected[View::Config.index()].min(rows.len().saturating_sub(1));
        rows.into_iter().nth(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_named_by_its_exports_and_deployment_count() {
        let feed = |e: &str, d: &str| Feed {
            export_id: e.into(),
            deployment_id: d.into(),
            cluster_id: "c".into(),
        };
        let mut t = TargetRow {
            id: "0123456789abcdef".into(),
            ..TargetRow::default()
        };
        assert_eq!(t.name(), "0123456789abcdef", "nothing feeds it: its id");
        t.feeds = [feed("prom", "d1"), feed("prom", "d2"), feed("mimir", "d1")].into();
        assert_eq!(t.name(), "mimir,prom ·2");
        assert_eq!(t.name_within(8), "mimi… ·2", "the count stays when cut");
    }

    fn snap(time: &str, uptime: f64, samples_in: f64, sent: f64, state: &str) -> Snapshot {
        let doc = serde_json::json!({
            "time": time, "uptimeSeconds": uptime, "gateway": "gw-a:9556", "configVersion": 3,
            "ready": true,
            "ingest": {"samples": samples_in as u64, "bytes": (samples_in * 2.0) as u64,
                       "requests": {"http1": {"204": (samples_in / 100.0) as u64}}},
            "out": {"samples": sent as u64, "bytes": sent as u64},
            "targets": [{"id": "t-1", "endpoint": "http://a/w", "state": state,
                          "samplesSent": sent as u64, "requestsSent": 1, "failures": {"503": 1}}],
            "recentErrors": [{"time": time, "targetId": "t-1", "status": 503, "message": "down\nhard"}]
        });
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn rates_come_from_consecutive_snapshots() {
        let mut s = State::new(&["http://127.0.0.1:9556"], 0);
        let c = s.on_stats(
            0,
            snap("2026-11-25T13:00:00Z", 10.0, 1000.0, 500.0, "healthy"),
        );
        assert_eq!(c, vec![Command::FetchRegistry(0)]);
        assert_eq!(s.total_rates(), Rates::default());
        let c = s.on_stats(
            0,
            snap("2026-11-25T13:00:02Z", 12.0, 5000.0, 2500.0, "healthy"),
        );
        assert!(c.is_empty(), "same config version: no refetch");
        let r = s.total_rates();
        assert_eq!(r.samples_in, 2000.0);
        assert_eq!(r.samples_out, 1000.0);
        assert_eq!(s.targets()[0].rate, 1000.0);
        assert_eq!(s.total_history().len(), 1);
        // Errors are merged without duplicates, on one line.
        assert_eq!(s.failures.len(), 2);
        assert_eq!(s.failures[0].message, "down hard");
    }

    #[test]
    fn a_restart_resets_rates_instead_of_going_negative() {
        let mut s = State::new(&["http://x"], 0);
        s.on_stats(
            0,
            snap("2026-11-25T13:00:00Z", 100.0, 1000.0, 500.0, "healthy"),
        );
        s.on_stats(0, snap("2026-11-25T13:00:01Z", 1.0, 10.0, 5.0, "healthy"));
        assert_eq!(s.total_rates(), Rates::default());
    }

    #[test]
    fn disconnect_keeps_the_first_failure_time_and_reconnect_says_so() {
        let mut s = State::new(&["http://x"], 1_000);
        s.on_stats(0, snap("2026-11-25T13:00:00Z", 1.0, 0.0, 0.0, "healthy"));
        s.now_ms = 5_000;
        s.on_disconnected(0, "connection refused".into(), 5_500);
        s.now_ms = 6_000;
        s.on_disconnected(0, "connection refused".into(), 7_000);
        assert!(matches!(
            s.gateways[0].link,
            Link::Disconnected {
                since_ms: 5_000,
                ..
            }
        ));
        assert_eq!(s.total_rates(), Rates::default());
        s.now_ms = 9_000;
        s.on_stats(0, snap("2026-11-25T13:00:09Z", 1.0, 0.0, 0.0, "healthy"));
        assert_eq!(s.gateways[0].reconnected, Some((9_000, 4.0)));
    }

    #[test]
    fn targets_merge_over_gateways_with_the_worst_state() {
        let mut s = State::new(&["http://a", "http://b"], 0);
        s.on_stats(0, snap("2026-11-25T13:00:00Z", 1.0, 0.0, 10.0, "healthy"));
        s.on_stats(1, snap("2026-11-25T13:00:00Z", 1.0, 0.0, 20.0, "failing"));
        let rows = s.targets();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, "failing");
        assert_eq!(rows[0].samples_sent, 30.0);
        assert_eq!(rows[0].gateways, vec![0, 1]);
        assert!(!rows[0].paused);
    }
}
