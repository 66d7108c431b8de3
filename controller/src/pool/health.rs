//! Heartbeats: `GET /heartbeat` with a timeout, and the per-replica state machine
//! that turns their results into [`Health`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

use super::Health;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between heartbeat rounds.
    pub interval: Duration,
    /// How long one heartbeat may take.
    pub timeout: Duration,
    /// Consecutive failed heartbeats after which a replica has failed.
    pub failure_threshold: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(500),
            failure_threshold: 3,
        }
    }
}

/// Sends heartbeats over pooled keep-alive connections.
#[derive(Clone)]
pub struct HeartbeatClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl HeartbeatClient {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// True when the replica answers `GET /heartbeat` with 200 within the timeout.
    pub async fn check(&self, addr: SocketAddr) -> bool {
        let Ok(uri) = format!("http://{addr}/heartbeat").parse::<http::Uri>() else {
            return false;
        };
        let beat = async {
            let response = self.client.get(uri).await.ok()?;
            let ok = response.status() == http::StatusCode::OK;
            // Read the (empty) body so the connection goes back to the pool.
            response.into_body().collect().await.ok()?;
            Some(ok)
        };
        matches!(
            tokio::time::timeout(self.timeout, beat).await,
            Ok(Some(true))
        )
    }
}

/// Sends one heartbeat. The supervisor and the operator use [`HeartbeatProber`];
/// tests use fakes.
pub trait Prober: Send + Sync + 'static {
    /// True when the replica at `addr` answers `GET /heartbeat` with 200 within `timeout`.
    fn check(&self, addr: SocketAddr, timeout: Duration) -> BoxFuture<'static, bool>;
}

/// `GET /heartbeat` over pooled connections, one client per timeout.
#[derive(Default)]
pub struct HeartbeatProber {
    clients: Mutex<HashMap<Duration, HeartbeatClient>>,
}

impl Prober for HeartbeatProber {
    fn check(&self, addr: SocketAddr, timeout: Duration) -> BoxFuture<'static, bool> {
        let client = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(timeout)
            .or_insert_with(|| HeartbeatClient::new(timeout))
            .clone();
        Box::pin(async move { client.check(addr).await })
    }
}

/// Health of one replica, driven by heartbeat results, request failures and the
/// runtime's word that the process is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub health: Health,
    pub consecutive_failures: u32,
}

impl HealthState {
    pub fn starting() -> Self {
        Self {
            health: Health::Starting,
            consecutive_failures: 0,
        }
    }

    /// Records one heartbeat. A success makes any replica healthy (an external one
    /// that had failed rejoins); failures count until the threshold, and until then a
    /// healthy replica keeps serving, as HAProxy's `fall` does.
    pub fn record_heartbeat(&mut self, ok: bool, failure_threshold: u32) {
        if ok {
            self.health = Health::Healthy;
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= failure_threshold {
                self.health = Health::Failed;
            }
        }
    }

    /// A request could not reach the replica: stop routing to it until a heartbeat
    /// says otherwise.
    pub fn mark_suspect(&mut self) {
        if self.health == Health::Healthy {
            self.health = Health::Suspect;
        }
    }

    /// The process is gone: nothing to wait for.
    pub fn mark_exited(&mut self) {
        self.health = Health::Failed;
    }

    pub fn routable(&self) -> bool {
        self.health == Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_becomes_routable_after_its_first_good_heartbeat() {
        let mut state = HealthState::starting();
        assert!(!state.routable());
        state.record_heartbeat(false, 3);
        assert_eq!(state.health, Health::Starting);
        state.record_heartbeat(true, 3);
        assert!(state.routable());
        assert_eq!(state.consecutive_failures, 0);
    }

    #[test]
    fn failures_below_the_threshold_keep_a_healthy_replica_in_the_ring() {
        let mut state = HealthState::starting();
        state.record_heartbeat(true, 3);
        state.record_heartbeat(false, 3);
        state.record_heartbeat(false, 3);
        assert!(state.routable());
        state.record_heartbeat(false, 3);
        assert_eq!(state.health, Health::Failed);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut state = HealthState::starting();
        state.record_heartbeat(false, 2);
        state.record_heartbeat(true, 2);
        state.record_heartbeat(false, 2);
        assert!(state.routable());
    }

    #[test]
    fn suspect_leaves_the_ring_until_a_heartbeat_succeeds() {
        let mut state = HealthState::starting();
        state.record_heartbeat(true, 3);
        state.mark_suspect();
        assert_eq!(state.health, Health::Suspect);
        assert!(!state.routable());
        state.record_heartbeat(true, 3);
        assert!(state.routable());
    }

    #[test]
    fn suspect_does_not_hide_a_failure() {
        let mut state = HealthState::starting();
        state.mark_exited();
        state.mark_suspect();
        assert_eq!(state.health, Health::Failed);
    }
}
