//! What the proxy reads of gRPC (over HTTP/2): which requests are gRPC calls, a call's
//! deadline, and which failures of an h2c replica left a stream unprocessed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use hyper::body::Frame;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// Whether a request is a gRPC call: `content-type: application/grpc` or
/// `application/grpc+proto`, `application/grpc+json`, … (gRPC over HTTP/2).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        let prefix = b"application/grpc";
        value.len() >= prefix.len()
            && value[..prefix.len()].eq_ignore_ascii_case(prefix)
            && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
    })
}

/// A call's `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). A malformed one is ignored, as if the call had none.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether an h2c replica said it did not process the stream (RFC 9113 §8.7): it
/// reset it with `REFUSED_STREAM`, or its `GOAWAY` named a last stream id below it
/// (the `h2` crate fails exactly those streams with the `GOAWAY` it received, and a
/// stream opened after it; the streams at or below the id go on, and if the
/// connection then ends they fail with its end, a broken pipe or our own error, never
/// the `GOAWAY`: `tests/grpc_upstream.rs` holds `h2` to that, for a `GOAWAY` with and
/// without an error code).
pub fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = error.source();
    }
    false
}

/// A gRPC answer's body that ends at the call's deadline: an answer still streaming
/// then ends with the trailers of `late` (DEADLINE_EXCEEDED), as the client's own
/// deadline would end it.
pub struct Deadline {
    body: Body,
    at: Pin<Box<Sleep>>,
    late: Option<ApiError>,
}

impl Deadline {
    pub fn new(body: Body, at: Instant, late: ApiError) -> Self {
        Self {
            body,
            at: Box::pin(tokio::time::sleep_until(at)),
            late: Some(late),
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.late.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.at.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let late = self.late.take().map(|late| late.grpc_trailers());
        Poll::Ready(late.map(|trailers| Ok(Frame::trailers(trailers))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap()))
            .collect()
    }

    #[test]
    fn grpc_content_types() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC+json", true),
            ("application/grpc; charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            assert_eq!(
                is_grpc(&headers(&[("content-type", value)])),
                grpc,
                "{value}"
            );
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    /// An error with a cause, as hyper's client wraps the `h2` crate's.
    #[derive(Debug)]
    struct Wrapped(h2::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "client error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn only_a_refused_stream_counts_as_unprocessed() {
        let refused_stream = Wrapped(h2::Reason::REFUSED_STREAM.into());
        assert!(refused(&refused_stream));
        for reason in [
            h2::Reason::INTERNAL_ERROR,
            h2::Reason::CANCEL,
            h2::Reason::NO_ERROR,
        ] {
            assert!(!refused(&Wrapped(reason.into())), "{reason:?}");
        }
        assert!(!refused(&std::io::Error::other("connection reset")));
    }

    #[test]
    fn grpc_timeouts() {
        for (value, expected) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789S", None),
            ("S", None),
            ("10", None),
            ("10s", None),
            ("-1S", None),
            ("", None),
        ] {
            assert_eq!(
                timeout(&headers(&[("grpc-timeout", value)])),
                expected,
                "{value}"
            );
        }
    }
}
