//! Authentication (SPEC 2): credentials taken out of the request so none
//! reaches the sandbox, then every method tried in order before giving up;
//! and the pipeline's authenticate phase, which also looks a cold sandbox's
//! runner up meanwhile.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{AUTHORIZATION, COOKIE};
use http::request::Parts;
use http::HeaderValue;

use super::auth_cookie::{self, CookieSigner, Grant, User};
use super::{Dest, Proxy, RequestCtx};
use crate::control_plane::{unix_now, ControlPlane, LookupError, Prefetch, Target};
use crate::error::{AuthMethod, Denied, Outcome, ProxyError};
use crate::http::escape::percent_decode;
use crate::http::host::{self, Port};
use crate::http::{Present, X_FORWARDED_FOR};

/// Query parameter carrying the preview token (browsers cannot set headers
/// on `new WebSocket()` or iframes).
pub const QUERY_KEY: &str = "DAYTONA_SANDBOX_AUTH_KEY";

/// Credentials a request carried, already removed from it (except the
/// bearer, which is removed only once it is accepted).
#[derive(Default)]
pub struct Credentials {
    /// The client's address, for the control plane's per-client limits.
    pub client_ip: Option<IpAddr>,
    bearer: Option<String>,
    preview_token: Option<String>,
    query_key: Option<String>,
    cookie: Option<String>,
}

impl Credentials {
    /// Takes the proxy's credentials out of the request: the query
    /// parameter (the rest of the query kept byte for byte) and the proxy's
    /// own cookies. `preview_token`: the `X-Daytona-Preview-Token` header,
    /// already taken out with the other control headers. `present`: the
    /// request's headers, scanned once. Returns the new path and query when
    /// it changed.
    pub fn take(
        headers: &mut http::HeaderMap,
        present: Present,
        preview_token: Option<HeaderValue>,
        path_and_query: &str,
        key: &str,
    ) -> (Credentials, Option<String>) {
        let mut creds = Credentials {
            bearer: present
                .has(Present::AUTHORIZATION)
                .then(|| headers.get(AUTHORIZATION))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            preview_token: preview_token
                .and_then(|v| v.to_str().ok().map(|t| t.trim().to_string()))
                .filter(|t| !t.is_empty()),
            ..Credentials::default()
        };
        // Most requests carry cookies, few carry the proxy's: look before
        // allocating anything.
        if present.has(Present::COOKIE)
            && headers.get_all(COOKIE).iter().any(|v| v.to_str().is_ok_and(auth_cookie::has_proxy_cookie))
        {
            creds.cookie =
                auth_cookie::find(headers.get_all(COOKIE).iter(), &auth_cookie::cookie_name(key)).map(str::to_string);
            strip_cookies(headers);
        }
        let mut new_target = None;
        if let Some((path, query)) = path_and_query.split_once('?') {
            if let Some((value, rest)) = take_query_key(query) {
                creds.query_key = Some(value).filter(|v| !v.is_empty());
                new_target = Some(if rest.is_empty() { path.to_string() } else { format!("{path}?{rest}") });
            }
        }
        (creds, new_target)
    }
}

/// Removes the proxy's cookies from every `Cookie` header, dropping headers
/// left empty.
fn strip_cookies(headers: &mut http::HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    headers.remove(COOKIE);
    for v in values {
        match v.to_str() {
            Ok(text) => {
                if let Some(kept) = auth_cookie::strip_proxy_cookies(text) {
                    if let Ok(kept) = HeaderValue::try_from(kept) {
                        headers.append(COOKIE, kept);
                    }
                }
            }
            Err(_) => {
                headers.append(COOKIE, v);
            }
        }
    }
}

/// Splits `DAYTONA_SANDBOX_AUTH_KEY=<value>` out of a raw query. Returns the
/// percent-decoded value and the remaining query, whose other parameters
/// keep their bytes and order.
pub fn take_query_key(query: &str) -> Option<(String, String)> {
    let is_key = |pair: &&str| pair.split_once('=').map_or(*pair, |(name, _)| name) == QUERY_KEY;
    // Most queries have no key: find it before building anything.
    let first = query.split('&').find(is_key)?;
    let value = percent_decode(first.split_once('=').map_or("", |(_, v)| v));
    let rest = query.split('&').filter(|pair| !is_key(pair)).collect::<Vec<_>>().join("&");
    Some((value, rest))
}

