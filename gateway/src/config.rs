//! Configuration of `fanout serve` and `fanout apply`.
//!
//! Every flag has an `FANOUT_*` environment variable; `--config FILE` gives the
//! same settings as YAML (the `server:` section). Precedence: flag or env var,
//! then the file, then the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Flags of `fanout serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TCP (HTTP/1.1, HTTP/2) and UDP (HTTP/3) address for remote-write ingest.
    #[arg(long, env = "FANOUT_INGEST_LISTEN")]
    pub ingest_listen: Option<SocketAddr>,
    /// TCP address of the admin API, `/metrics` and the stats stream.
    #[arg(long, env = "FANOUT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory for the embedded store, spill queues and the QUIC certificate.
    #[arg(long, env = "FANOUT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Declarative registry file applied at start.
    #[arg(long, env = "FANOUT_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// `sqlite` (default, in the data dir) or a `postgres://` URL.
    #[arg(long, env = "FANOUT_STORE")]
    pub store: Option<String>,
    /// Bearer token for the admin API. Without one the admin port binds to loopback only.
    #[arg(long, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// YAML file with any of these settings.
    #[arg(long, env = "FANOUT_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM certificate chain for TLS (h2 by ALPN) and QUIC.
    #[arg(long, env = "FANOUT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "FANOUT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// Flags of `fanout apply`.
#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    /// Declarative registry file (YAML or JSON).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Base URL of the gateway's admin API.
    #[arg(long, env = "FANOUT_ADMIN_URL", default_value = "http://127.0.0.1:9556")]
    pub admin: String,
    /// Admin bearer token.
    #[arg(long, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}
