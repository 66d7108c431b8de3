//! The one forwarding loop: a request goes to the replicas its route names, one after
//! the other, until one answers or the failover policy (`failover.rs`) says stop.
//!
//! Each forwarding path says only how it sends a request to one replica and how far a
//! failed attempt got, through [`Exchange`] (Pingora's `ProxyHttp` splits a proxy the
//! same way: the loop is the framework's, the exchange the path's). The fast path
//! (`connection.rs`) writes bytes on a pooled connection; the general path
//! (`forward.rs`) sends through hyper's client. What happens around each attempt —
//! routing, the load bound's count, the timeout and ejection, counting, reporting a
//! failed replica, the answer when none answered — is here, once.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use super::Proxy;
use super::error::ApiError;
use super::failover::{self, Attempt, Progress};
use crate::publish::{Backend, Charge, InFlight, RoutingTable};

/// How one forwarding path sends one request to one replica.
pub trait Exchange {
    /// What a replica's answer is, as far as the attempt reads it (a response head).
    type Answer;
    type Error: Display;

    /// Sends the request to `backend` and waits for its answer.
    fn send(
        &mut self,
        backend: &Backend,
    ) -> impl Future<Output = Result<Self::Answer, Self::Error>>;

    /// How far a failed exchange got, for the failover policy.
    fn progress(error: &Self::Error) -> Progress;

    /// How far an attempt got when it was cut loose (its replica ejected while the
    /// attempt waited), as far as the exchange can tell: by default, perhaps sent.
    fn progress_when_cut(&self) -> Progress {
        Progress::Sent
    }

    /// Whether the request can be sent again: false once a body streamed to a replica
    /// (not buffered) was taken, whatever the policy says of its progress.
    fn can_resend(&self) -> bool {
        true
    }
}

/// The replica that answered, and its answer.
pub struct Answered<'t, A> {
    pub backend: &'t Backend,
    pub answer: A,
    /// The request counted in flight on `backend` (bounded loads only): held until
    /// the response is relayed.
    pub charge: Option<Charge<&'t InFlight>>,
}

/// Sends a request with `method` to the replicas of `candidates` (ring order, see
/// `failover::route`) through `exchange`, until one answers, each attempt given
/// `timeout` for its answer. The error is what the client is told: the replica did not
/// answer in time, or none could be reached.
pub async fn run<'t, X: Exchange>(
    proxy: &Proxy,
    table: &'t RoutingTable,
    candidates: impl Iterator<Item = usize>,
    method: &str,
    timeout: Duration,
    exchange: &mut X,
) -> Result<Answered<'t, X::Answer>, ApiError> {
    let mut attempts = 0;
    let mut last_error = String::new();
    for backend in failover::route(table, candidates, proxy.settings.max_attempts) {
        attempts += 1;
        let charge = table.bound.as_ref().map(|b| b.charge(&backend.in_flight));
        let started = Instant::now();
        let sent = failover::attempt(backend, proxy.worker, timeout, exchange.send(backend)).await;
        let retry = match sent {
            Attempt::Answered(answer) => {
                backend.latency.observe(started.elapsed().as_secs_f64());
                backend.responses.inc();
                return Ok(Answered {
                    backend,
                    answer,
                    charge,
                });
            }
            Attempt::Failed(error) => {
                let progress = X::progress(&error);
                let retry = failover::may_retry(method, progress) && exchange.can_resend();
                last_error = if progress == Progress::Refused {
                    // The replica answered, declining this stream (at its stream limit,
                    // or going away with GOAWAY): alive, so not reported. A report
                    // would take it out of the ring and cut loose the requests still
                    // waiting on it, which it may well be serving.
                    stream_refused(backend, &error, retry)
                } else {
                    attempt_failed(proxy, backend, &error, retry)
                };
                retry
            }
            Attempt::Ejected => {
                // An attempt that never had a connection sent nothing: it goes on
                // whatever its method (a replica killed under load is ejected while
                // new requests to it are still connecting).
                let progress = exchange.progress_when_cut();
                let retry = failover::may_retry(method, progress) && exchange.can_resend();
                last_error = attempt_failed(proxy, backend, &failover::EJECTED, retry);
                retry
            }
            Attempt::TimedOut => {
                backend.failures.inc();
                return Err(ApiError::UpstreamTimeout(backend.name.to_string()));
            }
        };
        if !retry {
            break;
        }
    }
    proxy.metrics.unroutable.inc();
    Err(failover::exhausted(attempts, last_error))
}

/// Records a stream `backend` refused unprocessed: counted, not reported.
fn stream_refused(backend: &Backend, error: &dyn Display, retry: bool) -> String {
    backend.failures.inc();
    tracing::debug!(replica = %backend.name, %error, retry, "stream refused");
    format!("{}: {error}", backend.name)
}

/// Records a failed attempt on `backend`: counted, and reported to the pool, which
/// checks the replica at once. `retry` tells whether the request goes on to the next
/// replica (the failover policy's answer). Returns what the client is told if no
/// replica answers.
fn attempt_failed(proxy: &Proxy, backend: &Backend, error: &dyn Display, retry: bool) -> String {
    backend.failures.inc();
    proxy.admin.report_unreachable(&backend.name);
    tracing::debug!(replica = %backend.name, %error, retry, "forwarding failed");
    format!("{}: {error}", backend.name)
}
