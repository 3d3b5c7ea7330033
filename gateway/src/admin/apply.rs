//! `fanout apply -f FILE --admin URL`: sends a declarative registry to a
//! running gateway (`PUT /api/v1/registry`) and prints what it answered.
//!
//! The file is checked locally first (so a typo is reported without a round
//! trip), then sent as-is with a Content-Type chosen by its extension
//! (`.json`: JSON, anything else: YAML). Plain `http://` only: the admin port
//! is loopback or a private network, never the load balancer's port.

use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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
    if !base.starts_with("http://") {
        bail!("--admin must be an http:// URL (got {base:?})");
    }
    let url = format!("{base}/api/v1/registry");
    let mut request = Request::put(&url).header(
        "content-type",
        if yaml {
            "application/yaml"
        } else {
            "application/json"
        },
    );
    if let Some(token) = &args.admin_token {
        request = request.header("authorization", format!("Bearer {}", token.expose()));
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(text)))
        .context("cannot build the request")?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .with_context(|| format!("{url}: no answer within 30s"))?
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("cannot read the answer")?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() {
        println!(
            "applied {}: version {}, {} clusters, {} workspaces, {} deployments, {} metrics exports, {} targets",
            args.file.display(),
            value["version"],
            value["clusters"],
            value["workspaces"],
            value["deployments"],
            value["metricsExports"],
            value["targets"],
        );
        return Ok(());
    }
    let error = value["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    let problems: Vec<&str> = value["problems"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    if problems.is_empty() {
        bail!("{url}: {status}: {error}");
    }
    bail!("{url}: {status}: {error}\n  {}", problems.join("\n  "))
}
