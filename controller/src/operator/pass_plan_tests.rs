//! Tables of inputs and decisions for [`plan_pass`], in the manner of
//! `pool/plan.rs`: each row is a pool as a pass finds it, and what the pass decides,
//! summed up in a few words per decision (see [`decisions`]).

use super::*;
use crate::replica_health::HealthState;

const TEMPLATE: &str = "abcdef0123";
const OLD_TEMPLATE: &str = "0ld7emp1a7e";

fn name(n: &str) -> ReplicaName {
    ReplicaName::parse(n).unwrap()
}

fn now() -> Timestamp {
    "2026-01-02T03:04:05Z".parse().unwrap()
}

/// A running pod of replica `replica` from the current template, Ready as the
/// kubelet says.
fn pod(replica: &str) -> ReplicaPod {
    let pod = pod_slots::pod_name(&name(replica)).unwrap();
    named_pod(replica, &pod)
}

fn named_pod(replica: &str, pod: &str) -> ReplicaPod {
    ReplicaPod {
        name: ReplicaName::parse(replica).ok(),
        pod: pod.to_owned(),
        uid: format!("uid-{pod}"),
        ip: None,
        deleting_since: None,
        port: None,
        state: PodState::Running,
        container_reason: None,
        template: Some(TEMPLATE.to_owned()),
        kubelet_ready: Some(true),
        created_at: None,
        started_at: None,
        finished_at: None,
        was_ready: false,
        ready_since: None,
        start_failure: None,
    }
}

/// What the heartbeats say of a pod: its health, how long it served (if it
/// did), how long ago its container started.
fn beat(health: Health, served_for: Option<u64>, age: u64) -> PodBeat {
    PodBeat {
        state: HealthState {
            health,
            consecutive_failures: u32::from(health == Health::Failed) * 3,
            served: served_for.is_some(),
        },
        served_for: served_for.map(Duration::from_secs),
        age: Duration::from_secs(age),
    }
}

/// A served-for-long healthy beat.
const LONG: Option<u64> = Some(3600);

/// A pool of `desired` replicas whose `pods` answer as `beats` says (by pod name).
fn input(desired: &[&str], pods: Vec<ReplicaPod>, beats: &[(&str, PodBeat)]) -> PassInput {
    let beats = beats
        .iter()
        .map(|(pod, beat)| (format!("uid-{pod}"), *beat))
        .collect();
    PassInput {
        desired: Some(
            desired
                .iter()
                .map(|n| (name(n), pod_slots::pod_name(&name(n)).unwrap()))
                .collect(),
        ),
        pods,
        beats,
        now: now(),
        template: TEMPLATE.to_owned(),
        max_unconfirmed: 1,
        ..PassInput::default()
    }
}

/// The healthy, long-serving beats of `pods`.
fn healthy(pods: &[&str]) -> Vec<(String, PodBeat)> {
    pods.iter()
        .map(|p| (p.to_string(), beat(Health::Healthy, LONG, 3600)))
        .collect()
}

/// A pass's decisions in words, in a fixed order: deletions, plan actions,
/// backoffs, held unconfirmed, pods that cannot start, the rollout's step.
fn decisions(plan: &PassPlan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .extras
        .iter()
        .map(|e| format!("delete {}", e.pod))
        .collect();
    out.extend(plan.actions.iter().map(|a| match a {
        PlanAction::Start(n) => format!("start {n}"),
        PlanAction::Stop(n) => format!("stop {n}"),
        PlanAction::Replace {
            failed,
            replacement,
        } => format!("replace {failed} by {replacement}"),
    }));
    out.extend(plan.held_back.iter().map(|h| {
        format!(
            "back off {} {}s of {}s",
            h.replica,
            h.wait.as_secs(),
            h.delay.as_secs()
        )
    }));
    out.extend(
        plan.unconfirmed
            .held
            .iter()
            .map(|p| format!("hold {}", p.pod)),
    );
    out.extend(
        plan.not_starting
            .iter()
            .map(|(n, _, f)| format!("cannot start {n}: {}", f.reason)),
    );
    if let Some((n, pod)) = &plan.rollout.start {
        out.push(format!("roll {n} to {pod}"));
    }
    out.extend(
        plan.rollout
            .stalled
            .iter()
            .map(|(pod, p)| format!("stall on {pod}: {}", p.reason)),
    );
    out
}

/// Runs each row, `(what, input, expected decisions)`.
fn check(rows: Vec<(&str, PassInput, Vec<&str>)>) {
    for (what, input, expected) in rows {
        assert_eq!(decisions(&plan_pass(&input)), expected, "{what}");
    }
}

fn with_beats(mut input: PassInput, beats: Vec<(String, PodBeat)>) -> PassInput {
    input
        .beats
        .extend(beats.into_iter().map(|(p, b)| (format!("uid-{p}"), b)));
    input
}

