//! String interning for agent attributes, and a small deterministic hasher.
//!
//! Attribute names and values arrive as strings (registration, job files). Placement compares
//! them millions of times a second, so each index interns them once into dense `u32` ids and the
//! filters compare integers. Ids are assigned in first-seen order and never reused or forgotten:
//! a [`CompiledTask`](super::CompiledTask) compiled yesterday stays valid today. The cost is that
//! an interner only grows; hostnames of departed agents stay interned (a few bytes each).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// An interned attribute name (`host`, `rack`, `zone`, `dedicated`, ...) of one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttrId(pub u32);

/// An interned attribute value (`rack-7`, `us-east-1a`, ...) of one index. Values share one id
/// space across all attribute names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueId(pub u32);

/// Strings to dense ids and back. Lookups never iterate the map, so its order cannot leak.
#[derive(Clone, Debug, Default)]
pub struct Interner {
    ids: HashMap<Box<str>, u32>,
    strings: Vec<Box<str>>,
}

impl Interner {
    /// The id of `text`, assigning the next one when it is new.
    pub fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id =
            u32::try_from(self.strings.len()).expect("interner holds at most u32::MAX strings");
        self.strings.push(text.into());
        self.ids.insert(text.into(), id);
        id
    }

    /// The id of `text` if it was interned.
    pub fn get(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The string behind `id`; panics on an id this interner never issued (a programmer error).
    pub fn resolve(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

/// FxHash (rustc's hasher): one multiply per word. The hot maps of placement are keyed by small
/// integers the scheduler itself assigns, so SipHash's protection against chosen keys buys
/// nothing and costs ~4x per lookup. Unseeded, hence deterministic.
#[derive(Clone, Copy, Default)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FxBuildHasher = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = HashMap<K, V, FxBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_assigns_dense_ids_in_first_seen_order() {
        let mut interner = Interner::default();
        assert_eq!(interner.intern("rack"), 0);
        assert_eq!(interner.intern("host"), 1);
        assert_eq!(interner.intern("rack"), 0);
        assert_eq!(interner.get("host"), Some(1));
        assert_eq!(interner.get("zone"), None);
        assert_eq!(interner.resolve(1), "host");
        assert_eq!(interner.len(), 2);
    }
}
