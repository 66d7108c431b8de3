//! The replica's gRPC side: a small echo service (`ringlb.echo.v1.Echo`, a unary call
//! and a server stream, every reply naming the replica that answered, as `/home` does)
//! and the gRPC health checking protocol (`grpc.health.v1.Health/Check`), so that pools
//! can be gRPC end to end in tests, demos and the analysis.
//!
//! The messages are written by hand with prost's derive (no `protoc`, no build script);
//! `proto/echo.proto` beside this crate is the same schema for other tools (grpcurl,
//! ghz). Each method is routed by its path to tonic's generic server handler
//! ([`tonic::server::Grpc`]), which does the framing, the codec and the trailers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::{Status, body::Body as GrpcBody};
use tonic_prost::ProstCodec;
use tower::service_fn;

/// The echo service's full name.
pub const ECHO_SERVICE: &str = "ringlb.echo.v1.Echo";
/// `rpc Unary(EchoRequest) returns (EchoReply)`.
pub const ECHO_UNARY: &str = "/ringlb.echo.v1.Echo/Unary";
/// `rpc ServerStream(StreamRequest) returns (stream EchoReply)`.
pub const ECHO_SERVER_STREAM: &str = "/ringlb.echo.v1.Echo/ServerStream";
/// `rpc Check(HealthCheckRequest) returns (HealthCheckResponse)` of `grpc.health.v1`.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The most messages one `ServerStream` call may ask for: a test server must not be
/// made to stream for hours by one request.
pub const MAX_STREAM_MESSAGES: u32 = 1_000_000;

/// `ringlb.echo.v1.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `ringlb.echo.v1.StreamRequest`: `count` replies to `message`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// `ringlb.echo.v1.EchoReply`: the message back, the replica that answered (its
/// `--id`, the name `/home` gives) and the reply's place in a stream (0 for unary).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub server: String,
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

/// `grpc.health.v1.HealthCheckRequest`; an empty `service` asks about the server.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

/// What `Health/Check` answers for this server: SERVING from the start; shared, so
/// that whoever embeds the server (a test's fake, for one) can change it.
#[derive(Clone, Debug)]
pub struct Health(Arc<AtomicI32>);

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(AtomicI32::new(ServingStatus::Serving as i32)))
    }
}

impl Health {
    pub fn set(&self, status: ServingStatus) {
        self.0.store(status as i32, Ordering::Relaxed);
    }

    pub fn get(&self) -> ServingStatus {
        ServingStatus::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(ServingStatus::Unknown)
    }
}

/// The gRPC methods of a replica named `id`, as routes (no fallback, so that they
/// merge with the HTTP routes).
pub fn routes(id: &str, health: Health) -> Router {
    let echo = Echo { id: Arc::from(id) };
    let stream = echo.clone();
    // tonic answers every failure as a gRPC status: nothing fails at the HTTP level.
    Router::new()
        .route_service(
            ECHO_UNARY,
            service_fn(move |request: Request<Body>| {
                let echo = echo.clone();
                async move { Ok::<_, Infallible>(grpc().unary(echo, request).await) }
            }),
        )
        .route_service(
            ECHO_SERVER_STREAM,
            service_fn(move |request: Request<Body>| {
                let echo = stream.clone();
                async move { Ok::<_, Infallible>(grpc().server_streaming(echo, request).await) }
            }),
        )
        .route_service(
            HEALTH_CHECK,
            service_fn(move |request: Request<Body>| {
                let health = health.clone();
                async move { Ok::<_, Infallible>(grpc().unary(health, request).await) }
            }),
        )
}

/// What a gRPC-only server answers for any other path: `UNIMPLEMENTED`, as a gRPC
/// status (HTTP 200 with `grpc-status: 12`), the way tonic's own router does.
pub async fn unimplemented() -> Response {
    Status::unimplemented("no such method on this replica")
        .into_http::<GrpcBody>()
        .into_response()
}

/// tonic's handler of one call: prost messages, no compression, default size limits.
fn grpc<Reply, Request>() -> Grpc<ProstCodec<Reply, Request>>
where
    Reply: prost::Message + Send + 'static,
    Request: prost::Message + Default + Send + 'static,
{
    Grpc::new(ProstCodec::default())
}

/// The echo service of a replica named `id`.
#[derive(Clone)]
struct Echo {
    id: Arc<str>,
}

impl Echo {
    fn reply(&self, message: String, index: u32) -> EchoReply {
        EchoReply {
            message,
            server: self.id.to_string(),
            index,
        }
    }
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, Status>> + Send>>;

impl UnaryService<EchoRequest> for Echo {
    type Response = EchoReply;
    type Future = Answer<EchoReply>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let reply = self.reply(request.into_inner().message, 0);
        Box::pin(async move { Ok(tonic::Response::new(reply)) })
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

impl ServerStreamingService<StreamRequest> for Echo {
    type Response = EchoReply;
    type ResponseStream = Replies;
    type Future = Answer<Replies>;

