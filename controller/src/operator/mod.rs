//! Kubernetes: the `ServerPool` custom resource and the operator that keeps its
//! pods alive.
//!
//! - [`app`]: `ringlb operator`: reconciler, proxy and operations port in one process;
//! - [`crd`]: the resource types; `ringlb crd` prints the CRD generated from them;
//! - [`members`]: desired logical names and their DNS-1123 pod names (pure);
//! - [`pods`]: the pods of a pool: their manifest, listing, creating, deleting;
//! - [`reconciler`]: pods follow the pool: create, delete, replace, Events, status;
//! - [`leader`]: the Lease that lets one operator of a namespace reconcile;
//! - [`kube_pool`]: the in-cluster pool behind the proxy (`/add`, `/rm` edit the spec);
//! - [`manifests`]: the API permissions the operator uses (and tests of `deploy/`);

pub mod app;
pub mod crd;
pub mod kube_pool;
pub mod leader;
pub mod manifests;
pub mod members;
pub mod pods;
pub mod reconciler;

pub use crd::{ServerPool, ServerPoolSpec, ServerPoolStatus};
