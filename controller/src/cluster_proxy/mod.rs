//! The in-cluster proxy, `ringlb proxy --pool NAME`: the data plane in a cluster.
//! Any number of replicas of it serve one `ServerPool` behind the Service `ringlb`:
//! each routes through the ring it builds from its own watch (see [`watch`]), and
//! `/add` and `/rm` edit the pool's spec (see [`spec_admin`]).
//!
//! It reads the operator's types ([`crate::operator::crd`], [`crate::operator::members`],
//! [`crate::operator::pods`]); nothing of the operator reads it.

#[cfg(test)]
pub(crate) mod api_usage_tests;
#[cfg(test)]
mod over_time_tests;
pub mod spec_admin;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Args;

use self::spec_admin::SpecAdmin;
use crate::metrics::Metrics;
use crate::ops;
use crate::proxy::ProxyArgs;
use crate::proxy::workers::ProxyListeners;
use crate::publish::Publisher;
use crate::ring::RingConfig;
use crate::serving::{DRAIN_TIMEOUT, Serving};

#[derive(Debug, Args)]
pub struct PoolProxyArgs {
    /// The ServerPool to serve.
    #[arg(long, env = "RINGLB_POOL")]
    pub pool: String,

    /// Namespace of the pool [default: the pod's own namespace, or the kubeconfig's].
    #[arg(long, env = "RINGLB_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the load balancer.
    #[arg(long, env = "RINGLB_LISTEN", default_value = "[::]:5000")]
    pub listen: SocketAddr,

    /// Address of the operations port: /metrics, /healthz, /readyz, /ring.
    #[arg(long, env = "RINGLB_OPS_LISTEN", default_value = "[::]:5001")]
    pub ops_listen: SocketAddr,

    /// Upper bound on the number of replicas that /add may reach.
    #[arg(long, env = "RINGLB_MAX_REPLICAS", default_value_t = 100)]
    pub max_replicas: usize,

    #[command(flatten)]
    pub proxy: ProxyArgs,
}

pub async fn run(args: PoolProxyArgs) -> anyhow::Result<()> {
    let shutdown = ringlb_replica::shutdown_signal();
    let proxy_listener = ProxyListeners::bind(args.listen, args.proxy.workers())
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops_listener = ringlb_replica::bind_tokio(args.ops_listen)
        .with_context(|| format!("cannot listen on {} (operations port)", args.ops_listen))?;
    let (client, namespace) = crate::operator::connect(args.namespace.as_deref()).await?;

    // Its per-replica series carry the pool's name.
    let metrics = Arc::new(Metrics::for_pool(&args.pool));
    let publisher = Arc::new(Publisher::new(&RingConfig::default(), metrics.clone()));
    let (reports, reported) = tokio::sync::mpsc::channel(256);
    let admin = Arc::new(SpecAdmin::new(
        kube::Api::namespaced(client.clone(), &namespace),
        &args.pool,
        args.max_replicas,
        metrics.clone(),
        publisher.clone(),
        reports,
    ));

    println!("ringlb: proxy for ServerPool {}/{}", namespace, args.pool);
    println!(
        "{}{}",
        crate::launch::PROXY_LISTENING,
        crate::launch::proxy_url(proxy_listener.local_addr(), args.proxy.tls_cert.is_some())
    );
    println!(
        "ringlb: operations on http://{} (/metrics, /healthz, /readyz, /ring)",
        ops_listener.local_addr()?
    );
    // Without its watch the proxy's ring goes stale: /healthz fails, the kubelet
    // restarts it.
    let watch_ended = Arc::new(AtomicBool::new(false));
    let alive: ops::Liveness = Arc::new({
        let watch_ended = watch_ended.clone();
        move || match watch_ended.load(Ordering::SeqCst) {
            false => Ok(()),
            true => Err("the watch of the pool has stopped".to_owned()),
        }
    });
    let synced = Arc::new(AtomicBool::new(false));
    let serving = Serving::start(
        proxy_listener,
        ops_listener,
        publisher.clone(),
        admin,
        args.proxy.settings(),
        metrics,
        ops::Probes {
            alive,
            ready: ops::Readiness::Synced(synced.clone()),
        },
    )?;
    let watch_task = tokio::spawn({
        let stop = serving.stopped();
        async move {
            let _ends = ops::EndsWith(watch_ended);
            watch::run_reporting_sync(
                client, &namespace, &args.pool, publisher, reported, &synced, stop,
            )
            .await;
        }
    });

    shutdown.await;
    serving.drain().await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, watch_task).await;
    tracing::info!("stopped");
    Ok(())
}
