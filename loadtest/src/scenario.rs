//! The simulated fleet: clusters, their Deployments and the series each
//! Deployment's agent sends, after `reference/metric-catalog.md`.
//!
//! Everything here is a pure function of [`Scenario`]: a generator and a sink
//! (or a test building a [`crate::verify::Expectation`]) that share a
//! scenario agree on every cluster token, namespace, Deployment id and series
//! label set without talking to each other.
//!
//! Per Deployment, in this order of series index:
//! - Airflow (statsd_exporter): per task `airflow_task_duration` (summary: 3
//!   quantiles, `_sum`, `_count`) and `airflow_ti_finish_total{state}`; per
//!   DAG the five dagrun timers (25 series); per DAG file
//!   `airflow_dag_processing_last_duration` (5) and `_last_run_seconds_ago`;
//!   per pool the seven pool gauges; about 45 unlabelled or fixed-label
//!   scheduler, executor, trigger, dataset and job series.
//! - Infrastructure: per long-lived pod (scheduler, triggerer, webserver,
//!   pgbouncer, workers) 31 cAdvisor, kubelet and kube-state-metrics series.
//! - Task pods (KubernetesExecutor): the same 31 series per pod slot, whose
//!   pod name, uid and cgroup id change every `churn_rounds` rounds (pod
//!   churn: new series, same series index).
//!
//! Every series carries the Deployment's `namespace`, and `deploymentId` when
//! [`Scenario::deployment_id_label`] is set. Labels are sorted by name.
//! [`Scenario::series_limit`] (`seriesPerDeployment`) keeps only the first
//! that many series of each Deployment's list, for fleets of many small
//! Deployments.
//!
//! # Order of a cluster's series
//! A cluster's series index is the series' position in the cluster's round
//! (the generator sends positions in order, see [`crate::generator`]), so
//! the order decides which Deployments a request carries. The Deployments
//! are taken in groups of [`Scenario::deployments_per_request`] (`N`; the
//! last group may be smaller), and within a group the series go round-robin:
//! the first series of each member, then the second of each, and so on.
//! With `N = 1` (the default) that is Deployment after Deployment, so a
//! request carries one or two Deployments; with `N` = all Deployments every
//! request interleaves the whole cluster, like a sharded Prometheus.
//! [`Scenario::locate`] maps an index to (Deployment, index in its list) and
//! [`Scenario::cluster_model`] is built from it, so the two cannot disagree;
//! the sample identity ([`crate::identity`]) is unchanged.

use serde::{Deserialize, Serialize};

use crate::identity::{MAX_CLUSTERS, MAX_SERIES};

/// The simulated fleet and the shape of each Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    /// Number of clusters (each with its own ingest token).
    pub clusters: u32,
    /// Deployments per cluster.
    pub deployments: u32,
    /// DAGs per Deployment.
    pub dags: u32,
    /// Tasks per DAG.
    pub tasks: u32,
    /// DAG files per Deployment.
    pub dag_files: u32,
    /// Pools per Deployment.
    pub pools: u32,
    /// Long-lived pods per Deployment (at least the four components; the rest are workers).
    pub pods: u32,
    /// Churning task pod slots per Deployment (0: no churn).
    pub task_pods: u32,
    /// Rounds a task pod lives before it is replaced by a new one.
    pub churn_rounds: u32,
    /// Whether series carry a `deploymentId` label.
    pub deployment_id_label: bool,
    /// Cluster ingest token prefix: cluster `c` sends `Bearer {prefix}{c}`.
    pub token_prefix: String,
    /// Deployments whose series are interleaved in a cluster's round (see
    /// the module doc); 1: Deployment after Deployment.
    #[serde(default = "one")]
    pub deployments_per_request: u32,
    /// Series per Deployment: the first this many of the shape above
    /// (`None`: all of them). Key `seriesPerDeployment`.
    #[serde(default, rename = "seriesPerDeployment")]
    pub series_limit: Option<u32>,
}

fn one() -> u32 {
    1
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            clusters: 4,
            deployments: 5,
            dags: 20,
            tasks: 8,
            dag_files: 8,
            pools: 3,
            pods: 8,
            task_pods: 0,
            churn_rounds: 10,
            deployment_id_label: false,
            token_prefix: "fanout-load-token-".to_owned(),
            deployments_per_request: 1,
            series_limit: None,
        }
    }
}

/// Why a scenario cannot be generated.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A size is outside what the sample identity can encode.
    #[error("scenario: {0}")]
    OutOfRange(String),
}

