//! Reconciler tests against the fake API server (`fixtures.rs`): every API call
//! the reconciler makes is recorded (method, path, body) and asserted, in order.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Client, Resource};
use serde_json::{Value, json};

use super::*;
use crate::metrics::Metrics;
use crate::operator::crd::{HeartbeatSpec, ServerPoolStatus};
use crate::operator::fixtures::{ApiCall, FakeApiServer};
use crate::operator::leader::Leadership;
use crate::operator::pods::{self, KubeRuntime, PodTemplate};
use crate::pool::Probers;
use crate::testing::{self, FakeProber};

const NS: &str = "default";
const POOL_UID: &str = "5d3c0f2e-0000-4000-8000-000000000001";
const POOLS: &str = "/apis/ringlb.dev/v1alpha1/namespaces/default/serverpools";
const PODS: &str = "/api/v1/namespaces/default/pods";
const STATUS: &str = "/apis/ringlb.dev/v1alpha1/namespaces/default/serverpools/demo/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
/// The pool's admin Secret is tried once per term (its test: `over_time_tests.rs`).
const SECRETS: &str = "/api/v1/namespaces/default/secrets";

/// The API server of one pass: the pool, its admin Secret and `pods` stored; every
/// call recorded.
struct Api {
    server: FakeApiServer,
}

impl Api {
    fn start(pods: Vec<Value>) -> Api {
        let server = FakeApiServer::default();
        server.put(POOLS, serde_json::to_value(pool(3, None)).unwrap());
        // The Secret exists: its create is refused (409), as on any pass but a pool's first.
        server.put(
            SECRETS,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "demo-admin", "namespace": NS}}),
        );
        for pod in pods {
            server.put(PODS, pod);
        }
        Api { server }
    }

    fn client(&self) -> Client {
        self.server.client()
    }

    /// What the pods' watch shows (the reconciler reads pods from its store): the
    /// pods stored.
    fn pods(&self) -> Vec<Pod> {
        self.server
            .names(PODS)
            .iter()
            .map(|name| serde_json::from_value(self.server.get(PODS, name).unwrap()).unwrap())
            .collect()
    }

    fn calls(&self) -> Vec<ApiCall> {
        self.server.calls()
    }

    /// Every call but Events and the admin Secret's, as "METHOD path".
    fn writes_and_reads(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| !c.path.starts_with(EVENTS) && c.path != SECRETS)
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }

    /// The reasons of the Events recorded.
    fn event_reasons(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.path.starts_with(EVENTS))
            .map(|c| c.body["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn body_of(&self, method: &str, path: &str) -> Value {
        self.calls()
            .into_iter()
            .find(|c| c.method == method && c.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} in {:#?}", self.writes_and_reads()))
            .body
    }

    fn created_pods(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path.starts_with(PODS))
            .map(|c| c.body)
            .collect()
    }

    /// The names of the pods stored after the pass.
    fn pod_names(&self) -> Vec<String> {
        self.server.names(PODS)
    }
}

fn fixed_clock() -> Timestamp {
    "2026-01-02T03:04:05Z".parse().unwrap()
}

fn context(api: &Api, healthy: &[&str], failing: &[&str]) -> Arc<Context> {
    // Heartbeats answer from a table of pod IPs (unknown IPs fail).
    let table = healthy
        .iter()
        .map(|ip| (ip.parse().unwrap(), true))
        .chain(failing.iter().map(|ip| (ip.parse().unwrap(), false)));
    let mut ctx = Context::new(
        api.client(),
        None,
        Probers::same(Arc::new(FakeProber::by_ip(table))),
        Arc::new(Metrics::new()),
        Leadership::sole(),
    );
    ctx.set_clock(fixed_clock);
    ctx.set_pods(api.pods());
    // The pool's budget is there already (its own test writes it).
    let owner = pool(3, None).controller_owner_ref(&()).unwrap();
    ctx.set_budgets(vec![pods::disruption_budget("demo", &owner)]);
    Arc::new(ctx)
}

/// The pool of these tests: stored, heartbeats that fail a replica at its first miss.
fn pool(replicas: u32, status: Option<ServerPoolStatus>) -> ServerPool {
    testing::pool(replicas)
        .stored(POOL_UID)
        .heartbeat(HeartbeatSpec {
            interval_ms: Some(1000),
            timeout_ms: Some(500),
            failure_threshold: Some(1),
            max_unconfirmed_replacements: None,
            // These pods fail from their first heartbeat on purpose.
            startup_grace_ms: Some(0),
            check: None,
        })
        .status(status)
        .build()
}

