//! The admin API over HTTPS (`--admin-tls-cert`, `--admin-tls-key`): the
//! real `fanout serve` with a self-signed certificate, `fanout apply` and the
//! console's client (the code `fanout-tui` runs) with `https://` URLs.
//!
//! - `fanout apply -f examples/registry.yaml --admin https://… --ca-cert`
//!   applies the registry;
//! - without `--ca-cert` it fails, saying the certificate is not trusted;
//!   `http://` to the HTTPS port fails too; neither prints the token;
//! - the console's client reads the registry, a Deployment's effective
//!   exports and a stats snapshot from the stream, and pauses a target.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fanout_tests::prometheus::{fanout_binary, free_port, temp_dir, wait_for, Proc};
use fanout_tui::client::{http_client, Admin, Msg};

const TOKEN: &str = "admin-tls-token-5e3c";

fn apply(admin: &str, ca: Option<&Path>) -> Output {
    let registry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/registry.yaml");
    let mut cmd = Command::new(fanout_binary());
    cmd.arg("apply")
        .arg("-f")
        .arg(&registry)
        .args(["--admin", admin, "--admin-token", TOKEN])
        .env_remove("FANOUT_CA_CERT")
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        cmd.arg("--ca-cert").arg(ca);
    }
    cmd.output().expect("cannot run fanout apply")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key) paths.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let (cert, key) = (dir.join("admin-cert.pem"), dir.join("admin-key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn apply_and_the_console_client_work_over_https() {
    let dir = temp_dir("admin-tls");
    let (cert, key) = certificate(&dir);
    let (admin_port, ingest_port) = (free_port(), free_port());
    let log = dir.join("fanout.log");
    let mut gateway = Proc::spawn(
        "fanout serve",
        Command::new(fanout_binary())
            .arg("serve")
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--ingest-listen", &format!("127.0.0.1:{ingest_port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--admin-token", TOKEN, "--drain-delay", "0s"])
            .arg("--admin-tls-cert")
            .arg(&cert)
            .arg("--admin-tls-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let https = format!("https://127.0.0.1:{admin_port}");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Apply with the certificate trusted (retried until the gateway is up).
    let applied = wait_for(Duration::from_secs(30), || {
        let out = apply(&https, Some(&cert));
        out.status.success().then_some(out)
    })
    .unwrap_or_else(|| {
        let out = apply(&https, Some(&cert));
        panic!(
            "apply over https failed: {}\nlog:\n{}",
            text(&out),
            log_text()
        )
    });
    let said = text(&applied);
    assert!(
        said.contains("applied") && said.contains("metrics exports"),
        "{said}"
    );

    // Not trusted: a clear certificate error, no token.
    let out = apply(&https, None);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains(TOKEN), "{said}");
    // Plain HTTP to the HTTPS port fails (the handshake never completes).
    let out = apply(&format!("http://127.0.0.1:{admin_port}"), None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(TOKEN));

    // The console's client, as `fanout-tui --admin https://… --ca-cert`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = http_client(Some(&cert)).expect("client");
        let admin = Admin::new(&https, Some(TOKEN.into()), client).expect("admin");
        let registry = admin.registry().await.expect("registry over https");
        assert!(!registry.clusters.is_empty() && !registry.metrics_exports.is_empty());
        let deployment = registry.deployments[0].id.clone();
        let effective = admin
            .effective(&deployment)
            .await
            .expect("effective exports");
        assert!(!effective.is_empty(), "{deployment}: no effective export");

        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let follow = tokio::spawn(admin.clone().follow_stats(0, tx));
        let snapshot = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match rx.recv().await {
                    Some(Msg::Stats(0, s)) => return s,
                    Some(Msg::Disconnected { error, .. }) => panic!("stream over https: {error}"),
                    Some(_) => continue,
                    None => panic!("stream ended"),
                }
            }
        })
        .await
        .expect("a stats snapshot within 20 s");
        follow.abort();
        assert!(snapshot.config_version >= 1 && !snapshot.targets.is_empty());
        let id = snapshot.targets[0].id.clone();
        let paused = admin.pause(&id, true).await.expect("pause over https");
        assert!(paused.paused, "{paused:?}");

        // Without the CA the console names the problem too.
        let untrusted = Admin::new(&https, Some(TOKEN.into()), http_client(None).unwrap()).unwrap();
        let e = untrusted.registry().await.unwrap_err();
        assert!(e.to_lowercase().contains("certificate"), "{e}");
        assert!(!e.contains(TOKEN));
    });

    let status = gateway.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        log_text()
    );
    assert!(!log_text().contains(TOKEN));
}
