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

/// The most replicas a pool may have: `max_replicas`, lowered to what `ring` holds at
/// full strength ([`RingConfig::member_capacity`]).
pub fn replica_limit(max_replicas: usize, ring: &RingConfig) -> usize {
    ring.member_capacity()
        .map_or(max_replicas, |capacity| capacity.min(max_replicas))
}

/// A pool as `/add` sees it, from whichever owner keeps it (the local supervisor or,
/// in a cluster, the `ServerPool`'s spec).
#[derive(Debug, Clone, Copy)]
pub struct AddTo<'a> {
    /// The members the pool is to have.
    pub desired: &'a [ReplicaName],
    /// Every name that may not be taken (see [`names_to_add`]).
    pub in_use: &'a [ReplicaName],
    /// The weight of each desired member.
    pub weights: &'a Weights,
    /// The configured maximum, before [`replica_limit`] lowers it to the ring's room.
    pub max_replicas: usize,
    pub ring: &'a RingConfig,
}

/// An accepted `/add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    /// The replicas it adds, in order.
    pub names: Vec<ReplicaName>,
    /// The weights the request gives them.
    pub added_weights: Weights,
    /// The weight of every member after the change.
    pub weights_after: Weights,
}

/// The one validation of `/add`, for both owners of a pool: the names (see
/// [`names_to_add`], with the limit of [`replica_limit`]), then the owner's own rule
/// for the members after the change (`admits`: in a cluster, names that can be pods),
/// then the weights, which the ring must be able to honour. Nothing is changed here.
pub fn check_add<E: From<MembershipError>>(
    pool: AddTo<'_>,
    n: u64,
    hostnames: &[String],
    weights: &BTreeMap<String, u32>,
    admits: impl FnOnce(&[ReplicaName]) -> Result<(), E>,
) -> Result<Addition, E> {
    let limit = replica_limit(pool.max_replicas, pool.ring);
    let names = names_to_add(pool.desired, pool.in_use, n, hostnames, limit)?;
    let members_after: Vec<ReplicaName> = pool.desired.iter().chain(&names).cloned().collect();
    admits(&members_after)?;
    let added_weights = weights_to_add(&names, weights)?;
    let mut weights_after = pool.weights.clone();
    weights_after.extend(added_weights.iter().map(|(n, w)| (n.clone(), *w)));
    check_weights(&members_after, &weights_after, pool.ring)?;
    Ok(Addition {
        names,
        added_weights,
        weights_after,
    })
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

    #[test]
    fn add_is_held_to_what_the_ring_holds_then_the_owners_rule_then_the_weights() {
        let course = RingConfig::course(); // 512 slots / 9 vnodes: room for 56
        assert_eq!(replica_limit(100, &course), 56);
        assert_eq!(replica_limit(10, &course), 10);
        assert_eq!(replica_limit(7, &RingConfig::default()), 7);
        let desired = names(&["Server1", "Server2"]);
        let none = Weights::new();
        let pool = |max_replicas, ring| AddTo {
            desired: &desired,
            in_use: &desired,
            weights: &none,
            max_replicas,
            ring,
        };
        let add = |pool, n, hostnames: &[&str], weights: &[(&str, u32)], refuse: bool| {
            let weights: BTreeMap<String, u32> =
                weights.iter().map(|(n, w)| (n.to_string(), *w)).collect();
            check_add(pool, n, &strings(hostnames), &weights, |all| {
                assert_eq!(all.len(), 2 + n as usize);
                match refuse {
                    true => Err(MembershipError::NameInUse("owner".into())),
                    false => Ok(()),
                }
            })
        };
        assert_eq!(
            add(pool(100, &course), 55, &[], &[], false),
            Err(MembershipError::AboveMaximum {
                adding: 55,
                current: 2,
                max: 56
            })
        );
        // The owner's rule comes before the weights.
        assert_eq!(
            add(pool(100, &course), 1, &["A"], &[("A", 0)], true),
            Err(MembershipError::NameInUse("owner".into()))
        );
        assert!(matches!(
            add(pool(100, &course), 1, &["A"], &[("A", 0)], false),
            Err(MembershipError::Weights(_))
        ));
        let added = add(pool(100, &course), 2, &["A"], &[("A", 2)], false).unwrap();
        assert_eq!(added.names, names(&["A", "Server3"]));
        assert_eq!(
            added.added_weights,
            Weights::from([(names(&["A"])[0].clone(), 2)])
        );
        assert_eq!(added.weights_after, added.added_weights);
    }
}
