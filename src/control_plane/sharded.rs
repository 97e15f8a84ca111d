//! A map split into shards under their own locks, so that workers seldom
//! wait for one another; a key's shard is picked by a randomly keyed hash
//! (hosts choose the keys). The lookup cache and the last-activity dedup
//! keep their entries in one.

use std::sync::{Mutex, MutexGuard};

pub const SHARDS: usize = 16;

pub struct Sharded<M> {
    shards: [Mutex<M>; SHARDS],
    pick: ahash::RandomState,
}

impl<M> Sharded<M> {
    pub fn new(mut make: impl FnMut() -> M) -> Sharded<M> {
        Sharded { shards: std::array::from_fn(|_| Mutex::new(make())), pick: ahash::RandomState::new() }
    }

    /// The shard `key` lives in, locked.
    pub fn lock(&self, key: &str) -> MutexGuard<'_, M> {
        lock(&self.shards[self.index(key)])
    }

    /// Each shard in turn, locked one at a time.
    pub fn each(&self) -> impl Iterator<Item = MutexGuard<'_, M>> {
        self.shards.iter().map(lock)
    }

    /// Which shard `key` lives in.
    pub fn index(&self, key: &str) -> usize {
        self.pick.hash_one(key) as usize % SHARDS
    }
}

fn lock<M>(shard: &Mutex<M>) -> MutexGuard<'_, M> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}
