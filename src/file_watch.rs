//! Watching files for changes (registry, certificates): what identifies a
//! version of a file, and the poll loop that reloads on a new version.

use std::path::Path;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

/// Modification time, size and inode. Timestamps come from a coarse clock
/// and a rewrite may keep the size; an atomic replace always makes a new
/// inode.
pub type Stamp = (SystemTime, u64, u64);

/// The file's current stamp, `None` if it cannot be read.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// Every `interval`, computes `stamp` of `owner` and calls `reload` when it
/// differs from the last one; stops once `owner` is dropped.
pub fn watch<T, S>(
    owner: Weak<T>,
    interval: Duration,
    stamp: impl Fn(&T) -> S + Send + 'static,
    reload: impl Fn(&T) + Send + 'static,
) where
    T: Send + Sync + 'static,
    S: PartialEq + Send + 'static,
{
    let mut seen = owner.upgrade().map(|o| stamp(&o));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(owner) = owner.upgrade() else { return };
            let now = Some(stamp(&owner));
            if now != seen {
                seen = now;
                reload(&owner);
            }
        }
    });
}
