//! How a pool's replicas are health-checked: the kind of check (HTTP heartbeat or gRPC
//! health check), its timing and threshold ([`HealthSettings`]), and a prober for each
//! kind ([`Probers`]) for the owners whose pools each choose theirs (the operator and
//! the in-cluster proxy read `spec.heartbeat`). The probers themselves are
//! [`super::probe`] and [`super::grpc_probe`].

use std::sync::Arc;
use std::time::Duration;

use super::grpc_probe::GrpcHealthProber;
use super::probe::{HeartbeatProber, Prober};

/// What a heartbeat asks: `http` (`GET /heartbeat` answered 200) or `grpc`
/// (`grpc.health.v1.Health/Check` over h2c answered SERVING, for replicas that speak
/// only gRPC) [default: http]. (`--health-check`, `spec.heartbeat.check`.)
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// `GET /heartbeat` answered 200.
    #[default]
    Http,
    /// `grpc.health.v1.Health/Check` over h2c answered SERVING (replicas that speak
    /// only gRPC).
    Grpc,
}

impl HealthCheck {
    /// The prober that sends this kind of health check.
    pub fn prober(self) -> Arc<dyn Prober> {
        match self {
            HealthCheck::Http => Arc::new(HeartbeatProber::default()),
            HealthCheck::Grpc => Arc::new(GrpcHealthProber::default()),
        }
    }
}

/// How and how often a pool's replicas are checked, and when one has failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between heartbeat rounds.
    pub interval: Duration,
    /// How long one heartbeat may take.
    pub timeout: Duration,
    /// Consecutive failed heartbeats after which a replica has failed.
    pub failure_threshold: u32,
    /// What a heartbeat asks.
    pub check: HealthCheck,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(500),
            failure_threshold: 3,
            check: HealthCheck::Http,
        }
    }
}

/// A prober for each kind of check, made once and shared by every pool of a process.
#[derive(Clone)]
pub struct Probers {
    http: Arc<dyn Prober>,
    grpc: Arc<dyn Prober>,
}

impl Probers {
    pub fn new(http: Arc<dyn Prober>, grpc: Arc<dyn Prober>) -> Self {
        Self { http, grpc }
    }

    /// The real ones: HTTP heartbeats and gRPC health checks.
    pub fn real() -> Self {
        Self::new(HealthCheck::Http.prober(), HealthCheck::Grpc.prober())
    }

    /// One prober for every kind (tests: a fake that answers as told).
    pub fn same(prober: Arc<dyn Prober>) -> Self {
        Self::new(prober.clone(), prober)
    }

    /// The prober of this kind of check.
    pub fn of(&self, check: HealthCheck) -> Arc<dyn Prober> {
        match check {
            HealthCheck::Http => self.http.clone(),
            HealthCheck::Grpc => self.grpc.clone(),
        }
    }
}
