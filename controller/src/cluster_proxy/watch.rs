//! The in-cluster proxy's pool: `watch → Publisher::publish`.
//!
//! Each `ringlb proxy` watches its `ServerPool` and that pool's pods through
//! kube-runtime reflectors (one LIST, then WATCH) and, after every event, publishes
//! [`pool_state`] of what the two caches hold. The state is a pure function of the
//! objects, and the ring a pure function of the state, so every proxy replica that
//! has seen the same events routes every key to the same replica.
//!
//! Which members serve: the operator heartbeats them and says so in
//! `status.members[].ready`; the kubelet's readiness probe (the pod's `Ready`
//! condition) can only take one out. A member the status does not name yet (no
//! operator has written it: none is running, or it is away) serves on pod
//! readiness alone. A member this proxy could not reach is out of *this* proxy's
//! ring until a heartbeat of its own answers (see [`Suspects`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::operator::crd::{ServerPool, ServerPoolSpec, ServerPoolStatus};
use crate::operator::pod_slots;
use crate::operator::pods::{POOL_LABEL, PodState, replica_pod};
use crate::operator::watch_config;
use crate::pool::admission;
use crate::pool::{HealthSettings, Probers};
use crate::publish::{
    BalanceFactor, MemberState, PoolState, Publisher, Replacement, UpstreamProtocol,
};
use crate::replica_health::{Health, HealthState};
use crate::replica_name::ReplicaName;
use crate::ring::RingConfig;

/// Members this proxy could not reach, by name, with the address that failed: a
/// new pod under the same name (another address) is not suspect.
pub type SuspectAddrs = HashMap<ReplicaName, SocketAddr>;

/// What a proxy keeps from one publish to the next (pure data: [`pool_state`]
/// reads and updates it).
///
/// - The last spec whose membership could be realised: while the spec cannot be
///   (names that clash as pod names, weights the ring cannot hold), the proxy
///   routes by that one, so that no spec edit empties a ring that had members; the
///   operator says why in `Degraded`. Likewise the last valid balance factor (the
///   last valid ring is the publisher's own).
/// - The slot of each member it last published as desired: a member that leaves
///   while its slot stays was replaced (it failed), one whose slot went was
///   removed on request. Only the first is cut loose (see `publish`).
#[derive(Clone, Debug, Default)]
pub struct Memory {
    realisable: Option<ServerPoolSpec>,
    balance_factor: Option<BalanceFactor>,
    slots: HashMap<ReplicaName, String>,
}

/// The members a spec asks for and their weights, if the ring in use can carry them out.
struct Membership {
    desired: Vec<(ReplicaName, String)>,
    weights: admission::Weights,
}

impl Membership {
    fn of(
        spec: &ServerPoolSpec,
        replacements: &HashMap<String, ReplicaName>,
        ring: &RingConfig,
    ) -> Result<Self, String> {
        let desired = pod_slots::desired_members(spec, replacements).map_err(|e| e.to_string())?;
        let weights = pod_slots::member_weights(spec, replacements);
        let names: Vec<ReplicaName> = desired.iter().map(|(n, _)| n.clone()).collect();
        admission::check_weights(&names, &weights, ring).map_err(|e| e.to_string())?;
        Ok(Self { desired, weights })
    }

    /// The members the operator last wrote in the status: for a proxy that has
    /// never seen a spec it could realise.
    fn of_status(status: &ServerPoolStatus) -> Self {
        Self {
            desired: status
                .members
                .iter()
                .filter_map(|m| Some((ReplicaName::parse(&m.name).ok()?, m.pod.clone())))
                .collect(),
            weights: admission::Weights::new(),
        }
    }
}

