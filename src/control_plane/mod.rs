//! The source of truth about sandboxes: the Daytona API (cached) or the
//! embedded registry file. One enum, two real implementations; the caches
//! in front of the API, last-activity updates, and signed preview URLs.

pub mod activity;
pub mod api;
pub mod cache;
pub mod oidc;
pub mod registry;
pub mod sharded;
pub mod shared_cache;
pub mod signed_url;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::uri::{Authority, Scheme};
use http::HeaderValue;

use crate::http::host::Port;
pub use api::DaytonaApi;
pub use registry::Registry;

/// Where a sandbox's traffic goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// Through a runner: `{proxy_url}/sandboxes/{id}/toolbox/proxy/{port}{path}`.
    Runner(Arc<Runner>),
    /// Straight to `http://{host}:{port}{path}` (embedded registry only).
    Direct(Arc<str>),
}

/// A runner's proxy endpoint, parsed once when it is looked up.
#[derive(Debug)]
pub struct Runner {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path of `proxyUrl` without a trailing slash (usually empty).
    pub prefix: String,
    /// `Bearer {apiKey}`, sent as `X-Daytona-Authorization`.
    pub auth: HeaderValue,
    /// The `Host` header for the runner, made once.
    pub host: HeaderValue,
}

/// Parsed runners by `proxyUrl` and key: the thousands of sandboxes a
/// runner hosts share one instead of a copy each.
#[derive(Default)]
pub struct Runners(Mutex<HashMap<String, Weak<Runner>>>);

impl Runners {
    /// The runner for `proxy_url` and `api_key`, parsed once while in use.
    pub fn get(&self, proxy_url: &str, api_key: &str) -> Result<Arc<Runner>, RunnerError> {
        let id = format!("{proxy_url}\n{api_key}");
        let mut runners = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runner) = runners.get(&id).and_then(Weak::upgrade) {
            return Ok(runner);
        }
        let runner = Arc::new(Runner::new(proxy_url, api_key)?);
        if runners.len() >= 1024 {
            runners.retain(|_, r| r.strong_count() > 0);
        }
        runners.insert(id, Arc::downgrade(&runner));
        Ok(runner)
    }
}

/// Why a runner's `proxyUrl` or API key cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RunnerError(pub String);

impl From<String> for RunnerError {
    fn from(message: String) -> Self {
        RunnerError(message)
    }
}

impl Runner {
    /// Parses a runner's `proxyUrl` and API key.
    pub fn new(proxy_url: &str, api_key: &str) -> Result<Runner, RunnerError> {
        let uri: http::Uri = proxy_url.parse().map_err(|e| format!("proxyUrl {proxy_url:?} is not a URL: {e}"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| format!("proxyUrl {proxy_url:?} has no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("proxyUrl {proxy_url:?} must be http or https").into());
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("proxyUrl {proxy_url:?} has no host"))?;
        if uri.query().is_some() {
            return Err(format!("proxyUrl {proxy_url:?} must not have a query").into());
        }
        let mut auth = HeaderValue::try_from(format!("Bearer {api_key}"))
            .map_err(|_| "runner apiKey has characters not allowed in a header".to_string())?;
        auth.set_sensitive(true);
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|_| format!("proxyUrl {proxy_url:?} has a bad host"))?;
        Ok(Runner { scheme, authority, prefix: uri.path().trim_end_matches('/').to_string(), auth, host })
    }
}

/// Why a lookup has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The control plane says the sandbox (or its runner) does not exist.
    #[error("sandbox not found")]
    NotFound,
    /// Timeouts, transport errors, 5xx, 408 and 429, after retries.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// A definite answer we cannot use (a 4xx we do not expect, a runner
    /// without `proxyUrl`, a body that does not parse).
    #[error("control plane answer unusable: {0}")]
    Invalid(String),
}

impl LookupError {
    /// Whether asking again later may succeed (never cached).
    pub fn is_transient(&self) -> bool {
        matches!(self, LookupError::Unavailable(_))
    }
}

/// The most of an API answer's body the proxy reads: its answers are a
/// few hundred bytes, and an endpoint that sends without end (a wrong
/// `DAYTONA_API_URL`, a broken peer) must not fill the proxy's memory.
const MAX_ANSWER: usize = 1024 * 1024;

