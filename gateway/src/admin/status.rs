//! Export status across a fleet (issue 15): each gateway reports how every
//! (Deployment, target) pair is going into the shared store
//! ([`report`], every `--status-report-interval`), and any gateway's
//! Deployment and export API reads merge its own live state with the other
//! gateways' recent reports ([`fleet_status`]).
//!
//! # Merging
//! Counts add up (each gateway counts what it carried); `lastSuccessAt` is
//! the latest, `lastError` the newest, `oldestUndeliveredSeconds` the
//! largest. The state is the worst that any gateway carrying the
//! Deployment's data reports (`failing` > `retrying` > `paused` >
//! `delivering`); `waiting` only when every gateway is. `gateways` lists who
//! reported and when (this gateway: now). A report older than three
//! intervals is left out (a gateway that stopped), and any gateway deletes
//! rows older than [`EXPIRE_AFTER`].
//!
//! With a store of one gateway (SQLite) nothing is reported and the answer
//! is this gateway's own state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fanout_proto::api;

use super::StatusSource;
use crate::deliver::stats;
use crate::registry::store::{StatusReport, StatusRow, StatusUpsert, Store};
use crate::registry::Snapshot;

/// Rows not rewritten for this long are deleted.
pub const EXPIRE_AFTER: Duration = Duration::from_secs(300);

/// Who this gateway is and how often it reports.
#[derive(Clone, Debug)]
pub struct Reporting {
    /// This gateway's name (`host:admin-port`).
    pub gateway: String,
    /// How often each gateway reports.
    pub interval: Duration,
}

fn now_ms() -> i64 {
    stats::wall_ms(SystemTime::now()) as i64
}

