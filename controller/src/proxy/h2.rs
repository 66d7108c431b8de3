//! The HTTP/2 front door: h2c with prior knowledge on the proxy port (recognised by
//! its connection preface, see [`starts_h2c`]) and `h2` over TLS by ALPN (`tls.rs`).
//!
//! Every stream is a request of its own: keyed from its own headers, looked up in
//! the ring snapshot current when it arrives, and forwarded to the replica (over
//! HTTP/1.1, or h2c as the replica's `UpstreamProtocol` says; see `forward.rs`) with
//! the one failover policy. Nothing is kept per connection but the
//! connection itself.
//!
//! Why hyper's HTTP/2 server rather than the `h2` crate by hand: hyper's server is
//! the `h2` crate plus what a proxy would otherwise write again — bodies streamed under
//! flow control both ways, a task per stream, graceful `GOAWAY` — and it passes on
//! every `h2` limit set here (streams, header list, windows, both reset budgets). Each
//! stream goes through the same head limits as the general HTTP/1.1 path
//! (`connection.rs`); an admin path (or `CONNECT`) then goes to the same axum router,
//! and every other stream straight to the router's fallback, `forward.rs` (the router
//! only ever hands those to it: going around it saves its routing, boxing and
//! extensions on every stream). The admin API, the key, the ring lookup, failover and
//! the JSON errors are shared, not copied.
//!
//! `Upgrade: h2c` from HTTP/1.1 is not offered: nginx does not offer it either, and the
//! clients that speak h2c start with prior knowledge (gRPC, `curl
//! --http2-prior-knowledge`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use futures::future::Either;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::connection::{self, StopSignal};
use super::error::ApiError;
use super::forward::{self, ClientIp};
use super::send_deadline::SendDeadline;
use super::{Proxy, is_local_route};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the first bytes of a connection, which the HTTP/1.1 parser refused, are the
/// start of the HTTP/2 preface. The parser refuses at the version (`HTTP/2`), so that
/// much is there; the rest of the preface is hyper's to check.
pub fn starts_h2c(read: &[u8]) -> bool {
    let len = read.len().min(PREFACE.len());
    len >= b"PRI * HTTP/2".len() && read[..len] == PREFACE[..len]
}

/// HTTP/2 limits of each client connection (flags in `args.rs`).
#[derive(Clone, Copy, Debug)]
pub struct H2Limits {
    /// Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams: u32,
    /// Largest request header list (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list: u32,
    /// Initial flow-control window of a stream (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// Flow-control window of the connection.
    pub connection_window: u32,
    /// Largest HPACK dynamic table of the client's headers (SETTINGS_HEADER_TABLE_SIZE).
    pub header_table_size: u32,
    /// Time between PINGs to the client; `None`: no PINGs.
    pub ping_interval: Option<std::time::Duration>,
    /// Time a PING may go unanswered before the connection is closed.
    pub ping_timeout: std::time::Duration,
    /// Streams the client reset before they were taken up, at once: past it, GOAWAY
    /// (the rapid reset attack, CVE-2023-44487).
    pub max_pending_resets: usize,
    /// Streams reset for the client's errors: past it, GOAWAY.
    pub max_error_resets: usize,
}

impl H2Limits {
    /// The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
    pub const MAX_WINDOW: u32 = (1 << 31) - 1;
}