#[test]
fn creates_the_missing_pods() {
    check(vec![
        (
            "an empty pool",
            input(&["Server1", "Server2"], vec![], &[]),
            vec!["start Server1", "start Server2"],
        ),
        (
            "scaling up",
            with_beats(
                input(
                    &["Server1", "Server2", "Server3"],
                    vec![pod("Server1")],
                    &[],
                ),
                healthy(&["server1"]),
            ),
            vec!["start Server2", "start Server3"],
        ),
        (
            "a converged pool",
            with_beats(
                input(
                    &["Server1", "Server2"],
                    vec![pod("Server1"), pod("Server2")],
                    &[],
                ),
                healthy(&["server1", "server2"]),
            ),
            vec![],
        ),
        (
            "a name whose old pod still terminates waits for it",
            {
                let mut going = pod("Server2");
                going.state = PodState::Terminating;
                going.deleting_since =
                    Some(now() - k8s_openapi::jiff::SignedDuration::from_secs(5));
                with_beats(
                    input(&["Server1", "Server2"], vec![pod("Server1"), going], &[]),
                    healthy(&["server1"]),
                )
            },
            vec![],
        ),
        (
            "a desired pod name another pool holds: the slot takes an emergency name",
            {
                let mut input = with_beats(
                    input(&["Server1", "Server2"], vec![pod("Server1")], &[]),
                    healthy(&["server1"]),
                );
                input.held_elsewhere.insert("server2".to_owned());
                input
            },
            vec!["replace Server2 by emergency_1"],
        ),
    ]);
}

#[test]
fn deletes_the_extra_pods() {
    let mut second = named_pod("Server1", "server1-b");
    second.uid = "uid-second".to_owned();
    let mut outdated = named_pod("Server1", "server1-old");
    outdated.template = Some(OLD_TEMPLATE.to_owned());
    check(vec![
        (
            "scaling down stops the replica no longer desired",
            with_beats(
                input(&["Server1"], vec![pod("Server1"), pod("Server2")], &[]),
                healthy(&["server1", "server2"]),
            ),
            vec!["stop Server2"],
        ),
        (
            "a pod that names no replica",
            with_beats(
                input(
                    &["Server1"],
                    vec![pod("Server1"), named_pod("", "stray")],
                    &[],
                ),
                healthy(&["server1"]),
            ),
            vec!["delete stray"],
        ),
        (
            "a second pod of a name",
            with_beats(
                input(&["Server1"], vec![pod("Server1"), second], &[]),
                healthy(&["server1"]),
            ),
            vec!["delete server1-b"],
        ),
        (
            "an outdated pod beside the current one that serves",
            with_beats(
                input(&["Server1"], vec![pod("Server1"), outdated], &[]),
                healthy(&["server1"]),
            ),
            vec!["delete server1-old"],
        ),
    ]);
}

#[test]
fn replaces_failed_replicas() {
    let mut exited = pod("Server2");
    exited.state = PodState::Exited;
    exited.kubelet_ready = Some(false);
    let mut stuck = pod("Server2");
    stuck.state = PodState::Terminating;
    stuck.deleting_since = Some(now() - k8s_openapi::jiff::SignedDuration::from_secs(600));
    let mut not_ready = pod("Server2");
    not_ready.kubelet_ready = Some(false);
    check(vec![
        (
            "an exited container after it served long",
            input(
                &["Server1", "Server2"],
                vec![pod("Server1"), exited],
                &[
                    ("server1", beat(Health::Healthy, LONG, 3600)),
                    ("server2", beat(Health::Failed, LONG, 3600)),
                ],
            ),
            vec!["replace Server2 by emergency_1"],
        ),
        (
            "a pod stuck terminating past its deadline",
            with_beats(
                input(&["Server1", "Server2"], vec![pod("Server1"), stuck], &[]),
                healthy(&["server1"]),
            ),
            vec!["replace Server2 by emergency_1"],
        ),
        (
            "failed heartbeats the kubelet agrees with",
            input(
                &["Server1", "Server2"],
                vec![pod("Server1"), not_ready],
                &[
                    ("server1", beat(Health::Healthy, LONG, 3600)),
                    ("server2", beat(Health::Failed, LONG, 3600)),
                ],
            ),
            vec!["replace Server2 by emergency_1"],
        ),
        (
            "an emergency number taken in the namespace is not picked",
            {
                let mut exited = pod("Server2");
                exited.state = PodState::Exited;
                let mut input = input(
                    &["Server1", "Server2"],
                    vec![pod("Server1"), exited],
                    &[
                        ("server1", beat(Health::Healthy, LONG, 3600)),
                        ("server2", beat(Health::Failed, LONG, 3600)),
                    ],
                );
                input.taken = vec![name("emergency_1")];
                input
            },
            vec!["replace Server2 by emergency_2"],
        ),
    ]);
}

