//! Last-activity updates (SPEC 5) that keep sandboxes awake: at most one
//! per sandbox per interval across all requests, detached from the request,
//! and repeated while a WebSocket or streaming response stays open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::sharded::Sharded;
use super::ControlPlane;

pub struct Activity {
    control_plane: Arc<ControlPlane>,
    /// When each sandbox was last updated.
    recent: Recent,
    /// Open long-lived connections per sandbox.
    open: Mutex<HashMap<Arc<str>, usize>>,
    /// Limit for one update call.
    timeout: Duration,
}

/// Keeps a sandbox's updates going while it lives (a tunnel or a stream).
pub struct ActivityGuard {
    activity: Arc<Activity>,
    sandbox: Arc<str>,
}

impl Activity {
    /// `dedup`: at most one update per sandbox this often (~45 s);
    /// `keepalive`: how often open connections renew it (~50 s).
    pub fn new(
        control_plane: Arc<ControlPlane>,
        dedup: Duration,
        keepalive: Duration,
        timeout: Duration,
    ) -> Arc<Activity> {
        let activity =
            Arc::new(Activity { control_plane, recent: Recent::new(dedup), open: Mutex::new(HashMap::new()), timeout });
        let weak = Arc::downgrade(&activity);
        tokio::spawn(keepalive_loop(weak, keepalive));
        activity
    }

    /// Records activity for `sandbox` at `now` unless it was recorded
    /// recently. The call runs detached, so a request that ends first
    /// cannot cancel it. `now`: a clock reading the caller has anyway (a
    /// request's start).
    pub fn touch(self: &Arc<Self>, sandbox: &str, now: Instant) {
        let Some(sandbox) = self.recent.claim(sandbox, now) else { return };
        let this = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(this.timeout, this.control_plane.touch(&sandbox)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "last-activity update failed"),
                Err(_) => tracing::debug!("last-activity update timed out"),
            }
        });
    }

    /// Touches `sandbox` and keeps renewing it until the guard is dropped.
    pub fn hold(self: &Arc<Self>, sandbox: &str, now: Instant) -> ActivityGuard {
        self.touch(sandbox, now);
        let sandbox: Arc<str> = sandbox.into();
        *self.open.lock().unwrap_or_else(|e| e.into_inner()).entry(sandbox.clone()).or_default() += 1;
        ActivityGuard { activity: self.clone(), sandbox }
    }

    /// Sandboxes with open long-lived connections.
    fn held(&self) -> Vec<Arc<str>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let mut open = self.activity.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.sandbox) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.sandbox);
            }
        }
    }
}

async fn keepalive_loop(activity: Weak<Activity>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(activity) = activity.upgrade() else { return };
        let now = Instant::now();
        for sandbox in activity.held() {
            activity.touch(&sandbox, now);
        }
        activity.recent.forget_before(now);
    }
}

/// When each sandbox was last updated, for the dedup interval. A lock, two
/// short hashes and a lookup cost a request two thirds of what a
/// concurrent cache's did (246 instructions against 365, `BENCHMARKS.md`),
/// and an entry is a key and a time (a cached sandbox: 711 -> 497 bytes).
struct Recent {
    shards: Sharded<HashMap<Arc<str>, Instant, ahash::RandomState>>,
    every: Duration,
}

/// Entries a shard keeps before it drops those past the interval at once
/// (else that waits for the next keep-alive tick): a million in all.
const SHARD_CAPACITY: usize = if cfg!(test) { 1 << 8 } else { 1 << 16 };

impl Recent {
    fn new(every: Duration) -> Recent {
        Recent { shards: Sharded::new(|| HashMap::with_hasher(ahash::RandomState::new())), every }
    }

