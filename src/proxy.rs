//! The request pipeline, top to bottom: CORS and preflights -> the proxy's
//! own routes, or for a preview: warning page -> credentials out -> public
//! check -> authenticate -> resolve target -> forward -> activity -> log.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, SET_COOKIE, UPGRADE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use crate::activity::Activity;
use crate::auth::{self, Credentials};
use crate::auth_cookie::{self, CookieSigner};
use crate::config::Config;
use crate::control_plane::{unix_now, ControlPlane, DaytonaApi, Registry, Target};
use crate::cors::Cors;
use crate::error::{wants_html, ErrorPages, ProxyError};
use crate::forward::{self, Downstream, Route, UpstreamBody};
use crate::host::{self, Port, PreviewHost};
use crate::metrics::Metrics;
use crate::tls::Tls;
use crate::tunnel::Tunnels;
use crate::upstream::Pool;
use crate::wake;
use crate::warning_page::{self, WarningPage};
use crate::Body;

pub const X_DAYTONA_SKIP_LAST_ACTIVITY_UPDATE: HeaderName =
    HeaderName::from_static("x-daytona-skip-last-activity-update");

/// A proxy worker: the state all workers share, and this worker's own
/// upstream connection pool (its connections stay on its thread).
pub struct Proxy {
    shared: Arc<Shared>,
    /// This worker's upstream connections.
    pool: Pool,
}

/// State shared by every worker.
pub struct Shared {
    config: Config,
    control_plane: Arc<ControlPlane>,
    pages: ErrorPages,
    /// `Some` when the warning page is enabled.
    warning: Option<WarningPage>,
    /// Signs and checks auth cookies.
    signer: CookieSigner,
    activity: Arc<Activity>,
    /// `Some` when this process terminates TLS.
    tls: Option<Tls>,
    /// Open WebSocket tunnels.
    tunnels: Arc<Tunnels>,
    metrics: Metrics,
    /// `http` or `https`, for `X-Forwarded-Proto` and printed URLs.
    proto: &'static str,
    /// `/health` answer, built once.
    health: Bytes,
}

impl std::ops::Deref for Proxy {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// The client end of a connection, with what is derived from it once per
/// connection rather than per request.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The IP as a header value (`X-Forwarded-For`).
    ip_value: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip_value = HeaderValue::try_from(addr.ip().to_string()).expect("an IP address is header-safe");
        Peer { addr, ip_value }
    }
}

/// Where a proxied request goes.
enum Dest<'a> {
    /// A preview host: `<port>-<key>.<base>`.
    Preview(&'a PreviewHost),
    /// `/toolbox/{id}{path}` on a non-preview host.
    Toolbox { sandbox_id: &'a str, path_and_query: &'a str },
}

