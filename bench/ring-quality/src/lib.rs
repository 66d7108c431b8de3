//! The rings under test: ringlb's algorithms and the peer crates behind one interface, so
//! that the report (`src/main.rs`) and the criterion benches (`benches/`) measure them the
//! same way.
//!
//! Members are `Server1..ServerN`; the peers that want a socket address (pingora-ketama)
//! get `127.0.0.1:(10000 + i)` for `Server{i}` — nothing is contacted, the address is only
//! hashed. Every [`Built::lookup`] answers with the index of the member in the slice given to
//! [`Subject::build`], so results compare across implementations and across member sets.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;

use maglev::ConsistentHasher;
use ringlb::ring::{Algorithm, HashFn, RANK_TABLE_DEFAULT_SLOTS, Ring, RingConfig};

/// A ring member: the name ringlb and most peers hash, the address pingora-ketama hashes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
}

/// `Server1..=ServerN` (1-based), the member sets of every measurement.
pub fn members(n: usize) -> Vec<Member> {
    (1..=n).map(member).collect()
}

pub fn member(i: usize) -> Member {
    Member {
        name: format!("Server{i}"),
        addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
    }
}

/// A built ring, whatever the implementation.
pub trait Built {
    /// The member (index into the build's slice) serving `key`, hashing the key with the
    /// implementation's own key hash. Includes the translation to the caller's index.
    fn lookup(&self, key: &[u8]) -> usize;
    /// The implementation's own lookup, returning its own index: what the lookup timings
    /// measure.
    fn lookup_raw(&self, key: &[u8]) -> usize;
    /// Exact share of the uniform key-hash space per member (index into the build's slice),
    /// when the structure allows it: arc lengths of a point ring, entry counts of a table.
    fn exact_shares(&self) -> Option<Vec<f64>> {
        None
    }
}

/// How the implementation's members change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Any member can join or leave.
    AnySet,
    /// Buckets 0..N: only the last one can leave, a new one joins at the end (jump hash).
    BucketCount,
}

/// Builds a boxed structure from a member set.
type BuildFn<T> = Box<dyn Fn(&[Member]) -> Box<T> + Send + Sync>;

/// One implementation and configuration under test.
pub struct Subject {
    pub name: &'static str,
    /// Crate and version, or "ringlb".
    pub source: &'static str,
    /// The space the exact shares are measured over.
    pub hash_space: &'static str,
    pub membership: Membership,
    /// Is this our default configuration?
    pub is_default: bool,
    build: BuildFn<dyn Built>,
    build_raw: BuildFn<dyn std::any::Any>,
}

impl Subject {
    /// The structure behind a `Built`, including what the report adds to measure it.
    pub fn build(&self, members: &[Member]) -> Box<dyn Built> {
        (self.build)(members)
    }

    /// Only the implementation's own structure, as a user would build it: what the build
    /// times and memory figures measure.
    pub fn build_raw(&self, members: &[Member]) -> Box<dyn std::any::Any> {
        (self.build_raw)(members)
    }
}

