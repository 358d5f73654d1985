//! A bounded map for per-packet state: fixed memory allocated once, O(1)
//! lookups and inserts, and the least recently stamped entry of a full bucket
//! is the one replaced, so no input can make it grow or slow down.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Entries per bucket. A full bucket replaces its oldest entry; with 8 ways
/// a few colliding keys cannot push out an unrelated busy entry.
const WAYS: usize = 8;

/// A key that can be hashed as one block of bytes: one call to the hasher
/// per packet rather than one per field, which costs several times more.
pub(crate) trait Key: Eq {
    fn bytes(&self) -> [u8; 40];
}

pub(crate) struct Slot<K, V> {
    pub key: K,
    /// When the entry was last touched, in the caller's milliseconds.
    pub stamp: u64,
    pub value: V,
}

/// The slots of one hash bucket.
#[derive(Clone)]
pub(crate) struct Bucket(std::ops::Range<usize>);

pub(crate) struct Table<K, V> {
    slots: Vec<Option<Slot<K, V>>>,
    mask: usize,
    // Randomly keyed so that remote hosts cannot aim their flows at one bucket.
    hasher: RandomState,
}

impl<K: Key, V> Table<K, V> {
    /// At least `capacity` entries, rounded up to a power of two.
    pub fn with_capacity(capacity: usize) -> Self {
        let buckets = capacity.div_ceil(WAYS).next_power_of_two();
        Self {
            slots: (0..buckets * WAYS).map(|_| None).collect(),
            mask: buckets - 1,
            hasher: RandomState::new(),
        }
    }

    /// The slots where `key` may be: hash once, then `find_in` and
    /// `insert_in` the same bucket.
    pub fn bucket(&self, key: &K) -> Bucket {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(&key.bytes());
        let first = (hasher.finish() as usize & self.mask) * WAYS;
        Bucket(first..first + WAYS)
    }

    /// The index of `key`'s slot, stamped at or after `since`.
    pub fn find(&self, key: &K, since: u64) -> Option<usize> {
        self.find_in(self.bucket(key), key, since)
    }

    pub fn find_in(&self, Bucket(bucket): Bucket, key: &K, since: u64) -> Option<usize> {
        bucket.into_iter().find(
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
        self.insert_in(self.bucket(&key), key, value, stamp)
    }

    pub fn insert_in(&mut self, Bucket(bucket): Bucket, key: K, value: V, stamp: u64) -> usize {
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

    /// Empties `key`'s slot, if it has one.
    pub fn remove(&mut self, key: &K) {
        if let Some(index) = self.find(key, 0) {
            self.slots[index] = None;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot<K, V>> {
        self.slots.iter().flatten()
    }
}