/// The pool as this proxy's caches show it. `ring` is used when the pool's
/// `spec.hashing` is invalid (the last good one; the operator reports the error);
/// `memory` is what earlier publishes left (see [`Memory`]).
pub fn pool_state(
    pool: Option<&ServerPool>,
    pods: &[Arc<Pod>],
    suspects: &SuspectAddrs,
    ring: &RingConfig,
    memory: &mut Memory,
) -> PoolState {
    let Some(pool) = pool else {
        // Deleted: a pool created again under its name starts afresh.
        *memory = Memory::default();
        return PoolState {
            desired: Vec::new(),
            members: Vec::new(),
            replacements: Vec::new(),
            ring: ring.clone(),
            balance_factor: None,
            protocol: UpstreamProtocol::default(),
        };
    };
    let spec = &pool.spec;
    let status = pool.status.clone().unwrap_or_default();
    let ring = spec.ring_config().unwrap_or_else(|_| ring.clone());
    // Refused by the schema; should one get past it, the operator reports it.
    if let Ok(factor) = spec.balance_factor() {
        memory.balance_factor = factor;
    }
    let replacements = pod_slots::replacement_map(&status.emergency_replacements);
    let Membership { desired, weights } = match Membership::of(spec, &replacements, &ring) {
        Ok(membership) => {
            memory.realisable = Some(spec.clone());
            membership
        }
        Err(error) => {
            tracing::debug!(%error, "the spec cannot be realised: routing by the last one that could");
            memory
                .realisable
                .as_ref()
                .and_then(|good| Membership::of(good, &replacements, &ring).ok())
                .unwrap_or_else(|| Membership::of_status(&status))
        }
    };
    let slot_of = |name: &ReplicaName| pod_slots::slot_of(name, &status.emergency_replacements);
    let slots_now: HashSet<String> = desired.iter().map(|(n, _)| slot_of(n)).collect();
    // Left the desired members while its slot stayed: another replica holds the
    // slot now because this one failed.
    let replaced = |name: &ReplicaName| {
        !desired.iter().any(|(n, _)| n == name)
            && memory
                .slots
                .get(name)
                .is_some_and(|slot| slots_now.contains(slot))
    };
    let said_ready = |name: &ReplicaName, pod: &str| {
        status
            .members
            .iter()
            .find(|m| m.name == name.as_str() && m.pod == pod)
            .map(|m| m.ready)
    };

    let mut members: Vec<MemberState> = Vec::new();
    let mut listed: HashSet<ReplicaName> = HashSet::new();
    // Desired members first, each on the pod the operator's status names (during a
    // rollout it moves a member from its old pod to its new one, after the new one
    // answers) or else the one with the expected name; then any other pod of the
    // pool that names a replica (one being removed or replaced). A pod being
    // deleted is not listed: a desired member left without a pod is cut loose by
    // the publisher as it leaves the ring (it will not answer what it was sent).
    let expected: HashMap<&str, &ReplicaName> = desired
        .iter()
        .map(|(n, pod)| {
            let named = status.members.iter().find(|m| m.name == n.as_str());
            (named.map_or(pod.as_str(), |m| m.pod.as_str()), n)
        })
        .collect();
    let mut ordered: Vec<&Arc<Pod>> = pods.iter().collect();
    ordered.sort_by_key(|p| {
        let name = p.metadata.name.as_deref().unwrap_or_default();
        (!expected.contains_key(name), name.to_owned())
    });
    for pod in ordered {
        let replica = replica_pod(pod);
        let Some(name) = replica.name.clone() else {
            continue;
        };
        if replica.state == PodState::Terminating || !listed.insert(name.clone()) {
            continue;
        }
        let addr = replica
            .ip
            .filter(|_| replica.state == PodState::Running)
            // Its own container port: a pod made before a port change listens there.
            .map(|ip| SocketAddr::new(ip, replica.port.unwrap_or(spec.port)));
        let kubelet_ready = replica.kubelet_ready;
        let serving = addr.is_some()
            && match said_ready(&name, &replica.pod) {
                // The kubelet may not have probed it yet (`None`): the operator's word stands.
                Some(ready) => ready && kubelet_ready != Some(false),
                None => kubelet_ready == Some(true),
            };
        let suspect = addr.is_some() && suspects.get(&name) == addr.as_ref();
        // A replica whose container exited will not answer what it was sent; nor
        // will one that was replaced. Listed as failed, they are cut loose as they
        // leave the ring instead of holding requests until their pod is killed.
        let failed = replica.state == PodState::Exited || replaced(&name);
        let health = match (failed, serving, suspect) {
            (true, _, _) => Health::Failed,
            (_, true, true) => Health::Suspect,
            (_, true, false) => Health::Healthy,
            _ => Health::Starting,
        };
        members.push(MemberState {
            weight: weights.get(&name).copied().unwrap_or(1),
            name,
            addr,
            pid: None,
            container: None,
            health: HealthState {
                health,
                ..HealthState::starting()
            },
        });
    }
    memory.slots = desired
        .iter()
        .map(|(n, _)| (n.clone(), slot_of(n)))
        .collect();

    PoolState {
        desired: desired.into_iter().map(|(name, _)| name).collect(),
        members,
        replacements: status
            .emergency_replacements
            .iter()
            .filter_map(|r| {
                Some(Replacement {
                    failed: ReplicaName::parse(&r.original).ok()?,
                    replacement: ReplicaName::parse(&r.replacement).ok()?,
                })
            })
            .collect(),
        ring,
        balance_factor: memory.balance_factor,
        protocol: spec.protocol.unwrap_or_default(),
    }
}

