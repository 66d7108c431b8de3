//! Bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
//! Loads", SODA 2018; HAProxy's `hash-balance-factor`, Envoy's `hash_balance_factor`).
//!
//! With a balance factor `c`, a replica of weight `w` in a pool of total weight `W` may
//! hold at most `⌈c · (w / W) · (L + 1)⌉` requests at once, where `L` is the pool's
//! requests in flight before the one being placed. A request whose home replica is at
//! its cap goes to the next replica of its failover order that is not: hot keys spill
//! over to their ring neighbours instead of piling onto one replica, and every other key
//! stays home. Since the caps add up to at least `c · (L + 1) > L`, some replica always
//! has room.
//!
//! The counts are shared by every proxy worker (one pool-wide total and one counter per
//! replica, each on its own cache line) and are touched only when a factor is set.

use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The `c` of bounded loads: how far above the average a replica's load may go.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, serde::Serialize)]
pub struct BalanceFactor(f64);

impl BalanceFactor {
    /// 1 is the tightest bound (every replica within one request of the average);
    /// below it the caps would not add up to the load.
    pub const MIN: f64 = 1.0;
    /// Far above any useful bound: larger means "off", which is said by not setting it.
    pub const MAX: f64 = 100.0;

    pub fn new(factor: f64) -> Result<Self, String> {
        if (Self::MIN..=Self::MAX).contains(&factor) {
            Ok(Self(factor))
        } else {
            Err(format!(
                "the balance factor must be a number from {} to {}, not {factor}",
                Self::MIN,
                Self::MAX
            ))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for BalanceFactor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let factor: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a balance factor: give a number such as 1.25"))?;
        Self::new(factor)
    }
}

impl std::fmt::Display for BalanceFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A count of requests in flight, alone on its cache line: the workers update the
/// counts of different replicas without invalidating each other's.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bound of one routing table: the factor, the pool's total in flight (shared by
/// every table of a publisher, so requests that outlive a rebuild still count), and
/// each backend's part of the factor.
#[derive(Debug)]
pub struct LoadBound {
    factor: BalanceFactor,
    total: Arc<InFlight>,
    /// `c · wᵢ / W` per backend, indexed like the table's backends.
    scale: Vec<f64>,
}

impl LoadBound {
    /// `weights` are the backends' ring weights, in the table's order.
    pub fn new(factor: BalanceFactor, total: Arc<InFlight>, weights: &[u32]) -> Self {
        let sum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let scale = weights
            .iter()
            .map(|&w| factor.get() * f64::from(w) / sum)
            .collect();
        Self {
            factor,
            total,
            scale,
        }
    }

    pub fn factor(&self) -> BalanceFactor {
        self.factor
    }

    /// Requests in flight in the whole pool.
    pub fn total(&self) -> usize {
        self.total.get()
    }

    /// The most requests backend `index` may hold now, counting one more.
    pub fn cap(&self, index: usize) -> usize {
        // Reads are relaxed: a cap a request or two off under concurrency only moves one
        // request to a neighbour, or keeps it home (the paper's bound is per decision).
        (self.scale[index] * (self.total.get() + 1) as f64).ceil() as usize
    }

    /// Whether backend `index`, holding `load`, may take one more request: `load <
    /// cap(index)`, computed without the `ceil` (for a whole `load`, `load < ⌈x⌉` is
    /// `load < x`), which is a libm call on the request path.
    pub fn has_room(&self, index: usize, load: &InFlight) -> bool {
        (load.get() as f64) < self.scale[index] * (self.total.get() + 1) as f64
    }

    /// Counts one request on `load` (and the pool) until the returned charge is dropped.
    pub fn charge<'a>(&'a self, load: &'a InFlight) -> Charge<&'a InFlight> {
        Charge::new(load, &self.total)
    }

    /// The same `charge` of `load`, for a request that outlives the table it was routed
    /// by (a response body streamed after the handler returned): still counted once.
    pub fn keep(&self, charge: Charge<&InFlight>, load: &Arc<InFlight>) -> Charge<Arc<InFlight>> {
        debug_assert!(std::ptr::eq(charge.load, &**load));
        // Handed over, not taken off: the owned charge takes it off when dropped.
        std::mem::forget(charge);
        Charge {
            load: load.clone(),
            total: self.total.clone(),
        }
    }
}

/// One request counted in flight; dropping it (however the request ends, a cancelled
/// task included) takes it off.
#[derive(Debug)]
pub struct Charge<P: Deref<Target = InFlight>> {
    load: P,
    total: P,
}

impl<P: Deref<Target = InFlight>> Charge<P> {
    fn new(load: P, total: P) -> Self {
        load.add();
        total.add();
        Self { load, total }
    }
}

impl<P: Deref<Target = InFlight>> Drop for Charge<P> {
    fn drop(&mut self) {
        self.load.sub();
        self.total.sub();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_outside_one_to_a_hundred_are_refused() {
        assert_eq!("1.25".parse::<BalanceFactor>().unwrap().get(), 1.25);
        assert_eq!(" 1 ".parse::<BalanceFactor>().unwrap().get(), 1.0);
        for bad in ["0.99", "0", "-2", "101", "NaN", "inf", "", "1,5", "fast"] {
            assert!(bad.parse::<BalanceFactor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn caps_follow_the_factor_weights_and_total() {
        let total = Arc::new(InFlight::default());
        // Weights 1, 1, 2 (W = 4), c = 1.25: scales 0.3125, 0.3125, 0.625.
        let bound = LoadBound::new(BalanceFactor::new(1.25).unwrap(), total.clone(), &[1, 1, 2]);
        // Nothing in flight: ⌈0.3125 · 1⌉ = 1 and ⌈0.625 · 1⌉ = 1.
        assert_eq!((bound.cap(0), bound.cap(2)), (1, 1));
        let loads: Vec<InFlight> = (0..3).map(|_| InFlight::default()).collect();
        let charges: Vec<_> = (0..7).map(|_| bound.charge(&loads[2])).collect();
        // L = 7: ⌈0.3125 · 8⌉ = ⌈2.5⌉ = 3 and ⌈0.625 · 8⌉ = 5.
        assert_eq!((bound.total(), bound.cap(0), bound.cap(2)), (7, 3, 5));
        assert!(!bound.has_room(2, &loads[2]), "7 in flight on a cap of 5");
        assert!(bound.has_room(0, &loads[0]));
        drop(charges);
        assert_eq!((bound.total(), loads[2].get()), (0, 0));
    }

    #[test]
    fn some_backend_always_has_room() {
        // Caps add up to at least c · (L + 1) > L, whatever the spread of the load.
        for weights in [vec![1, 1, 1, 1, 1], vec![1, 3, 1, 7], vec![256, 1]] {
            let bound = LoadBound::new(
                BalanceFactor::new(1.0).unwrap(),
                Arc::new(InFlight::default()),
                &weights,
            );
            let loads: Vec<InFlight> = weights.iter().map(|_| InFlight::default()).collect();
            let mut charges = Vec::new();
            for _ in 0..200 {
                let index = (0..weights.len())
                    .find(|&i| bound.has_room(i, &loads[i]))
                    .expect("a backend with room");
                charges.push(bound.charge(&loads[index]));
            }
        }
    }
}
