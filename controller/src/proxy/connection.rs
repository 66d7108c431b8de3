//! One client connection on the proxy port.
//!
//! Requests are forwarded by the fast path: parsed in place, keyed, written to a
//! pooled replica connection as bytes, and the response relayed as it arrives — no
//! per-request task, channel or header map. The first request the fast path does not
//! take (an admin route, `Expect`, a chunked request body, HTTP/1.0, a malformed
//! request…) hands the connection, with the bytes already read, to hyper and the axum
//! router for the rest of its life: the general path, which has every feature.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::error::ApiError;
use super::exchange::{self, Answered, Exchange};
use super::failover::Progress;
use super::send_deadline::{self, SendDeadline};
use super::upstream::{ExchangeError, Sent, UpstreamConn, UpstreamPool};
use super::wire::{self, ChunkScanner, Framing, Incoming, ResponseHead};
use super::{Proxy, is_local_route};
use crate::publish::Backend;

/// Tells a connection that the proxy is stopping. The worker keeps one sender per
/// connection and drops them all to stop: polling a oneshot is one atomic operation,
/// where a shared `watch` channel takes a lock on every idle wait (1.4% of the
/// proxy's CPU in a profile).
pub struct StopSignal(oneshot::Receiver<()>);

impl StopSignal {
    pub fn new() -> (oneshot::Sender<()>, Self) {
        let (sender, receiver) = oneshot::channel();
        (sender, Self(receiver))
    }

    fn is_set(&mut self) -> bool {
        !matches!(self.0.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    pub(super) async fn wait(&mut self) {
        let _ = (&mut self.0).await;
    }
}

/// Serves `stream` until the client closes it, an error, a client timeout, or `stop`
/// (between requests).
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    router: Router,
    mut stop: StopSignal,
) {
    let settings = &proxy.settings;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut buffers = Buffers::default();
    // The same for every request of the connection: formatted once.
    let client_ip = peer.ip().to_canonical().to_string();
    // When the current wait began: the connection's start, the end of the last
    // response, the first byte of a request, or the last read of a request body.
    let mut since = Instant::now();
    let mut timer = ClientTimer::new(deadline(since, settings.client_header_timeout));
    let mut first_request = true;
    loop {
        let next = {
            let mut storage = wire::header_storage();
            match wire::parse_request(
                &buf,
                &mut storage,
                &settings.head_limits,
                settings.max_body_bytes,
                is_local_route,
            ) {
                Incoming::Forward(request) => {
                    let client = Client {
                        addr: peer,
                        ip: &client_ip,
                    };
                    let forwarded = forward(
                        &proxy,
                        &request,
                        client,
                        &mut stream,
                        &mut buffers,
                        &mut stop,
                    );
                    Next::Served(forwarded.await)
                }
                Incoming::Partial => Next::Read(Wait::Head),
                Incoming::PartialBody => Next::Read(Wait::Body),
                Incoming::HandOff => {
                    return hand_off(stream, buf.freeze(), peer, &proxy, router, stop).await;
                }
                // HTTP/2 with prior knowledge: its preface is no HTTP/1.1 request, so
                // this costs the HTTP/1.1 path nothing. Boxed, so that this
                // connection's future does not grow by hyper's HTTP/2 state.
                Incoming::Refuse(_) if first_request && super::h2::starts_h2c(&buf) => {
                    let stream = Rewind::new(buf.freeze(), stream);
                    let h2 = Box::pin(super::h2::serve(stream, peer, &proxy, router, stop));
                    return h2.await;
                }
                Incoming::Refuse(refusal) => {
                    let error = ApiError::refused(refusal, &settings.head_limits);
                    return close_with(error, &mut stream, &mut buffers.out, settings.send_timeout)
                        .await;
                }
            }
        };
        let wait = match next {
            // The replicas speak h2c, which the fast path does not: this request and
            // the rest of the connection go to the general path.
            Next::Served(Ok(Served { to_general, .. })) if to_general => {
                return hand_off(stream, buf.freeze(), peer, &proxy, router, stop).await;
            }
            Next::Served(Ok(Served {
                len,
                upgraded: Some(upstream),
                ..
            })) => {
                buf.advance(len);
                let idle = settings.keepalive_timeout;
                return tunnel(&mut stream, &buf, upstream, idle, &mut timer).await;
            }
            Next::Served(Ok(Served {
                len, keep_alive, ..
            })) => {
                buf.advance(len);
                if !keep_alive || stop.is_set() {
                    let _ = stream.shutdown().await;
                    return;
                }
                first_request = false;
                since = Instant::now();
                continue;
            }
            // The client went away, or a replica's response broke off mid-body: the
            // client cannot be told more on this connection.
            Next::Served(Err(_)) => return,
            Next::Read(wait) => wait,
        };
        let idle = buf.is_empty();
        // What the client may take (nginx: keepalive_timeout, client_header_timeout,
        // client_body_timeout), and whether it is told of the timeout: a connection
        // on which no request began is closed without a word.
        let (timeout, tell) = match wait {
            Wait::Head if idle && !first_request => (settings.keepalive_timeout, false),
            Wait::Head => (settings.client_header_timeout, !idle),
            Wait::Body => (settings.client_body_timeout, true),
        };
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8 * 1024);
        }
        let read = tokio::select! {
            biased;
            // Idle between requests: this is where a drain closes the connection.
            _ = stop.wait(), if idle => return,
            read = stream.read_buf(&mut buf) => read,
            _ = timer.until(deadline(since, timeout)) => {
                if tell {
                    close_with(
                        ApiError::RequestTimeout,
                        &mut stream,
                        &mut buffers.out,
                        settings.send_timeout,
                    )
                    .await;
                }
                return;
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            // A head's time counts from its first byte; a body's, between reads.
            Ok(_) if idle || wait == Wait::Body => since = Instant::now(),
            Ok(_) => {}
        }
    }
}

