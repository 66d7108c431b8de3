//! The supervisor in-process: a fake [`Runtime`] and a fake [`Prober`], driven by
//! tokio's paused clock.
//!
//! Every wait is deterministic. The clock only moves when a test calls
//! [`Pool::tick`], which advances it by exactly one heartbeat interval and then yields
//! until the supervisor has published the round that this tick fired. The fakes never
//! wait, so once the supervisor task is polled it runs a whole round (heartbeats,
//! publish, plan, actions, publish) before the test task runs again: what the test
//! reads after a publish is the state at the end of that round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{PoolHandle, PoolSettings, Supervisor};
use crate::metrics::Metrics;
use crate::pool::HealthSettings;
use crate::pool::{MembershipError, PoolAdmin, PoolError, ReplicaName};
use crate::publish::{MemberView, PoolView, Publisher, Replacement};
use crate::replica_health::Health;
use crate::ring::{Preset, RingConfig};
use crate::runtime::{Instance, Runtime, RuntimeError};
use crate::testing::{FakeProber, Within, until};

const INTERVAL: Duration = Duration::from_secs(1);
const THRESHOLD: u32 = 3;
const MAX_REPLICAS: usize = 8;
/// Upper bound of `yield_now` calls while waiting for the supervisor: it needs one
/// or two; reaching this means the awaited change never happens.
const MAX_YIELDS: usize = 1_000;

fn name(s: &str) -> ReplicaName {
    ReplicaName::parse(s).unwrap()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn as_strs(names: &[ReplicaName]) -> Vec<&str> {
    names.iter().map(ReplicaName::as_str).collect()
}

/// The members of the publisher's current routing table, sorted.
fn ring_of(publisher: &Publisher) -> Vec<String> {
    let members = publisher.table().membership();
    let mut names: Vec<String> = members.iter().map(|m| m.name.to_string()).collect();
    names.sort();
    names
}

fn settings() -> PoolSettings {
    PoolSettings {
        health: HealthSettings {
            interval: INTERVAL,
            timeout: Duration::from_millis(500),
            failure_threshold: THRESHOLD,
            ..HealthSettings::default()
        },
        max_replicas: MAX_REPLICAS,
        // The course ring: 512 slots, cheap to rebuild at every publish.
        ring: RingConfig::preset(Preset::Course),
        balance_factor: None,
        protocol: Default::default(),
    }
}

// ---------------------------------------------------------------------------------
// The fake runtime
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Start(String),
    Stop(String),
    Kill(String),
    StopAll,
}

fn start(s: &str) -> Call {
    Call::Start(s.to_owned())
}

fn stop(s: &str) -> Call {
    Call::Stop(s.to_owned())
}

fn kill(s: &str) -> Call {
    Call::Kill(s.to_owned())
}

struct FakeInstance {
    addr: SocketAddr,
    pid: u32,
    running: bool,
}

#[derive(Default)]
struct RuntimeState {
    instances: BTreeMap<ReplicaName, FakeInstance>,
    /// One stable address per name, handed out on first use (by a test or a start).
    addrs: HashMap<ReplicaName, SocketAddr>,
    /// Every call, in order, with the ring the publisher routed by at that moment.
    calls: Vec<(Call, Vec<String>)>,
    failing_starts: HashSet<ReplicaName>,
    next_pid: u32,
}

impl RuntimeState {
    fn addr(&mut self, name: &ReplicaName) -> SocketAddr {
        let next = SocketAddr::from(([127, 0, 0, 1], 20_000 + self.addrs.len() as u16));
        *self.addrs.entry(name.clone()).or_insert(next)
    }
}

/// Replicas in a map: start, stop and kill edit it, `list` reads it. Records every
/// call with the ring of `publisher` at that moment, so that a test can tell
/// whether a replica left the ring before it was stopped.
struct FakeRuntime {
    can_start: bool,
    state: Mutex<RuntimeState>,
    publisher: OnceLock<Arc<Publisher>>,
}

