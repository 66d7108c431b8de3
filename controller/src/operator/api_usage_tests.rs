//! The operator runs whole against the stateful fake API server: what it does over
//! time, and which API verbs it was seen using (the RBAC test in `manifests.rs`
//! compares the Roles of `deploy/` with exactly these; the proxy's run is
//! `cluster_proxy/api_usage_tests.rs`, on the pool and pods made here).
//!
//! The operator: elected through the Lease, it deletes a stray pod, replaces a
//!   replica whose heartbeat fails, renames a slot whose pod name another pool
//!   holds, brings back a pod deleted from outside (twice: its Event repeats, and is
//! patched), writes the status, and releases the Lease when it stops.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::fixtures::{FakeApiServer, Permission};
use super::leader::{self, LeaseSettings, Timing};
use super::pods::{PodTemplate, TEMPLATE_LABEL};
use super::reconciler::{self, Context};
use crate::metrics::Metrics;
use crate::operator::crd::HeartbeatSpec;
use crate::pool::Probers;
use crate::testing::{self, FakeProber, Within, until};

/// How long a wait for the watch or the controller may take.
pub const SOON: Within = Within::Time(Duration::from_secs(20));

pub const POOLS: &str = "/apis/ringlb.dev/v1alpha1/namespaces/default/serverpools";
pub const PODS: &str = "/api/v1/namespaces/default/pods";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

/// Pool `demo`: `replicas` replicas, heartbeats every 100 ms, one failure fails.
pub fn pool(replicas: u32, status: Value) -> Value {
    let mut pool = testing::pool(replicas)
        .stored("uid-demo")
        // (The default startup grace, 30 s: a pod that was Ready when the operator
        // first saw it fails at its first missed heartbeat.)
        .heartbeat(HeartbeatSpec {
            interval_ms: Some(100),
            timeout_ms: Some(50),
            failure_threshold: Some(1),
            ..HeartbeatSpec::default()
        })
        .json();
    pool["status"] = status;
    pool
}

/// The template hash of pool `demo`'s pods.
pub fn template_hash() -> String {
    PodTemplate {
        image: "ringlb-replica:dev".into(),
        port: 5000,
        ..PodTemplate::default()
    }
    .hash()
}

/// A running pod of pool `demo` (of its current template), Ready since long ago;
/// `member: None` names no replica.
pub fn pod(name: &str, member: Option<&str>, ip: &str) -> Value {
    let mut labels = json!({"ringlb.dev/pool": "demo", TEMPLATE_LABEL: template_hash()});
    if let Some(member) = member {
        labels["ringlb.dev/member"] = json!(member);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{
                "type": "Ready", "status": "True",
                "lastTransitionTime": "2020-01-01T00:00:00Z",
            }],
        },
    })
}

/// Runs `ringlb operator`'s pieces (election, controller) until it has replaced a
/// failed replica, then stops it; returns the server it used.
pub async fn operator_run() -> FakeApiServer {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    api.put(PODS, pod("server1", Some("Server1"), "10.0.0.1"));
    api.put(PODS, pod("server2", Some("Server2"), "10.0.0.2"));
    api.put(PODS, pod("stray", None, "10.0.0.9"));
    // Server3's pod name is taken by another pool's pod.
    let mut foreign = pod("server3", Some("Server3"), "10.0.0.8");
    foreign["metadata"]["labels"]["ringlb.dev/pool"] = json!("other");
    api.put(PODS, foreign);
    // A pod that is no pool's (no labels: the operator's watch does not show it)
    // holds the name Server3's slot would take next: the create is refused (409),
    // a GET tells it is not this pool's, and the slot takes the next name.
    let mut unlabelled = pod("emergency-2", None, "10.0.0.6");
    unlabelled["metadata"]["labels"] = json!({});
    api.put(PODS, unlabelled);

    let metrics = Arc::new(Metrics::new());
    let (stop_campaign, campaign_stopped) = oneshot::channel::<()>();
    let timing = Timing::new(
        Duration::from_secs(2),
        Duration::from_secs(1),
        Duration::from_millis(200),
    )
    .unwrap();
    let lease = LeaseSettings::new("ringlb-operator", "default", "op-a", timing);
    let (leadership, elector) = leader::campaign(api.client(), lease, metrics.clone(), async {
        let _ = campaign_stopped.await;
    });
    let probes = FakeProber::by_ip([("10.0.0.1".parse().unwrap(), true)]);
    let ctx = Arc::new(Context::new(
        api.client(),
        Some("op-a".into()),
        Probers::same(Arc::new(probes)),
        metrics,
        leadership,
    ));
    let (stop_controller, controller_stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(reconciler::run(ctx, Some("default"), async {
        let _ = controller_stopped.await;
    }));

    until(
        "Server2 is replaced, Server3 (its pod name held by another pool) renamed, the status says so", SOON,
        || {
            let status = api.get(POOLS, "demo").map(|p| p["status"].clone());
            api.names(PODS)
                == ["emergency-1", "emergency-2", "emergency-3", "server1", "server3"]
                && status.is_some_and(|s| {
                    s["emergencyReplacements"].as_array().map(Vec::len) == Some(2)
                        && s["readyReplicas"] == 1
                })
        },
    )
    .await;
    // A pod deleted from outside comes back as it was; the second time, its Event
    // repeats (the recorder patches the first one's series).
    let creates = || {
        api.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path == PODS)
            .count()
    };
    for _ in 0..2 {
        let before = creates();
        let request = http::Request::delete(format!("{PODS}/server1"))
            .body(Vec::new())
            .unwrap();
        api.client().request_text(request).await.unwrap();
        until("server1 is back", SOON, || creates() > before).await;
    }
    until("its Event repeated", SOON, || {
        api.calls()
            .iter()
            .any(|c| c.method == "PATCH" && c.path.starts_with(EVENTS))
    })
    .await;
    assert_eq!(
        api.get(LEASES, "ringlb-operator").unwrap()["spec"]["holderIdentity"],
        "op-a"
    );

    let _ = stop_controller.send(());
    let _ = stop_campaign.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .expect("the controller stops")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), elector)
        .await
        .expect("the election stops")
        .unwrap();
    // Stepped down: the lease is free for a standby at once.
    assert!(
        api.get(LEASES, "ringlb-operator").unwrap()["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null)
    );
    api
}

