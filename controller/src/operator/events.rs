//! The Events a pass records on its pool (`kubectl describe sp`), about the pool or
//! one of its pods: for people, so one that cannot be written is logged, never fatal.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};

use super::context::{Context, PoolPass};
use super::crd::ServerPoolStatus;

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
/// while it holds: see [`super::context::PoolMemory::warned`].
/// `warned` collects the keys of this pass's warnings: the others are forgotten.
pub(super) async fn warn_once(
    ctx: &Context,
    target: &PoolPass<'_>,
    key: &str,
    pod: &str,
    event: PodEvent,
    warned: &mut HashSet<String>,
) {
    warned.insert(key.to_owned());
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
pub(super) struct PodEvent {
    pub(super) type_: EventType,
    pub(super) reason: &'static str,
    pub(super) action: &'static str,
    pub(super) note: String,
}

impl PodEvent {
    pub(super) fn warning(reason: &'static str, action: &'static str, note: String) -> Self {
        Self {
            type_: EventType::Warning,
            reason,
            action,
            note,
        }
    }

    pub(super) fn deleted(note: String) -> Self {
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
pub(super) async fn publish_event(
    ctx: &Context,
    target: &PoolPass<'_>,
    pod: &str,
    event: PodEvent,
) {
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

/// A condition that turns bad is a Warning Event too, once while it holds: a pool
/// that stops being available because replicas stopped being ready (not one that
/// grows, nor a new one starting), and a spec that cannot be carried out (the other
/// problems behind Degraded have Events of their own).
pub(super) async fn warn_of_conditions(
    target: &PoolPass<'_>,
    ctx: &Context,
    status: &ServerPoolStatus,
    old: &ServerPoolStatus,
    warned: &mut HashSet<String>,
) {
    let bad = |type_: &str, value: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == value)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((_, message)) = bad("Available", "False") {
        let fell = status.ready_replicas < old.ready_replicas;
        let was_warned = ctx.with_memory(&target.key, &target.uid, |m| {
            m.warned.contains("Unavailable")
        });
        if fell || was_warned {
            let event = PodEvent::warning("Unavailable", "Reconcile", message);
            warn_once(ctx, target, "Unavailable", "", event, warned).await;
        }
    }
    if let Some((reason, message)) = bad("Degraded", "True")
        && reason == "InvalidSpec"
    {
        let key = format!("InvalidSpec/{message}");
        let event = PodEvent::warning("InvalidSpec", "Reconcile", message);
        warn_once(ctx, target, &key, "", event, warned).await;
    }
}
