//! Rank table: a Maglev-shaped lookup table filled by rendezvous on ranks, with bounded loads.
//!
//! Every member walks its own permutation of the M table entries (the Maglev permutation:
//! offset + k·skip mod M, M prime). Entry e goes to the member that reaches it at the lowest
//! rank k — rendezvous hashing with score −rank(member, e), ties at equal rank to the member
//! that sorts first — except that no member may take more than
//! `cap = ⌈(1 + ε)·M/N⌉` entries, with ε = max(1.5%, 0.75·√(N/M)).
//!
//! Why this shape:
//! - Without the cap it is plain rendezvous over table entries: removing a member frees only
//!   its entries, adding one takes only entries where it ranks first, so keys move exactly as
//!   much as they must (Maglev's round robin, which takes the next *free* entry instead, moves
//!   ≈1.5× the ideal at N = 100 with M = 65 537). But a member's entry count is then
//!   binomial, ±√(M/N).
//! - The cap bounds the largest share by construction: max/mean ≤ 1 + ε + N/M (1.0154 for
//!   N ≤ 113 at M = 262 147). Only the tail of members that rendezvous would overfill gives
//!   entries away, so the cap costs little movement; ε grows like √(N/M) past N ≈ 100 so
//!   that the cap keeps cutting only that tail when a member's share is a few hundred
//!   entries (N = 1 000: max/mean ≤ 1.05).
//!
//! The fill is the unique stable matching of entries and members under the total order
//! (rank, canonical member order), computed in rounds: in round k every member that is not
//! yet full looks at the k-th entry of its permutation and takes it if it is free. Each
//! round probes one entry per active member, and the fill ends after ≈ M·ln M probes
//! whatever N is — a few tens of milliseconds for M = 262 147.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::NO_OWNER;
use super::config::HashFn;
use super::maglev::{LookupTable, permutation, prime_size};
use super::weights;

/// Lower bound of the cap's slack ε.
const MIN_SLACK: f64 = 0.015;
/// ε's growth with N: 0.75·√(N/M), i.e. 0.75 standard deviations of a member's uncapped
/// (binomial) entry count relative to the mean.
const SLACK_SIGMAS: f64 = 0.75;

/// Most entries one of `members` members may own in a table of `size` entries.
///
/// Computed in `f64`: IEEE 754 rounds `sqrt`, `*` and `/` exactly, so every platform gets the
/// same cap. Never below ⌈M/N⌉, so the members can always hold the whole table.
pub(super) fn cap(size: u64, members: usize) -> u64 {
    let (m, n) = (size as f64, members as f64);
    let slack = (SLACK_SIGMAS * (n / m).sqrt()).max(MIN_SLACK);
    (((1.0 + slack) * m / n).ceil() as u64).max(size.div_ceil(members as u64))
}

/// Most entries a member of weight `weight` out of a total `total_weight` may own:
/// ⌈(1 + ε)·M·w/W⌉ with the unweighted ε of `members` members, so that the caps add up to at
/// least (1 + ε)·M ≥ M and the members can always hold the whole table.
pub(super) fn weighted_cap(size: u64, members: usize, weight: u32, total_weight: u64) -> u64 {
    let (m, n) = (size as f64, members as f64);
    let slack = (SLACK_SIGMAS * (n / m).sqrt()).max(MIN_SLACK);
    ((1.0 + slack) * m * f64::from(weight) / total_weight as f64).ceil() as u64
}

/// Builds the table with `slots` entries, rounded up to the next prime if it is not prime
/// (so that every permutation visits every entry and the fill terminates).
#[cfg(test)]
pub(super) fn build(members: &[String], hash: HashFn, slots: u32) -> LookupTable {
    build_weighted(members, hash, slots, &vec![1; members.len()])
}

