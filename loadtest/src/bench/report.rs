//! Bench results and the side-by-side table (pure formatting).
//!
//! Two throughputs per gateway, both per CPU-second of the gateway process
//! from the first request until every acknowledged sample is at every live
//! target (or the drain timeout): **ingested** samples (acknowledged to the
//! generator) and **deliveries** (distinct (sample, target) pairs the sinks
//! received). With 3 targets a sample is 3 deliveries.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How the generator offers load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Open loop at the scenario's rate (`traffic.rate`): the same offered
    /// load for both gateways; compares cost and latency at that load.
    #[default]
    Rate,
    /// Closed loop: each connection sends its next request as soon as the
    /// previous one is answered (429/503 and missing answers sent again); measures how many samples
    /// per CPU-second the gateway takes in when pushed.
    Saturation,
}

impl Mode {
    /// `rate` or `saturation`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rate => "rate",
            Mode::Saturation => "saturation",
        }
    }
}

/// `numerator / denominator`, 0 when the denominator is not positive.
pub fn per(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// What one gateway did with the scenario's traffic.
///
/// Every field has a default when reading JSON, so reports written before a
/// field existed still load (`fanout-load plot`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayResult {
    /// `fanout` or `vmagent`.
    pub gateway: String,
    /// Why it did not run (binary missing, failed to start), if it did not.
    pub skipped: Option<String>,
    /// Samples the gateway acknowledged (2xx to the generator).
    pub samples_acked: u64,
    /// Samples the generator could not get acknowledged.
    pub samples_failed: u64,
    /// Answers 429 or 503 after which the generator sent the request again
    /// (saturation mode).
    pub retries: u64,
    /// Seconds the generator was sending.
    pub send_secs: f64,
    /// Generator request latency (the gateway's answer), median (ms).
    pub ingest_p50_ms: f64,
    /// Generator request latency, 99th percentile (ms).
    pub ingest_p99_ms: f64,
    /// (sample, live target) deliveries the acked samples call for.
    pub deliveries_expected: u64,
    /// Distinct (sample, target) deliveries the sinks received.
    pub deliveries: u64,
    /// (sample, dead target) pairs: cannot be delivered while it refuses connections.
    pub deliveries_to_dead: u64,
    /// Gateway CPU (user + system) from the first request to the end of the drain.
    pub cpu_secs: f64,
    /// `samples_acked / cpu_secs`: ingested samples per CPU-second.
    pub ingested_per_cpu_sec: f64,
    /// CPU the verifying sinks spent on the bodies they received
    /// (decompressing, decoding, recording; not their socket IO) over the
    /// same span: to tell whether the sinks, not the gateway, limited the run.
    #[serde(default)]
    pub sink_cpu_secs: f64,
    /// The most CPU one sink spent on its bodies (as `sink_cpu_secs`): each
    /// target is its own receiver, so this is what one receiver costs.
    #[serde(default)]
    pub busiest_sink_cpu_secs: f64,
    /// CPU of the whole `fanout-load` process (generator and sinks) over the
    /// same span: a bound on the sinks' CPU with their socket IO.
    #[serde(default)]
    pub load_cpu_secs: f64,
    /// `deliveries / cpu_secs`: (sample, target) deliveries per CPU-second.
    /// (Reports before saturation mode called it `samplesPerCpuSec`.)
    #[serde(alias = "samplesPerCpuSec")]
    pub deliveries_per_cpu_sec: f64,
    /// Request body bytes the sinks received (compressed, as sent).
    pub bytes_received: u64,
    /// `bytes_received / deliveries`: bytes delivered per sample per target.
    pub bytes_per_delivery: f64,
    /// `POST` requests the sinks received (every attempt).
    #[serde(default)]
    pub requests_received: u64,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// End-to-end latency over the live targets' samples, median (ms).
    pub latency_p50_ms: f64,
    /// End-to-end latency, 99th percentile (ms).
    pub latency_p99_ms: f64,
    /// Acked samples missing at a live target they should reach.
    pub samples_lost: u64,
    /// Duplicated, misrouted, mislabelled or unidentified samples and refused requests.
    pub other_problems: u64,
    /// The first few problems, readable.
    pub problem_examples: Vec<String>,
    /// Samples that arrived at a live target after a newer round of their
    /// series had (the sinks' per-series count, summed over the targets).
    /// Reported, not a problem: the generator sends over parallel
    /// connections, so some reordering is the sender's.
    pub out_of_order_samples: u64,
    /// Whether every expected delivery arrived before the drain timeout.
    pub drained: bool,
    /// Seconds from the end of the load (the generator's last answered
    /// request) until the sinks held every expected delivery, or until the
    /// drain timeout. (Reports before it was named called it `drainSecs`.)
    #[serde(rename = "drainSeconds", alias = "drainSecs")]
    pub drain_secs: f64,
    /// Expected deliveries still missing at the drain timeout (0 when drained).
    pub missing_at_drain_timeout: u64,
}

