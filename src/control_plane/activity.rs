//! Last-activity updates (SPEC 5) that keep sandboxes awake: at most one
//! per sandbox per interval across all requests, detached from the request,
//! and repeated while a WebSocket or streaming response stays open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use moka::sync::Cache;

use super::ControlPlane;

pub struct Activity {
    control_plane: Arc<ControlPlane>,
    /// Sandboxes updated within the dedup interval.
    recent: Cache<Arc<str>, (), ahash::RandomState>,
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
        let activity = Arc::new(Activity {
            control_plane,
            recent: Cache::builder()
                .time_to_live(dedup)
                .max_capacity(1_000_000)
                .build_with_hasher(ahash::RandomState::new()),
            open: Mutex::new(HashMap::new()),
            timeout,
        });
        let weak = Arc::downgrade(&activity);
        tokio::spawn(keepalive_loop(weak, keepalive));
        activity
    }

    /// Records activity for `sandbox` unless it was recorded recently. The
    /// call runs detached, so a request that ends first cannot cancel it.
    pub fn touch(self: &Arc<Self>, sandbox: &str) {
        if self.recent.contains_key(sandbox) {
            return;
        }
        let sandbox: Arc<str> = sandbox.into();
        if !self.recent.entry(sandbox.clone()).or_insert(()).is_fresh() {
            return; // another request won the race
        }
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
    pub fn hold(self: &Arc<Self>, sandbox: &str) -> ActivityGuard {
        self.touch(sandbox);
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
        for sandbox in activity.held() {
            activity.touch(&sandbox);
        }
    }
}
