//! Endpoints that do not fail cleanly cost a bounded amount of time,
//! connections and memory, show as what they are in their target's state,
//! and leave the other targets untouched (docs/delivery.md "Hostile
//! endpoints").
//!
//! One gateway, one Deployment, six exports: a healthy sink and five
//! hostile endpoints, each a real TCP server on loopback:
//! - `backlog`: a listener whose accept queue is full (connects hang);
//! - `tls-stall`: an `https://` endpoint that accepts and never answers the
//!   TLS handshake;
//! - `silent`: accepts, reads the request, never answers;
//! - `trickle`: answers 200 with a 1 MB body at one byte per 100 ms;
//! - `huge`: answers 200 with a 50 MB body as fast as it can.
//!
//! The gateway bounds new connections at 1 s (`--target-connect-timeout`,
//! `--target-tls-handshake-timeout`) and every export's attempts at 3 s
//! (`delivery.timeout`). A target is `retrying` at its first failures and
//! `failing` after a while; either, with the reason, is what is checked.

use std::time::{Duration, Instant};

use fanout_loadtest::bench::procfs;
use fanout_tests::fanout::{free_port, tempfile_dir::TempDir, Gateway};
use fanout_tests::rounds::{self, await_all, client, endpoint, in_order, round, sink_at};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const TOKEN: &str = "hostile-ingest-token";

/// What a hostile endpoint does with each connection.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Reads whatever comes, never writes (an HTTP request or a TLS
    /// ClientHello alike).
    Silent,
    /// 200 with a 1 MB body, one byte per 100 ms.
    Trickle,
    /// 200 with a 50 MB body, as fast as the client reads.
    Huge,
}

/// Serves `kind` on `listener` until the test ends; the connections it
/// accepted, for the report.
fn serve(listener: TcpListener, kind: Kind) {
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(handle(conn, kind));
        }
    });
}

async fn handle(mut conn: TcpStream, kind: Kind) {
    let mut buf = vec![0u8; 64 << 10];
    if let Kind::Silent = kind {
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
        // Held open until the peer closes it.
        return;
    }
    // The request's head and (small) body arrive in the first reads.
    let _ = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
    let length = match kind {
        Kind::Trickle => 1_000_000,
        _ => 50_000_000,
    };
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
    if conn.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..length {
        let written = match kind {
            Kind::Trickle => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn.write_all(b"x").await
            }
            _ => conn.write_all(&chunk).await,
        };
        if written.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_endpoints_are_bounded_named_and_leave_the_healthy_target_alone() {
    let healthy_port = free_port();
    let sink = sink_at(healthy_port, "healthy", &[]).await;

    // A listener with a full accept queue: its first connection is ours,
    // every later SYN is dropped and the connect hangs.
    let backlog = TcpSocket::new_v4().unwrap();
    backlog.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let backlog_port = backlog.local_addr().unwrap().port();
    let _backlog = backlog.listen(0).unwrap(); // held: never accepts
    let _filler = TcpStream::connect(("127.0.0.1", backlog_port))
        .await
        .unwrap();

    let mut hostile = Vec::new();
    for (name, kind) in [
        ("tls-stall", Kind::Silent),
        ("silent", Kind::Silent),
        ("trickle", Kind::Trickle),
        ("huge", Kind::Huge),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        serve(listener, kind);
        let url = if name == "tls-stall" {
            format!("https://127.0.0.1:{port}/api/v1/write")
        } else {
            endpoint(port)
        };
        hostile.push((name, url));
    }
    hostile.push(("backlog", endpoint(backlog_port)));

    let dir = TempDir::new("fanout-hostile");
    let registry = dir.path().join("registry.yaml");
    let mut yaml = rounds::registry(TOKEN, "");
    yaml.push_str("metricsExports:\n");
    let delivery = "delivery: {timeout: 3s, batchSendDeadline: 100ms, maxBackoff: 1s}";
    yaml.push_str(&format!(
        "  - {{id: healthy, objectKey: healthy, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', {delivery}}}}}\n",
        endpoint(healthy_port)
    ));
    for (name, url) in &hostile {
        yaml.push_str(&format!(
            "  - {{id: {name}, objectKey: {name}, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{url}', {delivery}}}}}\n"
        ));
    }
    std::fs::write(&registry, yaml).unwrap();
    let gw = Gateway::start(
        "hostile",
        &[
            "--registry",
            registry.to_str().unwrap(),
            "--target-connect-timeout",
            "1s",
            "--target-tls-handshake-timeout",
            "1s",
        ],
    );
    let fds_before = procfs::open_fds(gw.pid()).unwrap();

    // 50 rounds of 200 series, one every 100 ms.
    let http = client();
    let sent: Vec<u32> = (0..50).collect();
    let started = Instant::now();
    for &seq in &sent {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The healthy target has everything, in order, while the others fail.
    await_all(
        &in_order("healthy", &sent),
        &sink,
        &gw,
        Duration::from_secs(10),
    )
    .await;
    let delivered_in = started.elapsed();
    let report = sink.report();

    // Each hostile target is failing with its reason (or, `huge`, delivers:
    // its 2xx is a 2xx; only 64 KiB of its body are read).
    let want = [
        ("backlog", "connect timeout after 1s"),
        ("tls-stall", "tls handshake timeout after 1s"),
        ("silent", "no response within 3s"),
        ("trickle", "response body not complete within 3s"),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let targets = loop {
        let targets = rounds::targets(&gw);
        let of = |name: &str| {
            targets
                .iter()
                .find(|t| t["feeds"].to_string().contains(&format!("\"{name}\"")))
                .cloned()
                .unwrap_or_else(|| panic!("a target feeding {name}: {targets:?}"))
        };
        let ok = want.iter().all(|(name, reason)| {
            let t = of(name);
            (t["state"] == "failing" || t["state"] == "retrying")
                && t["lastError"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(reason))
        }) && of("huge")["samplesSent"].as_u64().unwrap_or(0) > 0
            && of("healthy")["state"] == "healthy";
        if ok {
            break targets;
        }
        assert!(
            Instant::now() < deadline,
            "targets after 20 s: {}\nlog:\n{}",
            serde_json::to_string_pretty(&targets).unwrap(),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fds_after = procfs::open_fds(gw.pid()).unwrap();
    let rss = procfs::rss(gw.pid()).unwrap() >> 20;
    for t in &targets {
        println!(
            "{:<40} state {:<8} sent {:>6} failures {} last error {}",
            t["feeds"].to_string(),
            t["state"].as_str().unwrap_or(""),
            t["samplesSent"],
            t["failures"],
            t["lastError"]["message"]
        );
    }
    println!(
        "healthy: all {} rounds delivered {:.1} s after the first write; end-to-end p50 {} ms, p99 {} ms; gateway descriptors {fds_before} -> {fds_after}, RSS {rss} MiB",
        sent.len(),
        delivered_in.as_secs_f64(),
        report.latency_ms.p50,
        report.latency_ms.p99
    );
    // Bounded: at most a few connections per hostile target (concurrency
    // falls to one while it fails), nothing piling up.
    assert!(
        fds_after <= fds_before + 5 * 8,
        "descriptors {fds_before} -> {fds_after}"
    );
    assert!(rss < 300, "RSS {rss} MiB");
}
