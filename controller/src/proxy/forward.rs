//! Forwarding: key → ring snapshot → replica, with failover to the next distinct
//! replica of the ring when one cannot be reached.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{CaptureConnection, capture_connection};

use super::Proxy;
use super::error::ApiError;
use super::exchange::{self, Exchange};
use super::failover::Progress;
use super::replay::Replay;
use super::upstream::{ExchangeError, Sent, UpstreamConn};
use super::wire::{self, Framing, ResponseHead};
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
    proxy: &Arc<Proxy>,
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
    proxy: &Arc<Proxy>,
    request: Request,
    client: Option<SocketAddr>,
    client_ip: Option<&ClientIp>,
) -> Response {
    // A gRPC client is told the proxy's own errors as gRPC statuses.
    let grpc = super::grpc::is_grpc(request.headers());
    match forward_request(proxy, request, client, client_ip, grpc).await {
        Ok(response) => response,
        Err(error) => error.answer(grpc),
    }
}

async fn forward_request(
    proxy: &Arc<Proxy>,
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
    // One snapshot for the whole request: its protocols, its ring and its replicas.
    let table = proxy.publisher.table();
    let streams = grpc && (table.backends.iter()).all(|b| b.protocol.h2c_for(client_h2));
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

    // An HTTP/2 stream to an HTTP/1.1 replica goes over the fast path's pooled
    // connections (`upstream.rs`) as bytes written once for every attempt, not through
    // hyper's client: its pool and its connection task cost a third of such a request.
    // CONNECT, a request without a host to name, and a streamed body stay with hyper.
    let raw = client_h2
        && parts.method != Method::CONNECT
        && headers.contains_key(header::HOST)
        && matches!(body, RequestBody::Buffered(_));
    let mut exchange = HyperExchange {
        proxy,
        raw: raw.then(Vec::new),
        client_h2,
        te_trailers,
        method: &parts.method,
        path_and_query,
        headers,
        body,
        connection: None,
        writing: false,
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
/// HTTP/1.1 or in h2c as the replica's protocol says — or, for an HTTP/2 stream to an
/// HTTP/1.1 replica, written as bytes on the fast path's pooled connections
/// (`upstream.rs`) and its answer read back by [`RawBody`].
struct HyperExchange<'a> {
    proxy: &'a Arc<Proxy>,
    /// The HTTP/1.1 request's bytes when it goes over the fast path's connections
    /// (written at its first attempt there), `None` when through hyper's client.
    raw: Option<Vec<u8>>,
    /// The request arrived in HTTP/2 (for `UpstreamProtocol::Auto`).
    client_h2: bool,
    te_trailers: bool,
    method: &'a Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: RequestBody,
    /// The connection hyper's client gives the current attempt, once it has one:
    /// until then nothing of the request has left.
    connection: Option<CaptureConnection>,
    /// The current attempt, over the fast path's connections, began its write.
    writing: bool,
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
    #[error(transparent)]
    Raw(#[from] ExchangeError),
}

impl Exchange for HyperExchange<'_> {
    type Answer = http::Response<Body>;
    type Error = HyperExchangeError;

    async fn send(&mut self, backend: &Backend) -> Result<Self::Answer, HyperExchangeError> {
        (self.connection, self.writing) = (None, false);
        if let Some(bytes) = &mut self.raw
            && !backend.protocol.h2c_for(self.client_h2)
            && let RequestBody::Buffered(body) = &self.body
        {
            if bytes.is_empty() {
                write_http1_request(
                    self.method,
                    &self.path_and_query,
                    &self.headers,
                    body,
                    bytes,
                );
            }
            let sent = Sent {
                method: self.method.as_str(),
                keep_alive: true,
                upgrade: false,
            };
            let upstreams = &self.proxy.upstreams;
            let (conn, head) = upstreams
                .exchange(backend.addr, sent, bytes, None, &mut self.writing)
                .await?;
            return Ok(raw_response(conn, &head, backend, self.proxy)?);
        }
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
            self.connection = Some(capture_connection(&mut upstream));
            return Ok(self.proxy.client.request(upstream).await?.map(Body::new));
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
        self.connection = Some(capture_connection(&mut upstream));
        Ok(self.proxy.h2c.request(upstream).await?.map(Body::new))
    }

    fn progress(error: &HyperExchangeError) -> Progress {
        match error {
            HyperExchangeError::Uri(_) | HyperExchangeError::NotH2c => Progress::NotSent,
            // hyper's client sends a request again by itself only when it never left
            // (a pooled connection found closed before the write).
            HyperExchangeError::Client(error) if error.is_connect() => Progress::NotSent,
            HyperExchangeError::Client(error) if super::grpc::refused(error) => Progress::Refused,
            HyperExchangeError::Client(_) => Progress::Sent,
            HyperExchangeError::Raw(error) => error.progress(),
        }
    }

    fn progress_when_cut(&self) -> Progress {
        let sent = match &self.connection {
            Some(connection) => connection.connection_metadata().is_some(),
            None => self.writing,
        };
        if sent {
            Progress::Sent
        } else {
            Progress::NotSent
        }
    }

    fn can_resend(&self) -> bool {
        match &self.body {
            RequestBody::Buffered(_) => true,
            RequestBody::Streamed(replay) => replay.can_resend(),
        }
    }
}

/// The HTTP/1.1 request hyper's client would write for these parts: the request
/// line in origin form, the headers in order, and a `Content-Length` for a body
/// that has none (none for an empty body), then the body.
fn write_http1_request(
    method: &Method,
    path_and_query: &PathAndQuery,
    headers: &HeaderMap,
    body: &Bytes,
    out: &mut Vec<u8>,
) {
    out.clear();
    // Sized once: growing it piece by piece cost five reallocations per request.
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    out.reserve(method.as_str().len() + path_and_query.as_str().len() + fields + body.len() + 48);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() && !headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A replica's answer read by the fast path's exchange, as a response whose body
/// streams from the connection, which goes back to the pool once the body is whole.
fn raw_response(
    mut conn: UpstreamConn,
    head: &ResponseHead,
    backend: &Backend,
    proxy: &Arc<Proxy>,
) -> Result<http::Response<Body>, ExchangeError> {
    let malformed = |what: &str| wire::WireError::Malformed(what.to_owned());
    let bytes = conn.buf.split_to(head.head_len).freeze();
    let mut storage = wire::header_storage();
    let mut parsed = httparse::Response::new(&mut []);
    httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, &bytes, &mut storage)
        .map_err(|error| malformed(&error.to_string()))?;
    let mut response = http::Response::new(Body::empty());
    *response.status_mut() =
        StatusCode::from_u16(head.status).map_err(|_| malformed("status code"))?;
    let headers = response.headers_mut();
    // Room for what hyper's server and `forward_stream` may add (`Date`,
    // `Content-Length`): a `HeaderMap` grows, rehashing, at its first insert past it.
    headers.reserve(parsed.headers.len() + 2);
    for field in &*parsed.headers {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(field.value))
            .map_err(|_| malformed("header value"))?;
        headers.append(name, value);
    }
    let decoder = match head.framing {
        Framing::Empty | Framing::Length(0) => None,
        Framing::Length(length) => Some(Decoder::Length(length)),
        Framing::Chunked => Some(Decoder::Chunked(Box::default())),
        Framing::UntilClose => Some(Decoder::UntilClose),
    };
    let mut body = RawBody {
        conn: Some(conn),
        decoder: Decoder::Length(0),
        reusable: head.reusable,
        addr: backend.addr,
        proxy: Arc::clone(proxy),
        waiting: None,
    };
    let Some(decoder) = decoder else {
        body.finish();
        return Ok(response);
    };
    body.decoder = decoder;
    *response.body_mut() = Body::new(body);
    Ok(response)
}

