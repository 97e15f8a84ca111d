//! The request pipeline. [`Proxy::handle`] and the phases it runs are its
//! table of contents: named phases (pingora's vocabulary) over one
//! [`RequestCtx`], each a method below them in the order it runs.

pub mod access_log;
pub mod auth;
pub mod auth_cookie;
pub mod cors;
mod ctx;
mod log_line;
mod login;
mod own_routes;
mod state;
pub mod warning_page;

use std::future::Future;

use bytes::Bytes;
use http::header::{SET_COOKIE, UPGRADE};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;

use crate::clock;
use crate::config::UpstreamHost;
use crate::control_plane::Target;
use crate::error::ProxyError;
use crate::http::host::{self, Port};
use crate::http::{is_upgrade, remove_hop_by_hop, Present, X_REQUEST_ID};
use crate::http::{X_FORWARDED_EMAIL, X_FORWARDED_USER};
use crate::upstream::body::{is_streaming, UpstreamBody};
use crate::upstream::limit::Holds;
use crate::upstream::pool::{Lease, Outgoing};
use crate::upstream::request_body::ClientBody;
use crate::upstream::rewrite::{self, Downstream};
use crate::upstream::{wake, Body};
use access_log::{Logged, Record};
pub use ctx::{Dest, Peer, RequestCtx};
pub use state::{Proxy, Shared};
use tracing::Instrument;

/// What the request filter decided.
enum Filtered {
    /// The proxy answers itself.
    Answer(Response<Body>),
    /// The request goes to a sandbox.
    Forward(Dest),
}

