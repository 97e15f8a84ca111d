//! Read-through lookup cache: concurrent misses for one key share one load,
//! the loader chooses each entry's TTL, errors are never cached, and an
//! expired entry may answer for a bounded time while the source is down.
//!
//! A sharded map of compact slots rather than a general cache: a large
//! deployment keeps 100,000 sandboxes here, and a hit is on every request.
//! An entry is its key, its value and two instants (about 100 bytes);
//! expired entries are swept as the map grows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::LookupError;
use serde_json::Value;

use super::sharded::{Sharded, SHARDS};
use super::shared_cache::{Shared, SharedCache};
use crate::metrics::{CacheName, CacheResult, Metrics};

/// New keys in a shard between sweeps of its expired entries.
const SWEEP_EVERY: usize = 1024;

enum Slot<V> {
    Ready {
        value: V,
        fresh_until: Instant,
        /// Until when it may answer while loading fails transiently.
        stale_until: Instant,
    },
    /// A load is under way; `stale` is the expired value it replaces.
    Loading { load: Arc<Load<V>>, stale: Option<(V, Instant)> },
}

/// One load that concurrent callers for a key wait for.
struct Load<V> {
    done: Notify,
    /// Set before `done` is notified.
    result: Mutex<Option<Result<V, LookupError>>>,
    /// The loading caller went away (its request ended): a waiter takes over.
    abandoned: AtomicBool,
}

impl<V> Load<V> {
    fn new() -> Arc<Load<V>> {
        Arc::new(Load { done: Notify::new(), result: Mutex::new(None), abandoned: AtomicBool::new(false) })
    }
}

struct Shard<V> {
    map: HashMap<Box<str>, Slot<V>, ahash::RandomState>,
    new_keys: usize,
}

pub struct ReadThrough<V> {
    shards: Sharded<Shard<V>>,
    capacity_per_shard: usize,
    stale_if_error: Option<Duration>,
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

/// What a caller does after looking at the slot.
enum Next<V> {
    Lead(Arc<Load<V>>, Option<(V, Instant)>),
    Wait(Arc<Load<V>>),
}

impl<V: Clone + Send + Sync + 'static> ReadThrough<V> {
    /// At most `capacity` entries. `stale_if_error`: how long after expiry
    /// a value may still answer when loading fails transiently (`None`:
    /// never). Lookups are counted in `metrics` under `name`.
    pub fn new(capacity: u64, stale_if_error: Option<Duration>, name: CacheName, metrics: &Arc<Metrics>) -> Self {
        ReadThrough {
            shards: Sharded::new(|| Shard { map: HashMap::with_hasher(ahash::RandomState::new()), new_keys: 0 }),
            capacity_per_shard: (capacity as usize).div_ceil(SHARDS).max(1),
            stale_if_error: stale_if_error.filter(|d| !d.is_zero()),
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

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard<V>> {
        self.shards.lock(key)
    }

    /// Returns the cached value or runs `load`, which yields the value and its
    /// TTL. Concurrent callers for one key wait for the same load.
    pub async fn get<F, Fut>(&self, key: &str, load: F) -> Result<V, LookupError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(V, Duration), LookupError>>,
    {
        let mut load = Some(load);
        let mut counted = false;
        loop {
            let next = {
                let mut shard = self.shard(key);
                let now = crate::clock::now();
                match shard.map.get_mut(key) {
                    Some(Slot::Ready { value, fresh_until, .. }) if now < *fresh_until => {
                        let value = value.clone();
                        drop(shard);
                        self.metrics.local().cache(self.name, CacheResult::Hit);
                        return Ok(value);
                    }
                    Some(slot @ Slot::Ready { .. }) => {
                        // Expired: this caller reloads it, keeping the old
                        // value as the fallback within its stale window.
                        let started = Load::new();
                        let stale = match slot {
                            Slot::Ready { value, stale_until, .. } if now < *stale_until => {
                                Some((value.clone(), *stale_until))
                            }
                            _ => None,
                        };
                        *slot = Slot::Loading { load: started.clone(), stale: stale.clone() };
                        Next::Lead(started, stale)
                    }
                    Some(Slot::Loading { load, .. }) => Next::Wait(load.clone()),
                    None => {
                        self.make_room(&mut shard, now);
                        let started = Load::new();
                        shard.map.insert(key.into(), Slot::Loading { load: started.clone(), stale: None });
                        Next::Lead(started, None)
                    }
                }
            };
            if !counted {
                self.metrics.local().cache(self.name, CacheResult::Miss);
                counted = true;
            }
            match next {
                Next::Lead(started, stale) => {
                    let Some(load) = load.take() else { continue };
                    let mut leading = Leading { cache: self, key, load: started, finished: false };
                    let result = self.load(key, load).await;
                    return leading.finish(result, stale);
                }
                Next::Wait(pending) => {
                    let notified = pending.done.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // The result may have come between the look and `enable`.
                    if let Some(result) = pending.result.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                        return result;
                    }
                    if !pending.abandoned.load(Ordering::Acquire) {
                        notified.await;
                    }
                    if let Some(result) = pending.result.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                        return result;
                    }
                    // The loading caller went away: look again.
                }
            }
        }
    }

