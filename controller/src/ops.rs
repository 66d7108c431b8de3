//! The operations port: Prometheus `/metrics`, `/healthz`, `/readyz`, and `/ring`,
//! a JSON view of the members, their health and their share of the key space.
//!
//! A process that serves a pool (`ringlb up`, `ringlb proxy`) has all four
//! ([`router`]); the operator, which serves none, has the first three ([`process_router`]).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;
use crate::publish::Publisher;

/// The routes of a process that serves a pool.
pub fn router(publisher: Arc<Publisher>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/ring", get(ring))
        .with_state(publisher)
        .merge(common(metrics))
}

/// The routes of a process that serves no pool: it is ready once it runs.
pub fn process_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/readyz", get(|| async { Json(json!({"ready": true})) }))
        .merge(common(metrics))
}

fn common(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(encode_metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(metrics)
}

async fn encode_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Ready when at least one replica is in the ring: only then can a request be served.
async fn readyz(State(publisher): State<Arc<Publisher>>) -> impl IntoResponse {
    let members = publisher.routing().load().backends.len();
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

async fn ring(State(publisher): State<Arc<Publisher>>) -> impl IntoResponse {
    let table = publisher.table();
    let view = publisher.view();
    // The first read of a table enumerates the key space: off the async workers.
    let shares = tokio::task::spawn_blocking({
        let table = table.clone();
        move || table.shares().to_vec()
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
