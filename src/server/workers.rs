//! Worker threads: one single-threaded runtime per core, each with its own
//! `SO_REUSEPORT` listener; the signals that stop them; `/metrics`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{run, Server};
use crate::config::{Config, ConfigError};
use crate::pipeline::access_log::{self, Lines};

/// Why the proxy could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("a worker thread panicked")]
    WorkerPanicked,
}

/// Adds what was being done to an I/O error.
fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// Runs the proxy on `workers` threads, each a single-threaded runtime with
/// its own `SO_REUSEPORT` listener and upstream pool (thread per core, as
/// nginx's worker processes): no request crosses threads. Stops on
/// SIGTERM/SIGINT once every worker has drained.
pub fn run_workers(config: Config, workers: usize, access_lines: Lines) -> Result<(), StartError> {
    let workers = workers.max(1);
    let listen = config.listen();
    let first = reuseport_listener(listen).map_err(|e| {
        ConfigError::setting("PROXY_LISTEN_ADDRESS/PROXY_PORT", format!("cannot listen on {listen}: {e}"))
    })?;
    // With port 0 the others join whatever port the first one got.
    let bound = first.local_addr().map_err(io("reading the listener's address"))?;
    let mut listeners = Vec::new();
    for _ in 1..workers {
        listeners.push(reuseport_listener(bound).map_err(io("opening a worker's listener"))?);
    }
    // While tasks are ready, the runtime looks at its sockets and timers
    // every `event_interval` polls (61 by default). A proxied request takes
    // five polls, so the default meant an `epoll_wait` every dozen
    // requests under load; 256 saves about 2% of CPU per request (the
    // events wait at most 256 polls, a fraction of a millisecond).
    let runtime = || {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.event_interval(256).enable_all().build().map_err(io("starting a runtime"))
    };
    let main_rt = runtime()?;
    // Background tasks (registry watcher, activity keep-alive) live on the
    // first worker's runtime.
    let server = main_rt.block_on(async { Server::new(config, access_lines) })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = {
        let _runtime = main_rt.enter();
        shutdown_signal().map_err(io("catching SIGTERM/SIGINT"))?
    };
    let protocols = if server.config().tls.is_some() { "https (h2, http/1.1)" } else { "http (http/1.1, h2c)" };
    tracing::info!(address = %bound, workers, protocols, control_plane = %server.describe(), "preview-proxy listening");
    if let Some(url) = server.demo_url(bound.port()) {
        tracing::info!(
            "try the demo sandbox: start an app on port 8000 (python3 -m http.server 8000), then open {url}"
        );
    }

    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let worker = server.worker();
        let mut stopped = stopped.clone();
        let rt = runtime()?;
        let thread = std::thread::Builder::new()
            .name(format!("worker-{}", i + 1))
            .spawn(move || {
                let served = rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    run(listener, Arc::new(worker), async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
                });
                drop(rt);
                access_log::flush();
                served
            })
            .map_err(io("starting a worker thread"))?;
        threads.push(thread);
    }
    let metrics = match server.config().metrics_port {
        Some(port) => {
            let addr = SocketAddr::new(bound.ip(), port);
            let listener = main_rt
                .block_on(TcpListener::bind(addr))
                .map_err(|e| ConfigError::setting("METRICS_PORT", format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(address = %addr, "metrics listening");
            Some(listener)
        }
        None => None,
    };
    let server = Arc::new(server);
    let (delay, drain) = (server.config().shutdown_delay, server.config().shutdown_timeout);
    let result = main_rt.block_on(async move {
        if let Some(listener) = metrics {
            tokio::spawn(serve_metrics(listener, server.clone()));
        }
        let draining = server.clone();
        tokio::spawn(async move {
            signal.await;
            draining.proxy.start_draining();
            if !delay.is_zero() {
                tracing::info!(
                    delay_sec = delay.as_secs(),
                    "shutting down: /health answers 503 draining; still accepting"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!(
                timeout_sec = drain.as_secs(),
                "shutting down: no longer accepting; finishing requests and tunnels"
            );
            let _ = stop.send(true);
        });
        let mut stopped = stopped.clone();
        run(TcpListener::from_std(first)?, server, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    for thread in threads {
        thread.join().map_err(|_| StartError::WorkerPanicked)?.map_err(io("serving"))?;
    }
    drop(main_rt);
    access_log::flush();
    tracing::info!("preview-proxy stopped");
    result.map_err(io("serving"))
}

/// Serves `GET /metrics` (Prometheus text) on an internal listener.
pub async fn serve_metrics(listener: TcpListener, server: Arc<Server>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let server = server.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (http::StatusCode::OK, server.proxy.shared.metrics.render(server.tunnels().open()))
                    } else {
                        (http::StatusCode::NOT_FOUND, "only /metrics here\n".to_string())
                    };
                    let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
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
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
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
