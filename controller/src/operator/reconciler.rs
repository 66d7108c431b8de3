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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::crd::{ReplacementStatus, ServerPool};
use super::heartbeats::{BeatConfig, Heartbeats};
use super::leader::Leadership;
use super::members;
pub use super::pass_plan::{CRASH_LOOP_RESET, STUCK_TERMINATING};
use super::pass_plan::{PassInput, ServingPod, plan_pass};
use super::pods::{
    self, CreateError, KubeRuntime, POOL_LABEL, PodState, PodTemplate, ReplicaPod, is_status,
    replica_pod,
};
use super::status::{Problem, StatusInput, compute_status};
use crate::metrics::Metrics;
use crate::pool::Action as PlanAction;
use crate::pool::health::Prober;
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
/// A pass running longer than this is stuck (every API call it makes has its own
/// timeout): `/healthz` fails so that the kubelet restarts the operator.
pub const STUCK_PASS: Duration = Duration::from_secs(300);
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

/// What a pass found: the plan's input, and what cannot be carried out as written.
struct Seen {
    input: PassInput,
    /// What cannot be carried out as written: reported in the Degraded condition.
    problems: Vec<Problem>,
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
    let input = PassInput {
        pods,
        beats,
        replacements,
        desired,
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
    };
    Ok(Seen { input, problems })
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

/// Plans against what was seen and carries the plan out: pods created, deleted,
/// replaced, an Event for each.
async fn apply(target: &Target<'_>, ctx: &Context, seen: &mut Seen) -> Done {
    let mut done = Done::default();
    let work = plan_pass(&seen.input);
    if seen.input.desired.is_none() {
        done.serving = work.serving;
        return done;
    }
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
            seen.input.max_unconfirmed
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
                let served = held_elsewhere || seen.input.served_long(&uid);
                seen.input.replacements = members::record_replacement(
                    &seen.input.replacements,
                    &failed,
                    &replacement,
                    served,
                );
                // Remembered before any pod changes, so that no later pass
                // brings the failed name back.
                ctx.with_memory(&target.key, &target.uid, |m| {
                    m.replacements = seen.input.replacements.clone();
                });
                ctx.metrics.pool_replaced(&target.namespace, &target.name);
                let failed_pod = seen.input.pods.iter().find(|p| p.uid == uid);
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
            seen.input.template,
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
    let live = members::live_replacements(spec, &seen.input.replacements);
    ctx.with_memory(&target.key, &target.uid, |m| m.replacements = live.clone());
    // Each member with the pod that serves it (a rollout's new pod, once it does).
    let desired_now: Option<Vec<(ReplicaName, String)>> =
        seen.input.desired.as_ref().and_then(|_| {
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
        seen.input.desired.is_none().then(|| {
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
    // Members that run the current template (a pod created this pass is made from it).
    let current: HashSet<ReplicaName> = done
        .serving
        .iter()
        .filter(|(_, pod)| pod.current)
        .map(|(n, _)| n)
        .chain(
            done.created
                .iter()
                .filter(|n| !done.serving.contains_key(*n)),
        )
        .cloned()
        .collect();
    let status = compute_status(&StatusInput {
        spec,
        name: &target.name,
        generation: target.pool.metadata.generation,
        old: &old_status,
        members: desired_now.as_deref(),
        existing: &existing,
        ready: &ready,
        current: &current,
        replacements: &live,
        problems: &seen.problems,
        now: ctx.now(),
    });
    ctx.metrics.pool_status(
        &target.namespace,
        &target.name,
        spec.replicas,
        status.ready_replicas,
        status.updated_replicas,
    );
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

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
