//! The failover order of a key: distinct members, the lookup result first.

use super::NO_OWNER;
use super::rendezvous::RendezvousSet;

/// Iterator over member indices in the order failover should try them; yields every member
/// of the ring exactly once. Producing the first item never allocates.
pub struct Candidates<'a> {
    order: Order<'a>,
    /// Members not yet yielded.
    remaining: usize,
}

enum Order<'a> {
    /// Slot, point and Maglev: walk the table forward from the key's position, yielding each
    /// owner the first time it is met; after a full turn, members that own no entry at all
    /// (only possible when the table is smaller than the member set) in canonical order.
    Walk {
        owners: &'a [u32],
        position: usize,
        steps_left: usize,
        next_unplaced: usize,
        seen: SeenSet,
    },
    /// Rendezvous: the winner (found without allocating), then the rest by descending
    /// score, ranked only when the second member is asked for.
    Ranked {
        set: &'a RendezvousSet,
        key_hash: u64,
        winner: Option<usize>,
        ranking: Option<std::vec::IntoIter<usize>>,
    },
}

impl<'a> Candidates<'a> {
    pub(super) fn empty() -> Self {
        Candidates {
            order: Order::Walk {
                owners: &[],
                position: 0,
                steps_left: 0,
                next_unplaced: 0,
                seen: SeenSet::new(0),
            },
            remaining: 0,
        }
    }

    pub(super) fn walk(owners: &'a [u32], start: usize, members: usize) -> Self {
        let order = Order::Walk {
            owners,
            position: start,
            steps_left: owners.len(),
            next_unplaced: 0,
            seen: SeenSet::new(members),
        };
        Candidates {
            order,
            remaining: members,
        }
    }

    pub(super) fn ranked(set: &'a RendezvousSet, key_hash: u64, members: usize) -> Self {
        let order = Order::Ranked {
            set,
            key_hash,
            winner: None,
            ranking: None,
        };
        Candidates {
            order,
            remaining: members,
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let next = match &mut self.order {
            Order::Walk {
                owners,
                position,
                steps_left,
                next_unplaced,
                seen,
            } => {
                let mut found = None;
                while *steps_left > 0 && found.is_none() {
                    let owner = owners[*position];
                    *position = (*position + 1) % owners.len();
                    *steps_left -= 1;
                    if owner != NO_OWNER && !seen.contains(owner as usize) {
                        found = Some(owner as usize);
                    }
                }
                while found.is_none() {
                    let member = *next_unplaced;
                    *next_unplaced += 1;
                    if !seen.contains(member) {
                        found = Some(member);
                    }
                }
                let member = found.expect("remaining > 0 means an unseen member exists");
                seen.insert(member);
                member
            }
            Order::Ranked {
                set,
                key_hash,
                winner,
                ranking,
            } => match winner {
                None => *winner.insert(set.winner(*key_hash)),
                Some(first) => {
                    let first = *first;
                    let rest = ranking.get_or_insert_with(|| set.ranking(*key_hash).into_iter());
                    rest.find(|&m| m != first).expect("remaining > 0")
                }
            },
        };
        self.remaining -= 1;
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Candidates<'_> {}

/// Set of member indices already yielded. Holds up to 128 members inline; for more, the
/// first member is kept in a field and the bitmap is allocated at the second insert, so that
/// the first `next()` never allocates.
struct SeenSet {
    members: usize,
    first: usize,
    inline: u128,
    heap: Vec<u64>,
}

impl SeenSet {
    fn new(members: usize) -> Self {
        SeenSet {
            members,
            first: usize::MAX,
            inline: 0,
            heap: Vec::new(),
        }
    }

    fn contains(&self, member: usize) -> bool {
        if member == self.first {
            return true;
        }
        if self.members <= 128 {
            self.inline & (1 << member) != 0
        } else {
            self.heap
                .get(member / 64)
                .is_some_and(|word| word & (1 << (member % 64)) != 0)
        }
    }

    fn insert(&mut self, member: usize) {
        if self.first == usize::MAX {
            self.first = member;
        } else if self.members <= 128 {
            self.inline |= 1 << member;
        } else {
            if self.heap.is_empty() {
                self.heap = vec![0; self.members.div_ceil(64)];
            }
            self.heap[member / 64] |= 1 << (member % 64);
        }
    }
}
