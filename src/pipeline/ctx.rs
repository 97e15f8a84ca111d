//! What the phases learn about one request ([`RequestCtx`]), where it goes
//! ([`Dest`]), and the client end of its connection ([`Peer`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::cors::Cors;
use crate::error::{wants_html, AuthMethod};
use crate::http::host::{Port, PreviewHost};
use crate::http::{is_websocket_upgrade, Present, X_REQUEST_ID};
use crate::http::{X_DAYTONA_DISABLE_CORS, X_DAYTONA_PREVIEW_TOKEN, X_DAYTONA_SKIP_LAST_ACTIVITY_UPDATE};
use crate::upstream::limit::Permit;
use crate::upstream::rewrite::Route;

/// Headers a forwarded request gains: `X-Request-Id`, `X-Forwarded-For`,
/// `-Proto` and `-Host`, the runner's credentials, and one to spare
/// (`Host`, a kept cookie, a login's `X-Forwarded-User`).
const ADDED_HEADERS: usize = 6;

/// The client end of a connection, with what is derived from it once per
/// connection rather than per request.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The IP as a header value (`X-Forwarded-For`).
    pub ip_value: HeaderValue,
    /// The peer is a front proxy in `TRUSTED_PROXIES`.
    pub trusted: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted: bool) -> Peer {
        Peer { addr, ip_value: ip_value(addr.ip()), trusted }
    }
}

/// An IP as a header value. IPv4 is written octet by octet: `Display`
/// took 1,500 instructions, 3% of a new connection's.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        IpAddr::V4(v4) => {
            let (mut text, mut digits) = (String::with_capacity(15), itoa::Buffer::new());
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string(),
    };
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// What the phases learn about one request, from the first to the log.
pub struct RequestCtx {
    pub started: Instant,
    pub peer: SocketAddr,
    pub peer_value: HeaderValue,
    /// The peer is a trusted front proxy.
    pub trusted: bool,
    pub method: Method,
    /// Which of the headers read on every request it carried.
    pub present: Present,
    /// The client accepts HTML: the proxy's errors become pages.
    pub html: bool,
    pub cors: Cors,
    /// The host the client asked for: the URI's authority (HTTP/2
    /// `:authority`, absolute-form requests) or the `Host` header.
    pub host: Option<HeaderValue>,
    /// Why the request's `Host` cannot be trusted, if it cannot: two of
    /// them (RFC 9112 3.2), or an HTTP/2 `Host` that disagrees with
    /// `:authority` (RFC 9113 8.3.1).
    pub bad_host: Option<&'static str>,
    /// The app port, once the host or route names one.
    pub port: Option<Port>,
    /// The credential that opened a private sandbox (`None`: public).
    pub auth: Option<AuthMethod>,
    /// Who signed in (OIDC), for the app's identity headers.
    pub user: Option<super::auth_cookie::User>,
    /// `X-Daytona-Skip-Last-Activity-Update: true` was sent.
    pub skip_activity: bool,
    /// `X-Daytona-Preview-Token`, taken out of the request.
    pub preview_token: Option<HeaderValue>,
    /// The path and query to forward when taking credentials out changed it.
    pub path_and_query: Option<String>,
    /// The auth cookie to set on the answer.
    pub set_cookie: Option<HeaderValue>,
    /// The client's side of a requested upgrade.
    pub client_upgrade: Option<OnUpgrade>,
    /// `X-Request-Id`: a trusted front proxy's, or made here.
    pub request_id: HeaderValue,
    /// The access log is on for this request.
    pub logged: bool,
    /// The path without the query, for the access log.
    pub path: Option<String>,
    /// The sandbox id or token of the host or route, for the access log.
    pub key: Option<String>,
    /// `key` is a sandbox id the control plane vouched for.
    pub key_verified: bool,
    /// Until the upstream's response head.
    pub upstream: Option<Duration>,
    /// Request body bytes passed on (counted only when logged).
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// The request's place under `MAX_CONNECTIONS_PER_SANDBOX`.
    pub permit: Option<Permit>,
    /// The error code of an answer the proxy made itself.
    pub outcome: Option<&'static str>,
}

