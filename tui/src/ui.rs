//! Rendering: [`render`] draws a [`State`] into a ratatui [`Frame`] and does
//! nothing else (no IO, no clock), so a fixed state renders the same screen
//! every time (the snapshot tests rely on it).
//!
//! Readability on dark and light terminals: only the terminal's own named
//! colors for meaning (green healthy, yellow retrying, red failing, magenta
//! paused, cyan data), never a hard-coded foreground or background; the
//! selection is reverse video. At 80×24 every view keeps its essential
//! columns; wider terminals get more (endpoint, gateway).

use std::collections::{BTreeMap, HashMap};

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Cell, Chart, Clear, Dataset, GraphType, List, ListItem, ListState, Paragraph, Row,
    Table, TableState, Wrap,
};
use ratatui::Frame;

use crate::api::{field_lines, Registry};
use crate::fmt;
use crate::keys::HELP;
use crate::state::{
    export_state_rank, state_rank, ConfigItem, Gateway, Link, State, TargetRow, View,
    HISTORY_SECONDS,
};

/// Drop reasons always listed, in this order (others follow).
pub const DROP_REASONS: [&str; 6] = [
    "unattributed",
    "foreign",
    "filtered",
    "queue_full",
    "disk_full",
    "rejected",
];

/// One throughput line: `label`, (samples, bytes) per second, then totals.
fn flow_line(label: &'static str, rate: (f64, f64), total: (f64, f64)) -> Line<'static> {
    Line::from(vec![
        Span::styled(label, bold()),
        Span::styled(
            format!(
                "{:>8} samples/s {:>10}/s",
                fmt::si(rate.0),
                fmt::bytes(rate.1)
            ),
            Style::default().fg(Color::Cyan),
        ),
        Span::raw(format!(
            "   total {} samples, {}",
            fmt::si(total.0),
            fmt::bytes(total.1)
        )),
    ])
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

/// Style of a target state.
pub fn state_style(state: &str) -> Style {
    match state {
        "healthy" => Style::default().fg(Color::Green),
        "idle" => Style::default().fg(Color::Gray),
        "paused" => Style::default().fg(Color::Magenta),
        "failing" => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        _ => Style::default().fg(Color::Yellow),
    }
}

/// Draws the whole console.
pub fn render(state: &State, f: &mut Frame) {
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(f.area());
    render_tabs(state, f, tabs);
    let body = if state.view == View::Overview {
        body
    } else {
        stale_banner(state, f, body)
    };
    match state.view {
        View::Overview => render_overview(state, f, body),
        View::Targets => match &state.detail {
            Some(id) => render_detail(state, f, body, id),
            None => render_targets(state, f, body),
        },
        View::Failures => render_failures(state, f, body),
        View::Config => render_config(state, f, body),
        View::Deployments => render_deployments(state, f, body),
    }
    render_status(state, f, status);
    if state.help {
        render_help(f, body);
    }
}

/// Outside the Overview, a red line names the gateways that are not
/// connected (their figures are the last ones received); returns the rest.
fn stale_banner(state: &State, f: &mut Frame, area: Rect) -> Rect {
    let down: Vec<String> = state
        .gateways
        .iter()
        .filter_map(|g| match &g.link {
            Link::Disconnected { since_ms, .. } => {
                Some(format!("{} since {} UTC", g.name(), fmt::clock(*since_ms)))
            }
            _ => None,
        })
        .collect();
    let any_data = state.gateways.iter().any(|g| g.snapshot.is_some());
    if down.is_empty() || !any_data || area.height < 3 {
        return area;
    }
    let [banner, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let text = format!("✖ disconnected: {} (last data shown)", down.join(", "));
    f.render_widget(
        Paragraph::new(Span::styled(
            text,
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        )),
        banner,
    );
    rest
}

fn render_tabs(state: &State, f: &mut Frame, area: Rect) {
    let up = state.gateways.iter().filter(|g| g.is_connected()).count();
    let n = state.gateways.len();
    let right = if area.width >= 100 {
        format!("gateways {up}/{n} up · ? help · q quit ")
    } else {
        format!("{up}/{n} up · ? help ")
    };
    let right_style = if up < n {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    let [left_area, right_area] = Layout::horizontal([
        Constraint::Min(0),
        Constraint::Length(right.chars().count() as u16),
    ])
    .areas(area);
    // The product's name where there is room for it and the five tabs.
    let mut spans = Vec::new();
    if area.width >= 90 {
        spans.push(Span::styled("Fanout ", bold()));
    }
    for v in View::ALL {
        let text = format!(" {} {} ", v.index() + 1, v.title());
        if v == state.view {
            spans.push(Span::styled(text, selected().add_modifier(Modifier::BOLD)));
        } else {
            spans.push(Span::raw(text));
        }
    }
    f.render_widget(Paragraph::new(Line::from(spans)), left_area);
    f.render_widget(
        Paragraph::new(Span::styled(right, right_style)).right_aligned(),
        right_area,
    );
}

fn render_status(state: &State, f: &mut Frame, area: Rect) {
    let line = if state.editing_filter {
        Line::from(vec![
            Span::styled("/", bold()),
            Span::raw(state.filter[state.view.index()].clone()),
            Span::styled("▏", bold()),
            Span::raw("  Enter keeps the filter, Esc clears it"),
        ])
    } else if let Some(n) = &state.notice {
        let style = if n.error {
            Style::default().fg(Color::Red)
        } else {
            Style::default()
        };
        Line::from(Span::styled(
            format!("{} {}", fmt::clock(n.at_ms), n.text),
            style,
        ))
    } else {
        let hint = match state.view {
            View::Overview => "Tab/1-5 views · ? help · q quit",
            View::Targets if state.detail.is_some() => "Esc back · p pause/resume",
            View::Targets => {
                "↑↓/jk select · Enter detail · p pause/resume · s sort · r reverse · / filter"
            }
            View::Failures => "↑↓/jk scroll · / filter · Esc clear filter",
            View::Config => "↑↓/jk select · Deployment: effective exports · / filter",
            View::Deployments => {
                "↑↓/jk select · Enter its exports · s sort · r reverse · / filter · Esc close"
            }
        };
        Line::from(hint)
    };
    f.render_widget(Paragraph::new(line), area);
}

fn render_help(f: &mut Frame, area: Rect) {
    let w = area.width.min(64);
    let h = (HELP.len() as u16 + 4).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, d)| {
            Line::from(vec![
                Span::styled(format!("{k:<22}"), bold()),
                Span::raw(*d),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from("any key closes this help"));
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys ")),
        popup,
    );
}

/// The lines saying how a gateway is doing: one, or two when disconnected
/// (the second says why and when the next attempt is).
pub fn gateway_lines(state: &State, g: &Gateway) -> Vec<Line<'static>> {
    let now = state.now_ms;
    let name = g.name();
    let mut spans = Vec::new();
    let mut second = None;
    match &g.link {
        Link::Connected { .. } => {
            spans.push(Span::styled("● ", Style::default().fg(Color::Green)));
            spans.push(Span::styled(name, bold()));
            if let Some(s) = &g.snapshot {
                spans.push(Span::raw(format!(
                    "  up {}  config v{}",
                    fmt::duration(s.uptime_seconds),
                    fmt::si(s.config_version as f64)
                )));
                if s.draining {
                    spans.push(Span::styled(
                        "  draining",
                        Style::default().fg(Color::Yellow),
                    ));
                } else if !s.ready {
                    spans.push(Span::styled(
                        "  not ready",
                        Style::default().fg(Color::Yellow),
                    ));
                } else {
                    spans.push(Span::raw("  ready"));
                }
                // Forwarding goes on; admin writes do not (503).
                if s.store_reachable == Some(false) {
                    spans.push(Span::styled(
                        "  store: unreachable",
                        Style::default().fg(Color::Red),
                    ));
                }
                // In a fleet, each gateway's share of the traffic.
                if state.gateways.len() > 1 {
                    spans.push(Span::raw(format!(
                        "  in {} out {} samples/s",
                        fmt::si(g.rates.samples_in),
                        fmt::si(g.rates.samples_out)
                    )));
                }
            }
            if let Some((at, after)) = g.reconnected {
                if now - at < 60_000 {
                    spans.push(Span::styled(
                        format!(
                            "  reconnected at {} after {}",
                            fmt::clock(at),
                            fmt::duration(after)
                        ),
                        Style::default().fg(Color::Yellow),
                    ));
                }
            }
        }
        Link::Connecting { since_ms } => {
            spans.push(Span::styled("◌ ", Style::default().fg(Color::Yellow)));
            spans.push(Span::styled(name, bold()));
            spans.push(Span::raw(format!(
                "  connecting since {}",
                fmt::clock(*since_ms)
            )));
        }
        Link::Disconnected {
            since_ms,
            error,
            retry_at_ms,
        } => {
            let red = Style::default().fg(Color::Red);
            spans.push(Span::styled("✖ ", red.add_modifier(Modifier::BOLD)));
            spans.push(Span::styled(name, bold()));
            spans.push(Span::styled(
                format!(
                    "  disconnected since {} UTC ({} ago)",
                    fmt::clock(*since_ms),
                    fmt::duration(((now - since_ms) as f64 / 1000.0).max(0.0))
                ),
                red.add_modifier(Modifier::BOLD),
            ));
            let retry = ((retry_at_ms - now) as f64 / 1000.0).max(0.0);
            second = Some(Line::from(Span::styled(
                format!("  retry in {}: {error}", fmt::duration(retry.ceil())),
                red,
            )));
        }
    }
    if let Some(e) = &g.data_error {
        spans.push(Span::styled(
            format!("  {}", fmt::one_line(e)),
            Style::default().fg(Color::Yellow),
        ));
    }
    let mut lines = vec![Line::from(spans)];
    lines.extend(second);
    lines
}

fn pct(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        "0%".into()
    } else {
        format!("{:.1}%", 100.0 * part / whole)
    }
}

fn render_overview(state: &State, f: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = state
        .gateways
        .iter()
        .flat_map(|g| gateway_lines(state, g))
        .collect();
    if lines.len() > 5 {
        let down = state.gateways.iter().filter(|g| !g.is_connected()).count();
        let up = state.gateways.len() - down;
        lines = state
            .gateways
            .iter()
            .filter(|g| !g.is_connected())
            .flat_map(|g| gateway_lines(state, g))
            .take(4)
            .collect();
        lines.push(Line::from(format!("{up} connected, {down} not connected")));
    }
    let gw_height = lines.len() as u16 + 2;
    let [gw_area, totals_area, charts_area] = Layout::vertical([
        Constraint::Length(gw_height),
        Constraint::Length(7),
        Constraint::Min(0),
    ])
    .areas(area);

    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Gateways ")),
        gw_area,
    );

    let r = state.total_rates();
    let (mut samples_in, mut bytes_in, mut samples_out, mut bytes_out) = (0.0, 0.0, 0.0, 0.0);
    let mut drops: BTreeMap<String, f64> =
        DROP_REASONS.iter().map(|r| (r.to_string(), 0.0)).collect();
    for s in state.gateways.iter().filter_map(|g| g.snapshot.as_ref()) {
        samples_in += s.ingest.samples as f64;
        bytes_in += s.ingest.bytes as f64;
        samples_out += s.out.samples as f64;
        bytes_out += s.out.bytes as f64;
        for (k, v) in &s.drops {
            *drops.entry(k.clone()).or_default() += *v as f64;
        }
    }
    let targets = state.all_targets();
    let count = |st: &str| targets.iter().filter(|t| t.state == st).count();
    let (failing, retrying, paused) = (count("failing"), count("retrying"), count("paused"));
    let mut ordered: Vec<(String, f64)> = DROP_REASONS
        .iter()
        .map(|k| (k.to_string(), drops.get(*k).copied().unwrap_or(0.0)))
        .collect();
    ordered.extend(
        drops
            .iter()
            .filter(|(k, _)| !DROP_REASONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), *v)),
    );
    // Only the reasons that happened, so the line fits 80 columns.
    let mut drop_text = ordered
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| format!("{k} {}", fmt::si(*v)))
        .collect::<Vec<_>>()
        .join(" · ");
    if drop_text.is_empty() {
        drop_text = "none".into();
    }
    let err_style = |bad: bool| {
        if bad {
            Style::default().fg(Color::Red)
        } else {
            Style::default()
        }
    };
    let attempts = r.delivery_requests + r.delivery_failures;
    let lines = vec![
        flow_line("in   ", (r.samples_in, r.bytes_in), (samples_in, bytes_in)),
        flow_line(
            "out  ",
            (r.samples_out, r.bytes_out),
            (samples_out, bytes_out),
        ),
        Line::from(vec![
            Span::styled("errors ", bold()),
            Span::styled(
                format!(
                    "ingest {} of {} req/s",
                    pct(r.ingest_errors, r.ingest_requests),
                    fmt::si(r.ingest_requests)
                ),
                err_style(r.ingest_errors > 0.0),
            ),
            Span::raw(" · "),
            Span::styled(
                format!(
                    "delivery {} of {} attempts/s",
                    pct(r.delivery_failures, attempts),
                    fmt::si(attempts)
                ),
                err_style(r.delivery_failures > 0.0),
            ),
        ]),
        Line::from(vec![
            Span::styled("targets ", bold()),
            Span::raw(format!("{} · ", targets.len())),
            Span::styled(format!("{failing} failing"), err_style(failing > 0)),
            Span::raw(format!(" · {retrying} retrying · {paused} paused")),
        ]),
        Line::from(vec![Span::styled("drops ", bold()), Span::raw(drop_text)]),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Throughput and totals ")),
        totals_area,
    );

    let history = state.total_history();
    let now_s = state.now_ms.div_euclid(1000);
    let series = |get: fn(&crate::state::Rates) -> f64| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter(|(s, _)| now_s - **s <= HISTORY_SECONDS)
            .map(|(s, r)| ((*s - now_s) as f64, get(r)))
            .collect()
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(charts_area);
    let s_in = series(|r| r.samples_in);
    let s_out = series(|r| r.samples_out);
    let b_in = series(|r| r.bytes_in);
    let b_out = series(|r| r.bytes_out);
    render_chart(
        f,
        left,
        " samples/s ",
        &[("in", &s_in), ("out", &s_out)],
        fmt::si,
    );
    render_chart(
        f,
        right,
        " bytes/s ",
        &[("in", &b_in), ("out", &b_out)],
        fmt::bytes_short,
    );
}

