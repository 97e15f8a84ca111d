//! The browser warning page (SPEC 4): when it is shown, the page itself
//! (rendered once from a branded template), and the accept endpoint with
//! its cookie and open-redirect guard.

use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use super::auth_cookie::ACCEPTED_COOKIE;
use crate::config::Branding;
use crate::http::escape::{form_decode, push_html, segment};
use crate::http::host::{strip_port, Port};

pub const ACCEPT_PATH: &str = "/accept-daytona-preview-warning";
pub const X_DAYTONA_SKIP_PREVIEW_WARNING: HeaderName = HeaderName::from_static("x-daytona-skip-preview-warning");
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'";
/// User-Agent tokens of the browsers that get the page.
const BROWSERS: [&str; 9] =
    ["chrome/", "chromium/", "firefox/", "safari/", "edg/", "opr/", "brave", "vivaldi", "samsungbrowser"];
const TEMPLATE: &str = include_str!("warning_page.html");

/// Whether a request gets the warning page instead of the preview.
pub fn should_warn(method: &Method, headers: &HeaderMap, port: Port, is_upgrade: bool) -> bool {
    if port.is_reserved() || !is_browser_navigation(method, headers, is_upgrade) {
        return false;
    }
    let header = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if header(X_DAYTONA_SKIP_PREVIEW_WARNING).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    super::auth_cookie::find(headers.get_all(COOKIE).iter(), ACCEPTED_COOKIE).is_none_or(|v| v != "true")
}

/// A person opening a page in a browser: a top-level GET for HTML from a
/// browser's User-Agent. Never a fetch, an upgrade, or an API client.
pub fn is_browser_navigation(method: &Method, headers: &HeaderMap, is_upgrade: bool) -> bool {
    if method != Method::GET || is_upgrade {
        return false;
    }
    let header = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    // Only top-level page loads: fetch(), XHR, scripts and images never.
    if header(SEC_FETCH_MODE).is_some_and(|m| !m.eq_ignore_ascii_case("navigate")) {
        return false;
    }
    if !header(ACCEPT).is_some_and(|a| a.contains("text/html")) {
        return false;
    }
    let ua = header(USER_AGENT).unwrap_or_default().to_ascii_lowercase();
    BROWSERS.iter().any(|b| ua.contains(b))
}

/// The page, branded once at start-up.
pub struct WarningPage {
    html: String,
    csp: HeaderValue,
}

impl WarningPage {
    pub fn new(branding: &Branding) -> WarningPage {
        let esc = |s: &str| {
            let mut out = String::new();
            push_html(&mut out, s);
            out
        };
        let logo = if branding.logo_url.is_empty() {
            String::new()
        } else {
            format!("<img class=\"logo\" src=\"{}\" alt=\"\">", esc(&branding.logo_url))
        };
        let support = if branding.support_url.is_empty() {
            String::new()
        } else {
            format!("<p class=\"small\">Questions? <a href=\"{}\">Contact support</a>.</p>", esc(&branding.support_url))
        };
        let html = TEMPLATE
            .replace("{{product}}", &esc(&branding.product))
            .replace("{{accent}}", &esc(&branding.accent))
            .replace("{{logo}}", &logo)
            .replace("{{support}}", &support);
        // A logo needs an image source; the rest of the policy is the contract's.
        let csp =
            if branding.logo_url.is_empty() { CSP.to_string() } else { format!("{CSP}; img-src https: http: data:") };
        let csp = HeaderValue::try_from(csp).unwrap_or(HeaderValue::from_static(CSP));
        WarningPage { html, csp }
    }

