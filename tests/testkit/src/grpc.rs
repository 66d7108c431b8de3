//! A gRPC client of the replica's echo service (`ringlb.echo.v1.Echo`) and of the
//! gRPC health check, on tonic's own client (a `Channel`, h2c): what a gRPC user of
//! ringlb runs, for the end-to-end tests and the analysis. The messages are the
//! replica's ([`ringlb_replica::grpc`]).

use std::net::SocketAddr;
use std::time::Duration;

use ringlb_replica::grpc::{
    ECHO_SERVER_STREAM, ECHO_UNARY, EchoRequest, HEALTH_CHECK, HealthCheckRequest,
    HealthCheckResponse, StreamRequest,
};
use tonic::client::Grpc;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

pub use ringlb_replica::grpc::{EchoReply, ServingStatus};

/// How long one call may take in a test (the client gives up with `DEADLINE_EXCEEDED`).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one gRPC server (a replica, or ringlb in front of replicas).
#[derive(Clone)]
pub struct EchoClient {
    grpc: Grpc<Channel>,
}

/// What a server stream gave: the replies that arrived, how it ended (`Code::Ok`
/// when the server's `grpc-status` was 0), and the trailers.
#[derive(Debug)]
pub struct StreamOutcome {
    pub replies: Vec<EchoReply>,
    pub status: Status,
    /// The trailers of a stream that ended well (`grpc-status` among them); empty
    /// when it failed.
    pub trailers: MetadataMap,
}

impl StreamOutcome {
    /// The `grpc-status` trailer, if the stream ended with one.
    pub fn grpc_status(&self) -> Option<&str> {
        let status = self.trailers.get("grpc-status")?;
        Some(status.to_str().expect("an ASCII grpc-status"))
    }
}

impl EchoClient {
    /// Connects over h2c to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<EchoClient, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect()
            .await?;
        Ok(EchoClient {
            grpc: Grpc::new(channel),
        })
    }

    /// `Echo/Unary` with `metadata` (e.g. the key header ringlb hashes on).
    pub async fn unary(
        &mut self,
        message: &str,
        metadata: &[(&str, &str)],
    ) -> Result<EchoReply, Status> {
        let request = with_metadata(
            EchoRequest {
                message: message.to_owned(),
            },
            metadata,
        )?;
        self.ready().await?;
        let response = self
            .grpc
            .unary(request, ECHO_UNARY.parse().unwrap(), ProstCodec::default())
            .await?;
        Ok(response.into_inner())
    }

    /// `Echo/ServerStream` of `count` replies, read to the end. An error before the
    /// stream starts is `Err`; one during it is in the outcome's `status`, with the
    /// replies that had arrived.
    pub async fn server_stream(
        &mut self,
        message: &str,
        count: u32,
        metadata: &[(&str, &str)],
    ) -> Result<StreamOutcome, Status> {
        let request = with_metadata(
            StreamRequest {
                message: message.to_owned(),
                count,
            },
            metadata,
        )?;
        self.ready().await?;
        let mut stream = self
            .grpc
            .server_streaming(
                request,
                ECHO_SERVER_STREAM.parse().unwrap(),
                ProstCodec::default(),
            )
            .await?
            .into_inner();
        let mut replies = Vec::new();
        let status = loop {
            match stream.message().await {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => break Status::new(Code::Ok, ""),
                Err(status) => break status,
            }
        };
        let trailers = if status.code() == Code::Ok {
            stream.trailers().await?.unwrap_or_default()
        } else {
            MetadataMap::new()
        };
        Ok(StreamOutcome {
            replies,
            status,
            trailers,
        })
    }

    /// `grpc.health.v1.Health/Check` for `service` ("" for the whole server).
    pub async fn health(&mut self, service: &str) -> Result<ServingStatus, Status> {
        self.ready().await?;
        let response: tonic::Response<HealthCheckResponse> = self
            .grpc
            .unary(
                Request::new(HealthCheckRequest {
                    service: service.to_owned(),
                }),
                HEALTH_CHECK.parse().unwrap(),
                ProstCodec::default(),
            )
            .await?;
        Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))
    }
}

/// `message` as a request carrying `metadata` (ASCII keys and values).
fn with_metadata<M>(message: M, metadata: &[(&str, &str)]) -> Result<Request<M>, Status> {
    let mut request = Request::new(message);
    for (key, value) in metadata {
        let key = MetadataKey::from_bytes(key.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("metadata key {key:?}: {e}")))?;
        let value: MetadataValue<_> = value
            .parse()
            .map_err(|e| Status::invalid_argument(format!("metadata value {value:?}: {e}")))?;
        request.metadata_mut().insert(key, value);
    }
    Ok(request)
}
