//! Helpers to run the real `fanout` binary and talk to its admin API.
//!
//! The binary is `target/debug/fanout` of this workspace (or of
//! `CARGO_TARGET_DIR`); `CARGO_BIN_EXE_fanout` is not available across crates,
//! so `.ci/run` builds it first with `cargo build -p fanout-gateway --bin fanout`.
//! The HTTP client is a few lines of HTTP/1.1 over a `TcpStream`: the admin
//! API is plain JSON on loopback, and it keeps this crate free of dependencies.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `fanout` binary built by cargo for this workspace.
/// `FANOUT_BIN` overrides it (e.g. a release build for benchmarks).
pub fn fanout_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FANOUT_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join("fanout");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p fanout-gateway --bin fanout` first",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1 (bound and released; the usual small race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A running `fanout serve`, stopped (SIGKILL) when dropped.
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT` of its admin API.
    pub admin: String,
    /// `127.0.0.1:PORT` of its ingest listener.
    pub ingest: String,
    /// Its admin token.
    pub token: String,
    /// Its data directory (kept alive as long as the gateway).
    pub data_dir: tempfile_dir::TempDir,
}

/// A minimal temporary directory, removed on drop.
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};

    /// A directory under the system temp dir, removed with its contents on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// Creates a fresh directory named after `prefix`, the pid and a counter.
        pub fn new(prefix: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("cannot create temp dir");
            TempDir(dir)
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if std::env::var_os("FANOUT_KEEP_TEMP").is_none() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

impl Gateway {
    /// Starts `fanout serve` with loopback listeners, an admin token, a fresh
    /// data dir and `extra` flags; waits until `/readyz` answers 200.
    pub fn start(name: &str, extra: &[&str]) -> Gateway {
        Gateway::start_in(
            name,
            tempfile_dir::TempDir::new(&format!("fanout-{name}")),
            extra,
        )
    }

    /// Like [`Gateway::start`] with `env` added to the process environment.
    pub fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::launch(
            name,
            tempfile_dir::TempDir::new(&format!("fanout-{name}")),
            extra,
            env,
        )
    }

    /// Like [`Gateway::start`] on an existing data dir (a restart). With
    /// `--data-dir` in `extra` that one is used, and `data_dir` only holds
    /// the log.
    pub fn start_in(name: &str, data_dir: tempfile_dir::TempDir, extra: &[&str]) -> Gateway {
        Gateway::launch(name, data_dir, extra, &[])
    }

    fn launch(
        name: &str,
        data_dir: tempfile_dir::TempDir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let admin_port = free_port();
        let ingest_port = free_port();
        let token = format!("admin-token-{name}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.path().join("gateway.log"))
            .expect("log file");
        let child = Command::new(fanout_bin())
            .arg("serve")
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--ingest-listen", &format!("127.0.0.1:{ingest_port}")])
            .args(match extra.contains(&"--data-dir") {
                // The caller's data dir (say a small file system); the log
                // stays in `data_dir`.
                true => vec![],
                false => vec!["--data-dir", data_dir.path().to_str().expect("utf-8 path")],
            })
            .args(["--admin-token", &token])
            .args(match extra.contains(&"--drain-delay") {
                // Tests stop gateways often; the default 5 s of 503s before
                // the listeners close is tested on its own (tests/operator.rs).
                true => vec![],
                false => vec!["--drain-delay", "0s"],
            })
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("cannot start fanout");
        let gw = Gateway {
            child,
            admin: format!("http://127.0.0.1:{admin_port}"),
            ingest: format!("127.0.0.1:{ingest_port}"),
            token,
            data_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = gw.try_request("GET", "/readyz", None) {
                return gw;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {name} not ready within 30s; log:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait(timeout)
    }

    /// Waits up to `timeout` for it to exit (after a signal sent otherwise).
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its data dir, to start the next gateway on (after it exited).
    pub fn take_data_dir(&mut self) -> tempfile_dir::TempDir {
        let spare = tempfile_dir::TempDir::new("fanout-spare");
        std::mem::replace(&mut self.data_dir, spare)
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// An admin API request; panics if the gateway cannot be reached.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nlog:\n{}", self.log()))
    }

    /// An admin API request with the admin token; `body` is `(content type, text)`.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> std::io::Result<(u16, String)> {
        self.try_request_with(method, path, &[], body)
    }

    /// Like [`Gateway::try_request`] with extra request headers (`Accept`, ...).
    pub fn try_request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> std::io::Result<(u16, String)> {
        let addr = self.admin.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (ctype, text) = body.unwrap_or(("application/json", ""));
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {ctype}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
            self.token,
            text.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, body))
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
