//! Heartbeats on a clock: one task per pool probes the pool's running pods every
//! `spec.heartbeat.intervalMs`, whatever else happens, and asks for a reconcile pass
//! of its pool when a pod's health changed. Passes read the health it keeps (the
//! pool's [`HealthBook`], by pod uid, which also decides what an answer means);
//! they never probe, so a burst of watch events cannot turn into a burst of failures.
//!
//! A pod is judged from its own state when the task first sees it, not from when
//! this process did (a new leader sees every pod at once): a pod the kubelet says is
//! Ready starts healthy (it served), and a new pod's failed heartbeats count only
//! after its first success or once `spec.heartbeat.startupGraceMs` has passed since
//! its container started (a slow image is not replaced before it could listen). A
//! pod still Pending past that grace (its image cannot be pulled, no node fits it)
//! has failed. Pods come from the controller's reflector store, not a LIST per round.
//!
//! The tasks run only while this process leads: a task ends at its first round
//! after leadership was lost, and the next pass of a leader starts afresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use k8s_openapi::jiff::Timestamp;

use super::crd::ServerPool;
use super::leader::Leadership;
use super::pods::{PodState, ReplicaPod, pool_label, replica_pod};
use crate::metrics::Metrics;
use crate::pool::health_book::{Entry, HealthBook, Rules, Since, probe_all};
use crate::pool::probe::Prober;
use crate::pool::{HealthSettings, Probers};
use crate::replica_health::{Health, HealthState};
use crate::replica_name::ReplicaName;

/// How long a pod may stay Pending without a reason that lasts (pulling a large
/// image, waiting for a node the autoscaler adds) before it counts as failed: a
/// Deployment's default `progressDeadlineSeconds`.
pub const PENDING_DEADLINE: Duration = Duration::from_secs(600);

/// How a pool's pods are heartbeaten: a change restarts the pool's task.
#[derive(Clone, Debug, PartialEq)]
pub struct BeatConfig {
    pub settings: HealthSettings,
    pub startup_grace: Duration,
    /// Where a pod whose container declares no port listens.
    pub port: u16,
}

/// What a pass learns of one pod from its heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodBeat {
    pub state: HealthState,
    /// For how long it has been serving without a break, up to now or to when it
    /// stopped (from its first good heartbeat, or the kubelet's Ready for a pod that
    /// was serving before this task saw it); `None` if it never served.
    pub served_for: Option<Duration>,
    /// How long ago its container started (the pod was created, while none ran).
    pub age: Duration,
}

/// What the probes keep of a pod beside its health (the book's [`Entry`]).
#[derive(Clone, Debug)]
struct PodFacts {
    /// Since when it exists: a Pending pod's deadline, and its age while no
    /// container runs.
    created: Since,
    /// Its replica, if its labels name one: whose metric series it feeds.
    name: Option<ReplicaName>,
}

type PodEntry = Entry<PodFacts>;

/// `at` on the wall clock, when the wall clock says `wall_now` and tokio's `now` (a
/// moment in the future counts as now).
fn since(at: Option<Timestamp>, wall_now: Timestamp, now: Instant) -> Since {
    let head_start = at
        .and_then(|at| Duration::try_from(wall_now.duration_since(at)).ok())
        .unwrap_or_default();
    Since::earlier(now, head_start)
}