fn memory() -> String {
    "memory".into()
}

/// The whole run: scenario, command, one result per gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    /// Scenario name.
    pub scenario: String,
    /// How the load was offered.
    #[serde(default)]
    pub mode: Mode,
    /// Fanout's `--durability` (`memory` before it was recorded).
    #[serde(default = "memory")]
    pub durability: String,
    /// One line describing the fleet and routing.
    pub summary: String,
    /// The command line that produced this report.
    pub command: String,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// When it ran (RFC 3339, UTC).
    pub time: String,
    /// Per gateway, in the order they ran.
    pub results: Vec<GatewayResult>,
}

impl BenchReport {
    fn ran(&self, name: &str) -> Option<&GatewayResult> {
        self.results
            .iter()
            .find(|r| r.gateway == name && r.skipped.is_none())
    }

    fn ratio_of(&self, f: impl Fn(&GatewayResult) -> f64) -> Option<f64> {
        let (a, b) = (f(self.ran("fanout")?), f(self.ran("vmagent")?));
        (a > 0.0 && b > 0.0).then(|| a / b)
    }

    /// Fanout ÷ vmagent ingested samples per CPU-second, when both ran.
    pub fn ingest_ratio(&self) -> Option<f64> {
        self.ratio_of(|r| r.ingested_per_cpu_sec)
    }