#[test]
fn backs_off_a_crash_loop() {
    // Replica `replica` (beside a healthy Server1) whose container exited.
    let failing = |replica: &str, served_for: Option<u64>, age: u64| {
        let mut exited = pod(replica);
        exited.state = PodState::Exited;
        exited.container_reason = Some("Error, exit code 1".to_owned());
        let failed = exited.pod.clone();
        input(
            &["Server1", replica],
            vec![pod("Server1"), exited],
            &[
                ("server1", beat(Health::Healthy, LONG, 3600)),
                (&failed, beat(Health::Failed, served_for, age)),
            ],
        )
    };
    // emergency_1 holds slot Server2 after `streak` replicas in a row never served.
    let in_slot = |mut input: PassInput, streak: u32| {
        input.replacements = vec![ReplacementStatus {
            original: "Server2".to_owned(),
            replacement: "emergency_1".to_owned(),
            count: streak,
            unready_streak: streak,
        }];
        input
    };
    check(vec![
        (
            "never answered, started 3 s ago: waits for the first 10 s",
            failing("Server2", None, 3),
            vec!["back off Server2 7s of 10s"],
        ),
        (
            "served 5 s, its slot's streak 2: waits 40 s from its start",
            in_slot(failing("emergency_1", Some(5), 15), 2),
            vec!["back off emergency_1 25s of 40s"],
        ),
        (
            "its backoff has run out",
            failing("Server2", None, 30),
            vec!["replace Server2 by emergency_1"],
        ),
        (
            "one that served longer than the crash loop reset is replaced at once",
            in_slot(
                failing("emergency_1", Some(CRASH_LOOP_RESET.as_secs()), 1),
                4,
            ),
            vec!["replace emergency_1 by emergency_2"],
        ),
    ]);
    let plan = plan_pass(&failing("Server2", None, 3));
    assert_eq!(
        plan.held_back[0].message(),
        "replica Server2 (pod server2) never answered a heartbeat (container: Error, exit \
         code 1); replaced again 10s after the last replacement"
    );
}

#[test]
fn holds_unconfirmed_failures_beyond_the_budget() {
    // The kubelet finds every pod Ready; the operator's heartbeats fail for some.
    let pool = |failing: &[&str], budget: usize| {
        let names = ["Server1", "Server2", "Server3"];
        let beats: Vec<(&str, PodBeat)> = ["server1", "server2", "server3"]
            .into_iter()
            .map(|p| {
                let health = if failing.contains(&p) {
                    Health::Failed
                } else {
                    Health::Healthy
                };
                (p, beat(health, LONG, 3600))
            })
            .collect();
        let mut input = input(&names, names.iter().map(|n| pod(n)).collect(), &beats);
        input.max_unconfirmed = budget;
        input
    };
    check(vec![
        (
            "one within the budget is replaced",
            pool(&["server2"], 1),
            vec!["replace Server2 by emergency_1"],
        ),
        (
            "a budget of 0 replaces none",
            pool(&["server2"], 0),
            vec!["hold server2"],
        ),
        (
            "a replacement still in progress uses the budget up",
            {
                let mut input = pool(&["server2"], 1);
                input.unconfirmed.insert(name("Server3"));
                input.pods[2].kubelet_ready = Some(true);
                input
                    .beats
                    .insert("uid-server3".to_owned(), beat(Health::Starting, None, 5));
                input
            },
            vec!["hold server2"],
        ),
    ]);
    // Beyond the budget the others keep serving. (Which emergency number each
    // failure of one pass gets follows the plan's order of observed pods.)
    let plan = plan_pass(&pool(&["server1", "server2", "server3"], 1));
    let [
        PlanAction::Replace {
            failed,
            replacement,
        },
    ] = plan.actions.as_slice()
    else {
        panic!("{:?}", plan.actions);
    };
    assert_eq!(failed, &name("Server1"));
    assert_eq!(
        decisions(&plan)[1..],
        ["hold server2".to_owned(), "hold server3".to_owned()]
    );
    assert_eq!(plan.unconfirmed.in_progress, vec![replacement.clone()]);
    // Held ones keep serving on the kubelet's word.
    assert!(plan.serving[&name("Server2")].routable);
}

