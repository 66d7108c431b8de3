//! Membership and health: which replicas should exist, which are alive, and the
//! supervisor that turns the difference into actions.
//!
//! - [`admission`]: whether an `/add` or `/rm` may be applied, and which names it
//!   adds or removes (pure);
//! - [`plan`](mod@plan): desired vs observed → actions (pure, shared with the operator);
//! - [`health_book`]: a heartbeat round's answers and what they mean for each
//!   replica (startup grace, spacing, threshold), for the supervisor and the operator;
//! - [`probe`]: one heartbeat, `GET /heartbeat` with a timeout (the [`Prober`](probe::Prober) trait);
//!   what its answers mean for a replica is [`crate::replica_health`];
//! - [`health_check`]: which check a pool's heartbeats make, how often, and when a
//!   replica has failed; a prober for each kind;
//! - [`grpc_probe`]: the same heartbeat as a gRPC health check, for gRPC-only replicas;
//! - [`supervisor`]: the single task that owns the pool and applies all of the above;
//! - [`admin`]: the write side that `/add`, `/rm` and the proxy's failure reports use.

pub mod admin;
pub mod admission;
pub mod grpc_probe;
pub mod health_book;
pub mod health_check;
pub mod plan;
pub mod probe;
pub mod supervisor;

pub use crate::replica_name::{NameError, ReplicaName};
pub use admin::{PoolAdmin, PoolError};
pub use admission::MembershipError;
pub use health_check::{HealthCheck, HealthSettings, Probers};
pub use plan::{Action, Observed, Plan, Policy, plan};
pub use supervisor::{PoolHandle, Supervisor};
