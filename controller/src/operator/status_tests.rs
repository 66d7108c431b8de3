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
}

fn problem(reason: &'static str) -> Problem {
    Problem {
        reason,
        message: format!("{reason}: why"),
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
fn the_status_counts_members_and_names_its_conditions() {
    // (what, the pass, (replicas, ready, updated), conditions)
    type Row = (&'static str, Pass, (u32, u32, u32), [&'static str; 4]);
    let rows: Vec<Row> = vec![
        (
            "converged",
            Pass::converged(3),
            (3, 3, 3),
            [
                "Ready=True/AllReplicasReady",
                "Degraded=False/AsExpected",
                "Available=True/MinimumReplicasAvailable",
                "Progressing=True/Complete",
            ],
        ),
        (
            "one replica not ready",
            Pass {
                ready: names(&["Server1", "Server3"]),
                ..Pass::converged(3)
            },
            (3, 2, 3),
            [
                "Ready=False/ReplicasNotReady",
                "Degraded=False/AsExpected",
                "Available=True/MinimumReplicasAvailable",
                "Progressing=True/ReplicasStarting",
            ],
        ),
        (
            "a pod being created",
            Pass {
                existing: names(&["Server1", "Server2"]),
                ready: names(&["Server1", "Server2"]),
                ..Pass::converged(3)
            },
            (2, 2, 3),
            [
                "Ready=False/ReplicasNotReady",
                "Degraded=False/AsExpected",
                "Available=True/MinimumReplicasAvailable",
                "Progressing=True/Scaling",
            ],
        ),
        (
            "rolling out",
            Pass {
                current: names(&["Server1"]),
                ..Pass::converged(3)
            },
            (3, 3, 1),
            [
                "Ready=True/AllReplicasReady",
                "Degraded=False/AsExpected",
                "Available=True/MinimumReplicasAvailable",
                "Progressing=True/RollingOut",
            ],
        ),
        (
            "the first problem names Degraded's reason",
            Pass {
                problems: vec![problem("InvalidSpec"), problem("PodConflict")],
                ..Pass::converged(3)
            },
            (3, 3, 3),
            [
                "Ready=False/ReplicasNotReady",
                "Degraded=True/InvalidSpec",
                "Available=True/MinimumReplicasAvailable",
                "Progressing=False/InvalidSpec",
            ],
        ),
        (
            "no members (a spec that cannot be carried out, none named before)",
            Pass {
                members: None,
                problems: vec![problem("InvalidSpec")],
                ..Pass::converged(2)
            },
            (0, 0, 0),
            [
                "Ready=False/ReplicasNotReady",
                "Degraded=True/InvalidSpec",
                "Available=False/MinimumReplicasUnavailable",
                "Progressing=False/InvalidSpec",
            ],
        ),
    ];
    for (what, pass, counts, expected) in rows {
        let status = pass.status("demo", &ServerPoolStatus::default(), t0());
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.updated_replicas
            ),
            counts,
            "{what}"
        );
        assert_eq!(conditions(&status), expected, "{what}");
        assert_eq!(status.selector.as_deref(), Some("ringlb.dev/pool=demo"));
        assert_eq!(status.observed_generation, Some(1));
    }
    let degraded = Pass {
        problems: vec![problem("InvalidSpec"), problem("PodConflict")],
        ..Pass::converged(1)
    }
    .status("demo", &ServerPoolStatus::default(), t0());
    assert_eq!(
        degraded.conditions[1].message,
        "InvalidSpec: why; PodConflict: why"
    );
    // A name that cannot be a label value has no selector.
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
    let not_ready = Pass {
        ready: HashSet::new(),
        ..Pass::converged(1)
    }
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

#[test]
fn available_and_progressing_say_how_far_the_pool_is_from_its_spec() {
    let now = t0();
    // (desired, pods, ready, updated, problem) → (Available, Progressing, its reason)
    type Case = (
        u32,
        u32,
        u32,
        u32,
        Option<&'static str>,
        (&'static str, &'static str, &'static str),
    );
    let cases: [Case; 8] = [
        (3, 3, 3, 3, None, ("True", "True", "Complete")),
        // Scaling 3 → 5: two pods to make, 3 of 5 ready is below 5 − 1.
        (5, 3, 3, 3, None, ("False", "True", "Scaling")),
        (3, 3, 3, 1, None, ("True", "True", "RollingOut")),
        // One replica starting: all but one ready is available.
        (3, 3, 2, 3, None, ("True", "True", "ReplicasStarting")),
        (3, 3, 1, 3, None, ("False", "True", "ReplicasStarting")),
        (
            3,
            3,
            3,
            1,
            Some("RolloutStalled"),
            ("True", "False", "RolloutStalled"),
        ),
        // The operator's blind spot does not stop the pool from moving.
        (
            3,
            3,
            3,
            3,
            Some("ReplicasUnreachable"),
            ("True", "True", "Complete"),
        ),
        (0, 0, 0, 0, None, ("True", "True", "Complete")),
    ];
    for (desired, pods, ready, updated, problem, expected) in cases {
        let spec = spec(desired);
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
        let problems: Vec<Problem> = problem
            .map(|reason| Problem {
                reason,
                message: format!("{reason}: why"),
            })
            .into_iter()
            .collect();
        let none = HashSet::new();
        let input = StatusInput {
            spec: &spec,
            name: "demo",
            generation: Some(4),
            old: &ServerPoolStatus::default(),
            members: None,
            existing: &none,
            ready: &none,
            current: &none,
            replacements: &[],
            problems: &problems,
            now: now.clone(),
        };
        let [available, progressing] = progress_conditions(&input, &status);
        let case = format!(
            "{desired} desired, {pods} pods, {ready} ready, {updated} updated, {problem:?}"
        );
        assert_eq!(
            (
                available.status.as_str(),
                progressing.status.as_str(),
                progressing.reason.as_str()
            ),
            expected,
            "{case}"
        );
        assert_eq!(available.type_, "Available");
        assert_eq!(progressing.observed_generation, Some(4), "{case}");
    }
}
