//! What the proxy and the operations port need from a pool, whoever keeps it: the
//! local supervisor ([`super::PoolHandle`]) or, in a cluster, the `ServerPool`
//! resource. The admin API and forwarding are written once against this trait.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{PoolError, PoolView, ReplicaName};
use crate::routing::SharedRouting;

pub trait PoolControl: Send + Sync + 'static {
    /// `/add`: adds `n` replicas (named from `hostnames`, the rest generated) and
    /// returns the desired replicas after the change, or why nothing changed.
    fn add(
        &self,
        n: u64,
        hostnames: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>>;

    /// `/rm`: removes `n` replicas (named from `hostnames`, the rest at random).
    fn remove(
        &self,
        n: u64,
        hostnames: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>>;

    /// The desired replicas, their health and the replacements made.
    fn view(&self) -> Arc<PoolView>;

    /// The routing table the proxy reads per request.
    fn routing(&self) -> &SharedRouting;

    /// The proxy could not reach `name`; must not block.
    fn report_unreachable(&self, name: &ReplicaName);
}
