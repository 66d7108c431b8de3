//! The write side of a pool, whoever keeps it: the local supervisor
//! ([`super::PoolHandle`]) or, in a cluster, the `ServerPool` resource. The admin
//! API and forwarding are written once against this trait; what they read comes
//! from the [`crate::publish::Publisher`].

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::ReplicaName;
use super::admission::MembershipError;
use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the load balancer is shutting down")]
    ShuttingDown,
    /// The store of the desired state (the Kubernetes API) refused or failed.
    #[error("{0}")]
    Backend(String),
}

pub trait PoolAdmin: Send + Sync + 'static {
    /// `/add`: adds `n` replicas (named from `hostnames`, the rest generated), with
    /// ring `weights` by hostname (1 when not given), and returns the desired replicas
    /// after the change, or why nothing changed.
    fn add(
        &self,
        n: u64,
        hostnames: Vec<String>,
        weights: BTreeMap<String, u32>,
    ) -> BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>>;

    /// `/rm`: removes `n` replicas (named from `hostnames`, the rest at random).
    fn remove(
        &self,
        n: u64,
        hostnames: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>>;

    /// The proxy could not reach `name`: out of the ring until it answers again.
    /// Called on the request path: must not block.
    fn report_unreachable(&self, name: &ReplicaName);
}
