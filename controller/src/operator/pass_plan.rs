//! The pure part of a reconciler pass: from what a pass found (a [`PassInput`]: the
//! pool's pods, their heartbeats, the slots' replacements) to what it does (a
//! [`PassPlan`]): which pod stands for which replica, what to create, delete and
//! replace, which replacements a crash loop's backoff holds back, which failures
//! only the operator sees and so are held, and the rollout's next step.
//!
//! No API, no clock (`now` is in the input), no memory of earlier passes but what
//! the input says: tested with tables of inputs and decisions, as [`plan`] is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::crd::{ReplacementStatus, ServerPoolSpec, ServerPoolStatus};
use super::pod_probes::PodBeat;
use super::pod_slots;
use super::pods::{PodState, ReplicaPod, StartFailure};
use super::status::Problem;
use crate::pool::{Action as PlanAction, Observed, Policy, plan};
use crate::replica_health::{Health, HealthState};
use crate::replica_name::ReplicaName;

/// How long past its deletion deadline a pod may still be terminating before its
/// replica is replaced under a new name.
pub const STUCK_TERMINATING: Duration = Duration::from_secs(60);
/// A replica that served for less than this before it failed counts toward its
/// slot's backoff, as the kubelet's CrashLoopBackOff resets only after a container
/// ran for 10 minutes; one that served longer is replaced at once.
pub const CRASH_LOOP_RESET: Duration = Duration::from_secs(600);

/// What a pass found that its plan depends on: plain data, read from the watch's
/// stores, the heartbeats, the cached status and the reconciler's memory.
#[derive(Clone, Debug, Default)]
pub struct PassInput {
    /// The desired members and their pod names; `None` when the spec cannot be carried out.
    pub desired: Option<Vec<(ReplicaName, String)>>,
    pub pods: Vec<ReplicaPod>,
    /// What the heartbeats say of each pod, by uid (a pod not probed yet is missing).
    pub beats: HashMap<String, PodBeat>,
    /// Replacements recorded in the status and those made since (the cached pool may
    /// lag).
    pub replacements: Vec<ReplacementStatus>,
    /// The replica names of every pool's pods in the namespace: pod names are the
    /// namespace's, so an emergency number another pool uses is not free.
    pub taken: Vec<ReplicaName>,
    /// Pod names held by pods that are not this pool's: other pools' (from the
    /// watch) and others' (a create refused with 409).
    pub held_elsewhere: HashSet<String>,
    pub now: Timestamp,
    /// The hash of the pool's current pod template.
    pub template: String,
    /// The pod the cached status names for each replica.
    pub status_pods: HashMap<ReplicaName, String>,
    /// The pods the cached status says are ready.
    pub status_ready: HashSet<String>,
    /// `spec.heartbeat.maxUnconfirmedReplacements`.
    pub max_unconfirmed: usize,
    /// Replacements in progress made on heartbeats alone, by this process.
    pub unconfirmed: HashSet<ReplicaName>,
}

impl PassInput {
    pub fn health(&self, uid: &str) -> Option<HealthState> {
        self.beats.get(uid).map(|beat| beat.state)
    }

    /// Whether pod `uid` served long enough before it failed that its failure is
    /// not a crash loop (see [`CRASH_LOOP_RESET`]).
    pub fn served_long(&self, uid: &str) -> bool {
        self.beats
            .get(uid)
            .and_then(|beat| beat.served_for)
            .is_some_and(|served| served >= CRASH_LOOP_RESET)
    }
}

/// A pass's work, decided before any call: pods that name no replica, and the plan.
#[derive(Debug, Default)]
pub struct PassPlan {
    /// Pods to delete: those that name no replica of the pool, outdated pods whose
    /// replica a new pod serves, second pods of a name.
    pub extras: Vec<Extra>,
    pub actions: Vec<PlanAction>,
    /// Replacements the plan asked for that their slot's backoff holds back.
    pub held_back: Vec<HeldBack>,
    /// Replicas whose failure only the operator's heartbeats see.
    pub unconfirmed: Unconfirmed,
    /// Replicas whose pod cannot start, and why.
    pub not_starting: Vec<(ReplicaName, ReplicaPod, StartFailure)>,
    pub rollout: Rollout,
    /// The pod that serves each replica that has one, once this pass is done.
    pub serving: HashMap<ReplicaName, ServingPod>,
    /// The pod (name, uid) of each desired replica that has one.
    pub pod_of: HashMap<ReplicaName, (String, String)>,
}

