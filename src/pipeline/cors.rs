//! Default CORS (SPEC 3): every other origin allowed with credentials,
//! preflights answered by the proxy, one value per header on every answer,
//! nothing for same-origin requests, and `X-Daytona-Disable-CORS: true` to
//! turn all of it off for a request.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD,
    ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method};

const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS");
/// A preflight answer depends on what was asked, not only on the origin.
const PREFLIGHT_VARY: HeaderValue =
    HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers");
/// Browsers cache a preflight answer this long (12 h, as Daytona).
const MAX_AGE: HeaderValue = HeaderValue::from_static("43200");

/// What CORS does for one request.
#[derive(Debug, PartialEq)]
pub enum Cors {
    /// Not a CORS request (no `Origin`, or the request's own origin), or
    /// CORS disabled by the client.
    Off,
    /// A cross-origin request: answers echo this origin.
    On { origin: HeaderValue },
}

impl Cors {
    /// Reads the request's CORS facts. `scheme` and `host` are what the
    /// client used (`Host` or `:authority`): an `Origin` equal to them is
    /// same-origin. `disabled`: the client sent `X-Daytona-Disable-CORS: true`.
    pub fn new(headers: &HeaderMap, scheme: &str, host: Option<&HeaderValue>, disabled: bool) -> Cors {
        match headers.get(ORIGIN) {
            Some(origin) if !disabled && !is_same_origin(origin, scheme, host) => Cors::On { origin: origin.clone() },
            _ => Cors::Off,
        }
    }

    /// Whether the request is a preflight the proxy answers itself.
    pub fn is_preflight(&self, method: &Method, headers: &HeaderMap) -> bool {
        matches!(self, Cors::On { .. })
            && method == Method::OPTIONS
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Headers of the proxy's answer to a preflight.
    pub fn preflight_headers(&self, request: &HeaderMap, out: &mut HeaderMap) {
        self.apply(out);
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
        // Allow whatever the page asked for.
        let asked: Vec<&str> =
            request.get_all(ACCESS_CONTROL_REQUEST_HEADERS).iter().filter_map(|v| v.to_str().ok()).collect();
        if !asked.is_empty() {
            if let Ok(v) = HeaderValue::try_from(asked.join(", ")) {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
        }
        out.insert(ACCESS_CONTROL_MAX_AGE, MAX_AGE);
        out.append(VARY, PREFLIGHT_VARY);
    }

    /// Sets the CORS headers on an answer, replacing any the app set, so
    /// each appears once.
    pub fn apply(&self, out: &mut HeaderMap) {
        let Cors::On { origin } = self else { return };
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        let varies = out
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*");
        if !varies {
            out.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Whether `origin` is `{scheme}://{host}` (case-insensitive).
fn is_same_origin(origin: &HeaderValue, scheme: &str, host: Option<&HeaderValue>) -> bool {
    let Some(host) = host else { return false };
    let origin = origin.as_bytes();
    origin.len() == scheme.len() + 3 + host.len()
        && origin[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        && &origin[scheme.len()..scheme.len() + 3] == b"://"
        && origin[scheme.len() + 3..].eq_ignore_ascii_case(host.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::header_map as headers;

    #[test]
    fn origin_is_echoed_with_credentials() {
        let req = headers(&[("origin", "https://app.example.com")]);
        let cors = Cors::new(&req, "https", None, false);
        let mut out = headers(&[
            ("access-control-allow-origin", "http://localhost:8082"),
            ("access-control-allow-credentials", "false"),
        ]);
        cors.apply(&mut out);
        assert_eq!(out.get_all(ACCESS_CONTROL_ALLOW_ORIGIN).iter().collect::<Vec<_>>(), ["https://app.example.com"]);
        assert_eq!(out.get_all(ACCESS_CONTROL_ALLOW_CREDENTIALS).iter().collect::<Vec<_>>(), ["true"]);
        assert_eq!(out[VARY], "Origin");
        cors.apply(&mut out);
        assert_eq!(out.get_all(VARY).iter().count(), 1, "Vary is not repeated");
    }

    #[test]
    fn same_origin_requests_get_no_cors() {
        let host = HeaderValue::from_static("3000-sbx.Preview.io:4000");
        let table = [
            ("https://3000-sbx.preview.io:4000", "https", false),
            ("http://3000-sbx.preview.io:4000", "https", true),
            ("https://3000-sbx.preview.io", "https", true),
            ("https://3000-sbx.preview.io:40000", "https", true),
            ("https://other.io", "https", true),
        ];
        for (origin, scheme, cross) in table {
            let req = headers(&[("origin", origin)]);
            let cors = Cors::new(&req, scheme, Some(&host), false);
            assert_eq!(matches!(cors, Cors::On { .. }), cross, "{origin}");
        }
    }

    #[test]
    fn disabled_cors_is_off() {
        let req = headers(&[("origin", "https://a")]);
        assert_eq!(Cors::new(&req, "https", None, true), Cors::Off);
        assert!(matches!(Cors::new(&req, "https", None, false), Cors::On { .. }));
    }

    #[test]
    fn preflight_detection_and_answer() {
        let req = headers(&[
            ("origin", "https://a"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-custom, content-type"),
        ]);
        let cors = Cors::new(&req, "https", None, false);
        assert!(cors.is_preflight(&Method::OPTIONS, &req));
        assert!(!cors.is_preflight(&Method::GET, &req));
        let mut out = HeaderMap::new();
        cors.preflight_headers(&req, &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_HEADERS], "x-custom, content-type");
        assert!(out[ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap().contains("PUT"));
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a");
        assert_eq!(out[ACCESS_CONTROL_ALLOW_METHODS], "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS");
        assert_eq!(out[ACCESS_CONTROL_MAX_AGE], "43200");
        let vary: Vec<_> = out.get_all(VARY).iter().map(|v| v.to_str().unwrap().to_ascii_lowercase()).collect();
        for v in ["origin", "access-control-request-method", "access-control-request-headers"] {
            assert!(vary.iter().any(|x| x.contains(v)), "Vary lacks {v}: {vary:?}");
        }
        // Without Origin it is not a CORS preflight.
        let plain = headers(&[("access-control-request-method", "PUT")]);
        assert!(!Cors::new(&plain, "https", None, false).is_preflight(&Method::OPTIONS, &plain));
    }
}
