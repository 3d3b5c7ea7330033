//! End to end: no secret of an export target leaves the gateway, whatever the
//! target echoes back (SPEC §3 "Secrets", docs/registry.md "Secrets").
//!
//! - `secrets_never_leave_the_gateway_and_still_reach_targets`: exports with
//!   every auth kind (bearer, basic, SigV4 with static keys, SigV4 with the
//!   environment's keys and session token, custom `Authorization` and
//!   `X-Api-Key` headers, a key in the endpoint's query string) point at a
//!   receiver in this process that first answers 401 or 400 with every
//!   request header and the request URI in its body (secrets first, so the
//!   gateway's 256-byte cut cannot hide them). Then every admin API read
//!   (JSON and YAML), `/metrics`, `/api/v1/stats`, `/api/v1/targets`, two
//!   events of the SSE stream, the `fanout apply` output and the gateway's
//!   log at trace level are searched for each secret in clear, base64
//!   (standard and URL-safe) and percent-encoded form: no hit. In a second
//!   phase the receiver answers 204 to requests with the right credentials
//!   and the test waits for samples at every target.
//! - `console_targets_screen_shows_no_secret` (ignored, run by `.ci/run`):
//!   the same failing targets in `fanout-tui` inside a 250-column tmux pane;
//!   the Targets table, each target's detail, the Failures and Config views
//!   show the errors and exports without a secret.
//!
//! Everything binds 127.0.0.1 and every wait is bounded.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use fanout_proto::v1;
use fanout_tests::fanout::{fanout_bin, Gateway};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const INGEST_TOKEN: &str = "INGtoken-secret-1x";
const BEARER: &str = "BTbearer-tok-7Qx9";
const BASIC_USER: &str = "svc-user";
const BASIC_PASS: &str = "BPpass/w0rd+9z";
const SIGV4_ACCESS: &str = "AKIDSTATICEXAMPLE";
const SIGV4_SECRET: &str = "SKsigv4/Secret+Key9";
const ENV_ACCESS: &str = "AKIDENVEXAMPLE";
const ENV_SECRET: &str = "SKenv-secret-key-5w";
const ENV_SESSION: &str = "STsession/token+8==";
const HDR_AUTH: &str = "Custom CHauth-secret-4";
const HDR_KEY: &str = "CHapikey-secret-5q";
/// The query key, clear; the endpoint carries it percent-encoded.
const QUERY_KEY: &str = "QKquery/secret6";
const QUERY_KEY_IN_URL: &str = "QKquery%2Fsecret6";

/// The exports (path segment of their endpoint on the receiver).
const TARGETS: [&str; 6] = ["bearer", "basic", "sigv4", "sigv4env", "headers", "query"];

