//! A picture of a ring for people (the dashboard of the operations port): who serves
//! each of a number of evenly spaced positions around the ring's circle, as arcs, and
//! where the virtual servers of a slot ring sit.
//!
//! The circle is what the algorithm maps a key hash onto: the slots of a slot ring, the
//! entries of a Maglev or rank table, the whole `u64` hash space of a point ring and of
//! rendezvous (which has no ring, so its picture is a sample of who wins each hash).
//! A circle of at most `max_positions` slots or entries is drawn exactly, one position
//! per slot or entry; a larger one is sampled at `max_positions` evenly spaced positions.
//!
//! The picture shows the ring, not the traffic: the course's quadratic request hash sends
//! keys to some slots far more often than to others, so a member's share of the positions
//! is not its share of the keys ([`Ring::shares`](super::Ring::shares) measures that).

use super::{Layout, NO_OWNER, Ring};

/// The most virtual-server marks a picture carries: more would be a grey smear.
pub const MAX_VNODE_MARKS: usize = 4096;

/// Positions `from..to` of the circle, all served by one member.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OwnedArc {
    pub from: u32,
    /// Exclusive.
    pub to: u32,
    /// Index into [`Ring::members`].
    pub member: u32,
}

/// A virtual server of a slot ring: the keys of the slots after the previous one, up to
/// and including its own, go to its member.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VnodeMark {
    /// Where it sits, as a fraction of the circle, in [0, 1).
    pub at: f64,
    /// Index into [`Ring::members`].
    pub member: u32,
}

/// Who serves the circle of a ring, position by position.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RingPicture {
    /// How many evenly spaced positions the circle is cut into (0 for an empty ring).
    pub positions: u32,
    /// The size of the circle the positions sample: its slots or table entries, or
    /// `None` for the 2⁶⁴ hashes of a point ring or of rendezvous (and for an empty
    /// ring, which has nothing to draw).
    pub circle: Option<u64>,
    /// In order around the circle, covering `0..positions` without gaps; two arcs next
    /// to each other belong to different members (the last and the first may not).
    pub arcs: Vec<OwnedArc>,
    /// The virtual servers of a slot ring, in circle order; empty for the other
    /// algorithms and when there are more than [`MAX_VNODE_MARKS`].
    pub vnodes: Vec<VnodeMark>,
}

pub(super) fn picture(ring: &Ring, max_positions: u32) -> RingPicture {
    if ring.is_empty() {
        return RingPicture {
            positions: 0,
            circle: None,
            arcs: Vec::new(),
            vnodes: Vec::new(),
        };
    }
    let circle = match &ring.layout {
        Layout::Slot(slots) => Some(slots.placement().len() as u64),
        Layout::Table(table) => Some(table.table().len() as u64),
        Layout::Point(_) | Layout::Rendezvous(_) => None,
    };
    let positions = match circle {
        Some(size) => size.min(u64::from(max_positions.max(1))) as u32,
        None => max_positions.max(1),
    };
    let size = circle.map_or(1u128 << 64, u128::from);
    let mut arcs: Vec<OwnedArc> = Vec::new();
    for position in 0..positions {
        // The hash at the start of this position: slot or entry k·size/positions (exactly
        // slot k when the circle is drawn whole), or k·2⁶⁴/positions.
        let hash = (u128::from(position) * size / u128::from(positions)) as u64;
        let member = ring.lookup_hash(hash).expect("a non-empty ring") as u32;
        match arcs.last_mut() {
            Some(arc) if arc.member == member => arc.to = position + 1,
            _ => arcs.push(OwnedArc {
                from: position,
                to: position + 1,
                member,
            }),
        }
    }
    RingPicture {
        positions,
        circle,
        arcs,
        vnodes: vnode_marks(ring),
    }
}

