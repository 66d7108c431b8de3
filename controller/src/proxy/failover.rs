//! When a failed attempt may be sent to another replica: one policy for both
//! forwarding paths (`connection.rs` and `forward.rs`).
//!
//! A request that may have reached a replica is sent again only if repeating it has
//! no extra effect (RFC 9110 §9.2.2) and the client has seen nothing of a response:
//! a replica that read a `POST` and died may have acted on it, and a second replica
//! would act on it again. nginx follows the same rule (`proxy_next_upstream`
//! never passes a non-idempotent request on once it was sent).

use std::future::Future;
use std::time::Duration;

use super::error::ApiError;
use crate::publish::{Backend, RoutingTable};

/// What the client is told of an attempt cut loose by an ejection.
pub const EJECTED: &str = "taken out of the ring while the request waited for its answer";

/// How one attempt on a replica ended.
pub enum Attempt<T, E> {
    /// The replica's response head arrived.
    Answered(T),
    Failed(E),
    /// The replica was taken out of the ring meanwhile (see `publish::Ejection`):
    /// a failure as far as the exchange got (`Exchange::progress_when_cut`).
    Ejected,
    /// No response head within the request timeout: answered 504, not retried, as
    /// the replica may still be working on it.
    TimedOut,
}

/// Runs one attempt on `backend`, both paths' way: bounded by `timeout`, and
/// abandoned when the replica is ejected. `worker` is the caller's worker index.
pub async fn attempt<T, E>(
    backend: &Backend,
    worker: usize,
    timeout: Duration,
    exchange: impl Future<Output = Result<T, E>>,
) -> Attempt<T, E> {
    tokio::select! {
        biased;
        exchanged = tokio::time::timeout(timeout, exchange) => match exchanged {
            Ok(Ok(answer)) => Attempt::Answered(answer),
            Ok(Err(error)) => Attempt::Failed(error),
            Err(_elapsed) => Attempt::TimedOut,
        },
        _ = backend.ejection.wait(worker) => Attempt::Ejected,
    }
}

/// The replicas a request may try, in order: at most `max_attempts` of its
/// `candidates` (ring order), without those ejected since `table` was loaded. Under a
/// load bound (`table.bound`), candidates at their cap are passed over for the next
/// with room, and tried only after every candidate with room: a hot key spills over to
/// its ring neighbours, and failover still reaches every replica.
pub fn route<I: Iterator<Item = usize>>(
    table: &RoutingTable,
    candidates: I,
    max_attempts: usize,
) -> Route<'_, I> {
    Route {
        table,
        candidates,
        attempts_left: max_attempts,
        full: Vec::new(),
        next_full: 0,
    }
}

pub struct Route<'t, I> {
    table: &'t RoutingTable,
    candidates: I,
    attempts_left: usize,
    /// Under a load bound: candidates passed over because they were full, in ring order.
    full: Vec<usize>,
    next_full: usize,
}

impl<'t, I: Iterator<Item = usize>> Iterator for Route<'t, I> {
    type Item = &'t Backend;

    // Inlined into both forwarding loops: without a bound it is what the loop did before.
    #[inline]
    fn next(&mut self) -> Option<&'t Backend> {
        if self.attempts_left == 0 {
            return None;
        }
        let backends = &self.table.backends;
        let Some(bound) = &self.table.bound else {
            // An ejected candidate uses up an attempt: it is one of the replicas the
            // request was meant for, and it failed.
            while self.attempts_left > 0 {
                let backend = &backends[self.candidates.next()?];
                self.attempts_left -= 1;
                if !backend.ejection.is_ejected() {
                    return Some(backend);
                }
            }
            return None;
        };
        for index in self.candidates.by_ref() {
            let backend = &backends[index];
            if backend.ejection.is_ejected() {
                continue;
            }
            if bound.has_room(index, &backend.in_flight) {
                self.attempts_left -= 1;
                return Some(backend);
            }
            self.full.push(index);
        }
        while let Some(&index) = self.full.get(self.next_full) {
            self.next_full += 1;
            if !backends[index].ejection.is_ejected() {
                self.attempts_left -= 1;
                return Some(&backends[index]);
            }
        }
        None
    }
}

/// What the client is told when no attempt answered: every candidate was ejected
/// meanwhile (`attempts` is 0), or the last failure.
pub fn exhausted(attempts: usize, last: String) -> ApiError {
    if attempts == 0 {
        ApiError::NoReplica
    } else {
        ApiError::UpstreamUnreachable { attempts, last }
    }
}