/// A response body read from a replica's pooled HTTP/1.1 connection.
struct RawBody {
    /// `None` once the body is whole (the connection back in the pool) or broken.
    conn: Option<UpstreamConn>,
    decoder: Decoder,
    reusable: bool,
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    /// Set while a read of the body waits: when it fires (`--read-timeout`, nginx's
    /// proxy_read_timeout), the body ends in an error and the replica is reported, as
    /// on the fast path.
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug)]
enum Decoder {
    /// Bytes of the body still to come.
    Length(u64),
    /// Boxed: the state of a chunked body is larger than the others.
    Chunked(Box<Dechunk>),
    UntilClose,
}

/// A chunked body, de-chunked by the one chunked parser, [`wire::ChunkScanner`]: its
/// data spans become data frames, its trailer section a trailers frame.
#[derive(Debug, Default)]
struct Dechunk {
    scanner: wire::ChunkScanner,
    /// Data frames taken from the bytes scanned, not given yet: one read may hold
    /// several chunks.
    frames: VecDeque<Bytes>,
    /// Where the data lies in the bytes being scanned (kept for its room).
    spans: Vec<Range<usize>>,
    /// The trailer section read so far.
    trailer: Vec<u8>,
    /// The body ended: its trailers, if it has any, still to be given.
    ended: Option<Option<HeaderMap>>,
}

/// What the bytes read so far give.
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// The largest trailer section read.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

fn bad_chunk() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, wire::WireError::BadChunk)
}

