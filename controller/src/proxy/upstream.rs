//! Connections to replicas for the fast path: a pool of idle keep-alive connections
//! per worker, and one request–response exchange on a connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    /// Reads more of the response into `buf`; `Ok(0)` at end of stream.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
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
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("connection closed before a response")]
    Closed,
}

impl ExchangeError {
    /// True when the replica cannot have seen the request: safe to send it elsewhere
    /// whatever its method.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl UpstreamPool {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    fn take(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        self.idle.lock().ok()?.get_mut(&addr)?.pop()
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

    /// Sends `request` to the replica at `addr` and reads the final response head into
    /// the returned connection's buffer (interim 1xx responses are skipped). The client's
    /// response head is written into `client_head`.
    ///
    /// An idle connection the replica closed meanwhile fails before any byte of a
    /// response: the request is then sent again on a new connection, like every HTTP
    /// client with a pool does; the replica never processed it.
    pub async fn exchange(
        &self,
        addr: SocketAddr,
        request: &[u8],
        request_was_head: bool,
        client_keep_alive: bool,
        client_head: &mut Vec<u8>,
    ) -> Result<(UpstreamConn, ResponseHead), ExchangeError> {
        loop {
            let (mut conn, reused) = match self.take(addr) {
                Some(conn) => (conn, true),
                None => (self.connect(addr).await?, false),
            };
            conn.buf.clear();
            let outcome = match conn.stream.write_all(request).await {
                Ok(()) => {
                    read_head(&mut conn, request_was_head, client_keep_alive, client_head).await
                }
                Err(error) => Err(ExchangeError::Io(error)),
            };
            match outcome {
                Ok(head) => return Ok((conn, head)),
                Err(ExchangeError::Io(_) | ExchangeError::Closed)
                    if reused && conn.buf.is_empty() => {}
                Err(error) => return Err(error),
            }
        }
    }
}

async fn read_head(
    conn: &mut UpstreamConn,
    request_was_head: bool,
    client_keep_alive: bool,
    client_head: &mut Vec<u8>,
) -> Result<ResponseHead, ExchangeError> {
    loop {
        match wire::parse_response(
            &conn.buf,
            request_was_head,
            client_keep_alive,
            Some(client_head),
        ) {
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
