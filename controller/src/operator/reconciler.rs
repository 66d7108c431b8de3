//! The reconciler: one pass per `ServerPool` change, pod change, change of a pod's
//! health (the pool's heartbeat task, `pod_probes.rs`, asks for it) or resync. It
//! drives the same [`plan`](crate::pool::plan) as the local supervisor:
//!
//! observe (pods from the watch's store, health from the heartbeat task: `observe.rs`)
//! → the pass's plan (`pass_plan.rs`, pure) → create, delete, replace pods (an Event
//! for each: `events.rs`) → status (`status.rs`, pure), written only when it changed.
//! This file makes the Kubernetes calls; `context.rs` holds what every pass shares.
//!
//! A desired replica without a pod gets one under its name, so a pod deleted from
//! outside comes back as it was; a replica whose heartbeats fail `failureThreshold`
//! times in a row (or whose container exited) is replaced by `emergency_<n>`, whose
//! pod is `emergency-<n>`, and the replacement is recorded in the status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

pub use super::context::{Context, Error};
use super::context::{PassInProgress, PoolPass, note, pool_key};
use super::crd::{ReplacementStatus, ServerPool, ServerPoolStatus};
use super::events::{PodEvent, publish_event, warn_of_conditions, warn_once};
use super::observe::{Observation, observe};
use super::owned::{ensure_admin_secret, ensure_budget};
use super::pass_plan::{self as pass_plan, PassPlan, ServingPod, plan_pass};
pub use super::pass_plan::{CRASH_LOOP_RESET, STUCK_TERMINATING};
use super::pod_slots;
use super::pods::{CreateError, POOL_LABEL, is_status};
pub use super::status::Problem;
use super::status::{StatusInput, compute_status};
use crate::pool::Action as PlanAction;
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

/// Runs the controller for every `ServerPool` of `namespace` (of every namespace when
/// `None`) until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    let pools: Api<ServerPool> = scoped(&ctx.client, namespace);
    let pods: Api<Pod> = scoped(&ctx.client, namespace);
    let (writer, budget_writer, wakes) = ctx.take_feeds();
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
    ctx.pod_probes.follow_pools(controller.store());
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
    ctx.pod_probes.stop_all();
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
        ctx.pod_probes.forget(&ObjectRef::from_obj(&*pool));
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
    let target = PoolPass::of(&pool, &ctx)?;
    let _in_progress = PassInProgress::begin(&ctx, &target.key);
    let observed = observe(&target, &ctx).await?;
    // Observing took time (it waits for the pool's first heartbeat round): check again that this process still leads
    // before it writes. A leader paused or cut off meanwhile has stopped by now.
    if !ctx.leadership.is_leader() {
        return Ok(Action::requeue(STANDBY_RECHECK));
    }
    let mut applied = apply(&target, &ctx, &observed).await;
    match ensure_budget(&target, &ctx, &mut applied.warned).await {
        Ok(conflict) => applied.problems.extend(conflict),
        Err(error) => note(&mut applied.first_error, Err(error)),
    }
    note(
        &mut applied.first_error,
        ensure_admin_secret(&target, &ctx).await,
    );
    let reported = report(&target, &ctx, &observed, &mut applied).await;
    ctx.with_memory(&target.key, &target.uid, |m| {
        m.warned.retain(|key| applied.warned.contains(key));
    });
    reported?;
    if let Some(error) = applied.first_error {
        return Err(error);
    }
    ctx.with_memory(&target.key, &target.uid, |m| m.failures = 0);
    Ok(Action::requeue(
        applied.retry_in.map_or(RESYNC, |wait| wait.min(RESYNC)),
    ))
}

/// What a pass did, and what went wrong.
#[derive(Default)]
struct Applied {
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
    /// What keeps the pool from its spec that the pass found as it went (after
    /// those the observation found): reported in the Degraded condition.
    problems: Vec<Problem>,
    /// The slots' replacements as this pass leaves them: those observed, and the
    /// ones it made.
    replacements: Vec<ReplacementStatus>,
}