enum Next {
    Served(io::Result<Served>),
    Read(Wait),
}

/// What a connection waits for when it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Head,
    Body,
}

/// `since + timeout`, or far in the future for a timeout too large to add.
fn deadline(since: Instant, timeout: Duration) -> Instant {
    since
        .checked_add(timeout)
        .unwrap_or_else(|| since + Duration::from_secs(365 * 24 * 3600))
}

/// The client-side deadline of one connection, on one timer. Moving a timer costs a
/// trip into the runtime's timer wheel, so this one is moved only when it would fire
/// too late (a shorter timeout begins) or when it fires before the current deadline
/// (which then moved on): on a busy connection, about once per timeout period, not
/// once per request. Keeping the deadline current costs a clock read per phase.
struct ClientTimer(Pin<Box<Sleep>>);

impl ClientTimer {
    fn new(deadline: Instant) -> Self {
        Self(Box::pin(tokio::time::sleep_until(deadline)))
    }

    /// Resolves once `deadline` has passed.
    async fn until(&mut self, deadline: Instant) {
        loop {
            if self.0.deadline() > deadline {
                self.0.as_mut().reset(deadline);
            }
            (&mut self.0).await;
            if Instant::now() >= deadline {
                return;
            }
            self.0.as_mut().reset(deadline);
        }
    }
}

/// Relays bytes both ways between the client and the replica after `101 Switching
/// Protocols`, until both sides have closed (a side's end is passed on as a
/// half-close) or no byte moved either way for `idle`. `early` is what the client
/// sent after its upgrade request, before the tunnel began.
async fn tunnel(
    client: &mut TcpStream,
    early: &[u8],
    upstream: UpstreamConn,
    idle: Duration,
    timer: &mut ClientTimer,
) {
    let (mut replica, late) = upstream.into_parts();
    if client.write_all(&late).await.is_err() || replica.write_all(early).await.is_err() {
        return;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut replica_read, mut replica_write) = replica.split();
    let mut to_replica = vec![0u8; 16 * 1024];
    let mut to_client = vec![0u8; 16 * 1024];
    let (mut client_open, mut replica_open) = (true, true);
    let mut since = Instant::now();
    while client_open || replica_open {
        let moved = tokio::select! {
            read = client_read.read(&mut to_replica), if client_open => match read {
                Ok(0) | Err(_) => {
                    client_open = false;
                    replica_write.shutdown().await
                }
                Ok(n) => replica_write.write_all(&to_replica[..n]).await,
            },
            read = replica_read.read(&mut to_client), if replica_open => match read {
                Ok(0) | Err(_) => {
                    replica_open = false;
                    client_write.shutdown().await
                }
                Ok(n) => client_write.write_all(&to_client[..n]).await,
            },
            _ = timer.until(deadline(since, idle)) => return,
        };
        if moved.is_err() {
            return;
        }
        since = Instant::now();
    }
}