/// How a pod first seen at `now` stands. `wall_now` is `Some` for the pods of a
/// task's first round (a new leader's, or after a restart): those are judged from
/// their own timestamps, as the process that saw them start would have. A pod that
/// appears later is new, and starts from now: the operator's clock need not agree
/// with the nodes' for a new pod's grace.
fn first_sight(pod: &ReplicaPod, now: Instant, wall_now: Option<Timestamp>) -> PodEntry {
    let age = |at: Option<Timestamp>| match wall_now {
        Some(wall_now) => since(at, wall_now, now),
        None => Since::at(now),
    };
    let running = pod.state == PodState::Running;
    let facts = PodFacts {
        created: age(pod.created_at),
        name: pod.name.clone(),
    };
    let started = running.then(|| age(pod.started_at));
    if wall_now.is_some() && running && (pod.kubelet_ready == Some(true) || pod.was_ready) {
        // Found serving (a new leader's first look): the kubelet's probe answers,
        // so it has served, and its failures count from the first, as they would
        // have for the process that saw it start. (A pod that appears later has
        // served only once this process's own heartbeat answered: a replacement
        // the operator cannot reach is not taken for one that works.) One the
        // kubelet found Ready before and no more has served too: it gets no
        // startup grace (a replica frozen before the takeover).
        return Entry::found_serving(facts, started, age(pod.ready_since.or(pod.started_at)));
    }
    let mut served_for = None;
    if let (Some(_), PodState::Exited, Some(started), Some(finished)) =
        (wall_now, pod.state, pod.started_at, pod.finished_at)
    {
        // It exited before this task saw it: how long it ran is how long it
        // served, as far as a crash loop goes (CrashLoopBackOff counts run time).
        served_for = Duration::try_from(finished.duration_since(started)).ok();
    }
    Entry::starting(facts, started).having_served(served_for)
}

/// What a pass learns of a pod's entry at `now`.
fn beat(entry: &PodEntry, now: Instant) -> PodBeat {
    PodBeat {
        state: entry.state(),
        served_for: entry.served_for(now),
        age: entry.started().unwrap_or(entry.about.created).elapsed(now),
    }
}

/// The pool's health book, by pod uid: the task writes it, passes read it.
type HealthByUid = Arc<Mutex<HealthBook<String, PodFacts>>>;

struct PoolBeats {
    uid: String,
    config: BeatConfig,
    task: AbortHandle,
    /// Rounds completed.
    rounds: watch::Receiver<u64>,
    health: HealthByUid,
}

/// The heartbeat tasks of every pool the operator reconciles.
pub struct PodProbes {
    /// Each pool's heartbeats ask what its `spec.heartbeat.check` says.
    probers: Probers,
    metrics: Arc<Metrics>,
    pods: Store<Pod>,
    /// A pool whose pods' health changed: reconcile it.
    wake: mpsc::UnboundedSender<ObjectRef<ServerPool>>,
    pools: Mutex<HashMap<String, PoolBeats>>,
    /// The controller's pools, once it runs: a task whose pool is gone ends.
    known_pools: Arc<std::sync::OnceLock<Store<ServerPool>>>,
    /// A task ends once this process no longer leads.
    leadership: Leadership,
    /// The wall clock that pods' timestamps are read against (fixed in tests).
    pub clock: fn() -> Timestamp,
}

impl PodProbes {
    pub fn new(
        probers: Probers,
        metrics: Arc<Metrics>,
        pods: Store<Pod>,
        wake: mpsc::UnboundedSender<ObjectRef<ServerPool>>,
        leadership: Leadership,
    ) -> Self {
        Self {
            probers,
            metrics,
            pods,
            wake,
            pools: Mutex::new(HashMap::new()),
            known_pools: Arc::default(),
            leadership,
            clock: Timestamp::now,
        }
    }

    /// From now on, a pool's task ends at the first round after its pool left `pools`.
    pub fn follow_pools(&self, pools: Store<ServerPool>) {
        let _ = self.known_pools.set(pools);
    }

    /// The health of pool `pool`'s pods by pod uid. Starts (or, when its settings
    /// changed or it ended, restarts) the pool's task and waits for its first round,
    /// so that a pass never reports a pod unready only because nobody has probed it
    /// yet. A pod missing from the answer has not been probed: the caller keeps what
    /// it knew of it.
    pub async fn health_of(
        &self,
        pool: &ObjectRef<ServerPool>,
        uid: &str,
        config: BeatConfig,
    ) -> HashMap<String, PodBeat> {
        let key = pool_key(pool);
        let (mut rounds, health) = {
            let mut pools = self.pools.lock().unwrap();
            let current = pools.get(&key).filter(|beats| {
                beats.uid == uid && beats.config == config && !beats.task.is_finished()
            });
            match current {
                Some(beats) => (beats.rounds.clone(), beats.health.clone()),
                None => {
                    let beats = self.start(pool, uid, config);
                    let handles = (beats.rounds.clone(), beats.health.clone());
                    if let Some(old) = pools.insert(key, beats) {
                        old.task.abort();
                    }
                    handles
                }
            }
        };
        // Bounded: a round takes about the heartbeat timeout (at most 10 s is awaited
        // here; a longer `timeoutMs` lets the pass go on with what is known).
        let _ = tokio::time::timeout(Duration::from_secs(10), rounds.wait_for(|n| *n > 0)).await;
        let now = Instant::now();
        let health = health.lock().unwrap();
        health
            .iter()
            .map(|(uid, entry)| (uid.clone(), beat(entry, now)))
            .collect()
    }

