//! Every error the load balancer answers with, and its one JSON shape:
//! `{"message": "<Error> …", "status": "failure"}`.

use std::io::Write;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::wire::{HeadLimits, Refusal};
use crate::pool::{MembershipError, PoolError};
use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("{0}")]
    BadField(String),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("could not read the request body: {0}")]
    BodyUnreadable(String),
    #[error("missing or wrong admin token (send 'Authorization: Bearer <token>')")]
    Unauthorized,
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("'{0}' endpoint does not exist in server replicas")]
    UnknownEndpoint(String),
    #[error("no replica is available to serve the request")]
    NoReplica,
    #[error("replica {0} did not answer in time")]
    UpstreamTimeout(String),
    #[error("could not reach a replica after {attempts} attempts: {last}")]
    UpstreamUnreachable { attempts: usize, last: String },
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    #[error("an HTTP/1.1 request needs exactly one Host header")]
    Host,
    #[error("the request line is longer than {0} bytes")]
    TargetTooLong(usize),
    #[error("a request header line is longer than {0} bytes")]
    HeaderLineTooLong(usize),
    #[error("the request headers are larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} request headers")]
    TooManyHeaders(usize),
    #[error("the request's header list is larger than {0} bytes (as HTTP/2 counts it)")]
    HeaderListTooLarge(usize),
    #[error("the request was not received in time")]
    RequestTimeout,
    #[error("too many connections: at most {0} at once")]
    TooManyConnections(usize),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Pool(PoolError::Membership(_)) => StatusCode::BAD_REQUEST,
            Self::Pool(PoolError::Runtime(RuntimeError::Unsupported(_))) => StatusCode::CONFLICT,
            Self::Pool(PoolError::Runtime(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Pool(PoolError::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Pool(PoolError::Backend(_)) => StatusCode::BAD_GATEWAY,
            Self::BadJson(_) | Self::BadField(_) | Self::UnknownEndpoint(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoReplica => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Self::MalformedRequest(_) | Self::Host => StatusCode::BAD_REQUEST,
            Self::TargetTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeaderLineTooLong(_)
            | Self::HeadTooLarge(_)
            | Self::TooManyHeaders(_)
            | Self::HeaderListTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the client's connection closes after this answer: the rest of what the
    /// client sent cannot be trusted to start at a request (nginx closes too).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::MalformedRequest(_)
                | Self::Host
                | Self::TargetTooLong(_)
                | Self::HeaderLineTooLong(_)
                | Self::HeadTooLarge(_)
                | Self::TooManyHeaders(_)
                | Self::RequestTimeout
                | Self::TooManyConnections(_)
        )
    }

    /// The answer to a request refused by `limits`.
    pub fn refused(refusal: Refusal, limits: &HeadLimits) -> Self {
        match refusal {
            Refusal::Malformed(error) => Self::MalformedRequest(error.to_string()),
            Refusal::Host => Self::Host,
            Refusal::TargetTooLong => Self::TargetTooLong(limits.line),
            Refusal::LineTooLong => Self::HeaderLineTooLong(limits.line),
            Refusal::HeadTooLarge => Self::HeadTooLarge(limits.head),
            Refusal::TooManyHeaders => Self::TooManyHeaders(limits.headers),
        }
    }
}

impl ApiError {
    fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "message": format!("<Error> {self}"),
            "status": "failure",
        })
    }

    /// The whole HTTP/1.1 response, in bytes, for the fast path (which writes its
    /// responses itself): the same status, headers and body as [`IntoResponse`].
    pub fn write_http1(&self, keep_alive: bool, out: &mut Vec<u8>) {
        let status = self.status();
        let body = self.body().to_string();
        out.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if status == StatusCode::UNAUTHORIZED {
            out.extend_from_slice(b"www-authenticate: Bearer\r\n");
        }
        if !keep_alive || self.closes_connection() {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
    }
}