impl RequestCtx {
    /// Reads what every phase needs; takes Daytona's control headers out.
    /// `scheme` is the one users see (`PROXY_PROTOCOL`); `log`: the access
    /// log is on. A trusted peer's `X-Request-Id` is kept.
    pub fn new(req: &mut Request<Incoming>, peer: &super::Peer, scheme: &str, log: bool) -> RequestCtx {
        let trusted = peer.trusted;
        // Room for the headers a forwarded request gets, in one step. The
        // first request of a connection has a map sized for its own few
        // headers (later ones reuse a grown one), which grew twice on the
        // way: 770 instructions of `realloc` per connection.
        let _ = req.headers_mut().try_reserve(ADDED_HEADERS);
        // One lookup of `Host` serves the host and its checks.
        let mut hosts = req.headers().get_all(HOST).iter();
        let (host_header, more) = (hosts.next(), hosts.next().is_some());
        let bad_host = match (more, req.version(), host_header, req.uri().authority()) {
            (true, ..) => Some("the request has more than one Host header"),
            (false, Version::HTTP_2, Some(host), Some(authority))
                if !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
            {
                Some("the Host header disagrees with :authority")
            }
            _ => None,
        };
        let host = match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => host_header.cloned(),
        };
        let present = Present::scan(req.headers());
        // Only WebSocket upgrades are tunnelled: any other `Upgrade` (h2c)
        // is dropped with the hop-by-hop headers and served as plain HTTP.
        let client_upgrade = (present.has(Present::UPGRADE) && is_websocket_upgrade(req.headers()))
            .then(|| hyper::upgrade::on(&mut *req));
        let control = match present.has(Present::X_DAYTONA) {
            true => Control::take(req.headers_mut()),
            false => Control::default(),
        };
        let cors = match present.has(Present::ORIGIN) {
            true => Cors::new(req.headers(), scheme, host.as_ref(), control.disable_cors),
            false => Cors::Off,
        };
        // Looked up only where it may be kept: an untrusted client's id is
        // replaced, which `insert` does without a look first.
        let sent = match trusted {
            true => req.headers().get(X_REQUEST_ID).filter(|v| is_request_id(v.as_bytes())),
            false => None,
        };
        let request_id = match sent {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        let logged = log && req.uri().path() != "/health";
        RequestCtx {
            started: crate::clock::now(),
            peer: peer.addr,
            peer_value: peer.ip_value.clone(),
            trusted,
            method: req.method().clone(),
            present,
            html: present.has(Present::ACCEPT) && wants_html(req.headers()),
            cors,
            host,
            bad_host,
            port: None,
            auth: None,
            user: None,
            skip_activity: control.skip_activity,
            preview_token: control.preview_token,
            path_and_query: None,
            set_cookie: None,
            client_upgrade,
            request_id,
            logged,
            path: logged.then(|| req.uri().path().to_string()),
            key: None,
            key_verified: false,
            upstream: None,
            bytes_in: logged.then(Arc::default),
            permit: None,
            outcome: None,
        }
    }
}

/// Daytona's control headers (SPEC 3), taken out of the request at once:
/// none of them reaches the app.
#[derive(Default)]
struct Control {
    disable_cors: bool,
    skip_activity: bool,
    preview_token: Option<HeaderValue>,
}

impl Control {
    /// Called only for a request with an `X-Daytona-*` header: most carry
    /// none, and three long names cost more to hash than to look for.
    fn take(headers: &mut HeaderMap) -> Control {
        let is_true = |v: Option<HeaderValue>| v.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        Control {
            disable_cors: is_true(headers.remove(X_DAYTONA_DISABLE_CORS)),
            skip_activity: is_true(headers.remove(X_DAYTONA_SKIP_LAST_ACTIVITY_UPDATE)),
            preview_token: headers.remove(X_DAYTONA_PREVIEW_TOKEN),
        }
    }
}

/// A 128-bit random id in hex: short, unique, and no secret. Encoded by
/// hand: it runs on every request, and `format!` costs more than the rest
/// of this context together (callgrind).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::random::<u128>();
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
}