#[tokio::test]
async fn the_elected_operator_replaces_a_failed_replica_and_steps_down_when_stopped() {
    let api = operator_run().await;
    // The stray pod went, and every write came with an Event.
    assert!(!api.names(PODS).contains(&"stray".to_owned()));
    let events = api.names(EVENTS);
    assert!(events.len() >= 3, "{events:?}");
    // Server3's slot took a free name: nothing is stuck, nothing Degraded.
    let status = api.get(POOLS, "demo").unwrap()["status"].clone();
    let slots: Vec<(&str, &str)> = status["emergencyReplacements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["original"].as_str().unwrap(),
                r["replacement"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(slots.contains(&("Server3", "emergency_3")), "{slots:?}");
    assert_eq!(status["conditions"][1]["status"], "False", "{status}");
}

#[tokio::test(start_paused = true)]
async fn a_standby_that_takes_over_reconciles_at_once() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(1, Value::Null));
    let (leading, leadership) = leader::Leadership::manual();
    let ctx = Arc::new(Context::new(
        api.client(),
        None,
        Probers::same(Arc::new(FakeProber::answering(false))),
        Arc::new(Metrics::new()),
        leadership,
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(reconciler::run(ctx, Some("default"), async {
        let _ = stopped.await;
    }));
    // As a standby it watches and writes nothing, however long it waits. (Half an
    // interval off its rechecks, so that the next one is a second away.)
    tokio::time::sleep(reconciler::STANDBY_RECHECK * 15 + reconciler::STANDBY_RECHECK / 2).await;
    assert!(api.names(PODS).is_empty());
    assert!(api.calls().iter().all(|c| c.method == "GET"));

    let took_over = tokio::time::Instant::now();
    leading.send_replace(true);
    while api.names(PODS).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Virtual time: the pass ran on the takeover, not at the standby's next recheck.
    assert!(
        took_over.elapsed() < Duration::from_millis(100),
        "{:?}",
        took_over.elapsed()
    );
    let _ = stop.send(());
    controller.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pool_stops_being_heartbeaten() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(2, Value::Null));
    api.put(PODS, pod("server1", Some("Server1"), "10.0.0.1"));
    api.put(PODS, pod("server2", Some("Server2"), "10.0.0.2"));
    let prober = Arc::new(FakeProber::answering(true));
    // Leading from the start.
    let (leading, leadership) = leader::Leadership::manual();
    leading.send_replace(true);
    let ctx = Arc::new(Context::new(
        api.client(),
        None,
        Probers::same(prober.clone()),
        Arc::new(Metrics::new()),
        leadership,
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(reconciler::run(ctx, Some("default"), async {
        let _ = stopped.await;
    }));
    let probes = || prober.probe_count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(probes() >= 2 * 40, "two pods every 100 ms: {}", probes());

    // The pool goes. These pods name no owner, so the fake's garbage collection
    // keeps them (a real one may lag): any probe after this one is too many.
    let path = format!("{POOLS}/demo");
    let client = api.client();
    let request = http::Request::delete(path).body(Vec::new()).unwrap();
    client.request_text(request).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = probes();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(probes(), after, "no heartbeats for a pool that is gone");
    let _ = stop.send(());
    controller.await.unwrap();
}

/// The verbs the operator was seen using (the proxy's: `cluster_proxy/api_usage_tests.rs`).
pub async fn permissions() -> BTreeSet<Permission> {
    operator_run().await.permissions()
}