    /// Stops heartbeating a pool that is gone.
    pub fn forget(&self, pool: &ObjectRef<ServerPool>) {
        if let Some(beats) = self.pools.lock().unwrap().remove(&pool_key(pool)) {
            beats.task.abort();
        }
    }

    /// Stops every task (the operator is stopping).
    pub fn stop_all(&self) {
        for (_, beats) in self.pools.lock().unwrap().drain() {
            beats.task.abort();
        }
    }

    fn start(&self, pool: &ObjectRef<ServerPool>, uid: &str, config: BeatConfig) -> PoolBeats {
        let (rounds_sender, rounds) = watch::channel(0u64);
        let health: HealthByUid = Arc::new(Mutex::new(HealthBook::new(Rules {
            failure_threshold: config.settings.failure_threshold,
            startup_grace: config.startup_grace,
            // Rounds come only on the task's clock, an interval apart: every
            // failure counts.
            failure_spacing: Duration::ZERO,
        })));
        let round = Round {
            prober: self.probers.of(config.settings.check),
            metrics: self.metrics.clone(),
            pods: self.pods.clone(),
            pool: pool.clone(),
            config: config.clone(),
            health: health.clone(),
            clock: self.clock,
        };
        let wake = self.wake.clone();
        let known_pools = self.known_pools.clone();
        let leadership = self.leadership.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(round.config.settings.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if !leadership.is_leader() {
                    tracing::debug!(pool = %round.pool.name, "not leading: its heartbeats stop");
                    return;
                }
                // (A task starts from a pass over its pool, so the store has held it.)
                if let Some(pools) = known_pools.get()
                    && pools.get(&round.pool).is_none()
                {
                    tracing::debug!(pool = %round.pool.name, "pool gone: its heartbeats stop");
                    round.forget_all();
                    return;
                }
                let first = *rounds_sender.borrow() == 0;
                let changed = round.run(first).await;
                rounds_sender.send_modify(|n| *n += 1);
                if changed && wake.send(round.pool.clone()).is_err() {
                    return;
                }
            }
        })
        .abort_handle();
        PoolBeats {
            uid: uid.to_owned(),
            config,
            task,
            rounds,
            health,
        }
    }
}

/// One heartbeat round of one pool.
struct Round {
    prober: Arc<dyn Prober>,
    metrics: Arc<Metrics>,
    pods: Store<Pod>,
    pool: ObjectRef<ServerPool>,
    config: BeatConfig,
    health: HealthByUid,
    clock: fn() -> Timestamp,
}

impl Round {
    /// Removes the metric series of the pool and of every replica this task knew
    /// (its pool is gone).
    fn forget_all(&self) {
        self.metrics.forget_pool(
            self.pool.namespace.as_deref().unwrap_or_default(),
            &self.pool.name,
        );
        let health = self.health.lock().unwrap();
        for name in health
            .iter()
            .filter_map(|(_, entry)| entry.about.name.as_ref())
        {
            self.metrics.forget_replica(&self.pool.name, name);
        }
    }