/// An API answer's body, up to [`MAX_ANSWER`]: `Ok(None)` when it is
/// longer (a definite answer the proxy cannot use).
async fn read_answer(mut resp: reqwest::Response) -> Result<Option<bytes::Bytes>, reqwest::Error> {
    // The usual answer comes in one chunk: kept as it is, not copied.
    let Some(first) = resp.chunk().await? else { return Ok(Some(bytes::Bytes::new())) };
    let Some(second) = resp.chunk().await? else { return Ok((first.len() <= MAX_ANSWER).then_some(first)) };
    let mut body = bytes::BytesMut::from(&first[..]);
    body.extend_from_slice(&second);
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// What [`ControlPlane::prefetch`] knows before authentication.
pub enum Prefetch {
    /// A key that may be a signed token, or the registry: nothing to do.
    NotASandboxId,
    /// The sandbox's public flag, from the cache.
    Known(bool),
    /// A sandbox id the API has not been asked about yet.
    Cold,
}

pub enum ControlPlane {
    Api(Box<DaytonaApi>),
    Registry(Registry),
}

impl ControlPlane {
    /// Whether the sandbox is public. Unknown sandboxes are not public, so a
    /// caller without credentials cannot tell them from private ones.
    /// The registry may open or close single ports (`public_ports`,
    /// `private_ports`); the API's flag is per sandbox.
    pub async fn is_public(&self, sandbox_id: &str, port: Port) -> Result<bool, LookupError> {
        match self {
            ControlPlane::Api(api) => api.is_public(sandbox_id).await,
            ControlPlane::Registry(reg) => {
                Ok(reg.snapshot().sandbox(sandbox_id).is_some_and(|s| s.is_public(port.get())))
            }
        }
    }

    /// Whether `token` is the sandbox's preview token.
    pub async fn validate_token(&self, sandbox_id: &str, token: &str) -> Result<bool, LookupError> {
        match self {
            ControlPlane::Api(api) => api.validate_token(sandbox_id, token).await,
            ControlPlane::Registry(reg) => Ok(reg.snapshot().validate_token(sandbox_id, token)),
        }
    }

    /// Whether the bearer (API key or JWT) may open the sandbox.
    pub async fn has_access(&self, sandbox_id: &str, bearer: &str, client_ip: IpAddr) -> Result<bool, LookupError> {
        match self {
            ControlPlane::Api(api) => api.has_access(sandbox_id, bearer, client_ip).await,
            ControlPlane::Registry(reg) => Ok(reg.snapshot().has_access(sandbox_id, bearer)),
        }
    }

    /// For a key that is certainly a sandbox id (a dash: signed tokens have
    /// none) in front of the API: its public flag if cached and fresh at
    /// `now` (the request's start: one clock reading fewer), else `Cold`.
    pub fn prefetch(&self, key: &str, now: Instant) -> Prefetch {
        match self {
            ControlPlane::Api(api) if key.contains('-') => match api.cached_public(key, now) {
                Some(public) => Prefetch::Known(public),
                None => Prefetch::Cold,
            },
            _ => Prefetch::NotASandboxId,
        }
    }

    /// Whether a person signed in by OIDC may open the sandbox: the API's
    /// `/preview/{id}/access` with their access token, or the registry's
    /// `viewers` (their verified email, or `"*"`).
    pub async fn admits(
        &self,
        sandbox_id: &str,
        access_token: &str,
        email: Option<&str>,
        client_ip: IpAddr,
    ) -> Result<bool, LookupError> {
        match self {
            ControlPlane::Api(api) => api.has_access(sandbox_id, access_token, client_ip).await,
            ControlPlane::Registry(reg) => Ok(reg.snapshot().sandbox(sandbox_id).is_some_and(|s| s.admits(email))),
        }
    }

    /// The sandbox a signed preview token opens on `port`, if it is valid.
    pub async fn resolve_signed(&self, token: &str, port: Port) -> Result<Option<Arc<str>>, LookupError> {
        match self {
            ControlPlane::Api(api) => api.resolve_signed(token, port).await,
            ControlPlane::Registry(reg) => {
                Ok(reg.snapshot().resolve_signed(token, port.get(), unix_now()).map(Arc::from))
            }
        }
    }

    /// Whether a signed token was revoked, so the cookies it minted end too.
    /// Only the embedded registry knows; the API's tokens just expire.
    pub fn is_revoked(&self, token: &str) -> bool {
        match self {
            ControlPlane::Api(_) => false,
            ControlPlane::Registry(reg) => reg.snapshot().is_revoked(token),
        }
    }

    /// Records that the sandbox is in use (keeps it from auto-stopping).
    pub async fn touch(&self, sandbox_id: &str) -> Result<(), LookupError> {
        match self {
            ControlPlane::Api(api) => api.touch(sandbox_id).await,
            ControlPlane::Registry(reg) => {
                reg.touch(sandbox_id);
                Ok(())
            }
        }
    }

    /// Where the sandbox's traffic goes.
    pub async fn target(&self, sandbox_id: &str) -> Result<Target, LookupError> {
        match self {
            ControlPlane::Api(api) => api.target(sandbox_id).await,
            ControlPlane::Registry(reg) => {
                reg.snapshot().sandbox(sandbox_id).map(|s| s.target.clone()).ok_or(LookupError::NotFound)
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
