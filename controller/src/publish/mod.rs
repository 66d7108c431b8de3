//! The publisher: the one place where a pool's state becomes what the proxy routes by
//! and what the admin API and the operations port show.
//!
//! Whoever knows the pool feeds it a [`PoolState`]: the local supervisor after every
//! change, the Kubernetes proxy after every watch event. [`Publisher::publish`]
//! computes the routable members, rebuilds the routing table only when they (or the
//! ring's configuration) changed, ejects members that left because they failed,
//! updates the ring metrics and builds the [`PoolView`]. The request path reads the
//! table through [`Publisher::routing`] without a lock.

mod load;
mod table;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::replica_health::{Health, HealthState};
use crate::replica_name::ReplicaName;
use crate::ring::RingConfig;
pub use load::{BalanceFactor, Charge, InFlight, LoadBound};
pub use table::{Backend, Ejection, Endpoint, RoutingTable, SharedRouting, UpstreamProtocol};

/// One replica as the pool's owner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberState {
    pub name: ReplicaName,
    /// Where it listens; `None` while it has no address yet (a pod being scheduled).
    pub addr: Option<SocketAddr>,
    pub pid: Option<u32>,
    /// Its container's name, when it runs as a container (`--runtime docker`).
    pub container: Option<String>,
    /// Its ring weight (1 to `ring::MAX_WEIGHT`): its share of the keys is proportional.
    pub weight: u32,
    pub health: HealthState,
}

/// Everything a publish needs: what should serve, what is there, and how to hash.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolState {
    /// The replicas the pool keeps alive, in the order they were added.
    pub desired: Vec<ReplicaName>,
    /// Every replica known to exist, desired or not (one being removed, one failed).
    pub members: Vec<MemberState>,
    pub replacements: Vec<Replacement>,
    pub ring: RingConfig,
    /// Bounded loads: off when `None`.
    pub balance_factor: Option<BalanceFactor>,
    /// What the pool's replicas are spoken to in (`--upstream-protocol`,
    /// `spec.protocol`).
    pub protocol: UpstreamProtocol,
}

/// One replica in the JSON view of the ring.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberView {
    pub name: ReplicaName,
    pub address: SocketAddr,
    pub pid: Option<u32>,
    pub container: Option<String>,
    pub weight: u32,
    pub health: Health,
    pub consecutive_failures: u32,
    pub in_ring: bool,
}

/// A failed replica and the one that took its place.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Replacement {
    pub failed: ReplicaName,
    pub replacement: ReplicaName,
}

/// What the admin API and the operations port read: published after every change.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PoolView {
    /// The replicas the pool keeps alive, in the order they were added: what `/rep` lists.
    pub desired: Vec<ReplicaName>,
    pub members: Vec<MemberView>,
    pub replacements: Vec<Replacement>,
}

pub struct Publisher {
    metrics: Arc<Metrics>,
    routing: SharedRouting,
    view: ArcSwap<PoolView>,
    /// Publishes happen one at a time: each compares with the table it replaces.
    /// It holds the replicas whose metric series may exist (listed or desired).
    publishing: Mutex<HashSet<ReplicaName>>,
}

impl Publisher {
    /// A publisher with an empty ring.
    pub fn new(ring: &RingConfig, metrics: Arc<Metrics>) -> Self {
        let in_flight = Arc::new(InFlight::default());
        Self {
            routing: Arc::new(ArcSwap::from_pointee(RoutingTable::build(
                &[],
                ring,
                None,
                &in_flight,
                &metrics,
            ))),
            metrics,
            view: ArcSwap::from_pointee(PoolView::default()),
            publishing: Mutex::new(HashSet::new()),
        }
    }

    /// The routing table the proxy loads per request.
    pub fn routing(&self) -> &SharedRouting {
        &self.routing
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.routing.load_full()
    }

    pub fn view(&self) -> Arc<PoolView> {
        self.view.load_full()
    }

