//! The upstream connection pool: HTTP/1.1 connections to runners and apps
//! (TLS when a runner's `proxyUrl` is https), one pool per worker. A
//! connection goes back to the pool when its response body has been read to
//! the end, and is dropped otherwise; `idle` says which idle ones are reused
//! and how long they wait.
//! With `UPSTREAM_MAX_CONNECTIONS`, a request waits (a bounded time) for a
//! connection to an upstream that has as many as it may.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::uri::Scheme;
use http::{Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::Notify;
use tower_service::Service;

use super::failure::{classify, is_stale, Failure};
pub use super::idle::Key;
use super::idle::{self, Idle, Sender};
pub use super::RequestBody;
use crate::config::Config;
use crate::error::ProxyError;
use crate::http::host::Port;
use crate::http::is_upgrade;
use crate::metrics::Metrics;
use crate::timers::{self, KeptTimers};

/// Response-head timers kept for later requests, at most.
const SPARE_TIMERS: usize = 256;

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    idle: Arc<Mutex<Idle>>,
    /// Connections per upstream host for this worker (0: no limit).
    cap: usize,
    /// How long a request waits for one under the cap.
    wait: Duration,
    /// A connection came back idle or closed.
    freed: Arc<Notify>,
    /// The task that closes idle connections nobody asks for runs.
    sweeping: AtomicBool,
    /// Response-head timers of requests that have their answer, for the
    /// next ones (each worker has its pool, so its own timers).
    timers: KeptTimers,
    metrics: Arc<Metrics>,
}

/// One connection counted under the cap, until it closes.
struct Slot {
    idle: Arc<Mutex<Idle>>,
    key: Key,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = idle.open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        drop(idle);
        self.freed.notify_one();
    }
}

/// The copy of a request without a body, with its upstream's key, that
/// [`Pool::send`] hands back to send it again (once a sandbox is up).
pub struct Outgoing {
    pub key: Key,
    pub req: Request<RequestBody>,
}

impl Outgoing {
    pub fn headers(&self) -> &http::HeaderMap {
        self.req.headers()
    }
}

/// A connection lent for one request; back to the pool by [`Lease::release`].
pub struct Lease {
    sender: Sender,
    key: Key,
    idle: Arc<Mutex<Idle>>,
    /// Woken when the connection is back (only under a cap).
    freed: Option<Arc<Notify>>,
}

impl Lease {
    /// The response was read to its end: the connection can carry another.
    pub fn release(self) {
        let now = crate::clock::now();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).put(self.key, self.sender, now);
        if let Some(freed) = self.freed {
            freed.notify_one();
        }
    }
}

impl Pool {
    /// A worker's pool; `metrics` counts its connections.
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Pool {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.upstream_connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let workers = config.workers.max(1);
        let cap = config.upstream_max_connections.div_ceil(workers);
        let idle: Arc<Mutex<Idle>> = Arc::default();
        let counted = Arc::downgrade(&idle);
        metrics.idle_source(Box::new(move || {
            let Some(idle) = counted.upgrade() else { return 0 };
            let count = idle.lock().unwrap_or_else(|e| e.into_inner()).count();
            count
        }));
        Pool {
            connector,
            idle,
            cap,
            wait: config.upstream_connect_timeout,
            freed: Arc::default(),
            timers: KeptTimers::new(SPARE_TIMERS),
            sweeping: AtomicBool::new(false),
            metrics: metrics.clone(),
        }
    }

