//! The ringlb replica: the small server that the load balancer routes to.
//!
//! `GET /home` names the replica, `GET /heartbeat` answers 200 with an empty body,
//! anything else is 404; over HTTP/1.1 and over HTTP/2 with prior knowledge (h2c) on
//! the same port. The same port serves a small gRPC echo service and the gRPC health
//! checking protocol ([`grpc`]); with `--grpc-only` it is a gRPC server and nothing
//! else (HTTP/2 only, no `/home`, no `/heartbeat`), as the servers of a gRPC pool are.
//! The `ringlb` binary embeds this server as its `replica` subcommand, so
//! `cargo run -- up` needs no second binary; `ringlb-replica` is the same server as a
//! standalone binary for containers and benchmarks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub mod grpc;

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

/// Command-line and environment settings of a replica.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaArgs {
    /// Name this replica reports in `/home` (`Hello from Server: <id>`).
    #[arg(long, env = "SERVER_ID")]
    pub id: String,
    /// Port to listen on; 0 picks a free one (the chosen address is printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub port: u16,
    /// Address to listen on: 127.0.0.1 for local use, `::` (IPv6 and IPv4) in containers.
    #[arg(long, env = "REPLICA_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    /// Serve gRPC only: HTTP/2 with prior knowledge, the echo service and
    /// `grpc.health.v1.Health` (no `/home`, no `/heartbeat`, no HTTP/1.1).
    #[arg(long, env = "REPLICA_GRPC_ONLY")]
    pub grpc_only: bool,
}

/// The line a replica prints on stdout once it listens; the process runtime of the
/// load balancer reads it to learn the port when the replica was started with port 0.
pub const LISTENING_PREFIX: &str = "ringlb-replica listening on ";

/// Everything a replica serves: the HTTP routes and the gRPC methods, or with
/// `grpc_only` the gRPC methods alone (any other path: gRPC `UNIMPLEMENTED`).
pub fn app(id: &str, grpc_only: bool, health: grpc::Health) -> Router {
    let grpc = grpc::routes(id, health);
    if grpc_only {
        grpc.fallback(grpc::unimplemented)
    } else {
        router(id).merge(grpc)
    }
}

/// The replica's HTTP routes. The `/home` body is rendered once, not per request.
pub fn router(id: &str) -> Router {
    let home_body = serde_json::json!({
        "message": format!("Hello from Server: {id}"),
        "status": "successful",
    })
    .to_string();
    Router::new()
        .route(
            "/home",
            get(move || {
                let body = home_body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .route("/heartbeat", get(|| async { StatusCode::OK }))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

/// JSON like every other error, so the load balancer never relays an empty body.
async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"message":"<Error> method not allowed","status":"failure"}"#,
    )
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"message":"<Error> endpoint does not exist","status":"failure"}"#,
    )
}

/// A listening TCP socket on `addr`. `[::]` listens on IPv6 *and* IPv4 whatever
/// the host's `bindv6only` says, so one default serves IPv4, IPv6 and dual-stack
/// clusters; where IPv6 is switched off, `[::]` falls back to `0.0.0.0`. With
/// `reuse_port` several sockets may share the address (the proxy's workers).
pub fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    match bind(addr) {
        Err(error) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&error) => bind(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port()),
        ),
        result => result,
    }
}

/// The errors of a host without IPv6 (disabled by sysctl, or not built in).
fn no_ipv6(error: &std::io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    const EADDRNOTAVAIL: i32 = 99;
    matches!(error.raw_os_error(), Some(EAFNOSUPPORT | EADDRNOTAVAIL))
        || error.kind() == std::io::ErrorKind::AddrNotAvailable
        || error.kind() == std::io::ErrorKind::Unsupported
}

/// [`bind_tcp`] for a Tokio server.
pub fn bind_tokio(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_tcp(addr, false)?)
}

/// Binds, announces the address on stdout, and serves until SIGINT or SIGTERM.
pub async fn run(args: ReplicaArgs) -> std::io::Result<()> {
    // Before announcing: a signal that follows the announcement must be caught.
    let shutdown = shutdown_signal();
    let listener = bind_tokio(SocketAddr::new(args.host, args.port))?;
    let local = listener.local_addr()?;
    // One line, flushed at once: the parent process waits for it.
    println!("{LISTENING_PREFIX}{local} as {}", args.id);
    let app = app(&args.id, args.grpc_only, grpc::Health::default());
    serve(listener, app, args.grpc_only, shutdown).await;
    Ok(())
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets every open
/// connection finish (an idle HTTP/1.1 one is closed; HTTP/2 ones get GOAWAY) and
/// returns. Each connection speaks HTTP/1.1 or, from its preface, HTTP/2 with prior
/// knowledge; with `http2_only`, HTTP/2 alone, as a gRPC server.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    http2_only: bool,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    if http2_only {
        builder = builder.http2_only();
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors and the like: the next accept may succeed.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Without upgrades: no route of a replica switches protocols, and hyper-util
        // applies `http2_only` only to connections served this way.
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away mid-request is its own business.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
///
/// The handlers are installed when this is called, not when the future is first
/// polled, so a signal sent right after the caller announces itself is not lost
/// (and does not kill the process with the default action). Call it inside a
/// Tokio runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    async move {
        let interrupted = async {
            match interrupt.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let terminated = async {
            match terminate.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = interrupted => {},
            () = terminated => {},
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(method: &str, path: &str) -> (StatusCode, String) {
        let response = router("S1")
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_the_contract() {
        let (status, body) = call("GET", "/home").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"message":"Hello from Server: S1","status":"successful"}"#
        );
        assert_eq!(
            call("GET", "/heartbeat").await,
            (StatusCode::OK, String::new())
        );
        let (status, body) = call("GET", "/other").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("\"status\":\"failure\""));
        let (status, body) = call("POST", "/home").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body.contains("\"status\":\"failure\""));
    }

    #[test]
    fn the_unspecified_ipv6_address_takes_ipv4_and_ipv6_clients() {
        let host_has_ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        let listener = bind_tcp("[::]:0".parse().unwrap(), false).unwrap();
        let local = listener.local_addr().unwrap();
        // `[::]` itself where the host has IPv6: the fallback is only for hosts without.
        assert_eq!(local.is_ipv6(), host_has_ipv6, "{local}");
        std::net::TcpStream::connect(("127.0.0.1", local.port())).unwrap();
        if host_has_ipv6 {
            std::net::TcpStream::connect(("::1", local.port())).unwrap();
        }
        // (This host's `bindv6only` is 0, so IPv4 would connect without the explicit
        // `set_only_v6(false)` too; the option matters on hosts where it is 1.)
    }
}