/// The members this proxy took out of its own ring because a request could not
/// reach them, each with a heartbeat of its own that brings it back.
pub struct Suspects {
    /// A suspect's heartbeats ask what the pool's `spec.heartbeat.check` says.
    probers: Probers,
    addrs: SuspectAddrs,
    probes: HashMap<ReplicaName, AbortHandle>,
    /// Each probe ends when its member answers: (name, address).
    answered: JoinSet<(ReplicaName, SocketAddr)>,
}

impl Suspects {
    pub fn new(probers: Probers) -> Self {
        Self {
            probers,
            addrs: SuspectAddrs::new(),
            probes: HashMap::new(),
            answered: JoinSet::new(),
        }
    }

    pub fn addrs(&self) -> &SuspectAddrs {
        &self.addrs
    }

    /// `name` at `addr` could not be reached: suspect until it answers a heartbeat.
    /// Returns false if it already was.
    pub fn insert(&mut self, name: ReplicaName, addr: SocketAddr, health: &HealthSettings) -> bool {
        if self.addrs.get(&name) == Some(&addr) {
            return false;
        }
        tracing::warn!(replica = %name, %addr, "replica unreachable, out of this proxy's ring until its heartbeat succeeds");
        let prober = self.probers.of(health.check);
        let (interval, timeout) = (health.interval, health.timeout);
        let probe = self.answered.spawn({
            let name = name.clone();
            async move {
                loop {
                    tokio::time::sleep(interval).await;
                    if prober.check(addr, timeout).await {
                        return (name, addr);
                    }
                }
            }
        });
        if let Some(previous) = self.probes.insert(name.clone(), probe) {
            previous.abort();
        }
        self.addrs.insert(name, addr);
        true
    }

