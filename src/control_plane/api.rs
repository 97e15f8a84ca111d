//! Client for the Daytona API's preview endpoints (SPEC 5): retries with
//! backoff inside the client timeout, answers cached in front.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;

use super::cache::ReadThrough;
use super::shared_cache::SharedCache;
use super::{LookupError, Runners, Target};
use crate::config::{Config, ConfigError};
use crate::http::escape::segment;
use crate::http::host::Port;
use crate::metrics::{CacheName, CallOutcome, Endpoint, Metrics};

const ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(150);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
const CACHE_CAPACITY: u64 = 100_000;
/// A sandbox's state is asked again after this (a page's fan-out of failing
/// requests makes one lookup).
const STATE_TTL: Duration = Duration::from_secs(2);
/// At most one start request per sandbox in this time.
const START_INTERVAL: Duration = Duration::from_secs(30);

pub struct DaytonaApi {
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    /// `Bearer {PROXY_API_KEY}`.
    auth: HeaderValue,
    /// Limit for one lookup, retries included.
    timeout: Duration,
    runner_ttl: Duration,
    public_ttl: Duration,
    valid_ttl: Duration,
    invalid_ttl: Duration,
    public: ReadThrough<bool>,
    runners: ReadThrough<Target>,
    /// Keyed by sandbox and a hash of the credential, never the raw secret.
    tokens: ReadThrough<bool>,
    access: ReadThrough<bool>,
    /// Signed token and port to sandbox id (`None`: invalid or expired).
    signed: ReadThrough<Option<Arc<str>>>,
    /// Sandbox state (`started`, `stopped`, ...), asked only when a runner
    /// says the sandbox is not running.
    states: ReadThrough<Arc<str>>,
    /// Start requests made, so each sandbox is started once.
    starts: ReadThrough<()>,
    activity_dedup: Duration,
    /// Redis shared by the proxy instances, when configured.
    shared: Option<SharedCache>,
    metrics: Arc<Metrics>,
    /// Runners in use, shared by their sandboxes.
    runner_values: Runners,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunnerJson {
    proxy_url: Option<String>,
    #[serde(default)]
    api_key: String,
}

impl DaytonaApi {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<DaytonaApi, ConfigError> {
        let base = config.api_url.clone().ok_or_else(|| ConfigError::setting("DAYTONA_API_URL", "not set"))?;
        let mut auth = HeaderValue::try_from(format!("Bearer {}", config.api_key))
            .map_err(|_| ConfigError::setting("PROXY_API_KEY", "has characters not allowed in a header"))?;
        auth.set_sensitive(true);
        let shared = match &config.redis {
            Some((host, port)) => Some(SharedCache::new(host, *port)?),
            None => None,
        };
        let (shared_ref, local) = (shared.as_ref(), config.cache.shared_local_ttl);
        let http = reqwest::Client::builder()
            .timeout(config.api_client_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ConfigError::setting("DAYTONA_API_URL", format!("cannot build the API client: {e}")))?;
        Ok(DaytonaApi {
            http,
            base,
            auth,
            timeout: config.api_client_timeout,
            runner_ttl: config.cache.runner_ttl,
            public_ttl: config.cache.public_ttl,
            valid_ttl: config.cache.valid_credential_ttl,
            invalid_ttl: config.cache.invalid_credential_ttl,
            public: ReadThrough::new(CACHE_CAPACITY, None, CacheName::Public, &metrics).shared(
                shared_ref,
                "proxy:sandbox-public:",
                local,
            ),
            runners: ReadThrough::new(CACHE_CAPACITY, Some(config.stale_if_error), CacheName::Runner, &metrics).shared(
                shared_ref,
                "proxy:sandbox-runner-info:",
                local,
            ),
            tokens: ReadThrough::new(CACHE_CAPACITY, None, CacheName::Token, &metrics).shared(
                shared_ref,
                "proxy:sandbox-auth-key-valid:",
                local,
            ),
            access: ReadThrough::new(CACHE_CAPACITY, None, CacheName::Access, &metrics).shared(
                shared_ref,
                "proxy:sandbox-access-valid:",
                local,
            ),
            signed: ReadThrough::new(CACHE_CAPACITY, None, CacheName::Signed, &metrics).shared(
                shared_ref,
                "proxy:signed-preview-token:",
                local,
            ),
            states: ReadThrough::new(CACHE_CAPACITY, None, CacheName::State, &metrics),
            starts: ReadThrough::new(CACHE_CAPACITY, None, CacheName::Start, &metrics),
            activity_dedup: config.activity_dedup,
            shared,
            metrics,
            runner_values: Runners::default(),
        })
    }

