//! Ingest: the remote-write listeners (SPEC §1, §2).
//!
//! # Layout
//! - [`request`]: everything a write goes through, without sockets: routing,
//!   drain state, authentication, content negotiation, limits, admission by
//!   bytes, decompression, scanning and the hand-off to delivery, producing
//!   an `http::Response<Bytes>`. Tested directly.
//! - [`tcp`] and [`quic`]: thin adapters. One TCP port serves HTTP/1.1 and
//!   HTTP/2 (h2c by prior knowledge; h2 over TLS by ALPN when a certificate is
//!   configured), and the same port number over UDP serves HTTP/3.
//! - [`crate::budget`] (not ingest's own: delivery shares it): the
//!   [`MemoryBudget`] (bytes, in KiB permits) and the per-connection read
//!   budget; [`pool`]: pooled body buffers; [`auth`]:
//!   credentials and the [`Authenticator`] trait; [`tls`]: certificates;
//!   [`limits`]: per-cluster rate limits (429 with `Retry-After`).
//!
//! # Admission and memory
//! A write holds nothing shared until its whole compressed body has arrived:
//! the body is read into a pooled buffer charged to the connection's own read
//! budget (at most the compressed limit), so a client trickling its body in
//! holds only its own connection. Then the snappy header's length is checked
//! against the decompressed limit (a 4 GiB claim is refused before anything
//! is allocated), and that many bytes are taken from the shared budget,
//! waiting at most `admission_timeout` before 429. The permit travels with
//! the series to delivery.
//!
//! # Drain
//! [`IngestServer::begin_drain`] makes `/readyz` and new writes answer 503
//! with `Retry-After` while writes already past their headers finish;
//! [`IngestServer::shutdown`] then waits for them (bounded), closes the
//! listeners and asks connections to finish.

pub mod args;
pub mod auth;
pub mod limits;
pub mod pool;
pub mod quic;
pub mod refusals;
pub mod request;
pub mod tcp;
pub mod testing;
pub mod tls;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

pub use crate::budget::{MemoryBudget, MemoryPermit};
pub use args::IngestArgs;
pub use auth::Authenticator;
pub use request::{DrainState, Ingest, Rejection};

use crate::handoff::Delivery;

/// Limits and timeouts of ingest.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Shared in-flight memory budget in bytes.
    pub memory_budget: u64,
    /// Largest compressed body.
    pub max_compressed_body: usize,
    /// Bytes of request bodies still arriving, over all connections
    /// (`crate::budget::ReadBudget`; at least `max_compressed_body`).
    pub body_read_budget: u64,
    /// Largest decompressed body.
    pub max_decompressed_body: usize,
    /// Per-request scanner limits (series, labels, name and value lengths).
    pub scan: fanout_proto::Limits,
    /// Time allowed for request headers (and TLS/QUIC handshakes).
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request body.
    pub body_read_timeout: Duration,
    /// How long a write waits for memory before 429.
    pub admission_timeout: Duration,
    /// Most open connections over TCP and QUIC together.
    pub max_connections: usize,
    /// `Retry-After` sent with 429 and 503.
    pub retry_after: Duration,
    /// The rate of a cluster without `limits.samplesPerSecond` of its own
    /// ([`limits`]); `None`: unlimited.
    pub cluster_samples_per_second: Option<u64>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            memory_budget: 512 << 20,
            max_compressed_body: 32 << 20,
            body_read_budget: 64 << 20,
            max_decompressed_body: 256 << 20,
            scan: fanout_proto::Limits::default(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            admission_timeout: Duration::from_secs(1),
            max_connections: 10_000,
            retry_after: Duration::from_secs(2),
            cluster_samples_per_second: None,
        }
    }
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// TCP and UDP address (SPEC default `0.0.0.0:9555`); port 0 picks one
    /// free port for both.
    pub listen: SocketAddr,
    /// Data dir, for the generated QUIC certificate.
    pub data_dir: PathBuf,
    /// PEM certificate chain (TLS over TCP and QUIC).
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Limits and timeouts.
    pub config: IngestConfig,
}

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Binding a socket failed.
    #[error("ingest: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate problem.
    #[error("ingest: {0}")]
    Tls(#[from] tls::TlsError),
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("ingest: --tls-cert and --tls-key must be given together")]
    TlsPair,
}

/// Running ingest listeners.
pub struct IngestServer {
    local_addr: SocketAddr,
    quic_cert: CertificateDer<'static>,
    quic_cert_path: Option<PathBuf>,
    drain: Arc<DrainState>,
    stop: watch::Sender<bool>,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl IngestServer {
    /// The bound address (TCP; UDP has the same port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The leaf certificate HTTP/3 clients should pin.
    pub fn quic_certificate(&self) -> &CertificateDer<'static> {
        &self.quic_cert
    }

