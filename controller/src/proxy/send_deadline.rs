//! The send timeout (nginx: `send_timeout`): a client that takes longer than it to
//! read what ringlb writes, from one write to the next, has its connection closed, so
//! that a client that stopped reading cannot hold a replica's answer, and the replica
//! connection under it, for ever.
//!
//! It bounds the socket's writes, as nginx's does: a client that reads nothing of the
//! TCP stream. An HTTP/2 client that reads the connection but never opens a stream's
//! flow-control window stalls that stream without stalling a write: the stream stays
//! until the client cancels it or its connection ends (no timeout of ringlb's ends it
//! yet).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took nothing written to it within the send timeout",
    )
}

/// Writes all of `bytes` to a client, each write within `timeout` of the last.
pub async fn write_all(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    // Most answers fit the socket's send buffer: written at once, with no timer.
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => return Err(error),
        }
    }
    // The client reads slower than the replica answers: each further write is timed.
    while !bytes.is_empty() {
        let n = tokio::time::timeout(timeout, stream.write(bytes))
            .await
            .map_err(|_| timed_out())??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// A client connection whose writes fail with `TimedOut` once one has waited for
/// `timeout`: for the paths that hand the connection to hyper (HTTP/2, and HTTP/1.1's
/// general path), which has no send timeout of its own.
pub struct SendDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Set while a write waits: when it fires, the write fails.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> SendDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            waiting: None,
        }
    }

    /// A write's outcome: a pending one starts (or goes on) waiting, and fails when the
    /// wait reaches the timeout; any other ends the wait.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(waiting.as_mut().poll(cx));
        Poll::Ready(Err(timed_out()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A pair of connected sockets whose reader reads nothing until told.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    #[tokio::test]
    async fn a_write_the_client_never_takes_fails_after_the_timeout() {
        let (mut server, client) = pair().await;
        let big = vec![7u8; 64 * 1024 * 1024];
        let started = tokio::time::Instant::now();
        let error = write_all(&mut server, &big, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() >= Duration::from_millis(200));

        // The same through the wrapper hyper's paths write to.
        let mut wrapped = SendDeadline::new(server, Duration::from_millis(200));
        let error = wrapped.write_all(&big).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        drop(client);
    }

    #[tokio::test]
    async fn a_client_that_reads_on_is_not_timed_out() {
        let (server, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            let mut total = 0;
            loop {
                // Slower than the writer, never for as long as the timeout.
                tokio::time::sleep(Duration::from_millis(1)).await;
                match client.read(&mut sink).await.unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        let big = vec![7u8; 16 * 1024 * 1024];
        let mut wrapped = SendDeadline::new(server, Duration::from_millis(500));
        wrapped.write_all(&big).await.unwrap();
        let mut server = wrapped.inner;
        write_all(&mut server, &big, Duration::from_millis(500))
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), 2 * big.len());
    }
}
