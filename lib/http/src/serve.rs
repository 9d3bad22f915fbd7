//! The accept loop of every listener: HTTP/1.1 by hyper, with what a server facing the
//! internet needs and `axum::serve` does not give: a deadline on each request's headers (slow
//! senders, idle kept-alive connections), an idle timeout while a request is under way (a
//! stalled body, a client that stopped reading), a cap on open connections, a deadline on
//! graceful shutdown, and the peer's address in every request (`ConnectInfo<SocketAddr>`).

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The limits of one listener (`http.*` settings).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Limits {
    pub fn of(http: &mailpipe_config::HttpConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_connections: http.max_connections,
            shutdown_grace: Duration::from_millis(http.shutdown_grace_ms),
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true; then stops accepting, lets requests in
/// flight finish (idle connections close at once) for up to `shutdown_grace`, closes what is
/// left and returns. `app` must be always ready (a `Router`, or a service in front of one).
pub async fn serve<S>(listener: TcpListener, app: S, limits: Limits, mut stop: watch::Receiver<bool>) -> std::io::Result<()>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let open = metrics::gauge!("mailpipe_http_connections_open");
    let timed_out = metrics::counter!("mailpipe_http_connections_timed_out_total");
    loop {
        // Beyond the cap, new connections wait in the listen backlog, not in memory.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = turned_true(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken: wait a
                    // moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = turned_true(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let moved = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Counted { inner: stream, moved: moved.clone() });
        let conn = http.serve_connection(io, TowerToHyperService::new(WithPeer { inner: app.clone(), peer }));
        let mut closing = closing_rx.clone();
        let (open, timed_out) = (open.clone(), timed_out.clone());
        connections.spawn(async move {
            let _slot = slot;
            open.increment(1.0);
            let mut conn = pin!(conn);
            let mut shutting_down = false;
            // Checked four times per idle timeout: a connection with no byte moved over four
            // checks in a row is closed.
            let mut check = tokio::time::interval(limits.idle_timeout / 4);
            check.tick().await;
            let (mut last, mut quiet) = (0, 0);
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = turned_true(&mut closing), if !shutting_down => {
                        shutting_down = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = check.tick() => {
                        let now = moved.load(Ordering::Relaxed);
                        quiet = if now == last { quiet + 1 } else { 0 };
                        last = now;
                        if quiet >= 4 {
                            tracing::debug!(%peer, "connection idle for too long; closing it");
                            timed_out.increment(1);
                            break;
                        }
                    }
                }
            }
            open.decrement(1.0);
        });
    }
    drop(listener);
    closing.send_replace(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = connections.len(), grace = ?limits.shutdown_grace, "requests still in flight after the shutdown grace; closing their connections");
        connections.shutdown().await;
    }
    Ok(())
}

/// Resolves once `flag` is true (or its sender is gone).
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|f| *f).await;
}

/// The app, with the peer's address in each request's extensions and axum's body type.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S> tower_service::Service<hyper::Request<Incoming>> for WithPeer<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: hyper::Request<Incoming>) -> Self::Future {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.inner.call(request)
    }
}

/// A socket that counts the bytes moved either way, for the idle timeout.
struct Counted {
    inner: TcpStream,
    moved: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