/// A throughput chart of the last five minutes.
///
/// The scale follows the window's 95th percentile (with a quarter of room
/// above it), not its maximum, so one spike does not flatten the chart for
/// five minutes: points above the top are drawn at the top and the title
/// gives the peak. The legend is in the title, so it never covers the
/// newest points on the right.
fn render_chart(
    f: &mut Frame,
    area: Rect,
    title: &str,
    data: &[(&str, &[(f64, f64)])],
    label: fn(f64) -> String,
) {
    let mut values: Vec<f64> = data
        .iter()
        .flat_map(|(_, d)| d.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .collect();
    values.sort_by(f64::total_cmp);
    let max = values.last().copied().unwrap_or(0.0);
    let p95 = values
        .get((values.len() * 95).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let top = if max <= 0.0 {
        1.0
    } else if p95 <= 0.0 {
        max * 1.1
    } else {
        (p95 * 1.25).min(max * 1.1)
    };
    let clipped: Vec<Vec<(f64, f64)>> = data
        .iter()
        .map(|(_, d)| d.iter().map(|&(x, y)| (x, y.min(top))).collect())
        .collect();
    let styles = [Color::Cyan, Color::Magenta];
    let datasets: Vec<Dataset> = clipped
        .iter()
        .zip(styles)
        .map(|(d, c)| {
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(c))
                .data(d)
        })
        .collect();
    let empty = data.iter().all(|(_, d)| d.is_empty());
    let mut spans = vec![Span::raw(title.to_owned())];
    if empty {
        spans.push(Span::raw("(waiting for data) "));
    } else {
        for ((name, _), c) in data.iter().zip(styles) {
            spans.push(Span::styled(format!("━ {name} "), Style::default().fg(c)));
        }
        if max > top {
            spans.push(Span::raw(format!("· peak {} ", label(max))));
        }
    }
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(Line::from(spans)))
        .x_axis(
            Axis::default()
                .bounds([-(HISTORY_SECONDS as f64), 0.0])
                .labels(["-5m", "-2.5m", "now"]),
        )
        .y_axis(Axis::default().bounds([0.0, top]).labels([
            "0".to_owned(),
            label(top / 2.0),
            label(top),
        ]));
    f.render_widget(chart, area);
}

