//! ringlb: a consistent-hashing HTTP load balancer that keeps N replicas alive.
//!
//! Data flows one way:
//!
//! - request: [`proxy`] extracts a key → [`ring`] snapshot picks a member →
//!   the request is forwarded to that replica (failover to the next distinct member);
//! - change: an admin call or a failed heartbeat reaches the [`pool`] supervisor →
//!   [`pool::plan`] turns desired vs observed into actions → the [`runtime`] starts or
//!   stops replicas → a new routing table is published atomically for the proxy;
//! - in Kubernetes, the [`operator`] keeps each `ServerPool`'s pods alive (watch →
//!   reconcile → pods and status), and the in-cluster proxy, [`cluster_proxy`], routes
//!   through the ring it builds from its watch of the pool (watch → `pool_state` →
//!   publish); `/add` and `/rm` there edit the pool's spec.
//!
//! [`manifests`] says what each in-cluster command asks of the Kubernetes API and
//! tests `deploy/` against it. [`ops`] serves metrics, health and a JSON view of the ring on a separate port;
//! [`app`] wires everything together for `ringlb up`; [`launch`] starts that from
//! another program (the end-to-end tests, `ringlb-analyze`).

pub mod app;
pub mod cli;
pub mod cluster_proxy;
pub mod launch;
pub mod manifests;
pub mod metrics;
pub mod operator;
pub mod ops;
pub mod pool;
pub mod proxy;
pub mod publish;
pub mod replica_health;
pub mod replica_name;
pub mod ring;
pub mod runtime;
pub mod serving;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
