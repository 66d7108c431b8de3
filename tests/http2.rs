//! The HTTP/2 front door end to end: h2c with prior knowledge on the HTTP/1.1 port
//! (curl, and a Rust client with many streams on one connection, each keyed on its
//! own), HTTP/2 and HTTP/1.1 over TLS by ALPN, the certificate reloaded under load,
//! the attack limits (rapid reset, an oversized header list) and GOAWAY on drain.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringlb_testkit::fake_replica::{FakeReplica, front};
use ringlb_testkit::{
    FAST_HEARTBEATS, Ringlb, TempDir, home_with, send_signal, server_name, wait_until,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

// ---- clients ----------------------------------------------------------------------

/// `curl -sS <args> URL`: the HTTP version, the status and the body.
fn curl(args: &[&str], url: &str) -> (String, u16, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} {url}: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (version, status) = tail.split_once(' ').unwrap();
    (version.to_owned(), status.parse().unwrap(), body.to_owned())
}

/// An HTTP/2 connection of the `h2` crate over `io`; its driver runs in a task.
async fn h2_over<T>(io: T) -> h2::client::SendRequest<Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// One request on its own stream of `send`'s connection: the status and the body.
async fn h2_get(
    send: &h2::client::SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut request = http::Request::get(format!("http://localhost{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut send = send
        .clone()
        .ready()
        .await
        .map_err(|e| format!("ready: {e}"))?;
    let (response, _) = send
        .send_request(request.body(()).unwrap(), true)
        .map_err(|e| format!("send: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// HTTP/2 frames written and read by hand, for what a well-behaved client never
/// sends. It answers the server's SETTINGS and PINGs itself.
struct RawH2 {
    stream: std::net::TcpStream,
    /// Whether PINGs are answered (a client that is gone answers none).
    answer_pings: bool,
}

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

struct Frame {
    kind: u8,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

impl RawH2 {
    fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
        RawH2 {
            stream,
            answer_pings: true,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame other than SETTINGS and PING; `None` once the server closed.
    fn read(&mut self) -> Option<Frame> {
        self.try_read()
            .unwrap_or_else(|e| panic!("reading a frame: {e}"))
    }

    /// [`RawH2::read`], with the read timeout's error.
    fn try_read(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            let mut head = [0u8; 9];
            match self.stream.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            match self.stream.read_exact(&mut payload) {
                Ok(()) => {}
                // Closed mid-frame (a connection cut off while it was written).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
            let got = Frame {
                kind: head[3],
                flags: head[4],
                id: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            match (got.kind, got.flags & 1) {
                // Acknowledged if the connection still takes it.
                (SETTINGS, 0) => drop(self.stream.write_all(&frame(SETTINGS, 1, 0, &[]))),
                (PING, 0) if self.answer_pings => {
                    drop(self.stream.write_all(&frame(PING, 1, 0, &got.payload)));
                }
                (PING, 0) => return Ok(Some(got)),
                (SETTINGS | PING, _) => {}
                _ => return Ok(Some(got)),
            }
        }
    }

    /// Frames until a GOAWAY: its error code; `None` if the server closed without one.
    fn until_goaway(&mut self) -> Option<u32> {
        while let Some(frame) = self.read() {
            if frame.kind == GOAWAY {
                return Some(u32::from_be_bytes(frame.payload[4..8].try_into().unwrap()));
            }
        }
        None
    }
}

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// The header block of `GET path` with `extra` headers (literals, never indexed).
fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // :method GET, :scheme http (static table 2 and 6).
    let mut block = vec![0x82, 0x86];
    // :path (static 4) and :authority (static 1), literal without indexing.
    for (index, value) in [(4u8, path), (1, "localhost")] {
        block.push(index);
        hpack_int(0, 7, value.len(), &mut block);
        block.extend_from_slice(value.as_bytes());
    }
    for (name, value) in extra {
        block.push(0);
        hpack_int(0, 7, name.len(), &mut block);
        block.extend_from_slice(name.as_bytes());
        hpack_int(0, 7, value.len(), &mut block);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// `GET path` on stream `id`, ended, in as many frames as the default frame size needs.
fn get_frames(id: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let block = get_block(path, extra);
    let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() {
            END_HEADERS
        } else {
            0
        };
        if i == 0 {
            out.extend(frame(HEADERS, END_STREAM | last, id, piece));
        } else {
            out.extend(frame(CONTINUATION, last, id, piece));
        }
    }
    out
}

fn rst_stream(id: u32) -> Vec<u8> {
    // CANCEL (0x8), as a client that gave up sends it.
    frame(RST_STREAM, 0, id, &8u32.to_be_bytes())
}

// ---- h2c --------------------------------------------------------------------------

#[tokio::test]
async fn curl_with_prior_knowledge_is_served_on_the_http1_port() {
    let lb = Ringlb::start(&["--key", "header:x-user-id"]);
    let h2c = ["--http2-prior-knowledge", "-H", "x-user-id: alice"];
    let (version, status, body) = curl(&h2c, &lb.proxy_url("/home"));
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let over_h2 = server_name(&body).expect("a replica answered");

    // The same port still speaks HTTP/1.1, and the same key reaches the same replica.
    let (version, status, body) = curl(&["-H", "x-user-id: alice"], &lb.proxy_url("/home"));
    assert_eq!((version.as_str(), status), ("1.1", 200), "{body}");
    assert_eq!(server_name(&body).unwrap(), over_h2);

    // The admin API and the JSON errors, over HTTP/2.
    let (_, status, body) = curl(&h2c, &lb.proxy_url("/rep"));
    assert_eq!(status, 200, "{body}");
    let rep: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rep["message"]["N"], 3, "{rep}");
    let (_, status, body) = curl(&h2c, &lb.proxy_url("/nope"));
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["status"], "failure");
    assert_eq!(
        error["message"],
        "<Error> '/nope' endpoint does not exist in server replicas"
    );
    let (_, status, body) = curl(
        &[&h2c[..], &["-X", "DELETE"]].concat(),
        &lb.proxy_url("/rep"),
    );
    assert_eq!(status, 405, "{body}");
}

/// A stream for the ring goes to the forwarding function without the router; what
/// the router added to its fallback's answers is still there: a HEAD stream gets the
/// GET's `Content-Length` and no body, and an error its JSON with its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_stream_gets_the_get_s_length_and_no_body() {
    let lb = Ringlb::start(&["--key", "header:x-user-id"]);
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let send = h2_over(tcp).await;
    let (status, body) = h2_get(&send, "/home", &[("x-user-id", "alice")])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    let mut head = send.clone().ready().await.unwrap();
    let request = http::Request::head("http://localhost/home")
        .header("x-user-id", "alice")
        .body(())
        .unwrap();
    let (response, _) = head.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        body.len().to_string().as_str()
    );
    let mut bytes = response.into_body();
    assert!(bytes.data().await.is_none(), "a HEAD answer has no body");

    // The proxy's own error for a path the replicas do not serve: JSON, its length told.
    let mut get = send.clone().ready().await.unwrap();
    let request = http::Request::get("http://localhost/nope")
        .body(())
        .unwrap();
    let (response, _) = get.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 400);
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(bytes.len(), length);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["status"], "failure");
}

// Threads of its own for the client's connection, which answers the proxy's
// goodbye (GOAWAY and PING) while the test's thread waits for the proxy to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_s_streams_are_each_balanced_on_their_own_key() {
    let lb = Ringlb::start(&["--key", "header:x-user-id"]);
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let send = h2_over(tcp).await;
    // A first stream, so that the client knows the server's limit of 128 streams at
    // once before the burst (it queues the rest; a client that sends more before it
    // heard the limit gets them refused, to retry).
    let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let keys: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    // Every key five times, all at once on the one connection: 200 streams.
    let requests = keys.iter().cycle().take(keys.len() * 5).map(|key| {
        let send = send.clone();
        async move {
            let answer = h2_get(&send, "/home", &[("x-user-id", key)]).await;
            (key.clone(), answer)
        }
    });
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, answer) in futures::future::join_all(requests).await {
        let (status, body) = answer.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(status, 200, "{key}: {body}");
        seen.entry(key)
            .or_default()
            .insert(server_name(&body).expect("a replica answered"));
    }
    for (key, replicas) in &seen {
        assert_eq!(replicas.len(), 1, "{key} reached {replicas:?}");
    }
    let used: BTreeSet<&String> = seen.values().flatten().collect();
    assert_eq!(
        used.len(),
        3,
        "40 keys spread over the 3 replicas: {seen:?}"
    );
    // As the ring says: the HTTP/1.1 path sends each key to the same replica.
    for (key, replicas) in &seen {
        let over_h1 = home_with(&lb.http, &lb.proxy_url("/home"), &[("x-user-id", key)])
            .await
            .unwrap();
        assert!(
            replicas.contains(&over_h1),
            "{key}: h2 {replicas:?}, HTTP/1.1 {over_h1}"
        );
    }
}