/// Like [`build`], with weights indexed like `members`. Equal weights build exactly the
/// unweighted table (the round-based fill below). Otherwise each member's cap is proportional
/// to its weight ([`weighted_cap`]), and so is the rate at which it walks its permutation:
/// member i reaches its k-th entry at time tᵢ(k) = −ln(1 − (k + ½)/M) / wᵢ, and each entry goes
/// to the member that reaches it first (ties to the member that sorts first) among those not
/// yet full.
///
/// Why those times: a member's rank of an entry is uniform over 0..M, so −ln(1 − rank/M) is
/// (up to the table's granularity) a unit exponential and tᵢ one of rate wᵢ — the entry-wise
/// version of weighted rendezvous (`rendezvous.rs`), in which the first arrival is member i's
/// with probability wᵢ/W. The uncapped fill is therefore already proportional, and the cap
/// only trims the binomial tail, as in the unweighted table. (Ranks over time k/wᵢ instead
/// would be uniform races, which favour the heavier member: with weights 1 and 2 the lighter
/// would get 1/4 instead of 1/3.)
///
/// Bound: by construction a share is at most capᵢ/M ≤ (1 + ε)·wᵢ/W + 1/M. From below, a
/// member that ends short of its cap holds its rendezvous count, Binomial(M, wᵢ/W), plus
/// whatever capped members gave away: relative to M·wᵢ/W it is low by at most a few
/// σ = √(W/(M·wᵢ)) (6σ = 0.089 for W/wᵢ = 57 at M = 262 147).
pub(super) fn build_weighted(
    members: &[String],
    hash: HashFn,
    slots: u32,
    weights: &[u32],
) -> LookupTable {
    if members.is_empty() {
        return LookupTable::new(Vec::new());
    }
    if !weights::uniform(weights) {
        return fill_by_arrival(members, hash, prime_size(slots), weights);
    }
    let size = prime_size(slots);
    let cap = u32::try_from(cap(u64::from(size), members.len())).unwrap_or(u32::MAX);

    // The members still taking entries, in canonical order (which breaks rank ties),
    // as parallel arrays: next entry of its permutation, step, member index, room left.
    let n = members.len();
    let (mut next, mut skip) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (index, name) in members.iter().enumerate() {
        let (offset, step) = permutation(hash, name, index as u64 + 1, u64::from(size));
        next.push(offset as u32);
        skip.push(step as u32);
    }
    let mut member: Vec<u32> = (0..n as u32).collect();
    let mut room = vec![cap; n];

    let mut table = vec![NO_OWNER; size as usize];
    // Free entries as a bitmap: 32 KiB for M = 262 147, so the probes stay in L1.
    let mut free = vec![u64::MAX; table.len().div_ceil(64)];
    let mut filled = 0u32;
    // Terminates: the caps add up to at least M, so while an entry is free some member
    // has room, and its permutation reaches every entry within M rounds.
    while filled < size {
        let mut someone_full = false;
        for i in 0..next.len() {
            let entry = next[i];
            let (word, bit) = ((entry / 64) as usize, 1u64 << (entry % 64));
            if free[word] & bit != 0 {
                free[word] &= !bit;
                table[entry as usize] = member[i];
                filled += 1;
                room[i] -= 1;
                someone_full |= room[i] == 0;
            }
            // (entry + skip) mod M without a division: both are below M < 2^31.
            let stepped = entry + skip[i];
            next[i] = if stepped >= size {
                stepped - size
            } else {
                stepped
            };
        }
        if someone_full {
            // Drop full members, keeping the canonical order of the others.
            let mut kept = 0;
            for i in 0..next.len() {
                if room[i] > 0 {
                    (next[kept], skip[kept], member[kept], room[kept]) =
                        (next[i], skip[i], member[i], room[i]);
                    kept += 1;
                }
            }
            next.truncate(kept);
            skip.truncate(kept);
            member.truncate(kept);
            room.truncate(kept);
        }
    }
    LookupTable::new(table)
}

