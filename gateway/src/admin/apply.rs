//! `fanout apply -f FILE --admin URL`: sends a declarative registry to a
//! running gateway (`PUT /api/v1/registry`) and prints what it answered.
//!
//! The file is checked locally first (so a typo is reported without a round
//! trip), then sent as-is with a Content-Type chosen by its extension
//! (`.json`: JSON, anything else: YAML). `http://` and `https://` admin URLs
//! work; for HTTPS the public roots are trusted, plus `--ca-cert` (a private
//! CA or the gateway's self-signed certificate).
//!
//! `--dry-run` sends it with `?dryRun=true`: the gateway checks it exactly
//! as a write and answers what it would create, change and remove, changing
//! nothing.

use std::time::Duration;

use anyhow::{bail, Context};
use fanout_proto::api;

use crate::config::ApplyArgs;
use crate::registry::model::Document;

/// Runs `fanout apply`.
pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(apply(args))
}

async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let yaml = args
        .file
        .extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case("json"));
    if let Err(problems) = Document::parse(&text, yaml) {
        bail!(
            "{} is not a valid registry document:\n  {}",
            args.file.display(),
            problems.join("\n  ")
        );
    }
    let base = args.admin.trim_end_matches('/');
    if !base.starts_with("http://") && !base.starts_with("https://") {
        bail!("--admin must be an http:// or https:// URL (got {base:?})");
    }
    let url = if args.dry_run {
        format!("{base}/api/v1/registry?dryRun=true")
    } else {
        format!("{base}/api/v1/registry")
    };
    let client = api::admin_client_builder(
        args.ca_cert.as_deref(),
        concat!("fanout/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(anyhow::Error::msg)?
    .timeout(Duration::from_secs(30))
    .build()
    .context("cannot set up the HTTP client")?;
    let mut request = client.put(&url).header(
        "content-type",
        if yaml {
            "application/yaml"
        } else {
            "application/json"
        },
    );
    if let Some(token) = &args.admin_token {
        request = request.bearer_auth(token.expose());
    }
    let response = request
        .body(text)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {}", api::client_error(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: reading the answer: {}", api::client_error(&e)))?;
    if status.is_success() && args.dry_run {
        let p: api::Planned =
            serde_json::from_slice(&body).with_context(|| format!("{url}: unreadable answer"))?;
        print!("{}", dry_run_report(&args.file.display().to_string(), &p));
        return Ok(());
    }
    if status.is_success() {
        let a: api::Applied =
            serde_json::from_slice(&body).with_context(|| format!("{url}: unreadable answer"))?;
        println!(
            "applied {}: version {}, {}",
            args.file.display(),
            a.version,
            a.counts()
        );
        return Ok(());
    }
    let answer: api::ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| api::ErrorBody {
        error: String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
        problems: Vec::new(),
    });
    if answer.problems.is_empty() {
        bail!("{url}: {status}: {}", answer.error);
    }
    bail!(
        "{url}: {status}: {}\n  {}",
        answer.error,
        answer.problems.join("\n  ")
    )
}

/// What `fanout apply --dry-run` prints: one line per object, like
/// `kubectl diff`'s summary, then what the registry would hold.
fn dry_run_report(file: &str, p: &api::Planned) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "dry run of {file} against version {} (nothing was changed):\n",
        p.version
    );
    let lines = [
        ("create", &p.created),
        ("change", &p.changed),
        ("remove", &p.removed),
    ];
    for (verb, ids) in lines {
        for id in ids {
            let _ = writeln!(out, "  {verb} {id}");
        }
    }
    if lines.iter().all(|(_, ids)| ids.is_empty()) {
        out.push_str("  no change\n");
    }
    let _ = writeln!(out, "would hold {}", p.would_hold.counts());
    out
}
