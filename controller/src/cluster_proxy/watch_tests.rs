//! The in-cluster proxy from watch events: what it publishes, and that two proxies
//! fed the same events route alike.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;

use super::*;
use crate::metrics::Metrics;
use crate::operator::WATCH_TIMEOUT;
use crate::operator::pod_slots;
use crate::operator::pods::MEMBER_LABEL;
use crate::testing::pool;

/// A running pod of pool `demo`; `ready` is its `Ready` condition (`None`: not probed yet).
fn pod(member: &str, pod: &str, ip: &str, ready: Option<bool>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(pod.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{pod}-{ip}")),
            labels: Some(BTreeMap::from([
                (POOL_LABEL.to_owned(), "demo".to_owned()),
                (MEMBER_LABEL.to_owned(), member.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: ready.map(|ready| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]
            }),
            ..PodStatus::default()
        }),
    }
}

/// One proxy's caches and publisher, fed events by hand as the reflectors would.
struct FakeProxy {
    pools: Store<ServerPool>,
    pool_writer: Writer<ServerPool>,
    pods: Store<Pod>,
    pod_writer: Writer<Pod>,
    suspects: SuspectAddrs,
    memory: Memory,
    publisher: Publisher,
}

enum Change {
    Pool(Box<Event<ServerPool>>),
    Pod(Box<Event<Pod>>),
}

impl FakeProxy {
    fn new() -> Self {
        let (pools, pool_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        Self {
            pools,
            pool_writer,
            pods,
            pod_writer,
            suspects: SuspectAddrs::new(),
            memory: Memory::default(),
            publisher: Publisher::new(&RingConfig::default(), Arc::new(Metrics::new())),
        }
    }

    /// Applies one event and publishes, as `run` does.
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Pool(event) => self.pool_writer.apply_watcher_event(event),
            Change::Pod(event) => self.pod_writer.apply_watcher_event(event),
        }
        let pool = self.pools.state().into_iter().next();
        let state = pool_state(
            pool.as_deref(),
            &self.pods.state(),
            &self.suspects,
            self.publisher.table().ring.config(),
            &mut self.memory,
        );
        self.publisher.publish(&state);
    }

    /// Pods that run and that the kubelet says are Ready: (member, pod, IP).
    fn apply_ready_pods(&mut self, pods: &[(&str, &str, &str)]) {
        for (member, name, ip) in pods {
            self.apply(&apply_pod(pod(member, name, ip, Some(true))));
        }
    }

    fn in_ring(&self) -> Vec<String> {
        let members = self.publisher.table().membership();
        let mut names: Vec<String> = members
            .iter()
            .map(|m| format!("{}@{}", m.name, m.addr.ip()))
            .collect();
        names.sort();
        names
    }

    fn rep(&self) -> Vec<String> {
        self.publisher
            .view()
            .desired
            .iter()
            .map(|n| n.to_string())
            .collect()
    }
}

fn apply_pool(pool: ServerPool) -> Change {
    Change::Pool(Box::new(Event::Apply(pool)))
}

fn apply_pod(pod: Pod) -> Change {
    Change::Pod(Box::new(Event::Apply(pod)))
}