const ADJECTIVES: &[&str] = &[
    "elementary",
    "cosmic",
    "galactic",
    "nebular",
    "stellar",
    "orbital",
    "quantum",
    "spectral",
    "radiant",
    "celestial",
    "lunar",
    "solar",
    "polar",
    "sonic",
    "ionic",
    "binary",
];
const NOUNS: &[&str] = &[
    "zenith", "quasar", "pulsar", "nova", "photon", "comet", "meteor", "horizon", "equinox",
    "aurora", "eclipse", "parsec", "orbit", "nadir", "vertex", "apogee",
];
const COMPONENTS: &[&str] = &["scheduler", "triggerer", "webserver", "pgbouncer"];
const IMAGE: &str = "quay.io/astronomer/astro-runtime:12.6.0";

/// One series of a cluster before its sample is attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesTemplate {
    /// Deployment index within the cluster.
    pub deployment: u32,
    /// Sorted labels (including `__name__`), for series that do not churn.
    pub labels: Option<Vec<(String, String)>>,
    /// For a churning series: (task pod slot, index in the pod's series list).
    pub churn: Option<(u32, u32)>,
}

/// All series of one cluster, indexed by series index.
#[derive(Clone, Debug)]
pub struct ClusterModel {
    /// The cluster index.
    pub cluster: u32,
    /// The series, by index.
    pub series: Vec<SeriesTemplate>,
}

