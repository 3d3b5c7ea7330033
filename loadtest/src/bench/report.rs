//! Bench results and the side-by-side table (pure formatting).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What one gateway did with the scenario's traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayResult {
    /// `fanout` or `vmagent`.
    pub gateway: String,
    /// Why it did not run (binary missing, failed to start), if it did not.
    pub skipped: Option<String>,
    /// Samples the gateway acknowledged (2xx to the generator).
    pub samples_acked: u64,
    /// Samples the generator could not get acknowledged.
    pub samples_failed: u64,
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
    /// `deliveries / cpu_secs`.
    pub samples_per_cpu_sec: f64,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// End-to-end latency over all targets' samples, median (ms).
    pub latency_p50_ms: f64,
    /// End-to-end latency, 99th percentile (ms).
    pub latency_p99_ms: f64,
    /// Acked samples missing at a live target they should reach.
    pub samples_lost: u64,
    /// Duplicated, misrouted, mislabelled or unidentified samples and refused requests.
    pub other_problems: u64,
    /// The first few problems, readable.
    pub problem_examples: Vec<String>,
    /// Whether every expected delivery arrived before the drain timeout.
    pub drained: bool,
    /// Seconds from the generator's end until delivery completed (or the timeout).
    pub drain_secs: f64,
}

/// The whole run: scenario, command, one result per gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    /// Scenario name.
    pub scenario: String,
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
    /// Fanout samples/CPU-s ÷ vmagent samples/CPU-s, when both ran.
    pub fn ratio(&self) -> Option<f64> {
        let get = |name: &str| {
            self.results
                .iter()
                .find(|r| r.gateway == name && r.skipped.is_none() && r.samples_per_cpu_sec > 0.0)
                .map(|r| r.samples_per_cpu_sec)
        };
        Some(get("fanout")? / get("vmagent")?)
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario {}: {}", self.scenario, self.summary);
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
        row("samples acked", &|r| thousands(r.samples_acked));
        row("samples refused", &|r| thousands(r.samples_failed));
        row("send s", &|r| format!("{:.1}", r.send_secs));
        row("ingest p99 ms", &|r| format!("{:.0}", r.ingest_p99_ms));
        row("deliveries expected", &|r| thousands(r.deliveries_expected));
        row("deliveries", &|r| thousands(r.deliveries));
        row("to dead target", &|r| thousands(r.deliveries_to_dead));
        row("gateway CPU s", &|r| format!("{:.2}", r.cpu_secs));
        row("samples / CPU-s", &|r| {
            thousands(r.samples_per_cpu_sec.round() as u64)
        });
        row("peak RSS MiB", &|r| {
            format!("{:.1}", r.peak_rss_bytes as f64 / (1024.0 * 1024.0))
        });
        row("e2e p50 ms", &|r| format!("{:.0}", r.latency_p50_ms));
        row("e2e p99 ms", &|r| format!("{:.0}", r.latency_p99_ms));
        row("samples lost", &|r| thousands(r.samples_lost));
        row("other problems", &|r| thousands(r.other_problems));
        row("drain", &|r| {
            format!(
                "{} {:.1}s",
                if r.drained { "done" } else { "TIMEOUT" },
                r.drain_secs
            )
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
        match self.ratio() {
            Some(x) => {
                let _ = writeln!(s, "fanout / vmagent samples per CPU-s: {x:.2}");
            }
            None => {
                let _ = writeln!(s, "fanout / vmagent samples per CPU-s: n/a (both must run)");
            }
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
        GatewayResult {
            gateway: name.to_owned(),
            samples_acked: 1_000_000,
            deliveries_expected: 3_000_000,
            deliveries: 3_000_000,
            cpu_secs: 3_000_000.0 / per_cpu,
            samples_per_cpu_sec: per_cpu,
            peak_rss_bytes: 64 << 20,
            latency_p50_ms: 1002.4,
            latency_p99_ms: 1890.0,
            drained: true,
            drain_secs: 1.25,
            ..GatewayResult::default()
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn table_side_by_side_with_ratio() {
        let r = BenchReport {
            scenario: "fanout-3".into(),
            summary: "4 clusters".into(),
            results: vec![
                result("fanout", 2_000_000.0),
                result("vmagent", 1_000_000.0),
            ],
            ..BenchReport::default()
        };
        assert_eq!(r.ratio(), Some(2.0));
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "scenario fanout-3: 4 clusters");
        let head: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(head, ["fanout", "vmagent"], "{t}");
        let per = lines
            .iter()
            .find(|l| l.starts_with("samples / CPU-s"))
            .unwrap();
        assert!(
            per.contains("2,000,000") && per.ends_with("1,000,000"),
            "{per}"
        );
        assert!(t.contains("peak RSS MiB"));
        assert!(t.contains("done 1.2s") || t.contains("done 1.3s"));
        assert!(
            t.ends_with("fanout / vmagent samples per CPU-s: 2.00\n"),
            "{t}"
        );
        // Columns line up: every row has the same width.
        let widths: Vec<usize> = lines[1..17].iter().map(|l| l.len()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }

    #[test]
    fn skipped_gateway_has_dashes_and_no_ratio() {
        let mut v = result("vmagent", 1.0);
        v.skipped = Some("vmagent not found".into());
        let r = BenchReport {
            results: vec![result("fanout", 5.0), v],
            ..BenchReport::default()
        };
        assert_eq!(r.ratio(), None);
        let t = r.table();
        assert!(t.contains("vmagent: not run: vmagent not found"));
        assert!(t.contains("n/a"));
        let lost = t.lines().find(|l| l.starts_with("samples lost")).unwrap();
        assert!(lost.ends_with(" -"), "{lost}");
    }

    #[test]
    fn json_round_trip() {
        let r = BenchReport {
            scenario: "x".into(),
            results: vec![result("fanout", 3.0)],
            ..BenchReport::default()
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"samplesPerCpuSec\":3.0"));
        let back: BenchReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }
}