/// A front proxy's id is kept when it is printable and not too long.
fn is_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic)
}

/// Where a proxied request goes.
pub enum Dest {
    /// A preview host: `<port>-<key>.<base>`.
    Preview(PreviewHost),
    /// `/toolbox/{id}{path}` on a non-preview host.
    Toolbox { sandbox_id: String, path_and_query: String },
}

impl Dest {
    /// The sandbox id or signed token the request names.
    pub fn key(&self) -> &str {
        match self {
            Dest::Preview(host) => host.key(),
            Dest::Toolbox { sandbox_id, .. } => sandbox_id,
        }
    }

    pub fn route(&self) -> Route {
        match self {
            Dest::Preview(host) => Route::Port(host.port()),
            Dest::Toolbox { .. } => Route::Toolbox,
        }
    }

    pub fn port(&self) -> Port {
        match self {
            Dest::Preview(host) => host.port(),
            Dest::Toolbox { .. } => Port::TOOLBOX,
        }
    }

    /// The path and query to forward, as the client sent them.
    pub fn path_and_query<'a>(&'a self, uri: &'a Uri) -> &'a str {
        match self {
            Dest::Preview(_) => uri.path_and_query().map_or("/", |pq| pq.as_str()),
            Dest::Toolbox { path_and_query, .. } => path_and_query,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::header_map as headers;

    #[test]
    fn request_ids_are_32_random_lowercase_hex_digits() {
        let ids: Vec<HeaderValue> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id:?}");
            assert!(id.as_bytes().iter().all(|b| b"0123456789abcdef".contains(b)), "{id:?}");
        }
        // Each place takes several values: no digit is left out or fixed.
        for i in 0..32 {
            let seen: std::collections::HashSet<u8> = ids.iter().map(|id| id.as_bytes()[i]).collect();
            assert!(seen.len() > 4, "digit {i} took {} values in 64 ids", seen.len());
        }
    }

    #[test]
    fn ip_values_read_as_the_address_does() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "::1", "::ffff:1.2.3.4", "2001:db8::7"] {
            assert_eq!(ip_value(ip.parse().unwrap()), ip);
        }
    }

    proptest::proptest! {
        #[test]
        fn every_ipv4_value_is_its_display(bits: u32) {
            let ip = std::net::Ipv4Addr::from(bits);
            let shown = ip.to_string();
            proptest::prop_assert_eq!(ip_value(ip.into()), shown.as_str());
        }
    }

    #[test]
    fn control_headers_are_read_and_taken_out() {
        let table = [
            (vec![("x-daytona-disable-cors", "TRUE")], (true, false, None)),
            (vec![("x-daytona-disable-cors", "false")], (false, false, None)),
            (vec![("x-daytona-skip-last-activity-update", "true")], (false, true, None)),
            (vec![("x-daytona-preview-token", "tok"), ("cookie", "a=1")], (false, false, Some("tok"))),
            (vec![("x-daytona-other", "1"), ("origin", "https://a")], (false, false, None)),
            (vec![("origin", "https://a")], (false, false, None)),
        ];
        for (pairs, (cors, skip, token)) in table {
            let mut h = headers(&pairs);
            let control = Control::take(&mut h);
            assert_eq!(control.disable_cors, cors, "{pairs:?}");
            assert_eq!(control.skip_activity, skip, "{pairs:?}");
            assert_eq!(control.preview_token.as_ref().map(|v| v.to_str().unwrap()), token, "{pairs:?}");
            for name in [X_DAYTONA_DISABLE_CORS, X_DAYTONA_SKIP_LAST_ACTIVITY_UPDATE, X_DAYTONA_PREVIEW_TOKEN] {
                assert!(!h.contains_key(&name), "{name} reaches the app: {pairs:?}");
            }
            let kept = pairs.iter().filter(|(k, _)| !k.starts_with("x-daytona-") || *k == "x-daytona-other");
            assert_eq!(h.len(), kept.count(), "{pairs:?}");
        }
    }
}
