//! The planning step: desired members vs observed replicas → actions.
//!
//! Pure and synchronous so that the local supervisor and the Kubernetes reconciler
//! share it, and so that every pool shape is unit-tested without I/O.

use std::collections::HashSet;

use super::ReplicaName;
use crate::replica_health::Health;

/// One replica as the runtime and the health checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub name: ReplicaName,
    pub health: Health,
}

/// How failures are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Replace failed replicas with `emergency_<n>` (the process and Kubernetes
    /// runtimes); when false (external replicas), a failed one only leaves the ring
    /// and rejoins once its heartbeat succeeds again.
    pub replace_failed: bool,
    /// The lowest number the next `emergency_<n>` may take.
    pub next_emergency: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Desired but not running: start it.
    Start(ReplicaName),
    /// Running but no longer desired: stop it.
    Stop(ReplicaName),
    /// Desired, running, failed: stop it and start `replacement` in its place.
    Replace {
        failed: ReplicaName,
        replacement: ReplicaName,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Where the next plan should continue numbering emergency replicas.
    pub next_emergency: u64,
}

/// Turns "desired vs observed" into actions. Converged pools give no actions.
pub fn plan(desired: &[ReplicaName], observed: &[Observed], policy: Policy) -> Plan {
    let desired_set: HashSet<&ReplicaName> = desired.iter().collect();
    let observed_set: HashSet<&ReplicaName> = observed.iter().map(|o| &o.name).collect();
    let mut next_emergency = policy.next_emergency;
    let mut actions = Vec::new();

    for o in observed {
        let wanted = desired_set.contains(&o.name);
        if !wanted {
            actions.push(Action::Stop(o.name.clone()));
        } else if o.health == Health::Failed && policy.replace_failed {
            // An emergency name must not collide with anything desired or running.
            let replacement = loop {
                let candidate = ReplicaName::emergency(next_emergency);
                next_emergency += 1;
                if !desired_set.contains(&candidate) && !observed_set.contains(&candidate) {
                    break candidate;
                }
            };
            actions.push(Action::Replace {
                failed: o.name.clone(),
                replacement,
            });
        }
    }
    for name in desired {
        if !observed_set.contains(name) {
            actions.push(Action::Start(name.clone()));
        }
    }
    Plan {
        actions,
        next_emergency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<ReplicaName> {
        list.iter()
            .map(|n| ReplicaName::parse(n).unwrap())
            .collect()
    }

    fn seen(list: &[(&str, Health)]) -> Vec<Observed> {
        list.iter()
            .map(|(n, health)| Observed {
                name: ReplicaName::parse(n).unwrap(),
                health: *health,
            })
            .collect()
    }

    fn name(n: &str) -> ReplicaName {
        ReplicaName::parse(n).unwrap()
    }

    const REPLACE: Policy = Policy {
        replace_failed: true,
        next_emergency: 1,
    };

    #[test]
    fn empty_pool_starts_everything() {
        let p = plan(&names(&["Server1", "Server2"]), &[], REPLACE);
        assert_eq!(
            p.actions,
            vec![
                Action::Start(name("Server1")),
                Action::Start(name("Server2"))
            ]
        );
    }

    #[test]
    fn converged_pool_does_nothing() {
        let observed = seen(&[
            ("Server1", Health::Healthy),
            ("Server2", Health::Starting),
            ("Server3", Health::Suspect),
        ]);
        let p = plan(
            &names(&["Server1", "Server2", "Server3"]),
            &observed,
            REPLACE,
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert_eq!(p.next_emergency, 1);
    }

    #[test]
    fn scale_up_starts_only_the_missing() {
        let observed = seen(&[("Server1", Health::Healthy)]);
        let p = plan(
            &names(&["Server1", "Server2", "Server3"]),
            &observed,
            REPLACE,
        );
        assert_eq!(
            p.actions,
            vec![
                Action::Start(name("Server2")),
                Action::Start(name("Server3"))
            ]
        );
    }

    #[test]
    fn scale_down_stops_the_extras() {
        let observed = seen(&[("Server1", Health::Healthy), ("Server2", Health::Failed)]);
        let p = plan(&names(&["Server1"]), &observed, REPLACE);
        // A failed replica that is no longer desired is stopped, not replaced.
        assert_eq!(p.actions, vec![Action::Stop(name("Server2"))]);
    }

    #[test]
    fn failed_member_is_replaced_by_the_next_free_emergency_name() {
        let observed = seen(&[
            ("Server1", Health::Healthy),
            ("Server2", Health::Failed),
            ("emergency_1", Health::Healthy),
        ]);
        let desired = names(&["Server1", "Server2", "emergency_1"]);
        let p = plan(&desired, &observed, REPLACE);
        assert_eq!(
            p.actions,
            vec![Action::Replace {
                failed: name("Server2"),
                replacement: name("emergency_2"),
            }]
        );
        assert_eq!(p.next_emergency, 3);
    }

    #[test]
    fn two_failures_get_two_distinct_replacements() {
        let observed = seen(&[("A", Health::Failed), ("B", Health::Failed)]);
        let p = plan(
            &names(&["A", "B"]),
            &observed,
            Policy {
                replace_failed: true,
                next_emergency: 7,
            },
        );
        assert_eq!(
            p.actions,
            vec![
                Action::Replace {
                    failed: name("A"),
                    replacement: name("emergency_7"),
                },
                Action::Replace {
                    failed: name("B"),
                    replacement: name("emergency_8"),
                },
            ]
        );
        assert_eq!(p.next_emergency, 9);
    }

    #[test]
    fn externally_deleted_replica_is_started_again_under_its_name() {
        // Kubernetes: a pod deleted from outside simply disappears from the observed list.
        let observed = seen(&[("Server1", Health::Healthy)]);
        let p = plan(&names(&["Server1", "Server2"]), &observed, REPLACE);
        assert_eq!(p.actions, vec![Action::Start(name("Server2"))]);
    }

    #[test]
    fn external_replicas_are_never_replaced() {
        let observed = seen(&[("Server1", Health::Failed)]);
        let p = plan(
            &names(&["Server1"]),
            &observed,
            Policy {
                replace_failed: false,
                next_emergency: 1,
            },
        );
        assert!(p.actions.is_empty());
    }
}
