//! Forwarding: key → ring snapshot → replica, with failover to the next distinct
//! replica of the ring when one cannot be reached.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use super::Proxy;
use super::error::ApiError;
use super::exchange::{self, Exchange};
use super::failover::Progress;
use super::replay::Replay;
use crate::publish::{Backend, Charge, InFlight};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client_ip = client.map(ClientIp::new);
    answer(&proxy, request, client, client_ip.as_ref()).await
}

/// A stream of the HTTP/2 front door, forwarded without the router (`h2.rs`: the
/// router takes the admin paths and `CONNECT`): answered as the router's fallback,
/// [`forward`], answers it, down to what axum adds to a fallback's response.
pub(super) async fn forward_stream(
    proxy: &Proxy,
    request: http::Request<hyper::body::Incoming>,
    client: SocketAddr,
    client_ip: &ClientIp,
) -> Response {
    let head = request.method() == Method::HEAD;
    let mut response = answer(proxy, request.map(Body::new), Some(client), Some(client_ip)).await;
    // What axum's router does to a top-level route's response (`RouteFuture`): a
    // `Content-Length` from an exact size, then no body for HEAD.
    if !response.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(size) = axum::body::HttpBody::size_hint(response.body()).exact()
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if head {
        *response.body_mut() = Body::empty();
    }
    response
}

/// The client's address as `X-Forwarded-For` gives it: formatted once per connection.
#[derive(Clone)]
pub(super) struct ClientIp(Option<HeaderValue>);

impl ClientIp {
    pub(super) fn new(client: SocketAddr) -> Self {
        Self(HeaderValue::from_str(&client.ip().to_canonical().to_string()).ok())
    }
}

async fn answer(
    proxy: &Proxy,
    request: Request,
    client: Option<SocketAddr>,
    client_ip: Option<&ClientIp>,
) -> Response {
    // A gRPC client is told the proxy's own errors as gRPC statuses.
    let grpc = super::grpc::is_grpc(request.headers());
    match forward_request(proxy, request, client, client_ip, grpc).await {
        Ok(response) => response,
        Err(error) if grpc => error.into_grpc_response(),
        Err(error) => error.into_response(),
    }
}

async fn forward_request(
    proxy: &Proxy,
    request: Request,
    client: Option<SocketAddr>,
    client_ip: Option<&ClientIp>,
    grpc: bool,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let client_h2 = parts.version == Version::HTTP_2;
    // A gRPC call's deadline bounds the wait for its answer (the smaller of it and the
    // request timeout), and the answer's end.
    let deadline = grpc
        .then(|| super::grpc::timeout(&parts.headers))
        .flatten()
        .map(|timeout| (timeout, tokio::time::Instant::now() + timeout));
    let timeout = deadline.map_or(proxy.settings.request_timeout, |(timeout, _)| {
        timeout.min(proxy.settings.request_timeout)
    });
    // Buffered (up to a limit) so that a failed attempt can be replayed on the next
    // replica; nginx buffers request bodies by default for the same reason. A gRPC
    // call to replicas spoken to in h2c streams instead, both ways (a client stream
    // may never end before its answer begins), and can be sent again while what was
    // taken of it fits in the same limit.
    let streams =
        grpc && (proxy.publisher.table().backends.iter()).all(|b| b.protocol.h2c_for(client_h2));
    let body = if streams {
        RequestBody::Streamed(Replay::new(body, proxy.settings.max_body_bytes))
    } else {
        RequestBody::Buffered(
            read_body(
                body,
                proxy.settings.max_body_bytes,
                proxy.settings.client_body_timeout,
            )
            .await?,
        )
    };

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
    // A gRPC server may insist on `te: trailers` (RFC 9113 §8.2.2 lets HTTP/2 keep
    // exactly that one hop-by-hop header): kept for h2c replicas.
    let te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let mut headers = forwarded_headers(std::mem::take(&mut parts.headers), client_ip);
    // An HTTP/2 request names its host in `:authority`, not `Host` (RFC 9113 §8.3.1):
    // the replica is told it as an HTTP/1.1 client would tell it.
    if let Some(authority) = parts.uri.authority()
        && !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    let mut exchange = HyperExchange {
        client: &proxy.client,
        h2c: &proxy.h2c,
        client_h2,
        te_trailers,
        method: &parts.method,
        path_and_query,
        headers,
        body,
    };
    let method = parts.method.as_str();
    let answered = exchange::run(proxy, &table, candidates, method, timeout, &mut exchange).await;
    if let RequestBody::Streamed(replay) = &exchange.body {
        // Answered or given up: the body goes to no other replica.
        replay.stop_recording();
    }
    let answered = answered?;
    // The body streams after this returns: the request stays counted until it is
    // dropped (bounded loads only).
    let in_flight = (answered.charge)
        .zip(table.bound.as_ref())
        .map(|(charge, bound)| bound.keep(charge, &answered.backend.in_flight));
    let response = respond(answered.answer, parts.uri.path(), in_flight).await?;
    Ok(match deadline {
        Some((_, at)) => {
            let late = ApiError::UpstreamTimeout(answered.backend.name.to_string());
            response.map(|body| Body::new(super::grpc::Deadline::new(body, at, late)))
        }
        None => response,
    })
}

