//! Read-through lookup cache: concurrent misses for one key share one load,
//! the loader chooses each entry's TTL, errors are never cached, and an
//! optional last-good copy serves while the source is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use super::LookupError;
use serde_json::Value;

use super::shared_cache::{Shared, SharedCache};
use crate::metrics::{CacheName, CacheResult, Metrics};

/// A value with the TTL its loader chose.
#[derive(Clone)]
struct Timed<V> {
    value: V,
    ttl: Duration,
}

/// Expires each entry after its own TTL plus a fixed extra (zero for fresh
/// entries, the stale-if-error window for last-good copies).
struct PerEntry {
    extra: Duration,
}

impl<V> Expiry<String, Timed<V>> for PerEntry {
    fn expire_after_create(&self, _key: &String, value: &Timed<V>, _now: Instant) -> Option<Duration> {
        Some(value.ttl + self.extra)
    }
}

/// moka's default SipHash was ~5% of a request's instructions. ahash is
/// also randomly keyed per process, so attacker-chosen keys (sandbox ids
/// from hosts) still cannot be made to collide.
type Hasher = ahash::RandomState;

pub struct ReadThrough<V> {
    fresh: Cache<String, Timed<V>, Hasher>,
    /// Copies that outlive `fresh` by the stale-if-error window.
    last_good: Option<Cache<String, Timed<V>, Hasher>>,
    shared: Option<SharedLevel<V>>,
    name: CacheName,
    metrics: Arc<Metrics>,
}

/// The shared second level behind one cache.
struct SharedLevel<V> {
    cache: SharedCache,
    /// This cache's key prefix there (Daytona's).
    prefix: &'static str,
    /// How long entries found or stored there are kept in-process.
    local_ttl: Duration,
    to_json: fn(&V) -> Value,
    from_json: fn(Value) -> Option<V>,
}