/// gRPC status codes the proxy answers with (grpc/doc/statuscodes.md).
pub mod grpc_status {
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

impl ApiError {
    /// The gRPC status this error is told to a gRPC client as.
    pub fn grpc_status(&self) -> u8 {
        use grpc_status::*;
        match self {
            Self::NoReplica
            | Self::UpstreamUnreachable { .. }
            | Self::TooManyConnections(_)
            | Self::Pool(PoolError::ShuttingDown | PoolError::Backend(_)) => UNAVAILABLE,
            Self::UpstreamTimeout(_) | Self::RequestTimeout => DEADLINE_EXCEEDED,
            Self::BodyTooLarge(_)
            | Self::HeadTooLarge(_)
            | Self::HeaderLineTooLong(_)
            | Self::TooManyHeaders(_)
            | Self::HeaderListTooLarge(_)
            | Self::TargetTooLong(_) => RESOURCE_EXHAUSTED,
            Self::UnknownEndpoint(_) | Self::MethodNotAllowed { .. } => UNIMPLEMENTED,
            Self::Unauthorized => UNAUTHENTICATED,
            Self::BadJson(_)
            | Self::BadField(_)
            | Self::MalformedRequest(_)
            | Self::Host
            | Self::BodyUnreadable(_) => INVALID_ARGUMENT,
            Self::Pool(PoolError::Membership(_)) => PERMISSION_DENIED,
            Self::Pool(PoolError::Runtime(_)) => INTERNAL,
        }
    }

    /// The answer to a client: a gRPC status to a gRPC call (`grpc`), JSON to any other.
    pub fn answer(self, grpc: bool) -> Response {
        if grpc {
            self.into_grpc_response()
        } else {
            self.into_response()
        }
    }

    /// The answer to a gRPC client: HTTP 200, trailers only (one HEADERS frame that
    /// ends the stream) with `grpc-status` and `grpc-message`, as gRPC proxies answer
    /// (a gRPC client reads no JSON body, and takes an HTTP error status for a broken
    /// server).
    pub fn into_grpc_response(self) -> Response {
        let mut response = Response::new(axum::body::Body::empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.extend(self.grpc_trailers());
        response
    }

    /// `grpc-status` and `grpc-message`: the end of a gRPC answer that failed.
    pub fn grpc_trailers(&self) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        let status = HeaderValue::from(u16::from(self.grpc_status()));
        trailers.insert("grpc-status", status);
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&self.to_string())) {
            trailers.insert("grpc-message", message);
        }
        trailers
    }
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl From<MembershipError> for ApiError {
    fn from(error: MembershipError) -> Self {
        Self::Pool(PoolError::Membership(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.closes_connection() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn grpc_errors_are_trailers_only_with_a_status() {
        for (error, status) in [
            (ApiError::NoReplica, "14"),
            (ApiError::UpstreamTimeout("S1".into()), "4"),
            (ApiError::BodyTooLarge(10), "8"),
            (
                ApiError::UpstreamUnreachable {
                    attempts: 2,
                    last: "S1: 100% gone é".into(),
                },
                "14",
            ),
        ] {
            let message = error.to_string();
            let response = error.into_grpc_response();
            assert_eq!(response.status(), StatusCode::OK);
            let headers = response.headers();
            assert_eq!(headers["content-type"], "application/grpc");
            assert_eq!(headers["grpc-status"], status);
            let encoded = headers["grpc-message"].to_str().unwrap();
            assert_eq!(encoded, percent_encode(&message));
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(body.is_empty());
        }
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
    }

    /// The fast path's bytes and axum's response say the same thing.
    #[tokio::test]
    async fn both_renderings_agree() {
        let errors: [fn() -> ApiError; 5] = [
            || ApiError::Unauthorized,
            || ApiError::NoReplica,
            || ApiError::UnknownEndpoint("/nope".into()),
            || ApiError::RequestTimeout,
            || ApiError::HeaderLineTooLong(8192),
        ];
        for error in errors {
            let mut out = Vec::new();
            error().write_http1(true, &mut out);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();

            let response = error().into_response();
            let status = response.status();
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", status.as_u16())));
            for (name, value) in response.headers() {
                let line = format!("{name}: {}", value.to_str().unwrap());
                assert!(head.contains(&line), "{line} missing from {head}");
            }
            let expected = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.as_bytes(), &expected[..]);
        }
    }
}
