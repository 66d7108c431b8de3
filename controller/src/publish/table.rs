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

use super::load::{BalanceFactor, InFlight, LoadBound};
use crate::metrics::Metrics;
use crate::replica_name::ReplicaName;
use crate::ring::{Ring, RingConfig};

/// A member the table routes to: its name, address, ring weight and the protocol it
/// is spoken to in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub name: ReplicaName,
    pub addr: SocketAddr,
    pub weight: u32,
    pub protocol: UpstreamProtocol,
}

/// What requests are forwarded to a pool's replicas in: `http1` (HTTP/1.1 whatever the
/// client spoke), `h2c` (HTTP/2 with prior knowledge whatever the client spoke: gRPC
/// servers) or `auto` (the client's: an HTTP/2 stream goes on as h2c, an HTTP/1.1
/// request as HTTP/1.1) [default: http1]. Per replica in the table, set per pool by its
/// owner (`ringlb up --upstream-protocol`, a `ServerPool`'s `spec.protocol`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 whatever the client spoke.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c) whatever the client spoke.
    H2c,
    /// The client's: an HTTP/2 stream goes on as h2c, an HTTP/1.1 request as HTTP/1.1.
    Auto,
}

impl UpstreamProtocol {
    /// Whether a request that arrived in HTTP/2 (`client_h2`) goes on as h2c.
    pub fn h2c_for(self, client_h2: bool) -> bool {
        match self {
            Self::Http1 => false,
            Self::H2c => true,
            Self::Auto => client_h2,
        }
    }
}

impl std::str::FromStr for UpstreamProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http1" => Ok(Self::Http1),
            "h2c" => Ok(Self::H2c),
            "auto" => Ok(Self::Auto),
            other => Err(format!("'{other}' is not http1, h2c or auto")),
        }
    }
}

/// A routable replica with everything the request path needs, prepared once per
/// table so that forwarding does no string formatting or map lookups.
pub struct Backend {
    pub name: ReplicaName,
    pub addr: SocketAddr,
    pub authority: Authority,
    pub protocol: UpstreamProtocol,
    pub responses: Counter,
    pub failures: Counter,
    pub latency: Histogram,
    /// Shared by every table this member is in, with this address.
    pub ejection: Arc<Ejection>,
    /// Its requests in flight, shared like `ejection`; counted only under a load bound.
    pub in_flight: Arc<InFlight>,
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
    /// Bounded loads, when a balance factor is set.
    pub bound: Option<LoadBound>,
    /// Some member takes every request in h2c: HTTP/1.1 requests go through the
    /// general path, which speaks it (the fast path speaks HTTP/1.1 only).
    pub any_h2c: bool,
    /// The pool's requests in flight, handed on to the next table.
    in_flight: Arc<InFlight>,
    /// Each member's share of the key space, computed on first use (`/ring`).
    shares: OnceLock<Vec<f64>>,
}

pub type SharedRouting = Arc<ArcSwap<RoutingTable>>;

impl RoutingTable {
    /// The first table of a pool. `in_flight` is the pool's count of requests in flight,
    /// shared by all its tables.
    pub fn build(
        members: &[Endpoint],
        config: &RingConfig,
        balance: Option<BalanceFactor>,
        in_flight: &Arc<InFlight>,
        metrics: &Metrics,
    ) -> Self {
        Self::build_with(
            members,
            config,
            balance,
            in_flight,
            metrics,
            &HashMap::new(),
        )
    }

