//! Consistent hashing: which member serves a request key. Pure and synchronous.
//!
//! A [`Ring`] is an immutable value built from a member set and a [`RingConfig`]; the same
//! set (in any order, with or without duplicates) and config give the same ring in every
//! process. Members may carry weights ([`Ring::build_weighted`]): every algorithm gives a
//! member a share of the keys proportional to its weight, or refuses the weights with a
//! [`WeightError`]. Five algorithms ([`Algorithm`]) times three hash functions ([`HashFn`]);
//! [`Preset::Course`] reproduces the course setup and [`Preset::Default`] is the measured
//! default (see `bench/ring-quality` and docs/ring-quality.md).

mod arcs;
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
mod weights;

use std::fmt;

pub use arcs::{MAX_VNODE_MARKS, OwnedArc, RingPicture, VnodeMark};
pub use candidates::Candidates;
/// Primality of a table size, also for the CRD's CEL rule (`operator::crd`).
pub(crate) use config::is_prime;
pub use config::{
    Algorithm, HashFn, MAGLEV_DEFAULT_SLOTS, Preset, RANK_TABLE_DEFAULT_SLOTS, RingConfig,
};
pub use hash::{course_request_hash, course_vnode_hash, murmur3_x64_128};
pub use keyspace::{FIRST_ID, KEY_COUNT, LAST_ID, for_each_default_key};
pub use order::natural_cmp;
pub use weights::{MAX_WEIGHT, WeightError};

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
    /// Indexed like `members`; all 1 for [`Ring::build`].
    weights: Vec<u32>,
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
        let weights = vec![1; members.len()];
        Self::build_layout(members, weights, config)
            .expect("all-1 weights never fail: only a weighted slot ring can be refused")
    }

    /// A ring over weighted members: each `(name, weight)` pair is a member and its positive
    /// weight (1 to [`MAX_WEIGHT`]; 1 is everyone's weight in [`build`](Self::build)), and a
    /// member's share of the keys is proportional to its weight:
    ///
    /// - point ring: `vnodes × weight` points per member (consistent hashing with virtual
    ///   nodes);
    /// - slot ring: `vnodes × weight` virtual servers per member, refused
    ///   ([`WeightError::DoesNotFit`]) when they do not all fit in the slots — the course
    ///   preset (512 slots, 9 per unit of weight) holds a total weight of 56;
    /// - Maglev: members take turns filling the table in proportion to their weights;
    /// - rendezvous: the logarithmic method, score −w / ln u;
    /// - rank table: caps and permutation walks proportional to the weights.
    ///
    /// All-1 weights (or any equal weights, for Maglev, rendezvous and the rank table) give
    /// exactly the ring of [`build`](Self::build) over the same names.
    ///
    /// Why pairs rather than a `Member` type: they mirror `build`'s plain slice of names, so a
    /// caller that has (name, address, weight) rows maps them in one line, and the ring keeps
    /// names and weights apart ([`members`](Self::members), [`weights`](Self::weights)) the
    /// way lookups index them. Why a `Result` when `build` never fails: a config can be
    /// validated alone, but whether weights fit depends on the members too, and silently
    /// dropping a weight would send the wrong share of traffic.
    ///
    /// Members are deduplicated and ordered as in `build`; the same name twice with two
    /// different weights is an error.
    pub fn build_weighted<S: AsRef<str>>(
        members: &[(S, u32)],
        config: &RingConfig,
    ) -> Result<Ring, WeightError> {
        let (members, weights) = weights::canonical(members)?;
        Self::build_layout(members, weights, config)
    }

    fn build_layout(
        members: Vec<String>,
        weights: Vec<u32>,
        config: &RingConfig,
    ) -> Result<Ring, WeightError> {
        assert!(
            members.len() < NO_OWNER as usize,
            "more members than a u32 index can hold"
        );
        // Exactly `build`'s rings when every weight is 1: the weighted paths below reduce to
        // the unweighted ones then (each algorithm's doc says how).
        let all_one = weights.iter().all(|&w| w == 1);
        let layout = match config.algorithm {
            Algorithm::Slot if all_one => Layout::Slot(SlotRing::build(
                &members,
                config.hash,
                config.slots,
                config.vnodes,
            )),
            Algorithm::Slot => Layout::Slot(
                SlotRing::build_weighted(
                    &members,
                    config.hash,
                    config.slots,
                    config.vnodes,
                    &weights,
                )
                .map_err(|needed| WeightError::DoesNotFit {
                    algorithm: config.algorithm,
                    slots: config.slots.max(1),
                    vnodes: config.vnodes.max(1),
                    total_weight: weights.iter().map(|&w| u64::from(w)).sum(),
                    needed,
                })?,
            ),
            Algorithm::Point => Layout::Point(PointRing::build(
                &members,
                config.hash,
                config.vnodes.max(1),
                &weights,
            )),
            Algorithm::Maglev => Layout::Table(maglev::build_weighted(
                &members,
                config.hash,
                config.slots,
                &weights,
            )),
            Algorithm::Rendezvous => {
                Layout::Rendezvous(RendezvousSet::build(&members, config.hash, &weights))
            }
            Algorithm::RankTable => Layout::Table(rank_table::build_weighted(
                &members,
                config.hash,
                config.slots,
                &weights,
            )),
        };
        Ok(Ring {
            config: config.clone(),
            members,
            weights,
            layout,
        })
    }

    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// The members in canonical order; lookup results index into this.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Each member's weight, indexed like [`members`](Self::members); all 1 for
    /// [`build`](Self::build).
    pub fn weights(&self) -> &[u32] {
        &self.weights
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

    /// Who serves each of up to `max_positions` evenly spaced positions around the
    /// ring's circle, as arcs, and where a slot ring's virtual servers sit: what the
    /// dashboard draws (see [`RingPicture`]). Costs one lookup per position.
    pub fn picture(&self, max_positions: u32) -> RingPicture {
        arcs::picture(self, max_positions)
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
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod weighted_tests;