impl Decoder {
    /// Takes what it can of the body from the front of `buf`.
    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Decoded> {
        match self {
            Self::Length(0) => Ok(Decoded::End),
            Self::Length(left) if !buf.is_empty() => {
                let len = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= len as u64;
                Ok(Decoded::Data(buf.split_to(len).freeze()))
            }
            Self::UntilClose if !buf.is_empty() => Ok(Decoded::Data(buf.split().freeze())),
            Self::Length(_) | Self::UntilClose => Ok(Decoded::NeedMore),
            Self::Chunked(chunked) => chunked.decode(buf),
        }
    }

    /// Whether nothing of the body is left to give.
    fn is_done(&self) -> bool {
        match self {
            Self::Length(left) => *left == 0,
            Self::Chunked(chunked) => {
                chunked.frames.is_empty() && matches!(chunked.ended, Some(None))
            }
            Self::UntilClose => false,
        }
    }
}

impl Dechunk {
    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Decoded> {
        if self.frames.is_empty() && self.ended.is_none() && !buf.is_empty() {
            let Self {
                scanner,
                spans,
                trailer,
                ..
            } = self;
            let end = scanner
                .scan(buf, |span| match span {
                    wire::Span::Data(range) => spans.push(range),
                    wire::Span::Trailer(range) => trailer.extend_from_slice(&buf[range]),
                })
                .map_err(|_| bad_chunk())?;
            if self.trailer.len() > MAX_TRAILER_BYTES {
                return Err(bad_chunk());
            }
            // What was scanned leaves the buffer; the data stays in it, shared.
            let scanned = buf.split_to(end.unwrap_or(buf.len())).freeze();
            self.frames
                .extend(self.spans.drain(..).map(|range| scanned.slice(range)));
            if end.is_some() {
                self.ended = Some(self.trailers()?);
            }
        }
        if let Some(data) = self.frames.pop_front() {
            return Ok(Decoded::Data(data));
        }
        Ok(match &mut self.ended {
            None => Decoded::NeedMore,
            Some(trailers) => match trailers.take() {
                Some(trailers) => Decoded::Trailers(trailers),
                None => Decoded::End,
            },
        })
    }

    /// The trailer section, a whole one, as fields: `None` if it has none.
    fn trailers(&self) -> std::io::Result<Option<HeaderMap>> {
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let fields = match httparse::parse_headers(&self.trailer, &mut storage) {
            // Where the scanner found the section's end: the two parse it alike.
            Ok(httparse::Status::Complete((len, fields))) if len == self.trailer.len() => fields,
            _ => return Err(bad_chunk()),
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(field.name.as_bytes()),
                HeaderValue::from_bytes(field.value),
            ) {
                trailers.append(name, value);
            }
        }
        Ok(Some(trailers))
    }
}

impl RawBody {
    /// Counts and reports the replica whose body stalled (looked up by address in the
    /// current table: a name kept per response would cost an allocation each).
    fn read_timed_out(&self) {
        let table = self.proxy.publisher.table();
        if let Some(backend) = table.backends.iter().find(|b| b.addr == self.addr) {
            self.proxy.metrics.read_timeout(&backend.name);
            self.proxy.admin.report_unreachable(&backend.name);
        }
    }

    /// The body is whole: its connection goes back to the pool if it can carry
    /// another request (nothing after the body, no `Connection: close`).
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            self.proxy.upstreams.put(self.addr, conn);
        }
    }
}

