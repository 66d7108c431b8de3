//! Connections to replicas for the fast path (and for HTTP/2 streams to HTTP/1.1
//! replicas, `forward.rs`): a pool of idle keep-alive connections per worker, and one
//! request–response exchange on a connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::failover::{self, Progress};
use super::wire::{self, ResponseHead, WireError};

/// Idle connections kept per replica; more are closed when they come back.
/// nginx's `keepalive` directive plays the same role (the bench gives nginx 128).
const MAX_IDLE_PER_REPLICA: usize = 256;

/// A connection to a replica, with its read buffer.
pub struct UpstreamConn {
    stream: TcpStream,
    pub buf: BytesMut,
}

impl UpstreamConn {
    /// The connection and what was read from it beyond the response head: for a
    /// tunnel after `101 Switching Protocols`.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }

    /// False when the replica closed this idle connection (or sent bytes no request
    /// asked for). Reads only if the runtime saw the socket become readable, so an
    /// open connection costs no system call — unless `thorough`: then the kernel is
    /// asked too (one `recv` with `MSG_PEEK`), for a request that could not be sent
    /// again if the connection turned out dead after the write.
    fn is_open(&self, thorough: bool) -> bool {
        let mut byte = [0u8; 1];
        let seen_open = matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        seen_open && (!thorough || peek_open(&self.stream))
    }

    /// Reads more of the response into `buf`; `Ok(0)` at end of stream.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// [`read_more`](Self::read_more), for a body polled by hand.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                read => return Poll::Ready(read),
            }
        }
    }
}

/// What an exchange needs to know of the request whose bytes it sends.
#[derive(Clone, Copy)]
pub struct Sent<'a> {
    pub method: &'a str,
    pub keep_alive: bool,
    /// The client asks to switch protocols: a `101` is its answer.
    pub upgrade: bool,
}

impl<'a> Sent<'a> {
    pub fn of(request: &wire::Request<'_, 'a>) -> Self {
        Self {
            method: request.method,
            keep_alive: request.keep_alive,
            upgrade: request.upgrade,
        }
    }

    fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Idle upstream connections by replica address. Each worker thread has its own pool,
/// so the lock is never contended; it is there because tasks must be `Send`.
pub struct UpstreamPool {
    idle: Mutex<HashMap<SocketAddr, Vec<UpstreamConn>>>,
    connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("sending the request: {0}")]
    Write(io::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("connection closed before a response")]
    Closed,
}

impl ExchangeError {
    /// How far the failed exchange got, for the failover policy.
    pub fn progress(&self) -> Progress {
        match self {
            Self::Connect(_) | Self::Write(_) => Progress::NotSent,
            Self::Io(_) | Self::Wire(_) | Self::Closed => Progress::Sent,
        }
    }
}

impl UpstreamPool {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// An idle connection to `addr` that is not known to be closed.
    fn take(&self, addr: SocketAddr, thorough: bool) -> Option<UpstreamConn> {
        let mut idle = self.idle.lock().ok()?;
        let conns = idle.get_mut(&addr)?;
        while let Some(conn) = conns.pop() {
            if conn.is_open(thorough) {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, addr: SocketAddr, conn: UpstreamConn) {
        if let Ok(mut idle) = self.idle.lock() {
            let conns = idle.entry(addr).or_default();
            if conns.len() < MAX_IDLE_PER_REPLICA {
                conns.push(conn);
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<UpstreamConn, ExchangeError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                ExchangeError::Connect(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            })?
            .map_err(ExchangeError::Connect)?;
        // Heads and small bodies go out in one write each; Nagle would only delay them.
        stream.set_nodelay(true).map_err(ExchangeError::Connect)?;
        Ok(UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Sends `bytes` (made from `request`) to the replica at `addr` and reads the final
    /// response head into the returned connection's buffer (interim 1xx responses are
    /// skipped). The client's HTTP/1.1 response head is written into `client_head`, if
    /// given. `writing` is set once the request starts on its way: until then
    /// (connecting), nothing of it has left.
    ///
    /// An idle connection the replica closed meanwhile is found out when it is taken
    /// from the pool, or only once the request is on its way. In the second case the
    /// request is sent again on a new connection only as the failover policy allows:
    /// the replica may have read it before closing.
    pub async fn exchange(
        &self,
        addr: SocketAddr,
        request: Sent<'_>,
        bytes: &[u8],
        mut client_head: Option<&mut Vec<u8>>,
        writing: &mut bool,
    ) -> Result<(UpstreamConn, ResponseHead), ExchangeError> {
        loop {
            // A request that may not be sent again after the write gets the thorough check.
            let thorough = !failover::may_retry(request.method, Progress::Sent);
            let (mut conn, reused) = match self.take(addr, thorough) {
                Some(conn) => (conn, true),
                None => (self.connect(addr).await?, false),
            };
            conn.buf.clear();
            *writing = true;
            let outcome = match conn.stream.write_all(bytes).await {
                Ok(()) => read_head(&mut conn, request, client_head.as_deref_mut()).await,
                Err(error) => Err(ExchangeError::Write(error)),
            };
            match outcome {
                Ok(head) => return Ok((conn, head)),
                Err(
                    error
                    @ (ExchangeError::Write(_) | ExchangeError::Io(_) | ExchangeError::Closed),
                ) if reused && conn.buf.is_empty() => {
                    if !failover::may_retry(request.method, error.progress()) {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

async fn read_head(
    conn: &mut UpstreamConn,
    request: Sent<'_>,
    mut client_head: Option<&mut Vec<u8>>,
) -> Result<ResponseHead, ExchangeError> {
    loop {
        match wire::parse_response(
            &conn.buf,
            request.is_head(),
            request.keep_alive,
            client_head.as_deref_mut(),
        ) {
            // Switching protocols: final, if the client asked for it.
            Ok(Some(head)) if head.status == 101 && request.upgrade => return Ok(head),
            Ok(Some(head)) if head.status == 101 => {
                return Err(WireError::Malformed("101 to a request without Upgrade".into()).into());
            }
            Ok(Some(head)) if (100..200).contains(&head.status) => {
                // An interim response (100 Continue, 103 Early Hints): the final one follows.
                bytes::Buf::advance(&mut conn.buf, head.head_len);
                continue;
            }
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(error) => return Err(error.into()),
        }
        match conn.read_more().await {
            Ok(0) => return Err(ExchangeError::Closed),
            Ok(_) => {}
            Err(error) => return Err(ExchangeError::Io(error)),
        }
    }
}

/// Asks the kernel whether the peer closed `stream`, without consuming anything.
#[cfg(unix)]
fn peek_open(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer that lives across the call; MSG_PEEK leaves the
    // socket's data in place and MSG_DONTWAIT never blocks.
    let read = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    read < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

#[cfg(not(unix))]
fn peek_open(_stream: &TcpStream) -> bool {
    true
}
