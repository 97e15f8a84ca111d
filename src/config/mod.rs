//! Settings as plain data: read from a TOML file and the environment
//! (environment wins) through the declarations in [`settings`], validated
//! once, all errors reported together.

mod parse;
mod settings;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use settings::{Setting, SETTINGS};

/// Validated settings.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `None`: every interface.
    pub listen_ip: Option<IpAddr>,
    pub port: u16,
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
    /// OIDC login for private previews (SPEC 9).
    pub oidc: OidcSettings,
    /// How long non-browser clients wait for a stopped sandbox to start.
    pub wake_hold: Duration,
    /// The `Host` header apps see.
    pub upstream_host_header: UpstreamHost,
    pub registry_file: PathBuf,
    pub registry_reload_interval: Duration,
    pub allowed_base_domains: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub api_client_timeout: Duration,
    pub stale_if_error: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    /// Idle keep-alive (HTTP/1) and idle HTTP/2 connections.
    pub idle_timeout: Duration,
    pub request_body_timeout: Duration,
    /// `None`: off.
    pub response_idle_timeout: Option<Duration>,
    pub max_concurrent_streams: u32,
    /// 0: no limit.
    pub max_connections_per_sandbox: usize,
    /// Per upstream host, across workers; 0: no limit.
    pub upstream_max_connections: usize,
    pub shutdown_timeout: Duration,
    /// Accepting goes on this long after SIGTERM while `/health` says draining.
    pub shutdown_delay: Duration,
    pub access_log: bool,
    /// `LOG_FORMAT=json`.
    pub json_logs: bool,
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

/// Where certificates come from.
/// The `Host` header sent to the app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamHost {
    /// `127.0.0.1:<port>` for a direct upstream, the runner's host for a
    /// runner: what Daytona's own proxy sends.
    #[default]
    Upstream,
    /// The preview host the client asked for (nginx's `proxy_set_header
    /// Host $host`).
    Preview,
}

/// The OIDC provider the proxy logs browsers in with; login is on when
/// `issuer` and `client_id` are set (or the API's `/config` gives them).
#[derive(Debug, Clone, Default)]
pub struct OidcSettings {
    pub issuer: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    pub audience: String,
    pub public_issuer: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    /// The default pair, served when no other name matches.
    pub default: Option<(PathBuf, PathBuf)>,
    /// A directory of `<name>.crt`/`.pem` files, each with `<name>.key`.
    pub dir: Option<PathBuf>,
}

/// Branding of the warning page (custom-domain deployments brand their
/// previews).
#[derive(Debug, Clone, Default)]
pub struct Branding {
    pub product: String,
    /// An https/http URL of a logo, or empty.
    pub logo_url: String,
    /// A CSS hex colour, `#rgb` or `#rrggbb`.
    pub accent: String,
    /// Where a worried person can ask, or empty.
    pub support_url: String,
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

/// All problems found in the settings, one line each, each naming its
/// setting. Start-up problems found later (a certificate that does not
/// load, a registry that does not parse) are reported the same way.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl ConfigError {
    /// One problem with one setting.
    pub fn setting(name: &str, problem: impl std::fmt::Display) -> ConfigError {
        ConfigError(vec![format!("{name}: {problem}")])
    }
}

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
        let mut errors = Vec::new();
        for key in file.keys() {
            if !SETTINGS.iter().any(|st| st.name.eq_ignore_ascii_case(key)) {
                errors.push(format!("{key}: unknown setting in the configuration file"));
            }
        }
        let mut config = Config { cache: CacheTtls::default(), ..Config::default() };
        for setting in SETTINGS {
            let (raw, from, dir) = match (env.get(setting.name), file.get(&setting.name.to_ascii_lowercase())) {
                (Some(v), _) => (v.clone(), "environment", Path::new("")),
                (None, Some(v)) => match file_value(v) {
                    Some(text) => (text, "configuration file", file_dir),
                    None => {
                        errors.push(format!("{}: unsupported value {v} in the configuration file", setting.name));
                        continue;
                    }
                },
                (None, None) => (setting.default.to_string(), "default", Path::new("")),
            };
            if let Err(why) = (setting.apply)(&mut config, raw.trim(), dir) {
                errors.push(format!("{}: invalid value {raw:?} (from {from}): {why}", setting.name));
            }
        }
        config.check(&mut errors);
        match errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigError(errors)),
        }
    }

    /// Rules that join several settings.
    fn check(&mut self, errors: &mut Vec<String>) {
        if self.api_url.is_some() && self.api_key.is_empty() {
            errors.push("PROXY_API_KEY: required when DAYTONA_API_URL is set".into());
        }
        if self.oidc.issuer.is_some() && self.oidc.client_id.is_empty() {
            errors.push("OIDC_CLIENT_ID: required when OIDC_DOMAIN is set".into());
        }
        if self.domain.is_empty() {
            self.domain = format!("preview.localhost:{}", self.port);
        }
        if let Some(tls) = &mut self.tls {
            let pair = tls.default.take().filter(|(c, k)| !c.as_os_str().is_empty() || !k.as_os_str().is_empty());
            match pair {
                Some((c, k)) if c.as_os_str().is_empty() || k.as_os_str().is_empty() => {
                    errors.push("TLS_CERT_FILE and TLS_KEY_FILE: set both or neither".into())
                }
                pair => tls.default = pair,
            }
            if tls.default.is_none() && tls.dir.is_none() {
                errors.push("ENABLE_TLS: needs TLS_CERT_FILE and TLS_KEY_FILE, or TLS_CERT_DIR".into());
            }
        }
    }

    /// Defaults only: what tests start from.
    pub fn defaults() -> Config {
        match Config::from_sources(&toml::Table::new(), Path::new(""), &HashMap::new()) {
            Ok(config) => config,
            Err(e) => unreachable!("the defaults are valid: {e}"),
        }
    }

    /// The address to listen on.
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), self.port)
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The environment variables that are settings. Others are none of our
/// business, so one that is not UTF-8 is ignored; one of ours that is not
/// is reported by name.
pub fn settings_from_env(
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut env = HashMap::new();
    let mut errors = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str().filter(|n| SETTINGS.iter().any(|s| s.name == *n)) else { continue };
        match value.into_string() {
            Ok(value) => {
                env.insert(name.to_string(), value);
            }
            Err(_) => errors.push(format!("{name}: the value is not valid UTF-8")),
        }
    }
    match errors.is_empty() {
        true => Ok(env),
        false => Err(ConfigError(errors)),
    }
}

/// A TOML value as the text a setting parses (`None`: not a scalar or list).
fn file_value(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    })
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
        assert_eq!(c.listen(), "0.0.0.0:4000".parse().unwrap());
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
        assert_eq!(c.listen().port(), 6000);
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
        assert!(c.is_trusted_proxy("::ffff:127.0.0.2".parse().unwrap()));
        // Private ranges are not trusted by default: any client inside the
        // VPC could otherwise set X-Forwarded-Host.
        assert!(!c.is_trusted_proxy("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.is_trusted_proxy("192.168.1.1".parse().unwrap()));
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
