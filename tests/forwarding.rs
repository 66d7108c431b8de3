//! The proxy's HTTP/1.1 behaviour on the wire, against a scripted replica: every
//! response framing, hop-by-hop headers in both directions, request bodies, pipelined
//! requests, admin requests on a connection that was forwarding, and replica
//! connections that the replica closed while they sat idle in the pool.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringlb_testkit::Ringlb;
use ringlb_testkit::fake_replica::{FakeReplica, front, read_response};

#[tokio::test]
async fn every_response_framing_reaches_the_client_intact() {
    let fake = FakeReplica::start();
    let lb = front(&fake);

    let chunked = lb.http.get(lb.proxy_url("/chunked")).send().await.unwrap();
    assert_eq!(chunked.status(), 200);
    assert_eq!(chunked.text().await.unwrap(), "hello world");

    let until_close = lb
        .http
        .get(lb.proxy_url("/until-close"))
        .send()
        .await
        .unwrap();
    assert_eq!(until_close.headers()["x-framing"], "none");
    assert_eq!(until_close.text().await.unwrap(), "all of it");

    let head = lb.http.head(lb.proxy_url("/home")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "12");
    assert_eq!(head.text().await.unwrap(), "");

    // An ordinary request still goes through afterwards (whichever connection it uses).
    assert_eq!(lb.home().await.unwrap(), "Fake");
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_proxy_both_ways() {
    let fake = FakeReplica::start();
    let lb = front(&fake);
    let response = lb
        .http
        .post(lb.proxy_url("/echo?id=7"))
        .header("Connection", "X-Secret")
        .header("X-Secret", "1")
        .header("Proxy-Authorization", "Basic eA==")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("X-Kept", "yes")
        .body("the payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-hop").is_none());
    assert!(response.headers().get("keep-alive").is_none());
    assert_eq!(response.headers()["x-kept"], "1");
    let seen = response.text().await.unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("post /echo?id=7 http/1.1\r\n"), "{seen}");
    assert!(seen.contains("\r\nx-kept: yes\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.ends_with("\r\n\r\nthe payload"), "{seen}");
    for dropped in ["x-secret", "proxy-authorization", "\r\nconnection:"] {
        assert!(
            !seen.contains(dropped),
            "{dropped} reached the replica: {seen}"
        );
    }
}

#[tokio::test]
async fn pipelined_requests_and_admin_requests_share_one_connection() {
    let fake = FakeReplica::start();
    let lb = front(&fake);
    let mut stream = lb.connect_raw();
    // Forwarded, forwarded, admin (handed to the general path), forwarded again:
    // written at once, answered in order.
    stream
        .write_all(
            b"GET /home?id=1 HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /missing HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /rep HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /home?id=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut stream, &mut buf);
    assert_eq!((status, body.as_str()), (200, "Server: Fake"));
    let (status, _, body) = read_response(&mut stream, &mut buf);
    assert_eq!(status, 400, "a replica's 404 is the contract's 400: {body}");
    assert!(
        body.contains("'/missing' endpoint does not exist"),
        "{body}"
    );
    let (status, _, body) = read_response(&mut stream, &mut buf);
    assert_eq!(status, 200);
    assert!(body.contains(r#""replicas":["Fake"]"#), "{body}");
    let (status, head, body) = read_response(&mut stream, &mut buf);
    assert_eq!((status, body.as_str()), (200, "Server: Fake"));
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty() && buf.is_empty(),
        "the proxy closed after Connection: close"
    );
}

#[tokio::test]
async fn a_replica_connection_closed_while_idle_is_replaced_without_an_error() {
    let fake = FakeReplica::start();
    let lb = front(&fake);
    // Each response to /close-after is followed by the replica closing the connection
    // without telling: the proxy's pooled connection is dead when the next request
    // takes it. A POST must not fail for it: the connection is found closed before
    // the request goes out. (Had the replica closed it only after the POST was
    // written, the POST could not be sent again: see a_post_the_replica_read_...)
    for round in 0..3 {
        let closed = lb
            .http
            .get(lb.proxy_url("/close-after"))
            .send()
            .await
            .unwrap();
        assert_eq!(closed.text().await.unwrap(), "bye");
        fake.wait_for_close();
        let posted = lb
            .http
            .post(lb.proxy_url("/echo"))
            .body("again")
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 200, "round {round}");
        assert!(posted.text().await.unwrap().ends_with("again"));
    }
    // One connection per round was closed under the proxy and replaced.
    assert!(
        fake.proxied_connections() >= 4,
        "{} connections",
        fake.proxied_connections()
    );
    // And a connection that stays open is reused rather than replaced.
    let before = fake.proxied_connections();
    for _ in 0..20 {
        assert_eq!(lb.home().await.unwrap(), "Fake");
    }
    assert!(
        fake.proxied_connections() <= before + 1,
        "20 sequential requests opened {} connections",
        fake.proxied_connections() - before
    );
}

/// On SIGINT, a forwarded request in flight is still answered, and connections idle
/// between requests (forwarding ones and handed-off ones) are closed rather than
/// holding up the exit until the drain's time limit.
#[tokio::test]
async fn shutdown_answers_requests_in_flight_and_closes_idle_connections() {
    let fake = FakeReplica::start();
    let mut lb = front(&fake);
    let open = |request: &[u8]| {
        let mut stream = lb.connect_raw();
        stream.write_all(request).unwrap();
        stream
    };
    let mut buf = Vec::new();
    let mut idle_forwarding = open(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_response(&mut idle_forwarding, &mut buf).0, 200);
    let mut idle_admin = open(b"GET /rep HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_response(&mut idle_admin, &mut buf).0, 200);
    let mut in_flight = open(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    fake.wait_for_held_request();

    ringlb_testkit::send_signal(lb.pid(), libc::SIGINT);
    ringlb_testkit::wait_until_blocking(
        "the proxy to stop accepting connections",
        Duration::from_secs(10),
        || match TcpStream::connect_timeout(&lb.proxy, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("connect: {other:?}")),
        },
    );
    for (what, stream) in [
        ("forwarding", &mut idle_forwarding),
        ("admin", &mut idle_admin),
    ] {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the idle {what} connection got {rest:?}");
    }
    assert!(
        lb.wait_exit(Duration::ZERO).is_none(),
        "ringlb exited with a request in flight"
    );

    fake.release();
    let (status, head, body) = read_response(&mut in_flight, &mut buf);
    assert_eq!((status, body.as_str()), (200, "Server: Fake"));
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let exit = lb
        .wait_exit(Duration::from_secs(5))
        .expect("ringlb exits once the held request is answered");
    assert!(exit.success(), "exit status {exit}");
}

/// RFC 9110 §9.2.2: a request that may have reached a replica is sent again only if it
/// is idempotent. The replica reads each `/die` request and closes the connection
/// without answering, on a connection the proxy reused from its pool.
#[tokio::test]
async fn a_post_the_replica_read_is_never_sent_again() {
    let fake = FakeReplica::start();
    // Two ring members on the same fake: a retry to "the next replica" lands there too.
    let lb = Ringlb::start(&[
        "--workers",
        "1",
        "--replica",
        &format!("A={}", fake.addr),
        "--replica",
        &format!("B={}", fake.addr),
    ]);
    // Pooled connections to both members, so that the POST goes out on a reused one.
    for _ in 0..10 {
        assert_eq!(lb.home().await.unwrap(), "Fake");
    }

    let rebuilds_before = ring_rebuilds(&lb).await;
    let post = lb
        .http
        .post(lb.proxy_url("/die"))
        .body("pay once")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502);
    let body: serde_json::Value = post.json().await.unwrap();
    assert_eq!(body["status"], "failure");
    assert_eq!(
        fake.died.load(Ordering::SeqCst),
        1,
        "the POST reached replicas exactly once"
    );

    // A GET is idempotent: it is tried again on the other member. (The failed member
    // was taken out of the ring and is checked at once: wait until the ring has been
    // rebuilt without it and with it again, so that the GET sees both.)
    ringlb_testkit::wait_until(
        "the failed member back in the ring",
        Duration::from_secs(10),
        || async {
            match ring_rebuilds(&lb).await {
                n if n >= rebuilds_before + 2 => Ok(()),
                n => Err(format!("{n} rebuilds")),
            }
        },
    )
    .await;
    let get = lb.http.get(lb.proxy_url("/die")).send().await.unwrap();
    assert_eq!(get.status(), 502);
    assert!(
        fake.died.load(Ordering::SeqCst) >= 3,
        "the GET was sent again: {} arrivals in all",
        fake.died.load(Ordering::SeqCst)
    );
}

/// `Connection: Upgrade`: the replica gets the upgrade headers, and after its `101`
/// bytes flow both ways, including those the client sent right behind its request;
/// the client's end of the stream reaches the replica, whose end closes the tunnel.
#[tokio::test]
async fn an_upgrade_becomes_a_tunnel() {
    let fake = FakeReplica::start();
    let lb = front(&fake);
    let mut stream = lb.connect_raw();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly ",
        )
        .unwrap();
    let mut received = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");

    stream.write_all(b"ping").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = received[head_end..].to_vec();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "early ping");
}

