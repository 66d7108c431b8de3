//! `ringlb up`: wires runtime, supervisor, proxy and operations port together, and
//! shuts them down in order: stop accepting, drain, stop every replica.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cli::UpArgs;
use crate::metrics::Metrics;
use crate::pool::supervisor::PoolSettings;
use crate::pool::{HealthSettings, PoolHandle, Supervisor};
use crate::proxy::ProxySettings;
use crate::proxy::workers::ProxyListeners;
use crate::ring::Algorithm;
use crate::runtime::{ExternalRuntime, ProcessRuntime, Runtime};
use crate::serving::Serving;

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    // First of all: a signal from now on means "shut down in order".
    let shutdown = ringlb_replica::shutdown_signal();
    let ring = args.ring_config().map_err(anyhow::Error::msg)?;
    let mut max_replicas = args.max_replicas;
    if let Some(capacity) = ring.member_capacity().filter(|c| *c < max_replicas) {
        tracing::info!("the ring has room for {capacity} replicas: --max-replicas lowered to that");
        max_replicas = capacity;
    }
    let settings = PoolSettings {
        health: HealthSettings {
            interval: args.heartbeat_interval,
            timeout: args.heartbeat_timeout,
            failure_threshold: args.failure_threshold.max(1),
        },
        max_replicas,
        ring,
    };
    let proxy_settings = args.proxy.settings();

    // Bind first: a port in use is reported before any replica is started.
    let proxy_listener = ProxyListeners::bind(args.listen, args.proxy.workers())
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops_listener = TcpListener::bind(args.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {} (operations port)", args.ops_listen))?;

    let front = Front {
        proxy_listener,
        ops_listener,
        proxy_settings,
        metrics: Arc::new(Metrics::new()),
        shutdown: Box::pin(shutdown),
    };
    if args.external.is_empty() {
        let names = args.initial_names().map_err(anyhow::Error::msg)?;
        let runtime = Arc::new(ProcessRuntime::current_exe(args.replica_host)?);
        serve(runtime, names, settings, front).await
    } else {
        let runtime = Arc::new(ExternalRuntime::new(
            args.external.iter().map(|r| (r.name.clone(), r.addr)),
        ));
        let names = runtime.names();
        if names.len() != args.external.len() {
            anyhow::bail!("a name is given twice in --replica");
        }
        serve(runtime, names, settings, front).await
    }
}

/// Everything on the serving side that does not depend on the runtime.
struct Front {
    proxy_listener: ProxyListeners,
    ops_listener: TcpListener,
    proxy_settings: ProxySettings,
    metrics: Arc<Metrics>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
}

async fn serve<R: Runtime>(
    runtime: Arc<R>,
    names: Vec<crate::replica_name::ReplicaName>,
    settings: PoolSettings,
    front: Front,
) -> anyhow::Result<()> {
    let Front {
        proxy_listener,
        ops_listener,
        proxy_settings,
        metrics,
        shutdown,
    } = front;
    let ring_config = settings.ring.clone();
    let (pool, supervisor) = Supervisor::launch(runtime, names, settings, metrics.clone())
        .await
        .context("cannot start the replicas")?;

    let proxy_addr = proxy_listener.local_addr();
    let ops_addr = ops_listener.local_addr()?;
    announce(&pool, proxy_addr, ops_addr, &ring_config, &proxy_settings);

    let serving = Serving::start(
        proxy_listener,
        ops_listener,
        Arc::new(pool.clone()),
        proxy_settings,
        metrics,
    )?;
    shutdown.await;
    serving.drain().await;
    pool.shutdown().await;
    let _ = supervisor.await;
    tracing::info!("stopped");
    Ok(())
}

/// Stdout gets a few lines a newcomer (and the end-to-end tests) can read.
fn announce(
    pool: &PoolHandle,
    proxy_addr: SocketAddr,
    ops_addr: SocketAddr,
    ring: &crate::ring::RingConfig,
    proxy: &ProxySettings,
) {
    let view = pool.view();
    println!("ringlb: proxy listening on http://{proxy_addr}");
    println!("ringlb: operations on http://{ops_addr} (/metrics, /healthz, /readyz, /ring)");
    let shape = match ring.algorithm {
        Algorithm::Slot => format!("{} slots, {} virtual nodes each", ring.slots, ring.vnodes),
        Algorithm::Point => format!("{} virtual nodes each", ring.vnodes),
        Algorithm::Maglev => format!("{} table entries", ring.slots),
        Algorithm::Rendezvous => "no table".to_owned(),
        Algorithm::RankTable => format!("{} table entries", ring.slots),
    };
    println!(
        "ringlb: ring {} with {} hash ({shape}); request key {}",
        ring.algorithm, ring.hash, proxy.key
    );
    for member in &view.members {
        let pid = member.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
        println!(
            "ringlb: replica {} on {}{pid} ({:?})",
            member.name, member.address, member.health
        );
    }
    println!("ringlb: try `curl http://{proxy_addr}/home`; Ctrl-C stops everything");
}
