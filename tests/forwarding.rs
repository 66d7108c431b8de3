//! The proxy's HTTP/1.1 behaviour on the wire, against a scripted replica: every
//! response framing, hop-by-hop headers in both directions, request bodies, pipelined
//! requests, admin requests on a connection that was forwarding, and replica
//! connections that the replica closed while they sat idle in the pool.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::Ringlb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, oneshot};

/// A replica that answers by path, in raw HTTP/1.1 (so that the test, not a
/// library, decides the framing):
/// - `/heartbeat`: 200;
/// - `/chunked`: a chunked body in two chunks with a trailer, written in pieces;
/// - `/until-close`: a body without a length, ended by closing the connection;
/// - `/echo`: the request it received (head and body) as a `Content-Length` body,
///   with hop-by-hop response headers the proxy must drop;
/// - `/close-after`: a normal response, then the connection is closed without notice;
/// - `/missing`: 404;
/// - `/die`: counted in `died`, then the connection is closed without an answer, as
///   a replica that read the request and crashed;
/// - `/hold`: announces the request on `arrivals`, then answers once `release` is called;
/// - anything else: `Server: Fake` with a `Content-Length` body.
struct FakeReplica {
    addr: SocketAddr,
    /// Connections on which something other than a heartbeat arrived.
    proxied_connections: Arc<AtomicUsize>,
    /// Requests to `/die` received.
    died: Arc<AtomicUsize>,
    arrivals: mpsc::Receiver<()>,
    releases: Arc<Semaphore>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeReplica {
    fn start() -> FakeReplica {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let proxied_connections = Arc::new(AtomicUsize::new(0));
        let died = Arc::new(AtomicUsize::new(0));
        let (arrived, arrivals) = mpsc::channel();
        let releases = Arc::new(Semaphore::new(0));
        let scripts = Scripts {
            proxied: proxied_connections.clone(),
            died: died.clone(),
            arrived: Arc::new(Mutex::new(arrived)),
            releases: releases.clone(),
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let (stream, _) = listener.accept().await.unwrap();
                        tokio::spawn(serve_fake(stream, scripts.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        FakeReplica {
            addr,
            proxied_connections,
            died,
            arrivals,
            releases,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn proxied_connections(&self) -> usize {
        self.proxied_connections.load(Ordering::SeqCst)
    }

    /// Waits until a `/hold` request has arrived.
    fn wait_for_held_request(&self) {
        self.arrivals
            .recv_timeout(Duration::from_secs(10))
            .expect("the held request reaches the replica");
    }

    /// Lets one held request be answered.
    fn release(&self) {
        self.releases.add_permits(1);
    }
}

/// What the fake replica's connections share.
#[derive(Clone)]
struct Scripts {
    proxied: Arc<AtomicUsize>,
    died: Arc<AtomicUsize>,
    arrived: Arc<Mutex<mpsc::Sender<()>>>,
    releases: Arc<Semaphore>,
}

impl Drop for FakeReplica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_fake(mut stream: tokio::net::TcpStream, scripts: Scripts) {
    let mut buf = Vec::new();
    let mut counted = false;
    loop {
        // Read one request: head, then a Content-Length body.
        let (head_len, path, body_len, head_request) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
                let body_len = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                let head_request = request.method == Some("HEAD");
                break (
                    len,
                    request.path.unwrap().to_owned(),
                    body_len,
                    head_request,
                );
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..head_len + body_len).collect();
        let path = path.split('?').next().unwrap().to_owned();
        if path != "/heartbeat" && !counted {
            counted = true;
            scripts.proxied.fetch_add(1, Ordering::SeqCst);
        }
        let written =
            match path.as_str() {
                "/heartbeat" => stream.write_all(&fixed(200, "OK", "", b"")).await,
                "/chunked" => {
                    let pieces: [&[u8]; 4] = [
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello ",
                        b"\r\n5\r\nwor",
                        b"ld\r\n0\r\nX-Checksum: 1\r\n",
                        b"\r\n",
                    ];
                    let mut result = Ok(());
                    for piece in pieces {
                        result = stream.write_all(piece).await;
                        stream.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    result
                }
                "/until-close" => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nX-Framing: none\r\n\r\nall of it")
                        .await;
                    return;
                }
                "/echo" => stream
                    .write_all(&fixed(
                        200,
                        "OK",
                        "Connection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n",
                        &request,
                    ))
                    .await,
                "/die" => {
                    scripts.died.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                "/close-after" => {
                    let _ = stream.write_all(&fixed(200, "OK", "", b"bye")).await;
                    return;
                }
                "/hold" => {
                    let _ = scripts.arrived.lock().unwrap().send(());
                    scripts.releases.acquire().await.unwrap().forget();
                    stream
                        .write_all(&fixed(200, "OK", "", b"Server: Fake"))
                        .await
                }
                "/missing" => {
                    stream
                        .write_all(&fixed(404, "Not Found", "", b"nope"))
                        .await
                }
                _ if head_request => {
                    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
                    stream.write_all(head).await
                }
                _ => {
                    stream
                        .write_all(&fixed(200, "OK", "", b"Server: Fake"))
                        .await
                }
            };
        if written.is_err() {
            return;
        }
    }
}

fn fixed(status: u16, reason: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}

fn front(fake: &FakeReplica) -> Ringlb {
    Ringlb::start(&["--replica", &format!("Fake={}", fake.addr)])
}

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

/// Reads one response with a `Content-Length` body (or none) from `stream`,
/// keeping what follows in `buf`; returns (status, headers, body).
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, String) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = response.parse(buf) {
            let status = response.code.unwrap();
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
            while buf.len() < len + length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[len..len + length]).into_owned();
            buf.drain(..len + length);
            return (status, head, body);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn pipelined_requests_and_admin_requests_share_one_connection() {
    let fake = FakeReplica::start();
    let lb = front(&fake);
    let mut stream = TcpStream::connect(lb.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
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
    // takes it. Non-idempotent requests too must not fail for it: the replica cannot
    // have seen them.
    for round in 0..3 {
        let closed = lb
            .http
            .get(lb.proxy_url("/close-after"))
            .send()
            .await
            .unwrap();
        assert_eq!(closed.text().await.unwrap(), "bye");
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
        let mut stream = TcpStream::connect(lb.proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
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

    common::send_signal(lb.pid(), libc::SIGINT);
    common::wait_until_blocking(
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

    // A GET is idempotent: it is tried again (another connection or member).
    let get = lb.http.get(lb.proxy_url("/die")).send().await.unwrap();
    assert_eq!(get.status(), 502);
    assert!(
        fake.died.load(Ordering::SeqCst) >= 3,
        "the GET was sent again: {} arrivals in all",
        fake.died.load(Ordering::SeqCst)
    );
}
