//! The routing table: one ring snapshot plus the address of each member.
//!
//! The [`super::Publisher`] builds a new table whenever the set of routable replicas
//! changes and swaps it in with one atomic pointer store; the proxy loads the current
//! table per request without taking a lock. A replica that leaves the table because
//! it failed is ejected: requests still waiting on it are told at once (see [`Ejection`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::uri::Authority;
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::replica_name::ReplicaName;
use crate::ring::{Ring, RingConfig};

/// A routable replica with everything the request path needs, prepared once per
/// table so that forwarding does no string formatting or map lookups.
pub struct Backend {
    pub name: ReplicaName,
    pub addr: SocketAddr,
    pub authority: Authority,
    pub responses: Counter,
    pub failures: Counter,
    pub latency: Histogram,
    /// Shared by every table this member is in, with this address.
    pub ejection: Arc<Ejection>,
}

/// Tells the requests in flight to one replica that it was taken out of the ring
/// because it failed (heartbeats, the supervisor, the operator), so that they stop
/// waiting for an answer that will not come; the failover policy decides what
/// happens to each of them.
pub struct Ejection {
    ejected: AtomicBool,
    /// One per proxy worker (by index, modulo), each on its own cache line: a request
    /// registers its wait under a lock that only its own worker thread takes.
    waiters: Box<[WorkerWaiters]>,
}

#[repr(align(128))]
#[derive(Default)]
struct WorkerWaiters(Notify);

impl Default for Ejection {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(64));
        Self {
            ejected: AtomicBool::new(false),
            waiters: (0..workers).map(|_| WorkerWaiters::default()).collect(),
        }
    }
}

impl Ejection {
    pub fn eject(&self) {
        self.ejected.store(true, Ordering::SeqCst);
        for waiters in &self.waiters {
            waiters.0.notify_waiters();
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::SeqCst)
    }

    /// Resolves once the replica is ejected; `worker` is the caller's worker index.
    pub async fn wait(&self, worker: usize) {
        let notified = self.waiters[worker % self.waiters.len()].0.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: an ejection in between still wakes it.
        notified.as_mut().enable();
        if self.is_ejected() {
            return;
        }
        notified.await;
    }
}

/// An immutable snapshot: `backends[i]` is `ring.members()[i]`.
pub struct RoutingTable {
    pub ring: Ring,
    pub backends: Vec<Backend>,
    /// Each member's share of the key space, computed on first use (`/ring`).
    shares: OnceLock<Vec<f64>>,
}

pub type SharedRouting = Arc<ArcSwap<RoutingTable>>;

impl RoutingTable {
    /// The first table of a pool.
    pub fn build(
        members: &[(ReplicaName, SocketAddr)],
        config: &RingConfig,
        metrics: &Metrics,
    ) -> Self {
        Self::build_with(members, config, metrics, &HashMap::new())
    }

    /// The table that replaces this one. Members that stay keep their [`Ejection`];
    /// those that leave and `failed` names are ejected (a member removed on request
    /// is not: its requests in flight may finish).
    pub fn next(
        &self,
        members: &[(ReplicaName, SocketAddr)],
        config: &RingConfig,
        metrics: &Metrics,
        failed: impl Fn(&ReplicaName) -> bool,
    ) -> Self {
        let ejections: HashMap<(&str, SocketAddr), &Arc<Ejection>> = self
            .backends
            .iter()
            .map(|b| ((b.name.as_str(), b.addr), &b.ejection))
            .collect();
        let next = Self::build_with(members, config, metrics, &ejections);
        for backend in &self.backends {
            let stays = next
                .backends
                .iter()
                .any(|b| Arc::ptr_eq(&b.ejection, &backend.ejection));
            if !stays && failed(&backend.name) {
                tracing::info!(replica = %backend.name, "ejected: requests waiting on it are cut loose");
                backend.ejection.eject();
            }
        }
        next
    }

    fn build_with(
        members: &[(ReplicaName, SocketAddr)],
        config: &RingConfig,
        metrics: &Metrics,
        ejections: &HashMap<(&str, SocketAddr), &Arc<Ejection>>,
    ) -> Self {
        let ring = Ring::build(
            &members
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>(),
            config,
        );
        let by_name: HashMap<&str, &(ReplicaName, SocketAddr)> =
            members.iter().map(|m| (m.0.as_str(), m)).collect();
        let backends = ring
            .members()
            .iter()
            .map(|member| {
                let (name, addr) = by_name[member.as_str()];
                Backend {
                    name: name.clone(),
                    addr: *addr,
                    authority: Authority::try_from(addr.to_string())
                        .expect("a socket address is a valid authority"),
                    responses: metrics.responses(name),
                    failures: metrics.forward_failures(name),
                    latency: metrics.latency(name),
                    ejection: ejections
                        .get(&(name.as_str(), *addr))
                        .map_or_else(Default::default, |e| Arc::clone(e)),
                }
            })
            .collect();
        Self {
            ring,
            backends,
            shares: OnceLock::new(),
        }
    }

    /// Each member's share of the key space, in the order of `ring.members()`.
    /// Enumerating the key space takes milliseconds: it is done once per table, and
    /// callers on async workers should call it from a blocking task.
    pub fn shares(&self) -> &[f64] {
        self.shares.get_or_init(|| self.ring.shares())
    }

    /// The (name, address) pairs of this table, sorted: what a rebuild compares.
    pub fn membership(&self) -> Vec<(ReplicaName, SocketAddr)> {
        let mut members: Vec<_> = self
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.addr))
            .collect();
        members.sort();
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16) -> (ReplicaName, SocketAddr) {
        (
            ReplicaName::parse(name).unwrap(),
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    #[tokio::test]
    async fn a_member_that_leaves_failed_is_ejected_and_one_removed_is_not() {
        let metrics = Metrics::new();
        let config = RingConfig::default();
        let (a, b, c) = (member("A", 1), member("B", 2), member("C", 3));
        let first = RoutingTable::build(&[a.clone(), b.clone(), c.clone()], &config, &metrics);
        let ejection = |table: &RoutingTable, name: &str| {
            table
                .backends
                .iter()
                .find(|b| b.name.as_str() == name)
                .map(|b| b.ejection.clone())
                .unwrap()
        };
        let (of_a, of_b, of_c) = (
            ejection(&first, "A"),
            ejection(&first, "B"),
            ejection(&first, "C"),
        );
        let waiting = {
            let of_b = of_b.clone();
            tokio::spawn(async move { of_b.wait(1).await })
        };

        // B failed, C was removed on request; A stays.
        let second = first.next(std::slice::from_ref(&a), &config, &metrics, |name| {
            name.as_str() == "B"
        });
        waiting.await.unwrap();
        assert!(!of_a.is_ejected() && !of_c.is_ejected());
        assert!(
            Arc::ptr_eq(&ejection(&second, "A"), &of_a),
            "A keeps its signal"
        );

        // A wait that begins after the ejection returns at once.
        of_b.wait(0).await;

        // B comes back at the same address: a fresh signal, not the spent one.
        let third = second.next(&[a, b], &config, &metrics, |_| true);
        assert!(!ejection(&third, "B").is_ejected());
    }
}