#[test]
fn watch_events_give_the_ring_and_rep_they_should() {
    let mut proxy = FakeProxy::new();
    // Initial lists: no pool, no pods yet.
    for change in [
        Change::Pool(Box::new(Event::Init)),
        Change::Pool(Box::new(Event::InitDone)),
        Change::Pod(Box::new(Event::Init)),
        Change::Pod(Box::new(Event::InitDone)),
    ] {
        proxy.apply(&change);
    }
    assert!(proxy.rep().is_empty() && proxy.in_ring().is_empty());

    // The pool is created: three desired, none serving.
    proxy.apply(&apply_pool(pool(3).build()));
    assert_eq!(proxy.rep(), ["Server1", "Server2", "Server3"]);
    assert!(proxy.in_ring().is_empty());

    // Pods start; no operator has written a status: the kubelet's readiness decides.
    proxy.apply(&apply_pod(pod(
        "Server1",
        "server1",
        "10.0.0.1",
        Some(true),
    )));
    proxy.apply(&apply_pod(pod("Server2", "server2", "10.0.0.2", None)));
    proxy.apply(&apply_pod(pod(
        "Server3",
        "server3",
        "10.0.0.3",
        Some(false),
    )));
    assert_eq!(proxy.in_ring(), ["Server1@10.0.0.1"]);

    // The operator's status: Server2 and Server3 ready (Server2 not probed by the
    // kubelet yet: the operator's word stands; Server3 the kubelet says is not: out).
    let reported = pool(3)
        .members(&[
            ("Server1", "server1", true),
            ("Server2", "server2", true),
            ("Server3", "server3", true),
        ])
        .build();
    proxy.apply(&apply_pool(reported.clone()));
    assert_eq!(proxy.in_ring(), ["Server1@10.0.0.1", "Server2@10.0.0.2"]);
    proxy.apply(&apply_pod(pod(
        "Server3",
        "server3",
        "10.0.0.3",
        Some(true),
    )));
    assert_eq!(proxy.in_ring().len(), 3);

    // The operator says Server2 failed: out at once, though its pod still looks ready.
    let server2_failed = pool(3)
        .members(&[
            ("Server1", "server1", true),
            ("Server2", "server2", false),
            ("Server3", "server3", true),
        ])
        .build();
    let ejection = proxy
        .publisher
        .table()
        .backends
        .iter()
        .find(|b| b.name.as_str() == "Server2")
        .unwrap()
        .ejection
        .clone();
    proxy.apply(&apply_pool(server2_failed));
    assert_eq!(proxy.in_ring(), ["Server1@10.0.0.1", "Server3@10.0.0.3"]);
    assert!(
        ejection.is_ejected(),
        "requests waiting on Server2 are cut loose"
    );

    // It is replaced: /rep names emergency_1, which serves once its pod is ready.
    let replaced = pool(3)
        .members(&[
            ("Server1", "server1", true),
            ("emergency_1", "emergency-1", true),
            ("Server3", "server3", true),
        ])
        .replaced(&[("Server2", "emergency_1")])
        .build();
    proxy.apply(&Change::Pod(Box::new(Event::Delete(pod(
        "Server2",
        "server2",
        "10.0.0.2",
        Some(true),
    )))));
    proxy.apply(&apply_pool(replaced));
    assert_eq!(proxy.rep(), ["Server1", "emergency_1", "Server3"]);
    assert_eq!(proxy.in_ring().len(), 2);
    proxy.apply(&apply_pod(pod(
        "emergency_1",
        "emergency-1",
        "10.0.0.4",
        Some(true),
    )));
    assert_eq!(
        proxy.in_ring(),
        [
            "Server1@10.0.0.1",
            "Server3@10.0.0.3",
            "emergency_1@10.0.0.4"
        ]
    );
    let view = proxy.publisher.view();
    assert_eq!(view.replacements.len(), 1);
    assert_eq!(view.replacements[0].failed.as_str(), "Server2");

    // A pod that is terminating leaves at once.
    let mut leaving = pod("Server3", "server3", "10.0.0.3", Some(true));
    leaving.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    proxy.apply(&apply_pod(leaving));
    assert_eq!(proxy.in_ring().len(), 2);

    // The pool is deleted: nothing desired, nothing routed (/readyz turns 503).
    proxy.apply(&Change::Pool(Box::new(Event::Delete(reported))));
    assert!(proxy.rep().is_empty() && proxy.in_ring().is_empty());
}

#[test]
fn two_proxies_fed_the_same_events_route_every_key_alike() {
    let ready = |n: u32| {
        pool(n)
            .members(
                &(1..=n)
                    .map(|i| (format!("Server{i}"), format!("server{i}")))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|(name, pod)| (name.as_str(), pod.as_str(), true))
                    .collect::<Vec<_>>(),
            )
            .build()
    };
    let pods: Vec<Change> = (1..=6)
        .map(|i| {
            apply_pod(pod(
                &format!("Server{i}"),
                &format!("server{i}"),
                &format!("10.0.1.{i}"),
                Some(true),
            ))
        })
        .collect();
    let mut events = vec![
        Change::Pool(Box::new(Event::Init)),
        apply_pool(pool(6).build()),
    ];
    events.push(Change::Pool(Box::new(Event::InitDone)));
    events.extend(pods);
    events.push(apply_pool(ready(6)));
    // Scaled down to 5: Server6's pod is still there until the operator deletes it.
    events.push(apply_pool(ready(5)));

    let (mut a, mut b) = (FakeProxy::new(), FakeProxy::new());
    for event in &events {
        a.apply(event);
    }
    // The second proxy lists the pods in another order and starts later: the stores
    // end up holding the same objects.
    for event in events.iter().rev().filter(|e| matches!(e, Change::Pod(_))) {
        b.apply(event);
    }
    for event in events.iter().filter(|e| matches!(e, Change::Pool(_))) {
        b.apply(event);
    }

    assert_eq!(a.in_ring().len(), 5);
    assert_eq!(a.in_ring(), b.in_ring());
    let (ring_a, ring_b) = (a.publisher.table(), b.publisher.table());
    let owner = |table: &crate::publish::RoutingTable, key: &[u8]| {
        table
            .ring
            .lookup(key)
            .map(|i| table.backends[i].name.clone())
    };
    let mut owners = HashSet::new();
    for i in 0..10_000 {
        let key = format!("user-{i}");
        let owner_a = owner(&ring_a, key.as_bytes());
        assert_eq!(owner_a, owner(&ring_b, key.as_bytes()), "key {key}");
        owners.insert(owner_a.unwrap());
    }
    assert_eq!(owners.len(), 5, "every member owns keys");
}

