//! What every pass of the reconciler works through: the shared [`Context`] (the API
//! client, the watches' stores, the heartbeats, the leadership, the memory of each
//! pool between passes) and the [`PoolPass`], the pool one pass works on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::crd::{ReplacementStatus, ServerPool};
use super::leader::Leadership;
use super::pod_probes::PodProbes;
use super::pods::{KubeRuntime, PodTemplate};
use super::reconciler::CONTROLLER_NAME;
use crate::metrics::Metrics;
use crate::pool::Probers;
use crate::replica_name::ReplicaName;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("the ServerPool has no namespace or uid")]
    Incomplete,
    /// This process stopped leading during the pass: it writes nothing more.
    #[error("not the leader: this pass stops writing")]
    NotLeader,
}

/// What the reconciler remembers about a pool between passes.
#[derive(Default)]
pub(super) struct PoolMemory {
    /// The pool's uid: a pool deleted and created again starts afresh.
    pub(super) uid: String,
    /// Pods this process deleted (by uid) that the watch may still show.
    pub(super) deleted: HashSet<String>,
    /// The slots as this process last left them, which the cached pool may not
    /// show yet.
    pub(super) replacements: Vec<ReplacementStatus>,
    /// Pod names a create found held by a pod that is not this pool's.
    pub(super) conflicts: HashSet<String>,
    /// Failed passes in a row, for the backoff.
    pub(super) failures: u32,
    /// Replacements made on this operator's heartbeats alone whose pods have not
    /// answered yet (see [`hold_unconfirmed`]).
    pub(super) unconfirmed: HashSet<ReplicaName>,
    /// The Warning Events of conditions that still hold (by what they are about), so
    /// that each is recorded once, not at every pass; one that ends is forgotten and
    /// recorded again should it come back.
    pub(super) warned: HashSet<String>,
    /// When this term last made sure the pool's admin Secret exists.
    pub(super) admin_secret_checked: Option<tokio::time::Instant>,
}

