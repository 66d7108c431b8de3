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

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::crd::ServerPool;
use super::members;
use super::pods::{POOL_LABEL, PodState, replica_pod};
use crate::health_state::{Health, HealthState};
use crate::pool::health::{HealthSettings, HeartbeatProber, Prober};
use crate::publish::{MemberState, PoolState, Publisher, Replacement};
use crate::replica_name::ReplicaName;
use crate::ring::RingConfig;

/// Members this proxy could not reach, by name, with the address that failed: a
/// new pod under the same name (another address) is not suspect.
pub type SuspectAddrs = HashMap<ReplicaName, SocketAddr>;

/// The pool as this proxy's caches show it. `ring` is used when the pool's
/// `spec.hashing` is invalid (the last good one; the operator reports the error).
pub fn pool_state(
    pool: Option<&ServerPool>,
    pods: &[Arc<Pod>],
    suspects: &SuspectAddrs,
    ring: &RingConfig,
) -> PoolState {
    let Some(pool) = pool else {
        return PoolState {
            desired: Vec::new(),
            members: Vec::new(),
            replacements: Vec::new(),
            ring: ring.clone(),
            balance_factor: None,
        };
    };
    let spec = &pool.spec;
    let status = pool.status.clone().unwrap_or_default();
    let desired = members::desired_members(
        spec,
        &members::replacement_map(&status.emergency_replacements),
    )
    .unwrap_or_default();
    let weights = members::member_weights(
        spec,
        &members::replacement_map(&status.emergency_replacements),
    );
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
    // pool that names a replica (one being removed or replaced).
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
        let health = match (replica.state, serving, suspect) {
            (PodState::Exited, _, _) => Health::Failed,
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
        ring: spec.ring_config().unwrap_or_else(|_| ring.clone()),
        // Refused by the schema; should one get past it, the operator reports it and
        // requests are routed without a bound.
        balance_factor: spec.balance_factor().unwrap_or_default(),
    }
}

/// The members this proxy took out of its own ring because a request could not
/// reach them, each with a heartbeat of its own that brings it back.
pub struct Suspects {
    prober: Arc<dyn Prober>,
    addrs: SuspectAddrs,
    probes: HashMap<ReplicaName, AbortHandle>,
    /// Each probe ends when its member answers: (name, address).
    answered: JoinSet<(ReplicaName, SocketAddr)>,
}

impl Suspects {
    pub fn new(prober: Arc<dyn Prober>) -> Self {
        Self {
            prober,
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
        let prober = self.prober.clone();
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
    mut reports: mpsc::Receiver<ReplicaName>,
    stop: impl Future<Output = ()>,
) {
    let pools: Api<ServerPool> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let (pool_cache, pool_writer) = reflector::store();
    let (pod_cache, pod_writer) = reflector::store();
    let pool_events = watcher(
        pools,
        watcher::Config::default().fields(&format!("metadata.name={pool}")),
    )
    .default_backoff()
    .reflect(pool_writer)
    .map(|event| event.map(drop));
    let pod_events = watcher(
        pods,
        watcher::Config::default().labels(&format!("{POOL_LABEL}={pool}")),
    )
    .default_backoff()
    .reflect(pod_writer)
    .map(|event| event.map(drop));
    let mut events = std::pin::pin!(futures::stream::select(pool_events, pod_events));
    let mut suspects = Suspects::new(Arc::new(HeartbeatProber::default()));
    let mut stop = std::pin::pin!(stop);

    loop {
        tokio::select! {
            () = &mut stop => return,
            event = events.next() => match event {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "watch failed; retrying");
                    continue;
                }
                None => return,
            },
            Some(name) = reports.recv() => {
                let state = current(&pool_cache, &pod_cache, &suspects, &publisher);
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
        let state = current(&pool_cache, &pod_cache, &suspects, &publisher);
        suspects.retain_current(&state);
        publisher.publish(&state);
    }
}

fn current(
    pools: &Store<ServerPool>,
    pods: &Store<Pod>,
    suspects: &Suspects,
    publisher: &Publisher,
) -> PoolState {
    // The pool cache holds at most the one pool this proxy serves.
    let pool = pools.state().into_iter().next();
    pool_state(
        pool.as_deref(),
        &pods.state(),
        suspects.addrs(),
        publisher.table().ring.config(),
    )
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
