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
    /// treated as a failure after the request was sent.
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

/// The replicas a request may try, in ring order: at most `max_attempts` of the
/// candidates, without those ejected since `table` was loaded.
pub fn live_backends(
    table: &RoutingTable,
    candidates: impl Iterator<Item = usize>,
    max_attempts: usize,
) -> impl Iterator<Item = &Backend> {
    candidates
        .take(max_attempts)
        .map(|index| &table.backends[index])
        .filter(|backend| !backend.ejection.is_ejected())
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
        Progress::NotSent => true,
        Progress::Sent => is_idempotent(method),
        Progress::Responded => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
