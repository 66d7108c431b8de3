//! The names and slots of a pool's pods: from a `ServerPool` to the desired logical
//! names (what `/rep` lists and `SERVER_ID` says), their pod names, and the slot
//! (spec name) each emergency replacement fills. Pure functions, unit-tested here.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::crd::{ReplacementStatus, ServerPoolSpec};
use crate::pool::{MembershipError, admission};
use crate::replica_name::ReplicaName;

/// Why a pool's names cannot be turned into pods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    #[error("spec.hostnames: {0}")]
    Hostnames(MembershipError),
    #[error("replica name '{0}' cannot name a pod: a pod name must end with a letter or digit")]
    NotAPodName(String),
    #[error("replica names '{first}' and '{second}' would both be pod '{pod}'")]
    PodNameClash {
        first: String,
        second: String,
        pod: String,
    },
}

/// The DNS-1123 pod name of a logical replica name: lowercase, `_` → `-`
/// (`emergency_58` → `emergency-58`). A replica name already has at most 63
/// characters and starts with a letter or digit; it must also end with one.
pub fn pod_name(name: &ReplicaName) -> Result<String, NamingError> {
    let pod: String = name
        .as_str()
        .chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if !pod.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NamingError::NotAPodName(name.to_string()));
    }
    Ok(pod)
}

/// The generated name (`Server<k>`, `emergency_<n>`) whose pod name `name` would
/// also have, if `name` is not that generated name itself: `server9` → `Server9`,
/// `Emergency-3` → `emergency_3`. What the CRD's CEL rule on `spec.hostnames` refuses.
pub fn shadowed_generated_name(name: &str) -> Option<String> {
    let pod: String = name
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let generated = if let Some(k) = pod.strip_prefix("server").filter(|k| digits(k)) {
        format!("Server{k}")
    } else if let Some(n) = pod.strip_prefix("emergency-").filter(|n| digits(n)) {
        format!("emergency_{n}")
    } else {
        return None;
    };
    (generated != name).then_some(generated)
}

/// The pods of `names`, or the first name that has no pod name of its own.
pub fn pod_names(names: &[ReplicaName]) -> Result<Vec<String>, NamingError> {
    let mut seen: HashMap<String, &ReplicaName> = HashMap::new();
    names
        .iter()
        .map(|name| {
            let pod = pod_name(name)?;
            if let Some(first) = seen.insert(pod.clone(), name) {
                return Err(NamingError::PodNameClash {
                    first: first.to_string(),
                    second: name.to_string(),
                    pod,
                });
            }
            Ok(pod)
        })
        .collect()
}

/// The names the spec asks for, before replacements: the first `replicas` of
/// `hostnames`, then the lowest free `Server<k>` up to `replicas` (as `ringlb up`).
pub fn base_names(spec: &ServerPoolSpec) -> Result<Vec<ReplicaName>, NamingError> {
    let n = spec.replicas as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let hostnames = &spec.hostnames[..spec.hostnames.len().min(n)];
    admission::names_to_add(&[], &[], n as u64, hostnames, n).map_err(NamingError::Hostnames)
}

/// Follows recorded replacements: slot `Server2`, held by `emergency_4`, is
/// `emergency_4` today. (The status has one entry per slot; a chain can only come
/// from a hand-edited status, and a cycle stops where it closes.)
pub fn resolve(name: &ReplicaName, replacements: &HashMap<String, ReplicaName>) -> ReplicaName {
    let mut current = name.clone();
    let mut visited = HashSet::new();
    while let Some(next) = replacements.get(current.as_str()) {
        if !visited.insert(current.clone()) {
            break;
        }
        current = next.clone();
    }
    current
}

/// A pool's replacements as a map from slot (original name) to the replica that
/// holds it; entries that are not valid names are ignored.
pub fn replacement_map<'a>(
    recorded: impl IntoIterator<Item = &'a ReplacementStatus>,
) -> HashMap<String, ReplicaName> {
    recorded
        .into_iter()
        .filter_map(|r| Some((r.original.clone(), ReplicaName::parse(&r.replacement).ok()?)))
        .collect()
}

/// The desired logical names: each base name with its replacements followed, and
/// the pod name of each, checked to be distinct.
pub fn desired_members(
    spec: &ServerPoolSpec,
    replacements: &HashMap<String, ReplicaName>,
) -> Result<Vec<(ReplicaName, String)>, NamingError> {
    let mut desired: Vec<ReplicaName> = Vec::new();
    for base in base_names(spec)? {
        let name = resolve(&base, replacements);
        // A hand-made name that equals an emergency name already in use keeps its
        // own slot only once: the same replica cannot stand for two slots.
        if !desired.contains(&name) {
            desired.push(name);
        }
    }
    let pods = pod_names(&desired)?;
    Ok(desired.into_iter().zip(pods).collect())
}

