//! Settings: one table of names, defaults and help; read from a TOML file and
//! the environment (environment wins), validated once, all errors together.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::tls::TlsFiles;
use crate::warning_page::Branding;

/// One setting: its environment name (the TOML key is the same in lower
/// case), its default, and what it does.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Every setting the proxy reads. `--help` prints this table.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "PROXY_LISTEN_ADDRESS",
        default: "0.0.0.0",
        help: "IP address to listen on (the shipped config/proxy.toml uses 127.0.0.1)",
    },
    Setting { name: "PROXY_PORT", default: "4000", help: "TCP port to listen on" },
    Setting {
        name: "PROXY_WORKERS",
        default: "0",
        help: "worker threads, each with its own listener and upstream pool; 0 = one per CPU",
    },
    Setting {
        name: "PROXY_PROTOCOL",
        default: "http",
        help: "scheme users see (http|https), also behind a TLS-terminating load balancer",
    },
    Setting {
        name: "PROXY_API_KEY",
        default: "",
        help: "bearer sent to the Daytona API; required with DAYTONA_API_URL",
    },
    Setting {
        name: "PROXY_DOMAIN",
        default: "",
        help: "domain printed in signed preview URLs (sign-url); empty = preview.localhost:<PROXY_PORT>",
    },
    Setting { name: "COOKIE_DOMAIN", default: "", help: "Domain of the auth cookie; empty = the request host" },
    Setting {
        name: "AUTH_COOKIE_SECRET",
        default: "",
        help:
            "secret that signs auth cookies; empty = derived from PROXY_API_KEY (random per process if both are empty)",
    },
    Setting {
        name: "DAYTONA_API_URL",
        default: "",
        help: "Daytona API base URL (e.g. http://api:3000/api); empty = embedded registry",
    },
    Setting {
        name: "REGISTRY_FILE",
        default: "config/registry.toml",
        help: "embedded registry file (runners, sandboxes), reloaded on change",
    },
    Setting {
        name: "REGISTRY_RELOAD_INTERVAL_MS",
        default: "1000",
        help: "how often the registry file is checked for changes",
    },
    Setting {
        name: "ALLOWED_BASE_DOMAINS",
        default: "",
        help: "comma-separated base domains accepted in preview hosts; empty = any",
    },
    Setting {
        name: "TRUSTED_PROXIES",
        default: "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
        help: "CIDRs whose X-Forwarded-Host is kept (front proxies)",
    },
    Setting {
        name: "API_CLIENT_TIMEOUT_SEC",
        default: "60",
        help: "time limit for one control-plane lookup, retries included",
    },
    Setting {
        name: "STALE_IF_ERROR_SEC",
        default: "300",
        help: "how long an expired runner entry may serve while the control plane is down",
    },
    Setting { name: "UPSTREAM_CONNECT_TIMEOUT_SEC", default: "10", help: "time limit to connect to a runner or app" },
    Setting {
        name: "UPSTREAM_TIMEOUT_SEC",
        default: "300",
        help: "time limit for an upstream's response headers (504 after)",
    },
    Setting { name: "HEADER_READ_TIMEOUT_SEC", default: "10", help: "time limit for a client to send request headers" },
    Setting {
        name: "PREVIEW_WARNING_ENABLED",
        default: "false",
        help: "show browsers a warning page before a preview's first page load",
    },
    Setting {
        name: "PREVIEW_WARNING_PRODUCT_NAME",
        default: "this platform",
        help: "product name on the warning page",
    },
    Setting {
        name: "PREVIEW_WARNING_LOGO_URL",
        default: "",
        help: "http(s) URL of a logo for the warning page; empty = none",
    },
    Setting {
        name: "PREVIEW_WARNING_ACCENT_COLOR",
        default: "#1f6feb",
        help: "button colour of the warning page (#rgb or #rrggbb)",
    },
    Setting {
        name: "PREVIEW_WARNING_SUPPORT_URL",
        default: "",
        help: "http(s) support link on the warning page; empty = none",
    },
    Setting {
        name: "TOOLBOX_ONLY_MODE",
        default: "false",
        help: "refuse every preview port except the toolbox (2280)",
    },
    Setting {
        name: "ACTIVITY_UPDATE_INTERVAL_SEC",
        default: "45",
        help: "at most one last-activity update per sandbox this often",
    },
    Setting {
        name: "ACTIVITY_KEEPALIVE_INTERVAL_SEC",
        default: "50",
        help: "how often open WebSockets and streams renew last activity",
    },
    Setting { name: "ENABLE_TLS", default: "false", help: "terminate TLS here (h2 and http/1.1 by ALPN)" },
    Setting {
        name: "TLS_CERT_FILE",
        default: "",
        help: "default certificate chain (PEM), served when no other name matches",
    },
    Setting { name: "TLS_KEY_FILE", default: "", help: "private key (PEM) of TLS_CERT_FILE" },
    Setting {
        name: "TLS_CERT_DIR",
        default: "",
        help: "directory of <name>.crt + <name>.key pairs, chosen by SNI from their DNS names (exact, then wildcard)",
    },
    Setting { name: "TLS_HANDSHAKE_TIMEOUT_SEC", default: "10", help: "time limit for a TLS handshake" },
    Setting {
        name: "TLS_RELOAD_INTERVAL_SEC",
        default: "5",
        help: "how often certificate files are checked for changes",
    },
    Setting {
        name: "TUNNEL_IDLE_TIMEOUT_SEC",
        default: "3600",
        help: "close a WebSocket tunnel after this long without traffic either way",
    },
    Setting {
        name: "METRICS_PORT",
        default: "",
        help: "port for GET /metrics (Prometheus text), on PROXY_LISTEN_ADDRESS; empty = off",
    },
    Setting {
        name: "REDIS_HOST",
        default: "",
        help: "Redis shared by proxy instances (and the API's cache invalidations); empty = in-process caches only",
    },
    Setting { name: "REDIS_PORT", default: "6379", help: "port of REDIS_HOST" },
    Setting {
        name: "SHUTDOWN_TIMEOUT_SEC",
        default: "3600",
        help: "how long in-flight requests may finish after SIGTERM/SIGINT",
    },
];

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// `https` when users see https (cookies get `Secure`).
    pub https: bool,
    pub api_key: String,
    /// Domain for printed preview URLs, with port if any.
    pub domain: String,
    /// `Domain` of auth cookies; `None`: the request host.
    pub cookie_domain: Option<String>,
    /// Secret for auth cookies; empty: derived from `api_key`.
    pub cookie_secret: String,
    /// Base URL of the Daytona API, without a trailing slash.
    pub api_url: Option<String>,
    pub registry_file: PathBuf,
    pub registry_reload_interval: Duration,
    pub allowed_base_domains: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub api_client_timeout: Duration,
    pub stale_if_error: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_port: Option<u16>,
    /// The shared cache's host and port, when REDIS_HOST is set.
    pub redis: Option<(String, u16)>,
    /// `Some` when ENABLE_TLS is set.
    pub tls: Option<TlsFiles>,
    pub tls_handshake_timeout: Duration,
    pub tls_reload_interval: Duration,
    /// `None`: no warning page.
    pub warning: Option<Branding>,
    pub toolbox_only: bool,
    pub activity_dedup: Duration,
    pub activity_keepalive: Duration,
    pub cache: CacheTtls,
}