impl FakeRuntime {
    fn new(can_start: bool) -> Self {
        Self {
            can_start,
            state: Mutex::new(RuntimeState {
                next_pid: 100,
                ..RuntimeState::default()
            }),
            publisher: OnceLock::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RuntimeState> {
        self.state.lock().unwrap()
    }

    fn record(&self, call: Call) {
        let ring = self.publisher.get().map(|p| ring_of(p)).unwrap_or_default();
        self.state().calls.push((call, ring));
    }

    fn addr(&self, s: &str) -> SocketAddr {
        self.state().addr(&name(s))
    }

    fn calls(&self) -> Vec<Call> {
        self.state().calls.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The calls after the first `skip`.
    fn calls_since(&self, skip: usize) -> Vec<Call> {
        self.calls().split_off(skip)
    }

    /// The ring at the moment of the first `call`.
    fn ring_at(&self, call: &Call) -> Vec<String> {
        let state = self.state();
        let (_, ring) = state
            .calls
            .iter()
            .find(|(c, _)| c == call)
            .unwrap_or_else(|| panic!("the runtime never saw {call:?}"));
        ring.clone()
    }

    fn fail_start(&self, s: &str, fail: bool) {
        let mut state = self.state();
        if fail {
            state.failing_starts.insert(name(s));
        } else {
            state.failing_starts.remove(&name(s));
        }
    }

    /// The process is gone, as `try_wait` would say: listed, not running.
    fn exit(&self, s: &str) {
        self.state()
            .instances
            .get_mut(&name(s))
            .expect("exit of an unknown instance")
            .running = false;
    }

    fn instances(&self) -> Vec<String> {
        self.state()
            .instances
            .keys()
            .map(|n| n.to_string())
            .collect()
    }
}

impl Runtime for FakeRuntime {
    async fn start(&self, name: &ReplicaName) -> Result<Instance, RuntimeError> {
        self.record(Call::Start(name.to_string()));
        let mut state = self.state();
        if state.failing_starts.contains(name) {
            return Err(RuntimeError::NoAddress {
                name: name.clone(),
                reason: "the test made this start fail".to_owned(),
            });
        }
        let addr = state.addr(name);
        state.next_pid += 1;
        let pid = state.next_pid;
        state.instances.insert(
            name.clone(),
            FakeInstance {
                addr,
                pid,
                running: true,
            },
        );
        Ok(Instance {
            name: name.clone(),
            addr,
            pid: Some(pid),
            container: None,
            running: true,
        })
    }

    async fn stop(&self, name: &ReplicaName) {
        self.record(Call::Stop(name.to_string()));
        self.state().instances.remove(name);
    }

    async fn kill(&self, name: &ReplicaName) {
        self.record(Call::Kill(name.to_string()));
        self.state().instances.remove(name);
    }

    async fn list(&self) -> Vec<Instance> {
        self.state()
            .instances
            .iter()
            .map(|(name, i)| Instance {
                name: name.clone(),
                addr: i.addr,
                pid: Some(i.pid),
                container: None,
                running: i.running,
            })
            .collect()
    }

    async fn stop_all(&self) {
        self.record(Call::StopAll);
        self.state().instances.clear();
    }

    fn can_start(&self) -> bool {
        self.can_start
    }
}

// ---------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------

/// Waits, on the paused clock that only [`Pool::tick`] moves, for the supervisor.
const STEP: Within = Within::Yields(MAX_YIELDS);

struct Pool {
    runtime: Arc<FakeRuntime>,
    prober: Arc<FakeProber>,
    publisher: Arc<Publisher>,
    handle: PoolHandle,
    task: JoinHandle<()>,
}

impl Pool {
    /// Launches a supervisor over `initial`; the replicas in `down` do not answer
    /// their heartbeats. Returns once the supervisor task has run its first round
    /// (the interval's first tick is immediate), so that every later round is one
    /// [`Pool::tick`].
    async fn launch(runtime: FakeRuntime, initial: &[&str], down: &[&str]) -> Self {
        let runtime = Arc::new(runtime);
        let prober = Arc::new(FakeProber::answering(true));
        let metrics = Arc::new(Metrics::new());
        let publisher = Arc::new(Publisher::new(&settings().ring, metrics.clone()));
        let _ = runtime.publisher.set(publisher.clone());
        // Whether the publisher's ring routed to the address when the heartbeat was sent.
        prober.noting({
            let publisher = publisher.clone();
            move |addr| publisher.table().backends.iter().any(|b| b.addr == addr)
        });
        for s in down {
            prober.set(runtime.addr(s), false);
        }
        let (handle, task) = Supervisor::launch(
            runtime.clone(),
            initial.iter().map(|s| name(s)).collect(),
            HashMap::new(),
            settings(),
            prober.clone(),
            metrics,
            publisher.clone(),
        )
        .await
        .expect("launch");
        let pool = Self {
            runtime,
            prober,
            publisher,
            handle,
            task,
        };
        let launched = pool.publisher.view();
        until("the supervisor's first round publishes", STEP, || {
            !Arc::ptr_eq(&launched, &pool.publisher.view())
        })
        .await;
        pool
    }

    /// Moves the clock by one heartbeat interval and waits for that round's publish.
    async fn tick(&self) {
        let before = self.publisher.view();
        tokio::time::advance(INTERVAL).await;
        until("the round of this tick publishes", STEP, || {
            !Arc::ptr_eq(&before, &self.publisher.view())
        })
        .await;
    }

    async fn ticks(&self, n: usize) {
        for _ in 0..n {
            self.tick().await;
        }
    }

    /// Waits for the supervisor to publish something after `before`.
    async fn published_after(&self, before: &Arc<PoolView>) {
        until("the supervisor publishes", STEP, || {
            !Arc::ptr_eq(before, &self.publisher.view())
        })
        .await;
    }

    fn ring(&self) -> Vec<String> {
        ring_of(&self.publisher)
    }

    fn view(&self) -> Arc<PoolView> {
        self.publisher.view()
    }

    fn desired(&self) -> Vec<String> {
        self.view().desired.iter().map(|n| n.to_string()).collect()
    }

    fn member(&self, s: &str) -> Option<MemberView> {
        self.view()
            .members
            .iter()
            .find(|m| m.name.as_str() == s)
            .cloned()
    }

    fn health(&self, s: &str) -> Health {
        self.member(s)
            .unwrap_or_else(|| panic!("{s} is not a member"))
            .health
    }

    fn answers(&self, s: &str, answers: bool) {
        self.prober.set(self.runtime.addr(s), answers);
    }
}

const THREE: [&str; 3] = ["Server1", "Server2", "Server3"];

// ---------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn launch_starts_the_initial_replicas_and_routes_each_after_its_first_good_heartbeat() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &["Server3"]).await;

    assert_eq!(
        pool.runtime.calls(),
        [start("Server1"), start("Server2"), start("Server3")]
    );
    // `/rep` lists the desired replicas in order, the silent one included.
    assert_eq!(pool.desired(), THREE);
    assert_eq!(pool.ring(), ["Server1", "Server2"]);
    assert_eq!(pool.health("Server1"), Health::Healthy);
    assert_eq!(pool.health("Server3"), Health::Starting);
    assert!(!pool.member("Server3").unwrap().in_ring);
    // No replica was routed to before its first heartbeat.
    for s in THREE {
        let first = pool.prober.probes_of(pool.runtime.addr(s))[0];
        assert!(
            !first.noted,
            "{s} was in the ring before its first heartbeat"
        );
    }

    pool.answers("Server3", true);
    pool.tick().await;
    assert_eq!(pool.ring(), THREE);
    assert_eq!(pool.health("Server3"), Health::Healthy);
    assert_eq!(pool.desired(), THREE);
    assert_eq!(pool.runtime.calls().len(), 3, "nothing else was started");
}

#[tokio::test(start_paused = true)]
async fn launch_that_cannot_start_a_replica_stops_the_ones_it_started_and_fails() {
    let runtime = Arc::new(FakeRuntime::new(true));
    runtime.fail_start("Server2", true);
    let metrics = Arc::new(Metrics::new());
    let publisher = Arc::new(Publisher::new(&settings().ring, metrics.clone()));
    let launched = Supervisor::launch(
        runtime.clone(),
        THREE.iter().map(|s| name(s)).collect(),
        HashMap::new(),
        settings(),
        Arc::new(FakeProber::answering(true)),
        metrics,
        publisher.clone(),
    )
    .await;

    assert!(matches!(launched, Err(PoolError::Runtime(_))));
    assert_eq!(
        runtime.calls(),
        [
            start("Server1"),
            start("Server2"),
            stop("Server1"),
            Call::StopAll
        ]
    );
    assert!(runtime.instances().is_empty());
    assert!(ring_of(&publisher).is_empty());
}

// ---------------------------------------------------------------------------------
// Failures and replacements
// ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_replica_failing_threshold_heartbeats_in_a_row_is_killed_and_replaced_by_emergency_1() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    assert_eq!(pool.ring(), THREE);
    pool.answers("Server2", false);

    // Below the threshold a healthy replica keeps serving (HAProxy's `fall`).
    for failures in 1..THRESHOLD {
        pool.tick().await;
        assert_eq!(pool.ring(), THREE, "after {failures} failed heartbeats");
        let server2 = pool.member("Server2").unwrap();
        assert_eq!(server2.health, Health::Healthy);
        assert_eq!(server2.consecutive_failures, failures);
        assert_eq!(pool.runtime.calls().len(), 3, "nothing replaced yet");
    }

    pool.tick().await;
    assert_eq!(
        pool.runtime.calls_since(3),
        [kill("Server2"), start("emergency_1")]
    );
    // Out of the ring before it was killed, and never back.
    assert_eq!(
        pool.runtime.ring_at(&kill("Server2")),
        ["Server1", "Server3"]
    );
    assert_eq!(
        pool.runtime.ring_at(&start("emergency_1")),
        ["Server1", "Server3"]
    );
    let view = pool.view();
    assert_eq!(
        view.replacements,
        [Replacement {
            failed: name("Server2"),
            replacement: name("emergency_1"),
        }]
    );
    // The replacement takes the failed one's slot in `/rep`.
    assert_eq!(pool.desired(), ["Server1", "emergency_1", "Server3"]);
    assert!(pool.member("Server2").is_none());
    // It joined once its own heartbeat answered, in the same round.
    assert_eq!(pool.ring(), ["Server1", "Server3", "emergency_1"]);
    assert_eq!(pool.health("emergency_1"), Health::Healthy);

    // Converged: later rounds change nothing and never route to Server2 again.
    let checks_of_server2 = pool.prober.probes_of(pool.runtime.addr("Server2")).len();
    pool.ticks(2).await;
    assert_eq!(pool.runtime.calls().len(), 5);
    assert_eq!(pool.ring(), ["Server1", "Server3", "emergency_1"]);
    assert_eq!(
        pool.prober.probes_of(pool.runtime.addr("Server2")).len(),
        checks_of_server2,
        "a replaced replica is not heartbeated any more"
    );
}

#[tokio::test(start_paused = true)]
async fn fewer_failures_than_the_threshold_never_replace_a_replica() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    for _ in 0..3 {
        pool.answers("Server2", false);
        pool.ticks(THRESHOLD as usize - 1).await;
        assert_eq!(pool.ring(), THREE);
        // One good heartbeat resets the count.
        pool.answers("Server2", true);
        pool.tick().await;
        assert_eq!(pool.member("Server2").unwrap().consecutive_failures, 0);
    }
    assert_eq!(pool.runtime.calls().len(), 3, "nothing was replaced");
    assert!(pool.view().replacements.is_empty());
    assert_eq!(pool.desired(), THREE);
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_exited_is_replaced_at_the_next_round_without_waiting_for_the_threshold() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    let checks_of_server2 = pool.prober.probes_of(pool.runtime.addr("Server2")).len();
    pool.runtime.exit("Server2");

