//! Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, §3.4): a lookup table of prime size M that every member fills in
//! turn, each taking the next free entry of its own permutation of 0..M.

use super::NO_OWNER;
use super::config::{HashFn, is_prime, next_prime};

/// A table of M entries, each naming the member that owns it: a key goes to entry
/// `hash mod M`, and failover walks forward from there. Filled by Maglev ([`build`]) or
/// by the rank table (`rank_table::build`).
pub(super) struct LookupTable {
    table: Vec<u32>,
}

impl LookupTable {
    pub(super) fn new(table: Vec<u32>) -> Self {
        Self { table }
    }

    pub(super) fn entry_of(&self, hash: u64) -> usize {
        (hash % self.table.len() as u64) as usize
    }

    pub(super) fn table(&self) -> &[u32] {
        &self.table
    }

    /// Entries per member.
    #[cfg(test)]
    pub(super) fn counts(&self, members: usize) -> Vec<u64> {
        let mut counts = vec![0u64; members];
        self.table.iter().for_each(|&m| counts[m as usize] += 1);
        counts
    }
}

/// The table size for `slots`: the next prime at or above it (a prime size makes every
/// member's permutation visit every entry, which is what guarantees a fill terminates).
pub(super) fn prime_size(slots: u32) -> u32 {
    if is_prime(slots) {
        slots
    } else {
        next_prime(slots)
    }
}

/// A member's permutation of a table of `size` entries, as (first entry, step):
/// offset = hash(member, vnode 0) mod M, skip = hash(member, vnode 1) mod (M − 1) + 1,
/// entry k = (offset + k·skip) mod M — the paper's two hashes of the backend name.
pub(super) fn permutation(hash: HashFn, name: &str, position: u64, size: u64) -> (u64, u64) {
    let offset = hash.member_hash(name, position, 0) % size;
    let skip = hash.member_hash(name, position, 1) % (size - 1) + 1;
    (offset, skip)
}

/// Builds the table with `slots` entries, rounded up to the next prime if it is not
/// prime ([`prime_size`]). `RingConfig::validate` rejects non-prime sizes.
#[cfg(test)]
pub(super) fn build(members: &[String], hash: HashFn, slots: u32) -> LookupTable {
    build_weighted(members, hash, slots, &vec![1; members.len()])
}

/// Like [`build`], with weights (indexed like `members`, all 1 for an unweighted ring) that
/// set how often a member takes its turn: the weighted variant of the paper's §3.4. With
/// w_max the largest weight, in round t = 1, 2, … member i takes an entry only while it holds
/// fewer than t·wᵢ/w_max (`taken·w_max < t·wᵢ`, in integers); equal weights make that "one
/// per round", the unweighted fill exactly.
///
/// Bound: a member takes at most one entry per round, so after round t it holds exactly
/// ⌈t·wᵢ/w_max⌉. If the table fills in round T, with y = T/w_max every count is within 1 of
/// y·wᵢ; summed, the table size M is within N of y·W (W the total weight), so
/// |countᵢ − M·wᵢ/W| ≤ 1 + N·wᵢ/W, i.e. a share off its weight by at most W/(M·wᵢ) + N/M
/// relative (N = 8, W = 64, wᵢ = 1, M = 65 537: 0.0011).
pub(super) fn build_weighted(
    members: &[String],
    hash: HashFn,
    slots: u32,
    weights: &[u32],
) -> LookupTable {
    if members.is_empty() {
        return LookupTable::new(Vec::new());
    }
    let size = u64::from(prime_size(slots));
    // (next entry to try, step) per member.
    let mut preference: Vec<(u64, u64)> = members
        .iter()
        .enumerate()
        .map(|(index, name)| permutation(hash, name, index as u64 + 1, size))
        .collect();
    let mut table = vec![NO_OWNER; size as usize];
    let mut filled = 0;
    let heaviest = u64::from(weights.iter().copied().max().unwrap_or(1));
    let mut taken = vec![0u64; members.len()];
    // Round-robin: each member takes one entry per round (weighted: its share of rounds), so
    // unweighted entry counts differ by at most one. Stops the moment the table is full, even
    // mid-round (when M < N, later members get no entry).
    let mut round = 0u64;
    'rounds: loop {
        round += 1;
        for (member, (next, skip)) in preference.iter_mut().enumerate() {
            if taken[member] * heaviest >= round * u64::from(weights[member]) {
                continue;
            }
            taken[member] += 1;
            while table[*next as usize] != NO_OWNER {
                // (next + skip) mod M without a division: both are below M.
                *next += *skip;
                if *next >= size {
                    *next -= size;
                }
            }
            table[*next as usize] = member as u32;
            filled += 1;
            if filled == table.len() {
                break 'rounds;
            }
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
        // M = 7, quadratic member hashes Φ(i, 0) = i + 25 and Φ(i, 1) = i + 1 + 2 + 25 = i + 28:
        // Server1: offset 26 mod 7 = 5, skip 29 mod 6 + 1 = 6 → prefers 5, 4, 3, 2, 1, 0, 6
        // Server2: offset 27 mod 7 = 6, skip 30 mod 6 + 1 = 1 → prefers 6, 0, 1, 2, 3, 4, 5
        // Round 1: S1 takes 5, S2 takes 6. Round 2: S1 takes 4, S2 takes 0.
        // Round 3: S1 takes 3, S2 takes 1. Round 4: S1 takes 2 — the table is full.
        let table = build(&names(2), HashFn::Quadratic, 7);
        assert_eq!(table.table, [1, 1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn entry_counts_differ_by_at_most_one() {
        // Round-robin filling gives every member one entry per round until the table is full.
        for n in [2, 3, 7, 10, 33, 100] {
            for hash in [HashFn::Xxh3, HashFn::Murmur3, HashFn::Quadratic] {
                let table = build(&names(n), hash, 65_537);
                let counts = table.counts(n);
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(max - min <= 1, "n = {n}, {hash}: {min}..{max}");
            }
        }
    }

    #[test]
    fn non_prime_size_is_rounded_up_and_tiny_tables_terminate() {
        assert_eq!(build(&names(3), HashFn::Xxh3, 1000).table.len(), 1009);
        // Fewer entries than members: the first members of the round take them all.
        let tiny = build(&names(5), HashFn::Xxh3, 3);
        let mut owners = tiny.table.clone();
        owners.sort_unstable();
        assert_eq!(owners, [0, 1, 2]);
    }
}