    /// Makes `state` current: a new routing table if the routable members or the
    /// ring's configuration changed, and a new view. Returns whether the ring was rebuilt.
    pub fn publish(&self, state: &PoolState) -> bool {
        let mut with_series = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let routable = routable(state);
        let current = self.routing.load();
        let balance = current.bound.as_ref().map(LoadBound::factor);
        let rebuild = routable != current.membership()
            || *current.ring.config() != state.ring
            || balance != state.balance_factor;
        if rebuild {
            // It failed if it is listed as not routable, or still desired with
            // nothing listed for it (its pod was deleted at once). One removed on
            // request is no longer desired: its requests in flight may finish.
            let failed = |name: &ReplicaName| match state.members.iter().find(|m| &m.name == name) {
                Some(member) => !member.health.routable(),
                None => state.desired.contains(name),
            };
            let table = current.next(
                &routable,
                &state.ring,
                state.balance_factor,
                &self.metrics,
                failed,
            );
            self.metrics.ring_rebuilds.inc();
            self.metrics.ring_members.set(routable.len() as i64);
            tracing::info!(
                members = ?routable.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
                "ring rebuilt"
            );
            self.routing.store(Arc::new(table));
        }
        let in_ring: HashSet<&ReplicaName> = routable.iter().map(|m| &m.name).collect();
        let mut members: Vec<MemberView> = state
            .members
            .iter()
            .filter_map(|m| {
                Some(MemberView {
                    name: m.name.clone(),
                    address: m.addr?,
                    pid: m.pid,
                    container: m.container.clone(),
                    weight: m.weight,
                    health: m.health.health,
                    consecutive_failures: m.health.consecutive_failures,
                    in_ring: in_ring.contains(&m.name),
                })
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        // The series of a replica that left the pool (neither listed nor desired)
        // go with it; one out of the ring for now keeps its own.
        let present: HashSet<&ReplicaName> = state
            .members
            .iter()
            .map(|m| &m.name)
            .chain(&state.desired)
            .collect();
        with_series.retain(|name| {
            let stays = present.contains(name);
            if !stays {
                self.metrics.forget_replica(self.metrics.pool(), name);
            }
            stays
        });
        with_series.extend(present.into_iter().cloned());
        self.view.store(Arc::new(PoolView {
            desired: state.desired.clone(),
            members,
            replacements: state.replacements.clone(),
        }));
        rebuild
    }

    /// A change of the desired replicas that the owner has accepted but not yet
    /// observed (Kubernetes: the spec was written, the watch has not delivered it):
    /// `/rep` shows it at once; the next publish carries it anyway.
    pub fn show_desired(&self, desired: Vec<ReplicaName>) {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        self.view.rcu(|view| PoolView {
            desired: desired.clone(),
            ..PoolView::clone(view)
        });
    }
}

/// The members that take traffic: desired, with an address, and healthy. Sorted,
/// as [`RoutingTable::membership`] is, so that the two compare.
fn routable(state: &PoolState) -> Vec<Endpoint> {
    let desired: HashSet<&ReplicaName> = state.desired.iter().collect();
    let mut routable: Vec<Endpoint> = state
        .members
        .iter()
        .filter(|m| desired.contains(&m.name) && m.health.routable())
        .filter_map(|m| {
            Some(Endpoint {
                name: m.name.clone(),
                addr: m.addr?,
                weight: m.weight,
                protocol: state.protocol,
            })
        })
        .collect();
    routable.sort();
    routable.dedup_by(|a, b| a.name == b.name);
    routable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ReplicaName {
        ReplicaName::parse(s).unwrap()
    }

    fn member(s: &str, port: u16, health: Health) -> MemberState {
        MemberState {
            name: name(s),
            addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            pid: None,
            container: None,
            weight: 1,
            health: HealthState {
                health,
                ..HealthState::starting()
            },
        }
    }

    fn state(desired: &[&str], members: Vec<MemberState>) -> PoolState {
        PoolState {
            desired: desired.iter().map(|s| name(s)).collect(),
            members,
            replacements: Vec::new(),
            ring: RingConfig::default(),
            balance_factor: None,
            protocol: UpstreamProtocol::default(),
        }
    }

    fn in_ring(publisher: &Publisher) -> Vec<String> {
        let members = publisher.table().membership();
        members.iter().map(|m| m.name.to_string()).collect()
    }

    #[test]
    fn only_desired_healthy_members_with_an_address_route_and_the_view_lists_them_all() {
        let publisher = Publisher::new(&RingConfig::default(), Arc::new(Metrics::new()));
        let mut no_address = member("D", 4, Health::Healthy);
        no_address.addr = None;
        let mut in_a_container = member("A", 1, Health::Healthy);
        in_a_container.container = Some("pool-A".into());
        let rebuilt = publisher.publish(&state(
            &["A", "B", "D"],
            vec![
                in_a_container,
                member("B", 2, Health::Starting),
                // Healthy but no longer desired (being removed).
                member("C", 3, Health::Healthy),
                no_address,
            ],
        ));
        assert!(rebuilt);
        assert_eq!(in_ring(&publisher), ["A"]);
        let view = publisher.view();
        assert_eq!(
            view.desired.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["A", "B", "D"]
        );
        let listed: Vec<(&str, bool)> = view
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.in_ring))
            .collect();
        assert_eq!(listed, [("A", true), ("B", false), ("C", false)]);
        assert_eq!(view.members[0].container.as_deref(), Some("pool-A"));
        assert_eq!(view.members[1].container, None);
    }