    pool.tick().await;
    assert_eq!(
        pool.runtime.calls_since(3),
        [kill("Server2"), start("emergency_1")]
    );
    assert_eq!(
        pool.runtime.ring_at(&kill("Server2")),
        ["Server1", "Server3"]
    );
    assert_eq!(
        pool.prober.probes_of(pool.runtime.addr("Server2")).len(),
        checks_of_server2,
        "a process that is gone is not heartbeated"
    );
    assert_eq!(pool.desired(), ["Server1", "emergency_1", "Server3"]);
    assert_eq!(pool.ring(), ["Server1", "Server3", "emergency_1"]);
    assert_eq!(pool.view().replacements.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_cannot_start_is_started_again_at_the_next_round() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    pool.runtime.fail_start("emergency_1", true);
    pool.runtime.exit("Server2");

    pool.tick().await;
    assert_eq!(
        pool.runtime.calls_since(3),
        [kill("Server2"), start("emergency_1")]
    );
    // Desired, not running: `/rep` shows it, the ring does not.
    assert_eq!(pool.desired(), ["Server1", "emergency_1", "Server3"]);
    assert_eq!(pool.ring(), ["Server1", "Server3"]);

    pool.runtime.fail_start("emergency_1", false);
    pool.tick().await;
    assert_eq!(pool.runtime.calls_since(5), [start("emergency_1")]);
    assert_eq!(pool.ring(), ["Server1", "Server3", "emergency_1"]);
    assert_eq!(pool.view().replacements.len(), 1);
}

// ---------------------------------------------------------------------------------
// Reports from the proxy
// ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn report_unreachable_takes_a_member_out_at_once_and_a_good_heartbeat_brings_it_back() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    let admin: &dyn PoolAdmin = &pool.handle;
    let now = tokio::time::Instant::now();
    let server2 = pool.runtime.addr("Server2");

