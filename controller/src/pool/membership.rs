//! Validation of `/add` and `/rm`: which names a request adds or removes, or why it
//! is refused. Pure functions, so a rejected call provably changes nothing: the
//! supervisor applies a change only after these return `Ok`.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::seq::IndexedRandom;

use super::{NameError, ReplicaName};
use crate::ring::{Ring, RingConfig, WeightError};

/// Why an `/add` or `/rm` request is refused. The messages are the contract's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("Length of hostname list is more than newly added instances")]
    TooManyNamesToAdd,
    #[error("Length of hostname list is more than removable instances")]
    TooManyNamesToRemove,
    #[error("'n' must be an integer of at least 1")]
    BadCount,
    #[error("invalid hostname '{name}': {reason}")]
    InvalidName { name: String, reason: NameError },
    #[error("hostname '{0}' appears more than once in the request")]
    DuplicateName(String),
    #[error("hostname '{0}' is already in use")]
    NameInUse(String),
    /// In a cluster, pod names are lowercase: `server9` would be the pod of `Server9`.
    #[error(
        "hostname '{name}' would share its pod name with the generated name '{generated}': \
         write it '{generated}' or choose another"
    )]
    ShadowsGenerated { name: String, generated: String },
    #[error("adding {adding} replicas to {current} would exceed the maximum of {max}")]
    AboveMaximum {
        adding: u64,
        current: usize,
        max: usize,
    },
    #[error("hostname '{0}' is not a replica of this load balancer")]
    UnknownName(String),
    #[error("cannot remove {n} replicas: there are only {current}")]
    NotEnoughReplicas { n: u64, current: usize },
    #[error(
        "'weights' names '{0}', which is not in 'hostnames': only named replicas take a weight"
    )]
    WeightForUnnamed(String),
    #[error("{0}")]
    Weights(#[from] WeightError),
}

/// Ring weights by replica name; a replica not listed has weight 1.
pub type Weights = HashMap<ReplicaName, u32>;

/// The weights `/add` gives the replicas it adds (`added`, from [`names_to_add`]): the
/// request's `weights` by hostname, which must each name one of them.
pub fn weights_to_add(
    added: &[ReplicaName],
    weights: &BTreeMap<String, u32>,
) -> Result<Weights, MembershipError> {
    weights
        .iter()
        .map(|(raw, &weight)| {
            let name = added
                .iter()
                .find(|name| name.as_str() == raw)
                .ok_or_else(|| MembershipError::WeightForUnnamed(raw.clone()))?;
            Ok((name.clone(), weight))
        })
        .collect()
}

/// Refuses `weights` over `members` that `ring` cannot honour (a weight out of range,
/// or more virtual servers than a slot ring holds), so that a change is refused rather
/// than routed with the wrong shares.
pub fn check_weights(
    members: &[ReplicaName],
    weights: &Weights,
    ring: &RingConfig,
) -> Result<(), MembershipError> {
    if members
        .iter()
        .all(|m| weights.get(m).is_none_or(|&w| w == 1))
    {
        return Ok(());
    }
    let weighted: Vec<(&str, u32)> = members
        .iter()
        .map(|m| (m.as_str(), weights.get(m).copied().unwrap_or(1)))
        .collect();
    Ring::build_weighted(&weighted, ring)?;
    Ok(())
}

/// Parses and checks the requested names: valid, and no name twice.
fn parse_names(hostnames: &[String]) -> Result<Vec<ReplicaName>, MembershipError> {
    let mut seen = HashSet::new();
    hostnames
        .iter()
        .map(|raw| {
            let name = ReplicaName::parse(raw).map_err(|reason| MembershipError::InvalidName {
                name: raw.clone(),
                reason,
            })?;
            if !seen.insert(name.clone()) {
                return Err(MembershipError::DuplicateName(raw.clone()));
            }
            Ok(name)
        })
        .collect()
}

/// The names that `/add` with `n` and `hostnames` adds to `desired`.
///
/// `in_use` holds every name that may not be taken: the desired members and any
/// replica still running (a failed one being stopped, for instance). Names missing
/// from `hostnames` become the lowest free `Server<k>`.
pub fn names_to_add(
    desired: &[ReplicaName],
    in_use: &[ReplicaName],
    n: u64,
    hostnames: &[String],
    max_replicas: usize,
) -> Result<Vec<ReplicaName>, MembershipError> {
    if n == 0 {
        return Err(MembershipError::BadCount);
    }
    if hostnames.len() as u64 > n {
        return Err(MembershipError::TooManyNamesToAdd);
    }
    let mut names = parse_names(hostnames)?;
    let taken: HashSet<&ReplicaName> = desired.iter().chain(in_use).collect();
    if let Some(clash) = names.iter().find(|name| taken.contains(name)) {
        return Err(MembershipError::NameInUse(clash.to_string()));
    }
    if desired.len() as u64 + n > max_replicas as u64 {
        return Err(MembershipError::AboveMaximum {
            adding: n,
            current: desired.len(),
            max: max_replicas,
        });
    }
    let mut k = 1;
    while (names.len() as u64) < n {
        let generated = ReplicaName::server(k);
        k += 1;
        if !taken.contains(&generated) && !names.contains(&generated) {
            names.push(generated);
        }
    }
    Ok(names)
}

