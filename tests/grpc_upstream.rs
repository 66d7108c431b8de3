//! HTTP/2 and gRPC to the replicas, end to end: `ringlb up --upstream-protocol h2c|auto`
//! in front of fake h2c replicas (below) that answer with trailers, refuse a stream
//! (`REFUSED_STREAM`), send `GOAWAY` below it, reset a stream after reading it, or
//! never answer. Each also answers HTTP/1.1 (the heartbeats, and `auto`'s HTTP/1.1
//! requests) with its name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use ringlb::ring::{Ring, RingConfig};
use ringlb_testkit::{FAST_HEARTBEATS, Ringlb, home_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---- the fake h2c replica ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// 200, the request body echoed after the name, trailers `grpc-status: 0` and
    /// `x-served-by: <name>`.
    Answer,
    /// Every stream reset with `REFUSED_STREAM` before it is read.
    Refuse,
    /// `GOAWAY` with last stream id 0 at the first stream, then the connection closed.
    GoAway,
    /// The request body read whole, then the stream reset (`INTERNAL_ERROR`).
    ResetAfterRead,
    /// Streams taken and never answered.
    Silent,
    /// The response head and a first message, then nothing more.
    Stall,
    /// The request read whole (so perhaps acted on), then `GOAWAY` naming its stream
    /// as the last, with this error code (0 is `NO_ERROR`); then the connection ends,
    /// closed or (`true`) after a frame `h2` must take as a protocol error.
    GoAwayAfterRead(u32, bool),
    /// A stream whose body is `slow` answered (as `Answer`) after 500 ms; any other
    /// refused (`REFUSED_STREAM`), as a replica at its stream limit refuses more.
    SlowOrRefuse,
}

struct FakeH2 {
    name: String,
    addr: SocketAddr,
    /// HTTP/2 streams (or, for `GoAway`, HEADERS frames) received.
    streams: Arc<AtomicUsize>,
    /// The request bodies read whole, in order (Answer, ResetAfterRead, SlowOrRefuse).
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeH2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeH2 {
    async fn start(name: &str, mode: Mode) -> FakeH2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counted, named, read) = (streams.clone(), name.to_owned(), bodies.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Seen {
                    streams: counted.clone(),
                    bodies: read.clone(),
                };
                tokio::spawn(serve(stream, named.clone(), mode, seen));
            }
        });
        FakeH2 {
            name: name.to_owned(),
            addr,
            streams,
            bodies,
            task,
        }
    }

    fn arg(&self) -> String {
        format!("{}={}", self.name, self.addr)
    }

    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// Whether a request body `body` was read here.
    fn read(&self, body: &str) -> bool {
        self.bodies.lock().unwrap().iter().any(|b| b == body)
    }
}

