//! The accept loop: HTTP/1.1 and cleartext HTTP/2 on one listener, a
//! header-read timeout, graceful shutdown bounded by `SHUTDOWN_TIMEOUT_SEC`.

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

use crate::config::Config;
use crate::proxy::{Peer, Proxy};

/// Serves `listener` until `shutdown` completes, then stops accepting and
/// lets in-flight requests finish, up to the configured shutdown timeout.
pub async fn run(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let config = proxy.config();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1000);
    let graceful = GracefulShutdown::new();
    let shutdown_timeout = config.shutdown_timeout;
    tokio::pin!(shutdown);

    let tls = proxy.tls().cloned();
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
        let proxy = proxy.clone();
        let peer = Peer::new(peer);
        let service = service_fn(move |req| {
            let (proxy, peer) = (proxy.clone(), peer.clone());
            async move { Ok::<_, Infallible>(proxy.handle(req, &peer).await) }
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
    let tunnels = proxy.tunnels().clone();
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

/// Runs the proxy on `workers` threads, each a single-threaded runtime with
/// its own `SO_REUSEPORT` listener and upstream pool (thread per core, as
/// nginx's worker processes): no request crosses threads. Stops on
/// SIGTERM/SIGINT once every worker has drained.
pub fn run_workers(config: Config, workers: usize) -> anyhow::Result<()> {
    let workers = workers.max(1);
    let first = reuseport_listener(config.listen)
        .map_err(|e| anyhow::anyhow!("PROXY_LISTEN_ADDRESS/PROXY_PORT: cannot listen on {}: {e}", config.listen))?;
    // With port 0 the others join whatever port the first one got.
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(reuseport_listener(bound)?);
    }
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    let main_rt = runtime()?;
    // Background tasks (registry watcher, activity keep-alive) live on the
    // first worker's runtime.
    let proxy = main_rt.block_on(async { Proxy::new(config) })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = {
        let _runtime = main_rt.enter();
        shutdown_signal()?
    };
    tracing::info!(address = %bound, workers, "preview-proxy listening");

    let mut threads = Vec::new();
    for (i, listener) in listeners.drain(1..).enumerate() {
        let worker = proxy.worker();
        let mut stopped = stopped.clone();
        let rt = runtime()?;
        let thread = std::thread::Builder::new().name(format!("worker-{}", i + 1)).spawn(move || {
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                run(listener, Arc::new(worker), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
            })
        })?;
        threads.push(thread);
    }
    let listener = listeners.pop().expect("the first listener");
    let metrics = match proxy.config().metrics_port {
        Some(port) => {
            let addr = std::net::SocketAddr::new(bound.ip(), port);
            let listener = main_rt
                .block_on(TcpListener::bind(addr))
                .map_err(|e| anyhow::anyhow!("METRICS_PORT: cannot listen on {addr}: {e}"))?;
            tracing::info!(address = %listener.local_addr()?, "metrics listening");
            Some(listener)
        }
        None => None,
    };
    let proxy = Arc::new(proxy);
    let result = main_rt.block_on(async move {
        if let Some(listener) = metrics {
            tokio::spawn(serve_metrics(listener, proxy.clone()));
        }
        tokio::spawn(async move {
            signal.await;
            let _ = stop.send(true);
        });
        let mut stopped = stopped.clone();
        run(TcpListener::from_std(listener)?, proxy, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    for thread in threads {
        match thread.join() {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    Ok(result?)
}

/// Serves `GET /metrics` (Prometheus text) on an internal listener.
pub async fn serve_metrics(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let proxy = proxy.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (http::StatusCode::OK, proxy.metrics_text())
                    } else {
                        (http::StatusCode::NOT_FOUND, "only /metrics here\n".to_string())
                    };
                    let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// A non-blocking listener with `SO_REUSEPORT`, so each worker accepts on
/// its own socket and the kernel spreads connections.
fn reuseport_listener(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// SIGTERM and SIGINT, caught from the moment this returns (so a signal
/// that arrives while the workers start is not fatal). Must be called
/// inside a runtime; the future completes on the first signal.
pub fn shutdown_signal() -> io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
