//! Rendezvous (highest random weight) hashing, Thaler & Ravishankar 1998: every member scores
//! every key and the highest score wins, so removing a member moves only its keys and adding
//! one moves only the keys it now wins.
//!
//! Weighted members use the logarithmic method (Schindelhauer & Schomaker, "Weighted
//! Distributed Hash Tables", SPAA 2005; Resch, "New Hashing Algorithms for Data Storage",
//! 2015): with u = the score as a point of (0, 1), score_w = −w / ln u. For independent
//! uniform u, −ln u / w is exponential with rate w, and the smallest of independent
//! exponentials is member i's with probability exactly wᵢ/W: shares are proportional to the
//! weights with no bias, and changing one weight only moves that member's score, so keys move
//! only to or from it.

use super::config::HashFn;
use super::hash::fmix64;
use super::weights;

pub(super) struct RendezvousSet {
    member_hashes: Vec<u64>,
    /// `Some` when the weights differ; equal weights rank exactly as the integer scores do
    /// (−w / ln u increases with u), so they keep the unweighted integer comparison, bit for bit.
    weights: Option<Vec<f64>>,
}

impl RendezvousSet {
    pub(super) fn build(members: &[String], hash: HashFn, weights: &[u32]) -> Self {
        let member_hashes = members
            .iter()
            .enumerate()
            .map(|(index, name)| hash.member_hash(name, index as u64 + 1, 0))
            .collect();
        let weights =
            (!weights::uniform(weights)).then(|| weights.iter().map(|&w| f64::from(w)).collect());
        RendezvousSet {
            member_hashes,
            weights,
        }
    }

    /// score(member, key) = fmix64(member hash ⊕ key hash). fmix64 is a bijection with full
    /// avalanche, so distinct member hashes never tie and every bit of both inputs counts
    /// (which also spreads the course's small, structured quadratic hashes).
    fn score(member_hash: u64, key_hash: u64) -> u64 {
        fmix64(member_hash ^ key_hash)
    }

    /// The weighted score −w / ln u with u = `score` in (0, 1); positive and finite. The
    /// deterministic `weights::ln` makes it the same in every process.
    fn weighted_score(weight: f64, member_hash: u64, key_hash: u64) -> f64 {
        -weight / weights::ln(weights::unit_interval(Self::score(member_hash, key_hash)))
    }

    /// The highest-scoring member; ties (equal member hashes) go to the lower index.
    /// Requires at least one member.
    pub(super) fn winner(&self, key_hash: u64) -> usize {
        if let Some(weights) = &self.weights {
            let mut best = (0, f64::NEG_INFINITY);
            for (index, (&member_hash, &weight)) in
                self.member_hashes.iter().zip(weights).enumerate()
            {
                let score = Self::weighted_score(weight, member_hash, key_hash);
                if score > best.1 {
                    best = (index, score);
                }
            }
            return best.0;
        }
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
        if let Some(weights) = &self.weights {
            let mut ranked: Vec<(f64, usize)> = self
                .member_hashes
                .iter()
                .zip(weights)
                .enumerate()
                .map(|(index, (&member_hash, &weight))| {
                    (Self::weighted_score(weight, member_hash, key_hash), index)
                })
                .collect();
            ranked.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            return ranked.into_iter().map(|(_, index)| index).collect();
        }
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
