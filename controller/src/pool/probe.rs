//! One heartbeat: `GET /heartbeat` with a timeout, behind the [`Prober`] trait
//! ([`HeartbeatProber`] sends it over HTTP; tests use a fake). What its answers mean
//! for a replica is [`crate::replica_health`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// Sends heartbeats over pooled keep-alive connections.
#[derive(Clone)]
struct HeartbeatClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl HeartbeatClient {
    fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// True when the replica answers `GET /heartbeat` with 200 within the timeout.
    async fn check(&self, addr: SocketAddr) -> bool {
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
    /// True when the replica at `addr` passes one health check within `timeout`
    /// (`GET /heartbeat` answered 200 here; gRPC's `Health/Check` in `grpc_probe`).
    fn check(&self, addr: SocketAddr, timeout: Duration) -> BoxFuture<'static, bool>;
}

/// `GET /heartbeat` over pooled connections, one client per timeout.
#[derive(Default)]
pub struct HeartbeatProber {
    clients: PerTimeout<HeartbeatClient>,
}

impl Prober for HeartbeatProber {
    fn check(&self, addr: SocketAddr, timeout: Duration) -> BoxFuture<'static, bool> {
        let client = self.clients.get(timeout, HeartbeatClient::new);
        Box::pin(async move { client.check(addr).await })
    }
}

/// A prober's clients, one per timeout (each client's connector carries its timeout),
/// made on first use and shared by every probe with that timeout.
pub(super) struct PerTimeout<C>(Mutex<HashMap<Duration, C>>);

impl<C> Default for PerTimeout<C> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<C: Clone> PerTimeout<C> {
    pub(super) fn get(&self, timeout: Duration, make: impl FnOnce(Duration) -> C) -> C {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(timeout)
            .or_insert_with(|| make(timeout))
            .clone()
    }
}