    /// Resolves when a suspect answered; it is no longer suspect then.
    /// Pending forever while there is none.
    pub async fn next_answer(&mut self) -> ReplicaName {
        loop {
            match self.answered.join_next().await {
                Some(Ok((name, addr))) => {
                    if self.addrs.get(&name) == Some(&addr) {
                        self.addrs.remove(&name);
                        self.probes.remove(&name);
                        tracing::info!(replica = %name, "replica answers again, back in this proxy's ring");
                        return name;
                    }
                }
                Some(Err(_aborted)) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Forgets suspects whose member is gone or has another address now.
    pub fn retain_current(&mut self, state: &PoolState) {
        let current: HashMap<&ReplicaName, Option<SocketAddr>> =
            state.members.iter().map(|m| (&m.name, m.addr)).collect();
        let stale: Vec<ReplicaName> = self
            .addrs
            .iter()
            .filter(|(name, addr)| current.get(name).copied().flatten() != Some(**addr))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.addrs.remove(&name);
            if let Some(probe) = self.probes.remove(&name) {
                probe.abort();
            }
        }
    }
}

/// Keeps `publisher` in step with pool `pool` of `namespace` until `stop`.
/// `reports` are the members the proxy could not reach.
pub async fn run(
    client: Client,
    namespace: &str,
    pool: &str,
    publisher: Arc<Publisher>,
    reports: mpsc::Receiver<ReplicaName>,
    stop: impl Future<Output = ()>,
) {
    let synced = Arc::new(AtomicBool::new(false));
    run_reporting_sync(client, namespace, pool, publisher, reports, &synced, stop).await;
}

/// [`run`], setting `synced` once the initial list of the pool and of its pods
/// are both in the caches: from then on what is published is the pool as it is,
/// and the proxy is ready (an empty ring then answers 503, not connection errors).
pub async fn run_reporting_sync(
    client: Client,
    namespace: &str,
    pool: &str,
    publisher: Arc<Publisher>,
    mut reports: mpsc::Receiver<ReplicaName>,
    synced: &AtomicBool,
    stop: impl Future<Output = ()>,
) {
    let pools: Api<ServerPool> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let (pool_cache, pool_writer) = reflector::store();
    let (pod_cache, pod_writer) = reflector::store();
    // Each item says whether it ended an initial list, and of which cache.
    let pool_events = watcher(
        pools,
        watch_config().fields(&format!("metadata.name={pool}")),
    )
    .default_backoff()
    .reflect(pool_writer)
    .map(|event| event.map(|e| matches!(e, watcher::Event::InitDone).then_some(Cache::Pool)));
    let pod_events = watcher(pods, watch_config().labels(&format!("{POOL_LABEL}={pool}")))
        .default_backoff()
        .reflect(pod_writer)
        .map(|event| event.map(|e| matches!(e, watcher::Event::InitDone).then_some(Cache::Pods)));
    let mut events = std::pin::pin!(futures::stream::select(pool_events, pod_events));
    let mut suspects = Suspects::new(Probers::real());
    let mut memory = Memory::default();
    let mut listed: HashSet<Cache> = HashSet::new();
    let mut stop = std::pin::pin!(stop);

    loop {
        tokio::select! {
            () = &mut stop => return,
            event = events.next() => match event {
                Some(Ok(listed_one)) => {
                    if let Some(cache) = listed_one
                        && listed.insert(cache)
                        && listed.len() == 2
                    {
                        tracing::info!("the pool and its pods are listed: ready");
                        synced.store(true, Ordering::SeqCst);
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "watch failed; retrying");
                    continue;
                }
                None => return,
            },
            Some(name) = reports.recv() => {
                let state = current(&pool_cache, &pod_cache, &suspects, &publisher, &mut memory.clone());
                let addr = state.members.iter().find(|m| m.name == name).and_then(|m| m.addr);
                let health = pool_cache
                    .state()
                    .first()
                    .map(|p| p.spec.health_settings())
                    .unwrap_or_default();
                let Some(addr) = addr else { continue };
                if !suspects.insert(name, addr, &health) {
                    continue;
                }
            }
            _ = suspects.next_answer() => {}
        }
        let state = current(&pool_cache, &pod_cache, &suspects, &publisher, &mut memory);
        suspects.retain_current(&state);
        publisher.publish(&state);
    }
}

/// The two caches a proxy lists before it is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cache {
    Pool,
    Pods,
}

fn current(
    pools: &Store<ServerPool>,
    pods: &Store<Pod>,
    suspects: &Suspects,
    publisher: &Publisher,
    memory: &mut Memory,
) -> PoolState {
    // The pool cache holds at most the one pool this proxy serves.
    let pool = pools.state().into_iter().next();
    pool_state(
        pool.as_deref(),
        &pods.state(),
        suspects.addrs(),
        publisher.table().ring.config(),
        memory,
    )
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
