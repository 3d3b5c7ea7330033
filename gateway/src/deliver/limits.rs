//! Active-series limits of clusters and Deployments (`limits.series`, or
//! `--cluster-series` / `--deployment-series` for those without their own).
//!
//! # Design
//! Per limited cluster or Deployment, a table of the series it delivered in
//! the last [`ACTIVE_MINUTES`] minutes, keyed by the series' lane hash (64
//! bits over its label bytes, which routing computes anyway: nothing more is
//! hashed), with the minute each was last seen. A series in the table
//! passes; a new one passes while the table holds fewer series than the
//! limit, else it is dropped and counted `series_limit`. So a cluster or
//! Deployment over its limit keeps its existing series flowing and loses
//! only new ones. Once a minute a table forgets the series not seen for
//! [`ACTIVE_MINUTES`], so a Deployment whose pods come and go is not locked
//! out by series that no longer exist.
//!
//! Approximate, bounded: two series with the same 64-bit hash count as one,
//! and a table holds at most its limit of entries (12 bytes each). Only
//! limited clusters and Deployments have a table, so an unlimited gateway
//! pays one branch per series; a limited request takes the lock once.
//! A series of a Deployment is checked against the Deployment's limit and
//! its cluster's; when the cluster's refuses it, the Deployment's table does
//! not keep it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::registry::{ClusterInfo, DeploymentInfo};

/// How long a series stays active without a sample.
pub const ACTIVE_MINUTES: u32 = 10;

type ById = HashMap<String, Table, foldhash::fast::RandomState>;

/// The tables, by cluster id and by Deployment id.
#[derive(Debug, Default)]
struct Tables {
    clusters: ById,
    deployments: ById,
}

/// The tables of every limited cluster and Deployment.
#[derive(Debug)]
pub struct SeriesLimits {
    cluster_default: Option<u64>,
    deployment_default: Option<u64>,
    started: Instant,
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Table {
    /// Series hash → the minute it was last seen.
    seen: HashMap<u64, u32, foldhash::fast::RandomState>,
    swept: u32,
    /// Samples of new series dropped, since the start.
    dropped_samples: u64,
}

/// The table of `id`, made on first use.
fn table<'t>(tables: &'t mut ById, id: &str) -> &'t mut Table {
    if !tables.contains_key(id) {
        tables.insert(id.to_owned(), Table::default());
    }
    tables.get_mut(id).expect("inserted above")
}

/// What a limited cluster's or Deployment's status shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeriesStatus {
    /// The limit in force.
    pub limit: u64,
    /// Series seen in the last [`ACTIVE_MINUTES`] minutes.
    pub active: u64,
    /// Samples of new series dropped for the limit (since the start).
    pub dropped_samples: u64,
}

impl SeriesStatus {
    /// As the API shows it.
    pub fn api(self) -> fanout_proto::api::SeriesLimitStatus {
        fanout_proto::api::SeriesLimitStatus {
            limit: self.limit,
            active: self.active,
            dropped_samples: self.dropped_samples,
        }
    }
}

/// The lock of one request's checks, taken at its first limited series.
pub struct Checks<'a> {
    limits: &'a SeriesLimits,
    held: Option<MutexGuard<'a, Tables>>,
    minute: u32,
}

impl SeriesLimits {
    /// Limits with these defaults for clusters and Deployments without
    /// `limits.series` of their own.
    pub fn new(cluster_default: Option<u64>, deployment_default: Option<u64>) -> SeriesLimits {
        SeriesLimits {
            cluster_default,
            deployment_default,
            started: Instant::now(),
            tables: Mutex::default(),
        }
    }

    /// The limit in force for `cluster`.
    pub fn cluster_limit(&self, cluster: &ClusterInfo) -> Option<u64> {
        cluster.limits.series.or(self.cluster_default)
    }

    /// The limit in force for `deployment`.
    pub fn deployment_limit(&self, deployment: &DeploymentInfo) -> Option<u64> {
        deployment.limits.series.or(self.deployment_default)
    }

    /// The checks of one request at `now`.
    pub fn checks(&self, now: Instant) -> Checks<'_> {
        Checks {
            limits: self,
            held: None,
            minute: (now.saturating_duration_since(self.started).as_secs() / 60) as u32,
        }
    }

    /// The state of `deployment`'s limit, when one is in force (before its
    /// first series: nothing active, nothing dropped).
    pub fn deployment_status(&self, deployment: &DeploymentInfo) -> Option<SeriesStatus> {
        let limit = self.deployment_limit(deployment)?;
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        Some(Table::status(tables.deployments.get(&deployment.id), limit))
    }

    /// The state of `cluster`'s limit, when one is in force.
    pub fn cluster_status(&self, cluster: &ClusterInfo) -> Option<SeriesStatus> {
        let limit = self.cluster_limit(cluster)?;
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        Some(Table::status(tables.clusters.get(&cluster.id), limit))
    }
}

