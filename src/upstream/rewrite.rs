//! The request and response as the other side must see them (SPEC 6): the
//! upstream URI built byte for byte with `http::Uri`, hop-by-hop headers
//! dropped, `X-Forwarded-*` and the runner's credentials set, a toolbox
//! redirect kept on its route.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, Entry, HeaderName, HeaderValue};
use http::uri::{Parts, PathAndQuery};
use http::{HeaderMap, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};

use crate::config::UpstreamHost;
use crate::control_plane::Target;
use crate::error::ProxyError;
use crate::http::host::Port;
use crate::http::path::has_dot_segment;
use crate::http::{
    remove_hop_by_hop, FORWARDED, X_DAYTONA_AUTHORIZATION, X_FORWARDED_EMAIL, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_PROTO, X_FORWARDED_USER, X_REAL_IP,
};

/// What a request asks for inside the sandbox.
#[derive(Clone, Copy, Debug)]
pub enum Route {
    /// An app's port: `.../toolbox/proxy/{port}{path}` on a runner.
    Port(Port),
    /// The toolbox API: `.../toolbox{path}` on a runner, port 2280 direct.
    Toolbox,
}

/// Builds the upstream URI. The path and query are copied byte for byte;
/// a path with dot segments is refused where it is appended to a prefix
/// (a runner's, or the toolbox's), since the upstream's router could
/// resolve them into another sandbox's prefix.
pub fn upstream_uri(target: &Target, sandbox_id: &str, route: Route, path_and_query: &str) -> Result<Uri, ProxyError> {
    if !path_and_query.starts_with('/') {
        return Err(ProxyError::BadPath);
    }
    let prefixed = matches!(target, Target::Runner(_)) || matches!(route, Route::Toolbox);
    // A byte search: a char pattern costs more, on every request.
    let path = path_and_query.bytes().position(|b| b == b'?').map_or(path_and_query, |q| &path_and_query[..q]);
    if prefixed && has_dot_segment(path) {
        return Err(ProxyError::BadPath);
    }
    match target {
        Target::Runner(runner) => {
            // Built by hand: this runs on every request and `format!` is slow.
            let mut pq = String::with_capacity(runner.prefix.len() + sandbox_id.len() + path_and_query.len() + 40);
            pq.push_str(&runner.prefix);
            pq.push_str("/sandboxes/");
            pq.push_str(sandbox_id);
            match route {
                Route::Port(port) => {
                    pq.push_str("/toolbox/proxy/");
                    push_port(&mut pq, port);
                }
                Route::Toolbox => pq.push_str("/toolbox"),
            }
            pq.push_str(path_and_query);
            // Parts set one by one: `Uri::builder` moves the whole of them
            // through each of its setters.
            let mut parts = Parts::default();
            parts.scheme = Some(runner.scheme.clone());
            parts.authority = Some(runner.authority.clone());
            parts.path_and_query =
                Some(PathAndQuery::from_maybe_shared(Bytes::from(pq)).map_err(|_| ProxyError::BadPath)?);
            Uri::from_parts(parts).map_err(|_| ProxyError::BadPath)
        }
        Target::Direct(host) => {
            let port = match route {
                Route::Port(port) => port,
                Route::Toolbox => Port::TOOLBOX,
            };
            Uri::builder()
                .scheme("http")
                .authority(format!("{host}:{port}"))
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| ProxyError::BadPath)
        }
    }
}

/// Re-prefixes a toolbox redirect's path-absolute `Location` with
/// `/toolbox/{id}` so the client stays on the toolbox route.
pub fn prefix_location(headers: &mut HeaderMap, sandbox_id: &str) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else { return };
    let prefix = format!("/toolbox/{sandbox_id}");
    if !location.starts_with('/') || location.starts_with("//") || location.starts_with(&prefix) {
        return;
    }
    if let Ok(v) = HeaderValue::try_from(format!("{prefix}{location}")) {
        headers.insert(header::LOCATION, v);
    }
}

/// Appends a port's decimal digits.
fn push_port(out: &mut String, port: Port) {
    let n = port.get();
    let mut divisor = 10_000;
    while divisor > 1 && n < divisor {
        divisor /= 10;
    }
    while divisor > 0 {
        out.push(char::from(b'0' + ((n / divisor) % 10) as u8));
        divisor /= 10;
    }
}