/// Serves an HTTP/2 connection until the client closes it, an error, `stop` (then
/// GOAWAY, and the open streams finish), or no stream for the keep-alive timeout
/// (GOAWAY too). `io` starts with the client's preface.
pub async fn serve<S>(
    io: S,
    peer: SocketAddr,
    proxy: &Arc<Proxy>,
    router: Router,
    mut stop: StopSignal,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &proxy.settings;
    let limits = settings.h2;
    let head_limits = settings.head_limits;
    // Streams open now: the idle timeout runs while there are none.
    let streams = Arc::new(Streams::default());
    let open = streams.clone();
    let forwarding = Forwarding {
        proxy: Arc::clone(proxy),
        limits: head_limits,
        peer,
        client_ip: ClientIp::new(peer),
    };
    let max_header_list = limits.max_header_list as usize;
    let service = hyper::service::service_fn(move |request: http::Request<_>| {
        let stream = OpenStream::new(open.clone());
        let answer = if header_list_size(&request) > max_header_list {
            // Above our limit, within the h2 layer's (twice ours): the same JSON 431
            // (or gRPC status) as every other refused head, the connection kept.
            let grpc = super::grpc::is_grpc(request.headers());
            let refused = ApiError::HeaderListTooLarge(max_header_list).answer(grpc);
            Either::Left(Either::Left(std::future::ready(Ok::<
                _,
                std::convert::Infallible,
            >(refused))))
        } else if request.method() == http::Method::CONNECT || is_local_route(request.uri().path())
        {
            Either::Left(Either::Right(connection::general_request(
                &head_limits,
                &router,
                peer,
                request,
            )))
        } else {
            // Boxed: the forwarding future holds the whole exchange (kilobytes), and
            // hyper moves a stream's future several times before it first runs.
            Either::Right(Box::pin(forwarding.clone().forward(request)))
        };
        async move {
            let mut response = answer.await?;
            // HTTP/2 has no connection-specific headers (RFC 9113 §8.2.2): a refused
            // stream leaves the connection as it was, whatever the HTTP/1.1 answer says.
            response.headers_mut().remove(http::header::CONNECTION);
            // The stream stays open until its response body is sent or dropped.
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _open = &stream;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        // Twice ours, so that a header list above ours gets our answer (see the
        // service); above this, the h2 layer answers a bare 431 itself.
        .max_header_list_size(limits.max_header_list.saturating_mul(2))
        .initial_stream_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .header_table_size(limits.header_table_size)
        .keep_alive_interval(limits.ping_interval)
        .keep_alive_timeout(limits.ping_timeout)
        .max_pending_accept_reset_streams(limits.max_pending_resets)
        .max_local_error_reset_streams(limits.max_error_resets);
    let io = SendDeadline::new(io, settings.send_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = settings.keepalive_timeout;
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.wait() => {
            // Draining: GOAWAY, and the streams already open run to their end
            // (bounded by the drain's own timeout).
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        _ = idle_for(&streams, idle) => {
            // GOAWAY, and a bound on the client's part of the goodbye.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(idle, connection).await;
        }
    }
}

/// What a connection's streams need to be forwarded without the router.
#[derive(Clone)]
struct Forwarding {
    proxy: Arc<Proxy>,
    limits: super::wire::HeadLimits,
    peer: SocketAddr,
    client_ip: ClientIp,
}

impl Forwarding {
    /// A stream for the ring, its head checked as the router's would be
    /// (`connection::general_request`).
    async fn forward(
        self,
        request: http::Request<hyper::body::Incoming>,
    ) -> Result<Response, std::convert::Infallible> {
        if let Err(refusal) = connection::check_head(&self.limits, &request) {
            let grpc = super::grpc::is_grpc(request.headers());
            return Ok(ApiError::refused(refusal, &self.limits).answer(grpc));
        }
        let answer = forward::forward_stream(&self.proxy, request, self.peer, &self.client_ip);
        Ok(answer.await)
    }
}

/// The streams open on a connection. Counted with an atomic, not a `watch` channel:
/// a stream's start and end wake nothing (a `watch` woke its receiver, and so the
/// connection's task, on both: 2% of an HTTP/2 request's instructions), but the count's
/// fall to zero, where the idle timeout starts again.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    /// Notified when `open` falls to zero (a permit is kept if nobody waits).
    none_open: Notify,
}

/// A request's header list as HTTP/2 counts it (RFC 9113 §6.5.2, SETTINGS_MAX_HEADER_LIST_SIZE):
/// each field's name and value plus 32, the pseudo-header fields included.
pub fn header_list_size<B>(request: &http::Request<B>) -> usize {
    const FIELD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        (":method".len(), request.method().as_str().len()),
        (
            ":path".len(),
            uri.path_and_query().map_or(0, |pq| pq.as_str().len()),
        ),
        (":scheme".len(), uri.scheme_str().map_or(0, str::len)),
        (
            ":authority".len(),
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo
        .iter()
        .filter(|&&(_, value)| value > 0)
        .map(|&(name, value)| name + value + FIELD)
        .sum();
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD)
        .sum();
    pseudo + fields
}

/// Resolves once no stream has been open for `idle`.
async fn idle_for(streams: &Streams, idle: std::time::Duration) {
    loop {
        if streams.open.load(Ordering::Acquire) > 0 {
            streams.none_open.notified().await;
            continue;
        }
        tokio::select! {
            // A stream began and ended meanwhile: the wait starts again from its end.
            () = streams.none_open.notified() => {}
            () = tokio::time::sleep(idle) => {
                // A stream still open since the wait began: wait for its end.
                if streams.open.load(Ordering::Acquire) == 0 {
                    return;
                }
            }
        }
    }
}

/// One open stream of a connection, counted until dropped.
struct OpenStream(Arc<Streams>);

impl OpenStream {
    fn new(streams: Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::AcqRel);
        Self(streams)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_open.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_list_is_counted_as_http2_counts_it() {
        let request = http::Request::get("http://example/home")
            .header("x-a", "1")
            .body(())
            .unwrap();
        // :method GET 7+3+32, :path /home 5+5+32, :scheme http 7+4+32,
        // :authority example 10+7+32, x-a 1 3+1+32.
        assert_eq!(header_list_size(&request), 42 + 42 + 43 + 49 + 36);
    }

    #[test]
    fn the_preface_is_recognised_from_where_the_http1_parser_stops() {
        assert!(starts_h2c(PREFACE));
        assert!(starts_h2c(b"PRI * HTTP/2"));
        // The preface and the first frames, in one read.
        assert!(starts_h2c(&[PREFACE, b"\0\0\0\x04\0\0\0\0\0"].concat()));
        for other in [
            &b"PRI * HTTP/2.1\r\n"[..],
            b"PRI * HTTP/",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX",
        ] {
            assert!(!starts_h2c(other), "{:?}", String::from_utf8_lossy(other));
        }
    }

    /// What the fast path sees of a preface: a refusal, never a request or a wait.
    #[test]
    fn the_http1_parser_refuses_the_preface() {
        let mut storage = super::super::wire::header_storage();
        let limits = super::super::wire::HeadLimits::default();
        for read in [PREFACE, b"PRI * HTTP/2"] {
            let parsed =
                super::super::wire::parse_request(read, &mut storage, &limits, 0, |_| false);
            assert!(
                matches!(parsed, super::super::wire::Incoming::Refuse(_)),
                "{:?}",
                String::from_utf8_lossy(read)
            );
        }
    }
}
