//! The operations port: Prometheus `/metrics`, `/healthz`, `/readyz`, and `/ring`,
//! a JSON view of the members, their health and their share of the key space.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;
use crate::pool::PoolControl;

#[derive(Clone)]
pub struct Ops {
    pub pool: Arc<dyn PoolControl>,
    pub metrics: Arc<Metrics>,
}

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/ring", get(ring))
        .with_state(ops)
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.encode(),
    )
}

/// Ready when at least one replica is in the ring: only then can a request be served.
async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let members = ops.pool.routing().load().backends.len();
    let status = if members > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": members > 0, "members": members})),
    )
}

async fn ring(State(ops): State<Ops>) -> impl IntoResponse {
    let table = ops.pool.routing().load_full();
    let view = ops.pool.view();
    // Enumerating the key space takes a few milliseconds: off the async workers.
    let shares = tokio::task::spawn_blocking({
        let table = table.clone();
        move || table.ring.shares()
    })
    .await
    .unwrap_or_default();
    let share_of = |name: &str| {
        table
            .ring
            .members()
            .iter()
            .position(|m| m == name)
            .and_then(|i| shares.get(i).copied())
    };
    let members: Vec<_> = view
        .members
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "address": m.address,
                "pid": m.pid,
                "health": m.health,
                "consecutive_failures": m.consecutive_failures,
                "in_ring": m.in_ring,
                "share": share_of(m.name.as_str()),
            })
        })
        .collect();
    Json(json!({
        "config": table.ring.config(),
        "desired": view.desired,
        "members": members,
        "replacements": view.replacements,
    }))
}
