//! A bounded map for per-packet state: fixed memory allocated once, O(1)
//! lookups and inserts, and the least recently stamped entry of a full bucket
//! is the one replaced, so no input can make it grow or slow down.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};

/// Entries per bucket. A full bucket replaces its oldest entry; with 8 ways
/// a few colliding keys cannot push out an unrelated busy entry.
const WAYS: usize = 8;

pub(super) struct Slot<K, V> {
    pub key: K,
    /// When the entry was last touched, in the caller's milliseconds.
    pub stamp: u64,
    pub value: V,
}

pub(super) struct Table<K, V> {
    slots: Vec<Option<Slot<K, V>>>,
    mask: usize,
    // Randomly keyed so that remote hosts cannot aim their flows at one bucket.
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Table<K, V> {
    /// At least `capacity` entries, rounded up to a power of two.
    pub fn with_capacity(capacity: usize) -> Self {
        let buckets = capacity.div_ceil(WAYS).next_power_of_two();
        Self {
            slots: (0..buckets * WAYS).map(|_| None).collect(),
            mask: buckets - 1,
            hasher: RandomState::new(),
        }
    }

    fn bucket(&self, key: &K) -> std::ops::Range<usize> {
        let first = (self.hasher.hash_one(key) as usize & self.mask) * WAYS;
        first..first + WAYS
    }

    /// The index of `key`'s slot, stamped at or after `since`.
    pub fn find(&self, key: &K, since: u64) -> Option<usize> {
        self.bucket(key).find(
            |&i| matches!(&self.slots[i], Some(slot) if slot.key == *key && slot.stamp >= since),
        )
    }

    pub fn get(&self, key: &K, since: u64) -> Option<&Slot<K, V>> {
        self.find(key, since).and_then(|i| self.slots[i].as_ref())
    }

    pub fn slot_mut(&mut self, index: usize) -> &mut Slot<K, V> {
        self.slots[index]
            .as_mut()
            .expect("an index from find or insert")
    }

    /// Puts `key` in its own slot if it has one, else in a free one, else in
    /// the oldest of its bucket, and returns the slot's index.
    pub fn insert(&mut self, key: K, value: V, stamp: u64) -> usize {
        let bucket = self.bucket(&key);
        let index = bucket
            .clone()
            .find(|&i| matches!(&self.slots[i], Some(slot) if slot.key == key))
            .or_else(|| bucket.clone().find(|&i| self.slots[i].is_none()))
            .unwrap_or_else(|| {
                bucket
                    .min_by_key(|&i| self.slots[i].as_ref().map_or(0, |slot| slot.stamp))
                    .expect("buckets are not empty")
            });
        self.slots[index] = Some(Slot { key, stamp, value });
        index
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot<K, V>> {
        self.slots.iter().flatten()
    }
}
