//! Forwarding: key → ring snapshot → replica, with failover to the next distinct
//! replica of the ring when one cannot be reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};

use super::error::ApiError;
use super::failover::{self, Attempt, Progress};
use super::{Proxy, wire};
use crate::publish::{Backend, Charge, InFlight};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    match forward_request(&proxy, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward_request(proxy: &Proxy, request: Request) -> Result<Response, ApiError> {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (mut parts, body) = request.into_parts();
    // Buffered (up to a limit) so that a failed attempt can be replayed on the next
    // replica; nginx buffers request bodies by default for the same reason.
    let body = read_body(
        body,
        proxy.settings.max_body_bytes,
        proxy.settings.client_body_timeout,
    )
    .await?;

    let table = proxy.publisher.table();
    if table.backends.is_empty() {
        proxy.metrics.unroutable.inc();
        return Err(ApiError::NoReplica);
    }
    // The failover order depends only on the key's hash: computed before the
    // headers are taken over for the upstream request, without copying them.
    let candidates = {
        let key = proxy.settings.key.extract(&parts, client);
        table.ring.candidates(&key)
    };
    let mut headers = upstream_headers(std::mem::take(&mut parts.headers), client);
    // An HTTP/2 request names its host in `:authority`, not `Host` (RFC 9113 §8.3.1):
    // the replica is told it as an HTTP/1.1 client would tell it.
    if let Some(authority) = parts.uri.authority()
        && !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());

    let mut attempts = 0;
    let mut last_error = String::new();
    for backend in failover::route(&table, candidates, proxy.settings.max_attempts) {
        attempts += 1;
        // Counted in flight until the response body is relayed (bounded loads only).
        let in_flight = table
            .bound
            .as_ref()
            .map(|b| b.charge_owned(&backend.in_flight));
        let uri = Uri::builder()
            .scheme("http")
            .authority(backend.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ApiError::BadField(format!("cannot forward this URI: {e}")))?;
        let mut upstream = http::Request::new(Full::new(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.headers_mut() = headers.clone();

        let started = Instant::now();
        let sent = failover::attempt(
            backend,
            proxy.worker,
            proxy.settings.request_timeout,
            proxy.client.request(upstream),
        )
        .await;
        let (progress, error) = match sent {
            Attempt::Answered(response) => {
                backend.latency.observe(started.elapsed().as_secs_f64());
                backend.responses.inc();
                return respond(response, parts.uri.path(), in_flight).await;
            }
            // hyper's client sends a request again by itself only when it never left
            // (a pooled connection found closed before the write).
            Attempt::Failed(error) if error.is_connect() => (Progress::NotSent, error.to_string()),
            Attempt::Failed(error) => (Progress::Sent, error.to_string()),
            Attempt::Ejected => (Progress::Sent, failover::EJECTED.to_owned()),
            Attempt::TimedOut => {
                backend.failures.inc();
                return Err(ApiError::UpstreamTimeout(backend.name.to_string()));
            }
        };
        let retry = failover::may_retry(parts.method.as_str(), progress);
        last_error = attempt_failed(proxy, backend, &error, retry);
        if !retry {
            break;
        }
    }
    proxy.metrics.unroutable.inc();
    Err(failover::exhausted(attempts, last_error))
}

/// Reads a request body of at most `limit` bytes, each piece within `between_reads`
/// of the last (nginx: client_body_timeout).
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    between_reads: std::time::Duration,
) -> Result<Bytes, ApiError> {
    // Most proxied requests (GET, HEAD) have no body: nothing to wait for or copy.
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    let mut body = Limited::new(body, limit);
    let mut collected = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(between_reads, body.frame())
            .await
            .map_err(|_| ApiError::RequestTimeout)?;
        match frame {
            None => return Ok(collected.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    collected.extend_from_slice(&data);
                }
            }
            Some(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::BodyTooLarge(limit));
            }
            Some(Err(error)) => return Err(ApiError::BodyUnreadable(error.to_string())),
        }
    }
}

/// Turns the replica's response into ours. A 404 from the replicas means the path
/// is not theirs: the contract answers that with a 400 naming the path.
async fn respond(
    response: http::Response<hyper::body::Incoming>,
    path: &str,
    in_flight: Option<Charge<Arc<InFlight>>>,
) -> Result<Response, ApiError> {
    let (mut parts, body) = response.into_parts();
    if parts.status == StatusCode::NOT_FOUND {
        // Read the small error body so the connection can be reused.
        let _ = Limited::new(body, 64 * 1024).collect().await;
        return Err(ApiError::UnknownEndpoint(path.to_owned()));
    }
    strip_hop_by_hop(&mut parts.headers);
    // The body streams after this returns: the request stays counted until it is dropped.
    let body = body.map_frame(move |frame| {
        let _counted = &in_flight;
        frame
    });
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Records a failed attempt on `backend`: counted, and reported to the pool, which
/// checks the replica at once. `retry` tells whether the request goes on to the next
/// replica (the failover policy's answer). Returns what the client is told if no replica answers.
pub(super) fn attempt_failed(
    proxy: &Proxy,
    backend: &Backend,
    error: &dyn std::fmt::Display,
    retry: bool,
) -> String {
    backend.failures.inc();
    proxy.admin.report_unreachable(&backend.name);
    tracing::debug!(replica = %backend.name, %error, retry, "forwarding failed");
    format!("{}: {error}", backend.name)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in &listed {
        headers.remove(name);
    }
    for name in wire::HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request headers a replica sees: ours minus hop-by-hop, plus the client in
/// `X-Forwarded-For` (appended to what earlier proxies wrote).
fn upstream_headers(mut headers: HeaderMap, client: Option<SocketAddr>) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    if let Some(client) = client {
        let ip = client.ip().to_canonical().to_string();
        let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_client_is_appended() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        incoming.insert("x-secret", "1".parse().unwrap());
        incoming.insert("keep-alive", "timeout=5".parse().unwrap());
        incoming.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        incoming.insert(header::HOST, "example".parse().unwrap());
        incoming.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let out = upstream_headers(incoming, Some(SocketAddr::from(([127, 0, 0, 9], 1))));
        assert!(out.get(header::CONNECTION).is_none());
        assert!(out.get("x-secret").is_none());
        assert!(out.get("keep-alive").is_none());
        assert!(out.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(out.get(header::HOST).unwrap(), "example");
        assert_eq!(out.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.9");
    }
}
