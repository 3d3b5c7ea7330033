//! Configuration of `fanout serve` and `fanout apply`.
//!
//! Every flag has an `FANOUT_*` environment variable; `--config FILE` gives the
//! same settings as YAML (the `server:` section). Precedence: flag or env var,
//! then the file, then the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::registry::Secret;

/// Default ingest address (TCP and UDP).
pub const DEFAULT_INGEST_LISTEN: &str = "0.0.0.0:9555";
/// Default admin address: loopback, never the load balancer's port.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9556";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./fanout-data";

/// Flags of `fanout serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TCP (HTTP/1.1, HTTP/2) and UDP (HTTP/3) address for remote-write ingest
    /// [default: 0.0.0.0:9555].
    #[arg(long, help_heading = "Listeners", env = "FANOUT_INGEST_LISTEN")]
    pub ingest_listen: Option<SocketAddr>,
    /// TCP address of the admin API, `/metrics` and the stats stream
    /// [default: 127.0.0.1:9556].
    #[arg(long, help_heading = "Listeners", env = "FANOUT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory for the embedded store, spill queues and the QUIC
    /// certificate; one gateway per directory [default: ./fanout-data].
    #[arg(long, help_heading = "Store", env = "FANOUT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Declarative registry file applied at start.
    #[arg(long, help_heading = "Store", env = "FANOUT_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// `sqlite` (in the data dir) or a `postgres://` URL [default: sqlite].
    #[arg(long, help_heading = "Store", env = "FANOUT_STORE")]
    pub store: Option<String>,
    /// Bearer token for the admin API. Without one the admin port binds to loopback only.
    #[arg(
        long,
        help_heading = "Listeners",
        env = "FANOUT_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,
    /// YAML file with the listeners, store, admin token and TLS settings (`server:` section, camelCase keys;
    /// an unknown key is an error).
    #[arg(long, help_heading = "Store", env = "FANOUT_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM certificate chain for TLS (h2 by ALPN) and QUIC [default: none:
    /// plaintext TCP, QUIC with a self-signed certificate in the data dir].
    #[arg(long, help_heading = "TLS", env = "FANOUT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, help_heading = "TLS", env = "FANOUT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate chain for the admin API: it then serves HTTPS only
    /// (the console and `fanout apply` take `https://` URLs and `--ca-cert`)
    /// [default: none: plain HTTP].
    #[arg(
        long,
        help_heading = "TLS",
        env = "FANOUT_ADMIN_TLS_CERT",
        requires = "admin_tls_key"
    )]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key for `--admin-tls-cert`.
    #[arg(
        long,
        help_heading = "TLS",
        env = "FANOUT_ADMIN_TLS_KEY",
        requires = "admin_tls_cert"
    )]
    pub admin_tls_key: Option<PathBuf>,
    /// On SIGTERM, how long ingest keeps answering new writes (and
    /// `/readyz`) 503 with `Retry-After` before its listeners close, so load
    /// balancers see the drain first [default: 5s].
    #[arg(long, help_heading = "Listeners", env = "FANOUT_DRAIN_DELAY")]
    pub drain_delay: Option<crate::units::HumanDuration>,
    /// With a shared store (PostgreSQL), how often this gateway writes its
    /// export status for the fleet's status API [default: 5s].
    #[arg(long, help_heading = "Store", env = "FANOUT_STATUS_REPORT_INTERVAL")]
    pub status_report_interval: Option<crate::units::HumanDuration>,
    /// Ingest limits, timeouts and the memory budget.
    #[command(flatten)]
    pub ingest: crate::ingest::IngestArgs,
    /// Delivery: catalog, per-target queue bound, shutdown grace.
    #[command(flatten)]
    pub delivery: crate::deliver::DeliveryArgs,
}

