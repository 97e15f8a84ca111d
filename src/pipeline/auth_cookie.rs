//! The auth cookie `daytona-sandbox-auth-<key>`: a value the proxy signs
//! (HMAC-SHA256) naming the sandbox id and its own expiry, which the server
//! enforces whatever the browser does.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::Sha256;

/// Prefix of the auth cookie's name; the key from the host follows.
pub const AUTH_COOKIE_PREFIX: &str = "daytona-sandbox-auth-";
/// The warning page's accept cookie, also the proxy's own.
pub const ACCEPTED_COOKIE: &str = "daytona-preview-page-accepted";
/// Lifetime of an auth cookie, enforced on the server.
pub const LIFETIME: Duration = Duration::from_secs(3600);

type HmacSha256 = Hmac<Sha256>;

/// What a cookie grants: a sandbox, on one port (cookies minted from a
/// signed preview URL, whose token is bound to its port) or on any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub sandbox_id: String,
    pub port: Option<u16>,
    /// Who signed in, when an OIDC login minted the cookie.
    pub user: Option<User>,
}

/// An OIDC identity, for `X-Forwarded-User` and `X-Forwarded-Email`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub subject: String,
    pub email: Option<String>,
}

/// Prefix of the short-lived cookies that carry a login to `/callback`.
pub const LOGIN_COOKIE_PREFIX: &str = "preview-proxy-login-";
/// How long a login may take.
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(300);

/// Signs and verifies auth cookies.
#[derive(Clone)]
pub struct CookieSigner {
    key: [u8; 32],
}

impl CookieSigner {
    /// Derives the signing key from a secret (`AUTH_COOKIE_SECRET`, else
    /// `PROXY_API_KEY`), so the raw API key is never the MAC key.
    pub fn new(secret: &[u8]) -> CookieSigner {
        let mut mac = hmac(secret);
        mac.update(b"preview-proxy auth cookie v1");
        CookieSigner { key: mac.finalize().into_bytes().into() }
    }

    /// A signer with a random key: cookies do not survive a restart.
    pub fn random() -> CookieSigner {
        CookieSigner { key: rand::random() }
    }

    /// The MAC binds the cookie's name, so a value cannot move to another key.
    fn mac(&self, name: &str, sandbox_id: &str, port: u16, expires: u64, user: &str) -> HmacSha256 {
        let mut mac = hmac(&self.key);
        mac.update(format!("{name}\n{sandbox_id}\n{port}\n{expires}\n{user}").as_bytes());
        mac
    }

    /// The value for cookie `name` carrying `grant` until `now + LIFETIME`
    /// (`now` in Unix seconds): `sandbox.port.expires.user.tag`, port 0 =
    /// any, user the identity's JSON in base64url or empty.
    pub fn sign(&self, name: &str, grant: &Grant, now: u64) -> String {
        let expires = now + LIFETIME.as_secs();
        let port = grant.port.unwrap_or(0);
        let user = grant.user.as_ref().and_then(|u| serde_json::to_vec(u).ok());
        let user = user.map(|u| URL_SAFE_NO_PAD.encode(u)).unwrap_or_default();
        let tag = self.mac(name, &grant.sandbox_id, port, expires, &user).finalize().into_bytes();
        format!("{}.{port}.{expires}.{user}.{}", grant.sandbox_id, URL_SAFE_NO_PAD.encode(tag))
    }

    /// What a cookie value grants, if its signature is valid for this cookie
    /// `name` and it has not expired. Constant-time comparison.
    pub fn verify(&self, name: &str, value: &str, now: u64) -> Option<Grant> {
        let mut parts = value.rsplitn(5, '.');
        let (tag, user, expires, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let sandbox_id = parts.next()?;
        let expires: u64 = expires.parse().ok()?;
        let port: u16 = port.parse().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(name, sandbox_id, port, expires, user).verify_slice(&tag).ok()?;
        // Valid until its expiry, and never longer than one lifetime from now
        // (a value signed with a far future expiry is not honoured).
        let fresh = now < expires && expires <= now + LIFETIME.as_secs();
        let user = match user {
            "" => None,
            u => Some(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(u).ok()?).ok()?),
        };
        fresh.then(|| Grant { sandbox_id: sandbox_id.to_string(), port: (port != 0).then_some(port), user })
    }

