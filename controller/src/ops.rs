//! The operations port: Prometheus `/metrics`, `/healthz`, `/readyz`, `/ring`, a JSON
//! view of the members, their health and their share of the key space, and
//! `/dashboard`, a live picture of the ring for a browser ([`dashboard`]).
//!
//! A process that serves a pool (`ringlb up`, `ringlb proxy`) has them all
//! ([`router`]); the operator, which serves none, has the first three ([`process_router`]).

pub mod dashboard;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::publish::Publisher;

/// What `/healthz` asks: `Err(why)` when the process should be restarted (a task
/// it cannot do without has died or is stuck).
pub type Liveness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Alive as long as it answers (`ringlb up`: its tasks end only with the process).
pub fn answers() -> Liveness {
    Arc::new(|| Ok(()))
}

/// Sets a flag when the task that holds it ends, however it ends (panics included).
pub struct EndsWith(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for EndsWith {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// When a process that serves a pool takes traffic (`/readyz`).
#[derive(Clone)]
pub enum Readiness {
    /// Once a replica is in the ring (`ringlb up`: it starts its replicas itself).
    RingHasMembers,
    /// Once the flag is set: `ringlb proxy`, once its watches have listed the pool
    /// and its pods. Its ring may then be empty: requests get a 503 that says so,
    /// where a Service without the proxy's endpoint would refuse their connections.
    Synced(Arc<std::sync::atomic::AtomicBool>),
}

/// What the kubelet asks a process that serves a pool.
#[derive(Clone)]
pub struct Probes {
    /// `/healthz`.
    pub alive: Liveness,
    /// `/readyz`.
    pub ready: Readiness,
}

/// The routes of a process that serves a pool.
pub fn router(publisher: Arc<Publisher>, metrics: Arc<Metrics>, probes: Probes) -> Router {
    let Probes { alive, ready } = probes;
    Router::new()
        .route(
            "/readyz",
            get(readyz).with_state((publisher.clone(), ready)),
        )
        .route("/ring", get(ring))
        .with_state(publisher.clone())
        .merge(dashboard::router(publisher))
        .merge(common(metrics, alive))
}

/// The routes of a process that serves no pool: it is ready once it runs.
pub fn process_router(metrics: Arc<Metrics>, alive: Liveness) -> Router {
    Router::new()
        .route("/readyz", get(|| async { Json(json!({"ready": true})) }))
        .merge(common(metrics, alive))
}

fn common(metrics: Arc<Metrics>, alive: Liveness) -> Router {
    Router::new()
        .route("/metrics", get(encode_metrics))
        .with_state(metrics)
        .route("/healthz", get(healthz).with_state(alive))
}

async fn healthz(State(alive): State<Liveness>) -> impl IntoResponse {
    match alive() {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failing", "reason": why})),
        ),
    }
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

/// Ready as [`Readiness`] says; the body also counts the members in the ring.
async fn readyz(
    State((publisher, readiness)): State<(Arc<Publisher>, Readiness)>,
) -> impl IntoResponse {
    let members = publisher.routing().load().backends.len();
    let ready = match &readiness {
        Readiness::RingHasMembers => members > 0,
        Readiness::Synced(synced) => synced.load(std::sync::atomic::Ordering::SeqCst),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "members": members})))
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
    let index_of = |name: &str| table.ring.members().iter().position(|m| m == name);
    // Bounded loads: a member's requests in flight and its cap now (null when off).
    let load_of = |index: Option<usize>| match (&table.bound, index) {
        (Some(bound), Some(i)) => (
            json!(table.backends[i].in_flight.get()),
            json!(bound.cap(i)),
        ),
        _ => (Value::Null, Value::Null),
    };
    let members: Vec<_> = view
        .members
        .iter()
        .map(|m| {
            let index = index_of(m.name.as_str());
            let (in_flight, load_bound) = load_of(index);
            let mut member = json!({
                "name": m.name,
                "address": m.address,
                "pid": m.pid,
                "health": m.health,
                "consecutive_failures": m.consecutive_failures,
                "in_ring": m.in_ring,
                "share": index.and_then(|i| shares.get(i).copied()),
                "weight": m.weight,
                "in_flight": in_flight,
                "load_bound": load_bound,
            });
            // A replica container (`--runtime docker`): what `docker ps` calls it.
            if let Some(container) = &m.container {
                member["container"] = json!(container);
            }
            member
        })
        .collect();
    Json(json!({
        "config": table.ring.config(),
        "balance_factor": table.bound.as_ref().map(|b| b.factor()),
        "desired": view.desired,
        "members": members,
        "replacements": view.replacements,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn healthz_fails_once_a_task_the_process_needs_has_ended() {
        let ended = Arc::new(AtomicBool::new(false));
        let alive: Liveness = Arc::new({
            let ended = ended.clone();
            move || match ended.load(Ordering::SeqCst) {
                false => Ok(()),
                true => Err("the watch of the pool has stopped".to_owned()),
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, process_router(Arc::new(Metrics::new()), alive)).await
        });
        let client = reqwest::Client::new();
        let get = || async {
            let response = client.get(&url).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        };
        assert_eq!(get().await.0, StatusCode::OK);

        // The task ends (here: a task holding the flag returns).
        tokio::spawn(async move {
            let _ends = EndsWith(ended);
        })
        .await
        .unwrap();
        let (status, body) = get().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reason"], "the watch of the pool has stopped");
        server.abort();
    }
}
