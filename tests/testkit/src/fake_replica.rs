//! A scripted replica for the proxy's end-to-end tests: it answers in raw HTTP/1.1,
//! so that the test, not a library, decides the framing and the misbehaviour.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, oneshot};

use crate::Ringlb;

/// A replica that answers by path, in raw HTTP/1.1 (so that the test, not a
/// library, decides the framing):
/// - `/heartbeat`: 200;
/// - `/chunked`: a chunked body in two chunks with a trailer, written in pieces;
/// - `/until-close`: a body without a length, ended by closing the connection;
/// - `/echo`: the request it received (head and body) as a `Content-Length` body,
///   with hop-by-hop response headers the proxy must drop;
/// - `/close-after`: a normal response, then the connection is closed without notice
///   (announced on `closes`);
/// - `/missing`: 404;
/// - `/die`: counted in `died`, then the connection is closed without an answer, as
///   a replica that read the request and crashed;
/// - `/stall-body`: the head of a 100-byte body and its first 10 bytes, then silence;
/// - `/upgrade`: `101 Switching Protocols` to `Upgrade: echo`, then every byte back;
/// - `/ws`: a WebSocket handshake, then every message back;
/// - `/big`: a body of [`BIG`] bytes with a `Content-Length`, written in 1 MiB pieces;
/// - `/hold`: announces the request on `arrivals`, then answers once `release` is called;
/// - anything else: `Server: Fake` with a `Content-Length` body.
pub struct FakeReplica {
    pub addr: SocketAddr,
    /// Connections on which something other than a heartbeat arrived.
    proxied_connections: Arc<AtomicUsize>,
    /// Requests to `/die` received.
    pub died: Arc<AtomicUsize>,
    arrivals: mpsc::Receiver<()>,
    /// One message per connection closed after `/close-after`.
    closes: mpsc::Receiver<()>,
    releases: Arc<Semaphore>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeReplica {
    pub fn start() -> FakeReplica {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let proxied_connections = Arc::new(AtomicUsize::new(0));
        let died = Arc::new(AtomicUsize::new(0));
        let (arrived, arrivals) = mpsc::channel();
        let (closed, closes) = mpsc::channel();
        let releases = Arc::new(Semaphore::new(0));
        let scripts = Scripts {
            proxied: proxied_connections.clone(),
            died: died.clone(),
            arrived: Arc::new(Mutex::new(arrived)),
            closed: Arc::new(Mutex::new(closed)),
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
            closes,
            releases,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn proxied_connections(&self) -> usize {
        self.proxied_connections.load(Ordering::SeqCst)
    }

    /// Waits until the replica has closed a connection after `/close-after`.
    pub fn wait_for_close(&self) {
        self.closes
            .recv_timeout(Duration::from_secs(10))
            .expect("the replica closes the connection");
    }

    /// Waits until a `/hold` request has arrived.
    pub fn wait_for_held_request(&self) {
        assert!(
            self.held_request_arrived(Duration::from_secs(10)),
            "the held request reaches the replica"
        );
    }

    /// Whether a `/hold` request arrives within `within` (each arrival is seen once).
    pub fn held_request_arrived(&self, within: Duration) -> bool {
        self.arrivals.recv_timeout(within).is_ok()
    }

    /// Lets one held request be answered.
    pub fn release(&self) {
        self.releases.add_permits(1);
    }
}

/// What the fake replica's connections share.
#[derive(Clone)]
struct Scripts {
    proxied: Arc<AtomicUsize>,
    died: Arc<AtomicUsize>,
    arrived: Arc<Mutex<mpsc::Sender<()>>>,
    closed: Arc<Mutex<mpsc::Sender<()>>>,
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
        let written = match path.as_str() {
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
            "/echo" => {
                stream
                    .write_all(&fixed(
                        200,
                        "OK",
                        "Connection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n",
                        &request,
                    ))
                    .await
            }
            "/die" => {
                scripts.died.fetch_add(1, Ordering::SeqCst);
                return;
            }
            "/stall-body" => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                    .await;
                std::future::pending::<()>().await;
                return;
            }
            "/upgrade" => {
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n";
                if stream.write_all(switched).await.is_err() {
                    return;
                }
                // Bytes after the request already belong to the new protocol.
                let (mut reader, mut writer) = stream.split();
                if writer.write_all(&buf).await.is_ok() {
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                }
                return;
            }
            "/ws" => {
                websocket_echo(stream, &request).await;
                return;
            }
            "/close-after" => {
                let _ = stream.write_all(&fixed(200, "OK", "", b"bye")).await;
                drop(stream);
                let _ = scripts.closed.lock().unwrap().send(());
                return;
            }
            "/hold" => {
                let _ = scripts.arrived.lock().unwrap().send(());
                scripts.releases.acquire().await.unwrap().forget();
                stream
                    .write_all(&fixed(200, "OK", "", b"Server: Fake"))
                    .await
            }
            "/big" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                let piece = vec![b'x'; 1 << 20];
                let mut written = stream.write_all(head.as_bytes()).await;
                for _ in 0..BIG >> 20 {
                    if written.is_err() {
                        break;
                    }
                    written = stream.write_all(&piece).await;
                }
                written
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

/// The length of `/big`'s body: more than loopback's socket buffers hold.
pub const BIG: usize = 32 << 20;

pub fn fixed(status: u16, reason: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}

pub fn front(fake: &FakeReplica) -> Ringlb {
    Ringlb::start(&["--replica", &format!("Fake={}", fake.addr)])
}

/// Reads one response with a `Content-Length` body (or none) from `stream`,
/// keeping what follows in `buf`; returns (status, headers, body).
pub fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, String) {
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

/// Answers a WebSocket handshake (RFC 6455 §4.2.2) and echoes every message.
async fn websocket_echo(mut stream: tokio::net::TcpStream, request: &[u8]) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let _ = parsed.parse(request);
    let Some(key) = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
    else {
        return;
    };
    let accept = derive_accept_key(key.value);
    let switched = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(switched.as_bytes()).await.is_err() {
        return;
    }
    let mut socket =
        tokio_tungstenite::WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() || socket.send(message).await.is_err() {
            return;
        }
    }
}
