//! The process-level behaviour an operator meets first, with the real
//! `fanout serve`: shutdown with a console attached, one gateway per data
//! dir, Ctrl-C with stderr piped into a process that is gone, and the drain
//! a load balancer sees. Every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fanout_tests::fanout::tempfile_dir::TempDir;
use fanout_tests::fanout::{fanout_bin, free_port, Gateway};
use fanout_tests::rounds::{self, client, round};

const TOKEN: &str = "operator-ingest-token";

/// Sends `request` (a whole HTTP/1.1 request) to `addr` and returns what
/// came back until the server closed or `limit` passed ("" when it does not
/// accept the connection).
fn raw(addr: &str, request: &str, limit: Duration) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Bytes of spill segments under `<data_dir>/spill/`.
fn spilled_bytes(data_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(data_dir.join("spill"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "seg"))
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A console (or `curl -N`) on the stats stream does not hold up the
/// shutdown: the stream ends with a `stopped` event and the process exits
/// within the shutdown grace plus a second.
#[test]
fn a_stats_stream_client_does_not_delay_shutdown() {
    let mut gw = Gateway::start("op-sse", &["--shutdown-grace", "1s"]);
    let admin = gw.admin.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&admin).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET /api/v1/stats/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        gw.token
    )
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("event: stats") {
        assert!(Instant::now() < deadline, "no stats event: {text}");
        if let Ok(n) = s.read(&mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    let started = Instant::now();
    let status = gw.terminate(Duration::from_secs(10));
    let took = started.elapsed();
    let status =
        status.unwrap_or_else(|| panic!("still running 10s after SIGTERM; log:\n{}", gw.log()));
    assert!(status.success(), "{status:?}; log:\n{}", gw.log());
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} with a stream client attached (grace 1s); log:\n{}",
        gw.log()
    );
    // The client got a last `stopped` event, then the end of the stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("stream not closed: {e}"),
        }
    }
    assert!(text.contains("event: stopped"), "{text}");
    println!("exited {took:?} after SIGTERM with a stats stream open");
}

/// A second gateway on a data dir in use refuses to start and names the
/// pid holding it.
#[test]
fn a_second_gateway_on_the_same_data_dir_refuses_naming_the_holder() {
    let gw = Gateway::start("op-lock", &[]);
    let mut second = Command::new(fanout_bin())
        .arg("serve")
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--ingest-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(gw.data_dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut second, Duration::from_secs(20));
    if status.is_none() {
        let _ = second.kill();
    }
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = status.unwrap_or_else(|| panic!("the second gateway kept running: {err}"));
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "is in use by another fanout serve (pid {})",
            gw.pid()
        )),
        "{err}"
    );
    // The first one is untouched.
    assert_eq!(gw.request("GET", "/readyz", None).0, 200);
    println!("second gateway: {}", err.trim());
}

