//! The proxy against slow, broken and hostile clients and misbehaving replicas, over
//! raw sockets: head limits and `Host` (answered as JSON, nothing forwarded), client
//! timeouts on both paths, the connection cap, the upstream read timeout, and a
//! replica frozen under load.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringlb_testkit::fake_replica::{FakeReplica, read_response};
use ringlb_testkit::{ExternalReplica, FAST_HEARTBEATS, Ringlb};

/// Everything the proxy sends until it closes the connection.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .expect("the proxy closes the connection within 10 s");
    String::from_utf8_lossy(&all).into_owned()
}

/// The status and the JSON body of a whole error answer, which must say
/// `Connection: close`.
fn refused(answer: &str) -> (u16, serde_json::Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not a response: {answer:?}"));
    assert!(
        format!("{head}\r\n")
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{head}"
    );
    let status = head[9..12].parse().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(json["status"], "failure", "{json}");
    (status, json)
}

#[tokio::test]
async fn heads_beyond_the_limits_or_without_host_are_refused_and_not_forwarded() {
    let fake = FakeReplica::start();
    let lb = Ringlb::start(&["--replica", &format!("Fake={}", fake.addr)]);
    let long_line = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    let many_headers = "X-A: 1\r\n".repeat(101);
    let long_target = format!("/{}", "a".repeat(8 * 1024));
    let cases = [
        ("GET /home HTTP/1.1\r\n\r\n".to_owned(), 400, "Host"),
        (
            "GET /home HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
            400,
            "Host",
        ),
        (
            format!("GET /home HTTP/1.1\r\nHost: t\r\n{long_line}\r\n"),
            431,
            "header line is longer than 8192 bytes",
        ),
        (
            format!("GET /home HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n"),
            431,
            "more than 100 request headers",
        ),
        (
            format!("GET {long_target} HTTP/1.1\r\nHost: t\r\n\r\n"),
            414,
            "request line is longer than 8192 bytes",
        ),
        (
            "GET /home HTTP/1.1\r\nBad Header: x\r\n\r\n".to_owned(),
            400,
            "malformed request",
        ),
    ];
    for (request, status, message) in &cases {
        // Straight away, and after an admin request that handed the connection to the
        // general path: the same answer either way.
        for after_hand_off in [false, true] {
            let mut stream = lb.connect_raw();
            if after_hand_off {
                stream
                    .write_all(b"GET /rep HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                let (rep, _, _) = read_response(&mut stream, &mut Vec::new());
                assert_eq!(rep, 200);
            }
            // The peer may close before the whole request is written.
            let _ = stream.write_all(request.as_bytes());
            let answer = read_until_closed(&mut stream);
            if after_hand_off && *status == 400 && *message == "malformed request" {
                // hyper's parser refuses it before any of ours runs: a bare 400.
                assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
                continue;
            }
            let (got, json) = refused(&answer);
            let what = format!("{} (after hand-off: {after_hand_off})", &request[..20]);
            assert_eq!(got, *status, "{what}: {json}");
            let text = json["message"].as_str().unwrap();
            assert!(text.contains(message), "{what}: {text}");
        }
    }
    assert_eq!(
        fake.proxied_connections(),
        0,
        "no refused request reached the replica"
    );
    // And a good request still goes through.
    assert_eq!(lb.home().await.unwrap(), "Fake");
}

#[tokio::test]
async fn slow_and_idle_clients_are_timed_out() {
    let fake = FakeReplica::start();
    let lb = Ringlb::start(&[
        "--replica",
        &format!("Fake={}", fake.addr),
        "--client-header-timeout",
        "600ms",
        "--client-body-timeout",
        "600ms",
        "--keepalive-timeout",
        "900ms",
    ]);

    // Slowloris: a byte of the head every 100 ms. The head's time counts from its
    // first byte, so trickling does not extend it: 408 while it still trickles.
    let mut trickling = lb.connect_raw();
    trickling.write_all(b"GET /home HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    trickling.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never timed out"
        );
        if trickling.write_all(b"X").is_err() {
            break true;
        }
        let mut chunk = [0u8; 1024];
        match trickling.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break true,
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(closed);
    let (status, _) = refused(&String::from_utf8_lossy(&answer));
    assert_eq!(status, 408);

    // A connection that never sends a byte is closed without an answer.
    let mut silent = lb.connect_raw();
    assert_eq!(read_until_closed(&mut silent), "");

    // A body that stops arriving: 408, on the fast path (Content-Length) and on the
    // general path (chunked).
    for request in [
        &b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789"[..],
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let mut stalled = lb.connect_raw();
        stalled.write_all(request).unwrap();
        let (status, json) = refused(&read_until_closed(&mut stalled));
        assert_eq!(status, 408, "{json}");
    }

    // Idle keep-alive: served, then closed without a word after the idle timeout,
    // on the fast path and on a connection handed to the general path.
    for path in ["/home", "/rep"] {
        let mut idle = lb.connect_raw();
        write!(idle, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        assert_eq!(read_response(&mut idle, &mut rest).0, 200);
        let mut after = Vec::new();
        idle.read_to_end(&mut after)
            .expect("closed within the read timeout");
        assert!(after.is_empty() && rest.is_empty(), "{path}: {after:?}");
    }
    assert_eq!(
        fake.proxied_connections(),
        1,
        "only the request that was complete reached the replica"
    );
}

#[tokio::test]
async fn connections_above_the_cap_get_503() {
    let fake = FakeReplica::start();
    let lb = Ringlb::start(&[
        "--replica",
        &format!("Fake={}", fake.addr),
        "--max-connections",
        "2",
    ]);
    // Both are accepted (and counted) before the third arrives: each has been answered.
    let mut first = lb.connect_raw();
    let mut second = lb.connect_raw();
    for stream in [&mut first, &mut second] {
        stream
            .write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(stream, &mut Vec::new()).0, 200);
    }
    let mut third = lb.connect_raw();
    let (status, json) = refused(&read_until_closed(&mut third));
    assert_eq!(status, 503, "{json}");
    assert!(
        json["message"].as_str().unwrap().contains("at most 2"),
        "{json}"
    );
    drop(first);
    // A place is free again.
    ringlb_testkit::wait_until(
        "a connection to be served again",
        Duration::from_secs(10),
        || async { lb.home().await },
    )
    .await;
}

#[tokio::test]
async fn a_replica_that_stalls_mid_body_is_cut_off_and_reported() {
    let fake = FakeReplica::start();
    let lb = Ringlb::start(&[
        "--replica",
        &format!("Fake={}", fake.addr),
        "--read-timeout",
        "500ms",
    ]);
    let mut stream = lb.connect_raw();
    stream
        .write_all(b"GET /stall-body HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let received = read_until_closed(&mut stream);
    assert!(
        received.starts_with("HTTP/1.1 200 OK\r\n") && received.ends_with("\r\n\r\n0123456789"),
        "the client has the head and the 10 bytes, then the connection closes: {received:?}"
    );
    let metrics = lb.metrics().await;
    assert!(
        metrics.contains(r#"ringlb_upstream_read_timeouts_total{pool="local",replica="Fake"} 1"#),
        "{metrics}"
    );
}

/// A replica that freezes (SIGSTOP: it accepts connections and never answers) under
/// load: once the heartbeats take it out, the requests waiting on it are cut loose —
/// idempotent ones go to the next replica, a POST gets 502 — long before the
/// request timeout.
#[tokio::test]
async fn requests_waiting_on_a_frozen_replica_are_cut_loose_when_it_is_ejected() {
    let mut frozen = ExternalReplica::start("Frozen");
    let healthy = ExternalReplica::start("Healthy");
    let lb = Ringlb::start(
        &[
            &FAST_HEARTBEATS[..],
            &[
                "--replica",
                &format!("Frozen={}", frozen.addr),
                "--replica",
                &format!("Healthy={}", healthy.addr),
                "--request-timeout",
                "60s",
            ][..],
        ]
        .concat(),
    );
    ringlb_testkit::send_signal(frozen.pid(), libc::SIGSTOP);
    let started = Instant::now();
    let gets: Vec<_> = (0..20)
        .map(|_| {
            let http = lb.http.clone();
            let url = lb.proxy_url("/home");
            tokio::spawn(async move {
                let response = http.get(url).send().await.map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                Ok::<_, String>((status, response.text().await.unwrap_or_default()))
            })
        })
        .collect();
    let posts: Vec<_> = (0..20)
        .map(|_| {
            let http = lb.http.clone();
            let url = lb.proxy_url("/home");
            tokio::spawn(async move {
                let response = http.post(url).send().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(response.status().as_u16())
            })
        })
        .collect();
    for get in gets {
        let (status, body) = get.await.unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Healthy"), "{body}");
    }
    let mut cut_loose = 0;
    for post in posts {
        match post.await.unwrap().unwrap() {
            // The healthy replica's answer to a method it does not serve.
            405 => {}
            502 => cut_loose += 1,
            other => panic!("POST answered {other}"),
        }
    }
    let elapsed = started.elapsed();
    ringlb_testkit::send_signal(frozen.pid(), libc::SIGCONT);
    frozen.kill();
    assert!(
        cut_loose > 0,
        "some POSTs went to the frozen replica (random keys): they get 502"
    );
    // The bound that matters: the 60 s request timeout was not waited for.
    assert!(
        elapsed < Duration::from_secs(30),
        "the requests took {elapsed:?}"
    );
}

/// Bytes the proxy sends on `stream` until it closes it (EOF or reset).
fn bytes_until_closed(stream: &mut TcpStream) -> usize {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("reading after {total} bytes: {e}"),
        }
    }
}

/// A client that stops reading is closed once a write has waited for the send timeout
/// (nginx: send_timeout), on the fast path and on the general path; with the default
/// timeout the same pause costs nothing.
#[test]
fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    use ringlb_testkit::fake_replica::BIG;
    let fake = FakeReplica::start();
    let replica = format!("Fake={}", fake.addr);
    let requests = [
        // The fast path.
        &b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        // The general path (a chunked body goes to hyper).
        b"POST /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for (timeout, whole) in [("300ms", false), ("60s", true)] {
        let lb = Ringlb::start(&["--replica", &replica, "--send-timeout", timeout]);
        for request in requests {
            let mut client = lb.connect_raw();
            client.write_all(request).unwrap();
            // Reading nothing for longer than the short timeout: the proxy's writes
            // wait on a full socket meanwhile.
            std::thread::sleep(Duration::from_millis(1500));
            let got = bytes_until_closed(&mut client);
            let what = String::from_utf8_lossy(&request[..9]);
            if whole {
                assert!(got > BIG, "{what} with {timeout}: {got} bytes");
            } else {
                assert!(
                    got < BIG,
                    "{what} with {timeout}: the whole answer ({got} bytes)"
                );
            }
        }
    }
}
