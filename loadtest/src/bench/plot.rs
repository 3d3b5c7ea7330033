//! An SVG of bench reports: (sample, target) deliveries per CPU-second
//! (left), end-to-end p99 latency (middle) and bytes delivered per sample
//! per target (right), one pair of bars (Fanout, vmagent) per scenario.
//! Uses plotters' SVG backend only (no font files: text is SVG `<text>`).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::BenchReport;

const GATEWAYS: [&str; 2] = ["fanout", "vmagent"];
const COLORS: [RGBColor; 2] = [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xff, 0x7f, 0x0e)];

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub struct PlotError(String);

/// One scenario's bars: per gateway (Fanout, vmagent), samples/CPU-s and p99 ms.
#[derive(Clone, Debug, PartialEq)]
pub struct Bars {
    /// Scenario name.
    pub scenario: String,
    /// Samples per CPU-second, per gateway (`None`: did not run).
    pub per_cpu: [Option<f64>; 2],
    /// End-to-end p99 in ms, per gateway.
    pub p99_ms: [Option<f64>; 2],
    /// Bytes delivered per (sample, target), per gateway (`None` also for
    /// reports written before it was measured).
    pub bytes: [Option<f64>; 2],
}

/// The bars to draw for `reports`, in their order.
pub fn bars(reports: &[BenchReport]) -> Vec<Bars> {
    reports
        .iter()
        .map(|r| {
            let mut b = Bars {
                scenario: r.scenario.clone(),
                per_cpu: [None; 2],
                p99_ms: [None; 2],
                bytes: [None; 2],
            };
            for (i, g) in GATEWAYS.iter().enumerate() {
                if let Some(x) = r
                    .results
                    .iter()
                    .find(|x| x.gateway == *g && x.skipped.is_none())
                {
                    b.per_cpu[i] = Some(x.deliveries_per_cpu_sec);
                    b.p99_ms[i] = Some(x.latency_p99_ms);
                    b.bytes[i] = Some(x.bytes_per_delivery).filter(|v| *v > 0.0);
                }
            }
            b
        })
        .collect()
}

/// `1234567.0` as `1.23M`.
pub fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Draws `reports` as SVG text.
pub fn svg(reports: &[BenchReport]) -> Result<String, PlotError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1440, 420)).into_drawing_area();
        draw(&root, &bars(reports)).map_err(|e| PlotError(e.to_string()))?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    Ok(out)
}

/// Draws `reports` into an SVG file.
pub fn write_svg(reports: &[BenchReport], path: &Path) -> Result<(), PlotError> {
    let text = svg(reports)?;
    std::fs::write(path, text).map_err(|e| PlotError(format!("{}: {e}", path.display())))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[Bars],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (left, rest) = root.split_horizontally(480);
    let (middle, right) = rest.split_horizontally(480);
    panel(
        root,
        &left,
        bars,
        "samples delivered per gateway CPU-second",
        |b| b.per_cpu,
        short,
    )?;
    panel(
        root,
        &middle,
        bars,
        "end-to-end latency p99 (ms)",
        |b| b.p99_ms,
        |v| format!("{v:.0}"),
    )?;
    panel(
        root,
        &right,
        bars,
        "bytes delivered per sample per target",
        |b| b.bytes,
        |v| format!("{v:.2}"),
    )?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[Bars],
    title: &str,
    value: impl Fn(&Bars) -> [Option<f64>; 2],
    label: impl Fn(f64) -> String,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = bars.len().max(1) as f64;
    let ymax = bars
        .iter()
        .flat_map(|b| value(b).into_iter().flatten())
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.35;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..n, 0.0..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v| short(*v))
        .draw()?;
    for (i, b) in bars.iter().enumerate() {
        let x0 = i as f64;
        for (k, v) in value(b).into_iter().enumerate() {
            let Some(v) = v else { continue };
            let (a, z) = (x0 + 0.1 + 0.4 * k as f64, x0 + 0.5 + 0.4 * k as f64);
            let rect = Rectangle::new([(a, 0.0), (z, v)], COLORS[k].filled());
            let s = chart.draw_series(std::iter::once(rect))?;
            if i == 0 {
                s.label(GATEWAYS[k]).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], COLORS[k].filled())
                });
            }
            chart.draw_series(std::iter::once(Text::new(
                label(v),
                ((a + z) / 2.0, v),
                ("sans-serif", 13)
                    .into_font()
                    .style(FontStyle::Normal)
                    .into_text_style(area)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )))?;
        }
        // The scenario name under its bars, in pixels of the whole image.
        let (px, py) = chart.backend_coord(&(x0 + 0.5, 0.0));
        root.draw(&Text::new(
            b.scenario.clone(),
            (px, py + 8),
            ("sans-serif", 14)
                .into_text_style(root)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::GatewayResult;

    fn report(name: &str, with_vmagent: bool) -> BenchReport {
        let mut results = vec![GatewayResult {
            gateway: "fanout".into(),
            deliveries_per_cpu_sec: 2_500_000.0,
            latency_p99_ms: 1100.0,
            bytes_per_delivery: 1.75,
            ..GatewayResult::default()
        }];
        results.push(GatewayResult {
            gateway: "vmagent".into(),
            deliveries_per_cpu_sec: 1_000_000.0,
            latency_p99_ms: 1900.0,
            skipped: (!with_vmagent).then(|| "missing".to_owned()),
            ..GatewayResult::default()
        });
        BenchReport {
            scenario: name.into(),
            results,
            ..BenchReport::default()
        }
    }

    #[test]
    fn bars_skip_gateways_that_did_not_run() {
        let b = bars(&[report("fanout-3", true), report("routed", false)]);
        assert_eq!(b[0].per_cpu, [Some(2_500_000.0), Some(1_000_000.0)]);
        assert_eq!(b[1].per_cpu, [Some(2_500_000.0), None]);
        assert_eq!(b[1].p99_ms, [Some(1100.0), None]);
        // vmagent's report has no bytes figure (an older report): no bar.
        assert_eq!(b[0].bytes, [Some(1.75), None]);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(2_500_000.0), "2.50M");
        assert_eq!(short(12_345.0), "12k");
        assert_eq!(short(7.0), "7");
    }

    #[test]
    fn svg_has_titles_names_and_values() {
        let s = svg(&[report("fanout-3", true), report("one-dead-target", true)]).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..s.len().min(80)]);
        for needle in [
            "samples delivered per gateway CPU-second",
            "latency p99",
            "bytes delivered per sample per target",
            "1.75",
            "fanout-3",
            "one-dead-target",
            "2.50M",
            "1900",
            "vmagent",
        ] {
            assert!(s.contains(needle), "missing {needle}");
        }
    }
}
