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
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// Series of one Deployment.
    pub fn series_per_deployment(&self) -> u64 {
        self.airflow_series_per_deployment()
            + POD_SERIES as u64
                * (u64::from(self.pods.max(COMPONENTS.len() as u32)) + u64::from(self.task_pods))
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

    /// The Deployment a series index belongs to.
    pub fn deployment_of(&self, series: u32) -> u32 {
        (u64::from(series) / self.series_per_deployment().max(1)) as u32
    }

    /// Builds every series of `cluster`.
    pub fn cluster_model(&self, cluster: u32) -> ClusterModel {
        let mut series = Vec::with_capacity(self.series_per_cluster() as usize);
        for dep in 0..self.deployments {
            let base = self.base_labels(cluster, dep);
            for labels in self.airflow(cluster, dep, &base) {
                series.push(SeriesTemplate {
                    deployment: dep,
                    labels: Some(labels),
                    churn: None,
                });
            }
            for pod in 0..self.pods.max(COMPONENTS.len() as u32) {
                let desc = self.long_lived_pod(cluster, dep, pod);
                for labels in pod_series(&base, &desc) {
                    series.push(SeriesTemplate {
                        deployment: dep,
                        labels: Some(labels),
                        churn: None,
                    });
                }
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
        }
        ClusterModel { cluster, series }
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
