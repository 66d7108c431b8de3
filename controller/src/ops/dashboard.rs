//! `GET /dashboard`: a live picture of the ring for a browser — the circle and who owns
//! it, each member's share of the keys, health, requests per second, in-flight load
//! against the bound of bounded loads, and replacements. One self-contained page
//! (`dashboard.html`: inline CSS and JavaScript, no external asset, works offline)
//! that polls, every second, `/ring` and `GET /dashboard/state`: the part of the ring
//! that `/ring` does not show, described by [`state_json`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::publish::Publisher;
use crate::ring::Ring;

/// The page: HTML with its CSS and JavaScript inline.
pub const PAGE: &str = include_str!("dashboard.html");

/// How many positions the circle of the picture is cut into at most: a 512-slot course
/// ring is drawn slot by slot, larger circles are sampled (see [`Ring::picture`]).
pub const MAX_POSITIONS: u32 = 1440;

/// The page fetches nothing but its two feeds, from this origin; the policy makes sure
/// it cannot load anything else (so it works offline, and leaks nothing).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

struct Dashboard {
    publisher: Arc<Publisher>,
    /// The clock of `elapsed_ms`.
    started: Instant,
}

/// The routes of the dashboard, for the operations port of a process that serves a pool.
pub fn router(publisher: Arc<Publisher>) -> Router {
    let dashboard = Arc::new(Dashboard {
        publisher,
        started: Instant::now(),
    });
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/state", get(state))
        .with_state(dashboard)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}

/// `GET /dashboard/state[?ring=<ring_id>]`.
async fn state(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let table = dashboard.publisher.table();
    let counters = table
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.responses.get(), b.failures.get()));
    let elapsed_ms = dashboard.started.elapsed().as_millis() as u64;
    let known = query.get("ring").map(String::as_str);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(state_json(&table.ring, counters, elapsed_ms, known)),
    )
}

/// The body of `GET /dashboard/state`. Its fields are a stable interface:
///
/// - `elapsed_ms` (integer): milliseconds on the server's monotonic clock since the
///   operations port started; requests per second are the change of `responses`
///   divided by the change of `elapsed_ms` between two polls.
/// - `ring_id` (string): changes whenever the ring does (members or configuration).
/// - `members` (array of strings): the members of the ring in its canonical order;
///   `member` in `picture` indexes into it.
/// - `picture`: [`Ring::picture`] of the ring with at most [`MAX_POSITIONS`]
///   positions — `positions` (integer), `circle` (the slots or table entries the
///   positions sample, or null for the 2⁶⁴ hashes of `point` and `rendezvous`), `arcs`
///   (`[{from, to, member}]`: positions `from..to` are served by `members[member]`, in
///   order around the circle) and `vnodes` (`[{at, member}]`: where the virtual servers
///   of a slot ring sit, `at` a fraction of the circle); null when the request's
///   `?ring=` is the current `ring_id` (the page has it already).
/// - `counters` (object by member name, members of the ring only): `responses` and
///   `failures`, the counters `ringlb_responses` and `ringlb_forward_failures` of
///   `/metrics`, counted since the process started.
pub fn state_json<'a>(
    ring: &Ring,
    counters: impl IntoIterator<Item = (&'a str, u64, u64)>,
    elapsed_ms: u64,
    known_ring: Option<&str>,
) -> Value {
    let ring_id = ring_id(ring);
    let picture = if known_ring == Some(ring_id.as_str()) {
        Value::Null
    } else {
        json!(ring.picture(MAX_POSITIONS))
    };
    let counters: serde_json::Map<String, Value> = counters
        .into_iter()
        .map(|(name, responses, failures)| {
            (
                name.to_owned(),
                json!({"responses": responses, "failures": failures}),
            )
        })
        .collect();
    json!({
        "elapsed_ms": elapsed_ms,
        "ring_id": ring_id,
        "members": ring.members(),
        "picture": picture,
        "counters": counters,
    })
}