/// An empty table of the current view: why there is no data, or no row
/// matches its filter (`filtered`), or there is none at all (`none`).
fn no_rows(state: &State, f: &mut Frame, area: Rect, title: String, filtered: &str, none: &str) {
    let lines = match no_data_lines(state) {
        Some(l) => l,
        None if !state.filter[state.view.index()].is_empty() => {
            vec![Line::from(filtered.to_owned())]
        }
        None => vec![Line::from(none.to_owned())],
    };
    empty_message(f, area, title, lines)
}

fn empty_message(f: &mut Frame, area: Rect, title: String, lines: Vec<Line>) {
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title)),
        area,
    );
}

fn no_data_lines(state: &State) -> Option<Vec<Line<'static>>> {
    if state.gateways.iter().any(|g| g.snapshot.is_some()) {
        return None;
    }
    let down = state.gateways.iter().find(|g| !g.is_connected());
    Some(match down {
        Some(g) => gateway_lines(state, g),
        None => vec![Line::from("waiting for the first stats snapshot…")],
    })
}

fn filter_note(state: &State, view: View) -> String {
    let f = &state.filter[view.index()];
    if f.is_empty() {
        String::new()
    } else {
        format!(" · filter \"{f}\"")
    }
}

fn render_targets(state: &State, f: &mut Frame, area: Rect) {
    let rows = state.targets();
    let arrow = if state.sort_desc { "↓" } else { "↑" };
    let title = format!(
        " Targets ({}) · sort {} {arrow}{} ",
        rows.len(),
        state.sort.name(),
        filter_note(state, View::Targets)
    );
    if rows.is_empty() {
        return no_rows(
            state,
            f,
            area,
            title,
            "No target matches the filter (Esc clears it).",
            "No targets: no metrics export reaches a Deployment yet (see 4 Config).",
        );
    }
    let wide = area.width >= 120;
    // A target is named by its export(s) and Deployment count (its id is in
    // the detail view and the pause prompt).
    let name_width: usize = if wide { 22 } else { 14 };
    let mut header = vec!["TARGET"];
    let mut widths = vec![Constraint::Length(name_width as u16)];
    if wide {
        header.push("ENDPOINT");
        widths.push(Constraint::Length(26));
    }
    header.extend([
        "STATE",
        "QUEUE",
        "SPILL",
        "RATE/s",
        "FAIL",
        "P50ms",
        "P99ms",
        "LAST ERROR",
    ]);
    widths.extend([
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Min(8),
    ]);
    // Two targets of one export (overrides per Deployment) share a name:
    // those are told apart by the start of their id.
    let mut names: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *names.entry(r.name()).or_default() += 1;
    }
    let shown = |t: &TargetRow| -> String {
        if names.get(&t.name()).is_some_and(|&n| n > 1) {
            let id: String = t.id.chars().take(6).collect();
            format!("{} {id}", t.name_within(name_width.saturating_sub(7)))
        } else {
            t.name_within(name_width)
        }
    };
    let on_screen = visible(rows.len(), state.selection(), area);
    let table_rows: Vec<Row> = rows[on_screen.clone()]
        .iter()
        .map(|t| {
            let mut cells = vec![Cell::from(shown(t))];
            if wide {
                cells.push(Cell::from(fmt::cut(&t.endpoint, 26)));
            }
            let state_text = if t.paused && t.state != "paused" {
                format!("{}*", t.state)
            } else {
                t.state.clone()
            };
            cells.extend([
                Cell::from(Span::styled(state_text, state_style(&t.state))),
                Cell::from(Line::from(fmt::bytes_short(t.queue_bytes)).right_aligned()),
                Cell::from(Line::from(fmt::bytes_short(t.spill_bytes)).right_aligned()),
                Cell::from(Line::from(fmt::si(t.rate)).right_aligned()),
                Cell::from(Line::from(fmt::si(t.failures_total())).right_aligned()),
                Cell::from(Line::from(latency(t, t.p50)).right_aligned()),
                Cell::from(Line::from(latency(t, t.p99)).right_aligned()),
                Cell::from(Span::styled(
                    t.last_error
                        .as_ref()
                        .map_or(String::new(), |e| aged_error(e, state.now_ms)),
                    // An error of a target that recovered is history.
                    if state_rank(&t.state) >= 2 {
                        Style::default().fg(Color::Red)
                    } else {
                        Style::default().fg(Color::DarkGray)
                    },
                )),
            ]);
            Row::new(cells)
        })
        .collect();
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(bold()))
        .row_highlight_style(selected())
        .block(Block::bordered().title(title));
    let mut ts = TableState::default();
    ts.select(Some(state.selection() - on_screen.start));
    f.render_stateful_widget(table, area, &mut ts);
}

