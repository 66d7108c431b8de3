//! `ringlb operator`: in a cluster, one process runs the reconciler for every
//! `ServerPool` of its namespace, and serves the pool named by `--pool` through the
//! same proxy (port 5000) and operations port (5001) as `ringlb up`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;

use super::kube_pool::KubePool;
use super::leader::{self, LeaseSettings};
use super::reconciler::{self, Context, HeartbeatProber};
use crate::metrics::Metrics;
use crate::proxy::ProxyArgs;
use crate::proxy::workers::ProxyListeners;
use crate::serving::{DRAIN_TIMEOUT, Serving};

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

    /// Address of the operations port: /metrics, /healthz, /readyz, /ring.
    #[arg(long, env = "RINGLB_OPS_LISTEN", default_value = "0.0.0.0:5001")]
    pub ops_listen: SocketAddr,

    /// Upper bound on the number of replicas that /add may reach.
    #[arg(long, env = "RINGLB_MAX_REPLICAS", default_value_t = 100)]
    pub max_replicas: usize,

    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// This pod's name: the reporting instance of Events, and who holds the leader lease.
    #[arg(long, env = "RINGLB_POD_NAME")]
    pub pod_name: Option<String>,

    /// The Lease through which the operators of a namespace elect the one that reconciles.
    #[arg(long, env = "RINGLB_LEASE_NAME", default_value = "ringlb-operator")]
    pub lease_name: String,

    /// How long the lease holds without renewal: the longest a standby waits to take
    /// over after the leader died.
    #[arg(long, env = "RINGLB_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: std::time::Duration,
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let shutdown = ringlb_replica::shutdown_signal();
    let proxy_listener = ProxyListeners::bind(args.listen, args.proxy.workers())
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
    // The pod's name is unique among the operators of a namespace; elsewhere (a
    // developer's machine) the host and process stand in for it.
    let identity = args.pod_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = LeaseSettings::new(&args.lease_name, &namespace, &identity, args.lease_duration);
    let (stop_campaign, campaign_stopped) = tokio::sync::oneshot::channel::<()>();
    let (leadership, elector) = leader::campaign(client.clone(), lease, metrics.clone(), async {
        let _ = campaign_stopped.await;
    });
    let ctx = Arc::new(Context::new(
        client,
        args.pod_name.clone(),
        Arc::new(HeartbeatProber::default()),
        metrics.clone(),
        Some(pool.clone()),
        leadership,
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

    let serving = Serving::start(
        proxy_listener,
        ops_listener,
        pool,
        args.proxy.settings(),
        metrics,
    )?;
    let controller = tokio::spawn({
        let namespace = namespace.clone();
        let stop = serving.stopped();
        async move { reconciler::run(ctx, &namespace, stop).await }
    });

    shutdown.await;
    // Step down first: the lease is free at once for a rollout's new pod. (A standby
    // that is already running wakes at the expiry it last read, as after a crash.)
    let _ = stop_campaign.send(());
    serving.drain().await;
    // The pods stay: they belong to their pools, not to this process.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, controller).await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, elector).await;
    tracing::info!("stopped");
    Ok(())
}