/// A stream reaches the replica as the HTTP/1.1 request a client would have sent
/// (its host from `:authority`, the client in `X-Forwarded-For`, its body), and the
/// answer comes back without the replica's hop-by-hop headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reaches_the_replica_as_an_http1_request() {
    let fake = FakeReplica::start();
    let lb = front(&fake);
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let send = h2_over(tcp).await;
    let mut post = send.clone().ready().await.unwrap();
    let request = http::Request::post("http://localhost/echo?q=1")
        .header("x-user-id", "u1")
        .body(())
        .unwrap();
    let (response, mut body) = post.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(b"hello h2"), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-kept"], "1");
    for hop in ["connection", "keep-alive", "x-hop"] {
        assert!(
            !response.headers().contains_key(hop),
            "{hop} reached the client"
        );
    }
    let mut echoed = Vec::new();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        echoed.extend_from_slice(&chunk.unwrap());
    }
    let echoed = String::from_utf8(echoed).unwrap();
    assert!(
        echoed.starts_with("POST /echo?q=1 HTTP/1.1\r\n"),
        "{echoed}"
    );
    let lower = echoed.to_ascii_lowercase();
    for line in [
        "host: localhost",
        "x-user-id: u1",
        "x-forwarded-for: 127.0.0.1",
        "content-length: 8",
    ] {
        assert!(
            lower.contains(&format!("\r\n{line}\r\n")),
            "{line} not in {echoed:?}"
        );
    }
    assert!(echoed.ends_with("\r\n\r\nhello h2"), "{echoed:?}");
}

