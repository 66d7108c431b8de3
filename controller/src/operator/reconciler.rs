//! The reconciler: one pass per `ServerPool` change, pod change, change of a pod's
//! health (the pool's heartbeat task, `heartbeats.rs`, asks for it) or resync. It
//! drives the same [`plan`] as the local supervisor:
//!
//! observe (pods from the watch's store, health from the heartbeat task) →
//! `plan(desired, observed)` → create, delete, replace pods (an Event for each) →
//! status, written only when it changed.
//!
//! A desired replica without a pod gets one under its name, so a pod deleted from
//! outside comes back as it was; a replica whose heartbeats fail `failureThreshold`
//! times in a row (or whose container exited) is replaced by `emergency_<n>`, whose
//! pod is `emergency-<n>`, and the replacement is recorded in the status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::crd::{MemberStatus, ReplacementStatus, ServerPool, ServerPoolSpec, ServerPoolStatus};
use super::heartbeats::{BeatConfig, Heartbeats, PodBeat};
use super::leader::Leadership;
use super::members;
use super::pods::{
    self, CreateError, KubeRuntime, POOL_LABEL, PodState, PodTemplate, ReplicaPod, StartFailure,
    is_status, replica_pod,
};
use crate::health_state::{Health, HealthState};
use crate::metrics::Metrics;
use crate::pool::health::Prober;
use crate::pool::{Action as PlanAction, Observed, Policy, plan};
use crate::replica_name::ReplicaName;

/// The controller name in Events (`kubectl describe sp`).
pub const CONTROLLER_NAME: &str = "ringlb-operator";
/// Longest wait between retries of a failing pass. Short: a pass that failed only
/// to write the status (the API server was down) leaves the proxies without the
/// news of a replacement until a retry succeeds, and every trigger during an
/// outage counts as a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How soon a standby looks again whether it leads now.
pub const STANDBY_RECHECK: Duration = Duration::from_secs(2);
/// A converged pool is looked at again after this long even if nothing happened
/// (changes of the pool, its pods or their health trigger a pass at once).
pub const RESYNC: Duration = Duration::from_secs(60);
/// How long past its deletion deadline a pod may still be terminating before its
/// replica is replaced under a new name.
pub const STUCK_TERMINATING: Duration = Duration::from_secs(60);
/// A pass running longer than this is stuck (every API call it makes has its own
/// timeout): `/healthz` fails so that the kubelet restarts the operator.
pub const STUCK_PASS: Duration = Duration::from_secs(300);
/// A replica that served for less than this before it failed counts toward its
/// slot's backoff, as the kubelet's CrashLoopBackOff resets only after a container
/// ran for 10 minutes; one that served longer is replaced at once.
pub const CRASH_LOOP_RESET: Duration = Duration::from_secs(600);
/// How often a leader makes sure again that a pool's admin Secret exists (one deleted
/// by hand is created again, with a new token, within this long; the operator cannot
/// watch Secrets: it may not read them).
pub const ADMIN_SECRET_RECHECK: Duration = Duration::from_secs(300);

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
struct PoolMemory {
    /// The pool's uid: a pool deleted and created again starts afresh.
    uid: String,
    /// Pods this process deleted (by uid) that the watch may still show.
    deleted: HashSet<String>,
    /// The slots as this process last left them, which the cached pool may not
    /// show yet.
    replacements: Vec<ReplacementStatus>,
    /// Pod names a create found held by a pod that is not this pool's.
    conflicts: HashSet<String>,
    /// Failed passes in a row, for the backoff.
    failures: u32,
    /// Replacements made on this operator's heartbeats alone whose pods have not
    /// answered yet (see [`hold_unconfirmed`]).
    unconfirmed: HashSet<ReplicaName>,
    /// The Warning Events of conditions that still hold (by what they are about), so
    /// that each is recorded once, not at every pass; one that ends is forgotten and
    /// recorded again should it come back.
    warned: HashSet<String>,
    /// When this term last made sure the pool's admin Secret exists.
    admin_secret_checked: Option<tokio::time::Instant>,
}

