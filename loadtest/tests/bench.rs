//! `bench::run` end to end with real gateways, on a small routed scenario
//! with a dead target: what each gateway acknowledged reaches exactly the
//! live targets its Deployment is routed to, with the seven metadata labels.
//! This checks the generated vmagent relabelling and Fanout registry; the
//! numbers themselves are not asserted (a benchmark reports, it does not test).
//! Each gateway runs once at a fixed rate and once in saturation mode (closed
//! loop, 429/503 and missing answers sent again) with a small sample count.
//!
//! vmagent: `FANOUT_VMAGENT_BIN` or `vmagent` on PATH; Fanout: `FANOUT_BIN`.
//! Both are `#[ignore]`d for `cargo test --workspace` and run by `.ci/run`
//! (which installs vmagent and builds fanout) with `--ignored`; a missing
//! binary fails them.

use std::path::PathBuf;

use fanout_loadtest::bench::{self, BenchOptions, BenchSpec, Gateway, Mode};

const SCENARIO: &str = "
name: small-routed
fleet: {clusters: 2, deployments: 3, dags: 1, tasks: 1, dagFiles: 1, pools: 1, pods: 4}
targets: 3
targetsPerDeployment: 2
deadTargets: [2]
traffic: {samples: 20000, rate: 20000, maxDuration: 20s}
batch: 1000
drainTimeout: 20s
";

async fn check(gateway: Gateway, fanout_bin: PathBuf, vmagent_bin: Option<PathBuf>) {
    for mode in [Mode::Rate, Mode::Saturation] {
        check_mode(gateway, mode, fanout_bin.clone(), vmagent_bin.clone()).await;
    }
}

async fn check_mode(
    gateway: Gateway,
    mode: Mode,
    fanout_bin: PathBuf,
    vmagent_bin: Option<PathBuf>,
) {
    let mut spec = BenchSpec::parse("small-routed", SCENARIO).unwrap();
    if mode == Mode::Saturation {
        spec.traffic.samples = 30_000;
        spec.traffic.connections = 4;
    }
    let opts = BenchOptions {
        spec,
        mode,
        gateways: vec![gateway],
        fanout_bin,
        vmagent_bin,
        progress: false,
        command: "test".into(),
        keep: false,
        durability: "memory".into(),
    };
    let report = bench::run(&opts).await.unwrap();
    let r = &report.results[0];
    assert_eq!(r.skipped, None);
    assert_eq!(report.mode, mode);
    assert!(r.samples_acked > 0, "{r:?}");
    if mode == Mode::Saturation {
        // Retried until answered: everything is acknowledged in the end.
        assert_eq!(r.samples_acked, 30_000, "{}", report.table());
        assert_eq!(r.samples_failed, 0, "{}", report.table());
    }
    assert!(r.drained, "{}", report.table());
    assert_eq!(r.samples_lost, 0, "{}", report.table());
    assert_eq!(r.other_problems, 0, "{}", report.table());
    assert_eq!(r.deliveries, r.deliveries_expected);
    // Every Deployment goes to 2 of 3 targets and t2 is dead: a third of
    // the pairs go to t2, and those are not lost.
    assert!(r.deliveries_to_dead > 0 && r.deliveries_to_dead < r.deliveries);
    // The gateway did work: some CPU, and not absurdly much for 30,000
    // samples (a sanity bound, not a performance target).
    assert!(
        r.cpu_secs > 0.0 && r.cpu_secs < 60.0,
        "gateway CPU {} s: {}",
        r.cpu_secs,
        report.table()
    );
    assert!(r.peak_rss_bytes > 0);
    // The sinks counted what they received: some bytes per delivery.
    assert!(r.bytes_received > 0 && r.bytes_per_delivery > 0.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs vmagent (FANOUT_VMAGENT_BIN); run by .ci/run"]
async fn vmagent_routes_and_labels_like_fanout() {
    let vm = bench::find_vmagent().expect("no vmagent: set FANOUT_VMAGENT_BIN or put it on PATH");
    check(Gateway::Vmagent, PathBuf::from("/nonexistent"), Some(vm)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a fanout binary (FANOUT_BIN); run by .ci/run"]
async fn fanout_delivers_what_it_acked() {
    let bin = std::env::var_os("FANOUT_BIN")
        .map(PathBuf::from)
        .expect("set FANOUT_BIN to a fanout binary");
    check(Gateway::Fanout, bin, None).await;
}