    /// The page for `url` (the full URL the person asked for).
    pub fn render(&self, url: &str) -> Response<Full<Bytes>> {
        let mut shown = String::new();
        push_html(&mut shown, url);
        let mut action = String::from(ACCEPT_PATH);
        action.push_str("?redirect=");
        push_html(&mut action, &segment(url));
        let body = self.html.replacen("{{url}}", &shown, 1).replacen("{{action}}", &action, 1);
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        h.insert(http::header::CONTENT_SECURITY_POLICY, self.csp.clone());
        h.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// `POST /accept-daytona-preview-warning?redirect=...`: sets the accept
/// cookie and redirects, only to the same host or a local path.
pub fn accept(query: Option<&str>, host: &str, https: bool) -> Response<Full<Bytes>> {
    let target =
        query.and_then(|q| q.split('&').find_map(|p| p.strip_prefix("redirect="))).map(form_decode).unwrap_or_default();
    let location = safe_redirect(&target, host).unwrap_or_else(|| "/".to_string());
    let domain = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    let mut c = Cookie::build((ACCEPTED_COOKIE, "true"))
        .max_age(cookie::time::Duration::seconds(86400))
        .path("/")
        .http_only(true)
        .domain(domain);
    c = if https { c.secure(true).same_site(SameSite::None) } else { c.same_site(SameSite::Lax) };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(c.build().to_string()) {
        h.insert(SET_COOKIE, v);
    }
    h.insert(LOCATION, HeaderValue::try_from(location).unwrap_or(HeaderValue::from_static("/")));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The redirect target if it is safe: a path starting with a single `/`, or
/// an http(s) URL on the request's own host. Backslashes count as slashes;
/// control characters, userinfo and other schemes are refused.
pub fn safe_redirect(target: &str, request_host: &str) -> Option<String> {
    if target.is_empty() || target.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    let t = target.replace('\\', "/");
    if t.starts_with('/') {
        return (!t.starts_with("//")).then_some(t);
    }
    let lower = t.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"))?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let want = request_host.trim_end_matches('.').to_ascii_lowercase();
    let same = authority == want || (!authority.contains(':') && authority == strip_port(&want));
    same.then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
    const SAFARI: &str =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15";
    const EDGE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36 Edg/156.0.0.0";
    const NAV_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    fn req(ua: &str, extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(USER_AGENT, HeaderValue::from_str(ua).unwrap());
        h.insert(ACCEPT, HeaderValue::from_static(NAV_ACCEPT));
        h.insert(SEC_FETCH_MODE, HeaderValue::from_static("navigate"));
        for (k, v) in extra {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn port(p: &str) -> Port {
        Port::parse(p).unwrap()
    }

    #[test]
    fn browsers_navigating_get_the_page() {
        for ua in [CHROME, FIREFOX, SAFARI, EDGE] {
            assert!(should_warn(&Method::GET, &req(ua, &[]), port("3000"), false), "{ua}");
        }
    }

    #[test]
    fn everything_else_does_not() {
        for ua in ["curl/8.5.0", "python-requests/2.32.3", "axios/1.7.2", "Go-http-client/1.1", "node", ""] {
            assert!(!should_warn(&Method::GET, &req(ua, &[]), port("3000"), false), "{ua}");
        }
        let p = port("3000");
        assert!(!should_warn(&Method::POST, &req(CHROME, &[]), p, false), "POST");
        assert!(!should_warn(&Method::GET, &req(CHROME, &[]), p, true), "WebSocket upgrade");
        assert!(!should_warn(&Method::GET, &req(CHROME, &[("sec-fetch-mode", "cors")]), p, false), "fetch()");
        assert!(!should_warn(&Method::GET, &req(CHROME, &[("accept", "*/*")]), p, false), "no text/html");
        assert!(!should_warn(&Method::GET, &req(CHROME, &[("x-daytona-skip-preview-warning", "true")]), p, false));
        assert!(!should_warn(
            &Method::GET,
            &req(CHROME, &[("cookie", "a=1; daytona-preview-page-accepted=true")]),
            p,
            false
        ));
        for reserved in ["22222", "2280", "33333"] {
            assert!(!should_warn(&Method::GET, &req(CHROME, &[]), port(reserved), false), "{reserved}");
        }
        // Sec-Fetch-Mode missing (older browsers) still counts as a page load.
        let mut h = req(FIREFOX, &[]);
        h.remove(SEC_FETCH_MODE);
        assert!(should_warn(&Method::GET, &h, p, false));
    }

    #[test]
    fn open_redirects_are_refused() {
        let host = "3000-sbx.proxy.example.com:4000";
        let refused = [
            "https://evil.com/x",
            "//evil.com/x",
            "/\\evil.com",
            "\\\\evil.com",
            "https://3000-sbx.proxy.example.com:4000@evil.com/",
            "https://3000-sbx.proxy.example.com.evil.com/",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,x",
            "/ok\r\nSet-Cookie: x=1",
            "/a\tb",
            "%2F%2Fevil.com",
            "evil.com",
            "http:/evil.com",
            "https://",
            "",
        ];
        for t in refused {
            assert_eq!(safe_redirect(t, host), None, "{t:?}");
        }
        let allowed = [
            ("/dashboard?a=b", "/dashboard?a=b"),
            ("/", "/"),
            ("http://3000-sbx.proxy.example.com:4000/x?y=1", "http://3000-sbx.proxy.example.com:4000/x?y=1"),
            ("https://3000-SBX.proxy.example.com/path", "https://3000-SBX.proxy.example.com/path"),
            ("/a\\b", "/a/b"),
        ];
        for (t, want) in allowed {
            assert_eq!(safe_redirect(t, host).as_deref(), Some(want), "{t:?}");
        }
        assert_eq!(safe_redirect("http://3000-sbx.proxy.example.com:5000/", host), None, "other port");
    }

    #[test]
    fn accept_sets_the_cookie_and_redirects_safely() {
        let resp = accept(Some("redirect=http%3A%2F%2F3000-x.p.io%3A4000%2Fapp%3Fq%3D1"), "3000-x.p.io:4000", false);
        assert_eq!(resp.status(), 302);
        assert_eq!(resp.headers()[LOCATION], "http://3000-x.p.io:4000/app?q=1");
        let c = resp.headers()[SET_COOKIE].to_str().unwrap();
        for attr in [
            "daytona-preview-page-accepted=true",
            "Max-Age=86400",
            "Path=/",
            "HttpOnly",
            "SameSite=Lax",
            "Domain=3000-x.p.io",
        ] {
            assert!(c.contains(attr), "{attr} missing: {c}");
        }
        assert!(!c.contains("Secure"));
        let resp = accept(Some("redirect=https%3A%2F%2Fevil.com%2F"), "3000-x.p.io", true);
        assert_eq!(resp.headers()[LOCATION], "/");
        let c = resp.headers()[SET_COOKIE].to_str().unwrap();
        assert!(c.contains("Secure") && c.contains("SameSite=None"), "{c}");
        assert_eq!(accept(None, "h.io", false).headers()[LOCATION], "/");
    }

    #[tokio::test]
    async fn page_escapes_the_url_and_carries_its_policy() {
        use http_body_util::BodyExt;
        let page = WarningPage::new(&Branding {
            product: "Acme <Preview>".into(),
            logo_url: String::new(),
            accent: "#123456".into(),
            support_url: "https://help.acme.test/?a=1&b=2".into(),
        });
        let resp = page.render("http://3000-x.p.io/\"><script>alert(1)</script>");
        assert_eq!(resp.headers()[http::header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(resp.headers()[http::header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.contains("&quot;&gt;&lt;script&gt;"));
        assert!(body.contains("Acme &lt;Preview&gt;"));
        assert!(body
            .contains("action=\"/accept-daytona-preview-warning?redirect=http%3A%2F%2F3000-x.p.io%2F%22%3E%3Cscript"));
        assert!(body.contains("https://help.acme.test/?a=1&amp;b=2"));
        assert!(!body.contains("{{"), "all placeholders filled");
    }
}