/// Answers `error` and closes the connection: after a refused or timed-out request,
/// the rest of the stream cannot be trusted to start at a request.
async fn close_with(
    error: ApiError,
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    send_timeout: Duration,
) {
    error.write_http1(false, out);
    if send_deadline::write_all(stream, out, send_timeout)
        .await
        .is_ok()
    {
        let _ = stream.shutdown().await;
    }
}

/// Per-connection scratch space, reused from one request to the next.
#[derive(Default)]
struct Buffers {
    /// The request as the replica receives it.
    upstream_request: Vec<u8>,
    /// What goes to the client next.
    out: Vec<u8>,
}

/// Who sent the request.
#[derive(Clone, Copy)]
struct Client<'a> {
    addr: SocketAddr,
    /// `addr`'s IP, as `X-Forwarded-For` gives it.
    ip: &'a str,
}

struct Served {
    /// Bytes of the request that was served.
    len: usize,
    keep_alive: bool,
    /// The replica's connection, after it answered an upgrade with `101`: the client's
    /// connection is a tunnel to it from now on.
    upgraded: Option<UpstreamConn>,
    /// Not served: the request is the general path's (`RoutingTable::any_h2c`).
    to_general: bool,
}

/// Forwards one request, with failover to the next distinct replica of the ring, and
/// relays the response; the same policy as the general path's `forward`.
async fn forward(
    proxy: &Proxy,
    request: &wire::Request<'_, '_>,
    from: Client<'_>,
    client: &mut TcpStream,
    buffers: &mut Buffers,
    stop: &mut StopSignal,
) -> io::Result<Served> {
    let mut served = Served {
        len: request.len,
        keep_alive: request.keep_alive,
        upgraded: None,
        to_general: false,
    };
    let table = proxy.publisher.table();
    if table.any_h2c {
        served.to_general = true;
        return Ok(served);
    }
    if table.backends.is_empty() {
        proxy.metrics.unroutable.inc();
        return answer_error(
            ApiError::NoReplica,
            served,
            client,
            &mut buffers.out,
            proxy,
            stop,
        )
        .await;
    }
    let candidates = {
        let key = proxy.settings.key.extract(request, Some(from.addr));
        table.ring.candidates(&key)
    };
    wire::write_upstream_request(request, from.ip, &mut buffers.upstream_request);

    let mut exchange = Http1Exchange {
        upstreams: &proxy.upstreams,
        request,
        bytes: &buffers.upstream_request,
        client_head: &mut buffers.out,
        writing: false,
    };
    let answered = exchange::run(
        proxy,
        &table,
        candidates,
        request.method,
        proxy.settings.request_timeout,
        &mut exchange,
    )
    .await;
    let Answered {
        backend,
        answer: (mut upstream, head),
        // Counted in flight until the response is relayed (bounded loads only).
        charge: _in_flight,
    } = match answered {
        Ok(answered) => answered,
        Err(error) => {
            return answer_error(error, served, client, &mut buffers.out, proxy, stop).await;
        }
    };
    served.keep_alive &= head.framing != Framing::UntilClose;
    if served.keep_alive && stop.is_set() {
        // The proxy is stopping: this is the connection's last response, and the
        // client is told so (as nginx does).
        wire::announce_close(&mut buffers.out);
        served.keep_alive = false;
    }
    if head.status == 101 {
        // The replica switched protocols: the connection becomes a tunnel.
        upstream.buf.advance(head.head_len);
        send_deadline::write_all(client, &buffers.out, proxy.settings.send_timeout).await?;
        served.upgraded = Some(upstream);
        return Ok(served);
    }
    if head.status == 404 {
        // The path is not the replicas': the contract answers 400 naming it.
        if let Some(upstream) = skip_body(upstream, &head).await {
            proxy.upstreams.put(backend.addr, upstream);
        }
        let error = ApiError::UnknownEndpoint(request.path().to_owned());
        return answer_error(error, served, client, &mut buffers.out, proxy, stop).await;
    }
    let relayed = relay(
        upstream,
        &head,
        client,
        &mut buffers.out,
        (proxy.settings.read_timeout, proxy.settings.send_timeout),
    )
    .await;
    match relayed {
        Ok(Some(upstream)) => proxy.upstreams.put(backend.addr, upstream),
        Ok(None) => {}
        Err(RelayError::Client(error)) => return Err(error),
        Err(RelayError::Replica(error)) => {
            if error.kind() == io::ErrorKind::TimedOut {
                proxy.metrics.read_timeout(&backend.name);
                proxy.admin.report_unreachable(&backend.name);
            }
            tracing::debug!(replica = %backend.name, %error, "response broke off");
            // The client has part of a response: only closing tells it.
            return Err(error);
        }
    }
    Ok(served)
}