/// The names that `/rm` with `n` and `hostnames` removes from `desired`; names not
/// given are chosen at random among the others.
pub fn names_to_remove<R: rand::Rng + ?Sized>(
    desired: &[ReplicaName],
    n: u64,
    hostnames: &[String],
    rng: &mut R,
) -> Result<Vec<ReplicaName>, MembershipError> {
    if n == 0 {
        return Err(MembershipError::BadCount);
    }
    if hostnames.len() as u64 > n {
        return Err(MembershipError::TooManyNamesToRemove);
    }
    if n > desired.len() as u64 {
        return Err(MembershipError::NotEnoughReplicas {
            n,
            current: desired.len(),
        });
    }
    let mut names = parse_names(hostnames)?;
    if let Some(unknown) = names.iter().find(|name| !desired.contains(name)) {
        return Err(MembershipError::UnknownName(unknown.to_string()));
    }
    let others: Vec<&ReplicaName> = desired.iter().filter(|d| !names.contains(d)).collect();
    let missing = n as usize - names.len();
    names.extend(
        others
            .choose_multiple(rng, missing)
            .map(|name| (*name).clone()),
    );
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn names(list: &[&str]) -> Vec<ReplicaName> {
        list.iter()
            .map(|n| ReplicaName::parse(n).unwrap())
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn add_fills_missing_names_with_the_lowest_free_server_numbers() {
        let desired = names(&["Server1", "Server3"]);
        let added = names_to_add(&desired, &[], 3, &strings(&["Server2"]), 10).unwrap();
        assert_eq!(added, names(&["Server2", "Server4", "Server5"]));
    }

    #[test]
    fn add_refuses_each_bad_request() {
        let desired = names(&["Server1", "Server2"]);
        let running = names(&["Server9"]);
        let add = |n, h: &[&str]| names_to_add(&desired, &running, n, &strings(h), 4);
        assert_eq!(add(0, &[]), Err(MembershipError::BadCount));
        assert_eq!(add(1, &["A", "B"]), Err(MembershipError::TooManyNamesToAdd));
        assert!(matches!(
            add(1, &["a b"]),
            Err(MembershipError::InvalidName { .. })
        ));
        assert_eq!(
            add(2, &["A", "A"]),
            Err(MembershipError::DuplicateName("A".into()))
        );
        assert_eq!(
            add(1, &["Server2"]),
            Err(MembershipError::NameInUse("Server2".into()))
        );
        // A replica that is still running (being stopped) keeps its name.
        assert_eq!(
            add(1, &["Server9"]),
            Err(MembershipError::NameInUse("Server9".into()))
        );
        assert!(matches!(
            add(3, &[]),
            Err(MembershipError::AboveMaximum { .. })
        ));
        assert_eq!(add(2, &[]).unwrap(), names(&["Server3", "Server4"]));
    }

    #[test]
    fn remove_takes_named_then_random_members() {
        let desired = names(&["Server1", "Server2", "Server3", "Server4"]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let removed = names_to_remove(&desired, 3, &strings(&["Server2"]), &mut rng).unwrap();
        assert_eq!(removed.len(), 3);
        assert_eq!(removed[0].as_str(), "Server2");
        let unique: HashSet<_> = removed.iter().collect();
        assert_eq!(unique.len(), 3, "no member is removed twice: {removed:?}");
        assert!(removed.iter().all(|r| desired.contains(r)));
    }

    #[test]
    fn remove_refuses_each_bad_request() {
        let desired = names(&["Server1", "Server2"]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut rm = |n, h: &[&str]| names_to_remove(&desired, n, &strings(h), &mut rng);
        assert_eq!(rm(0, &[]), Err(MembershipError::BadCount));
        assert_eq!(
            rm(1, &["Server1", "Server2"]),
            Err(MembershipError::TooManyNamesToRemove)
        );
        assert_eq!(
            rm(3, &[]),
            Err(MembershipError::NotEnoughReplicas { n: 3, current: 2 })
        );
        assert_eq!(
            rm(1, &["Server7"]),
            Err(MembershipError::UnknownName("Server7".into()))
        );
        assert_eq!(
            rm(2, &["Server1", "Server1"]),
            Err(MembershipError::DuplicateName("Server1".into()))
        );
    }
}
