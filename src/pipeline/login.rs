//! Login for private previews (SPEC 9). A browser navigation that no
//! credential opens goes to the OIDC provider, with its state, nonce, PKCE
//! verifier and return URL in a short-lived signed cookie; `/callback` (on
//! the base host) checks that cookie, has the ID token verified, asks the
//! control plane whether the person may open the sandbox, and sets the auth
//! cookie that also names them to the app. `/logout` clears the proxy's
//! cookies; `/login` starts over with another account.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use super::auth_cookie::{self, Grant, User, LOGIN_COOKIE_PREFIX, LOGIN_LIFETIME};
use super::{Dest, Proxy, RequestCtx};
use crate::control_plane::oidc::Pending;
use crate::control_plane::unix_now;
use crate::error::ProxyError;
use crate::http::escape::{form_decode, push_html, segment};
use crate::http::host::{self, PreviewHost};
use crate::upstream::Body;

/// The routes login adds to the base host.
pub const ROUTES: [&str; 4] = ["/callback", "/logout", "/logout/done", "/login"];

impl Proxy {
    /// Whether a request no credential opened should sign in instead of
    /// getting the 401: login is configured, and it is a browser navigation
    /// to an app port (fetches, WebSockets, API clients, the toolbox never).
    pub(super) fn wants_login(&self, parts: &Parts, dest: &Dest, upgrade: bool) -> bool {
        self.shared.oidc.is_some()
            && matches!(dest, Dest::Preview(host) if !host.port().is_reserved())
            && super::warning_page::is_browser_navigation(&parts.method, &parts.headers, upgrade)
    }

    /// Sends the browser to the provider; `None` when login turns out to be
    /// off (the API's `/config` names no provider).
    pub(super) async fn login_redirect(
        &self,
        parts: &Parts,
        dest: &Dest,
        ctx: &RequestCtx,
    ) -> Result<Option<Response<Body>>, ProxyError> {
        let Some(oidc) = &self.shared.oidc else { return Ok(None) };
        if !oidc.enabled().await? {
            return Ok(None);
        }
        let host = ctx.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default();
        let pq = ctx.path_and_query.as_deref().unwrap_or_else(|| dest.path_and_query(&parts.uri));
        let return_to = format!("{}://{host}{pq}", self.shared.proto);
        let Some((_, base)) = host.split_once('.') else { return Ok(None) };
        self.start_login(base, return_to, false).await.map(Some)
    }

    /// A login for `return_to`: the login cookie and a 302 to the provider.
    async fn start_login(&self, base: &str, return_to: String, again: bool) -> Result<Response<Body>, ProxyError> {
        let Some(oidc) = &self.shared.oidc else { return Err(ProxyError::NoRoute) };
        let redirect_uri = format!("{}://{base}/callback", self.shared.proto);
        let (url, pending) = oidc.begin(&redirect_uri, return_to, again).await?;
        let name = format!("{LOGIN_COOKIE_PREFIX}{}", pending.state);
        let payload = serde_json::to_vec(&pending).unwrap_or_default();
        let value = self.shared.signer.seal(&name, &payload, unix_now() + LOGIN_LIFETIME.as_secs());
        let cookie = auth_cookie::set_cookie_for(&name, value, &self.cookie_domain(base), self.https(), LOGIN_LIFETIME);
        Ok(redirect(&url, cookie.into_iter().collect()))
    }

