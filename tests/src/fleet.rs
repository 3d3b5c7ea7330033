//! A fleet of real gateways for the fleet and chaos tests: [`Member`]s
//! (`fanout serve --store postgres://… --durability wal`) behind HAProxy
//! ([`Balancer`]), clients that write rounds through it and retry like
//! Prometheus ([`writer`]), and [`settle`] to wait for the sinks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout_loadtest::sink::{SinkHandle, SinkReport};

use crate::fanout::{fanout_bin, free_port};
use crate::prometheus::{http, peer_binary, wait_for};
use crate::rounds::{self, client, round_of};

/// The admin token of every member.
pub const ADMIN_TOKEN: &str = "fleet-admin-token";

/// The ingest token of cluster `c` (`cl-c`).
pub fn token(c: u32) -> String {
    format!("fleet-ingest-{c}")
}

/// The start of a fleet registry: clusters `cl-0..` (ingest tokens
/// [`token`]), Workspace `ws`, and Deployment `d-c` of each cluster in
/// namespace `ns-1` (the one `round_of` writes); the exports follow.
pub fn clusters_and_deployments(clusters: u32) -> String {
    let mut y = String::from("clusters:\n");
    for c in 0..clusters {
        y.push_str(&format!(
            "  - {{id: cl-{c}, organizationId: org-c, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: {}}}\n",
            token(c)
        ));
    }
    y.push_str("workspaces:\n  - {id: ws, organizationId: org-w, name: fleet}\ndeployments:\n");
    for c in 0..clusters {
        y.push_str(&format!(
            "  - {{id: d-{c}, workspaceId: ws, clusterId: cl-{c}, namespace: ns-1, type: HOSTED, name: d{c}}}\n"
        ));
    }
    y
}

/// One gateway of the fleet.
pub struct Member {
    /// Its name (`g0`, ...).
    pub name: String,
    /// Its ingest address.
    pub ingest: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Its data dir.
    pub data: PathBuf,
    /// Its `--store`.
    pub store: String,
    /// Extra `fanout serve` flags.
    pub extra: Vec<String>,
    child: Option<Child>,
}

impl Member {
    /// A member named `name` with its data dir under `root`, on `store`.
    pub fn new(name: &str, root: &Path, store: &str) -> Member {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Member {
            name: name.to_owned(),
            ingest: addr(free_port()),
            admin: addr(free_port()),
            data: root.join(name),
            store: store.to_owned(),
            extra: Vec::new(),
            child: None,
        }
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    /// Starts it and waits until `/readyz` answers 200.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(fanout_bin())
            .arg("serve")
            .args(["--store", &self.store])
            .args(["--durability", "wal"])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--ingest-listen", &self.ingest.to_string()])
            .args(["--admin-listen", &self.admin.to_string()])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--drain-delay", "1s", "--shutdown-grace", "15s"])
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("fanout starts");
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(60), || {
            http(self.ingest, "GET", "/readyz", &[], b"").filter(|(s, _)| *s == 200)
        });
        assert!(ready.is_some(), "{} not ready:\n{}", self.name, self.tail());
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends signal `sig` (`TERM`, `KILL`).
    pub fn signal(&mut self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {sig} {pid}");
    }

    /// SIGTERM, then waits (bounded) for the exit; it must be 0.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop:\n{}",
                self.name,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "{} exited {status}:\n{}",
            self.name,
            self.tail()
        );
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.take().expect("running").wait();
    }

    /// An admin API request (YAML body).
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/yaml"));
        }
        http(
            self.admin,
            method,
            path,
            &headers,
            body.unwrap_or("").as_bytes(),
        )
        .unwrap_or_else(|| panic!("{} admin API unreachable", self.name))
    }

    /// The end of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// HAProxy in front of the members' ingest ports; killed when dropped.
pub struct Balancer {
    child: Child,
    /// Where clients write.
    pub addr: SocketAddr,
}