/// A running pod of the pool, as the API server would list it.
fn running_pod(member: &str, ip: &str) -> Value {
    let name = ReplicaName::parse(member).unwrap();
    let mut pod = serde_json::to_value(template_pod(&name)).unwrap();
    pod["metadata"]["uid"] = json!(format!("uid-{}", pod_slots::pod_name(&name).unwrap()));
    pod["metadata"]["namespace"] = json!(NS);
    // Ready and serving for years, as the kubelet says: a replica that served long
    // (its failure is not a crash loop, see `CRASH_LOOP_RESET`).
    pod["status"] = json!({
        "phase": "Running",
        "podIP": ip,
        "conditions": [{
            "type": "Ready", "status": "True",
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        }],
    });
    pod
}

fn template_pod(name: &ReplicaName) -> Pod {
    let owner = pool(3, None).controller_owner_ref(&()).unwrap();
    KubeRuntime::new(
        // A client to exist, not to be used: `pod_manifest` is pure.
        FakeApiServer::default().client(),
        NS,
        "demo",
        owner,
        PodTemplate {
            image: "ringlb-replica:dev".into(),
            port: 5000,
            ..PodTemplate::default()
        },
    )
    .pod_manifest(name, &pod_slots::pod_name(name).unwrap())
    .unwrap()
}

fn three_running() -> Vec<Value> {
    vec![
        running_pod("Server1", "10.0.0.1"),
        running_pod("Server2", "10.0.0.2"),
        running_pod("Server3", "10.0.0.3"),
    ]
}

const ALL_HEALTHY: &[&str] = &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];

async fn pass(pool: ServerPool, ctx: &Arc<Context>) -> Action {
    reconcile(Arc::new(pool), ctx.clone()).await.unwrap()
}

fn patched_status(api: &Api) -> ServerPoolStatus {
    serde_json::from_value(api.body_of("PATCH", STATUS)["status"].clone()).unwrap()
}

#[tokio::test]
async fn an_empty_pool_gets_its_pods_with_owner_references_and_labels() {
    let api = Api::start(Vec::new());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    let action = pass(pool(3, None), &ctx).await;
    assert_eq!(action, Action::requeue(RESYNC));

    assert_eq!(
        api.writes_and_reads(),
        [
            format!("POST {PODS}"),
            format!("POST {PODS}"),
            format!("POST {PODS}"),
            format!("PATCH {STATUS}"),
        ]
    );
    let created = api.created_pods();
    let names: Vec<&str> = created
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["server1", "server2", "server3"]);
    let first = &created[0];
    assert_eq!(
        first["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "ringlb.dev/v1alpha1",
            "kind": "ServerPool",
            "name": "demo",
            "uid": POOL_UID,
            "controller": true,
        }])
    );
    assert_eq!(first["metadata"]["labels"]["ringlb.dev/pool"], "demo");
    assert_eq!(first["metadata"]["labels"]["ringlb.dev/member"], "Server1");
    let container = &first["spec"]["containers"][0];
    assert_eq!(container["image"], "ringlb-replica:dev");
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "SERVER_ID", "value": "Server1"}))
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/heartbeat");
    assert_eq!(api.event_reasons(), ["Created", "Created", "Created"]);

    let status = patched_status(&api);
    assert_eq!((status.replicas, status.ready_replicas), (3, 0));
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| !m.ready));
    assert_eq!(status.observed_generation, Some(1));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.message.as_str()),
        ("False", "0/3 replicas ready")
    );
    // What the API server holds after the pass.
    assert_eq!(api.pod_names(), ["server1", "server2", "server3"]);
    let stored = api.server.get(POOLS, "demo").unwrap();
    assert_eq!(stored["status"]["replicas"], 3);
}

#[tokio::test]
async fn a_converged_pool_is_left_alone_and_its_status_not_rewritten() {
    // First pass: everything healthy, status written once.
    let api = Api::start(three_running());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(3, None), &ctx).await;
    assert_eq!(api.writes_and_reads(), [format!("PATCH {STATUS}")]);
    let status = patched_status(&api);
    assert_eq!((status.replicas, status.ready_replicas), (3, 3));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");

    // Second pass with that status: no API call at all (pods come from the watch).
    let api = Api::start(three_running());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(3, Some(status)), &ctx).await;
    assert!(
        api.writes_and_reads().is_empty(),
        "{:?}",
        api.writes_and_reads()
    );
    assert!(api.event_reasons().is_empty());
}

#[tokio::test]
async fn scaling_down_deletes_the_extra_pods() {
    let api = Api::start(three_running());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(2, None), &ctx).await;
    assert_eq!(
        api.writes_and_reads(),
        [format!("DELETE {PODS}/server3"), format!("PATCH {STATUS}"),]
    );
    assert_eq!(api.pod_names(), ["server1", "server2"]);
    assert_eq!(api.event_reasons(), ["Deleted"]);
    let status = patched_status(&api);
    assert_eq!((status.replicas, status.ready_replicas), (2, 2));
}

