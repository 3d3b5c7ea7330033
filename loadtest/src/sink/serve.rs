//! The listeners: HTTP/1.1 and h2c on a TCP port (hyper's auto builder,
//! prior knowledge for h2c), and HTTP/3 on the same port over UDP with a
//! self-signed certificate. Each reads a request's body (bounded by
//! [`super::SinkConfig::max_body`]) and hands it to
//! [`super::receive::process`]; an injected reset drops the connection
//! (HTTP/1.1, h2) or cancels the stream (HTTP/3).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::receive::{process, InjectedReset, Reply};
use super::{SinkError, State};

/// Accepts TCP connections on `listener` and serves each until it closes.
pub(super) fn serve_tcp(
    listener: tokio::net::TcpListener,
    st: Arc<State>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            st.connections.fetch_add(1, Ordering::Relaxed);
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let st = st.clone();
                    async move { handle(st, req).await }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Reply, InjectedReset> {
    let (parts, body) = req.into_parts();
    if parts.version == http::Version::HTTP_2 {
        st.h2_requests.fetch_add(1, Ordering::Relaxed);
    }
    let body = match http_body_util::Limited::new(body, st.config.max_body)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(e.to_string()),
    };
    process(&st, &parts.method, parts.uri.path(), &parts.headers, body).await
}

pub(super) fn start_h3(
    st: Arc<State>,
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, tokio::task::JoinHandle<()>, String), SinkError> {
    let err = |what: String| SinkError::Http3 {
        name: st.config.name.clone(),
        what,
    };
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| err(e.to_string()))?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| err(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(vec![generated.cert.der().clone()], key)
    .map_err(|e| err(e.to_string()))?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| err(e.to_string()))?;
    let endpoint =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), addr)
            .map_err(|e| err(format!("bind UDP {addr}: {e}")))?;
    let ep = endpoint.clone();
    let task = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok(mut h3) = h3::server::builder()
                    .build::<_, Bytes>(h3_quinn::Connection::new(conn))
                    .await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3.accept().await {
                    let st = st.clone();
                    tokio::spawn(async move {
                        if let Ok((req, stream)) = resolver.resolve_request().await {
                            h3_request(st, req, stream).await;
                        }
                    });
                }
            });
        }
    });
    Ok((endpoint, task, generated.cert.pem()))
}

async fn h3_request(
    st: Arc<State>,
    req: Request<()>,
    mut stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) {
    use bytes::Buf as _;
    let mut body = Vec::new();
    let mut too_large = None;
    loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    if body.len() + part.len() > st.config.max_body {
                        too_large = Some("length limit exceeded".to_owned());
                    } else {
                        body.extend_from_slice(part);
                    }
                    let n = part.len();
                    chunk.advance(n);
                }
            }
            Ok(None) => break,
            Err(e) => {
                too_large = Some(format!("reading body: {e}"));
                break;
            }
        }
    }
    let body = match too_large {
        Some(e) => Err(e),
        None => Ok(Bytes::from(body)),
    };
    let Ok(resp) = process(&st, req.method(), req.uri().path(), req.headers(), body).await else {
        // Injected reset: abandon the stream.
        stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        return;
    };
    let (parts, body) = resp.into_parts();
    if stream
        .send_response(http::Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    let b = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !b.is_empty() {
        let _ = stream.send_data(b).await;
    }
    let _ = stream.finish().await;
}
