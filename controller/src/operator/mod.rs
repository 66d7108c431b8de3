//! Kubernetes: the `ServerPool` custom resource and the operator that keeps its
//! pods alive.
//!
//! - [`app`]: `ringlb operator`: the leader-elected reconciler (and its operations port);
//! - [`proxy_app`]: `ringlb proxy`: the proxy of one pool, any number of replicas;
//! - [`proxy`]: the proxy's watch of its pool and pods, published as its ring;
//! - [`spec_admin`]: `/add` and `/rm` in a cluster: they edit the pool's spec;
//! - [`crd`]: the resource types; `ringlb crd` prints the CRD generated from them;
//! - [`members`]: desired logical names and their DNS-1123 pod names (pure);
//! - [`pods`]: the pods of a pool: their manifest, listing, creating, deleting;
//! - [`reconciler`]: pods follow the pool: create, delete, replace, Events, status;
//! - [`leader`]: the Lease that lets one operator of a namespace reconcile;
//! - [`manifests`]: the API permissions each command uses, and the tests of `deploy/`;

#[cfg(test)]
mod api_usage_tests;
pub mod app;
pub mod crd;
#[cfg(test)]
pub mod fixtures;
pub mod heartbeats;
pub mod leader;
pub mod manifests;
pub mod members;
#[cfg(test)]
mod over_time_tests;
pub mod pods;
pub mod proxy;
pub mod proxy_app;
pub mod reconciler;
pub mod spec_admin;

pub use crd::{ServerPool, ServerPoolSpec, ServerPoolStatus};

/// The API client both in-cluster commands use, and the namespace they work in:
/// `namespace`, or the pod's own (the kubeconfig's outside a cluster).
pub async fn connect(namespace: Option<&str>) -> anyhow::Result<(kube::Client, String)> {
    use anyhow::Context as _;
    let client = kube::Client::try_default().await.context(
        "cannot reach the Kubernetes API (in a pod: its service account; outside: ~/.kube/config)",
    )?;
    let namespace = namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
    Ok((client, namespace))
}
