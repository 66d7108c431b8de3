//! The pool's objects besides its pods, which a pass writes where they are missing:
//! its PodDisruptionBudget and its admin token Secret.

use std::collections::HashSet;

use kube::runtime::reflector::ObjectRef;

use super::context::{Context, Error, PoolPass};
use super::events::{PodEvent, warn_once};
use super::pods;
use super::reconciler::{ADMIN_SECRET_RECHECK, CONTROLLER_NAME};
use super::status::Problem;

/// Writes the pool's PodDisruptionBudget when the watch shows it missing, or its own
/// budget not as it should be (see [`pods::disruption_budget`]). A budget of that
/// name that is not the pool's is someone else's: left alone, and named in Degraded.
///
/// Answers with the conflict, if any, for the Degraded condition; `warned` collects
/// the pass's lasting warnings (see [`warn_once`]).
pub(super) async fn ensure_budget(
    target: &PoolPass<'_>,
    ctx: &Context,
    warned: &mut HashSet<String>,
) -> Result<Option<Problem>, Error> {
    if target.name.len() > 63 {
        // Its label cannot name the pool (Degraded says so): no selector to write.
        return Ok(None);
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
            let reason = "DisruptionBudgetConflict";
            let event = PodEvent::warning(reason, "Reconcile", message.clone());
            warn_once(ctx, target, reason, "", event, warned).await;
            return Ok(Some(Problem { reason, message }));
        }
        if pods::is_current_budget(found, &want) {
            return Ok(None);
        }
    }
    ctx.write(target.pods.apply_disruption_budget(CONTROLLER_NAME))
        .await
        .map(|()| None)
}

/// Creates the pool's admin token Secret where none exists (see [`super::admin_secret`]):
/// at a term's first pass over the pool, then every [`ADMIN_SECRET_RECHECK`].
pub(super) async fn ensure_admin_secret(target: &PoolPass<'_>, ctx: &Context) -> Result<(), Error> {
    let now = tokio::time::Instant::now();
    let due = ctx.with_memory(&target.key, &target.uid, |m| {
        m.admin_secret_checked
            .is_none_or(|at| now.duration_since(at) >= ADMIN_SECRET_RECHECK)
    });
    if !due {
        return Ok(());
    }
    let ensured = ctx.write(target.pods.ensure_admin_secret()).await?;
    if ensured == super::admin_secret::Ensured::Created {
        tracing::info!(pool = %target.key, "created the pool's admin token Secret");
    }
    ctx.with_memory(&target.key, &target.uid, |m| {
        m.admin_secret_checked = Some(now);
    });
    Ok(())
}
