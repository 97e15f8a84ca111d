//! Embedded registry: runners and sandboxes listed in a TOML file, reloaded
//! when the file changes; a broken edit keeps the last good registry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::file_watch::{self, stamp};

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::{Runner, Target};

/// The file as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    /// Bearer keys (API keys) that open every sandbox.
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    runners: HashMap<String, RunnerEntry>,
    #[serde(default)]
    sandboxes: Vec<SandboxEntry>,
    /// Signed preview URLs, minted by `preview-proxy sign-url`.
    #[serde(default)]
    signed_urls: Vec<SignedUrlEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedUrlEntry {
    token: String,
    sandbox: String,
    port: u16,
    /// Unix seconds.
    expires_at: u64,
    /// Set by `revoke-url`: the cookies this token minted end too.
    #[serde(default)]
    revoked: bool,
}

/// A signed preview URL: a token bound to one sandbox and port until expiry.
#[derive(Debug, Clone)]
pub struct SignedUrl {
    pub sandbox: String,
    pub port: u16,
    pub expires_at: u64,
    pub revoked: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunnerEntry {
    proxy_url: String,
    api_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxEntry {
    id: String,
    #[serde(default)]
    public: bool,
    /// Ports open to everyone on a private sandbox (`private_ports`: the reverse).
    #[serde(default)]
    public_ports: Vec<u16>,
    #[serde(default)]
    private_ports: Vec<u16>,
    /// OIDC logins that may open it: verified emails, or `"*"` for anyone.
    #[serde(default)]
    viewers: Vec<String>,
    /// The sandbox's preview token (`X-Daytona-Preview-Token`).
    token: Option<String>,
    /// Name of a runner in `[runners]`.
    runner: Option<String>,
    /// Host (IP or name) the app's ports are reached on directly.
    upstream: Option<String>,
}

/// One sandbox, resolved.
#[derive(Debug)]
pub struct Sandbox {
    pub public: bool,
    /// The exceptions to `public`, port by port.
    pub other_ports: Vec<u16>,
    pub viewers: Vec<String>,
    pub token: Option<String>,
    pub target: Target,
}

impl Sandbox {
    /// Whether `port` is open to everyone (the caller checks reserved ports).
    pub fn is_public(&self, port: u16) -> bool {
        self.public != self.other_ports.contains(&port)
    }

    /// Whether an OIDC login with this verified `email` may open it.
    pub fn admits(&self, email: Option<&str>) -> bool {
        self.viewers.iter().any(|v| v == "*" || email.is_some_and(|e| v.eq_ignore_ascii_case(e)))
    }
}

/// A validated registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    sandboxes: HashMap<String, Sandbox>,
    api_keys: Vec<String>,
    signed_urls: HashMap<String, SignedUrl>,
}

/// Why a registry file cannot be used; every problem, each naming its entry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(pub String);

impl From<String> for RegistryError {
    fn from(message: String) -> Self {
        RegistryError(message)
    }
}

impl Snapshot {
    /// Parses and validates registry text; every problem is reported.
    pub fn parse(text: &str) -> Result<Snapshot, RegistryError> {
        let file: RegistryFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        let mut runners = HashMap::new();
        for (name, r) in &file.runners {
            match Runner::new(&r.proxy_url, &r.api_key) {
                Ok(runner) => {
                    runners.insert(name.as_str(), Arc::new(runner));
                }
                Err(e) => errors.push(format!("runners.{name}: {e}")),
            }
        }
        let mut sandboxes = HashMap::new();
        for s in file.sandboxes {
            let id = s.id.to_ascii_lowercase();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                errors.push(format!("sandbox {:?}: id must be letters, digits, '-' or '_'", s.id));
                continue;
            }
            let target = match (&s.runner, &s.upstream) {
                (Some(name), None) => match runners.get(name.as_str()) {
                    Some(r) => Target::Runner(r.clone()),
                    None => {
                        errors.push(format!("sandbox {id}: runner {name:?} is not in [runners]"));
                        continue;
                    }
                },
                (None, Some(host)) => {
                    if !is_upstream_host(host) {
                        errors.push(format!(
                            "sandbox {id}: upstream {host:?} must be a host name or IP address, without port or scheme"
                        ));
                        continue;
                    }
                    Target::Direct(host.as_str().into())
                }
                _ => {
                    errors.push(format!("sandbox {id}: set exactly one of runner or upstream"));
                    continue;
                }
            };
            let (other_ports, misplaced, name) = match s.public {
                true => (s.private_ports, s.public_ports, "public_ports is for private sandboxes; use private_ports"),
                false => (s.public_ports, s.private_ports, "private_ports is for public sandboxes; use public_ports"),
            };
            if !misplaced.is_empty() {
                errors.push(format!("sandbox {id}: {name}"));
                continue;
            }
            let sandbox = Sandbox { public: s.public, other_ports, viewers: s.viewers, token: s.token, target };
            if sandboxes.insert(id.clone(), sandbox).is_some() {
                errors.push(format!("sandbox {id}: listed twice"));
            }
        }
        let mut signed_urls = HashMap::new();
        for u in file.signed_urls {
            let sandbox = u.sandbox.to_ascii_lowercase();
            if !sandboxes.contains_key(&sandbox) {
                errors.push(format!("signed_urls: sandbox {sandbox:?} is not in [[sandboxes]]"));
            } else if u.token.is_empty() || !u.token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                errors.push(format!("signed_urls for {sandbox}: a token must be lower-case letters and digits"));
            } else if u.port == 0 {
                errors.push(format!("signed_urls for {sandbox}: port must be 1-65535"));
            } else {
                signed_urls
                    .insert(u.token, SignedUrl { sandbox, port: u.port, expires_at: u.expires_at, revoked: u.revoked });
            }
        }
        if errors.is_empty() {
            Ok(Snapshot { sandboxes, api_keys: file.api_keys, signed_urls })
        } else {
            Err(RegistryError(errors.join("; ")))
        }
    }

    /// How many sandboxes the registry lists.
    pub fn sandbox_count(&self) -> usize {
        self.sandboxes.len()
    }

    pub fn sandbox(&self, id: &str) -> Option<&Sandbox> {
        self.sandboxes.get(id)
    }

    /// Whether `token` is the sandbox's preview token (constant time).
    pub fn validate_token(&self, sandbox_id: &str, token: &str) -> bool {
        self.sandbox(sandbox_id).and_then(|s| s.token.as_deref()).is_some_and(|t| secret_eq(t, token))
    }

    /// Whether `bearer` is one of the registry's API keys and the sandbox
    /// exists (constant time per key).
    pub fn has_access(&self, sandbox_id: &str, bearer: &str) -> bool {
        self.sandboxes.contains_key(sandbox_id) && self.api_keys.iter().fold(false, |ok, k| ok | secret_eq(k, bearer))
    }

    /// The sandbox a signed token opens on `port`, unless it has expired.
    pub fn resolve_signed(&self, token: &str, port: u16, now: u64) -> Option<&str> {
        let u = self.signed_urls.get(token)?;
        (u.port == port && now < u.expires_at && !u.revoked).then_some(u.sandbox.as_str())
    }

    /// Whether `revoke-url` revoked this token (entries are kept until the
    /// cookies they minted have expired).
    pub fn is_revoked(&self, token: &str) -> bool {
        self.signed_urls.get(token).is_some_and(|u| u.revoked)
    }
}

