//! `fanout check [REGISTRY...] [--config FILE]`: checks registry files and a
//! `fanout serve --config` file offline, like `promtool check config`.
//!
//! A registry file gets exactly the checks of `PUT /api/v1/registry` on a
//! gateway whose registry is empty ([`ops::plan`]: the document's parse,
//! each object's write-side rules, then the whole registry's validation),
//! and its problems are printed in the admin API's words. A config file gets
//! the checks `fanout serve` makes when it reads it, and the registry file
//! it names is checked too. Exit code 0 when every file passes, 1 otherwise.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use crate::admin::api::{holds, ApiError};
use crate::config::{read_file, CheckArgs};
use crate::registry::model::{Document, Registry};
use crate::registry::ops;
use crate::registry::store::UpdateError;
use crate::registry::Snapshot;

/// Runs `fanout check`.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    if args.registry.is_empty() && args.config.is_none() {
        bail!("nothing to check: give registry files and/or --config FILE");
    }
    let mut files = args.registry.clone();
    let (mut checked, mut failed) = (0, 0);
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    if let Some(path) = &args.config {
        checked += 1;
        match read_file(path) {
            Ok((_, server)) => {
                let _ = writeln!(out, "{}: SUCCESS: a valid serve config", path.display());
                files.extend(server.registry);
            }
            Err(e) => {
                failed += 1;
                let _ = writeln!(err, "{}: FAILED: {e}", path.display());
            }
        }
    }
    for path in &files {
        checked += 1;
        match check_registry(path) {
            Ok(summary) => {
                let _ = writeln!(out, "{}: SUCCESS: {summary}", path.display());
            }
            Err((error, problems)) => {
                failed += 1;
                let _ = writeln!(err, "{}: FAILED: {error}", path.display());
                for p in problems {
                    let _ = writeln!(err, "  {p}");
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {checked} files failed the check");
    }
    Ok(())
}

/// Checks one registry file: what it holds, or the admin API's error and
/// problems (its own [`ApiError`] for the same document).
pub fn check_registry(path: &Path) -> Result<String, (String, Vec<String>)> {
    let text = std::fs::read(path).map_err(|e| (format!("cannot read it: {e}"), Vec::new()))?;
    let yaml = path
        .extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case("json"));
    let refused = |e: UpdateError| {
        let e = ApiError::from(e);
        (e.error, e.problems)
    };
    let doc = Document::parse(&text, yaml).map_err(|p| refused(UpdateError::Invalid(p)))?;
    let (registry, _) = ops::plan(&Registry::default(), doc).map_err(refused)?;
    let snapshot = Snapshot::build(Arc::new(registry), 0, Arc::from(&b""[..]));
    Ok(holds(&snapshot).counts())
}