/// Lookup cache lifetimes (SPEC 5); fixed by the contract, adjustable in tests.
#[derive(Debug, Clone)]
pub struct CacheTtls {
    pub runner_ttl: Duration,
    pub public_ttl: Duration,
    pub valid_credential_ttl: Duration,
    pub invalid_credential_ttl: Duration,
    /// With a shared cache, how long an instance keeps an entry itself: the
    /// longest an API-side invalidation takes to reach it.
    pub shared_local_ttl: Duration,
}

impl Default for CacheTtls {
    fn default() -> Self {
        CacheTtls {
            runner_ttl: Duration::from_secs(120),
            public_ttl: Duration::from_secs(3600),
            valid_credential_ttl: Duration::from_secs(120),
            invalid_credential_ttl: Duration::from_secs(5),
            shared_local_ttl: Duration::from_secs(5),
        }
    }
}

/// All problems found in the settings, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads `file` (if given; `required` says whether a missing file is an
    /// error) and overrides it with `env`.
    pub fn load(file: &Path, required: bool, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(e) => return Err(ConfigError(vec![format!("{}: cannot read: {e}", file.display())])),
        };
        let table = match text {
            Some(text) => toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError(vec![format!("{}: {}", file.display(), e.message())]))?,
            None => toml::Table::new(),
        };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::from_sources(&table, &dir, env)
    }

    /// Builds the settings from a parsed file (paths in it are relative to
    /// `file_dir`) and the environment.
    pub fn from_sources(
        file: &toml::Table,
        file_dir: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut s = Sources { file, file_dir, env, errors: Vec::new() };
        for key in file.keys() {
            if !SETTINGS.iter().any(|st| st.name.eq_ignore_ascii_case(key)) {
                s.errors.push(format!("{key}: unknown setting in the configuration file"));
            }
        }
        let address = s.get("PROXY_LISTEN_ADDRESS", |v| {
            v.parse::<IpAddr>().map(Some).map_err(|_| "expected an IP address".into())
        });
        let workers = s.get("PROXY_WORKERS", |v| match v.parse::<usize>() {
            Ok(0) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
            Ok(n) if n <= 1024 => Ok(n),
            _ => Err("expected a number of threads, 0-1024".into()),
        });
        let port: u16 = s.get("PROXY_PORT", |v| v.parse().map_err(|_| "expected a port number 0-65535".into()));
        let https = s.get("PROXY_PROTOCOL", |v| match v {
            "http" => Ok(false),
            "https" => Ok(true),
            _ => Err("expected http or https".into()),
        });
        let api_key = s.get("PROXY_API_KEY", |v| Ok(v.to_string()));
        let api_url = s.get("DAYTONA_API_URL", parse_api_url);
        let domain = s.get("PROXY_DOMAIN", |v| Ok(v.trim_end_matches('.').to_ascii_lowercase()));
        let cookie_domain = s.get("COOKIE_DOMAIN", |v| Ok((!v.is_empty()).then(|| v.to_ascii_lowercase())));
        let cookie_secret = s.get("AUTH_COOKIE_SECRET", |v| Ok(v.to_string()));
        if api_url.is_some() && api_key.is_empty() {
            s.errors.push("PROXY_API_KEY: required when DAYTONA_API_URL is set".into());
        }
        let registry_file = s.get_path("REGISTRY_FILE");
        let registry_reload_interval = s.get("REGISTRY_RELOAD_INTERVAL_MS", millis);
        let allowed_base_domains = s.get("ALLOWED_BASE_DOMAINS", |v| {
            Ok(list(v).map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect())
        });
        let trusted_proxies = s.get("TRUSTED_PROXIES", |v| {
            list(v)
                .map(|n| {
                    n.parse::<IpNet>()
                        .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| format!("{n:?} is not a CIDR or IP address"))
                })
                .collect()
        });
        let api_client_timeout = s.get("API_CLIENT_TIMEOUT_SEC", seconds);
        let stale_if_error = s.get("STALE_IF_ERROR_SEC", seconds_or_zero);
        let upstream_connect_timeout = s.get("UPSTREAM_CONNECT_TIMEOUT_SEC", seconds);
        let upstream_timeout = s.get("UPSTREAM_TIMEOUT_SEC", seconds);
        let header_read_timeout = s.get("HEADER_READ_TIMEOUT_SEC", seconds);
        let shutdown_timeout = s.get("SHUTDOWN_TIMEOUT_SEC", seconds_or_zero);
        let tunnel_idle_timeout = s.get("TUNNEL_IDLE_TIMEOUT_SEC", seconds);
        let metrics_port = s.get("METRICS_PORT", |v| match v {
            "" => Ok(None),
            v => v.parse::<u16>().map(Some).map_err(|_| "expected a port number 0-65535".into()),
        });
        let redis_host = s.get("REDIS_HOST", |v| match v.contains(['/', ' ', '@']) {
            true => Err("expected a host name or IP address".into()),
            false => Ok(v.to_string()),
        });
        let redis_port: u16 = s.get("REDIS_PORT", |v| v.parse().map_err(|_| "expected a port number 0-65535".into()));
        let tls_enabled = s.get("ENABLE_TLS", boolean);
        let cert = s.get_path("TLS_CERT_FILE");
        let key = s.get_path("TLS_KEY_FILE");
        let cert_dir = s.get_path("TLS_CERT_DIR");
        let tls_handshake_timeout = s.get("TLS_HANDSHAKE_TIMEOUT_SEC", seconds);
        let tls_reload_interval = s.get("TLS_RELOAD_INTERVAL_SEC", seconds);
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if set(&cert) != set(&key) {
            s.errors.push("TLS_CERT_FILE and TLS_KEY_FILE: set both or neither".into());
        }
        if tls_enabled && !set(&cert) && !set(&cert_dir) {
            s.errors.push("ENABLE_TLS: needs TLS_CERT_FILE and TLS_KEY_FILE, or TLS_CERT_DIR".into());
        }
        let tls = tls_enabled.then(|| TlsFiles {
            default: (set(&cert) && set(&key)).then(|| (cert.clone(), key.clone())),
            dir: set(&cert_dir).then(|| cert_dir.clone()),
        });
        let warning_enabled = s.get("PREVIEW_WARNING_ENABLED", boolean);
        let branding = Branding {
            product: s.get("PREVIEW_WARNING_PRODUCT_NAME", |v| Ok(v.to_string())),
            logo_url: s.get("PREVIEW_WARNING_LOGO_URL", optional_http_url),
            accent: s.get("PREVIEW_WARNING_ACCENT_COLOR", hex_colour),
            support_url: s.get("PREVIEW_WARNING_SUPPORT_URL", optional_http_url),
        };
        let toolbox_only = s.get("TOOLBOX_ONLY_MODE", boolean);
        let activity_dedup = s.get("ACTIVITY_UPDATE_INTERVAL_SEC", seconds);
        let activity_keepalive = s.get("ACTIVITY_KEEPALIVE_INTERVAL_SEC", seconds);
        if !s.errors.is_empty() {
            return Err(ConfigError(s.errors));
        }
        Ok(Config {
            listen: SocketAddr::new(address.expect("checked above"), port),
            workers,
            https,
            domain: if domain.is_empty() { format!("preview.localhost:{port}") } else { domain },
            api_key,
            cookie_domain,
            cookie_secret,
            api_url,
            registry_file,
            registry_reload_interval,
            allowed_base_domains,
            trusted_proxies,
            api_client_timeout,
            stale_if_error,
            upstream_connect_timeout,
            upstream_timeout,
            header_read_timeout,
            shutdown_timeout,
            tunnel_idle_timeout,
            metrics_port,
            redis: (!redis_host.is_empty()).then_some((redis_host, redis_port)),
            tls,
            tls_handshake_timeout,
            tls_reload_interval,
            warning: warning_enabled.then_some(branding),
            toolbox_only,
            activity_dedup,
            activity_keepalive,
            cache: CacheTtls::default(),
        })
    }

    /// Defaults only: what tests start from.
    pub fn defaults() -> Config {
        Config::from_sources(&toml::Table::new(), Path::new(""), &HashMap::new()).expect("defaults are valid")
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The settings table as text, for `--help`.
pub fn settings_help() -> String {
    let mut out = String::from(
        "Settings (environment variable, or the same name in lower case in the TOML file; environment wins):\n",
    );
    for s in SETTINGS {
        let default = if s.default.is_empty() { "(empty)" } else { s.default };
        let _ = writeln!(out, "  {:<30} {}\n  {:<30} default: {}", s.name, s.help, "", default);
    }
    out
}

struct Sources<'a> {
    file: &'a toml::Table,
    file_dir: &'a Path,
    env: &'a HashMap<String, String>,
    errors: Vec<String>,
}

