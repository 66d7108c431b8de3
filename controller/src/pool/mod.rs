//! Membership and health: which replicas should exist, which are alive, and the
//! supervisor that turns the difference into actions.
//!
//! - [`membership`]: validation of `/add` and `/rm` (pure);
//! - [`plan`]: desired vs observed → actions (pure, shared with the operator);
//! - [`health`]: heartbeats and the per-replica health state machine;
//! - [`grpc_probe`]: the same heartbeats as gRPC health checks, for gRPC-only replicas;
//! - [`supervisor`]: the single task that owns the pool and applies all of the above;
//! - [`admin`]: the write side that `/add`, `/rm` and the proxy's failure reports use.

pub mod admin;
pub mod grpc_probe;
pub mod health;
pub mod membership;
pub mod plan;
pub mod supervisor;

pub use crate::replica_name::{NameError, ReplicaName};
pub use admin::{PoolAdmin, PoolError};
pub use grpc_probe::HealthCheck;
pub use health::HealthSettings;
pub use membership::MembershipError;
pub use plan::{Action, Observed, Plan, Policy, plan};
pub use supervisor::{PoolHandle, Supervisor};