/// Plans against what was observed and carries the plan out: pods created, deleted,
/// replaced, an Event for each. What it did and what went wrong is in the answer.
async fn apply(target: &PoolPass<'_>, ctx: &Context, observed: &Observation) -> Applied {
    let plan = plan_pass(&observed.input);
    let mut applied = Applied {
        replacements: observed.input.replacements.clone(),
        ..Applied::default()
    };
    if observed.input.desired.is_none() {
        // A spec that cannot be carried out changes nothing (see `plan_pass`).
        applied.serving = plan.serving;
        return applied;
    }
    report_waiting(target, ctx, observed, &plan, &mut applied).await;
    for extra in &plan.extras {
        let event = PodEvent::deleted(extra.why.clone());
        let pod = (extra.pod.as_str(), extra.uid.as_str());
        remove_pod(ctx, target, &mut applied, pod, false, event).await;
    }
    for action in &plan.actions {
        match action {
            PlanAction::Start(n) => {
                let pod = pod_slots::pod_name(n).unwrap_or_default();
                if create(ctx, target, (n, &pod), "", &mut applied).await {
                    applied.created.insert(n.clone());
                }
            }
            PlanAction::Stop(n) => {
                let (pod, uid) = plan.pod_of.get(n).cloned().unwrap_or_default();
                let event = PodEvent::deleted(format!(
                    "deleted pod {pod}: replica {n} is no longer desired"
                ));
                remove_pod(ctx, target, &mut applied, (&pod, &uid), false, event).await;
                applied.gone.insert(n.clone());
            }
            PlanAction::Replace {
                failed,
                replacement,
            } => {
                replace(
                    ctx,
                    target,
                    observed,
                    &plan,
                    (failed, replacement),
                    &mut applied,
                )
                .await;
            }
        }
    }
    if let Some((name, pod)) = &plan.rollout.start {
        let why = format!(
            " from the new template {} (rolling update: it serves once its heartbeats \
             answer and the kubelet marks it Ready, then pod {} goes)",
            observed.input.template,
            plan.pod_of.get(name).map_or("", |(p, _)| p.as_str())
        );
        create(ctx, target, (name, pod), &why, &mut applied).await;
    }
    applied.serving = plan
        .serving
        .into_iter()
        .filter(|(n, _)| !applied.gone.contains(n))
        .collect();
    applied
}

/// What keeps the plan's replicas waiting, said where people look (a Warning Event
/// once while it lasts, a problem behind Degraded): pods that cannot start, failures
/// held on the kubelet's word, replacements held back by a backoff, a stalled rollout.
async fn report_waiting(
    target: &PoolPass<'_>,
    ctx: &Context,
    observed: &Observation,
    plan: &PassPlan,
    applied: &mut Applied,
) {
    for (name, pod, failure) in &plan.not_starting {
        let problem = pass_plan::start_failure(name, pod, failure);
        let event = PodEvent::warning(failure.reason, "StartPod", problem.message.clone());
        // One Event per pod and kind of failure: the kubelet alternates ErrImagePull
        // and ImagePullBackOff at each retry of a pull.
        let class = match failure.reason {
            "ErrImagePull" | "ImagePullBackOff" => "ImagePull",
            other => other,
        };
        let key = format!("{class}/{}", pod.uid);
        warn_once(ctx, target, &key, &pod.pod, event, &mut applied.warned).await;
        applied.problems.push(problem);
    }
    ctx.with_memory(&target.key, &target.uid, |m| {
        m.unconfirmed = plan.unconfirmed.in_progress.iter().cloned().collect();
    });
    if let Some(problem) = plan.unconfirmed.problem(observed.input.max_unconfirmed) {
        let first = &plan.unconfirmed.held[0].pod;
        let event = PodEvent::warning(problem.reason, "ReplacePod", problem.message.clone());
        warn_once(
            ctx,
            target,
            problem.reason,
            first,
            event,
            &mut applied.warned,
        )
        .await;
        applied.problems.push(problem);
    }
    for held in &plan.held_back {
        applied.problems.push(Problem {
            reason: "ReplacementBackoff",
            message: held.message(),
        });
    }
    applied.retry_in = plan.held_back.iter().map(|h| h.wait).min();
    ctx.metrics
        .pool_backoffs(&target.namespace, &target.name, plan.held_back.len());
    for (pod, stalled) in &plan.rollout.stalled {
        let event = PodEvent::warning(stalled.reason, "RollOut", stalled.message.clone());
        let key = format!("RolloutStalled/{pod}");
        warn_once(ctx, target, &key, pod, event, &mut applied.warned).await;
        applied.problems.push(stalled.clone());
    }
}

