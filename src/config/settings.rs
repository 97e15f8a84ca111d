//! Every setting the proxy reads, each declared once: its name (the
//! environment variable; the TOML key is the same in lower case), its
//! default, its help line, and how its text becomes part of [`Config`].
//! Reading, validation and `--help` all go through this table.

use std::net::IpAddr;
use std::path::Path;

use super::parse::*;
use super::{Branding, Config, TlsFiles};

/// One setting. `apply` parses the text and stores it; `dir` is where a
/// relative path starts (the configuration file's folder, or empty).
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub(super) apply: fn(&mut Config, &str, &Path) -> Result<(), String>,
}

/// A setting whose value is parsed by `$parse` into `$field`.
macro_rules! field {
    ($name:literal, $default:literal, $help:literal, $($field:ident).+ = $parse:expr) => {
        Setting {
            name: $name,
            default: $default,
            help: $help,
            apply: |c, v, _| {
                c.$($field).+ = ($parse)(v)?;
                Ok(())
            },
        }
    };
}

/// A setting of an optional group (`Some` once its switch is on): parsed,
/// hence validated, always; stored only when the group exists.
macro_rules! grouped {
    ($name:literal, $default:literal, $help:literal, $group:ident . $field:ident = $parse:expr) => {
        Setting {
            name: $name,
            default: $default,
            help: $help,
            apply: |c, v, _| {
                let v = ($parse)(v)?;
                if let Some(group) = &mut c.$group {
                    group.$field = v;
                }
                Ok(())
            },
        }
    };
}