    /// Runs the loader (behind the shared level, if any): the value and how
    /// long it stays fresh here.
    async fn load<F, Fut>(&self, key: &str, load: F) -> Result<(V, Duration), LookupError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(V, Duration), LookupError>>,
    {
        let Some(shared) = &self.shared else { return Box::pin(load()).await };
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
        Ok((value, ttl.min(shared.local_ttl)))
    }

    /// Sweeps expired entries every [`SWEEP_EVERY`] new keys, and when the
    /// shard is full also drops an eighth of it (hash order is arbitrary).
    fn make_room(&self, shard: &mut Shard<V>, now: Instant) {
        shard.new_keys += 1;
        let full = shard.map.len() >= self.capacity_per_shard;
        if !full && shard.new_keys < SWEEP_EVERY {
            return;
        }
        shard.new_keys = 0;
        shard.map.retain(|_, slot| !matches!(slot, Slot::Ready { stale_until, .. } if *stale_until <= now));
        if shard.map.len() >= self.capacity_per_shard {
            let mut drop = self.capacity_per_shard.div_ceil(8);
            shard.map.retain(|_, slot| match slot {
                Slot::Ready { .. } if drop > 0 => {
                    drop -= 1;
                    false
                }
                _ => true,
            });
        }
    }

    /// The value for `key` if one is cached and fresh at `now` (counted as
    /// a hit).
    pub fn fresh(&self, key: &str, now: Instant) -> Option<V> {
        let value = match self.shard(key).map.get(key) {
            Some(Slot::Ready { value, fresh_until, .. }) if now < *fresh_until => value.clone(),
            _ => return None,
        };
        self.metrics.local().cache(self.name, CacheResult::Hit);
        Some(value)
    }

    /// Forgets `key`; within the stale-if-error window its value stays as
    /// the fallback for the next load.
    pub async fn invalidate(&self, key: &str) {
        let mut shard = self.shard(key);
        let now = Instant::now();
        match shard.map.get_mut(key) {
            Some(Slot::Ready { fresh_until, stale_until, .. })
                if self.stale_if_error.is_some() && now < *stale_until =>
            {
                *fresh_until = now;
            }
            Some(Slot::Ready { .. }) => {
                shard.map.remove(key);
            }
            _ => {}
        }
    }
}

/// The caller running a key's load. Dropped before it finished (its
/// request ended), it hands the key back so a waiter loads instead.
struct Leading<'a, V: Clone + Send + Sync + 'static> {
    cache: &'a ReadThrough<V>,
    key: &'a str,
    load: Arc<Load<V>>,
    finished: bool,
}