/// The rows of a bordered table with a header in `area` that are on
/// screen while row `selected` of `total` is shown (on the last line once
/// it is past the first screen, as a table scrolls): only those are built,
/// so 10,000 rows cost what a screenful does.
pub fn visible(total: usize, selected: usize, area: Rect) -> std::ops::Range<usize> {
    let height = usize::from(area.height.saturating_sub(3)).max(1);
    let selected = selected.min(total.saturating_sub(1));
    let start = (selected + 1).saturating_sub(height);
    start..total.min(start + height)
}

/// Style of a Deployment's export state.
fn export_state_style(state: &str) -> Style {
    match state {
        "delivering" => Style::default().fg(Color::Green),
        "waiting" => Style::default().fg(Color::DarkGray),
        other => state_style(other),
    }
}

fn render_deployments(state: &State, f: &mut Frame, area: Rect) {
    let rows = state.deployments();
    let arrow = if state.deployment_sort_desc {
        "↓"
    } else {
        "↑"
    };
    let title = format!(
        " Deployments ({}) · sort {} {arrow}{} ",
        rows.len(),
        state.deployment_sort.name(),
        filter_note(state, View::Deployments)
    );
    if rows.is_empty() {
        return no_rows(
            state,
            f,
            area,
            title,
            "No Deployment matches the filter (Esc clears it).",
            "No Deployment has an export yet (see 4 Config).",
        );
    }
    let selected_row = state.selection();
    let chosen = rows.get(selected_row).map(|r| r.id.clone());
    let panel = state
        .effective
        .as_ref()
        .filter(|e| Some(&e.deployment) == chosen.as_ref())
        .map(|e| deployment_exports_lines(state, e));
    let table_area = match &panel {
        Some(lines) if area.height >= 10 => {
            let h = (lines.len() as u16 + 2).min(area.height / 2);
            let [top, bottom] =
                Layout::vertical([Constraint::Min(0), Constraint::Length(h)]).areas(area);
            let id = chosen.clone().unwrap_or_default();
            f.render_widget(
                Paragraph::new(lines.clone())
                    .block(Block::bordered().title(format!(" Exports of {id} "))),
                bottom,
            );
            top
        }
        _ => area,
    };
    let header = [
        "DEPLOYMENT",
        "CLUSTER",
        "EXP",
        "STATE",
        "OUT/s",
        "DROP 1m",
        "LAG",
        "LAST ERROR",
    ];
    let widths = [
        Constraint::Length(16),
        Constraint::Length(10),
        Constraint::Length(3),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Min(8),
    ];
    let on_screen = visible(rows.len(), selected_row, table_area);
    let table_rows: Vec<Row> = rows[on_screen.clone()]
        .iter()
        .map(|d| {
            Row::new(vec![
                Cell::from(fmt::cut(&d.id, 16)),
                Cell::from(fmt::cut(&d.cluster_id, 10)),
                Cell::from(Line::from(d.exports.to_string()).right_aligned()),
                Cell::from(Span::styled(d.state.clone(), export_state_style(&d.state))),
                Cell::from(Line::from(fmt::si(d.rate)).right_aligned()),
                Cell::from(Line::from(fmt::si(d.dropped_total())).right_aligned()),
                Cell::from(Line::from(fmt::duration(d.lag)).right_aligned()),
                Cell::from(Span::styled(
                    d.last_error
                        .as_ref()
                        .map_or(String::new(), |e| aged_error(e, state.now_ms)),
                    if export_state_rank(&d.state) >= 3 {
                        Style::default().fg(Color::Red)
                    } else {
                        Style::default().fg(Color::DarkGray)
                    },
                )),
            ])
        })
        .collect();
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(bold()))
        .row_highlight_style(selected())
        .block(Block::bordered().title(title));
    let mut ts = TableState::default();
    ts.select(Some(selected_row - on_screen.start));
    f.render_stateful_widget(table, table_area, &mut ts);
}

