//! How many of something each key holds at once (connections per address, live streams per
//! user), each given back when its holder is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// The counts, shared by the holders.
pub(super) struct Holdings<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Default for Holdings<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

/// One of what `key` holds, counted until it is dropped.
pub(super) struct Held<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Holdings<K> {
    /// One more for `key`, unless it holds `most` already.
    pub(super) fn take(&self, key: K, most: usize) -> Option<Held<K>> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key.clone()).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(Held {
            counts: Arc::clone(&self.0),
            key,
        })
    }
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}