/// A replica stand-in that answers `GET /heartbeat` once `healthy` is set.
async fn heartbeat_server(healthy: Arc<AtomicBool>) -> SocketAddr {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/heartbeat",
        axum::routing::get(move || {
            let healthy = healthy.clone();
            async move {
                if healthy.load(Ordering::SeqCst) {
                    http::StatusCode::OK
                } else {
                    http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_member_this_proxy_could_not_reach_is_out_of_its_ring_until_it_answers_again() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let healthy = Arc::new(AtomicBool::new(false));
    let server = heartbeat_server(healthy.clone()).await;
    let ip = server.ip().to_string();
    let mut spec_pool = pool(2)
        .members(&[("Server1", "server1", true), ("Server2", "server2", true)])
        .build();
    spec_pool.spec.port = server.port();
    let pods = vec![
        Arc::new(pod("Server1", "server1", &ip, Some(true))),
        Arc::new(pod("Server2", "server2", "10.0.0.2", Some(true))),
    ];
    let state = |suspects: &Suspects| {
        pool_state(
            Some(&spec_pool),
            &pods,
            suspects.addrs(),
            &RingConfig::default(),
            &mut Memory::default(),
        )
    };
    let serving = |state: &PoolState| -> Vec<String> {
        state
            .members
            .iter()
            .filter(|m| m.health.routable())
            .map(|m| m.name.to_string())
            .collect()
    };
    let fast = HealthSettings {
        interval: Duration::from_millis(10),
        timeout: Duration::from_millis(500),
        ..HealthSettings::default()
    };

    let mut suspects = Suspects::new(Probers::real());
    let server1 = ReplicaName::parse("Server1").unwrap();
    assert!(suspects.insert(server1.clone(), server, &fast));
    assert!(
        !suspects.insert(server1.clone(), server, &fast),
        "reported twice, probed once"
    );
    assert_eq!(serving(&state(&suspects)), ["Server2"]);
    assert_eq!(state(&suspects).members[0].health.health, Health::Suspect);

    // It answers its heartbeat again: back in the ring.
    healthy.store(true, Ordering::SeqCst);
    let answered = tokio::time::timeout(Duration::from_secs(10), suspects.next_answer())
        .await
        .expect("the probe sees the member answer");
    assert_eq!(answered, server1);
    assert_eq!(serving(&state(&suspects)), ["Server1", "Server2"]);

    // A suspect whose pod comes back at another address is forgotten.
    let server2 = ReplicaName::parse("Server2").unwrap();
    let old = SocketAddr::new("10.0.0.2".parse().unwrap(), server.port());
    suspects.insert(server2.clone(), old, &fast);
    assert_eq!(serving(&state(&suspects)), ["Server1"]);
    let moved = vec![
        pods[0].clone(),
        Arc::new(pod("Server2", "server2", "10.0.0.9", Some(true))),
    ];
    let after = pool_state(
        Some(&spec_pool),
        &moved,
        suspects.addrs(),
        &RingConfig::default(),
        &mut Memory::default(),
    );
    assert_eq!(serving(&after), ["Server1", "Server2"]);
    suspects.retain_current(&after);
    assert!(suspects.addrs().is_empty());
}

#[test]
fn an_invalid_hashing_spec_keeps_the_last_good_ring() {
    let mut proxy = FakeProxy::new();
    let ready = pool(2)
        .members(&[("Server1", "server1", true), ("Server2", "server2", true)])
        .build();
    proxy.apply_ready_pods(&[
        ("Server1", "server1", "10.0.0.1"),
        ("Server2", "server2", "10.0.0.2"),
    ]);
    let mut course = ready.clone();
    course.spec.hashing = Some(crate::operator::crd::HashingSpec {
        preset: Some(crate::ring::Preset::Course),
        ..Default::default()
    });
    proxy.apply(&apply_pool(course.clone()));
    let good = proxy.publisher.table().ring.config().clone();
    assert_eq!(good.algorithm, crate::ring::Algorithm::Slot);
    assert!(proxy.publisher.table().bound.is_none());

    // A balance factor and a weight in the spec reach the routing table.
    let mut weighted = course.clone();
    weighted.spec.weights = [("Server2".to_owned(), 3)].into();
    if let Some(hashing) = weighted.spec.hashing.as_mut() {
        hashing.balance_factor = Some(1.25);
    }
    proxy.apply(&apply_pool(weighted));
    let table = proxy.publisher.table();
    assert_eq!(table.bound.as_ref().map(|b| b.factor().get()), Some(1.25));
    assert_eq!(table.ring.weights(), [1, 3]);
    proxy.apply(&apply_pool(course));

    // Maglev with a table size that is not prime: the ring stays as it was, and so
    // do its members (the operator says why in Degraded; the schema refuses it too).
    let mut invalid = ready;
    invalid.spec.hashing = Some(crate::operator::crd::HashingSpec {
        algorithm: Some(crate::ring::Algorithm::Maglev),
        slots: Some(100),
        ..Default::default()
    });
    assert!(invalid.spec.ring_config().is_err());
    proxy.apply(&apply_pool(invalid));
    assert_eq!(*proxy.publisher.table().ring.config(), good);
    assert_eq!(proxy.in_ring().len(), 2);
}

#[test]
fn a_rollout_moves_a_member_to_its_new_pod_when_the_status_says_so() {
    let mut proxy = FakeProxy::new();
    let ready = |pods: [&str; 2]| {
        pool(2)
            .members(&[("Server1", pods[0], true), ("Server2", pods[1], true)])
            .build()
    };
    proxy.apply(&apply_pool(ready(["server1", "server2"])));
    proxy.apply_ready_pods(&[
        ("Server1", "server1", "10.0.0.1"),
        ("Server2", "server2", "10.0.0.2"),
    ]);
    let before = proxy.publisher.table();

    // The new template's pod of Server1 starts, and is ready: the status still
    // names the old one, so the old one serves.
    proxy.apply(&apply_pod(pod(
        "Server1",
        "server1-3f2a1",
        "10.0.0.11",
        Some(true),
    )));
    assert_eq!(proxy.in_ring(), ["Server1@10.0.0.1", "Server2@10.0.0.2"]);

    // The operator hands Server1 over: same name, new address, and no key moves.
    proxy.apply(&apply_pool(ready(["server1-3f2a1", "server2"])));
    assert_eq!(proxy.in_ring(), ["Server1@10.0.0.11", "Server2@10.0.0.2"]);
    let after = proxy.publisher.table();
    let owner = |table: &crate::publish::RoutingTable, key: &[u8]| {
        let i = table.ring.lookup(key).unwrap();
        table.backends[i].name.clone()
    };
    for i in 0..10_000 {
        let key = format!("user-{i}");
        assert_eq!(
            owner(&before, key.as_bytes()),
            owner(&after, key.as_bytes())
        );
    }
    assert_eq!(proxy.rep(), ["Server1", "Server2"]);
}

/// Pool `demo` of `n` replicas, each ready by the operator's status, and their pods.
fn serving_pool(proxy: &mut FakeProxy, n: u32) -> ServerPool {
    let names: Vec<(String, String)> = (1..=n)
        .map(|i| (format!("Server{i}"), format!("server{i}")))
        .collect();
    let ready: Vec<(&str, &str, bool)> = names
        .iter()
        .map(|(name, pod)| (name.as_str(), pod.as_str(), true))
        .collect();
    let reported = pool(n).members(&ready).build();
    proxy.apply(&apply_pool(reported.clone()));
    for (i, (name, pod)) in names.iter().enumerate() {
        proxy.apply_ready_pods(&[(name, pod, &format!("10.0.0.{}", i + 1))]);
    }
    reported
}

#[test]
fn the_pools_protocol_is_what_its_replicas_are_spoken_to_in() {
    let protocols = |proxy: &FakeProxy| -> Vec<UpstreamProtocol> {
        proxy
            .publisher
            .table()
            .membership()
            .iter()
            .map(|m| m.protocol)
            .collect()
    };
    let mut proxy = FakeProxy::new();
    let mut pool = serving_pool(&mut proxy, 2);
    assert_eq!(
        protocols(&proxy),
        [UpstreamProtocol::Http1; 2],
        "unset: HTTP/1.1"
    );
    pool.spec.protocol = Some(UpstreamProtocol::H2c);
    proxy.apply(&apply_pool(pool));
    assert_eq!(
        protocols(&proxy),
        [UpstreamProtocol::H2c; 2],
        "spec.protocol: h2c"
    );
}

#[test]
fn a_spec_whose_names_clash_keeps_the_last_realisable_membership() {
    let mut proxy = FakeProxy::new();
    let reported = serving_pool(&mut proxy, 6);
    assert_eq!(proxy.in_ring().len(), 6);
    let rebuilds = proxy.publisher.table();

    // `server1` and the default `Server1` are the same pod name: not realisable.
    let mut clash = reported.clone();
    clash.spec.hostnames = vec!["server1".into()];
    assert!(pod_slots::desired_members(&clash.spec, &HashMap::new()).is_err());
    proxy.apply(&apply_pool(clash.clone()));
    let six: Vec<String> = (1..=6).map(|i| format!("Server{i}")).collect();
    assert_eq!(proxy.rep(), six);
    assert_eq!(proxy.in_ring().len(), 6);
    // The operator, finding no members it can name, writes none in its status:
    // the members keep serving on their pods' readiness.
    let mut unnamed = clash.clone();
    unnamed.status.as_mut().unwrap().members.clear();
    proxy.apply(&apply_pool(unnamed.clone()));
    assert_eq!(proxy.in_ring().len(), 6);
    assert!(
        Arc::ptr_eq(&rebuilds, &proxy.publisher.table()),
        "the ring was never rebuilt"
    );

    // Other edits meanwhile that cannot be realised either keep the same members.
    let mut scaled_clash = unnamed;
    scaled_clash.spec.replicas = 3;
    proxy.apply(&apply_pool(scaled_clash));
    assert_eq!(proxy.rep(), six);

    // A spec that can be realised again is followed.
    let mut fixed = reported;
    fixed.spec.replicas = 5;
    proxy.apply(&apply_pool(fixed));
    assert_eq!(proxy.rep(), six[..5]);
    assert_eq!(proxy.in_ring().len(), 5);
}

#[test]
fn weights_the_ring_cannot_hold_keep_the_last_good_ones() {
    let mut proxy = FakeProxy::new();
    let mut reported = serving_pool(&mut proxy, 2);
    // The course ring: 512 slots, 9 virtual servers per unit of weight.
    reported.spec.hashing = Some(crate::operator::crd::HashingSpec {
        preset: Some(crate::ring::Preset::Course),
        ..Default::default()
    });
    reported.spec.weights = [("Server2".to_owned(), 3)].into();
    proxy.apply(&apply_pool(reported.clone()));
    assert_eq!(proxy.publisher.table().ring.weights(), [1, 3]);

    // 9 × 100 virtual servers do not fit in 512 slots.
    let mut heavy = reported.clone();
    heavy.spec.weights = [("Server2".to_owned(), 100)].into();
    proxy.apply(&apply_pool(heavy.clone()));
    assert_eq!(proxy.publisher.table().ring.weights(), [1, 3]);
    // ... and a scale-up in the same edit is held back with them.
    heavy.spec.replicas = 3;
    proxy.apply(&apply_pool(heavy));
    assert_eq!(proxy.rep(), ["Server1", "Server2"]);
    assert_eq!(proxy.in_ring().len(), 2);
}

#[test]
fn a_proxy_that_starts_on_a_spec_it_cannot_realise_routes_to_the_members_of_the_status() {
    let mut proxy = FakeProxy::new();
    proxy.apply_ready_pods(&[
        ("Server1", "server1", "10.0.0.1"),
        ("Server2", "server2", "10.0.0.2"),
        ("Server3", "server3", "10.0.0.3"),
    ]);
    let mut clash = pool(3)
        .members(&[("Server1", "server1", true), ("Server2", "server2", true)])
        .build();
    clash.spec.hostnames = vec!["server1".into()];
    proxy.apply(&apply_pool(clash));
    assert_eq!(proxy.rep(), ["Server1", "Server2"]);
    assert_eq!(proxy.in_ring(), ["Server1@10.0.0.1", "Server2@10.0.0.2"]);
}

/// Kubernetes mode end to end, for what happens to requests: the proxy's watches
/// on the stateful fake API server, its HTTP front on a free port, and replicas
/// on loopback (pods whose IP is 127.0.0.1, each on its own container port).
mod live {
    use std::sync::atomic::AtomicBool;

    use serde_json::{Value, json};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::cluster_proxy::spec_admin::SpecAdmin;
    use crate::operator::api_usage_tests::{PODS, POOLS};
    use crate::operator::fixtures::FakeApiServer;
    use crate::proxy::ProxyArgs;
    use crate::testing::{Within, until};

    /// How long a wait for the watch or the controller may take.
    const SOON: Within = Within::Time(Duration::from_secs(5));

    /// A replica frozen mid-request: it accepts connections and reads what it is
    /// sent, and never answers. `arrived` fires when a request has reached it.
    pub async fn frozen_replica() -> (SocketAddr, oneshot::Receiver<()>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrived, arrival) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut arrived = Some(arrived);
            let mut held = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let read = stream.read(&mut buf).await.unwrap_or(0);
                if read > 0
                    && let Some(arrived) = arrived.take()
                {
                    let _ = arrived.send(());
                }
                held.push(stream);
            }
        });
        (addr, arrival, task)
    }

    /// A replica that answers every request as `name` does.
    pub async fn replica(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move || async move {
            axum::Json(
                json!({"message": format!("Hello from Server: {name}"), "status": "successful"}),
            )
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, task)
    }

    /// A running pod of pool `demo` on 127.0.0.1, its container on `port`.
    pub fn pod(name: &str, member: &str, port: u16, ready: bool) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": {"ringlb.dev/pool": "demo", "ringlb.dev/member": member}},
            "spec": {"containers": [{"name": "replica", "ports": [{"containerPort": port}]}]},
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        })
    }

    /// Pool `demo` with `spec` and its operator's status: `members` (name, pod,
    /// ready) and `replaced` (slot, replica holding it).
    pub fn pool(spec: Value, members: &[(&str, &str, bool)], replaced: &[(&str, &str)]) -> Value {
        let mut pool = crate::testing::pool(0)
            .stored("uid-demo")
            .members(members)
            .replaced(replaced)
            .json();
        pool["spec"] = spec;
        pool
    }

    pub fn spec(replicas: u32) -> Value {
        json!({"replicas": replicas, "image": "ringlb-replica:dev", "port": 5000})
    }

    /// `ringlb proxy --pool demo --key header:x-user`, whole but for its
    /// listeners' workers: the watches, the publisher, `/add` and `/rm`, and the
    /// forwarding router on a free port.
    pub struct LiveProxy {
        pub publisher: Arc<Publisher>,
        pub synced: Arc<AtomicBool>,
        /// Served as `ringlb proxy` serves (its worker's fast path, `Serving`).
        pub url: String,
        /// Served by the general path alone (`proxy::router`).
        pub general_url: String,
        /// The general path, to call without a connection (paused clock).
        pub router: axum::Router,
        stop: Option<oneshot::Sender<()>>,
        watch: Option<JoinHandle<()>>,
        serving: Option<crate::serving::Serving>,
        front: JoinHandle<()>,
    }

    impl LiveProxy {
        pub async fn start(api: &FakeApiServer) -> Self {
            #[derive(clap::Parser)]
            struct Args {
                #[command(flatten)]
                proxy: ProxyArgs,
            }
            let args = <Args as clap::Parser>::parse_from(["ringlb", "--key", "header:x-user"]);
            let metrics = Arc::new(Metrics::for_pool("demo"));
            let publisher = Arc::new(Publisher::new(&RingConfig::default(), metrics.clone()));
            let (reports, reported) = mpsc::channel(16);
            let admin = Arc::new(SpecAdmin::new(
                Api::namespaced(api.client(), "default"),
                "demo",
                10,
                metrics.clone(),
                publisher.clone(),
                reports,
            ));
            let synced = Arc::new(AtomicBool::new(false));
            let (stop, stopped) = oneshot::channel::<()>();
            let watch = tokio::spawn({
                let (client, publisher, synced) = (api.client(), publisher.clone(), synced.clone());
                async move {
                    run_reporting_sync(
                        client,
                        "default",
                        "demo",
                        publisher,
                        reported,
                        &synced,
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await;
                }
            });
            let proxy_listener = crate::proxy::workers::ProxyListeners::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                1,
            )
            .unwrap();
            let url = format!("http://{}", proxy_listener.local_addr());
            let serving = crate::serving::Serving::start(
                proxy_listener,
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
                publisher.clone(),
                admin.clone(),
                args.proxy.settings(),
                metrics.clone(),
                crate::ops::Probes {
                    alive: crate::ops::answers(),
                    ready: crate::ops::Readiness::Synced(synced.clone()),
                },
            )
            .unwrap();
            let proxy = crate::proxy::Proxy::new(
                publisher.clone(),
                admin,
                args.proxy.settings(),
                metrics,
                0,
            );
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let general_url = format!("http://{}", listener.local_addr().unwrap());
            let router = crate::proxy::router(Arc::new(proxy));
            let front = tokio::spawn({
                let router = router.clone();
                async move {
                    let _ = axum::serve(listener, router).await;
                }
            });
            Self {
                publisher,
                synced,
                url,
                general_url,
                router,
                stop: Some(stop),
                watch: Some(watch),
                serving: Some(serving),
                front,
            }
        }

        pub fn in_ring(&self) -> Vec<String> {
            let members = self.publisher.table().membership();
            members.iter().map(|m| m.name.to_string()).collect()
        }

        /// A key the ring sends to `member` first.
        pub fn key_of(&self, member: &str) -> String {
            let table = self.publisher.table();
            (0..)
                .map(|i| format!("user-{i}"))
                .find(|key| {
                    table
                        .ring
                        .lookup(key.as_bytes())
                        .is_some_and(|i| table.backends[i].name.as_str() == member)
                })
                .unwrap()
        }

        pub async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.watch.take().unwrap().await.unwrap();
            self.serving.take().unwrap().drain().await;
            self.front.abort();
        }
    }

    impl Drop for LiveProxy {
        fn drop(&mut self) {
            self.front.abort();
            if let Some(watch) = &self.watch {
                watch.abort();
            }
        }
    }

    /// Each way a member leaves the ring because it failed, as the proxy's watches
    /// see it, while a GET waits on it (its replica frozen): the GET is cut loose
    /// and answered by the other member at once, well within the 30 s request
    /// timeout it would otherwise wait out.
    #[tokio::test]
    async fn a_failed_members_waiting_get_is_retried_on_another_member_at_once() {
        /// How the member leaves, given the frozen replica's port.
        type Leave = fn(&FakeApiServer, u16);
        let cases: [(&str, Leave); 5] = [
            ("its pod is deleted at once (grace period 0)", |api, _| {
                api.delete_now(PODS, "server1");
            }),
            (
                "its pod is deleted (graceful: a deletionTimestamp)",
                |api, port| {
                    let mut leaving = pod("server1", "Server1", port, true);
                    leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    api.put(PODS, leaving);
                },
            ),
            (
                "the operator's status replaces it before its pod goes",
                |api, _| {
                    api.put(
                        POOLS,
                        pool(
                            spec(2),
                            &[
                                ("emergency_1", "emergency-1", false),
                                ("Server2", "server2", true),
                            ],
                            &[("Server1", "emergency_1")],
                        ),
                    );
                },
            ),
            ("the operator's status says it is not ready", |api, _| {
                api.put(
                    POOLS,
                    pool(
                        spec(2),
                        &[("Server1", "server1", false), ("Server2", "server2", true)],
                        &[],
                    ),
                );
            }),
            ("the kubelet says its pod is not ready", |api, port| {
                api.put(PODS, pod("server1", "Server1", port, false));
            }),
        ];
        let paths = [true, false];
        for ((case, leave), fast_path) in cases
            .into_iter()
            .flat_map(|case| paths.map(|fast_path| (case, fast_path)))
        {
            let (frozen, arrived, frozen_task) = frozen_replica().await;
            let (live, live_task) = replica("Server2").await;
            let api = FakeApiServer::default();
            api.put(
                POOLS,
                pool(
                    spec(2),
                    &[("Server1", "server1", true), ("Server2", "server2", true)],
                    &[],
                ),
            );
            api.put(PODS, pod("server1", "Server1", frozen.port(), true));
            api.put(PODS, pod("server2", "Server2", live.port(), true));
            let proxy = LiveProxy::start(&api).await;
            until("both members are in the ring", SOON, || {
                proxy.in_ring().len() == 2
            })
            .await;

            let key = proxy.key_of("Server1");
            let get = tokio::spawn({
                let front = if fast_path {
                    &proxy.url
                } else {
                    &proxy.general_url
                };
                let url = format!("{front}/home");
                async move {
                    let response = reqwest::Client::new()
                        .get(url)
                        .header("x-user", key)
                        .send()
                        .await
                        .unwrap();
                    (response.status(), response.text().await.unwrap())
                }
            });
            tokio::time::timeout(Duration::from_secs(5), arrived)
                .await
                .expect("the GET reaches the frozen replica")
                .unwrap();

            leave(&api, frozen.port());
            let (status, body) = tokio::time::timeout(Duration::from_secs(2), get)
                .await
                .unwrap_or_else(|_| {
                    panic!("{case} (fast path: {fast_path}): the waiting GET was not cut loose")
                })
                .unwrap();
            assert_eq!(status, http::StatusCode::OK, "{case}: {body}");
            assert!(body.contains("Server: Server2"), "{case}: {body}");
            assert_eq!(proxy.in_ring(), ["Server2"], "{case}");

            proxy.stop().await;
            frozen_task.abort();
            live_task.abort();
        }
    }

    /// The clashing-names edit of issue 18, as a proxy's watches deliver it: the
    /// ring is not rebuilt (let alone emptied) while the spec cannot be realised.
    #[tokio::test]
    async fn a_clashing_names_edit_never_empties_a_watching_proxys_ring() {
        let api = FakeApiServer::default();
        let names: Vec<(String, String)> = (1..=6)
            .map(|i| (format!("Server{i}"), format!("server{i}")))
            .collect();
        let ready: Vec<(&str, &str, bool)> = names
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_str(), true))
            .collect();
        api.put(POOLS, pool(spec(6), &ready, &[]));
        for (i, (name, pod_name)) in names.iter().enumerate() {
            api.put(PODS, pod(pod_name, name, 5001 + i as u16, true));
        }
        let proxy = LiveProxy::start(&api).await;
        until("the six members are in the ring", SOON, || {
            proxy.in_ring().len() == 6
        })
        .await;
        assert!(proxy.synced.load(Ordering::SeqCst));
        let before = proxy.publisher.table();

        let mut clash = spec(6);
        clash["hostnames"] = json!(["server1"]);
        // The operator cannot name the members: it writes none, and says why.
        api.put(POOLS, pool(clash.clone(), &[], &[]));
        // A later change of the same pool, to know the edit was seen.
        api.put(POOLS, pool(clash, &[], &[("Server9", "emergency_9")]));
        until("the proxy has seen the edits", SOON, || {
            proxy.publisher.view().replacements.len() == 1
        })
        .await;
        assert!(Arc::ptr_eq(&before, &proxy.publisher.table()));
        assert_eq!(proxy.publisher.view().desired.len(), 6);

        // Undone: the spec is followed again.
        api.put(POOLS, pool(spec(4), &ready[..4], &[]));
        until("the ring follows the spec again", SOON, || {
            proxy.in_ring().len() == 4
        })
        .await;
        proxy.stop().await;
    }

    /// Calls `router` without a connection: (status, JSON body).
    pub async fn call(router: &axum::Router, uri: &str) -> (http::StatusCode, Value) {
        use tower_service::Service;
        let request = http::Request::get(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().call(request).await.unwrap();
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// `/readyz` of `ringlb proxy` says whether its watches have listed the pool
    /// and its pods, not whether its ring has members: a proxy with an empty ring
    /// stays behind its Service and answers 503 with the JSON error.
    #[tokio::test(start_paused = true)]
    async fn the_proxy_is_ready_once_its_watches_have_listed_and_an_empty_ring_answers_503() {
        let api = FakeApiServer::default();
        // Two replicas wanted, no pod running yet.
        api.put(POOLS, pool(spec(2), &[], &[]));
        // The pod list fails for 10 s.
        api.fail("GET", "/pods", 500, Duration::from_secs(10));
        let proxy = LiveProxy::start(&api).await;
        let ops = crate::ops::router(
            proxy.publisher.clone(),
            Arc::new(Metrics::new()),
            crate::ops::Probes {
                alive: crate::ops::answers(),
                ready: crate::ops::Readiness::Synced(proxy.synced.clone()),
            },
        );
        let listed_pods = || {
            api.calls()
                .iter()
                .any(|c| c.method == "GET" && c.path == PODS && !c.query.contains("watch"))
        };
        until("the proxy has tried to list the pods", SOON, listed_pods).await;
        let (status, body) = call(&ops, "/readyz").await;
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["ready"], false);

        tokio::time::sleep(Duration::from_secs(10)).await;
        until("the pods are listed", SOON, || {
            proxy.synced.load(Ordering::SeqCst)
        })
        .await;
        let (status, body) = call(&ops, "/readyz").await;
        assert_eq!(status, http::StatusCode::OK, "{body}");
        assert_eq!(body, json!({"ready": true, "members": 0}));
        assert!(proxy.in_ring().is_empty());
        let (status, body) = call(&proxy.router, "/home").await;
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"message": "<Error> no replica is available to serve the request", "status": "failure"})
        );
        proxy.stop().await;
    }

    /// A watch over a half-open connection (kube-rs issues 1316, 1796) delivers
    /// nothing, not even its end: the watcher restarts it once nothing came for
    /// the watch's server-side timeout plus 5 s, and the proxy catches up.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_watch_is_restarted_after_its_timeout_and_a_margin() {
        let api = FakeApiServer::default();
        api.put(
            POOLS,
            pool(
                spec(2),
                &[("Server1", "server1", true), ("Server2", "server2", true)],
                &[],
            ),
        );
        api.put(PODS, pod("server1", "Server1", 5001, true));
        api.put(PODS, pod("server2", "Server2", 5002, true));
        let proxy = LiveProxy::start(&api).await;
        until("both members are in the ring", SOON, || {
            proxy.in_ring().len() == 2
        })
        .await;
        let stalled_at = tokio::time::Instant::now();

        api.stall_watches(true);
        // The kubelet takes Server2 out: the stalled pod watch does not say so.
        api.put(PODS, pod("server2", "Server2", 5002, false));
        tokio::time::sleep(Duration::from_secs(1)).await;
        api.stall_watches(false);
        let margin = Duration::from_secs(5);
        tokio::time::sleep(WATCH_TIMEOUT + margin - Duration::from_secs(2)).await;
        assert_eq!(proxy.in_ring().len(), 2, "the stale view holds until then");

        let deadline = stalled_at + WATCH_TIMEOUT + margin + Duration::from_secs(2);
        while proxy.in_ring().len() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch was not restarted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(proxy.in_ring(), ["Server1"]);
        proxy.stop().await;
    }
}