/// A Deployment's exports with their status, two lines each.
fn deployment_exports_lines(state: &State, e: &crate::state::Effective) -> Vec<Line<'static>> {
    let items = match &e.result {
        Ok(items) if items.is_empty() => return vec![Line::from("No export reaches it.")],
        Ok(items) => items,
        Err(msg) => {
            return vec![Line::from(Span::styled(
                msg.clone(),
                if msg.starts_with("loading") {
                    Style::default()
                } else {
                    Style::default().fg(Color::Red)
                },
            ))]
        }
    };
    let mut out = Vec::new();
    for x in items {
        let endpoint = x
            .metrics_export
            .get("endpoint")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        // What matters first; the endpoint last, cut by the border if need be.
        let mut spans = vec![Span::styled(format!("{} ", x.id), bold())];
        let to = Span::raw(format!(" → {endpoint}"));
        match &x.status {
            Some(s) => {
                spans.push(Span::styled(s.state.clone(), export_state_style(&s.state)));
                let dropped: u64 = s.samples_dropped_1m.values().sum();
                let ok = s
                    .last_success_at
                    .as_deref()
                    .and_then(fmt::parse_time_ms)
                    .map_or("never".to_owned(), |at| {
                        format!(
                            "{} ago",
                            fmt::duration((state.now_ms - at).max(0) as f64 / 1000.0)
                        )
                    });
                spans.push(Span::raw(format!(
                    " · {}/s · dropped 1m {} · lag {} · last ok {ok}",
                    fmt::si(s.samples_delivered_1m as f64 / 60.0),
                    fmt::si(dropped as f64),
                    fmt::duration(s.oldest_undelivered_seconds),
                )));
                spans.push(to);
                out.push(Line::from(spans));
                if let Some(err) = &s.last_error {
                    out.push(Line::from(Span::styled(
                        format!("  {}", aged_error(err, state.now_ms)),
                        Style::default().fg(Color::Red),
                    )));
                }
            }
            None => {
                spans.push(to);
                out.push(Line::from(spans));
            }
        }
    }
    out
}

/// An error's status and message, the status once.
/// A latency column: `–` for a target that has delivered nothing yet (its
/// histogram is empty, not fast).
fn latency(t: &TargetRow, ms: f64) -> String {
    if t.samples_sent > 0.0 {
        fmt::millis(ms)
    } else {
        "–".into()
    }
}

/// Like [`latency`], with the unit.
fn unit_latency(t: &TargetRow, ms: f64) -> String {
    if t.samples_sent > 0.0 {
        fmt::millis_unit(ms)
    } else {
        "–".into()
    }
}