impl<V: Clone + Send + Sync + 'static> ReadThrough<V> {
    /// `stale_if_error`: how long after expiry a value may still answer when
    /// loading fails transiently (`None`: never).
    /// Lookups are counted in `metrics` under `name`.
    pub fn new(capacity: u64, stale_if_error: Option<Duration>, name: CacheName, metrics: &Arc<Metrics>) -> Self {
        let build = |extra| {
            Cache::builder().max_capacity(capacity).expire_after(PerEntry { extra }).build_with_hasher(Hasher::new())
        };
        ReadThrough {
            fresh: build(Duration::ZERO),
            last_good: stale_if_error.filter(|d| !d.is_zero()).map(build),
            shared: None,
            name,
            metrics: metrics.clone(),
        }
    }

    /// Backs the cache with the shared cache under `prefix` (Daytona's key
    /// prefixes). Local entries then live at most `local_ttl`.
    pub fn shared(mut self, shared: Option<&SharedCache>, prefix: &'static str, local_ttl: Duration) -> Self
    where
        V: Shared,
    {
        self.shared = shared.map(|cache| SharedLevel {
            cache: cache.clone(),
            prefix,
            local_ttl,
            to_json: V::to_json,
            from_json: V::from_json,
        });
        self
    }

    /// Returns the cached value or runs `load`, which yields the value and its
    /// TTL. Concurrent callers for one key wait for the same load.
    pub async fn get<F, Fut>(&self, key: &str, load: F) -> Result<V, LookupError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(V, Duration), LookupError>>,
    {
        // A hit never builds the loader's future, which holds a whole HTTP
        // call and would be copied on every request otherwise.
        if let Some(hit) = self.fresh.get(key).await {
            self.metrics.local().cache(self.name, CacheResult::Hit);
            return Ok(hit.value);
        }
        self.metrics.local().cache(self.name, CacheResult::Miss);
        let loaded = self
            .fresh
            .try_get_with_by_ref(key, async {
                let timed = match &self.shared {
                    None => {
                        let (value, ttl) = Box::pin(load()).await?;
                        Timed { value, ttl }
                    }
                    Some(shared) => {
                        let shared_key = format!("{}{key}", shared.prefix);
                        let found = shared.cache.get(&shared_key).await;
                        let (value, ttl) = match found.and_then(|(v, left)| Some(((shared.from_json)(v)?, left))) {
                            Some(hit) => hit,
                            None => {
                                let (value, ttl) = Box::pin(load()).await?;
                                shared.cache.set(shared_key, (shared.to_json)(&value), ttl);
                                (value, ttl)
                            }
                        };
                        Timed { value, ttl: ttl.min(shared.local_ttl) }
                    }
                };
                if let Some(last_good) = &self.last_good {
                    last_good.insert(key.to_string(), timed.clone()).await;
                }
                Ok::<_, LookupError>(timed)
            })
            .await;
        match loaded {
            Ok(timed) => Ok(timed.value),
            Err(err) => {
                if err.is_transient() {
                    if let Some(stale) = self.stale(key).await {
                        self.metrics.local().cache(self.name, CacheResult::Stale);
                        tracing::warn!(error = %err, "control plane unavailable; serving an expired entry");
                        return Ok(stale);
                    }
                }
                Err(Arc::unwrap_or_clone(err))
            }
        }
    }

    /// Whether a fresh entry for `key` is cached.
    pub fn contains(&self, key: &str) -> bool {
        self.fresh.contains_key(key)
    }

    /// Forgets `key` (the stale-if-error copy stays).
    pub async fn invalidate(&self, key: &str) {
        self.fresh.invalidate(key).await;
    }

    async fn stale(&self, key: &str) -> Option<V> {
        self.last_good.as_ref()?.get(key).await.map(|t| t.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let cache = Arc::new(ReadThrough::<u32>::new(100, None, CacheName::Public, &Arc::default()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, calls, mut wait) = (cache.clone(), calls.clone(), wait.clone());
                tokio::spawn(async move {
                    cache
                        .get("k", || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            wait.wait_for(|go| *go).await.unwrap();
                            Ok((7, Duration::from_secs(60)))
                        })
                        .await
                })
            })
            .collect();
        // Current-thread runtime: yielding lets every task run up to its wait.
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = ReadThrough::<u32>::new(100, None, CacheName::Public, &Arc::default());
        let r = cache.get("k", || async { Err(LookupError::Unavailable("down".into())) }).await;
        assert!(r.is_err());
        let r = cache.get("k", || async { Ok((1, Duration::from_secs(60))) }).await;
        assert_eq!(r.unwrap(), 1);
    }

    #[tokio::test]
    async fn loader_chooses_ttl() {
        let cache = ReadThrough::<u32>::new(100, None, CacheName::Public, &Arc::default());
        cache.get("k", || async { Ok((1, Duration::from_millis(30))) }).await.unwrap();
        assert_eq!(cache.get("k", || async { Ok((2, Duration::from_secs(60))) }).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await; // let the TTL pass
        assert_eq!(cache.get("k", || async { Ok((2, Duration::from_secs(60))) }).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn stale_entry_serves_only_transient_errors_within_window() {
        let cache = ReadThrough::<u32>::new(100, Some(Duration::from_millis(200)), CacheName::Runner, &Arc::default());
        cache.get("k", || async { Ok((1, Duration::from_millis(20))) }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await; // expire the fresh entry
        let r = cache.get("k", || async { Err(LookupError::Unavailable("down".into())) }).await;
        assert_eq!(r.unwrap(), 1);
        let r = cache.get("k", || async { Err(LookupError::NotFound) }).await;
        assert!(matches!(r, Err(LookupError::NotFound)), "a definite answer is not hidden by stale data");
        tokio::time::sleep(Duration::from_millis(250)).await; // past the stale window
        let r = cache.get("k", || async { Err(LookupError::Unavailable("down".into())) }).await;
        assert!(r.is_err());
    }
}
