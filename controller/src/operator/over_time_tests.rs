//! The operator over minutes, on tokio's paused clock: the controller and its
//! heartbeat tasks run whole against the stateful fake API server, and a fake
//! kubelet gives each new pod an address and either runs it (its heartbeats then
//! answer) or lets its container exit, as an image that cannot start does.
//!
//! The kubelet and the operator here are also the in-cluster proxy's company in
//! `cluster_proxy/over_time_tests.rs` (the proxies' rings while the operator works).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api_usage_tests::{EVENTS, PODS, POOLS, pool};
use super::fixtures::FakeApiServer;
use super::leader::Leadership;
use super::pods::CONTAINER;
use super::reconciler::{self, Context};
use crate::metrics::Metrics;
use crate::pool::Probers;
use crate::pool::probe::Prober;
use crate::testing::{self, FakeProber, Within, until};

/// What the fake kubelet does with a new pod.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Runs it: Ready, and its heartbeats answer.
    Run,
    /// Its container exits with code 1 (`restartPolicy: Never`: the pod fails).
    Crash,
    /// Runs it, and its container exits with code 1 this long after it started.
    CrashAfter(Duration),
    /// Leaves it Pending, its container waiting for this reason (`ImagePullBackOff`).
    Waiting(&'static str),
    /// Leaves it Pending: no node fits it.
    Unschedulable,
}

/// A wall clock that follows tokio's paused clock, from 2026-01-01 at the test's
/// first call (per thread: a `#[tokio::test]` runs on one), so that the timestamps
/// the fake kubelet writes and the operator reads agree with the virtual time.
fn wall() -> Timestamp {
    thread_local! {
        static BASE: tokio::time::Instant = tokio::time::Instant::now();
    }
    let elapsed = BASE.with(|base| base.elapsed());
    Timestamp::from_second(1_767_225_600).unwrap()
        + k8s_openapi::jiff::SignedDuration::try_from(elapsed).unwrap()
}

/// Starts pods as they are created, every 100 ms of (virtual) time; answers the
/// heartbeats of the pods it runs, on their container port. As a kubelet whose
/// readiness probe runs every second, it marks a running pod `Ready` 1 s after it
/// started (and, as that probe goes through no partition of the operator's, keeps
/// it Ready while it answers).
pub(crate) struct Kubelet {
    /// The operator's heartbeats: answered for the pods the kubelet runs, unless the
    /// test cuts the operator off (a network fault between it and every pod; the
    /// kubelet's probes still answer).
    pub(crate) prober: Arc<FakeProber>,
    pub(crate) task: JoinHandle<()>,
}

impl Kubelet {
    pub(crate) fn start(api: &FakeApiServer, outcome: fn(&Value) -> Outcome) -> Self {
        Self::start_ready_after(api, outcome, Duration::from_secs(1))
    }