    // It answers again by the time the supervisor looks: out of the ring before that
    // heartbeat, back right after it, without waiting for a tick.
    let before = pool.view();
    let checks = pool.prober.probes_of(server2).len();
    admin.report_unreachable(&name("Server2"));
    pool.published_after(&before).await;
    let beats = pool.prober.probes_of(server2);
    assert_eq!(beats.len(), checks + 1, "checked at once");
    assert!(!beats[checks].noted, "out of the ring before its heartbeat");
    assert_eq!(pool.ring(), THREE);
    assert_eq!(pool.health("Server2"), Health::Healthy);

    // It really is unreachable: it stays out until a heartbeat answers.
    pool.answers("Server2", false);
    let before = pool.view();
    admin.report_unreachable(&name("Server2"));
    pool.published_after(&before).await;
    assert_eq!(tokio::time::Instant::now(), now, "no tick was needed");
    assert_eq!(pool.ring(), ["Server1", "Server3"]);
    assert_eq!(pool.health("Server2"), Health::Suspect);
    assert_eq!(pool.desired(), THREE);

    pool.answers("Server2", true);
    pool.tick().await;
    assert_eq!(pool.ring(), THREE);
    assert_eq!(pool.health("Server2"), Health::Healthy);
    assert_eq!(pool.runtime.calls().len(), 3, "nothing stopped or started");
}

