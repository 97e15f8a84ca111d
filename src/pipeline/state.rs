//! The proxy's state: what every worker shares (settings, control plane,
//! caches, pages, tunnels, metrics) and each worker's own upstream pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::access_log::Lines;
use super::auth_cookie::CookieSigner;
use super::warning_page::WarningPage;
use crate::config::{Config, ConfigError};
use crate::control_plane::activity::Activity;
use crate::control_plane::oidc::Oidc;
use crate::control_plane::{ControlPlane, DaytonaApi, Registry};
use crate::error::ErrorPages;
use crate::metrics::Metrics;
use crate::upstream::limit::SandboxLimit;
use crate::upstream::pool::Pool;
use crate::upstream::tunnel::Tunnels;

/// A proxy worker: the state all workers share, and this worker's own
/// upstream connection pool (its connections stay on its thread).
pub struct Proxy {
    pub shared: Arc<Shared>,
    /// This worker's upstream connections.
    pub(super) pool: Pool,
}

/// State shared by every worker.
pub struct Shared {
    pub config: Config,
    pub control_plane: Arc<ControlPlane>,
    pub(super) pages: ErrorPages,
    /// `Some` when the warning page is enabled.
    pub(super) warning: Option<WarningPage>,
    /// Signs and checks auth cookies.
    pub(super) signer: CookieSigner,
    pub(super) activity: Arc<Activity>,
    /// Open WebSocket tunnels.
    pub tunnels: Arc<Tunnels>,
    /// `Some` when `MAX_CONNECTIONS_PER_SANDBOX` is set.
    pub(super) sandbox_limit: Option<Arc<SandboxLimit>>,
    pub metrics: Arc<Metrics>,
    /// `Some` when private previews send browsers to an OIDC provider.
    pub(super) oidc: Option<Oidc>,
    /// `http` or `https`, for `X-Forwarded-Proto` and printed URLs.
    pub(super) proto: &'static str,
    /// `/health` answer, built once.
    pub(super) health: Bytes,
    /// Access lines are on and the log filter lets them through (checked
    /// once: a record is not gathered for a line nobody writes).
    pub(super) access_log: bool,
    /// Where they go.
    pub(super) access_lines: Arc<Lines>,
    /// Shutdown has begun: `/health` says so.
    pub(super) draining: AtomicBool,
}

impl Shared {
    /// `http` or `https`: the scheme users see.
    pub fn proto(&self) -> &'static str {
        self.proto
    }
}

impl Proxy {
    /// Builds the proxy: the Daytona API when `DAYTONA_API_URL` is set, the
    /// embedded registry (watched for changes) otherwise. Must run inside a
    /// Tokio runtime.
    pub fn new(config: Config, access_lines: Lines) -> Result<Proxy, ConfigError> {
        let metrics = Arc::new(Metrics::default());
        let control_plane = Arc::new(match &config.api_url {
            Some(_) => ControlPlane::Api(Box::new(DaytonaApi::new(&config, metrics.clone())?)),
            None => {
                let registry =
                    Registry::open(&config.registry_file).map_err(|e| ConfigError::setting("REGISTRY_FILE", e))?;
                registry.watch(config.registry_reload_interval);
                ControlPlane::Registry(registry)
            }
        });
        let secret = if !config.cookie_secret.is_empty() { &config.cookie_secret } else { &config.api_key };
        let signer = if secret.is_empty() {
            tracing::warn!(
                "auth cookies are signed with a random key and stop working when this process restarts: \
                 set AUTH_COOKIE_SECRET (or PROXY_API_KEY) to keep them across restarts and instances"
            );
            CookieSigner::random()
        } else {
            CookieSigner::new(secret.as_bytes())
        };
        let activity = Activity::new(
            control_plane.clone(),
            config.activity_dedup,
            config.activity_keepalive,
            config.api_client_timeout,
        );
        let oidc = Oidc::new(&config.oidc, config.api_url.as_deref(), config.api_client_timeout)
            .map_err(|e| ConfigError::setting("OIDC_DOMAIN", e))?;
        let health = serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }).to_string();
        let shared = Shared {
            tunnels: Tunnels::new(config.tunnel_idle_timeout),
            sandbox_limit: SandboxLimit::new(config.max_connections_per_sandbox),
            metrics,
            oidc,
            proto: if config.https { "https" } else { "http" },
            warning: config.warning.as_ref().map(WarningPage::new),
            control_plane,
            pages: ErrorPages::new(),
            signer,
            activity,
            health: Bytes::from(health),
            draining: AtomicBool::new(false),
            access_log: config.access_log && tracing::enabled!(target: "access", tracing::Level::INFO),
            access_lines: Arc::new(access_lines),
            config,
        };
        Ok(Proxy { pool: Pool::new(&shared.config, &shared.metrics), shared: Arc::new(shared) })
    }

    /// Another worker: the same shared state, its own upstream pool.
    pub fn worker(&self) -> Proxy {
        Proxy { shared: self.shared.clone(), pool: Pool::new(&self.shared.config, &self.shared.metrics) }
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The open tunnels (shared by every worker).
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.shared.tunnels
    }

    /// Shutdown has begun: `/health` answers 503 draining from now on, for
    /// every worker.
    pub fn start_draining(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }
}