enum Origin {
    Env,
    File,
    Default,
}

impl Sources<'_> {
    fn raw(&mut self, name: &str) -> (String, Origin) {
        if let Some(v) = self.env.get(name) {
            return (v.clone(), Origin::Env);
        }
        let key = name.to_ascii_lowercase();
        if let Some(v) = self.file.get(&key) {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
                other => {
                    self.errors.push(format!("{name}: unsupported value {other} in the configuration file"));
                    String::new()
                }
            };
            return (text, Origin::File);
        }
        let setting = SETTINGS.iter().find(|s| s.name == name);
        debug_assert!(setting.is_some(), "{name} is read but not in SETTINGS");
        let default = setting.map(|s| s.default).unwrap_or_default();
        (default.to_string(), Origin::Default)
    }

    fn get<T: Default>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        let (raw, origin) = self.raw(name);
        match parse(raw.trim()) {
            Ok(v) => v,
            Err(why) => {
                let from = match origin {
                    Origin::Env => "environment",
                    Origin::File => "configuration file",
                    Origin::Default => "default",
                };
                self.errors.push(format!("{name}: invalid value {raw:?} (from {from}): {why}"));
                T::default()
            }
        }
    }

    fn get_path(&mut self, name: &str) -> PathBuf {
        let (raw, origin) = self.raw(name);
        if raw.trim().is_empty() {
            return PathBuf::new();
        }
        let path = PathBuf::from(raw.trim());
        match origin {
            Origin::File if path.is_relative() => self.file_dir.join(path),
            _ => path,
        }
    }
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn seconds(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err("expected a whole number of seconds, at least 1".into()),
    }
}

