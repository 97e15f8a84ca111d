//! What identifies a version of a watched file (registry, certificates).

use std::path::Path;
use std::time::SystemTime;

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
