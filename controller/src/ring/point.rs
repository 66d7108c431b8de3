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
    /// `vnodes × weight` points per member, `weights` indexed like `members` (all 1 for an
    /// unweighted ring). A member's points are vnode indices 0, 1, …, so raising its weight
    /// adds points and lowering it removes some, and nobody else's points move: keys move only
    /// to or from that member (consistent hashing with virtual nodes, Karger et al. 1997).
    pub(super) fn build(members: &[String], hash: HashFn, vnodes: u32, weights: &[u32]) -> Self {
        let mut points: Vec<(u64, u32)> = members
            .iter()
            .zip(weights)
            .enumerate()
            .flat_map(|(index, (name, &weight))| {
                (0..vnodes.saturating_mul(weight)).map(move |vnode| {
                    (hash.vnode_hash(name, index as u64 + 1, vnode), index as u32)
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

#[cfg(test)]
impl PointRing {
    /// Each member's exact share of the 2⁶⁴ hashes: point k owns the hashes after point k − 1
    /// up to itself, point 0 also the wrap-around past the last point.
    pub(super) fn arc_shares(&self, members: usize) -> Vec<f64> {
        let mut owned = vec![0u128; members];
        let mut previous = *self.positions.last().expect("a point") as u128;
        for (&position, &owner) in self.positions.iter().zip(&self.owners) {
            let position = position as u128;
            // Going around the circle from the previous point (exclusive) to this one.
            owned[owner as usize] += (position + (1u128 << 64) - previous) % (1u128 << 64);
            previous = position;
        }
        // A single point owns the whole circle, which the modulo above counts as zero.
        if self.positions.len() == 1 {
            owned[self.owners[0] as usize] = 1u128 << 64;
        }
        owned
            .into_iter()
            .map(|o| o as f64 / 2f64.powi(64))
            .collect()
    }
}