/// Shared by every pass.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The pods of every pool of the namespace, as the controller's watch keeps them.
    pub pods: Store<Pod>,
    pod_writer: Mutex<Option<Writer<Pod>>>,
    /// The pools' PodDisruptionBudgets, likewise.
    budgets: Store<PodDisruptionBudget>,
    budget_writer: Mutex<Option<Writer<PodDisruptionBudget>>>,
    pub heartbeats: Heartbeats,
    /// Pools whose pods' health changed, from the heartbeat tasks.
    wakes: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<ServerPool>>>>,
    /// Time source of condition transitions (fixed in tests).
    pub clock: fn() -> Timestamp,
    /// Whether this process holds the leader lease: only the leader reconciles.
    pub leadership: Leadership,
    memory: Mutex<HashMap<String, PoolMemory>>,
    /// When each pass in progress began, by pool key: what `/healthz` checks.
    passes: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter_instance: Option<String>,
        prober: Arc<dyn Prober>,
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
            heartbeats: Heartbeats::new(
                prober,
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
        self.heartbeats.clock = clock;
    }

    fn with_memory<T>(&self, key: &str, uid: &str, f: impl FnOnce(&mut PoolMemory) -> T) -> T {
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
    fn may_write(&self) -> Result<(), Error> {
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
    async fn while_leading<F: std::future::Future>(&self, call: F) -> Option<F::Output> {
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

    fn now(&self) -> Time {
        // Kubernetes keeps condition times to the second.
        let now = (self.clock)();
        Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
    }
}

/// Runs the controller for every `ServerPool` of `namespace` (of every namespace when
/// `None`) until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    let pools: Api<ServerPool> = scoped(&ctx.client, namespace);
    let pods: Api<Pod> = scoped(&ctx.client, namespace);
    let writer = ctx
        .pod_writer
        .lock()
        .unwrap()
        .take()
        .expect("the controller runs once per context");
    let wakes = ctx
        .wakes
        .lock()
        .unwrap()
        .take()
        .expect("the controller runs once per context");
    let budget_writer = ctx
        .budget_writer
        .lock()
        .unwrap()
        .take()
        .expect("the controller runs once per context");
    // The pools' budgets: one deleted or edited by hand is written again.
    let budgets: Api<PodDisruptionBudget> = scoped(&ctx.client, namespace);
    let budget_events = watcher(budgets, super::watch_config().labels(POOL_LABEL))
        .default_backoff()
        .reflect(budget_writer)
        .touched_objects();
    // One watch of the pods feeds both the store the passes read and their triggers.
    let pod_events = watcher(pods, super::watch_config().labels(POOL_LABEL))
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let heartbeat_changes = futures::stream::unfold(wakes, |mut wakes| async move {
        Some((wakes.recv().await?, wakes))
    });
    let controller = Controller::new(pools, super::watch_config());
    // A pool deleted without a pass seeing it go (its pods go by garbage collection)
    // must not keep a heartbeat task: the tasks look the pool up here.
    ctx.heartbeats.follow_pools(controller.store());
    controller
        .owns_stream(pod_events)
        .owns_stream(budget_events)
        .reconcile_on(heartbeat_changes)
        // A standby that takes over starts at once, not at its next recheck, and
        // afresh: what it remembered of an earlier term (replacements it recorded
        // but may not have made, Events it sent) is not this term's.
        .reconcile_all_on(ctx.leadership.gained().map({
            let ctx = ctx.clone();
            move |()| ctx.memory.lock().unwrap().clear()
        }))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((pool, _)) => tracing::debug!(pool = %pool.name, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
    ctx.heartbeats.stop_all();
}

/// The objects of kind `K` of `namespace`, or of every namespace.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Retries a failed pass after 1 s, 2 s, 4 s, 8 s, then every 10 s.
pub fn error_policy(pool: Arc<ServerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::NotLeader) {
        return Action::requeue(STANDBY_RECHECK);
    }
    let key = pool_key(&pool);
    let uid = pool.uid().unwrap_or_default();
    let failures = ctx.with_memory(&key, &uid, |m| {
        m.failures = m.failures.saturating_add(1);
        m.failures
    });
    let delay = Duration::from_secs(1u64 << failures.min(6).saturating_sub(1)).min(MAX_BACKOFF);
    tracing::warn!(pool = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn pool_key(pool: &ServerPool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

/// One pass over one pool: observe, apply, report.
pub async fn reconcile(pool: Arc<ServerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leadership.is_leader() {
        // A standby: watches (its caches stay warm for a takeover) but writes nothing.
        return Ok(Action::requeue(STANDBY_RECHECK));
    }
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    if pool.meta().deletion_timestamp.is_some() {
        // Its pods go with it (ownerReferences): nothing to do but forget it.
        ctx.memory.lock().unwrap().remove(&pool_key(&pool));
        ctx.heartbeats.forget(&ObjectRef::from_obj(&*pool));
        ctx.metrics.forget_pool(&namespace, &name);
        return Ok(Action::await_change());
    }
    let began = tokio::time::Instant::now();
    let result = pass(pool, ctx.clone()).await;
    // (A pass that stopped because this process stopped leading did not fail.)
    let ok = matches!(result, Ok(_) | Err(Error::NotLeader));
    ctx.metrics
        .reconciled(&namespace, &name, began.elapsed(), ok);
    result
}

/// The pass of [`reconcile`] over a pool this process leads for.
async fn pass(pool: Arc<ServerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let target = Target::of(&pool, &ctx)?;
    let _in_progress = PassInProgress::begin(&ctx, &target.key);
    let mut seen = observe(&target, &ctx).await?;
    // Observing took time (it waits for the pool's first heartbeat round): check again that this process still leads
    // before it writes. A leader paused or cut off meanwhile has stopped by now.
    if !ctx.leadership.is_leader() {
        return Ok(Action::requeue(STANDBY_RECHECK));
    }
    let mut done = apply(&target, &ctx, &mut seen).await;
    ensure_budget(&target, &ctx, &mut seen, &mut done).await;
    ensure_admin_secret(&target, &ctx, &mut done).await;
    let reported = report(&target, &ctx, &seen, &mut done).await;
    ctx.with_memory(&target.key, &target.uid, |m| {
        m.warned.retain(|key| done.warned.contains(key))
    });
    reported?;
    if let Some(error) = done.first_error {
        return Err(error);
    }
    ctx.with_memory(&target.key, &target.uid, |m| m.failures = 0);
    Ok(Action::requeue(
        done.retry_in.map_or(RESYNC, |wait| wait.min(RESYNC)),
    ))
}

/// Writes the pool's PodDisruptionBudget when the watch shows it missing, or its own
/// budget not as it should be (see [`pods::disruption_budget`]). A budget of that
/// name that is not the pool's is someone else's: left alone, and named in Degraded.
async fn ensure_budget(target: &Target<'_>, ctx: &Context, seen: &mut Seen, done: &mut Done) {
    if target.name.len() > 63 {
        // Its label cannot name the pool (Degraded says so): no selector to write.
        return;
    }
    let want = target.pods.disruption_budget();
    let found = ctx
        .budgets
        .get(&ObjectRef::new(&target.name).within(&target.namespace));
    if let Some(found) = &found {
        let ours = found
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == target.uid);
        if !ours {
            let message = format!(
                "PodDisruptionBudget {} exists and is not this pool's: the operator leaves it \
                 as it is, and writes none of its own",
                target.name
            );
            let event = PodEvent {
                type_: EventType::Warning,
                reason: "DisruptionBudgetConflict",
                action: "Reconcile",
                note: message.clone(),
            };
            warn_once(ctx, target, "DisruptionBudgetConflict", "", event, done).await;
            seen.problems.push(Problem {
                reason: "DisruptionBudgetConflict",
                message,
            });
            return;
        }
        if pods::is_current_budget(found, &want) {
            return;
        }
    }
    let result = ctx
        .while_leading(target.pods.apply_disruption_budget(CONTROLLER_NAME))
        .await
        .map_or(Err(Error::NotLeader), |r| r.map_err(Error::from));
    note(&mut done.first_error, result);
}

/// Creates the pool's admin token Secret where none exists (see [`super::admin_secret`]):
/// at a term's first pass over the pool, then every [`ADMIN_SECRET_RECHECK`].
async fn ensure_admin_secret(target: &Target<'_>, ctx: &Context, done: &mut Done) {
    let now = tokio::time::Instant::now();
    let due = ctx.with_memory(&target.key, &target.uid, |m| {
        m.admin_secret_checked
            .is_none_or(|at| now.duration_since(at) >= ADMIN_SECRET_RECHECK)
    });
    if !due {
        return;
    }
    let result = ctx
        .while_leading(target.pods.ensure_admin_secret())
        .await
        .map_or(Err(Error::NotLeader), |r| r.map_err(Error::from));
    match result {
        Ok(ensured) => {
            if ensured == super::admin_secret::Ensured::Created {
                tracing::info!(pool = %target.key, "created the pool's admin token Secret");
            }
            ctx.with_memory(&target.key, &target.uid, |m| {
                m.admin_secret_checked = Some(now);
            });
        }
        Err(error) => note(&mut done.first_error, Err(error)),
    }
}

/// Marks a pass in progress for as long as it lives.
struct PassInProgress<'a> {
    ctx: &'a Context,
    key: String,
}

impl<'a> PassInProgress<'a> {
    fn begin(ctx: &'a Context, key: &str) -> Self {
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
struct Target<'a> {
    pool: &'a ServerPool,
    namespace: String,
    name: String,
    /// `namespace/name`: the key of the pass's memory.
    key: String,
    uid: String,
    pods: KubeRuntime,
    /// The pool, for Events.
    reference: ObjectReference,
}

impl<'a> Target<'a> {
    fn of(pool: &'a ServerPool, ctx: &Context) -> Result<Self, Error> {
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
                },
            ),
            reference: pool.object_ref(&()),
            pool,
            namespace,
            name,
        })
    }
}

/// What a pass found: the pool's pods and their health, and what it should have.
struct Seen {
    pods: Vec<ReplicaPod>,
    /// What the heartbeats say of each pod, by uid (a pod not probed yet is missing).
    beats: HashMap<String, PodBeat>,
    /// Replacements recorded in the status and those made since (the cached pool may
    /// lag); the pass adds the ones it makes.
    replacements: Vec<ReplacementStatus>,
    /// The desired members and their pod names; `None` when the spec cannot be carried out.
    desired: Option<Vec<(ReplicaName, String)>>,
    /// What cannot be carried out as written: reported in the Degraded condition.
    problems: Vec<Problem>,
    /// The replica names of every pool's pods in the namespace: pod names are the
    /// namespace's, so an emergency number another pool uses is not free.
    taken: Vec<ReplicaName>,
    /// Pod names held by pods that are not this pool's: other pools' (from the
    /// watch) and others' (a create refused with 409).
    held_elsewhere: HashSet<String>,
    now: Timestamp,
    /// The hash of the pool's current pod template.
    template: String,
    /// The pod the cached status names for each replica.
    status_pods: HashMap<ReplicaName, String>,
    /// The pods the cached status says are ready.
    status_ready: HashSet<String>,
    /// `spec.heartbeat.maxUnconfirmedReplacements`.
    max_unconfirmed: usize,
    /// Replacements in progress made on heartbeats alone, by this process.
    unconfirmed: HashSet<ReplicaName>,
}

impl Seen {
    fn health(&self, uid: &str) -> Option<HealthState> {
        self.beats.get(uid).map(|beat| beat.state)
    }

    /// Whether pod `uid` served long enough before it failed that its failure is
    /// not a crash loop (see [`CRASH_LOOP_RESET`]).
    fn served_long(&self, uid: &str) -> bool {
        self.beats
            .get(uid)
            .and_then(|beat| beat.served_for)
            .is_some_and(|served| served >= CRASH_LOOP_RESET)
    }
}

