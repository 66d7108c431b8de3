//! Ring configuration: which algorithm, which hash function, and the table sizes,
//! plus the named presets (the course setup and the measured default).

use std::fmt;
use std::str::FromStr;

// The operator's `ServerPool` spec reuses these enums: its CRD schema comes from them.
use schemars::JsonSchema;

/// How members are laid out and how a key hash is mapped to a member.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// The course's ring: `slots` slots, `vnodes` virtual servers per member placed by
    /// Φ with linear probing; a key goes to the first virtual server at or after H(key).
    Slot,
    /// Ketama-style ring: `vnodes` points per member over the whole `u64` space.
    Point,
    /// Google Maglev lookup table of `slots` entries (`slots` must be prime).
    Maglev,
    /// Highest random weight: the member with the highest score(member, key) wins.
    Rendezvous,
    /// A lookup table of `slots` entries (`slots` must be prime) in which each entry goes
    /// to the member whose Maglev permutation reaches it first, every member capped at
    /// ⌈(1 + ε)·slots/N⌉ entries (ε = max(1.5%, 0.75·√(N/slots))): rendezvous over table
    /// entries with bounded loads.
    RankTable,
}

/// The hash function used both for request keys and for member placement.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum HashFn {
    /// The course's functions: H(i) = i + 2i² + 17 for request id i and
    /// Φ(i, j) = i + j + 2j² + 25 for virtual server j of the member at 1-based position i.
    Quadratic,
    /// XXH3, 64-bit (`xxhash-rust`).
    Xxh3,
    /// MurmurHash3 x64_128, first 64-bit half.
    Murmur3,
}

/// A named configuration.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The configuration chosen by measurement (see `RingConfig::preset`).
    Default,
    /// The course setup, reproduced exactly: slot ring, quadratic hashes, 512 slots, 9 vnodes.
    Course,
}

/// Everything that determines a ring besides its member set.
///
/// `slots` is the table size of `slot`, `maglev` and `rank-table` (ignored by `point` and
/// `rendezvous`); `vnodes` is the number of virtual nodes per member of `slot` and `point`
/// (ignored by the others).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingConfig {
    pub algorithm: Algorithm,
    pub hash: HashFn,
    pub slots: u32,
    pub vnodes: u32,
}

/// The Maglev table size (the default preset's before the rank table): the prime recommended
/// by the Maglev paper for small backend counts (M ≫ 100·N keeps the table balanced to within 1%).
pub const MAGLEV_DEFAULT_SLOTS: u32 = 65_537;

/// The table size of the default preset (rank table): a prime near 2^18. 1 MiB of `u32`
/// that stays in L2; large enough that the cap of 1.5% over the mean costs almost no extra
/// key movement up to N ≈ 100 (see `rank_table.rs` and docs/ring-quality.md).
pub const RANK_TABLE_DEFAULT_SLOTS: u32 = 262_147;

/// Largest table accepted for `slot` and `maglev` (16 Mi entries = 64 MiB of `u32`):
/// anything larger is a typo, not a tuning choice.
pub const MAX_SLOTS: u32 = 1 << 24;

/// Largest number of points per member accepted for `point`.
pub const MAX_VNODES: u32 = 10_000;

