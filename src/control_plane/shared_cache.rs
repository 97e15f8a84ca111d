//! The cache shared across proxy instances (SPEC 7 `REDIS_HOST`/`REDIS_PORT`):
//! a Redis second level behind each instance's in-process caches. Keys and
//! values are Daytona's (`proxy:sandbox-runner-info:{id}`,
//! `proxy:sandbox-public:{id}`, JSON `{"value": ...}`), so the API's own
//! invalidations (it deletes those keys when a sandbox is archived or its
//! public flag changes) reach every instance. Credentials are keyed by a
//! hash, never the raw secret. Redis being slow or down never fails a
//! request: every operation has a short time limit and a miss falls through
//! to the API.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde_json::{json, Value};

use super::{Runner, Target};
use crate::config::ConfigError;

/// Time limit of one Redis operation.
const OP_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct SharedCache {
    conn: ConnectionManager,
}

impl SharedCache {
    /// Connects lazily: start-up does not wait for Redis.
    pub fn new(host: &str, port: u16) -> Result<SharedCache, ConfigError> {
        let client = redis::Client::open(format!("redis://{host}:{port}/"))
            .map_err(|e| ConfigError::setting("REDIS_HOST", e))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ConfigError::setting("REDIS_HOST", e))?;
        Ok(SharedCache { conn })
    }

    /// The value under `key` and how long it has left.
    pub async fn get(&self, key: &str) -> Option<(Value, Duration)> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        let query = pipe.get(key).pttl(key).query_async::<(Option<Vec<u8>>, i64)>(&mut conn);
        let (Some(bytes), pttl @ 1..) = timed("get", query).await? else { return None };
        let mut wrapped: Value = serde_json::from_slice(&bytes).ok()?;
        Some((wrapped.get_mut("value")?.take(), Duration::from_millis(pttl as u64)))
    }

    /// Stores `value` under `key` for `ttl`, in the background.
    pub fn set(&self, key: String, value: Value, ttl: Duration) {
        let mut conn = self.conn.clone();
        let body = json!({ "value": value }).to_string();
        let millis = ttl.as_millis().max(1) as u64;
        tokio::spawn(async move {
            let mut cmd = redis::cmd("SET");
            let query = cmd.arg(&key).arg(body).arg("PX").arg(millis).query_async::<()>(&mut conn);
            timed("set", query).await;
        });
    }

    /// Sets `key` for `ttl` unless it exists: true when this call set it
    /// (used to make one last-activity update across instances). `None`
    /// when Redis did not answer.
    pub async fn claim(&self, key: &str, ttl: Duration) -> Option<bool> {
        let mut conn = self.conn.clone();
        let millis = ttl.as_millis().max(1) as u64;
        let mut cmd = redis::cmd("SET");
        let query = cmd.arg(key).arg("1").arg("NX").arg("PX").arg(millis).query_async::<Option<String>>(&mut conn);
        timed("claim", query).await.map(|set| set.is_some())
    }
}

/// Runs one Redis operation within `OP_TIMEOUT`; `None` (logged) when it
/// failed or timed out.
async fn timed<T>(op: &str, query: impl std::future::Future<Output = redis::RedisResult<T>>) -> Option<T> {
    let error = match tokio::time::timeout(OP_TIMEOUT, query).await {
        Ok(Ok(value)) => return Some(value),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    tracing::debug!(%error, "shared cache {op} failed; using the control plane");
    None
}

/// A value the shared cache holds, in the JSON Daytona's proxy writes.
pub trait Shared: Sized {
    fn to_json(&self) -> Value;
    fn from_json(value: Value) -> Option<Self>;
}

impl Shared for bool {
    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_json(value: Value) -> Option<Self> {
        value.as_bool()
    }
}

/// A signed token's sandbox (`null`: invalid or expired).
impl Shared for Option<Arc<str>> {
    fn to_json(&self) -> Value {
        self.as_deref().map_or(Value::Null, |s| Value::String(s.to_string()))
    }
    fn from_json(value: Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            Value::String(s) => Some(Some(s.into())),
            _ => None,
        }
    }
}

/// Daytona's `RunnerInfo`: `{"apiUrl": <runner proxy URL>, "apiKey": ...}`.
impl Shared for Target {
    fn to_json(&self) -> Value {
        match self {
            Target::Runner(r) => {
                let key = r.auth.to_str().unwrap_or_default().strip_prefix("Bearer ").unwrap_or_default();
                json!({ "apiUrl": format!("{}://{}{}", r.scheme, r.authority, r.prefix), "apiKey": key })
            }
            Target::Direct(_) => Value::Null,
        }
    }
    fn from_json(value: Value) -> Option<Self> {
        let runner = Runner::new(value.get("apiUrl")?.as_str()?, value.get("apiKey")?.as_str()?).ok()?;
        Some(Target::Runner(Arc::new(runner)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_daytonas_shape() {
        let runner = Target::Runner(Arc::new(Runner::new("https://runner.example:8443/base", "k3y").unwrap()));
        let json = runner.to_json();
        assert_eq!(json, json!({ "apiUrl": "https://runner.example:8443/base", "apiKey": "k3y" }));
        let Some(Target::Runner(back)) = Target::from_json(json) else { panic!("a runner") };
        assert_eq!(back.authority, "runner.example:8443");
        assert_eq!(back.prefix, "/base");
        assert_eq!(back.auth, "Bearer k3y");
        assert!(Target::from_json(json!({ "apiUrl": "ftp://x" , "apiKey": "k"})).is_none());

        assert_eq!(bool::from_json(true.to_json()), Some(true));
        let signed: Option<Arc<str>> = Some("sbx".into());
        assert_eq!(Option::<Arc<str>>::from_json(signed.to_json()), Some(signed));
        assert_eq!(Option::<Arc<str>>::from_json(Value::Null), Some(None));
    }
}