fn vnode_marks(ring: &Ring) -> Vec<VnodeMark> {
    let Layout::Slot(slots) = &ring.layout else {
        return Vec::new();
    };
    let placement = slots.placement();
    let marks: Vec<VnodeMark> = placement
        .iter()
        .enumerate()
        .filter(|&(_, &owner)| owner != NO_OWNER)
        .map(|(slot, &owner)| VnodeMark {
            at: slot as f64 / placement.len() as f64,
            member: owner,
        })
        .collect();
    if marks.len() > MAX_VNODE_MARKS {
        Vec::new()
    } else {
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ALGORITHMS, HASHES};
    use super::super::{Algorithm, HashFn, RingConfig};
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("Server{i}")).collect()
    }

    /// Each position's owner, from the arcs.
    fn owners(picture: &RingPicture) -> Vec<u32> {
        picture
            .arcs
            .iter()
            .flat_map(|arc| (arc.from..arc.to).map(move |_| arc.member))
            .collect()
    }

    fn check_arcs_tile_the_circle(picture: &RingPicture, members: usize) {
        let mut next = 0;
        for (i, arc) in picture.arcs.iter().enumerate() {
            assert_eq!(arc.from, next, "arc {i} starts where the previous ended");
            assert!(arc.to > arc.from, "arc {i} is not empty");
            assert!((arc.member as usize) < members, "arc {i} names a member");
            if i > 0 {
                assert_ne!(picture.arcs[i - 1].member, arc.member, "arcs {i} merged");
            }
            next = arc.to;
        }
        assert_eq!(next, picture.positions, "the arcs cover the circle");
    }

    #[test]
    fn the_course_ring_is_drawn_slot_by_slot_with_its_virtual_servers() {
        let ring = Ring::build(&servers(3), &RingConfig::course());
        let picture = ring.picture(1024);
        assert_eq!(picture.positions, 512);
        assert_eq!(picture.circle, Some(512));
        check_arcs_tile_the_circle(&picture, 3);
        // Each slot's owner is the member a key hashed to that slot goes to.
        for (slot, owner) in owners(&picture).into_iter().enumerate() {
            assert_eq!(
                Some(owner as usize),
                ring.lookup_hash(slot as u64),
                "slot {slot}"
            );
        }
        // 9 virtual servers each, all placed (no collision for three servers).
        assert_eq!(picture.vnodes.len(), 27);
        for member in 0..3 {
            assert_eq!(
                picture.vnodes.iter().filter(|v| v.member == member).count(),
                9
            );
        }
        // A key goes to the first virtual server at or after its slot: every arc ends
        // at a virtual server of its own member.
        // The arc that wraps past the last virtual server ends at the first one.
        let (wrapping, arcs) = picture.arcs.split_last().unwrap();
        assert_eq!(wrapping.member, picture.vnodes[0].member);
        for arc in arcs {
            let last = f64::from(arc.to - 1) / 512.0;
            assert!(
                picture
                    .vnodes
                    .iter()
                    .any(|v| v.at == last && v.member == arc.member),
                "{arc:?} does not end at a virtual server of its member"
            );
        }
    }

    #[test]
    fn every_algorithm_tiles_its_circle_with_the_owners_of_sampled_hashes() {
        for algorithm in ALGORITHMS {
            for hash in HASHES {
                let config = RingConfig {
                    algorithm,
                    hash,
                    slots: 4093,
                    vnodes: 20,
                };
                let ring = Ring::build(&servers(5), &config);
                let picture = ring.picture(720);
                assert_eq!(picture.positions, 720, "{config:?}");
                check_arcs_tile_the_circle(&picture, 5);
                let owners = owners(&picture);
                let (size, whole) = match algorithm {
                    Algorithm::Slot | Algorithm::Maglev | Algorithm::RankTable => (4093u128, false),
                    Algorithm::Point | Algorithm::Rendezvous => (1u128 << 64, true),
                };
                assert_eq!(picture.circle, (!whole).then_some(4093), "{config:?}");
                for (k, &owner) in owners.iter().enumerate() {
                    let at = (k as u128 * size / 720) as u64;
                    assert_eq!(Some(owner as usize), ring.lookup_hash(at), "{config:?} {k}");
                }
                assert_eq!(picture.vnodes.is_empty(), algorithm != Algorithm::Slot);
            }
        }
    }

    #[test]
    fn with_an_even_hash_the_picture_agrees_with_the_shares_of_the_keys() {
        for algorithm in ALGORITHMS {
            let config = RingConfig {
                algorithm,
                hash: HashFn::Xxh3,
                slots: 65_537,
                vnodes: 160,
            };
            let ring = Ring::build(&servers(4), &config);
            let picture = ring.picture(4096);
            let mut drawn = [0u32; 4];
            for arc in &picture.arcs {
                drawn[arc.member as usize] += arc.to - arc.from;
            }
            for (member, share) in ring.shares().into_iter().enumerate() {
                let fraction = f64::from(drawn[member]) / f64::from(picture.positions);
                assert!(
                    (fraction - share).abs() < 0.03,
                    "{algorithm:?}: member {member} drawn on {fraction:.3} of the circle, share {share:.3}"
                );
            }
        }
    }

    #[test]
    fn a_small_circle_is_drawn_whole_and_an_empty_ring_has_no_arcs() {
        let config = RingConfig {
            algorithm: Algorithm::Maglev,
            hash: HashFn::Xxh3,
            slots: 7,
            vnodes: 0,
        };
        let picture = Ring::build(&servers(2), &config).picture(720);
        assert_eq!((picture.positions, picture.circle), (7, Some(7)));
        check_arcs_tile_the_circle(&picture, 2);

        let empty = Ring::build::<&str>(&[], &RingConfig::default()).picture(720);
        assert_eq!((empty.positions, empty.circle), (0, None));
        assert!(empty.arcs.is_empty() && empty.vnodes.is_empty());

        // A single member owns one arc: the whole circle.
        let alone = Ring::build(&["A"], &RingConfig::course()).picture(512);
        assert_eq!(
            alone.arcs,
            [OwnedArc {
                from: 0,
                to: 512,
                member: 0
            }]
        );
    }

    #[test]
    fn too_many_virtual_servers_are_not_marked() {
        let config = RingConfig {
            algorithm: Algorithm::Slot,
            hash: HashFn::Xxh3,
            slots: 65_536,
            vnodes: 1000,
        };
        let picture = Ring::build(&servers(5), &config).picture(1024);
        assert!(picture.vnodes.is_empty());
        assert_eq!(picture.positions, 1024);
        check_arcs_tile_the_circle(&picture, 5);
    }
}