#[tokio::test(start_paused = true)]
async fn reports_in_a_burst_count_as_one_failure_not_as_many() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    let admin: &dyn PoolAdmin = &pool.handle;
    let calls = pool.runtime.calls().len();
    pool.answers("Server2", false);
    // A burst of reports (requests failing under load), no time passing: each one
    // checks Server2 at once, but only the first failure counts (threshold 3).
    for _ in 0..5 {
        let before = pool.view();
        admin.report_unreachable(&name("Server2"));
        pool.published_after(&before).await;
    }
    assert_eq!(pool.health("Server2"), Health::Suspect);
    assert_eq!(pool.runtime.calls().len(), calls, "not replaced");
    // Two more ticks a whole interval apart: three failures, replaced.
    pool.tick().await;
    pool.tick().await;
    assert_eq!(pool.desired(), ["Server1", "emergency_1", "Server3"]);
}

// ---------------------------------------------------------------------------------
// /add and /rm
// ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn add_starts_the_new_replicas_and_returns_the_new_desired_list() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;

    let desired = pool
        .handle
        .add(2, strings(&["Alpha"]), BTreeMap::new())
        .await
        .unwrap();
    let expected = ["Server1", "Server2", "Server3", "Alpha", "Server4"];
    assert_eq!(as_strs(&desired), expected);
    assert_eq!(
        pool.runtime.calls_since(3),
        [start("Alpha"), start("Server4")]
    );
    assert_eq!(pool.desired(), expected);
    // Their heartbeats ran before `add` answered.
    let mut all = expected.map(String::from).to_vec();
    all.sort();
    assert_eq!(pool.ring(), all);
}