/// The ring weight of each desired member: `spec.weights` of its slot (the base name it
/// stands for), so that a replacement weighs what the replica it replaced did.
pub fn member_weights(
    spec: &ServerPoolSpec,
    replacements: &HashMap<String, ReplicaName>,
) -> admission::Weights {
    base_names(spec)
        .unwrap_or_default()
        .iter()
        .filter_map(|base| {
            let weight = *spec.weights.get(base.as_str())?;
            Some((resolve(base, replacements), weight))
        })
        .collect()
}

/// Refuses `spec.weights` that the spec's ring cannot honour (a slot ring too small for
/// them): the proxies would route as if every weight were 1, so the operator says so.
pub fn check_spec_weights(spec: &ServerPoolSpec) -> Result<(), String> {
    let (Ok(ring), Ok(slots)) = (spec.ring_config(), base_names(spec)) else {
        // Reported on their own (InvalidSpec).
        return Ok(());
    };
    let weights = member_weights(spec, &HashMap::new());
    admission::check_weights(&slots, &weights, &ring).map_err(|e| e.to_string())
}

/// The replacements worth keeping: one per slot the spec still has (the slots of
/// names scaled away or removed are dropped).
pub fn live_replacements(
    spec: &ServerPoolSpec,
    recorded: &[ReplacementStatus],
) -> Vec<ReplacementStatus> {
    let Ok(bases) = base_names(spec) else {
        return recorded.to_vec();
    };
    let mut seen = HashSet::new();
    recorded
        .iter()
        .filter(|r| bases.iter().any(|b| b.as_str() == r.original) && seen.insert(&r.original))
        .cloned()
        .collect()
}

/// The slot that `name` holds: the original name of the entry it replaced into,
/// else its own name (a replica that was never replaced is its own slot).
pub fn slot_of(name: &ReplicaName, recorded: &[ReplacementStatus]) -> String {
    recorded
        .iter()
        .find(|r| r.replacement == name.as_str())
        .map_or_else(|| name.to_string(), |r| r.original.clone())
}

/// `recorded` with one more replacement: replica `failed` gave way to
/// `replacement`. `served` says whether `failed` ever answered a heartbeat: if it
/// did, the slot's streak of unready replicas ends; if not, it grows (and the next
/// replacement of the slot waits longer, see [`replacement_delay`]).
pub fn record_replacement(
    recorded: &[ReplacementStatus],
    failed: &ReplicaName,
    replacement: &ReplicaName,
    served: bool,
) -> Vec<ReplacementStatus> {
    let slot = slot_of(failed, recorded);
    let mut out: Vec<ReplacementStatus> = recorded
        .iter()
        .filter(|r| r.original != slot)
        .cloned()
        .collect();
    let before = recorded.iter().find(|r| r.original == slot);
    out.push(ReplacementStatus {
        original: slot,
        replacement: replacement.to_string(),
        count: before.map_or(0, |r| r.count).saturating_add(1),
        unready_streak: if served {
            0
        } else {
            before.map_or(0, |r| r.unready_streak).saturating_add(1)
        },
    });
    out
}

/// Longest wait between two replacements of one slot.
pub const MAX_REPLACEMENT_DELAY: Duration = Duration::from_secs(300);

/// How long after a slot's last replacement its next one may come, when the
/// replica that fails did not serve long (see `reconciler::CRASH_LOOP_RESET`):
/// 10 s, 20 s, 40 s, … up to 5 minutes as `streak` (such replacements of the slot
/// in a row) grows, as the kubelet's CrashLoopBackOff restarts a container at 0,
/// 10, 30, 70 s …: an image that cannot start costs a handful of pods an hour
/// instead of one every few seconds. (A replica that served long is replaced at
/// once, and its slot's streak starts again.)
pub fn replacement_delay(streak: u32) -> Duration {
    (INITIAL_REPLACEMENT_DELAY * (1u32 << streak.min(16))).min(MAX_REPLACEMENT_DELAY)
}

/// The first wait of [`replacement_delay`]: the kubelet's first CrashLoopBackOff.
pub const INITIAL_REPLACEMENT_DELAY: Duration = Duration::from_secs(10);

/// The lowest number the next `emergency_<n>` may take: above every emergency name
/// recorded or in use, so that no two replicas of the namespace share one.
pub fn next_emergency<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
    names
        .into_iter()
        .filter_map(|n| n.strip_prefix("emergency_")?.parse::<u64>().ok())
        .max()
        .map_or(1, |n| n + 1)
}

