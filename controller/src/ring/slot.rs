//! The course's slot ring: a fixed array of slots, virtual servers placed by a hash with
//! linear probing on collision, and a key served by the first virtual server at or after
//! its slot, clockwise.

use super::NO_OWNER;
use super::config::HashFn;

pub(super) struct SlotRing {
    /// The member whose virtual server sits in each slot, or `NO_OWNER`.
    placement: Vec<u32>,
    /// For each slot, the member of the first virtual server at or after it (wrapping):
    /// precomputed so that a lookup is one division and one read.
    owner_from: Vec<u32>,
}

impl SlotRing {
    /// Places `vnodes` virtual servers per member, member after member in canonical order
    /// (member-major, as the course code loops), virtual server j = 0..vnodes-1 of the member
    /// at 1-based position i at slot hash(i, j) mod `slots`, probing forward while taken.
    ///
    /// When `members.len() * vnodes` exceeds `slots`, every member gets
    /// `slots / members.len()` virtual servers instead (at least one), and once the table is
    /// full the remaining members get none (they still appear in `Ring::candidates`).
    /// Probing therefore always finds a free slot and terminates.
    pub(super) fn build(members: &[String], hash: HashFn, slots: u32, vnodes: u32) -> Self {
        let size = slots.max(1) as usize;
        let per_member = (vnodes as usize).min(size / members.len().max(1)).max(1);
        Self::place(members, hash, size, |_| per_member as u32)
    }

    /// A weighted ring: `vnodes × weight` virtual servers per member, placed as [`build`]
    /// places them (member-major, virtual server j at hash(i, j) with linear probing).
    ///
    /// Unlike [`build`], never gives anyone fewer: shrinking every member to fit would keep the
    /// ring usable but break the proportion the weights ask for, so a ring whose virtual
    /// servers do not all fit is refused (`Err` with the number needed).
    ///
    /// [`build`]: Self::build
    pub(super) fn build_weighted(
        members: &[String],
        hash: HashFn,
        slots: u32,
        vnodes: u32,
        weights: &[u32],
    ) -> Result<Self, u64> {
        let size = slots.max(1) as usize;
        let vnodes = vnodes.max(1);
        let needed: u64 = weights
            .iter()
            .map(|&w| u64::from(vnodes) * u64::from(w))
            .sum();
        if needed > size as u64 {
            return Err(needed);
        }
        Ok(Self::place(members, hash, size, |index| {
            vnodes * weights[index]
        }))
    }

    /// Places `count(i)` virtual servers of member i into `size` slots, stopping when full.
    fn place(members: &[String], hash: HashFn, size: usize, count: impl Fn(usize) -> u32) -> Self {
        let mut placement = vec![NO_OWNER; size];
        let mut free = size;
        'members: for (index, name) in members.iter().enumerate() {
            for vnode in 0..count(index) {
                if free == 0 {
                    break 'members;
                }
                let mut slot =
                    (hash.vnode_hash(name, index as u64 + 1, vnode) % size as u64) as usize;
                while placement[slot] != NO_OWNER {
                    slot = (slot + 1) % size;
                }
                placement[slot] = index as u32;
                free -= 1;
            }
        }
        let owner_from = owner_at_or_after(&placement);
        SlotRing {
            placement,
            owner_from,
        }
    }

    pub(super) fn slot_of(&self, hash: u64) -> usize {
        (hash % self.placement.len() as u64) as usize
    }

    /// The member serving `hash`, or `NO_OWNER` if no virtual server is placed.
    pub(super) fn owner(&self, hash: u64) -> u32 {
        self.owner_from[self.slot_of(hash)]
    }

    pub(super) fn placement(&self) -> &[u32] {
        &self.placement
    }
}