/// The live registry: a snapshot swapped atomically on reload.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    current: ArcSwap<Snapshot>,
    /// Last activity per sandbox, Unix milliseconds (kept across reloads).
    last_activity: std::sync::Mutex<HashMap<String, u64>>,
}

impl Registry {
    /// Loads the file; a missing or broken file is an error naming it.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let snapshot = load(path)?;
        let inner = Inner {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(snapshot),
            last_activity: Default::default(),
        };
        Ok(Registry { inner: Arc::new(inner) })
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.inner.current.load()
    }

    /// Records activity for a sandbox now.
    pub fn touch(&self, sandbox_id: &str) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.inner.last_activity.lock().unwrap_or_else(|e| e.into_inner()).insert(sandbox_id.to_string(), now);
    }

    /// When the sandbox was last active (Unix milliseconds), if ever.
    pub fn last_activity(&self, sandbox_id: &str) -> Option<u64> {
        self.inner.last_activity.lock().unwrap_or_else(|e| e.into_inner()).get(sandbox_id).copied()
    }

    /// Re-reads the file now. On error the current snapshot stays.
    pub fn reload(&self) -> Result<(), RegistryError> {
        Ok(self.inner.reload()?)
    }

    /// Polls the file every `interval` and reloads it when it changes; stops
    /// when the registry is dropped.
    pub fn watch(&self, interval: Duration) {
        file_watch::watch(
            Arc::downgrade(&self.inner),
            interval,
            |inner: &Inner| stamp(&inner.path),
            |inner: &Inner| match inner.reload() {
                Ok(()) => tracing::info!("registry reloaded"),
                Err(e) => tracing::warn!("registry not reloaded, keeping the last good one: {e}"),
            },
        );
    }
}

impl Inner {
    fn reload(&self) -> Result<(), String> {
        let snapshot = load(&self.path)?;
        self.current.store(Arc::new(snapshot));
        Ok(())
    }
}