/// What a fake replica counts and keeps of what it receives.
#[derive(Clone)]
struct Seen {
    streams: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn serve(stream: TcpStream, name: String, mode: Mode, seen: Seen) {
    let Seen { streams, bodies } = seen;
    let mut first = [0u8; 3];
    // Prior knowledge starts with "PRI"; anything else is HTTP/1.1.
    if stream.peek(&mut first).await.is_err() {
        return;
    }
    if &first != b"PRI" {
        return serve_http1(stream, &name).await;
    }
    match mode {
        Mode::GoAway => return go_away(stream, &streams, None).await,
        Mode::GoAwayAfterRead(reason, garbage) => {
            return go_away(stream, &streams, Some((reason, garbage))).await;
        }
        _ => {}
    }
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        streams.fetch_add(1, Ordering::SeqCst);
        let (name, bodies) = (name.clone(), bodies.clone());
        tokio::spawn(async move {
            match mode {
                Mode::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
                Mode::Silent => std::future::pending::<()>().await,
                Mode::Stall => {
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let Ok(mut send) = respond.send_response(head, false) else {
                        return;
                    };
                    let _ = send.send_data(Bytes::from_static(b"first"), false);
                    std::future::pending::<()>().await;
                }
                Mode::Answer | Mode::ResetAfterRead | Mode::SlowOrRefuse => {
                    let mut body = request.into_body();
                    let mut read = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        read.extend_from_slice(&chunk);
                    }
                    let body = String::from_utf8_lossy(&read).into_owned();
                    bodies.lock().unwrap().push(body);
                    if mode == Mode::ResetAfterRead {
                        return respond.send_reset(h2::Reason::INTERNAL_ERROR);
                    }
                    if mode == Mode::SlowOrRefuse {
                        if read != b"slow" {
                            return respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let Ok(mut send) = respond.send_response(head, false) else {
                        return;
                    };
                    let echo = format!("{name}:{}", String::from_utf8_lossy(&read));
                    let _ = send.send_data(Bytes::from(echo), false);
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("x-served-by", name.parse().unwrap());
                    let _ = send.send_trailers(trailers);
                }
                Mode::GoAway | Mode::GoAwayAfterRead(..) => unreachable!("answered in raw frames"),
            }
        });
    }
}

/// Raw frames: the preface read, an empty SETTINGS, then `GOAWAY` and the connection
/// closed. Without `after_read`, the `GOAWAY` comes at the first HEADERS and its last
/// stream id (0) is below it. With `(reason, garbage)`, it comes once a stream's
/// request has ended, names that stream and carries `reason`; with `garbage`, a DATA
/// frame on stream 0 (a connection error, RFC 9113 §6.1) follows it.
async fn go_away(mut stream: TcpStream, streams: &AtomicUsize, after_read: Option<(u32, bool)>) {
    const END_STREAM: u8 = 0x1;
    let mut preface = [0u8; 24];
    if stream.read_exact(&mut preface).await.is_err() {
        return;
    }
    let _ = stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
    loop {
        let mut head = [0u8; 9];
        if stream.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if kind == 0x1 {
            streams.fetch_add(1, Ordering::SeqCst);
        }
        let (last, reason, garbage) = match after_read {
            None if kind == 0x1 => (0, 0, false),
            Some((reason, garbage)) if kind <= 0x1 && flags & END_STREAM != 0 => {
                (id, reason, garbage)
            }
            _ => continue,
        };
        // GOAWAY: length 8, type 7, stream 0; the last stream id and the error code.
        let mut frame = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
        frame.extend(last.to_be_bytes());
        frame.extend(reason.to_be_bytes());
        if garbage {
            // DATA, length 1, on stream 0.
            frame.extend([0, 0, 1, 0, 0, 0, 0, 0, 0, b'x']);
        }
        let _ = stream.write_all(&frame).await;
        if garbage {
            // Time for the proxy to read the frame and end the connection itself.
            let mut rest = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        let _ = stream.shutdown().await;
        return;
    }
}

/// HTTP/1.1: every request (heartbeats included) answered 200 with the name.
async fn serve_http1(mut stream: TcpStream, name: &str) {
    let body = format!(r#"{{"message": "Hello from Server: {name}", "status": "successful"}}"#);
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            read.drain(..end + 4);
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read.extend_from_slice(&buf[..n]),
        }
    }
}

// ---- the client -------------------------------------------------------------------

/// What a gRPC client sees of one call.
#[derive(Debug)]
struct Call {
    status: u16,
    headers: HeaderMap,
    body: String,
    trailers: Option<HeaderMap>,
}

impl Call {
    /// `grpc-status`: from the trailers, or the headers of a trailers-only answer.
    fn grpc_status(&self) -> Option<&str> {
        let trailers = self.trailers.as_ref().and_then(|t| t.get("grpc-status"));
        trailers
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap())
    }

    fn served_by(&self) -> Option<&str> {
        let trailers = self.trailers.as_ref()?;
        trailers.get("x-served-by").map(|v| v.to_str().unwrap())
    }
}