fn rfc3339_ms(ms: i64) -> String {
    stats::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Rows a gateway writes per second at most (changed rows beyond it wait
/// for the next report, the longest-waiting first): with 10,000
/// Deployments each exporting somewhere, rewriting every row every 5 s was
/// 2,000 rows a second per gateway.
pub const MAX_ROWS_PER_SECOND: u64 = 150;

/// What this gateway last wrote, so that a report writes only the rows that
/// changed (the gateway's heartbeat keeps the others current).
#[derive(Debug, Default)]
pub struct Reported {
    /// Per (Deployment, target): the doc written, its state and error
    /// (what readers must see soon), and when.
    rows: HashMap<(String, String), Written>,
    /// A report went through since this gateway started.
    started: bool,
}

#[derive(Debug)]
struct Written {
    doc: String,
    urgent: String,
    at_ms: i64,
}

/// The part of a status that other gateways must see at the next report:
/// its state and last error (counts may wait).
fn urgent_part(s: &api::ExportStatus) -> String {
    let error = s.last_error.as_ref().map(|e| e.time.as_str()).unwrap_or("");
    format!("{} {error}", s.state)
}

impl Reported {
    /// The report of `current` (every pair this gateway has, with its
    /// status) at `now_ms`: pairs that are new or whose state or error
    /// changed, then pairs whose counts changed, longest unwritten first, at
    /// most `cap` rows; and the pairs that are gone. Call
    /// [`Self::written`] with it once the store took it.
    pub fn plan(
        &self,
        gateway: &str,
        current: Vec<((String, String), api::ExportStatus)>,
        cap: usize,
        now_ms: i64,
    ) -> Planned {
        let present: std::collections::HashSet<&(String, String)> =
            current.iter().map(|(k, _)| k).collect();
        let deletes = self
            .rows
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        // Ranked: urgent (new, or state or error changed) first, then the
        // longest unwritten.
        let mut changed: Vec<((bool, i64), StatusUpsert, String)> = Vec::new();
        for (key, status) in current {
            let doc = serde_json::to_string(&status).unwrap_or_default();
            let urgent = urgent_part(&status);
            let rank = match self.rows.get(&key) {
                None => (false, 0),
                Some(w) if w.doc == doc => continue,
                Some(w) => (w.urgent == urgent, w.at_ms),
            };
            let (d, t) = key;
            changed.push((rank, (d, t, doc), urgent));
        }
        changed.sort_by_key(|c| c.0);
        changed.truncate(cap);
        let (upserts, urgent) = changed.into_iter().map(|(_, row, u)| (row, u)).unzip();
        Planned {
            report: StatusReport {
                gateway: gateway.to_owned(),
                replace: !self.started,
                upserts,
                deletes,
                now_ms,
                expire_before_ms: now_ms - EXPIRE_AFTER.as_millis() as i64,
            },
            urgent,
        }
    }

    /// Records that the store took `planned`'s report.
    pub fn written(&mut self, planned: &Planned) {
        let report = &planned.report;
        if report.replace {
            self.rows.clear();
        }
        for key in &report.deletes {
            self.rows.remove(key);
        }
        for ((d, t, doc), urgent) in report.upserts.iter().zip(&planned.urgent) {
            self.rows.insert(
                (d.clone(), t.clone()),
                Written {
                    doc: doc.clone(),
                    urgent: urgent.clone(),
                    at_ms: report.now_ms,
                },
            );
        }
        self.started = true;
    }
}

/// A report to write, with the state and error part of each upsert
/// ([`Reported::plan`]).
#[derive(Debug)]
pub struct Planned {
    /// What the store is given.
    pub report: StatusReport,
    /// Per upsert, in order: its state and error.
    urgent: Vec<String>,
}

/// Writes to `store` (a shared one; nothing otherwise) what changed in this
/// gateway's status of every (Deployment, target) pair of `snapshot` since
/// `reported`, at most [`MAX_ROWS_PER_SECOND`] × `interval` rows. Returns
/// the rows written.
pub async fn report(
    store: &Arc<dyn Store>,
    source: &dyn StatusSource,
    snapshot: &Snapshot,
    reporting: &Reporting,
    reported: &mut Reported,
) -> Result<usize, crate::registry::store::StoreError> {
    if !store.is_shared() {
        return Ok(0);
    }
    let mut current = Vec::new();
    for d in snapshot.registry().deployments.values() {
        let Some(info) = snapshot.deployment(&d.cluster_id, &d.id) else {
            continue;
        };
        for t in &info.targets {
            if let Some(status) = source.export_status(&d.id, &t.id.0) {
                current.push(((d.id.clone(), t.id.0.clone()), status));
            }
        }
    }
    let cap = (MAX_ROWS_PER_SECOND as f64 * reporting.interval.as_secs_f64()).max(1.0) as usize;
    let planned = reported.plan(&reporting.gateway, current, cap, now_ms());
    let n = planned.report.upserts.len();
    store.report_status(planned.report.clone()).await?;
    reported.written(&planned);
    metrics::counter!(crate::deliver::stats::names::STATUS_ROWS_WRITTEN).increment(n as u64);
    Ok(n)
}

/// The other gateways' recent reports on Deployment `deployment` (all when
/// `None`); empty for a store of one gateway or when the store fails (the
/// answer is then this gateway's alone, and says so by its `gateways`).
pub async fn others(
    store: &Arc<dyn Store>,
    reporting: &Reporting,
    deployment: Option<&str>,
) -> Vec<StatusRow> {
    if !store.is_shared() {
        return Vec::new();
    }
    let since = now_ms() - 3 * reporting.interval.as_millis() as i64;
    match store.read_status(deployment, since).await {
        Ok(rows) => rows
            .into_iter()
            .filter(|r| r.gateway != reporting.gateway)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "export status: cannot read the fleet's reports; answering with this gateway's own");
            Vec::new()
        }
    }
}

/// This gateway's status of (`deployment`, `target`) merged with the
/// matching rows of `others`.
pub fn fleet_status(
    own: Option<api::ExportStatus>,
    reporting: &Reporting,
    deployment: &str,
    target: &str,
    others: &[StatusRow],
) -> Option<api::ExportStatus> {
    let mut parts: Vec<(String, String, api::ExportStatus)> = Vec::new();
    if let Some(own) = own {
        parts.push((reporting.gateway.clone(), rfc3339_ms(now_ms()), own));
    }
    for r in others
        .iter()
        .filter(|r| r.deployment_id == deployment && r.target_id == target)
    {
        if let Ok(s) = serde_json::from_str::<api::ExportStatus>(&r.doc) {
            parts.push((r.gateway.clone(), rfc3339_ms(r.reported_ms), s));
        }
    }
    merge(parts)
}

