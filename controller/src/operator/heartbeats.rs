//! Heartbeats on a clock: one task per pool probes the pool's running pods every
//! `spec.heartbeat.intervalMs`, whatever else happens, and asks for a reconcile pass
//! of its pool when a pod's health changed. Passes read the health it keeps; they
//! never probe, so a burst of watch events cannot turn into a burst of failures.
//!
//! A new pod's failed heartbeats count only after its first success or once
//! `spec.heartbeat.startupGraceMs` has passed since this process first saw it, so a
//! slow image is not replaced before it could start listening. Pods come from the
//! controller's reflector store, not a LIST per round.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::crd::ServerPool;
use super::pods::{POOL_LABEL, PodState, ReplicaPod, replica_pod};
use crate::health_state::{Health, HealthState};
use crate::metrics::Metrics;
use crate::pool::health::{HealthSettings, Prober};

/// How a pool's pods are heartbeaten: a change restarts the pool's task.
#[derive(Clone, Debug, PartialEq)]
pub struct BeatConfig {
    pub settings: HealthSettings,
    pub startup_grace: Duration,
    /// Where a pod whose container declares no port listens.
    pub port: u16,
}

/// One pod's health and when this process first saw it.
#[derive(Clone, Copy, Debug)]
struct PodHealth {
    state: HealthState,
    since: Instant,
}

type HealthByUid = Arc<Mutex<HashMap<String, PodHealth>>>;

struct PoolBeats {
    uid: String,
    config: BeatConfig,
    task: AbortHandle,
    /// Rounds completed.
    rounds: watch::Receiver<u64>,
    health: HealthByUid,
}

/// The heartbeat tasks of every pool the operator reconciles.
pub struct Heartbeats {
    prober: Arc<dyn Prober>,
    metrics: Arc<Metrics>,
    pods: Store<Pod>,
    /// A pool whose pods' health changed: reconcile it.
    wake: mpsc::UnboundedSender<ObjectRef<ServerPool>>,
    pools: Mutex<HashMap<String, PoolBeats>>,
    /// The controller's pools, once it runs: a task whose pool is gone ends.
    known_pools: Arc<std::sync::OnceLock<Store<ServerPool>>>,
}

impl Heartbeats {
    pub fn new(
        prober: Arc<dyn Prober>,
        metrics: Arc<Metrics>,
        pods: Store<Pod>,
        wake: mpsc::UnboundedSender<ObjectRef<ServerPool>>,
    ) -> Self {
        Self {
            prober,
            metrics,
            pods,
            wake,
            pools: Mutex::new(HashMap::new()),
            known_pools: Arc::default(),
        }
    }

    /// From now on, a pool's task ends at the first round after its pool left `pools`.
    pub fn follow_pools(&self, pools: Store<ServerPool>) {
        let _ = self.known_pools.set(pools);
    }