/// Reads the pool's pods and their health, and works out what should exist.
async fn observe(target: &Target<'_>, ctx: &Context) -> Result<Seen, Error> {
    let spec = &target.pool.spec;
    let mut problems: Vec<Problem> = Vec::new();
    // Hashing is the proxies' business (they keep their last good ring): the pods
    // are still kept alive while it is wrong.
    if let Err(error) = spec.ring_config().and(spec.balance_factor()) {
        problems.push(Problem::invalid_spec(format!("spec.hashing: {error}")));
    }
    if let Err(error) = members::check_spec_weights(spec) {
        problems.push(Problem::invalid_spec(format!("spec.weights: {error}")));
    }
    let unnamable = target.name.len() > 63;
    if unnamable {
        problems.push(Problem::invalid_spec(
            "a pool name longer than 63 characters cannot label its pods".into(),
        ));
    }
    let mut replacements = target
        .pool
        .status
        .as_ref()
        .map(|s| s.emergency_replacements.clone())
        .unwrap_or_default();
    // A slot this process replaced more often than the cached status says is newer.
    for made in ctx.with_memory(&target.key, &target.uid, |m| m.replacements.clone()) {
        match replacements
            .iter_mut()
            .find(|r| r.original == made.original)
        {
            Some(cached) if cached.count >= made.count => {}
            Some(cached) => *cached = made,
            None => replacements.push(made),
        }
    }
    // From the watch's store, less the pods this process deleted that it still shows.
    let pods: Vec<ReplicaPod> = {
        let listed: Vec<ReplicaPod> = ctx
            .pods
            .state()
            .iter()
            .filter(|pod| {
                pod.metadata.namespace.as_deref() == Some(target.namespace.as_str())
                    && pod
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(POOL_LABEL))
                        .is_some_and(|p| *p == target.name)
            })
            .map(|pod| replica_pod(pod))
            .collect();
        ctx.with_memory(&target.key, &target.uid, |m| {
            m.deleted.retain(|uid| listed.iter().any(|p| p.uid == *uid));
            listed
                .into_iter()
                .filter(|p| !m.deleted.contains(&p.uid))
                .collect()
        })
    };
    let beats = ctx
        .heartbeats
        .health_of(
            &ObjectRef::from_obj(target.pool),
            &target.uid,
            BeatConfig {
                settings: spec.health_settings(),
                startup_grace: spec.startup_grace(),
                port: spec.port,
            },
        )
        .await;
    let desired = if unnamable {
        None
    } else {
        members::desired_members(spec, &members::replacement_map(&replacements))
            .map_err(|error| problems.push(Problem::invalid_spec(error.to_string())))
            .ok()
    };
    let in_namespace: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(target.namespace.as_str()))
        .collect();
    let taken = in_namespace
        .iter()
        .filter_map(|pod| replica_pod(pod).name)
        .collect();
    // Other pools' pods, by their label: this pool's own pods (one it just deleted
    // and the watch still shows included) never hold a name against it.
    let mut held_elsewhere: HashSet<String> = in_namespace
        .iter()
        .filter(|pod| {
            pod.metadata.labels.as_ref().and_then(|l| l.get(POOL_LABEL)) != Some(&target.name)
        })
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    // (Taken: a name that is free again later is not renamed for an old 409.)
    held_elsewhere.extend(ctx.with_memory(&target.key, &target.uid, |m| {
        std::mem::take(&mut m.conflicts)
    }));
    Ok(Seen {
        pods,
        beats,
        replacements,
        desired,
        problems,
        taken,
        held_elsewhere,
        now: (ctx.clock)(),
        template: target.pods.template().hash(),
        status_pods: target
            .pool
            .status
            .iter()
            .flat_map(|s| &s.members)
            .filter_map(|m| Some((ReplicaName::parse(&m.name).ok()?, m.pod.clone())))
            .collect(),
        status_ready: target
            .pool
            .status
            .iter()
            .flat_map(|s| &s.members)
            .filter(|m| m.ready)
            .map(|m| m.pod.clone())
            .collect(),
        max_unconfirmed: spec.max_unconfirmed_replacements() as usize,
        unconfirmed: ctx.with_memory(&target.key, &target.uid, |m| m.unconfirmed.clone()),
    })
}

/// What a pass changed.
#[derive(Default)]
struct Done {
    /// Replicas whose pod this pass created.
    created: HashSet<ReplicaName>,
    /// Replicas whose pod this pass deleted.
    gone: HashSet<ReplicaName>,
    /// The first failed API call; the pass went on, the error policy retries.
    first_error: Option<Error>,
    /// The soonest a replacement held back by its slot's backoff may be made.
    retry_in: Option<Duration>,
    /// The pod that serves each replica after this pass (not those it created).
    serving: HashMap<ReplicaName, ServingPod>,
    /// The lasting conditions this pass warned about (see [`warn_once`]).
    warned: HashSet<String>,
}

/// Why a pool is Degraded: a condition reason and what to tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `InvalidSpec`, `PodConflict`, `ReplacementBackoff` or `RolloutStalled`.
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn invalid_spec(message: String) -> Self {
        Self {
            reason: "InvalidSpec",
            message,
        }
    }
}