    /// Fanout ÷ vmagent deliveries per CPU-second, when both ran.
    pub fn delivery_ratio(&self) -> Option<f64> {
        self.ratio_of(|r| r.deliveries_per_cpu_sec)
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario {}: {}", self.scenario, self.summary);
        let _ = writeln!(s, "mode {}", self.mode.name());
        if self.durability == "wal" {
            let _ = writeln!(s, "fanout durability {}", self.durability);
        }
        let cols: Vec<&GatewayResult> = self.results.iter().collect();
        let mut rows: Vec<(&str, Vec<String>)> = Vec::new();
        let cell = |r: &GatewayResult, f: &dyn Fn(&GatewayResult) -> String| {
            if r.skipped.is_some() {
                "-".to_owned()
            } else {
                f(r)
            }
        };
        let mut row = |name: &'static str, f: &dyn Fn(&GatewayResult) -> String| {
            rows.push((name, cols.iter().map(|r| cell(r, f)).collect()));
        };
        row("samples acked (ingested)", &|r| thousands(r.samples_acked));
        row("samples refused", &|r| thousands(r.samples_failed));
        row("requests sent again", &|r| thousands(r.retries));
        row("send s", &|r| format!("{:.1}", r.send_secs));
        row("ingest p99 ms", &|r| format!("{:.0}", r.ingest_p99_ms));
        row("deliveries expected", &|r| thousands(r.deliveries_expected));
        row("deliveries (sample,target)", &|r| thousands(r.deliveries));
        row("to dead target", &|r| thousands(r.deliveries_to_dead));
        row("gateway CPU s", &|r| format!("{:.2}", r.cpu_secs));
        row("sinks CPU s (bodies)", &|r| {
            format!("{:.2}", r.sink_cpu_secs)
        });
        row("busiest sink CPU s (bodies)", &|r| {
            format!("{:.2}", r.busiest_sink_cpu_secs)
        });
        row("fanout-load CPU s (all)", &|r| {
            format!("{:.2}", r.load_cpu_secs)
        });
        row("ingested samples / CPU-s", &|r| {
            thousands(r.ingested_per_cpu_sec.round() as u64)
        });
        row("deliveries / CPU-s", &|r| {
            thousands(r.deliveries_per_cpu_sec.round() as u64)
        });
        row("bytes / sample / target", &|r| {
            format!("{:.2}", r.bytes_per_delivery)
        });
        row("samples / request sent", &|r| {
            thousands(per(r.deliveries as f64, r.requests_received as f64).round() as u64)
        });
        row("peak RSS MiB", &|r| {
            format!("{:.1}", r.peak_rss_bytes as f64 / (1024.0 * 1024.0))
        });
        row("e2e p50 ms (live targets)", &|r| {
            format!("{:.0}", r.latency_p50_ms)
        });
        row("e2e p99 ms (live targets)", &|r| {
            format!("{:.0}", r.latency_p99_ms)
        });
        row("samples lost", &|r| thousands(r.samples_lost));
        row("other problems", &|r| thousands(r.other_problems));
        row("samples out of order", &|r| {
            thousands(r.out_of_order_samples)
        });
        row("drained after load end, s", &|r| {
            if r.drained {
                format!("{:.1}", r.drain_secs)
            } else {
                format!(
                    "not drained ({} missing)",
                    thousands(r.missing_at_drain_timeout)
                )
            }
        });
        let name_w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let col_w: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(i, r)| {
                rows.iter()
                    .map(|(_, v)| v[i].len())
                    .chain([r.gateway.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let _ = write!(s, "{:name_w$}", "");
        for (r, w) in cols.iter().zip(&col_w) {
            let _ = write!(s, "  {:>w$}", r.gateway);
        }
        s.push('\n');
        for (name, vals) in &rows {
            let _ = write!(s, "{name:name_w$}");
            for (v, w) in vals.iter().zip(&col_w) {
                let _ = write!(s, "  {v:>w$}");
            }
            s.push('\n');
        }
        for r in &cols {
            if let Some(why) = &r.skipped {
                let _ = writeln!(s, "{}: not run: {why}", r.gateway);
            }
            for p in &r.problem_examples {
                let _ = writeln!(s, "{}: {p}", r.gateway);
            }
        }
        let fmt =
            |x: Option<f64>| x.map_or("n/a (both must run)".to_owned(), |x| format!("{x:.2}"));
        let ingest = format!(
            "fanout / vmagent ingested samples per CPU-s: {}",
            fmt(self.ingest_ratio())
        );
        let deliver = format!(
            "fanout / vmagent deliveries per CPU-s: {}",
            fmt(self.delivery_ratio())
        );
        // The mode's headline first.
        let lines = match self.mode {
            Mode::Saturation => [ingest, deliver],
            Mode::Rate => [deliver, ingest],
        };
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        s
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::with_capacity(d.len() + d.len() / 3);
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, per_cpu: f64) -> GatewayResult {
        let cpu = 3_000_000.0 / per_cpu;
        GatewayResult {
            gateway: name.to_owned(),
            samples_acked: 1_000_000,
            deliveries_expected: 3_000_000,
            deliveries: 3_000_000,
            cpu_secs: cpu,
            ingested_per_cpu_sec: per(1_000_000.0, cpu),
            deliveries_per_cpu_sec: per_cpu,
            bytes_received: 4_500_000,
            bytes_per_delivery: per(4_500_000.0, 3_000_000.0),
            requests_received: 1_500,
            peak_rss_bytes: 64 << 20,
            latency_p50_ms: 1002.4,
            latency_p99_ms: 1890.0,
            drained: true,
            drain_secs: 1.25,
            out_of_order_samples: 7,
            ..GatewayResult::default()
        }
    }

    fn report(mode: Mode) -> BenchReport {
        BenchReport {
            scenario: "fanout-3".into(),
            summary: "4 clusters".into(),
            mode,
            durability: "memory".into(),
            results: vec![
                result("fanout", 2_000_000.0),
                result("vmagent", 1_000_000.0),
            ],
            ..BenchReport::default()
        }
    }

    fn row<'a>(t: &'a str, name: &str) -> &'a str {
        t.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name:?} in\n{t}"))
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn per_is_zero_without_a_denominator() {
        assert_eq!(per(6.0, 4.0), 1.5);
        assert_eq!(per(6.0, 0.0), 0.0);
        // 1.5 bytes per (sample, target): 4.5 MB for 1 M samples to 3 targets.
        assert_eq!(result("x", 1.0).bytes_per_delivery, 1.5);
    }

    #[test]
    fn mode_names_parse_and_serialize() {
        use clap::ValueEnum as _;
        assert_eq!(Mode::default(), Mode::Rate);
        assert_eq!(Mode::from_str("saturation", true), Ok(Mode::Saturation));
        assert_eq!(Mode::from_str("rate", true), Ok(Mode::Rate));
        assert!(Mode::from_str("closed", true).is_err());
        assert_eq!(
            serde_json::to_string(&Mode::Saturation).unwrap(),
            "\"saturation\""
        );
        assert_eq!(Mode::Saturation.name(), "saturation");
    }