impl RingConfig {
    /// The course setup: slot ring, quadratic hashes, 512 slots, 9 virtual servers each.
    pub fn course() -> Self {
        RingConfig {
            algorithm: Algorithm::Slot,
            hash: HashFn::Quadratic,
            slots: 512,
            vnodes: 9,
        }
    }

    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Course => Self::course(),
            // Chosen by measurement (bench/ring-quality, docs/ring-quality.md): the rank
            // table + xxh3 on 262 147 entries has max/mean ≤ 1.0154 by construction for
            // N ≤ 100 (exact over the 64-bit hash space), moves ≤ 1.02× the ideal share of
            // keys when a member joins or leaves at N = 10 and 100, looks up in O(1) from a
            // 1 MiB table, and builds in tens of milliseconds whatever N. Maglev on 65 537
            // entries balances as well but moves ≈1.5× the ideal at N = 100; rendezvous moves
            // the ideal but costs O(N) per lookup; ketama-style point rings are 1.1–1.2 off
            // balance with 160 points per member.
            Preset::Default => RingConfig {
                algorithm: Algorithm::RankTable,
                hash: HashFn::Xxh3,
                slots: RANK_TABLE_DEFAULT_SLOTS,
                // Unused by the rank table; ketama's 160 points per member if only the algorithm is
                // overridden to `point` or `slot`.
                vnodes: 160,
            },
        }
    }

    /// Checks the settings that the chosen algorithm uses.
    ///
    /// Maglev table sizes that are not prime are rejected here (the error names the next
    /// prime); `Ring::build` given such a config anyway rounds up to the next prime so that
    /// the fill always terminates.
    pub fn validate(&self) -> Result<(), String> {
        let uses_slots = matches!(
            self.algorithm,
            Algorithm::Slot | Algorithm::Maglev | Algorithm::RankTable
        );
        let uses_vnodes = matches!(self.algorithm, Algorithm::Slot | Algorithm::Point);
        if uses_slots {
            if self.slots == 0 {
                return Err(format!(
                    "slots must be at least 1 for the {} algorithm",
                    self.algorithm
                ));
            }
            if self.slots > MAX_SLOTS {
                return Err(format!(
                    "slots must be at most {MAX_SLOTS}, got {}",
                    self.slots
                ));
            }
        }
        if uses_vnodes {
            if self.vnodes == 0 {
                return Err(format!(
                    "vnodes must be at least 1 for the {} algorithm",
                    self.algorithm
                ));
            }
            if self.vnodes > MAX_VNODES {
                return Err(format!(
                    "vnodes must be at most {MAX_VNODES}, got {}",
                    self.vnodes
                ));
            }
        }
        match self.algorithm {
            Algorithm::Slot if self.vnodes > self.slots => Err(format!(
                "a slot ring of {} slots cannot hold {} virtual servers of even one member",
                self.slots, self.vnodes
            )),
            Algorithm::Maglev | Algorithm::RankTable if !is_prime(self.slots) => Err(format!(
                "the {} table size must be prime: {} is not (the next prime is {})",
                self.algorithm,
                self.slots,
                next_prime(self.slots)
            )),
            _ => Ok(()),
        }
    }

    /// How many members this config can hold at full strength, if it has a limit:
    /// `slots / vnodes` for the slot ring (beyond that `Ring::build` gives each member
    /// fewer virtual servers), `slots` for Maglev and the rank table (beyond that some
    /// members own no entry).
    pub fn member_capacity(&self) -> Option<usize> {
        match self.algorithm {
            Algorithm::Slot => Some((self.slots / self.vnodes.max(1)) as usize),
            Algorithm::Maglev | Algorithm::RankTable => Some(self.slots as usize),
            Algorithm::Point | Algorithm::Rendezvous => None,
        }
    }
}

impl Default for RingConfig {
    fn default() -> Self {
        Self::preset(Preset::Default)
    }
}

/// Whether `n` is prime, by trial division (for table sizes).
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// Smallest prime ≥ `n`. Always fits: primes exist below `u32::MAX` far above `MAX_SLOTS`.
pub(crate) fn next_prime(n: u32) -> u32 {
    (n.max(2)..)
        .find(|&p| is_prime(p))
        .expect("a prime below u32::MAX")
}

