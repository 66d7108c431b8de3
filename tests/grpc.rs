//! The replica's HTTP/2 and gRPC end to end (real binaries, port 0): `/home` over h2c
//! and HTTP/1.1 on one port, the echo service (unary, and a server stream of 1,000
//! messages that arrives whole with `grpc-status` 0), the gRPC health check, and
//! `ringlb up --health-check grpc` keeping replicas that speak only gRPC in the ring
//! and taking a killed one out.

use std::collections::BTreeSet;
use std::time::Duration;

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
        outcome
            .trailers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_keep_grpc_only_replicas_in_the_ring_and_take_a_dead_one_out() {
    let a = ExternalReplica::start_grpc_only("GrpcA");
    let mut b = ExternalReplica::start_grpc_only("GrpcB");
    let c = ExternalReplica::start_grpc_only("GrpcC");
    let lb = front(&[&a, &b, &c], &["--health-check", "grpc"]);
    let all: BTreeSet<String> = ["GrpcA", "GrpcB", "GrpcC"].map(String::from).into();
    wait_until(
        "the three gRPC-only replicas in the ring",
        Duration::from_secs(10),
        || async {
            let now = lb.routable().await;
            if now == all {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;

    b.kill();
    let rest: BTreeSet<String> = ["GrpcA", "GrpcC"].map(String::from).into();
    wait_until(
        "the killed replica out of the ring",
        Duration::from_secs(10),
        || async {
            let now = lb.routable().await;
            if now == rest {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
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
    let replicas = [
        ExternalReplica::start_grpc_only("GrpcA"),
        ExternalReplica::start_grpc_only("GrpcB"),
        ExternalReplica::start_grpc_only("GrpcC"),
    ];
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
    let names = ["GrpcA", "GrpcB", "GrpcC"];
    let all: BTreeSet<String> = names.map(String::from).into();
    wait_until(
        "the three replicas in the ring",
        Duration::from_secs(10),
        || async {
            let now = lb.routable().await;
            if now == all {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
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
    assert_eq!(
        outcome
            .trailers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("0"),
        "{:?}",
        outcome.trailers
    );
}
