//! Ketama-style point ring: each member owns `vnodes` points on the `u64` circle and a key
//! belongs to the first point at or after its hash, wrapping past the top.

use super::config::HashFn;

pub(super) struct PointRing {
    /// Point positions, ascending. Kept apart from the owners so that the binary search
    /// touches only this array (twice as many positions per cache line).
    positions: Vec<u64>,
    /// `owners[k]` owns `positions[k]`.
    owners: Vec<u32>,
}

impl PointRing {
    pub(super) fn build(members: &[String], hash: HashFn, vnodes: u32) -> Self {
        let mut points: Vec<(u64, u32)> = members
            .iter()
            .enumerate()
            .flat_map(|(index, name)| {
                (0..vnodes).map(move |vnode| {
                    (
                        hash.member_hash(name, index as u64 + 1, vnode),
                        index as u32,
                    )
                })
            })
            .collect();
        // Equal positions are ordered by member, so the lower canonical index owns the key
        // range of a shared point in every process.
        points.sort_unstable();
        let (positions, owners) = points.into_iter().unzip();
        PointRing { positions, owners }
    }

    /// Index of the first point at or after `hash`, wrapping to 0; requires a point.
    pub(super) fn point_of(&self, hash: u64) -> usize {
        let k = self.positions.partition_point(|&p| p < hash);
        if k == self.positions.len() { 0 } else { k }
    }

    pub(super) fn owners(&self) -> &[u32] {
        &self.owners
    }
}
