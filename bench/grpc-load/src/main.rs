//! `ringlb-grpc-load`: a gRPC load generator for `bench/proxy_bench.py`'s gRPC table.
//!
//! Opens `--connections` h2c connections to `--target` and keeps `--streams` calls in
//! flight on each for `--duration` seconds. Each call is the replica's echo service
//! (`ringlb.echo.v1.Echo`): `Unary`, or `ServerStream` of `--messages` replies, with a
//! random key among `--keys` in the `x-user-id` metadata, so that a proxy keyed on that
//! header spreads the calls over its replicas as its ring says. A call succeeds when
//! its trailers say `grpc-status: 0` and every message it asked for arrived.
//!
//! Why not ghz or h2load: ghz is not in Debian, and h2load sends one fixed header set,
//! so every call would carry the same key and go to one replica.
//!
//! Prints one JSON object: calls, errors, calls per second (over `--duration`), p50 and
//! p99 in ms.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rand::Rng;
use ringlb_replica::grpc::{ECHO_SERVER_STREAM, ECHO_UNARY, EchoReply, EchoRequest, StreamRequest};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Call {
    Unary,
    Stream,
}

#[derive(Debug, Parser)]
struct Args {
    /// HOST:PORT of the proxy or replica (h2c with prior knowledge).
    #[arg(long)]
    target: String,
    #[arg(long, value_enum, default_value = "unary")]
    call: Call,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Calls in flight at once on each connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Replies each `ServerStream` call asks for.
    #[arg(long, default_value_t = 100)]
    messages: u32,
    /// Distinct `x-user-id` keys, drawn at random for each call.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Client threads (wrk's and h2load's `-t`).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// What one worker (one stream slot of one connection) saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
}

/// A gRPC message: a zero compression flag, its length (big-endian u32), the bytes.
fn frame(message: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.encoded_len());
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message.encode(&mut out).expect("a BytesMut grows");
    out.freeze()
}

/// The messages of a response body, decoded; `None` if the framing is broken.
fn replies(mut body: Bytes) -> Option<Vec<EchoReply>> {
    let mut out = Vec::new();
    while body.has_remaining() {
        if body.remaining() < 5 || body.get_u8() != 0 {
            return None;
        }
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return None;
        }
        out.push(EchoReply::decode(body.split_to(len)).ok()?);
    }
    Some(out)
}

async fn call_once(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    args: &Args,
    authority: &str,
    key: u32,
) -> bool {
    let (path, body, expected) = match args.call {
        Call::Unary => (
            ECHO_UNARY,
            frame(&EchoRequest {
                message: "ping".into(),
            }),
            1,
        ),
        Call::Stream => (
            ECHO_SERVER_STREAM,
            frame(&StreamRequest {
                message: "ping".into(),
                count: args.messages,
            }),
            args.messages as usize,
        ),
    };
    let request = http::Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-user-id", key.to_string())
        .body(Full::new(body))
        .expect("a valid request");
    let Ok(response) = sender.send_request(request).await else {
        return false;
    };
    if response.status() != http::StatusCode::OK {
        return false;
    }
    let Ok(collected) = response.into_body().collect().await else {
        return false;
    };
    let ok = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|s| s == "0");
    ok && replies(collected.to_bytes()).is_some_and(|r| r.len() == expected)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(std::sync::Arc::new(args)))
}

async fn run(args: std::sync::Arc<Args>) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let stream = tokio::net::TcpStream::connect(&args.target).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        for _ in 0..args.streams {
            let (mut sender, args) = (sender.clone(), args.clone());
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let key = rand::rng().random_range(0..args.keys);
                    let started = Instant::now();
                    if call_once(&mut sender, &args, &args.target, key).await {
                        tally
                            .latencies_us
                            .push(started.elapsed().as_micros() as u64);
                    } else {
                        tally.errors += 1;
                    }
                }
                tally
            }));
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let tally = worker.await?;
        latencies.extend(tally.latencies_us);
        errors += tally.errors;
    }
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1e3)
    };
    println!(
        "{}",
        serde_json::json!({
            "calls": latencies.len(),
            "errors": errors,
            "rps": latencies.len() as f64 / args.duration as f64,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    );
    Ok(())
}
