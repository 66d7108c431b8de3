//! The in-cluster proxy runs whole against the stateful fake API server: its
//! watches build the ring from the pool's status and pods, a spec change written by
//! `/add` on *another* proxy reaches its `/rep`, and `/rm` works; and which API verbs
//! it was seen using (the RBAC test in `manifests.rs` compares the proxy's Role in
//! `deploy/` with exactly these).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::spec_admin::SpecAdmin;
use crate::metrics::Metrics;
use crate::operator::api_usage_tests::{PODS, POOLS, SOON, pod, pool};
use crate::operator::fixtures::{FakeApiServer, Permission};
use crate::pool::PoolAdmin;
use crate::publish::Publisher;
use crate::ring::RingConfig;
use crate::testing::until;

/// Runs `ringlb proxy`'s pieces (watch, publisher, `/add` and `/rm`) against a pool
/// the operator has reported on; returns the server it used.
pub async fn proxy_run() -> FakeApiServer {
    let api = FakeApiServer::default();
    let ready = |n: usize| {
        json!({"members": (1..=n).map(|i| json!({
            "name": format!("Server{i}"), "pod": format!("server{i}"), "ready": true,
        })).collect::<Vec<_>>()})
    };
    api.put(POOLS, pool(2, ready(2)));
    api.put(PODS, pod("server1", Some("Server1"), "10.0.0.1"));
    api.put(PODS, pod("server2", Some("Server2"), "10.0.0.2"));
    // Another pool's pod: not this proxy's.
    let mut other = pod("web1", Some("web1"), "10.0.0.7");
    other["metadata"]["labels"]["ringlb.dev/pool"] = json!("other");
    api.put(PODS, other);

    let metrics = Arc::new(Metrics::new());
    let publisher = Arc::new(Publisher::new(&RingConfig::default(), metrics.clone()));
    let (reports, reported) = mpsc::channel(16);
    let (stop, stopped) = oneshot::channel::<()>();
    let watch = tokio::spawn({
        let (client, publisher) = (api.client(), publisher.clone());
        async move {
            super::watch::run(client, "default", "demo", publisher, reported, async {
                let _ = stopped.await;
            })
            .await;
        }
    });
    let in_ring = |publisher: &Publisher| -> Vec<String> {
        let members = publisher.table().membership();
        members.iter().map(|m| m.addr.to_string()).collect()
    };
    until("both members are in the ring", SOON, || {
        in_ring(&publisher) == ["10.0.0.1:5000", "10.0.0.2:5000"]
    })
    .await;

    // `/add` on another proxy replica: this one learns it from its watch.
    let elsewhere = SpecAdmin::new(
        kube::Api::namespaced(api.client(), "default"),
        "demo",
        10,
        metrics.clone(),
        Arc::new(Publisher::new(&RingConfig::default(), metrics.clone())),
        mpsc::channel(1).0,
    );
    elsewhere.add(1, vec![], Default::default()).await.unwrap();
    until("/rep lists the replica added elsewhere", SOON, || {
        publisher.view().desired.len() == 3
    })
    .await;
    // The operator reports Server3 ready and its pod appears: it joins the ring.
    api.put(PODS, pod("server3", Some("Server3"), "10.0.0.3"));
    let mut reported_pool = api.get(POOLS, "demo").unwrap();
    reported_pool["status"] = ready(3);
    api.put(POOLS, reported_pool);
    until("Server3 joins the ring", SOON, || {
        in_ring(&publisher).len() == 3
    })
    .await;

    // `/rm` on this proxy.
    let admin = SpecAdmin::new(
        kube::Api::namespaced(api.client(), "default"),
        "demo",
        10,
        metrics,
        publisher.clone(),
        reports,
    );
    let desired = admin.remove(1, vec!["Server3".into()]).await.unwrap();
    assert_eq!(desired.len(), 2);
    assert_eq!(api.get(POOLS, "demo").unwrap()["spec"]["replicas"], 2);
    until("Server3 leaves the ring", SOON, || {
        in_ring(&publisher).len() == 2
    })
    .await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch stops")
        .unwrap();
    api
}

#[tokio::test]
async fn a_proxy_follows_its_pool_through_its_watches() {
    let api = proxy_run().await;
    // Watches, not polling: after the first LIST of each, changes came as events.
    let lists = api
        .calls()
        .iter()
        .filter(|c| c.method == "GET" && c.path == PODS && !c.query.contains("watch"))
        .count();
    assert_eq!(lists, 1, "one LIST of the pods, then a WATCH");
}

/// The verbs the proxy was seen using.
pub async fn permissions() -> BTreeSet<Permission> {
    proxy_run().await.permissions()
}