/// A last error with its age first: `12s 503 Service Unavailable: ...`.
fn aged_error(e: &crate::api::LastError, now_ms: i64) -> String {
    match fmt::parse_time_ms(&e.time) {
        Some(at) => format!(
            "{} {}",
            fmt::duration((now_ms - at).max(0) as f64 / 1000.0),
            error_text(e)
        ),
        None => error_text(e),
    }
}

fn error_text(e: &crate::api::LastError) -> String {
    let msg = fmt::one_line(&e.message);
    match e.status {
        Some(s) if !msg.starts_with(&format!("{s}")) => format!("{s} {msg}"),
        _ => msg,
    }
}

fn kv(key: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{key:<10}"), bold()),
        Span::raw(value),
    ])
}

fn map_text(m: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} ×{}", fmt::si(*v)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn render_detail(state: &State, f: &mut Frame, area: Rect, id: &str) {
    let Some(t) = state.all_targets().into_iter().find(|t| t.id == id) else {
        return empty_message(
            f,
            area,
            format!(" Target {id} "),
            vec![Line::from(
                "This target is gone (the registry changed). Esc goes back.",
            )],
        );
    };
    let names: Vec<String> = t
        .gateways
        .iter()
        .filter_map(|i| state.gateways.get(*i).map(Gateway::name))
        .collect();
    let last = match &t.last_error {
        Some(e) => {
            let when = fmt::parse_time_ms(&e.time).map_or("?".into(), fmt::clock);
            format!("{when} {}", error_text(e))
        }
        None => "none".into(),
    };
    let info = vec![
        kv("endpoint", t.endpoint.clone()),
        kv(
            "protocol",
            match t.protocol.as_str() {
                // A gateway from before the field: it sends 1.0.
                "" => "V1".to_owned(),
                p => p.to_owned(),
            },
        ),
        Line::from(vec![
            Span::styled(format!("{:<10}", "state"), bold()),
            Span::styled(t.state.clone(), state_style(&t.state)),
            Span::raw(format!(
                "{}  concurrency {}  in flight {}  on {}",
                if t.paused && t.state != "paused" {
                    " (paused)"
                } else {
                    ""
                },
                fmt::si(t.concurrency),
                fmt::si(t.in_flight),
                names.join(", ")
            )),
        ]),
        kv(
            "queue",
            format!(
                "{} ({} samples, oldest {})  spill {}",
                fmt::bytes(t.queue_bytes),
                fmt::si(t.queue_samples),
                fmt::duration(t.oldest_queued_seconds),
                fmt::bytes(t.spill_bytes)
            ),
        ),
        kv(
            "sent",
            format!(
                "{} samples/s · {} samples, {}, {} requests, {} retries",
                fmt::si(t.rate),
                fmt::si(t.samples_sent),
                fmt::bytes(t.bytes_sent),
                fmt::si(t.requests_sent),
                fmt::si(t.retries)
            ),
        ),
        kv(
            "failures",
            format!(
                "{} · dropped {}",
                map_text(&t.failures),
                map_text(&t.dropped)
            ),
        ),
        kv(
            "latency",
            format!(
                "p50 {} · p90 {} · p99 {} · max {}",
                unit_latency(&t, t.p50),
                unit_latency(&t, t.p90),
                unit_latency(&t, t.p99),
                unit_latency(&t, t.max)
            ),
        ),
        Line::from(vec![
            Span::styled(format!("{:<10}", "last err"), bold()),
            Span::styled(
                last,
                if t.last_error.is_some() {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default()
                },
            ),
        ]),
    ];
    let feeds: Vec<Line> = if t.feeds.is_empty() {
        vec![Line::from("no export feeds it any more")]
    } else {
        t.feeds
            .iter()
            .map(|fd| {
                Line::from(format!(
                    "export {} → Deployment {} (cluster {})",
                    fd.export_id, fd.deployment_id, fd.cluster_id
                ))
            })
            .collect()
    };
    let feeds_height = (feeds.len() as u16 + 2).min(6);
    let [info_area, feeds_area, charts_area] = Layout::vertical([
        Constraint::Length(info.len() as u16 + 2),
        Constraint::Length(feeds_height),
        Constraint::Min(0),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(info).block(Block::bordered().title(format!(
            " Target {} ({}) · Esc back · p pause/resume ",
            t.name(),
            t.id
        ))),
        info_area,
    );
    f.render_widget(
        Paragraph::new(feeds).block(
            Block::bordered().title(format!(" Fed by {} export × Deployment ", t.feeds.len())),
        ),
        feeds_area,
    );
    if charts_area.height >= 4 {
        let history = state.target_history(&t.id);
        let now_s = state.now_ms.div_euclid(1000);
        let pts = |get: fn(&crate::state::TargetPoint) -> f64| -> Vec<(f64, f64)> {
            history
                .iter()
                .filter(|(s, _)| now_s - **s <= HISTORY_SECONDS)
                .map(|(s, p)| ((*s - now_s) as f64, get(p)))
                .collect()
        };
        let rate = pts(|p| p.rate);
        let fails = pts(|p| p.failures);
        let backlog = pts(|p| p.backlog);
        let [l, r] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(charts_area);
        render_chart(
            f,
            l,
            " per second ",
            &[("sent", &rate), ("failed", &fails)],
            fmt::si,
        );
        render_chart(
            f,
            r,
            " backlog bytes ",
            &[("queue+spill", &backlog)],
            fmt::bytes_short,
        );
    }
}