/// Kebab-case names shared by `FromStr` and `Display` of the three enums.
macro_rules! kebab_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every valid name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(format!(
                        "unknown {} '{}': valid values are {}",
                        stringify!($ty).to_lowercase(),
                        s,
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}

kebab_names!(Algorithm { Slot => "slot", Point => "point", Maglev => "maglev", Rendezvous => "rendezvous", RankTable => "rank-table" });
kebab_names!(HashFn { Quadratic => "quadratic", Xxh3 => "xxh3", Murmur3 => "murmur3" });
kebab_names!(Preset { Default => "default", Course => "course" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn course_preset_is_the_course_setup() {
        let c = RingConfig::preset(Preset::Course);
        assert_eq!(c, RingConfig::course());
        assert_eq!(
            (c.algorithm, c.hash, c.slots, c.vnodes),
            (Algorithm::Slot, HashFn::Quadratic, 512, 9)
        );
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn default_is_the_default_preset_and_valid() {
        assert_eq!(RingConfig::default(), RingConfig::preset(Preset::Default));
        assert_eq!(RingConfig::default().validate(), Ok(()));
    }

    #[test]
    fn names_round_trip_through_from_str_display_and_serde() {
        for &name in Algorithm::NAMES {
            let a: Algorithm = name.parse().unwrap();
            assert_eq!(a.to_string(), name);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{name}\""));
        }
        for &name in HashFn::NAMES {
            let h: HashFn = name.parse().unwrap();
            assert_eq!(h.to_string(), name);
            assert_eq!(
                serde_json::from_str::<HashFn>(&format!("\"{name}\"")).unwrap(),
                h
            );
        }
        for &name in Preset::NAMES {
            assert_eq!(name.parse::<Preset>().unwrap().to_string(), name);
        }
        let json = serde_json::to_string(&RingConfig::course()).unwrap();
        assert_eq!(
            json,
            r#"{"algorithm":"slot","hash":"quadratic","slots":512,"vnodes":9}"#
        );
    }

    #[test]
    fn from_str_error_lists_valid_values() {
        let err = "ketama".parse::<Algorithm>().unwrap_err();
        assert!(
            err.contains("'ketama'") && err.contains("slot, point, maglev, rendezvous, rank-table"),
            "{err}"
        );
        let err = "md5".parse::<HashFn>().unwrap_err();
        assert!(err.contains("quadratic, xxh3, murmur3"), "{err}");
    }

    #[test]
    fn validate_rejects_unusable_settings() {
        let slot = RingConfig::course();
        assert!(
            RingConfig {
                slots: 0,
                ..slot.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            RingConfig {
                vnodes: 0,
                ..slot.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            RingConfig {
                slots: 8,
                vnodes: 9,
                ..slot.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            RingConfig {
                slots: MAX_SLOTS + 1,
                ..slot
            }
            .validate()
            .is_err()
        );

        let maglev = RingConfig {
            algorithm: Algorithm::Maglev,
            slots: MAGLEV_DEFAULT_SLOTS,
            ..RingConfig::default()
        };
        let err = RingConfig {
            slots: 65_536,
            ..maglev.clone()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("65537"), "{err}");
        let err = RingConfig {
            slots: 262_144,
            ..RingConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.contains("rank-table") && err.contains("262147"),
            "{err}"
        );
        // vnodes is not used by Maglev, so 0 is fine there.
        assert_eq!(
            RingConfig {
                vnodes: 0,
                ..maglev
            }
            .validate(),
            Ok(())
        );

        let point = RingConfig {
            algorithm: Algorithm::Point,
            hash: HashFn::Xxh3,
            slots: 0,
            vnodes: 160,
        };
        assert_eq!(point.validate(), Ok(()));
        assert!(RingConfig { vnodes: 0, ..point }.validate().is_err());

        let rendezvous = RingConfig {
            algorithm: Algorithm::Rendezvous,
            hash: HashFn::Xxh3,
            slots: 0,
            vnodes: 0,
        };
        assert_eq!(rendezvous.validate(), Ok(()));
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        // 65537 = 2^16 + 1 is the Fermat prime F4; 65536 and 65535 = 3·5·17·257 are not prime.
        assert!(is_prime(65_537) && !is_prime(65_535));
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(512), 521);
        assert!(is_prime(RANK_TABLE_DEFAULT_SLOTS));
    }

    #[test]
    fn member_capacity() {
        assert_eq!(RingConfig::course().member_capacity(), Some(56)); // 512 / 9 = 56 rem 8
        assert_eq!(RingConfig::default().member_capacity(), Some(262_147));
    }
}
