//! The ringlb replica: the small server that the load balancer routes to.
//!
//! `GET /home` names the replica, `GET /heartbeat` answers 200 with an empty body,
//! anything else is 404. The `ringlb` binary embeds this server as its `replica`
//! subcommand, so `cargo run -- up` needs no second binary; `ringlb-replica` is the
//! same server as a standalone binary for containers and benchmarks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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
    /// Address to listen on: 127.0.0.1 for local use, 0.0.0.0 in containers.
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
        .fallback(not_found)
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"message":"<Error> endpoint does not exist","status":"failure"}"#,
    )
}

/// Binds, announces the address on stdout, and serves until SIGINT or SIGTERM.
pub async fn run(args: ReplicaArgs) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
    let local = listener.local_addr()?;
    // One line, flushed at once: the parent process waits for it.
    println!("{LISTENING_PREFIX}{local} as {}", args.id);
    axum::serve(listener, router(&args.id))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