fn render_failures(state: &State, f: &mut Frame, area: Rect) {
    let rows = state.failure_rows();
    let title = format!(
        " Failures ({}, newest first){} ",
        rows.len(),
        filter_note(state, View::Failures)
    );
    if rows.is_empty() {
        let mut lines = Vec::new();
        if let Some(l) = no_data_lines(state) {
            lines.extend(l);
        } else if !state.filter[View::Failures.index()].is_empty() {
            lines.push(Line::from("No error matches the filter (Esc clears it)."));
        } else {
            lines.push(Line::from("No delivery errors since the console started."));
        }
        return empty_message(f, area, title, lines);
    }
    let many = state.gateways.len() > 1;
    let wide = area.width >= 120;
    let mut header = vec!["TIME"];
    let mut widths = vec![Constraint::Length(8)];
    if many {
        header.push("GATEWAY");
        widths.push(Constraint::Length(if wide { 20 } else { 12 }));
    }
    header.extend(["TARGET", "STATUS", "MESSAGE"]);
    let id_width = if wide { 24 } else { 16 };
    widths.extend([
        Constraint::Length(id_width as u16),
        Constraint::Length(6),
        Constraint::Min(10),
    ]);
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|e| {
            let mut cells = vec![Cell::from(e.time_ms.map_or("?".into(), fmt::clock))];
            if many {
                let name = state
                    .gateways
                    .get(e.gateway)
                    .map(Gateway::name)
                    .unwrap_or_default();
                cells.push(Cell::from(fmt::cut(&name, if wide { 20 } else { 12 })));
            }
            cells.extend([
                Cell::from(fmt::cut(&e.target, id_width)),
                Cell::from(Span::styled(
                    e.status.map_or("conn".into(), |s| format!("{s}")),
                    Style::default().fg(Color::Red),
                )),
                Cell::from(e.message.clone()),
            ]);
            Row::new(cells)
        })
        .collect();
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(bold()))
        .row_highlight_style(selected())
        .block(Block::bordered().title(title));
    let mut ts = TableState::default();
    ts.select(Some(state.selection()));
    f.render_stateful_widget(table, area, &mut ts);
}

fn render_config(state: &State, f: &mut Frame, area: Rect) {
    let title = format!(" Config{} ", filter_note(state, View::Config));
    let Some(reg) = &state.registry else {
        let lines = match (&state.registry_error, no_data_lines(state)) {
            (Some(e), _) => vec![Line::from(Span::styled(
                format!("Cannot read the registry: {}", fmt::one_line(e)),
                Style::default().fg(Color::Red),
            ))],
            (None, Some(l)) => l,
            (None, None) => vec![Line::from("Reading the registry…")],
        };
        return empty_message(f, area, title, lines);
    };
    if reg.is_empty() {
        return empty_message(
            f,
            area,
            title,
            vec![
                Line::from(
                    "The registry is empty: no clusters, Workspaces, Deployments or exports.",
                ),
                Line::from(""),
                Line::from("Load one with `fanout apply -f registry.yaml --admin URL`"),
                Line::from("or start the gateway with `fanout serve --registry registry.yaml`."),
            ],
        );
    }
    let rows = state.config_rows();
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let items: Vec<ListItem> = rows
        .iter()
        .map(|r| {
            let indent = "  ".repeat(r.depth as usize);
            let style = match r.item {
                ConfigItem::Workspace(_) | ConfigItem::Heading => bold(),
                ConfigItem::Deployment(_) => Style::default().fg(Color::Cyan),
                _ => Style::default(),
            };
            ListItem::new(Line::from(Span::styled(
                format!("{indent}{}", r.text),
                style,
            )))
        })
        .collect();
    let mut ls = ListState::default();
    if !rows.is_empty() {
        ls.select(Some(state.selection()));
    }
    let list_title = if let Some(e) = &state.registry_error {
        format!(" Registry (stale: {}) ", fmt::cut(&fmt::one_line(e), 40))
    } else {
        match state.registry_version {
            Some(v) => format!(
                " Registry v{}{} ",
                fmt::si(v as f64),
                filter_note(state, View::Config)
            ),
            None => format!(" Registry{} ", filter_note(state, View::Config)),
        }
    };
    f.render_stateful_widget(
        List::new(items)
            .highlight_style(selected())
            .block(Block::bordered().title(list_title)),
        left,
        &mut ls,
    );
    let (detail_title, lines) = match state.selected_config().map(|r| r.item) {
        Some(item) => config_detail(state, reg, &item),
        None => (
            " Detail ".into(),
            vec![Line::from("No row matches the filter.")],
        ),
    };
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(detail_title)),
        right,
    );
}

fn field_block(out: &mut Vec<Line<'static>>, fields: &serde_json::Value, indent: &str) {
    for (k, v) in field_lines(fields) {
        out.push(Line::from(format!("{indent}{k} = {v}")));
    }
}