impl Scenario {
    /// Checks sizes against the identity encoding.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.clusters == 0 || self.clusters > MAX_CLUSTERS {
            return Err(ScenarioError::OutOfRange(format!(
                "clusters must be 1..={MAX_CLUSTERS}, not {}",
                self.clusters
            )));
        }
        if self.deployments == 0 {
            return Err(ScenarioError::OutOfRange(
                "deployments must be at least 1".into(),
            ));
        }
        if self.task_pods > 0 && self.churn_rounds == 0 {
            return Err(ScenarioError::OutOfRange(
                "churn rounds must be at least 1".into(),
            ));
        }
        if self.deployments_per_request == 0 || self.deployments_per_request > self.deployments {
            return Err(ScenarioError::OutOfRange(format!(
                "deploymentsPerRequest must be 1 to deployments ({}), not {}",
                self.deployments, self.deployments_per_request
            )));
        }
        if let Some(limit) = self.series_limit {
            let full = self.full_series_per_deployment();
            if limit == 0 || u64::from(limit) > full {
                return Err(ScenarioError::OutOfRange(format!(
                    "seriesPerDeployment must be 1 to {full} (the series the DAGs, tasks and pods give), not {limit}"
                )));
            }
        }
        let n = self.series_per_cluster();
        if n > u64::from(MAX_SERIES) {
            return Err(ScenarioError::OutOfRange(format!(
                "{n} series per cluster; at most {MAX_SERIES} can be identified (fewer deployments, DAGs or tasks)"
            )));
        }
        Ok(())
    }

    /// Airflow series of one Deployment.
    pub fn airflow_series_per_deployment(&self) -> u64 {
        let (d, t, f, p) = (
            u64::from(self.dags),
            u64::from(self.tasks),
            u64::from(self.dag_files),
            u64::from(self.pools),
        );
        6 * d * t + 25 * d + 6 * f + 7 * p + FIXED_AIRFLOW.len() as u64 + 5 + 4
    }

    /// Series of one Deployment's full shape (before [`Scenario::series_limit`]).
    pub fn full_series_per_deployment(&self) -> u64 {
        self.airflow_series_per_deployment()
            + POD_SERIES as u64
                * (u64::from(self.pods.max(COMPONENTS.len() as u32)) + u64::from(self.task_pods))
    }

    /// Series of one Deployment.
    pub fn series_per_deployment(&self) -> u64 {
        let full = self.full_series_per_deployment();
        self.series_limit.map_or(full, |l| full.min(u64::from(l)))
    }

    /// Series of one cluster.
    pub fn series_per_cluster(&self) -> u64 {
        self.series_per_deployment() * u64::from(self.deployments)
    }

    /// The cluster's id (the basic-auth user name).
    pub fn cluster_id(&self, cluster: u32) -> String {
        format!("load-cluster-{cluster:03}")
    }

    /// The cluster's ingest token.
    pub fn cluster_token(&self, cluster: u32) -> String {
        format!("{}{cluster}", self.token_prefix)
    }

    /// The namespace of Deployment `deployment` of `cluster` (unique in the fleet).
    pub fn namespace(&self, cluster: u32, deployment: u32) -> String {
        let n = cluster * 7919 + deployment * 104_729;
        format!(
            "{}-{}-{:04}",
            ADJECTIVES[(n as usize) % ADJECTIVES.len()],
            NOUNS[((n / 16) as usize) % NOUNS.len()],
            (cluster * 100 + deployment) % 10_000
        )
    }

    /// The id of Deployment `deployment` of `cluster`.
    pub fn deployment_id(&self, cluster: u32, deployment: u32) -> String {
        format!("cl{cluster:04}d{deployment:04}load0deploy")
    }

    /// The one relabelling rule a user would write to set every
    /// Deployment's id from its namespace: `(regex, replacement)` in
    /// Prometheus relabel syntax (the regex is anchored; `${1}` is group 1).
    ///
    /// The namespace ends in `(cluster × 100 + deployment) mod 10,000` and the id
    /// holds both indices, so the id derives from the namespace while both
    /// are below 100; `None` beyond that (the number no longer tells them
    /// apart), where one rule per Deployment is needed.
    pub fn deployment_id_rule(&self) -> Option<(String, String)> {
        if self.clusters > 100 || self.deployments > 100 {
            return None;
        }
        Some((
            "[a-z]+-[a-z]+-([0-9]{2})([0-9]{2})".to_owned(),
            "cl00${1}d00${2}load0deploy".to_owned(),
        ))
    }

    /// The Deployment a series index belongs to.
    pub fn deployment_of(&self, series: u32) -> u32 {
        self.locate(series).0
    }

    /// Where series index `series` comes from: (Deployment, index in that
    /// Deployment's list). See "Order of a cluster's series" in the module doc.
    pub fn locate(&self, series: u32) -> (u32, u32) {
        let per_dep = self.series_per_deployment().max(1);
        let deployments = u64::from(self.deployments.max(1));
        let n = u64::from(self.deployments_per_request).clamp(1, deployments);
        let s = u64::from(series);
        let group = s / (n * per_dep);
        let first = group * n;
        let members = n.min(deployments.saturating_sub(first)).max(1);
        let j = s - group * n * per_dep;
        ((first + j % members) as u32, (j / members) as u32)
    }

    /// Builds every series of `cluster`, in round order ([`Scenario::locate`]).
    pub fn cluster_model(&self, cluster: u32) -> ClusterModel {
        let mut lists: Vec<Vec<SeriesTemplate>> = (0..self.deployments)
            .map(|dep| self.deployment_series(cluster, dep))
            .collect();
        let total = self.series_per_cluster() as u32;
        let series = (0..total)
            .map(|i| {
                let (dep, k) = self.locate(i);
                lists
                    .get_mut(dep as usize)
                    .and_then(|l| l.get_mut(k as usize))
                    .map(std::mem::take)
                    .unwrap_or_default()
            })
            .collect();
        ClusterModel { cluster, series }
    }

    /// The series of Deployment `dep` of `cluster`, in the order of the
    /// module doc, cut to [`Scenario::series_per_deployment`].
    fn deployment_series(&self, cluster: u32, dep: u32) -> Vec<SeriesTemplate> {
        let mut series = Vec::with_capacity(self.full_series_per_deployment() as usize);
        let base = self.base_labels(cluster, dep);
        let fixed = |labels| SeriesTemplate {
            deployment: dep,
            labels: Some(labels),
            churn: None,
        };
        series.extend(self.airflow(cluster, dep, &base).into_iter().map(fixed));
        for pod in 0..self.pods.max(COMPONENTS.len() as u32) {
            let desc = self.long_lived_pod(cluster, dep, pod);
            series.extend(pod_series(&base, &desc).into_iter().map(fixed));
        }
        for slot in 0..self.task_pods {
            for k in 0..POD_SERIES as u32 {
                series.push(SeriesTemplate {
                    deployment: dep,
                    labels: None,
                    churn: Some((slot, k)),
                });
            }
        }
        series.truncate(self.series_per_deployment() as usize);
        series
    }

    /// The labels of series `id` in round `seq` (churning series change with `seq`).
    pub fn series_labels(
        &self,
        model: &ClusterModel,
        series: u32,
        seq: u32,
    ) -> Option<Vec<(String, String)>> {
        let t = model.series.get(series as usize)?;
        if let Some(labels) = &t.labels {
            return Some(labels.clone());
        }
        let (slot, k) = t.churn?;
        let generation = seq / self.churn_rounds.max(1);
        Some(self.churn_labels(model.cluster, t.deployment, slot, k, generation))
    }

    /// Labels of series `k` of task pod `slot` in pod generation `generation`.
    pub fn churn_labels(
        &self,
        cluster: u32,
        dep: u32,
        slot: u32,
        k: u32,
        generation: u32,
    ) -> Vec<(String, String)> {
        let base = self.base_labels(cluster, dep);
        let desc = self.task_pod(cluster, dep, slot, generation);
        pod_series(&base, &desc)
            .into_iter()
            .nth(k as usize)
            .unwrap_or_default()
    }

    /// Labels every series of a Deployment has.
    fn base_labels(&self, cluster: u32, dep: u32) -> Vec<(String, String)> {
        let mut base = vec![("namespace".to_owned(), self.namespace(cluster, dep))];
        if self.deployment_id_label {
            base.push(("deploymentId".to_owned(), self.deployment_id(cluster, dep)));
        }
        base
    }

    fn long_lived_pod(&self, cluster: u32, dep: u32, pod: u32) -> PodDesc {
        let ns = self.namespace(cluster, dep);
        let container = COMPONENTS.get(pod as usize).copied().unwrap_or("worker");
        let h = hash3(cluster, dep, pod);
        let name = if container == "worker" {
            format!(
                "{ns}-worker-default-{:09x}-{:05x}",
                h & 0xf_ffff_ffff,
                (h >> 36) & 0xfffff
            )
        } else {
            format!(
                "{ns}-{container}-{:09x}-{:05x}",
                h & 0xf_ffff_ffff,
                (h >> 36) & 0xfffff
            )
        };
        PodDesc::new(name, container, h, cluster, dep)
    }

    fn task_pod(&self, cluster: u32, dep: u32, slot: u32, generation: u32) -> PodDesc {
        let ns = self.namespace(cluster, dep);
        let h = hash3(cluster, dep, 1_000_000 + slot * 65_537 + generation);
        let name = format!(
            "{ns}-etl-customer-orders-{:02}-transform-{:08x}",
            slot % 20,
            h & 0xffff_ffff
        );
        PodDesc::new(name, "base", h, cluster, dep)
    }

    fn airflow(
        &self,
        cluster: u32,
        dep: u32,
        base: &[(String, String)],
    ) -> Vec<Vec<(String, String)>> {
        let ns = self.namespace(cluster, dep);
        let h = hash3(cluster, dep, 0);
        let sched_pod = format!(
            "{ns}-scheduler-{:09x}-{:05x}",
            h & 0xf_ffff_ffff,
            (h >> 36) & 0xfffff
        );
        let common = |container: &str| -> Vec<(String, String)> {
            let mut v = base.to_vec();
            v.push(("container".into(), container.into()));
            v.push(("pod".into(), sched_pod.clone()));
            v.push((
                "instance".into(),
                format!("10.{}.{}.{}:9102", cluster % 250, dep % 250, 17),
            ));
            v.push(("job".into(), "airflow-statsd".into()));
            v
        };
        let mut out = Vec::new();
        let mut push = |name: &str, container: &str, own: &[(&str, String)]| {
            let mut l = common(container);
            l.push(("__name__".into(), name.into()));
            l.extend(own.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            l.sort();
            out.push(l);
        };
        let summary =
            |push: &mut PushFn<'_>, name: &str, container: &str, own: &[(&str, String)]| {
                for q in ["0.5", "0.9", "0.99"] {
                    let mut l = own.to_vec();
                    l.push(("quantile", q.to_owned()));
                    push(name, container, &l);
                }
                push(&format!("{name}_sum"), container, own);
                push(&format!("{name}_count"), container, own);
            };
        for d in 0..self.dags {
            let dag = format!("etl_customer_orders_{d:03}");
            for t in 0..self.tasks {
                let own = [
                    ("dag_id", dag.clone()),
                    ("task_id", format!("transform_partition_{t:02}")),
                ];
                summary(&mut push, "airflow_task_duration", "worker", &own);
                let mut fin = own.to_vec();
                fin.push(("state", "success".to_owned()));
                push("airflow_ti_finish_total", "worker", &fin);
            }
            let own = [("dag_id", dag.clone())];
            for name in [
                "airflow_dagrun_duration",
                "airflow_dagrun_failed",
                "airflow_dagrun_schedule_delay",
                "airflow_dagrun_first_task_scheduling_delay",
                "airflow_dagrun_dependency_check",
            ] {
                summary(&mut push, name, "scheduler", &own);
            }
        }
        for f in 0..self.dag_files {
            let own = [("dag_file", format!("dags/etl_customer_orders_{f:03}.py"))];
            summary(
                &mut push,
                "airflow_dag_processing_last_duration",
                "scheduler",
                &own,
            );
            push(
                "airflow_dag_processing_last_run_seconds_ago",
                "scheduler",
                &own,
            );
        }
        for p in 0..self.pools {
            let pool = if p == 0 {
                "default_pool".to_owned()
            } else {
                format!("pool_{p}")
            };
            for name in [
                "airflow_pool_open_slots",
                "airflow_pool_used_slots",
                "airflow_pool_queued_slots",
                "airflow_pool_running_slots",
                "airflow_pool_deferred_slots",
                "airflow_pool_scheduled_slots",
                "airflow_pool_starving_tasks",
            ] {
                push(name, "scheduler", &[("pool", pool.clone())]);
            }
        }
        for (name, container, own) in FIXED_AIRFLOW {
            let own: Vec<(&str, String)> = own.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            push(name, container, &own);
        }
        summary(&mut push, "airflow_collect_db_dags", "scheduler", &[]);
        for op in ["PythonOperator", "BashOperator"] {
            push(
                "airflow_operator_successes_total",
                "worker",
                &[("operator", op.to_owned())],
            );
            push(
                "airflow_operator_failures_total",
                "worker",
                &[("operator", op.to_owned())],
            );
        }
        out
    }
}