/// Plans against what was seen and carries the plan out: pods created, deleted,
/// replaced, an Event for each.
async fn apply(target: &Target<'_>, ctx: &Context, seen: &mut Seen) -> Done {
    let mut done = Done::default();
    let Some(desired) = seen.desired.clone() else {
        // A spec that cannot be carried out changes nothing: the members stay on the
        // pods the status names, with their health, and the proxies keep routing.
        done.serving = seen
            .pods
            .iter()
            .filter_map(|pod| {
                let name = pod.name.clone()?;
                (seen.status_pods.get(&name) == Some(&pod.pod))
                    .then(|| (name, ServingPod::of(pod, seen, &HashSet::new())))
            })
            .collect();
        return done;
    };
    let work = plan_pass(&desired, seen);
    for (name, pod, failure) in &work.not_starting {
        let message = format!(
            "pod {} of replica {name} cannot start: {}{}",
            pod.pod,
            failure.reason,
            if failure.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", failure.message)
            }
        );
        let event = PodEvent {
            type_: EventType::Warning,
            reason: failure.reason,
            action: "StartPod",
            note: message.clone(),
        };
        // One Event per pod and kind of failure: the kubelet alternates ErrImagePull
        // and ImagePullBackOff at each retry of a pull.
        let class = match failure.reason {
            "ErrImagePull" | "ImagePullBackOff" => "ImagePull",
            other => other,
        };
        let key = format!("{class}/{}", pod.uid);
        warn_once(ctx, target, &key, &pod.pod, event, &mut done).await;
        seen.problems.push(Problem {
            reason: failure.reason,
            message,
        });
    }
    ctx.with_memory(&target.key, &target.uid, |m| {
        m.unconfirmed = work.unconfirmed.in_progress.iter().cloned().collect();
    });
    if let Some(first) = work.unconfirmed.held.first() {
        let names: Vec<String> = work
            .unconfirmed
            .held
            .iter()
            .map(|p| {
                let name = p.name.as_ref().map_or("?", ReplicaName::as_str);
                format!("{name} (pod {})", p.pod)
            })
            .collect();
        let message = format!(
            "the operator cannot reach {} replica(s) that the kubelet reports Ready: {}; \
             it replaces at most {} such replica(s) at a time \
             (spec.heartbeat.maxUnconfirmedReplacements) and the proxies keep routing to them",
            names.len(),
            names.join(", "),
            seen.max_unconfirmed
        );
        let event = PodEvent {
            type_: EventType::Warning,
            reason: "ReplicasUnreachable",
            action: "ReplacePod",
            note: message.clone(),
        };
        warn_once(
            ctx,
            target,
            "ReplicasUnreachable",
            &first.pod,
            event,
            &mut done,
        )
        .await;
        seen.problems.push(Problem {
            reason: "ReplicasUnreachable",
            message,
        });
    }
    for held in &work.held_back {
        seen.problems.push(Problem {
            reason: "ReplacementBackoff",
            message: held.message(),
        });
    }
    done.retry_in = work.held_back.iter().map(|h| h.wait).min();
    ctx.metrics
        .pool_backoffs(&target.namespace, &target.name, work.held_back.len());
    for (pod, stalled) in &work.rollout.stalled {
        let event = PodEvent {
            type_: EventType::Warning,
            reason: stalled.reason,
            action: "RollOut",
            note: stalled.message.clone(),
        };
        warn_once(
            ctx,
            target,
            &format!("RolloutStalled/{pod}"),
            pod,
            event,
            &mut done,
        )
        .await;
        seen.problems.push(stalled.clone());
    }
    for extra in &work.extras {
        let event = PodEvent::deleted(extra.why.clone());
        remove_pod(
            ctx,
            target,
            &mut done,
            (&extra.pod, &extra.uid),
            false,
            event,
        )
        .await;
    }
    for action in work.actions {
        match action {
            PlanAction::Start(n) => {
                let pod = members::pod_name(&n).unwrap_or_default();
                if create(ctx, target, (&n, &pod), "", seen, &mut done).await {
                    done.created.insert(n);
                }
            }
            PlanAction::Stop(n) => {
                let (pod, uid) = work.pod_of.get(&n).cloned().unwrap_or_default();
                let event = PodEvent::deleted(format!(
                    "deleted pod {pod}: replica {n} is no longer desired"
                ));
                remove_pod(ctx, target, &mut done, (&pod, &uid), false, event).await;
                done.gone.insert(n);
            }
            PlanAction::Replace {
                failed,
                replacement,
            } => {
                // Recorded only by a process that may still write: a replacement
                // remembered but never made would rename a healthy replica later.
                if let Err(fenced) = ctx.may_write() {
                    note(&mut done.first_error, Err(fenced));
                    continue;
                }
                let (pod, uid) = work.pod_of.get(&failed).cloned().unwrap_or_default();
                // A name whose pod name is held elsewhere never had a pod: it is
                // renamed, not failed (no backoff).
                let held_elsewhere = pod.is_empty();
                let served = held_elsewhere || seen.served_long(&uid);
                seen.replacements =
                    members::record_replacement(&seen.replacements, &failed, &replacement, served);
                // Remembered before any pod changes, so that no later pass
                // brings the failed name back.
                ctx.with_memory(&target.key, &target.uid, |m| {
                    m.replacements = seen.replacements.clone();
                });
                ctx.metrics.pool_replaced(&target.namespace, &target.name);
                let failed_pod = seen.pods.iter().find(|p| p.uid == uid);
                let why = match failed_pod.map(|p| p.state) {
                    _ if held_elsewhere => {
                        "its pod name is held by a pod that is not this pool's".to_owned()
                    }
                    Some(PodState::Exited) => "its container exited".to_owned(),
                    Some(PodState::Terminating) => "its pod is stuck terminating".to_owned(),
                    Some(PodState::Pending) => format!(
                        "its pod did not start{}",
                        failed_pod
                            .and_then(|p| p.container_reason.as_deref())
                            .map_or_else(String::new, |r| format!(" ({r})"))
                    ),
                    _ => "failed its heartbeats".to_owned(),
                };
                let pod_shown = if held_elsewhere {
                    members::pod_name(&failed).unwrap_or_default()
                } else {
                    pod.clone()
                };
                let event = PodEvent {
                    type_: EventType::Warning,
                    reason: "Replaced",
                    action: "ReplacePod",
                    note: format!(
                        "replica {failed} (pod {pod_shown}): {why}; replaced by {replacement}"
                    ),
                };
                if held_elsewhere {
                    publish_event(ctx, target, &pod_shown, event).await;
                } else {
                    remove_pod(ctx, target, &mut done, (&pod, &uid), true, event).await;
                }
                done.gone.insert(failed);
                let pod = members::pod_name(&replacement).unwrap_or_default();
                if create(ctx, target, (&replacement, &pod), "", seen, &mut done).await {
                    done.created.insert(replacement);
                }
            }
        }
    }
    if let Some((name, pod)) = &work.rollout.start {
        let why = format!(
            " from the new template {} (rolling update: it serves once its heartbeats \
             answer and the kubelet marks it Ready, then pod {} goes)",
            seen.template,
            work.pod_of.get(name).map_or("", |(p, _)| p.as_str())
        );
        create(ctx, target, (name, pod), &why, seen, &mut done).await;
    }
    done.serving = work
        .serving
        .into_iter()
        .filter(|(n, _)| !done.gone.contains(n))
        .collect();
    done
}

/// A pass's work, decided before any call: pods that name no replica, and the plan.
struct PassWork {
    /// Pods to delete: those that name no replica of the pool, outdated pods whose
    /// replica a new pod serves, second pods of a name.
    extras: Vec<Extra>,
    actions: Vec<PlanAction>,
    /// Replacements the plan asked for that their slot's backoff holds back.
    held_back: Vec<HeldBack>,
    /// Replicas whose failure only the operator's heartbeats see.
    unconfirmed: Unconfirmed,
    /// Replicas whose pod cannot start, and why.
    not_starting: Vec<(ReplicaName, ReplicaPod, StartFailure)>,
    rollout: RolloutWork,
    /// The pod that serves each replica that has one, once this pass is done.
    serving: HashMap<ReplicaName, ServingPod>,
    /// The pod (name, uid) of each desired replica that has one.
    pod_of: HashMap<ReplicaName, (String, String)>,
}

/// A pod a pass deletes, and the Event's note.
struct Extra {
    pod: String,
    uid: String,
    why: String,
}

/// The rollout's part of a pass.
struct RolloutWork {
    /// Replica and pod name of the new pod to start.
    start: Option<(ReplicaName, String)>,
    /// The new pod that failed, and why the rollout waits.
    stalled: Vec<(String, Problem)>,
}

/// A failed replica whose replacement waits for its slot's backoff.
struct HeldBack {
    replica: ReplicaName,
    pod: String,
    /// It answered a heartbeat (and failed before it had served long).
    served: bool,
    container_reason: Option<String>,
    /// How much longer it waits: when the pass looks again.
    wait: Duration,
    /// The whole delay of its slot's backoff: what the status says (a countdown
    /// would change the status at every pass).
    delay: Duration,
}

impl HeldBack {
    fn message(&self) -> String {
        let why = self
            .container_reason
            .as_deref()
            .map_or_else(String::new, |r| format!(" (container: {r})"));
        let what = if self.served {
            "failed less than 10 minutes after it began to serve"
        } else {
            "never answered a heartbeat"
        };
        format!(
            "replica {} (pod {}) {what}{why}; replaced again {}s after the last replacement",
            self.replica,
            self.pod,
            self.delay.as_secs()
        )
    }
}

/// How much longer the replacement of failed replica `name` must wait: `None` when
/// it may be made now. Only a replica that did not serve long waits, for the delay
/// its slot's streak gives, counted from when its pod started, as the kubelet counts
/// a restart's backoff from the container's last start. (The pod's own age: a new
/// leader waits as the old one would have.)
fn backoff_left(name: &ReplicaName, pod: &ReplicaPod, seen: &Seen) -> Option<Duration> {
    // A pod stuck terminating did not crash: its node or a finalizer holds it.
    if pod.state == PodState::Terminating || seen.served_long(&pod.uid) {
        return None;
    }
    let delay = backoff_delay(name, seen);
    let age = seen.beats.get(&pod.uid).map_or(Duration::ZERO, |b| b.age);
    delay.checked_sub(age).filter(|left| !left.is_zero())
}

/// The backoff delay of the slot that replica `name` holds, from its streak.
fn backoff_delay(name: &ReplicaName, seen: &Seen) -> Duration {
    let slot = members::slot_of(name, &seen.replacements);
    let streak = seen
        .replacements
        .iter()
        .find(|r| r.original == slot)
        .map_or(0, |r| r.unready_streak);
    members::replacement_delay(streak)
}