impl Proxy {
    /// Answers one request. Never fails: errors become negotiated pages.
    ///
    /// Not an `async fn`, nor is `phases`: an `async fn` keeps its
    /// arguments twice in its future (as passed and as moved into its body,
    /// 264 bytes each for a request) and copies one into the other when
    /// first polled; an `async` block keeps what it takes once.
    pub fn handle<'a>(
        &'a self,
        mut req: Request<Incoming>,
        peer: &'a Peer,
    ) -> impl Future<Output = Response<Logged>> + Send + 'a {
        let mut ctx = RequestCtx::new(&mut req, peer, self.shared.proto, self.shared.access_log);
        async move {
            let span = tracing::info_span!("request", id = %ctx.request_id.to_str().unwrap_or("-"));
            // A disabled span is not worth wrapping the phases in (it moves
            // their future once more). Their future is made where it is
            // awaited, never bound to a local first: a future moved into
            // `.await` keeps its first place in the request's future too, which
            // doubled the request's future (39 KB, not 20).
            let result = match span.is_disabled() {
                true => self.phases(req, &mut ctx).await,
                false => self.phases(req, &mut ctx).instrument(span.clone()).await,
            };
            let untraced = span.is_disabled();
            let mut resp = span.in_scope(|| result.unwrap_or_else(|err| self.error_page(err, &mut ctx, untraced)));
            ctx.cors.apply(resp.headers_mut());
            // Unique to this answer: HTTP/2's header table must not keep it
            // (HPACK never indexes a sensitive value), or each answer would
            // push out the entries that do repeat, and be compared with every
            // id before it.
            let mut id = ctx.request_id.clone();
            id.set_sensitive(true);
            resp.headers_mut().insert(X_REQUEST_ID, id);
            // 7. Log.
            self.log(&ctx, resp)
        }
    }

    /// The phases of a request the proxy answers itself or forwards.
    #[allow(clippy::manual_async_fn, reason = "an async fn holds its arguments twice")]
    fn phases<'a>(
        &'a self,
        req: Request<Incoming>,
        ctx: &'a mut RequestCtx,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
        async move {
            // 1. Request filter: preflights, the proxy's own routes, the warning page.
            // The request stays here (it is large: moving it in and out of
            // the filter copied it four times).
            let dest = match self.request_filter(&req, ctx).await? {
                Filtered::Answer(resp) => return Ok(resp),
                Filtered::Forward(dest) => dest,
            };
            // 2. Authenticate (credentials leave the request either way).
            let (mut parts, body) = req.into_parts();
            let (auth, prefetched) = self.authenticate_and_prefetch(&mut parts, &dest, ctx).await;
            let sandbox_id = match auth {
                Err(ProxyError::Unauthorized(denied))
                    if self.wants_login(&parts, &dest, is_upgrade(&parts.headers)) =>
                {
                    match Box::pin(self.login_redirect(&parts, &dest, ctx)).await? {
                        Some(redirect) => return Ok(redirect),
                        None => return Err(ProxyError::Unauthorized(denied)),
                    }
                }
                result => result?,
            };
            // 3. Resolve the target: the runner or app that hosts the sandbox.
            let target = match prefetched {
                Some(target) => target?,
                None => self.shared.control_plane.target(&sandbox_id).await?,
            };
            if let Some(limit) = &self.shared.sandbox_limit {
                let Some(permit) = limit.acquire(&sandbox_id) else {
                    self.shared.metrics.local().limited();
                    return Err(ProxyError::TooManyConnections);
                };
                ctx.permit = Some(permit);
            }
            // 4. Upstream request filter: URI and headers as the upstream must see them.
            self.upstream_request_filter(&mut parts, &dest, &sandbox_id, &target, ctx)?;
            // 5. Send, and wait for the response head.
            let direct = matches!(target, Target::Direct(_));
            // Most requests have no body: nothing to watch or count (and the
            // request moves as a smaller value).
            let body = match hyper::body::Body::is_end_stream(&body) {
                true => Either::Right(Empty::new()),
                false => {
                    let (limit, counts) =
                        (self.shared.config.request_body_timeout, self.shared.metrics.local().clone());
                    Either::Left(Box::new(ClientBody::new(body, limit, ctx.bytes_in.clone(), counts)))
                }
            };
            let key = self.pool.address(&mut parts.uri, dest.port(), direct)?;
            let timeout = self.shared.config.upstream_timeout;
            let sent = clock::now();
            let req = Request::from_parts(parts, body); // put together only here: each move copies it
            let (resp, lease, replay) = self.pool.send(key, req, sent, timeout, dest.port(), direct).await?;
            let upstream = clock::elapsed(sent);
            self.shared.metrics.local().upstream_headers(upstream);
            ctx.upstream = Some(upstream);
            // 6. Response filter: waking, cookies, Location, the upgrade.
            let answer = self.response_filter((resp, lease), &dest, &sandbox_id, direct, replay.as_ref(), ctx).await;
            // A sandbox coming up: clients other than browsers are held
            // until it is up, then the request goes again (SPEC 5). (Not a
            // match on the pair: that copies both, the replay copy too.)
            let starting = matches!(answer, Err(ProxyError::SandboxStarting(_)));
            match replay {
                Some(replay) if starting && self.may_hold(&replay) => {
                    Box::pin(self.hold_and_resend(replay, &dest, &sandbox_id, direct, ctx)).await
                }
                _ => answer,
            }
        }
    }

    /// Holds a request for a sandbox that is coming up until it is up, then
    /// sends it again. Boxed where it is called, as every rare path of a
    /// request: its futures would size every request's future, which is
    /// copied into place for each request (with the login routes boxed
    /// too: 5,824 -> 4,328 bytes).
    async fn hold_and_resend(
        &self,
        replay: Outgoing,
        dest: &Dest,
        sandbox_id: &str,
        direct: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Body>, ProxyError> {
        let hold = self.shared.config.wake_hold;
        wake::hold(&self.shared.control_plane, sandbox_id, hold).await?;
        let timeout = self.shared.config.upstream_timeout;
        let sent = std::time::Instant::now();
        let (resp, lease, _) = self.pool.send(replay.key, replay.req, sent, timeout, dest.port(), direct).await?;
        self.response_filter((resp, lease), dest, sandbox_id, direct, None, ctx).await
    }

    /// Request filter: preflights are answered, then the proxy's own routes
    /// (any non-preview host, and the accept endpoint), then the warning page.
    async fn request_filter(&self, req: &Request<Incoming>, ctx: &mut RequestCtx) -> Result<Filtered, ProxyError> {
        check_request_line(req, ctx)?;
        if ctx.cors.is_preflight(req.method(), req.headers()) {
            let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            ctx.cors.preflight_headers(req.headers(), resp.headers_mut());
            return Ok(Filtered::Answer(resp));
        }
        let host = ctx.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default();
        if req.method() == http::Method::POST && req.uri().path() == warning_page::ACCEPT_PATH {
            let resp = warning_page::accept(req.uri().query(), host, self.shared.config.https);
            return Ok(Filtered::Answer(resp.map(Either::Right)));
        }
        let Some(preview) = host::parse(host, &self.shared.config.allowed_base_domains) else {
            if self.shared.oidc.is_some()
                && req.method() == http::Method::GET
                && login::ROUTES.contains(&req.uri().path())
            {
                // Boxed, as every rare path of a request (see `hold_and_resend`).
                return Ok(Filtered::Answer(Box::pin(self.login_route(req, ctx)).await?));
            }
            return self.own_route(req, ctx);
        };
        ctx.port = Some(preview.port());
        if self.shared.config.toolbox_only && preview.port() != Port::TOOLBOX {
            return Err(ProxyError::NoRoute);
        }
        if let Some(page) = &self.shared.warning {
            let upgrade = ctx.client_upgrade.is_some();
            if warning_page::should_warn(req.method(), req.headers(), preview.port(), upgrade) {
                let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                let url = format!("{}://{host}{pq}", self.shared.proto);
                return Ok(Filtered::Answer(page.render(&url).map(Either::Right)));
            }
        }
        Ok(Filtered::Forward(Dest::Preview(preview)))
    }

    /// Upstream request filter: the upstream URI (path and query byte for
    /// byte), hop-by-hop headers out, `X-Forwarded-*` and the runner's
    /// credentials in.
    fn upstream_request_filter(
        &self,
        parts: &mut Parts,
        dest: &Dest,
        sandbox_id: &str,
        target: &Target,
        ctx: &RequestCtx,
    ) -> Result<(), ProxyError> {
        let pq = ctx.path_and_query.as_deref().unwrap_or_else(|| dest.path_and_query(&parts.uri));
        let uri = rewrite::upstream_uri(target, sandbox_id, dest.route(), pq)?;
        let down = Downstream {
            peer: ctx.peer.ip(),
            peer_value: ctx.peer_value.clone(),
            trusted: ctx.trusted,
            host: ctx.host.clone().unwrap_or(http::HeaderValue::from_static("")),
            proto: self.shared.proto,
            host_header: self.shared.config.upstream_host_header,
            cookie: ctx.present.has(Present::COOKIE),
        };
        let upgrade = ctx.client_upgrade.is_some().then(|| parts.headers.get(UPGRADE).cloned()).flatten();
        rewrite::prepare_request_headers(&mut parts.headers, &down, target, upgrade);
        // An app reached directly sees its own address as `Host` when asked
        // (`UPSTREAM_HOST_HEADER=upstream`); every other request has its
        // `Host` by now, so the pool need not look.
        if let (UpstreamHost::Upstream, Target::Direct(_), Some(authority)) =
            (down.host_header, target, uri.authority())
        {
            if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(http::header::HOST, host);
            }
        }
        if let Some(user) = &ctx.user {
            if let Ok(subject) = http::HeaderValue::from_str(&user.subject) {
                parts.headers.insert(X_FORWARDED_USER, subject);
            }
            if let Some(email) = user.email.as_deref().and_then(|e| http::HeaderValue::from_str(e).ok()) {
                parts.headers.insert(X_FORWARDED_EMAIL, email);
            }
        }
        parts.uri = uri;
        parts.version = rewrite::UPSTREAM_VERSION;
        Ok(())
    }

    /// Response filter: wakes a sandbox its runner says is not running, adds
    /// the auth cookie, keeps a toolbox redirect on its route, records
    /// activity, and joins the two sides of an upgrade.
    async fn response_filter(
        &self,
        (resp, lease): (Response<Incoming>, Lease),
        dest: &Dest,
        sandbox_id: &str,
        direct: bool,
        replay: Option<&Outgoing>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Body>, ProxyError> {
        let port = dest.port();
        let shared = &self.shared;
        if !direct && rewrite::is_empty_bad_gateway(&resp) {
            return Err(ProxyError::PortNotListening(port));
        }
        let mut lease = Some(lease);
        let mut resp = match direct {
            true => resp.map(Either::Left),
            false => {
                // Asked only of an answer that may mean "not running".
                let may_start = || match (ctx.skip_activity, replay) {
                    (true, _) => wake::Start::SkipsActivity,
                    (false, Some(replay)) if wake::is_bot(replay.headers()) => wake::Start::NotABot,
                    (false, _) => wake::Start::Yes,
                };
                match wake::inspect(resp.status(), resp.headers()) {
                    wake::Verdict::Pass => resp.map(Either::Left),
                    wake::Verdict::NotRunning => {
                        wake::check(&shared.control_plane, sandbox_id, may_start()).await?;
                        resp.map(Either::Left)
                    }
                    wake::Verdict::ReadBody => {
                        // A small JSON error: the runner's own "not running"
                        // errors look like this. Read it, then pass it on.
                        let (parts, body) = resp.into_parts();
                        let body = tokio::time::timeout(shared.config.upstream_timeout, body.collect())
                            .await
                            .map_err(|_| ProxyError::UpstreamTimeout(port))?
                            .map_err(|e| ProxyError::UpstreamFailed { port, detail: e.to_string() })?
                            .to_bytes();
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                        if wake::says_not_running(&body) {
                            wake::check(&shared.control_plane, sandbox_id, may_start()).await?;
                        }
                        Response::from_parts(parts, Either::Right(body))
                    }
                }
            }
        };
        // The proxy speaks its own version to the client: an HTTP/1.0 app
        // (Python's http.server) must not cost the client its keep-alive.
        *resp.version_mut() = http::Version::HTTP_11;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            remove_hop_by_hop(resp.headers_mut(), &[]);
        }
        if let Dest::Toolbox { sandbox_id, .. } = dest {
            if resp.status().is_redirection() {
                rewrite::prefix_location(resp.headers_mut(), sandbox_id);
            }
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            resp.headers_mut().append(SET_COOKIE, cookie);
        }
        // The request reached the sandbox: it counts as activity.
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let streaming = matches!(resp.body(), Either::Left(body) if is_streaming(body));
        let activity = match ctx.skip_activity {
            true => None,
            false if upgraded || streaming => Some(shared.activity.hold(sandbox_id, ctx.started)),
            false => {
                shared.activity.touch(sandbox_id, ctx.started);
                None
            }
        };
        let on_close = upgraded.then(|| {
            let record = ctx.logged.then(|| self.record(ctx, StatusCode::SWITCHING_PROTOCOLS));
            let (opened, counts) = (std::time::Instant::now(), shared.metrics.local().clone());
            Box::new(move |up, down| {
                counts.bytes(up, down);
                if let Some(record) = record {
                    record.emit_tunnel(opened, up, down);
                }
            }) as Box<dyn FnOnce(u64, u64) + Send>
        });
        let holds = Holds { activity, permit: ctx.permit.take(), on_close };
        let (parts, body) = resp.into_parts();
        let body = match body {
            Either::Left(body) => body,
            Either::Right(bytes) => return Ok(Response::from_parts(parts, Either::Right(Full::new(bytes)))),
        };
        let mut resp = Response::from_parts(parts, body);
        if let (true, Some(client)) = (upgraded, ctx.client_upgrade.take()) {
            shared.tunnels.spawn(client, hyper::upgrade::on(&mut resp), holds);
            return Ok(resp.map(|b| Either::Left(Box::new(UpstreamBody::new(b, None, Holds::default(), None)))));
        }
        let idle = shared.config.response_idle_timeout;
        Ok(resp.map(|b| Either::Left(Box::new(UpstreamBody::new(b, lease, holds, idle)))))
    }

    /// Whether a request may wait for its sandbox to come up: it has no
    /// body (it has a replay copy), holding is on, and it is neither a
    /// browser navigation (that gets the page that reloads itself) nor a bot.
    fn may_hold(&self, replay: &Outgoing) -> bool {
        let headers = replay.headers();
        !self.shared.config.wake_hold.is_zero()
            && !warning_page::is_browser_navigation(&http::Method::GET, headers, false)
            && !wake::is_bot(headers)
    }

    /// The proxy's own answer for `err`, counted. `untraced`: the request's
    /// span is off (`RUST_LOG=warn`), so the warning names the request id
    /// itself.
    fn error_page(&self, err: ProxyError, ctx: &mut RequestCtx, untraced: bool) -> Response<Body> {
        ctx.outcome = Some(err.code());
        // The host is never logged: its key may be a signed token.
        let (method, status, code) = (&ctx.method, err.status().as_u16(), err.code());
        let port = ctx.port.map(Port::get);
        if err.status().is_server_error() {
            let id = ctx.request_id.to_str().unwrap_or("-");
            match untraced {
                true => tracing::warn!(id = %id, %method, status, code, ?port, error = %err, "request failed"),
                false => tracing::warn!(%method, status, code, ?port, error = %err, "request failed"),
            }
        } else {
            tracing::debug!(%method, status, code, ?port, "request refused");
        }
        self.shared.metrics.local().error(code);
        let id = ctx.request_id.to_str().unwrap_or_default();
        self.shared.pages.render(&err, ctx.html, id).map(Either::Right)
    }

    /// Log: counts the answer; its access-log line is written once the
    /// answer has been sent.
    fn log(&self, ctx: &RequestCtx, resp: Response<Body>) -> Response<Logged> {
        let counts = self.shared.metrics.local();
        counts.response(resp.status(), clock::elapsed(ctx.started));
        let record = ctx.logged.then(|| Box::new(self.record(ctx, resp.status())));
        resp.map(|body| Logged::new(body, record, counts.clone()))
    }

    /// The access-log record of a request so far.
    fn record(&self, ctx: &RequestCtx, status: StatusCode) -> Record {
        let port = ctx.port.map(Port::get);
        Record {
            id: ctx.request_id.clone(),
            client: ctx.peer_value.clone(),
            method: ctx.method.clone(),
            path: ctx.path.clone().unwrap_or_default(),
            status: status.as_u16(),
            sandbox: access_log::logged_sandbox(port, ctx.key.as_deref(), ctx.key_verified),
            port,
            outcome: ctx.outcome.unwrap_or("-"),
            started: ctx.started,
            upstream: ctx.upstream,
            bytes_in: ctx.bytes_in.clone().unwrap_or_default(),
            lines: self.shared.access_lines.clone(),
        }
    }
}

/// Requests no proxy should pass on: `CONNECT` (405: the proxy opens no raw
/// channels), or a `Host` that cannot be trusted ([`RequestCtx::bad_host`]).
fn check_request_line(req: &Request<Incoming>, ctx: &RequestCtx) -> Result<(), ProxyError> {
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    match ctx.bad_host {
        Some(why) => Err(ProxyError::BadRequest(why)),
        None => Ok(()),
    }
}