/// Airflow series with no per-DAG label: (name, container, labels).
/// An Airflow series with fixed labels: (name, container, labels).
type FixedSeries = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const FIXED_AIRFLOW: &[FixedSeries] = &[
    ("airflow_ti_failures_total", "worker", &[]),
    ("airflow_ti_successes_total", "worker", &[]),
    ("airflow_zombies_killed_total", "scheduler", &[]),
    (
        "airflow_task_instances_without_heartbeats_killed_total",
        "scheduler",
        &[],
    ),
    ("airflow_executor_running_tasks", "scheduler", &[]),
    ("airflow_executor_queued_tasks", "scheduler", &[]),
    ("airflow_executor_open_slots", "scheduler", &[]),
    ("airflow_dagbag_size", "scheduler", &[]),
    ("airflow_dag_processing_import_errors", "scheduler", &[]),
    ("airflow_dag_processing_total_parse_time", "scheduler", &[]),
    ("airflow_scheduler_tasks_running", "scheduler", &[]),
    (
        "airflow_scheduler_tasks_killed_externally_total",
        "scheduler",
        &[],
    ),
    ("airflow_scheduler_tasks_starving", "scheduler", &[]),
    ("airflow_triggers_succeeded_total", "triggerer", &[]),
    ("airflow_triggers_failed_total", "triggerer", &[]),
    ("airflow_triggers_running", "triggerer", &[]),
    ("airflow_dataset_triggered_dagruns_total", "scheduler", &[]),
    ("airflow_dataset_updates_total", "scheduler", &[]),
    ("airflow_dataset_orphaned", "scheduler", &[]),
    ("airflow_asset_triggered_dagruns_total", "scheduler", &[]),
    ("airflow_asset_updates_total", "scheduler", &[]),
    ("airflow_asset_orphaned", "scheduler", &[]),
    ("airflow_ol_emit_attempts_total", "worker", &[]),
    ("airflow_ol_emit_failed_total", "worker", &[]),
    ("airflow_dag_processor_heartbeat_total", "scheduler", &[]),
    ("airflow_triggerer_heartbeat_total", "triggerer", &[]),
    (
        "airflow_scheduler_heartbeat_total",
        "scheduler",
        &[("type", "counter")],
    ),
    (
        "airflow_job_start_total",
        "scheduler",
        &[("job_name", "SchedulerJob")],
    ),
    (
        "airflow_job_end_total",
        "scheduler",
        &[("job_name", "SchedulerJob")],
    ),
    (
        "airflow_job_heartbeat_failure_total",
        "scheduler",
        &[("job_name", "SchedulerJob")],
    ),
    (
        "airflow_job_start_total",
        "triggerer",
        &[("job_name", "TriggererJob")],
    ),
    (
        "airflow_task_instance_created_total",
        "scheduler",
        &[("task_type", "PythonOperator")],
    ),
    (
        "airflow_task_instance_created_total",
        "scheduler",
        &[("task_type", "BashOperator")],
    ),
    ("airflow_runner_resources", "worker", &[("resource", "cpu")]),
    (
        "airflow_runner_resources",
        "worker",
        &[("resource", "memory")],
    ),
    (
        "airflow_executor_task_resources",
        "worker",
        &[("resource_stat", "cpu_percent")],
    ),
    (
        "airflow_astro_logging_write_failed_total",
        "worker",
        &[("provider", "s3")],
    ),
    (
        "astro_bundle_backend_refresh_success_total",
        "scheduler",
        &[
            ("exported_instance", "bundle-0"),
            ("mount_path", "/usr/local/airflow/dags"),
        ],
    ),
    (
        "astro_bundle_backend_num_files",
        "scheduler",
        &[
            ("exported_instance", "bundle-0"),
            ("mount_path", "/usr/local/airflow/dags"),
        ],
    ),
];