    /// Where the generated QUIC certificate was written, if generated.
    pub fn quic_cert_path(&self) -> Option<&Path> {
        self.quic_cert_path.as_deref()
    }

    /// Drain state and the count of in-flight writes.
    pub fn drain_state(&self) -> &Arc<DrainState> {
        &self.drain
    }

    /// Starts draining: `/readyz` and new writes answer 503 with `Retry-After`.
    pub fn begin_drain(&self) {
        self.drain.begin();
    }

    /// Drains, waits up to `grace` for in-flight writes, then stops the
    /// listeners and closes connections.
    pub async fn shutdown(self, grace: Duration) {
        self.drain_and_stop(Duration::ZERO, grace, std::future::pending())
            .await
    }

    /// Drains, then stops: new writes (and `/readyz`) are answered 503 with
    /// `Retry-After` for at least `delay` (so a load balancer's health check
    /// sees the drain and sends new connections elsewhere) and until the
    /// writes in flight are done, at most `grace`; then the listeners close.
    /// `hurry` (a second SIGTERM) cuts both waits short.
    pub async fn drain_and_stop(
        self,
        delay: Duration,
        grace: Duration,
        hurry: impl std::future::Future<Output = ()>,
    ) {
        self.drain.begin();
        let idle = async {
            let in_flight = tokio::time::timeout(grace, self.drain.wait_idle());
            let (done, ()) = tokio::join!(in_flight, tokio::time::sleep(delay.min(grace)));
            done.is_ok()
        };
        let idle = tokio::select! {
            idle = idle => idle,
            _ = hurry => false,
        };
        if !idle {
            tracing::warn!(
                in_flight = self.drain.in_flight(),
                "ingest: writes still in flight when the listeners close"
            );
        }
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Binds TCP and UDP on the same port (retrying a few times when port 0 gave
/// a TCP port whose UDP twin is taken).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, std::net::UdpSocket), IngestError> {
    let err = |source| IngestError::Bind { addr, source };
    let mut last = None;
    for _ in 0..8 {
        let tcp = TcpListener::bind(addr).await.map_err(err)?;
        let bound = tcp.local_addr().map_err(err)?;
        match std::net::UdpSocket::bind(bound) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(
        last.unwrap_or_else(|| std::io::Error::other("no free port"))
    ))
}

/// Starts the ingest listeners on `opts.listen` (TCP and UDP).
pub async fn start<D: Delivery>(
    opts: IngestOptions,
    auth: Arc<dyn Authenticator>,
    delivery: Arc<D>,
    budget: MemoryBudget,
) -> Result<IngestServer, IngestError> {
    tls::install_crypto_provider();
    let (pair, quic_cert_path) = match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => (tls::load_pem(cert, key)?, None),
        (None, None) => {
            let (pair, path) = tls::self_signed(&opts.data_dir)?;
            (pair, Some(path))
        }
        _ => return Err(IngestError::TlsPair),
    };
    let tcp_tls = if opts.tls_cert.is_some() {
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            tls::tcp_server_config(&pair)?,
        )))
    } else {
        None
    };
    let config = opts.config.clone();
    let quic_config = tls::quic_server_config(
        &pair,
        config.header_read_timeout.max(Duration::from_secs(30)),
    )?;
    let (listener, udp) = bind(opts.listen).await?;
    let local_addr = listener.local_addr().map_err(|source| IngestError::Bind {
        addr: opts.listen,
        source,
    })?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quic_config),
        udp,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| IngestError::Bind {
        addr: local_addr,
        source,
    })?;
    let conns = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let core = Arc::new(Ingest::new(config, auth, delivery, budget));
    let drain = core.drain_state().clone();
    let (stop, stop_rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(tcp::serve(
            listener,
            core.clone(),
            tcp_tls,
            conns.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(quic::serve(endpoint.clone(), core, conns, stop_rx)),
    ];
    tracing::info!(addr = %local_addr, tls = opts.tls_cert.is_some(), "ingest listening (HTTP/1.1, HTTP/2 over TCP; HTTP/3 over UDP)");
    Ok(IngestServer {
        local_addr,
        quic_cert: pair.chain[0].clone(),
        quic_cert_path,
        drain,
        stop,
        endpoint,
        tasks,
    })
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // `wait_for`'s guard is not Send; drop it before returning.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}
