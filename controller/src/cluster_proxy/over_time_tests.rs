//! The in-cluster proxy while the operator works, over minutes on tokio's paused
//! clock: the operator, its fake kubelet (`operator/over_time_tests.rs`) and one or
//! more proxies run whole against the stateful fake API server, and the proxies'
//! rings are checked all along: through rollouts, replacements, failing status
//! writes, a spec that cannot be carried out, and the pool's deletion.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::operator::api_usage_tests::{EVENTS, PODS, POOLS, pool};
use crate::operator::fixtures::FakeApiServer;
use crate::operator::over_time_tests::{
    AN_HOUR, Kubelet, Operator, Outcome, pod_creates, pool_with_default_heartbeats, warnings,
};
use crate::operator::pods::{PodTemplate, TEMPLATE_LABEL};
use crate::operator::reconciler;
use crate::publish::Publisher;
use crate::ring::RingConfig;
use crate::testing::{Within, until};

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
                super::watch::run(client, "default", "demo", publisher, reported, async {
                    let _ = stopped.await;
                })
                .await;
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

#[tokio::test(start_paused = true)]
async fn a_new_image_and_port_roll_one_pod_at_a_time_with_every_member_serving() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    until(
        "status()[\"readyReplicas\"] == 3 && proxy.in_ring().len() == 3",
        AN_HOUR,
        || status()["readyReplicas"] == 3 && proxy.in_ring().len() == 3,
    )
    .await;
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
        ..PodTemplate::default()
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
async fn failing_status_writes_do_not_keep_a_frozen_replica_in_the_proxys_ring() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    let in_ring = || proxy.in_ring();
    until("in_ring().len() == 3", AN_HOUR, || in_ring().len() == 3).await;

    // (Serving long: its failure is no crash loop, and nothing holds it back.)
    tokio::time::sleep(reconciler::CRASH_LOOP_RESET).await;
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
async fn kubectl_delete_sp_takes_its_pods_and_empties_the_proxys_ring() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    until("proxy.in_ring().len() == 3", AN_HOUR, || {
        proxy.in_ring().len() == 3
    })
    .await;
    assert_eq!(proxy.publisher.view().desired.len(), 3);

    let request = http::Request::delete(format!("{POOLS}/demo"))
        .body(Vec::new())
        .unwrap();
    api.client().request_text(request).await.unwrap();
    // Its pods name it as their owner: garbage collection takes them.
    assert!(api.names(PODS).is_empty(), "{:?}", api.names(PODS));
    let deleted = tokio::time::Instant::now();
    until("proxy.in_ring().is_empty()", AN_HOUR, || {
        proxy.in_ring().is_empty()
    })
    .await;
    assert!(deleted.elapsed() < Duration::from_secs(1));
    // `/rep` says N 0, and the operator creates nothing for a pool that is gone.
    assert!(proxy.publisher.view().desired.is_empty());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(api.names(PODS).is_empty(), "{:?}", api.names(PODS));
    proxy.stop().await;
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_operator_cut_off_from_every_pod_replaces_at_most_one_and_the_rings_stay_full() {
    // Replicas that served long, and replicas a few seconds old (whose replacement a
    // crash-loop backoff would hold back).
    for served in [reconciler::CRASH_LOOP_RESET, Duration::from_secs(5)] {
        let api = FakeApiServer::default();
        api.put(POOLS, pool_with_default_heartbeats(6));
        // Ready before the operator's next heartbeat (every second) first sees it: a
        // replacement the operator cannot reach must not pass for one that serves.
        let kubelet =
            Kubelet::start_ready_after(&api, |_| Outcome::Run, Duration::from_millis(200));
        let operator = Operator::start(&api, kubelet.prober());
        let proxies = [Proxy::start(&api), Proxy::start(&api)];
        let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
        until("six ready, in both proxies' rings", AN_HOUR, || {
            status()["readyReplicas"] == 6 && proxies.iter().all(|p| p.in_ring().len() == 6)
        })
        .await;
        tokio::time::sleep(served).await;
        let creates = pod_creates(&api);

        // 20 s in which the operator reaches no pod, new ones included; the kubelet
        // (and the proxies) do.
        kubelet.prober.cut(true);
        let cut = tokio::time::Instant::now();
        while cut.elapsed() < Duration::from_secs(20) {
            for proxy in &proxies {
                // One replica replaced (its new pod does not answer the operator, so
                // it is not routed yet); the five others keep serving.
                assert!(
                    proxy.in_ring().len() >= 5,
                    "{served:?}: {:?}",
                    proxy.in_ring()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            pod_creates(&api) - creates <= 1,
            "{served:?}: {:?}",
            api.names(PODS)
        );
        let now = status();
        let degraded = &now["conditions"][1];
        assert_eq!(degraded["status"], "True", "{now}");
        assert_eq!(degraded["reason"], "ReplicasUnreachable", "{now}");
        let message = degraded["message"].as_str().unwrap();
        for held in ["Server2", "Server3", "Server4", "Server5", "Server6"] {
            let pod = held.to_lowercase();
            assert!(
                message.contains(&format!("{held} (pod {pod})")),
                "{message}"
            );
        }
        assert!(now["readyReplicas"].as_u64() >= Some(5), "{now}");
        // All but one serve: still available, and still moving (its blind spot is
        // the operator's, not the pool's).
        let condition = |type_: &str| {
            now["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == type_)
                .map(|c| c["status"].clone())
        };
        assert_eq!(condition("Available"), Some(json!("True")), "{now}");
        assert_eq!(condition("Progressing"), Some(json!("True")), "{now}");
        assert_eq!(
            warnings(&api)
                .iter()
                .filter(|r| *r == "ReplicasUnreachable")
                .count(),
            1,
            "one Warning Event, not one per pass"
        );

        // Healed: the held replicas answer again and the replacement joins.
        kubelet.prober.cut(false);
        until("healed", Within::Time(Duration::from_secs(15)), || {
            status()["conditions"][1]["status"] == "False"
                && proxies.iter().all(|p| p.in_ring().len() == 6)
        })
        .await;
        assert!(pod_creates(&api) - creates <= 1);
        for proxy in proxies {
            proxy.stop().await;
        }
        operator.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_spec_whose_names_clash_keeps_the_members_and_says_why() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(6, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    until(
        "status()[\"readyReplicas\"] == 6 && proxy.in_ring().len() == 6",
        AN_HOUR,
        || status()["readyReplicas"] == 6 && proxy.in_ring().len() == 6,
    )
    .await;
    let members = status()["members"].clone();
    let pods = api.names(PODS);

    // `server1` and the default `Server1` would both be pod server1 (the CEL rule
    // refuses it at admission; an API server without CEL lets it through).
    let mut clash = api.get(POOLS, "demo").unwrap();
    clash["spec"]["hostnames"] = json!(["server1"]);
    clash["metadata"]["generation"] = json!(2);
    api.put(POOLS, clash);
    until("Degraded", Within::Time(Duration::from_secs(5)), || {
        status()["conditions"][1]["status"] == "True"
    })
    .await;
    for _ in 0..300 {
        let now = status();
        assert_eq!(now["members"], members, "{now}");
        assert_eq!(now["readyReplicas"], 6, "{now}");
        assert_eq!(proxy.in_ring().len(), 6);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let now = status();
    let degraded = &now["conditions"][1];
    assert_eq!(degraded["reason"], "InvalidSpec", "{now}");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("would both be pod 'server1'"),
        "{now}"
    );
    assert_eq!(api.names(PODS), pods);
    assert_eq!(warnings(&api), ["InvalidSpec"]);
    proxy.stop().await;
    operator.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_template_change_rolls_the_pods_one_at_a_time() {
    let api = FakeApiServer::default();
    api.put(POOLS, pool(3, Value::Null));
    let kubelet = Kubelet::start(&api, |_| Outcome::Run);
    let operator = Operator::start(&api, kubelet.prober());
    let proxy = Proxy::start(&api);
    let status = || api.get(POOLS, "demo").unwrap()["status"].clone();
    until(
        "status()[\"readyReplicas\"] == 3 && proxy.in_ring().len() == 3",
        AN_HOUR,
        || status()["readyReplicas"] == 3 && proxy.in_ring().len() == 3,
    )
    .await;

    let mut changed = api.get(POOLS, "demo").unwrap();
    changed["spec"]["template"] = json!({"resources": {"limits": {"memory": "256Mi"}}});
    changed["metadata"]["generation"] = json!(2);
    api.put(POOLS, changed);
    let rolled =
        || {
            let pods = api.names(PODS);
            pods.len() == 3 && pods.iter().all(|p| {
                api.get(PODS, p).unwrap()["spec"]["containers"][0]["resources"]["limits"]["memory"]
                    == "256Mi"
            }) && status()["updatedReplicas"] == 3
        };
    let began = tokio::time::Instant::now();
    while !rolled() {
        let now = status();
        assert_eq!(now["readyReplicas"], 3, "{now}");
        assert!(api.names(PODS).len() <= 4, "{:?}", api.names(PODS));
        assert_eq!(proxy.in_ring(), ["Server1", "Server2", "Server3"]);
        assert!(began.elapsed() < Duration::from_secs(60), "{now}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.stop().await;
    operator.stop().await;
}
