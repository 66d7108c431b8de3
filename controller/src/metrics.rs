//! Prometheus metrics: requests and latency per replica, heartbeat failures,
//! replacements, ring rebuilds, admin changes.
//!
//! Every per-replica series carries the labels `pool` and `replica`, and is removed
//! when its replica leaves the pool (the publisher calls [`Metrics::forget_replica`]),
//! so that a pool that replaces replicas for months does not grow its `/metrics`
//! without bound. The pool is the `ServerPool`'s name in Kubernetes; under
//! `ringlb up` it is [`LOCAL_POOL`], or the Docker network with `--runtime docker`
//! (the network names the pool there).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::replica_name::ReplicaName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    pool: String,
    replica: String,
}

/// The `pool` label of `ringlb up` with local processes or `--replica` servers.
pub const LOCAL_POOL: &str = "local";

/// The labels of the operator's per-pool series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    namespace: String,
    pool: String,
}

impl PoolLabel {
    fn of(namespace: &str, pool: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            pool: pool.to_owned(),
        }
    }
}

/// The operator's series of each `ServerPool` it reconciles, as controller-rs exports
/// them: what the pool's status says, and how its passes go. Removed with the pool.
struct PoolSeries {
    desired: Family<PoolLabel, Gauge>,
    ready: Family<PoolLabel, Gauge>,
    updated: Family<PoolLabel, Gauge>,
    reconciles: Family<PoolLabel, Counter>,
    reconcile_errors: Family<PoolLabel, Counter>,
    reconcile_duration: Family<PoolLabel, Histogram, fn() -> Histogram>,
    replacements: Family<PoolLabel, Counter>,
    backoffs: Family<PoolLabel, Gauge>,
}

fn new_reconcile_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLabel {
    operation: String,
}

fn new_latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

pub struct Metrics {
    /// The pool this process serves: the `pool` label of its per-replica series.
    pool: String,
    registry: Registry,
    responses: Family<ReplicaLabel, Counter>,
    forward_failures: Family<ReplicaLabel, Counter>,
    latency: Family<ReplicaLabel, Histogram, fn() -> Histogram>,
    heartbeat_failures: Family<ReplicaLabel, Counter>,
    pub replacements: Counter,
    pub ring_rebuilds: Counter,
    pub ring_members: Gauge,
    pub unroutable: Counter,
    read_timeouts: Family<ReplicaLabel, Counter>,
    pub refused_connections: Counter,
    /// 1 while this process holds the operator's leader lease.
    pub leader: Gauge,
    pub leader_transitions: Counter,
    admin_changes: Family<AdminLabel, Counter>,
    pools: PoolSeries,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a process that serves pool [`LOCAL_POOL`] (or none: the operator).
    pub fn new() -> Self {
        Self::for_pool(LOCAL_POOL)
    }

