//! Leaf helpers every layer may use: header names, hop-by-hop headers,
//! upgrade detection, preview hosts, paths and escaping.

pub mod escape;
pub mod host;
pub mod path;

use http::header::{self, HeaderMap, HeaderName};

pub const X_DAYTONA_AUTHORIZATION: HeaderName = HeaderName::from_static("x-daytona-authorization");
pub const X_DAYTONA_PREVIEW_TOKEN: HeaderName = HeaderName::from_static("x-daytona-preview-token");
pub const X_DAYTONA_DISABLE_CORS: HeaderName = HeaderName::from_static("x-daytona-disable-cors");
pub const X_DAYTONA_SKIP_LAST_ACTIVITY_UPDATE: HeaderName =
    HeaderName::from_static("x-daytona-skip-last-activity-update");
pub const X_DAYTONA_SANDBOX_STATE: HeaderName = HeaderName::from_static("x-daytona-sandbox-state");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// The signed-in person (SPEC 9), set by the proxy only.
pub const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Hop-by-hop headers (RFC 9110 7.6.1, `HTTP2-Settings` of an h2c upgrade,
/// and the legacy ones still seen).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HTTP2_SETTINGS,
];

/// The request headers the proxy reads on every request, marked present
/// in one pass over the names. Most requests lack most of them, and a
/// lookup that finds nothing still hashes the name and probes the map:
/// about 100 instructions each, six a request (callgrind).
#[derive(Clone, Copy, Debug)]
pub struct Present(u8);

impl Present {
    pub const ACCEPT: u8 = 1;
    pub const AUTHORIZATION: u8 = 1 << 1;
    pub const COOKIE: u8 = 1 << 2;
    pub const ORIGIN: u8 = 1 << 3;
    pub const UPGRADE: u8 = 1 << 4;
    /// Any `X-Daytona-*` header.
    pub const X_DAYTONA: u8 = 1 << 5;

    pub fn scan(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= match name.as_str() {
                "accept" => Present::ACCEPT,
                "authorization" => Present::AUTHORIZATION,
                "cookie" => Present::COOKIE,
                "origin" => Present::ORIGIN,
                "upgrade" => Present::UPGRADE,
                other if other.starts_with("x-daytona-") => Present::X_DAYTONA,
                _ => 0,
            };
        }
        Present(bits)
    }

    /// Whether a header (one of the constants above) is present.
    pub fn has(self, header: u8) -> bool {
        self.0 & header != 0
    }
}

/// Whether the request asks for a protocol upgrade (`Connection` holds the
/// `upgrade` token, as in Firefox's `keep-alive, Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && has_token(headers, &header::CONNECTION, "upgrade")
}

/// Whether the request asks to upgrade to WebSocket, the one upgrade the
/// proxy tunnels.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    is_upgrade(headers) && has_token(headers, &header::UPGRADE, "websocket")
}

/// Whether a comma-separated header holds `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, those named in `Connection`, and `also`
/// (headers the caller never passes on). One pass over the names finds the
/// few present (most messages carry `Connection` at most), so only those
/// are looked up again to go: nine removals on every message cost more
/// than the rest of the filter (callgrind).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, also: &[HeaderName]) {
    debug_assert!(also.len() <= 16);
    let mut present = 0u32;
    for name in headers.keys() {
        match hop_by_hop_index(name.as_str()) {
            Some(i) => present |= 1 << i,
            None => {
                if let Some(j) = also.iter().position(|other| other == name) {
                    present |= 1 << (16 + j);
                }
            }
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is HOP_BY_HOP[0]. Its usual values name no header
    // (`close`) or one removed below anyway.
    let connection = headers.get_all(header::CONNECTION);
    if present & 1 != 0 && !connection.iter().all(|v| is_usual_connection(v.as_bytes())) {
        let named: Vec<HeaderName> = connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !is_usual_connection(t.as_bytes()))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for (j, name) in also.iter().enumerate() {
        if present & (1 << (16 + j)) != 0 {
            headers.remove(name);
        }
    }
}

/// The place of a hop-by-hop header in [`HOP_BY_HOP`]. A `match` on the
/// name: comparing with each of the nine cost more than the removals it
/// saved.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    let i = match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        "proxy-authorization" => 7,
        "http2-settings" => 8,
        _ => return None,
    };
    Some(i)
}

/// A `Connection` token (or whole value) that names no header.
fn is_usual_connection(token: &[u8]) -> bool {
    [&b"close"[..], b"keep-alive", b"upgrade"].iter().any(|usual| token.eq_ignore_ascii_case(usual))
}

/// An error and its causes, as one line (a cause that repeats the text
/// before it is left out).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// A header map from `(name, value)` pairs, for tests.
#[cfg(test)]
pub fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs.iter().map(|(k, v)| (HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn upgrade_matches_connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(is_upgrade(&h));
        assert!(is_websocket_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(is_upgrade(&h) && !is_websocket_upgrade(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!is_upgrade(&h));
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-custom-hop"));
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, &[]);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);

        // Only `Connection` present (the usual response), and a hop named
        // after a usual token.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Close, X-Other-Hop"));
        h.insert("x-other-hop", HeaderValue::from_static("1"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        remove_hop_by_hop(&mut h, &[]);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["content-length"]);

        // The usual response: `Connection: keep-alive` alone.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        remove_hop_by_hop(&mut h, &[]);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["content-type"]);
    }

    #[test]
    fn the_index_of_every_hop_by_hop_header_is_its_place() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("content-length"), None);
    }

    #[test]
    fn headers_named_by_the_caller_go_with_the_hop_by_hop_ones() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_USER, HeaderValue::from_static("forged"));
        h.append(X_FORWARDED_USER, HeaderValue::from_static("forged again"));
        h.insert(FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h, &[X_FORWARDED_EMAIL, X_FORWARDED_USER, FORWARDED]);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["accept"]);
    }

    proptest::proptest! {
        /// The scan agrees with a lookup of each header, for any mix of
        /// the names it knows, look-alikes and others, in any case.
        #[test]
        fn present_agrees_with_lookups(names in proptest::collection::vec(0usize..12, 0..10), upper: bool) {
            const POOL: [&str; 12] = [
                "accept", "authorization", "cookie", "origin", "upgrade", "x-daytona-preview-token",
                "x-daytona-skip-preview-warning", "accept-encoding", "cookie2", "x-daytona", "host", "x-origin",
            ];
            let mut h = HeaderMap::new();
            for i in names {
                let name = if upper { POOL[i].to_ascii_uppercase() } else { POOL[i].to_string() };
                h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), http::HeaderValue::from_static("v"));
            }
            let present = Present::scan(&h);
            let daytona = h.keys().any(|n| n.as_str().starts_with("x-daytona-"));
            for (bit, found) in [
                (Present::ACCEPT, h.contains_key(header::ACCEPT)),
                (Present::AUTHORIZATION, h.contains_key(header::AUTHORIZATION)),
                (Present::COOKIE, h.contains_key(header::COOKIE)),
                (Present::ORIGIN, h.contains_key(header::ORIGIN)),
                (Present::UPGRADE, h.contains_key(header::UPGRADE)),
                (Present::X_DAYTONA, daytona),
            ] {
                proptest::prop_assert_eq!(present.has(bit), found, "{:?} {:?}", bit, h);
            }
        }
    }
}