/// Every setting, in `--help` order. Settings that fill a group (TLS, the
/// warning page, Redis) come after the switch that creates the group.
pub const SETTINGS: &[Setting] = &[
    field!(
        "PROXY_LISTEN_ADDRESS",
        "0.0.0.0",
        "IP address to listen on (the shipped config/proxy.toml uses 127.0.0.1)",
        listen_ip = |v: &str| v.parse::<IpAddr>().map(Some).map_err(|_| "expected an IP address".to_string())
    ),
    field!("PROXY_PORT", "4000", "TCP port to listen on", port = port),
    field!(
        "PROXY_WORKERS",
        "0",
        "worker threads, each with its own listener and upstream pool; 0 = one per CPU",
        workers = |v: &str| match v.parse::<usize>() {
            Ok(0) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
            Ok(n) if n <= 1024 => Ok(n),
            _ => Err("expected a number of threads, 0-1024".to_string()),
        }
    ),
    field!(
        "PROXY_PROTOCOL",
        "http",
        "scheme users see (http|https), also behind a TLS-terminating load balancer",
        https = |v: &str| match v {
            "http" => Ok(false),
            "https" => Ok(true),
            _ => Err("expected http or https".to_string()),
        }
    ),
    field!("PROXY_API_KEY", "", "bearer sent to the Daytona API; required with DAYTONA_API_URL", api_key = secret),
    field!(
        "PROXY_DOMAIN",
        "",
        "domain printed in signed preview URLs (sign-url); empty = preview.localhost:<PROXY_PORT>",
        domain = |v: &str| host_and_port(v).map(|d| d.trim_end_matches('.').to_ascii_lowercase())
    ),
    field!("COOKIE_DOMAIN", "", "Domain of the auth cookie; empty = the request host", cookie_domain = cookie_domain),
    field!(
        "AUTH_COOKIE_SECRET",
        "",
        "secret that signs auth cookies; empty = derived from PROXY_API_KEY (random per process if both are empty)",
        cookie_secret = text
    ),
    field!(
        "OIDC_DOMAIN",
        "",
        "OIDC issuer URL: private previews send browsers to this provider to sign in; empty = no login \
         (with DAYTONA_API_URL, read from the API's GET /config)",
        oidc.issuer = api_url
    ),
    field!("OIDC_CLIENT_ID", "", "the proxy's client id at the OIDC provider", oidc.client_id = header_safe),
    field!(
        "OIDC_CLIENT_SECRET",
        "",
        "the client's secret; empty = a public client (PKCE alone)",
        oidc.client_secret = text
    ),
    field!("OIDC_AUDIENCE", "", "audience to ask access tokens for; empty = none", oidc.audience = header_safe),
    field!(
        "OIDC_PUBLIC_DOMAIN",
        "",
        "the issuer's URL as browsers reach it, when the proxy reaches it by another; empty = OIDC_DOMAIN",
        oidc.public_issuer = api_url
    ),
    field!(
        "DAYTONA_API_URL",
        "",
        "Daytona API base URL (e.g. http://api:3000/api); empty = embedded registry",
        api_url = api_url
    ),
    Setting {
        name: "REGISTRY_FILE",
        default: "config/registry.toml",
        help: "embedded registry file (runners, sandboxes), reloaded on change",
        apply: |c, v, dir| {
            c.registry_file = path(v, dir);
            Ok(())
        },
    },
    field!(
        "REGISTRY_RELOAD_INTERVAL_MS",
        "1000",
        "how often the registry file is checked for changes",
        registry_reload_interval = millis
    ),
    field!(
        "ALLOWED_BASE_DOMAINS",
        "",
        "comma-separated base domains accepted in preview hosts; empty = any",
        allowed_base_domains = |v| list(v)
            .map(|d| domain_name(d.trim_end_matches('.')).map(|d| d.to_ascii_lowercase()))
            .collect::<Result<Vec<_>, _>>()
    ),
    field!(
        "TRUSTED_PROXIES",
        "127.0.0.0/8,::1/128",
        "CIDRs of front proxies whose X-Forwarded-*, Forwarded and X-Real-IP headers are kept; add your load balancer's",
        trusted_proxies = networks
    ),
    field!(
        "API_CLIENT_TIMEOUT_SEC",
        "60",
        "time limit for one control-plane lookup, retries included",
        api_client_timeout = seconds
    ),
    field!(
        "STALE_IF_ERROR_SEC",
        "300",
        "how long an expired runner entry may serve while the control plane is down",
        stale_if_error = seconds_or_zero
    ),
    field!(
        "UPSTREAM_CONNECT_TIMEOUT_SEC",
        "10",
        "time limit to connect to a runner or app",
        upstream_connect_timeout = seconds
    ),
    field!(
        "UPSTREAM_TIMEOUT_SEC",
        "300",
        "time limit for an upstream's response headers (504 after)",
        upstream_timeout = seconds
    ),
    field!(
        "HEADER_READ_TIMEOUT_SEC",
        "10",
        "time limit for a new connection's first bytes and protocol detection, and for a request's headers",
        header_read_timeout = seconds
    ),
    field!(
        "IDLE_TIMEOUT_SEC",
        "75",
        "close an HTTP/1 connection idle this long between requests, or an HTTP/2 one without open streams",
        idle_timeout = seconds
    ),
    field!(
        "REQUEST_BODY_TIMEOUT_SEC",
        "60",
        "a request body that sends nothing for this long gets 408, and its upstream request is aborted",
        request_body_timeout = seconds
    ),
    field!(
        "RESPONSE_IDLE_TIMEOUT_SEC",
        "300",
        "abort the client's answer when the app sends no body bytes for this long (SSE too), or the client reads none of it; 0 = off",
        response_idle_timeout = |v| seconds_or_zero(v).map(|d| (!d.is_zero()).then_some(d))
    ),
    field!(
        "MAX_CONNECTIONS_PER_SANDBOX",
        "0",
        "concurrent requests and WebSocket tunnels per sandbox (over it: 429 with Retry-After); 0 = no limit",
        max_connections_per_sandbox = |v: &str| v.parse::<usize>().map_err(|_| "expected a number, 0 = off".to_string())
    ),
    field!(
        "UPSTREAM_MAX_CONNECTIONS",
        "0",
        "connections per runner or app host (split across workers); a request waits up to UPSTREAM_CONNECT_TIMEOUT_SEC for one; 0 = no limit",
        upstream_max_connections = |v: &str| v.parse::<usize>().map_err(|_| "expected a number, 0 = off".to_string())
    ),
    field!(
        "MAX_CONCURRENT_STREAMS",
        "128",
        "concurrent HTTP/2 streams per client connection",
        max_concurrent_streams = |v: &str| match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a number of streams, at least 1".to_string()),
        }
    ),
    field!(
        "PREVIEW_WARNING_ENABLED",
        "false",
        "show browsers a warning page before a preview's first page load",
        warning = |v| boolean(v).map(|on| on.then(Branding::default))
    ),
    grouped!("PREVIEW_WARNING_PRODUCT_NAME", "this platform", "product name on the warning page", warning.product = header_safe),
    grouped!("PREVIEW_WARNING_LOGO_URL", "", "http(s) URL of a logo for the warning page; empty = none", warning.logo_url = optional_http_url),
    grouped!("PREVIEW_WARNING_ACCENT_COLOR", "#1f6feb", "button colour of the warning page (#rgb or #rrggbb)", warning.accent = hex_colour),
    grouped!("PREVIEW_WARNING_SUPPORT_URL", "", "http(s) support link on the warning page; empty = none", warning.support_url = optional_http_url),
    field!("TOOLBOX_ONLY_MODE", "false", "refuse every preview port except the toolbox (2280)", toolbox_only = boolean),
    field!(
        "ACTIVITY_UPDATE_INTERVAL_SEC",
        "45",
        "at most one last-activity update per sandbox this often",
        activity_dedup = seconds
    ),
    field!(
        "ACTIVITY_KEEPALIVE_INTERVAL_SEC",
        "50",
        "how often open WebSockets and streams renew last activity",
        activity_keepalive = seconds
    ),
    field!(
        "ENABLE_TLS",
        "false",
        "terminate TLS here (h2 and http/1.1 by ALPN)",
        tls = |v| boolean(v).map(|on| on.then(TlsFiles::default))
    ),
    Setting {
        name: "TLS_CERT_FILE",
        default: "",
        help: "default certificate chain (PEM), served when no other name matches",
        apply: |c, v, dir| {
            if let Some(tls) = &mut c.tls {
                let key = tls.default.take().map(|(_, key)| key).unwrap_or_default();
                tls.default = Some((path(v, dir), key));
            }
            Ok(())
        },
    },
    Setting {
        name: "TLS_KEY_FILE",
        default: "",
        help: "private key (PEM) of TLS_CERT_FILE",
        apply: |c, v, dir| {
            if let Some(tls) = &mut c.tls {
                let cert = tls.default.take().map(|(cert, _)| cert).unwrap_or_default();
                tls.default = Some((cert, path(v, dir)));
            }
            Ok(())
        },
    },
    Setting {
        name: "TLS_CERT_DIR",
        default: "",
        help: "directory of <name>.crt + <name>.key pairs, chosen by SNI from their DNS names (exact, then wildcard)",
        apply: |c, v, dir| {
            if let Some(tls) = &mut c.tls {
                tls.dir = (!v.is_empty()).then(|| path(v, dir));
            }
            Ok(())
        },
    },
    field!("TLS_HANDSHAKE_TIMEOUT_SEC", "10", "time limit for a TLS handshake", tls_handshake_timeout = seconds),
    field!(
        "TLS_RELOAD_INTERVAL_SEC",
        "5",
        "how often certificate files are checked for changes",
        tls_reload_interval = seconds
    ),
    field!(
        "TUNNEL_IDLE_TIMEOUT_SEC",
        "3600",
        "close a WebSocket tunnel after this long without traffic either way",
        tunnel_idle_timeout = seconds
    ),
    field!(
        "WAKE_HOLD_SEC",
        "30",
        "how long a client other than a browser is held while its stopped sandbox starts, then forwarded; 0 = answer 503 at once",
        wake_hold = seconds
    ),
    field!(
        "UPSTREAM_HOST_HEADER",
        "upstream",
        "Host header the app sees: upstream (127.0.0.1:<port>, as Daytona's daemon sends) or preview (the preview host)",
        upstream_host_header = upstream_host_header
    ),
    field!(
        "METRICS_PORT",
        "",
        "port for GET /metrics (Prometheus/OpenMetrics text), on PROXY_LISTEN_ADDRESS; empty = off",
        metrics_port = |v: &str| match v {
            "" => Ok(None),
            v => port(v).map(Some),
        }
    ),
    field!(
        "REDIS_HOST",
        "",
        "Redis shared by proxy instances (and the API's cache invalidations); empty = in-process caches only",
        redis = |v: &str| match v {
            "" => Ok(None),
            v if v.contains(['/', ' ', '@']) || v.chars().any(char::is_control) =>
                Err("expected a host name or IP address".to_string()),
            v => Ok(Some((v.to_string(), 6379))),
        }
    ),
    Setting {
        name: "REDIS_PORT",
        default: "6379",
        help: "port of REDIS_HOST",
        apply: |c, v, _| {
            let p = port(v)?;
            if let Some((_, redis_port)) = &mut c.redis {
                *redis_port = p;
            }
            Ok(())
        },
    },
    field!(
        "SHUTDOWN_TIMEOUT_SEC",
        "3600",
        "how long in-flight requests may finish after SIGTERM/SIGINT",
        shutdown_timeout = seconds_or_zero
    ),
    field!(
        "SHUTDOWN_DELAY_SEC",
        "0",
        "after SIGTERM, keep accepting this long while /health answers 503 draining, so load balancers notice first",
        shutdown_delay = seconds_or_zero
    ),
    field!(
        "ACCESS_LOG",
        "on",
        "one log line per request at info (on|off)",
        access_log = boolean
    ),
    field!(
        "LOG_FORMAT",
        "text",
        "text, or json: every log line one JSON object",
        json_logs = |v: &str| match v {
            "text" => Ok(false),
            "json" => Ok(true),
            _ => Err("expected text or json".to_string()),
        }
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_upper_case() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(s.name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{}", s.name);
            assert!(SETTINGS[..i].iter().all(|o| o.name != s.name), "{} twice", s.name);
            assert!(!s.help.is_empty(), "{} has no help", s.name);
        }
    }
}
