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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fanout_proto::api;

use super::StatusSource;
use crate::deliver::stats;
use crate::registry::store::{StatusRow, Store};
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

/// Writes this gateway's status of every (Deployment, target) pair of
/// `snapshot` to `store` (a shared one; nothing otherwise).
pub async fn report(
    store: &Arc<dyn Store>,
    source: &dyn StatusSource,
    snapshot: &Snapshot,
    gateway: &str,
) -> Result<usize, crate::registry::store::StoreError> {
    if !store.is_shared() {
        return Ok(0);
    }
    let mut rows = Vec::new();
    for d in snapshot.registry().deployments.values() {
        let Some(info) = snapshot.deployment(&d.cluster_id, &d.id) else {
            continue;
        };
        for t in &info.targets {
            let Some(status) = source.export_status(&d.id, &t.id.0) else {
                continue;
            };
            rows.push(StatusRow {
                gateway: gateway.to_owned(),
                deployment_id: d.id.clone(),
                target_id: t.id.0.clone(),
                reported_ms: 0,
                doc: serde_json::to_string(&status).unwrap_or_default(),
            });
        }
    }
    let n = rows.len();
    let now = now_ms();
    store
        .report_status(gateway, rows, now, now - EXPIRE_AFTER.as_millis() as i64)
        .await?;
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