/// A WebSocket client talks to a WebSocket replica through the proxy.
#[tokio::test]
async fn websocket_echo_works_through_the_proxy() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let fake = FakeReplica::start();
    let lb = front(&fake);
    let stream = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let url = format!("ws://{}/ws", lb.proxy);
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("the handshake goes through the proxy");
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "ringlb"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an echo within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    socket.close(None).await.unwrap();
}

/// Rings built so far (`ringlb_ring_rebuilds_total`).
async fn ring_rebuilds(lb: &Ringlb) -> u64 {
    let text = lb.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix("ringlb_ring_rebuilds_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("ringlb_ring_rebuilds_total in /metrics")
}

/// A replica that answers every HTTP/1.1 request 200 until [`BlackHole::close`]; then
/// it takes no connection at all: its accept queue is full, so a new connection's SYN
/// goes unanswered, as to a host that is gone.
struct BlackHole {
    listener: std::net::TcpListener,
    addr: std::net::SocketAddr,
    accepting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Connections that fill the accept queue.
    fillers: Vec<TcpStream>,
}

impl BlackHole {
    fn start() -> BlackHole {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let thread = std::thread::spawn({
            let (listener, accepting, accepted) = (
                listener.try_clone().unwrap(),
                accepting.clone(),
                accepted.clone(),
            );
            move || {
                while accepting.load(Ordering::SeqCst) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    accepted.lock().unwrap().push(stream.try_clone().unwrap());
                    std::thread::spawn(move || answer_every_request(stream));
                }
            }
        });
        BlackHole {
            listener,
            addr,
            accepting,
            accepted,
            thread: Some(thread),
            fillers: Vec::new(),
        }
    }

    fn close(&mut self) {
        use std::os::fd::AsRawFd;
        self.accepting.store(false, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        for stream in self.accepted.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        // SAFETY: `listen` on a socket this value owns and keeps open; it only
        // changes the length of the socket's accept queue.
        let listened = unsafe { libc::listen(self.listener.as_raw_fd(), 0) };
        assert_eq!(listened, 0, "{}", std::io::Error::last_os_error());
        // Connections nobody accepts, until one is no longer taken in.
        while let Ok(filler) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(300)) {
            self.fillers.push(filler);
            assert!(self.fillers.len() < 64, "the accept queue never filled");
        }
    }
}