/// Pure: which pod stands for which replica, and what [`plan`] makes of them.
fn plan_pass(desired: &[(ReplicaName, String)], seen: &Seen) -> PassWork {
    // The pods of each replica name; a pod that names none is an extra.
    let mut of_name: BTreeMap<ReplicaName, Vec<&ReplicaPod>> = BTreeMap::new();
    let mut extras: Vec<Extra> = Vec::new();
    let mut terminating: HashSet<ReplicaName> = HashSet::new();
    // A pod still terminating long after its grace (its node is gone, a finalizer
    // hangs) would hold its name for good: that replica is replaced under a new one.
    let mut stuck: Vec<(ReplicaName, &ReplicaPod)> = Vec::new();
    for pod in &seen.pods {
        match &pod.name {
            Some(n) if pod.state == PodState::Terminating => {
                let overdue = pod.deleting_since.is_some_and(|since| {
                    seen.now.duration_since(since).as_secs() > STUCK_TERMINATING.as_secs() as i64
                });
                if overdue {
                    stuck.push((n.clone(), pod));
                } else {
                    terminating.insert(n.clone());
                }
            }
            Some(n) => of_name.entry(n.clone()).or_default().push(pod),
            None if pod.state == PodState::Terminating => {}
            None => extras.push(Extra {
                pod: pod.pod.clone(),
                uid: pod.uid.clone(),
                why: format!("deleted pod {} that names no replica of this pool", pod.pod),
            }),
        }
    }
    // One pod stands for each name; while it is outdated, one pod of the current
    // template may run beside it (the rollout's surge); any other is an extra.
    let mut by_name: HashMap<ReplicaName, &ReplicaPod> = HashMap::new();
    let mut surges: BTreeMap<ReplicaName, &ReplicaPod> = BTreeMap::new();
    for (name, pods) in &of_name {
        let standing = standing_pod(name, pods, seen);
        let outdated = standing.template.as_deref() != Some(seen.template.as_str());
        let surge = pods
            .iter()
            .find(|p| {
                outdated && p.uid != standing.uid && p.template.as_deref() == Some(&seen.template)
            })
            .copied();
        for pod in pods.iter().filter(|p| {
            p.uid != standing.uid && Some(p.uid.as_str()) != surge.map(|s| s.uid.as_str())
        }) {
            let why = if standing.template.as_deref() == Some(seen.template.as_str())
                && pod.template != standing.template
            {
                format!(
                    "deleted pod {} of an earlier template: pod {} serves replica {name} now",
                    pod.pod, standing.pod
                )
            } else {
                format!("deleted pod {}: a second pod of replica {name}", pod.pod)
            };
            extras.push(Extra {
                pod: pod.pod.clone(),
                uid: pod.uid.clone(),
                why,
            });
        }
        by_name.insert(name.clone(), standing);
        if let Some(surge) = surge {
            surges.insert(name.clone(), surge);
        }
    }
    for (name, pod) in stuck {
        if !by_name.contains_key(&name) && desired.iter().any(|(d, _)| *d == name) {
            tracing::warn!(replica = %name, pod = %pod.pod, "pod stuck terminating: replacing it under a new name");
            by_name.insert(name, pod);
        }
    }
    let mut observed: Vec<Observed> = by_name
        .iter()
        .map(|(n, pod)| Observed {
            name: n.clone(),
            health: if pod.state == PodState::Terminating {
                Health::Failed
            } else {
                seen.health(&pod.uid).map_or(Health::Starting, |h| h.health)
            },
        })
        .collect();
    // Pod names are the namespace's: a desired name whose pod name another pool's
    // pod (or someone else's) holds can never have its pod, so its slot takes a
    // free emergency name, as a failed replica's would.
    for (name, pod) in desired {
        if !by_name.contains_key(name) && seen.held_elsewhere.contains(pod) {
            observed.push(Observed {
                name: name.clone(),
                health: Health::Failed,
            });
        }
    }
    // A name whose old pod is still terminating waits for it to go.
    let wanted: Vec<ReplicaName> = desired
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !terminating.contains(n))
        .collect();
    let next_emergency = members::next_emergency(
        seen.replacements
            .iter()
            .map(|r| r.replacement.as_str())
            .chain(seen.taken.iter().map(ReplicaName::as_str)),
    );
    let mut actions = plan(
        &wanted,
        &observed,
        Policy {
            replace_failed: true,
            next_emergency,
        },
    )
    .actions;
    // Deterministic order (the plan iterates a map of observed pods), so that a
    // status that lists them is the same pass after pass.
    actions.sort_by_key(|a| match a {
        PlanAction::Stop(n) => (0, n.clone()),
        PlanAction::Replace { failed, .. } => (1, failed.clone()),
        PlanAction::Start(n) => (2, n.clone()),
    });
    // Failures only the operator's heartbeats see, whether or not a backoff holds
    // their replacement back: many at once say more about the operator than about
    // the replicas (see `hold_unconfirmed`).
    let disputed: Vec<ReplicaName> = actions
        .iter()
        .filter_map(|action| match action {
            PlanAction::Replace { failed, .. } => by_name
                .get(failed)
                .filter(|pod| vouched_by_kubelet(pod))
                .map(|_| failed.clone()),
            _ => None,
        })
        .collect();
    // A slot whose replicas never served waits before its next replacement; its
    // failed pod stays meanwhile (its logs say why).
    let mut held_back = Vec::new();
    actions.retain(|action| {
        let PlanAction::Replace { failed, .. } = action else {
            return true;
        };
        let Some(pod) = by_name.get(failed) else {
            return true;
        };
        match backoff_left(failed, pod, seen) {
            None => true,
            Some(wait) => {
                held_back.push(HeldBack {
                    replica: failed.clone(),
                    pod: pod.pod.clone(),
                    served: seen
                        .beats
                        .get(&pod.uid)
                        .is_some_and(|b| b.served_for.is_some()),
                    container_reason: pod.container_reason.clone(),
                    wait,
                    delay: backoff_delay(failed, seen),
                });
                false
            }
        }
    });

    let unconfirmed =
        hold_unconfirmed(desired, seen, &by_name, &disputed, &held_back, &mut actions);
    let vouched: HashSet<String> = unconfirmed.held.iter().map(|p| p.uid.clone()).collect();

    let rollout = plan_rollout(desired, seen, &by_name, &surges, &actions);
    let mut serving: HashMap<ReplicaName, ServingPod> = by_name
        .iter()
        .map(|(n, pod)| (n.clone(), ServingPod::of(pod, seen, &vouched)))
        .collect();
    for (name, surge) in &rollout.handed_over {
        serving.insert(name.clone(), ServingPod::of(surge, seen, &vouched));
    }
    // Pods that will not start by themselves; a rollout's new pod is the rollout's
    // to report (RolloutStalled).
    let not_starting = by_name
        .iter()
        .filter_map(|(name, pod)| Some((name.clone(), (*pod).clone(), pod.start_failure.clone()?)))
        .collect();
    PassWork {
        extras,
        actions,
        held_back,
        unconfirmed,
        not_starting,
        rollout: RolloutWork {
            start: rollout.start,
            stalled: rollout.stalled,
        },
        serving,
        pod_of: by_name
            .into_iter()
            .map(|(n, pod)| (n, (pod.pod.clone(), pod.uid.clone())))
            .collect(),
    }
}