/// Adds one series: (name, container, own labels).
type PushFn<'a> = dyn FnMut(&str, &str, &[(&str, String)]) + 'a;

/// Series per pod (see [`pod_series`]).
pub const POD_SERIES: usize = 31;

struct PodDesc {
    name: String,
    container: &'static str,
    uid: String,
    cgroup: String,
    node: String,
}

impl PodDesc {
    fn new(name: String, container: &'static str, h: u64, cluster: u32, dep: u32) -> PodDesc {
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            h & 0xffff_ffff,
            (h >> 32) & 0xffff,
            (h >> 48) & 0xfff,
            (h >> 20) & 0xfff,
            h.rotate_left(17) & 0xffff_ffff_ffff
        );
        let cgroup = format!("/kubepods/burstable/pod{uid}/{:016x}", h.rotate_left(29));
        let node = format!(
            "gke-load-{cluster:03}-pool-{:08x}",
            hash3(cluster, dep, 7) & 0xffff_ffff
        );
        PodDesc {
            name,
            container,
            uid,
            cgroup,
            node,
        }
    }
}

/// The 31 infrastructure series of one pod.
fn pod_series(base: &[(String, String)], p: &PodDesc) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(POD_SERIES);
    let mut push = |name: &str, own: &[(&str, &str)]| {
        let mut l = base.to_vec();
        l.push(("__name__".into(), name.into()));
        l.extend(own.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        l.sort();
        out.push(l);
    };
    let (pod, uid, c) = (p.name.as_str(), p.uid.as_str(), p.container);
    let docker = format!("k8s_{c}_{pod}");
    push(
        "container_cpu_usage_seconds_total",
        &[
            ("container", c),
            ("cpu", "total"),
            ("id", &p.cgroup),
            ("image", IMAGE),
            ("name", &docker),
            ("pod", pod),
        ],
    );
    push(
        "container_memory_working_set_bytes",
        &[
            ("container", c),
            ("id", &p.cgroup),
            ("image", IMAGE),
            ("name", &docker),
            ("pod", pod),
        ],
    );
    push(
        "kubelet_stats_ephemeral_storage_pod_usage",
        &[
            ("node_name", &p.node),
            ("pod_name", pod),
            ("pod_namespace", &base[0].1),
        ],
    );
    for phase in ["Pending", "Running", "Succeeded", "Failed", "Unknown"] {
        push(
            "kube_pod_status_phase",
            &[("phase", phase), ("pod", pod), ("uid", uid)],
        );
    }
    for name in ["kube_pod_status_ready", "kube_pod_status_scheduled"] {
        for cond in ["true", "false", "unknown"] {
            push(name, &[("condition", cond), ("pod", pod), ("uid", uid)]);
        }
    }
    push(
        "kube_pod_status_qos_class",
        &[("pod", pod), ("qos_class", "burstable"), ("uid", uid)],
    );
    for reason in [
        "Evicted",
        "NodeAffinity",
        "NodeLost",
        "Shutdown",
        "UnexpectedAdmissionError",
    ] {
        push(
            "kube_pod_status_reason",
            &[("pod", pod), ("reason", reason), ("uid", uid)],
        );
    }
    for name in [
        "kube_pod_status_scheduled_time",
        "kube_pod_status_ready_time",
        "kube_pod_status_container_ready_time",
    ] {
        push(name, &[("pod", pod), ("uid", uid)]);
    }
    push(
        "kube_pod_labels",
        &[
            ("label_component", c),
            ("label_tier", "airflow"),
            ("pod", pod),
            ("uid", uid),
        ],
    );
    for (resource, unit) in [("cpu", "core"), ("memory", "byte")] {
        push(
            "kube_pod_container_resource_limits",
            &[
                ("container", c),
                ("node", &p.node),
                ("pod", pod),
                ("resource", resource),
                ("uid", uid),
                ("unit", unit),
            ],
        );
    }
    for reason in [
        "Completed",
        "ContainerCannotRun",
        "Error",
        "OOMKilled",
        "DeadlineExceeded",
    ] {
        push(
            "kube_pod_container_status_terminated_reason",
            &[
                ("container", c),
                ("pod", pod),
                ("reason", reason),
                ("uid", uid),
            ],
        );
    }
    out
}