impl Proxy {
    /// Builds the proxy: the Daytona API when `DAYTONA_API_URL` is set, the
    /// embedded registry (watched for changes) otherwise. Must run inside a
    /// Tokio runtime.
    pub fn new(config: Config) -> anyhow::Result<Proxy> {
        let control_plane = Arc::new(match &config.api_url {
            Some(_) => ControlPlane::Api(Box::new(DaytonaApi::new(&config)?)),
            None => {
                let registry =
                    Registry::open(&config.registry_file).map_err(|e| anyhow::anyhow!("REGISTRY_FILE: {e}"))?;
                registry.watch(config.registry_reload_interval);
                ControlPlane::Registry(registry)
            }
        });
        let secret = if !config.cookie_secret.is_empty() { &config.cookie_secret } else { &config.api_key };
        let signer = if secret.is_empty() {
            tracing::warn!("neither AUTH_COOKIE_SECRET nor PROXY_API_KEY is set: auth cookies use a random key and end with this process");
            CookieSigner::random()
        } else {
            CookieSigner::new(secret.as_bytes())
        };
        let activity = Activity::new(
            control_plane.clone(),
            config.activity_dedup,
            config.activity_keepalive,
            config.api_client_timeout,
        );
        let tls = match &config.tls {
            Some(files) => {
                let tls = Tls::load(files.clone()).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
                tls.watch(config.tls_reload_interval);
                Some(tls)
            }
            None => None,
        };
        let health = serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }).to_string();
        let shared = Shared {
            tls,
            tunnels: Tunnels::new(config.tunnel_idle_timeout),
            metrics: Metrics::default(),
            proto: if config.https { "https" } else { "http" },
            warning: config.warning.as_ref().map(WarningPage::new),
            control_plane,
            pages: ErrorPages::new(),
            signer,
            activity,
            health: Bytes::from(health),
            config,
        };
        Ok(Proxy { pool: Pool::new(&shared.config), shared: Arc::new(shared) })
    }

    /// Another worker: the same shared state, its own upstream pool.
    pub fn worker(&self) -> Proxy {
        Proxy { shared: self.shared.clone(), pool: Pool::new(&self.shared.config) }
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(self.shared.tunnels.open())
    }

    /// The open tunnels (shared by every worker).
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.shared.tunnels
    }

    /// The TLS acceptor, when this process terminates TLS.
    pub fn tls(&self) -> Option<&Tls> {
        self.shared.tls.as_ref()
    }

    /// Answers one request. Never fails: errors become negotiated pages.
    pub async fn handle(&self, mut req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let cors = Cors::take(req.headers_mut());
        if cors.is_preflight(req.method(), req.headers()) {
            let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            cors.preflight_headers(req.headers(), resp.headers_mut());
            return resp;
        }
        let mut resp = self.route(req, peer).await;
        cors.apply(resp.headers_mut());
        self.metrics.response(resp.status());
        resp
    }

    async fn route(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let started = Instant::now();
        let html = wants_html(req.headers());
        let host_value = request_host(&req);
        let host_str = host_value.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default();
        if req.method() == Method::POST && req.uri().path() == warning_page::ACCEPT_PATH {
            return warning_page::accept(req.uri().query(), host_str, self.config.https).map(Either::Right);
        }
        let (preview, host_value) = match (host::parse(host_str, &self.config.allowed_base_domains), host_value) {
            (Some(preview), Some(host_value)) => (preview, host_value),
            (_, host_value) => return self.own_route(req, peer, host_value, html).await,
        };
        if self.config.toolbox_only && preview.port() != Port::TOOLBOX {
            return self.fail(&ProxyError::NoRoute, html);
        }
        if let Some(page) = &self.warning {
            if warning_page::should_warn(
                req.method(),
                req.headers(),
                preview.port(),
                forward::is_upgrade(req.headers()),
            ) {
                let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                let host = host_value.to_str().unwrap_or_default();
                return page.render(&format!("{}://{host}{pq}", self.proto)).map(Either::Right);
            }
        }
        let method = req.method().clone();
        let result = self.proxy_request(req, peer, host_value, Dest::Preview(&preview)).await;
        self.finish(result, &method, preview.port(), started, html)
    }

    /// The proxy's own answer for `err`, counted.
    fn fail(&self, err: &ProxyError, html: bool) -> Response<Body> {
        self.metrics.error(err.code());
        self.pages.render(err, html)
    }

    /// Logs the outcome once and turns errors into pages.
    fn finish(
        &self,
        result: Result<Response<Body>, ProxyError>,
        method: &Method,
        port: Port,
        started: Instant,
        html: bool,
    ) -> Response<Body> {
        match result {
            Ok(resp) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                tracing::debug!(%method, status = resp.status().as_u16(), %port, elapsed_ms, "forwarded");
                resp
            }
            Err(err) => {
                // The host is never logged: its key may be a signed token.
                let status = err.status().as_u16();
                if err.status().is_server_error() {
                    tracing::warn!(%method, status, code = err.code(), %port, error = %err, "request failed");
                } else {
                    tracing::debug!(%method, status, code = err.code(), %port, "request refused");
                }
                self.fail(&err, html)
            }
        }
    }

    /// Authenticates and forwards a preview or toolbox request.
    async fn proxy_request(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
        host_value: HeaderValue,
        dest: Dest<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let (key, route) = match &dest {
            Dest::Preview(host) => (host.key(), Route::Port(host.port())),
            Dest::Toolbox { sandbox_id, .. } => (*sandbox_id, Route::Toolbox),
        };
        let port = match route {
            Route::Port(port) => port,
            Route::Toolbox => Port::TOOLBOX,
        };
        let upgrade = forward::is_upgrade(req.headers()).then(|| req.headers()[UPGRADE].clone());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original = match &dest {
            Dest::Preview(_) => parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            Dest::Toolbox { path_and_query, .. } => path_and_query,
        };

        // Credentials and control headers leave the request whether or not
        // this sandbox needs them.
        let (mut creds, stripped) = Credentials::take(&mut parts.headers, original, key);
        let path_and_query = stripped.as_deref().unwrap_or(original);
        let skip_activity = parts
            .headers
            .remove(X_DAYTONA_SKIP_LAST_ACTIVITY_UPDATE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));

        let needs_auth = match &dest {
            Dest::Preview(host) => host.port().is_reserved() || !self.control_plane.is_public(key).await?,
            Dest::Toolbox { .. } => true,
        };
        let mut set_cookie = None;
        let sandbox_id: Cow<str> = if needs_auth {
            creds.client_ip =
                Some(auth::client_ip(peer.addr.ip(), &parts.headers, |ip| self.config.is_trusted_proxy(ip)));
            let now = unix_now();
            let signed = matches!(dest, Dest::Preview(_));
            let granted = auth::authenticate(&self.control_plane, &self.signer, key, port, &creds, now, signed).await?;
            if granted.bearer_used {
                parts.headers.remove(AUTHORIZATION);
            }
            if let Some(grant) = granted.cookie {
                let name = auth_cookie::cookie_name(key);
                let domain = match (&self.config.cookie_domain, &dest) {
                    (Some(d), _) => d.clone(),
                    (None, Dest::Preview(host)) => format!(".{}", host.as_str()),
                    (None, Dest::Toolbox { .. }) => {
                        let host = host_value.to_str().unwrap_or_default();
                        format!(".{}", host::strip_port(host).to_ascii_lowercase())
                    }
                };
                let value = self.signer.sign(&name, &grant, now);
                set_cookie = Some(auth_cookie::set_cookie(&name, value, &domain, self.config.https));
            }
            Cow::Owned(granted.sandbox_id)
        } else {
            Cow::Borrowed(key)
        };

        let target = self.control_plane.target(&sandbox_id).await?;
        let uri = forward::upstream_uri(&target, &sandbox_id, route, path_and_query)?;
        let trusted = self.config.is_trusted_proxy(peer.addr.ip());
        let down = Downstream {
            peer: peer.addr.ip(),
            peer_value: peer.ip_value.clone(),
            trusted,
            host: host_value,
            proto: self.proto,
        };
        forward::prepare_request_headers(&mut parts.headers, &down, &target, upgrade);
        parts.uri = uri;
        parts.version = forward::UPSTREAM_VERSION;
        let direct = matches!(target, Target::Direct(_));

        let out = Request::from_parts(parts, Either::Left(body));
        let (mut resp, lease) = self.pool.send(out, self.config.upstream_timeout, port, direct).await?;
        if !direct && forward::is_empty_bad_gateway(&resp) {
            return Err(ProxyError::PortNotListening(port));
        }
        let mut lease = Some(lease);
        if !direct {
            let read_body = match wake::inspect(resp.status(), resp.headers()) {
                wake::Verdict::Pass => false,
                wake::Verdict::NotRunning => {
                    if let Some(err) = wake::wake(&self.control_plane, &sandbox_id, !skip_activity).await {
                        return Err(err);
                    }
                    false
                }
                wake::Verdict::ReadBody => true,
            };
            if read_body {
                // A small JSON error: the runner's own "not running" errors
                // look like this. Read it, then pass it on unchanged.
                let (parts, body) = resp.into_parts();
                let body = tokio::time::timeout(self.config.upstream_timeout, body.collect())
                    .await
                    .map_err(|_| ProxyError::UpstreamTimeout(port))?
                    .map_err(|e| ProxyError::UpstreamFailed { port, detail: e.to_string() })?
                    .to_bytes();
                if let Some(lease) = lease.take() {
                    lease.release();
                }
                if wake::says_not_running(&body) {
                    if let Some(err) = wake::wake(&self.control_plane, &sandbox_id, !skip_activity).await {
                        return Err(err);
                    }
                }
                let mut resp = Response::from_parts(parts, Either::Right(Full::new(body)));
                forward::remove_hop_by_hop(resp.headers_mut());
                if let Some(cookie) = set_cookie {
                    resp.headers_mut().append(SET_COOKIE, cookie);
                }
                if !skip_activity {
                    self.activity.touch(&sandbox_id);
                }
                return Ok(resp);
            }
        }
        forward::prepare_response_headers(&mut resp);
        if let Dest::Toolbox { sandbox_id, .. } = &dest {
            if resp.status().is_redirection() {
                forward::prefix_location(resp.headers_mut(), sandbox_id);
            }
        }
        if let Some(cookie) = set_cookie {
            resp.headers_mut().append(SET_COOKIE, cookie);
        }

        // The request reached the sandbox: it counts as activity.
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let guard = match skip_activity {
            true => None,
            false if upgraded || forward::is_streaming(&resp) => Some(self.activity.hold(&sandbox_id)),
            false => {
                self.activity.touch(&sandbox_id);
                None
            }
        };
        if upgraded {
            if let Some(client) = client_upgrade {
                self.tunnels.spawn(client, hyper::upgrade::on(&mut resp), guard);
                return Ok(resp.map(|b| Either::Left(UpstreamBody::new(b, None, None))));
            }
        }
        Ok(resp.map(|b| Either::Left(UpstreamBody::new(b, lease, guard))))
    }

    /// Routes on hosts that are not preview hosts.
    async fn own_route(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        host_value: Option<HeaderValue>,
        html: bool,
    ) -> Response<Body> {
        let path = req.uri().path();
        if path == "/health" && matches!(*req.method(), Method::GET | Method::HEAD) {
            return json_response(StatusCode::OK, self.health.clone());
        }
        if let Some(rest) = path.strip_prefix("/toolbox/") {
            let (id, _) = rest.split_once('/').unwrap_or((rest, ""));
            let id = id.to_ascii_lowercase();
            let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if let (true, Some(host_value)) = (valid, host_value) {
                let full = req.uri().path_and_query().map_or(path, |pq| pq.as_str());
                let rest = full["/toolbox/".len() + id.len()..].to_string();
                let rest = if rest.starts_with('/') { rest } else { format!("/{rest}") };
                let started = Instant::now();
                let method = req.method().clone();
                let dest = Dest::Toolbox { sandbox_id: &id, path_and_query: &rest };
                let result = self.proxy_request(req, peer, host_value, dest).await;
                return self.finish(result, &method, Port::TOOLBOX, started, html);
            }
        }
        if let Some(id) = path.strip_prefix("/sandboxes/").and_then(|p| p.strip_suffix("/last-activity")) {
            if let ControlPlane::Registry(registry) = &*self.control_plane {
                if req.method() == Method::GET && self.is_operator(&req) {
                    let body = serde_json::json!({ "sandboxId": id, "lastActivityAt": registry.last_activity(id) });
                    return json_response(StatusCode::OK, Bytes::from(body.to_string()));
                }
            }
        }
        self.fail(&ProxyError::NoRoute, html)
    }

    /// Operator routes need `Authorization: Bearer <PROXY_API_KEY>` when a
    /// key is configured.
    fn is_operator(&self, req: &Request<Incoming>) -> bool {
        if self.config.api_key.is_empty() {
            return true;
        }
        let sent = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let want = format!("Bearer {}", self.config.api_key);
        subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), want.as_bytes()).into()
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The host the client asked for: the URI's authority (HTTP/2 `:authority`,
/// absolute-form requests) or the `Host` header.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(HOST).cloned(),
    }
}
