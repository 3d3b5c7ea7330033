//! End to end: the real `fanout-tui` in a real terminal (tmux) against the
//! real `fanout serve` with traffic from `fanout-load run` into two
//! `fanout-load sink` receivers.
//!
//! It drives the console with `tmux send-keys` and reads the screen with
//! `tmux capture-pane`: the Targets view lists both targets with non-zero,
//! moving rates; `p` on one asks to pause it (naming its export) and `y`
//! pauses it (the screen says so and the gateway's `GET /api/v1/targets`
//! agrees, the other target stays unpaused); `q` exits
//! 0, leaves the alternate screen and restores the terminal modes (`stty -g`
//! before and after are equal). Before that, the gateway gets SIGTERM with
//! the console attached and must exit 0 within its drain delay and grace
//! (the stats stream ends with a `stopped` event); the console flags it and
//! reconnects when it is back.
//!
//! Needs tmux and the gateway's stats API (`docs/stats-api.md`); `.ci/run`
//! installs tmux and runs it with `--ignored`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fanout_tests::prometheus::{built, fanout_binary, free_port, temp_dir, wait_for, Proc};
use fanout_tests::tmux::Tmux;

const ADMIN_TOKEN: &str = "tui-e2e-admin-token";

/// Builds the console and the load tool, returns their paths.
fn binaries() -> (PathBuf, PathBuf) {
    let load = built(
        &["-p", "fanout-tui", "-p", "fanout-loadtest", "--bins"],
        "fanout-load",
    );
    (load.with_file_name("fanout-tui"), load)
}

/// `method path` on the admin API with the token: (status, body).
fn admin(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Waits until the gateway's admin port answers `/readyz` 200; panics with
/// `log()` after `limit`.
fn await_ready(admin_port: u16, limit: Duration, log: &dyn Fn() -> String) {
    let ready = wait_for(limit, || {
        matches!(admin(admin_port, "GET", "/readyz"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "fanout never became ready\n{}", log());
}

/// The JSON object of `/api/v1/targets` (`{"items": [...]}`) whose endpoint
/// has `port`, without whitespace. Brace matching outside strings, so nested
/// objects (`feeds`, `failures`) stay inside.
fn target_json(body: &str, port: u16) -> Option<String> {
    let at = body.find(&format!("127.0.0.1:{port}/"))?;
    let bytes = body.as_bytes();
    let (mut stack, mut in_string, mut escaped) = (Vec::new(), false, false);
    let mut item_start = None;
    for (i, &c) in bytes.iter().enumerate() {
        if i == at {
            // stack[0] is the document, stack[1] the item of the list.
            item_start = Some(*stack.get(1)?);
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' => stack.push(i),
            b'}' => {
                let open = stack.pop()?;
                if Some(open) == item_start {
                    let text: String = body[open..=i]
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    return Some(text);
                }
            }
            _ => {}
        }
    }
    None
}

/// (deployments as (id, namespace), cluster id, ingest token) of `fanout-load run --print-scenario`.
fn scenario(load: &Path) -> (Vec<(String, String)>, String, String) {
    let out = Command::new(load)
        .args([
            "run",
            "--print-scenario",
            "--clusters",
            "1",
            "--deployments",
            "2",
        ])
        .output()
        .expect("fanout-load --print-scenario");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |line: &str| line.split('"').nth(3).unwrap_or_default().to_owned();
    let (mut deps, mut cluster, mut token, mut last_id) =
        (Vec::new(), String::new(), String::new(), String::new());
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("\"id\"") {
            last_id = value(l);
        } else if l.starts_with("\"namespace\"") {
            deps.push((last_id.clone(), value(l)));
        } else if l.starts_with("\"ingestToken\"") {
            cluster = last_id.clone();
            token = value(l);
        }
    }
    assert!(
        deps.len() == 2 && !token.is_empty(),
        "unexpected scenario:\n{text}"
    );
    (deps, cluster, token)
}

/// Data lines of the Targets table: (line, state, rate).
fn target_rows(screen: &str) -> Vec<(String, String, String)> {
    screen
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| {
                ["idle", "healthy", "retrying", "failing", "paused"]
                    .contains(&w.trim_end_matches('*'))
            })?;
            Some((
                l.to_owned(),
                words[i].to_owned(),
                words.get(i + 3)?.to_string(),
            ))
        })
        .collect()
}