    /// `GET /preview/{id}/public`: 200 public, other definite 4xx private
    /// (the API answers 404 for private and unknown alike).
    pub async fn is_public(&self, sandbox_id: &str) -> Result<bool, LookupError> {
        self.public
            .get(sandbox_id, || async {
                let path = format!("/preview/{}/public", segment(sandbox_id));
                let (status, _) = self.call(&path, Endpoint::Public, &self.auth, None).await?;
                Ok((status.is_success(), self.public_ttl))
            })
            .await
    }

    /// The public flag of `sandbox_id`, if it is cached and fresh at `now`.
    pub fn cached_public(&self, sandbox_id: &str, now: Instant) -> Option<bool> {
        self.public.fresh(sandbox_id, now)
    }

    /// `GET /runners/by-sandbox/{id}`: the runner's `proxyUrl` and `apiKey`.
    pub async fn target(&self, sandbox_id: &str) -> Result<Target, LookupError> {
        self.runners
            .get(sandbox_id, || async {
                let path = format!("/runners/by-sandbox/{}", segment(sandbox_id));
                let (status, body) = self.call(&path, Endpoint::Runner, &self.auth, None).await?;
                if status == StatusCode::NOT_FOUND {
                    return Err(LookupError::NotFound);
                }
                if !status.is_success() {
                    return Err(LookupError::Invalid(format!(
                        "runner lookup answered {status}: {}",
                        api_message(&body)
                    )));
                }
                let runner: RunnerJson = serde_json::from_slice(&body)
                    .map_err(|e| LookupError::Invalid(format!("runner lookup returned unparsable JSON: {e}")))?;
                let proxy_url = runner
                    .proxy_url
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| LookupError::Invalid("the sandbox's runner has no proxyUrl".into()))?;
                let runner =
                    self.runner_values.get(&proxy_url, &runner.api_key).map_err(|e| LookupError::Invalid(e.0))?;
                Ok((Target::Runner(runner), self.runner_ttl))
            })
            .await
    }

    /// `GET /preview/{id}/validate/{token}`: is this the sandbox's preview token?
    pub async fn validate_token(&self, sandbox_id: &str, token: &str) -> Result<bool, LookupError> {
        self.tokens
            .get(&credential_key(sandbox_id, token), || async {
                let path = format!("/preview/{}/validate/{}", segment(sandbox_id), segment(token));
                let (status, _) = self.call(&path, Endpoint::ValidateToken, &self.auth, None).await?;
                Ok(self.credential_answer(status.is_success()))
            })
            .await
    }

    /// `GET /preview/{id}/access` with the caller's bearer (and its IP in
    /// `X-Forwarded-For`, for the API's per-client rate limits).
    pub async fn has_access(&self, sandbox_id: &str, bearer: &str, client_ip: IpAddr) -> Result<bool, LookupError> {
        let Ok(mut auth) = HeaderValue::try_from(format!("Bearer {bearer}")) else {
            return Ok(false);
        };
        auth.set_sensitive(true);
        self.access
            .get(&credential_key(sandbox_id, bearer), || async {
                let path = format!("/preview/{}/access", segment(sandbox_id));
                let (status, _) = self.call(&path, Endpoint::Access, &auth, Some(client_ip)).await?;
                Ok(self.credential_answer(status.is_success()))
            })
            .await
    }