/// Pure: holds back the replacements of replicas that only this operator finds
/// failed — the kubelet still reports their pods Ready — beyond
/// `spec.heartbeat.maxUnconfirmedReplacements` at a time, and returns their pods.
///
/// The operator's heartbeats are one observer: when it cannot reach many pods at
/// once that the kubelet can (a fault on the operator's node, a NetworkPolicy), the
/// fault is likely its own, and replacing them all would empty every proxy's ring.
/// So, as Kubernetes' node lifecycle controller stops evicting when a whole zone
/// looks down and Envoy ejects at most `max_ejection_percent` of a cluster, it
/// replaces at most that many at a time — a replacement is in progress until its
/// new pod answers the operator — and the others keep serving on the kubelet's word
/// (the proxies take out what they themselves cannot reach). `disputed` are all such
/// failures this pass, `held_back` the replacements a backoff holds: when the
/// disputed are more than the budget, those held back keep serving too. A replica
/// that really died (its container exited, its pod is gone or NotReady) is not held.
fn hold_unconfirmed(
    desired: &[(ReplicaName, String)],
    seen: &Seen,
    by_name: &HashMap<ReplicaName, &ReplicaPod>,
    disputed: &[ReplicaName],
    held_back: &[HeldBack],
    actions: &mut Vec<PlanAction>,
) -> Unconfirmed {
    let answered = |pod: &ReplicaPod| {
        seen.beats
            .get(&pod.uid)
            .is_some_and(|b| b.served_for.is_some())
    };
    // Replacements in progress: those made on the operator's word alone until their
    // new pod answers it (or goes), and any pod the kubelet finds Ready that has
    // never answered the operator (a new leader does not know what its
    // predecessor replaced).
    let in_progress: Vec<ReplicaName> = desired
        .iter()
        .map(|(name, _)| name)
        .filter(|name| match by_name.get(*name) {
            None => seen.unconfirmed.contains(*name),
            Some(pod) => {
                !answered(pod)
                    && !matches!(pod.state, PodState::Exited | PodState::Terminating)
                    && (seen.unconfirmed.contains(*name) || vouched_by_kubelet(pod))
            }
        })
        .cloned()
        .collect();
    let mut budget = seen.max_unconfirmed.saturating_sub(in_progress.len());
    let mut held = Vec::new();
    let mut made = in_progress;
    actions.retain(|action| {
        let PlanAction::Replace {
            failed,
            replacement,
        } = action
        else {
            return true;
        };
        let Some(pod) = by_name.get(failed) else {
            return true;
        };
        if !vouched_by_kubelet(pod) {
            return true;
        }
        if budget > 0 {
            budget -= 1;
            made.push(replacement.clone());
            return true;
        }
        held.push((*pod).clone());
        false
    });
    if disputed.len() > seen.max_unconfirmed {
        // Those a backoff holds back keep serving on the kubelet's word too: the
        // operator's view is in doubt, and taking them all out would empty the ring.
        held.extend(
            held_back
                .iter()
                .filter(|h| disputed.contains(&h.replica))
                .filter_map(|h| by_name.get(&h.replica).map(|pod| (*pod).clone())),
        );
        // (In one order, so that the status says the same thing pass after pass.)
        held.sort_by(|a, b| a.pod.cmp(&b.pod));
    }
    Unconfirmed {
        held,
        in_progress: made,
    }
}

/// Failures only the operator saw, from [`hold_unconfirmed`].
struct Unconfirmed {
    /// The pods of replicas whose replacement is held: they keep serving.
    held: Vec<ReplicaPod>,
    /// Replacements made on the operator's word alone whose pod has not answered it
    /// yet, this pass's included.
    in_progress: Vec<ReplicaName>,
}

/// The kubelet says the pod runs and answers its readiness probe.
fn vouched_by_kubelet(pod: &ReplicaPod) -> bool {
    pod.state == PodState::Running && pod.kubelet_ready == Some(true)
}

/// The pod that stands for replica `name` among its pods: the one the status
/// names (the proxies route to it), else the one under the name's own pod name,
/// else an outdated one (a rollout replaces it in order), else the first.
fn standing_pod<'a>(name: &ReplicaName, pods: &[&'a ReplicaPod], seen: &Seen) -> &'a ReplicaPod {
    let primary = members::pod_name(name).ok();
    let by = |f: &dyn Fn(&ReplicaPod) -> bool| pods.iter().copied().find(|p| f(p));
    by(&|p| seen.status_pods.get(name) == Some(&p.pod))
        .or_else(|| by(&|p| primary.as_deref() == Some(p.pod.as_str())))
        .or_else(|| by(&|p| p.template.as_deref() != Some(seen.template.as_str())))
        .unwrap_or(pods[0])
}

/// What a pass does for the rollout of a new template.
struct RolloutPlan<'a> {
    /// Surge pods that serve: the status names them from this pass on, and the
    /// next pass deletes the outdated pod they stand in for.
    handed_over: Vec<(ReplicaName, &'a ReplicaPod)>,
    /// The next replica to roll, and the name of its new pod.
    start: Option<(ReplicaName, String)>,
    /// The new pod that failed, and why the rollout waits.
    stalled: Vec<(String, Problem)>,
}

/// Pure: one replica at a time, a pod of the current template is started beside
/// the outdated one (maxUnavailable 0); once its heartbeats answer, the status
/// names it (the proxies move the replica's ring entry to it: same name, so no
/// key moves) and the next pass deletes the outdated pod. A new pod that fails
/// stalls the rollout, with the outdated pod still serving, until the spec changes.
fn plan_rollout<'a>(
    desired: &[(ReplicaName, String)],
    seen: &Seen,
    standing: &HashMap<ReplicaName, &'a ReplicaPod>,
    surges: &BTreeMap<ReplicaName, &'a ReplicaPod>,
    actions: &[PlanAction],
) -> RolloutPlan<'a> {
    let mut rollout = RolloutPlan {
        handed_over: Vec::new(),
        start: None,
        stalled: Vec::new(),
    };
    let health = |pod: &ReplicaPod| seen.health(&pod.uid);
    for (name, surge) in surges {
        match health(surge) {
            // Handed over only once the kubelet agrees too: a proxy takes a member
            // out while its pod's Ready condition says false, and the handover must
            // not make the member leave any proxy's ring.
            Some(h) if h.routable() && surge.kubelet_ready != Some(false) => {
                rollout.handed_over.push((name.clone(), *surge))
            }
            // A pod that cannot start stalls the rollout at once (no grace to wait:
            // the kubelet says it will not start by itself).
            h if h.is_some_and(|h| h.health == Health::Failed) || surge.start_failure.is_some() => {
                let why = surge
                    .container_reason
                    .as_deref()
                    .map_or_else(String::new, |r| format!(" (container: {r})"));
                let problem = Problem {
                    reason: "RolloutStalled",
                    message: format!(
                        "pod {} of the new template for replica {name} failed{why}; \
                         the rollout waits until it starts or the spec changes, pod {} \
                         still serves",
                        surge.pod,
                        standing.get(name).map_or("", |p| p.pod.as_str())
                    ),
                };
                rollout.stalled.push((surge.pod.clone(), problem));
            }
            _ => {}
        }
    }
    if !surges.is_empty() {
        return rollout;
    }
    let acted_on = |name: &ReplicaName| {
        actions.iter().any(|a| match a {
            PlanAction::Start(n) | PlanAction::Stop(n) => n == name,
            PlanAction::Replace { failed, .. } => failed == name,
        })
    };
    let next = desired.iter().map(|(n, _)| n).find(|name| {
        standing.get(*name).is_some_and(|pod| {
            pod.template.as_deref() != Some(seen.template.as_str())
                && pod.state != PodState::Terminating
                && health(pod).is_none_or(|h| h.health != Health::Failed)
        }) && !acted_on(name)
    });
    if let Some(name) = next {
        let primary = members::pod_name(name).unwrap_or_default();
        // Not this pool's pods' names, nor those held by others (a 409 would stall it).
        let taken =
            |pod: &str| seen.pods.iter().any(|p| p.pod == pod) || seen.held_elsewhere.contains(pod);
        let pod = if taken(&primary) {
            format!("{primary}-{}", &seen.template[..5])
        } else {
            primary
        };
        rollout.start = Some((name.clone(), pod));
    }
    rollout
}

/// The pod that serves a replica as this pass leaves it: what the status names.
#[derive(Clone, Debug)]
struct ServingPod {
    pod: String,
    routable: bool,
    /// Made from the current template.
    current: bool,
}

