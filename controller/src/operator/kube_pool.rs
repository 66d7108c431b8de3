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
use crate::pool::{MembershipError, PoolControl, PoolError, PoolView, membership};
use crate::replica_name::ReplicaName;
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
            let failed = |name: &ReplicaName| {
                suspects.contains(name)
                    || published
                        .members
                        .iter()
                        .any(|m| &m.name == name && !m.health.routable())
            };
            let table = current.next(&routable, &published.ring, &self.metrics, failed);
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
                // No hostnames: the field goes (null), the names are all generated.
                "spec": {
                    "replicas": replicas,
                    "hostnames": (!hostnames.is_empty()).then_some(&hostnames),
                },
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
                Err(error) if super::pods::is_status(&error, 409) => continue,
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
    if super::pods::is_status(&error, 404) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use http::{Request, Response};
    use kube::Client;
    use kube::client::Body;
    use serde_json::Value;

    use super::*;
    use crate::operator::crd::{ReplacementStatus, ServerPoolSpec, ServerPoolStatus};

    const POOL: &str = "/apis/ringlb.dev/v1alpha1/namespaces/default/serverpools/demo";

    /// A mocked API server holding one pool; records the merge patches it gets.
    /// `conflicts` patches are refused with 409 first.
    /// The calls the mock received: (method, body).
    type Calls = Arc<StdMutex<Vec<(String, Value)>>>;

    fn mock(pool: ServerPool, conflicts: usize) -> (KubePool, Calls) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let calls = Arc::new(StdMutex::new(Vec::new()));
        let recorded = calls.clone();
        tokio::spawn(async move {
            let mut conflicts = conflicts;
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                assert_eq!(path, POOL, "{method} {path}");
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                recorded.lock().unwrap().push((method.clone(), body));
                let (code, answer) = if method == "PATCH" && conflicts > 0 {
                    conflicts -= 1;
                    (
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "Conflict", "code": 409, "message": "changed"}),
                    )
                } else {
                    (200, serde_json::to_value(&pool).unwrap())
                };
                respond.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = Client::new(service, "default");
        let kube_pool = KubePool::new(
            Api::namespaced(client, "default"),
            "demo",
            10,
            Arc::new(Metrics::new()),
        );
        (kube_pool, calls)
    }

    fn pool(replicas: u32, hostnames: &[&str], replaced: &[(&str, &str)]) -> ServerPool {
        let mut pool = ServerPool::new(
            "demo",
            ServerPoolSpec {
                replicas,
                hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
                image: "ringlb-replica:dev".into(),
                port: 5000,
                hashing: None,
                heartbeat: None,
            },
        );
        pool.metadata.namespace = Some("default".into());
        pool.metadata.resource_version = Some("42".into());
        pool.status = Some(ServerPoolStatus {
            emergency_replacements: replaced
                .iter()
                .map(|(f, r)| ReplacementStatus {
                    failed: f.to_string(),
                    replacement: r.to_string(),
                })
                .collect(),
            ..ServerPoolStatus::default()
        });
        pool
    }

    fn names(list: &[ReplicaName]) -> Vec<&str> {
        list.iter().map(ReplicaName::as_str).collect()
    }

    fn patches(calls: &StdMutex<Vec<(String, Value)>>) -> Vec<Value> {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == "PATCH")
            .map(|(_, b)| b.clone())
            .collect()
    }

    #[tokio::test]
    async fn add_patches_replicas_and_keeps_the_hostnames_when_they_suffice() {
        let (kube_pool, calls) = mock(pool(3, &[], &[]), 0);
        let desired = kube_pool.add(2, vec![]).await.unwrap();
        assert_eq!(
            names(&desired),
            ["Server1", "Server2", "Server3", "Server4", "Server5"]
        );
        assert_eq!(
            patches(&calls),
            [json!({"metadata": {"resourceVersion": "42"},
                    "spec": {"replicas": 5, "hostnames": null}})]
        );
        // /rep answers the new desired list at once.
        assert_eq!(names(&kube_pool.view().desired).len(), 5);
    }

    #[tokio::test]
    async fn add_with_names_and_rm_of_a_replacement_spell_the_names_out() {
        let (kube_pool, calls) = mock(pool(3, &[], &[("Server2", "emergency_1")]), 0);
        let desired = kube_pool.add(1, vec!["web".into()]).await.unwrap();
        assert_eq!(
            names(&desired),
            ["Server1", "emergency_1", "Server3", "web"]
        );
        assert_eq!(
            patches(&calls)[0]["spec"],
            json!({"replicas": 4, "hostnames": ["Server1", "Server2", "Server3", "web"]})
        );

        let (kube_pool, calls) = mock(pool(3, &[], &[("Server2", "emergency_1")]), 0);
        let desired = kube_pool
            .remove(1, vec!["emergency_1".into()])
            .await
            .unwrap();
        assert_eq!(names(&desired), ["Server1", "Server3"]);
        assert_eq!(
            patches(&calls)[0]["spec"],
            json!({"replicas": 2, "hostnames": ["Server1", "Server3"]})
        );
    }

    #[tokio::test]
    async fn refused_changes_write_nothing() {
        let (kube_pool, calls) = mock(pool(2, &[], &[("Server2", "emergency_1")]), 0);
        for (result, expected) in [
            (
                kube_pool.add(1, vec!["Server1".into()]).await,
                "hostname 'Server1' is already in use",
            ),
            (
                // The failed name stays taken while its replacement lives.
                kube_pool.add(1, vec!["Server2".into()]).await,
                "hostname 'Server2' is already in use",
            ),
            (
                kube_pool.add(1, vec!["server_".into()]).await,
                "cannot name a pod",
            ),
            (
                kube_pool.add(2, vec!["Web_1".into(), "web-1".into()]).await,
                "hostname 'web-1' is already in use",
            ),
            (
                kube_pool.remove(1, vec!["Server2".into()]).await,
                "hostname 'Server2' is not a replica",
            ),
            (
                kube_pool.remove(3, vec![]).await,
                "cannot remove 3 replicas: there are only 2",
            ),
        ] {
            let error = result.unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(patches(&calls).is_empty());
    }

    #[tokio::test]
    async fn a_conflicting_write_is_retried_on_a_fresh_read() {
        let (kube_pool, calls) = mock(pool(1, &[], &[]), 2);
        let desired = kube_pool.add(1, vec![]).await.unwrap();
        assert_eq!(names(&desired), ["Server1", "Server2"]);
        let methods: Vec<String> = calls
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _)| m.clone())
            .collect();
        assert_eq!(methods, ["GET", "PATCH", "GET", "PATCH", "GET", "PATCH"]);
    }

    #[test]
    fn the_ring_holds_only_ready_members_and_suspects_leave_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (kube_pool, _) = mock(pool(3, &[], &[]), 0);
        let healthy = |ok| {
            let mut state = HealthState::starting();
            state.record_heartbeat(ok, 3);
            state
        };
        let member = |name: &str, ip: Option<&str>, ok| PublishedMember {
            name: ReplicaName::parse(name).unwrap(),
            addr: ip.map(|ip| SocketAddr::new(ip.parse().unwrap(), 5000)),
            health: healthy(ok),
        };
        let desired: Vec<ReplicaName> = ["Server1", "Server2", "Server3"]
            .iter()
            .map(|n| ReplicaName::parse(n).unwrap())
            .collect();
        kube_pool.publish(
            desired.clone(),
            vec![
                member("Server1", Some("10.0.0.1"), true),
                member("Server2", Some("10.0.0.2"), false),
                member("Server3", None, false),
            ],
            Vec::new(),
            RingConfig::default(),
        );
        let in_ring = |p: &KubePool| -> Vec<String> {
            p.routing()
                .load()
                .backends
                .iter()
                .map(|b| b.name.to_string())
                .collect()
        };
        assert_eq!(in_ring(&kube_pool), ["Server1"]);
        assert_eq!(
            names(&kube_pool.view().desired),
            ["Server1", "Server2", "Server3"]
        );
        kube_pool.report_unreachable(&desired[0]);
        assert!(in_ring(&kube_pool).is_empty());
        assert_eq!(kube_pool.take_suspects().len(), 1);
    }
}