/// Every form of every secret the test searches for.
fn secret_forms() -> Vec<String> {
    let std = base64::engine::general_purpose::STANDARD_NO_PAD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let basic = format!("{BASIC_USER}:{BASIC_PASS}");
    let clear = [
        INGEST_TOKEN,
        BEARER,
        BASIC_PASS,
        SIGV4_SECRET,
        ENV_SECRET,
        ENV_SESSION,
        HDR_AUTH,
        "CHauth-secret-4",
        HDR_KEY,
        QUERY_KEY,
        QUERY_KEY_IN_URL,
    ];
    let mut forms = Vec::new();
    for s in clear {
        forms.push(s.to_owned());
        forms.push(std.encode(s));
        forms.push(url.encode(s));
        forms.push(percent(s));
    }
    forms.push(std.encode(&basic));
    forms.push(url.encode(&basic));
    forms.sort();
    forms.dedup();
    forms
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The secret forms found in `text`, with some context.
fn hits(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for form in secret_forms() {
        for (i, _) in text.match_indices(form.as_str()) {
            let mut a = i.saturating_sub(80);
            while !text.is_char_boundary(a) {
                a -= 1;
            }
            let mut b = (i + form.len() + 80).min(text.len());
            while !text.is_char_boundary(b) {
                b += 1;
            }
            found.push(format!("{form:?} in …{}…", &text[a..b]));
        }
    }
    found
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Requests with the right credentials, per target.
    right: BTreeMap<String, u64>,
    /// Requests with wrong or missing credentials: what was wrong.
    wrong: Vec<String>,
    /// Samples accepted (phase two), per target.
    samples: BTreeMap<String, u64>,
}

/// A remote-write receiver that echoes every request back in an error
/// until `accept` is set, then takes requests with the right credentials.
struct Receiver {
    addr: SocketAddr,
    accept: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Whether a request to `target` carries that target's real credentials;
/// `Err` says what is wrong.
fn check_credentials(target: &str, uri: &http::Uri, h: &http::HeaderMap) -> Result<(), String> {
    let std = base64::engine::general_purpose::STANDARD;
    let auth = header(h, "authorization");
    let ok = match target {
        "bearer" => auth == format!("Bearer {BEARER}"),
        "basic" => auth == format!("Basic {}", std.encode(format!("{BASIC_USER}:{BASIC_PASS}"))),
        "sigv4" => {
            auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={SIGV4_ACCESS}/"))
                && auth.contains("Signature=")
                && !header(h, "x-amz-date").is_empty()
                && !header(h, "x-amz-content-sha256").is_empty()
        }
        "sigv4env" => {
            auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ENV_ACCESS}/"))
                && header(h, "x-amz-security-token") == ENV_SESSION
        }
        "headers" => auth == HDR_AUTH && header(h, "x-api-key") == HDR_KEY,
        "query" => uri.query() == Some(&format!("api_key={QUERY_KEY_IN_URL}&tenant=t1")),
        other => return Err(format!("unknown target {other}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{target}: wrong credentials"))
    }
}

/// The echo: the URI and the credential headers first, then every header,
/// as lines and as JSON.
fn echo(uri: &http::Uri, h: &http::HeaderMap) -> String {
    let mut out = format!("bad creds for {uri}\n");
    for name in ["x-amz-security-token", "x-api-key", "authorization"] {
        if h.contains_key(name) {
            out.push_str(&format!("{name}: {}\n", header(h, name)));
        }
    }
    let mut json = serde_json::Map::new();
    for (name, value) in h {
        let v = value.to_str().unwrap_or("?").to_owned();
        out.push_str(&format!("{name}: {v}\n"));
        json.insert(name.as_str().to_owned(), v.into());
    }
    out.push_str(&serde_json::Value::Object(json).to_string());
    out
}

fn samples_in(body: &[u8]) -> u64 {
    let Ok(raw) = fanout_proto::snappy::decompress(body, 64 << 20) else {
        return 0;
    };
    let Ok(req) = <v1::WriteRequest as prost::Message>::decode(raw) else {
        return 0;
    };
    req.timeseries.iter().map(|t| t.samples.len() as u64).sum()
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver binds");
        let addr = listener.local_addr().unwrap();
        let accept = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (a, s) = (accept.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (a, s) = (a.clone(), s.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let (a, s) = (a.clone(), s.clone());
                        async move { Ok::<_, Infallible>(answer(req, &a, &s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, accept, seen }
    }

    fn url(&self, target: &str) -> String {
        format!("http://{}/{target}/api/v1/write", self.addr)
    }
}

async fn answer(
    req: http::Request<Incoming>,
    accept: &AtomicBool,
    seen: &Mutex<Seen>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts.uri.path().split('/').nth(1).unwrap_or("").to_owned();
    let verdict = check_credentials(&target, &parts.uri, &parts.headers);
    let accepted = {
        let mut seen = seen.lock().unwrap();
        match &verdict {
            Ok(()) => *seen.right.entry(target.clone()).or_default() += 1,
            Err(e) => seen.wrong.push(e.clone()),
        }
        if verdict.is_ok() && accept.load(Ordering::SeqCst) {
            *seen.samples.entry(target.clone()).or_default() += samples_in(&body);
            true
        } else {
            false
        }
    };
    let status = if accepted {
        204
    } else if ["sigv4env", "query"].contains(&target.as_str()) {
        400
    } else {
        401
    };
    let text = if accepted {
        String::new()
    } else {
        echo(&parts.uri, &parts.headers)
    };
    http::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}

fn registry(rx: &Receiver) -> String {
    let delivery = "delivery: {batchSendDeadline: 100ms, maxBackoff: 200ms}";
    format!(
        "clusters:
  - {{id: cl-s, organizationId: org-s, cloudProvider: aws, cloudRegion: us-east-1, ingestToken: {INGEST_TOKEN}}}
workspaces:
  - {{id: ws-s, organizationId: org-s, name: secrets}}
deployments:
  - {{id: dep-s, workspaceId: ws-s, clusterId: cl-s, namespace: ns-s, type: HOSTED, name: dep}}
metricsExports:
  - id: x-bearer
    objectKey: x_bearer
    scope: DEPLOYMENT
    scopeEntityId: dep-s
    metricsExport: {{endpoint: '{bearer}', authType: AUTH_TOKEN, basicToken: '{BEARER}', {delivery}}}
  - id: x-basic
    objectKey: x_basic
    scope: DEPLOYMENT
    scopeEntityId: dep-s
    metricsExport: {{endpoint: '{basic}', authType: BASIC, username: {BASIC_USER}, password: '{BASIC_PASS}', {delivery}}}
  - id: x-sigv4
    objectKey: x_sigv4
    scope: DEPLOYMENT
    scopeEntityId: dep-s
    metricsExport: {{endpoint: '{sigv4}', authType: SIGV4, sigv4Region: us-east-1, sigv4AccessKey: {SIGV4_ACCESS}, sigv4SecretKey: '{SIGV4_SECRET}', {delivery}}}
  - id: x-sigv4env
    objectKey: x_sigv4env
    scope: DEPLOYMENT
    scopeEntityId: dep-s
    metricsExport: {{endpoint: '{sigv4env}', authType: SIGV4, sigv4Region: us-east-1, {delivery}}}
  - id: x-headers
    objectKey: x_headers
    scope: WORKSPACE
    scopeEntityId: ws-s
    links:
      - scope: DEPLOYMENT
        scopeEntityId: dep-s
        overrides: {{metricsExport: {{headers: {{X-Api-Key: '{HDR_KEY}'}}}}}}
    metricsExport: {{endpoint: '{headers}', headers: {{Authorization: '{HDR_AUTH}', X-Api-Key: 'placeholder', X-Scope-OrgID: team-s}}, publicHeaders: [X-Scope-OrgID], {delivery}}}
  - id: x-query
    objectKey: x_query
    scope: DEPLOYMENT
    scopeEntityId: dep-s
    metricsExport: {{endpoint: '{query}?api_key={QUERY_KEY_IN_URL}&tenant=t1', {delivery}}}
",
        bearer = rx.url("bearer"),
        basic = rx.url("basic"),
        sigv4 = rx.url("sigv4"),
        sigv4env = rx.url("sigv4env"),
        headers = rx.url("headers"),
        query = rx.url("query"),
    )
}

/// A remote-write 1.0 body of `n` series of dep-s, at `seq`.
fn write_body(n: u32, seq: u32) -> Bytes {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let req = v1::WriteRequest {
        timeseries: (0..n)
            .map(|i| v1::TimeSeries {
                labels: [
                    ("__name__", "airflow_ti_failures_total"),
                    ("deploymentId", "dep-s"),
                    ("series", &format!("s{i}")),
                ]
                .iter()
                .map(|(k, v)| v1::Label {
                    name: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
                samples: vec![v1::Sample {
                    value: f64::from(seq),
                    timestamp: ts,
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Bytes::from(fanout_proto::snappy::compress(
        &prost::Message::encode_to_vec(&req),
    ))
}

async fn send_traffic(ingest: &str, seq: u32) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{ingest}/api/v1/write"))
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .header("authorization", format!("Bearer {INGEST_TOKEN}"))
        .body(Full::new(write_body(20, seq)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("ingest answers within 10s")
        .expect("ingest reachable");
    assert_eq!(resp.status(), 204, "ingest refused the write");
}

/// The first `events` events of `/api/v1/stats/stream`, read for at most 5 s.
fn sse_events(gw: &Gateway, events: usize) -> String {
    let addr = gw.admin.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("admin port");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET /api/v1/stats/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Accept: text/event-stream\r\n\r\n",
        gw.token
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&raw).matches("data:").count() >= events {
            break;
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, body) = gw
        .try_request_with("GET", path, headers, None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn targets(gw: &Gateway) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&get(gw, "/api/v1/targets", &[])).unwrap();
    v["items"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_leave_the_gateway_and_still_reach_targets() {
    let rx = Receiver::start().await;
    let gw = Gateway::start_with_env(
        "e2e-secrets",
        &["--catalog", "builtin"],
        &[
            ("FANOUT_LOG", "trace"),
            ("RUST_LOG", "trace"),
            ("AWS_ACCESS_KEY_ID", ENV_ACCESS),
            ("AWS_SECRET_ACCESS_KEY", ENV_SECRET),
            ("AWS_SESSION_TOKEN", ENV_SESSION),
        ],
    );

    // The registry goes in with `fanout apply`, whose output is searched too.
    let file = gw.data_dir.path().join("registry.yaml");
    std::fs::write(&file, registry(&rx)).unwrap();
    let apply = std::process::Command::new(fanout_bin())
        .args(["apply", "-f", file.to_str().unwrap(), "--admin", &gw.admin])
        .args(["--admin-token", &gw.token])
        .output()
        .expect("fanout apply runs");
    let apply_out = format!(
        "{}{}",
        String::from_utf8_lossy(&apply.stdout),
        String::from_utf8_lossy(&apply.stderr)
    );
    assert!(apply.status.success(), "fanout apply: {apply_out}");
    assert!(apply_out.contains("6 targets"), "{apply_out}");

    // Phase one: every target answers 401/400 with the request echoed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = 0;
    loop {
        seq += 1;
        send_traffic(&gw.ingest, seq).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ts = targets(&gw);
        let failed = ts
            .iter()
            .filter(|t| t["lastError"]["message"].is_string())
            .count();
        if ts.len() == TARGETS.len() && failed == TARGETS.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every target has a last error after 30s: {ts:?}\nlog tail:\n{}",
            tail(&gw.log(), 30)
        );
    }
    {
        let seen = rx.seen.lock().unwrap();
        assert!(seen.wrong.is_empty(), "wrong credentials: {:?}", seen.wrong);
        for t in TARGETS {
            assert!(
                seen.right.get(t).copied().unwrap_or(0) > 0,
                "{t}: no request"
            );
        }
    }

    let last_errors: Vec<String> = targets(&gw)
        .iter()
        .map(|t| t["lastError"]["message"].as_str().unwrap_or("").to_owned())
        .collect();
    println!("last errors, as the API shows them: {last_errors:#?}");

    // Every read.
    let mut reads: Vec<(String, String)> = Vec::new();
    let mut read = |name: &str, text: String| reads.push((name.to_owned(), text));
    let exports = get(&gw, "/api/v1/metrics-exports", &[]);
    let export_list: serde_json::Value = serde_json::from_str(&exports).unwrap();
    read("GET /api/v1/metrics-exports", exports.clone());
    for e in export_list["items"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        read(id, get(&gw, &format!("/api/v1/metrics-exports/{id}"), &[]));
        let (_, status) = gw.request("GET", &format!("/api/v1/metrics-exports/{id}/status"), None);
        read(&format!("{id}/status"), status);
    }
    let effective = get(&gw, "/api/v1/deployments/dep-s/metrics-exports", &[]);
    read(
        "GET /api/v1/deployments/dep-s/metrics-exports",
        effective.clone(),
    );
    read("GET /api/v1/registry", get(&gw, "/api/v1/registry", &[]));
    let yaml = get(&gw, "/api/v1/registry", &[("Accept", "application/yaml")]);
    assert!(yaml.contains("metricsExports:"), "{yaml}");
    read("GET /api/v1/registry (YAML)", yaml);
    read("GET /api/v1/clusters", get(&gw, "/api/v1/clusters", &[]));
    read("GET /metrics", get(&gw, "/metrics", &[]));
    let stats = get(&gw, "/api/v1/stats", &[]);
    assert!(
        stats.contains("bad creds for"),
        "no recent error in {stats}"
    );
    read("GET /api/v1/stats", stats);
    read("GET /api/v1/targets", get(&gw, "/api/v1/targets", &[]));
    let sse = sse_events(&gw, 2);
    assert!(sse.matches("data:").count() >= 2, "SSE: {sse}");
    read("GET /api/v1/stats/stream", sse);
    read("fanout apply", apply_out);

    // The reads show what is set, masked.
    assert!(exports.contains("\"headers.Authorization\""), "{exports}");
    assert!(exports.contains("\"headers.X-Api-Key\""), "{exports}");
    assert!(
        exports.contains("\"X-Scope-OrgID\":\"team-s\""),
        "{exports}"
    );
    assert!(
        exports.contains("/query/api/v1/write?api_key=***&tenant=***"),
        "{exports}"
    );
    assert!(effective.contains("\"headers.X-Api-Key\""), "{effective}");

    // Phase two: right credentials are taken; samples reach every target.
    rx.accept.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        seq += 1;
        send_traffic(&gw.ingest, seq).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let samples = rx.seen.lock().unwrap().samples.clone();
        if TARGETS
            .iter()
            .all(|t| samples.get(*t).copied().unwrap_or(0) > 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "samples did not reach every target within 30s: {samples:?}\nlog tail:\n{}",
            tail(&gw.log(), 30)
        );
    }
    assert!(rx.seen.lock().unwrap().wrong.is_empty());

    // The log at trace level, both phases.
    let log = gw.log();
    assert!(
        log.contains("TRACE"),
        "the gateway did not log at trace level"
    );
    assert!(
        log.contains("batch rejected by the target"),
        "no rejected batch logged"
    );
    read("gateway log (trace)", log);

    let mut found = Vec::new();
    for (name, text) in &reads {
        for h in hits(text) {
            found.push(format!("{name}: {h}"));
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));

    // The errors did arrive, scrubbed: the echo is there, its secrets are not.
    for msg in last_errors {
        assert!(
            msg.starts_with("401 Unauthorized: bad creds for /")
                || msg.starts_with("400 Bad Request: bad creds for /"),
            "{msg}"
        );
        assert!(msg.contains("***"), "nothing was scrubbed in {msg:?}");
    }
}

/// Runs `tmux` on a private socket.
fn tmux(socket: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("tmux")
        .arg("-L")
        .arg(socket)
        .args(args)
        .env_remove("TMUX")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot run tmux")
}

/// Kills its tmux server when dropped.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = tmux(&self.0, &["kill-server"]);
    }
}

/// The pane once it contains `want` (at most 30 s); panics with the screen.
fn screen_with(socket: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tmux(socket, &["capture-pane", "-p", "-t", "tui"]);
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if screen.contains(want) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want:?} on the console; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs tmux and builds fanout-tui; run by .ci/run"]
async fn console_targets_screen_shows_no_secret() {
    assert!(
        std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "tmux is not installed (apt-get install tmux)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "-p", "fanout-tui", "--bin", "fanout-tui"])
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .expect("cannot run cargo build");
    assert!(built.success(), "cargo build of fanout-tui failed");
    let tui = fanout_tests::prometheus::target_dir().join("debug/fanout-tui");

    let rx = Receiver::start().await;
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("e2e-secrets-tui");
    let file = dir.path().join("registry.yaml");
    std::fs::write(&file, registry(&rx)).unwrap();
    let gw = Gateway::start_with_env(
        "e2e-secrets-tui",
        &["--catalog", "builtin", "--registry", file.to_str().unwrap()],
        &[
            ("AWS_ACCESS_KEY_ID", ENV_ACCESS),
            ("AWS_SECRET_ACCESS_KEY", ENV_SECRET),
            ("AWS_SESSION_TOKEN", ENV_SESSION),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for seq in 1.. {
        send_traffic(&gw.ingest, seq).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let failed = targets(&gw)
            .iter()
            .filter(|t| t["lastError"]["message"].is_string())
            .count();
        if failed == TARGETS.len() {
            break;
        }
        assert!(Instant::now() < deadline, "targets never failed");
    }

    // The console in a 250x50 pane: wide enough for the error column.
    let socket = format!("fanout-secrets-tui-{}", std::process::id());
    let _server = TmuxServer(socket.clone());
    let out = std::process::Command::new("tmux")
        .args([
            "-L",
            &socket,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "tui",
        ])
        .args(["-x", "250", "-y", "50"])
        .arg(format!(
            "{} --admin {}; exec sleep 600",
            tui.display(),
            gw.admin
        ))
        .env("FANOUT_ADMIN_TOKEN", &gw.token)
        .env("TERM", "xterm-256color")
        .env_remove("TMUX")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tmux new-session");
    assert!(out.status.success(), "tmux new-session: {out:?}");

    let mut screens = Vec::new();
    let keys = |k: &str| {
        let out = tmux(&socket, &["send-keys", "-t", "tui", k]);
        assert!(out.status.success(), "send-keys: {out:?}");
    };
    keys("2");
    screens.push(("Targets", screen_with(&socket, "bad creds")));
    for _ in 0..TARGETS.len() {
        keys("Enter");
        screens.push(("target detail", screen_with(&socket, "last err")));
        keys("Escape");
        screen_with(&socket, "bad creds");
        keys("j");
    }
    keys("3");
    screens.push(("Failures", screen_with(&socket, "bad creds")));
    keys("4");
    screens.push(("Config", screen_with(&socket, "x-headers")));
    keys("q");

    let mut found = Vec::new();
    for (name, screen) in &screens {
        for h in hits(screen) {
            found.push(format!("{name}: {h}"));
        }
    }
    assert!(
        found.is_empty(),
        "secrets on the console:\n{}\nscreens:\n{}",
        found.join("\n"),
        screens
            .iter()
            .map(|(n, s)| format!("--- {n}\n{s}"))
            .collect::<String>()
    );
    // What the console shows is the scrubbed error and the masked endpoint.
    assert!(
        screens[0].1.contains("authorization: ***"),
        "{}",
        screens[0].1
    );
    assert!(
        screens
            .iter()
            .any(|(_, s)| s.contains("/query/api/v1/write?api_key=***&tenant=***")),
        "no target detail shows the query endpoint masked"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
