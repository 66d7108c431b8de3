//! The operator over minutes, on tokio's paused clock: the controller and its
//! heartbeat tasks run whole against the stateful fake API server, and a fake
//! kubelet gives each new pod an address and either runs it (its heartbeats then
//! answer) or lets its container exit, as an image that cannot start does.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api_usage_tests::{EVENTS, PODS, POOLS, pool};
use super::fixtures::FakeApiServer;
use super::leader::Leadership;
use super::pods::{CONTAINER, PodTemplate, TEMPLATE_LABEL};
use super::reconciler::{self, Context};
use crate::metrics::Metrics;
use crate::pool::health::Prober;
use crate::publish::Publisher;
use crate::ring::RingConfig;

/// What the fake kubelet does with a new pod.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Runs it: Ready, and its heartbeats answer.
    Run,
    /// Its container exits with code 1 (`restartPolicy: Never`: the pod fails).
    Crash,
}

/// Starts pods as they are created, every 100 ms of (virtual) time; answers the
/// heartbeats of the pods it runs, on their container port. As a kubelet whose
/// readiness probe runs every second, it marks a running pod `Ready` 1 s after it
/// started.
struct Kubelet {
    up: Arc<Mutex<HashSet<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Kubelet {
    fn start(api: &FakeApiServer, outcome: fn(&Value) -> Outcome) -> Self {
        let up: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
        let task = tokio::spawn({
            let (api, up) = (api.clone(), up.clone());
            async move {
                let mut started = 0u32;
                let mut probed_at: HashMap<String, tokio::time::Instant> = HashMap::new();
                loop {
                    let now = tokio::time::Instant::now();
                    for name in api.names(PODS) {
                        let Some(mut pod) = api.get(PODS, &name) else {
                            continue;
                        };
                        let uid = pod["metadata"]["uid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        if pod["status"]["phase"] == "Running"
                            && pod["status"]["conditions"][0]["status"] == "False"
                            && probed_at.get(&uid).is_some_and(|at| *at <= now)
                        {
                            pod["status"]["conditions"][0]["status"] = json!("True");
                            api.put(PODS, pod);
                            continue;
                        }
                        if !pod["status"]["phase"].is_null() {
                            continue;
                        }
                        started += 1;
                        let ip: IpAddr = format!("10.1.{}.{}", started / 250, started % 250 + 1)
                            .parse()
                            .unwrap();
                        pod["status"] = match outcome(&pod) {
                            Outcome::Run => {
                                let port =
                                    pod["spec"]["containers"][0]["ports"][0]["containerPort"]
                                        .as_u64()
                                        .unwrap();
                                up.lock().unwrap().insert(SocketAddr::new(ip, port as u16));
                                probed_at.insert(uid, now + Duration::from_secs(1));
                                json!({
                                    "phase": "Running",
                                    "podIP": ip.to_string(),
                                    "conditions": [{"type": "Ready", "status": "False"}],
                                })
                            }
                            Outcome::Crash => json!({
                                "phase": "Failed",
                                "podIP": ip.to_string(),
                                "containerStatuses": [{
                                    "name": CONTAINER, "image": "", "imageID": "",
                                    "ready": false, "restartCount": 0,
                                    "state": {"terminated": {"reason": "Error", "exitCode": 1}},
                                }],
                            }),
                        };
                        api.put(PODS, pod);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { up, task }
    }

    /// Pod `pod` stops answering its heartbeats (its process is frozen).
    fn freeze(&self, api: &FakeApiServer, pod: &str) {
        let ip: IpAddr = api.get(PODS, pod).unwrap()["status"]["podIP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        self.up.lock().unwrap().retain(|addr| addr.ip() != ip);
    }

    fn prober(&self) -> Arc<dyn Prober> {
        Arc::new(Answers(self.up.clone()))
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Heartbeats answer for the pods the kubelet runs.
struct Answers(Arc<Mutex<HashSet<SocketAddr>>>);

impl Prober for Answers {
    fn check(&self, addr: SocketAddr, _: Duration) -> BoxFuture<'static, bool> {
        let ok = self.0.lock().unwrap().contains(&addr);
        Box::pin(async move { ok })
    }
}

/// The elected operator's controller, until [`Operator::stop`].
struct Operator {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Operator {
    fn start(api: &FakeApiServer, prober: Arc<dyn Prober>) -> Self {
        let (leading, leadership) = Leadership::manual();
        leading.send_replace(true);
        let ctx = Arc::new(Context::new(
            api.client(),
            None,
            prober,
            Arc::new(Metrics::new()),
            leadership,
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Keeps the leadership sender alive for as long as the controller runs.
            let _leading = leading;
            reconciler::run(ctx, "default", async {
                let _ = stopped.await;
            })
            .await
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// A `ringlb proxy --pool demo`: its watches and publisher, until [`Proxy::stop`].
struct Proxy {
    publisher: Arc<Publisher>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Proxy {
    fn start(api: &FakeApiServer) -> Self {
        let publisher = Arc::new(Publisher::new(
            &RingConfig::default(),
            Arc::new(Metrics::new()),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let (client, publisher) = (api.client(), publisher.clone());
            async move {
                let (_reports, reported) = tokio::sync::mpsc::channel(1);
                super::proxy::run(client, "default", "demo", publisher, reported, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Self {
            publisher,
            stop,
            task,
        }
    }

    /// The members in its ring, sorted.
    fn in_ring(&self) -> Vec<String> {
        let members = self.publisher.table().membership();
        members.iter().map(|m| m.name.to_string()).collect()
    }

    /// The member each of 10,000 keys goes to.
    fn owners(&self) -> Vec<String> {
        let table = self.publisher.table();
        (0..10_000)
            .map(|i| {
                let i = table.ring.lookup(format!("user-{i}").as_bytes()).unwrap();
                table.backends[i].name.to_string()
            })
            .collect()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Waits, on the paused clock, until `done` holds.
async fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pod_creates(api: &FakeApiServer) -> usize {
    api.calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path == PODS)
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_crashing_image_costs_a_handful_of_pods_in_ten_minutes() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(2, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Crash);
    let operator = Operator::start(&api, kubelet.prober());
    tokio::time::sleep(Duration::from_secs(600)).await;
    operator.stop().await;

    // Per slot: its first pod, a replacement at once, then each 1 s, 2 s, 4 s, …
    // 256 s after the one before (at 0, 1, 3, 7, … 511 s): 10 replacements in ten
    // minutes, the next one due at 811 s. (Without the backoff: one every few
    // hundred milliseconds, thousands.)
    let creates = pod_creates(&api);
    assert!(
        (2 * 9..=2 * 11).contains(&creates),
        "{creates} pods created"
    );
    let status = api.get(POOLS, "demo").unwrap()["status"].clone();
    // One entry per slot, however often it was replaced: the status stays small.
    let slots = status["emergencyReplacements"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{slots:?}");
    for slot in slots {
        assert_eq!(slot["count"], 10, "{slot}");
        assert_eq!(slot["unreadyStreak"], 10, "{slot}");
    }
    assert!(status.to_string().len() < 2048, "{status}");
    // The status changes with each replacement and each failure, not at every pass.
    let status_writes = api
        .calls()
        .iter()
        .filter(|c| c.method == "PATCH" && c.path.ends_with("/status"))
        .count();
    // (21 for 22 pods here; a countdown in the Degraded message made it 29.)
    assert!(
        status_writes <= creates + 2,
        "{status_writes} status writes"
    );
    // Degraded says why, with the container's own reason.
    let degraded = &status["conditions"][1];
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ReplacementBackoff", "{degraded}");
    let message = degraded["message"].as_str().unwrap();
    assert!(message.contains("Error, exit code 1"), "{message}");
    // The whole delay, not a countdown: the status does not change at every pass.
    assert!(
        message.contains("replaced again 300s after the last replacement"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_served_is_replaced_at_once_whatever_its_slot_went_through() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(1, Value::Null));
    // The first four pods crash; every later one runs.
    let kubelet = Kubelet::start(&api, |pod| {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let n: u32 = name
            .strip_prefix("emergency-")
            .map_or(0, |n| n.parse().unwrap());
        if n < 4 { Outcome::Crash } else { Outcome::Run }
    });
    let operator = Operator::start(&api, kubelet.prober());
    // Replaced at 0, 1, 3 and 7 s: emergency_4 runs and serves soon after 7 s.
    let status = loop {
        let status = api.get(POOLS, "demo").unwrap()["status"].clone();
        if status["readyReplicas"] == 1 {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        status["emergencyReplacements"][0]["replacement"],
        "emergency_4"
    );
    assert_eq!(status["conditions"][1]["status"], "False", "{status}");
    let creates = pod_creates(&api);

    // It served, then stops answering at once: replaced within its heartbeats, not
    // 8 s after the last replacement, as its slot's streak of 4 would ask.
    kubelet.up.lock().unwrap().clear();
    let failed = tokio::time::Instant::now();
    while pod_creates(&api) == creates {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failed.elapsed() < Duration::from_secs(1),
        "{:?}",
        failed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slot = api.get(POOLS, "demo").unwrap()["status"]["emergencyReplacements"][0].clone();
    assert_eq!(slot["count"], 5, "{slot}");
    assert_eq!(slot["unreadyStreak"], 0, "{slot}");
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_image_and_port_roll_one_pod_at_a_time_with_every_member_serving() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    until(|| status()["readyReplicas"] == 3 && proxy.in_ring().len() == 3).await;
    let owners = proxy.owners();
    let before: Vec<String> = api.names(PODS);
    assert_eq!(before, ["server1", "server2", "server3"]);
    let changes_before = api.history().len();

    // A new image that listens on another port.
    let mut changed = api.get(POOLS, "demo").unwrap();
    changed["spec"]["image"] = json!("ringlb-replica:v2");
    changed["spec"]["port"] = json!(8080);
    changed["metadata"]["generation"] = json!(2);
    api.put(POOLS, changed);
    let new_template = PodTemplate {
        image: "ringlb-replica:v2".into(),
        port: 8080,
    }
    .hash();
    let rolled = || {
        let pods = api.names(PODS);
        pods.len() == 3
            && pods.iter().all(|p| {
                api.get(PODS, p).unwrap()["metadata"]["labels"][TEMPLATE_LABEL] == new_template
            })
            && status()["updatedReplicas"] == 3
            && status()["readyReplicas"] == 3
    };
    let began = tokio::time::Instant::now();
    while !rolled() {
        // All along: every member ready on a pod that exists, at most one extra pod.
        let now = status();
        assert_eq!(now["readyReplicas"], 3, "{now}");
        for member in now["members"].as_array().unwrap() {
            let pod = member["pod"].as_str().unwrap();
            assert!(
                api.get(PODS, pod).is_some(),
                "{member} names a pod that is gone"
            );
        }
        assert!(api.names(PODS).len() <= 4, "{:?}", api.names(PODS));
        // No member leaves the proxy's ring, so no key changes replica.
        assert_eq!(proxy.in_ring(), ["Server1", "Server2", "Server3"], "{now}");
        assert!(began.elapsed() < Duration::from_secs(60), "{now}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.owners(), owners);
    proxy.stop().await;
    operator.stop().await;

    // Same names, no replacement (the old pods' heartbeats went to their own port).
    let now = status();
    let names: Vec<&str> = now["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Server1", "Server2", "Server3"]);
    assert!(
        now["emergencyReplacements"].as_array().unwrap().is_empty(),
        "{now}"
    );
    // Each old pod was deleted only after a status write had named its successor,
    // and each new pod was created only once the one before served.
    let mut named: HashMap<String, String> = HashMap::new();
    let mut surges = 0;
    for (collection, kind, object) in &api.history()[changes_before..] {
        if collection == POOLS {
            for member in object["status"]["members"].as_array().into_iter().flatten() {
                named.insert(
                    member["name"].as_str().unwrap().into(),
                    member["pod"].as_str().unwrap().into(),
                );
            }
        } else if collection != PODS {
            continue;
        } else if *kind == "DELETED" {
            let member = object["metadata"]["labels"]["ringlb.dev/member"]
                .as_str()
                .unwrap();
            let pod = object["metadata"]["name"].as_str().unwrap();
            assert_ne!(
                named[member], pod,
                "{pod} deleted while the status named it"
            );
            surges -= 1;
        } else if *kind == "ADDED" {
            surges += 1;
            assert_eq!(surges, 1, "one new pod at a time");
        }
    }
    let events = api.names(EVENTS);
    assert!(!events.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_rollout_to_an_image_that_cannot_start_stalls_with_the_old_pods_serving() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(2, Value::Null));
    let kubelet = Kubelet::start(&api, |pod| {
        if pod["spec"]["containers"][0]["image"] == "ringlb-replica:broken" {
            Outcome::Crash
        } else {
            Outcome::Run
        }
    });
    let operator = Operator::start(&api, kubelet.prober());
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    until(|| status()["readyReplicas"] == 2).await;
    let mut changed = api.get(POOLS, "demo").unwrap();
    changed["spec"]["image"] = json!("ringlb-replica:broken");
    changed["metadata"]["generation"] = json!(2);
    api.put(POOLS, changed);
    tokio::time::sleep(Duration::from_secs(120)).await;
    operator.stop().await;

    let now = status();
    // One new pod was tried, it failed, and nothing else changed: the old pods serve.
    assert_eq!(pod_creates(&api), 3, "{:?}", api.names(PODS));
    assert_eq!(now["readyReplicas"], 2, "{now}");
    assert_eq!(now["updatedReplicas"], 0, "{now}");
    let degraded = &now["conditions"][1];
    assert_eq!(degraded["reason"], "RolloutStalled", "{degraded}");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("Error, exit code 1"),
        "{degraded}"
    );
}

#[tokio::test(start_paused = true)]
async fn two_pools_of_one_namespace_with_the_default_names_both_serve() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(2, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let ready = |name: &str| {
        api.get(POOLS, name)
            .is_some_and(|p| p["status"]["readyReplicas"] == 2)
    };
    until(|| ready("demo")).await;
    // A second pool wants Server1 and Server2 too: pods server1 and server2 are
    // demo's, so its slots take free emergency names instead of waiting forever.
    let mut web = pool(2, Value::Null);
    web["metadata"]["name"] = json!("web");
    web["metadata"]["uid"] = json!("uid-web");
    api.put(POOLS, web);
    let began = tokio::time::Instant::now();
    while !ready("web") {
        assert!(began.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    operator.stop().await;
    assert_eq!(
        api.names(PODS),
        ["emergency-1", "emergency-2", "server1", "server2"]
    );
    let web = api.get(POOLS, "web").unwrap()["status"].clone();
    assert_eq!(web["conditions"][1]["status"], "False", "{web}");
    let members: Vec<&str> = web["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["emergency_1", "emergency_2"]);
}

#[tokio::test(start_paused = true)]
async fn failing_status_writes_do_not_keep_a_frozen_replica_in_the_proxys_ring() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    let in_ring = || proxy.in_ring();
    until(|| in_ring().len() == 3).await;

    // Every status write fails for 20 s; then Server2 stops answering.
    api.fail("PATCH", "/status", 500, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    kubelet.freeze(&api, "server2");
    let frozen = tokio::time::Instant::now();
    // Out of the proxy's ring within its heartbeats (100 ms, one failure), though no
    // status can be written: its pod is deleted, which the proxy's watch shows.
    while in_ring().contains(&"Server2".to_owned()) {
        assert!(frozen.elapsed() < Duration::from_secs(2), "{:?}", in_ring());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_ring(), ["Server1", "Server3"]);
    // Once status writes succeed again, its replacement joins.
    while in_ring() != ["Server1", "Server3", "emergency_1"] {
        assert!(
            frozen.elapsed() < Duration::from_secs(60),
            "{:?}",
            in_ring()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(frozen.elapsed() > Duration::from_secs(19));
    // And soon after: the operator's retries are at most 10 s apart.
    assert!(
        frozen.elapsed() < Duration::from_secs(32),
        "{:?}",
        frozen.elapsed()
    );
    proxy.stop().await;
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_hashing_spec_is_reported_and_the_pods_are_still_kept_alive() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(2, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    until(|| status()["readyReplicas"] == 2).await;
    // Maglev with a table size that is not prime (the CEL rule refuses it at
    // admission; an API server without CEL, or an older CRD, lets it through).
    let mut invalid = api.get(POOLS, "demo").unwrap();
    invalid["spec"]["hashing"] = json!({"algorithm": "maglev", "slots": 100});
    invalid["metadata"]["generation"] = json!(2);
    api.put(POOLS, invalid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Hashing is the proxies' concern (they keep their last good ring); a replica
    // that fails meanwhile is still replaced.
    kubelet.freeze(&api, "server2");
    tokio::time::sleep(Duration::from_secs(10)).await;
    operator.stop().await;

    assert_eq!(api.names(PODS), ["emergency-1", "server1"]);
    let now = status();
    assert_eq!(now["readyReplicas"], 2, "{now}");
    let degraded = &now["conditions"][1];
    assert_eq!(degraded["status"], "True", "{now}");
    assert_eq!(degraded["reason"], "InvalidSpec", "{now}");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spec.hashing"),
        "{now}"
    );
    assert_eq!(degraded["observedGeneration"], 2, "{now}");
}

#[tokio::test(start_paused = true)]
async fn kubectl_delete_sp_takes_its_pods_and_empties_the_proxys_ring() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    until(|| proxy.in_ring().len() == 3).await;
    assert_eq!(proxy.publisher.view().desired.len(), 3);

    let request = http::Request::delete(format!("{POOLS}/demo"))
        .body(Vec::new())
        .unwrap();
    api.client().request_text(request).await.unwrap();
    // Its pods name it as their owner: garbage collection takes them.
    assert!(api.names(PODS).is_empty(), "{:?}", api.names(PODS));
    let deleted = tokio::time::Instant::now();
    until(|| proxy.in_ring().is_empty()).await;
    assert!(deleted.elapsed() < Duration::from_secs(1));
    // `/rep` says N 0, and the operator creates nothing for a pool that is gone.
    assert!(proxy.publisher.view().desired.is_empty());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(api.names(PODS).is_empty(), "{:?}", api.names(PODS));
    proxy.stop().await;
    operator.stop().await;
}
