//! Every error the load balancer answers with, and its one JSON shape:
//! `{"message": "<Error> …", "status": "failure"}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

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
        }
    }
}

impl From<MembershipError> for ApiError {
    fn from(error: MembershipError) -> Self {
        Self::Pool(PoolError::Membership(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(serde_json::json!({
            "message": format!("<Error> {self}"),
            "status": "failure",
        }));
        let mut response = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
