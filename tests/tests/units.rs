//! One grammar for durations and sizes (`fanout_proto::units`): the same
//! strings mean the same values as `fanout serve` flags, in the registry
//! (`delivery.timeout`, `delivery.diskBudget`) and in `fanout-load`'s
//! scenario files. (`--config` takes only addresses, paths and the token.)

use std::time::Duration;

use clap::Parser;
use fanout_gateway::config::ServeArgs;
use fanout_gateway::registry::model::{ByteSize, DeliveryFields, ExportFields};
use fanout_gateway::registry::resolve::compile;
use fanout_loadtest::bench::spec::BenchSpec;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

const DURATIONS: [(&str, Duration); 6] = [
    ("500ms", Duration::from_millis(500)),
    ("10s", Duration::from_secs(10)),
    ("2m", Duration::from_secs(120)),
    ("1h", Duration::from_secs(3600)),
    ("1m30s", Duration::from_secs(90)),
    ("1d", Duration::from_secs(86_400)),
];

const SIZES: [(&str, u64); 6] = [
    ("1048576", 1 << 20),
    ("64KiB", 64 << 10),
    ("64Mi", 64 << 20),
    ("1GiB", 1 << 30),
    ("1TiB", 1 << 40),
    ("10MB", 10_000_000),
];

fn flag_duration(text: &str) -> Result<Duration, String> {
    Cli::try_parse_from(["fanout", "--shutdown-grace", text])
        .map_err(|e| e.to_string())
        .map(|c| c.serve.delivery.shutdown_grace.expect("set").0)
}

fn flag_size(text: &str) -> Result<u64, String> {
    Cli::try_parse_from(["fanout", "--memory-budget", text])
        .map_err(|e| e.to_string())
        .map(|c| c.serve.ingest.memory_budget.expect("set").0)
}

fn registry(timeout: Option<&str>, disk: Option<&str>) -> Result<(Duration, u64), String> {
    let fields = ExportFields {
        endpoint: Some("http://127.0.0.1:9/api/v1/write".into()),
        delivery: Some(DeliveryFields {
            timeout: timeout.map(str::to_owned),
            disk_budget: disk.map(|d| ByteSize::Text(d.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    };
    compile(&fields)
        .map(|t| (t.delivery.timeout, t.delivery.disk_budget))
        .map_err(|p| p.join("; "))
}

fn scenario(drain: &str) -> Result<Duration, String> {
    let text = format!(
        "name: t\nfleet: {{clusters: 1, deployments: 1}}\ntargets: 1\n\
         traffic: {{samples: 10}}\ndrainTimeout: {drain}\n"
    );
    BenchSpec::parse("t.yaml", &text)
        .map(|s| s.drain_timeout)
        .map_err(|e| e.to_string())
}

#[test]
fn the_same_duration_strings_mean_the_same_everywhere() {
    for (text, want) in DURATIONS {
        assert_eq!(flag_duration(text), Ok(want), "flag {text}");
        assert_eq!(
            registry(Some(text), None).map(|r| r.0),
            Ok(want),
            "registry {text}"
        );
        assert_eq!(scenario(text), Ok(want), "scenario {text}");
    }
    for bad in ["10", "1.5s", "3w"] {
        assert!(flag_duration(bad).is_err(), "flag {bad}");
        assert!(registry(Some(bad), None).is_err(), "registry {bad}");
        assert!(scenario(bad).is_err(), "scenario {bad}");
    }
}

#[test]
fn the_same_size_strings_mean_the_same_everywhere() {
    for (text, want) in SIZES {
        assert_eq!(flag_size(text), Ok(want), "flag {text}");
        assert_eq!(
            registry(None, Some(text)).map(|r| r.1),
            Ok(want),
            "registry {text}"
        );
    }
    for bad in ["1.5GiB", "1 parsec", "MiB"] {
        assert!(flag_size(bad).is_err(), "flag {bad}");
        assert!(registry(None, Some(bad)).is_err(), "registry {bad}");
    }
}
