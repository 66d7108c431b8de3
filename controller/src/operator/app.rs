//! `ringlb operator`: the control plane in a cluster. Every replica of it campaigns
//! for the Lease; the one that holds it reconciles every `ServerPool` of its
//! namespace, the others watch and wait. It serves no traffic (that is
//! `ringlb proxy`), only its operations port: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::leader::{self, LeaseSettings};
use super::reconciler::{self, Context};
use crate::metrics::Metrics;
use crate::ops;
use crate::pool::health::HeartbeatProber;
use crate::serving::DRAIN_TIMEOUT;

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Namespace of the pools [default: the pod's own namespace, or the kubeconfig's].
    #[arg(long, env = "RINGLB_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the operations port: /metrics, /healthz, /readyz.
    #[arg(long, env = "RINGLB_OPS_LISTEN", default_value = "[::]:5001")]
    pub ops_listen: SocketAddr,

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
    let ops_listener = ringlb_replica::bind_tokio(args.ops_listen)
        .with_context(|| format!("cannot listen on {} (operations port)", args.ops_listen))?;

    let (client, namespace) = super::connect(args.namespace.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
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
        leadership,
    ));

    println!("ringlb: operator for the ServerPools of namespace {namespace}, as {identity}");
    println!(
        "ringlb: operations on http://{} (/metrics, /healthz, /readyz)",
        ops_listener.local_addr()?
    );

    // /healthz fails when the controller has stopped or a pass hangs: the kubelet
    // restarts the pod (a standby's controller runs too, so this holds for both).
    let controller_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let alive: ops::Liveness = Arc::new({
        let (ctx, controller_ended) = (ctx.clone(), controller_ended.clone());
        move || {
            if controller_ended.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("the controller has stopped".to_owned());
            }
            match ctx.longest_pass() {
                Some(running) if running > reconciler::STUCK_PASS => {
                    Err(format!("a reconcile pass has been running for {running:?}"))
                }
                _ => Ok(()),
            }
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let ops = tokio::spawn(
        axum::serve(ops_listener, ops::process_router(metrics, alive))
            .with_graceful_shutdown(stopped())
            .into_future(),
    );
    let controller = tokio::spawn({
        let stop = stopped();
        async move {
            let _ends = ops::EndsWith(controller_ended);
            reconciler::run(ctx, &namespace, stop).await
        }
    });

    shutdown.await;
    tracing::info!("shutting down: stepping down as leader");
    // Step down first: the lease is free at once for a standby, which reads it every
    // half second (measured on kubesim: taken 0.84 s after SIGTERM, against the lease
    // duration and more after a crash).
    let _ = stop_campaign.send(());
    let _ = stop.send(true);
    // The pods stay: they belong to their pools, not to this process.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, controller).await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, elector).await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, ops).await;
    tracing::info!("stopped");
    Ok(())
}