fn rate_value(s: &str) -> f64 {
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1e3),
        Some('M') => (&s[..s.len() - 1], 1e6),
        Some('G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>().map(|v| v * mult).unwrap_or(0.0)
}

#[test]
#[ignore = "needs tmux and the delivery stats API; run by .ci/run"]
fn console_shows_targets_pauses_one_and_quits_cleanly() {
    Tmux::require();
    let fanout = fanout_binary();
    let (tui, load) = binaries();
    let dir = temp_dir("tui-tmux");

    // Two receivers.
    let (port_a, port_b) = (free_port(), free_port());
    let _sinks = Proc::spawn(
        "fanout-load sink",
        Command::new(&load)
            .args(["sink", "--quiet"])
            .args(["--listen", &format!("127.0.0.1:{port_a}")])
            .args(["--listen", &format!("127.0.0.1:{port_b}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sink.log")).unwrap()),
    );
    for port in [port_a, port_b] {
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "sink on {port} never listened");
    }

    // A registry for the load generator's cluster: a Workspace export linked
    // to both Deployments (sink A) and a Deployment export of the second (sink B).
    let (deps, cluster, token) = scenario(&load);
    let registry = dir.join("registry.yaml");
    let mut yaml = format!(
        "clusters:\n  - {{id: {cluster}, organizationId: org-tui, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: {token}}}\n\
         workspaces:\n  - {{id: ws-tui, organizationId: org-tui, name: TUI test}}\n\
         deployments:\n"
    );
    for (i, (id, ns)) in deps.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{id: {id}, workspaceId: ws-tui, clusterId: {cluster}, namespace: {ns}, type: HOSTED, name: dep{i}}}\n"
        ));
    }
    yaml.push_str(&format!(
        "metricsExports:\n\
         \x20 - id: sink-a\n    objectKey: sink_a\n    scope: WORKSPACE\n    scopeEntityId: ws-tui\n    autoLinkDeployments: true\n\
         \x20   metricsExport: {{endpoint: \"http://127.0.0.1:{port_a}/api/v1/write\", exporterType: PROMETHEUS}}\n\
         \x20 - id: sink-b\n    objectKey: sink_b\n    scope: DEPLOYMENT\n    scopeEntityId: {}\n\
         \x20   metricsExport: {{endpoint: \"http://127.0.0.1:{port_b}/api/v1/write\", exporterType: PROMETHEUS}}\n",
        deps[1].0
    ));
    std::fs::write(&registry, &yaml).unwrap();

    let (ingest_port, admin_port) = (free_port(), free_port());
    let gateway_log = dir.join("fanout.log");
    let start_gateway = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&gateway_log)
            .unwrap();
        Proc::spawn(
            "fanout serve",
            Command::new(&fanout)
                .arg("serve")
                .args(["--ingest-listen", &format!("127.0.0.1:{ingest_port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
                .args(["--admin-token", ADMIN_TOKEN])
                .args(["--drain-delay", "1s", "--shutdown-grace", "2s"])
                .arg("--data-dir")
                .arg(dir.join("data"))
                .arg("--registry")
                .arg(&registry)
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log),
        )
    };
    let mut gateway = Some(start_gateway());
    let log = || {
        format!(
            "gateway log:\n{}\nregistry:\n{yaml}",
            std::fs::read_to_string(&gateway_log).unwrap_or_default()
        )
    };
    await_ready(admin_port, Duration::from_secs(60), &log);
    let (status, _) = admin(admin_port, "GET", "/api/v1/stats").unwrap();
    assert_eq!(
        status,
        200,
        "GET /api/v1/stats: the gateway has no stats API\n{}",
        log()
    );

    let _traffic = Proc::spawn(
        "fanout-load run",
        Command::new(&load)
            .arg("run")
            .args([
                "--url",
                &format!("http://127.0.0.1:{ingest_port}/api/v1/write"),
            ])
            .args([
                "--clusters",
                "1",
                "--deployments",
                "2",
                "--connections",
                "1",
            ])
            .args([
                "--rate",
                "3000",
                "--samples-per-request",
                "500",
                "--duration",
                "10m",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("load.log")).unwrap()),
    );

    // The console in a 160x48 tmux pane, inside a shell that reports how it
    // exited and whether the terminal modes came back.
    let script = format!(
        "before=$(stty -g); {} --admin http://127.0.0.1:{admin_port}; rc=$?; \
         [ \"$before\" = \"$(stty -g)\" ] && echo TERMINAL-MODES-RESTORED; echo TUI-EXITED-$rc; exec sleep 600",
        tui.display()
    );
    let tmux = Tmux::start(
        "fanout-tui-e2e",
        &script,
        160,
        48,
        &[("FANOUT_ADMIN_TOKEN", ADMIN_TOKEN)],
    );

    let context = || log();
    let screen = tmux.wait_screen(
        "the console to connect",
        Duration::from_secs(30),
        &context,
        |s| s.contains("gateways 1/1 up") && s.contains("Throughput"),
    );
    assert!(
        !screen.contains(ADMIN_TOKEN),
        "the token is on the screen:\n{screen}"
    );
    assert!(
        tmux.format("#{alternate_on}") == "1",
        "the console is not on the alternate screen"
    );

    // Targets view: both targets, delivering.
    tmux.keys(&["2"]);
    let screen = tmux.wait_screen(
        "two targets with non-zero rates",
        Duration::from_secs(60),
        &context,
        |s| {
            let rows = target_rows(s);
            rows.len() == 2 && rows.iter().all(|(_, _, rate)| rate_value(rate) > 0.0)
        },
    );
    let first_rates: Vec<String> = target_rows(&screen).into_iter().map(|r| r.2).collect();
    // Rates move: the screen is redrawn with new snapshots (rates change, or
    // at least the totals of the Overview grow).
    tmux.keys(&["1"]);
    let total = |s: &str| {
        s.lines()
            .find(|l| l.contains("out ") && l.contains("total"))
            .map(|l| l.split("total").nth(1).unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let before = total(
        &tmux.wait_screen("the overview", Duration::from_secs(10), &context, |s| {
            s.contains("total")
        }),
    );
    tmux.wait_screen(
        "the delivered total to grow",
        Duration::from_secs(20),
        &context,
        |s| {
            let t = total(s);
            !t.is_empty() && t != before
        },
    );
    tmux.keys(&["2"]);
    let screen = tmux.wait_screen(
        "the targets again",
        Duration::from_secs(10),
        &context,
        |s| target_rows(s).len() == 2,
    );
    let rows = target_rows(&screen);
    eprintln!(
        "rates: {first_rates:?} then {:?}",
        rows.iter().map(|r| &r.2).collect::<Vec<_>>()
    );

    // Pause the target of sink A: select its row, press p.
    let marker_a = format!("127.0.0.1:{port_a}");
    let marker_b = format!("127.0.0.1:{port_b}");
    let index_a = rows
        .iter()
        .position(|(line, _, _)| line.contains(&marker_a))
        .unwrap_or_else(|| panic!("no row for sink A ({marker_a}):\n{screen}"));
    for _ in 0..index_a {
        tmux.keys(&["j"]);
    }
    // `p` asks first (naming the target by its export); `y` confirms.
    tmux.keys(&["p"]);
    tmux.wait_screen("the pause prompt", Duration::from_secs(10), &context, |s| {
        s.contains("Pause sink-a ·2") && s.contains("y confirms")
    });
    tmux.keys(&["y"]);
    let screen = tmux.wait_screen("target A paused", Duration::from_secs(20), &context, |s| {
        target_rows(s)
            .iter()
            .any(|(line, state, _)| line.contains(&marker_a) && state.starts_with("paused"))
    });
    assert!(
        target_rows(&screen)
            .iter()
            .any(|(line, state, _)| line.contains(&marker_b) && !state.starts_with("paused")),
        "target B should not be paused:\n{screen}"
    );
    let (status, body) = admin(admin_port, "GET", "/api/v1/targets").unwrap();
    assert_eq!(status, 200, "{body}");
    let a = target_json(&body, port_a).unwrap_or_else(|| panic!("no target for sink A in {body}"));
    let b = target_json(&body, port_b).unwrap_or_else(|| panic!("no target for sink B in {body}"));
    assert!(
        a.contains("\"paused\":true") || a.contains("\"state\":\"paused\""),
        "the gateway does not say target A is paused: {a}"
    );
    assert!(
        b.contains("\"paused\":false"),
        "target B should not be paused: {b}"
    );

    // The Deployments view (5): both Deployments, each with the worst state
    // of its exports (sink A, which both use, is paused); Enter shows the
    // exports of the selected one with their status.
    tmux.keys(&["5"]);
    let short = |id: &str| id.chars().take(15).collect::<String>();
    let screen = tmux.wait_screen(
        "the Deployments view",
        Duration::from_secs(10),
        &context,
        |s| {
            s.contains("Deployments (2)")
                && deps.iter().all(|(id, _)| s.contains(&short(id)))
                && s.contains("paused")
        },
    );
    assert!(
        !screen.contains(ADMIN_TOKEN),
        "the admin token on screen:\n{screen}"
    );
    tmux.keys(&["Enter"]);
    tmux.wait_screen(
        "a Deployment's exports",
        Duration::from_secs(10),
        &context,
        |s| s.contains("Exports of ") && s.contains("sink-a") && s.contains("last ok"),
    );
    // Esc apart from the next key, which would otherwise read as Alt-2.
    tmux.keys(&["Escape"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["2"]);
    tmux.wait_screen("back on Targets", Duration::from_secs(10), &context, |s| {
        s.contains("Targets (")
    });

    // The gateway stops (SIGTERM) with the console attached: its stats
    // stream ends with a `stopped` event, so the console does not hold up
    // the shutdown (drain delay 1 s + grace 2 s + 1 s), and the console
    // says since when it lost the gateway; it reconnects when the gateway
    // is back (same ports, same data directory).
    let stopping = Instant::now();
    let status = gateway
        .as_mut()
        .expect("gateway running")
        .terminate(Duration::from_secs(20));
    let took = stopping.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway did not exit 0 on SIGTERM with the console attached: {status:?}{context}",
        context = context()
    );
    assert!(
        took < Duration::from_secs(5),
        "gateway took {took:?} to stop with the console attached{context}",
        context = context()
    );
    drop(gateway.take());
    tmux.wait_screen(
        "the Targets view to flag the lost gateway",
        Duration::from_secs(20),
        &context,
        |s| s.contains("✖ disconnected:") && s.contains("0/1 up"),
    );
    tmux.keys(&["1"]);
    tmux.wait_screen(
        "the Overview to say since when",
        Duration::from_secs(10),
        &context,
        |s| s.contains("disconnected since"),
    );
    gateway = Some(start_gateway());
    tmux.wait_screen(
        "the console to reconnect",
        Duration::from_secs(60),
        &context,
        |s| s.contains("reconnected at") && s.contains("gateways 1/1 up"),
    );
    assert!(gateway.is_some());

    // q exits 0 and leaves a clean terminal.
    tmux.keys(&["q"]);
    let screen = tmux.wait_screen(
        "the console to exit",
        Duration::from_secs(10),
        &context,
        |s| s.contains("TUI-EXITED-"),
    );
    assert!(
        screen.contains("TUI-EXITED-0"),
        "fanout-tui did not exit 0:\n{screen}"
    );
    assert!(
        screen.contains("TERMINAL-MODES-RESTORED"),
        "stty modes differ after exit:\n{screen}"
    );
    assert!(
        !screen.contains("Targets ("),
        "the console's screen is left over:\n{screen}"
    );
    assert_eq!(
        tmux.format("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(tmux.format("#{cursor_flag}"), "1", "cursor left hidden");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The console against a gateway with 10,000 Deployments, each exporting to
/// an endpoint of its own: the Deployments view lists all of them, pages
/// down, and a filter narrows them to the ten that match; `q` exits 0. No
/// time is asserted (the timeouts only bound the test): a view that built
/// every row per frame (10,000 rows, and a name count per target that was
/// quadratic) still passes here, slowly; the snapshot tests check that only
/// a screenful is built (`deployments_10000_*`).
#[test]
#[ignore = "needs tmux and the delivery stats API; run by .ci/run"]
fn console_pages_and_filters_ten_thousand_deployments() {
    Tmux::require();
    let fanout = fanout_binary();
    let (tui, _) = binaries();
    let dir = temp_dir("tui-tmux-10k");
    let mut yaml = String::from("clusters:\n");
    for c in 0..100 {
        yaml.push_str(&format!(
            "  - {{id: cl-{c:03}, organizationId: o, cloudProvider: aws, cloudRegion: r, ingestToken: tok-{c:03}}}\n"
        ));
    }
    yaml.push_str("workspaces:\n  - {id: ws, organizationId: o, name: w}\ndeployments:\n");
    for d in 0..10_000 {
        yaml.push_str(&format!(
            "  - {{id: dep-{d:05}, workspaceId: ws, clusterId: cl-{:03}, namespace: ns-{d:05}, type: HOSTED, name: d{d}}}\n",
            d / 100
        ));
    }
    yaml.push_str("metricsExports:\n");
    for d in 0..10_000 {
        // Nothing listens there: with no traffic the targets stay idle.
        yaml.push_str(&format!(
            "  - {{id: own-{d:05}, objectKey: own_{d:05}, scope: DEPLOYMENT, scopeEntityId: dep-{d:05}, \
             metricsExport: {{endpoint: 'http://127.0.0.1:9/t/{d:05}/api/v1/write'}}}}\n"
        ));
    }
    let registry = dir.join("registry.yaml");
    std::fs::write(&registry, &yaml).unwrap();
    let admin_port = free_port();
    let gateway_log = dir.join("fanout.log");
    let _gateway = Proc::spawn(
        "fanout serve",
        Command::new(&fanout)
            .arg("serve")
            .args(["--ingest-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--drain-delay", "0s"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--registry")
            .arg(&registry)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&gateway_log).unwrap()),
    );
    let log = || {
        format!(
            "gateway log:\n{}",
            std::fs::read_to_string(&gateway_log).unwrap_or_default()
        )
    };
    await_ready(admin_port, Duration::from_secs(120), &log);

    let script = format!(
        "{} --admin http://127.0.0.1:{admin_port}; echo TUI-EXITED-$?; exec sleep 600",
        tui.display()
    );
    let tmux = Tmux::start(
        "fanout-tui-10k",
        &script,
        120,
        35,
        &[("FANOUT_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    tmux.wait_screen(
        "the console to connect",
        Duration::from_secs(60),
        &log,
        |s| s.contains("gateways 1/1 up"),
    );
    tmux.keys(&["5"]);
    let screen = tmux.wait_screen(
        "10,000 Deployments listed",
        Duration::from_secs(60),
        &log,
        |s| s.contains("Deployments (10000)") && s.contains("dep-00000"),
    );
    assert!(!screen.contains(ADMIN_TOKEN), "{screen}");
    // Four pages down (10 rows each): row 40 is selected, on screen, and
    // the first row scrolled away.
    tmux.keys(&["PageDown", "PageDown", "PageDown", "PageDown"]);
    tmux.wait_screen("row 40 on screen", Duration::from_secs(30), &log, |s| {
        s.contains("dep-00040") && !s.contains("dep-00000")
    });
    tmux.keys(&["/", "d", "e", "p", "-", "0", "9", "9", "9", "Enter"]);
    tmux.wait_screen(
        "the filter narrowing to ten",
        Duration::from_secs(30),
        &log,
        |s| s.contains("Deployments (10)") && s.contains("dep-09990") && s.contains("dep-09999"),
    );
    tmux.keys(&["q"]);
    tmux.wait_screen("the console to exit", Duration::from_secs(30), &log, |s| {
        s.contains("TUI-EXITED-0")
    });
}