    /// Probes every running pod at once and records the results; true when some
    /// pod's health changed.
    /// `first`: the task's first round, whose pods are judged from their timestamps.
    async fn run(&self, first: bool) -> bool {
        let pods: Vec<ReplicaPod> = self
            .pods
            .state()
            .iter()
            .filter(|pod| {
                pod.metadata.namespace == self.pool.namespace
                    && pool_label(pod) == Some(self.pool.name.as_str())
            })
            .map(|pod| replica_pod(pod))
            .collect();
        let targets: Vec<(String, SocketAddr)> = pods
            .iter()
            .filter(|p| p.state == PodState::Running)
            .filter_map(|p| {
                let addr = SocketAddr::new(p.ip?, p.port.unwrap_or(self.config.port));
                Some((p.uid.clone(), addr))
            })
            .collect();
        let answers = probe_all(&*self.prober, targets, self.config.settings.timeout).await;

        let now = Instant::now();
        let wall_now = first.then(self.clock);
        let grace = self.config.startup_grace;
        let mut health = self.health.lock().unwrap();
        let before = health.snapshot();
        health.retain(|uid, entry| {
            let here = pods.iter().any(|p| p.uid == *uid);
            // A replica that left the pool takes its metric series with it (not one
            // whose name another pod carries on: a rollout's new pod, say).
            if !here
                && let Some(name) = &entry.about.name
                && !pods.iter().any(|p| p.name.as_ref() == Some(name))
            {
                self.metrics.forget_replica(&self.pool.name, name);
            }
            here
        });
        for pod in &pods {
            let entry =
                health.entry_or_insert_with(pod.uid.clone(), || first_sight(pod, now, wall_now));
            if pod.state == PodState::Running {
                // Its container runs now: its startup grace begins.
                entry.start(now);
            }
            let pending_for = entry.about.created.elapsed(now);
            match pod.state {
                PodState::Exited => entry.mark_exited(now),
                // Stuck: the kubelet or the scheduler says it will not start by itself
                // (past its grace), or it has been Pending for as long as a Deployment
                // waits for progress. As good as a container that cannot start: it is
                // replaced, under its slot's backoff. (A slow image pull is neither.)
                PodState::Pending
                    if entry.health() == Health::Starting
                        && (pod.start_failure.is_some() && pending_for >= grace
                            || pending_for >= PENDING_DEADLINE) =>
                {
                    if let Some(name) = &pod.name {
                        tracing::warn!(pool = %self.pool.name, replica = %name, pod = %pod.pod, "pod still not running after its startup grace");
                    }
                    entry.mark_exited(now);
                }
                _ => {}
            }
        }
        let names: HashMap<&str, &ReplicaName> = pods
            .iter()
            .filter_map(|p| Some((p.uid.as_str(), p.name.as_ref()?)))
            .collect();
        for beat in health.record(answers, now) {
            let Some(name) = names.get(beat.key.as_str()) else {
                continue;
            };
            if !beat.ok {
                self.metrics.heartbeat_failed(&self.pool.name, name);
            }
            if beat.failed_now() {
                tracing::warn!(pool = %self.pool.name, replica = %name, "replica failed its heartbeats");
            }
        }
        !health.changed_since(&before).is_empty()
    }
}

