//! QUIC adapter: HTTP/3 with `h3` over `h3-quinn`.
//!
//! Each QUIC connection runs an h3 server connection; each request stream is
//! a task that goes through the same [`Ingest`] steps as HTTP/1.1 and HTTP/2.
//! The connection handshake and request headers are bounded by the header
//! read timeout, idle connections by QUIC's idle timeout, bodies by the body
//! deadline. On shutdown the endpoint stops accepting and each connection
//! sends GOAWAY; streams already open finish.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{Response, StatusCode};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::request::{Ingest, Rejection, Route};
use crate::budget::ConnReadBudget;
use crate::handoff::Delivery;

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;
type H3Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Serves `endpoint` until `shutdown` turns true.
pub(super) async fn serve<D: Delivery>(
    endpoint: quinn::Endpoint,
    core: Arc<Ingest<D>>,
    conns: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    tracing::debug!("ingest: connection limit reached, refusing QUIC connection");
                    incoming.refuse();
                    continue;
                };
                tokio::spawn(connection(incoming, core.clone(), shutdown.clone(), permit));
            }
            _ = super::stopped(&mut shutdown) => break,
        }
    }
    endpoint.set_server_config(None);
}

async fn connection<D: Delivery>(
    incoming: quinn::Incoming,
    core: Arc<Ingest<D>>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let timeout = core.config().header_read_timeout;
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ingest: QUIC handshake failed");
            return;
        }
        Err(_) => return,
    };
    let peer = conn.remote_address();
    let mut h3: H3Conn = match tokio::time::timeout(
        timeout,
        h3::server::builder().build(h3_quinn::Connection::new(conn)),
    )
    .await
    {
        Ok(Ok(h3)) => h3,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ingest: HTTP/3 setup failed");
            return;
        }
        Err(_) => return,
    };
    let conn_budget = core.conn_budget();
    let mut going_away = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let core = core.clone();
                    let conn_budget = conn_budget.clone();
                    tokio::spawn(async move {
                        let resolved = tokio::time::timeout(
                            core.config().header_read_timeout,
                            resolver.resolve_request(),
                        )
                        .await;
                        if let Ok(Ok((req, stream))) = resolved {
                            request(&core, &conn_budget, req, stream, peer).await;
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "ingest: HTTP/3 connection ended");
                    break;
                }
            },
            _ = super::stopped(&mut shutdown), if !going_away => {
                going_away = true;
                let _ = h3.shutdown(0).await;
            }
        }
    }
}

async fn request<D: Delivery>(
    core: &Ingest<D>,
    conn_budget: &ConnReadBudget,
    req: http::Request<()>,
    mut stream: H3Stream,
    peer: SocketAddr,
) {
    let resp = respond(core, conn_budget, &req, &mut stream, peer).await;
    if core.route(req.method(), req.uri().path()) == Route::Write {
        core.record_write_response("h3", resp.status());
    }
    let (parts, body) = resp.into_parts();
    if stream
        .send_response(Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    if !body.is_empty() && stream.send_data(body).await.is_err() {
        return;
    }
    let _ = stream.finish().await;
    // A refused body may still be arriving; tell the client to stop.
    stream.stop_sending(h3::error::Code::H3_NO_ERROR);
}

async fn respond<D: Delivery>(
    core: &Ingest<D>,
    conn_budget: &ConnReadBudget,
    req: &http::Request<()>,
    stream: &mut H3Stream,
    peer: SocketAddr,
) -> Response<Bytes> {
    let route = core.route(req.method(), req.uri().path());
    if route != Route::Write {
        return core.respond_other(route);
    }
    let admitted = match core.check_head(req.headers()) {
        Ok(a) => a,
        Err(r) => {
            core.log_rejection(None, "h3", &r, Some(peer));
            return r.into_response();
        }
    };
    let cluster = admitted.cluster().clone();
    let mut reader = core.body_reader(&admitted, conn_budget);
    let result = async {
        loop {
            match reader.within(stream.recv_data()).await? {
                Ok(None) => break,
                Err(e) => {
                    return Err(Rejection::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading request body: {e}"),
                    ))
                }
                Ok(Some(mut chunk)) => {
                    while chunk.has_remaining() {
                        let part = chunk.chunk();
                        let n = part.len();
                        reader.push(part).await?;
                        chunk.advance(n);
                    }
                }
            }
        }
        core.finish(admitted, reader).await
    }
    .await;
    match result {
        Ok(written) => written.into_response(),
        Err(r) => {
            core.log_rejection(Some(&cluster.id), "h3", &r, Some(peer));
            r.into_response()
        }
    }
}
