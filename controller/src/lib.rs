//! ringlb: a consistent-hashing HTTP load balancer that keeps N replicas alive.
//!
//! Data flows one way:
//!
//! - request: [`proxy`] extracts a key → [`ring`] snapshot picks a member →
//!   the request is forwarded to that replica (failover to the next distinct member);
//! - change: an admin call or a failed heartbeat reaches the [`pool`] supervisor →
//!   [`pool::plan`] turns desired vs observed into actions → the [`runtime`] starts or
//!   stops replicas → a new routing table is published atomically for the proxy.
//!
//! [`ops`] serves metrics, health and a JSON view of the ring on a separate port;
//! [`app`] wires everything together for `ringlb up`; [`launch`] starts that from
//! another program (the end-to-end tests, `ringlb-analyze`).

pub mod app;
pub mod cli;
pub mod launch;
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