/// Every subject of the report, ours first.
pub fn subjects() -> Vec<Subject> {
    let ours = |name: &'static str, config: RingConfig, is_default: bool| {
        let raw = config.clone();
        Subject {
            name,
            source: "ringlb",
            hash_space: if config.hash == HashFn::Quadratic {
                "u64 (quadratic H)"
            } else {
                "u64 (xxh3)"
            },
            membership: Membership::AnySet,
            is_default,
            build: Box::new(move |m| Box::new(Ours::build(m, &config))),
            build_raw: Box::new(move |m| {
                let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
                Box::new(Ring::build(&names, &raw))
            }),
        }
    };
    let xxh3 = |algorithm, slots, vnodes| RingConfig {
        algorithm,
        hash: HashFn::Xxh3,
        slots,
        vnodes,
    };
    vec![
        ours("rank-table, 262147 (default)", RingConfig::default(), true),
        ours(
            "maglev, 65537 (old default)",
            xxh3(Algorithm::Maglev, 65_537, 0),
            false,
        ),
        ours("maglev, 655373", xxh3(Algorithm::Maglev, 655_373, 0), false),
        ours(
            "rank-table, 65537",
            xxh3(Algorithm::RankTable, 65_537, 0),
            false,
        ),
        ours("point, 160 vnodes", xxh3(Algorithm::Point, 0, 160), false),
        ours("point, 1000 vnodes", xxh3(Algorithm::Point, 0, 1000), false),
        ours("rendezvous", xxh3(Algorithm::Rendezvous, 0, 0), false),
        ours(
            "course (slot, quadratic, 512/9)",
            RingConfig::course(),
            false,
        ),
        Subject {
            name: "pingora-ketama, 160 points",
            source: "pingora-ketama 0.9.1",
            hash_space: "u32 (crc32)",
            membership: Membership::AnySet,
            is_default: false,
            build: Box::new(|m| Box::new(Ketama::build(m))),
            build_raw: Box::new(|m| Box::new(ketama_continuum(m))),
        },
        Subject {
            name: "hashring, 160 vnodes",
            source: "hashring 0.3.6",
            hash_space: "u64 (SipHash-2-4)",
            membership: Membership::AnySet,
            is_default: false,
            build: Box::new(|m| Box::new(HashRingPeer::build(m))),
            build_raw: Box::new(|m| Box::new(hashring_ring(m))),
        },
        Subject {
            name: "maglev crate, 65537",
            source: "maglev 0.2.1",
            hash_space: "u64 (SipHash-1-3)",
            membership: Membership::AnySet,
            is_default: false,
            build: Box::new(|m| Box::new(MaglevPeer::build(m))),
            build_raw: Box::new(|m| Box::new(maglev_table(m))),
        },
        Subject {
            name: "jumphash",
            source: "jumphash 0.1.9",
            hash_space: "u64 (SipHash-1-3)",
            membership: Membership::BucketCount,
            is_default: false,
            build: Box::new(|m| Box::new(Jump::build(m.len()))),
            build_raw: Box::new(|m| Box::new(Jump::build(m.len()))),
        },
    ]
}

/// The table size of ringlb's default, for the report's text.
pub const DEFAULT_SLOTS: u32 = RANK_TABLE_DEFAULT_SLOTS;

// ---------------------------------------------------------------------------------------
// ringlb

pub struct Ours {
    ring: Ring,
    /// Canonical index → index in the build's slice.
    to_input: Vec<usize>,
}

impl Ours {
    pub fn build(members: &[Member], config: &RingConfig) -> Self {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let ring = Ring::build(&names, config);
        let input: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let to_input = ring.members().iter().map(|m| input[m.as_str()]).collect();
        Ours { ring, to_input }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    fn owner_of_hash(&self, hash: u64) -> usize {
        self.to_input[self.ring.lookup_hash(hash).expect("non-empty")]
    }

    /// Entry counts of a table layout: with M entries, hash e lands on entry e.
    fn table_shares(&self, size: u64) -> Vec<f64> {
        let mut counts = vec![0u64; self.to_input.len()];
        for e in 0..size {
            counts[self.owner_of_hash(e)] += 1;
        }
        counts.iter().map(|&c| c as f64 / size as f64).collect()
    }
}

impl Built for Ours {
    fn lookup(&self, key: &[u8]) -> usize {
        self.to_input[self.ring.lookup(key).expect("non-empty")]
    }

    fn lookup_raw(&self, key: &[u8]) -> usize {
        self.ring.lookup(key).expect("non-empty")
    }

