//! Delivery's answers to the Deployment and export API reads
//! ([`crate::admin::StatusSource`]): a Deployment's series limits, and how
//! each of its exports is going, from its target's state and the target's
//! accounting of that Deployment's samples ([`crate::deliver::accounting`]).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use fanout_proto::api;

use super::FanoutDelivery;
use crate::admin::StatusSource;
use crate::deliver::limits::SeriesStatus;
use crate::deliver::stats;
use crate::registry::Snapshot;

impl FanoutDelivery {
    /// Every Deployment with exports, its exports' status summed up (the
    /// stats snapshot's `deployments`, for the console).
    pub fn deployment_stats(&self, snapshot: &Snapshot) -> Vec<api::DeploymentStat> {
        let mut out = Vec::new();
        for d in snapshot.registry().deployments.values() {
            let Some(info) = snapshot.deployment(&d.cluster_id, &d.id) else {
                continue;
            };
            if info.targets.is_empty() {
                continue;
            }
            // Its exports' status summed up, as over the gateways.
            let mut all = api::ExportStatus {
                state: "waiting".into(),
                ..api::ExportStatus::default()
            };
            for t in &info.targets {
                if let Some(s) = self.export_status(&d.id, &t.id.0) {
                    all.absorb(&s);
                }
            }
            let stat = api::DeploymentStat {
                id: d.id.clone(),
                cluster_id: d.cluster_id.clone(),
                exports: info.targets.len() as u32,
                state: all.state,
                samples_delivered_1m: all.samples_delivered_1m,
                samples_dropped_1m: all.samples_dropped_1m,
                oldest_undelivered_seconds: all.oldest_undelivered_seconds,
                last_error: all.last_error,
            };
            out.push(stat);
        }
        out
    }
}

impl StatusSource for FanoutDelivery {
    fn limits(&self, deployment: &str, cluster: &str) -> Option<api::LimitsStatus> {
        let l = self.series_limits();
        let snapshot = self.snapshot();
        let info = snapshot.deployment(cluster, deployment)?;
        let status = api::LimitsStatus {
            series: l.deployment_status(info).map(SeriesStatus::api),
            cluster_series: l.cluster_status(&info.cluster).map(SeriesStatus::api),
        };
        (status.series.is_some() || status.cluster_series.is_some()).then_some(status)
    }

    fn export_status(&self, deployment: &str, target: &str) -> Option<api::ExportStatus> {
        let handle = self
            .inner
            .targets
            .lock()
            .ok()
            .and_then(|t| t.get(target).cloned())?;
        let owner = self.inner.owners.find(deployment);
        let (now, wall) = (Instant::now(), SystemTime::now());
        // The oldest data on disk counts too (as in `/api/v1/targets`).
        let (_, oldest_ms, _) = handle.spill_stats();
        let disk_age = oldest_ms.map_or(0.0, |t| {
            stats::wall_ms(wall).saturating_sub(t) as f64 / 1000.0
        });
        let core = handle.core.lock().ok()?;
        let pair = owner
            .and_then(|o| core.account(o, wall))
            .unwrap_or_default();
        // A target that answers but refuses everything of this Deployment
        // (its own credentials, say) is failing for it.
        let state = match core.state(now) {
            "healthy" if pair.accepted == 0 => "waiting",
            "healthy" if pair.sent_1m == 0 && pair.rejected_1m + pair.queue_full_1m > 0 => {
                "failing"
            }
            "healthy" => "delivering",
            other => other,
        };
        let reasons = |queue_full: u64, rejected: u64| -> BTreeMap<String, u64> {
            [("queue_full", queue_full), ("rejected", rejected)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_owned(), n))
                .collect()
        };
        Some(api::ExportStatus {
            state: state.to_owned(),
            last_success_at: pair.last_sent.map(stats::rfc3339),
            last_error: core.last_error().map(|e| api::LastError {
                time: stats::rfc3339(e.time),
                status: e.status,
                message: e.message.clone(),
            }),
            samples_delivered_1m: pair.sent_1m,
            samples_dropped_1m: reasons(pair.queue_full_1m, pair.rejected_1m),
            samples_delivered: pair.sent,
            samples_dropped: reasons(pair.queue_full, pair.rejected),
            samples_spilled: pair.spilled,
            oldest_undelivered_seconds: core.oldest_queued(now).as_secs_f64().max(disk_age),
            gateways: Vec::new(),
        })
    }
}
