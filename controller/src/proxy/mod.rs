//! The HTTP front: the admin API (`/rep`, `/add`, `/rm`) and forwarding of
//! everything else through the ring.

pub mod admin;
mod args;
mod connection;
pub mod error;
mod exchange;
pub mod failover;
pub mod forward;
pub mod grpc;
pub mod h2;
pub mod key;
mod replay;
mod send_deadline;
pub mod tls;
mod upstream;
pub mod wire;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::{delete, get, post};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

use crate::metrics::Metrics;
use crate::pool::PoolAdmin;
use crate::publish::Publisher;
pub use args::ProxyArgs;
pub use error::ApiError;
pub use key::KeySource;
use upstream::UpstreamPool;

#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub key: KeySource,
    /// Replicas tried per request, counting the first.
    pub max_attempts: usize,
    pub connect_timeout: Duration,
    /// Time until a replica's response headers.
    pub request_timeout: Duration,
    /// Time between two reads of a replica's response body.
    pub read_timeout: Duration,
    /// Time a write to a client may wait for the client to read (nginx: send_timeout).
    pub send_timeout: Duration,
    /// Time to receive a whole request head, from its first byte (or from the
    /// connection's start, for its first request).
    pub client_header_timeout: Duration,
    /// Time between two reads of a request body.
    pub client_body_timeout: Duration,
    /// Time a kept-alive client connection may wait for its next request.
    pub keepalive_timeout: Duration,
    pub max_body_bytes: usize,
    pub head_limits: wire::HeadLimits,
    /// Client connections open at once in this process.
    pub max_connections: usize,
    /// When set, `/add` and `/rm` need `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// HTTP/2 limits of each client connection.
    pub h2: h2::H2Limits,
    /// When set, the proxy port speaks TLS with these files.
    pub tls: Option<tls::TlsFiles>,
}

/// Time between PINGs on an h2c connection to a replica, busy or idle.
const UPSTREAM_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Time a replica has to answer a PING before its connection is dropped (calls on it
/// fail as sent, and the replica is reported).
const UPSTREAM_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by all proxy handlers.
pub struct Proxy {
    /// What requests are routed by and `/rep` reads.
    pub publisher: Arc<Publisher>,
    /// Where `/add`, `/rm` and unreachable replicas go.
    pub admin: Arc<dyn PoolAdmin>,
    pub settings: ProxySettings,
    pub metrics: Arc<Metrics>,
    /// This proxy's worker thread, by index.
    pub worker: usize,
    /// The general path's client (see `connection.rs` for the two paths).
    client: Client<HttpConnector, Full<Bytes>>,
    /// The general path's client to replicas spoken to in h2c: one multiplexed
    /// connection per replica (per worker), within the replica's
    /// SETTINGS_MAX_CONCURRENT_STREAMS (more streams wait for room), opened again
    /// after a `GOAWAY` or a close.
    h2c: Client<HttpConnector, axum::body::Body>,
    /// The fast path's idle replica connections.
    upstreams: UpstreamPool,
    /// TLS on the proxy port (`settings.tls`, loaded once for every worker).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Proxy {
    pub fn new(
        publisher: Arc<Publisher>,
        admin: Arc<dyn PoolAdmin>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        worker: usize,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        // PINGs find a pooled connection whose replica went away without a word (a
        // pod's address gone, a host down): it is dropped before a call is sent on it.
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .http2_keep_alive_interval(UPSTREAM_PING_INTERVAL)
            .http2_keep_alive_timeout(UPSTREAM_PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Self {
            upstreams: UpstreamPool::new(settings.connect_timeout),
            publisher,
            admin,
            settings,
            metrics,
            worker,
            client,
            h2c,
            tls: None,
        }
    }

    /// This proxy with TLS on its port: see `tls::acceptor`.
    pub fn with_tls(mut self, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        self.tls = tls;
        self
    }
}

/// The paths the load balancer answers itself; every other path is forwarded.
const ADMIN_PATHS: [&str; 3] = ["/rep", "/add", "/rm"];

pub(crate) fn is_local_route(path: &str) -> bool {
    ADMIN_PATHS.contains(&path)
}

pub fn router(proxy: Arc<Proxy>) -> Router {
    let [rep, add, rm] = ADMIN_PATHS;
    Router::new()
        .route(rep, get(admin::rep))
        .route(add, post(admin::add))
        .route(rm, delete(admin::rm))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(forward::forward)
        .with_state(proxy)
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}
