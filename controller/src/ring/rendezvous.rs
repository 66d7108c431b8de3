//! Rendezvous (highest random weight) hashing, Thaler & Ravishankar 1998: every member scores
//! every key and the highest score wins, so removing a member moves only its keys and adding
//! one moves only the keys it now wins.

use super::config::HashFn;
use super::hash::fmix64;

pub(super) struct RendezvousSet {
    member_hashes: Vec<u64>,
}

impl RendezvousSet {
    pub(super) fn build(members: &[String], hash: HashFn) -> Self {
        let member_hashes = members
            .iter()
            .enumerate()
            .map(|(index, name)| hash.member_hash(name, index as u64 + 1, 0))
            .collect();
        RendezvousSet { member_hashes }
    }

    /// score(member, key) = fmix64(member hash ⊕ key hash). fmix64 is a bijection with full
    /// avalanche, so distinct member hashes never tie and every bit of both inputs counts
    /// (which also spreads the course's small, structured quadratic hashes).
    fn score(member_hash: u64, key_hash: u64) -> u64 {
        fmix64(member_hash ^ key_hash)
    }

    /// The highest-scoring member; ties (equal member hashes) go to the lower index.
    /// Requires at least one member.
    pub(super) fn winner(&self, key_hash: u64) -> usize {
        let mut best = (0, Self::score(self.member_hashes[0], key_hash));
        for (index, &member_hash) in self.member_hashes.iter().enumerate().skip(1) {
            let score = Self::score(member_hash, key_hash);
            if score > best.1 {
                best = (index, score);
            }
        }
        best.0
    }

    /// All members by descending score, ties by ascending index: starts with `winner`.
    pub(super) fn ranking(&self, key_hash: u64) -> Vec<usize> {
        let mut ranked: Vec<(u64, usize)> = self
            .member_hashes
            .iter()
            .enumerate()
            .map(|(index, &member_hash)| (Self::score(member_hash, key_hash), index))
            .collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.into_iter().map(|(_, index)| index).collect()
    }
}