    fn exact_shares(&self) -> Option<Vec<f64>> {
        let config = self.ring.config();
        match config.algorithm {
            // hash % M picks the entry (M prime for Maglev and the rank table); 2^64 mod M
            // hashes of the top are the only unevenness, one part in 2^46.
            Algorithm::Maglev | Algorithm::RankTable | Algorithm::Slot => {
                let size = table_size(config);
                Some(self.table_shares(size))
            }
            Algorithm::Point => {
                // Arc (previous point, p] belongs to lookup_hash(p): exact arc lengths.
                let n = self.ring.len();
                let mut points: Vec<u64> = self
                    .ring
                    .members()
                    .iter()
                    .enumerate()
                    .flat_map(|(i, name)| {
                        (0..config.vnodes.max(1))
                            .map(move |v| config.hash.member_hash(name, i as u64 + 1, v))
                    })
                    .collect();
                points.sort_unstable();
                points.dedup();
                let mut shares = vec![0.0; n];
                let last = *points.last().expect("points");
                let mut previous = last;
                for &p in &points {
                    let arc = p.wrapping_sub(previous);
                    // A single point owns the whole circle (arc 0 read as 2^64).
                    let arc = if points.len() == 1 {
                        2f64.powi(64)
                    } else {
                        arc as f64
                    };
                    shares[self.owner_of_hash(p)] += arc / 2f64.powi(64);
                    previous = p;
                }
                Some(shares)
            }
            Algorithm::Rendezvous => None,
        }
    }
}

/// The table size a config builds (Maglev and rank table round up to a prime).
fn table_size(config: &RingConfig) -> u64 {
    let mut size = u64::from(config.slots.max(1));
    if matches!(config.algorithm, Algorithm::Maglev | Algorithm::RankTable) {
        while !(2..).take_while(|d| d * d <= size).all(|d| size % d != 0) || size < 2 {
            size += 1;
        }
    }
    size
}

// ---------------------------------------------------------------------------------------
// pingora-ketama: nginx-compatible ketama, 160 points per unit of weight, crc32.

pub fn ketama_continuum(members: &[Member]) -> pingora_ketama::Continuum {
    let buckets: Vec<pingora_ketama::Bucket> = members
        .iter()
        .map(|m| pingora_ketama::Bucket::new(m.addr, 1))
        .collect();
    pingora_ketama::Continuum::new(&buckets)
}

pub struct Ketama {
    continuum: pingora_ketama::Continuum,
    by_addr: HashMap<SocketAddr, usize>,
    /// The crate's points, recomputed the way it computes them (crc32 of "ip\0port", then
    /// of that plus the previous point): (position, member index). Checked against the
    /// crate's own lookups by `verify`.
    points: Vec<(u32, usize)>,
}

impl Ketama {
    pub fn build(members: &[Member]) -> Self {
        let mut points = Vec::with_capacity(members.len() * 160);
        for (index, m) in members.iter().enumerate() {
            let mut base = crc32fast::Hasher::new();
            base.update(format!("{}\0{}", m.addr.ip(), m.addr.port()).as_bytes());
            let mut previous = 0u32;
            for _ in 0..pingora_ketama::DEFAULT_POINT_MULTIPLE {
                let mut h = base.clone();
                h.update(&previous.to_le_bytes());
                previous = h.finalize();
                points.push((previous, index));
            }
        }
        points.sort_unstable_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        Ketama {
            continuum: ketama_continuum(members),
            by_addr: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.addr, i))
                .collect(),
            points,
        }
    }

    #[cfg(test)]
    fn owner_of_hash(&self, hash: u32) -> usize {
        let k = self.points.partition_point(|p| p.0 < hash);
        self.points[if k == self.points.len() { 0 } else { k }].1
    }
}

impl Built for Ketama {
    fn lookup(&self, key: &[u8]) -> usize {
        self.by_addr[&self.continuum.node(key).expect("non-empty")]
    }

    fn lookup_raw(&self, key: &[u8]) -> usize {
        self.continuum.node_idx(key)
    }

    fn exact_shares(&self) -> Option<Vec<f64>> {
        let mut shares = vec![0.0; self.by_addr.len()];
        let mut previous = self.points.last().expect("points").0;
        for &(p, owner) in &self.points {
            shares[owner] += f64::from(p.wrapping_sub(previous)) / 2f64.powi(32);
            previous = p;
        }
        Some(shares)
    }
}