/// Flags of `fanout apply`.
#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    /// Declarative registry file (YAML or JSON).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Base URL of the gateway's admin API.
    #[arg(
        long,
        env = "FANOUT_ADMIN_URL",
        default_value = "http://127.0.0.1:9556"
    )]
    pub admin: String,
    /// Admin bearer token.
    #[arg(long, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// PEM certificate(s) to trust for an `https://` admin URL, besides the
    /// usual public roots (a private CA or a self-signed certificate).
    #[arg(long, env = "FANOUT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Print what the gateway would create, change and remove, checked as a
    /// write is, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Flags of `fanout check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Declarative registry files (YAML, or JSON by the `.json` extension).
    pub registry: Vec<PathBuf>,
    /// A `fanout serve --config` file (and the registry file it names).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Flags of `fanout spill replay`.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The data dir of a gateway that is not coming back (it must not be
    /// in use: a running gateway holds its lock).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The registry the gateway used: `sqlite` (the one in that data dir) or
    /// the fleet's `postgres://` URL [default: sqlite].
    #[arg(long, env = "FANOUT_STORE")]
    pub store: Option<String>,
    /// How long to keep delivering before giving up; what is left stays on
    /// disk for a later replay [default: 10m].
    #[arg(long)]
    pub timeout: Option<crate::units::HumanDuration>,
}

/// A problem with the configuration file or flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The `--config` file is not valid YAML of the expected shape.
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, and where.
        reason: String,
    },
}

/// The `server:` section of a `--config` file (camelCase keys, all optional).
/// An unknown key is an error naming it and the accepted ones (a misspelled
/// key silently ignored would leave a setting at its default).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSection {
    /// Same as `--ingest-listen`.
    pub ingest_listen: Option<SocketAddr>,
    /// Same as `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Same as `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Same as `--registry`.
    pub registry: Option<PathBuf>,
    /// Same as `--store`.
    pub store: Option<String>,
    /// Same as `--admin-token`.
    pub admin_token: Option<Secret>,
    /// Same as `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// Same as `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// Same as `--admin-tls-cert`.
    pub admin_tls_cert: Option<PathBuf>,
    /// Same as `--admin-tls-key`.
    pub admin_tls_key: Option<PathBuf>,
}

/// The settings of `fanout serve` after merging flags, env, file and defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Ingest address (TCP and UDP).
    pub ingest_listen: SocketAddr,
    /// Admin API address.
    pub admin_listen: SocketAddr,
    /// Data directory (SQLite store, spill, QUIC certificate).
    pub data_dir: PathBuf,
    /// Declarative registry applied at start.
    pub registry: Option<PathBuf>,
    /// `sqlite` or a `postgres://` URL; `None` is SQLite.
    pub store: Option<String>,
    /// Admin bearer token (masked in `Debug`).
    pub admin_token: Option<Secret>,
    /// TLS certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// TLS key.
    pub tls_key: Option<PathBuf>,
    /// The admin API's certificate chain (HTTPS when set).
    pub admin_tls_cert: Option<PathBuf>,
    /// The admin API's key.
    pub admin_tls_key: Option<PathBuf>,
    /// The whole `--config` file (`Null` without one), for sections other parts own.
    pub file: serde_yaml_ng::Value,
    /// The flags as given, for parts that read their own.
    pub args: ServeArgs,
}