impl hyper::body::Body for RawBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = match this.decoder.decode(&mut conn.buf) {
                Ok(decoded) => decoded,
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
            };
            match decoded {
                Decoded::Data(data) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                }
                Decoded::Trailers(trailers) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers))));
                }
                Decoded::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            let read = conn.poll_read_more(cx);
            if read.is_pending() {
                let timeout = this.proxy.settings.read_timeout;
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                std::task::ready!(waiting.as_mut().poll(cx));
                this.conn = None;
                this.read_timed_out();
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the replica sent nothing more within the read timeout",
                ))));
            }
            this.waiting = None;
            match std::task::ready!(read) {
                Ok(0) if matches!(this.decoder, Decoder::UntilClose) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the replica closed the connection mid-body",
                    ))));
                }
                Ok(_) => {}
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.decoder {
            Decoder::Length(left) if self.conn.is_some() => hyper::body::SizeHint::with_exact(left),
            _ if self.conn.is_none() => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
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
    response: http::Response<Body>,
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
    // `X-Forwarded-For`, and `Host` for an HTTP/2 request: one growth, not two.
    headers.reserve(2);
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

    /// Feeds `wire` to a decoder in pieces of `step` bytes: the data and trailers it
    /// gives, and whether it ended (`Err` if it failed).
    fn decode_in_pieces(
        mut decoder: Decoder,
        wire: &[u8],
        step: usize,
    ) -> std::io::Result<(Vec<u8>, Option<HeaderMap>, bool)> {
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(bytes) => {
                    assert!(!bytes.is_empty(), "an empty data frame");
                    data.extend_from_slice(&bytes);
                }
                Decoded::Trailers(map) => {
                    trailers = Some(map);
                    assert!(decoder.is_done(), "trailers come last");
                }
                Decoded::End => return Ok((data, trailers, true)),
                Decoded::NeedMore if fed == wire.len() => return Ok((data, trailers, false)),
                Decoded::NeedMore => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    fn chunked() -> Decoder {
        Decoder::Chunked(Box::default())
    }

    #[test]
    fn bodies_are_decoded_whatever_pieces_they_arrive_in() {
        let chunked_body = b"5;ext=1\r\nhello\r\n1 \r\n \r\n6\r\nworld!\r\n0\r\n\r\n";
        let bare_lf = b"5;ext=1\nhello\n1 \n \n6\nworld!\n0\nx-sum: 42\n\n";
        for step in [1, 2, 3, 7, 100] {
            let (data, trailers, done) = decode_in_pieces(chunked(), chunked_body, step).unwrap();
            assert_eq!(
                (&data[..], trailers.is_none(), done),
                (&b"hello world!"[..], true, true),
                "in {step}s"
            );
            let (data, _, done) =
                decode_in_pieces(Decoder::Length(12), b"hello world!", step).unwrap();
            assert_eq!((&data[..], done), (&b"hello world!"[..], true));
            let with_trailers = b"3\r\nabc\r\n0\r\nx-sum: 42\r\nx-other: b\r\n\r\n";
            let (data, trailers, done) = decode_in_pieces(chunked(), with_trailers, step).unwrap();
            let trailers = trailers.expect("trailers");
            assert_eq!((&data[..], done), (&b"abc"[..], true));
            assert_eq!(trailers["x-sum"], "42");
            assert_eq!(trailers["x-other"], "b");
            // Bare LF line ends: taken as the fast path's scanner takes them.
            let (data, trailers, done) = decode_in_pieces(chunked(), bare_lf, step).unwrap();
            assert_eq!(
                (&data[..], done),
                (&b"hello world!"[..], true),
                "in {step}s"
            );
            assert_eq!(trailers.expect("trailers")["x-sum"], "42");
            // Cut short: not ended.
            for cut in [3, 12, 20, chunked_body.len() - 1] {
                let (data, trailers, done) =
                    decode_in_pieces(chunked(), &chunked_body[..cut], step).unwrap();
                assert!(!done && trailers.is_none(), "cut at {cut}");
                assert!(b"hello world!".starts_with(&data), "cut at {cut}");
            }
            let (data, _, done) = decode_in_pieces(chunked(), &chunked_body[..20], step).unwrap();
            assert!(!done && data.starts_with(b"hello"));
        }
        // Until the connection closes: everything is body.
        let (data, _, done) = decode_in_pieces(Decoder::UntilClose, b"all of it", 4).unwrap();
        assert_eq!((&data[..], done), (&b"all of it"[..], false));
        let large_trailer = format!("0\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_TRAILER_BYTES));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"11111111111111111\r\n",
            b"0\r\nnot a field\r\n\r\n",
            b"0\r\nx-a: 1\r\r\n\r\n",
            b"0\r\nx-a: 1\r\n\rX",
            large_trailer.as_bytes(),
        ] {
            for step in [1, 2, 3, 7, 100, bad.len()] {
                assert!(
                    decode_in_pieces(chunked(), bad, step).is_err(),
                    "{:?} in {step}s",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    #[test]
    fn the_http1_request_is_the_one_hyper_s_client_writes() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "example".parse().unwrap());
        headers.append("x-many", "1".parse().unwrap());
        headers.append("x-many", "2".parse().unwrap());
        let pq = PathAndQuery::from_static("/echo?q=1");
        let mut out = Vec::new();
        write_http1_request(
            &Method::POST,
            &pq,
            &headers,
            &Bytes::from_static(b"hello"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /echo?q=1 HTTP/1.1\r\nhost: example\r\nx-many: 1\r\nx-many: 2\r\n\
             content-length: 5\r\n\r\nhello"
        );
        // No body: no length; a length the client gave is kept, not doubled.
        write_http1_request(&Method::GET, &pq, &headers, &Bytes::new(), &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("content-length"));
        headers.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        write_http1_request(
            &Method::PUT,
            &pq,
            &headers,
            &Bytes::from_static(b"hello"),
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out)
                .matches("content-length")
                .count(),
            1
        );
    }

    #[test]
    fn the_hop_by_hop_names_are_the_fast_path_s() {
        let names: Vec<&str> = HOP_BY_HOP.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, wire::HOP_BY_HOP);
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
