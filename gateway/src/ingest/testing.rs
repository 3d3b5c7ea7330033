//! Helpers for tests and benchmarks of ingest: request bodies, a static
//! authenticator, and minimal remote-write clients over HTTP/1.1, h2c and
//! HTTP/3 (the last pinning the gateway's QUIC certificate).
//!
//! The clients are deliberately thin wrappers over hyper and h3 so a test
//! sees exactly what the server sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use fanout_proto::{v1, v2};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use rustls::pki_types::CertificateDer;

use super::auth::Authenticator;
use crate::registry::ClusterInfo;

/// `Content-Type` of remote-write 2.0.
pub const CONTENT_TYPE_V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// A response as a test sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text (lossy).
    pub body: String,
}

/// An authenticator over a fixed token → cluster map.
#[derive(Debug, Default)]
pub struct StaticAuth {
    clusters: HashMap<String, Arc<ClusterInfo>>,
}

impl StaticAuth {
    /// Adds cluster `id` with ingest token `token`.
    pub fn with(mut self, id: &str, token: &str) -> Self {
        self.clusters.insert(
            token.to_owned(),
            Arc::new(ClusterInfo {
                id: id.to_owned(),
                organization_id: format!("org-{id}"),
                cloud_provider: "aws".into(),
                cloud_region: "us-east-1".into(),
                limits: Default::default(),
                samples_metric: Default::default(),
            }),
        );
        self
    }
}

impl Authenticator for StaticAuth {
    fn authenticate(&self, cluster_id: Option<&str>, token: &str) -> Option<Arc<ClusterInfo>> {
        let c = self.clusters.get(token)?;
        match cluster_id {
            Some(id) if id != c.id => None,
            _ => Some(c.clone()),
        }
    }
}