fn pool_key(pool: &ObjectRef<ServerPool>) -> String {
    super::crd::pool_key(pool.namespace.as_deref().unwrap_or_default(), &pool.name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::operator::pods::{MEMBER_LABEL, POOL_LABEL};
    use crate::pool::HealthCheck;
    use crate::testing::FakeProber;

    fn pod(uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("server1".into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                labels: Some(BTreeMap::from([
                    (POOL_LABEL.to_owned(), "demo".to_owned()),
                    (MEMBER_LABEL.to_owned(), "Server1".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.0.0.1".into()),
                ..PodStatus::default()
            }),
        }
    }

    struct Setup {
        beats: PodProbes,
        /// Every pod answers, or none: the test flips it.
        switch: Arc<FakeProber>,
        wakes: mpsc::UnboundedReceiver<ObjectRef<ServerPool>>,
        pool: ObjectRef<ServerPool>,
        /// The pod store, as the controller's watch writes it.
        writer: reflector::store::Writer<Pod>,
        metrics: Arc<Metrics>,
    }

    fn setup() -> Setup {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Apply(pod("uid-1")));
        let switch = Arc::new(FakeProber::answering(false));
        let (wake, wakes) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new());
        Setup {
            beats: PodProbes::new(
                Probers::same(switch.clone()),
                metrics.clone(),
                store,
                wake,
                Leadership::sole(),
            ),
            switch,
            wakes,
            pool: ObjectRef::new("demo").within("default"),
            writer,
            metrics,
        }
    }

    /// Every second, 3 misses fail, 30 s of grace.
    fn config() -> BeatConfig {
        BeatConfig {
            settings: HealthSettings {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                failure_threshold: 3,
                ..HealthSettings::default()
            },
            startup_grace: Duration::from_secs(30),
            port: 5000,
        }
    }

    async fn health(setup: &Setup) -> Health {
        setup
            .beats
            .health_of(&setup.pool, "pool-uid", config())
            .await["uid-1"]
            .state
            .health
    }

    #[tokio::test(start_paused = true)]
    async fn passes_however_many_read_the_health_of_one_probe_per_interval() {
        let setup = setup();
        setup.switch.set_others(true);
        assert_eq!(health(&setup).await, Health::Healthy);
        setup.switch.set_others(false);
        // A burst of passes (watch events, status writes) within one interval.
        for _ in 0..50 {
            assert_eq!(health(&setup).await, Health::Healthy);
        }
        assert_eq!(setup.switch.probe_count(), 1);
        // Three intervals, three misses: failed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(health(&setup).await, Health::Healthy, "two misses");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(health(&setup).await, Health::Failed);
        assert_eq!(setup.switch.probe_count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_heartbeats_with_the_check_its_spec_names() {
        // Two probers: HTTP heartbeats fail, gRPC health checks succeed.
        let (http, grpc) = (
            Arc::new(FakeProber::answering(false)),
            Arc::new(FakeProber::answering(true)),
        );
        let mut setup = setup();
        setup.beats.probers = Probers::new(http.clone(), grpc.clone());
        let grpc_config = || {
            let mut config = config();
            config.settings.check = HealthCheck::Grpc;
            config
        };
        let health_with = |config: BeatConfig| {
            let beats = &setup.beats;
            let pool = setup.pool.clone();
            async move {
                beats.health_of(&pool, "pool-uid", config).await["uid-1"]
                    .state
                    .health
            }
        };
        assert_eq!(health_with(grpc_config()).await, Health::Healthy);
        // Rounds at 0, 1, 2, 3 and 4 s.
        tokio::time::sleep(Duration::from_millis(4500)).await;
        assert_eq!(health_with(grpc_config()).await, Health::Healthy);
        assert_eq!((http.probe_count(), grpc.probe_count()), (0, 5));
        // Back to HTTP: the pool's task starts again with the HTTP prober.
        setup
            .writer
            .apply_watcher_event(&Event::Apply(pod("uid-1")));
        assert_eq!(health_with(config()).await, Health::Starting);
        assert_eq!((http.probe_count(), grpc.probe_count()), (1, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_pod_that_does_not_answer_yet_is_not_failed_during_its_grace() {
        let setup = setup();
        assert_eq!(health(&setup).await, Health::Starting);
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(health(&setup).await, Health::Starting, "within its grace");
        // It starts listening at 25 s: healthy, never counted as failing.
        setup.switch.set_others(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(health(&setup).await, Health::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_never_answers_fails_once_its_grace_is_over() {
        let setup = setup();
        assert_eq!(health(&setup).await, Health::Starting);
        tokio::time::sleep(Duration::from_millis(29_500)).await;
        assert_eq!(health(&setup).await, Health::Starting);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(health(&setup).await, Health::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_health_asks_for_a_pass_of_the_pool() {
        let mut setup = setup();
        assert_eq!(health(&setup).await, Health::Starting);
        // The first round saw a new pod: a pass.
        assert_eq!(setup.wakes.recv().await.unwrap(), setup.pool);
        setup.switch.set_others(true);
        assert_eq!(setup.wakes.recv().await.unwrap(), setup.pool);
        assert_eq!(health(&setup).await, Health::Healthy);
        // Nothing changes: no more passes asked for.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(setup.wakes.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_leaves_the_pool_takes_its_metric_series_along() {
        let mut setup = setup();
        // Past its grace, its failures count: a series for it.
        assert_eq!(health(&setup).await, Health::Starting);
        tokio::time::sleep(Duration::from_secs(31)).await;
        let series = r#"pool="demo",replica="Server1""#;
        assert!(
            setup.metrics.encode().contains(series),
            "{}",
            setup.metrics.encode()
        );
        // Its pod is gone: at the next round, so is the series.
        setup
            .writer
            .apply_watcher_event(&Event::Delete(pod("uid-1")));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !setup.metrics.encode().contains(series),
            "{}",
            setup.metrics.encode()
        );
    }
}
