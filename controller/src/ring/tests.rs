//! Properties every algorithm must have, checked across the whole config matrix.

use super::*;
use proptest::prelude::*;

pub(super) const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::Slot,
    Algorithm::Point,
    Algorithm::Maglev,
    Algorithm::Rendezvous,
    Algorithm::RankTable,
];
pub(super) const HASHES: [HashFn; 3] = [HashFn::Quadratic, HashFn::Xxh3, HashFn::Murmur3];

/// A config of `algorithm` small enough to build many times in a test.
fn config(algorithm: Algorithm, hash: HashFn) -> RingConfig {
    let (slots, vnodes) = match algorithm {
        Algorithm::Slot => (4093, 9),
        Algorithm::Point => (0, 40),
        Algorithm::Maglev => (4093, 0),
        Algorithm::Rendezvous => (0, 0),
        Algorithm::RankTable => (4093, 0),
    };
    RingConfig {
        algorithm,
        hash,
        slots,
        vnodes,
    }
}

fn all_configs() -> impl Iterator<Item = RingConfig> {
    ALGORITHMS
        .into_iter()
        .flat_map(|a| HASHES.into_iter().map(move |h| config(a, h)))
}

/// Replica-like names: letters then an optional number, so natural sort gets exercised.
fn member_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z_-]{0,6}[0-9]{0,3}"
}

fn member_set(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set(member_name(), 1..=max).prop_map(|s| s.into_iter().collect())
}

/// The failover contract of [`Ring::candidates`]: it starts with [`Ring::lookup`] and
/// yields every member once.
pub(super) fn candidates_keep_the_failover_contract(
    ring: &Ring,
    key: &[u8],
) -> Result<(), TestCaseError> {
    let order: Vec<usize> = ring.candidates(key).collect();
    prop_assert_eq!(order.first().copied(), ring.lookup(key));
    let mut sorted = order;
    sorted.sort_unstable();
    prop_assert_eq!(sorted, (0..ring.len()).collect::<Vec<_>>());
    Ok(())
}

fn owner<'r>(ring: &'r Ring, key: &[u8]) -> &'r str {
    &ring.members()[ring.lookup(key).expect("non-empty ring")]
}

#[test]
fn empty_ring_has_no_owner() {
    for c in all_configs() {
        let ring = Ring::build::<&str>(&[], &c);
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.lookup(b"123456"), None);
        assert_eq!(ring.lookup_hash(7), None);
        assert_eq!(ring.candidates(b"123456").count(), 0);
        assert!(ring.shares().is_empty());
    }
}

#[test]
fn single_member_owns_everything() {
    for c in all_configs() {
        let ring = Ring::build(&["only"], &c);
        assert_eq!(ring.lookup(b"x"), Some(0));
        assert_eq!(ring.candidates(b"x").collect::<Vec<_>>(), [0]);
    }
}

#[test]
fn members_are_deduplicated_in_natural_order() {
    let ring = Ring::build(
        &["Server10", "Server2", "Server1", "Server2"],
        &RingConfig::course(),
    );
    assert_eq!(ring.members(), ["Server1", "Server2", "Server10"]);
    assert_eq!(ring.config(), &RingConfig::course());
}

#[test]
fn unvalidated_configs_still_build_usable_rings() {
    let members = ["a", "b", "c"];
    let broken = [
        RingConfig {
            slots: 0,
            ..RingConfig::course()
        },
        RingConfig {
            vnodes: 0,
            ..RingConfig::course()
        },
        RingConfig {
            slots: 2,
            ..RingConfig::course()
        }, // fewer slots than members
        RingConfig {
            slots: 1000,
            ..RingConfig::default()
        }, // not prime: built with 1009
        RingConfig {
            slots: 0,
            ..RingConfig::default()
        },
        RingConfig {
            vnodes: 0,
            ..config(Algorithm::Point, HashFn::Xxh3)
        },
    ];
    for c in broken {
        let ring = Ring::build(&members, &c);
        assert!(ring.lookup(b"123456").is_some(), "{c:?}");
        assert_eq!(ring.candidates(b"123456").count(), 3, "{c:?}");
    }
}