/// A stream's answer read from the replica's pooled HTTP/1.1 connection, whatever its
/// framing: chunked (its trailers passed on), until the replica closes, a 404 turned
/// into the JSON 400; one connection serves the streams one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_s_answer_is_relayed_in_every_framing_over_one_replica_connection() {
    let fake = FakeReplica::start();
    let lb = front(&fake);
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let send = h2_over(tcp).await;

    let mut get = send.clone().ready().await.unwrap();
    let request = http::Request::get("http://localhost/chunked")
        .body(())
        .unwrap();
    let (response, _) = get.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("transfer-encoding"));
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(bytes, b"hello world");
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["x-checksum"], "1");

    for _ in 0..5 {
        let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "Server: Fake"));
    }
    let (status, body) = h2_get(&send, "/missing", &[]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("'/missing' endpoint does not exist"),
        "{body}"
    );
    let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "Server: Fake"));
    // One connection carried them all, one after the other.
    assert_eq!(fake.proxied_connections(), 1);

    let (status, body) = h2_get(&send, "/until-close", &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "all of it"));
    let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "Server: Fake"));
    assert_eq!(fake.proxied_connections(), 2);
}

/// The one failover policy, for streams too: a POST a replica read is never sent
/// again, a GET is; both end in the JSON 502.
// Threads of its own for the client's connection, which answers the proxy's
// goodbye (GOAWAY and PING) while the test's thread waits for the proxy to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_s_post_the_replica_read_is_never_sent_again() {
    // Two replicas that both die at /die: a retry to "the next replica" dies too.
    let fakes = [FakeReplica::start(), FakeReplica::start()];
    let died = || {
        fakes
            .iter()
            .map(|fake| fake.died.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let (a, b) = (
        format!("A={}", fakes[0].addr),
        format!("B={}", fakes[1].addr),
    );
    let lb = Ringlb::start(&[&["--replica", &a, "--replica", &b], &FAST_HEARTBEATS[..]].concat());
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let send = h2_over(tcp).await;

    let mut post = send.clone().ready().await.unwrap();
    let request = http::Request::post("http://localhost/die")
        .body(())
        .unwrap();
    let (response, mut body) = post.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(b"pay once"), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 502);
    let mut json = Vec::new();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        json.extend_from_slice(&chunk.unwrap());
    }
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["status"], "failure", "{json}");
    assert_eq!(died(), 1, "the POST reached replicas once");

    // The GET is sent again, once both members are back in the ring (each failure
    // takes its member out until it is checked).
    wait_until("both members serving", Duration::from_secs(10), || async {
        let ring = lb.ring_json().await;
        let serving = ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["in_ring"] == true)
            .count();
        match h2_get(&send, "/home", &[]).await {
            Ok((200, _)) if serving == 2 => Ok(()),
            other => Err(format!("{serving} serving, /home: {other:?}")),
        }
    })
    .await;
    let (status, body) = h2_get(&send, "/die", &[]).await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        died() >= 3,
        "the GET was sent again: {} arrivals in all",
        died()
    );
}

