//! The request pipeline, top to bottom: parse host -> the proxy's own routes,
//! or look up the sandbox -> authorise -> resolve target -> forward -> log.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, SET_COOKIE, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::{self, Credentials};
use crate::auth_cookie::{self, CookieSigner};
use crate::config::Config;
use crate::control_plane::{unix_now, ControlPlane, DaytonaApi, Registry, Target};
use crate::error::{wants_html, ErrorPages, ProxyError};
use crate::forward::{self, Downstream, HttpClient};
use crate::host::{self, PreviewHost};
use crate::Body;

/// Shared state of a running proxy.
pub struct Proxy {
    config: Config,
    control_plane: ControlPlane,
    /// Pooled upstream client.
    client: HttpClient,
    pages: ErrorPages,
    /// Signs and checks auth cookies.
    signer: CookieSigner,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    proto: &'static str,
    /// `/health` answer, built once.
    health: Bytes,
}

impl Proxy {
    /// Builds the proxy: the Daytona API when `DAYTONA_API_URL` is set, the
    /// embedded registry (watched for changes) otherwise. Must run inside a
    /// Tokio runtime.
    pub fn new(config: Config) -> anyhow::Result<Proxy> {
        let control_plane = match &config.api_url {
            Some(_) => ControlPlane::Api(Box::new(DaytonaApi::new(&config)?)),
            None => {
                let registry =
                    Registry::open(&config.registry_file).map_err(|e| anyhow::anyhow!("REGISTRY_FILE: {e}"))?;
                registry.watch(config.registry_reload_interval);
                ControlPlane::Registry(registry)
            }
        };
        let secret = if !config.cookie_secret.is_empty() { &config.cookie_secret } else { &config.api_key };
        let signer = if secret.is_empty() {
            tracing::warn!("neither AUTH_COOKIE_SECRET nor PROXY_API_KEY is set: auth cookies use a random key and end with this process");
            CookieSigner::random()
        } else {
            CookieSigner::new(secret.as_bytes())
        };
        let health = serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }).to_string();
        Ok(Proxy {
            client: forward::client(&config),
            proto: if config.https { "https" } else { "http" },
            control_plane,
            pages: ErrorPages::new(),
            signer,
            health: Bytes::from(health),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one request. Never fails: errors become negotiated pages.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let html = wants_html(req.headers());
        let host_value = request_host(&req);
        let preview = host_value
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| host::parse(h, &self.config.allowed_base_domains));
        let (Some(preview), Some(host_value)) = (preview, host_value) else {
            return self.own_route(&req, html);
        };
        let method = req.method().clone();
        match self.preview(req, &preview, peer, host_value).await {
            Ok(resp) => {
                tracing::debug!(%method, status = resp.status().as_u16(), port = %preview.port(), elapsed_ms = started.elapsed().as_millis() as u64, "forwarded");
                resp
            }
            Err(err) => {
                // The host is not logged: its key may be a signed token.
                if err.status().is_server_error() {
                    tracing::warn!(%method, status = err.status().as_u16(), code = err.code(), port = %preview.port(), error = %err, "request failed");
                } else {
                    tracing::debug!(%method, status = err.status().as_u16(), code = err.code(), port = %preview.port(), "request refused");
                }
                self.pages.render(&err, html)
            }
        }
    }

    async fn preview(
        &self,
        mut req: Request<Incoming>,
        host: &PreviewHost,
        peer: SocketAddr,
        host_value: HeaderValue,
    ) -> Result<Response<Body>, ProxyError> {
        let upgrade = forward::is_upgrade(req.headers()).then(|| req.headers()[UPGRADE].clone());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // Credentials leave the request whether or not this sandbox needs them.
        let (creds, stripped) = Credentials::take(&mut parts.headers, original, host.key());
        let path_and_query = stripped.as_deref().unwrap_or(original);

        let mut set_cookie = None;
        let public = self.control_plane.is_public(host.key()).await?;
        let sandbox_id: Cow<str> = if public && !host.port().is_reserved() {
            Cow::Borrowed(host.key())
        } else {
            let client_ip = auth::client_ip(peer.ip(), &parts.headers, |ip| self.config.is_trusted_proxy(ip));
            let now = unix_now();
            let granted = auth::authenticate(&self.control_plane, &self.signer, host, &creds, client_ip, now).await?;
            if granted.bearer_used {
                parts.headers.remove(AUTHORIZATION);
            }
            if let Some(grant) = granted.cookie {
                let name = auth_cookie::cookie_name(host.key());
                let domain = match &self.config.cookie_domain {
                    Some(d) => Cow::Borrowed(d.as_str()),
                    None => Cow::Owned(format!(".{}", host.as_str())),
                };
                let value = self.signer.sign(&name, &grant, now);
                set_cookie = Some(auth_cookie::set_cookie(&name, value, &domain, self.config.https));
            }
            Cow::Owned(granted.sandbox_id)
        };
        let target = self.control_plane.target(&sandbox_id).await?;
        let uri = forward::upstream_uri(&target, &sandbox_id, host.port(), path_and_query)?;

        let trusted = self.config.is_trusted_proxy(peer.ip());
        let down = Downstream { peer: peer.ip(), trusted, host: host_value, proto: self.proto };
        forward::prepare_request_headers(&mut parts.headers, &down, &target, upgrade);
        parts.uri = uri;
        parts.version = forward::UPSTREAM_VERSION;
        let direct = matches!(target, Target::Direct(_));

        let out = Request::from_parts(parts, Either::Left(body));
        let mut resp = forward::send(&self.client, out, self.config.upstream_timeout, host.port(), direct).await?;
        if !direct && forward::is_empty_bad_gateway(&resp) {
            return Err(ProxyError::PortNotListening(host.port()));
        }
        forward::prepare_response_headers(&mut resp);
        if let Some(cookie) = set_cookie {
            resp.headers_mut().append(SET_COOKIE, cookie);
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                forward::tunnel(client, hyper::upgrade::on(&mut resp));
            }
        }
        Ok(resp.map(Either::Left))
    }

    /// Routes on hosts that are not preview hosts.
    fn own_route(&self, req: &Request<Incoming>, html: bool) -> Response<Body> {
        if req.uri().path() == "/health" && matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut resp = Response::new(Either::Right(Full::new(self.health.clone())));
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        self.pages.render(&ProxyError::NoRoute, html)
    }
}

/// The host the client asked for: the URI's authority (HTTP/2 `:authority`,
/// absolute-form requests) or the `Host` header.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(HOST).cloned(),
    }
}
