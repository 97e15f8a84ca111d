//! The server around the pipeline: the accept loop (HTTP/1.1 and h2c on one
//! listener, TLS when configured), worker threads, graceful shutdown, and
//! the `/metrics` listener.

mod client_io;
mod connection;
mod head_timer;
mod park;
pub mod tls;
mod workers;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use connection::Protocol;
use park::Lot;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::control_plane::ControlPlane;
use crate::pipeline::access_log::Lines;
use crate::pipeline::Proxy;
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
    /// `access_lines`: where the access log goes.
    pub fn new(config: Config, access_lines: Lines) -> Result<Server, ConfigError> {
        let tls = match &config.tls {
            Some(files) => {
                let tls =
                    Tls::load(files.clone()).map_err(|e| ConfigError::setting("TLS_CERT_FILE/TLS_CERT_DIR", e))?;
                tls.watch(config.tls_reload_interval);
                Some(tls)
            }
            None => None,
        };
        Ok(Server { proxy: Proxy::new(config, access_lines)?, tls })
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

    /// What the proxy asks about sandboxes, for the start-up line.
    pub fn describe(&self) -> String {
        match &*self.proxy.shared.control_plane {
            ControlPlane::Api(_) => format!("Daytona API {}", self.config().api_url.as_deref().unwrap_or_default()),
            ControlPlane::Registry(registry) => format!(
                "registry {} ({} sandboxes)",
                self.config().registry_file.display(),
                registry.snapshot().sandbox_count()
            ),
        }
    }

    /// With the shipped demo registry: the URL to try.
    pub fn demo_url(&self, port: u16) -> Option<String> {
        let ControlPlane::Registry(registry) = &*self.proxy.shared.control_plane else { return None };
        registry.snapshot().sandbox("demo")?;
        Some(format!("{}://8000-demo.preview.localhost:{port}/", self.proxy.shared.proto()))
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting and
/// lets in-flight requests finish, up to the configured shutdown timeout.
pub async fn run(listener: TcpListener, server: Arc<Server>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let config = server.config();
    let shutdown_timeout = config.shutdown_timeout;
    let (closing, closing_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    // Idle HTTP/1 connections wait here from a moment after their last
    // request (`head_timer::Parking`) until `IDLE_TIMEOUT_SEC` after it.
    let idle = config.idle_timeout;
    let counts = server.proxy.shared.metrics.local();
    let cleartext = Lot::<TcpStream>::start(idle, closing_rx.clone(), counts.clone(), connection::resume)?;
    let tls = Lot::<TlsStream>::start(idle, closing_rx.clone(), counts.clone(), connection::resume)?;
    tokio::pin!(shutdown);
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
        // Whether the peer is a front proxy is decided once per connection.
        let peer = (peer, config.is_trusted_proxy(peer.ip()));
        let server = server.clone();
        let counted = OpenConnection::new(&open);
        // Boxed: a task's future is moved several times between spawn and
        // finish. One function each for TLS and cleartext, so a cleartext
        // connection's future is not sized for TLS's state.
        match server.tls.is_some() {
            false => tokio::spawn(Box::pin(serve_cleartext(stream, server, peer, counted, cleartext.clone()))),
            true => tokio::spawn(Box::pin(serve_tls(stream, server, peer, counted, tls.clone()))),
        };
    }
    drop(listener);
    let tunnels = server.tunnels().clone();
    tracing::debug!(tunnels = tunnels.open(), "worker no longer accepting; waiting for in-flight requests and tunnels");
    server.proxy.start_draining();
    let _ = closing.send(true);
    let finished = async {
        while open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tunnels.drained().await;
    };
    match tokio::time::timeout(shutdown_timeout, finished).await {
        Ok(()) => tracing::debug!("worker: all connections finished"),
        Err(_) => tracing::warn!(tunnels = tunnels.open(), "shutdown timeout reached; closing what is left"),
    }
    tunnels.close_all();
    Ok(())
}

/// A cleartext connection: HTTP/1.1, or HTTP/2 with prior knowledge.
async fn serve_cleartext(
    mut stream: TcpStream,
    server: Arc<Server>,
    peer: (SocketAddr, bool),
    counted: OpenConnection,
    lot: Lot<TcpStream>,
) {
    let Some(opening) = connection::detect(&mut stream, server.config().header_read_timeout).await else { return };
    connection::serve(stream, opening, server, peer, counted, lot).await;
}

/// A TLS connection: the handshake within its limit, then the protocol
/// ALPN chose.
async fn serve_tls(
    stream: TcpStream,
    server: Arc<Server>,
    peer: (SocketAddr, bool),
    counted: OpenConnection,
    lot: Lot<TlsStream>,
) {
    let Some(tls) = &server.tls else { return };
    let stream = match tokio::time::timeout(server.config().tls_handshake_timeout, tls.acceptor().accept(stream)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    connection::serve(stream, (protocol, Vec::new()), server.clone(), peer, counted, lot).await;
}

pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Counts an open client connection while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
