//! `fanout check` (offline) gives exactly the admin API's verdict and
//! messages, and `fanout apply --dry-run` says what a running gateway would
//! change without changing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fanout_tests::fanout::fanout_bin;
use fanout_tests::fanout::tempfile_dir::TempDir;
use fanout_tests::fanout::Gateway;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/registry.yaml")
}

fn fanout(args: &[&str]) -> Output {
    Command::new(fanout_bin())
        .args(args)
        .env_remove("FANOUT_ADMIN_TOKEN")
        .env_remove("FANOUT_ADMIN_URL")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run fanout")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The example registry with `from` replaced by `to` (each must occur).
fn edited(edits: &[(&str, &str)]) -> String {
    let mut yaml = std::fs::read_to_string(example()).unwrap();
    for (from, to) in edits {
        assert!(yaml.contains(from), "{from:?} is in the example");
        yaml = yaml.replacen(from, to, 1);
    }
    yaml
}

/// The problems `fanout check` printed (its indented lines), sorted.
fn check_problems(o: &Output) -> Vec<String> {
    let mut p: Vec<String> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(str::to_owned)
        .collect();
    p.sort();
    p
}

#[test]
fn check_passes_the_example_and_gives_the_admin_apis_message_for_each_mistake() {
    let ok = fanout(&["check", example().to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("SUCCESS: 2 clusters, 1 workspaces, 3 deployments, 3 metrics exports"),
        "{}",
        text(&ok)
    );

    let mistakes: Vec<(&str, String)> = vec![
        ("not YAML", "clusters: [\n".into()),
        ("an unknown key", edited(&[("name: etl", "nmae: etl")])),
        (
            "a missing field",
            edited(&[("    namespace: etl-7x2k\n", "")]),
        ),
        (
            "a dangling reference",
            edited(&[("clusterId: cluster-us", "clusterId: cluster-xx")]),
        ),
        (
            "a duplicate id",
            edited(&[("id: dep-reports", "id: dep-etl")]),
        ),
        (
            "a bad endpoint",
            edited(&[("http://127.0.0.1:9204/api/v1/write", "ftp://somewhere")]),
        ),
        (
            "a bad duration",
            edited(&[("timeout: 10s", "timeout: ten")]),
        ),
        (
            "a workspace export on a Hybrid Deployment's link",
            edited(&[("scopeEntityId: dep-etl", "scopeEntityId: dep-onprem")]),
        ),
        (
            "a masked secret with nothing stored",
            edited(&[("change-me-prod-token", "'***'")]),
        ),
    ];
    let gw = Gateway::start("check", &[]);
    let dir = TempDir::new("fanout-check");
    for (what, yaml) in mistakes {
        let file = dir.path().join("registry.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let o = fanout(&["check", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{what}: exit 1\n{}", text(&o));
        let (status, body) =
            gw.request("PUT", "/api/v1/registry", Some(("application/yaml", &yaml)));
        assert_eq!(status, 400, "{what}: the admin API refuses it too: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut api: Vec<String> = answer["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        api.sort();
        assert!(!api.is_empty(), "{what}: {body}");
        assert_eq!(
            check_problems(&o),
            api,
            "{what}: the same problems\n{}",
            text(&o)
        );
        let error = answer["error"].as_str().unwrap();
        assert!(
            text(&o).contains(&format!("FAILED: {error}")),
            "{what}: the same error line {error:?}\n{}",
            text(&o)
        );
        println!("{what}: {}", api.join(" | "));
    }
}

#[test]
fn check_reads_a_serve_config_and_the_registry_it_names() {
    let dir = TempDir::new("fanout-check-config");
    let config = dir.path().join("fanout.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  registry: {}\n  ingestListen: 127.0.0.1:9555\n",
            example().display()
        ),
    )
    .unwrap();
    let o = fanout(&["check", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches("SUCCESS").count(), 2, "{}", text(&o));
    std::fs::write(&config, "server:\n  ingestListn: 127.0.0.1:9555\n").unwrap();
    let o = fanout(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("unknown field `ingestListn`"),
        "{}",
        text(&o)
    );
}

#[test]
fn apply_dry_run_lists_the_changes_and_changes_nothing() {
    let gw = Gateway::start("dry-run", &["--registry", example().to_str().unwrap()]);
    let before = gw.request("GET", "/api/v1/registry", None).1;
    let version = |gw: &Gateway| {
        let v: serde_json::Value =
            serde_json::from_str(&gw.request("GET", "/api/v1/stats", None).1).unwrap();
        v["configVersion"].clone()
    };
    let v0 = version(&gw);
    let dir = TempDir::new("fanout-dry-run");
    let file = dir.path().join("next.yaml");
    // dep-reports renamed, the Hybrid export removed with its Deployment, a
    // cluster added; the secrets stay as they are (not a change).
    let mut yaml = edited(&[("name: reports", "name: reports-v2")]);
    let cut = yaml.find("  # The Hybrid Deployment's own export").unwrap();
    yaml.truncate(cut);
    yaml = yaml.replacen(
        "  - id: dep-onprem\n    workspaceId: ws-data\n    clusterId: cluster-eu\n    namespace: onprem-4kd8\n    type: HYBRID\n    name: on-prem\n",
        "",
        1,
    );
    yaml = yaml.replacen(
        "workspaces:",
        "  - {id: cluster-ap, organizationId: org-platform, cloudProvider: aws, cloudRegion: ap-south-1, ingestToken: ap-token}\n\nworkspaces:",
        1,
    );
    std::fs::write(&file, &yaml).unwrap();
    let token = gw.token.clone();
    let o = fanout(&[
        "apply",
        "--dry-run",
        "-f",
        file.to_str().unwrap(),
        "--admin",
        &gw.admin,
        "--admin-token",
        &token,
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    println!("{out}");
    for line in [
        "nothing was changed",
        "  create cluster/cluster-ap\n",
        "  change deployment/dep-reports\n",
        "  remove deployment/dep-onprem\n",
        "  remove metricsExport/onprem-vm\n",
        "would hold 3 clusters, 1 workspaces, 2 deployments, 2 metrics exports",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert_eq!(
        out.matches("  change ").count(),
        1,
        "secrets kept are no change:\n{out}"
    );
    assert_eq!(
        gw.request("GET", "/api/v1/registry", None).1,
        before,
        "nothing changed"
    );
    assert_eq!(version(&gw), v0);

    // The same document applied for real makes exactly those changes.
    let o = fanout(&[
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--admin",
        &gw.admin,
        "--admin-token",
        &token,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = fanout(&[
        "apply",
        "--dry-run",
        "-f",
        file.to_str().unwrap(),
        "--admin",
        &gw.admin,
        "--admin-token",
        &token,
    ]);
    assert!(text(&o).contains("  no change\n"), "{}", text(&o));

    // An invalid document: the admin API's 400 and problems, exit 1.
    std::fs::write(
        &file,
        edited(&[("clusterId: cluster-us", "clusterId: cluster-xx")]),
    )
    .unwrap();
    let o = fanout(&[
        "apply",
        "--dry-run",
        "-f",
        file.to_str().unwrap(),
        "--admin",
        &gw.admin,
        "--admin-token",
        &token,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("400") && text(&o).contains("cluster-xx"),
        "{}",
        text(&o)
    );
}