    /// The health of pool `pool`'s pods by pod uid. Starts (or, when its settings
    /// changed, restarts) the pool's task and waits for its first round, so that a
    /// pass never reports a pod unready only because nobody has probed it yet.
    pub async fn health_of(
        &self,
        pool: &ObjectRef<ServerPool>,
        uid: &str,
        config: BeatConfig,
    ) -> HashMap<String, HealthState> {
        let key = pool_key(pool);
        let (mut rounds, health) = {
            let mut pools = self.pools.lock().unwrap();
            let current = pools
                .get(&key)
                .filter(|beats| beats.uid == uid && beats.config == config);
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
        let health = health.lock().unwrap();
        health
            .iter()
            .map(|(uid, h)| (uid.clone(), h.state))
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
        let health: HealthByUid = Arc::default();
        let round = Round {
            prober: self.prober.clone(),
            metrics: self.metrics.clone(),
            pods: self.pods.clone(),
            pool: pool.clone(),
            config: config.clone(),
            health: health.clone(),
        };
        let wake = self.wake.clone();
        let known_pools = self.known_pools.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(round.config.settings.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // (A task starts from a pass over its pool, so the store has held it.)
                if let Some(pools) = known_pools.get()
                    && pools.get(&round.pool).is_none()
                {
                    tracing::debug!(pool = %round.pool.name, "pool gone: its heartbeats stop");
                    return;
                }
                let changed = round.run().await;
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
}

impl Round {
    /// Probes every running pod at once and records the results; true when some
    /// pod's health changed.
    async fn run(&self) -> bool {
        let pods: Vec<ReplicaPod> = self
            .pods
            .state()
            .iter()
            .filter(|pod| {
                pod.metadata.namespace == self.pool.namespace
                    && pod
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(POOL_LABEL))
                        .is_some_and(|p| *p == self.pool.name)
            })
            .map(|pod| replica_pod(pod))
            .collect();
        let settings = &self.config.settings;
        let beats = futures::future::join_all(
            pods.iter()
                .filter(|p| p.state == PodState::Running)
                .filter_map(|p| {
                    let addr = SocketAddr::new(p.ip?, p.port.unwrap_or(self.config.port));
                    let check = self.prober.check(addr, settings.timeout);
                    Some(async move { (p, check.await) })
                }),
        )
        .await;

        let now = Instant::now();
        let mut health = self.health.lock().unwrap();
        let before: HashMap<String, Health> = health
            .iter()
            .map(|(uid, h)| (uid.clone(), h.state.health))
            .collect();
        health.retain(|uid, _| pods.iter().any(|p| p.uid == *uid));
        for pod in &pods {
            let entry = health.entry(pod.uid.clone()).or_insert(PodHealth {
                state: HealthState::starting(),
                since: now,
            });
            if pod.state == PodState::Exited {
                entry.state.mark_exited();
            }
        }
        for (pod, ok) in beats {
            let Some(entry) = health.get_mut(&pod.uid) else {
                continue;
            };
            let starting = entry.state.health == Health::Starting;
            if !ok && starting && now.duration_since(entry.since) < self.config.startup_grace {
                // Not listening yet: within its grace, a new pod's failures do not count.
                continue;
            }
            let was = entry.state.health;
            entry.state.record_heartbeat(ok, settings.failure_threshold);
            if let Some(name) = &pod.name {
                if !ok {
                    self.metrics.heartbeat_failed(&self.pool.name, name);
                }
                if was != Health::Failed && entry.state.health == Health::Failed {
                    tracing::warn!(pool = %self.pool.name, replica = %name, "replica failed its heartbeats");
                }
            }
        }
        health.len() != before.len()
            || health
                .iter()
                .any(|(uid, h)| before.get(uid) != Some(&h.state.health))
    }
}

fn pool_key(pool: &ObjectRef<ServerPool>) -> String {
    format!(
        "{}/{}",
        pool.namespace.as_deref().unwrap_or_default(),
        pool.name
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::operator::pods::MEMBER_LABEL;

    /// Answers from a switch the test flips; counts the probes.
    #[derive(Default)]
    struct Switch {
        up: std::sync::atomic::AtomicBool,
        probes: AtomicUsize,
    }

    impl Prober for Switch {
        fn check(&self, _: SocketAddr, _: Duration) -> BoxFuture<'static, bool> {
            self.probes.fetch_add(1, Ordering::SeqCst);
            let up = self.up.load(Ordering::SeqCst);
            Box::pin(async move { up })
        }
    }

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
        beats: Heartbeats,
        switch: Arc<Switch>,
        wakes: mpsc::UnboundedReceiver<ObjectRef<ServerPool>>,
        pool: ObjectRef<ServerPool>,
    }

    fn setup() -> Setup {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Apply(pod("uid-1")));
        let switch = Arc::new(Switch::default());
        let (wake, wakes) = mpsc::unbounded_channel();
        Setup {
            beats: Heartbeats::new(switch.clone(), Arc::new(Metrics::new()), store, wake),
            switch,
            wakes,
            pool: ObjectRef::new("demo").within("default"),
        }
    }

    /// Every second, 3 misses fail, 30 s of grace.
    fn config() -> BeatConfig {
        BeatConfig {
            settings: HealthSettings {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                failure_threshold: 3,
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
            .health
    }

    #[tokio::test(start_paused = true)]
    async fn passes_however_many_read_the_health_of_one_probe_per_interval() {
        let setup = setup();
        setup.switch.up.store(true, Ordering::SeqCst);
        assert_eq!(health(&setup).await, Health::Healthy);
        setup.switch.up.store(false, Ordering::SeqCst);
        // A burst of passes (watch events, status writes) within one interval.
        for _ in 0..50 {
            assert_eq!(health(&setup).await, Health::Healthy);
        }
        assert_eq!(setup.switch.probes.load(Ordering::SeqCst), 1);
        // Three intervals, three misses: failed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(health(&setup).await, Health::Healthy, "two misses");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(health(&setup).await, Health::Failed);
        assert_eq!(setup.switch.probes.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_pod_that_does_not_answer_yet_is_not_failed_during_its_grace() {
        let setup = setup();
        assert_eq!(health(&setup).await, Health::Starting);
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(health(&setup).await, Health::Starting, "within its grace");
        // It starts listening at 25 s: healthy, never counted as failing.
        setup.switch.up.store(true, Ordering::SeqCst);
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
        setup.switch.up.store(true, Ordering::SeqCst);
        assert_eq!(setup.wakes.recv().await.unwrap(), setup.pool);
        assert_eq!(health(&setup).await, Health::Healthy);
        // Nothing changes: no more passes asked for.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(setup.wakes.try_recv().is_err());
    }
}