fn config_detail(state: &State, reg: &Registry, item: &ConfigItem) -> (String, Vec<Line<'static>>) {
    let mut out = Vec::new();
    match item {
        ConfigItem::Deployment(id) => {
            let d = reg.deployments.iter().find(|d| &d.id == id);
            if let Some(d) = d {
                out.push(Line::from(format!(
                    "{} {} · Workspace {} · cluster {} · namespace {}",
                    d.kind, d.name, d.workspace_id, d.cluster_id, d.namespace
                )));
            }
            match &state.effective {
                Some(e) if &e.deployment == id => match &e.result {
                    Ok(items) if items.is_empty() => {
                        out.push(Line::from("No export reaches this Deployment."));
                        if d.is_some_and(|d| d.kind == "HYBRID") {
                            out.push(Line::from(
                                "(HYBRID: only its own Deployment exports apply.)",
                            ));
                        }
                    }
                    Ok(items) => {
                        for x in items {
                            out.push(Line::from(vec![
                                Span::styled(format!("{} ", x.id), bold()),
                                Span::raw(format!(
                                    "from {} {} → target {}",
                                    x.source_scope, x.source_scope_entity_id, x.target_id
                                )),
                            ]));
                            field_block(&mut out, &x.metrics_export, "  ");
                            if !x.set_fields.is_empty() {
                                out.push(Line::from(format!(
                                    "  secrets set: {}",
                                    x.set_fields.join(", ")
                                )));
                            }
                        }
                    }
                    Err(msg) => out.push(Line::from(Span::styled(
                        msg.clone(),
                        if msg.starts_with("loading") {
                            Style::default()
                        } else {
                            Style::default().fg(Color::Red)
                        },
                    ))),
                },
                _ => out.push(Line::from("Enter reads its effective exports.")),
            }
            (format!(" Effective exports of {id} "), out)
        }
        ConfigItem::Export(i) => {
            let Some(e) = reg.metrics_exports.get(*i) else {
                return (" Export ".into(), out);
            };
            if !e.description.is_empty() {
                out.push(Line::from(e.description.clone()));
            }
            let mode = if e.scope == "DEPLOYMENT" {
                format!("Deployment export of {}", e.scope_entity_id)
            } else if e.auto_link_deployments {
                format!(
                    "Workspace {} · linked to all HOSTED Deployments, {} excluded",
                    e.scope_entity_id,
                    e.exclude_links.len()
                )
            } else {
                format!(
                    "Workspace {} · restricted to {} linked Deployments",
                    e.scope_entity_id,
                    e.links.len()
                )
            };
            out.push(Line::from(mode));
            out.push(Line::from(format!("objectKey {}", e.object_key)));
            field_block(&mut out, &e.metrics_export, "");
            (format!(" Export {} ", e.id), out)
        }
        ConfigItem::Link(i, li) => {
            let Some(e) = reg.metrics_exports.get(*i) else {
                return (" Link ".into(), out);
            };
            match li.and_then(|li| e.links.get(li)) {
                Some(l) => {
                    out.push(Line::from(format!(
                        "{} is linked to Deployment {}",
                        e.id, l.scope_entity_id
                    )));
                    match l.overrides.get("metricsExport") {
                        Some(o) => {
                            out.push(Line::from("overrides:"));
                            field_block(&mut out, o, "  ");
                        }
                        None => out.push(Line::from("no overrides")),
                    }
                }
                None => out.push(Line::from(format!(
                    "{} excludes these Deployments from auto-linking: {}",
                    e.id,
                    e.exclude_links
                        .iter()
                        .map(|l| l.scope_entity_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
            (format!(" Links of {} ", e.id), out)
        }
        ConfigItem::Workspace(id) => {
            let deps = reg
                .deployments
                .iter()
                .filter(|d| &d.workspace_id == id)
                .count();
            let exps = reg
                .metrics_exports
                .iter()
                .filter(|e| e.scope == "WORKSPACE" && &e.scope_entity_id == id)
                .count();
            out.push(Line::from(format!(
                "{exps} Workspace exports, {deps} Deployments"
            )));
            out.push(Line::from(
                "Select a Deployment to see its effective exports.",
            ));
            (format!(" Workspace {id} "), out)
        }
        ConfigItem::Cluster(i) => {
            if let Some(c) = reg.clusters.get(*i) {
                let deps: Vec<&str> = reg
                    .deployments
                    .iter()
                    .filter(|d| d.cluster_id == c.id)
                    .map(|d| d.id.as_str())
                    .collect();
                out.push(Line::from(format!(
                    "{} {} · organization {}",
                    c.cloud_provider, c.cloud_region, c.organization_id
                )));
                out.push(Line::from("ingest token: *** (write-only)"));
                out.push(Line::from(format!("Deployments: {}", deps.join(", "))));
            }
            (" Cluster ".into(), out)
        }
        ConfigItem::Heading => (
            " Detail ".into(),
            vec![Line::from(
                "Select a Deployment to see its effective exports.",
            )],
        ),
    }
}

/// Renders a state into a plain-text screen of `width`×`height` (the
/// snapshot tests and the README captures use it).
pub fn render_text(state: &State, width: u16, height: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let mut terminal = match ratatui::Terminal::new(backend) {
        Ok(t) => t,
        Err(e) => match e {},
    };
    if let Err(e) = terminal.draw(|f| render(state, f)) {
        match e {}
    }
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart_text(data: &[(f64, f64)]) -> String {
        let backend = ratatui::backend::TestBackend::new(60, 12);
        let mut terminal = ratatui::Terminal::new(backend).unwrap();
        terminal
            .draw(|f| render_chart(f, f.area(), " samples/s ", &[("in", data)], fmt::si))
            .unwrap();
        let buf = terminal.backend().buffer();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn one_spike_does_not_flatten_the_chart() {
        // Five minutes at about 1,000/s with one second at 1,000,000.
        let mut data: Vec<(f64, f64)> = (-300..=0)
            .map(|s| (f64::from(s), 1_000.0 + f64::from(s % 7) * 10.0))
            .collect();
        data[150].1 = 1_000_000.0;
        let text = chart_text(&data);
        assert!(text.contains("peak 1.00M"), "{text}");
        // The top of the scale is near the usual rate, not the spike.
        assert!(text.contains("│1.2k│"), "{text}");
        // The legend is in the title line only.
        assert!(text.lines().next().unwrap().contains("━ in"), "{text}");
        // Without a spike nothing is clipped.
        data[150].1 = 1_000.0;
        assert!(!chart_text(&data).contains("peak"));
    }
}