/// A successful authentication.
#[derive(Debug)]
pub struct Granted {
    /// The sandbox to route to (for a signed token, the one it resolves to).
    pub sandbox_id: String,
    /// The credential that was accepted.
    pub method: AuthMethod,
    /// The bearer was the accepted credential: remove it before forwarding.
    pub bearer_used: bool,
    /// A cookie to set so the browser's next requests skip the lookup.
    pub cookie: Option<Grant>,
    /// Who signed in (a cookie minted by an OIDC login).
    pub user: Option<User>,
}

/// Tries every method in order. Control-plane outages are not "invalid":
/// when no method succeeds and one could not be checked, the answer is 503.
/// `key` is the sandbox id or token from the host (or the toolbox path);
/// `signed` says whether it may be a signed preview token.
pub async fn authenticate(
    control_plane: &ControlPlane,
    signer: &CookieSigner,
    key: &str,
    port: Port,
    creds: &Credentials,
    now: u64,
    signed: bool,
) -> Result<Granted, ProxyError> {
    let client_ip = creds.client_ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let granted =
        |method, cookie| Granted { sandbox_id: key.to_string(), method, bearer_used: false, cookie, user: None };
    let mut denied = Denied::default();
    let mut outage: Option<LookupError> = None;
    let mut note = |method, result: Result<bool, LookupError>, denied: &mut Denied| match result {
        Ok(true) => true,
        Ok(false) => {
            denied.0.push((method, Outcome::Rejected));
            false
        }
        Err(e) => {
            if e.is_transient() {
                outage = Some(e);
            }
            denied.0.push((method, Outcome::Rejected));
            false
        }
    };

    match &creds.bearer {
        Some(bearer) => {
            if note(AuthMethod::Bearer, control_plane.has_access(key, bearer, client_ip).await, &mut denied) {
                return Ok(Granted { bearer_used: true, ..granted(AuthMethod::Bearer, None) });
            }
        }
        None => denied.0.push((AuthMethod::Bearer, Outcome::NotSent)),
    }
    match &creds.preview_token {
        Some(token) => {
            if note(AuthMethod::PreviewTokenHeader, control_plane.validate_token(key, token).await, &mut denied) {
                return Ok(granted(AuthMethod::PreviewTokenHeader, None));
            }
        }
        None => denied.0.push((AuthMethod::PreviewTokenHeader, Outcome::NotSent)),
    }
    match &creds.query_key {
        Some(token) => {
            if note(AuthMethod::QueryKey, control_plane.validate_token(key, token).await, &mut denied) {
                // Browsers sent the key in a URL (iframe, WebSocket): a cookie
                // lets the page's other requests through without it.
                return Ok(granted(
                    AuthMethod::QueryKey,
                    Some(Grant { sandbox_id: key.to_string(), port: None, user: None }),
                ));
            }
        }
        None => denied.0.push((AuthMethod::QueryKey, Outcome::NotSent)),
    }
    match creds.cookie.as_deref().map(|v| signer.verify(&auth_cookie::cookie_name(key), v, now)) {
        // A cookie minted from a signed URL (bound to its port) ends when
        // the token is revoked.
        Some(Some(grant))
            if grant.port.is_none_or(|p| p == port.get())
                && !(grant.port.is_some() && control_plane.is_revoked(key)) =>
        {
            return Ok(Granted {
                sandbox_id: grant.sandbox_id,
                method: AuthMethod::Cookie,
                bearer_used: false,
                cookie: None,
                user: grant.user,
            });
        }
        Some(_) => denied.0.push((AuthMethod::Cookie, Outcome::Rejected)),
        None => denied.0.push((AuthMethod::Cookie, Outcome::NotSent)),
    }
    // Signed tokens are lower-case letters and digits; sandbox ids with a
    // dash (UUIDs) are never looked up as tokens.
    if signed && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        match control_plane.resolve_signed(key, port).await {
            Ok(Some(sandbox_id)) => {
                let grant = Grant { sandbox_id: sandbox_id.to_string(), port: Some(port.get()), user: None };
                return Ok(Granted {
                    sandbox_id: sandbox_id.to_string(),
                    method: AuthMethod::SignedUrl,
                    bearer_used: false,
                    cookie: Some(grant),
                    user: None,
                });
            }
            other => {
                note(AuthMethod::SignedUrl, other.map(|_| false), &mut denied);
            }
        }
    } else {
        denied.0.push((AuthMethod::SignedUrl, Outcome::NotSent));
    }

    match outage {
        Some(e) => Err(e.into()),
        None => Err(ProxyError::Unauthorized(denied)),
    }
}