/// Replaces failed replica `failed` by `replacement`: records the replacement, then
/// deletes the failed pod and creates the new one.
async fn replace(
    ctx: &Context,
    target: &PoolPass<'_>,
    observed: &Observation,
    plan: &PassPlan,
    (failed, replacement): (&ReplicaName, &ReplicaName),
    applied: &mut Applied,
) {
    // Recorded only by a process that may still write: a replacement
    // remembered but never made would rename a healthy replica later.
    if let Err(fenced) = ctx.may_write() {
        note(&mut applied.first_error, Err(fenced));
        return;
    }
    let (pod, uid) = plan.pod_of.get(failed).cloned().unwrap_or_default();
    // A name whose pod name is held elsewhere never had a pod: it is
    // renamed, not failed (no backoff).
    let held_elsewhere = pod.is_empty();
    let served = held_elsewhere || observed.input.served_long(&uid);
    applied.replacements =
        pod_slots::record_replacement(&applied.replacements, failed, replacement, served);
    // Remembered before any pod changes, so that no later pass
    // brings the failed name back.
    ctx.with_memory(&target.key, &target.uid, |m| {
        m.replacements = applied.replacements.clone();
    });
    ctx.metrics.pool_replaced(&target.namespace, &target.name);
    let failed_pod = observed.input.pods.iter().find(|p| p.uid == uid);
    let why = pass_plan::replacement_reason(failed_pod, held_elsewhere);
    let pod_shown = if held_elsewhere {
        pod_slots::pod_name(failed).unwrap_or_default()
    } else {
        pod.clone()
    };
    let note = format!("replica {failed} (pod {pod_shown}): {why}; replaced by {replacement}");
    let event = PodEvent::warning("Replaced", "ReplacePod", note);
    if held_elsewhere {
        publish_event(ctx, target, &pod_shown, event).await;
    } else {
        remove_pod(ctx, target, applied, (&pod, &uid), true, event).await;
    }
    applied.gone.insert(failed.clone());
    let pod = pod_slots::pod_name(replacement).unwrap_or_default();
    if create(ctx, target, (replacement, &pod), "", applied).await {
        applied.created.insert(replacement.clone());
    }
}