impl ServingPod {
    /// `vouched`: pods whose failure only the operator sees, kept serving on the
    /// kubelet's word (see [`plan_pass`]).
    fn of(pod: &ReplicaPod, seen: &Seen, vouched: &HashSet<String>) -> Self {
        let routable = match seen.beats.get(&pod.uid) {
            Some(beat) => beat.state.routable() || vouched.contains(&pod.uid),
            // No heartbeat round has answered for it yet (a new leader's first pass,
            // a round slower than the wait): the status keeps what it said.
            None => seen.status_ready.contains(&pod.pod),
        };
        Self {
            pod: pod.pod.clone(),
            routable,
            current: pod.template.as_deref() == Some(seen.template.as_str()),
        }
    }
}

/// Deletes one pod (a `failed` one with a short grace, see `pods.rs`), records the
/// first error and the Event. A pod deleted (or found gone) is not seen again by the
/// next passes, even while the watch still shows it.
async fn remove_pod(
    ctx: &Context,
    target: &Target<'_>,
    done: &mut Done,
    (pod, uid): (&str, &str),
    failed: bool,
    event: PodEvent,
) {
    if let Err(fenced) = ctx.may_write() {
        note(&mut done.first_error, Err(fenced));
        return;
    }
    let call = async {
        if failed {
            target.pods.delete_failed(pod).await
        } else {
            target.pods.delete(pod).await
        }
    };
    let result = match ctx.while_leading(call).await {
        Some(result) => result.map_err(Error::from),
        None => Err(Error::NotLeader),
    };
    if result.is_ok() && !uid.is_empty() {
        ctx.with_memory(&target.key, &target.uid, |m| {
            m.deleted.insert(uid.to_owned())
        });
    }
    note(&mut done.first_error, result);
    publish_event(ctx, target, pod, event).await;
}

/// Writes the status this pass leaves, if it changed (and this process still leads).
async fn report(
    target: &Target<'_>,
    ctx: &Context,
    seen: &Seen,
    done: &mut Done,
) -> Result<(), Error> {
    let spec = &target.pool.spec;
    let old_status = target.pool.status.clone().unwrap_or_default();
    let live = members::live_replacements(spec, &seen.replacements);
    ctx.with_memory(&target.key, &target.uid, |m| m.replacements = live.clone());
    // Each member with the pod that serves it (a rollout's new pod, once it does).
    let desired_now: Option<Vec<(ReplicaName, String)>> = seen.desired.as_ref().and_then(|_| {
        let desired = members::desired_members(spec, &members::replacement_map(&live)).ok()?;
        Some(
            desired
                .into_iter()
                .map(|(name, pod)| {
                    let pod = done.serving.get(&name).map_or(pod, |s| s.pod.clone());
                    (name, pod)
                })
                .collect(),
        )
    });
    // Unrealisable spec: the last realised members, as the status named them.
    let desired_now = desired_now.or_else(|| {
        seen.desired.is_none().then(|| {
            old_status
                .members
                .iter()
                .filter_map(|m| Some((ReplicaName::parse(&m.name).ok()?, m.pod.clone())))
                .collect()
        })
    });
    let ready: HashSet<ReplicaName> = done
        .serving
        .iter()
        .filter(|(_, pod)| pod.routable)
        .map(|(n, _)| n.clone())
        .collect();
    let existing: HashSet<ReplicaName> =
        done.serving.keys().chain(&done.created).cloned().collect();
    let mut status = compute_status(
        spec,
        target.pool.metadata.generation,
        &old_status,
        desired_now.as_deref(),
        &existing,
        &ready,
        live,
        &seen.problems,
        ctx.now(),
    );
    // The scale subresource's label selector (an HPA reads it); a name that cannot
    // be a label value has none (and a Degraded condition says why).
    status.selector = (target.name.len() <= 63).then(|| format!("{POOL_LABEL}={}", target.name));
    status.updated_replicas = status
        .members
        .iter()
        .filter(|m| {
            let name = ReplicaName::parse(&m.name).ok();
            // A pod created this pass is made from the current template.
            name.as_ref().is_some_and(|n| {
                done.serving
                    .get(n)
                    .map_or(done.created.contains(n), |s| s.current)
            })
        })
        .count() as u32;
    ctx.metrics.pool_status(
        &target.namespace,
        &target.name,
        spec.replicas,
        status.ready_replicas,
        status.updated_replicas,
    );
    let progress = progress_conditions(
        spec,
        &status,
        &seen.problems,
        &old_status,
        target.pool.metadata.generation,
        &ctx.now(),
    );
    status.conditions.extend(progress);
    // A condition that turns bad is a Warning Event too, once while it holds: a
    // pool that stops being available because replicas stopped being ready (not one
    // that grows, nor a new one starting), and a spec that cannot be carried out (the
    // other problems behind Degraded have Events of their own).
    let bad = |type_: &str, value: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == value)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((_, message)) = bad("Available", "False") {
        let fell = status.ready_replicas < old_status.ready_replicas;
        let warned = ctx.with_memory(&target.key, &target.uid, |m| {
            m.warned.contains("Unavailable")
        });
        if fell || warned {
            let event = PodEvent {
                type_: EventType::Warning,
                reason: "Unavailable",
                action: "Reconcile",
                note: message,
            };
            warn_once(ctx, target, "Unavailable", "", event, done).await;
        }
    }
    if let Some((reason, message)) = bad("Degraded", "True")
        && reason == "InvalidSpec"
    {
        let event = PodEvent {
            type_: EventType::Warning,
            reason: "InvalidSpec",
            action: "Reconcile",
            note: message.clone(),
        };
        warn_once(
            ctx,
            target,
            &format!("InvalidSpec/{message}"),
            "",
            event,
            done,
        )
        .await;
    }
    if status != old_status {
        let pools: Api<ServerPool> = Api::namespaced(ctx.client.clone(), &target.namespace);
        // Server-side apply under the controller's field manager: the status is this
        // controller's, and a list it no longer sends is removed whole.
        let params = PatchParams::apply(CONTROLLER_NAME).force();
        let patch = Patch::Apply(json!({
            "apiVersion": "ringlb.dev/v1alpha1",
            "kind": "ServerPool",
            "status": status,
        }));
        ctx.while_leading(pools.patch_status(&target.name, &params, &patch))
            .await
            .ok_or(Error::NotLeader)??;
    }
    Ok(())
}

/// Keeps the first error of a pass; the pass goes on so that one failed call does
/// not hold back the others, and the error policy retries it.
fn note(first: &mut Option<Error>, result: Result<(), Error>) {
    if let Err(error) = result {
        tracing::warn!(%error, "Kubernetes API call failed");
        first.get_or_insert(error);
    }
}