fn seconds_or_zero(v: &str) -> Result<Duration, String> {
    v.parse::<u64>().map(Duration::from_secs).map_err(|_| "expected a whole number of seconds".into())
}

fn millis(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
        _ => Err("expected a whole number of milliseconds, at least 1".into()),
    }
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn hex_colour(v: &str) -> Result<String, String> {
    let digits = v.strip_prefix('#').unwrap_or("");
    if matches!(digits.len(), 3 | 6) && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_string())
    } else {
        Err("expected a colour like #1f6feb".into())
    }
}

fn optional_http_url(v: &str) -> Result<String, String> {
    if v.is_empty() || ((v.starts_with("https://") || v.starts_with("http://")) && reqwest::Url::parse(v).is_ok()) {
        Ok(v.to_string())
    } else {
        Err("expected an http:// or https:// URL".into())
    }
}

fn parse_api_url(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let url = reqwest::Url::parse(v).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("expected an http:// or https:// URL".into());
    }
    Ok(Some(v.trim_end_matches('/').to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_match_the_table() {
        let c = Config::defaults();
        assert_eq!(c.listen, "0.0.0.0:4000".parse().unwrap());
        assert!(!c.https);
        assert_eq!(c.api_url, None);
        assert_eq!(c.registry_file, PathBuf::from("config/registry.toml"));
        assert_eq!(c.api_client_timeout, Duration::from_secs(60));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn environment_overrides_file() {
        let f = file("proxy_port = 5000\nproxy_protocol = \"https\"\nregistry_file = \"reg.toml\"");
        let c = Config::from_sources(&f, Path::new("/etc/pp"), &env(&[("PROXY_PORT", "6000")])).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert!(c.https);
        assert_eq!(c.registry_file, PathBuf::from("/etc/pp/reg.toml"));
    }

    #[test]
    fn every_bad_value_is_reported_by_name() {
        let f = file("proxy_port = \"abc\"\nbogus_setting = 1\nallowed_base_domains = [\"A.com\", \"b.com\"]");
        let e = Config::from_sources(
            &f,
            Path::new(""),
            &env(&[
                ("PROXY_PROTOCOL", "ftp"),
                ("DAYTONA_API_URL", "http://api:3000/api"),
                ("API_CLIENT_TIMEOUT_SEC", "0"),
                ("TRUSTED_PROXIES", "10.0.0.0/8,nonsense"),
            ]),
        )
        .unwrap_err();
        let text = e.to_string();
        for name in [
            "PROXY_PORT",
            "bogus_setting",
            "PROXY_PROTOCOL",
            "PROXY_API_KEY",
            "API_CLIENT_TIMEOUT_SEC",
            "TRUSTED_PROXIES",
        ] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
        assert_eq!(e.0.len(), 6, "{text}");
        let e = Config::from_sources(
            &toml::Table::new(),
            Path::new(""),
            &env(&[
                ("PREVIEW_WARNING_ENABLED", "maybe"),
                ("PREVIEW_WARNING_ACCENT_COLOR", "red;}"),
                ("PREVIEW_WARNING_LOGO_URL", "javascript:x"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn api_url_needs_http() {
        let e = Config::from_sources(
            &toml::Table::new(),
            Path::new(""),
            &env(&[("DAYTONA_API_URL", "ftp://x"), ("PROXY_API_KEY", "k")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("DAYTONA_API_URL"));
        let c = Config::from_sources(
            &toml::Table::new(),
            Path::new(""),
            &env(&[("DAYTONA_API_URL", "http://api:3000/api/"), ("PROXY_API_KEY", "k")]),
        )
        .unwrap();
        assert_eq!(c.api_url.as_deref(), Some("http://api:3000/api"));
    }

    #[test]
    fn trusted_proxies_match_mapped_addresses() {
        let c = Config::defaults();
        assert!(c.is_trusted_proxy("127.0.0.1".parse().unwrap()));
        assert!(c.is_trusted_proxy("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.is_trusted_proxy("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn missing_required_file_names_it() {
        let e = Config::load(Path::new("/nonexistent/proxy.toml"), true, &HashMap::new()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/proxy.toml"));
        assert!(Config::load(Path::new("/nonexistent/proxy.toml"), false, &HashMap::new()).is_ok());
    }

    #[test]
    fn help_lists_every_setting() {
        let help = settings_help();
        for s in SETTINGS {
            assert!(help.contains(s.name));
        }
    }
}