/// An uncompressed 1.0 `WriteRequest` of `series` series with
/// `samples_per_series` samples each.
pub fn v1_request(series: usize, samples_per_series: usize) -> v1::WriteRequest {
    let timeseries = (0..series)
        .map(|i| v1::TimeSeries {
            labels: vec![
                label("__name__", "airflow_dagrun_duration_success"),
                label("dag_id", &format!("dag-{i}")),
                label("namespace", "astronomer-dep-1"),
            ],
            samples: (0..samples_per_series)
                .map(|j| v1::Sample {
                    value: j as f64,
                    timestamp: 1_700_000_000_000 + j as i64 * 1000,
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    v1::WriteRequest {
        timeseries,
        ..Default::default()
    }
}

fn label(name: &str, value: &str) -> v1::Label {
    v1::Label {
        name: name.into(),
        value: value.into(),
    }
}

/// A snappy-compressed 1.0 body.
pub fn v1_body(series: usize, samples_per_series: usize) -> Vec<u8> {
    fanout_proto::snappy::compress(&v1_request(series, samples_per_series).encode_to_vec())
}

/// A snappy-compressed 2.0 body with `series` series of `samples_per_series`
/// samples and one exemplar each.
pub fn v2_body(series: usize, samples_per_series: usize) -> Vec<u8> {
    let mut symbols = vec![String::new()];
    let mut sym = |s: &str| -> u32 {
        symbols.push(s.to_owned());
        (symbols.len() - 1) as u32
    };
    let name_k = sym("__name__");
    let name_v = sym("airflow_dagrun_duration_success");
    let dag_k = sym("dag_id");
    let trace_k = sym("trace_id");
    let trace_v = sym("abc");
    let mut timeseries = Vec::with_capacity(series);
    let mut dags = Vec::with_capacity(series);
    for i in 0..series {
        dags.push(sym(&format!("dag-{i}")));
    }
    for dag_v in dags {
        timeseries.push(v2::TimeSeries {
            labels_refs: vec![name_k, name_v, dag_k, dag_v],
            samples: (0..samples_per_series)
                .map(|j| v2::Sample {
                    value: j as f64,
                    timestamp: 1_700_000_000_000 + j as i64 * 1000,
                })
                .collect(),
            exemplars: vec![v2::Exemplar {
                labels_refs: vec![trace_k, trace_v],
                value: 1.0,
                timestamp: 1_700_000_000_000,
            }],
            ..Default::default()
        });
    }
    let req = v2::Request {
        symbols,
        timeseries,
    };
    fanout_proto::snappy::compress(&req.encode_to_vec())
}

fn request(
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> http::request::Builder {
    let mut b = Request::post(format!("http://{authority}{path}"))
        .header("content-encoding", "snappy")
        .header("content-length", body_len.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// An HTTP/1.1 client on one keep-alive connection.
pub struct H1Client {
    addr: SocketAddr,
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { addr, send })
    }

    /// POSTs `body` to `path` with `headers` (`Content-Encoding: snappy` is set).
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let req = request(&self.addr.to_string(), path, headers, body.len())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.send.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        collect(resp).await
    }

    /// GETs `path`.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        let req = Request::get(format!("http://{}{path}", self.addr))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.send.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        collect(resp).await
    }
}

/// An HTTP/2 client (h2c by prior knowledge) on one connection; cheap to clone.
#[derive(Clone)]
pub struct H2Client {
    addr: SocketAddr,
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Client {
    /// Connects to `addr` speaking HTTP/2 from the first byte.
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { addr, send })
    }

    /// POSTs `body` to `path` with `headers`.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let req = request(&self.addr.to_string(), path, headers, body.len())
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.send.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        collect(resp).await
    }
}

/// An HTTP/3 client on one QUIC connection, trusting only the pinned
/// certificate; cheap to clone.
#[derive(Clone)]
pub struct H3Client {
    addr: SocketAddr,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    _endpoint: quinn::Endpoint,
}

impl H3Client {
    /// Connects to `addr` (UDP), verifying the server against `pinned`.
    pub async fn connect(
        addr: SocketAddr,
        pinned: CertificateDer<'static>,
    ) -> Result<Self, String> {
        super::tls::install_crypto_provider();
        let cfg = super::tls::quic_client_config(&[pinned]).map_err(|e| e.to_string())?;
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::1]:0"
                .parse()
                .map_err(|e: std::net::AddrParseError| e.to_string())?
        } else {
            "127.0.0.1:0"
                .parse()
                .map_err(|e: std::net::AddrParseError| e.to_string())?
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(cfg);
        let conn = endpoint
            .connect(addr, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Self {
            addr,
            send,
            _endpoint: endpoint,
        })
    }

    /// Connects pinning the PEM certificate in `pem_path`.
    pub async fn connect_pem(addr: SocketAddr, pem_path: &std::path::Path) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject as _;
        let cert = CertificateDer::from_pem_file(pem_path).map_err(|e| e.to_string())?;
        Self::connect(addr, cert).await
    }

    /// POSTs `body` to `path` with `headers`.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let req = request(
            &format!("localhost:{}", self.addr.port()),
            path,
            headers,
            body.len(),
        )
        .uri(format!("https://localhost:{}{path}", self.addr.port()))
        .body(())
        .map_err(|e| e.to_string())?;
        self.h3_exchange(req, Bytes::from(body)).await
    }

    /// GETs `path`.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        let req = Request::get(format!("https://localhost:{}{path}", self.addr.port()))
            .body(())
            .map_err(|e| e.to_string())?;
        self.h3_exchange(req, Bytes::new()).await
    }

    async fn h3_exchange(&mut self, req: Request<()>, body: Bytes) -> Result<Reply, String> {
        let mut stream = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        if !body.is_empty() {
            // The server may answer (and stop reading) before the whole body
            // is sent; the response still arrives.
            let _ = stream.send_data(body).await;
        }
        let _ = stream.finish().await;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(Reply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: String::from_utf8_lossy(&out).into_owned(),
        })
    }
}