    /// `sandbox`, as the shared name the update needs, when it was not
    /// updated within the interval before `now`; it counts as updated at
    /// `now` from here on. `None` when it was (or another request just
    /// claimed it).
    fn claim(&self, sandbox: &str, now: Instant) -> Option<Arc<str>> {
        let mut shard = self.shards.lock(sandbox);
        let name: Arc<str> = match shard.get_key_value(sandbox) {
            Some((_, last)) if now.saturating_duration_since(*last) < self.every => return None,
            Some((name, _)) => name.clone(),
            None => {
                if shard.len() >= SHARD_CAPACITY {
                    shard.retain(|_, last| now.saturating_duration_since(*last) < self.every);
                    // More sandboxes active at once than it holds: start
                    // over (each may be updated once more) rather than
                    // scan a full shard on every new one.
                    if shard.len() > SHARD_CAPACITY / 2 {
                        shard.clear();
                    }
                }
                sandbox.into()
            }
        };
        shard.insert(name.clone(), now);
        Some(name)
    }

    /// Drops the entries whose interval ended before `now`.
    fn forget_before(&self, now: Instant) {
        for mut shard in self.shards.each() {
            shard.retain(|_, last| now.saturating_duration_since(*last) < self.every);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_is_claimed_once_per_interval() {
        let recent = Recent::new(Duration::from_secs(45));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(recent.claim("sbx1", at(0)).as_deref(), Some("sbx1"));
        assert_eq!(recent.claim("sbx1", at(0)), None);
        assert_eq!(recent.claim("sbx1", at(44)), None);
        assert_eq!(recent.claim("sbx2", at(44)).as_deref(), Some("sbx2"), "another sandbox has its own interval");
        assert_eq!(recent.claim("sbx1", at(45)).as_deref(), Some("sbx1"));
        // The interval runs from the last update, not the first.
        assert_eq!(recent.claim("sbx1", at(89)), None);
        assert_eq!(recent.claim("sbx1", at(90)).as_deref(), Some("sbx1"));
        // A request that started before the last update (a slow one) does not make another.
        assert_eq!(recent.claim("sbx1", at(80)), None);
    }

    #[test]
    fn entries_past_their_interval_are_forgotten() {
        let recent = Recent::new(Duration::from_secs(45));
        let t0 = Instant::now();
        recent.claim("old", t0);
        recent.claim("new", t0 + Duration::from_secs(30));
        recent.forget_before(t0 + Duration::from_secs(50));
        let left: usize = recent.shards.each().map(|s| s.len()).sum();
        assert_eq!(left, 1);
        assert_eq!(recent.claim("new", t0 + Duration::from_secs(50)), None, "the recent one stays");
    }

    #[test]
    fn a_full_shard_makes_room() {
        let recent = Recent::new(Duration::from_secs(45));
        let in_first_shard = |prefix: &str, n: usize| -> Vec<String> {
            let names = (0..).map(|i| format!("{prefix}{i}"));
            names.filter(|name| recent.shards.index(name) == 0).take(n).collect()
        };
        let first_len = || recent.shards.each().next().map_or(0, |s| s.len());
        let t0 = Instant::now();
        for name in in_first_shard("old", SHARD_CAPACITY) {
            recent.claim(&name, t0);
        }
        assert_eq!(first_len(), SHARD_CAPACITY);
        // Full: those past their interval go, the new one stays.
        let later = t0 + Duration::from_secs(46);
        let new = in_first_shard("new", SHARD_CAPACITY + 1);
        recent.claim(&new[0], later);
        assert_eq!(first_len(), 1);
        for name in &new[1..SHARD_CAPACITY] {
            recent.claim(name, later);
        }
        assert_eq!(first_len(), SHARD_CAPACITY);
        assert_eq!(recent.claim(&new[0], later), None, "still within its interval");
        // Full of sandboxes within their interval: the shard starts over.
        assert!(recent.claim(&new[SHARD_CAPACITY], later).is_some());
        assert_eq!(first_len(), 1);
        assert!(recent.claim(&new[0], later).is_some(), "updated once more");
    }
}