#[tokio::test]
async fn scaling_up_creates_only_the_missing_pods() {
    let api = Api::start(three_running());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(5, None), &ctx).await;
    assert_eq!(
        api.writes_and_reads(),
        [
            format!("POST {PODS}"),
            format!("POST {PODS}"),
            format!("PATCH {STATUS}"),
        ]
    );
    let names: Vec<String> = api
        .created_pods()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["server4", "server5"]);
    let status = patched_status(&api);
    assert_eq!((status.replicas, status.ready_replicas), (5, 3));
}

#[tokio::test]
async fn a_pod_deleted_from_outside_is_created_again_under_its_name() {
    let pods = vec![
        running_pod("Server1", "10.0.0.1"),
        running_pod("Server3", "10.0.0.3"),
    ];
    let api = Api::start(pods);
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(3, None), &ctx).await;
    assert_eq!(
        api.writes_and_reads(),
        [format!("POST {PODS}"), format!("PATCH {STATUS}")]
    );
    let created = api.created_pods();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["metadata"]["name"], "server2");
    assert_eq!(
        created[0]["metadata"]["labels"]["ringlb.dev/member"],
        "Server2"
    );
}

#[tokio::test]
async fn a_failed_pod_is_replaced_by_an_emergency_pod_and_recorded() {
    let api = Api::start(three_running());
    let ctx = context(&api, &["10.0.0.1", "10.0.0.3"], &["10.0.0.2"]);
    pass(pool(3, None), &ctx).await;
    assert_eq!(
        api.writes_and_reads(),
        [
            format!("DELETE {PODS}/server2"),
            format!("POST {PODS}"),
            format!("PATCH {STATUS}"),
        ]
    );
    // A failed replica's pod gets a short grace: nothing waits for it, and the
    // kubelet still stops it in order.
    assert_eq!(
        api.body_of("DELETE", &format!("{PODS}/server2"))["gracePeriodSeconds"],
        5
    );
    let created = api.created_pods();
    assert_eq!(created[0]["metadata"]["name"], "emergency-1");
    assert_eq!(
        created[0]["metadata"]["labels"]["ringlb.dev/member"],
        "emergency_1"
    );
    assert!(
        created[0]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "SERVER_ID", "value": "emergency_1"}))
    );
    assert_eq!(api.event_reasons(), ["Replaced", "Created"]);
    let replaced = &api
        .calls()
        .into_iter()
        .find(|c| c.path.starts_with(EVENTS))
        .unwrap()
        .body;
    assert_eq!(replaced["type"], "Warning");
    assert_eq!(replaced["regarding"]["kind"], "ServerPool");
    assert_eq!(replaced["related"]["name"], "server2");

    let status = patched_status(&api);
    assert_eq!(
        status.emergency_replacements,
        [ReplacementStatus {
            original: "Server2".into(),
            replacement: "emergency_1".into(),
            count: 1,
            // It had served for years (the kubelet's Ready): no crash loop, the
            // slot's streak stays at 0 and its next replacement need not wait.
            unready_streak: 0,
        }]
    );
    let names: Vec<(&str, &str, bool)> = status
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.pod.as_str(), m.ready))
        .collect();
    assert_eq!(
        names,
        [
            ("Server1", "server1", true),
            ("emergency_1", "emergency-1", false),
            ("Server3", "server3", true),
        ]
    );
    assert_eq!((status.replicas, status.ready_replicas), (3, 2));
    assert_eq!(api.pod_names(), ["emergency-1", "server1", "server3"]);
}

#[tokio::test]
async fn a_replacement_survives_a_pass_that_still_sees_the_old_status() {
    let api = Api::start(three_running());
    let ctx = context(&api, &["10.0.0.1", "10.0.0.3"], &["10.0.0.2"]);
    pass(pool(3, None), &ctx).await;

    // The cached pool has no status yet; server2 is gone, emergency-1 is starting.
    let mut pods = vec![
        running_pod("Server1", "10.0.0.1"),
        running_pod("Server3", "10.0.0.3"),
    ];
    let mut emergency = running_pod("emergency_1", "10.0.0.4");
    emergency["status"] = json!({"phase": "Pending"});
    pods.push(emergency);
    let api = Api::start(pods);
    let remembered = std::mem::take(&mut *ctx.memory.lock().unwrap());
    let ctx = context(&api, &["10.0.0.1", "10.0.0.3"], &[]);
    *ctx.memory.lock().unwrap() = remembered;
    pass(pool(3, None), &ctx).await;
    // No pod for Server2 again, nothing deleted: only the status catches up.
    assert_eq!(api.writes_and_reads(), [format!("PATCH {STATUS}")]);
    assert_eq!(patched_status(&api).emergency_replacements.len(), 1);
}