#[test]
fn rolls_out_one_pod_at_a_time() {
    let outdated = |replica: &str| {
        let mut pod = pod(replica);
        pod.template = Some(OLD_TEMPLATE.to_owned());
        pod
    };
    let surge = |replica: &str, pod_name: &str| named_pod(replica, pod_name);
    let three_old = vec![
        outdated("Server1"),
        outdated("Server2"),
        outdated("Server3"),
    ];
    let all = ["Server1", "Server2", "Server3"];
    let beats = healthy(&["server1", "server2", "server3"]);
    check(vec![
        (
            "the first outdated replica gets a new pod beside its old one",
            with_beats(input(&all, three_old.clone(), &[]), beats.clone()),
            vec!["roll Server1 to server1-abcde"],
        ),
        (
            "while a new pod starts, nothing else rolls",
            with_beats(
                input(
                    &all,
                    [three_old.clone(), vec![surge("Server1", "server1-abcde")]].concat(),
                    &[("server1-abcde", beat(Health::Starting, None, 1))],
                ),
                beats.clone(),
            ),
            vec![],
        ),
        (
            "a failed replica is replaced, not rolled",
            {
                let mut input = with_beats(input(&all, three_old.clone(), &[]), beats.clone());
                input.pods[0].state = PodState::Exited;
                input
                    .beats
                    .insert("uid-server1".to_owned(), beat(Health::Failed, LONG, 3600));
                input
            },
            vec![
                "replace Server1 by emergency_1",
                "roll Server2 to server2-abcde",
            ],
        ),
    ]);
    // A new pod that answers and that the kubelet finds Ready takes the replica over.
    let handed = with_beats(
        input(
            &all,
            [three_old, vec![surge("Server1", "server1-abcde")]].concat(),
            &[("server1-abcde", beat(Health::Healthy, Some(1), 1))],
        ),
        beats,
    );
    let plan = plan_pass(&handed);
    assert_eq!(plan.serving[&name("Server1")].pod, "server1-abcde");
    assert!(plan.serving[&name("Server1")].current);
    assert_eq!(plan.serving[&name("Server2")].pod, "server2");
}

#[test]
fn stalls_on_a_start_failure() {
    let mut old = pod("Server1");
    old.template = Some(OLD_TEMPLATE.to_owned());
    let mut cannot_pull = named_pod("Server1", "server1-abcde");
    cannot_pull.state = PodState::Pending;
    cannot_pull.kubelet_ready = Some(false);
    cannot_pull.start_failure = Some(StartFailure {
        reason: "ImagePullBackOff",
        message: "no such image".to_owned(),
    });
    let mut failed_new = named_pod("Server1", "server1-abcde");
    failed_new.kubelet_ready = Some(false);
    let mut never_runs = pod("Server2");
    never_runs.state = PodState::Pending;
    never_runs.kubelet_ready = None;
    never_runs.start_failure = Some(StartFailure {
        reason: "Unschedulable",
        message: "0/3 nodes fit".to_owned(),
    });
    check(vec![
        (
            "a new pod that cannot pull its image",
            with_beats(
                input(&["Server1"], vec![old.clone(), cannot_pull], &[]),
                healthy(&["server1"]),
            ),
            vec!["stall on server1-abcde: RolloutStalled"],
        ),
        (
            "a new pod that fails its heartbeats",
            with_beats(
                input(
                    &["Server1"],
                    vec![old.clone(), failed_new],
                    &[("server1-abcde", beat(Health::Failed, None, 60))],
                ),
                healthy(&["server1"]),
            ),
            vec!["stall on server1-abcde: RolloutStalled"],
        ),
        (
            "a replica's own pod that will never start is reported",
            with_beats(
                input(
                    &["Server1", "Server2"],
                    vec![pod("Server1"), never_runs],
                    &[],
                ),
                healthy(&["server1"]),
            ),
            vec!["cannot start Server2: Unschedulable"],
        ),
    ]);
    let plan = plan_pass(&with_beats(
        input(
            &["Server1"],
            vec![old, {
                let mut p = named_pod("Server1", "server1-abcde");
                p.start_failure = Some(StartFailure {
                    reason: "ErrImagePull",
                    message: String::new(),
                });
                p
            }],
            &[],
        ),
        healthy(&["server1"]),
    ));
    // The outdated pod still serves.
    assert_eq!(plan.serving[&name("Server1")].pod, "server1");
}

#[test]
fn an_unrealisable_spec_keeps_the_members_the_status_names() {
    let mut input = with_beats(
        input(&[], vec![pod("Server1"), pod("Server2")], &[]),
        healthy(&["server1"]),
    );
    input.desired = None;
    input
        .status_pods
        .insert(name("Server1"), "server1".to_owned());
    // Not probed yet: what the status said.
    input
        .status_pods
        .insert(name("Server2"), "server2".to_owned());
    input.beats.remove("uid-server2");
    input.status_ready.insert("server2".to_owned());
    let plan = plan_pass(&input);
    assert!(decisions(&plan).is_empty(), "{:?}", decisions(&plan));
    assert_eq!(plan.serving.len(), 2);
    assert!(plan.serving[&name("Server1")].routable);
    assert!(plan.serving[&name("Server2")].routable);
}