// ---------------------------------------------------------------------------------------
// hashring: a plain consistent-hash ring (no virtual nodes of its own); we add 160 per
// member with the crate's documented VNode pattern.

/// A virtual node: hashed (and compared) by member name and replica number only, so its
/// point does not depend on the member's position in the list; `member` rides along to
/// answer lookups with an index.
#[derive(Clone, Debug)]
pub struct VNode {
    pub member: u32,
    pub replica: u32,
    pub name: String,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.replica.hash(state);
    }
}

impl PartialEq for VNode {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.replica) == (&other.name, other.replica)
    }
}

impl Eq for VNode {}

pub const HASHRING_VNODES: u32 = 160;

pub fn hashring_ring(members: &[Member]) -> hashring::HashRing<VNode> {
    let mut ring = hashring::HashRing::new();
    ring.batch_add(
        members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                (0..HASHRING_VNODES).map(move |replica| VNode {
                    member: i as u32,
                    replica,
                    name: m.name.clone(),
                })
            })
            .collect(),
    );
    ring
}

pub struct HashRingPeer {
    ring: hashring::HashRing<VNode>,
    members: usize,
    /// Point positions (the crate's DefaultHashBuilder over each VNode) and owners.
    points: Vec<(u64, usize)>,
}

impl HashRingPeer {
    pub fn build(members: &[Member]) -> Self {
        let ring = hashring_ring(members);
        let mut points: Vec<(u64, usize)> = members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                (0..HASHRING_VNODES).map(move |replica| {
                    let v = VNode {
                        member: i as u32,
                        replica,
                        name: m.name.clone(),
                    };
                    (hashring::DefaultHashBuilder.hash_one(&v), i)
                })
            })
            .collect();
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        HashRingPeer {
            ring,
            members: members.len(),
            points,
        }
    }
}

impl Built for HashRingPeer {
    fn lookup(&self, key: &[u8]) -> usize {
        self.ring.get(&key).expect("non-empty").member as usize
    }

    fn lookup_raw(&self, key: &[u8]) -> usize {
        self.ring.get(&key).expect("non-empty").member as usize
    }

    fn exact_shares(&self) -> Option<Vec<f64>> {
        let mut shares = vec![0.0; self.members];
        let mut previous = self.points.last().expect("points").0;
        for &(p, owner) in &self.points {
            shares[owner] += p.wrapping_sub(previous) as f64 / 2f64.powi(64);
            previous = p;
        }
        Some(shares)
    }
}

// ---------------------------------------------------------------------------------------
// maglev crate (flier/rust-maglev): Maglev with SipHash-1-3; table size 65537 as ours (its
// own default is the first prime ≥ 100·N).

pub const MAGLEV_PEER_SLOTS: usize = 65_537;

pub fn maglev_table(members: &[Member]) -> maglev::Maglev<String> {
    maglev::Maglev::with_capacity(members.iter().map(|m| m.name.clone()), MAGLEV_PEER_SLOTS)
}

pub struct MaglevPeer {
    table: maglev::Maglev<String>,
    by_name: HashMap<String, usize>,
}

impl MaglevPeer {
    pub fn build(members: &[Member]) -> Self {
        MaglevPeer {
            table: maglev_table(members),
            by_name: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), i))
                .collect(),
        }
    }

    /// The crate's key hash (`hash_with_seed(key, 0xdead_babe)`: SipHash-1-3 with zero keys
    /// over the seed then the key), from which `hash % M` picks the entry.
    fn entry_of(&self, key: &[u8]) -> usize {
        let mut h = DefaultHasher::new();
        h.write_u32(0xdead_babe);
        key.hash(&mut h);
        (h.finish() as usize) % self.table.capacity()
    }
}

impl Built for MaglevPeer {
    fn lookup(&self, key: &[u8]) -> usize {
        self.by_name[self.table.get(key).expect("non-empty")]
    }

