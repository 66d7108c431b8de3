//! The status a reconciler pass leaves: members, counts, the scale subresource's
//! selector and the `Ready`, `Degraded`, `Available` and `Progressing` conditions,
//! computed from one [`StatusInput`]. Pure, so that it is tested without an API
//! server; the reconciler writes it only when it changed.

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::crd::{MemberStatus, ReplacementStatus, ServerPoolSpec, ServerPoolStatus};
use super::pods::POOL_LABEL;
use crate::replica_name::ReplicaName;

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

/// What a pass's status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    pub spec: &'a ServerPoolSpec,
    /// The pool's name: the value of the selector's label.
    pub name: &'a str,
    pub generation: Option<i64>,
    /// The status the pass found: a condition keeps its `lastTransitionTime` while
    /// its status stays the same.
    pub old: &'a ServerPoolStatus,
    /// Each member and the pod that serves it (none: no members).
    pub members: Option<&'a [(ReplicaName, String)]>,
    /// The members that have a pod.
    pub existing: &'a HashSet<ReplicaName>,
    /// The members whose heartbeats succeed.
    pub ready: &'a HashSet<ReplicaName>,
    /// The members whose pod is made from the current template.
    pub current: &'a HashSet<ReplicaName>,
    /// The slots' replacements still in use.
    pub replacements: &'a [ReplacementStatus],
    /// What keeps the pool from its spec, first found first.
    pub problems: &'a [Problem],
    pub now: Time,
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
pub fn progress_conditions(input: &StatusInput, status: &ServerPoolStatus) -> [Condition; 2] {
    let StatusInput {
        problems,
        old,
        generation,
        ref now,
        ..
    } = *input;
    let desired = input.spec.replicas;
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
/// A condition keeps its `lastTransitionTime` while its status stays the same, so a
/// converged pool gives the same status pass after pass.
pub fn compute_status(input: &StatusInput) -> ServerPoolStatus {
    let StatusInput {
        spec,
        name,
        generation,
        old,
        problems,
        ..
    } = *input;
    let members: Vec<MemberStatus> = input
        .members
        .unwrap_or_default()
        .iter()
        .map(|(name, pod)| MemberStatus {
            name: name.to_string(),
            pod: pod.clone(),
            ready: input.ready.contains(name),
        })
        .collect();
    let replicas = members
        .iter()
        .filter(|m| input.existing.iter().any(|e| e.as_str() == m.name))
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
    let degraded = degraded(problems);
    let condition = |type_: &str, (status, reason): (&str, &str), message: String| {
        condition(
            old,
            generation,
            &input.now,
            type_,
            (status, reason),
            message,
        )
    };
    let updated_replicas = members
        .iter()
        .filter(|m| {
            ReplicaName::parse(&m.name)
                .ok()
                .is_some_and(|n| input.current.contains(&n))
        })
        .count() as u32;
    let mut status = ServerPoolStatus {
        // The scale subresource's label selector (an HPA reads it); a name that
        // cannot be a label value has none (and a Degraded condition says why).
        selector: (name.len() <= 63).then(|| format!("{POOL_LABEL}={name}")),
        updated_replicas,
        replicas,
        ready_replicas,
        members,
        emergency_replacements: input.replacements.to_vec(),
        observed_generation: generation,
        conditions: vec![
            condition(
                "Ready",
                ready_condition,
                format!("{ready_replicas}/{} replicas ready", spec.replicas),
            ),
            condition("Degraded", (degraded.0, degraded.1), degraded.2),
        ],
    };
    let progress = progress_conditions(input, &status);
    status.conditions.extend(progress);
    status
}

/// The `Degraded` condition's status, reason and message: the first problem names
/// the reason (a spec that cannot be carried out comes first, as it is found first);
/// the message has them all.
fn degraded(problems: &[Problem]) -> (&'static str, &'static str, String) {
    match problems.first() {
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
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
