//! A request body streamed to a replica as it arrives (a gRPC call's: it may never end
//! before its answer begins) that can still be sent again from its start, to the next
//! replica, while what was taken of it fits in a limit (Envoy keeps such a retry
//! buffer too). A replica that refused the stream unprocessed (`failover::Progress::
//! Refused`) then costs the client nothing, however the body was sent.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use hyper::body::Frame;

/// The client's body and what has been taken of it so far.
pub struct Replay(Arc<Mutex<Shared>>);

struct Shared {
    source: Body,
    /// The data taken so far, while `recording` (and after, until past the limit).
    taken: Vec<Bytes>,
    taken_len: usize,
    limit: usize,
    /// False once more than `limit` was taken, or the answer came: nothing can be sent
    /// again from the start.
    recording: bool,
    /// The source's end was reached, after these trailers.
    ended: Option<Option<HeaderMap>>,
    /// The reader that may read: an earlier attempt's reader, still polled by a
    /// connection that gives up on it, reads no more.
    current: u64,
}

impl Replay {
    pub fn new(source: Body, limit: usize) -> Self {
        Self(Arc::new(Mutex::new(Shared {
            source,
            taken: Vec::new(),
            taken_len: 0,
            limit,
            recording: true,
            ended: None,
            current: 0,
        })))
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether [`reader`](Self::reader) gives the whole body from its start.
    pub fn can_resend(&self) -> bool {
        self.shared().recording
    }

    /// The body from its start, for the next attempt; earlier readers stop.
    pub fn reader(&self) -> Body {
        let mut shared = self.shared();
        shared.current += 1;
        Body::new(Reader {
            shared: self.0.clone(),
            id: shared.current,
            next: 0,
            done: false,
        })
    }

    /// The body will not be sent again (a replica answered): no more of it is kept.
    /// What was kept stays for the current reader, which may still be giving it.
    pub fn stop_recording(&self) {
        self.shared().recording = false;
    }
}

struct Reader {
    shared: Arc<Mutex<Shared>>,
    id: u64,
    /// The next of `taken` to give.
    next: usize,
    done: bool,
}

impl hyper::body::Body for Reader {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let shared = self.shared.clone();
        let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        if self.done || shared.current != self.id {
            return Poll::Ready(None);
        }
        if let Some(data) = shared.taken.get(self.next) {
            let data = data.clone();
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = &shared.ended {
            self.done = true;
            return Poll::Ready(trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let frame = match Pin::new(&mut shared.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = Some(None);
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if shared.recording && shared.taken_len + data.len() <= shared.limit {
                    shared.taken_len += data.len();
                    shared.taken.push(data.clone());
                    self.next += 1;
                } else {
                    // This reader has given all that was kept: it can go.
                    shared.recording = false;
                    shared.taken = Vec::new();
                }
                Frame::data(data)
            }
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref() {
                    shared.ended = Some(Some(trailers.clone()));
                    self.done = true;
                }
                frame
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(parts: &[&'static str]) -> Body {
        let stream = futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p.as_bytes())))
                .collect::<Vec<_>>(),
        );
        Body::from_stream(stream)
    }

    async fn all(body: Body) -> String {
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_given_again_from_its_start() {
        let replay = Replay::new(chunks(&["ab", "cd", "ef"]), 6);
        let mut first = replay.reader();
        // The first attempt takes part of it, and fails.
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        assert!(replay.can_resend());
        let second = replay.reader();
        // The first reader reads no more once a second one began.
        assert!(first.frame().await.is_none());
        assert_eq!(all(second).await, "abcdef");
        assert!(replay.can_resend());
        assert_eq!(all(replay.reader()).await, "abcdef");
    }

    #[tokio::test]
    async fn past_the_limit_it_cannot_be_sent_again() {
        let replay = Replay::new(chunks(&["ab", "cd", "ef"]), 5);
        assert_eq!(all(replay.reader()).await, "abcdef");
        assert!(!replay.can_resend());
        let replay = Replay::new(chunks(&["ab"]), 5);
        assert!(replay.can_resend());
        replay.stop_recording();
        assert!(!replay.can_resend());
    }
}