/// The client's address for the control plane: the peer, or when the peer
/// is a trusted front proxy, the nearest untrusted `X-Forwarded-For` hop.
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    hops.iter().rev().copied().find(|ip| !trusted(*ip)).or(hops.first().copied()).unwrap_or(peer)
}

/// The authenticate phase of [`Proxy::handle`].
/// The sandbox id a request may reach (or why not), and its runner when it
/// was looked up at the same time.
type Authenticated<'d> = (Result<Cow<'d, str>, ProxyError>, Option<Result<Target, LookupError>>);

impl Proxy {
    /// Authenticate: takes the credentials out of the request (the control
    /// headers, the preview token among them, left it with the request's
    /// context), then, for a private sandbox or a reserved port, accepts the
    /// first credential the control plane accepts. Returns the sandbox to
    /// route to.
    /// `known_public`: the sandbox's public flag when already looked up.
    async fn authenticate<'d>(
        &self,
        parts: &mut Parts,
        dest: &'d Dest,
        ctx: &mut RequestCtx,
        known_public: Option<bool>,
    ) -> Result<Cow<'d, str>, ProxyError> {
        let key = dest.key();
        if ctx.logged {
            ctx.key = Some(key.to_string());
        }
        let original = dest.path_and_query(&parts.uri);
        let (mut creds, stripped) =
            Credentials::take(&mut parts.headers, ctx.present, ctx.preview_token.take(), original, key);
        if let Some(pq) = stripped {
            ctx.path_and_query = Some(pq);
        }
        let needs_auth = match dest {
            Dest::Preview(host) if host.port().is_reserved() => true,
            Dest::Preview(host) => match known_public {
                Some(public) => !public,
                None => !self.shared.control_plane.is_public(key, host.port()).await?,
            },
            Dest::Toolbox { .. } => true,
        };
        if !needs_auth {
            ctx.key_verified = true;
            return Ok(Cow::Borrowed(key));
        }
        let config = &self.shared.config;
        creds.client_ip = Some(client_ip(ctx.peer.ip(), &parts.headers, |ip| config.is_trusted_proxy(ip)));
        let now = unix_now();
        let signed = matches!(dest, Dest::Preview(_));
        let granted =
            authenticate(&self.shared.control_plane, &self.shared.signer, key, dest.port(), &creds, now, signed)
                .await?;
        ctx.auth = Some(granted.method);
        ctx.user = granted.user;
        ctx.key_verified = granted.method != AuthMethod::SignedUrl;
        if granted.bearer_used {
            parts.headers.remove(AUTHORIZATION);
        }
        if let Some(grant) = granted.cookie {
            let name = auth_cookie::cookie_name(key);
            let domain = match (&config.cookie_domain, dest) {
                (Some(d), _) => d.clone(),
                (None, Dest::Preview(host)) => format!(".{}", host.as_str()),
                (None, Dest::Toolbox { .. }) => {
                    let host = ctx.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default();
                    format!(".{}", host::strip_port(host).to_ascii_lowercase())
                }
            };
            let value = self.shared.signer.sign(&name, &grant, now);
            ctx.set_cookie = auth_cookie::set_cookie(&name, value, &domain, config.https);
        }
        Ok(Cow::Owned(granted.sandbox_id))
    }

    /// Authenticate, and for a sandbox id whose public flag is not cached
    /// look its runner up at the same time, so a cold page waits for one
    /// control-plane round trip, not two. The runner answer is used only
    /// once the request is authorised (a refusal drops it), and only for
    /// a sandbox id: a signed token must be resolved first.
    pub(super) async fn authenticate_and_prefetch<'d>(
        &self,
        parts: &mut Parts,
        dest: &'d Dest,
        ctx: &mut RequestCtx,
    ) -> Authenticated<'d> {
        let key = dest.key();
        let control_plane = &self.shared.control_plane;
        let prefetch = match dest {
            Dest::Preview(_) => control_plane.prefetch(key, ctx.started),
            Dest::Toolbox { .. } => Prefetch::NotASandboxId,
        };
        match prefetch {
            Prefetch::NotASandboxId => return (self.authenticate(parts, dest, ctx, None).await, None),
            Prefetch::Known(public) => return (self.authenticate(parts, dest, ctx, Some(public)).await, None),
            // Boxed: the cold path's futures would size every request's.
            Prefetch::Cold => Box::pin(self.authenticate_cold(parts, dest, ctx)).await,
        }
    }

    /// A sandbox id not seen before: its runner is looked up while the
    /// request is authenticated, and used only once it is authorised.
    async fn authenticate_cold<'d>(
        &self,
        parts: &mut Parts,
        dest: &'d Dest,
        ctx: &mut RequestCtx,
    ) -> Authenticated<'d> {
        let key = dest.key();
        let control_plane = &self.shared.control_plane;
        let mut auth = std::pin::pin!(self.authenticate(parts, dest, ctx, None));
        let mut target = std::pin::pin!(control_plane.target(key));
        let mut early = None;
        let auth = tokio::select! {
            biased;
            auth = &mut auth => auth,
            found = &mut target => {
                early = Some(found);
                auth.await
            }
        };
        match (auth, early) {
            (Err(e), _) => (Err(e), None),
            (Ok(id), _) if id != key => (Ok(id), None),
            (Ok(id), Some(found)) => (Ok(id), Some(found)),
            (Ok(id), None) => (Ok(id), Some(target.await)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_key_is_removed_byte_for_byte() {
        let cases = [
            ("DAYTONA_SANDBOX_AUTH_KEY=tok", Some(("tok", ""))),
            ("a=1&DAYTONA_SANDBOX_AUTH_KEY=tok&b=%2F+x&c", Some(("tok", "a=1&b=%2F+x&c"))),
            ("z=(1)&DAYTONA_SANDBOX_AUTH_KEY=t%6Fk", Some(("tok", "z=(1)"))),
            ("DAYTONA_SANDBOX_AUTH_KEY", Some(("", ""))),
            ("a=1&a=2", None),
            ("daytona_sandbox_auth_key=x", None),
            ("", None),
        ];
        for (query, want) in cases {
            let got = take_query_key(query);
            assert_eq!(got.as_ref().map(|(v, r)| (v.as_str(), r.as_str())), want, "{query}");
        }
    }

    #[test]
    fn credentials_are_taken_out() {
        let mut h = http::HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer api-key"));
        h.append(
            COOKIE,
            HeaderValue::from_static("app=1; daytona-sandbox-auth-sbx=signed; daytona-preview-page-accepted=true"),
        );
        h.append(COOKIE, HeaderValue::from_static("daytona-sandbox-auth-other=x"));
        let present = Present::scan(&h);
        let (c, target) = Credentials::take(
            &mut h,
            present,
            Some(HeaderValue::from_static(" tok ")),
            "/p?x=1&DAYTONA_SANDBOX_AUTH_KEY=q",
            "sbx",
        );
        assert_eq!(c.bearer.as_deref(), Some("api-key"));
        assert_eq!(c.preview_token.as_deref(), Some("tok"));
        assert_eq!(c.query_key.as_deref(), Some("q"));
        assert_eq!(c.cookie.as_deref(), Some("signed"));
        assert_eq!(target.as_deref(), Some("/p?x=1"));
        assert_eq!(h.get_all(COOKIE).iter().collect::<Vec<_>>(), ["app=1"]);
        assert!(h.contains_key(AUTHORIZATION), "the bearer goes only once accepted");
    }

    #[test]
    fn client_ip_skips_trusted_hops() {
        let trusted = |ip: IpAddr| ip.is_loopback() || matches!(ip, IpAddr::V4(v4) if v4.is_private());
        let mut h = http::HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.0.0.2"));
        assert_eq!(client_ip("127.0.0.1".parse().unwrap(), &h, trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            client_ip("8.8.8.8".parse().unwrap(), &h, trusted),
            "8.8.8.8".parse::<IpAddr>().unwrap(),
            "spoofed XFF from an untrusted peer"
        );
    }
}
