//! `ringlb operator`: the control plane in a cluster. Every replica of it campaigns
//! for the Lease; the one that holds it reconciles every `ServerPool` of its
//! namespace (or of every namespace, `--all-namespaces`), the others watch and wait. It serves no traffic (that is
//! `ringlb proxy`), only its operations port: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::leader::{self, LeaseSettings, Timing};
use super::reconciler::{self, Context};
use crate::metrics::Metrics;
use crate::ops;
use crate::pool::Probers;
use crate::serving::DRAIN_TIMEOUT;

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Namespace of the pools [default: the pod's own namespace, or the kubeconfig's].
    #[arg(long, env = "RINGLB_NAMESPACE")]
    pub namespace: Option<String>,

    /// Reconcile the ServerPools of every namespace, not only --namespace's (the
    /// Lease stays in --namespace). Needs the ClusterRole of deploy/all-namespaces/.
    #[arg(long, env = "RINGLB_ALL_NAMESPACES")]
    pub all_namespaces: bool,

    /// Address of the operations port: /metrics, /healthz, /readyz.
    #[arg(long, env = "RINGLB_OPS_LISTEN", default_value = "[::]:5001")]
    pub ops_listen: SocketAddr,

    /// This pod's name: the reporting instance of Events, and who holds the leader lease.
    #[arg(long, env = "RINGLB_POD_NAME")]
    pub pod_name: Option<String>,

    /// The Lease through which the operators of a namespace elect the one that reconciles.
    #[arg(long, env = "RINGLB_LEASE_NAME", default_value = "ringlb-operator")]
    pub lease_name: String,

    /// How long a standby waits, from when it saw the Lease last change, before it
    /// takes the Lease: the longest takeover after the leader died. Whole seconds
    /// (written to the Lease as leaseDurationSeconds).
    #[arg(long, env = "RINGLB_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps writing without a successful renewal of the Lease;
    /// shorter than the lease duration, so that it has stopped before a standby may
    /// take over.
    #[arg(long, env = "RINGLB_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,

    /// How often the leader renews the Lease and a standby looks at it; shorter than
    /// the renew deadline.
    #[arg(long, env = "RINGLB_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_period: Duration,
}

impl OperatorArgs {
    /// The election's timing, refused with the reason when it could let two lead.
    pub fn timing(&self) -> anyhow::Result<Timing> {
        Timing::new(self.lease_duration, self.renew_deadline, self.retry_period).context(
            "invalid leader election timing (--lease-duration, --renew-deadline, --retry-period)",
        )
    }
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let timing = args.timing()?;
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
    let lease = LeaseSettings::new(&args.lease_name, &namespace, &identity, timing);
    let (stop_campaign, campaign_stopped) = oneshot::channel::<()>();
    let (leadership, elector) = leader::campaign(client.clone(), lease, metrics.clone(), async {
        let _ = campaign_stopped.await;
    });
    let ctx = Arc::new(Context::new(
        client,
        args.pod_name.clone(),
        Probers::real(),
        metrics.clone(),
        leadership,
    ));

    let watched = (!args.all_namespaces).then(|| namespace.clone());
    match &watched {
        Some(namespace) => {
            println!(
                "ringlb: operator for the ServerPools of namespace {namespace}, as {identity}"
            );
        }
        None => println!(
            "ringlb: operator for the ServerPools of every namespace (Lease in {namespace}), as {identity}"
        ),
    }
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
            reconciler::run(ctx, watched.as_deref(), stop).await;
        }
    });

    shutdown.await;
    tracing::info!("shutting down: the reconcile passes stop first");
    // Stops the controller (and the ops port): no pass starts any more.
    let _ = stop.send(true);
    step_down_after(controller, stop_campaign, elector, DRAIN_TIMEOUT).await;
    // The pods stay: they belong to their pools, not to this process.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, ops).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM's order, once the controller has been told to stop: the Lease is released
/// only after the controller has ended (its pass in progress included), since a
/// standby may take a released Lease, and write, at once. A controller that does not
/// end within `drain` may still write: then no release; the election stops (this
/// process stops leading at once, so no write of it starts any more) and the Lease
/// expires by itself, a lease duration after its last renewal. Returns whether the
/// controller ended.
async fn step_down_after<T>(
    controller: JoinHandle<T>,
    stop_campaign: oneshot::Sender<()>,
    elector: JoinHandle<()>,
    drain: Duration,
) -> bool {
    let ended = tokio::time::timeout(drain, controller).await.is_ok();
    if ended {
        tracing::info!("the controller has stopped: stepping down as leader");
        let _ = stop_campaign.send(());
        let _ = tokio::time::timeout(drain, elector).await;
    } else {
        tracing::warn!(
            "a reconcile pass did not end within {drain:?}: the leader lease is not released, it expires by itself"
        );
        elector.abort();
        // Aborted once dropped: its drop ends the leadership.
        let _ = elector.await;
    }
    ended
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::Value;

    use super::*;
    use crate::operator::fixtures::FakeApiServer;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

    fn holder(api: &FakeApiServer) -> Value {
        let lease = api.get(LEASES, "ringlb-operator").unwrap();
        lease["spec"]
            .get("holderIdentity")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// An elected operator's election, against the stateful fake API server.
    async fn elected(
        api: &FakeApiServer,
    ) -> (leader::Leadership, oneshot::Sender<()>, JoinHandle<()>) {
        let (stop_campaign, stopped) = oneshot::channel::<()>();
        let lease = LeaseSettings::new("ringlb-operator", "default", "op-a", Timing::default());
        let (leadership, elector) =
            leader::campaign(api.client(), lease, Arc::new(Metrics::new()), async {
                let _ = stopped.await;
            });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(leadership.is_leader());
        (leadership, stop_campaign, elector)
    }

    #[tokio::test(start_paused = true)]
    async fn on_sigterm_the_lease_is_released_only_once_the_pass_in_progress_has_ended() {
        let api = FakeApiServer::default();
        let (leadership, stop_campaign, elector) = elected(&api).await;
        // The pass in progress ends 3 s after the stop; what it sees at its last write.
        let seen = Arc::new(Mutex::new(None));
        let controller = tokio::spawn({
            let (api, leadership, seen) = (api.clone(), leadership.clone(), seen.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                *seen.lock().unwrap() = Some((leadership.is_leader(), holder(&api)));
            }
        });
        let ended = step_down_after(controller, stop_campaign, elector, DRAIN_TIMEOUT).await;
        assert!(ended);
        assert_eq!(
            seen.lock().unwrap().take(),
            Some((true, Value::from("op-a"))),
            "the pass's last write came while the lease was still held"
        );
        assert_eq!(holder(&api), Value::Null, "released after the pass");
        assert!(!leadership.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn on_sigterm_a_pass_that_does_not_end_keeps_the_lease_from_release_and_stops_leading() {
        let api = FakeApiServer::default();
        let (leadership, stop_campaign, elector) = elected(&api).await;
        let controller = tokio::spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        let ended = step_down_after(controller, stop_campaign, elector, DRAIN_TIMEOUT).await;
        assert!(!ended);
        assert_eq!(started.elapsed(), DRAIN_TIMEOUT);
        assert!(!leadership.is_leader(), "its next write is refused");
        assert_eq!(
            holder(&api),
            Value::from("op-a"),
            "not released: it expires"
        );
    }
}