/// The fast path's exchange: the request's bytes written on a pooled connection to the
/// replica, and the response head read back (its client-side copy in `client_head`).
struct Http1Exchange<'a, 'r, 'h> {
    upstreams: &'a UpstreamPool,
    request: &'a wire::Request<'r, 'h>,
    bytes: &'a [u8],
    client_head: &'a mut Vec<u8>,
    /// The current attempt's request started on its way (it had a connection).
    writing: bool,
}

impl Exchange for Http1Exchange<'_, '_, '_> {
    type Answer = (UpstreamConn, ResponseHead);
    type Error = ExchangeError;

    #[inline]
    fn send(
        &mut self,
        backend: &Backend,
    ) -> impl Future<Output = Result<Self::Answer, ExchangeError>> {
        self.writing = false;
        self.upstreams.exchange(
            backend.addr,
            Sent::of(self.request),
            self.bytes,
            Some(&mut *self.client_head),
            &mut self.writing,
        )
    }

    fn progress(error: &ExchangeError) -> Progress {
        error.progress()
    }

    fn progress_when_cut(&self) -> Progress {
        if self.writing {
            Progress::Sent
        } else {
            Progress::NotSent
        }
    }
}

/// A response that broke off while it was relayed.
enum RelayError {
    /// The client's side failed: it went away.
    Client(io::Error),
    /// The replica's side: closed, malformed, or silent for longer than the read
    /// timeout (`TimedOut`).
    Replica(io::Error),
}

async fn answer_error(
    error: ApiError,
    mut served: Served,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    proxy: &Proxy,
    stop: &mut StopSignal,
) -> io::Result<Served> {
    served.keep_alive &= !stop.is_set();
    error.write_http1(served.keep_alive, out);
    send_deadline::write_all(client, out, proxy.settings.send_timeout).await?;
    Ok(served)
}

/// Relays the response body after `head` (whose client-side head is in `out`) to the
/// client. Returns the replica's connection when it can carry another request.
/// `read_timeout` bounds each wait for more of the body (nginx's proxy_read_timeout),
/// `send_timeout` each wait for the client to take it (nginx's send_timeout).
async fn relay(
    mut upstream: UpstreamConn,
    head: &ResponseHead,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    (read_timeout, send_timeout): (Duration, Duration),
) -> Result<Option<UpstreamConn>, RelayError> {
    upstream.buf.advance(head.head_len);
    let mut body = BodyEnd::new(head.framing);
    // The head and what has arrived of the body go out in one write: for a small
    // response, the whole exchange is one read and one write on each side.
    let (len, mut done) = body.scan(&upstream.buf).map_err(RelayError::Replica)?;
    out.extend_from_slice(&upstream.buf[..len]);
    upstream.buf.advance(len);
    send_deadline::write_all(client, out, send_timeout)
        .await
        .map_err(RelayError::Client)?;
    while !done {
        upstream.buf.clear();
        let read = tokio::time::timeout(read_timeout, upstream.read_more())
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the replica sent nothing more within the read timeout",
                ))
            })
            .map_err(RelayError::Replica)?;
        if read == 0 {
            if body.framing == Framing::UntilClose {
                return Ok(None);
            }
            return Err(RelayError::Replica(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the replica closed the connection mid-body",
            )));
        }
        let len;
        (len, done) = body.scan(&upstream.buf).map_err(RelayError::Replica)?;
        send_deadline::write_all(client, &upstream.buf[..len], send_timeout)
            .await
            .map_err(RelayError::Client)?;
        upstream.buf.advance(len);
    }
    // Bytes after the response would belong to no request: the connection is not reused.
    Ok((head.reusable && upstream.buf.is_empty()).then_some(upstream))
}