/// The spec (`replicas`, `hostnames`) that gives exactly `bases` as base names,
/// spelled as briefly as it can be: no hostnames, else the current ones, else
/// every name written out.
pub fn spec_for(current_hostnames: &[String], bases: &[ReplicaName]) -> (u32, Vec<String>) {
    let replicas = bases.len() as u32;
    let kept = &current_hostnames[..current_hostnames.len().min(bases.len())];
    for hostnames in [&[][..], kept] {
        let probe = ServerPoolSpec {
            replicas,
            hostnames: hostnames.to_vec(),
            ..names_only_spec()
        };
        if base_names(&probe).ok().as_deref() == Some(bases) {
            return (replicas, hostnames.to_vec());
        }
    }
    (replicas, bases.iter().map(ReplicaName::to_string).collect())
}

/// A spec with only the fields that names depend on.
fn names_only_spec() -> ServerPoolSpec {
    ServerPoolSpec {
        replicas: 0,
        hostnames: Vec::new(),
        image: String::new(),
        port: 0,
        hashing: None,
        heartbeat: None,
        protocol: None,
        template: None,
        weights: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_the_ring_cannot_hold_are_refused() {
        let course = |weight: u32| ServerPoolSpec {
            replicas: 3,
            hashing: Some(crate::operator::crd::HashingSpec {
                preset: Some(crate::ring::Preset::Course),
                ..Default::default()
            }),
            weights: [("Server1".to_owned(), weight)].into(),
            ..names_only_spec()
        };
        // The course ring holds a total weight of 56: 54 + 1 + 1 fits, 55 + 1 + 1 does not.
        assert_eq!(check_spec_weights(&course(54)), Ok(()));
        let error = check_spec_weights(&course(55)).unwrap_err();
        assert!(error.contains("do not fit in 512 slots"), "{error}");
    }

    #[test]
    fn a_replacement_weighs_what_its_slot_weighs() {
        let spec = ServerPoolSpec {
            replicas: 3,
            weights: [("Server2".to_owned(), 3), ("Gone".to_owned(), 9)].into(),
            ..names_only_spec()
        };
        let replacements = HashMap::from([("Server2".to_owned(), name("emergency_1"))]);
        // Only desired members: `Gone` is not a slot of this spec.
        assert_eq!(
            member_weights(&spec, &replacements),
            admission::Weights::from([(name("emergency_1"), 3)])
        );
    }

    fn name(n: &str) -> ReplicaName {
        ReplicaName::parse(n).unwrap()
    }

    fn spec(replicas: u32, hostnames: &[&str]) -> ServerPoolSpec {
        ServerPoolSpec {
            replicas,
            hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
            ..names_only_spec()
        }
    }

    fn replaced(pairs: &[(&str, &str)]) -> Vec<ReplacementStatus> {
        pairs
            .iter()
            .map(|(f, r)| ReplacementStatus {
                original: f.to_string(),
                replacement: r.to_string(),
                ..ReplacementStatus::default()
            })
            .collect()
    }

    fn strings(names: &[(ReplicaName, String)]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect()
    }

    #[test]
    fn pod_names_are_dns_1123() {
        assert_eq!(pod_name(&name("emergency_58")).unwrap(), "emergency-58");
        assert_eq!(pod_name(&name("Server1")).unwrap(), "server1");
        assert_eq!(pod_name(&name("web-01")).unwrap(), "web-01");
        assert_eq!(
            pod_name(&name("Server_")),
            Err(NamingError::NotAPodName("Server_".into()))
        );
        assert_eq!(
            pod_names(&[name("Web_1"), name("web-1")]),
            Err(NamingError::PodNameClash {
                first: "Web_1".into(),
                second: "web-1".into(),
                pod: "web-1".into(),
            })
        );
    }

    #[test]
    fn desired_names_are_hostnames_then_servers() {
        let members = desired_members(&spec(4, &["A", "Server2"]), &HashMap::new()).unwrap();
        assert_eq!(
            strings(&members),
            [
                ("A".into(), "a".into()),
                ("Server2".into(), "server2".into()),
                ("Server1".into(), "server1".into()),
                ("Server3".into(), "server3".into()),
            ]
        );
        assert!(
            desired_members(&spec(0, &["A"]), &HashMap::new())
                .unwrap()
                .is_empty()
        );
        // Scaled below the hostnames: the first ones stay.
        let members = desired_members(&spec(1, &["A", "B"]), &HashMap::new()).unwrap();
        assert_eq!(strings(&members), [("A".into(), "a".into())]);
    }

    #[test]
    fn bad_hostnames_and_clashing_pod_names_are_refused() {
        assert!(matches!(
            desired_members(&spec(2, &["bad name"]), &HashMap::new()),
            Err(NamingError::Hostnames(MembershipError::InvalidName { .. }))
        ));
        assert!(matches!(
            desired_members(&spec(2, &["A", "A"]), &HashMap::new()),
            Err(NamingError::Hostnames(MembershipError::DuplicateName(_)))
        ));
        assert!(matches!(
            desired_members(&spec(2, &["Web_1", "web-1"]), &HashMap::new()),
            Err(NamingError::PodNameClash { .. })
        ));
    }

    #[test]
    fn replacements_take_the_place_of_the_failed_name() {
        let recorded = replaced(&[("Server2", "emergency_4")]);
        let members = desired_members(&spec(3, &[]), &replacement_map(&recorded)).unwrap();
        assert_eq!(
            strings(&members),
            [
                ("Server1".into(), "server1".into()),
                ("emergency_4".into(), "emergency-4".into()),
                ("Server3".into(), "server3".into()),
            ]
        );
        // Scaled down past Server2: its slot is no longer live.
        assert_eq!(live_replacements(&spec(3, &[]), &recorded), recorded);
        assert!(live_replacements(&spec(1, &[]), &recorded).is_empty());
        assert_eq!(
            next_emergency(recorded.iter().map(|r| r.replacement.as_str())),
            5
        );
        assert_eq!(next_emergency(["Server1"]), 1);
    }

    #[test]
    fn a_slot_keeps_one_entry_however_often_it_is_replaced() {
        // Server2 fails after serving, then its emergency replicas never start.
        let mut recorded = record_replacement(&[], &name("Server2"), &name("emergency_1"), true);
        recorded = record_replacement(&recorded, &name("emergency_1"), &name("emergency_2"), false);
        recorded = record_replacement(&recorded, &name("emergency_2"), &name("emergency_3"), false);
        recorded = record_replacement(&recorded, &name("Server1"), &name("emergency_4"), false);
        assert_eq!(
            recorded,
            [
                ReplacementStatus {
                    original: "Server2".into(),
                    replacement: "emergency_3".into(),
                    count: 3,
                    unready_streak: 2,
                },
                ReplacementStatus {
                    original: "Server1".into(),
                    replacement: "emergency_4".into(),
                    count: 1,
                    unready_streak: 1,
                },
            ]
        );
        assert_eq!(slot_of(&name("emergency_3"), &recorded), "Server2");
        assert_eq!(slot_of(&name("Server3"), &recorded), "Server3");
        // A replica of the slot that served ends the streak.
        let recorded =
            record_replacement(&recorded, &name("emergency_3"), &name("emergency_5"), true);
        let slot = recorded.iter().find(|r| r.original == "Server2").unwrap();
        assert_eq!((slot.count, slot.unready_streak), (4, 0));
    }

    #[test]
    fn unready_replacements_back_off_to_five_minutes() {
        let delays: Vec<u64> = (0..=7).map(|k| replacement_delay(k).as_secs()).collect();
        // 10 · 2^k s, capped at 300: CrashLoopBackOff's 10, 20, 40, 80, 160, 300.
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(replacement_delay(u32::MAX), MAX_REPLACEMENT_DELAY);
    }

    #[test]
    fn names_that_shadow_generated_ones_are_found_as_the_cel_rule_finds_them() {
        for (name, shadowed) in [
            ("server9", Some("Server9")),
            ("SERVER12", Some("Server12")),
            ("Emergency_3", Some("emergency_3")),
            ("emergency-3", Some("emergency_3")),
            ("Server9", None),
            ("emergency_3", None),
            ("server_9", None),
            ("server", None),
            ("web1", None),
            ("servers1", None),
        ] {
            assert_eq!(shadowed_generated_name(name).as_deref(), shadowed, "{name}");
        }
    }

    #[test]
    fn a_replacement_cycle_from_a_hand_edited_status_terminates() {
        let recorded = replaced(&[("Server1", "emergency_1"), ("emergency_1", "Server1")]);
        let members = desired_members(&spec(1, &[]), &replacement_map(&recorded)).unwrap();
        assert_eq!(members.len(), 1);
    }

    #[test]
    fn spec_for_keeps_the_hostnames_when_they_still_give_the_names() {
        let bases = base_names(&spec(4, &["A"])).unwrap();
        assert_eq!(spec_for(&["A".into()], &bases), (4, vec!["A".to_owned()]));
        // Back to generated names only: no hostnames left over.
        let bases = base_names(&spec(2, &[])).unwrap();
        assert_eq!(
            spec_for(&["Server1".into(), "web".into()], &bases),
            (2, vec![])
        );
        // Server2 removed: every name is spelled out.
        let bases = vec![name("A"), name("Server1"), name("Server3")];
        let (replicas, hostnames) = spec_for(&["A".into()], &bases);
        assert_eq!(replicas, 3);
        assert_eq!(hostnames, ["A", "Server1", "Server3"]);
        assert_eq!(
            base_names(&spec(replicas, &["A", "Server1", "Server3"])).unwrap(),
            bases
        );
    }
}