    /// A value for cookie `name` holding `payload` until `expires` (the
    /// login cookie): `payload.expires.tag`, payload in base64url.
    pub fn seal(&self, name: &str, payload: &[u8], expires: u64) -> String {
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let tag = self.mac(name, "sealed", 0, expires, &payload).finalize().into_bytes();
        format!("{payload}.{expires}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The payload of a sealed value, if its signature is valid for `name`
    /// and it has not expired.
    pub fn open(&self, name: &str, value: &str, now: u64) -> Option<Vec<u8>> {
        let mut parts = value.splitn(3, '.');
        let (payload, expires, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let expires: u64 = expires.parse().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(name, "sealed", 0, expires, payload).verify_slice(&tag).ok()?;
        (now < expires && expires <= now + LOGIN_LIFETIME.as_secs()).then(|| URL_SAFE_NO_PAD.decode(payload).ok())?
    }
}

/// The auth cookie's name for the key in the host.
pub fn cookie_name(key: &str) -> String {
    format!("{AUTH_COOKIE_PREFIX}{key}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn find<'a>(cookie_headers: impl Iterator<Item = &'a HeaderValue>, name: &str) -> Option<&'a str> {
    cookie_headers
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Whether a cookie belongs to the proxy and must not reach the sandbox.
fn is_proxy_cookie(pair: &str) -> bool {
    let name = pair.trim().split_once('=').map_or(pair.trim(), |(n, _)| n);
    name.starts_with(AUTH_COOKIE_PREFIX) || name.starts_with(LOGIN_COOKIE_PREFIX) || name == ACCEPTED_COOKIE
}

/// The `Cookie` header without the proxy's cookies; `None` when it keeps no
/// cookie at all. Other cookies keep their bytes and order.
pub fn strip_proxy_cookies(header: &str) -> Option<String> {
    let kept: Vec<&str> = header.split(';').map(str::trim).filter(|p| !p.is_empty() && !is_proxy_cookie(p)).collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Whether a `Cookie` header holds any of the proxy's cookies.
pub fn has_proxy_cookie(header: &str) -> bool {
    header.split(';').any(is_proxy_cookie)
}

/// HMAC-SHA256 keyed with `key`.
#[allow(clippy::expect_used, reason = "HMAC accepts a key of any length; new_from_slice cannot fail")]
fn hmac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// The `Set-Cookie` value: HttpOnly, Path=/, Max-Age one hour; under https
/// `Secure; SameSite=None; Partitioned` so private previews work inside
/// third-party iframes, `SameSite=Lax` under http.
/// `None` when the domain cannot be written into a header.
pub fn set_cookie(name: &str, value: String, domain: &str, https: bool) -> Option<HeaderValue> {
    set_cookie_for(name, value, domain, https, LIFETIME)
}

/// [`set_cookie`] with another lifetime (zero clears the cookie).
pub fn set_cookie_for(name: &str, value: String, domain: &str, https: bool, lifetime: Duration) -> Option<HeaderValue> {
    let mut c = Cookie::build((name.to_string(), value))
        .http_only(true)
        .path("/")
        .max_age(cookie::time::Duration::seconds(lifetime.as_secs() as i64))
        .domain(domain.to_string());
    c = if https { c.secure(true).same_site(SameSite::None).partitioned(true) } else { c.same_site(SameSite::Lax) };
    HeaderValue::try_from(c.build().to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn grant(id: &str) -> Grant {
        Grant { sandbox_id: id.into(), port: None, user: None }
    }

    #[test]
    fn signed_value_verifies_for_its_name_only() {
        let s = CookieSigner::new(b"secret");
        let v = s.sign("daytona-sandbox-auth-a", &grant("a"), NOW);
        assert_eq!(s.verify("daytona-sandbox-auth-a", &v, NOW), Some(grant("a")));
        assert_eq!(s.verify("daytona-sandbox-auth-b", &v, NOW), None, "renamed cookie");
        assert_eq!(CookieSigner::new(b"other").verify("daytona-sandbox-auth-a", &v, NOW), None, "other secret");
    }

    #[test]
    fn tampering_is_rejected() {
        let s = CookieSigner::new(b"secret");
        let v = s.sign("n", &Grant { sandbox_id: "sandbox-a".into(), port: Some(3000), user: None }, NOW);
        let swapped = v.replacen("sandbox-a", "sandbox-b", 1);
        let later = v.replacen(&(NOW + 3600).to_string(), &(NOW + 3599).to_string(), 1);
        let any_port = v.replacen(".3000.", ".0.", 1);
        for bad in
            [swapped.as_str(), later.as_str(), any_port.as_str(), "", "a.b", "a.0.1.x", "sandbox-a", &v[..v.len() - 2]]
        {
            assert_eq!(s.verify("n", bad, NOW), None, "{bad}");
        }
    }

    #[test]
    fn expires_after_one_hour_whatever_the_browser_does() {
        let s = CookieSigner::new(b"secret");
        let v = s.sign("n", &grant("a"), NOW);
        assert!(s.verify("n", &v, NOW + 3599).is_some());
        assert!(s.verify("n", &v, NOW + 3600).is_none());
        assert!(s.verify("n", &v, NOW + 86400 * 30).is_none());
        // A value signed for the far future is not honoured either.
        let future = s.sign("n", &grant("a"), NOW + 86400);
        assert!(s.verify("n", &future, NOW).is_none());
    }

    #[test]
    fn port_bound_grants_round_trip() {
        let s = CookieSigner::new(b"secret");
        let g = Grant { sandbox_id: "3a828150-1573-42e3-bf9f-9793a2c2c0c2".into(), port: Some(5173), user: None };
        let v = s.sign("daytona-sandbox-auth-tok", &g, NOW);
        assert_eq!(s.verify("daytona-sandbox-auth-tok", &v, NOW), Some(g));
    }

    #[test]
    fn identities_round_trip_and_cannot_be_swapped() {
        let s = CookieSigner::new(b"secret");
        let user = |email: &str| Some(User { subject: "sub-1".into(), email: Some(email.into()) });
        let g = Grant { sandbox_id: "a".into(), port: None, user: user("alice@example.com") };
        let v = s.sign("n", &g, NOW);
        assert_eq!(s.verify("n", &v, NOW), Some(g));
        let other = s.sign("n", &Grant { sandbox_id: "a".into(), port: None, user: user("mallory@example.com") }, NOW);
        let (other_user, mine) = (other.split('.').nth(3).unwrap(), v.split('.').nth(3).unwrap());
        assert_eq!(s.verify("n", &v.replacen(mine, other_user, 1), NOW), None);
    }

    #[test]
    fn sealed_values_open_for_their_name_until_they_expire() {
        let s = CookieSigner::new(b"secret");
        let v = s.seal("login-x", b"{\"state\":\"x\"}", NOW + 300);
        assert_eq!(s.open("login-x", &v, NOW).as_deref(), Some(&b"{\"state\":\"x\"}"[..]));
        assert_eq!(s.open("login-y", &v, NOW), None, "renamed");
        assert_eq!(s.open("login-x", &v, NOW + 300), None, "expired");
        assert_eq!(s.open("login-x", &v.replacen('e', "f", 1), NOW), None, "tampered");
        assert_eq!(s.open("login-x", &s.seal("login-x", b"x", NOW + 3600), NOW), None, "too long");
    }

    #[test]
    fn finds_cookies_across_headers() {
        let headers = [HeaderValue::from_static("a=1; daytona-sandbox-auth-x=v1"), HeaderValue::from_static("b=2")];
        assert_eq!(find(headers.iter(), "daytona-sandbox-auth-x"), Some("v1"));
        assert_eq!(find(headers.iter(), "b"), Some("2"));
        assert_eq!(find(headers.iter(), "daytona-sandbox-auth"), None);
    }

    #[test]
    fn strips_only_proxy_cookies() {
        let h = "session=abc; daytona-sandbox-auth-x=v; theme=dark;daytona-preview-page-accepted=true";
        assert!(has_proxy_cookie(h));
        assert_eq!(strip_proxy_cookies(h).as_deref(), Some("session=abc; theme=dark"));
        assert_eq!(strip_proxy_cookies("daytona-sandbox-auth-x=v"), None);
        assert!(!has_proxy_cookie("session=abc; daytona=1"));
    }

    #[test]
    fn set_cookie_attributes_follow_the_protocol() {
        let https = set_cookie("daytona-sandbox-auth-x", "v".into(), ".3000-x.proxy.io", true).unwrap();
        let s = https.to_str().unwrap();
        for attr in
            ["HttpOnly", "Path=/", "Max-Age=3600", "Secure", "SameSite=None", "Partitioned", "Domain=3000-x.proxy.io"]
        {
            assert!(s.contains(attr), "{attr} missing in {s}");
        }
        let http = set_cookie("daytona-sandbox-auth-x", "v".into(), "proxy.io", false).unwrap();
        let s = http.to_str().unwrap();
        assert!(s.contains("SameSite=Lax") && !s.contains("Secure") && !s.contains("Partitioned"), "{s}");
    }
}
