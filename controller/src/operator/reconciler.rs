//! The reconciler: one pass per `ServerPool` change, pod change or heartbeat
//! interval. It drives the same [`plan`] as the local supervisor:
//!
//! observe pods → heartbeat the running ones → health per pod (kept across passes)
//! → `plan(desired, observed)` → create, delete, replace pods (an Event for each)
//! → status, written only when it changed → requeue after the heartbeat interval.
//!
//! A desired replica without a pod gets one under its name, so a pod deleted from
//! outside comes back as it was; a replica whose heartbeats fail `failureThreshold`
//! times in a row (or whose container exited) is replaced by `emergency_<n>`, whose
//! pod is `emergency-<n>`, and the replacement is recorded in the status.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::crd::{MemberStatus, ReplacementStatus, ServerPool, ServerPoolSpec, ServerPoolStatus};
use super::leader::Leadership;
use super::members;
use super::pods::{
    CreateError, KubeRuntime, POOL_LABEL, PodState, PodTemplate, ReplicaPod, is_status,
};
use crate::health_state::{Health, HealthState};
use crate::metrics::Metrics;
use crate::pool::health::Prober;
use crate::pool::{Action as PlanAction, Observed, Policy, plan};
use crate::replica_name::ReplicaName;

/// The controller name in Events (`kubectl describe sp`).
pub const CONTROLLER_NAME: &str = "ringlb-operator";
/// Longest wait between retries of a failing pass.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How soon a standby looks again whether it leads now.
pub const STANDBY_RECHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("the ServerPool has no namespace or uid")]
    Incomplete,
}

/// What the reconciler remembers about a pool between passes.
#[derive(Default)]
struct PoolMemory {
    /// The pool's uid: a pool deleted and created again starts afresh.
    uid: String,
    /// Health per pod uid: a pod created again under the same name starts afresh.
    health: HashMap<String, HealthState>,
    /// Replacements made, which the cached pool may not show yet.
    replacements: Vec<ReplacementStatus>,
    /// Failed passes in a row, for the backoff.
    failures: u32,
}

/// Shared by every pass.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub prober: Arc<dyn Prober>,
    pub metrics: Arc<Metrics>,
    /// Time source of condition transitions (fixed in tests).
    pub clock: fn() -> Timestamp,
    /// Whether this process holds the leader lease: only the leader reconciles.
    pub leadership: Leadership,
    memory: Mutex<HashMap<String, PoolMemory>>,
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
        Self {
            client,
            recorder,
            prober,
            metrics,
            clock: Timestamp::now,
            leadership,
            memory: Mutex::new(HashMap::new()),
        }
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

    fn now(&self) -> Time {
        // Kubernetes keeps condition times to the second.
        let now = (self.clock)();
        Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
    }
}

/// Runs the controller for every `ServerPool` in `namespace` until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    namespace: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    let pools: Api<ServerPool> = Api::namespaced(ctx.client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    Controller::new(pools, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(POOL_LABEL))
        // A standby that takes over starts at once, not at its next recheck.
        .reconcile_all_on(ctx.leadership.gained())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((pool, _)) => tracing::debug!(pool = %pool.name, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// Retries a failed pass after 1 s, 2 s, 4 s, … up to a minute.
pub fn error_policy(pool: Arc<ServerPool>, error: &Error, ctx: Arc<Context>) -> Action {
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
    if pool.meta().deletion_timestamp.is_some() {
        // Its pods go with it (ownerReferences): nothing to do but forget it.
        ctx.memory.lock().unwrap().remove(&pool_key(&pool));
        return Ok(Action::await_change());
    }
    let target = Target::of(&pool, &ctx)?;
    let mut seen = observe(&target, &ctx).await?;
    // Observing took time (heartbeats): check again that this process still leads
    // before it writes. A leader paused or cut off meanwhile has stopped by now.
    if !ctx.leadership.is_leader() {
        return Ok(Action::requeue(STANDBY_RECHECK));
    }
    let done = apply(&target, &ctx, &mut seen).await;
    report(&target, &ctx, &seen, &done).await?;
    if let Some(error) = done.first_error {
        return Err(error);
    }
    ctx.with_memory(&target.key, &target.uid, |m| m.failures = 0);
    Ok(Action::requeue(pool.spec.health_settings().interval))
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
                },
            ),
            reference: pool.object_ref(&()),
            pool,
            namespace,
            name,
        })
    }

    fn pod_reference(&self, pod: &str) -> ObjectReference {
        pod_reference(&self.namespace, pod)
    }
}