impl Balancer {
    /// Starts HAProxy (config and log in `dir`) for `members`.
    pub fn start(dir: &Path, members: &[Member]) -> Balancer {
        let bin = peer_binary("FANOUT_HAPROXY_BIN", "haproxy")
            .expect("haproxy not found (install Debian's `haproxy` or set FANOUT_HAPROXY_BIN)");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cfg = format!(
            "global\n  maxconn 2000\n\
defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\
frontend ingest\n  bind {addr}\n  default_backend gateways\n\
backend gateways\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n\
  default-server inter 200ms fall 1 rise 2\n"
        );
        for m in members {
            cfg.push_str(&format!("  server {} {} check\n", m.name, m.ingest));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .spawn()
            .expect("haproxy starts");
        Balancer { child, addr }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A round a writer sent: when it was first sent and when it was answered
/// 2xx (`None`: never, the run ended while it was being retried).
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// The round.
    pub seq: u32,
    /// First sent.
    pub first: Instant,
    /// Answered 2xx.
    pub acked: Option<Instant>,
}

/// What the writers saw.
#[derive(Default)]
pub struct Client {
    /// Per cluster, every round.
    pub sent: Vec<Vec<Sent>>,
    /// Attempts after the first.
    pub retries: u64,
    /// Answers that may not be retried.
    pub non_retryable: Vec<String>,
    /// The longest a round took to be acknowledged.
    pub longest_pause: Duration,
}

/// Writer of cluster `c`: one round after another through `lb`, each sent
/// again (same body) after 429, 5xx, a connection error or a timeout, with
/// a backoff from 30 ms doubling to 1 s, until answered 2xx or `stop`;
/// rounds of `series` series, `gap` apart.
pub async fn writer(
    c: u32,
    lb: SocketAddr,
    series: u32,
    gap: Duration,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Client>>,
) {
    let http = client();
    let lb = lb.to_string();
    let mut seq = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let body = round_of(c, seq, series);
        let first = Instant::now();
        let mut backoff = Duration::from_millis(30);
        let acked = loop {
            match rounds::try_write(&http, &lb, &token(c), body.clone()).await {
                Some(s) if s / 100 == 2 => break Some(Instant::now()),
                Some(s) if s != 429 && s < 500 => {
                    out.lock()
                        .unwrap()
                        .non_retryable
                        .push(format!("cluster {c} round {seq}: {s}"));
                    break None;
                }
                _ => {}
            }
            out.lock().unwrap().retries += 1;
            if stop.load(Ordering::SeqCst) && first.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        };
        {
            let mut o = out.lock().unwrap();
            if let Some(at) = acked {
                o.longest_pause = o.longest_pause.max(at - first);
            }
            o.sent[c as usize].push(Sent { seq, first, acked });
        }
        seq += 1;
        tokio::time::sleep(gap).await;
    }
}

/// Waits until `ok` holds for the sinks' reports, or panics after `limit`
/// with what `missing` says.
pub async fn settle(
    sinks: &HashMap<&str, SinkHandle>,
    limit: Duration,
    missing: impl Fn(&HashMap<String, SinkReport>) -> Vec<String>,
) -> HashMap<String, SinkReport> {
    let deadline = Instant::now() + limit;
    loop {
        let reports: HashMap<String, SinkReport> = sinks
            .iter()
            .map(|(n, s)| (n.to_string(), s.report()))
            .collect();
        let left = missing(&reports);
        if left.is_empty() {
            return reports;
        }
        assert!(
            Instant::now() < deadline,
            "{} problems, e.g.:\n{}",
            left.len(),
            left[..left.len().min(10)].join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Balancer {
    /// [`Balancer::start`], then waits (30 s at most) until it answers
    /// `/readyz` with 200.
    pub fn start_ready(dir: &Path, members: &[Member]) -> Balancer {
        let lb = Balancer::start(dir, members);
        let up = wait_for(Duration::from_secs(30), || {
            http(lb.addr, "GET", "/readyz", &[], b"").filter(|(s, _)| *s == 200)
        });
        assert!(up.is_some(), "haproxy does not answer on {}", lb.addr);
        lb
    }
}

/// One [`writer`] per cluster `0..clusters`, all through `lb`.
pub struct Writers {
    /// Set to stop them.
    pub stop: Arc<AtomicBool>,
    /// What they saw.
    pub out: Arc<Mutex<Client>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts them: rounds of `series` series, `gap` apart.
    pub fn start(clusters: u32, lb: SocketAddr, series: u32, gap: Duration) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let out = Arc::new(Mutex::new(Client {
            sent: vec![Vec::new(); clusters as usize],
            ..Client::default()
        }));
        let tasks = (0..clusters)
            .map(|c| tokio::spawn(writer(c, lb, series, gap, stop.clone(), out.clone())))
            .collect();
        Writers { stop, out, tasks }
    }

    /// Stops them, waits for every round in flight, and returns what they saw.
    pub async fn finish(self) -> Client {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a writer panicked");
        }
        let client = std::mem::take(&mut *self.out.lock().unwrap());
        client
    }
}
