//! TCP adapter: HTTP/1.1 and HTTP/2 (h2c by prior knowledge, h2 over TLS by
//! ALPN) with hyper-util's auto builder.
//!
//! With a certificate configured the same port also takes plaintext: the
//! first byte decides (0x16 starts a TLS handshake). Header reads and the TLS
//! handshake are bounded by the header read timeout, bodies by the body
//! deadline of [`Ingest`]. A connection that sends nothing is closed after
//! the header read timeout; past `max_connections` the oldest connection
//! that has not sent its first byte yet is closed at once to make room
//! ([`Silent`]), so silent sockets cannot keep real clients out even for
//! that long; with none to close, the new connection is closed. On shutdown the listener closes and open connections are asked to
//! finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current response).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::request::{Ingest, Rejection, Route};
use crate::budget::ConnReadBudget;
use crate::handoff::Delivery;

/// How long open connections get to close after the listener stopped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a new connection waits for the slot of the silent connection
/// it evicted (that one gives it back as soon as its task runs).
const EVICT_WAIT: Duration = Duration::from_secs(1);

/// Connections that have not sent their first byte yet, oldest first.
#[derive(Default)]
struct Silent {
    next_id: u64,
    waiting: VecDeque<(u64, Arc<Notify>)>,
}

type SilentList = Arc<Mutex<Silent>>;

fn lock(list: &SilentList) -> std::sync::MutexGuard<'_, Silent> {
    list.lock().unwrap_or_else(|p| p.into_inner())
}

impl Silent {
    /// Registers a connection waiting for its first byte; the `Notify`
    /// fires when it is evicted.
    fn register(list: &SilentList) -> (u64, Arc<Notify>) {
        let mut s = lock(list);
        s.next_id += 1;
        let id = s.next_id;
        let evict = Arc::new(Notify::new());
        s.waiting.push_back((id, evict.clone()));
        (id, evict)
    }

    fn remove(list: &SilentList, id: u64) {
        let mut s = lock(list);
        if let Some(i) = s.waiting.iter().position(|(x, _)| *x == id) {
            s.waiting.remove(i);
        }
    }

    /// Tells the oldest silent connection to close; false when there is none.
    fn evict_oldest(list: &SilentList) -> bool {
        match lock(list).waiting.pop_front() {
            Some((_, evict)) => {
                evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves `listener` until `shutdown` turns true.
pub(super) async fn serve<D: Delivery>(
    listener: TcpListener,
    core: Arc<Ingest<D>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conns: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(core.config().header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let silent = SilentList::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "ingest: TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let permit = match conns.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) if Silent::evict_oldest(&silent) => {
                        tracing::debug!("ingest: connection limit reached; closed the oldest connection that sent nothing yet");
                        match tokio::time::timeout(EVICT_WAIT, conns.clone().acquire_owned()).await {
                            Ok(Ok(p)) => p,
                            _ => continue,
                        }
                    }
                    Err(_) => {
                        tracing::debug!("ingest: connection limit reached, closing new TCP connection");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    (stream, peer),
                    core.clone(),
                    builder.clone(),
                    tls.clone(),
                    graceful.watcher(),
                    silent.clone(),
                    permit,
                ));
            }
            _ = super::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("ingest: some TCP connections did not close within the grace period");
    }
}

/// Serves one accepted connection (`stream` from `peer`).
async fn connection<D: Delivery>(
    (stream, peer): (TcpStream, SocketAddr),
    core: Arc<Ingest<D>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    watcher: hyper_util::server::graceful::Watcher,
    silent: SilentList,
    _permit: OwnedSemaphorePermit,
) {
    let conn_budget = core.conn_budget();
    let svc_core = core.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let core = svc_core.clone();
        let conn_budget = conn_budget.clone();
        async move { Ok::<_, Infallible>(handle(&core, &conn_budget, req, peer).await) }
    });
    let header_timeout = core.config().header_read_timeout;
    // A connection that sends nothing within the header read timeout is
    // closed: before its first byte neither hyper's header timeout nor the
    // HTTP/2 preface detection runs, and a silent socket would hold its
    // connection slot forever (anyone could fill `max_connections`).
    // Until then it may also be evicted to make room for a new connection.
    let (id, evict) = Silent::register(&silent);
    let first = tokio::select! {
        first = first_byte(&stream, header_timeout) => first,
        _ = evict.notified() => None,
    };
    Silent::remove(&silent, id);
    let Some(first) = first else {
        return;
    };
    let result = match tls {
        Some(acceptor) if first == 0x16 => {
            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(tls), service))
                        .await
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "ingest: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
        _ => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "ingest: connection ended with an error");
    }
}

/// The first byte the client sent (left in the socket), or `None` when it
/// sent nothing within `timeout`, closed, or failed. `0x16` opens a TLS
/// handshake record.
async fn first_byte(stream: &TcpStream, timeout: Duration) -> Option<u8> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0]),
        _ => None,
    }
}

/// Answers one request.
pub(super) async fn handle<D: Delivery>(
    core: &Ingest<D>,
    conn_budget: &ConnReadBudget,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let transport = match req.version() {
        http::Version::HTTP_2 => "h2",
        _ => "http1",
    };
    let (parts, mut body) = req.into_parts();
    let route = core.route(&parts.method, parts.uri.path());
    if route != Route::Write {
        return core.respond_other(route).map(Full::new);
    }
    let response = write(core, conn_budget, transport, parts, &mut body, peer).await;
    core.record_write_response(transport, response.status());
    response
}

/// Answers one write request.
async fn write<D: Delivery>(
    core: &Ingest<D>,
    conn_budget: &ConnReadBudget,
    transport: &'static str,
    parts: http::request::Parts,
    body: &mut Incoming,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let admitted = match core.check_head(&parts.headers) {
        Ok(a) => a,
        Err(r) => {
            core.log_rejection(None, transport, &r, Some(peer));
            return r.into_response().map(Full::new);
        }
    };
    let cluster = admitted.cluster().clone();
    let mut reader = core.body_reader(&admitted, conn_budget);
    let result = async {
        loop {
            match reader.within(body.frame()).await? {
                None => break,
                Some(Err(e)) => {
                    return Err(Rejection::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading request body: {e}"),
                    ))
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        reader.push(data).await?;
                    }
                }
            }
        }
        core.finish(admitted, reader).await
    }
    .await;
    match result {
        Ok(written) => written.into_response().map(Full::new),
        Err(r) => {
            core.log_rejection(Some(&cluster.id), transport, &r, Some(peer));
            r.into_response().map(Full::new)
        }
    }
}
