//! `MAX_CONNECTIONS_PER_SANDBOX`: concurrent requests and WebSocket tunnels
//! per sandbox, across all workers. Over the limit a request gets 429; a
//! permit lives as long as its answer streams or its tunnel is open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::control_plane::activity::ActivityGuard;

pub struct SandboxLimit {
    max: usize,
    open: Mutex<HashMap<Arc<str>, usize, ahash::RandomState>>,
}

/// One request's or tunnel's place under its sandbox's limit.
pub struct Permit {
    limit: Arc<SandboxLimit>,
    sandbox: Arc<str>,
}

impl SandboxLimit {
    /// `None` when `max` is 0 (no limit).
    pub fn new(max: usize) -> Option<Arc<SandboxLimit>> {
        (max > 0).then(|| Arc::new(SandboxLimit { max, open: Mutex::default() }))
    }

    /// A place for one more request to `sandbox`, if it has one left.
    pub fn acquire(self: &Arc<Self>, sandbox: &str) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (key, count) = match open.get_key_value(sandbox) {
            Some((key, count)) => (key.clone(), *count),
            None => (Arc::from(sandbox), 0),
        };
        if count >= self.max {
            return None;
        }
        open.insert(key.clone(), count + 1);
        Some(Permit { limit: self.clone(), sandbox: key })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.sandbox) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.sandbox);
            }
        }
    }
}

/// What must live as long as an answer streams or a tunnel is open.
#[derive(Default)]
pub struct Holds {
    /// Keeps the sandbox's last activity fresh.
    pub activity: Option<ActivityGuard>,
    /// Its place under `MAX_CONNECTIONS_PER_SANDBOX`.
    pub permit: Option<Permit>,
    /// Called when a tunnel closes, with the bytes it moved up and down.
    pub on_close: Option<Box<dyn FnOnce(u64, u64) + Send>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_sandbox_and_return_on_drop() {
        assert!(SandboxLimit::new(0).is_none(), "0 is off");
        let limit = SandboxLimit::new(2).unwrap();
        let a1 = limit.acquire("a").unwrap();
        let _a2 = limit.acquire("a").unwrap();
        assert!(limit.acquire("a").is_none(), "over the limit");
        let _b = limit.acquire("b").unwrap();
        drop(a1);
        assert!(limit.acquire("a").is_some(), "a place came back");
    }
}