#[tokio::test]
async fn names_that_cannot_be_pods_are_refused_with_a_condition() {
    let api = Api::start(Vec::new());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    let mut bad = pool(2, None);
    bad.spec.hostnames = vec!["Web_1".into(), "web-1".into()];
    pass(bad, &ctx).await;
    assert_eq!(api.writes_and_reads(), [format!("PATCH {STATUS}")]);
    let status = patched_status(&api);
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded
            .message
            .contains("'Web_1' and 'web-1' would both be pod 'web-1'"),
        "{}",
        degraded.message
    );
}

#[tokio::test]
async fn pods_that_name_no_replica_are_deleted() {
    let mut stray = running_pod("Server9", "10.0.0.9");
    stray["metadata"]["labels"]["ringlb.dev/member"] = json!("not a name");
    let mut pods = three_running();
    pods.push(stray);
    let api = Api::start(pods);
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(3, None), &ctx).await;
    assert_eq!(
        api.writes_and_reads(),
        [format!("DELETE {PODS}/server9"), format!("PATCH {STATUS}"),]
    );
}

#[tokio::test]
async fn a_standby_writes_nothing_and_looks_again_soon() {
    let api = Api::start(Vec::new());
    let mut ctx = Context::new(
        api.client(),
        None,
        Probers::same(Arc::new(FakeProber::answering(false))),
        Arc::new(Metrics::new()),
        Leadership::standby(),
    );
    ctx.set_clock(fixed_clock);
    // An empty pool: a leader would create three pods and patch the status.
    let action = pass(pool(3, None), &Arc::new(ctx)).await;
    assert!(api.calls().is_empty(), "{:#?}", api.writes_and_reads());
    assert_eq!(action, Action::requeue(STANDBY_RECHECK));
}

#[tokio::test]
async fn an_emergency_name_another_pool_holds_is_not_picked() {
    // Pool `other` of the same namespace owns pod emergency-1 already.
    let mut foreign = running_pod("emergency_1", "10.0.9.1");
    foreign["metadata"]["labels"]["ringlb.dev/pool"] = json!("other");
    let mut pods = three_running();
    pods.push(foreign);
    let api = Api::start(pods);
    let ctx = context(&api, &["10.0.0.1", "10.0.0.3"], &["10.0.0.2"]);
    pass(pool(3, None), &ctx).await;
    assert_eq!(
        api.writes_and_reads(),
        [
            format!("DELETE {PODS}/server2"),
            format!("POST {PODS}"),
            format!("PATCH {STATUS}"),
        ]
    );
    let created = api.created_pods();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["metadata"]["name"], "emergency-2");
    assert!(!api.event_reasons().contains(&"PodConflict".to_owned()));
}

#[tokio::test]
async fn a_pod_stuck_terminating_is_replaced_under_a_new_name() {
    let stuck_since = |seconds_ago: i64| {
        let at = fixed_clock() - k8s_openapi::jiff::SignedDuration::from_secs(seconds_ago);
        json!(at.to_string())
    };
    let mut pods = three_running();
    // server2 was asked to stop 10 minutes ago and never went (its node is gone).
    pods[1]["metadata"]["deletionTimestamp"] = stuck_since(600);
    let api = Api::start(pods.clone());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(3, None), &ctx).await;
    // Replaced as a failed pod is: asked to stop again, and a new one made.
    assert_eq!(
        api.writes_and_reads(),
        [
            format!("DELETE {PODS}/server2"),
            format!("POST {PODS}"),
            format!("PATCH {STATUS}"),
        ]
    );
    assert_eq!(api.created_pods()[0]["metadata"]["name"], "emergency-1");
    assert_eq!(
        patched_status(&api).emergency_replacements[0].original,
        "Server2"
    );

    // One that has just begun terminating is waited for: its name comes back.
    pods[1]["metadata"]["deletionTimestamp"] = stuck_since(5);
    let api = Api::start(pods);
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(3, None), &ctx).await;
    assert!(api.created_pods().is_empty());
    assert_eq!(api.writes_and_reads(), [format!("PATCH {STATUS}")]);
}

#[tokio::test]
async fn the_status_is_written_by_server_side_apply_under_the_controller_name() {
    let api = Api::start(three_running());
    let ctx = context(&api, ALL_HEALTHY, &[]);
    pass(pool(3, None), &ctx).await;
    assert_eq!(api.writes_and_reads(), [format!("PATCH {STATUS}")]);
    let call = api
        .calls()
        .into_iter()
        .find(|c| c.method == "PATCH" && c.path == STATUS)
        .unwrap();
    assert!(
        call.query.contains("fieldManager=ringlb-operator"),
        "{}",
        call.query
    );
    assert!(call.query.contains("force=true"), "{}", call.query);
    assert_eq!(call.body["kind"], "ServerPool");
    assert_eq!(call.body["status"]["selector"], "ringlb.dev/pool=demo");
}
