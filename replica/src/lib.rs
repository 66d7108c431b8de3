//! The ringlb replica: the small server that the load balancer routes to.
//!
//! `GET /home` names the replica, `GET /heartbeat` answers 200 with an empty body,
//! anything else is 404. The `ringlb` binary embeds this server as its `replica`
//! subcommand, so `cargo run -- up` needs no second binary; `ringlb-replica` is the
//! same server as a standalone binary for containers and benchmarks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
}

/// The line a replica prints on stdout once it listens; the process runtime of the
/// load balancer reads it to learn the port when the replica was started with port 0.
pub const LISTENING_PREFIX: &str = "ringlb-replica listening on ";

/// The replica's routes. The `/home` body is rendered once, not per request.
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
    axum::serve(listener, router(&args.id))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
///
/// The handlers are installed when this is called, not when the future is first
/// polled, so a signal sent right after the caller announces itself is not lost
/// (and does not kill the process with the default action). Call it inside a
/// Tokio runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
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
