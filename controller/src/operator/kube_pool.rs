//! The in-cluster pool: a [`PoolControl`] whose source of truth is one
//! `ServerPool`. The proxy and the operations port use it exactly as they use the
//! local supervisor.
//!
//! - the reconciler publishes into it after every pass: the routing table (ready
//!   members only) and the view (`/rep`, `/ring`);
//! - `/add` and `/rm` are validated with [`crate::pool::membership`] against the
//!   resource, then written to its spec (`replicas`, `hostnames`) with optimistic
//!   concurrency; the reconciler makes the pods follow.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::crd::ServerPool;
use super::members::{self, NamingError};
use crate::metrics::Metrics;
use crate::pool::health::HealthState;
use crate::pool::supervisor::{MemberView, Replacement};
use crate::pool::{MembershipError, PoolControl, PoolError, PoolView, ReplicaName, membership};
use crate::ring::RingConfig;
use crate::routing::{RoutingTable, SharedRouting};
use crate::runtime::RuntimeError;

/// How often `/add` or `/rm` retries when the pool changed under it.
const CONFLICT_RETRIES: usize = 5;

/// One desired member as the reconciler last saw it.
#[derive(Clone, Debug)]
pub struct PublishedMember {
    pub name: ReplicaName,
    /// The pod's IP and the pool's port, once the pod has an IP.
    pub addr: Option<SocketAddr>,
    pub health: HealthState,
}

struct Published {
    ring: RingConfig,
    members: Vec<PublishedMember>,
}

pub struct KubePool {
    api: Api<ServerPool>,
    name: String,
    max_replicas: usize,
    metrics: Arc<Metrics>,
    routing: SharedRouting,
    view: ArcSwap<PoolView>,
    published: Mutex<Published>,
    /// Members the proxy could not reach since the last reconcile.
    suspects: Mutex<HashSet<ReplicaName>>,
}

impl KubePool {
    pub fn new(
        api: Api<ServerPool>,
        name: &str,
        max_replicas: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ring = RingConfig::default();
        Self {
            routing: Arc::new(ArcSwap::from_pointee(RoutingTable::build(
                &[],
                &ring,
                &metrics,
            ))),
            api,
            name: name.to_owned(),
            max_replicas,
            metrics,
            view: ArcSwap::from_pointee(PoolView::default()),
            published: Mutex::new(Published {
                ring,
                members: Vec::new(),
            }),
            suspects: Mutex::new(HashSet::new()),
        }
    }

    /// The `ServerPool` this proxy serves.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reconciler's report: desired members with their addresses and health.
    pub fn publish(
        &self,
        desired: Vec<ReplicaName>,
        members: Vec<PublishedMember>,
        replacements: Vec<Replacement>,
        ring: RingConfig,
    ) {
        let mut published = self.published.lock().unwrap();
        published.ring = ring;
        published.members = members;
        self.rebuild(&published);
        let in_ring: HashSet<ReplicaName> = self
            .routing
            .load()
            .backends
            .iter()
            .map(|b| b.name.clone())
            .collect();
        let mut views: Vec<MemberView> = published
            .members
            .iter()
            .filter_map(|m| {
                Some(MemberView {
                    name: m.name.clone(),
                    address: m.addr?,
                    pid: None,
                    health: m.health.health,
                    consecutive_failures: m.health.consecutive_failures,
                    in_ring: in_ring.contains(&m.name),
                })
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        self.view.store(Arc::new(PoolView {
            desired,
            members: views,
            replacements,
        }));
    }

    /// Takes the members reported unreachable since the last call.
    pub fn take_suspects(&self) -> HashSet<ReplicaName> {
        std::mem::take(&mut *self.suspects.lock().unwrap())
    }

    /// Publishes a new routing table if the routable set or the ring changed.
    fn rebuild(&self, published: &Published) {
        let suspects = self.suspects.lock().unwrap().clone();
        let mut routable: Vec<(ReplicaName, SocketAddr)> = published
            .members
            .iter()
            .filter(|m| m.health.routable() && !suspects.contains(&m.name))
            .filter_map(|m| Some((m.name.clone(), m.addr?)))
            .collect();
        routable.sort();
        let current = self.routing.load();
        if routable != current.membership() || *current.ring.config() != published.ring {
            let table = RoutingTable::build(&routable, &published.ring, &self.metrics);
            self.metrics.ring_rebuilds.inc();
            self.metrics.ring_members.set(routable.len() as i64);
            tracing::info!(
                pool = %self.name,
                members = ?routable.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                "ring rebuilt"
            );
            self.routing.store(Arc::new(table));
        }
    }

    /// Reads the pool, lets `change` compute the new base names from the desired
    /// ones, and writes them to the spec; retried when the pool changed meanwhile.
    async fn change(
        &self,
        operation: &str,
        change: impl Fn(&Current) -> Result<Vec<ReplicaName>, PoolError>,
    ) -> Result<Vec<ReplicaName>, PoolError> {
        for _ in 0..CONFLICT_RETRIES {
            let pool = self
                .api
                .get(&self.name)
                .await
                .map_err(|e| backend(&self.name, e))?;
            let current = Current::of(&pool).map_err(|e| PoolError::Backend(e.to_string()))?;
            let bases = change(&current)?;
            let (replicas, hostnames) = members::spec_for(&pool.spec.hostnames, &bases);
            let mut spec = pool.spec.clone();
            spec.replicas = replicas;
            spec.hostnames = hostnames.clone();
            let desired = members::desired_members(&spec, &current.replacements)
                .map_err(refusal)?
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>();
            let patch = json!({
                // A stale resourceVersion makes the API server refuse (409): re-read and retry.
                "metadata": { "resourceVersion": pool.metadata.resource_version },
                "spec": { "replicas": replicas, "hostnames": hostnames },
            });
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(pool = %self.name, replicas, ?hostnames, "admin: {operation}");
                    self.metrics.admin_change(operation);
                    self.view.rcu(|view| PoolView {
                        desired: desired.clone(),
                        ..PoolView::clone(view)
                    });
                    return Ok(desired);
                }
                Err(error) if crate::runtime::kube::is_status(&error, 409) => continue,
                Err(error) => return Err(backend(&self.name, error)),
            }
        }
        Err(PoolError::Backend(format!(
            "ServerPool {} kept changing: try again",
            self.name
        )))
    }
}

