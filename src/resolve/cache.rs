//! A run's memory of identity lookups, bounded in entries.
//!
//! A full sync re-reads every row, and one profile often appears on many rows
//! (or many parts of one row), so each distinct identity set is asked once per
//! run. Keys are 128-bit hashes of the identity set rather than the strings:
//! memory stays at a few dozen bytes per entry whatever the identities' length,
//! and the chance of two sets colliding is negligible. When full, the oldest
//! entry goes (first in, first out): rows of one profile tend to be near each
//! other in a model's order, so recency is what pays.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// What a lookup found: the profile's MPID, or that none exists.
pub type Found = Option<i64>;

/// A bounded map from identity-set hashes to lookup results.
#[derive(Debug)]
pub struct LookupCache {
    capacity: usize,
    entries: HashMap<u128, Found>,
    order: VecDeque<u128>,
    hits: u64,
    misses: u64,
}

impl LookupCache {
    /// A cache of at most `capacity` entries; 0 remembers nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The remembered result for `key`, counting a hit or a miss.
    pub fn get(&mut self, key: u128) -> Option<Found> {
        if let Some(found) = self.entries.get(&key) {
            self.hits += 1;
            Some(*found)
        } else {
            self.misses += 1;
            None
        }
    }

    /// Remember `found` for `key`, evicting the oldest entry when full.
    pub fn insert(&mut self, key: u128, found: Found) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, found).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups answered from memory.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that had to ask.
    pub fn misses(&self) -> u64 {
        self.misses
    }
}

/// A 128-bit hash of `value`: two SipHash passes with different prefixes. Not
/// cryptographic; the inputs are the warehouse's own identities, and a
/// collision between two of them (about 2^-64 for billions of keys) would only
/// make one row look like another's profile.
pub fn hash128<T: Hash + ?Sized>(value: &T) -> u128 {
    let half = |salt: u8| {
        // `DefaultHasher::new()` has fixed keys: the same value hashes the same
        // all run long, which is all a run-scoped set needs.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        value.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_found_and_not_found() {
        let mut cache = LookupCache::new(10);
        assert_eq!(cache.get(1), None);
        cache.insert(1, Some(42));
        cache.insert(2, None);
        assert_eq!(cache.get(1), Some(Some(42)));
        assert_eq!(cache.get(2), Some(None));
        assert_eq!((cache.hits(), cache.misses()), (2, 1));
    }

    #[test]
    fn evicts_the_oldest_when_full() {
        let mut cache = LookupCache::new(2);
        cache.insert(1, Some(1));
        cache.insert(2, Some(2));
        cache.insert(1, Some(1)); // already there: no reordering, no growth
        cache.insert(3, Some(3));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(1), None);
        assert_eq!(cache.get(2), Some(Some(2)));
        assert_eq!(cache.get(3), Some(Some(3)));
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let mut cache = LookupCache::new(0);
        cache.insert(1, Some(1));
        assert!(cache.is_empty());
        assert_eq!(cache.get(1), None);
    }

    #[test]
    fn hashes_are_stable_and_distinguish_values() {
        assert_eq!(hash128("a@x"), hash128("a@x"));
        assert_ne!(hash128("a@x"), hash128("b@x"));
        assert_ne!(hash128(&("email", "x")), hash128(&("customer_id", "x")));
    }
}