    #[test]
    fn the_ring_is_rebuilt_only_when_its_members_or_configuration_change() {
        let metrics = Arc::new(Metrics::new());
        let publisher = Publisher::new(&RingConfig::default(), metrics.clone());
        let two = state(
            &["A", "B"],
            vec![
                member("A", 1, Health::Healthy),
                member("B", 2, Health::Healthy),
            ],
        );
        assert!(publisher.publish(&two));
        let first = publisher.table();
        // Same members, health counters moved: the same table stays.
        let mut same = two.clone();
        same.members[0].health.consecutive_failures = 1;
        assert!(!publisher.publish(&same));
        assert!(Arc::ptr_eq(&first, &publisher.table()));
        assert_eq!(publisher.view().members[0].consecutive_failures, 1);
        // Another algorithm: rebuilt with the same members.
        let mut other = two.clone();
        other.ring = RingConfig {
            algorithm: crate::ring::Algorithm::Rendezvous,
            ..RingConfig::default()
        };
        assert!(publisher.publish(&other));
        assert_eq!(metrics.ring_rebuilds.get(), 2);
        assert_eq!(metrics.ring_members.get(), 2);
    }

    #[tokio::test]
    async fn a_member_that_turns_unhealthy_is_ejected_and_one_no_longer_listed_is_not() {
        let publisher = Publisher::new(&RingConfig::default(), Arc::new(Metrics::new()));
        publisher.publish(&state(
            &["A", "B", "C"],
            vec![
                member("A", 1, Health::Healthy),
                member("B", 2, Health::Healthy),
                member("C", 3, Health::Healthy),
            ],
        ));
        let ejection = |n: &str| {
            publisher
                .table()
                .backends
                .iter()
                .find(|b| b.name.as_str() == n)
                .unwrap()
                .ejection
                .clone()
        };
        let (b, c) = (ejection("B"), ejection("C"));
        // B is suspect now; C is gone from the list (removed).
        publisher.publish(&state(
            &["A", "B"],
            vec![
                member("A", 1, Health::Healthy),
                member("B", 2, Health::Suspect),
            ],
        ));
        assert!(b.is_ejected());
        assert!(!c.is_ejected());
    }

    #[test]
    fn shown_desired_replicas_stay_until_the_next_publish() {
        let publisher = Publisher::new(&RingConfig::default(), Arc::new(Metrics::new()));
        publisher.publish(&state(&["A"], vec![member("A", 1, Health::Healthy)]));
        publisher.show_desired(vec![name("A"), name("B")]);
        assert_eq!(publisher.view().desired.len(), 2);
        assert_eq!(publisher.view().members.len(), 1);
        assert_eq!(in_ring(&publisher), ["A"]);
    }

    #[test]
    fn a_replicas_series_carry_its_pool_and_go_when_it_leaves_the_pool() {
        let metrics = Arc::new(Metrics::for_pool("demo"));
        let publisher = Publisher::new(&RingConfig::default(), metrics.clone());
        let both = state(
            &["A", "B"],
            vec![
                member("A", 1, Health::Healthy),
                member("B", 2, Health::Healthy),
            ],
        );
        publisher.publish(&both);
        for backend in &publisher.table().backends {
            backend.responses.inc();
        }
        metrics.heartbeat_failed("demo", &name("B"));
        let series = |replica: &str| {
            let text = metrics.encode();
            text.lines()
                .filter(|l| l.contains(&format!("pool=\"demo\",replica=\"{replica}\"")))
                .count()
        };
        assert!(
            metrics
                .encode()
                .contains(r#"ringlb_responses_total{pool="demo",replica="B"} 1"#),
            "{}",
            metrics.encode()
        );
        let of_b = series("B");

        // Out of the ring but still in the pool (suspect): its series stay.
        let mut suspect = both.clone();
        suspect.members[1].health.health = Health::Suspect;
        publisher.publish(&suspect);
        assert_eq!(series("B"), of_b);

        // Removed: no longer desired, no longer listed.
        publisher.publish(&state(&["A"], vec![member("A", 1, Health::Healthy)]));
        assert_eq!(series("B"), 0, "{}", metrics.encode());
        assert!(series("A") > 0);
    }
}