async fn connect_h2(lb: &Ringlb) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(lb.proxy).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// A unary gRPC-like POST on its own stream of `send`'s connection.
async fn call(send: &h2::client::SendRequest<Bytes>, headers: &[(&str, &str)], body: &str) -> Call {
    let mut request = http::Request::post("http://localhost/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut send = send.clone().ready().await.expect("ready");
    let (response, mut stream) = send
        .send_request(request.body(()).unwrap(), false)
        .expect("send");
    stream
        .send_data(Bytes::copy_from_slice(body.as_bytes()), true)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("an answer within 20 s")
        .expect("a response");
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    let rest = async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        body.trailers().await.expect("trailers")
    };
    let trailers = tokio::time::timeout(Duration::from_secs(20), rest)
        .await
        .expect("the answer's end within 20 s");
    Call {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        trailers,
    }
}

fn up(replicas: &[&FakeH2], protocol: &str, extra: &[&str]) -> Ringlb {
    let args: Vec<String> = replicas.iter().map(|r| r.arg()).collect();
    let mut all: Vec<&str> = Vec::new();
    for arg in &args {
        all.extend(["--replica", arg]);
    }
    all.extend(["--upstream-protocol", protocol, "--key", "header:x-user-id"]);
    all.extend(FAST_HEARTBEATS);
    all.extend(extra);
    Ringlb::start(&all)
}

// ---- the tests --------------------------------------------------------------------

/// `auto`: HTTP/1.1 requests go on in HTTP/1.1 and HTTP/2 streams in h2c, both keyed
/// the same; the streams of one connection each reach the key's replica, whose
/// trailers reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_streams_reach_the_ring_s_replica_with_their_trailers() {
    let fakes = [
        FakeH2::start("A", Mode::Answer).await,
        FakeH2::start("B", Mode::Answer).await,
        FakeH2::start("C", Mode::Answer).await,
    ];
    let lb = up(&[&fakes[0], &fakes[1], &fakes[2]], "auto", &[]);
    let send = connect_h2(&lb).await;
    let keys: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let mut by_h1 = BTreeMap::new();
    for key in &keys {
        let name = home_with(&lb.http, &lb.proxy_url("/home"), &[("x-user-id", key)])
            .await
            .unwrap();
        by_h1.insert(key.clone(), name);
    }
    let h1_streams: usize = fakes.iter().map(FakeH2::streams).sum();
    assert_eq!(h1_streams, 0, "HTTP/1.1 requests went on as HTTP/1.1");
    // Each key three times, all at once on the one connection.
    let calls = keys.iter().cycle().take(keys.len() * 3).map(|key| {
        let send = send.clone();
        async move { (key, call(&send, &[("x-user-id", key)], "hi").await) }
    });
    for (key, call) in futures::future::join_all(calls).await {
        assert_eq!(call.status, 200, "{key}: {call:?}");
        assert_eq!(call.grpc_status(), Some("0"), "{key}: {call:?}");
        let served_by = call.served_by().expect("the replica's trailers");
        assert_eq!(served_by, by_h1[key], "{key}: the ring's replica");
        assert_eq!(call.body, format!("{served_by}:hi"));
    }
    let streams: usize = fakes.iter().map(FakeH2::streams).sum();
    assert_eq!(streams, keys.len() * 3, "every stream went on in h2c");
    let used: std::collections::BTreeSet<_> = by_h1.values().collect();
    assert_eq!(used.len(), 3, "30 keys spread over 3 replicas: {by_h1:?}");
}

/// A stream the replica refused, or one above its GOAWAY's last stream id, was never
/// processed: a POST goes on to the next replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_goaway_streams_are_served_by_another_replica() {
    for mode in [Mode::Refuse, Mode::GoAway] {
        let refusing = FakeH2::start("R", mode).await;
        let serving = FakeH2::start("S", Mode::Answer).await;
        let lb = up(&[&refusing, &serving], "h2c", &[]);
        let send = connect_h2(&lb).await;
        for i in 0..20 {
            let key = format!("user-{i}");
            let call = call(&send, &[("x-user-id", &key)], "once").await;
            assert_eq!(call.grpc_status(), Some("0"), "{mode:?} {key}: {call:?}");
            assert_eq!(call.served_by(), Some("S"), "{mode:?} {key}: {call:?}");
        }
        assert!(refusing.streams() > 0, "{mode:?}: no key was R's first");
    }
}