/// A replica that stalls mid-body under an HTTP/2 stream: after `--read-timeout` the
/// stream is reset (its answer cannot be finished), the replica reported and counted,
/// and the connection's other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stalls_mid_body_cuts_off_its_stream_only() {
    let fake = FakeReplica::start();
    let replica = format!("Fake={}", fake.addr);
    let lb = Ringlb::start(&["--replica", &replica, "--read-timeout", "500ms"]);
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let send = h2_over(tcp).await;
    let stalled = tokio::time::timeout(Duration::from_secs(10), h2_get(&send, "/stall-body", &[]))
        .await
        .expect("the stalled stream ends within 10 s");
    let error = stalled.expect_err("a stream whose body stalled is not a whole answer");
    assert!(error.starts_with("body:"), "{error}");
    // The connection still serves (the replica itself is out until a heartbeat answers).
    let (status, body) = h2_get(&send, "/rep", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let metrics = lb.metrics().await;
    assert!(
        metrics.contains(r#"ringlb_upstream_read_timeouts_total{pool="local",replica="Fake"} 1"#),
        "{metrics}"
    );
}

// ---- limits -----------------------------------------------------------------------

#[test]
fn rapid_reset_closes_the_connection_with_goaway_past_the_limit() {
    let lb = Ringlb::start(&["--h2-max-pending-resets", "10"]);

    // Below the limit: the connection goes on and serves the next stream.
    let mut raw = RawH2::connect(lb.proxy);
    let mut burst = Vec::new();
    for id in (1..).step_by(2).take(5) {
        burst.extend(get_frames(id, "/home", &[]));
        burst.extend(rst_stream(id));
    }
    burst.extend(get_frames(11, "/home", &[]));
    raw.send(&burst);
    loop {
        let frame = raw
            .read()
            .expect("the connection stays open below the limit");
        assert_ne!(frame.kind, GOAWAY, "GOAWAY below the limit");
        if frame.id == 11 && frame.kind == DATA && frame.flags & END_STREAM != 0 {
            break;
        }
    }

    // Past it (12 > 10, and below h2's own default of 20): GOAWAY ENHANCE_YOUR_CALM
    // (0xb), and the connection closes.
    let mut raw = RawH2::connect(lb.proxy);
    let mut burst = Vec::new();
    for id in (1..).step_by(2).take(12) {
        burst.extend(get_frames(id, "/home", &[]));
        burst.extend(rst_stream(id));
    }
    raw.send(&burst);
    assert_eq!(raw.until_goaway(), Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
    while raw.read().is_some() {}
}

// Threads of its own for the client's connection, which answers the proxy's
// goodbye (GOAWAY and PING) while the test's thread waits for the proxy to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_lists_are_refused_and_the_connection_kept() {
    let lb = Ringlb::start(&["--key", "header:x-user-id"]);
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let send = h2_over(tcp).await;

    // Above the header list limit (64 KiB by default): the JSON 431, before anything
    // else is looked at.
    let big = "a".repeat(70 * 1024);
    let (status, body) = h2_get(&send, "/home", &[("x-big", &big)]).await.unwrap();
    assert_eq!(status, 431, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("header list is larger than 65536 bytes"),
        "{json}"
    );
    // A gRPC call is told RESOURCE_EXHAUSTED in trailers-only form, for the list and
    // for a line above the HTTP/1.1 limit alike.
    let long = "a".repeat(9 * 1024);
    for header in [&big, &long] {
        let request = http::Request::post("http://localhost/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("x-big", header.as_str())
            .body(())
            .unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        let (response, _) = ready.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "8", "{response:?}");
    }
    // Above twice the limit the HTTP/2 layer answers by itself: a bare 431, or a reset.
    let huge = "a".repeat(140 * 1024);
    match h2_get(&send, "/home", &[("x-big", &huge)]).await {
        Ok((status, body)) => assert_eq!(status, 431, "{body}"),
        Err(error) => assert!(error.contains("refused"), "{error}"),
    }
    // Within it, but a header line above the HTTP/1.1 limit (8 KiB): the same JSON
    // 431 as HTTP/1.1 gets.
    let (status, body) = h2_get(&send, "/home", &[("x-long", &long)]).await.unwrap();
    assert_eq!(status, 431, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "failure");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("header line is longer than 8192 bytes"),
        "{json}"
    );
    // The connection is still good.
    let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_oversized_header_list_is_refused_on_the_wire() {
    let lb = Ringlb::start(&["--h2-max-header-list", "4096"]);
    let mut raw = RawH2::connect(lb.proxy);
    // 5 KiB of headers, above the 4 KiB set: stream 1 is answered the JSON 431, not
    // forwarded. 9 KiB, above twice that: stream 3 is refused by the HTTP/2 layer (a
    // bare 431, then reset). Stream 5 is served.
    raw.send(&get_frames(1, "/home", &[("x-big", &"v".repeat(5 * 1024))]));
    raw.send(&get_frames(3, "/home", &[("x-big", &"v".repeat(9 * 1024))]));
    raw.send(&get_frames(5, "/home", &[]));
    let mut bodies: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut refused = false;
    let mut served = false;
    while !(served && refused && bodies.get(&1).is_some_and(|b| b.ends_with(b"}"))) {
        let frame = raw.read().expect("the connection stays open");
        assert_ne!(frame.kind, GOAWAY);
        match (frame.id, frame.kind) {
            (3, RST_STREAM | HEADERS) => refused = true,
            (3, DATA) => panic!("stream 3 got a body: it was forwarded"),
            (5, DATA) if frame.flags & END_STREAM != 0 => served = true,
            (id, DATA) => bodies.entry(id).or_default().extend(&frame.payload),
            _ => {}
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&bodies[&1]).unwrap();
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("header list is larger than 4096 bytes"),
        "{json}"
    );
}

// ---- drain ------------------------------------------------------------------------

#[test]
fn a_drain_sends_goaway_and_lets_open_streams_finish() {
    let fake = FakeReplica::start();
    let mut lb = front(&fake);
    let mut raw = RawH2::connect(lb.proxy);
    raw.send(&get_frames(1, "/hold", &[]));
    fake.wait_for_held_request();

    send_signal(lb.pid(), libc::SIGTERM);
    assert_eq!(raw.until_goaway(), Some(0), "GOAWAY NO_ERROR on drain");
    // The open stream still gets its whole response, then the connection closes.
    fake.release();
    let mut head = false;
    loop {
        let frame = raw
            .read()
            .expect("the held stream finishes before the close");
        assert_ne!(frame.kind, RST_STREAM, "the held stream was reset");
        if frame.id == 1 && frame.kind == HEADERS {
            // :status 200 is entry 8 of HPACK's static table.
            assert_eq!(frame.payload[0], 0x88, "status 200");
            head = true;
        }
        if frame.id == 1 && frame.kind == DATA && frame.flags & END_STREAM != 0 {
            break;
        }
    }
    assert!(head);
    while let Some(frame) = raw.read() {
        assert!(frame.kind == GOAWAY, "only a last GOAWAY may follow");
    }
    let exit = lb.wait_exit(Duration::from_secs(8)).expect("ringlb exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn an_idle_connection_is_closed_with_goaway_but_not_one_with_an_open_stream() {
    let fake = FakeReplica::start();
    let replica = format!("Fake={}", fake.addr);
    let lb = Ringlb::start(&["--replica", &replica, "--keepalive-timeout", "300ms"]);
    let mut raw = RawH2::connect(lb.proxy);
    raw.send(&get_frames(1, "/hold", &[]));
    fake.wait_for_held_request();
    // Three idle timeouts with the stream open: no frame but the connection's settings.
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let quiet = loop {
        match raw.try_read() {
            Ok(Some(frame)) => assert_ne!(frame.kind, GOAWAY, "GOAWAY with a stream open"),
            Ok(None) => panic!("closed with a stream open"),
            Err(e) => break e,
        }
    };
    assert_eq!(quiet.kind(), std::io::ErrorKind::WouldBlock, "{quiet}");
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    fake.release();
    loop {
        let frame = raw.read().expect("the held stream finishes");
        assert_ne!(frame.kind, GOAWAY, "GOAWAY before the open stream finished");
        if frame.id == 1 && frame.kind == DATA && frame.flags & END_STREAM != 0 {
            break;
        }
    }
    // Then, idle: GOAWAY NO_ERROR and the close.
    assert_eq!(raw.until_goaway(), Some(0));
    while let Some(frame) = raw.read() {
        assert_eq!(frame.kind, GOAWAY, "only a last GOAWAY may follow");
    }
}

/// With `--h2-ping-interval`, a client that answers no PING is closed after the ping
/// timeout, though a stream is open (so the idle timeout does not apply); one that
/// answers stays.
#[test]
fn a_client_that_answers_no_ping_is_closed_after_the_ping_timeout() {
    let fake = FakeReplica::start();
    let replica = format!("Fake={}", fake.addr);
    let lb = Ringlb::start(&[
        "--replica",
        &replica,
        "--h2-ping-interval",
        "200ms",
        "--h2-ping-timeout",
        "300ms",
    ]);
    let mut answering = RawH2::connect(lb.proxy);
    answering.send(&get_frames(1, "/hold", &[]));
    fake.wait_for_held_request();
    // Read (and so PINGs answered) all along, until its stream finishes.
    let answering = std::thread::spawn(move || {
        while let Some(frame) = answering.read() {
            if frame.id == 1 && frame.kind == DATA && frame.flags & END_STREAM != 0 {
                return true;
            }
        }
        false
    });
    let mut silent = RawH2::connect(lb.proxy);
    silent.answer_pings = false;
    silent.send(&get_frames(1, "/hold", &[]));
    fake.wait_for_held_request();
    let mut pings = 0;
    while let Some(frame) = silent.read() {
        if frame.kind == PING {
            pings += 1;
        }
    }
    assert!(pings >= 1, "closed before a PING");
    // The answering client's stream is still served.
    fake.release();
    fake.release();
    assert!(
        answering.join().unwrap(),
        "the answering client's stream finishes"
    );
}

/// A client that stops reading the connection is closed once a write has waited for
/// `--send-timeout`, though its flow-control windows let ringlb send.
#[test]
fn an_h2_client_that_stops_reading_is_closed_after_the_send_timeout() {
    use ringlb_testkit::fake_replica::BIG;
    const WINDOW_UPDATE: u8 = 0x8;
    let fake = FakeReplica::start();
    let replica = format!("Fake={}", fake.addr);
    let lb = Ringlb::start(&["--replica", &replica, "--send-timeout", "300ms"]);
    let mut raw = RawH2::connect(lb.proxy);
    // The largest windows: SETTINGS_INITIAL_WINDOW_SIZE for the stream, a
    // WINDOW_UPDATE for the connection.
    let max_window: u32 = (1 << 31) - 1;
    let mut settings = vec![0, 4];
    settings.extend(max_window.to_be_bytes());
    raw.send(&frame(SETTINGS, 0, 0, &settings));
    raw.send(&frame(
        WINDOW_UPDATE,
        0,
        0,
        &(max_window - 65_535).to_be_bytes(),
    ));
    raw.send(&get_frames(1, "/big", &[]));
    // Reading nothing for longer than the timeout.
    std::thread::sleep(Duration::from_millis(1500));
    let mut data = 0;
    while let Some(frame) = raw.read() {
        if frame.kind == DATA {
            data += frame.payload.len();
        }
    }
    assert!(data > 0 && data < BIG, "{data} bytes of the body");
}

// ---- TLS --------------------------------------------------------------------------

/// A test CA and leaf certificates for `localhost` and 127.0.0.1 signed by it.
struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringlb test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, pem }
    }

    /// A new leaf: its certificate and key, in PEM.
    fn leaf(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client that trusts this CA and offers `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // A full handshake every time: a resumed session is shown no certificate.
        config.resumption = rustls::client::Resumption::disabled();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

fn write_pair(dir: &Path, (cert, key): &(String, String)) -> (String, String) {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (
        cert_path.to_str().unwrap().to_owned(),
        key_path.to_str().unwrap().to_owned(),
    )
}

/// A TLS connection that negotiated HTTP/2: the leaf certificate it was shown.
async fn tls_h2(
    addr: SocketAddr,
    client: &tokio_rustls::TlsConnector,
) -> Result<(Vec<u8>, h2::client::SendRequest<Bytes>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = client
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let session = tls.get_ref().1;
    if session.alpn_protocol() != Some(b"h2") {
        return Err(format!("ALPN chose {:?}", session.alpn_protocol()));
    }
    let leaf = session.peer_certificates().unwrap()[0].to_vec();
    let (send, connection) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((leaf, send))
}

// Threads of its own for the client's connection, which answers the proxy's
// goodbye (GOAWAY and PING) while the test's thread waits for the proxy to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_h2_and_http1_by_alpn() {
    let dir = TempDir::new("h2-tls");
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir.0, &ca.leaf());
    let ca_path = dir.0.join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let lb = Ringlb::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("https://localhost:{}/home", lb.proxy.port());
    let resolve = format!("localhost:{}:127.0.0.1", lb.proxy.port());
    let tls = ["--cacert", ca_path.to_str().unwrap(), "--resolve", &resolve];

    let (version, status, body) = curl(&[&tls[..], &["--http2"]].concat(), &url);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(server_name(&body).is_some(), "{body}");
    let (version, status, body) = curl(&[&tls[..], &["--http1.1"]].concat(), &url);
    assert_eq!((version.as_str(), status), ("1.1", 200), "{body}");
    assert!(server_name(&body).is_some(), "{body}");

    // The Rust client too, and HTTP/1.1 when it offers only that.
    let (_, send) = tls_h2(lb.proxy, &ca.client(&[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let only_h1 = ca.client(&[b"http/1.1"]).connect(name, tcp).await.unwrap();
    assert_eq!(only_h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // No plain HTTP on a TLS port.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5", &lb.proxy_url("/home")])
        .output()
        .unwrap();
    assert!(!plain.status.success() || plain.stdout.is_empty());
}

/// Over `--max-connections`, a TLS connection is closed before its handshake, with no
/// plain-text 503 in the way of it; the connections within the cap are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_a_tls_client_is_closed_without_plain_text() {
    let dir = TempDir::new("h2-tls-cap");
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir.0, &ca.leaf());
    let lb = Ringlb::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--max-connections",
        "1",
    ]);
    let client = ca.client(&[b"h2"]);
    let (_, send) = tls_h2(lb.proxy, &client).await.unwrap();
    let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");

    let mut over = lb.connect_raw();
    let mut got = Vec::new();
    let read = over.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "{read:?}: {:?}",
        String::from_utf8_lossy(&got)
    );
    let refused = tls_h2(lb.proxy, &client).await;
    assert!(refused.is_err(), "a handshake over the cap");
    // The one within the cap goes on.
    let (status, body) = h2_get(&send, "/home", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_certificate_is_reloaded_under_load_without_a_failed_request() {
    let dir = TempDir::new("h2-reload");
    let ca = TestCa::new();
    let first = ca.leaf();
    let (cert, key) = write_pair(&dir.0, &first);
    let lb = Ringlb::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let client = ca.client(&[b"h2"]);
    let leaf_der = |pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let second = ca.leaf();
    let (old_leaf, new_leaf) = (leaf_der(&first.0), leaf_der(&second.0));

    // A connection opened before the reload, used throughout.
    let (leaf, kept) = tls_h2(lb.proxy, &client).await.unwrap();
    assert_eq!(leaf, old_leaf);

    let stop = Arc::new(AtomicBool::new(false));
    let served_new = Arc::new(AtomicUsize::new(0));
    let served_old = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (stop, client) = (stop.clone(), client.clone());
        let (served_new, served_old) = (served_new.clone(), served_old.clone());
        let (old_leaf, new_leaf) = (old_leaf.clone(), new_leaf.clone());
        let addr = lb.proxy;
        // A new connection, so a new handshake, for every request.
        load.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = match tls_h2(addr, &client).await {
                    Ok((leaf, send)) => h2_get(&send, "/home", &[]).await.map(|a| (leaf, a)),
                    Err(error) => Err(error),
                };
                match answer {
                    Ok((leaf, (200, _))) if leaf == new_leaf => {
                        served_new.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok((leaf, (200, _))) if leaf == old_leaf => {
                        served_old.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok((_, (status, body))) => {
                        failures.push(format!("{status}: {body}"));
                        0
                    }
                    Err(error) => {
                        failures.push(error);
                        0
                    }
                };
            }
            failures
        });
    }
    {
        let (stop, kept) = (stop.clone(), kept.clone());
        load.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match h2_get(&kept, "/home", &[]).await {
                    Ok((200, _)) => {}
                    Ok((status, body)) => failures.push(format!("kept: {status}: {body}")),
                    Err(error) => failures.push(format!("kept: {error}")),
                }
            }
            failures
        });
    }
    let count = |n: &Arc<AtomicUsize>| n.load(Ordering::Relaxed);
    wait_until(
        "requests with the first certificate",
        Duration::from_secs(20),
        || async {
            let n = count(&served_old);
            if n >= 50 { Ok(()) } else { Err(format!("{n}")) }
        },
    )
    .await;
    // Written in place, one file after the other, as a renewal might: for a moment
    // the new certificate stands beside the old key.
    write_pair(&dir.0, &second);
    wait_until(
        "requests with the new certificate",
        Duration::from_secs(20),
        || async {
            let n = count(&served_new);
            if n >= 50 { Ok(()) } else { Err(format!("{n}")) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(done) = load.join_next().await {
        failures.extend(done.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    // The kept connection still works, on the certificate it began with.
    let (status, _) = h2_get(&kept, "/home", &[]).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        lb.stderr().contains("TLS certificate reloaded"),
        "{}",
        lb.stderr()
    );
}
