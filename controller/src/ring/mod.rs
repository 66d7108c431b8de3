//! Consistent hashing: which member serves a request key. Pure and synchronous.
//!
//! A [`Ring`] is an immutable value built from a member set and a [`RingConfig`]; the same
//! set (in any order, with or without duplicates) and config give the same ring in every
//! process. Five algorithms ([`Algorithm`]) times three hash functions ([`HashFn`]);
//! [`Preset::Course`] reproduces the course setup and [`Preset::Default`] is the measured
//! default (see `bench/ring-quality` and docs/ring-quality.md).

mod candidates;
mod config;
mod hash;
mod keyspace;
mod maglev;
mod order;
mod point;
mod rank_table;
mod rendezvous;
mod slot;

use std::fmt;

pub use candidates::Candidates;
pub use config::{
    Algorithm, HashFn, MAGLEV_DEFAULT_SLOTS, Preset, RANK_TABLE_DEFAULT_SLOTS, RingConfig,
};
pub use hash::{course_request_hash, course_vnode_hash, murmur3_x64_128};
pub use keyspace::{FIRST_ID, KEY_COUNT, LAST_ID, for_each_default_key};
pub use order::natural_cmp;

use maglev::LookupTable;
use point::PointRing;
use rendezvous::RendezvousSet;
use slot::SlotRing;

/// Marks a table entry that no member owns.
const NO_OWNER: u32 = u32::MAX;

/// An immutable consistent-hash ring over a member set.
pub struct Ring {
    config: RingConfig,
    members: Vec<String>,
    layout: Layout,
}

/// The algorithm-specific lookup structure.
enum Layout {
    Slot(SlotRing),
    Point(PointRing),
    /// Maglev and rank table: they fill the table differently, and use it alike.
    Table(LookupTable),
    Rendezvous(RendezvousSet),
}

impl Ring {
    /// Members are deduplicated and put in a canonical order (natural sort: "Server2" <
    /// "Server10"), so the same set in any order gives the same ring in every process.
    ///
    /// Never fails: an unvalidated config is made usable (a zero table size is treated as
    /// one slot, a non-prime Maglev size is rounded up to the next prime, a slot ring too small
    /// for every member's virtual servers gives each member fewer). Call
    /// [`RingConfig::validate`] first to reject such configs instead.
    pub fn build<S: AsRef<str>>(members: &[S], config: &RingConfig) -> Ring {
        let members = order::canonical_members(members);
        assert!(
            members.len() < NO_OWNER as usize,
            "more members than a u32 index can hold"
        );
        let layout = match config.algorithm {
            Algorithm::Slot => Layout::Slot(SlotRing::build(
                &members,
                config.hash,
                config.slots,
                config.vnodes,
            )),
            Algorithm::Point => Layout::Point(PointRing::build(
                &members,
                config.hash,
                config.vnodes.max(1),
            )),
            Algorithm::Maglev => Layout::Table(maglev::build(&members, config.hash, config.slots)),
            Algorithm::Rendezvous => {
                Layout::Rendezvous(RendezvousSet::build(&members, config.hash))
            }
            Algorithm::RankTable => {
                Layout::Table(rank_table::build(&members, config.hash, config.slots))
            }
        };
        Ring {
            config: config.clone(),
            members,
            layout,
        }
    }

    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// The members in canonical order; lookup results index into this.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The request-key hash of this ring's hash function.
    pub fn hash_key(&self, key: &[u8]) -> u64 {
        self.config.hash.key_hash(key)
    }

    /// The member serving `key`; `None` only when the ring is empty. Does not allocate.
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        self.lookup_hash(self.hash_key(key))
    }

    /// The member serving a key whose [`hash_key`](Self::hash_key) is `hash`.
    pub fn lookup_hash(&self, hash: u64) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        let owner = match &self.layout {
            Layout::Slot(ring) => ring.owner(hash),
            Layout::Point(ring) => ring.owners()[ring.point_of(hash)],
            Layout::Table(table) => table.table()[table.entry_of(hash)],
            Layout::Rendezvous(set) => return Some(set.winner(hash)),
        };
        // Every non-empty layout places at least one member, so NO_OWNER cannot occur.
        debug_assert_ne!(owner, NO_OWNER);
        Some(owner as usize)
    }

    /// Distinct member indices in the order failover should try them: first `lookup(key)`,
    /// then the next distinct member along the ring (slot, point, Maglev, rank table: walking
    /// forward; rendezvous: by descending score). Yields every member exactly once. The first item
    /// does not allocate; later ones may (rendezvous ranks on the second item, and rings of
    /// more than 128 members allocate a bitmap).
    pub fn candidates(&self, key: &[u8]) -> Candidates<'_> {
        let hash = self.hash_key(key);
        let n = self.members.len();
        if n == 0 {
            return Candidates::empty();
        }
        match &self.layout {
            Layout::Slot(ring) => Candidates::walk(ring.placement(), ring.slot_of(hash), n),
            Layout::Point(ring) => Candidates::walk(ring.owners(), ring.point_of(hash), n),
            Layout::Table(table) => Candidates::walk(table.table(), table.entry_of(hash), n),
            Layout::Rendezvous(set) => Candidates::ranked(set, hash, n),
        }
    }

    /// Fraction of the default request-key space (the six-digit ids "100000"..="999999")
    /// that each member receives, indexed like [`members`](Self::members), summing to 1
    /// (empty for an empty ring). Exact: enumerates all 900 000 keys, so it costs one
    /// lookup per key — call it once per ring build, off the hot path.
    pub fn shares(&self) -> Vec<f64> {
        let mut counts = vec![0u32; self.members.len()];
        if !self.members.is_empty() {
            for_each_default_key(|key| counts[self.lookup(key).expect("non-empty")] += 1);
        }
        counts
            .into_iter()
            .map(|c| f64::from(c) / KEY_COUNT as f64)
            .collect()
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("config", &self.config)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