    /// The metrics of a process that serves pool `pool`.
    pub fn for_pool(pool: &str) -> Self {
        let mut registry = Registry::with_prefix("ringlb");
        let responses = Family::<ReplicaLabel, Counter>::default();
        let forward_failures = Family::<ReplicaLabel, Counter>::default();
        let latency = Family::<ReplicaLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            new_latency_histogram,
        );
        let heartbeat_failures = Family::<ReplicaLabel, Counter>::default();
        let replacements = Counter::default();
        let ring_rebuilds = Counter::default();
        let ring_members = Gauge::default();
        let unroutable = Counter::default();
        let admin_changes = Family::<AdminLabel, Counter>::default();
        let read_timeouts = Family::<ReplicaLabel, Counter>::default();
        let refused_connections = Counter::default();
        let leader = Gauge::default();
        let leader_transitions = Counter::default();
        let pools = PoolSeries {
            desired: Family::default(),
            ready: Family::default(),
            updated: Family::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(new_reconcile_histogram),
            replacements: Family::default(),
            backoffs: Family::default(),
        };
        registry.register(
            "pool_desired_replicas",
            "Replicas each ServerPool asks for (the operator)",
            pools.desired.clone(),
        );
        registry.register(
            "pool_ready_replicas",
            "Replicas of each ServerPool in the ring, as its status says (the operator)",
            pools.ready.clone(),
        );
        registry.register(
            "pool_updated_replicas",
            "Replicas of each ServerPool served by a pod of its current template (the operator)",
            pools.updated.clone(),
        );
        registry.register(
            "reconciles",
            "Reconcile passes of each ServerPool (the leading operator)",
            pools.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile passes of each ServerPool that failed, to be retried",
            pools.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long each reconcile pass of a ServerPool took",
            pools.reconcile_duration.clone(),
        );
        registry.register(
            "pool_replacements",
            "Replicas of each ServerPool replaced by an emergency replica (the operator)",
            pools.replacements.clone(),
        );
        registry.register(
            "pool_backoff_replicas",
            "Failed replicas of each ServerPool whose replacement waits out a crash-loop backoff",
            pools.backoffs.clone(),
        );
        registry.register(
            "responses",
            "Responses forwarded from each replica",
            responses.clone(),
        );
        registry.register(
            "forward_failures",
            "Forwarding attempts to each replica that failed (connection or timeout)",
            forward_failures.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from forwarding a request to a replica until its response headers",
            latency.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Failed heartbeats per replica",
            heartbeat_failures.clone(),
        );
        registry.register(
            "replacements",
            "Failed replicas replaced by emergency replicas",
            replacements.clone(),
        );
        registry.register(
            "ring_rebuilds",
            "Routing rings built and published",
            ring_rebuilds.clone(),
        );
        registry.register(
            "ring_members",
            "Replicas in the current routing ring",
            ring_members.clone(),
        );
        registry.register(
            "unroutable_requests",
            "Requests answered with an error because no replica could serve them",
            unroutable.clone(),
        );
        registry.register(
            "upstream_read_timeouts",
            "Responses cut off because the replica sent nothing more within --read-timeout",
            read_timeouts.clone(),
        );
        registry.register(
            "refused_connections",
            "Client connections answered 503 and closed because --max-connections were open",
            refused_connections.clone(),
        );
        registry.register(
            "leader",
            "1 while this operator holds the leader lease and reconciles, else 0",
            leader.clone(),
        );
        registry.register(
            "leader_transitions",
            "Times this operator became leader or stopped being one",
            leader_transitions.clone(),
        );
        registry.register(
            "admin_changes",
            "Accepted /add and /rm calls",
            admin_changes.clone(),
        );
        Self {
            pool: pool.to_owned(),
            registry,
            responses,
            forward_failures,
            latency,
            heartbeat_failures,
            replacements,
            ring_rebuilds,
            ring_members,
            unroutable,
            read_timeouts,
            refused_connections,
            leader,
            leader_transitions,
            admin_changes,
            pools,
        }
    }

    /// What the status of pool `pool` of `namespace` says now.
    pub fn pool_status(&self, namespace: &str, pool: &str, desired: u32, ready: u32, updated: u32) {
        let label = PoolLabel::of(namespace, pool);
        self.pools
            .desired
            .get_or_create(&label)
            .set(i64::from(desired));
        self.pools.ready.get_or_create(&label).set(i64::from(ready));
        self.pools
            .updated
            .get_or_create(&label)
            .set(i64::from(updated));
    }

    /// A reconcile pass of pool `pool` of `namespace` took `took`, and failed or not.
    pub fn reconciled(&self, namespace: &str, pool: &str, took: std::time::Duration, ok: bool) {
        let label = PoolLabel::of(namespace, pool);
        self.pools.reconciles.get_or_create(&label).inc();
        if !ok {
            self.pools.reconcile_errors.get_or_create(&label).inc();
        }
        self.pools
            .reconcile_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// The operator replaced a replica of pool `pool` of `namespace`.
    pub fn pool_replaced(&self, namespace: &str, pool: &str) {
        self.replacements.inc();
        let label = PoolLabel::of(namespace, pool);
        self.pools.replacements.get_or_create(&label).inc();
    }

    /// How many failed replicas of pool `pool` of `namespace` wait out a backoff now.
    pub fn pool_backoffs(&self, namespace: &str, pool: &str, waiting: usize) {
        let label = PoolLabel::of(namespace, pool);
        let waiting = i64::try_from(waiting).unwrap_or(i64::MAX);
        self.pools.backoffs.get_or_create(&label).set(waiting);
    }

    /// Removes every series of pool `pool` of `namespace`: it is gone.
    pub fn forget_pool(&self, namespace: &str, pool: &str) {
        let label = PoolLabel::of(namespace, pool);
        self.pools.desired.remove(&label);
        self.pools.ready.remove(&label);
        self.pools.updated.remove(&label);
        self.pools.reconciles.remove(&label);
        self.pools.reconcile_errors.remove(&label);
        self.pools.reconcile_duration.remove(&label);
        self.pools.replacements.remove(&label);
        self.pools.backoffs.remove(&label);
    }

    /// The pool this process serves.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    fn label(&self, name: &ReplicaName) -> ReplicaLabel {
        Self::label_in(&self.pool, name)
    }

    fn label_in(pool: &str, name: &ReplicaName) -> ReplicaLabel {
        ReplicaLabel {
            pool: pool.to_owned(),
            replica: name.to_string(),
        }
    }

    pub fn responses(&self, name: &ReplicaName) -> Counter {
        self.responses.get_or_create(&self.label(name)).clone()
    }

    pub fn forward_failures(&self, name: &ReplicaName) -> Counter {
        self.forward_failures
            .get_or_create(&self.label(name))
            .clone()
    }

    pub fn latency(&self, name: &ReplicaName) -> Histogram {
        self.latency.get_or_create(&self.label(name)).clone()
    }

    /// A heartbeat of replica `name` of pool `pool` failed (the operator
    /// heartbeats the replicas of every pool of its namespace).
    pub fn heartbeat_failed(&self, pool: &str, name: &ReplicaName) {
        self.heartbeat_failures
            .get_or_create(&Self::label_in(pool, name))
            .inc();
    }

    pub fn read_timeout(&self, name: &ReplicaName) {
        self.read_timeouts.get_or_create(&self.label(name)).inc();
    }

    /// Removes every series of replica `name` of `pool`: it left the pool.
    pub fn forget_replica(&self, pool: &str, name: &ReplicaName) {
        let label = Self::label_in(pool, name);
        self.responses.remove(&label);
        self.forward_failures.remove(&label);
        self.latency.remove(&label);
        self.heartbeat_failures.remove(&label);
        self.read_timeouts.remove(&label);
    }

    pub fn admin_change(&self, operation: &str) {
        self.admin_changes
            .get_or_create(&AdminLabel {
                operation: operation.to_owned(),
            })
            .inc();
    }

    /// The text exposition format for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