/// The weighted fill: entries in order of arrival time, one member event at a time from a heap.
/// ≈ M·ln M probes as in the round-based fill, each a heap operation over the N members.
fn fill_by_arrival(members: &[String], hash: HashFn, size: u32, weights: &[u32]) -> LookupTable {
    let total_weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let m = f64::from(size);
    // Member i's state: next entry, step, probes made (k), room left.
    let mut state: Vec<(u32, u32, u32, u64)> = members
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(index, (name, &weight))| {
            let (offset, step) = permutation(hash, name, index as u64 + 1, u64::from(size));
            let cap = weighted_cap(u64::from(size), members.len(), weight, total_weight);
            (offset as u32, step as u32, 0, cap)
        })
        .collect();
    // Arrival time of member i's k-th probe. Positive, so its bits order like its value; the
    // deterministic `ln` makes the order the same in every process.
    let arrival = |k: u32, weight: u32| -> u64 {
        let time = -weights::ln(1.0 - (f64::from(k) + 0.5) / m) / f64::from(weight);
        time.to_bits()
    };
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = (0..members.len() as u32)
        .map(|i| Reverse((arrival(0, weights[i as usize]), i)))
        .collect();
    let mut table = vec![NO_OWNER; size as usize];
    let mut filled = 0u32;
    // Terminates: the caps add up to at least M, so while an entry is free some member has
    // room and stays in the heap, and within M probes its permutation reaches every entry.
    while filled < size {
        let Reverse((_, i)) = heap
            .pop()
            .expect("a member with room while entries are free");
        let (next, skip, probes, room) = &mut state[i as usize];
        if table[*next as usize] == NO_OWNER {
            table[*next as usize] = i;
            filled += 1;
            *room -= 1;
        }
        let stepped = *next + *skip;
        *next = if stepped >= size {
            stepped - size
        } else {
            stepped
        };
        *probes += 1;
        if *room > 0 && *probes < size {
            heap.push(Reverse((arrival(*probes, weights[i as usize]), i)));
        }
    }
    LookupTable::new(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("Server{i}")).collect()
    }

    #[test]
    fn fill_by_hand_with_quadratic_hashes() {
        // M = 7, the permutations of the Maglev test: Server1 walks 5, 4, 3, 2, 1, 0, 6 and
        // Server2 walks 6, 0, 1, 2, 3, 4, 5. Cap: ε = max(0.015, 0.75·√(2/7)) = 0.40,
        // ⌈1.40·3.5⌉ = 5. Round 0: S1 takes 5, S2 takes 6. Round 1: S1 takes 4, S2 takes 0.
        // Round 2: S1 takes 3, S2 takes 1. Round 3: both reach 2 — the tie goes to S1,
        // which sorts first. Done: S1 owns 2, 3, 4, 5.
        assert_eq!(cap(7, 2), 5);
        let table = build(&names(2), HashFn::Quadratic, 7);
        assert_eq!(table.table(), [1, 1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn the_cap_bounds_every_share() {
        for n in [2, 3, 7, 10, 33, 100, 1000] {
            for hash in [HashFn::Xxh3, HashFn::Murmur3, HashFn::Quadratic] {
                let table = build(&names(n), hash, 65_537);
                let counts = table.counts(n);
                assert_eq!(counts.iter().sum::<u64>(), 65_537);
                let max = *counts.iter().max().unwrap();
                assert!(max <= cap(65_537, n), "n = {n}, {hash}: {max}");
            }
        }
        // The documented bound at the default size: 1 + ε + N/M.
        assert!(cap(262_147, 100) as f64 * 100.0 / 262_147.0 <= 1.0154);
        assert!(cap(262_147, 1000) as f64 * 1000.0 / 262_147.0 <= 1.05);
    }

    #[test]
    fn the_cap_never_leaves_entries_without_room() {
        for (m, n) in [(2, 1), (7, 7), (7, 6), (3, 5), (65_537, 65_537), (11, 100)] {
            assert!(cap(m, n) * n as u64 >= m, "m = {m}, n = {n}");
        }
    }

    #[test]
    fn non_prime_size_is_rounded_up_and_tiny_tables_terminate() {
        assert_eq!(build(&names(3), HashFn::Xxh3, 1000).table().len(), 1009);
        // Fewer entries than members: every entry is owned, some members own none.
        let tiny = build(&names(5), HashFn::Xxh3, 3);
        assert!(!tiny.table().contains(&NO_OWNER));
        let counts = tiny.counts(5);
        assert!(counts.iter().all(|&c| c <= cap(3, 5)), "{counts:?}");
        assert!(counts.contains(&0));
    }
}
