//! The server around the pipeline: the accept loop (HTTP/1.1 and h2c on one
//! listener, TLS when configured), worker threads, graceful shutdown, and
//! the `/metrics` listener.

pub mod tls;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::pipeline::{Peer, Proxy};
use crate::upstream::tunnel::Tunnels;
use tls::Tls;
pub use workers::{run_workers, serve_metrics, shutdown_signal, StartError};

/// What one worker serves: the request pipeline and, when this process
/// terminates TLS, the acceptor.
pub struct Server {
    pub proxy: Proxy,
    tls: Option<Tls>,
}

impl Server {
    /// Builds the pipeline and loads the certificates. Must run inside a
    /// Tokio runtime.
    pub fn new(config: Config) -> Result<Server, ConfigError> {
        let tls = match &config.tls {
            Some(files) => {
                let tls =
                    Tls::load(files.clone()).map_err(|e| ConfigError::setting("TLS_CERT_FILE/TLS_CERT_DIR", e))?;
                tls.watch(config.tls_reload_interval);
                Some(tls)
            }
            None => None,
        };
        Ok(Server { proxy: Proxy::new(config)?, tls })
    }

    /// Another worker: the same shared state, its own upstream pool.
    pub fn worker(&self) -> Server {
        Server { proxy: self.proxy.worker(), tls: self.tls.clone() }
    }

    pub fn config(&self) -> &Config {
        self.proxy.config()
    }

    /// The open tunnels (shared by every worker).
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        self.proxy.tunnels()
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting and
/// lets in-flight requests finish, up to the configured shutdown timeout.
pub async fn run(listener: TcpListener, server: Arc<Server>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let config = server.config();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1000);
    let graceful = GracefulShutdown::new();
    let shutdown_timeout = config.shutdown_timeout;
    tokio::pin!(shutdown);
    let tls = server.tls.clone();
    let handshake_timeout = config.tls_handshake_timeout;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let peer = Peer::new(peer);
        let service = service_fn(move |req| {
            let (server, peer) = (server.clone(), peer.clone());
            async move { Ok::<_, Infallible>(server.proxy.handle(req, &peer).await) }
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        match &tls {
            None => {
                let conn =
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor().clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    let conn = watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let tunnels = server.tunnels().clone();
    tracing::info!(
        tunnels = tunnels.open(),
        "shutting down: no longer accepting; waiting for in-flight requests and tunnels"
    );
    let finished = async {
        graceful.shutdown().await;
        tunnels.drained().await;
    };
    match tokio::time::timeout(shutdown_timeout, finished).await {
        Ok(()) => tracing::info!("all connections finished"),
        Err(_) => tracing::warn!(tunnels = tunnels.open(), "shutdown timeout reached; closing what is left"),
    }
    tunnels.close_all();
    Ok(())
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
