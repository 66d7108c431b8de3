//! `ringlb operator`: in a cluster, one process runs the reconciler for every
//! `ServerPool` of its namespace, and serves the pool named by `--pool` through the
//! same proxy (port 5000) and operations port (5001) as `ringlb up`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::kube_pool::KubePool;
use super::reconciler::{self, Context, HeartbeatProber};
use crate::metrics::Metrics;
use crate::ops::{self, Ops};
use crate::pool::PoolControl;
use crate::proxy::workers::ProxyListeners;
use crate::proxy::{self, KeySource, Proxy, ProxySettings};

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The ServerPool that the proxy serves (every pool of the namespace is reconciled).
    #[arg(long, env = "RINGLB_POOL")]
    pub pool: String,

    /// Namespace of the pools [default: the pod's own namespace, or the kubeconfig's].
    #[arg(long, env = "RINGLB_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the load balancer.
    #[arg(long, env = "RINGLB_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,

    /// Proxy worker threads, each with its own runtime and listener [default: one per core].
    #[arg(long, env = "RINGLB_WORKERS")]
    pub workers: Option<usize>,

    /// Address of the operations port: /metrics, /healthz, /readyz, /ring.
    #[arg(long, env = "RINGLB_OPS_LISTEN", default_value = "0.0.0.0:5001")]
    pub ops_listen: SocketAddr,

    /// Upper bound on the number of replicas that /add may reach.
    #[arg(long, env = "RINGLB_MAX_REPLICAS", default_value_t = 100)]
    pub max_replicas: usize,

    /// What each request is keyed on: random, header:NAME, query:NAME, cookie:NAME,
    /// path or client-ip.
    #[arg(long, env = "RINGLB_KEY", default_value = "random")]
    pub key: KeySource,

    /// Bearer token required by /add and /rm (unset: no token needed).
    #[arg(long, env = "RINGLB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Replicas tried per request when one cannot be reached (counting the first).
    #[arg(long, env = "RINGLB_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: usize,

    /// Time allowed to connect to a replica.
    #[arg(long, env = "RINGLB_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for a replica's response headers.
    #[arg(long, env = "RINGLB_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Largest request body forwarded, in bytes.
    #[arg(long, env = "RINGLB_MAX_BODY", default_value_t = 10 * 1024 * 1024)]
    pub max_body: usize,

    /// This pod's name, shown as the reporting instance of Events.
    #[arg(long, env = "RINGLB_POD_NAME")]
    pub pod_name: Option<String>,
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let shutdown = ringlb_replica::shutdown_signal();
    let workers = args
        .workers
        .unwrap_or_else(proxy::workers::default_workers)
        .max(1);
    let proxy_listener = ProxyListeners::bind(args.listen, workers)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops_listener = TcpListener::bind(args.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {} (operations port)", args.ops_listen))?;

    let client = kube::Client::try_default().await.context(
        "cannot reach the Kubernetes API (in a pod: its service account; outside: ~/.kube/config)",
    )?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let metrics = Arc::new(Metrics::new());
    let pool = Arc::new(KubePool::new(
        kube::Api::namespaced(client.clone(), &namespace),
        &args.pool,
        args.max_replicas,
        metrics.clone(),
    ));
    let ctx = Arc::new(Context::new(
        client,
        args.pod_name.clone(),
        Arc::new(HeartbeatProber::default()),
        metrics.clone(),
        Some(pool.clone()),
    ));

    println!(
        "ringlb: operator for the ServerPools of namespace {namespace}; proxy for pool {}",
        args.pool
    );
    println!(
        "ringlb: proxy listening on http://{}",
        proxy_listener.local_addr()
    );
    println!(
        "ringlb: operations on http://{} (/metrics, /healthz, /readyz, /ring)",
        ops_listener.local_addr()?
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let controller = tokio::spawn({
        let namespace = namespace.clone();
        let stop = stopped(stop_rx.clone());
        async move { reconciler::run(ctx, &namespace, stop).await }
    });
    let proxy_settings = ProxySettings {
        key: args.key.clone(),
        max_attempts: args.max_attempts.max(1),
        connect_timeout: args.connect_timeout,
        request_timeout: args.request_timeout,
        max_body_bytes: args.max_body,
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
    };
    let make_proxy = {
        let pool: Arc<dyn PoolControl> = pool.clone();
        let metrics = metrics.clone();
        Arc::new(move || Proxy::new(pool.clone(), proxy_settings.clone(), metrics.clone()))
    };
    let proxy_workers = proxy::workers::spawn(proxy_listener, make_proxy, stop_rx.clone())?;
    let ops_server = tokio::spawn(
        axum::serve(ops_listener, ops::router(Ops { pool, metrics }))
            .with_graceful_shutdown(stopped(stop_rx))
            .into_future(),
    );

    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    if !proxy_workers.drain(DRAIN_TIMEOUT).await {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    ops_server.abort();
    // The pods stay: they belong to their pools, not to this process.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, controller).await;
    tracing::info!("stopped");
    Ok(())
}
