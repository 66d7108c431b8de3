//! `/add` and `/rm` in a cluster: the write side of a pool whose source of truth is
//! one `ServerPool`. A change is validated with [`crate::pool::admission`] against
//! the resource, then written to its spec (`replicas`, `hostnames`) with a
//! resourceVersion precondition, from any proxy replica; the operator makes the
//! pods follow, and every proxy's watch sees the new spec.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::operator::crd::ServerPool;
use crate::operator::pod_slots::{self, NamingError};
use crate::operator::pods::is_status;
use crate::pool::{MembershipError, PoolAdmin, PoolError, admission};
use crate::publish::Publisher;
use crate::replica_name::ReplicaName;
use crate::runtime::RuntimeError;

/// How often `/add` or `/rm` retries when the pool changed under it.
const CONFLICT_RETRIES: usize = 5;

pub struct SpecAdmin {
    api: Api<ServerPool>,
    name: String,
    max_replicas: usize,
    metrics: Arc<Metrics>,
    /// Shows an accepted change in `/rep` before the watch brings it.
    publisher: Arc<Publisher>,
    /// Replicas the proxy could not reach, for the pool's watch to probe (`Suspects`).
    suspects: mpsc::Sender<ReplicaName>,
}

impl SpecAdmin {
    pub fn new(
        api: Api<ServerPool>,
        name: &str,
        max_replicas: usize,
        metrics: Arc<Metrics>,
        publisher: Arc<Publisher>,
        suspects: mpsc::Sender<ReplicaName>,
    ) -> Self {
        Self {
            api,
            name: name.to_owned(),
            max_replicas,
            metrics,
            publisher,
            suspects,
        }
    }

    /// Reads the pool, lets `change` compute the new base names (and weights) from the
    /// desired ones, and writes them to the spec; retried when the pool changed meanwhile.
    async fn change(
        &self,
        operation: &str,
        change: impl Fn(&StoredMembership) -> Result<NewBases, PoolError>,
    ) -> Result<Vec<ReplicaName>, PoolError> {
        for _ in 0..CONFLICT_RETRIES {
            let pool = self
                .api
                .get(&self.name)
                .await
                .map_err(|e| backend(&self.name, e))?;
            let stored =
                StoredMembership::of(&pool).map_err(|e| PoolError::Backend(e.to_string()))?;
            let (bases, weights) = change(&stored)?;
            // A merge patch merges maps: a weight that goes is written as null.
            let mut weights_patch: BTreeMap<&str, Option<u32>> = pool
                .spec
                .weights
                .keys()
                .map(|k| (k.as_str(), None))
                .collect();
            weights_patch.extend(weights.iter().map(|(k, w)| (k.as_str(), Some(*w))));
            let (replicas, hostnames) = pod_slots::spec_for(&pool.spec.hostnames, &bases);
            let mut spec = pool.spec.clone();
            spec.replicas = replicas;
            spec.hostnames = hostnames.clone();
            let desired = pod_slots::desired_members(&spec, &stored.replacements)
                .map_err(refusal)?
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>();
            let mut patch = json!({
                // A stale resourceVersion makes the API server refuse (409): re-read and retry.
                "metadata": { "resourceVersion": pool.metadata.resource_version },
                // No hostnames: the field goes (null), the names are all generated.
                "spec": {
                    "replicas": replicas,
                    "hostnames": (!hostnames.is_empty()).then_some(&hostnames),
                },
            });
            if !weights_patch.is_empty() {
                patch["spec"]["weights"] = json!(weights_patch);
            }
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(pool = %self.name, replicas, ?hostnames, "admin: {operation}");
                    self.metrics.admin_change(operation);
                    self.publisher.show_desired(desired.clone());
                    return Ok(desired);
                }
                Err(error) if is_status(&error, 409) => continue,
                Err(error) => return Err(backend(&self.name, error)),
            }
        }
        Err(PoolError::Backend(format!(
            "ServerPool {} kept changing: try again",
            self.name
        )))
    }
}

/// What `/add` or `/rm` makes of the stored membership: the new base names (one per
/// slot) and the new `spec.weights`.
type NewBases = (Vec<ReplicaName>, BTreeMap<String, u32>);

/// The pool's membership as stored (its spec and status), read afresh before each
/// `/add` or `/rm`: what the change is checked against and computed from.
struct StoredMembership {
    bases: Vec<ReplicaName>,
    desired: Vec<ReplicaName>,
    replacements: std::collections::HashMap<String, ReplicaName>,
    /// Every name that may not be reused: bases, desired, members still listed,
    /// failed names.
    in_use: Vec<ReplicaName>,
    /// `spec.weights` as it is.
    spec_weights: BTreeMap<String, u32>,
    /// The weight of each desired member.
    weights: admission::Weights,
}

