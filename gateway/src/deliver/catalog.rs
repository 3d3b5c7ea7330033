//! The catalog filter (SPEC §4): which metric names are exported.
//!
//! Built once from two sources embedded in the binary:
//! - `catalog/statsd-mappings-gen2.yml` (a copy of the statsd_exporter
//!   mapping file the clusters run): every rule's `name` is an application
//!   metric, unless the rule drops (`action: drop`); a name with a capture
//!   (`astro_dist_${1}`) becomes a prefix rule (`astro_dist_`);
//! - `catalog/infrastructure.txt` (the pods' infrastructure series): one
//!   name per line, `*` matching any run of characters.
//!
//! Counters reach the gateway with `_total`, summaries and histograms with
//! `_sum`, `_count` and `_bucket`; an exact name also admits those four forms.
//!
//! `--catalog FILE` replaces both sources: a YAML file with `mappings:` is read
//! as a statsd mapping file, anything else as the line format above.
//! `--catalog all` exports every name.
//!
//! Matching never allocates: exact names are a `HashSet<Box<[u8]>>` (foldhash) looked up
//! by `&[u8]`, prefixes and `prefix*suffix` patterns are short lists.

use std::collections::HashSet;
use std::path::Path;

/// The embedded statsd mapping file.
pub const EMBEDDED_MAPPINGS: &str = include_str!("../../catalog/statsd-mappings-gen2.yml");
/// The embedded infrastructure names.
pub const EMBEDDED_INFRASTRUCTURE: &str = include_str!("../../catalog/infrastructure.txt");

const SUFFIXES: [&[u8]; 4] = [b"_total", b"_sum", b"_count", b"_bucket"];

/// Why a catalog cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file cannot be read.
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A mapping file that is not valid YAML of the expected shape.
    #[error("catalog {what}: {message}")]
    Invalid {
        /// Which catalog.
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// A `prefix*suffix` name pattern.
type Pattern = (Box<[u8]>, Box<[u8]>);

/// The set of exported metric names.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    all: bool,
    exact: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    prefixes: Vec<Box<[u8]>>,
    patterns: Vec<Pattern>,
}

#[derive(serde::Deserialize)]
struct MappingFile {
    mappings: Vec<Mapping>,
}

#[derive(serde::Deserialize)]
struct Mapping {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

impl Catalog {
    /// The built-in catalog: application and infrastructure metrics.
    pub fn builtin() -> Catalog {
        let mut c = Catalog::default();
        // The embedded files are tested; a failure here is a build defect.
        if let Err(e) = c.add_mappings(EMBEDDED_MAPPINGS, "embedded mappings") {
            tracing::error!(error = %e, "embedded catalog is invalid");
        }
        c.add_lines(EMBEDDED_INFRASTRUCTURE);
        c
    }

    /// A catalog that exports every name.
    pub fn all() -> Catalog {
        Catalog {
            all: true,
            ..Catalog::default()
        }
    }

    /// `builtin`, `all`, or a file (statsd mapping YAML or name lines).
    pub fn from_arg(arg: Option<&str>) -> Result<Catalog, CatalogError> {
        match arg {
            None | Some("builtin") => Ok(Catalog::builtin()),
            Some("all") => Ok(Catalog::all()),
            Some(path) => Catalog::from_file(Path::new(path)),
        }
    }

    /// Reads a replacement catalog file.
    pub fn from_file(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// Parses a catalog text: statsd mapping YAML (with `mappings:`) or name lines.
    pub fn parse(text: &str, what: &str) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::default();
        if text
            .lines()
            .any(|l| l.trim_start().starts_with("mappings:"))
        {
            c.add_mappings(text, what)?;
        } else {
            c.add_lines(text);
        }
        Ok(c)
    }

    fn add_mappings(&mut self, text: &str, what: &str) -> Result<(), CatalogError> {
        let file: MappingFile =
            serde_yaml_ng::from_str(text).map_err(|e| CatalogError::Invalid {
                what: what.to_owned(),
                message: e.to_string(),
            })?;
        for m in file.mappings {
            if m.action.as_deref() == Some("drop") {
                continue;
            }
            let Some(name) = m.name else { continue };
            match name.find('$') {
                Some(0) => {}
                Some(i) => self.prefixes.push(name.as_bytes()[..i].into()),
                None => {
                    self.exact.insert(name.as_bytes().into());
                }
            }
        }
        Ok(())
    }

    fn add_lines(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once('*') {
                Some((prefix, "")) => self.prefixes.push(prefix.as_bytes().into()),
                Some((prefix, suffix)) => self
                    .patterns
                    .push((prefix.as_bytes().into(), suffix.as_bytes().into())),
                None => {
                    self.exact.insert(line.as_bytes().into());
                }
            }
        }
    }

    /// Whether every name is exported.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Number of exact names, prefixes and patterns.
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len() + self.patterns.len()
    }

    /// Whether the catalog admits nothing (and is not `all`).
    pub fn is_empty(&self) -> bool {
        !self.all && self.len() == 0
    }

    /// Whether a series named `name` is exported.
    pub fn admits(&self, name: &[u8]) -> bool {
        if self.all {
            return true;
        }
        if self.exact.contains(name) {
            return true;
        }
        for suffix in SUFFIXES {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.exact.contains(base) {
                    return true;
                }
            }
        }
        if self.prefixes.iter().any(|p| name.starts_with(p)) {
            return true;
        }
        self.patterns.iter().any(|(p, s)| {
            name.len() >= p.len() + s.len() && name.starts_with(p) && name.ends_with(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_catalog_builtin_admits_application_and_infrastructure_names() {
        let c = Catalog::builtin();
        assert!(c.len() > 60, "{}", c.len());
        for name in [
            "airflow_ti_failures_total",
            "airflow_ti_failures",
            "airflow_task_duration",
            "airflow_task_duration_sum",
            "airflow_task_duration_count",
            "airflow_scheduler_heartbeat_total",
            "airflow_pool_open_slots",
            "astro_event_scheduler_sla_task_lag_milliseconds_bucket",
            "astro_event_scheduler_anything",
            "astro_dist_foo_bar",
            "astro_bundle_backend_num_files",
            "container_cpu_usage_seconds_total",
            "kube_pod_status_phase",
            "kube_pod_status_container_ready_time",
            "kube_pod_labels",
        ] {
            assert!(c.admits(name.as_bytes()), "{name}");
        }
        for name in [
            "airflow_sla_missed",
            "dropped",
            "go_goroutines",
            "airflow_ti_failures_bogus",
            "kube_pod_status_",
            "",
            "process_cpu_seconds_total",
        ] {
            assert!(!c.admits(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn deliver_catalog_file_formats_and_all() {
        let c = Catalog::parse("# mine\nfoo\nbar_*\n*_x_*_y\n", "t").unwrap();
        assert!(c.admits(b"foo") && c.admits(b"foo_total") && c.admits(b"bar_baz"));
        assert!(!c.admits(b"airflow_ti_failures"));
        let c = Catalog::parse("mappings:\n  - match: a.b\n    name: \"x_y\"\n", "t").unwrap();
        assert!(c.admits(b"x_y_count") && !c.admits(b"x"));
        assert!(Catalog::parse("mappings: [", "t").is_err());
        assert!(Catalog::all().admits(b"anything"));
        assert!(Catalog::from_arg(Some("/nonexistent/catalog")).is_err());
    }
}