#[tokio::test(start_paused = true)]
async fn a_refused_add_changes_nothing_and_returns_the_error() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    type Expected = fn(&MembershipError) -> bool;
    let refusals: [(u64, &[&str], Expected); 6] = [
        (1, &["Server2"], |e| {
            *e == MembershipError::NameInUse("Server2".into())
        }),
        (1, &["A", "B"], |e| *e == MembershipError::TooManyNamesToAdd),
        (0, &[], |e| *e == MembershipError::BadCount),
        (2, &["A", "A"], |e| {
            *e == MembershipError::DuplicateName("A".into())
        }),
        (1, &["bad name"], |e| {
            matches!(e, MembershipError::InvalidName { .. })
        }),
        (MAX_REPLICAS as u64 - 2, &[], |e| {
            matches!(e, MembershipError::AboveMaximum { .. })
        }),
    ];
    let view = pool.view();
    for (n, hostnames, expected) in refusals {
        let error = pool
            .handle
            .add(n, strings(hostnames), BTreeMap::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, PoolError::Membership(e) if expected(e)),
            "add({n}, {hostnames:?}): {error:?}"
        );
        assert_eq!(pool.runtime.calls().len(), 3, "the runtime saw a call");
        assert!(
            Arc::ptr_eq(&view, &pool.view()),
            "add({n}, {hostnames:?}) published"
        );
    }
    assert_eq!(pool.ring(), THREE);
}

