//! Remote-write client connections over HTTP/1.1, HTTP/2 (h2c by prior
//! knowledge, or h2 over TLS) and HTTP/3 (QUIC), one request at a time per
//! stream.
//!
//! A [`Conn`] is one transport connection; for HTTP/2 and HTTP/3 it can be
//! cloned to run several requests on the same connection at once. Any error
//! leaves the connection unusable: the caller drops it and connects again.
//! TLS (https URLs and HTTP/3) trusts exactly the certificates of
//! `--ca-cert` (the gateway's self-signed certificate, pinned), with the
//! `ring` provider.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

/// Wire protocol of the generator's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Transport {
    /// HTTP/1.1 (TLS when the URL is https).
    Http1,
    /// HTTP/2: h2c by prior knowledge, or h2 by ALPN when the URL is https.
    Http2,
    /// HTTP/3 over QUIC (UDP); needs `--ca-cert`.
    Http3,
}

/// Why a connection or request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The target URL cannot be used.
    #[error("target URL: {0}")]
    Url(String),
    /// TLS configuration (certificate file, names).
    #[error("tls: {0}")]
    Tls(String),
    /// Connecting failed.
    #[error("connect {addr}: {msg}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What went wrong.
        msg: String,
    },
    /// The request failed after the connection was up.
    #[error("request: {0}")]
    Request(String),
    /// The connection was closed before the request went out (the server
    /// closes it after an answer given before the body was read, e.g. a
    /// 401): nothing was sent, so nothing failed; send it on a new one.
    #[error("connection closed before the request was sent: {0}")]
    Closed(String),
}

/// Where and how to connect, resolved once.
#[derive(Clone)]
pub struct Target {
    /// The full URL requests go to.
    pub uri: Uri,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Host name for TLS SNI and the Host header.
    pub host: String,
    /// Whether the URL is https.
    pub tls: bool,
    /// The transport.
    pub transport: Transport,
    roots: Option<Arc<rustls::RootCertStore>>,
}