impl ServeConfig {
    /// Merges flags and env (first), the `--config` file, then defaults.
    pub fn load(args: ServeArgs) -> Result<ServeConfig, ConfigError> {
        let (file, server) = match &args.config {
            Some(path) => read_file(path)?,
            None => (serde_yaml_ng::Value::Null, ServerSection::default()),
        };
        let default_addr = |s: &str| s.parse::<SocketAddr>().expect("valid default address");
        Ok(ServeConfig {
            ingest_listen: args
                .ingest_listen
                .or(server.ingest_listen)
                .unwrap_or_else(|| default_addr(DEFAULT_INGEST_LISTEN)),
            admin_listen: args
                .admin_listen
                .or(server.admin_listen)
                .unwrap_or_else(|| default_addr(DEFAULT_ADMIN_LISTEN)),
            data_dir: args
                .data_dir
                .clone()
                .or(server.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            registry: args.registry.clone().or(server.registry),
            store: args.store.clone().or(server.store),
            admin_token: args
                .admin_token
                .clone()
                .or(server.admin_token)
                // Surrounding whitespace (a token read from a file) is not
                // part of it; a token of only whitespace is no token, so the
                // admin API stays on loopback (`admin::bind`).
                .map(|t| Secret::new(t.expose().trim()))
                .filter(|t| !t.is_empty()),
            tls_cert: args.tls_cert.clone().or(server.tls_cert),
            tls_key: args.tls_key.clone().or(server.tls_key),
            admin_tls_cert: args.admin_tls_cert.clone().or(server.admin_tls_cert),
            admin_tls_key: args.admin_tls_key.clone().or(server.admin_tls_key),
            file,
            args,
        })
    }
}

/// Reads and checks a `--config` file (`fanout serve`, `fanout check --config`).
pub fn read_file(path: &Path) -> Result<(serde_yaml_ng::Value, ServerSection), ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let parse = |reason: String| ConfigError::Parse {
        path: shown.clone(),
        reason,
    };
    let file: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| parse(e.to_string()))?;
    if let serde_yaml_ng::Value::Mapping(top) = &file {
        for key in top.keys() {
            if key.as_str() != Some("server") {
                let key = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                return Err(parse(format!(
                    "unknown top-level key `{key}`: the settings go under `server:` \
                     (camelCase, e.g. `server: {{ingestListen: 0.0.0.0:9555}}`)"
                )));
            }
        }
    }
    let server = match file.get("server") {
        None | Some(serde_yaml_ng::Value::Null) => ServerSection::default(),
        Some(v) => {
            serde_yaml_ng::from_value(v.clone()).map_err(|e| parse(format!("server: {e}")))?
        }
    };
    // The token now lives in a `Secret`; keep no clear copy in the raw file.
    let mut file = file;
    if let Some(serde_yaml_ng::Value::Mapping(section)) = file.get_mut("server") {
        section.remove("adminToken");
    }
    Ok((file, server))
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_serve_help_groups_every_flag_under_a_heading() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        let headings: Vec<&str> = help
            .lines()
            .filter(|l| l.ends_with(':') && !l.starts_with(' '))
            .collect();
        assert_eq!(
            headings,
            [
                "Options:",
                "Listeners:",
                "Store:",
                "TLS:",
                "Limits:",
                "Delivery:",
                "Durability:"
            ],
            "{help}"
        );
        // Under Options only --help is left.
        let options = help.split("Listeners:").next().unwrap_or_default();
        let flags: Vec<&str> = options
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with('-'))
            .collect();
        assert_eq!(flags, ["-h, --help"], "{help}");
        let delivery = help.split("Delivery:").nth(1).unwrap_or_default();
        assert!(delivery.contains("--catalog"), "{help}");
    }

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[tokio::test]
    async fn admin_token_is_trimmed_and_whitespace_is_no_token() {
        let c = ServeConfig::load(Cli::parse_from(["t", "--admin-token", " tok\n"]).serve).unwrap();
        assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some("tok"));
        let c = ServeConfig::load(Cli::parse_from(["t", "--admin-token", " \t "]).serve).unwrap();
        assert!(c.admin_token.is_none());
        // So the bind guard refuses every interface without a real token.
        let err = crate::admin::bind("0.0.0.0:0".parse().unwrap(), c.admin_token.as_ref()).await;
        assert!(err.is_err());
    }

    #[test]
    fn config_file_with_an_unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fanout.yaml");
        let load = |yaml: &str| {
            std::fs::write(&path, yaml).unwrap();
            let cli = Cli::parse_from(["t", "--config", path.to_str().unwrap()]);
            ServeConfig::load(cli.serve).unwrap_err().to_string()
        };
        let e = load("server:\n  ingest-listen: 0.0.0.0:1\n");
        assert!(e.contains("unknown field `ingest-listen`"), "{e}");
        assert!(e.contains("ingestListen"), "the accepted spellings: {e}");
        let e = load("server:\n  data_dir: /x\n");
        assert!(
            e.contains("unknown field `data_dir`") && e.contains("dataDir"),
            "{e}"
        );
        let e = load("ingestListen: 0.0.0.0:1\n");
        assert!(e.contains("unknown top-level key `ingestListen`"), "{e}");
        assert!(e.contains("server:"), "{e}");
    }

    #[test]
    fn defaults_file_and_flags_in_that_order_of_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fanout.yaml");
        std::fs::write(
            &path,
            "server:\n  adminListen: 127.0.0.1:7000\n  dataDir: /tmp/x\n  adminToken: from-file\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "t",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            "/tmp/flag",
        ]);
        let c = ServeConfig::load(cli.serve).unwrap();
        assert_eq!(c.ingest_listen.to_string(), DEFAULT_INGEST_LISTEN);
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/flag"));
        assert_eq!(
            c.admin_token.as_ref().map(Secret::expose),
            Some("from-file")
        );
        assert!(!format!("{c:?}").contains("from-file"));
        assert!(c.file.get("server").is_some());
    }
}
