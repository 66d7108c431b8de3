//! Kubernetes: the `ServerPool` custom resource and the operator that keeps its
//! pods alive.
//!
//! - [`crd`]: the resource types; `ringlb crd` prints the CRD generated from them;

pub mod crd;

pub use crd::{ServerPool, ServerPoolSpec, ServerPoolStatus};