impl Target {
    /// Parses `url`, resolves its host and loads `ca_cert` (PEM) when given.
    pub async fn resolve(
        url: &str,
        transport: Transport,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Target, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(ClientError::Url(format!(
                    "{url}: scheme must be http or https"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Url(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| ClientError::Url(format!("{url}: resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Url(format!("{url}: {host} has no address")))?;
        if transport == Transport::Http3 && ca_cert.is_none() {
            return Err(ClientError::Tls(
                "HTTP/3 needs --ca-cert FILE (the server's certificate, PEM)".into(),
            ));
        }
        if tls && ca_cert.is_none() {
            return Err(ClientError::Tls(
                "an https URL needs --ca-cert FILE (the server's certificate or CA, PEM)".into(),
            ));
        }
        let roots = match ca_cert {
            Some(path) => Some(Arc::new(load_roots(path)?)),
            None => None,
        };
        Ok(Target {
            uri,
            addr,
            host,
            tls: tls || transport == Transport::Http3,
            transport,
            roots,
        })
    }

    fn tls_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, ClientError> {
        let roots = self
            .roots
            .clone()
            .ok_or_else(|| ClientError::Tls("no --ca-cert".into()))?;
        let versions: &[&rustls::SupportedProtocolVersion] = if self.transport == Transport::Http3 {
            &[&rustls::version::TLS13]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }
}

fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, ClientError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut store = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
        store
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    }
    if store.is_empty() {
        return Err(ClientError::Tls(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    Ok(store)
}

/// One open connection.
#[derive(Clone)]
pub enum Conn {
    /// HTTP/1.1: one request at a time (clones share the connection and wait).
    Http1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>),
    /// HTTP/2.
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    /// HTTP/3; the endpoint is kept alive with the connection.
    Http3(
        h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        quinn::Endpoint,
    ),
}

/// A response: status, headers and the start of the body.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body (read whole; remote-write responses are short).
    pub body: Bytes,
}

impl Conn {
    /// Opens a connection to `target`.
    pub async fn connect(target: &Target) -> Result<Conn, ClientError> {
        let connect_err = |msg: String| ClientError::Connect {
            addr: target.addr.to_string(),
            msg,
        };
        if target.transport == Transport::Http3 {
            let tls = target.tls_config(&[b"h3"])?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let bind: SocketAddr = if target.addr.is_ipv6() {
                SocketAddr::from(([0u16; 8], 0))
            } else {
                SocketAddr::from(([0u8; 4], 0))
            };
            let mut endpoint =
                quinn::Endpoint::client(bind).map_err(|e| connect_err(e.to_string()))?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            let conn = endpoint
                .connect(target.addr, &target.host)
                .map_err(|e| connect_err(e.to_string()))?
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            return Ok(Conn::Http3(send, endpoint));
        }
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let alpn: &[&[u8]] = match target.transport {
                Transport::Http2 => &[b"h2"],
                _ => &[b"http/1.1"],
            };
            let cfg = target.tls_config(alpn)?;
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| connect_err(format!("tls: {e}")))?;
            Self::handshake(TokioIo::new(stream), target.transport)
                .await
                .map_err(connect_err)
        } else {
            Self::handshake(TokioIo::new(tcp), target.transport)
                .await
                .map_err(connect_err)
        }
    }

    async fn handshake<I>(io: I, transport: Transport) -> Result<Conn, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        match transport {
            Transport::Http2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok(Conn::Http2(send))
            }
            _ => {
                let (send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok(Conn::Http1(Arc::new(tokio::sync::Mutex::new(send))))
            }
        }
    }

    /// POSTs `body` to the target's URL with `headers`.
    pub async fn post(
        &mut self,
        target: &Target,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let err = |e: &dyn std::fmt::Display| ClientError::Request(e.to_string());
        let closed = |e: &hyper::Error| ClientError::Closed(e.to_string());
        // Canceled: hyper never wrote it (the connection closed first).
        let unsent = |e: &hyper::Error| match e.is_canceled() {
            true => closed(e),
            false => err(e),
        };
        match self {
            Conn::Http1(send) => {
                let req = build(target, headers, Full::new(body), true)?;
                let mut send = send.lock().await;
                send.ready().await.map_err(|e| closed(&e))?;
                let resp = send.send_request(req).await.map_err(|e| unsent(&e))?;
                collect(resp).await
            }
            Conn::Http2(send) => {
                let req = build(target, headers, Full::new(body), false)?;
                send.ready().await.map_err(|e| closed(&e))?;
                let resp = send.send_request(req).await.map_err(|e| unsent(&e))?;
                collect(resp).await
            }
            Conn::Http3(send, _) => {
                let req = build(target, headers, (), false)?;
                let mut stream = send.send_request(req).await.map_err(|e| err(&e))?;
                // The server may answer before reading the whole body (an
                // early 4xx); the response still arrives.
                let _ = stream.send_data(body).await;
                let _ = stream.finish().await;
                let resp = stream.recv_response().await.map_err(|e| err(&e))?;
                let mut out = Vec::new();
                while let Some(mut chunk) = stream.recv_data().await.map_err(|e| err(&e))? {
                    while chunk.has_remaining() {
                        let part = chunk.chunk();
                        if out.len() < 64 * 1024 {
                            out.extend_from_slice(part);
                        }
                        let n = part.len();
                        chunk.advance(n);
                    }
                }
                Ok(Reply {
                    status: resp.status(),
                    headers: resp.headers().clone(),
                    body: Bytes::from(out),
                })
            }
        }
    }
}

fn build<B>(
    target: &Target,
    headers: &HeaderMap,
    body: B,
    host_header: bool,
) -> Result<Request<B>, ClientError> {
    let mut req = Request::post(target.uri.clone());
    if host_header {
        let host = match target.uri.authority() {
            Some(a) => a.as_str().to_owned(),
            None => target.host.clone(),
        };
        req = req.header(http::header::HOST, host);
    }
    if let Some(h) = req.headers_mut() {
        h.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    req.body(body)
        .map_err(|e| ClientError::Request(e.to_string()))
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, ClientError> {
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, 1 << 20)
        .collect()
        .await
        .map_err(|e| ClientError::Request(format!("reading response body: {e}")))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