/// How far a failed attempt got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// No byte of the request reached the replica: the connection could not be made,
    /// or writing the request failed.
    NotSent,
    /// The request was sent, and the replica said it did not process it: an HTTP/2
    /// stream it refused (`REFUSED_STREAM`) or one above the last stream id of its
    /// `GOAWAY` (RFC 9113 §8.7). Nothing of a response has gone to the client.
    Refused,
    /// The request was written; nothing of a response has gone to the client.
    Sent,
    /// Part of the response went to the client: nothing can be sent again, and the
    /// client's connection cannot be used further.
    Responded,
}

/// Methods whose request can be sent again without extra effect (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// Whether a request with `method` whose attempt failed after `progress` may be
/// sent again, to another replica or on another connection.
pub fn may_retry(method: &str, progress: Progress) -> bool {
    match progress {
        // Never processed, whatever the method: sending it elsewhere acts on it once.
        Progress::NotSent | Progress::Refused => true,
        Progress::Sent => is_idempotent(method),
        Progress::Responded => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::publish::{BalanceFactor, Endpoint, InFlight};
    use crate::replica_name::ReplicaName;
    use crate::ring::RingConfig;

    fn table(balance: Option<f64>) -> RoutingTable {
        let members: Vec<Endpoint> = ["A", "B", "C", "D"]
            .iter()
            .zip(1..)
            .map(|(name, port)| Endpoint {
                name: ReplicaName::parse(name).unwrap(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                weight: 1,
                protocol: Default::default(),
            })
            .collect();
        RoutingTable::build(
            &members,
            &RingConfig::default(),
            balance.map(|c| BalanceFactor::new(c).unwrap()),
            &Arc::new(InFlight::default()),
            &Metrics::new(),
        )
    }

    fn names<'t>(route: impl Iterator<Item = &'t Backend>) -> Vec<&'t str> {
        route.map(|b| b.name.as_str()).collect()
    }

    #[test]
    fn without_a_bound_the_route_is_the_candidates_less_the_ejected() {
        let table = table(None);
        let b = &table.backends[1];
        b.ejection.eject();
        // An ejected candidate uses up one of the attempts.
        assert_eq!(
            names(route(&table, [1, 2, 0, 3].into_iter(), 3)),
            ["C", "A"]
        );
        assert_eq!(
            names(route(&table, [0, 1, 2, 3].into_iter(), 9)),
            ["A", "C", "D"]
        );
    }

    #[test]
    fn under_a_bound_full_candidates_come_last_and_ejected_ones_never() {
        let table = table(Some(1.0));
        let bound = table.bound.as_ref().unwrap();
        let load = |i: usize| &table.backends[i].in_flight;
        // 7 in flight: A 4, B 3. Caps are ⌈(7 + 1) / 4⌉ = 2: A and B are full.
        let _charges: Vec<_> = [0, 0, 0, 0, 1, 1, 1]
            .into_iter()
            .map(|i| bound.charge(load(i)))
            .collect();
        assert_eq!(bound.cap(0), 2);
        let order = || [0, 1, 2, 3].into_iter();
        assert_eq!(names(route(&table, order(), 4)), ["C", "D", "A", "B"]);
        // Skipping a full candidate uses up no attempt.
        assert_eq!(names(route(&table, order(), 1)), ["C"]);
        table.backends[2].ejection.eject();
        assert_eq!(names(route(&table, order(), 4)), ["D", "A", "B"]);
    }

    #[test]
    fn the_policy_table() {
        use Progress::*;
        // (method, progress, may be sent again)
        let table = [
            ("GET", NotSent, true),
            ("GET", Sent, true),
            ("GET", Responded, false),
            ("HEAD", Sent, true),
            ("OPTIONS", Sent, true),
            ("TRACE", Sent, true),
            ("PUT", Sent, true),
            ("DELETE", Sent, true),
            ("PUT", Responded, false),
            ("POST", NotSent, true),
            ("POST", Sent, false),
            ("POST", Responded, false),
            // Refused by the replica unprocessed: any method goes on (RFC 9113 §8.7).
            ("POST", Refused, true),
            ("PATCH", Refused, true),
            ("GET", Refused, true),
            ("CONNECT", Refused, true),
            ("PATCH", NotSent, true),
            ("PATCH", Sent, false),
            ("CONNECT", Sent, false),
            // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET.
            ("get", Sent, false),
            ("BREW", Sent, false),
        ];
        for (method, progress, expected) in table {
            assert_eq!(
                may_retry(method, progress),
                expected,
                "{method} after {progress:?}"
            );
        }
    }
}
