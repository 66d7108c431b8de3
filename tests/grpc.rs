//! The replica's HTTP/2 and gRPC end to end (real binaries, port 0): `/home` over h2c
//! and HTTP/1.1 on one port, the echo service (unary, and a server stream of 1,000
//! messages that arrives whole with `grpc-status` 0), the gRPC health check, and
//! `ringlb up --health-check grpc` keeping replicas that speak only gRPC in the ring
//! and taking a killed one out.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlb::ring::{Ring, RingConfig};
use ringlb_testkit::grpc::{EchoClient, ServingStatus};
use ringlb_testkit::{ExternalReplica, FAST_HEARTBEATS, Ringlb, client, home, wait_until};
use tonic::Code;

/// `GET path` on its own stream of an h2c (prior knowledge) connection to `addr`:
/// the status, the `content-type` and the body.
async fn h2c_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.expect("h2 ready");
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).expect("h2 send");
    let response = response.await.expect("h2 response");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, content_type, String::from_utf8(bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_speaks_http1_h2c_and_grpc_on_one_port() {
    let replica = ExternalReplica::start("Both1");
    let http1 = client();
    let url = format!("http://{}/home", replica.addr);
    assert_eq!(home(&http1, &url).await, Ok("Both1".to_owned()), "HTTP/1.1");

    let (status, content_type, body) = h2c_get(replica.addr, "/home").await;
    assert_eq!(status, 200, "h2c /home: {body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(
        body,
        r#"{"message":"Hello from Server: Both1","status":"successful"}"#
    );
    assert_eq!(
        h2c_get(replica.addr, "/heartbeat").await,
        (200, String::new(), String::new()),
        "h2c /heartbeat"
    );
    let (status, _, body) = h2c_get(replica.addr, "/other").await;
    assert_eq!(status, 404, "h2c /other: {body}");

    // The echo service and the health check are on the same port.
    let mut grpc = EchoClient::connect(replica.addr).await.unwrap();
    assert_eq!(grpc.unary("both", &[]).await.unwrap().server, "Both1");
    assert_eq!(grpc.health("").await.unwrap(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_answers_unary_and_a_server_stream_of_1000_arrives_whole() {
    let replica = ExternalReplica::start_grpc_only("Echo1");
    let mut grpc = EchoClient::connect(replica.addr).await.unwrap();

    let reply = grpc
        .unary("hello", &[("x-user-id", "alice")])
        .await
        .unwrap();
    assert_eq!(
        (reply.message.as_str(), reply.server.as_str(), reply.index),
        ("hello", "Echo1", 0)
    );

    let outcome = grpc.server_stream("tick", 1000, &[]).await.unwrap();
    assert_eq!(outcome.status.code(), Code::Ok, "{:?}", outcome.status);
    assert_eq!(outcome.replies.len(), 1000);
    for (i, reply) in outcome.replies.iter().enumerate() {
        assert_eq!(
            (reply.message.as_str(), reply.server.as_str(), reply.index),
            ("tick", "Echo1", i as u32),
            "reply {i}"
        );
    }
    assert_eq!(
        outcome.grpc_status(),
        Some("0"),
        "trailers: {:?}",
        outcome.trailers
    );

    // A stream longer than the replica allows is refused before it starts.
    let refused = grpc
        .server_stream("tick", ringlb_replica::grpc::MAX_STREAM_MESSAGES + 1, &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_only_replica_answers_health_checks_and_nothing_but_grpc() {
    let replica = ExternalReplica::start_grpc_only("Health1");
    let mut grpc = EchoClient::connect(replica.addr).await.unwrap();
    assert_eq!(grpc.health("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        grpc.health("ringlb.echo.v1.Echo").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        grpc.health("no.such.Service").await.unwrap_err().code(),
        Code::NotFound
    );

    // No HTTP/1.1 at all (so no `GET /heartbeat`), and over h2c `/home` is a gRPC
    // path like any other: UNIMPLEMENTED.
    let http1 = client();
    let refused = http1
        .get(format!("http://{}/heartbeat", replica.addr))
        .send()
        .await;
    assert!(refused.is_err(), "HTTP/1.1 answered: {refused:?}");
    let tcp = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(format!("http://{}/home", replica.addr))
        .body(())
        .unwrap();
    let (response, _) = send
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(
        response.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"12"[..]),
        "{response:?}"
    );
}

/// `ringlb up` fronting `replicas` with the given extra flags and fast heartbeats.
fn front(replicas: &[&ExternalReplica], extra: &[&str]) -> Ringlb {
    let specs: Vec<String> = replicas
        .iter()
        .map(|r| format!("{}={}", r.name, r.addr))
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for spec in &specs {
        args.extend(["--replica", spec.as_str()]);
    }
    args.extend(FAST_HEARTBEATS);
    args.extend(extra);
    Ringlb::start(&args)
}

/// The replicas of [`grpc_pool`].
const GRPC_POOL: [&str; 3] = ["GrpcA", "GrpcB", "GrpcC"];

/// Three gRPC-only replicas behind ringlb as a gRPC user runs it (`--upstream-protocol
/// h2c`, gRPC health checks, keyed on the `x-user-id` metadata), all in the ring.
async fn grpc_pool() -> ([ExternalReplica; 3], Ringlb) {
    let replicas = GRPC_POOL.map(ExternalReplica::start_grpc_only);
    let lb = front(
        &[&replicas[0], &replicas[1], &replicas[2]],
        &[
            "--health-check",
            "grpc",
            "--upstream-protocol",
            "h2c",
            "--key",
            "header:x-user-id",
        ],
    );
    lb.until_routable(&GRPC_POOL).await;
    (replicas, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_keep_grpc_only_replicas_in_the_ring_and_take_a_dead_one_out() {
    let a = ExternalReplica::start_grpc_only("GrpcA");
    let mut b = ExternalReplica::start_grpc_only("GrpcB");
    let c = ExternalReplica::start_grpc_only("GrpcC");
    let lb = front(&[&a, &b, &c], &["--health-check", "grpc"]);
    lb.until_routable(&["GrpcA", "GrpcB", "GrpcC"]).await;

    b.kill();
    lb.until_routable(&["GrpcA", "GrpcC"]).await;
    let ring = lb.ring_json().await;
    let member = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "GrpcB")
        .expect("GrpcB is still a member (an external replica rejoins when healthy)");
    assert_eq!(member["health"], "failed", "{member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_heartbeats_never_admit_a_grpc_only_replica() {
    // The default check, against a server without `GET /heartbeat`: what the flag is for.
    let g = ExternalReplica::start_grpc_only("GrpcOnly");
    let lb = front(&[&g], &[]);
    let member = wait_until(
        "the gRPC-only replica failed",
        Duration::from_secs(10),
        || async {
            let ring = lb.ring_json().await;
            let member = ring["members"][0].clone();
            if member["health"] == "failed" {
                Ok(member)
            } else {
                Err(member.to_string())
            }
        },
    )
    .await;
    assert_eq!(member["in_ring"], false, "{member}");
    assert!(lb.routable().await.is_empty());
}

/// gRPC end to end: a tonic client through ringlb (`--upstream-protocol h2c`, keyed on
/// the `x-user-id` metadata) to gRPC-only replicas kept in the ring by gRPC health
/// checks. Each key reaches the replica the ring names for it, on one connection and
/// on another; the keys spread over every replica; a server stream of 1,000 replies
/// arrives whole with `grpc-status: 0` in its trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_through_ringlb_reaches_the_replica_its_key_names() {
    let (_replicas, lb) = grpc_pool().await;
    let names = GRPC_POOL;
    let all: BTreeSet<String> = names.map(String::from).into();
    // The ring every ringlb process builds from these members (the default one).
    let ring = Ring::build(&names, &RingConfig::default());
    let mut first = EchoClient::connect(lb.proxy).await.unwrap();
    let mut second = EchoClient::connect(lb.proxy).await.unwrap();
    let mut used = BTreeSet::new();
    for i in 0..60 {
        let key = format!("user-{i}");
        let home = &ring.members()[ring.lookup(key.as_bytes()).unwrap()];
        for client in [&mut first, &mut second] {
            let reply = client.unary("hi", &[("x-user-id", &key)]).await.unwrap();
            assert_eq!(&reply.server, home, "{key}: the ring's replica");
            assert_eq!(reply.message, "hi");
        }
        used.insert(home.clone());
    }
    assert_eq!(used, all, "60 keys spread over the three replicas");

    let key = "user-stream";
    let home = &ring.members()[ring.lookup(key.as_bytes()).unwrap()];
    let outcome = first
        .server_stream("s", 1000, &[("x-user-id", key)])
        .await
        .unwrap();
    assert_eq!(outcome.status.code(), Code::Ok, "{:?}", outcome.status);
    assert_eq!(outcome.replies.len(), 1000);
    assert!(
        outcome
            .replies
            .iter()
            .enumerate()
            .all(|(i, r)| r.index as usize == i && &r.server == home)
    );
    assert_eq!(outcome.grpc_status(), Some("0"), "{:?}", outcome.trailers);
}

/// One call of [`a_replica_killed_under_grpc_load_fails_no_call_it_never_processed`].
struct Outcome {
    key: String,
    started: Instant,
    answer: Result<String, tonic::Status>,
}

/// A replica killed (SIGKILL) under a keyed gRPC load, through ringlb to gRPC-only
/// replicas. A call that fails must be one the killed replica may have processed: its
/// key's replica is the killed one, and it started before the kill was done. Every
/// other call succeeds, those of the killed replica's keys after the kill included
/// (the next replica of the ring takes them), and the failures are UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_grpc_load_fails_no_call_it_never_processed() {
    let (mut replicas, lb) = grpc_pool().await;
    let names = GRPC_POOL;
    let ring = Ring::build(&names, &RingConfig::default());
    let home = |key: &str| ring.members()[ring.lookup(key.as_bytes()).unwrap()].clone();

    // 8 callers on 2 connections, each call with a key of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients = [
        EchoClient::connect(lb.proxy).await.unwrap(),
        EchoClient::connect(lb.proxy).await.unwrap(),
    ];
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..8 {
        let mut client = clients[caller % 2].clone();
        let (stop, done) = (stop.clone(), done.clone());
        callers.spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("user-{caller}-{n}");
                let started = Instant::now();
                let answer = client
                    .unary("hi", &[("x-user-id", &key)])
                    .await
                    .map(|reply| reply.server);
                done.fetch_add(1, Ordering::Relaxed);
                outcomes.push(Outcome {
                    key,
                    started,
                    answer,
                });
            }
            outcomes
        });
    }
    let calls_reach = |n: usize| {
        let done = done.clone();
        async move {
            wait_until(&format!("{n} calls"), Duration::from_secs(30), || async {
                let now = done.load(Ordering::Relaxed);
                if now >= n {
                    Ok(())
                } else {
                    Err(format!("{now}"))
                }
            })
            .await;
        }
    };
    calls_reach(300).await;
    replicas[1].kill();
    let killed = Instant::now();
    lb.until_routable(&["GrpcA", "GrpcC"]).await;
    calls_reach(done.load(Ordering::Relaxed) + 300).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    while let Some(caller) = callers.join_next().await {
        outcomes.extend(caller.unwrap());
    }

    let mut failed = 0;
    let mut rehomed = 0;
    for Outcome {
        key,
        started,
        answer,
    } in &outcomes
    {
        let home = home(key);
        match answer {
            Ok(server) if *started >= killed && home == "GrpcB" => {
                assert_ne!(server, "GrpcB", "{key}: served by the killed replica");
                rehomed += 1;
            }
            // Before the kill was done, a call of the killed replica's keys may have
            // gone to it or, routed after its connection closed, to the next one.
            Ok(server) if home != "GrpcB" => assert_eq!(*server, home, "{key}"),
            Ok(_) => {}
            Err(status) => {
                failed += 1;
                assert!(
                    home == "GrpcB" && *started < killed,
                    "{key} (the ring's {home}), started {:?} {} the kill, failed: {status:?}",
                    started.max(&killed).duration_since(*started.min(&killed)),
                    if *started < killed { "before" } else { "after" },
                );
                assert_eq!(status.code(), Code::Unavailable, "{key}: {status:?}");
            }
        }
    }
    // At most the calls in flight at the kill: one per caller.
    assert!(failed <= 8, "{failed} calls failed");
    assert!(
        rehomed > 0,
        "no call of the killed replica's keys after the kill"
    );
    eprintln!(
        "{} calls, {failed} failed, {rehomed} of the killed replica's keys served elsewhere",
        outcomes.len()
    );
}
