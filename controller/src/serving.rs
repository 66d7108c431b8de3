//! The two ports of a running load balancer, started and drained the same way by
//! `ringlb up` and `ringlb proxy`: the proxy on its per-core workers and the
//! operations port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::ops;
use crate::pool::PoolAdmin;
use crate::proxy::workers::{self, ProxyListeners, ProxyWorkers};
use crate::proxy::{Proxy, ProxySettings, tls};
use crate::publish::Publisher;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Serving {
    stop: watch::Sender<bool>,
    proxy: ProxyWorkers,
    ops: JoinHandle<std::io::Result<()>>,
}

impl Serving {
    pub fn start(
        proxy_listener: ProxyListeners,
        ops_listener: TcpListener,
        publisher: Arc<Publisher>,
        admin: Arc<dyn PoolAdmin>,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        probes: ops::Probes,
    ) -> std::io::Result<Self> {
        let (stop, _) = watch::channel(false);
        // Loaded once, here, so that a bad certificate stops the start with its reason.
        let tls = settings.tls.as_ref().map(tls::acceptor).transpose()?;
        let make_proxy = {
            let publisher = publisher.clone();
            let metrics = metrics.clone();
            let settings = settings.clone();
            Arc::new(move |worker| {
                Proxy::new(
                    publisher.clone(),
                    admin.clone(),
                    settings.clone(),
                    metrics.clone(),
                    worker,
                )
                .with_tls(tls.clone())
            })
        };
        let max_connections = settings.max_connections;
        let proxy = workers::spawn(
            proxy_listener,
            make_proxy,
            max_connections,
            stop.subscribe(),
        )?;
        let ops = tokio::spawn(
            axum::serve(ops_listener, ops::router(publisher, metrics, probes))
                .with_graceful_shutdown(stopped(stop.subscribe()))
                .into_future(),
        );
        Ok(Self { stop, proxy, ops })
    }

    /// Resolves once [`Serving::drain`] has begun: for other tasks that stop with the ports.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        stopped(self.stop.subscribe())
    }

    /// Stops accepting and waits (at most [`DRAIN_TIMEOUT`]) for in-flight requests.
    pub async fn drain(self) {
        tracing::info!("shutting down: draining in-flight requests");
        let _ = self.stop.send(true);
        if !self.proxy.drain(DRAIN_TIMEOUT).await {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
        self.ops.abort();
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