    #[test]
    fn table_side_by_side_with_both_ratios() {
        let r = report(Mode::Rate);
        assert_eq!(r.delivery_ratio(), Some(2.0));
        assert_eq!(r.ingest_ratio(), Some(2.0));
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "scenario fanout-3: 4 clusters");
        assert_eq!(lines[1], "mode rate");
        let head: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(head, ["fanout", "vmagent"], "{t}");
        let d = row(&t, "deliveries / CPU-s");
        assert!(d.contains("2,000,000") && d.ends_with("1,000,000"), "{d}");
        let i = row(&t, "ingested samples / CPU-s");
        assert!(i.contains("666,667") && i.ends_with("333,333"), "{i}");
        let b = row(&t, "bytes / sample / target");
        assert!(b.ends_with("1.50"), "{b}");
        assert!(row(&t, "samples / request sent").ends_with("2,000"));
        assert!(row(&t, "e2e p99 ms (live targets)").ends_with("1890"));
        assert!(t.contains("peak RSS MiB"));
        let d = row(&t, "drained after load end, s");
        assert!(d.ends_with(" 1.2") || d.ends_with(" 1.3"), "{d}");
        assert!(row(&t, "samples out of order").ends_with(" 7"));
        // Rate mode: deliveries first.
        assert!(
            t.ends_with(
                "fanout / vmagent deliveries per CPU-s: 2.00\n\
                 fanout / vmagent ingested samples per CPU-s: 2.00\n"
            ),
            "{t}"
        );
        // Columns line up: every row has the same width.
        let n_rows = lines
            .iter()
            .position(|l| l.starts_with("drained after"))
            .unwrap();
        let widths: Vec<usize> = lines[2..=n_rows].iter().map(|l| l.len()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }

    #[test]
    fn saturation_headline_is_ingested_samples() {
        let mut r = report(Mode::Saturation);
        r.results[1].ingested_per_cpu_sec = 250_000.0;
        let t = r.table();
        assert!(t.contains("\nmode saturation\n"), "{t}");
        let tail: Vec<&str> = t.lines().rev().take(2).collect();
        assert_eq!(
            tail,
            [
                "fanout / vmagent deliveries per CPU-s: 2.00",
                "fanout / vmagent ingested samples per CPU-s: 2.67",
            ]
        );
    }

    #[test]
    fn skipped_gateway_has_dashes_and_no_ratio() {
        let mut v = result("vmagent", 1.0);
        v.skipped = Some("vmagent not found".into());
        let r = BenchReport {
            results: vec![result("fanout", 5.0), v],
            ..BenchReport::default()
        };
        assert_eq!(r.delivery_ratio(), None);
        assert_eq!(r.ingest_ratio(), None);
        let t = r.table();
        assert!(t.contains("vmagent: not run: vmagent not found"));
        assert!(t.contains("n/a"));
        assert!(row(&t, "samples lost").ends_with(" -"));
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let r = BenchReport {
            scenario: "x".into(),
            mode: Mode::Saturation,
            results: vec![result("fanout", 3.0)],
            ..BenchReport::default()
        };
        let j = serde_json::to_string(&r).unwrap();
        for key in [
            "\"mode\":\"saturation\"",
            "\"deliveriesPerCpuSec\":3.0",
            "\"ingestedPerCpuSec\":1.0",
            "\"bytesReceived\":4500000",
            "\"bytesPerDelivery\":1.5",
            "\"retries\":0",
            "\"outOfOrderSamples\":7",
            "\"drainSeconds\":1.25",
            "\"missingAtDrainTimeout\":0",
        ] {
            assert!(j.contains(key), "{key} not in {j}");
        }
        let back: BenchReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn an_undrained_run_says_how_much_is_missing() {
        let mut r = report(Mode::Rate);
        r.results[1].drained = false;
        r.results[1].drain_secs = 60.0;
        r.results[1].missing_at_drain_timeout = 12_345;
        let t = r.table();
        let d = row(&t, "drained after load end, s");
        assert!(d.ends_with("not drained (12,345 missing)"), "{d}");
        // The columns still line up.
        let widths: Vec<usize> = t
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with("fanout /"))
            .map(str::len)
            .collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }

    #[test]
    fn reports_from_before_saturation_mode_still_load() {
        let old = r#"{"scenario":"fanout-3","summary":"s","command":"c","cpus":2,
            "time":"t","results":[{"gateway":"fanout","skipped":null,
            "samplesAcked":10,"samplesPerCpuSec":825688.0,"drained":true,"drainSecs":2.5}]}"#;
        let r: BenchReport = serde_json::from_str(old).unwrap();
        assert_eq!(r.mode, Mode::Rate);
        assert_eq!(r.results[0].deliveries_per_cpu_sec, 825688.0);
        assert_eq!(r.results[0].bytes_per_delivery, 0.0);
        assert_eq!(r.results[0].drain_secs, 2.5);
    }
}
