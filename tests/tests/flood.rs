//! A connection flood takes neither the gateway's memory nor its service:
//! the real `fanout serve` with a 256 MiB memory budget gets 8,000 idle
//! connections and 2,000 that send the head of a 4 MiB write and 256 KiB of
//! its body, then stall (10,000: the connection limit). Meanwhile a
//! well-behaved cluster writes every 200 ms: every write is answered 204
//! within 1 s, and the gateway's peak RSS stays within the memory budget
//! plus 128 MiB. The partial bodies are bounded by `--body-read-budget`
//! (64 MiB by default): past it the body that has been arriving the longest
//! is answered 503, so the flood gives way, not the cluster. (Without that
//! bound, `--body-read-budget 4GiB`, this run peaked at 1,028 MiB.)
//!
//! Bounded: at most ~40 s; every socket is on 127.0.0.1.

use std::time::{Duration, Instant};

use fanout_tests::fanout::Gateway;
use fanout_tests::rounds::{client, registry, round, try_write};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

const TOKEN: &str = "flood-token";
const IDLE: usize = 8_000;
const PARTIAL: usize = 2_000;

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The head of a 4 MiB write and 256 KiB of its body (2,000 of them: 500 MiB).
fn partial_write(ingest: &str) -> Vec<u8> {
    let mut out = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {ingest}\r\nContent-Encoding: snappy\r\n\
         Content-Type: application/x-protobuf\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        4 << 20
    )
    .into_bytes();
    out.extend(std::iter::repeat_n(0x42u8, 256 << 10));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_neither_grows_memory_nor_stops_a_good_client() {
    let dir = std::env::temp_dir().join(format!("fanout-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("registry.yaml");
    std::fs::write(&file, registry(TOKEN, "")).unwrap();
    let gw = Gateway::start(
        "flood",
        &[
            "--registry",
            file.to_str().unwrap(),
            "--memory-budget",
            "256MiB",
            // Idle sockets stay for the whole test instead of timing out.
            "--header-read-timeout",
            "60s",
        ],
    );
    let ingest = gw.ingest.clone();
    let http = client();
    assert_eq!(
        try_write(&http, &ingest, TOKEN, round(0, 0)).await,
        Some(204)
    );

    // The well-behaved cluster, every 200 ms for the whole test.
    let good = {
        let (http, ingest) = (http.clone(), ingest.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut statuses = Vec::new();
            let started = Instant::now();
            let mut seq = 1;
            while started.elapsed() < Duration::from_secs(20) {
                let t = Instant::now();
                let status = try_write(&http, &ingest, TOKEN, round(0, seq)).await;
                slowest = slowest.max(t.elapsed());
                statuses.push(status);
                seq += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (statuses, slowest)
        })
    };

    // The flood: idle sockets, then partial bodies.
    let mut held = Vec::with_capacity(IDLE + PARTIAL);
    for _ in 0..IDLE {
        if let Ok(s) = TcpStream::connect(&ingest).await {
            held.push(s);
        }
    }
    let head = partial_write(&ingest);
    let mut partial = 0;
    for _ in 0..PARTIAL {
        if let Ok(mut s) = TcpStream::connect(&ingest).await {
            if tokio::time::timeout(Duration::from_secs(1), s.write_all(&head))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                partial += 1;
            }
            held.push(s);
        }
    }
    let (statuses, slowest) = good.await.unwrap();
    let rss = peak_rss_mib(gw.pid());
    drop(held);

    assert!(
        held_count_ok(partial),
        "only {partial} partial bodies were sent"
    );
    assert!(
        statuses.iter().all(|s| *s == Some(204)),
        "the good client got {statuses:?}\n{}",
        gw.log()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a good write took {slowest:?}"
    );
    assert!(
        rss <= 256.0 + 128.0,
        "peak RSS {rss:.0} MiB with a 256 MiB budget"
    );
    eprintln!(
        "flood: {} good writes, slowest {slowest:?}, peak RSS {rss:.1} MiB, {partial} partial bodies",
        statuses.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Most of the partial bodies were written (the socket buffers take 64 KiB
/// whether or not the gateway reads them, so this checks the flood happened).
fn held_count_ok(partial: usize) -> bool {
    partial >= PARTIAL / 2
}
