//! Realistic requests for benchmarks, seeds and tests, shaped after
//! `reference/metric-catalog.md`: Airflow summaries and counters from
//! statsd_exporter and cAdvisor / kube-state-metrics series, with the label
//! sets a cluster's agent sends (about 400 bytes per sample uncompressed, one
//! sample per series, like a Prometheus remote-write shard).

use crate::v1;

const METRICS: &[(&str, &[&str])] = &[
    ("airflow_task_duration", &["dag_id", "task_id", "quantile"]),
    ("airflow_ti_finish_total", &["dag_id", "task_id", "state"]),
    ("airflow_dagrun_duration_success_sum", &["dag_id"]),
    ("airflow_pool_open_slots", &["pool"]),
    ("airflow_scheduler_heartbeat_total", &["type"]),
    (
        "container_cpu_usage_seconds_total",
        &["cpu", "id", "image", "name"],
    ),
    (
        "container_memory_working_set_bytes",
        &["id", "image", "name"],
    ),
    ("kube_pod_status_phase", &["phase", "uid"]),
];

const CONTAINERS: &[&str] = &["scheduler", "triggerer", "webserver", "worker", "pgbouncer"];

fn value_for(label: &str, i: usize) -> String {
    match label {
        "dag_id" => format!("etl_customer_orders_{:02}", i % 20),
        "task_id" => format!("transform_partition_{:02}", (i / 20) % 8),
        "quantile" => ["0.5", "0.9", "0.99"][i % 3].to_owned(),
        "state" => ["success", "failed", "up_for_retry"][i % 3].to_owned(),
        "pool" => format!("default_pool_{}", i % 7),
        "type" => "counter".to_owned(),
        "cpu" => "total".to_owned(),
        "id" => format!(
            "/kubepods/burstable/pod{:08x}-5b1e-4c2d-9f3a-{:012x}",
            i * 7919,
            i
        ),
        "image" => "quay.io/astronomer/astro-runtime:12.6.0".to_owned(),
        "name" => format!("k8s_worker_pod-{i:05}"),
        "phase" => ["Pending", "Running", "Succeeded", "Failed", "Unknown"][i % 5].to_owned(),
        "uid" => format!("6f1c{:04x}-2b3d-4e5f-8a9b-{:012x}", i % 65536, i),
        _ => format!("v{i}"),
    }
}

/// One cluster's request of `series` series (one sample each) for Deployments
/// spread over `deployments` namespaces.
pub fn realistic_request(series: usize, deployments: usize) -> v1::WriteRequest {
    let deployments = deployments.max(1);
    let timeseries = (0..series)
        .map(|i| {
            let (metric, own) = METRICS[i % METRICS.len()];
            let dep = i % deployments;
            let namespace = format!("elementary-zenith-{:04}", 7243 + dep);
            let container = CONTAINERS[(i / METRICS.len()) % CONTAINERS.len()];
            let mut labels: Vec<v1::Label> = vec![
                label("__name__", metric),
                label("container", container),
                label("deploymentId", &format!("cl{dep:04}x9k2m0001deploy")),
                label("instance", &format!("10.12.{}.{}:9102", dep % 250, i % 250)),
                label("job", "airflow-statsd"),
                label("namespace", &namespace),
                label(
                    "pod",
                    &format!("{namespace}-{container}-6d9f7c8b5-{:05x}", i % 4096),
                ),
            ];
            labels.extend(own.iter().map(|l| label(l, &value_for(l, i))));
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            v1::TimeSeries {
                labels,
                samples: vec![v1::Sample {
                    value: (i as f64) * 1.25,
                    timestamp: 1_764_000_000_000 + i as i64,
                }],
                ..Default::default()
            }
        })
        .collect();
    v1::WriteRequest {
        timeseries,
        metadata: Vec::new(),
    }
}

fn label(name: &str, value: &str) -> v1::Label {
    v1::Label {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}