/// A cheap deterministic mix (splitmix64) of three numbers.
fn hash3(a: u32, b: u32, c: u32) -> u64 {
    let mut z = (u64::from(a) << 42) ^ (u64::from(b) << 21) ^ u64::from(c);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_model_and_labels_are_sorted_and_unique() {
        let s = Scenario {
            clusters: 2,
            deployments: 2,
            dags: 3,
            tasks: 2,
            dag_files: 2,
            pools: 2,
            pods: 6,
            task_pods: 2,
            churn_rounds: 3,
            deployment_id_label: true,
            ..Scenario::default()
        };
        s.validate().unwrap();
        let m = s.cluster_model(1);
        assert_eq!(m.series.len() as u64, s.series_per_cluster());
        let mut seen = std::collections::HashSet::new();
        for i in 0..m.series.len() as u32 {
            let l = s.series_labels(&m, i, 0).unwrap();
            assert!(
                l.windows(2).all(|w| w[0].0 < w[1].0),
                "unsorted or duplicate names: {l:?}"
            );
            assert!(l
                .iter()
                .any(|(k, v)| k == "namespace" && *v == s.namespace(1, s.deployment_of(i))));
            assert!(l.iter().any(|(k, _)| k == "deploymentId"));
            assert!(seen.insert(l), "series {i} repeats another's label set");
        }
        // Churn: a task pod series changes labels after churn_rounds rounds.
        let churn = (0..m.series.len() as u32)
            .find(|i| m.series[*i as usize].churn.is_some())
            .unwrap();
        assert_eq!(s.series_labels(&m, churn, 0), s.series_labels(&m, churn, 2));
        assert_ne!(s.series_labels(&m, churn, 0), s.series_labels(&m, churn, 3));
    }

    #[test]
    fn realistic_size_per_deployment() {
        // metric-catalog.md: 20 DAGs x 8 tasks is about 2,100 Airflow series
        // (its rough 30 per DAG; the five dagrun timers give 25 here).
        let s = Scenario::default();
        let n = s.airflow_series_per_deployment();
        assert!((1_500..2_300).contains(&n), "{n}");
    }

    /// A small shape: 2 DAGs x 1 task, 1 DAG file, 1 pool, 4 pods.
    fn small(deployments: u32, per_request: u32) -> Scenario {
        Scenario {
            clusters: 1,
            deployments,
            dags: 2,
            tasks: 1,
            dag_files: 1,
            pools: 1,
            pods: 4,
            deployments_per_request: per_request,
            ..Scenario::default()
        }
    }

    #[test]
    fn default_order_is_deployment_after_deployment() {
        let s = small(3, 1);
        let p = s.series_per_deployment() as u32;
        let m = s.cluster_model(0);
        for i in 0..m.series.len() as u32 {
            assert_eq!(s.locate(i), (i / p, i % p));
            assert_eq!(m.series[i as usize].deployment, i / p);
        }
    }

    #[test]
    fn interleaved_order_is_round_robin_within_groups_and_a_permutation() {
        for (deployments, n) in [(5, 2), (5, 5), (4, 4), (7, 3), (1, 1)] {
            let s = small(deployments, n);
            s.validate().unwrap();
            let per = s.series_per_deployment() as u32;
            let m = s.cluster_model(0);
            let by_dep = small(deployments, 1).cluster_model(0);
            let mut seen = std::collections::HashSet::new();
            for i in 0..m.series.len() as u32 {
                let (d, k) = s.locate(i);
                assert!(
                    d < deployments && k < per,
                    "{deployments}/{n}: {i} -> {d},{k}"
                );
                assert!(seen.insert((d, k)), "{deployments}/{n}: ({d}, {k}) twice");
                assert_eq!(s.deployment_of(i), d);
                // The same series as in Deployment order, only moved.
                assert_eq!(m.series[i as usize], by_dep.series[(d * per + k) as usize]);
            }
        }
        // Groups of 2 among 5: d0 d1 d0 d1 ..., then d2 d3 ..., then d4 alone.
        let s = small(5, 2);
        let per = s.series_per_deployment() as u32;
        let deps: Vec<u32> = (0..6).map(|i| s.deployment_of(i)).collect();
        assert_eq!(deps, [0, 1, 0, 1, 0, 1]);
        assert_eq!(s.deployment_of(2 * per), 2);
        assert_eq!(s.deployment_of(2 * per + 1), 3);
        assert_eq!(s.deployment_of(4 * per), 4);
        assert_eq!(s.deployment_of(5 * per - 1), 4);
    }

    #[test]
    fn dense_requests_interleave_every_deployment() {
        // 100 Deployments of 10 series: 1,000 consecutive positions are one
        // round of the cluster, 10 series of each Deployment.
        let s = Scenario {
            clusters: 2,
            deployments: 100,
            deployments_per_request: 100,
            series_limit: Some(10),
            ..Scenario::default()
        };
        s.validate().unwrap();
        assert_eq!(s.series_per_cluster(), 1000);
        let mut per_dep = std::collections::BTreeMap::new();
        for i in 0..1000 {
            *per_dep.entry(s.deployment_of(i)).or_insert(0) += 1;
        }
        assert_eq!(per_dep.len(), 100);
        assert!(per_dep.values().all(|n| *n == 10));
        // The first 100 positions already hold every Deployment once.
        let first: std::collections::BTreeSet<u32> = (0..100).map(|i| s.deployment_of(i)).collect();
        assert_eq!(first.len(), 100);
        // The 10 kept are the first 10 of the full list.
        let m = s.cluster_model(1);
        let full = Scenario {
            series_limit: None,
            deployments_per_request: 1,
            ..s.clone()
        };
        let p = full.series_per_deployment() as usize;
        let fm = full.cluster_model(1);
        assert_eq!(m.series[100 * 3 + 7], fm.series[7 * p + 3]);
    }

    #[test]
    fn new_knobs_are_validated() {
        let bad = [
            Scenario {
                deployments_per_request: 0,
                ..Scenario::default()
            },
            Scenario {
                deployments_per_request: 6,
                ..Scenario::default()
            },
            Scenario {
                series_limit: Some(0),
                ..Scenario::default()
            },
            Scenario {
                series_limit: Some(100_000),
                ..Scenario::default()
            },
        ];
        for s in bad {
            let e = s.validate().unwrap_err().to_string();
            assert!(
                e.contains("deploymentsPerRequest") || e.contains("seriesPerDeployment"),
                "{e}"
            );
        }
    }

    /// Applies [`Scenario::deployment_id_rule`]'s regex by hand: two runs
    /// of lowercase letters, then two groups of two digits, anchored.
    fn apply_rule(namespace: &str) -> Option<String> {
        let parts: Vec<&str> = namespace.split('-').collect();
        let [a, b, n] = parts[..] else { return None };
        let letters = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_lowercase());
        if !(letters(a) && letters(b) && n.len() == 4 && n.bytes().all(|c| c.is_ascii_digit())) {
            return None;
        }
        Some(format!("cl00{}d00{}load0deploy", &n[..2], &n[2..]))
    }

    #[test]
    fn one_rule_derives_every_deployment_id_from_its_namespace() {
        let s = Scenario {
            clusters: 100,
            deployments: 100,
            ..Scenario::default()
        };
        let (regex, replacement) = s.deployment_id_rule().unwrap();
        assert_eq!(regex, "[a-z]+-[a-z]+-([0-9]{2})([0-9]{2})");
        assert_eq!(replacement, "cl00${1}d00${2}load0deploy");
        for c in 0..100 {
            for d in 0..100 {
                assert_eq!(
                    apply_rule(&s.namespace(c, d)).as_deref(),
                    Some(s.deployment_id(c, d).as_str()),
                    "cluster {c} Deployment {d}"
                );
            }
        }
        for (clusters, deployments) in [(101, 5), (4, 101)] {
            let s = Scenario {
                clusters,
                deployments,
                ..Scenario::default()
            };
            assert_eq!(s.deployment_id_rule(), None);
        }
    }

    #[test]
    fn too_many_series_is_refused() {
        let s = Scenario {
            deployments: 1000,
            dags: 200,
            tasks: 15,
            ..Scenario::default()
        };
        assert!(s.validate().is_err());
    }
}