/// Reads and drops the body after `head`; returns the connection if it can be reused.
/// Small bodies only: a large one is not worth reading, the connection is dropped.
async fn skip_body(mut upstream: UpstreamConn, head: &ResponseHead) -> Option<UpstreamConn> {
    const MAX_SKIPPED: usize = 64 * 1024;
    if !head.reusable {
        return None;
    }
    upstream.buf.advance(head.head_len);
    let mut body = BodyEnd::new(head.framing);
    let mut skipped = 0;
    loop {
        let (len, done) = body.scan(&upstream.buf).ok()?;
        if done {
            return (upstream.buf.len() == len).then_some(upstream);
        }
        skipped += len;
        if skipped > MAX_SKIPPED {
            return None;
        }
        upstream.buf.clear();
        if upstream.read_more().await.ok()? == 0 {
            return None;
        }
    }
}

/// Where a response body ends, tracked over the pieces it arrives in.
struct BodyEnd {
    framing: Framing,
    left: u64,
    chunks: ChunkScanner,
}

impl BodyEnd {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            left: match framing {
                Framing::Length(length) => length,
                _ => 0,
            },
            chunks: ChunkScanner::default(),
        }
    }

    /// Scans `buf`, the next bytes from the replica: how many of them belong to the
    /// body, and whether the body is then complete.
    fn scan(&mut self, buf: &[u8]) -> io::Result<(usize, bool)> {
        Ok(match self.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let len = buf
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= len as u64;
                (len, self.left == 0)
            }
            Framing::Chunked => match self.chunks.feed(buf) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (buf.len(), false),
                Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
            },
            Framing::UntilClose => (buf.len(), false),
        })
    }
}

/// Serves the rest of the connection with hyper and the axum router, starting with
/// the bytes already read. Every request's head is checked against the same limits
/// as the fast path's; hyper's own limits sit above ours, as a backstop. `stream` is
/// a TCP connection, or a TLS one whose client chose HTTP/1.1 (`tls.rs`).
pub(super) async fn hand_off<S>(
    stream: S,
    read: Bytes,
    peer: SocketAddr,
    proxy: &Proxy,
    router: Router,
    mut stop: StopSignal,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = proxy.settings.head_limits;
    // A refused head is answered with `Connection: close` (`ApiError::closes_connection`):
    // the rest of the stream cannot be trusted.
    let service = hyper::service::service_fn(move |request: http::Request<_>| {
        general_request(&limits, &router, peer, request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's one timeout covers both the idle wait and the head: the shorter.
        .header_read_timeout(
            proxy
                .settings
                .client_header_timeout
                .min(proxy.settings.keepalive_timeout),
        )
        .max_headers(wire::MAX_HEADERS)
        .max_header_size(2 * limits.head)
        .serve_connection(
            TokioIo::new(Rewind::new(
                read,
                SendDeadline::new(stream, proxy.settings.send_timeout),
            )),
            service,
        );
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.wait() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// One request of the general path, HTTP/1.1 or a stream of HTTP/2 (`h2.rs`): its
/// head checked against the fast path's limits, then the axum router. A refused
/// head is answered with the same JSON error as on the fast path (a gRPC call's, with
/// its gRPC status).
pub(super) fn general_request(
    limits: &wire::HeadLimits,
    router: &Router,
    peer: SocketAddr,
    mut request: http::Request<hyper::body::Incoming>,
) -> impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send + use<>
{
    let refused = check_head(limits, &request)
        .err()
        .map(|refusal| (refusal, super::grpc::is_grpc(request.headers())));
    // What axum's `into_make_service_with_connect_info` would insert.
    request.extensions_mut().insert(ConnectInfo(peer));
    let mut router = router.clone();
    let limits = *limits;
    async move {
        if let Some((refusal, grpc)) = refused {
            return Ok(ApiError::refused(refusal, &limits).answer(grpc));
        }
        router.call(request).await
    }
}

/// The fast path's head check, on a request hyper parsed.
pub(super) fn check_head<B>(
    limits: &wire::HeadLimits,
    request: &http::Request<B>,
) -> Result<(), wire::Refusal> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    let headers = request.headers();
    let head = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>();
    let request_line = request.method().as_str().len() + target + 12;
    limits.check(
        request.version() == http::Version::HTTP_11,
        request_line,
        request_line + head + 2,
        headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
    )
}

/// A stream that first yields bytes already read from it.
pub(super) struct Rewind<S> {
    read: Bytes,
    stream: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(read: Bytes, stream: S) -> Self {
        Self { read, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let len = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(len));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