/// `fanout serve 2>&1 | tee log`, then Ctrl-C: the reader of stderr is gone
/// before the drain logs a line. The gateway still drains (the queued data
/// of a down target is spilled to disk) and exits 0, not 101 (a panic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_with_stderr_to_a_closed_pipe_drains_and_exits_0() {
    let data = TempDir::new("fanout-op-pipe");
    let conf = TempDir::new("fanout-op-pipe-conf");
    let down = free_port();
    let registry = conf.path().join("registry.yaml");
    let export = format!("endpoint: '{}'", rounds::endpoint(down));
    std::fs::write(&registry, rounds::registry(TOKEN, &export)).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let ingest = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(fanout_bin())
        .arg("serve")
        .args(["--admin-listen", &admin, "--ingest-listen", &ingest])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--registry")
        .arg(&registry)
        .args(["--drain-delay", "0s", "--shutdown-grace", "1s"])
        .env("FANOUT_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !raw(
        &admin,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .starts_with("HTTP/1.1 200")
    {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let http = client();
    for seq in 0..5 {
        let status = rounds::write(&http, &ingest, TOKEN, round(0, seq)).await;
        assert_eq!(status, 204);
    }
    // The pipe's reader goes away (tee killed by the same Ctrl-C).
    drop(child.stderr.take());
    signal(child.id(), "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.expect("exited within 20s of SIGINT");
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The drain ran: the down target's queue is on disk.
    let spilled = spilled_bytes(data.path());
    assert!(spilled > 0, "nothing was spilled at shutdown");
    println!("exit {status:?}; {spilled} bytes spilled at shutdown");
}

/// On SIGTERM, for `--drain-delay`, `/readyz` and new writes answer 503
/// with `Retry-After` (a load balancer's health check takes the gateway out
/// and clients retry elsewhere); then the ingest port closes and the
/// process exits 0.
#[test]
fn sigterm_answers_503_with_retry_after_for_the_drain_delay_then_closes() {
    let mut gw = Gateway::start("op-drain", &["--drain-delay", "3s"]);
    let ingest = gw.ingest.clone();
    let write = "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
         Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n";
    let readyz = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    signal(gw.pid(), "-TERM");
    let sent = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let w = raw(&ingest, write, Duration::from_secs(2));
    assert!(w.starts_with("HTTP/1.1 503"), "{w}");
    assert!(w.to_ascii_lowercase().contains("retry-after:"), "{w}");
    let r = raw(&ingest, readyz, Duration::from_secs(2));
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "checks took too long to tell"
    );
    // Then the port closes and the process exits 0.
    // (Waiting only: a second SIGTERM would cut the drain short.)
    let status = gw
        .wait(Duration::from_secs(15))
        .expect("exited after the drain");
    assert!(status.success(), "{status:?}");
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "closed after {took:?}, before the drain delay"
    );
    assert!(
        TcpStream::connect(&ingest).is_err(),
        "ingest port still open"
    );
    println!("503 with Retry-After during the drain; exited {took:?} after SIGTERM");
}

/// With a target down and `--shutdown-grace 30s`, the first SIGTERM waits
/// for delivery; a second one stops at once, after spilling what is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once_and_spills() {
    let conf = TempDir::new("fanout-op-second-conf");
    let down = free_port();
    let registry = conf.path().join("registry.yaml");
    let export = format!("endpoint: '{}'", rounds::endpoint(down));
    std::fs::write(&registry, rounds::registry(TOKEN, &export)).unwrap();
    let mut gw = Gateway::start(
        "op-second",
        &[
            "--registry",
            registry.to_str().unwrap(),
            "--shutdown-grace",
            "30s",
        ],
    );
    let http = client();
    for seq in 0..5 {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
    }
    signal(gw.pid(), "-TERM");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        gw.wait(Duration::ZERO).is_none(),
        "still delivering within the grace"
    );
    let second = Instant::now();
    signal(gw.pid(), "-TERM");
    let status = gw.wait(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "still running 10s after the second SIGTERM; log:\n{}",
            gw.log()
        )
    });
    let took = second.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}; log:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("second signal"), "log:\n{}", gw.log());
    let spilled = spilled_bytes(gw.data_dir.path());
    assert!(spilled > 0, "nothing spilled; log:\n{}", gw.log());
    println!("exited {took:?} after the second SIGTERM; {spilled} bytes spilled");
}

/// A cluster whose series all go nowhere (here: no Deployment has their
/// namespace) gets 204 like any other, so the log says why, once a minute
/// per cluster, with an example series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_whole_is_logged_with_the_reason_and_an_example() {
    let conf = TempDir::new("fanout-op-dropped-conf");
    let registry = conf.path().join("registry.yaml");
    let yaml = rounds::registry(TOKEN, "").replace("namespace: ns-1", "namespace: ns-other");
    std::fs::write(&registry, yaml).unwrap();
    let gw = Gateway::start("op-dropped", &["--registry", registry.to_str().unwrap()]);
    let http = client();
    for seq in 0..3 {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = gw.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("every series of a request"))
        {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no drop line; log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains("cluster=cl-a"), "{line}");
    assert!(line.contains("unattributed=200"), "{line}");
    assert!(
        line.contains(r#"namespace=\"ns-1\""#) || line.contains(r#"namespace="ns-1""#),
        "{line}"
    );
    let count = gw
        .log()
        .lines()
        .filter(|l| l.contains("every series of a request"))
        .count();
    assert_eq!(
        count, 1,
        "logged once a minute per cluster, not per request"
    );
    println!("{line}");
}