/// Deletes one pod (a `failed` one with a short grace, see `pods.rs`), records the
/// first error and the Event. A pod deleted (or found gone) is not seen again by the
/// next passes, even while the watch still shows it.
async fn remove_pod(
    ctx: &Context,
    target: &PoolPass<'_>,
    applied: &mut Applied,
    (pod, uid): (&str, &str),
    failed: bool,
    event: PodEvent,
) {
    if let Err(fenced) = ctx.may_write() {
        note(&mut applied.first_error, Err(fenced));
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
    note(&mut applied.first_error, result);
    publish_event(ctx, target, pod, event).await;
}

/// Writes the status this pass leaves, if it changed (and this process still leads).
async fn report(
    target: &PoolPass<'_>,
    ctx: &Context,
    observed: &Observation,
    applied: &mut Applied,
) -> Result<(), Error> {
    let spec = &target.pool.spec;
    let old_status = target.pool.status.clone().unwrap_or_default();
    let live = pod_slots::live_replacements(spec, &applied.replacements);
    ctx.with_memory(&target.key, &target.uid, |m| m.replacements = live.clone());
    let status = status_of(target, ctx, observed, applied, &live, &old_status);
    ctx.metrics.pool_status(
        &target.namespace,
        &target.name,
        spec.replicas,
        status.ready_replicas,
        status.updated_replicas,
    );
    warn_of_conditions(target, ctx, &status, &old_status, &mut applied.warned).await;
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

/// The status as `applied` leaves the pool, `live` its replacements still in use.
fn status_of(
    target: &PoolPass<'_>,
    ctx: &Context,
    observed: &Observation,
    applied: &Applied,
    live: &[ReplacementStatus],
    old: &ServerPoolStatus,
) -> ServerPoolStatus {
    let spec = &target.pool.spec;
    let realisable = observed.input.desired.is_some();
    let members = pass_plan::members_now(spec, live, realisable, &applied.serving, old);
    let serving = &applied.serving;
    let ready: HashSet<ReplicaName> = serving
        .iter()
        .filter(|(_, pod)| pod.routable)
        .map(|(n, _)| n.clone())
        .collect();
    let existing: HashSet<ReplicaName> = serving.keys().chain(&applied.created).cloned().collect();
    // Members that run the current template (a pod created this pass is made from it).
    let current: HashSet<ReplicaName> = serving
        .iter()
        .filter(|(_, pod)| pod.current)
        .map(|(n, _)| n)
        .chain(applied.created.iter().filter(|n| !serving.contains_key(*n)))
        .cloned()
        .collect();
    let problems = [observed.problems.as_slice(), &applied.problems].concat();
    compute_status(&StatusInput {
        spec,
        name: &target.name,
        generation: target.pool.metadata.generation,
        old,
        members: members.as_deref(),
        existing: &existing,
        ready: &ready,
        current: &current,
        replacements: live,
        problems: &problems,
        now: ctx.now(),
    })
}

/// Creates the pod of `name` and records an Event; true when it was created. A pod
/// name taken by something that is not this pool's, or a name that cannot be a
/// pod, goes to the problems; a failed API call to the first error.
async fn create(
    ctx: &Context,
    target: &PoolPass<'_>,
    (name, pod): (&ReplicaName, &str),
    why: &str,
    applied: &mut Applied,
) -> bool {
    let Some(created) = ctx.while_leading(target.pods.create(name, pod)).await else {
        note(&mut applied.first_error, Err(Error::NotLeader));
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
                    note(&mut applied.first_error, Err(error.into()));
                    return false;
                }
            }
            // The next pass gives the slot another name.
            ctx.with_memory(&target.key, &target.uid, |m| {
                m.conflicts.insert(pod.to_owned())
            });
            let problem =
                format!("pod {pod} for replica {name} already exists and is not this pool's");
            let event = PodEvent::warning("PodConflict", "CreatePod", problem.clone());
            publish_event(ctx, target, pod, event).await;
            applied.problems.push(Problem {
                reason: "PodConflict",
                message: problem,
            });
            false
        }
        Err(CreateError::Api(error)) if [400, 403, 422].iter().any(|c| is_status(&error, *c)) => {
            // A quota, an admission webhook or a policy said no: the same create will
            // be refused again until someone acts, so say so where people look.
            let problem = format!("the API server refused pod {pod} of replica {name}: {error}");
            let event = PodEvent::warning("FailedCreate", "CreatePod", problem.clone());
            let key = format!("FailedCreate/{pod}");
            warn_once(ctx, target, &key, pod, event, &mut applied.warned).await;
            applied.problems.push(Problem {
                reason: "FailedCreate",
                message: problem,
            });
            // Retried on the error policy's backoff, not at every pass.
            note(&mut applied.first_error, Err(error.into()));
            false
        }
        Err(CreateError::Api(error)) => {
            note(&mut applied.first_error, Err(error.into()));
            false
        }
        Err(CreateError::Naming(error)) => {
            applied
                .problems
                .push(Problem::invalid_spec(error.to_string()));
            false
        }
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