/// Creates the pod of `name` and records an Event; true when it was created. A pod
/// name taken by something that is not this pool's, or a name that cannot be a
/// pod, goes to `problems`; a failed API call to `first_error`.
async fn create(
    ctx: &Context,
    target: &Target<'_>,
    (name, pod): (&ReplicaName, &str),
    why: &str,
    seen: &mut Seen,
    done: &mut Done,
) -> bool {
    let problems = &mut seen.problems;
    let first_error = &mut done.first_error;
    let Some(created) = ctx.while_leading(target.pods.create(name, pod)).await else {
        note(first_error, Err(Error::NotLeader));
        return false;
    };
    match created {
        Ok(_) => {
            let event = PodEvent {
                type_: EventType::Normal,
                reason: "Created",
                action: "CreatePod",
                note: format!("created pod {pod} for replica {name}{why}"),
            };
            publish_event(ctx, target, pod, event).await;
            true
        }
        Err(CreateError::Api(error)) if is_status(&error, 409) => {
            // This pool's own pod, made by an earlier pass the watch has not shown yet?
            match target.pods.owns(pod).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(error) => {
                    note(first_error, Err(error.into()));
                    return false;
                }
            }
            // The next pass gives the slot another name.
            ctx.with_memory(&target.key, &target.uid, |m| {
                m.conflicts.insert(pod.to_owned())
            });
            let problem =
                format!("pod {pod} for replica {name} already exists and is not this pool's");
            let event = PodEvent {
                type_: EventType::Warning,
                reason: "PodConflict",
                action: "CreatePod",
                note: problem.clone(),
            };
            publish_event(ctx, target, pod, event).await;
            problems.push(Problem {
                reason: "PodConflict",
                message: problem,
            });
            false
        }
        Err(CreateError::Api(error)) if [400, 403, 422].iter().any(|c| is_status(&error, *c)) => {
            // A quota, an admission webhook or a policy said no: the same create will
            // be refused again until someone acts, so say so where people look.
            let problem = format!("the API server refused pod {pod} of replica {name}: {error}");
            let event = PodEvent {
                type_: EventType::Warning,
                reason: "FailedCreate",
                action: "CreatePod",
                note: problem.clone(),
            };
            warn_once(
                ctx,
                target,
                &format!("FailedCreate/{pod}"),
                pod,
                event,
                done,
            )
            .await;
            seen.problems.push(Problem {
                reason: "FailedCreate",
                message: problem,
            });
            // Retried on the error policy's backoff, not at every pass.
            note(&mut done.first_error, Err(error.into()));
            false
        }
        Err(CreateError::Api(error)) => {
            note(first_error, Err(error.into()));
            false
        }
        Err(CreateError::Naming(error)) => {
            problems.push(Problem::invalid_spec(error.to_string()));
            false
        }
    }
}

fn pod_reference(namespace: &str, pod: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(pod.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    }
}

/// Records a Warning Event about a condition that lasts (`key` says which) once,
/// while it holds: see [`PoolMemory::warned`].
async fn warn_once(
    ctx: &Context,
    target: &Target<'_>,
    key: &str,
    pod: &str,
    event: PodEvent,
    done: &mut Done,
) {
    done.warned.insert(key.to_owned());
    if ctx.may_write().is_err() {
        // Not marked as sent: the next leader's pass sends it.
        return;
    }
    let new = ctx.with_memory(&target.key, &target.uid, |m| {
        m.warned.insert(key.to_owned())
    });
    if new {
        publish_event(ctx, target, pod, event).await;
    }
}

/// What an Event about one of the pool's pods says.
struct PodEvent {
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    note: String,
}

impl PodEvent {
    fn deleted(note: String) -> Self {
        Self {
            type_: EventType::Normal,
            reason: "Deleted",
            action: "DeletePod",
            note,
        }
    }
}

/// Records an Event on the pool about pod `pod` (none: the pool itself). Events are
/// for people: one that cannot be written is logged, never fatal.
async fn publish_event(ctx: &Context, target: &Target<'_>, pod: &str, event: PodEvent) {
    tracing::info!(pool = %target.name, reason = event.reason, "{}", event.note);
    let event = Event {
        type_: event.type_,
        reason: event.reason.to_owned(),
        note: Some(event.note),
        action: event.action.to_owned(),
        secondary: (!pod.is_empty()).then(|| pod_reference(&target.namespace, pod)),
    };
    if let Some(Err(error)) = ctx
        .while_leading(ctx.recorder.publish(&event, &target.reference))
        .await
    {
        tracing::warn!(%error, "could not record an Event");
    }
}

/// Condition `type_` as a pass leaves it: it keeps its `lastTransitionTime` while its
/// status stays the same.
fn condition(
    old: &ServerPoolStatus,
    generation: Option<i64>,
    now: &Time,
    type_: &str,
    (status, reason): (&str, &str),
    message: String,
) -> Condition {
    let unchanged = old
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status);
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: unchanged
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    }
}

/// `Available` and `Progressing`, as a Deployment has them (what Argo CD's and Flux's
/// health checks read), from the status a pass leaves (`updatedReplicas` included)
/// and its problems. Pure.
///
/// Available: no more than one desired replica is not ready (the disruption a pool
/// is built to absorb), and at least one is. Progressing: `True` while the pool moves
/// toward its spec (scaling, rolling out, replicas starting) or has arrived
/// (`Complete`); `False`, with the reason, while something keeps it from moving.
pub fn progress_conditions(
    spec: &ServerPoolSpec,
    status: &ServerPoolStatus,
    problems: &[Problem],
    old: &ServerPoolStatus,
    generation: Option<i64>,
    now: &Time,
) -> [Condition; 2] {
    let desired = spec.replicas;
    let needed = desired.saturating_sub(1).max(desired.min(1));
    let ready = status.ready_replicas;
    let available = if ready >= needed {
        ("True", "MinimumReplicasAvailable")
    } else {
        ("False", "MinimumReplicasUnavailable")
    };
    // The operator's own blind spot does not stop the pool: it still moves.
    let blocked = problems.iter().find(|p| p.reason != "ReplicasUnreachable");
    let (progressing, message) = match blocked {
        Some(problem) => (("False", problem.reason), problem.message.clone()),
        None if status.replicas != desired || status.members.len() as u32 != desired => (
            ("True", "Scaling"),
            format!("{} of {desired} replicas have a pod", status.replicas),
        ),
        None if status.updated_replicas < desired => (
            ("True", "RollingOut"),
            format!(
                "{} of {desired} replicas run the current template",
                status.updated_replicas
            ),
        ),
        None if ready < desired => (
            ("True", "ReplicasStarting"),
            format!("{ready} of {desired} replicas ready"),
        ),
        None => (
            ("True", "Complete"),
            format!("{desired} replicas ready and up to date"),
        ),
    };
    [
        condition(
            old,
            generation,
            now,
            "Available",
            available,
            format!("{ready} of {desired} replicas ready, {needed} needed"),
        ),
        condition(old, generation, now, "Progressing", progressing, message),
    ]
}

/// The status a pass leaves: pure, so that it is tested without an API server.
///
/// `existing` holds the desired names that have a pod, `ready` those whose
/// heartbeats succeed. A condition keeps its `lastTransitionTime` while its status
/// stays the same, so a converged pool gives the same status pass after pass.
#[allow(clippy::too_many_arguments)]
pub fn compute_status(
    spec: &ServerPoolSpec,
    generation: Option<i64>,
    old: &ServerPoolStatus,
    desired: Option<&[(ReplicaName, String)]>,
    existing: &HashSet<ReplicaName>,
    ready: &HashSet<ReplicaName>,
    replacements: Vec<ReplacementStatus>,
    problems: &[Problem],
    now: Time,
) -> ServerPoolStatus {
    let members: Vec<MemberStatus> = desired
        .unwrap_or_default()
        .iter()
        .map(|(name, pod)| MemberStatus {
            name: name.to_string(),
            pod: pod.clone(),
            ready: ready.contains(name),
        })
        .collect();
    let replicas = members
        .iter()
        .filter(|m| existing.iter().any(|e| e.as_str() == m.name))
        .count() as u32;
    let ready_replicas = members.iter().filter(|m| m.ready).count() as u32;
    let all_ready = problems.is_empty()
        && ready_replicas == spec.replicas
        && members.len() as u32 == spec.replicas;
    let ready_condition = if all_ready {
        ("True", "AllReplicasReady")
    } else {
        ("False", "ReplicasNotReady")
    };
    // The first problem names the reason (a spec that cannot be carried out comes
    // first, as it is found first); the message has them all.
    let degraded = match problems.first() {
        None => ("False", "AsExpected", String::new()),
        Some(first) => (
            "True",
            first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let condition = |type_: &str, (status, reason): (&str, &str), message: String| {
        condition(old, generation, &now, type_, (status, reason), message)
    };
    ServerPoolStatus {
        // Filled by the caller, which knows the pool's name and its pods.
        selector: None,
        updated_replicas: 0,
        replicas,
        ready_replicas,
        members,
        emergency_replacements: replacements,
        observed_generation: generation,
        conditions: vec![
            condition(
                "Ready",
                ready_condition,
                format!("{ready_replicas}/{} replicas ready", spec.replicas),
            ),
            condition("Degraded", (degraded.0, degraded.1), degraded.2),
        ],
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