#[tokio::test(start_paused = true)]
async fn weights_from_add_reach_the_ring_pass_to_a_replacement_and_must_fit_the_ring() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    let weights = BTreeMap::from([("Big".to_owned(), 4)]);
    pool.handle
        .add(2, strings(&["Big", "Small"]), weights)
        .await
        .unwrap();
    let weight = |s: &str| pool.member(s).unwrap().weight;
    assert_eq!(
        (weight("Big"), weight("Small"), weight("Server1")),
        (4, 1, 1)
    );
    let ring_weight = |s: &str| {
        let table = pool.publisher.table();
        let index = table.ring.members().iter().position(|m| m == s).unwrap();
        table.ring.weights()[index]
    };
    assert_eq!((ring_weight("Big"), ring_weight("Small")), (4, 1));

    // Refused, and nothing changes: a weight for a name the call does not add, and a
    // total weight the course ring cannot hold (8 + 49 = 57 units × 9 virtual servers
    // = 513 > 512 slots).
    let view = pool.view();
    for (weights, expected) in [
        (BTreeMap::from([("D".to_owned(), 2)]), "'weights' names 'D'"),
        (
            BTreeMap::from([("C".to_owned(), 49)]),
            "do not fit in 512 slots",
        ),
    ] {
        let error = pool
            .handle
            .add(1, strings(&["C"]), weights)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
        assert!(Arc::ptr_eq(&view, &pool.view()), "a refused add published");
        assert_eq!(pool.runtime.calls().len(), 5, "the runtime saw a call");
    }

    // Big fails: the replica that takes its slot takes its weight.
    pool.answers("Big", false);
    pool.ticks(THRESHOLD as usize).await;
    assert_eq!(
        pool.desired(),
        ["Server1", "Server2", "Server3", "emergency_1", "Small"]
    );
    assert_eq!(weight("emergency_1"), 4);
    assert_eq!(ring_weight("emergency_1"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_start_failure_during_add_stops_what_that_add_started_and_returns_the_error() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    pool.runtime.fail_start("Server5", true);
    let view = pool.view();

    let error = pool
        .handle
        .add(3, Vec::new(), BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(error, PoolError::Runtime(_)), "{error:?}");
    assert_eq!(
        pool.runtime.calls_since(3),
        [start("Server4"), start("Server5"), stop("Server4")]
    );
    assert!(Arc::ptr_eq(&view, &pool.view()), "a failed add published");
    assert_eq!(pool.runtime.instances(), THREE);

    // Nothing left over for the next round to act on.
    pool.tick().await;
    assert_eq!(pool.runtime.calls().len(), 6);
    assert_eq!(pool.desired(), THREE);
    assert_eq!(pool.ring(), THREE);
}

#[tokio::test(start_paused = true)]
async fn remove_takes_the_replica_out_of_the_ring_before_stopping_it() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;

    let desired = pool.handle.remove(1, strings(&["Server2"])).await.unwrap();
    assert_eq!(as_strs(&desired), ["Server1", "Server3"]);
    assert_eq!(pool.runtime.calls_since(3), [stop("Server2")]);
    assert_eq!(
        pool.runtime.ring_at(&stop("Server2")),
        ["Server1", "Server3"]
    );
    assert_eq!(pool.desired(), ["Server1", "Server3"]);
    assert_eq!(pool.ring(), ["Server1", "Server3"]);
    assert!(pool.member("Server2").is_none());

    // A name chosen at random leaves the same way.
    let desired = pool.handle.remove(1, Vec::new()).await.unwrap();
    assert_eq!(desired.len(), 1);
    let calls = pool.runtime.calls_since(4);
    let [Call::Stop(removed)] = calls.as_slice() else {
        panic!("{calls:?}");
    };
    assert!(!pool.runtime.ring_at(&stop(removed)).contains(removed));
    assert_eq!(pool.ring(), [desired[0].to_string()]);

    // The stopped ones are not started again.
    pool.tick().await;
    assert_eq!(pool.runtime.calls().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_refused_remove_changes_nothing_and_returns_the_error() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    let view = pool.view();
    let refusals: [(u64, &[&str]); 4] = [
        (1, &["Server7"]),
        (4, &[]),
        (1, &["Server1", "Server2"]),
        (0, &[]),
    ];
    for (n, hostnames) in refusals {
        let error = pool.handle.remove(n, strings(hostnames)).await.unwrap_err();
        assert!(
            matches!(error, PoolError::Membership(_)),
            "remove({n}, {hostnames:?}): {error:?}"
        );
        assert_eq!(pool.runtime.calls().len(), 3, "the runtime saw a call");
        assert!(Arc::ptr_eq(&view, &pool.view()));
    }
}

// ---------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_replica_and_ends_the_task() {
    let pool = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;

    pool.handle.shutdown().await;
    assert_eq!(pool.runtime.calls_since(3), [Call::StopAll]);
    assert!(pool.runtime.instances().is_empty());
    assert!(pool.ring().is_empty());
    until("the supervisor task ends", STEP, || pool.task.is_finished()).await;
    pool.task.await.unwrap();

    let refused = pool.handle.add(1, Vec::new(), BTreeMap::new()).await;
    assert!(matches!(refused, Err(PoolError::ShuttingDown)));
    assert_eq!(pool.runtime.calls().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_every_replica() {
    let Pool {
        runtime,
        handle,
        task,
        ..
    } = Pool::launch(FakeRuntime::new(true), &THREE, &[]).await;
    drop(handle);
    until("the supervisor task ends", STEP, || task.is_finished()).await;
    assert_eq!(runtime.calls_since(3), [Call::StopAll]);
    assert!(runtime.instances().is_empty());
}

// ---------------------------------------------------------------------------------
// A runtime that cannot start replicas (external ones)
// ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn without_can_start_a_failed_member_stays_desired_out_of_the_ring_and_rejoins_when_healthy()
{
    let pool = Pool::launch(FakeRuntime::new(false), &THREE, &[]).await;
    pool.answers("Server2", false);

    pool.ticks(THRESHOLD as usize).await;
    assert_eq!(pool.health("Server2"), Health::Failed);
    assert_eq!(pool.ring(), ["Server1", "Server3"]);
    assert_eq!(pool.desired(), THREE);
    // Still failing: never stopped, killed or replaced.
    pool.ticks(2).await;
    assert_eq!(pool.health("Server2"), Health::Failed);
    assert_eq!(pool.runtime.calls().len(), 3);
    assert!(pool.view().replacements.is_empty());

    pool.answers("Server2", true);
    pool.tick().await;
    assert_eq!(pool.health("Server2"), Health::Healthy);
    assert_eq!(pool.ring(), THREE);
    assert_eq!(pool.desired(), THREE);
    assert_eq!(pool.runtime.calls().len(), 3);
}