    /// The table that replaces this one. Members that stay keep their [`Ejection`] and
    /// in-flight count; those that leave and `failed` names are ejected (a member
    /// removed on request is not: its requests in flight may finish).
    pub fn next(
        &self,
        members: &[Endpoint],
        config: &RingConfig,
        balance: Option<BalanceFactor>,
        metrics: &Metrics,
        failed: impl Fn(&ReplicaName) -> bool,
    ) -> Self {
        let staying: HashMap<(&str, SocketAddr), &Backend> = self
            .backends
            .iter()
            .map(|b| ((b.name.as_str(), b.addr), b))
            .collect();
        let next = Self::build_with(members, config, balance, &self.in_flight, metrics, &staying);
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
        members: &[Endpoint],
        config: &RingConfig,
        balance: Option<BalanceFactor>,
        in_flight: &Arc<InFlight>,
        metrics: &Metrics,
        staying: &HashMap<(&str, SocketAddr), &Backend>,
    ) -> Self {
        let ring = build_ring(members, config);
        let by_name: HashMap<&str, &Endpoint> =
            members.iter().map(|m| (m.name.as_str(), m)).collect();
        let backends: Vec<Backend> = ring
            .members()
            .iter()
            .map(|member| {
                let Endpoint {
                    name,
                    addr,
                    protocol,
                    ..
                } = by_name[member.as_str()];
                let earlier = staying.get(&(name.as_str(), *addr));
                Backend {
                    name: name.clone(),
                    addr: *addr,
                    authority: Authority::try_from(addr.to_string())
                        .expect("a socket address is a valid authority"),
                    protocol: *protocol,
                    responses: metrics.responses(name),
                    failures: metrics.forward_failures(name),
                    latency: metrics.latency(name),
                    ejection: earlier.map_or_else(Default::default, |b| Arc::clone(&b.ejection)),
                    in_flight: earlier.map_or_else(Default::default, |b| Arc::clone(&b.in_flight)),
                }
            })
            .collect();
        let bound = balance.map(|factor| LoadBound::new(factor, in_flight.clone(), ring.weights()));
        let any_h2c = backends.iter().any(|b| b.protocol == UpstreamProtocol::H2c);
        Self {
            any_h2c,
            ring,
            backends,
            bound,
            in_flight: in_flight.clone(),
            shares: OnceLock::new(),
        }
    }

    /// Each member's share of the key space, in the order of `ring.members()`.
    /// Enumerating the key space takes milliseconds: it is done once per table, and
    /// callers on async workers should call it from a blocking task.
    pub fn shares(&self) -> &[f64] {
        self.shares.get_or_init(|| self.ring.shares())
    }

    /// The members of this table, sorted: what a rebuild compares.
    pub fn membership(&self) -> Vec<Endpoint> {
        let mut members: Vec<Endpoint> = self
            .backends
            .iter()
            .zip(self.ring.weights())
            .map(|(b, &weight)| Endpoint {
                name: b.name.clone(),
                addr: b.addr,
                weight,
                protocol: b.protocol,
            })
            .collect();
        members.sort();
        members
    }
}

/// The ring over `members` with their weights. Weights the ring cannot honour (a slot
/// ring too small for them) were refused where they were set (`--replica`, `/add`, the
/// spec); should they get here anyway, the ring ignores them rather than routing nothing.
fn build_ring(members: &[Endpoint], config: &RingConfig) -> Ring {
    let weighted: Vec<(&str, u32)> = members
        .iter()
        .map(|m| (m.name.as_str(), m.weight))
        .collect();
    Ring::build_weighted(&weighted, config).unwrap_or_else(|error| {
        tracing::error!(%error, "weights ignored: every member counts as weight 1");
        let names: Vec<&str> = weighted.iter().map(|(name, _)| *name).collect();
        Ring::build(&names, config)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16) -> Endpoint {
        Endpoint {
            name: ReplicaName::parse(name).unwrap(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            protocol: UpstreamProtocol::Http1,
        }
    }

    #[tokio::test]
    async fn a_member_that_leaves_failed_is_ejected_and_one_removed_is_not() {
        let metrics = Metrics::new();
        let config = RingConfig::default();
        let (a, b, c) = (member("A", 1), member("B", 2), member("C", 3));
        let in_flight = Arc::new(InFlight::default());
        let first = RoutingTable::build(
            &[a.clone(), b.clone(), c.clone()],
            &config,
            None,
            &in_flight,
            &metrics,
        );
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
        let second = first.next(std::slice::from_ref(&a), &config, None, &metrics, |name| {
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
        let third = second.next(&[a, b], &config, None, &metrics, |_| true);
        assert!(!ejection(&third, "B").is_ejected());
    }
}