/// An IPv4 address, a bracketed IPv6 address, or a host name.
fn is_upstream_host(host: &str) -> bool {
    let v6 = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    match v6 {
        Some(addr) => addr.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
    }
}

/// Compares secrets in constant time (for equal lengths).
fn secret_eq(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

fn load(path: &Path) -> Result<Snapshot, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Snapshot::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runner_and_direct_sandboxes() {
        let s = Snapshot::parse(
            r#"
            [runners.r1]
            proxy_url = "http://runner:3003"
            api_key = "k"

            [[sandboxes]]
            id = "Demo"
            public = true
            upstream = "127.0.0.1"

            [[sandboxes]]
            id = "3a828150-1573-42e3-bf9f-9793a2c2c0c2"
            token = "tok"
            runner = "r1"
            "#,
        )
        .unwrap();
        let demo = s.sandbox("demo").unwrap();
        assert!(demo.public);
        assert!(matches!(&demo.target, Target::Direct(h) if &**h == "127.0.0.1"));
        let other = s.sandbox("3a828150-1573-42e3-bf9f-9793a2c2c0c2").unwrap();
        assert!(!other.public);
        assert_eq!(other.token.as_deref(), Some("tok"));
        assert!(matches!(&other.target, Target::Runner(r) if r.authority == "runner:3003"));
    }

    #[test]
    fn reports_every_problem() {
        let e = Snapshot::parse(
            r#"
            [runners.bad]
            proxy_url = "ftp://x"
            api_key = "k"

            [[sandboxes]]
            id = "a"
            runner = "missing"

            [[sandboxes]]
            id = "b"

            [[sandboxes]]
            id = "c"
            upstream = "http://host:80"

            [[sandboxes]]
            id = "bad/id"
            upstream = "127.0.0.1"
            "#,
        )
        .unwrap_err();
        for needle in ["runners.bad", "sandbox a", "sandbox b", "sandbox c", "bad/id"] {
            assert!(e.0.contains(needle), "{needle} not in {e}");
        }
    }

    #[test]
    fn answers_credential_questions() {
        let s = Snapshot::parse(
            r#"
            api_keys = ["org-key"]

            [[sandboxes]]
            id = "a"
            token = "tok-a"
            upstream = "127.0.0.1"

            [[sandboxes]]
            id = "b"
            upstream = "127.0.0.1"

            [[signed_urls]]
            token = "abc123"
            sandbox = "a"
            port = 3000
            expires_at = 2000

            [[signed_urls]]
            token = "gone1"
            sandbox = "a"
            port = 3000
            expires_at = 5000
            revoked = true
            "#,
        )
        .unwrap();
        assert!(s.validate_token("a", "tok-a"));
        assert!(!s.validate_token("a", "tok-b"));
        assert!(!s.validate_token("b", "tok-a"), "a token opens only its sandbox");
        assert!(!s.validate_token("b", ""), "no token set means no token is valid");
        assert!(s.has_access("b", "org-key"));
        assert!(!s.has_access("b", "org-kez"));
        assert!(!s.has_access("nosuch", "org-key"));
        assert_eq!(s.resolve_signed("abc123", 3000, 1999), Some("a"));
        assert_eq!(s.resolve_signed("abc123", 3001, 1999), None, "bound to its port");
        assert_eq!(s.resolve_signed("abc123", 3000, 2000), None, "expired");
        assert_eq!(s.resolve_signed("zzz", 3000, 0), None);
        assert_eq!(s.resolve_signed("gone1", 3000, 1999), None, "revoked before its expiry");
        assert!(s.is_revoked("gone1") && !s.is_revoked("abc123") && !s.is_revoked("zzz"));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = Snapshot::parse("[[sandboxes]]\nid = \"a\"\nupstream = \"x\"\npublik = true\n").unwrap_err();
        assert!(e.0.contains("publik"), "{e}");
    }

    #[tokio::test]
    async fn broken_edit_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, "[[sandboxes]]\nid = \"a\"\nupstream = \"127.0.0.1\"\n").unwrap();
        let reg = Registry::open(&path).unwrap();
        std::fs::write(&path, "[[sandboxes]\n").unwrap();
        assert!(reg.reload().is_err());
        assert!(reg.snapshot().sandbox("a").is_some());
        std::fs::write(&path, "[[sandboxes]]\nid = \"b\"\nupstream = \"127.0.0.1\"\npublic = true\n").unwrap();
        reg.reload().unwrap();
        assert!(reg.snapshot().sandbox("a").is_none());
        assert!(reg.snapshot().sandbox("b").unwrap().public);
    }
}