    /// As [`Kubelet::start`], a running pod marked Ready `ready_after` it started.
    pub(crate) fn start_ready_after(
        api: &FakeApiServer,
        outcome: fn(&Value) -> Outcome,
        ready_after: Duration,
    ) -> Self {
        let prober = Arc::new(FakeProber::answering(false));
        let task = tokio::spawn({
            let (api, prober) = (api.clone(), prober.clone());
            async move {
                let mut started = 0u32;
                let mut probed_at: HashMap<String, tokio::time::Instant> = HashMap::new();
                let mut crash_at: HashMap<String, tokio::time::Instant> = HashMap::new();
                let exited = |pod: &mut Value| {
                    pod["status"]["phase"] = json!("Failed");
                    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
                    pod["status"]["containerStatuses"] = json!([{
                        "name": CONTAINER, "image": "", "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"terminated": {"reason": "Error", "exitCode": 1}},
                    }]);
                };
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
                            && crash_at.get(&uid).is_some_and(|at| *at <= now)
                        {
                            crash_at.remove(&uid);
                            let ip: IpAddr =
                                pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
                            prober.forget(|addr| addr.ip() == ip);
                            exited(&mut pod);
                            api.put(PODS, pod);
                            continue;
                        }
                        if pod["status"]["phase"] == "Running"
                            && pod["status"]["conditions"][0]["status"] == "False"
                            && probed_at.get(&uid).is_some_and(|at| *at <= now)
                        {
                            pod["status"]["conditions"][0] = json!({
                                "type": "Ready", "status": "True",
                                "lastTransitionTime": wall().to_string(),
                            });
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
                        let running = |pod: &Value| {
                            let port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
                                .as_u64()
                                .unwrap();
                            prober.set(SocketAddr::new(ip, port as u16), true);
                            json!({
                                "phase": "Running",
                                "podIP": ip.to_string(),
                                "startTime": wall().to_string(),
                                "conditions": [{"type": "Ready", "status": "False"}],
                                "containerStatuses": [{
                                    "name": CONTAINER, "image": "", "imageID": "",
                                    "ready": false, "restartCount": 0,
                                    "state": {"running": {"startedAt": wall().to_string()}},
                                }],
                            })
                        };
                        let waiting = |reason: &str| {
                            json!({
                                "phase": "Pending",
                                "containerStatuses": [{
                                    "name": CONTAINER, "image": "", "imageID": "",
                                    "ready": false, "restartCount": 0,
                                    "state": {"waiting": {
                                        "reason": reason,
                                        "message": format!("the kubelet says {reason}"),
                                    }},
                                }],
                            })
                        };
                        match outcome(&pod) {
                            Outcome::Run => {
                                probed_at.insert(uid, now + ready_after);
                                pod["status"] = running(&pod);
                            }
                            Outcome::CrashAfter(after) => {
                                probed_at.insert(uid.clone(), now + ready_after);
                                crash_at.insert(uid, now + after);
                                pod["status"] = running(&pod);
                            }
                            Outcome::Crash => {
                                pod["status"]["podIP"] = json!(ip.to_string());
                                exited(&mut pod);
                            }
                            Outcome::Waiting(reason) => pod["status"] = waiting(reason),
                            Outcome::Unschedulable => {
                                pod["status"] = json!({
                                    "phase": "Pending",
                                    "conditions": [{
                                        "type": "PodScheduled", "status": "False",
                                        "reason": "Unschedulable",
                                        "message": "0/3 nodes are available: 3 Insufficient cpu.",
                                    }],
                                });
                            }
                        }
                        api.put(PODS, pod);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { prober, task }
    }

    /// Pod `pod` stops answering its heartbeats (its process is frozen).
    pub(crate) fn freeze(&self, api: &FakeApiServer, pod: &str) {
        let ip: IpAddr = api.get(PODS, pod).unwrap()["status"]["podIP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        self.prober.forget(|addr| addr.ip() == ip);
    }

    pub(crate) fn prober(&self) -> Arc<dyn Prober> {
        self.prober.clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The elected operator's controller, until [`Operator::stop`] (or `kill`).
pub(crate) struct Operator {
    pub(crate) stop: oneshot::Sender<()>,
    pub(crate) task: JoinHandle<()>,
    /// Whether it leads, as its Lease says: the test takes leadership away.
    pub(crate) leading: tokio::sync::watch::Sender<bool>,
    /// Its `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
}

impl Operator {
    pub(crate) fn start(api: &FakeApiServer, prober: Arc<dyn Prober>) -> Self {
        Self::start_for(api, prober, Some("default"))
    }

    /// An operator of the pools of `namespace`, or of every namespace's (`None`).
    pub(crate) fn start_for(
        api: &FakeApiServer,
        prober: Arc<dyn Prober>,
        namespace: Option<&'static str>,
    ) -> Self {
        let (leading, leadership) = Leadership::manual();
        leading.send_replace(true);
        let metrics = Arc::new(Metrics::new());
        let mut ctx = Context::new(
            api.client(),
            None,
            Probers::same(prober),
            metrics.clone(),
            leadership,
        );
        ctx.set_clock(wall);
        let ctx = Arc::new(ctx);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            reconciler::run(ctx, namespace, async {
                let _ = stopped.await;
            })
            .await;
        });
        Self {
            stop,
            task,
            leading,
            metrics,
        }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }

    /// `kill -9`: gone at once, its Lease left to expire.
    pub(crate) fn kill(self) {
        self.task.abort();
    }
}

/// How long a wait on the paused clock may take: longer than any of these tests.
pub(crate) const AN_HOUR: Within = Within::Time(Duration::from_secs(3600));

pub(crate) fn pod_creates(api: &FakeApiServer) -> usize {
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
    // No more pods per slot in the first minute than CrashLoopBackOff starts a
    // container (at 0, 10 and 30 s).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(pod_creates(&api), 2 * 3);
    tokio::time::sleep(Duration::from_secs(540)).await;
    // The pool's series say the same: 10 replacements, both slots waiting.
    let metrics = operator.metrics.encode();
    for series in [
        r#"ringlb_pool_replacements_total{namespace="default",pool="demo"} 10"#,
        r#"ringlb_pool_backoff_replicas{namespace="default",pool="demo"} 2"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    operator.stop().await;

    // Per slot: its first pod, then each one 10 s, 20 s, 40 s, … 300 s after the pod
    // before started (at 0, 10, 30, 70, 150, 310 s): 5 replacements in ten minutes,
    // the next one due at 610 s. (Without the backoff: one every few hundred
    // milliseconds, thousands.)
    assert_eq!(pod_creates(&api), 2 * 6);
    let status = api.get(POOLS, "demo").unwrap()["status"].clone();
    // One entry per slot, however often it was replaced: the status stays small.
    let slots = status["emergencyReplacements"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{slots:?}");
    for slot in slots {
        assert_eq!(slot["count"], 5, "{slot}");
        assert_eq!(slot["unreadyStreak"], 5, "{slot}");
    }
    assert!(status.to_string().len() < 2048, "{status}");
    // The status changes with each replacement and each failure, not at every pass.
    let status_writes = api
        .calls()
        .iter()
        .filter(|c| c.method == "PATCH" && c.path.ends_with("/status"))
        .count();
    assert!(status_writes <= 2 * 12 + 2, "{status_writes} status writes");
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
async fn a_replica_that_crashes_soon_after_it_began_to_serve_backs_off_like_a_crash_loop() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(1, Value::Null));
    // Every pod serves from 1 s after it starts, and its container exits at 5 s.
    let kubelet = Kubelet::start(&api, |_| Outcome::CrashAfter(Duration::from_secs(5)));
    let operator = Operator::start(&api, kubelet.prober());
    tokio::time::sleep(Duration::from_secs(60)).await;
    // As CrashLoopBackOff would restart it: at 0, 10 and 30 s (without counting
    // these toward the backoff: at 0, 5, 10, … 55 s, 12 pods).
    assert_eq!(pod_creates(&api), 3, "{:?}", api.names(PODS));
    let slot = api.get(POOLS, "demo").unwrap()["status"]["emergencyReplacements"][0].clone();
    assert_eq!(
        (slot["count"].clone(), slot["unreadyStreak"].clone()),
        (json!(2), json!(2))
    );
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_served_ten_minutes_is_replaced_at_once_whatever_its_slot_went_through() {
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
    // Replaced at 10, 30, 70 and 150 s: emergency_4 runs and serves soon after.
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

    // It serves ten minutes (CrashLoopBackOff's reset), then stops answering at once:
    // replaced within its heartbeats, not 160 s after it started, as its slot's
    // streak of 4 would ask of a crash loop.
    tokio::time::sleep(reconciler::CRASH_LOOP_RESET).await;
    kubelet.prober.forget(|_| true);
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
    until("status()[\"readyReplicas\"] == 2", AN_HOUR, || {
        status()["readyReplicas"] == 2
    })
    .await;
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
    until("ready(\"demo\")", AN_HOUR, || ready("demo")).await;
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
async fn an_invalid_hashing_spec_is_reported_and_the_pods_are_still_kept_alive() {
    let (api, kubelet, operator) = ready_pool(2).await;
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    // Maglev with a table size that is not prime (the CEL rule refuses it at
    // admission; an API server without CEL, or an older CRD, lets it through).
    let mut invalid = api.get(POOLS, "demo").unwrap();
    invalid["spec"]["hashing"] = json!({"algorithm": "maglev", "slots": 100});
    invalid["metadata"]["generation"] = json!(2);
    api.put(POOLS, invalid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Hashing is the proxies' concern (they keep their last good ring); a replica
    // that fails meanwhile (after serving long) is still replaced.
    tokio::time::sleep(reconciler::CRASH_LOOP_RESET).await;
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

/// Pool `demo` of `replicas` run by an elected operator and a fake kubelet that runs
/// every pod, once all its replicas are ready.
async fn ready_pool(replicas: u32) -> (FakeApiServer, Kubelet, Operator) {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(replicas, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    until(
        "api.get(POOLS, \"demo\").unwrap()[\"status\"][\"readyReplicas\"] == replicas",
        AN_HOUR,
        || api.get(POOLS, "demo").unwrap()["status"]["readyReplicas"] == replicas,
    )
    .await;
    (api, kubelet, operator)
}

/// The reasons of the Warning Events recorded so far, one for each time it was sent
/// (the recorder counts a repeat in the first one's `series`).
pub(crate) fn warnings(api: &FakeApiServer) -> Vec<String> {
    api.names(EVENTS)
        .iter()
        .filter_map(|name| api.get(EVENTS, name))
        .filter(|event| event["type"] == "Warning")
        .flat_map(|event| {
            let times = event["series"]["count"].as_u64().unwrap_or(1) as usize;
            let reason = event["reason"].as_str().unwrap_or_default().to_owned();
            std::iter::repeat_n(reason, times)
        })
        .collect()
}

/// Pool `demo` of `replicas` with the default heartbeats: every second, 500 ms
/// timeout, 3 failures, 30 s of startup grace; detection takes at most
/// 3 × 1 s + 0.5 s.
pub(crate) fn pool_with_default_heartbeats(replicas: u32) -> Value {
    testing::pool(replicas).stored("uid-demo").json()
}

const DETECTION: Duration = Duration::from_millis(3 * 1000 + 500);

#[tokio::test(start_paused = true)]
async fn a_new_leader_replaces_a_replica_frozen_at_the_takeover_within_one_detection_time() {
    // Replicas a minute old, and replicas 5 s old (within their startup grace),
    // whose frozen one the kubelet has marked NotReady by the takeover.
    for (age, kubelet_noticed) in [
        (Duration::from_secs(60), false),
        (Duration::from_secs(5), true),
    ] {
        let api = FakeApiServer::default();
        api.put(POOLS, pool_with_default_heartbeats(3));
        let kubelet = Kubelet::start(&api, |_| Outcome::Run);
        let old_leader = Operator::start(&api, kubelet.prober());
        let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
        until("status()[\"readyReplicas\"] == 3", AN_HOUR, || {
            status()["readyReplicas"] == 3
        })
        .await;
        tokio::time::sleep(age).await;

        // The leader is killed and a replica freezes; a standby takes over.
        old_leader.kill();
        kubelet.freeze(&api, "server2");
        if kubelet_noticed {
            // Its readiness probe failed three times, 2 s apart.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let mut pod = api.get(PODS, "server2").unwrap();
            pod["status"]["conditions"][0] = json!({
                "type": "Ready", "status": "False",
                "lastTransitionTime": wall().to_string(),
            });
            api.put(PODS, pod);
        }
        let took_over = tokio::time::Instant::now();
        let new_leader = Operator::start(&api, kubelet.prober());
        // Judged from their pods (Ready, or Ready before and no more), not as new
        // pods in their startup grace (which would keep server2 for up to 30 s more).
        while api.get(PODS, "server2").is_some() {
            assert!(
                took_over.elapsed() <= DETECTION,
                "{age:?}: {:?}",
                api.names(PODS)
            );
            // Its first passes mark no member unready before a heartbeat answered.
            let now = status();
            for member in now["members"].as_array().unwrap() {
                assert!(
                    member["ready"] == true || member["name"] == "Server2",
                    "{now}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until(
            "emergency_1 serves",
            Within::Time(Duration::from_secs(5)),
            || status()["readyReplicas"] == 3,
        )
        .await;
        new_leader.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_lost_its_lease_writes_nothing_and_stops_its_heartbeats() {
    let (api, kubelet, operator) = ready_pool(3).await;
    tokio::time::sleep(Duration::from_secs(60)).await;

    // Its renew deadline passes (another may take the Lease), and a replica freezes.
    operator.leading.send_replace(false);
    kubelet.freeze(&api, "server2");
    let calls = api.calls().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let writes: Vec<String> = api.calls()[calls..]
        .iter()
        .filter(|c| c.method != "GET")
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    let probes = kubelet.prober.probe_count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(kubelet.prober.probe_count(), probes, "heartbeats go on");

    // Leading again: it looks afresh and replaces the frozen replica.
    operator.leading.send_replace(true);
    until(
        "server2 replaced",
        Within::Time(Duration::from_secs(5)),
        || api.get(PODS, "server2").is_none(),
    )
    .await;
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pass_that_loses_leadership_half_way_makes_no_further_write() {
    let (api, kubelet, operator) = ready_pool(3).await;
    tokio::time::sleep(Duration::from_secs(60)).await;

    // A replica freezes; the pass that replaces it deletes its pod first, and that
    // call hangs while the renew deadline passes.
    let delete = api.hold("DELETE", "/pods/server2");
    kubelet.freeze(&api, "server2");
    until("server2's pod is being deleted", AN_HOUR, || {
        api.calls()
            .iter()
            .any(|c| c.method == "DELETE" && c.path.ends_with("/pods/server2"))
    })
    .await;
    operator.leading.send_replace(false);
    let calls = api.calls().len();
    delete.send_replace(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Not the replacement's pod, nor the Event, nor the status.
    let writes: Vec<String> = api.calls()[calls..]
        .iter()
        .filter(|c| c.method != "GET")
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    operator.stop().await;
}

/// What the fake kubelet does with image `never:<what>`.
fn never_starts(pod: &Value) -> Outcome {
    match pod["spec"]["containers"][0]["image"].as_str().unwrap() {
        "never:ErrImagePull" => Outcome::Waiting("ErrImagePull"),
        "never:ImagePullBackOff" => Outcome::Waiting("ImagePullBackOff"),
        "never:CreateContainerConfigError" => Outcome::Waiting("CreateContainerConfigError"),
        "never:Unschedulable" => Outcome::Unschedulable,
        _ => Outcome::Run,
    }
}

#[tokio::test(start_paused = true)]
async fn pods_that_never_start_are_named_at_once_and_replaced_only_after_their_grace() {
    for reason in [
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "Unschedulable",
    ] {
        let api = FakeApiServer::default();
        let mut pool = pool(2, Value::Null);
        pool["spec"]["image"] = json!(format!("never:{reason}"));
        api.put(POOLS, pool);
        let kubelet = Kubelet::start(&api, never_starts);
        let operator = Operator::start(&api, kubelet.prober());
        let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
        until(reason, Within::Time(Duration::from_secs(30)), || {
            status()["conditions"][1]["reason"] == reason
        })
        .await;
        let now = status();
        let message = now["conditions"][1]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "pod server1 of replica Server1 cannot start: {reason}"
            )),
            "{message}"
        );
        assert_eq!(now["conditions"][1]["status"], "True");
        // Once per pod, not at every pass.
        let warned = warnings(&api);
        assert_eq!(
            warned.iter().filter(|r| *r == reason).count(),
            2,
            "{warned:?}"
        );
        // No churn within the startup grace.
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(pod_creates(&api), 2, "{reason}");
        // Past it, a pod still Pending has failed, and its slot's backoff counts
        // from when it started: replaced at 30 s (30 s old, the wait is 10 s), 60 s
        // (30 s old, 20 s), 100 s (40 s); the next at 100 + 80 s.
        tokio::time::sleep(Duration::from_secs(91)).await;
        assert_eq!(pod_creates(&api), 2 * 4, "{reason}: {:?}", api.names(PODS));
        assert_eq!(status()["conditions"][1]["reason"], reason);
        // The Events say why each was replaced.
        let replaced: Vec<String> = api
            .names(EVENTS)
            .iter()
            .filter_map(|name| api.get(EVENTS, name))
            .filter(|event| event["reason"] == "Replaced")
            .map(|event| event["note"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(!replaced.is_empty());
        for note in &replaced {
            assert!(note.contains(": its pod did not start"), "{note}");
        }
        operator.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_create_the_api_server_refuses_is_named_and_retried_on_a_backoff() {
    for code in [403, 422] {
        let api = FakeApiServer::default();
        api.put(POOLS, pool(2, Value::Null));
        // A quota (403) or an admission webhook (422) refuses every pod for a minute.
        api.fail("POST", "/pods", code, Duration::from_secs(60));
        let kubelet = Kubelet::start(&api, |_| Outcome::Run);
        let operator = Operator::start(&api, kubelet.prober());
        let status = || {
            api.get(POOLS, "demo")
                .and_then(|p| p.get("status").cloned())
        };
        until("FailedCreate", Within::Time(Duration::from_secs(5)), || {
            status().is_some_and(|s| s["conditions"][1]["reason"] == "FailedCreate")
        })
        .await;
        let now = status().unwrap();
        let message = now["conditions"][1]["message"].as_str().unwrap();
        assert!(
            message.contains("the API server refused pod server1 of replica Server1"),
            "{message}"
        );
        tokio::time::sleep(Duration::from_secs(50)).await;
        // Retried after 1, 2, 4, 8, then every 10 s: a dozen tries a pod, not hundreds.
        assert!(pod_creates(&api) <= 2 * 12, "{}", pod_creates(&api));
        let warned = warnings(&api);
        assert_eq!(
            warned.iter().filter(|r| *r == "FailedCreate").count(),
            2,
            "{warned:?}"
        );
        // The quota lifted: the pool fills.
        until("ready", Within::Time(Duration::from_secs(30)), || {
            status()
                .is_some_and(|s| s["readyReplicas"] == 2 && s["conditions"][1]["status"] == "False")
        })
        .await;
        operator.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_rollout_to_an_image_that_cannot_be_pulled_stalls_at_once_and_says_why() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(2, Value::Null));
    let kubelet = Kubelet::start(&api, never_starts);
    let operator = Operator::start(&api, kubelet.prober());
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    until("status()[\"readyReplicas\"] == 2", AN_HOUR, || {
        status()["readyReplicas"] == 2
    })
    .await;
    let mut changed = api.get(POOLS, "demo").unwrap();
    changed["spec"]["image"] = json!("never:ImagePullBackOff");
    changed["metadata"]["generation"] = json!(2);
    api.put(POOLS, changed);
    // Before its startup grace is over: the kubelet has said it will not start.
    until(
        "RolloutStalled",
        Within::Time(Duration::from_secs(5)),
        || status()["conditions"][1]["reason"] == "RolloutStalled",
    )
    .await;
    let message = status()["conditions"][1]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("ImagePullBackOff"), "{message}");
    tokio::time::sleep(Duration::from_secs(120)).await;
    operator.stop().await;
    // One new pod was tried; the old ones serve.
    assert_eq!(pod_creates(&api), 3, "{:?}", api.names(PODS));
    assert_eq!(status()["readyReplicas"], 2);
    assert_eq!(status()["conditions"][1]["reason"], "RolloutStalled");
    assert_eq!(
        warnings(&api)
            .iter()
            .filter(|r| *r == "RolloutStalled")
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_stops_being_available_says_so_once() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    let condition = |type_: &str| {
        let now = status();
        now["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    until(
        "condition(\"Available\").as_deref() == Some(\"True\")",
        AN_HOUR,
        || condition("Available").as_deref() == Some("True"),
    )
    .await;
    // A new pool starting up was never "unavailable" news.
    assert!(warnings(&api).is_empty(), "{:?}", warnings(&api));

    // Two of three pods deleted from outside: one ready is below all but one.
    for pod in ["server1", "server2"] {
        let request = http::Request::delete(format!("{PODS}/{pod}"))
            .body(Vec::new())
            .unwrap();
        api.client().request_text(request).await.unwrap();
    }
    until("unavailable", Within::Time(Duration::from_secs(5)), || {
        condition("Available").as_deref() == Some("False")
    })
    .await;
    until(
        "available again",
        Within::Time(Duration::from_secs(10)),
        || condition("Available").as_deref() == Some("True"),
    )
    .await;
    assert_eq!(warnings(&api), ["Unavailable"]);
    operator.stop().await;
}

const BUDGETS: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";

#[tokio::test(start_paused = true)]
async fn each_pool_has_a_disruption_budget_that_comes_back_and_goes_with_it() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    until("a budget", Within::Time(Duration::from_secs(5)), || {
        api.get(BUDGETS, "demo").is_some()
    })
    .await;
    let budget = api.get(BUDGETS, "demo").unwrap();
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"],
        json!({"matchLabels": {"ringlb.dev/pool": "demo"}})
    );
    assert_eq!(budget["metadata"]["ownerReferences"][0]["uid"], "uid-demo");
    // Written once, not at every pass.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let writes = || {
        api.calls()
            .iter()
            .filter(|c| c.method == "PATCH" && c.path.starts_with(BUDGETS))
            .count()
    };
    assert_eq!(writes(), 1);

    // Deleted by hand: written again.
    let request = http::Request::delete(format!("{BUDGETS}/demo"))
        .body(Vec::new())
        .unwrap();
    api.client().request_text(request).await.unwrap();
    until(
        "the budget back",
        Within::Time(Duration::from_secs(5)),
        || api.get(BUDGETS, "demo").is_some(),
    )
    .await;
    assert_eq!(writes(), 2);

    // The pool deleted: its budget goes with it (ownerReferences).
    let request = http::Request::delete(format!("{POOLS}/demo"))
        .body(Vec::new())
        .unwrap();
    api.client().request_text(request).await.unwrap();
    assert!(api.get(BUDGETS, "demo").is_none());
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_spec_reverted_under_the_operator_is_followed_without_replacements() {
    // GitOps: /add grows the pool to 5 (it edits the spec), then Argo CD or Flux puts
    // back the 3 of the repository.
    let (api, _kubelet, operator) = ready_pool(3).await;
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    let set_replicas = |n: u32, generation: u32| {
        let mut pool = api.get(POOLS, "demo").unwrap();
        pool["spec"]["replicas"] = json!(n);
        pool["metadata"]["generation"] = json!(generation);
        api.put(POOLS, pool);
    };
    set_replicas(5, 2);
    until("5 ready", Within::Time(Duration::from_secs(10)), || {
        status()["readyReplicas"] == 5
    })
    .await;
    set_replicas(3, 3);
    until("back to 3", Within::Time(Duration::from_secs(10)), || {
        api.names(PODS) == ["server1", "server2", "server3"] && status()["readyReplicas"] == 3
    })
    .await;
    // The names the revert took away went; nothing was replaced, nothing is wrong.
    let now = status();
    assert!(
        now["emergencyReplacements"].as_array().unwrap().is_empty(),
        "{now}"
    );
    assert_eq!(now["conditions"][1]["status"], "False", "{now}");
    assert_eq!(now["observedGeneration"], 3, "{now}");
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_disruption_budget_of_the_pools_name_that_is_not_its_own_is_left_alone() {
    let api = FakeApiServer::default();
    // Someone's own budget, named as the pool.
    let theirs = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "demo", "namespace": "default", "uid": "uid-theirs"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "theirs"}}},
    });
    api.put(BUDGETS, theirs.clone());
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    until(
        "api.get(POOLS, \"demo\").unwrap()[\"status\"][\"readyReplicas\"] == 3",
        AN_HOUR,
        || api.get(POOLS, "demo").unwrap()["status"]["readyReplicas"] == 3,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let now = api.get(POOLS, "demo").unwrap()["status"].clone();
    assert_eq!(
        now["conditions"][1]["reason"], "DisruptionBudgetConflict",
        "{now}"
    );
    // Never written, never taken over.
    assert!(
        !api.calls()
            .iter()
            .any(|c| c.method != "GET" && c.path.starts_with(BUDGETS)),
        "{:?}",
        api.calls()
    );
    assert_eq!(api.get(BUDGETS, "demo").unwrap()["spec"], theirs["spec"]);
    assert_eq!(
        warnings(&api)
            .iter()
            .filter(|r| *r == "DisruptionBudgetConflict")
            .count(),
        1
    );
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_operator_exports_each_pools_replicas_and_passes_until_the_pool_goes() {
    let (api, _kubelet, operator) = ready_pool(3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = operator.metrics.encode();
    for series in [
        r#"ringlb_pool_desired_replicas{namespace="default",pool="demo"} 3"#,
        r#"ringlb_pool_ready_replicas{namespace="default",pool="demo"} 3"#,
        r#"ringlb_pool_updated_replicas{namespace="default",pool="demo"} 3"#,
        r#"ringlb_reconciles_total{namespace="default",pool="demo"}"#,
        r#"ringlb_reconcile_duration_seconds_count{namespace="default",pool="demo"}"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let request = http::Request::delete(format!("{POOLS}/demo"))
        .body(Vec::new())
        .unwrap();
    api.client().request_text(request).await.unwrap();
    until(
        "its series gone",
        Within::Time(Duration::from_secs(5)),
        || !operator.metrics.encode().contains(r#"pool="demo""#),
    )
    .await;
    operator.stop().await;
}

const SECRETS: &str = "/api/v1/namespaces/default/secrets";

/// The token of Secret `name`, as the proxy's `secretKeyRef` reads it.
fn token(api: &FakeApiServer, name: &str) -> Option<String> {
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(api.get(SECRETS, name)?).unwrap();
    let token = secret.data?.remove("token")?;
    Some(String::from_utf8(token.0).unwrap())
}

#[tokio::test(start_paused = true)]
async fn each_pool_gets_a_random_admin_token_secret_and_one_that_exists_is_never_touched() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(1, Value::Null));
    // Pool `own` comes with the token its administrators chose.
    let mut own = pool(1, Value::Null);
    own["metadata"]["name"] = json!("own");
    own["metadata"]["uid"] = json!("uid-own");
    api.put(POOLS, own);
    api.put(
        SECRETS,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "own-admin", "namespace": "default"},
               "stringData": {"token": "chosen"}, "data": {"token": "Y2hvc2Vu"}}),
    );
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    until(
        "demo's Secret",
        Within::Time(Duration::from_secs(5)),
        || api.get(SECRETS, "demo-admin").is_some(),
    )
    .await;
    let first = token(&api, "demo-admin").unwrap();
    assert_eq!(first.len(), 64);
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    let secret = api.get(SECRETS, "demo-admin").unwrap();
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-demo");
    let creates = || {
        api.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.starts_with(SECRETS))
            .count()
    };
    // Pool `own`: its Secret was tried (409) and left as it was.
    until(
        "both pools checked",
        Within::Time(Duration::from_secs(5)),
        || creates() == 2,
    )
    .await;
    assert_eq!(token(&api, "own-admin").as_deref(), Some("chosen"));
    // Once per pool, not at every pass: the next check is due after the recheck.
    tokio::time::sleep(reconciler::ADMIN_SECRET_RECHECK - Duration::from_secs(10)).await;
    assert_eq!(creates(), 2);

    // Deleted by hand: made again, with a new token, at the next check.
    let request = http::Request::delete(format!("{SECRETS}/demo-admin"))
        .body(Vec::new())
        .unwrap();
    api.client().request_text(request).await.unwrap();
    until(
        "demo's Secret back",
        Within::Time(reconciler::ADMIN_SECRET_RECHECK),
        || api.get(SECRETS, "demo-admin").is_some(),
    )
    .await;
    let second = token(&api, "demo-admin").unwrap();
    assert_ne!(first, second);
    assert_eq!(token(&api, "own-admin").as_deref(), Some("chosen"));

    // The pool deleted: its Secret goes with it; the one it did not make stays.
    let request = http::Request::delete(format!("{POOLS}/demo"))
        .body(Vec::new())
        .unwrap();
    api.client().request_text(request).await.unwrap();
    assert!(api.get(SECRETS, "demo-admin").is_none());
    assert!(api.get(SECRETS, "own-admin").is_some());
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_operator_of_every_namespace_keeps_each_pools_objects_in_the_pools_namespace() {
    const TEAM_PODS: &str = "/api/v1/namespaces/team-b/pods";
    const TEAM_POOLS: &str = "/apis/ringlb.dev/v1alpha1/namespaces/team-b/serverpools";
    let api = FakeApiServer::default();
    api.put(POOLS, pool(2, Value::Null));
    // A pool of the same name in another namespace.
    let mut other = pool(3, Value::Null);
    other["metadata"]["namespace"] = json!("team-b");
    other["metadata"]["uid"] = json!("uid-team-b");
    api.put(TEAM_POOLS, other);
    let prober = Arc::new(FakeProber::answering(false));

    // An operator of namespace default: team-b's pool is not its.
    let operator = Operator::start(&api, prober.clone());
    until(
        "default's pods",
        Within::Time(Duration::from_secs(5)),
        || api.names(PODS).len() == 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(api.names(TEAM_PODS).is_empty());
    operator.stop().await;

    // One of every namespace: each pool's pods, budget, Secret and status in its own.
    let operator = Operator::start_for(&api, prober, None);
    until(
        "team-b's pods",
        Within::Time(Duration::from_secs(5)),
        || api.names(TEAM_PODS).len() == 3,
    )
    .await;
    for pod in api.names(TEAM_PODS) {
        let pod = api.get(TEAM_PODS, &pod).unwrap();
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-team-b");
    }
    assert_eq!(api.names(PODS).len(), 2, "default's pool keeps its 2");
    until(
        "team-b's budget, Secret and status",
        Within::Time(Duration::from_secs(5)),
        || {
            api.get(
                "/apis/policy/v1/namespaces/team-b/poddisruptionbudgets",
                "demo",
            )
            .is_some()
                && api
                    .get("/api/v1/namespaces/team-b/secrets", "demo-admin")
                    .is_some()
                && api.get(TEAM_POOLS, "demo").unwrap()["status"]["replicas"] == 3
        },
    )
    .await;
    assert_eq!(api.get(POOLS, "demo").unwrap()["status"]["replicas"], 2);
    operator.stop().await;
}