    fn call(&mut self, request: tonic::Request<StreamRequest>) -> Self::Future {
        let StreamRequest { message, count } = request.into_inner();
        if count > MAX_STREAM_MESSAGES {
            let status = Status::invalid_argument(format!(
                "count {count} is above the limit of {MAX_STREAM_MESSAGES}"
            ));
            return Box::pin(async move { Err(status) });
        }
        let echo = self.clone();
        // Made one at a time as the client reads (tonic polls the stream when the
        // HTTP/2 window has room), not all at once in memory.
        let replies: Replies = Box::pin(futures::stream::iter(
            (0..count).map(move |index| Ok(echo.reply(message.clone(), index))),
        ));
        Box::pin(async move { Ok(tonic::Response::new(replies)) })
    }
}

impl UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = Answer<HealthCheckResponse>;

    fn call(&mut self, request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        // The server as a whole ("") or its one service; anything else is unknown,
        // as the protocol says (NOT_FOUND).
        let service = request.into_inner().service;
        let answer = if service.is_empty() || service == ECHO_SERVICE {
            Ok(tonic::Response::new(HealthCheckResponse {
                status: self.get() as i32,
            }))
        } else {
            Err(Status::not_found(format!("unknown service {service:?}")))
        };
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// `(message, field, type, tag)` of every field of `proto`, in order.
    fn fields_of(proto: &str) -> Vec<(String, String, String, u32)> {
        let mut fields = Vec::new();
        let mut message = None;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("message ") {
                message = rest.split_whitespace().next().map(str::to_owned);
            } else if line == "}" {
                message = None;
            } else if let (Some(message), Some((decl, tag))) = (&message, line.split_once('=')) {
                let mut decl = decl.split_whitespace();
                let (ty, name) = (decl.next().unwrap(), decl.next().unwrap());
                let tag = tag.trim().trim_end_matches(';').parse().unwrap();
                fields.push((message.clone(), name.to_owned(), ty.to_owned(), tag));
            }
        }
        fields
    }

    #[test]
    fn the_proto_file_says_what_the_rust_messages_do() {
        let proto = include_str!("../proto/echo.proto");
        let expected = [
            ("EchoRequest", "message", "string", 1),
            ("StreamRequest", "message", "string", 1),
            ("StreamRequest", "count", "uint32", 2),
            ("EchoReply", "message", "string", 1),
            ("EchoReply", "server", "string", 2),
            ("EchoReply", "index", "uint32", 3),
        ]
        .map(|(m, f, t, n)| (m.to_owned(), f.to_owned(), t.to_owned(), n));
        assert_eq!(fields_of(proto), expected);
        // The same tags and wire types in the Rust messages (key = tag << 3 | type;
        // 2 is length-delimited, 0 a varint).
        let reply = EchoReply {
            message: "m".into(),
            server: "s".into(),
            index: 7,
        };
        assert_eq!(
            reply.encode_to_vec(),
            [0x0a, 1, b'm', 0x12, 1, b's', 0x18, 7]
        );
        let request = StreamRequest {
            message: "m".into(),
            count: 5,
        };
        assert_eq!(request.encode_to_vec(), [0x0a, 1, b'm', 0x10, 5]);
        let request = EchoRequest {
            message: "m".into(),
        };
        assert_eq!(request.encode_to_vec(), [0x0a, 1, b'm']);
        // The paths the server routes are the file's package, service and methods.
        assert!(proto.contains(&format!(
            "package {};",
            ECHO_SERVICE.rsplit_once('.').unwrap().0
        )));
        assert!(proto.contains("service Echo {"));
        assert!(proto.contains("rpc Unary(EchoRequest) returns (EchoReply);"));
        assert!(proto.contains("rpc ServerStream(StreamRequest) returns (stream EchoReply);"));
        assert_eq!(ECHO_UNARY, format!("/{ECHO_SERVICE}/Unary"));
        assert_eq!(ECHO_SERVER_STREAM, format!("/{ECHO_SERVICE}/ServerStream"));
    }

    #[test]
    fn health_messages_are_grpc_health_v1() {
        // grpc/health/v1/health.proto: `string service = 1;`, `ServingStatus status = 1;`
        // with SERVING = 1 and NOT_SERVING = 2.
        let request = HealthCheckRequest {
            service: "x".into(),
        };
        assert_eq!(request.encode_to_vec(), [0x0a, 1, b'x']);
        let response = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        };
        assert_eq!(response.encode_to_vec(), [0x08, 2]);
        assert_eq!(ServingStatus::Serving as i32, 1);
    }
}