/// Shared by every pass.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The pods of every pool of the namespace, as the controller's watch keeps them.
    pub pods: Store<Pod>,
    pub(super) pod_writer: Mutex<Option<Writer<Pod>>>,
    /// The pools' PodDisruptionBudgets, likewise.
    pub(super) budgets: Store<PodDisruptionBudget>,
    pub(super) budget_writer: Mutex<Option<Writer<PodDisruptionBudget>>>,
    pub pod_probes: PodProbes,
    /// Pools whose pods' health changed, from the heartbeat tasks.
    pub(super) wakes: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<ServerPool>>>>,
    /// Time source of condition transitions (fixed in tests).
    pub clock: fn() -> Timestamp,
    /// Whether this process holds the leader lease: only the leader reconciles.
    pub leadership: Leadership,
    pub(super) memory: Mutex<HashMap<String, PoolMemory>>,
    /// When each pass in progress began, by pool key: what `/healthz` checks.
    pub(super) passes: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter_instance: Option<String>,
        probers: Probers,
        metrics: Arc<Metrics>,
        leadership: Leadership,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance: reporter_instance,
            },
        );
        let (pods, pod_writer) = reflector::store();
        let (budgets, budget_writer) = reflector::store();
        let (wake, wakes) = mpsc::unbounded_channel();
        Self {
            client,
            recorder,
            pod_probes: PodProbes::new(
                probers,
                metrics.clone(),
                pods.clone(),
                wake,
                leadership.clone(),
            ),
            metrics,
            pods,
            pod_writer: Mutex::new(Some(pod_writer)),
            budgets,
            budget_writer: Mutex::new(Some(budget_writer)),
            wakes: Mutex::new(Some(wakes)),
            clock: Timestamp::now,
            leadership,
            memory: Mutex::new(HashMap::new()),
            passes: Mutex::new(HashMap::new()),
        }
    }

    /// What the controller's watches and the heartbeat tasks feed: the writers of
    /// the pod and budget stores, and the pools whose pods' health changed. Taken
    /// once, by [`super::reconciler::run`].
    pub(super) fn take_feeds(
        &self,
    ) -> (
        Writer<Pod>,
        Writer<PodDisruptionBudget>,
        mpsc::UnboundedReceiver<ObjectRef<ServerPool>>,
    ) {
        let once = "the controller runs once per context";
        (
            self.pod_writer.lock().unwrap().take().expect(once),
            self.budget_writer.lock().unwrap().take().expect(once),
            self.wakes.lock().unwrap().take().expect(once),
        )
    }

    /// How long the oldest pass in progress has been running.
    pub fn longest_pass(&self) -> Option<Duration> {
        let passes = self.passes.lock().unwrap();
        passes.values().map(|began| began.elapsed()).max()
    }

    /// Fills the pod store as a watch would (tests: no watch runs).
    #[cfg(test)]
    pub fn set_pods(&self, pods: Vec<Pod>) {
        use kube::runtime::watcher::Event;
        let mut writer = self.pod_writer.lock().unwrap();
        let writer = writer.as_mut().expect("the watch has not started");
        writer.apply_watcher_event(&Event::Init);
        for pod in pods {
            writer.apply_watcher_event(&Event::InitApply(pod));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    /// Fills the budget store as a watch would (tests: no watch runs).
    #[cfg(test)]
    pub fn set_budgets(&self, budgets: Vec<PodDisruptionBudget>) {
        use kube::runtime::watcher::Event;
        let mut writer = self.budget_writer.lock().unwrap();
        let writer = writer.as_mut().expect("the watch has not started");
        writer.apply_watcher_event(&Event::Init);
        for budget in budgets {
            writer.apply_watcher_event(&Event::InitApply(budget));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    /// The wall clock of condition times and of pods' timestamps (tests fix it, or
    /// make it follow tokio's paused clock).
    pub fn set_clock(&mut self, clock: fn() -> Timestamp) {
        self.clock = clock;
        self.pod_probes.clock = clock;
    }

    pub(super) fn with_memory<T>(
        &self,
        key: &str,
        uid: &str,
        f: impl FnOnce(&mut PoolMemory) -> T,
    ) -> T {
        let mut memory = self.memory.lock().unwrap();
        let entry = memory.entry(key.to_owned()).or_default();
        if entry.uid != uid {
            *entry = PoolMemory {
                uid: uid.to_owned(),
                ..PoolMemory::default()
            };
        }
        f(entry)
    }

    /// Every write of a pass goes through here first: a process that no longer leads
    /// (its renew deadline passed, another holds the Lease) writes nothing, not a pod,
    /// an Event or a status.
    pub(super) fn may_write(&self) -> Result<(), Error> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Runs write `call` while this process leads: `None` if it does not, or stops
    /// leading before the call is answered (its renew deadline passed, another took
    /// the Lease). The call is abandoned then, so that no answer of this process's
    /// lands as if it still led. (One already on the wire may still reach the API
    /// server, as with any client: the renew deadline's margin before a standby may
    /// take over is for that.)
    pub(super) async fn while_leading<F: Future>(&self, call: F) -> Option<F::Output> {
        if !self.leadership.is_leader() {
            return None;
        }
        let lost = self.leadership.lost();
        tokio::select! {
            biased;
            output = call => Some(output),
            () = lost => None,
        }
    }

    /// An API write run [`Self::while_leading`]: `Error::NotLeader` when this process
    /// does not lead or stops leading before the answer.
    pub(super) async fn write<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        self.while_leading(call)
            .await
            .map_or(Err(Error::NotLeader), |r| r.map_err(Error::from))
    }

    pub(super) fn now(&self) -> Time {
        // Kubernetes keeps condition times to the second.
        let now = (self.clock)();
        Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
    }
}

/// Keeps the first error of a pass; the pass goes on so that one failed call does
/// not hold back the others, and the error policy retries it.
pub(super) fn note(first: &mut Option<Error>, result: Result<(), Error>) {
    if let Err(error) = result {
        tracing::warn!(%error, "Kubernetes API call failed");
        first.get_or_insert(error);
    }
}

/// `namespace/name`: the key of a pool's memory and of its passes in progress.
pub(super) fn pool_key(pool: &ServerPool) -> String {
    super::crd::pool_key(&pool.namespace().unwrap_or_default(), &pool.name_any())
}

/// Marks a pass in progress for as long as it lives.
pub(super) struct PassInProgress<'a> {
    ctx: &'a Context,
    key: String,
}

impl<'a> PassInProgress<'a> {
    pub(super) fn begin(ctx: &'a Context, key: &str) -> Self {
        ctx.passes
            .lock()
            .unwrap()
            .insert(key.to_owned(), tokio::time::Instant::now());
        Self {
            ctx,
            key: key.to_owned(),
        }
    }
}

impl Drop for PassInProgress<'_> {
    fn drop(&mut self) {
        self.ctx.passes.lock().unwrap().remove(&self.key);
    }
}

/// The pool a pass works on, and the handles it works through.
pub(super) struct PoolPass<'a> {
    pub(super) pool: &'a ServerPool,
    pub(super) namespace: String,
    pub(super) name: String,
    /// `namespace/name`: the key of the pass's memory.
    pub(super) key: String,
    pub(super) uid: String,
    pub(super) pods: KubeRuntime,
    /// The pool, for Events.
    pub(super) reference: ObjectReference,
}

impl<'a> PoolPass<'a> {
    pub(super) fn of(pool: &'a ServerPool, ctx: &Context) -> Result<Self, Error> {
        let namespace = pool.namespace().ok_or(Error::Incomplete)?;
        let name = pool.name_any();
        let owner = pool.controller_owner_ref(&()).ok_or(Error::Incomplete)?;
        Ok(Self {
            key: pool_key(pool),
            uid: pool.uid().ok_or(Error::Incomplete)?,
            pods: KubeRuntime::new(
                ctx.client.clone(),
                &namespace,
                &name,
                owner,
                PodTemplate {
                    image: pool.spec.image.clone(),
                    port: pool.spec.port,
                    template: pool.spec.template.clone().unwrap_or_default(),
                    check: pool.spec.health_settings().check,
                },
            ),
            reference: pool.object_ref(&()),
            pool,
            namespace,
            name,
        })
    }
}