impl StoredMembership {
    fn of(pool: &ServerPool) -> Result<Self, NamingError> {
        let status = pool.status.clone().unwrap_or_default();
        let replacements = pod_slots::replacement_map(&status.emergency_replacements);
        let bases = pod_slots::base_names(&pool.spec)?;
        let desired: Vec<ReplicaName> = pod_slots::desired_members(&pool.spec, &replacements)?
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
                        .map(|r| r.original.as_str()),
                )
                .filter_map(|n| ReplicaName::parse(n).ok()),
        );
        Ok(Self {
            weights: pod_slots::member_weights(&pool.spec, &replacements),
            spec_weights: pool.spec.weights.clone(),
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
            .find(|base| pod_slots::resolve(base, &self.replacements) == *name)
    }
}

fn backend(pool: &str, error: kube::Error) -> PoolError {
    if is_status(&error, 404) {
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

impl PoolAdmin for SpecAdmin {
    fn add(
        &self,
        n: u64,
        hostnames: Vec<String>,
        weights: BTreeMap<String, u32>,
    ) -> BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>> {
        Box::pin(async move {
            self.change("add", |stored| {
                let table = self.publisher.table();
                let admission::Addition {
                    names: added,
                    added_weights,
                    ..
                } = admission::check_add(
                    admission::AddTo {
                        desired: &stored.desired,
                        in_use: &stored.in_use,
                        weights: &stored.weights,
                        max_replicas: self.max_replicas,
                        ring: table.ring.config(),
                    },
                    n,
                    &hostnames,
                    &weights,
                    |all| {
                        // Refuse names that cannot be pods before anything is written (as
                        // the CRD's CEL rule would, with a 422 the client would see as a 502).
                        if let Some((name, generated)) = hostnames
                            .iter()
                            .find_map(|h| Some((h, pod_slots::shadowed_generated_name(h)?)))
                        {
                            return Err(MembershipError::ShadowsGenerated {
                                name: name.clone(),
                                generated,
                            }
                            .into());
                        }
                        pod_slots::pod_names(all).map_err(refusal)?;
                        Ok::<(), PoolError>(())
                    },
                )?;
                let mut spec_weights = stored.spec_weights.clone();
                spec_weights.extend(added_weights.into_iter().map(|(n, w)| (n.to_string(), w)));
                let bases = stored.bases.iter().chain(&added).cloned().collect();
                Ok((bases, spec_weights))
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
            self.change("rm", |stored| {
                let removed =
                    admission::names_to_remove(&stored.desired, n, &hostnames, &mut rand::rng())?;
                let removed_bases: Vec<&ReplicaName> = removed
                    .iter()
                    .filter_map(|name| stored.base_of(name))
                    .collect();
                let bases: Vec<ReplicaName> = stored
                    .bases
                    .iter()
                    .filter(|base| !removed_bases.contains(base))
                    .cloned()
                    .collect();
                // The weights of the slots that go, go with them.
                let mut spec_weights = stored.spec_weights.clone();
                spec_weights.retain(|name, _| bases.iter().any(|b| b.as_str() == name));
                Ok((bases, spec_weights))
            })
            .await
        })
    }

    fn report_unreachable(&self, name: &ReplicaName) {
        // Never blocks a request: if the watch is busy with reports, this one is redundant.
        let _ = self.suspects.try_send(name.clone());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::operator::fixtures::FakeApiServer;
    use crate::testing::pool;

    const POOLS: &str = "/apis/ringlb.dev/v1alpha1/namespaces/default/serverpools";
    const POOL: &str = "/apis/ringlb.dev/v1alpha1/namespaces/default/serverpools/demo";

    /// The fake API server holding one pool, and a `SpecAdmin` of it.
    struct Fake {
        server: FakeApiServer,
        admin: SpecAdmin,
    }

    fn start(pool: ServerPool) -> Fake {
        let server = FakeApiServer::default();
        server.put(POOLS, serde_json::to_value(&pool).unwrap());
        let metrics = Arc::new(Metrics::new());
        let admin = SpecAdmin::new(
            Api::namespaced(server.client(), "default"),
            "demo",
            10,
            metrics.clone(),
            Arc::new(Publisher::new(&Default::default(), metrics)),
            mpsc::channel(1).0,
        );
        Fake { server, admin }
    }

    impl Fake {
        /// The pool's resourceVersion as stored now.
        fn version(&self) -> Value {
            self.stored()["metadata"]["resourceVersion"].clone()
        }

        fn stored(&self) -> Value {
            self.server.get(POOLS, "demo").unwrap()
        }

        /// The merge patches sent; and every call was to the pool, nothing else.
        fn patches(&self) -> Vec<Value> {
            let calls = self.server.calls();
            for call in &calls {
                assert_eq!(call.path, POOL, "{} {}", call.method, call.path);
            }
            calls
                .into_iter()
                .filter(|c| c.method == "PATCH")
                .map(|c| c.body)
                .collect()
        }
    }

    fn names(list: &[ReplicaName]) -> Vec<&str> {
        list.iter().map(ReplicaName::as_str).collect()
    }

    #[tokio::test]
    async fn add_patches_replicas_and_keeps_the_hostnames_when_they_suffice() {
        let api = start(pool(3).build());
        let read = api.version();
        let desired = api.admin.add(2, vec![], BTreeMap::new()).await.unwrap();
        assert_eq!(
            names(&desired),
            ["Server1", "Server2", "Server3", "Server4", "Server5"]
        );
        // On condition that the pool is still as it was read.
        assert_eq!(
            api.patches(),
            [json!({"metadata": {"resourceVersion": read},
                    "spec": {"replicas": 5, "hostnames": null}})]
        );
        assert_eq!(api.stored()["spec"]["replicas"], 5);
        // /rep answers the new desired list at once.
        assert_eq!(names(&api.admin.publisher.view().desired).len(), 5);
    }

    #[tokio::test]
    async fn add_with_names_and_rm_of_a_replacement_spell_the_names_out() {
        let api = start(pool(3).replaced(&[("Server2", "emergency_1")]).build());
        let desired = api
            .admin
            .add(1, vec!["web".into()], BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(
            names(&desired),
            ["Server1", "emergency_1", "Server3", "web"]
        );
        assert_eq!(
            api.patches()[0]["spec"],
            json!({"replicas": 4, "hostnames": ["Server1", "Server2", "Server3", "web"]})
        );

        let api = start(pool(3).replaced(&[("Server2", "emergency_1")]).build());
        let desired = api
            .admin
            .remove(1, vec!["emergency_1".into()])
            .await
            .unwrap();
        assert_eq!(names(&desired), ["Server1", "Server3"]);
        assert_eq!(
            api.patches()[0]["spec"],
            json!({"replicas": 2, "hostnames": ["Server1", "Server3"]})
        );
    }

    #[tokio::test]
    async fn weights_are_written_by_slot_and_leave_with_their_slot() {
        let weighted = || {
            let mut weighted = pool(3).replaced(&[("Server2", "emergency_1")]).build();
            weighted.spec.weights = BTreeMap::from([("Server2".to_owned(), 3)]);
            weighted
        };
        let api = start(weighted());
        let weights = BTreeMap::from([("web".to_owned(), 2)]);
        api.admin.add(1, vec!["web".into()], weights).await.unwrap();
        assert_eq!(
            api.patches()[0]["spec"]["weights"],
            json!({"Server2": 3, "web": 2})
        );

        // emergency_1 holds slot Server2: removing it removes that slot's weight.
        let api = start(weighted());
        api.admin
            .remove(1, vec!["emergency_1".into()])
            .await
            .unwrap();
        assert_eq!(
            api.patches()[0]["spec"]["weights"],
            json!({"Server2": null})
        );

        // A weight the ring cannot hold is refused before anything is written.
        let api = start(weighted());
        let error = api
            .admin
            .add(
                1,
                vec!["web".into()],
                BTreeMap::from([("web".to_owned(), 0)]),
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("weight 0"), "{error}");
        assert!(api.patches().is_empty());
    }

    #[tokio::test]
    async fn refused_changes_write_nothing() {
        let api = start(pool(2).replaced(&[("Server2", "emergency_1")]).build());
        for (result, expected) in [
            (
                api.admin
                    .add(1, vec!["Server1".into()], BTreeMap::new())
                    .await,
                "hostname 'Server1' is already in use",
            ),
            (
                // The failed name stays taken while its replacement lives.
                api.admin
                    .add(1, vec!["Server2".into()], BTreeMap::new())
                    .await,
                "hostname 'Server2' is already in use",
            ),
            (
                api.admin
                    .add(1, vec!["server_".into()], BTreeMap::new())
                    .await,
                "cannot name a pod",
            ),
            (
                api.admin
                    .add(2, vec!["Web_1".into(), "web-1".into()], BTreeMap::new())
                    .await,
                "hostname 'web-1' is already in use",
            ),
            (
                // Pod server9, as Server9's would be (the CRD's CEL rule says so too).
                api.admin
                    .add(1, vec!["server9".into()], BTreeMap::new())
                    .await,
                "hostname 'server9' would share its pod name with the generated name 'Server9'",
            ),
            (
                api.admin.remove(1, vec!["Server2".into()]).await,
                "hostname 'Server2' is not a replica",
            ),
            (
                api.admin.remove(3, vec![]).await,
                "cannot remove 3 replicas: there are only 2",
            ),
        ] {
            let error = result.unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(api.patches().is_empty());
    }

    #[tokio::test]
    async fn a_conflicting_write_is_retried_on_a_fresh_read() {
        let api = start(pool(1).build());
        // Two writes refused as stale, as if another proxy had written first.
        api.server.fail_next("PATCH", "/serverpools/demo", 409, 2);
        let desired = api.admin.add(1, vec![], BTreeMap::new()).await.unwrap();
        assert_eq!(names(&desired), ["Server1", "Server2"]);
        assert_eq!(api.patches().len(), 3);
        let methods: Vec<String> = api.server.calls().into_iter().map(|c| c.method).collect();
        assert_eq!(methods, ["GET", "PATCH", "GET", "PATCH", "GET", "PATCH"]);
        assert_eq!(
            api.stored()["spec"]["replicas"],
            2,
            "the third write landed"
        );
    }
}
