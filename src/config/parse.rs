//! Parsers for setting values: text in, a typed value or a reason out.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// A path; a relative one starts at `dir`.
pub(super) fn path(v: &str, dir: &Path) -> PathBuf {
    match v {
        "" => PathBuf::new(),
        v if Path::new(v).is_relative() => dir.join(v),
        v => PathBuf::from(v),
    }
}

pub(super) fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

pub(super) fn text(v: &str) -> Result<String, String> {
    Ok(v.to_string())
}

/// Text that ends up in a header or a page: no control characters.
pub(super) fn header_safe(v: &str) -> Result<String, String> {
    match v.chars().any(char::is_control) {
        true => Err("control characters are not allowed".into()),
        false => Ok(v.to_string()),
    }
}

pub(super) fn port(v: &str) -> Result<u16, String> {
    v.parse().map_err(|_| "expected a port number 0-65535".into())
}

pub(super) fn seconds(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err("expected a whole number of seconds, at least 1".into()),
    }
}

pub(super) fn seconds_or_zero(v: &str) -> Result<Duration, String> {
    v.parse::<u64>().map(Duration::from_secs).map_err(|_| "expected a whole number of seconds".into())
}

pub(super) fn millis(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
        _ => Err("expected a whole number of milliseconds, at least 1".into()),
    }
}

pub(super) fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub(super) fn networks(v: &str) -> Result<Vec<IpNet>, String> {
    list(v)
        .map(|n| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{n:?} is not a CIDR or IP address"))
        })
        .collect()
}

/// `Domain` of the auth cookie: a host name (a leading dot allowed), since
/// it is written into every `Set-Cookie` the proxy sends.
pub(super) fn cookie_domain(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    domain_name(v.strip_prefix('.').unwrap_or(v))?;
    Ok(Some(v.to_ascii_lowercase()))
}

/// A DNS name: dot-separated labels of letters, digits and `-`.
pub(super) fn domain_name(v: &str) -> Result<&str, String> {
    let valid = !v.is_empty()
        && v.len() <= 253
        && v.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    match valid {
        true => Ok(v),
        false => Err(format!("{v:?} is not a domain name such as preview.example.com")),
    }
}

/// A domain with an optional `:port`, or empty.
pub(super) fn host_and_port(v: &str) -> Result<&str, String> {
    if v.is_empty() {
        return Ok(v);
    }
    let (name, port) = v.rsplit_once(':').map_or((v, None), |(n, p)| (n, Some(p)));
    if let Some(p) = port {
        p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"))?;
    }
    domain_name(name.trim_end_matches('.'))?;
    Ok(v)
}

/// A secret that is sent in a header: printable ASCII only.
pub(super) fn secret(v: &str) -> Result<String, String> {
    match v.bytes().all(|b| b.is_ascii_graphic()) {
        true => Ok(v.to_string()),
        false => Err("only printable ASCII without spaces is allowed (it is sent in a header)".into()),
    }
}

pub(super) fn hex_colour(v: &str) -> Result<String, String> {
    let digits = v.strip_prefix('#').unwrap_or("");
    if matches!(digits.len(), 3 | 6) && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_string())
    } else {
        Err("expected a colour like #1f6feb".into())
    }
}

pub(super) fn optional_http_url(v: &str) -> Result<String, String> {
    if v.is_empty() || ((v.starts_with("https://") || v.starts_with("http://")) && is_absolute_url(v)) {
        Ok(v.to_string())
    } else {
        Err("expected an http:// or https:// URL".into())
    }
}

/// An absolute http(s) URL with a host, as `http::Uri` reads it.
pub(super) fn is_absolute_url(v: &str) -> bool {
    v.parse::<http::Uri>().is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}

pub(super) fn upstream_host_header(v: &str) -> Result<super::UpstreamHost, String> {
    match v.to_ascii_lowercase().as_str() {
        "upstream" => Ok(super::UpstreamHost::Upstream),
        "preview" => Ok(super::UpstreamHost::Preview),
        _ => Err("expected upstream or preview".into()),
    }
}

pub(super) fn api_url(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let uri = v.parse::<http::Uri>().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err("expected an http:// or https:// URL".into());
    }
    Ok(Some(v.trim_end_matches('/').to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_domains() {
        for ok in [".preview.example.com", "example.com", "a-b.c"] {
            assert!(cookie_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["evil .com", "a\u{1}b", ".", "a..b", "a;b", "a/b"] {
            assert!(cookie_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        assert!(api_url("ftp://x").is_err());
        assert!(api_url("http://").is_err());
        assert_eq!(api_url("http://api:3000/api/").unwrap().as_deref(), Some("http://api:3000/api"));
        assert!(optional_http_url("javascript:x").is_err());
        assert!(optional_http_url("https://cdn.example.com/logo.png").is_ok());
    }
}