/// A refused stream says nothing against its replica (it is alive, declining one
/// stream): the calls it is serving are not cut loose, and it stays in the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_leaves_its_replica_and_its_other_calls_alone() {
    let busy = FakeH2::start("R", Mode::SlowOrRefuse).await;
    let serving = FakeH2::start("S", Mode::Answer).await;
    let lb = up(&[&busy, &serving], "h2c", &[]);
    let send = connect_h2(&lb).await;
    // A key the ring sends to R first (the ring every ringlb builds from R and S).
    let ring = Ring::build(&["R", "S"], &RingConfig::default());
    let key = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| ring.members()[ring.lookup(k.as_bytes()).unwrap()] == "R")
        .unwrap();
    let slow = tokio::spawn({
        let (send, key) = (send.clone(), key.clone());
        async move { call(&send, &[("x-user-id", &key)], "slow").await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while busy.streams() == 0 {
        assert!(Instant::now() < deadline, "the slow call never reached R");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // R refuses this one: it goes on to S, and R keeps serving the slow call.
    let refused = call(&send, &[("x-user-id", &key)], "fast").await;
    assert_eq!(refused.served_by(), Some("S"), "{refused:?}");
    let slow = slow.await.unwrap();
    assert_eq!(slow.grpc_status(), Some("0"), "{slow:?}");
    assert_eq!(slow.served_by(), Some("R"), "{slow:?}");
    assert!(lb.routable().await.contains("R"), "R stays in the ring");
}

/// A POST the replica read and then reset may have been acted on: it is not sent to
/// another replica, and the client is told UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reset_after_it_was_read_is_not_sent_elsewhere() {
    let resetting = FakeH2::start("R", Mode::ResetAfterRead).await;
    let serving = FakeH2::start("S", Mode::Answer).await;
    let lb = up(&[&resetting, &serving], "h2c", &[]);
    let send = connect_h2(&lb).await;
    // Each call's body is its key, so that what each replica read is known by call,
    // whenever it was counted.
    let mut calls = Vec::new();
    for i in 0..20 {
        let key = format!("user-{i}");
        let call = call(&send, &[("x-user-id", &key)], &key).await;
        calls.push((key, call));
    }
    let mut reset = 0;
    for (key, call) in &calls {
        assert!(
            !(resetting.read(key) && serving.read(key)),
            "{key}: sent to both: {call:?}"
        );
        assert_eq!(call.status, 200, "{key}: {call:?}");
        if call.served_by() == Some("S") {
            continue;
        }
        // R's (a call cut loose when a heartbeat under load took R out is one too).
        reset += usize::from(resetting.read(key));
        assert!(!serving.read(key), "{key}: failed, yet S read it: {call:?}");
        assert_eq!(call.grpc_status(), Some("14"), "{key}: {call:?}");
        assert!(call.headers.contains_key("grpc-message"), "{call:?}");
    }
    assert!(reset > 0, "R read and reset no call");
}

/// A stream at or below a `GOAWAY`'s last stream id may have been processed, whatever
/// the `GOAWAY`'s code and however the connection ends after it: a POST the replica
/// read is not sent elsewhere, and the client is told UNAVAILABLE. (The `h2` crate
/// gives such a stream the connection's end, not the `GOAWAY`; this holds it to that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_read_before_a_goaway_is_not_sent_elsewhere() {
    const NO_ERROR: u32 = 0x0;
    const INTERNAL_ERROR: u32 = 0x2;
    for mode in [
        Mode::GoAwayAfterRead(NO_ERROR, false),
        Mode::GoAwayAfterRead(INTERNAL_ERROR, false),
        Mode::GoAwayAfterRead(NO_ERROR, true),
        Mode::GoAwayAfterRead(INTERNAL_ERROR, true),
    ] {
        let leaving = FakeH2::start("R", mode).await;
        let serving = FakeH2::start("S", Mode::Answer).await;
        let lb = up(&[&leaving, &serving], "h2c", &[]);
        let send = connect_h2(&lb).await;
        let mut read = 0;
        for i in 0..20 {
            let key = format!("user-{i}");
            let (r, s) = (leaving.streams(), serving.streams());
            let call = call(&send, &[("x-user-id", &key)], "once").await;
            if leaving.streams() == r {
                continue;
            }
            read += 1;
            assert_eq!(leaving.streams(), r + 1, "{mode:?} {key}: sent once");
            assert_eq!(
                serving.streams(),
                s,
                "{mode:?} {key}: not sent to S: {call:?}"
            );
            assert_eq!(call.grpc_status(), Some("14"), "{mode:?} {key}: {call:?}");
        }
        assert!(read > 0, "{mode:?}: no key was R's");
    }
}

/// `grpc-timeout` bounds the wait for the answer: DEADLINE_EXCEEDED, long before the
/// request timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_a_deadline() {
    let silent = FakeH2::start("Q", Mode::Silent).await;
    let lb = up(&[&silent], "h2c", &[]);
    let send = connect_h2(&lb).await;
    let started = Instant::now();
    let call = call(&send, &[("grpc-timeout", "300m")], "wait").await;
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(call.grpc_status(), Some("4"), "{call:?}");
    assert!(call.trailers.is_none(), "trailers only: {call:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(silent.streams(), 1);
}

/// An answer still streaming at the call's deadline ends there, with
/// DEADLINE_EXCEEDED in its trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_ends_an_answer_still_streaming() {
    let stalling = FakeH2::start("Q", Mode::Stall).await;
    let lb = up(&[&stalling], "h2c", &[]);
    let send = connect_h2(&lb).await;
    let started = Instant::now();
    let call = call(&send, &[("grpc-timeout", "500m")], "wait").await;
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(call.body, "first");
    assert_eq!(call.grpc_status(), Some("4"), "{call:?}");
    assert!(call.trailers.is_some(), "{call:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// No replica to send a call to: UNAVAILABLE, as a gRPC status and not a JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_is_unavailable() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let arg = format!("Gone={addr}");
    let lb = Ringlb::start(
        &[
            &["--replica", &arg, "--upstream-protocol", "h2c"][..],
            &FAST_HEARTBEATS[..],
        ]
        .concat(),
    );
    let send = connect_h2(&lb).await;
    let call = call(&send, &[], "x").await;
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(call.grpc_status(), Some("14"), "{call:?}");
    assert_eq!(call.body, "", "no JSON body");
    let message = call.headers["grpc-message"].to_str().unwrap();
    assert!(message.contains("replica"), "{message}");
}

/// `h2c`: an HTTP/1.1 request, which the fast path would send in HTTP/1.1, goes on in
/// h2c through the general path, keyed as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_go_on_in_h2c_to_an_h2c_pool() {
    let fakes = [
        FakeH2::start("A", Mode::Answer).await,
        FakeH2::start("B", Mode::Answer).await,
    ];
    let lb = up(&[&fakes[0], &fakes[1]], "h2c", &[]);
    let mut by_key = BTreeMap::new();
    for round in 0..2 {
        for i in 0..10 {
            let key = format!("user-{i}");
            let response = lb
                .http
                .post(lb.proxy_url("/echo"))
                .header("x-user-id", &key)
                .body("hello")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.text().await.unwrap();
            let (name, echoed) = body.split_once(':').expect("the fake's h2 answer");
            assert_eq!(echoed, "hello");
            if round == 0 {
                by_key.insert(key, name.to_owned());
            } else {
                assert_eq!(by_key[&key], name, "{key}: the same replica again");
            }
        }
    }
    let streams: usize = fakes.iter().map(FakeH2::streams).sum();
    assert_eq!(streams, 20, "every request went on in h2c");
}