    /// `GET /preview/{token}/{port}/sandbox-id`: the sandbox a signed token
    /// opens on this port; 403/404 mean invalid or expired. Cached for the
    /// invalid-credential TTL only, so an expired or revoked token stops
    /// working within it (SPEC 2).
    pub async fn resolve_signed(&self, token: &str, port: Port) -> Result<Option<Arc<str>>, LookupError> {
        self.signed
            .get(&credential_key(&port.to_string(), token), || async {
                let path = format!("/preview/{}/{port}/sandbox-id", segment(token));
                let (status, body) = self.call(&path, Endpoint::SignedToken, &self.auth, None).await?;
                if !status.is_success() {
                    return Ok((None, self.invalid_ttl));
                }
                let id = parse_sandbox_id(&body)
                    .ok_or_else(|| LookupError::Invalid("signed-token lookup returned no usable sandbox id".into()))?;
                // The answer does not say when the token expires or whether
                // it is revoked: keep it no longer than an invalid answer.
                Ok((Some(id), self.valid_ttl.min(self.invalid_ttl)))
            })
            .await
    }

    /// `GET /sandbox/{id}`: the sandbox's state, lower case.
    pub async fn state(&self, sandbox_id: &str) -> Result<Arc<str>, LookupError> {
        self.states
            .get(sandbox_id, || async {
                #[derive(Deserialize)]
                struct SandboxJson {
                    state: String,
                }
                let path = format!("/sandbox/{}", segment(sandbox_id));
                let (status, body) = self.call(&path, Endpoint::State, &self.auth, None).await?;
                if status == StatusCode::NOT_FOUND {
                    return Err(LookupError::NotFound);
                }
                if !status.is_success() {
                    return Err(LookupError::Invalid(format!(
                        "sandbox state lookup answered {status}: {}",
                        api_message(&body)
                    )));
                }
                let sandbox: SandboxJson = serde_json::from_slice(&body)
                    .map_err(|_| LookupError::Invalid("sandbox state lookup returned no state".into()))?;
                Ok((sandbox.state.to_ascii_lowercase().into(), STATE_TTL))
            })
            .await
    }

    /// `POST /sandbox/{id}/start`, at most once per sandbox per
    /// [`START_INTERVAL`], however many requests ask. The cached runner and
    /// state are dropped: a restored sandbox may run elsewhere.
    pub async fn start(&self, sandbox_id: &str) -> Result<(), LookupError> {
        self.starts
            .get(sandbox_id, || async {
                let path = format!("/sandbox/{}/start", segment(sandbox_id));
                let (status, body) = self.request(Method::POST, &path, Endpoint::Start, &self.auth, None).await?;
                if !status.is_success() {
                    return Err(LookupError::Invalid(format!(
                        "sandbox start answered {status}: {}",
                        api_message(&body)
                    )));
                }
                tracing::info!(sandbox = sandbox_id, "started a stopped sandbox on request");
                self.runners.invalidate(sandbox_id).await;
                self.states.invalidate(sandbox_id).await;
                Ok(((), START_INTERVAL))
            })
            .await
    }

    fn credential_answer(&self, valid: bool) -> (bool, Duration) {
        (valid, if valid { self.valid_ttl } else { self.invalid_ttl })
    }

    /// One API call with retries. Returns any definite answer (2xx, or 4xx
    /// other than 408/429); everything else is retried, then `Unavailable`.
    /// `endpoint` names the call in errors: paths can hold tokens, so they
    /// are never put in messages.
    async fn call(
        &self,
        path: &str,
        endpoint: Endpoint,
        auth: &HeaderValue,
        client_ip: Option<IpAddr>,
    ) -> Result<(StatusCode, Bytes), LookupError> {
        self.request(Method::GET, path, endpoint, auth, client_ip).await
    }

