//! A string-keyed hash map for the evaluation paths: flags by key, segment key lists, targets.
//!
//! It is `hashbrown`'s `HashTable` with a fixed-seed `foldhash` (the same work on every run, no
//! randomness). Each slot keeps the key's [`Fingerprint`] beside it, so a lookup of a key of up
//! to 16 bytes (most flag keys) compares two words in the slot instead of following a pointer.

use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::text::{Fingerprint, fingerprint_eq};

#[derive(Clone)]
pub(crate) struct KeyMap<V> {
    table: HashTable<(Fingerprint, Box<str>, V)>,
}

#[inline(always)]
pub(crate) fn key_hash(key: &str) -> u64 {
    FixedState::default().hash_one(key)
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            table: HashTable::new(),
        }
    }
}

impl<V> KeyMap<V> {
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |(_, k, _)| key_hash(k));
    }

    /// Inserts or replaces; returns the previous value.
    pub(crate) fn insert(&mut self, key: Box<str>, value: V) -> Option<V> {
        let hash = key_hash(&key);
        let fp = Fingerprint::of(&key);
        match self.table.entry(
            hash,
            |(f, k, _)| fingerprint_eq(f, k, &fp, &key),
            |(_, k, _)| key_hash(k),
        ) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().2, value)),
            Entry::Vacant(e) => {
                e.insert((fp, key, value));
                None
            }
        }
    }

    #[inline(always)]
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        let fp = Fingerprint::of(key);
        self.table
            .find(key_hash(key), |(f, k, _)| fingerprint_eq(f, k, &fp, key))
            .map(|(_, _, v)| v)
    }

    #[inline]
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|(_, _, v)| v)
    }
}

impl<V> FromIterator<(Box<str>, V)> for KeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (Box<str>, V)>>(iter: I) -> Self {
        let mut map = KeyMap::default();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<V: fmt::Debug> fmt::Debug for KeyMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.table.iter().map(|(_, k, v)| (k, v)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_replace_and_lookups_find_every_key() {
        let mut map: KeyMap<usize> = (0..10_000)
            .map(|i| (format!("user-{i}").into(), i))
            .collect();
        assert_eq!(map.insert("user-7".into(), 70), Some(7));
        for i in 0..10_000 {
            let expected = if i == 7 { 70 } else { i };
            assert_eq!(map.get(&format!("user-{i}")), Some(&expected));
        }
        assert!(!map.contains_key("user-10000"));
        assert_eq!(map.values().count(), 10_000);
    }
}