/// A request body as the general path forwards it.
enum RequestBody {
    /// Read whole (within `--max-body`): sent again as often as needed.
    Buffered(Bytes),
    /// Streamed to an h2c replica, sent again while it fits (`replay.rs`).
    Streamed(Replay),
}

/// The general path's exchange: the request sent through hyper's pooled client, in
/// HTTP/1.1 or in h2c as the replica's protocol says.
struct HyperExchange<'a> {
    client: &'a Client<HttpConnector, Full<Bytes>>,
    h2c: &'a Client<HttpConnector, Body>,
    /// The request arrived in HTTP/2 (for `UpstreamProtocol::Auto`).
    client_h2: bool,
    te_trailers: bool,
    method: &'a Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: RequestBody,
}

#[derive(Debug, thiserror::Error)]
enum HyperExchangeError {
    /// Cannot happen: scheme, authority and path are all set.
    #[error("cannot forward this URI: {0}")]
    Uri(#[from] http::uri::InvalidUriParts),
    /// Cannot happen: a body is streamed only when every replica takes h2c.
    #[error("a streamed request body goes to h2c replicas only")]
    NotH2c,
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl Exchange for HyperExchange<'_> {
    type Answer = http::Response<hyper::body::Incoming>;
    type Error = HyperExchangeError;

    async fn send(&mut self, backend: &Backend) -> Result<Self::Answer, HyperExchangeError> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(backend.authority.clone());
        uri.path_and_query = Some(self.path_and_query.clone());
        let uri = Uri::from_parts(uri)?;
        if !backend.protocol.h2c_for(self.client_h2) {
            let RequestBody::Buffered(body) = &self.body else {
                return Err(HyperExchangeError::NotH2c);
            };
            let mut upstream = http::Request::new(Full::new(body.clone()));
            *upstream.method_mut() = self.method.clone();
            *upstream.uri_mut() = uri;
            *upstream.headers_mut() = self.headers.clone();
            return Ok(self.client.request(upstream).await?);
        }
        let body = match &self.body {
            RequestBody::Buffered(body) => Body::from(body.clone()),
            RequestBody::Streamed(replay) => replay.reader(),
        };
        let mut upstream = http::Request::new(body);
        *upstream.method_mut() = self.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_2;
        let headers = upstream.headers_mut();
        *headers = self.headers.clone();
        // `:authority` says it in HTTP/2.
        headers.remove(header::HOST);
        if self.te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        Ok(self.h2c.request(upstream).await?)
    }

    fn progress(error: &HyperExchangeError) -> Progress {
        match error {
            HyperExchangeError::Uri(_) | HyperExchangeError::NotH2c => Progress::NotSent,
            // hyper's client sends a request again by itself only when it never left
            // (a pooled connection found closed before the write).
            HyperExchangeError::Client(error) if error.is_connect() => Progress::NotSent,
            HyperExchangeError::Client(error) if super::grpc::refused(error) => Progress::Refused,
            HyperExchangeError::Client(_) => Progress::Sent,
        }
    }

    fn can_resend(&self) -> bool {
        match &self.body {
            RequestBody::Buffered(_) => true,
            RequestBody::Streamed(replay) => replay.can_resend(),
        }
    }
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

/// The hop-by-hop headers (`wire::HOP_BY_HOP`), as header names: compared, not parsed.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names, and nothing to remove. (A
    // name `Connection` lists goes only with a `Connection` header, itself one.)
    let hop_by_hop = |name: &HeaderName| {
        matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
        )
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
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
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request headers a replica sees: ours minus hop-by-hop, plus the client in
/// `X-Forwarded-For` (appended to what earlier proxies wrote). (Public for the fuzz
/// target `h2_stream_head`.)
pub fn upstream_headers(headers: HeaderMap, client: Option<SocketAddr>) -> HeaderMap {
    forwarded_headers(headers, client.map(ClientIp::new).as_ref())
}

/// [`upstream_headers`], with the client's address already formatted.
fn forwarded_headers(mut headers: HeaderMap, client_ip: Option<&ClientIp>) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    if let Some(ClientIp(Some(ip))) = client_ip {
        let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(earlier) => {
                let ip = String::from_utf8_lossy(ip.as_bytes());
                HeaderValue::from_str(&format!("{earlier}, {ip}")).ok()
            }
            None => Some(ip.clone()),
        };
        if let Some(value) = value {
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
        // The first proxy: the client alone.
        let out = upstream_headers(
            HeaderMap::new(),
            Some(SocketAddr::from(([127, 0, 0, 9], 1))),
        );
        assert_eq!(out.get("x-forwarded-for").unwrap(), "127.0.0.9");
        // Without a hop-by-hop header, nothing is taken.
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, "example".parse().unwrap());
        plain.insert("x-user-id", "u1".parse().unwrap());
        assert_eq!(upstream_headers(plain.clone(), None), plain);
    }

    #[test]
    fn the_hop_by_hop_names_are_the_fast_path_s() {
        let names: Vec<&str> = HOP_BY_HOP.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, super::super::wire::HOP_BY_HOP);
        // And `strip_hop_by_hop`'s own test of a name agrees: each alone is removed.
        for name in &HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), "x".parse().unwrap());
            headers.insert("x-kept", "1".parse().unwrap());
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"], "{name}");
        }
    }
}