/// What a pass found: the pool's pods and their health, and what it should have.
struct Seen {
    pods: Vec<ReplicaPod>,
    /// Health per pod uid.
    health: HashMap<String, HealthState>,
    /// Replacements recorded in the status and those made since (the cached pool may
    /// lag); the pass adds the ones it makes.
    replacements: Vec<ReplacementStatus>,
    /// The desired members and their pod names; `None` when the spec cannot be carried out.
    desired: Option<Vec<(ReplicaName, String)>>,
    /// What cannot be carried out as written: reported in the Degraded condition.
    problems: Vec<String>,
}

/// Lists the pods, heartbeats the running ones, and works out what should exist.
async fn observe(target: &Target<'_>, ctx: &Context) -> Result<Seen, Error> {
    let spec = &target.pool.spec;
    let mut problems: Vec<String> = Vec::new();
    if let Err(error) = spec.ring_config() {
        problems.push(format!("spec.hashing: {error}"));
    }
    if target.name.len() > 63 {
        problems.push("a pool name longer than 63 characters cannot label its pods".into());
    }
    let mut replacements = target
        .pool
        .status
        .as_ref()
        .map(|s| s.emergency_replacements.clone())
        .unwrap_or_default();
    for made in ctx.with_memory(&target.key, &target.uid, |m| m.replacements.clone()) {
        if !replacements.iter().any(|r| r.failed == made.failed) {
            replacements.push(made);
        }
    }
    let pods = target.pods.observe().await?;
    let health = heartbeat(ctx, &target.key, &target.uid, &pods, spec).await;
    let desired = if problems.is_empty() {
        members::desired_members(spec, &members::replacement_map(&replacements))
            .map_err(|error| problems.push(error.to_string()))
            .ok()
    } else {
        None
    };
    Ok(Seen {
        pods,
        health,
        replacements,
        desired,
        problems,
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
}

/// Plans against what was seen and carries the plan out: pods created, deleted,
/// replaced, an Event for each.
async fn apply(target: &Target<'_>, ctx: &Context, seen: &mut Seen) -> Done {
    let mut done = Done::default();
    let Some(desired) = seen.desired.clone() else {
        return done;
    };
    let work = plan_pass(&desired, seen);
    for extra in &work.extras {
        let result = target.pods.delete(extra).await;
        note(&mut done.first_error, result.map_err(Error::from));
        publish_event(
            ctx,
            &target.reference,
            EventType::Normal,
            "Deleted",
            "DeletePod",
            format!("deleted pod {extra} that names no replica of this pool"),
            Some(target.pod_reference(extra)),
        )
        .await;
    }
    for action in work.actions {
        match action {
            PlanAction::Start(n) => {
                if create(ctx, target, &n, &mut seen.problems, &mut done.first_error).await {
                    done.created.insert(n);
                }
            }
            PlanAction::Stop(n) => {
                let pod = work.pod_of.get(&n).cloned().unwrap_or_default();
                note(
                    &mut done.first_error,
                    target.pods.delete(&pod).await.map_err(Error::from),
                );
                publish_event(
                    ctx,
                    &target.reference,
                    EventType::Normal,
                    "Deleted",
                    "DeletePod",
                    format!("deleted pod {pod}: replica {n} is no longer desired"),
                    Some(target.pod_reference(&pod)),
                )
                .await;
                done.gone.insert(n);
            }
            PlanAction::Replace {
                failed,
                replacement,
            } => {
                let made = ReplacementStatus {
                    failed: failed.to_string(),
                    replacement: replacement.to_string(),
                };
                // Remembered before any pod changes, so that no later pass
                // brings the failed name back.
                ctx.with_memory(&target.key, &target.uid, |m| {
                    m.replacements.push(made.clone())
                });
                seen.replacements.push(made);
                ctx.metrics.replacements.inc();
                let pod = work.pod_of.get(&failed).cloned().unwrap_or_default();
                note(
                    &mut done.first_error,
                    target.pods.delete_now(&pod).await.map_err(Error::from),
                );
                publish_event(
                    ctx,
                    &target.reference,
                    EventType::Warning,
                    "Replaced",
                    "ReplacePod",
                    format!(
                        "replica {failed} (pod {pod}) failed its heartbeats: replaced by {replacement}"
                    ),
                    Some(target.pod_reference(&pod)),
                )
                .await;
                done.gone.insert(failed);
                if create(
                    ctx,
                    target,
                    &replacement,
                    &mut seen.problems,
                    &mut done.first_error,
                )
                .await
                {
                    done.created.insert(replacement);
                }
            }
        }
    }
    done
}

/// A pass's work, decided before any call: pods that name no replica, and the plan.
struct PassWork {
    extras: Vec<String>,
    actions: Vec<PlanAction>,
    /// The pod of each desired replica that has one.
    pod_of: HashMap<ReplicaName, String>,
}

/// Pure: which pod stands for which replica, and what [`plan`] makes of them.
fn plan_pass(desired: &[(ReplicaName, String)], seen: &Seen) -> PassWork {
    // One pod per name: the one with the expected pod name wins, others are extras.
    let mut by_name: HashMap<ReplicaName, &ReplicaPod> = HashMap::new();
    let mut extras: Vec<String> = Vec::new();
    let mut terminating: HashSet<ReplicaName> = HashSet::new();
    for pod in &seen.pods {
        match &pod.name {
            Some(n) if pod.state == PodState::Terminating => {
                terminating.insert(n.clone());
            }
            Some(n) if members::pod_name(n).as_deref() == Ok(pod.pod.as_str()) => {
                by_name.insert(n.clone(), pod);
            }
            _ if pod.state == PodState::Terminating => {}
            _ => extras.push(pod.pod.clone()),
        }
    }
    let observed: Vec<Observed> = by_name
        .iter()
        .map(|(n, pod)| Observed {
            name: n.clone(),
            health: seen
                .health
                .get(&pod.uid)
                .map_or(Health::Starting, |h| h.health),
        })
        .collect();
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
            .chain(
                seen.pods
                    .iter()
                    .filter_map(|p| p.name.as_ref().map(|n| n.as_str())),
            ),
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
    // Deterministic order: the plan iterates a map of observed pods.
    actions.sort_by_key(|a| match a {
        PlanAction::Stop(n) => (0, n.clone()),
        PlanAction::Replace { failed, .. } => (1, failed.clone()),
        PlanAction::Start(n) => (2, n.clone()),
    });
    PassWork {
        extras,
        actions,
        pod_of: by_name
            .into_iter()
            .map(|(n, pod)| (n, pod.pod.clone()))
            .collect(),
    }
}

/// Writes the status this pass leaves, if it changed (and this process still leads).
async fn report(target: &Target<'_>, ctx: &Context, seen: &Seen, done: &Done) -> Result<(), Error> {
    let spec = &target.pool.spec;
    let old_status = target.pool.status.clone().unwrap_or_default();
    let live = members::live_replacements(spec, &seen.replacements);
    ctx.with_memory(&target.key, &target.uid, |m| m.replacements = live.clone());
    let desired_now = seen
        .desired
        .as_ref()
        .and_then(|_| members::desired_members(spec, &members::replacement_map(&live)).ok());
    let pod_of: HashMap<&ReplicaName, &ReplicaPod> = seen
        .pods
        .iter()
        .filter(|p| p.state != PodState::Terminating)
        .filter_map(|p| Some((p.name.as_ref()?, p)))
        .filter(|(n, _)| !done.gone.contains(*n))
        .collect();
    let ready: HashSet<ReplicaName> = pod_of
        .iter()
        .filter(|(_, pod)| seen.health.get(&pod.uid).is_some_and(HealthState::routable))
        .map(|(n, _)| (*n).clone())
        .collect();
    let existing: HashSet<ReplicaName> = pod_of
        .keys()
        .map(|n| (*n).clone())
        .chain(done.created.iter().cloned())
        .collect();
    let status = compute_status(
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
    if status != old_status && ctx.leadership.is_leader() {
        let pools: Api<ServerPool> = Api::namespaced(ctx.client.clone(), &target.namespace);
        pools
            .patch_status(
                &target.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
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

/// Heartbeats every running pod at once and returns the health of every pod (by uid).
async fn heartbeat(
    ctx: &Context,
    key: &str,
    uid: &str,
    pods: &[ReplicaPod],
    spec: &ServerPoolSpec,
) -> HashMap<String, HealthState> {
    let settings = spec.health_settings();
    let targets: Vec<(String, Option<ReplicaName>, SocketAddr)> = pods
        .iter()
        .filter(|p| p.state == PodState::Running)
        .filter_map(|p| {
            Some((
                p.uid.clone(),
                p.name.clone(),
                SocketAddr::new(p.ip?, spec.port),
            ))
        })
        .collect();
    let beats = futures::future::join_all(targets.into_iter().map(|(uid, name, addr)| {
        let check = ctx.prober.check(addr, settings.timeout);
        async move { (uid, name, check.await) }
    }))
    .await;
    ctx.with_memory(key, uid, |m| {
        m.health.retain(|uid, _| pods.iter().any(|p| p.uid == *uid));
        for pod in pods {
            let state = m
                .health
                .entry(pod.uid.clone())
                .or_insert_with(HealthState::starting);
            if pod.state == PodState::Exited {
                state.mark_exited();
            }
        }
        for (uid, name, ok) in beats {
            if let Some(state) = m.health.get_mut(&uid) {
                let before = state.health;
                state.record_heartbeat(ok, settings.failure_threshold);
                if let Some(name) = &name {
                    if !ok {
                        ctx.metrics.heartbeat_failed(name);
                    }
                    if before != Health::Failed && state.health == Health::Failed {
                        tracing::warn!(pool = key, replica = %name, "replica failed its heartbeats");
                    }
                }
            }
        }
        m.health.clone()
    })
}

/// Creates the pod of `name` and records an Event; true when it was created. A pod
/// name taken by something that is not this pool's, or a name that cannot be a
/// pod, goes to `problems`; a failed API call to `first_error`.
async fn create(
    ctx: &Context,
    target: &Target<'_>,
    name: &ReplicaName,
    problems: &mut Vec<String>,
    first_error: &mut Option<Error>,
) -> bool {
    let pod = members::pod_name(name).unwrap_or_default();
    match target.pods.create(name).await {
        Ok(_) => {
            publish_event(
                ctx,
                &target.reference,
                EventType::Normal,
                "Created",
                "CreatePod",
                format!("created pod {pod} for replica {name}"),
                Some(target.pod_reference(&pod)),
            )
            .await;
            true
        }
        Err(CreateError::Api(error)) if is_status(&error, 409) => {
            let problem =
                format!("pod {pod} for replica {name} already exists and is not this pool's");
            publish_event(
                ctx,
                &target.reference,
                EventType::Warning,
                "PodConflict",
                "CreatePod",
                problem.clone(),
                Some(target.pod_reference(&pod)),
            )
            .await;
            problems.push(problem);
            false
        }
        Err(CreateError::Api(error)) => {
            note(first_error, Err(error.into()));
            false
        }
        Err(CreateError::Naming(error)) => {
            problems.push(error.to_string());
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

/// Events are for people: one that cannot be written is logged, never fatal.
async fn publish_event(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    pod: Option<ObjectReference>,
) {
    tracing::info!(pool = ?reference.name, reason, "{note}");
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: pod,
    };
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(%error, "could not record an Event");
    }
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
    problems: &[String],
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
    let degraded = if problems.is_empty() {
        ("False", "AsExpected", String::new())
    } else {
        ("True", "InvalidSpec", problems.join("; "))
    };
    let condition = |type_: &str, (status, reason): (&str, &str), message: String| {
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
    };
    ServerPoolStatus {
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
