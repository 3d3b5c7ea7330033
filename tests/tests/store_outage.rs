//! A fleet outlives its PostgreSQL: a gateway restarted while the store is
//! unreachable starts from the last registry it loaded (kept in its data
//! dir), is ready within 10 s, takes writes and delivers them, refuses
//! admin writes with 503 and `Retry-After`, and loads a change made after
//! the store is back within 2 s (docs/fleet.md "When PostgreSQL is down").
//!
//! The outage is a TCP proxy in front of the real PostgreSQL
//! (`FANOUT_TEST_POSTGRES_URL`, set by `.ci/run`): "down" closes its
//! listener and resets every connection through it, as a stopped or
//! unreachable server looks to its clients.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_tests::fanout::{free_port, tempfile_dir::TempDir, Gateway};
use fanout_tests::rounds::{self, client, round, sink_at};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "store-outage-ingest-token";

/// A loopback TCP proxy to `upstream` that can be taken down and up.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    upstream: String,
}

impl Proxy {
    fn new(upstream: String) -> Proxy {
        Proxy {
            port: free_port(),
            up: Arc::new(AtomicBool::new(false)),
            task: None,
            upstream,
        }
    }

    /// Listens and forwards every connection until [`Proxy::down`].
    async fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, upstream) = (self.up.clone(), self.upstream.clone());
        self.task = Some(tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    break;
                }
                let upstream = upstream.clone();
                conns.push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
            for c in conns {
                c.abort();
            }
        }));
    }

    /// Stops listening and resets every connection through it.
    fn down(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// `url` with its host and port replaced by 127.0.0.1:`port`; and its
/// `host:port`.
fn through(url: &str, port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (auth, tail) = rest.split_once('@').map_or(("", rest), |(a, t)| (a, t));
    let (hostport, path) = tail.split_once('/').unwrap_or((tail, ""));
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    (
        format!("{scheme}://{auth}127.0.0.1:{port}/{path}"),
        hostport.to_owned(),
    )
}

fn registry(sink_port: u16) -> String {
    format!(
        "{}metricsExports:\n  - {{id: outage-prom, objectKey: outage_prom, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}'}}}}\n",
        rounds::registry(TOKEN, ""),
        rounds::endpoint(sink_port)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (FANOUT_TEST_POSTGRES_URL); run by .ci/run"]
async fn a_gateway_restarted_while_postgres_is_down_serves_from_its_last_registry() {
    let url = std::env::var("FANOUT_TEST_POSTGRES_URL").expect(
        "FANOUT_TEST_POSTGRES_URL: a PostgreSQL database for this test (.ci/run starts one)",
    );
    let sink_port = free_port();
    let sink = sink_at(sink_port, "outage-prom", &[]).await;
    let mut proxy = Proxy::new(String::new());
    let (proxied, upstream) = through(&url, proxy.port);
    proxy.upstream = upstream;
    proxy.up().await;

    // Gateway A loads the registry through the proxy, then stops.
    let data = TempDir::new("store-outage");
    let dir = data.path().to_owned();
    let mut a = tokio::task::block_in_place(|| {
        Gateway::start_in("store-outage-a", data, &["--store", &proxied])
    });
    let (status, body) = tokio::task::block_in_place(|| {
        a.request(
            "PUT",
            "/api/v1/registry",
            Some(("application/yaml", &registry(sink_port))),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert!(
        dir.join("registry-last-known.json").exists(),
        "the last known registry is kept; log:\n{}",
        a.log()
    );
    let version = a
        .log()
        .lines()
        .filter_map(|l| l.split("installed new version version=").nth(1))
        .filter_map(|v| v.split_whitespace().next())
        .next_back()
        .expect("A installed a version")
        .to_owned();
    a.kill();
    let data = a.take_data_dir();

    // PostgreSQL goes away; B starts on A's data dir.
    proxy.down();
    let started = Instant::now();
    let b = tokio::task::block_in_place(|| {
        Gateway::start_in("store-outage-b", data, &["--store", &proxied])
    });
    let ready_in = started.elapsed();
    println!("ready from the last known registry after {ready_in:?}");
    assert!(
        ready_in < Duration::from_secs(10),
        "ready after {ready_in:?}; log:\n{}",
        b.log()
    );
    let (status, body) = tokio::task::block_in_place(|| b.request("GET", "/readyz", None));
    assert_eq!(status, 200);
    assert!(body.contains("store: unreachable"), "{body}");
    // The stats API (and so the console) says so too.
    let (_, stats) = tokio::task::block_in_place(|| b.request("GET", "/api/v1/stats", None));
    assert!(stats.contains("\"storeReachable\":false"), "{stats}");
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("starting from the last known registry")
                && l.contains(&format!("version={version}"))),
        "version {version}: {log}"
    );
    assert!(!log.contains(TOKEN), "no token in the log");

    // Ingest and delivery go on.
    let http = client();
    for seq in 0..5 {
        let status = rounds::write(&http, &b.ingest, TOKEN, round(0, seq)).await;
        assert_eq!(status / 100, 2, "write {seq}: {status}\nlog:\n{}", b.log());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.report().samples == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing delivered; log:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Admin writes wait for the store.
    let patch = r#"{"metricsExport": {"headers": {"x-outage": "1"}}}"#;
    let (status, body) = tokio::task::block_in_place(|| {
        b.request(
            "PATCH",
            "/api/v1/metrics-exports/outage-prom",
            Some(("application/merge-patch+json", patch)),
        )
    });
    assert_eq!(status, 503, "{body}");
    let metrics = tokio::task::block_in_place(|| b.request("GET", "/metrics", None)).1;
    assert!(
        metrics.lines().any(|l| l == "fanout_store_reachable 0"),
        "{metrics}"
    );

    // The store is back: a change made through another gateway reaches B
    // within 2 s.
    proxy.up().await;
    let c = tokio::task::block_in_place(|| Gateway::start("store-outage-c", &["--store", &url]));
    let changed = Instant::now();
    let (status, body) = tokio::task::block_in_place(|| {
        c.request(
            "PATCH",
            "/api/v1/metrics-exports/outage-prom",
            Some(("application/merge-patch+json", patch)),
        )
    });
    assert_eq!(status, 200, "{body}");
    loop {
        let (_, body) = tokio::task::block_in_place(|| {
            b.request("GET", "/api/v1/metrics-exports/outage-prom", None)
        });
        if body.contains("x-outage") {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "the change did not reach B within 2 s: {body}\nlog:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "change after the store came back reached B after {:?}",
        changed.elapsed()
    );
    let (status, body) = tokio::task::block_in_place(|| b.request("GET", "/readyz", None));
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}
