//! Tables of passes' outcomes and the status they leave.

use super::*;

fn at(time: &str) -> Time {
    Time(time.parse().unwrap())
}

fn t0() -> Time {
    at("2026-01-02T03:04:05Z")
}

fn spec(replicas: u32) -> ServerPoolSpec {
    serde_json::from_value(serde_json::json!({
        "replicas": replicas,
        "image": "ringlb-replica:dev",
        "port": 5000,
    }))
    .unwrap()
}

fn names(list: &[&str]) -> HashSet<ReplicaName> {
    list.iter()
        .map(|n| ReplicaName::parse(n).unwrap())
        .collect()
}

/// `Server1`..`Server<n>` on their own pods.
fn members(n: u32) -> Vec<(ReplicaName, String)> {
    (1..=n)
        .map(|i| {
            let name = ReplicaName::parse(&format!("Server{i}")).unwrap();
            (name, format!("server{i}"))
        })
        .collect()
}

/// What a pass found and did, in the fields a table row varies.
struct Pass {
    replicas: u32,
    members: Option<Vec<(ReplicaName, String)>>,
    existing: HashSet<ReplicaName>,
    ready: HashSet<ReplicaName>,
    current: HashSet<ReplicaName>,
    problems: Vec<Problem>,
}

impl Pass {
    /// A pool of `replicas` whose members all have a pod, ready and current.
    fn converged(replicas: u32) -> Self {
        let members = members(replicas);
        let all: HashSet<ReplicaName> = members.iter().map(|(n, _)| n.clone()).collect();
        Self {
            replicas,
            members: Some(members),
            existing: all.clone(),
            ready: all.clone(),
            current: all,
            problems: Vec::new(),
        }
    }

    fn status(&self, name: &str, old: &ServerPoolStatus, now: Time) -> ServerPoolStatus {
        compute_status(&StatusInput {
            spec: &spec(self.replicas),
            name,
            generation: Some(1),
            old,
            members: self.members.as_deref(),
            existing: &self.existing,
            ready: &self.ready,
            current: &self.current,
            replacements: &[],
            problems: &self.problems,
            now,
        })
    }

    // What a table row changes of a converged pass.

    fn ready(self, ready: &[&str]) -> Self {
        let ready = names(ready);
        Self { ready, ..self }
    }

    fn existing(self, existing: &[&str]) -> Self {
        let existing = names(existing);
        Self { existing, ..self }
    }

    fn current(self, current: &[&str]) -> Self {
        let current = names(current);
        Self { current, ..self }
    }

    fn problems(self, reasons: &[&'static str]) -> Self {
        let problems = reasons.iter().map(|r| problem(r)).collect();
        Self { problems, ..self }
    }

    /// A spec that cannot be carried out, with no members named before.
    fn no_members(self) -> Self {
        Self {
            members: None,
            ..self
        }
    }

    /// The first status this pass leaves for pool `demo`.
    fn first_status(&self) -> ServerPoolStatus {
        self.status("demo", &ServerPoolStatus::default(), t0())
    }
}

fn problem(reason: &'static str) -> Problem {
    Problem {
        reason,
        message: format!("{reason}: why"),
    }
}

/// (what, the pass): one of each kind of pass.
fn passes() -> [(&'static str, Pass); 6] {
    let both = &["Server1", "Server2"];
    [
        ("converged", Pass::converged(3)),
        (
            "not ready",
            Pass::converged(3).ready(&["Server1", "Server3"]),
        ),
        ("creating", Pass::converged(3).existing(both).ready(both)),
        ("rolling out", Pass::converged(3).current(&["Server1"])),
        (
            "problems",
            Pass::converged(3).problems(&["InvalidSpec", "PodConflict"]),
        ),
        (
            "no members",
            Pass::converged(2).no_members().problems(&["InvalidSpec"]),
        ),
    ]
}

#[test]
fn the_status_counts_the_pods_the_ready_and_the_updated() {
    // (replicas, readyReplicas, updatedReplicas), in the order of `passes`.
    let counts = [
        (3, 3, 3),
        (3, 2, 3),
        (2, 2, 3),
        (3, 3, 1),
        (3, 3, 3),
        (0, 0, 0),
    ];
    for ((what, pass), counts) in passes().into_iter().zip(counts) {
        let status = pass.first_status();
        let found = (
            status.replicas,
            status.ready_replicas,
            status.updated_replicas,
        );
        assert_eq!(found, counts, "{what}");
        assert_eq!(status.selector.as_deref(), Some("ringlb.dev/pool=demo"));
        assert_eq!(status.observed_generation, Some(1));
    }
}

/// Each condition as `type=status/reason`.
fn conditions(status: &ServerPoolStatus) -> Vec<String> {
    status
        .conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect()
}

#[test]
fn the_status_names_its_four_conditions() {
    const READY: &str = "Ready=True/AllReplicasReady";
    const NOT_READY: &str = "Ready=False/ReplicasNotReady";
    const HEALTHY: &str = "Degraded=False/AsExpected";
    const DEGRADED: &str = "Degraded=True/InvalidSpec";
    const AVAILABLE: &str = "Available=True/MinimumReplicasAvailable";
    const UNAVAILABLE: &str = "Available=False/MinimumReplicasUnavailable";
    const COMPLETE: &str = "Progressing=True/Complete";
    const STARTING: &str = "Progressing=True/ReplicasStarting";
    const SCALING: &str = "Progressing=True/Scaling";
    const ROLLING_OUT: &str = "Progressing=True/RollingOut";
    const STOPPED: &str = "Progressing=False/InvalidSpec";
    // In the order of `passes`; a problem's reason is Degraded's and Progressing's.
    let expected = [
        [READY, HEALTHY, AVAILABLE, COMPLETE],
        [NOT_READY, HEALTHY, AVAILABLE, STARTING],
        [NOT_READY, HEALTHY, AVAILABLE, SCALING],
        [READY, HEALTHY, AVAILABLE, ROLLING_OUT],
        [NOT_READY, DEGRADED, AVAILABLE, STOPPED],
        [NOT_READY, DEGRADED, UNAVAILABLE, STOPPED],
    ];
    for ((what, pass), expected) in passes().into_iter().zip(expected) {
        assert_eq!(conditions(&pass.first_status()), expected, "{what}");
    }
}

#[test]
fn degraded_names_every_problem_in_its_message() {
    let pass = Pass::converged(1).problems(&["InvalidSpec", "PodConflict"]);
    assert_eq!(
        pass.first_status().conditions[1].message,
        "InvalidSpec: why; PodConflict: why"
    );
}

#[test]
fn a_pool_whose_name_cannot_be_a_label_value_has_no_selector() {
    let long = "p".repeat(64);
    let status = Pass::converged(1).status(&long, &ServerPoolStatus::default(), t0());
    assert_eq!(status.selector, None);
}

#[test]
fn status_keeps_transition_times_while_conditions_hold() {
    let pass = Pass::converged(1);
    let first = pass.status("demo", &ServerPoolStatus::default(), t0());
    let later = at("2026-01-02T04:00:00Z");
    let again = pass.status("demo", &first, later.clone());
    assert_eq!(first, again);
    let not_ready = Pass::converged(1)
        .ready(&[])
        .status("demo", &first, later.clone());
    let ready = not_ready
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), &ready.last_transition_time),
        ("False", &later)
    );
}