/// Facts about the downstream request that shape the forwarded headers.
pub struct Downstream {
    pub peer: IpAddr,
    /// `peer` as a header value, made once per connection.
    pub peer_value: HeaderValue,
    /// The peer is a trusted front proxy: its `X-Forwarded-Host` is kept.
    pub trusted: bool,
    /// Host as the client sent it (`Host` or `:authority`).
    pub host: HeaderValue,
    /// `http` or `https`: the scheme users see.
    pub proto: &'static str,
    /// The `Host` the app sees (`UPSTREAM_HOST_HEADER`).
    pub host_header: UpstreamHost,
    /// The client sent a `Cookie` header (else there are none to join).
    pub cookie: bool,
}

/// Rewrites request headers for the upstream. Headers the proxy injects
/// replace any client-sent value.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    down: &Downstream,
    target: &Target,
    upgrade: Option<HeaderValue>,
) {
    // Only the proxy says who signed in; an untrusted client's own claims
    // about where it comes from reach no app.
    static ALWAYS: [HeaderName; 2] = [X_FORWARDED_USER, X_FORWARDED_EMAIL];
    static UNTRUSTED: [HeaderName; 4] = [X_FORWARDED_USER, X_FORWARDED_EMAIL, FORWARDED, X_REAL_IP];
    remove_hop_by_hop(headers, if down.trusted { &ALWAYS } else { &UNTRUSTED });
    match (down.host_header, target) {
        (UpstreamHost::Preview, _) => headers.insert(header::HOST, down.host.clone()),
        (UpstreamHost::Upstream, Target::Runner(runner)) => headers.insert(header::HOST, runner.host.clone()),
        // Set from the upstream URI by the caller (the upstream request filter).
        (UpstreamHost::Upstream, Target::Direct(_)) => headers.remove(header::HOST),
    };
    if down.cookie {
        join_cookies(headers);
    }

    // One lookup for the usual case, a client that sent none.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(down.peer_value.clone());
        }
        // A value that is not text is replaced, not extended.
        Entry::Occupied(mut prior) => {
            let joined = prior.get().to_str().ok().map(|prior| format!("{prior}, {}", down.peer));
            prior.insert(joined.and_then(|v| HeaderValue::try_from(v).ok()).unwrap_or_else(|| down.peer_value.clone()));
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(down.proto));
    if !(down.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST, down.host.clone());
    }
    // `insert` replaces every value a client sent.
    match target {
        Target::Runner(runner) => headers.insert(X_DAYTONA_AUTHORIZATION, runner.auth.clone()),
        Target::Direct(_) => headers.remove(&X_DAYTONA_AUTHORIZATION),
    };
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// HTTP/2 clients may split `Cookie` into several fields; an HTTP/1.1
/// upstream needs one, joined with `; ` (RFC 9113 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join("; ");
    if let Ok(v) = HeaderValue::try_from(joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// An empty 502 from a runner means the app's port is not answering.
pub fn is_empty_bad_gateway(resp: &Response<Incoming>) -> bool {
    resp.status() == StatusCode::BAD_GATEWAY && resp.body().is_end_stream()
}

/// The request version the upstream gets: always HTTP/1.1.
pub const UPSTREAM_VERSION: Version = Version::HTTP_11;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::Runner;
    use crate::http::KEEP_ALIVE;
    use std::sync::Arc;

    fn runner() -> Target {
        Target::Runner(Arc::new(Runner::new("http://runner:3003", "key").unwrap()))
    }

    fn port(p: &str) -> Port {
        Port::parse(p).unwrap()
    }

    #[test]
    fn runner_uri_keeps_path_and_query_bytes() {
        let cases = [
            "/_next/static/chunks/app/(local)/%40topbar/%5B%5B...slug%5D%5D/page-x.js",
            "/files/%2Ftmp%2Ffoo.txt",
            "/static/js/main.js?a=1&b=%2F&c=+x&d=(y)",
            "/a//b/...",
            "/",
        ];
        for pq in cases {
            let uri = upstream_uri(&runner(), "sbx-1", Route::Port(port("3000")), pq).unwrap();
            assert_eq!(uri.to_string(), format!("http://runner:3003/sandboxes/sbx-1/toolbox/proxy/3000{pq}"));
        }
    }

    #[test]
    fn direct_uri_keeps_path_and_query_bytes() {
        let uri =
            upstream_uri(&Target::Direct("127.0.0.1".into()), "demo", Route::Port(port("8000")), "/x/%2e%2e/y?q=%20")
                .unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:8000/x/%2e%2e/y?q=%20");
    }

    #[test]
    fn runner_uri_refuses_dot_segments() {
        for pq in [
            "/../../B/toolbox/proxy/3000/x",
            "/a/%2e%2e/b",
            "/a/.%2E/b",
            "/a/..\\b",
            "/a\\..\\b",
            "/%2F..%2Fb",
            "/a/./b",
            "/..",
            "/a/..;x/b",
            "/a/%2e",
        ] {
            assert!(
                matches!(upstream_uri(&runner(), "a", Route::Port(port("3000")), pq), Err(ProxyError::BadPath)),
                "{pq}"
            );
        }
    }

    #[test]
    fn toolbox_uri_and_location_prefix() {
        let uri = upstream_uri(&runner(), "sbx", Route::Toolbox, "/files/list?path=%2Ftmp").unwrap();
        assert_eq!(uri.to_string(), "http://runner:3003/sandboxes/sbx/toolbox/files/list?path=%2Ftmp");
        assert!(upstream_uri(&runner(), "sbx", Route::Toolbox, "/../../other/toolbox/x").is_err());
        let direct = upstream_uri(&Target::Direct("127.0.0.1".into()), "sbx", Route::Toolbox, "/version").unwrap();
        assert_eq!(direct.to_string(), "http://127.0.0.1:2280/version");

        let cases = [
            ("/files/", "/toolbox/sbx/files/"),
            ("/toolbox/sbx/x", "/toolbox/sbx/x"),
            ("//evil.com/", "//evil.com/"),
            ("https://runner/x", "https://runner/x"),
        ];
        for (loc, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_static(loc));
            prefix_location(&mut h, "sbx");
            assert_eq!(h[header::LOCATION], want, "{loc}");
        }
    }

    #[test]
    fn ports_print_like_display() {
        for p in [1u16, 9, 10, 99, 100, 2280, 22222, 65535] {
            let mut s = String::new();
            push_port(&mut s, Port::parse(&p.to_string()).unwrap());
            assert_eq!(s, p.to_string());
        }
    }

    #[test]
    fn request_headers_are_rewritten() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("3000-a.proxy.io"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-custom-hop"));
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("customer.example.com"));
        h.insert(X_DAYTONA_AUTHORIZATION, HeaderValue::from_static("Bearer forged"));
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let down = Downstream {
            peer: "10.0.0.9".parse().unwrap(),
            peer_value: HeaderValue::from_static("10.0.0.9"),
            trusted: true,
            host: HeaderValue::from_static("3000-a.proxy.io"),
            proto: "https",
            host_header: UpstreamHost::Upstream,
            cookie: true,
        };
        prepare_request_headers(&mut h, &down, &runner(), None);
        assert_eq!(h[header::HOST], "runner:3003");
        assert!(h.get("x-custom-hop").is_none());
        assert!(h.get(KEEP_ALIVE).is_none() && h.get(header::TE).is_none() && h.get(header::CONNECTION).is_none());
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
        assert_eq!(h[X_FORWARDED_HOST], "customer.example.com");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h.get_all(X_DAYTONA_AUTHORIZATION).iter().collect::<Vec<_>>(), ["Bearer key"]);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);

        let untrusted = Downstream { trusted: false, ..down };
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed.example.com"));
        h.insert(FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_DAYTONA_AUTHORIZATION, HeaderValue::from_static("Bearer forged"));
        prepare_request_headers(&mut h, &untrusted, &Target::Direct("127.0.0.1".into()), None);
        assert_eq!(h[X_FORWARDED_HOST], "3000-a.proxy.io");
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9", "the first hop is the peer");
        assert!(h.get(FORWARDED).is_none() && h.get(X_REAL_IP).is_none(), "an untrusted client's claims go");
        assert!(h.get(header::HOST).is_none(), "direct mode: set from the URI");
        assert!(h.get(X_DAYTONA_AUTHORIZATION).is_none());

        // Several X-Forwarded-For fields: the first is extended, the rest
        // go; one that is not text is replaced by the peer.
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("5.6.7.8"));
        prepare_request_headers(&mut h, &untrusted, &runner(), None);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["1.2.3.4, 10.0.0.9"]);
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        prepare_request_headers(&mut h, &untrusted, &runner(), None);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["10.0.0.9"]);
    }

    #[test]
    fn upgrade_headers_survive() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let down = Downstream {
            peer: "127.0.0.1".parse().unwrap(),
            peer_value: HeaderValue::from_static("127.0.0.1"),
            trusted: true,
            host: HeaderValue::from_static("h"),
            proto: "http",
            host_header: UpstreamHost::Upstream,
            cookie: false,
        };
        prepare_request_headers(&mut h, &down, &runner(), Some(HeaderValue::from_static("websocket")));
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