/// A pod a pass deletes, and the Event's note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extra {
    pub pod: String,
    pub uid: String,
    pub why: String,
}

/// The rollout's part of a pass.
#[derive(Debug, Default)]
pub struct Rollout {
    /// Replica and pod name of the new pod to start.
    pub start: Option<(ReplicaName, String)>,
    /// The new pod that failed, and why the rollout waits.
    pub stalled: Vec<(String, Problem)>,
}

/// A failed replica whose replacement waits for its slot's backoff.
#[derive(Clone, Debug)]
pub struct HeldBack {
    pub replica: ReplicaName,
    pub pod: String,
    /// It answered a heartbeat (and failed before it had served long).
    pub served: bool,
    pub container_reason: Option<String>,
    /// How much longer it waits: when the pass looks again.
    pub wait: Duration,
    /// The whole delay of its slot's backoff: what the status says (a countdown
    /// would change the status at every pass).
    pub delay: Duration,
}

impl HeldBack {
    pub fn message(&self) -> String {
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
fn backoff_left(name: &ReplicaName, pod: &ReplicaPod, input: &PassInput) -> Option<Duration> {
    // A pod stuck terminating did not crash: its node or a finalizer holds it.
    if pod.state == PodState::Terminating || input.served_long(&pod.uid) {
        return None;
    }
    let delay = backoff_delay(name, input);
    let age = input.beats.get(&pod.uid).map_or(Duration::ZERO, |b| b.age);
    delay.checked_sub(age).filter(|left| !left.is_zero())
}

/// The backoff delay of the slot that replica `name` holds, from its streak.
fn backoff_delay(name: &ReplicaName, input: &PassInput) -> Duration {
    let slot = pod_slots::slot_of(name, &input.replacements);
    let streak = input
        .replacements
        .iter()
        .find(|r| r.original == slot)
        .map_or(0, |r| r.unready_streak);
    pod_slots::replacement_delay(streak)
}

/// Pure: which pod stands for which replica, and what [`plan`] makes of them.
///
/// A spec that cannot be carried out (`desired` is `None`) changes nothing: the
/// members stay on the pods the status names, with their health, and the proxies
/// keep routing.
pub fn plan_pass(input: &PassInput) -> PassPlan {
    let Some(desired) = input.desired.as_deref() else {
        return PassPlan {
            serving: serving_as_named(input),
            ..PassPlan::default()
        };
    };
    let Standing {
        by_name,
        surges,
        terminating,
        extras,
    } = standing_pods(desired, input);
    let mut actions = plan_actions(desired, input, &by_name, &terminating);
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
    let held_back = hold_back(input, &by_name, &mut actions);
    let unconfirmed = hold_unconfirmed(
        desired,
        input,
        &by_name,
        &disputed,
        &held_back,
        &mut actions,
    );
    let vouched: HashSet<String> = unconfirmed.held.iter().map(|p| p.uid.clone()).collect();

    let rollout = plan_rollout(desired, input, &by_name, &surges, &actions);
    let mut serving: HashMap<ReplicaName, ServingPod> = by_name
        .iter()
        .map(|(n, pod)| (n.clone(), ServingPod::of(pod, input, &vouched)))
        .collect();
    for (name, surge) in &rollout.handed_over {
        serving.insert(name.clone(), ServingPod::of(surge, input, &vouched));
    }
    // Pods that will not start by themselves; a rollout's new pod is the rollout's
    // to report (RolloutStalled).
    let not_starting = by_name
        .iter()
        .filter_map(|(name, pod)| Some((name.clone(), (*pod).clone(), pod.start_failure.clone()?)))
        .collect();
    PassPlan {
        extras,
        actions,
        held_back,
        unconfirmed,
        not_starting,
        rollout: Rollout {
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

/// The members of a pool whose spec cannot be carried out: the pods the status
/// names, with their health.
fn serving_as_named(input: &PassInput) -> HashMap<ReplicaName, ServingPod> {
    input
        .pods
        .iter()
        .filter_map(|pod| {
            let name = pod.name.clone()?;
            (input.status_pods.get(&name) == Some(&pod.pod))
                .then(|| (name, ServingPod::of(pod, input, &HashSet::new())))
        })
        .collect()
}

/// The pool's pods sorted out by [`standing_pods`].
struct Standing<'a> {
    /// The pod that stands for each replica name.
    by_name: HashMap<ReplicaName, &'a ReplicaPod>,
    /// A pod of the current template beside an outdated one (the rollout's surge).
    surges: BTreeMap<ReplicaName, &'a ReplicaPod>,
    /// Names whose old pod is still terminating.
    terminating: HashSet<ReplicaName>,
    /// Pods to delete.
    extras: Vec<Extra>,
}

/// Which pod stands for each replica name, which surge beside it, and which pods
/// are extras.
fn standing_pods<'a>(desired: &[(ReplicaName, String)], input: &'a PassInput) -> Standing<'a> {
    // The pods of each replica name; a pod that names none is an extra.
    let mut of_name: BTreeMap<ReplicaName, Vec<&ReplicaPod>> = BTreeMap::new();
    let mut extras: Vec<Extra> = Vec::new();
    let mut terminating: HashSet<ReplicaName> = HashSet::new();
    // A pod still terminating long after its grace (its node is gone, a finalizer
    // hangs) would hold its name for good: that replica is replaced under a new one.
    let mut stuck: Vec<(ReplicaName, &ReplicaPod)> = Vec::new();
    for pod in &input.pods {
        match &pod.name {
            Some(n) if pod.state == PodState::Terminating => {
                let overdue = pod.deleting_since.is_some_and(|since| {
                    input.now.duration_since(since).as_secs() > STUCK_TERMINATING.as_secs() as i64
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
        let standing = standing_pod(name, pods, input);
        let surge = surge_beside(standing, pods, input);
        for pod in pods.iter().filter(|p| {
            p.uid != standing.uid && Some(p.uid.as_str()) != surge.map(|s| s.uid.as_str())
        }) {
            extras.push(second_pod(name, standing, pod, input));
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
    Standing {
        by_name,
        surges,
        terminating,
        extras,
    }
}

/// The pod of the current template beside outdated pod `standing`, if any.
fn surge_beside<'a>(
    standing: &ReplicaPod,
    pods: &[&'a ReplicaPod],
    input: &PassInput,
) -> Option<&'a ReplicaPod> {
    let outdated = standing.template.as_deref() != Some(input.template.as_str());
    pods.iter()
        .find(|p| {
            outdated && p.uid != standing.uid && p.template.as_deref() == Some(&input.template)
        })
        .copied()
}

/// A pod of replica `name` beside the one that stands for it: deleted.
fn second_pod(
    name: &ReplicaName,
    standing: &ReplicaPod,
    pod: &ReplicaPod,
    input: &PassInput,
) -> Extra {
    let why = if standing.template.as_deref() == Some(input.template.as_str())
        && pod.template != standing.template
    {
        format!(
            "deleted pod {} of an earlier template: pod {} serves replica {name} now",
            pod.pod, standing.pod
        )
    } else {
        format!("deleted pod {}: a second pod of replica {name}", pod.pod)
    };
    Extra {
        pod: pod.pod.clone(),
        uid: pod.uid.clone(),
        why,
    }
}

/// What [`plan`] makes of the standing pods, in a deterministic order.
fn plan_actions(
    desired: &[(ReplicaName, String)],
    input: &PassInput,
    by_name: &HashMap<ReplicaName, &ReplicaPod>,
    terminating: &HashSet<ReplicaName>,
) -> Vec<PlanAction> {
    let mut observed: Vec<Observed> = by_name
        .iter()
        .map(|(n, pod)| Observed {
            name: n.clone(),
            health: if pod.state == PodState::Terminating {
                Health::Failed
            } else {
                input
                    .health(&pod.uid)
                    .map_or(Health::Starting, |h| h.health)
            },
        })
        .collect();
    // Pod names are the namespace's: a desired name whose pod name another pool's
    // pod (or someone else's) holds can never have its pod, so its slot takes a
    // free emergency name, as a failed replica's would.
    for (name, pod) in desired {
        if !by_name.contains_key(name) && input.held_elsewhere.contains(pod) {
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
    let next_emergency = pod_slots::next_emergency(
        input
            .replacements
            .iter()
            .map(|r| r.replacement.as_str())
            .chain(input.taken.iter().map(ReplicaName::as_str)),
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
    actions
}

/// Takes out of `actions` the replacements that their slot's backoff holds back.
/// A slot whose replicas never served waits before its next replacement; its
/// failed pod stays meanwhile (its logs say why).
fn hold_back(
    input: &PassInput,
    by_name: &HashMap<ReplicaName, &ReplicaPod>,
    actions: &mut Vec<PlanAction>,
) -> Vec<HeldBack> {
    let mut held_back = Vec::new();
    actions.retain(|action| {
        let PlanAction::Replace { failed, .. } = action else {
            return true;
        };
        let Some(pod) = by_name.get(failed) else {
            return true;
        };
        match backoff_left(failed, pod, input) {
            None => true,
            Some(wait) => {
                held_back.push(HeldBack {
                    replica: failed.clone(),
                    pod: pod.pod.clone(),
                    served: input
                        .beats
                        .get(&pod.uid)
                        .is_some_and(|b| b.served_for.is_some()),
                    container_reason: pod.container_reason.clone(),
                    wait,
                    delay: backoff_delay(failed, input),
                });
                false
            }
        }
    });
    held_back
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
    input: &PassInput,
    by_name: &HashMap<ReplicaName, &ReplicaPod>,
    disputed: &[ReplicaName],
    held_back: &[HeldBack],
    actions: &mut Vec<PlanAction>,
) -> Unconfirmed {
    let answered = |pod: &ReplicaPod| {
        input
            .beats
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
            None => input.unconfirmed.contains(*name),
            Some(pod) => {
                !answered(pod)
                    && !matches!(pod.state, PodState::Exited | PodState::Terminating)
                    && (input.unconfirmed.contains(*name) || vouched_by_kubelet(pod))
            }
        })
        .cloned()
        .collect();
    let mut budget = input.max_unconfirmed.saturating_sub(in_progress.len());
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
    if disputed.len() > input.max_unconfirmed {
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
#[derive(Debug, Default)]
pub struct Unconfirmed {
    /// The pods of replicas whose replacement is held: they keep serving.
    pub held: Vec<ReplicaPod>,
    /// Replacements made on the operator's word alone whose pod has not answered it
    /// yet, this pass's included.
    pub in_progress: Vec<ReplicaName>,
}

impl Unconfirmed {
    /// Why the pool is Degraded while replicas keep serving on the kubelet's word
    /// (`max` is `spec.heartbeat.maxUnconfirmedReplacements`): `None` when none do.
    pub fn problem(&self, max: usize) -> Option<Problem> {
        if self.held.is_empty() {
            return None;
        }
        let names: Vec<String> = self
            .held
            .iter()
            .map(|p| {
                let name = p.name.as_ref().map_or("?", ReplicaName::as_str);
                format!("{name} (pod {})", p.pod)
            })
            .collect();
        let message = format!(
            "the operator cannot reach {} replica(s) that the kubelet reports Ready: {}; \
             it replaces at most {max} such replica(s) at a time \
             (spec.heartbeat.maxUnconfirmedReplacements) and the proxies keep routing to them",
            names.len(),
            names.join(", "),
        );
        Some(Problem {
            reason: "ReplicasUnreachable",
            message,
        })
    }
}

/// Why replica `name` is Degraded while its pod `pod` cannot start.
pub fn start_failure(name: &ReplicaName, pod: &ReplicaPod, failure: &StartFailure) -> Problem {
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
    Problem {
        reason: failure.reason,
        message,
    }
}

/// Why a failed replica is replaced, as its Event says: `failed_pod` is its pod,
/// `held_elsewhere` that its pod name is held by a pod that is not the pool's.
pub fn replacement_reason(failed_pod: Option<&ReplicaPod>, held_elsewhere: bool) -> String {
    match failed_pod.map(|p| p.state) {
        _ if held_elsewhere => "its pod name is held by a pod that is not this pool's".to_owned(),
        Some(PodState::Exited) => "its container exited".to_owned(),
        Some(PodState::Terminating) => "its pod is stuck terminating".to_owned(),
        Some(PodState::Pending) => format!(
            "its pod did not start{}",
            failed_pod
                .and_then(|p| p.container_reason.as_deref())
                .map_or_else(String::new, |r| format!(" ({r})"))
        ),
        _ => "failed its heartbeats".to_owned(),
    }
}

/// Each member as a pass leaves the pool, with the pod that serves it (a rollout's
/// new pod, once it does): from the spec and the replacements still in use
/// (`live`); for a spec that cannot be carried out (`realisable` false), the last
/// realised members, as the status named them.
pub fn members_now(
    spec: &ServerPoolSpec,
    live: &[ReplacementStatus],
    realisable: bool,
    serving: &HashMap<ReplicaName, ServingPod>,
    old: &ServerPoolStatus,
) -> Option<Vec<(ReplicaName, String)>> {
    if !realisable {
        return Some(
            old.members
                .iter()
                .filter_map(|m| Some((ReplicaName::parse(&m.name).ok()?, m.pod.clone())))
                .collect(),
        );
    }
    let desired = pod_slots::desired_members(spec, &pod_slots::replacement_map(live)).ok()?;
    Some(
        desired
            .into_iter()
            .map(|(name, pod)| {
                let pod = serving.get(&name).map_or(pod, |s| s.pod.clone());
                (name, pod)
            })
            .collect(),
    )
}

/// The kubelet says the pod runs and answers its readiness probe.
fn vouched_by_kubelet(pod: &ReplicaPod) -> bool {
    pod.state == PodState::Running && pod.kubelet_ready == Some(true)
}

/// The pod that stands for replica `name` among its pods: the one the status
/// names (the proxies route to it), else the one under the name's own pod name,
/// else an outdated one (a rollout replaces it in order), else the first.
fn standing_pod<'a>(
    name: &ReplicaName,
    pods: &[&'a ReplicaPod],
    input: &PassInput,
) -> &'a ReplicaPod {
    let primary = pod_slots::pod_name(name).ok();
    let by = |f: &dyn Fn(&ReplicaPod) -> bool| pods.iter().copied().find(|p| f(p));
    by(&|p| input.status_pods.get(name) == Some(&p.pod))
        .or_else(|| by(&|p| primary.as_deref() == Some(p.pod.as_str())))
        .or_else(|| by(&|p| p.template.as_deref() != Some(input.template.as_str())))
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
    input: &PassInput,
    standing: &HashMap<ReplicaName, &'a ReplicaPod>,
    surges: &BTreeMap<ReplicaName, &'a ReplicaPod>,
    actions: &[PlanAction],
) -> RolloutPlan<'a> {
    let mut rollout = RolloutPlan {
        handed_over: Vec::new(),
        start: None,
        stalled: Vec::new(),
    };
    let health = |pod: &ReplicaPod| input.health(&pod.uid);
    for (name, surge) in surges {
        match health(surge) {
            // Handed over only once the kubelet agrees too: a proxy takes a member
            // out while its pod's Ready condition says false, and the handover must
            // not make the member leave any proxy's ring.
            Some(h) if h.routable() && surge.kubelet_ready != Some(false) => {
                rollout.handed_over.push((name.clone(), *surge));
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
            pod.template.as_deref() != Some(input.template.as_str())
                && pod.state != PodState::Terminating
                && health(pod).is_none_or(|h| h.health != Health::Failed)
        }) && !acted_on(name)
    });
    if let Some(name) = next {
        let primary = pod_slots::pod_name(name).unwrap_or_default();
        // Not this pool's pods' names, nor those held by others (a 409 would stall it).
        let taken = |pod: &str| {
            input.pods.iter().any(|p| p.pod == pod) || input.held_elsewhere.contains(pod)
        };
        let pod = if taken(&primary) {
            format!("{primary}-{}", &input.template[..5])
        } else {
            primary
        };
        rollout.start = Some((name.clone(), pod));
    }
    rollout
}

/// The pod that serves a replica as this pass leaves it: what the status names.
#[derive(Clone, Debug)]
pub struct ServingPod {
    pub pod: String,
    pub routable: bool,
    /// Made from the current template.
    pub current: bool,
}

impl ServingPod {
    /// `vouched`: pods whose failure only the operator sees, kept serving on the
    /// kubelet's word (see [`plan_pass`]).
    fn of(pod: &ReplicaPod, input: &PassInput, vouched: &HashSet<String>) -> Self {
        let routable = match input.beats.get(&pod.uid) {
            Some(beat) => beat.state.routable() || vouched.contains(&pod.uid),
            // No heartbeat round has answered for it yet (a new leader's first pass,
            // a round slower than the wait): the status keeps what it said.
            None => input.status_ready.contains(&pod.pod),
        };
        Self {
            pod: pod.pod.clone(),
            routable,
            current: pod.template.as_deref() == Some(input.template.as_str()),
        }
    }
}

#[cfg(test)]
#[path = "pass_plan_tests.rs"]
mod tests;
