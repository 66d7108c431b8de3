//! The proxy's serving threads.
//!
//! Each worker is a thread with its own single-threaded Tokio runtime, its own
//! listening socket on the shared port (`SO_REUSEPORT`: the kernel spreads new
//! connections over them) and its own pool of upstream connections. A request is
//! then handled start to finish on one thread: no cross-thread wake-ups, which
//! profiling showed to be the largest cost of a shared multi-threaded runtime
//! (the nginx worker model, for the same reason).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use super::connection::{self, StopSignal};
use super::error::ApiError;
use super::{Proxy, router, tls};

/// The proxy's listening sockets: one per worker, all on the same address.
pub struct ProxyListeners {
    sockets: Vec<std::net::TcpListener>,
    addr: SocketAddr,
}

impl ProxyListeners {
    /// Binds `workers` sockets on `addr`. With port 0 the first picks a free port
    /// and the others join it.
    pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Self> {
        let first = reuseport_listener(addr)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers.max(1) {
            sockets.push(reuseport_listener(addr)?);
        }
        Ok(Self { sockets, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    ringlb_replica::bind_tcp(addr, true)
}

/// Running workers; [`ProxyWorkers::drain`] waits for them after `stop` is set.
pub struct ProxyWorkers {
    done: Vec<oneshot::Receiver<()>>,
}

/// Starts one worker per listener. `make_proxy` runs on each worker thread (it is
/// given the worker's index), so the upstream connection pool it creates belongs to
/// that thread's runtime. At most `max_connections` client connections are open at
/// once over all workers.
pub fn spawn(
    listeners: ProxyListeners,
    make_proxy: Arc<dyn Fn(usize) -> Proxy + Send + Sync>,
    max_connections: usize,
    stop: watch::Receiver<bool>,
) -> std::io::Result<ProxyWorkers> {
    let mut done = Vec::new();
    let open = Arc::new(OpenConnections {
        count: AtomicUsize::new(0),
        max: max_connections,
    });
    for (i, socket) in listeners.sockets.into_iter().enumerate() {
        let (finished, finished_rx) = oneshot::channel();
        let make_proxy = make_proxy.clone();
        let stop = stop.clone();
        let open = open.clone();
        std::thread::Builder::new()
            .name(format!("ringlb-proxy-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "cannot start a proxy worker");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => serve(listener, Arc::new(make_proxy(i)), open, stop).await,
                        Err(error) => tracing::error!(%error, "cannot listen in a proxy worker"),
                    }
                });
                let _ = finished.send(());
            })?;
        done.push(finished_rx);
    }
    Ok(ProxyWorkers { done })
}

/// Accepts connections until `stop`, then waits for the open ones to finish: each
/// closes after its current request (see `connection::serve`).
async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    open: Arc<OpenConnections>,
    mut stop: watch::Receiver<bool>,
) {
    let router = router(proxy.clone());
    let connections = TaskTracker::new();
    // One per open connection; those of closed connections are pruned when the
    // vector is full, so that pruning costs O(1) per connection.
    let mut stop_connections: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = open.take() else {
                    proxy.metrics.refused_connections.inc();
                    refuse(stream, open.max, proxy.tls.is_some());
                    continue;
                };
                // Responses are written whole; Nagle's algorithm would only delay them.
                let _ = stream.set_nodelay(true);
                if stop_connections.len() == stop_connections.capacity() {
                    stop_connections.retain(|sender| !sender.is_closed());
                }
                let (stop_connection, stop_signal) = StopSignal::new();
                stop_connections.push(stop_connection);
                let (proxy, router) = (proxy.clone(), router.clone());
                if proxy.tls.is_some() {
                    connections.spawn(async move {
                        tls::serve(stream, peer, proxy, router, stop_signal).await;
                        drop(slot);
                    });
                } else {
                    connections.spawn(async move {
                        connection::serve(stream, peer, proxy, router, stop_signal).await;
                        drop(slot);
                    });
                }
            }
            Err(error) => {
                // Out of file descriptors, most likely: connections that close free
                // some. Retrying at once would spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    // Dropping the senders stops every connection.
    drop(stop_connections);
    connections.close();
    connections.wait().await;
}

/// Client connections open in this process, over all workers.
struct OpenConnections {
    count: AtomicUsize,
    max: usize,
}

/// One open connection's place under the cap; given back when dropped.
struct Slot(Arc<OpenConnections>);

impl OpenConnections {
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let before = self.count.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers a connection above the cap with 503 and closes it, without a task: the
/// answer fits the empty send buffer of a new socket, so one non-blocking write does.
/// Under TLS it is only closed: a plain-text answer would reach the client as a broken
/// handshake, and a TLS one would spend a handshake on a connection refused for load.
/// An h2c client, which the refusal comes before, reads the HTTP/1.1 answer as a
/// failed connection.
fn refuse(stream: tokio::net::TcpStream, max: usize, tls: bool) {
    if tls {
        return;
    }
    let mut out = Vec::new();
    ApiError::TooManyConnections(max).write_http1(false, &mut out);
    if let Ok(stream) = stream.into_std() {
        let _ = (&stream).write(&out);
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

/// The default cap on client connections: 10,000, or what the file descriptor limit
/// leaves room for (each client connection may hold a replica connection too). The
/// soft limit is raised to the hard one first, as nginx's `worker_rlimit_nofile` does.
pub fn default_max_connections() -> usize {
    const DEFAULT: usize = 10_000;
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return DEFAULT;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        let room = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
        DEFAULT.min(room.saturating_sub(128) / 2).max(1)
    }
    #[cfg(not(unix))]
    DEFAULT
}

impl ProxyWorkers {
    /// Waits until every worker has drained its connections, at most `timeout`.
    /// Returns false if some were still busy.
    pub async fn drain(self, timeout: Duration) -> bool {
        let all = futures::future::join_all(self.done);
        tokio::time::timeout(timeout, all).await.is_ok()
    }
}

/// The default number of workers: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
