//! gRPC health checks: `grpc.health.v1.Health/Check` over h2c behind the same
//! [`Prober`] trait as the HTTP heartbeat, for replicas that speak only gRPC and so
//! have no `GET /heartbeat` (Envoy's `grpc_health_check`, HAProxy's `option
//! grpc-check`... the same protocol). `SERVING` within the timeout is a success;
//! any other status, a gRPC error, a refused or stalled connection is a failure.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use ringlb_replica::grpc::{HEALTH_CHECK, HealthCheckRequest, HealthCheckResponse, ServingStatus};

use super::probe::{PerTimeout, Prober};

/// `Health/Check` for the whole server (an empty service name) over pooled HTTP/2
/// connections (one per replica, multiplexed), one client per timeout.
#[derive(Default)]
pub struct GrpcHealthProber {
    clients: PerTimeout<GrpcHealthClient>,
}

impl Prober for GrpcHealthProber {
    fn check(&self, addr: SocketAddr, timeout: Duration) -> BoxFuture<'static, bool> {
        let client = self.clients.get(timeout, GrpcHealthClient::new);
        Box::pin(async move { client.check(addr).await })
    }
}

#[derive(Clone)]
struct GrpcHealthClient {
    http: Client<HttpConnector, tonic::body::Body>,
    timeout: Duration,
}

impl GrpcHealthClient {
    fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        // The connection attempt ends with the check, not in the background after it.
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self { http, timeout }
    }

    /// True when the replica answers SERVING within the timeout.
    async fn check(&self, addr: SocketAddr) -> bool {
        let Ok(origin) = format!("http://{addr}").parse::<http::Uri>() else {
            return false;
        };
        let mut grpc = tonic::client::Grpc::with_origin(self.http.clone(), origin);
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        // `grpc-timeout`: the replica knows the deadline too and need not answer late.
        request.set_timeout(self.timeout);
        let call = async {
            grpc.ready().await.ok()?;
            let response: tonic::Response<HealthCheckResponse> = grpc
                .unary(
                    request,
                    PathAndQuery::from_static(HEALTH_CHECK),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .ok()?;
            Some(response.into_inner().status == ServingStatus::Serving as i32)
        };
        matches!(
            tokio::time::timeout(self.timeout, call).await,
            Ok(Some(true))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::HealthCheck;
    use ringlb_replica::grpc::Health;
    use std::sync::{Arc, Mutex};

    const TIMEOUT: Duration = Duration::from_millis(500);

    /// A `ringlb replica --grpc-only` in this process: its address and its health.
    async fn grpc_replica() -> (SocketAddr, Health) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::default();
        let app = ringlb_replica::app("G1", true, health.clone());
        tokio::spawn(ringlb_replica::serve(
            listener,
            app,
            true,
            std::future::pending(),
        ));
        (addr, health)
    }

    #[tokio::test]
    async fn serving_passes_and_any_other_status_fails() {
        let (addr, health) = grpc_replica().await;
        let prober = HealthCheck::Grpc.prober();
        assert!(prober.check(addr, TIMEOUT).await, "SERVING");
        health.set(ServingStatus::NotServing);
        assert!(!prober.check(addr, TIMEOUT).await, "NOT_SERVING");
        health.set(ServingStatus::Unknown);
        assert!(!prober.check(addr, TIMEOUT).await, "UNKNOWN");
        health.set(ServingStatus::Serving);
        assert!(prober.check(addr, TIMEOUT).await, "SERVING again");
    }

    #[tokio::test]
    async fn a_server_without_the_health_service_fails() {
        // An HTTP/1.1-only server (the replica's HTTP routes: 404 for the method's
        // path) and a closed port.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_only = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, ringlb_replica::router("H1")).await });
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let prober = GrpcHealthProber::default();
        assert!(!prober.check(http_only, TIMEOUT).await, "HTTP/1.1 only");
        assert!(!prober.check(closed, TIMEOUT).await, "closed port");
        // ... while the HTTP heartbeat passes on the first: the flag picks the check.
        assert!(HealthCheck::Http.prober().check(http_only, TIMEOUT).await);
    }

    #[tokio::test]
    async fn a_replica_that_never_answers_fails_at_the_timeout() {
        // Accepts connections and reads nothing: the HTTP/2 handshake never completes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                keep.lock().unwrap().push(stream);
            }
        });
        let timeout = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        assert!(!GrpcHealthProber::default().check(addr, timeout).await);
        let took = started.elapsed();
        assert!(
            took >= timeout && took < Duration::from_secs(5),
            "a stalled replica failed after {took:?}, not at the timeout"
        );
        assert!(!held.lock().unwrap().is_empty(), "the check connected");
    }
}