/// A fingerprint of what the picture depends on: the configuration, the members and
/// their weights.
fn ring_id(ring: &Ring) -> String {
    let identity = json!([ring.config(), ring.members(), ring.weights()]).to_string();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(identity.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::ring::RingConfig;

    #[test]
    fn the_state_has_the_picture_the_members_and_their_counters() {
        let ring = Ring::build(&["Server2", "Server1", "Server3"], &RingConfig::course());
        let state = state_json(
            &ring,
            [("Server1", 7, 1), ("Server2", 0, 0), ("Server3", 12, 0)],
            1500,
            None,
        );
        assert_eq!(state["elapsed_ms"], 1500);
        assert_eq!(state["members"], json!(["Server1", "Server2", "Server3"]));
        assert_eq!(
            state["counters"]["Server1"],
            json!({"responses": 7, "failures": 1})
        );
        assert_eq!(state["counters"]["Server3"]["responses"], 12);

        let picture = &state["picture"];
        assert_eq!(picture["positions"], 512);
        assert_eq!(picture["circle"], 512);
        assert_eq!(picture["vnodes"].as_array().unwrap().len(), 27);
        let arcs = picture["arcs"].as_array().unwrap();
        assert_eq!(arcs.first().unwrap()["from"], 0);
        assert_eq!(arcs.last().unwrap()["to"], 512);
        for arc in arcs {
            let keys: Vec<&String> = arc.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["from", "member", "to"]);
        }
        let mut owners: Vec<u64> = arcs.iter().map(|a| a["member"].as_u64().unwrap()).collect();
        owners.sort_unstable();
        owners.dedup();
        assert_eq!(owners, [0, 1, 2], "every member owns an arc");
        let vnode = &picture["vnodes"][0];
        assert!(vnode["at"].as_f64().unwrap() < 1.0 && vnode["member"].as_u64().unwrap() < 3);
    }

    #[test]
    fn the_picture_is_left_out_while_the_ring_is_the_one_the_page_has() {
        let config = RingConfig::course();
        let ring = Ring::build(&["A", "B"], &config);
        let first = state_json(&ring, [], 0, None);
        let id = first["ring_id"].as_str().unwrap();
        assert!(state_json(&ring, [], 0, Some(id))["picture"].is_null());
        // The same members in another order are the same ring.
        let same = Ring::build(&["B", "A"], &config);
        assert_eq!(state_json(&same, [], 0, None)["ring_id"], id);
        // Another member or another configuration is another ring.
        let grown = Ring::build(&["A", "B", "C"], &config);
        let grown = state_json(&grown, [], 0, Some(id));
        assert_ne!(grown["ring_id"], id);
        assert!(grown["picture"].is_object());
        let other = Ring::build(&["A", "B"], &RingConfig::default());
        assert_ne!(state_json(&other, [], 0, None)["ring_id"], id);
    }

    #[tokio::test]
    async fn the_page_and_its_state_are_served_and_the_page_loads_nothing_from_elsewhere() {
        let publisher = Arc::new(Publisher::new(
            &RingConfig::default(),
            Arc::new(Metrics::new()),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, router(publisher)).await });
        let client = reqwest::Client::new();

        let page = client
            .get(format!("{base}/dashboard"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let headers = page.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'")
        );
        let html = page.text().await.unwrap();
        assert!(html.starts_with("<!doctype html>"));
        for external in ["<link", "src=", "href=", "@import", "url(", "@font-face"] {
            assert!(!html.contains(external), "the page loads {external}…");
        }
        // It polls its two feeds by relative URL (so it works behind a path prefix).
        assert!(html.contains("'ring'") && html.contains("'dashboard/state'"));

        // An empty ring: nothing to draw yet.
        let state: Value = client
            .get(format!("{base}/dashboard/state"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(state["members"], json!([]));
        assert_eq!(state["picture"]["positions"], 0);
        assert!(state["picture"]["circle"].is_null());
        assert_eq!(state["picture"]["arcs"], json!([]));
        assert_eq!(state["counters"], json!({}));
        server.abort();
    }
}