/// For every slot, the owner of the first occupied slot at or after it, wrapping around.
fn owner_at_or_after(placement: &[u32]) -> Vec<u32> {
    let mut result = vec![NO_OWNER; placement.len()];
    // The owner "after the end" is the first occupied slot from the start.
    let mut next = placement
        .iter()
        .copied()
        .find(|&o| o != NO_OWNER)
        .unwrap_or(NO_OWNER);
    for (slot, &owner) in placement.iter().enumerate().rev() {
        if owner != NO_OWNER {
            next = owner;
        }
        result[slot] = next;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Ring, RingConfig};

    fn servers(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("Server{i}")).collect()
    }

    /// Slots holding a virtual server of member `index`, ascending.
    fn slots_of(ring: &SlotRing, index: u32) -> Vec<usize> {
        (0..ring.placement.len())
            .filter(|&s| ring.placement[s] == index)
            .collect()
    }

    // Course placement: Φ(i, j) = i + j + 2j² + 25 for j = 0..8. The j-dependent part
    // j + 2j² is 0, 3, 10, 21, 36, 55, 78, 105, 136, so Φ(i, j) = i + 25 + that.
    const SERVER1: [usize; 9] = [26, 29, 36, 47, 62, 81, 104, 131, 162];
    const SERVER2: [usize; 9] = [27, 30, 37, 48, 63, 82, 105, 132, 163];
    const SERVER3: [usize; 9] = [28, 31, 38, 49, 64, 83, 106, 133, 164];

    #[test]
    fn course_placement_of_three_servers_has_no_collision() {
        let c = RingConfig::course();
        let ring = SlotRing::build(&servers(3), c.hash, c.slots, c.vnodes);
        assert_eq!(slots_of(&ring, 0), SERVER1);
        assert_eq!(slots_of(&ring, 1), SERVER2);
        assert_eq!(slots_of(&ring, 2), SERVER3);
        assert_eq!(
            ring.placement.iter().filter(|&&o| o != NO_OWNER).count(),
            27
        );
    }

    #[test]
    fn course_placement_resolves_collisions_by_linear_probing() {
        // Server4: Φ(4, j) = 29 + (j + 2j²) = 29, 32, 39, 50, 65, 84, 107, 134, 165.
        // Servers 1..3 are placed first (member-major order), as above.
        // j = 0: 29 is Server1's, 30 Server2's, 31 Server3's → probe on to 32.
        // j = 1: 32 was just taken by Server4's j = 0 → 33.
        // j = 2..8: 39, 50, 65, 84, 107, 134, 165 are all free.
        let c = RingConfig::course();
        let ring = SlotRing::build(&servers(4), c.hash, c.slots, c.vnodes);
        assert_eq!(slots_of(&ring, 0), SERVER1);
        assert_eq!(slots_of(&ring, 1), SERVER2);
        assert_eq!(slots_of(&ring, 2), SERVER3);
        assert_eq!(slots_of(&ring, 3), [32, 33, 39, 50, 65, 84, 107, 134, 165]);
    }

    #[test]
    fn course_lookups_by_hand() {
        let ring = Ring::build(&servers(3), &RingConfig::course());
        let server = |key: &str| {
            ring.lookup(key.as_bytes())
                .map(|i| ring.members()[i].as_str())
        };
        // H(123456) mod 512 = 81 (see hash.rs): slot 81 holds Server1's Φ(1, 5) = 81.
        assert_eq!(server("123456"), Some("Server1"));
        // H(999999) mod 512 = 338: no virtual server at or after 338 (the last is 164),
        // so it wraps to the first one, slot 26 = Φ(1, 0) → Server1.
        assert_eq!(server("999999"), Some("Server1"));
        // 100354 = 196·512 + 2, and H(i) mod 512 depends only on i mod 512:
        // H(2) = 2 + 8 + 17 = 27 = Φ(2, 0) → Server2.
        assert_eq!(server("100354"), Some("Server2"));
        // H(3) = 3 + 18 + 17 = 38 = Φ(3, 2) → Server3.
        assert_eq!(server("100355"), Some("Server3"));
        // H(4) = 4 + 32 + 17 = 53: the next virtual server is at 62 = Φ(1, 4) → Server1.
        assert_eq!(server("100356"), Some("Server1"));
    }

    #[test]
    fn course_preset_gives_server1_almost_everything() {
        // The course's Φ shifts each server's pattern by one slot per position, so the 27
        // virtual servers form 9 runs [Server1, Server2, Server3] in consecutive slots
        // (26-28, 29-31, 36-38, …). A slot is served by the first virtual server at or after
        // it, so every gap before a run — and the wrap-around from 165 to 25 — ends at a
        // Server1 slot: Server2 and Server3 serve only their own 9 slots each, Server1 the
        // other 512 − 18 = 494.
        //
        // Keys: x ↦ x + 2x² is a bijection mod 2^k (x + 2x² ≡ y + 2y² means
        // (x − y)(1 + 2(x + y)) ≡ 0 and the second factor is odd), so each run of 512
        // consecutive ids hits every slot once. 900 000 = 1757·512 + 416 ids, so every slot
        // receives 1757 or 1758 of them.
        let ring = Ring::build(&servers(3), &RingConfig::course());
        let shares = ring.shares();
        let within = |share: f64, slots: f64| {
            let (low, high) = (slots * 1757.0 / 900_000.0, slots * 1758.0 / 900_000.0);
            (low..=high).contains(&share)
        };
        assert!(within(shares[0], 494.0), "{shares:?}"); // ≈ 0.9645
        assert!(
            within(shares[1], 9.0) && within(shares[2], 9.0),
            "{shares:?}"
        ); // ≈ 0.0176
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn too_many_virtual_servers_are_capped_to_fit() {
        let c = RingConfig::course();
        // 100 · 9 = 900 > 512: each member gets ⌊512 / 100⌋ = 5 virtual servers.
        let ring = SlotRing::build(&servers(100), c.hash, c.slots, c.vnodes);
        for member in 0..100 {
            assert_eq!(slots_of(&ring, member).len(), 5, "member {member}");
        }
        // More members than slots: one virtual server each until the table is full.
        let ring = SlotRing::build(&servers(600), c.hash, c.slots, c.vnodes);
        assert!(ring.placement.iter().all(|&o| o != NO_OWNER));
        assert!(ring.placement.iter().all(|&o| o < 512));
        let ring = Ring::build(&servers(600), &c);
        let mut all: Vec<usize> = ring.candidates(b"42").collect();
        all.sort_unstable();
        assert_eq!(all, (0..600).collect::<Vec<_>>());
    }

    #[test]
    fn other_hash_functions_place_by_member_name() {
        // With xxh3 a member's virtual servers depend on its name, not its position: the
        // slots of "b" are the same whether or not "a" sorts before it (barring probes).
        let c = RingConfig {
            hash: HashFn::Xxh3,
            slots: 1 << 16,
            ..RingConfig::course()
        };
        let alone = SlotRing::build(&["b".to_owned()], c.hash, c.slots, c.vnodes);
        let pair = SlotRing::build(&["a".to_owned(), "b".to_owned()], c.hash, c.slots, c.vnodes);
        assert_eq!(slots_of(&alone, 0), slots_of(&pair, 1));
    }
}