    /// `POST /sandbox/{id}/last-activity`: keeps the sandbox awake.
    /// With a shared cache, one update per sandbox per interval across all
    /// instances.
    pub async fn touch(&self, sandbox_id: &str) -> Result<(), LookupError> {
        if let Some(shared) = &self.shared {
            let key = format!("proxy:sandbox-last-activity-update:{sandbox_id}");
            if shared.claim(&key, self.activity_dedup).await == Some(false) {
                return Ok(());
            }
        }
        let path = format!("/sandbox/{}/last-activity", segment(sandbox_id));
        let (status, body) = self.request(Method::POST, &path, Endpoint::LastActivity, &self.auth, None).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(LookupError::Invalid(format!("last-activity update answered {status}: {}", api_message(&body))))
        }
    }

    /// One API call with retries (see [`DaytonaApi::call`]), counted by
    /// endpoint and outcome.
    async fn request(
        &self,
        method: Method,
        path: &str,
        endpoint: Endpoint,
        auth: &HeaderValue,
        client_ip: Option<IpAddr>,
    ) -> Result<(StatusCode, Bytes), LookupError> {
        let started = Instant::now();
        let result = self.request_with_retries(method, path, endpoint.describe(), auth, client_ip).await;
        let outcome = match &result {
            Ok((status, _)) if status.is_success() => CallOutcome::Ok,
            Ok(_) => CallOutcome::Refused,
            Err(_) => CallOutcome::Unavailable,
        };
        self.metrics.local().call(endpoint, outcome, started.elapsed());
        result
    }

    async fn request_with_retries(
        &self,
        method: Method,
        path: &str,
        what: &str,
        auth: &HeaderValue,
        client_ip: Option<IpAddr>,
    ) -> Result<(StatusCode, Bytes), LookupError> {
        let url = format!("{}{}", self.base, path);
        let attempts = async {
            let mut delay = BACKOFF_BASE;
            let mut last_error = String::new();
            for attempt in 1..=ATTEMPTS {
                let mut req = self.http.request(method.clone(), &url).header(http::header::AUTHORIZATION, auth.clone());
                if let Some(ip) = client_ip {
                    req = req.header("x-forwarded-for", ip.to_string());
                }
                let sent = req.send().await;
                match sent {
                    Ok(resp) if !is_retryable(resp.status()) => {
                        let status = resp.status();
                        match super::read_answer(resp).await {
                            Ok(Some(body)) => return Ok((status, body)),
                            Ok(None) => return Err(LookupError::Invalid(format!("{what} answered over 1 MiB"))),
                            Err(e) => last_error = format!("{what}: reading the answer failed: {}", e.without_url()),
                        }
                    }
                    Ok(resp) => last_error = format!("{what} answered {}", resp.status()),
                    Err(e) => last_error = format!("{what} failed: {}", e.without_url()),
                }
                if attempt < ATTEMPTS {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_CAP);
                }
            }
            Err(LookupError::Unavailable(last_error))
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(result) => result,
            Err(_) => Err(LookupError::Unavailable(format!("{what} timed out after {:?}", self.timeout))),
        }
    }
}

fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// The `message` of a Daytona error body, or a short prefix of the body.
fn api_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        message: serde_json::Value,
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(ApiError { message: serde_json::Value::String(s) }) => s,
        Ok(ApiError { message }) => message.to_string(),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// Cache key for a credential: the scope (sandbox id, or port for signed
/// tokens) and a SHA-256 of the secret, so raw secrets are not kept as keys.
fn credential_key(scope: &str, secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("{scope}:{}", URL_SAFE_NO_PAD.encode(digest))
}

/// The sandbox id in a `sandbox-id` answer: plain text or a JSON string.
fn parse_sandbox_id(body: &[u8]) -> Option<Arc<str>> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let id = match serde_json::from_str::<String>(text) {
        Ok(s) => s,
        Err(_) => text.to_string(),
    };
    let id = id.to_ascii_lowercase();
    let valid =
        !id.is_empty() && id.len() <= 63 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| id.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_message_reads_daytona_errors() {
        assert_eq!(
            api_message(br#"{"statusCode":404,"message":"Runner not found","code":"NOT_FOUND"}"#),
            "Runner not found"
        );
        assert_eq!(api_message(b"plain text"), "plain text");
    }

    #[test]
    fn sandbox_id_answers_are_plain_text_or_json() {
        assert_eq!(parse_sandbox_id(b"abc-123").as_deref(), Some("abc-123"));
        assert_eq!(parse_sandbox_id(b"\"ABC-123\"\n").as_deref(), Some("abc-123"));
        assert_eq!(parse_sandbox_id(b"a/b"), None);
        assert_eq!(parse_sandbox_id(b""), None);
    }

    #[test]
    fn credential_keys_do_not_hold_the_secret() {
        let k = credential_key("sbx", "super-secret-token");
        assert!(!k.contains("super-secret"));
        assert_ne!(k, credential_key("other", "super-secret-token"), "scoped by sandbox");
    }

    #[test]
    fn retryable_statuses() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 201, 400, 401, 403, 404] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