/// Names that differ only in their last character (`r-1`, `r-2`, …) each own their share
/// of a ring with virtual nodes. With xxh3 seeded by the vnode index alone they did not:
/// for an input of 1 to 3 bytes xxh3 only XORs the seed into the input's bytes before
/// mixing, so `r-1`'s point for vnode s and `r-2`'s for vnode s ^ 3 (about) were the same
/// point, and the lower name owned both. (proptest found it with `I90` and `I97`.)
#[test]
fn names_that_differ_in_their_last_character_each_own_their_share() {
    let members = ["r-1", "r-2", "r-3", "r-4", "r-5", "r-6"];
    for hash in [HashFn::Xxh3, HashFn::Murmur3] {
        for algorithm in [Algorithm::Point, Algorithm::Slot] {
            let c = RingConfig {
                slots: 1 << 20,
                vnodes: 400,
                ..config(algorithm, hash)
            };
            let ring = Ring::build(&members, &c);
            for (name, share) in members.iter().zip(ring.shares()) {
                // 1/6 each; 400 points per member are within 20% of it (σ ≈ 5%).
                assert!(
                    (share * 6.0 - 1.0).abs() < 0.2,
                    "{algorithm:?} {hash:?}: {name} owns {share:.4}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The ring depends on the member set only: not on order, not on duplicates.
    #[test]
    fn same_set_in_any_order_gives_the_same_ring(
        (members, shuffled) in member_set(12).prop_flat_map(|m| {
            // Duplicate a prefix, then shuffle.
            let mut doubled = m.clone();
            doubled.extend(m.iter().take(3).cloned());
            (Just(m), Just(doubled).prop_shuffle())
        }),
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 32),
    ) {
        for c in all_configs() {
            let a = Ring::build(&members, &c);
            let b = Ring::build(&shuffled, &c);
            prop_assert_eq!(a.members(), b.members());
            for key in &keys {
                prop_assert_eq!(a.lookup(key), b.lookup(key));
                prop_assert!(a.candidates(key).eq(b.candidates(key)));
            }
        }
    }

    /// candidates() starts with lookup() and yields every member exactly once.
    #[test]
    fn candidates_yield_each_member_once_starting_with_lookup(
        members in member_set(40),
        extra in 0usize..200,
        key in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        // Sometimes more than 128 members (heap bitmap) and more than a small slot table holds.
        let mut members = members;
        members.extend((0..extra).map(|i| format!("extra{i}")));
        let small_slot_table = RingConfig { slots: 97, ..RingConfig::course() };
        for c in all_configs().chain([small_slot_table]) {
            candidates_keep_the_failover_contract(&Ring::build(&members, &c), &key)?;
        }
    }

    /// Point and rendezvous with name-based hashes: adding a member moves keys only to it,
    /// removing one moves only its keys. (Not for `quadratic`, whose member hash is the
    /// canonical position: inserting a member shifts the positions, hence the points, of
    /// every member sorting after it.)
    #[test]
    fn point_and_rendezvous_move_only_the_keys_they_must(
        members in member_set(15),
        newcomer in member_name(),
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        prop_assume!(!members.contains(&newcomer));
        let mut grown = members.clone();
        grown.push(newcomer.clone());
        for algorithm in [Algorithm::Point, Algorithm::Rendezvous] {
            for hash in [HashFn::Xxh3, HashFn::Murmur3] {
                let c = config(algorithm, hash);
                let before = Ring::build(&members, &c);
                let after = Ring::build(&grown, &c);
                for key in &keys {
                    let key = key.to_string();
                    let (old, new) = (owner(&before, key.as_bytes()), owner(&after, key.as_bytes()));
                    // Growing: a key either stays or goes to the newcomer.
                    // Read backwards, the same check says shrinking moves only the
                    // removed member's keys.
                    prop_assert!(old == new || new == newcomer, "{:?}: {} -> {}", c, old, new);
                }
            }
        }
    }

    /// Maglev's weaker guarantee. Removing one of N members must move its ≈1/N of the keys;
    /// the rebuilt permutations also shift some other entries, but the paper's analysis and
    /// its Figure 10 keep that small for M ≫ N. It is a tendency, not a bound: over 400
    /// random sets of 3–8 members the survivors' keys that moved were at most 0.19/N, but
    /// two members whose permutations interleave closely couple the fill, and proptest
    /// found a set of four where 34% moved (1.38/N; kept as a vector below). We assert
    /// that keys of surviving members move at most twice as often as the removed
    /// member's own share, i.e. total movement is at most three times the ideal 1/N.
    #[test]
    fn maglev_keeps_most_keys_in_place_when_a_member_leaves(
        members in member_set(20).prop_filter("at least 3", |m| m.len() >= 3),
        leaving in any::<prop::sample::Index>(),
    ) {
        let c = RingConfig { slots: 65_537, ..config(Algorithm::Maglev, HashFn::Xxh3) };
        let gone = leaving.get(&members).clone();
        let rest: Vec<&String> = members.iter().filter(|m| **m != gone).collect();
        let before = Ring::build(&members, &c);
        let after = Ring::build(&rest, &c);
        let (mut stayed_elsewhere, mut moved_elsewhere) = (0u32, 0u32);
        for id in 0..20_000u32 {
            let key = id.to_string();
            let old = owner(&before, key.as_bytes());
            if old != gone {
                stayed_elsewhere += u32::from(old == owner(&after, key.as_bytes()));
                moved_elsewhere += u32::from(old != owner(&after, key.as_bytes()));
            }
        }
        let n = members.len() as f64;
        let survivors_moved = f64::from(moved_elsewhere) / f64::from(stayed_elsewhere + moved_elsewhere);
        prop_assert!(survivors_moved <= 2.0 / n, "{survivors_moved} of survivors' keys moved, N = {n}");
    }
}

/// The set proptest found: with xxh3 and M = 65 537, removing `A` (or `d`) moves about a
/// third of the other members' keys, while removing `KYq-7` or `cRLMF_00` moves about a
/// ninth: Maglev's disruption depends on how the members' permutations interleave.
#[test]
fn maglev_disruption_depends_on_the_members_permutations() {
    let c = RingConfig {
        slots: 65_537,
        ..config(Algorithm::Maglev, HashFn::Xxh3)
    };
    let members: Vec<String> = ["A", "KYq-7", "cRLMF_00", "d"].map(String::from).to_vec();
    let survivors_moved = |gone: &str| {
        let rest: Vec<&String> = members.iter().filter(|m| *m != gone).collect();
        let (before, after) = (Ring::build(&members, &c), Ring::build(&rest, &c));
        let (mut kept, mut moved) = (0u32, 0u32);
        for id in 0..20_000u32 {
            let key = id.to_string();
            let old = owner(&before, key.as_bytes());
            if old != gone {
                let same = old == owner(&after, key.as_bytes());
                (kept, moved) = (kept + u32::from(same), moved + u32::from(!same));
            }
        }
        f64::from(moved) / f64::from(kept + moved)
    };
    let (a, k) = (survivors_moved("A"), survivors_moved("KYq-7"));
    assert!((0.30..0.40).contains(&a), "{a}");
    assert!((0.08..0.15).contains(&k), "{k}");
    assert!(a <= 2.0 / 4.0, "within the property's bound: {a}");
}

proptest! {
    // Each case enumerates the 900 000-key space per algorithm: few cases.
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Balance bound for the balanced algorithms, N ≤ 20.
    ///
    /// Model: if the key hash behaves like a random function, a member's key count is
    /// Binomial(K = 900 000, p) and its share deviates from p by σ = √(p(1−p)/K) ≤ √(p/K);
    /// relative to the mean 1/N that is ≤ √(N/K) = 0.0047 for N = 20. Maglev adds its table
    /// granularity (entry counts differ by at most one: ≤ N/M = 0.0003) and rendezvous adds
    /// nothing, so max/mean ≤ 1 + 6·0.0047 ≈ 1.03 holds with a six-sigma margin.
    /// The point ring's arcs add a per-member deviation of ≈ 1/√V for V points per member
    /// (a sum of V exponential gaps): with V = 1000 that is 0.032, and six of those plus the
    /// sampling term give max/mean ≤ 1.22.
    #[test]
    fn balanced_algorithms_stay_within_their_bound(members in member_set(20).prop_filter("2..=20", |m| m.len() >= 2)) {
        let bounds = [
            (RingConfig::default(), 1.03),
            (RingConfig { algorithm: Algorithm::Maglev, hash: HashFn::Xxh3, slots: MAGLEV_DEFAULT_SLOTS, vnodes: 0 }, 1.03),
            (RingConfig { algorithm: Algorithm::Rendezvous, hash: HashFn::Xxh3, slots: 0, vnodes: 0 }, 1.03),
            (RingConfig { algorithm: Algorithm::Rendezvous, hash: HashFn::Murmur3, slots: 0, vnodes: 0 }, 1.03),
            (RingConfig { algorithm: Algorithm::Point, hash: HashFn::Xxh3, slots: 0, vnodes: 1000 }, 1.22),
        ];
        for (c, bound) in bounds {
            let shares = Ring::build(&members, &c).shares();
            let max = shares.iter().copied().fold(0.0, f64::max);
            let max_over_mean = max * shares.len() as f64;
            prop_assert!(max_over_mean <= bound, "{:?} N = {}: max/mean {}", c, shares.len(), max_over_mean);
        }
    }
}

/// Owner (by name) of every entry of a table ring: with a table of M entries, the hash `e`
/// lands on entry `e`, so this is the ring's exact map of the uniform 64-bit hash space
/// (every entry covers the same number of hashes, up to one part in 2^64 / M).
fn entry_owners(ring: &Ring, size: u64) -> Vec<&str> {
    (0..size)
        .map(|e| ring.members()[ring.lookup_hash(e).expect("non-empty")].as_str())
        .collect()
}

/// (fraction of entries whose owner changed, fraction that moved between two members
/// present in both rings).
fn movement(before: &[&str], after: &[&str], changed: &str) -> (f64, f64) {
    let (mut moved, mut between) = (0usize, 0usize);
    for (old, new) in before.iter().zip(after) {
        if old != new {
            moved += 1;
            between += usize::from(*old != changed && *new != changed);
        }
    }
    let len = before.len() as f64;
    (moved as f64 / len, between as f64 / len)
}

fn max_over_mean(owners: &[&str], members: usize) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for o in owners {
        *counts.entry(*o).or_insert(0usize) += 1;
    }
    assert_eq!(counts.len(), members, "every member owns entries");
    *counts.values().max().unwrap() as f64 * members as f64 / owners.len() as f64
}

/// The default preset meets its targets exactly over the uniform hash space: max/mean
/// ≤ 1.02 for N = 2..100, and ≤ 1.10× the ideal share of keys moved when a member joins or
/// leaves 100 (with almost nothing moved between members that stay).
#[test]
fn default_rank_table_meets_the_balance_and_movement_targets() {
    let config = RingConfig::default();
    assert_eq!(config.algorithm, Algorithm::RankTable);
    let size = u64::from(config.slots);
    let servers = |n: usize| (1..=n).map(|i| format!("Server{i}")).collect::<Vec<_>>();
    for n in [2, 3, 4, 5, 6, 10, 37, 100] {
        let ring = Ring::build(&servers(n), &config);
        let balance = max_over_mean(&entry_owners(&ring, size), n);
        assert!(balance <= 1.02, "N = {n}: max/mean {balance}");
    }
    let n = 100;
    let all = servers(n + 1);
    let base_ring = Ring::build(&all[..n], &config);
    let base = entry_owners(&base_ring, size);
    let grown_ring = Ring::build(&all, &config);
    let (moved, between) = movement(&base, &entry_owners(&grown_ring, size), &all[n]);
    assert!(moved * (n + 1) as f64 <= 1.10, "join: {moved}");
    assert!(
        between * (n + 1) as f64 <= 0.05,
        "join, between survivors: {between}"
    );
    for gone in [0, 49, 99] {
        let rest: Vec<&String> = all[..n].iter().filter(|m| **m != all[gone]).collect();
        let shrunk_ring = Ring::build(&rest, &config);
        let (moved, between) = movement(&base, &entry_owners(&shrunk_ring, size), &all[gone]);
        assert!(moved * n as f64 <= 1.10, "leave {gone}: {moved}");
        assert!(
            between * n as f64 <= 0.05,
            "leave {gone}, survivors: {between}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Rank table, any member names: the cap bounds every member's share of the hash space
    /// (max/mean ≤ 1 + ε + N/M with ε = 1.5% here), and a join or a leave moves at most
    /// 1.25× the ideal share of keys, at most a quarter of the ideal between members that
    /// stay. (Rendezvous on ranks alone would move exactly the ideal; only the cap moves
    /// others' entries.)
    #[test]
    fn rank_table_is_balanced_and_moves_little(
        members in member_set(20).prop_filter("at least 3", |m| m.len() >= 3),
        newcomer in member_name(),
        leaving in any::<prop::sample::Index>(),
    ) {
        prop_assume!(!members.contains(&newcomer));
        let c = RingConfig { slots: 65_537, ..config(Algorithm::RankTable, HashFn::Xxh3) };
        let size = 65_537;
        let n = members.len();
        let before_ring = Ring::build(&members, &c);
        let before = entry_owners(&before_ring, size);
        let balance = max_over_mean(&before, n);
        prop_assert!(balance <= 1.015 + n as f64 / size as f64, "N = {}: {}", n, balance);

        let mut grown = members.clone();
        grown.push(newcomer.clone());
        let grown_ring = Ring::build(&grown, &c);
        let (moved, between) = movement(&before, &entry_owners(&grown_ring, size), &newcomer);
        let ideal = 1.0 / (n + 1) as f64;
        prop_assert!(moved <= 1.25 * ideal && between <= 0.25 * ideal, "join: {} / {}", moved, between);

        let gone = leaving.get(&members).clone();
        let rest: Vec<&String> = members.iter().filter(|m| **m != gone).collect();
        let shrunk_ring = Ring::build(&rest, &c);
        let (moved, between) = movement(&before, &entry_owners(&shrunk_ring, size), &gone);
        let ideal = 1.0 / n as f64;
        prop_assert!(moved <= 1.25 * ideal && between <= 0.25 * ideal, "leave: {} / {}", moved, between);
    }
}