    fn lookup_raw(&self, key: &[u8]) -> usize {
        self.table.get(key).expect("non-empty").len()
    }

    /// The table is private: recover it by probing keys until every entry has been seen
    /// (≈ M·ln M keys), checking that each entry always answers the same member.
    fn exact_shares(&self) -> Option<Vec<f64>> {
        let size = self.table.capacity();
        let mut owner = vec![usize::MAX; size];
        let mut seen = 0;
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut probes = 0u64;
        while seen < size {
            let key = splitmix64(&mut state).to_le_bytes();
            let e = self.entry_of(&key);
            let m = self.lookup(&key);
            if owner[e] == usize::MAX {
                owner[e] = m;
                seen += 1;
            } else {
                assert_eq!(owner[e], m, "maglev crate: entry {e} answered two members");
            }
            probes += 1;
            assert!(
                probes < 100 * size as u64,
                "maglev crate: table not recovered"
            );
        }
        let mut shares = vec![0.0; self.by_name.len()];
        for &m in &owner {
            shares[m] += 1.0 / size as f64;
        }
        Some(shares)
    }
}

// ---------------------------------------------------------------------------------------
// jumphash: buckets 0..N, SipHash-1-3 of the key (fixed keys), then the jump.

pub struct Jump {
    hasher: jumphash::JumpHasher,
    buckets: u32,
}

impl Jump {
    pub fn build(buckets: usize) -> Self {
        Jump {
            hasher: jumphash::JumpHasher::new_with_keys(0, 0),
            buckets: buckets as u32,
        }
    }
}

impl Built for Jump {
    fn lookup(&self, key: &[u8]) -> usize {
        self.hasher.slot(&key, self.buckets) as usize
    }

    fn lookup_raw(&self, key: &[u8]) -> usize {
        self.hasher.slot(&key, self.buckets) as usize
    }
}

// ---------------------------------------------------------------------------------------
// Keys

/// SplitMix64: the report's deterministic source of sampled keys.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `count` pseudo-random six-digit ids ("100000".."999999"), ringlb's default request key.
pub fn random_ids(count: usize, seed: u64) -> Vec<[u8; 6]> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            let id = 100_000 + splitmix64(&mut state) % 900_000;
            id.to_string().into_bytes().try_into().expect("six digits")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recomputed points of the peers agree with the crates' own lookups, so their
    /// exact shares describe the crates.
    #[test]
    fn reconstructions_agree_with_the_crates() {
        let m = members(25);
        let ketama = Ketama::build(&m);
        let ring = HashRingPeer::build(&m);
        let mut state = 7;
        for _ in 0..20_000 {
            let key = splitmix64(&mut state).to_le_bytes();
            assert_eq!(
                ketama.lookup(&key),
                ketama.owner_of_hash(crc32fast::hash(&key))
            );
            let h = hashring::DefaultHashBuilder.hash_one(key.as_slice());
            let k = ring.points.partition_point(|p| p.0 < h);
            let owner = ring.points[if k == ring.points.len() { 0 } else { k }].1;
            assert_eq!(ring.lookup(&key), owner);
        }
    }

    #[test]
    fn exact_shares_sum_to_one() {
        let m = members(7);
        for subject in subjects() {
            if let Some(shares) = subject.build(&m).exact_shares() {
                let sum: f64 = shares.iter().sum();
                assert!((sum - 1.0).abs() < 1e-9, "{}: {sum}", subject.name);
                assert_eq!(shares.len(), 7);
            }
        }
    }

    #[test]
    fn lookups_answer_in_the_callers_index() {
        let m = members(5);
        let mut reversed = m.clone();
        reversed.reverse();
        for subject in subjects() {
            let (a, b) = (subject.build(&m), subject.build(&reversed));
            for id in random_ids(200, 3) {
                let (x, y) = (a.lookup(&id), b.lookup(&id));
                if subject.membership == Membership::AnySet {
                    assert_eq!(m[x], reversed[y], "{}", subject.name);
                }
            }
        }
    }
}
