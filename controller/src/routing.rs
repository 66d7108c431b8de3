//! The routing table: one ring snapshot plus the address of each member.
//!
//! The supervisor builds a new table whenever the set of routable replicas changes
//! and publishes it with one atomic pointer swap; the proxy loads the current table
//! per request without taking a lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use crate::metrics::Metrics;
use crate::pool::ReplicaName;
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
}

/// An immutable snapshot: `backends[i]` is `ring.members()[i]`.
pub struct RoutingTable {
    pub ring: Ring,
    pub backends: Vec<Backend>,
}

pub type SharedRouting = Arc<ArcSwap<RoutingTable>>;

impl RoutingTable {
    pub fn build(
        members: &[(ReplicaName, SocketAddr)],
        config: &RingConfig,
        metrics: &Metrics,
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
                }
            })
            .collect();
        Self { ring, backends }
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