/// Answers each request on `stream` (a head without a body) 200 `hole`, until it closes.
fn answer_every_request(mut stream: TcpStream) {
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => read.extend_from_slice(&chunk[..n]),
        }
        while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            read.drain(..end + 4);
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nhole";
            if stream.write_all(answer).is_err() {
                return;
            }
        }
    }
}

/// A POST still connecting to its replica when that replica is taken out of the ring
/// (its heartbeats time out: it takes no connection) had nothing of it sent: it goes on
/// to the next replica, though a POST is never sent again once it may have been. On
/// the fast path (HTTP/1.1) and on the general path (an HTTP/2 stream), at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_cut_loose_while_connecting_goes_to_the_next_replica() {
    use ringlb::ring::{Ring, RingConfig};
    let mut hole = BlackHole::start();
    let fake = FakeReplica::start();
    let lb = Ringlb::start(
        &[
            &[
                "--replica",
                &format!("Hole={}", hole.addr),
                "--replica",
                &format!("Fake={}", fake.addr),
                "--key",
                "header:x-user-id",
                // Longer than the heartbeats take to find the replica gone.
                "--connect-timeout",
                "30s",
            ][..],
            &ringlb_testkit::FAST_HEARTBEATS,
        ]
        .concat(),
    );
    lb.until_routable(&["Fake", "Hole"]).await;
    let ring = Ring::build(&["Hole", "Fake"], &RingConfig::default());
    let key = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| ring.members()[ring.lookup(k.as_bytes()).unwrap()] == "Hole")
        .unwrap();
    // Replica connections pooled before the hole closes are closed with it.
    let (status, body) = post_h1(&lb.http, &lb.proxy_url("/pay"), &key).await;
    assert_eq!((status, body.as_str()), (200, "hole"));

    hole.close();
    let h1 = tokio::spawn({
        let (http, url, key) = (lb.http.clone(), lb.proxy_url("/pay"), key.clone());
        async move { post_h1(&http, &url, &key).await }
    });
    let h2 = tokio::spawn({
        let (addr, key) = (lb.proxy, key.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (send, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            let mut send = send.ready().await.unwrap();
            let request = http::Request::post("http://localhost/pay")
                .header("x-user-id", key)
                .body(())
                .unwrap();
            let (response, mut body) = send.send_request(request, false).unwrap();
            body.send_data(bytes::Bytes::from_static(b"pay once"), true)
                .unwrap();
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                text.extend_from_slice(&chunk.unwrap());
            }
            (status, String::from_utf8_lossy(&text).into_owned())
        }
    });
    for (path, answer) in [
        ("HTTP/1.1", h1.await.unwrap()),
        ("HTTP/2", h2.await.unwrap()),
    ] {
        assert_eq!(answer, (200, "Server: Fake".to_owned()), "{path}");
    }
    assert!(
        !lb.routable().await.contains("Hole"),
        "the hole was ejected"
    );
}

/// `POST url` keyed on `key` over HTTP/1.1: the status and the body.
async fn post_h1(http: &reqwest::Client, url: &str, key: &str) -> (u16, String) {
    let response = http
        .post(url)
        .header("x-user-id", key)
        .body("pay once")
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}