/// The pool as `/add` and `/rm` see it.
struct Current {
    bases: Vec<ReplicaName>,
    desired: Vec<ReplicaName>,
    replacements: std::collections::HashMap<String, ReplicaName>,
    /// Every name that may not be reused: bases, desired, members still listed,
    /// failed names.
    in_use: Vec<ReplicaName>,
}

impl Current {
    fn of(pool: &ServerPool) -> Result<Self, NamingError> {
        let status = pool.status.clone().unwrap_or_default();
        let replacements = members::replacement_map(&status.emergency_replacements);
        let bases = members::base_names(&pool.spec)?;
        let desired: Vec<ReplicaName> = members::desired_members(&pool.spec, &replacements)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let mut in_use: Vec<ReplicaName> = bases.iter().chain(&desired).cloned().collect();
        in_use.extend(
            status
                .members
                .iter()
                .map(|m| m.name.as_str())
                .chain(
                    status
                        .emergency_replacements
                        .iter()
                        .map(|r| r.failed.as_str()),
                )
                .filter_map(|n| ReplicaName::parse(n).ok()),
        );
        Ok(Self {
            bases,
            desired,
            replacements,
            in_use,
        })
    }

    /// The base name whose slot `name` fills today.
    fn base_of(&self, name: &ReplicaName) -> Option<&ReplicaName> {
        self.bases
            .iter()
            .find(|base| members::resolve(base, &self.replacements) == *name)
    }
}

fn backend(pool: &str, error: kube::Error) -> PoolError {
    if crate::runtime::kube::is_status(&error, 404) {
        PoolError::Backend(format!("ServerPool {pool} does not exist"))
    } else {
        PoolError::Backend(format!("Kubernetes API: {error}"))
    }
}

/// A name that is valid for ringlb but cannot be a pod: refused, nothing changes.
fn refusal(error: NamingError) -> PoolError {
    match error {
        NamingError::PodNameClash { second, .. } => {
            PoolError::Membership(MembershipError::NameInUse(second))
        }
        other => PoolError::Runtime(RuntimeError::Unsupported(other.to_string())),
    }
}

impl PoolControl for KubePool {
    fn add(
        &self,
        n: u64,
        hostnames: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>> {
        Box::pin(async move {
            let max = self.max_replicas;
            self.change("add", |current| {
                let ring = self.published.lock().unwrap().ring.clone();
                let max = ring.member_capacity().map_or(max, |c| c.min(max));
                let added = membership::names_to_add(
                    &current.desired,
                    &current.in_use,
                    n,
                    &hostnames,
                    max,
                )?;
                // Refuse names that cannot be pods before anything is written.
                let all: Vec<ReplicaName> = current.desired.iter().chain(&added).cloned().collect();
                members::pod_names(&all).map_err(refusal)?;
                Ok(current.bases.iter().chain(&added).cloned().collect())
            })
            .await
        })
    }

    fn remove(
        &self,
        n: u64,
        hostnames: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>> {
        Box::pin(async move {
            self.change("rm", |current| {
                let removed =
                    membership::names_to_remove(&current.desired, n, &hostnames, &mut rand::rng())?;
                let removed_bases: Vec<&ReplicaName> = removed
                    .iter()
                    .filter_map(|name| current.base_of(name))
                    .collect();
                Ok(current
                    .bases
                    .iter()
                    .filter(|base| !removed_bases.contains(base))
                    .cloned()
                    .collect())
            })
            .await
        })
    }

    fn view(&self) -> Arc<PoolView> {
        self.view.load_full()
    }

    fn routing(&self) -> &SharedRouting {
        &self.routing
    }

    fn report_unreachable(&self, name: &ReplicaName) {
        let inserted = self.suspects.lock().unwrap().insert(name.clone());
        if inserted {
            tracing::warn!(replica = %name, "replica unreachable, out of the ring until its heartbeat succeeds");
            // try_lock: never block a request on a reconcile that is publishing.
            if let Ok(published) = self.published.try_lock() {
                self.rebuild(&published);
            }
        }
    }
}