impl<V: Clone + Send + Sync + 'static> Leading<'_, V> {
    /// Stores the outcome, wakes the waiters, and returns what they get: the
    /// value, the stale value for a transient failure within its window, or
    /// the error (never cached).
    fn finish(
        &mut self,
        result: Result<(V, Duration), LookupError>,
        stale: Option<(V, Instant)>,
    ) -> Result<V, LookupError> {
        self.finished = true;
        let now = Instant::now();
        let cache = self.cache;
        let (answer, slot) = match result {
            Ok((value, ttl)) => {
                let fresh_until = now + ttl;
                let stale_until = fresh_until + cache.stale_if_error.unwrap_or_default();
                (Ok(value.clone()), Some(Slot::Ready { value, fresh_until, stale_until }))
            }
            Err(err) if err.is_transient() => match stale {
                Some((value, stale_until)) if now < stale_until => {
                    tracing::warn!(error = %err, "control plane unavailable; serving an expired entry");
                    cache.metrics.local().cache(cache.name, CacheResult::Stale);
                    (Ok(value.clone()), Some(Slot::Ready { value, fresh_until: now, stale_until }))
                }
                _ => (Err(err), None),
            },
            Err(err) => (Err(err), None),
        };
        *self.load.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer.clone());
        let mut shard = cache.shard(self.key);
        match slot {
            Some(slot) => shard.map.insert(self.key.into(), slot),
            None => shard.map.remove(self.key),
        };
        drop(shard);
        self.load.done.notify_waiters();
        answer
    }
}

impl<V: Clone + Send + Sync + 'static> Drop for Leading<'_, V> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut shard = self.cache.shard(self.key);
        if let Some(Slot::Loading { stale: Some((value, stale_until)), .. }) = shard.map.remove(self.key) {
            let fresh_until = Instant::now();
            shard.map.insert(self.key.into(), Slot::Ready { value, fresh_until, stale_until });
        }
        drop(shard);
        self.load.abandoned.store(true, Ordering::Release);
        self.load.done.notify_waiters();
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

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_loading_caller_goes_away() {
        let cache = Arc::new(ReadThrough::<u32>::new(100, None, CacheName::Public, &Arc::default()));
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("k", std::future::pending).await })
        };
        tokio::task::yield_now().await; // the leader is loading
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("k", || async { Ok((9, Duration::from_secs(60))) }).await })
        };
        tokio::task::yield_now().await; // the waiter waits for it
        leader.abort();
        let taken_over = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("the waiter is not stuck");
        assert_eq!(taken_over.unwrap().unwrap(), 9);
    }

    #[tokio::test]
    async fn entries_stay_within_capacity() {
        let cache = ReadThrough::<u32>::new(160, None, CacheName::Public, &Arc::default());
        for i in 0..5_000u32 {
            cache.get(&format!("sandbox-{i}"), || async move { Ok((i, Duration::from_secs(60))) }).await.unwrap();
        }
        let held: usize = cache.shards.each().map(|s| s.map.len()).sum();
        assert!(held <= 160, "{held} entries for a capacity of 160");
        assert_eq!(cache.get("sandbox-4999", || async { Ok((0, Duration::from_secs(60))) }).await.unwrap(), 4999);
    }

    #[tokio::test]
    async fn an_invalidated_entry_reloads_but_still_covers_an_outage() {
        let cache = ReadThrough::<u32>::new(100, Some(Duration::from_secs(60)), CacheName::Runner, &Arc::default());
        cache.get("k", || async { Ok((1, Duration::from_secs(60))) }).await.unwrap();
        cache.invalidate("k").await;
        assert!(cache.fresh("k", Instant::now()).is_none());
        let r = cache.get("k", || async { Err(LookupError::Unavailable("down".into())) }).await;
        assert_eq!(r.unwrap(), 1, "the stale copy answers");
        assert_eq!(cache.get("k", || async { Ok((2, Duration::from_secs(60))) }).await.unwrap(), 2);
        assert_eq!(cache.fresh("k", Instant::now()), Some(2));
    }
}
