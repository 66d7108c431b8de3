//! The first step of a pass: what the pool has (its pods from the watch's store,
//! their health from the heartbeat task) and what it should have, as plain data for
//! the pass's plan ([`PassInput`]) and the spec's problems.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;

use super::context::{Context, Error, PoolPass};
use super::crd::{ReplacementStatus, ServerPoolSpec};
use super::pass_plan::PassInput;
use super::pod_probes::BeatConfig;
use super::pod_slots;
use super::pods::{ReplicaPod, pool_label, replica_pod};
use super::status::Problem;
use crate::replica_name::ReplicaName;

/// What a pass found: the plan's input, and what cannot be carried out as written.
pub(super) struct Observation {
    pub(super) input: PassInput,
    /// What cannot be carried out as written: reported in the Degraded condition.
    pub(super) problems: Vec<Problem>,
}

/// Reads the pool's pods and their health, and works out what should exist.
pub(super) async fn observe(target: &PoolPass<'_>, ctx: &Context) -> Result<Observation, Error> {
    let spec = &target.pool.spec;
    let mut problems = spec_problems(spec, &target.name);
    let unnamable = target.name.len() > 63;
    let replacements = replacements(target, ctx);
    let pods = pool_pods(target, ctx);
    let beats = ctx
        .pod_probes
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
        pod_slots::desired_members(spec, &pod_slots::replacement_map(&replacements))
            .map_err(|error| problems.push(Problem::invalid_spec(error.to_string())))
            .ok()
    };
    let (taken, held_elsewhere) = names_in_namespace(target, ctx);
    let status_members = || target.pool.status.iter().flat_map(|s| &s.members);
    let input = PassInput {
        pods,
        beats,
        replacements,
        desired,
        taken,
        held_elsewhere,
        now: (ctx.clock)(),
        template: target.pods.template().hash(),
        status_pods: status_members()
            .filter_map(|m| Some((ReplicaName::parse(&m.name).ok()?, m.pod.clone())))
            .collect(),
        status_ready: status_members()
            .filter(|m| m.ready)
            .map(|m| m.pod.clone())
            .collect(),
        max_unconfirmed: spec.max_unconfirmed_replacements() as usize,
        unconfirmed: ctx.with_memory(&target.key, &target.uid, |m| m.unconfirmed.clone()),
    };
    Ok(Observation { input, problems })
}

/// What in the spec of pool `name` cannot be carried out as written.
fn spec_problems(spec: &ServerPoolSpec, name: &str) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    // Hashing is the proxies' business (they keep their last good ring): the pods
    // are still kept alive while it is wrong.
    if let Err(error) = spec.ring_config().and(spec.balance_factor()) {
        problems.push(Problem::invalid_spec(format!("spec.hashing: {error}")));
    }
    if let Err(error) = pod_slots::check_spec_weights(spec) {
        problems.push(Problem::invalid_spec(format!("spec.weights: {error}")));
    }
    if name.len() > 63 {
        problems.push(Problem::invalid_spec(
            "a pool name longer than 63 characters cannot label its pods".into(),
        ));
    }
    problems
}

/// The replacements of the cached status, and those this process made since.
fn replacements(target: &PoolPass<'_>, ctx: &Context) -> Vec<ReplacementStatus> {
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
    replacements
}

/// The pool's pods from the watch's store, less the pods this process deleted that
/// it still shows.
fn pool_pods(target: &PoolPass<'_>, ctx: &Context) -> Vec<ReplicaPod> {
    let listed: Vec<ReplicaPod> = ctx
        .pods
        .state()
        .iter()
        .filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(target.namespace.as_str())
                && pool_label(pod) == Some(target.name.as_str())
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
}

/// The replica names of every pool's pods in the namespace, and the pod names held
/// by pods that are not this pool's.
fn names_in_namespace(target: &PoolPass<'_>, ctx: &Context) -> (Vec<ReplicaName>, HashSet<String>) {
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
        .filter(|pod| pool_label(pod) != Some(target.name.as_str()))
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    // (Taken: a name that is free again later is not renamed for an old 409.)
    held_elsewhere.extend(ctx.with_memory(&target.key, &target.uid, |m| {
        std::mem::take(&mut m.conflicts)
    }));
    (taken, held_elsewhere)
}