/// Available and Progressing (as `status status/reason`) for a pool of `desired`
/// replicas with `pods` pods, `ready` of them ready and `updated` of the current
/// template, and at most one problem.
fn progress(
    (desired, pods, ready, updated): (u32, u32, u32, u32),
    problem: Option<&'static str>,
) -> String {
    let status = ServerPoolStatus {
        replicas: pods,
        ready_replicas: ready,
        updated_replicas: updated,
        members: (1..=desired)
            .map(|i| MemberStatus {
                name: format!("Server{i}"),
                pod: format!("server{i}"),
                ready: i <= ready,
            })
            .collect(),
        ..ServerPoolStatus::default()
    };
    let problems: Vec<Problem> = problem.map(self::problem).into_iter().collect();
    let none = HashSet::new();
    let input = StatusInput {
        spec: &spec(desired),
        name: "demo",
        generation: Some(4),
        old: &ServerPoolStatus::default(),
        members: None,
        existing: &none,
        ready: &none,
        current: &none,
        replacements: &[],
        problems: &problems,
        now: t0(),
    };
    let [available, progressing] = progress_conditions(&input, &status);
    assert_eq!(available.type_, "Available");
    assert_eq!(progressing.type_, "Progressing");
    assert_eq!(progressing.observed_generation, Some(4));
    let (p, a) = (progressing, available);
    format!("{} {}/{}", a.status, p.status, p.reason)
}

#[test]
fn available_and_progressing_say_how_far_the_pool_is_from_its_spec() {
    // (desired, pods, ready, updated) → "Available Progressing/reason"
    for (counts, expected) in [
        ((3, 3, 3, 3), "True True/Complete"),
        ((0, 0, 0, 0), "True True/Complete"),
        // Scaling 3 → 5: two pods to make, 3 of 5 ready is below 5 − 1.
        ((5, 3, 3, 3), "False True/Scaling"),
        ((3, 3, 3, 1), "True True/RollingOut"),
        // One replica starting: all but one ready is available.
        ((3, 3, 2, 3), "True True/ReplicasStarting"),
        ((3, 3, 1, 3), "False True/ReplicasStarting"),
    ] {
        assert_eq!(progress(counts, None), expected, "{counts:?}");
    }
}

#[test]
fn a_stalled_rollout_stops_progress_and_unreachable_replicas_do_not() {
    let stalled = progress((3, 3, 3, 1), Some("RolloutStalled"));
    assert_eq!(stalled, "True False/RolloutStalled");
    // The operator's blind spot does not stop the pool from moving.
    let blind = progress((3, 3, 3, 3), Some("ReplicasUnreachable"));
    assert_eq!(blind, "True True/Complete");
}