    /// Addresses a request to its upstream: the pool's key for its URI,
    /// which is left in origin form. The request carries its `Host` already
    /// (the upstream request filter sets it). The request itself is not
    /// passed through: it is large, and each move copies it.
    pub fn address(&self, uri: &mut http::Uri, port: Port, direct: bool) -> Result<Key, ProxyError> {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            // Started here, on the worker's own runtime, at the first request.
            tokio::spawn(idle::sweep(Arc::downgrade(&self.idle)));
        }
        let key = match uri.authority() {
            Some(authority) => Key { https: uri.scheme() == Some(&Scheme::HTTPS), authority: authority.clone() },
            None => return Err(classify(Failure::Connect("no upstream host".into()), port, direct)),
        };
        *uri = origin_form(uri);
        Ok(key)
    }

    /// Sends the request and waits for the response head, within `timeout`.
    /// A request that provably never left is sent again on a new connection;
    /// one that may have left is sent again only when it is safe to replay
    /// (idempotent, no body, not an upgrade) and the upstream closed the
    /// connection without answering: a pooled connection gone stale, or an
    /// upstream over its connection limit closing new ones (nginx retries
    /// idempotent requests alike). A request that can be replayed comes
    /// back as a copy (the one made for a stale connection's retry, so it
    /// costs nothing more), to send again once a sandbox is woken up.
    /// `sent`: the caller's clock reading as it sends (one reading fewer).
    ///
    /// Not an `async fn`, nor is `send_once`, for the reason `Proxy::handle`
    /// gives: the request would be held, and copied, twice.
    #[allow(clippy::manual_async_fn, reason = "an async fn holds its arguments twice")]
    pub fn send(
        &self,
        key: Key,
        req: Request<RequestBody>,
        sent: Instant,
        timeout: Duration,
        port: Port,
        direct: bool,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease, Option<Outgoing>), ProxyError>> + Send + '_ {
        async move {
            let deadline = tokio::time::Instant::from_std(sent) + timeout;
            let mut timer = self.timers.until(deadline);
            let answered = {
                // Pinned where it is made: polled by reference, never moved
                // (a future bound to a local first was copied into place, 1.3 KB).
                let mut attempt = std::pin::pin!(async {
                    let mut replay = replayable(&req).then(|| copy_head(&req));
                    let (again, error) = match self.send_once(&key, req, Some(sent)).await {
                        Ok((resp, lease)) => return Ok((resp, lease, replay)),
                        Err(Failure::Request { unsent: Some(req), error, .. }) => (*req, error),
                        Err(Failure::Request { error, unsent: None }) if is_stale(&error) => match replay.take() {
                            Some(copy) => (copy, error),
                            None => return Err(Failure::Request { error, unsent: None }),
                        },
                        Err(failure) => return Err(failure),
                    };
                    tracing::debug!(%error, "stale upstream connection; retrying once");
                    let (resp, lease) = self.send_once(&key, again, None).await?;
                    Ok((resp, lease, None))
                });
                std::future::poll_fn(|cx| match attempt.as_mut().poll(cx) {
                    Poll::Ready(answered) => Poll::Ready(answered),
                    Poll::Pending => timers::poll_until(&mut timer, deadline, cx).map(|()| Err(Failure::TimedOut)),
                })
                .await
            };
            self.timers.give_back(timer);
            match answered {
                Ok((resp, lease, replay)) => Ok((resp, lease, replay.map(|req| Outgoing { key, req }))),
                Err(failure) => Err(classify(failure, port, direct)),
            }
        }
    }

    /// One try on one connection; `req` is in origin form (its target is
    /// `key`), so a request handed back unsent can go again as it is.
    /// `pooled`: an idle connection may carry it (the clock reading as it
    /// is sent); otherwise a new one does.
    #[allow(clippy::manual_async_fn, reason = "an async fn holds its arguments twice")]
    fn send_once<'a>(
        &'a self,
        key: &'a Key,
        req: Request<RequestBody>,
        pooled: Option<Instant>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), Failure>> + Send + 'a {
        async move {
            let mut sender = match pooled.and_then(|now| self.checkout(key, now)) {
                Some(sender) => sender,
                // Boxed: connecting is rare on a busy pool, and its future
                // would size every request's.
                None => Box::pin(self.new_connection(key)).await?,
            };
            // A connection that closed meanwhile hands the request back unsent.
            ready(&mut sender).await;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let freed = (self.cap > 0).then(|| self.freed.clone());
                    Ok((resp, Lease { sender, key: key.clone(), idle: self.idle.clone(), freed }))
                }
                Err(mut e) => Err(Failure::Request { unsent: e.take_message().map(Box::new), error: e.into_error() }),
            }
        }
    }

    /// The newest idle connection to `key` that is still open.
    fn checkout(&self, key: &Key, now: Instant) -> Option<Sender> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).take(key, now)
    }

    /// A new connection, or under a cap the first one that is free or may
    /// be opened within the wait.
    async fn new_connection(&self, key: &Key) -> Result<Sender, Failure> {
        if self.cap == 0 {
            return self.connect(key, None).await;
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(sender) = idle.take(key, Instant::now()) {
                    return Ok(sender);
                }
                let open = idle.open.entry(key.clone()).or_default();
                if *open < self.cap {
                    *open += 1;
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Failure::Busy);
            }
        }
        let slot = Slot { idle: self.idle.clone(), key: key.clone(), freed: self.freed.clone() };
        self.connect(key, Some(slot)).await
    }

    async fn connect(&self, key: &Key, slot: Option<Slot>) -> Result<Sender, Failure> {
        let uri = http::Uri::builder()
            .scheme(if key.https { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Failure::Connect(e.into()))?;
        let started = Instant::now();
        let io = self.connector.clone().call(uri).await.map_err(Failure::Connect)?;
        let (sender, conn) =
            http1::Builder::new().handshake(io).await.map_err(|e| Failure::Request { error: e, unsent: None })?;
        let counts = self.metrics.local();
        counts.upstream_connect(started.elapsed());
        let open = counts.upstream_open();
        tokio::spawn(async move {
            let (_slot, _open) = (slot, open);
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Waits until a pooled connection has finished its previous exchange (or
/// closed: the request then fails unsent and goes again).
fn ready(sender: &mut Sender) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| sender.poll_ready(cx).map(|_| ()))
}

/// The request line's target: path and query, as received.
fn origin_form(uri: &http::Uri) -> http::Uri {
    match uri.path_and_query() {
        Some(pq) => http::Uri::from(pq.clone()),
        None => http::Uri::from_static("/"),
    }
}

fn replayable(req: &Request<RequestBody>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent && req.body().is_end_stream() && !is_upgrade(req.headers())
}

fn copy_head(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}
