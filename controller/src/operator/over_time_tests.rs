//! The operator over minutes, on tokio's paused clock: the controller and its
//! heartbeat tasks run whole against the stateful fake API server, and a fake
//! kubelet gives each new pod an address and either runs it (its heartbeats then
//! answer) or lets its container exit, as an image that cannot start does.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api_usage_tests::{PODS, POOLS, pool};
use super::fixtures::FakeApiServer;
use super::leader::Leadership;
use super::pods::CONTAINER;
use super::reconciler::{self, Context};
use crate::metrics::Metrics;
use crate::pool::health::Prober;

/// What the fake kubelet does with a new pod.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Runs it: Ready, and its heartbeats answer.
    Run,
    /// Its container exits with code 1 (`restartPolicy: Never`: the pod fails).
    Crash,
}

/// Starts pods as they are created, every 100 ms of (virtual) time; answers the
/// heartbeats of the pods it runs.
struct Kubelet {
    up: Arc<Mutex<HashSet<IpAddr>>>,
    task: JoinHandle<()>,
}

impl Kubelet {
    fn start(api: &FakeApiServer, outcome: fn(&Value) -> Outcome) -> Self {
        let up: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
        let task = tokio::spawn({
            let (api, up) = (api.clone(), up.clone());
            async move {
                let mut started = 0u32;
                loop {
                    for name in api.names(PODS) {
                        let Some(mut pod) = api.get(PODS, &name) else {
                            continue;
                        };
                        if !pod["status"]["phase"].is_null() {
                            continue;
                        }
                        started += 1;
                        let ip: IpAddr = format!("10.1.{}.{}", started / 250, started % 250 + 1)
                            .parse()
                            .unwrap();
                        pod["status"] = match outcome(&pod) {
                            Outcome::Run => {
                                up.lock().unwrap().insert(ip);
                                json!({
                                    "phase": "Running",
                                    "podIP": ip.to_string(),
                                    "conditions": [{"type": "Ready", "status": "True"}],
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
struct Answers(Arc<Mutex<HashSet<IpAddr>>>);

impl Prober for Answers {
    fn check(&self, addr: SocketAddr, _: Duration) -> BoxFuture<'static, bool> {
        let ok = self.0.lock().unwrap().contains(&addr.ip());
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
    // Degraded says why, with the container's own reason.
    let degraded = &status["conditions"][1];
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ReplacementBackoff", "{degraded}");
    let message = degraded["message"].as_str().unwrap();
    assert!(message.contains("Error, exit code 1"), "{message}");
    assert!(message.contains("next replacement in"), "{message}");
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