    /// `/callback`, `/logout`, `/logout/done` and `/login` on the base host.
    pub(super) async fn login_route(
        &self,
        req: &Request<Incoming>,
        ctx: &RequestCtx,
    ) -> Result<Response<Body>, ProxyError> {
        let host = ctx.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        let query = req.uri().query().unwrap_or_default();
        let param = |name: &str| {
            query.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| form_decode(v))
        };
        match req.uri().path() {
            "/callback" => {
                self.callback(
                    req,
                    &host,
                    param("code"),
                    param("state"),
                    param("error"),
                    param("error_description"),
                    ctx,
                )
                .await
            }
            "/login" => {
                let return_to = param("return").unwrap_or_default();
                self.return_host(&return_to, &host)
                    .ok_or(ProxyError::BadLogin("the return address is not a preview on this domain"))?;
                self.start_login(&host, return_to, true).await
            }
            "/logout" => self.logout(req, &host).await,
            _ => Ok(page(StatusCode::OK, "Signed out", "You are signed out of the previews on this domain.")),
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the callback's query parameters, named")]
    async fn callback(
        &self,
        req: &Request<Incoming>,
        base: &str,
        code: Option<String>,
        state: Option<String>,
        error: Option<String>,
        description: Option<String>,
        ctx: &RequestCtx,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(oidc) = &self.shared.oidc else { return Err(ProxyError::NoRoute) };
        if let Some(error) = error {
            return Err(ProxyError::LoginFailed(description.unwrap_or(error)));
        }
        let state = state.ok_or(ProxyError::BadLogin("the provider sent no state"))?;
        let name = format!("{LOGIN_COOKIE_PREFIX}{state}");
        let sealed = auth_cookie::find(req.headers().get_all(COOKIE).iter(), &name)
            .ok_or(ProxyError::BadLogin("no sign-in was started in this browser for this state, or it expired"))?;
        let pending: Pending = self
            .shared
            .signer
            .open(&name, sealed, unix_now())
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(ProxyError::BadLogin("the sign-in cookie is not valid or has expired"))?;
        if !bool::from(pending.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(ProxyError::BadLogin("the state does not match the sign-in"));
        }
        let code = code.ok_or(ProxyError::BadLogin("the provider sent no code"))?;
        let preview = self
            .return_host(&pending.return_to, base)
            .ok_or(ProxyError::BadLogin("the return address is not a preview on this domain"))?;
        let redirect_uri = format!("{}://{base}/callback", self.shared.proto);
        let signed_in = oidc.finish(&redirect_uri, &code, &pending).await?;
        let sandbox_id = preview.key();
        let allowed = self
            .shared
            .control_plane
            .admits(sandbox_id, &signed_in.access_token, signed_in.email.as_deref(), ctx.peer.ip())
            .await?;
        let domain = self.cookie_domain(base);
        let clear = auth_cookie::set_cookie_for(&name, String::new(), &domain, self.https(), std::time::Duration::ZERO);
        if !allowed {
            let switch_url = format!("{}://{base}/login?return={}", self.shared.proto, segment(&pending.return_to));
            tracing::info!(sandbox = sandbox_id, "signed in, but not allowed to open the sandbox");
            return Err(ProxyError::Forbidden { account: signed_in.shown_as, switch_url });
        }
        let user = User { subject: signed_in.subject, email: signed_in.email };
        let grant = Grant { sandbox_id: sandbox_id.to_string(), port: None, user: Some(user) };
        let auth_name = auth_cookie::cookie_name(sandbox_id);
        let value = self.shared.signer.sign(&auth_name, &grant, unix_now());
        let auth = auth_cookie::set_cookie(&auth_name, value, &domain, self.https());
        Ok(redirect(&pending.return_to, clear.into_iter().chain(auth).collect()))
    }

    /// Clears the proxy's cookies on this domain, then the provider's
    /// session when it has an end-session endpoint.
    async fn logout(&self, req: &Request<Incoming>, base: &str) -> Result<Response<Body>, ProxyError> {
        let domain = self.cookie_domain(base);
        let names: Vec<String> = req
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| Some(pair.trim().split_once('=')?.0.to_string()))
            .filter(|n| n.starts_with(auth_cookie::AUTH_COOKIE_PREFIX) || n.starts_with(LOGIN_COOKIE_PREFIX))
            .collect();
        let zero = std::time::Duration::ZERO;
        let cleared = names
            .iter()
            .filter_map(|n| auth_cookie::set_cookie_for(n, String::new(), &domain, self.https(), zero))
            .collect();
        let done = format!("{}://{base}/logout/done", self.shared.proto);
        let target = match &self.shared.oidc {
            Some(oidc) => oidc.end_session(&done).await.unwrap_or(done),
            None => done,
        };
        Ok(redirect(&target, cleared))
    }

    /// The preview host of a return address, if it is one on this proxy's
    /// `base` (no open redirect).
    fn return_host(&self, url: &str, base: &str) -> Option<PreviewHost> {
        let rest = url.strip_prefix(&format!("{}://", self.shared.proto))?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let preview = host::parse(authority, &self.shared.config.allowed_base_domains)?;
        let (_, its_base) = authority.split_once('.')?;
        its_base.eq_ignore_ascii_case(base).then_some(preview)
    }

    /// `COOKIE_DOMAIN`, or the base host without its port: cookies set
    /// there reach every preview under it.
    fn cookie_domain(&self, base: &str) -> String {
        self.shared.config.cookie_domain.clone().unwrap_or_else(|| host::strip_port(base).to_ascii_lowercase())
    }

    fn https(&self) -> bool {
        self.shared.config.https
    }
}

fn redirect(location: &str, cookies: Vec<HeaderValue>) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    resp
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let mut html = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>");
    push_html(&mut html, title);
    html.push_str("</title></head><body><h1>");
    push_html(&mut html, title);
    html.push_str("</h1><p>");
    push_html(&mut html, text);
    html.push_str("</p></body></html>");
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(html))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}