impl Checks<'_> {
    /// Whether series `hash` of `deployment` (with `samples` samples) passes
    /// the Deployment's and its cluster's limits; counts it where it does
    /// not. Without a limit in force it passes at once, without the lock.
    pub fn admit(&mut self, deployment: &DeploymentInfo, hash: u64, samples: u64) -> bool {
        let limits = self.limits;
        let (deployment_limit, cluster_limit) = (
            limits.deployment_limit(deployment),
            limits.cluster_limit(&deployment.cluster),
        );
        if deployment_limit.is_none() && cluster_limit.is_none() {
            return true;
        }
        let minute = self.minute;
        let tables = self
            .held
            .get_or_insert_with(|| limits.tables.lock().unwrap_or_else(|p| p.into_inner()));
        // The Deployment's table, then its cluster's; a table is made (its
        // key allocated) once, on its first series.
        let Tables {
            clusters,
            deployments,
        } = &mut **tables;
        let mut which = [
            deployment_limit.map(|l| (table(deployments, &deployment.id), l)),
            cluster_limit.map(|l| (table(clusters, &deployment.cluster.id), l)),
        ];
        // Refused by either: counted there, and kept by neither.
        for (t, limit) in which.iter_mut().flatten() {
            t.sweep(minute);
            if !t.seen.contains_key(&hash) && t.seen.len() as u64 >= *limit {
                t.dropped_samples += samples;
                return false;
            }
        }
        for (t, _) in which.iter_mut().flatten() {
            t.seen.insert(hash, minute);
        }
        true
    }
}

impl Table {
    /// The status of a limit of `limit` whose table is `t` (none yet: empty).
    fn status(t: Option<&Table>, limit: u64) -> SeriesStatus {
        SeriesStatus {
            limit,
            active: t.map_or(0, |t| t.seen.len() as u64),
            dropped_samples: t.map_or(0, |t| t.dropped_samples),
        }
    }

    /// Forgets the series not seen for [`ACTIVE_MINUTES`], at most once a minute.
    fn sweep(&mut self, minute: u32) {
        if minute == self.swept {
            return;
        }
        self.swept = minute;
        self.seen
            .retain(|_, last| minute.saturating_sub(*last) < ACTIVE_MINUTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::DeploymentType;
    use crate::registry::Limits;
    use std::sync::Arc;
    use std::time::Duration;

    fn deployment(cluster_series: Option<u64>) -> DeploymentInfo {
        DeploymentInfo {
            id: "d".into(),
            workspace_id: "w".into(),
            organization_id: "o".into(),
            namespace: "ns".into(),
            name: String::new(),
            kind: DeploymentType::Hosted,
            limits: Limits::default(),
            cluster: Arc::new(ClusterInfo {
                id: "c".into(),
                samples_metric: Default::default(),
                organization_id: "o".into(),
                cloud_provider: "aws".into(),
                cloud_region: "r".into(),
                limits: Limits {
                    samples_per_second: None,
                    series: cluster_series,
                },
            }),
            targets: Vec::new(),
        }
    }

    #[test]
    fn deliver_limits_keep_known_series_drop_new_ones_and_forget_idle_ones() {
        let l = SeriesLimits::new(None, Some(2));
        let d = deployment(None);
        let t0 = Instant::now();
        let admit = |at: Instant, hash: u64| l.checks(at).admit(&d, hash, 3);
        assert!(admit(t0, 1));
        assert!(admit(t0, 2));
        assert!(!admit(t0, 3), "a third series is over the limit");
        assert!(admit(t0, 1), "a known series keeps flowing");
        let s = l.deployment_status(&d).unwrap();
        assert_eq!((s.limit, s.active, s.dropped_samples), (2, 2, 3));
        // Series 2 goes idle; 1 stays active.
        assert!(admit(t0 + Duration::from_secs(6 * 60), 1));
        let later = t0 + Duration::from_secs(12 * 60);
        assert!(admit(later, 3), "room once series 2 was forgotten");
        assert!(!admit(later, 2));
        assert_eq!(l.deployment_status(&d).unwrap().active, 2);
    }

    #[test]
    fn deliver_limits_without_a_limit_everything_passes_and_nothing_is_kept() {
        let l = SeriesLimits::new(None, None);
        let d = deployment(None);
        let mut checks = l.checks(Instant::now());
        assert!((0..10).all(|h| checks.admit(&d, h, 1)));
        assert!(checks.held.is_none(), "no lock without a limit");
        drop(checks);
        assert_eq!(l.deployment_status(&d), None);
        // A limit in force before any series shows as empty.
        let l = SeriesLimits::new(None, Some(5));
        assert_eq!(
            l.deployment_status(&d),
            Some(SeriesStatus {
                limit: 5,
                ..SeriesStatus::default()
            })
        );
    }

    #[test]
    fn deliver_limits_a_series_refused_by_its_cluster_is_not_kept_by_its_deployment() {
        let l = SeriesLimits::new(None, None);
        let mut d = deployment(Some(1));
        d.limits.series = Some(10);
        let t0 = Instant::now();
        let mut checks = l.checks(t0);
        let cl = l.cluster_limit(&d.cluster);
        assert_eq!(cl, Some(1));
        assert!(checks.admit(&d, 7, 1));
        assert!(!checks.admit(&d, 8, 1));
        drop(checks);
        assert_eq!(l.deployment_status(&d).unwrap().active, 1);
        let c = l.cluster_status(&d.cluster).unwrap();
        assert_eq!((c.active, c.dropped_samples), (1, 1));
    }
}