/// Merges the reports of several gateways (see the module docs).
fn merge(parts: Vec<(String, String, api::ExportStatus)>) -> Option<api::ExportStatus> {
    let mut it = parts.into_iter();
    let (gateway, at, mut all) = it.next()?;
    all.gateways = vec![api::GatewayReport {
        gateway,
        reported_at: at,
    }];
    for (gateway, at, s) in it {
        all.absorb(&s);
        all.gateways.push(api::GatewayReport {
            gateway,
            reported_at: at,
        });
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, delivered: u64, error_at: Option<&str>) -> api::ExportStatus {
        api::ExportStatus {
            state: state.into(),
            samples_delivered_1m: delivered,
            samples_delivered: delivered,
            samples_dropped_1m: [("rejected".to_owned(), 1)].into(),
            last_error: error_at.map(|t| api::LastError {
                time: t.into(),
                status: Some(401),
                message: format!("at {t}"),
            }),
            oldest_undelivered_seconds: delivered as f64,
            ..api::ExportStatus::default()
        }
    }

    fn pair(d: &str) -> (String, String) {
        (d.to_owned(), "t".to_owned())
    }

    #[test]
    fn admin_status_reports_write_what_changed_state_first_within_the_cap() {
        let mut reported = Reported::default();
        let all = |n: u64| -> Vec<((String, String), api::ExportStatus)> {
            ["a", "b", "c", "d"]
                .iter()
                .map(|d| (pair(d), status("delivering", n, None)))
                .collect()
        };
        // The first report replaces the gateway's rows and writes all.
        let first = reported.plan("g", all(1), 10, 1_000);
        assert!(first.report.replace && first.report.deletes.is_empty());
        assert_eq!(first.report.upserts.len(), 4);
        reported.written(&first);
        // Nothing changed: the heartbeat alone.
        let idle = reported.plan("g", all(1), 10, 2_000);
        assert!(
            !idle.report.replace
                && idle.report.upserts.is_empty()
                && idle.report.deletes.is_empty()
        );
        // Counts changed everywhere and "c" started failing: "c" first, then
        // the others up to the cap.
        let mut now = all(2);
        now[2].1 = status("failing", 2, Some("2026-01-01T00:00:09Z"));
        let busy = reported.plan("g", now.clone(), 2, 3_000);
        let keys: Vec<&str> = busy.report.upserts.iter().map(|u| u.0.as_str()).collect();
        assert_eq!(keys, ["c", "a"]);
        reported.written(&busy);
        // The rows left out come next, longest unwritten first; "d" is gone.
        now.pop();
        let next = reported.plan("g", now, 2, 4_000);
        let keys: Vec<&str> = next.report.upserts.iter().map(|u| u.0.as_str()).collect();
        assert_eq!(keys, ["b"]);
        assert_eq!(next.report.deletes, vec![pair("d")]);
        reported.written(&next);
        assert!(!reported.rows.contains_key(&pair("d")));
    }

    #[test]
    fn admin_status_merges_gateways_worst_state_newest_error_summed_counts() {
        let all = merge(vec![
            (
                "a".into(),
                "t1".into(),
                status("delivering", 10, Some("2026-01-01T00:00:01Z")),
            ),
            (
                "b".into(),
                "t2".into(),
                status("failing", 5, Some("2026-01-01T00:00:09Z")),
            ),
            ("c".into(), "t3".into(), status("waiting", 0, None)),
        ])
        .unwrap();
        assert_eq!(all.state, "failing");
        assert_eq!(all.samples_delivered_1m, 15);
        assert_eq!(all.samples_dropped_1m["rejected"], 3);
        assert_eq!(all.last_error.unwrap().message, "at 2026-01-01T00:00:09Z");
        assert_eq!(all.oldest_undelivered_seconds, 10.0);
        let gws: Vec<&str> = all.gateways.iter().map(|g| g.gateway.as_str()).collect();
        assert_eq!(gws, ["a", "b", "c"]);
        assert!(merge(Vec::new()).is_none());
    }
}
