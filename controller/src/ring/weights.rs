//! Member weights: validation, the canonical (member, weight) order, and the deterministic
//! logarithm that weighted rendezvous and the weighted rank table score with.

use super::config::Algorithm;
use super::order::natural_cmp;

/// Largest weight accepted: HAProxy's range (`weight` 1..=256). A weight multiplies the
/// point and slot rings' virtual nodes, so an unbounded one would be an unbounded allocation.
pub const MAX_WEIGHT: u32 = 256;

/// Why a weighted ring cannot be built. Every variant is the caller's input, never a bug.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("member '{member}' has weight 0: weights are positive integers (1 to {MAX_WEIGHT})")]
    Zero { member: String },
    #[error("member '{member}' has weight {weight}: the largest weight is {MAX_WEIGHT}")]
    TooLarge { member: String, weight: u32 },
    #[error("member '{member}' is given two weights, {first} and {second}")]
    Conflicting {
        member: String,
        first: u32,
        second: u32,
    },
    /// The algorithm cannot give every member virtual nodes in proportion to its weight.
    /// (Today only the slot ring, whose table is fixed: it would otherwise have to shrink
    /// every member's share of virtual servers and lose the proportion silently.)
    #[error(
        "the {algorithm} algorithm cannot honour these weights: {needed} virtual servers \
         ({vnodes} per unit of weight × total weight {total_weight}) do not fit in {slots} slots"
    )]
    DoesNotFit {
        algorithm: Algorithm,
        slots: u32,
        vnodes: u32,
        total_weight: u64,
        needed: u64,
    },
}

/// Deduplicates and sorts (member, weight) pairs like `order::canonical_members` sorts names,
/// checking every weight. The same name twice with the same weight is one member; with two
/// weights it is an error rather than a silent choice.
pub(super) fn canonical<S: AsRef<str>>(
    members: &[(S, u32)],
) -> Result<(Vec<String>, Vec<u32>), WeightError> {
    let mut sorted: Vec<(&str, u32)> = members.iter().map(|(m, w)| (m.as_ref(), *w)).collect();
    for &(member, weight) in &sorted {
        if weight == 0 {
            return Err(WeightError::Zero {
                member: member.to_owned(),
            });
        }
        if weight > MAX_WEIGHT {
            return Err(WeightError::TooLarge {
                member: member.to_owned(),
                weight,
            });
        }
    }
    sorted.sort_unstable_by(|a, b| natural_cmp(a.0, b.0).then(a.1.cmp(&b.1)));
    sorted.dedup();
    if let Some(pair) = sorted.windows(2).find(|p| p[0].0 == p[1].0) {
        return Err(WeightError::Conflicting {
            member: pair[0].0.to_owned(),
            first: pair[0].1,
            second: pair[1].1,
        });
    }
    Ok(sorted.into_iter().map(|(m, w)| (m.to_owned(), w)).unzip())
}

/// Whether every member has the same weight: then every algorithm builds exactly the
/// unweighted ring (for point and slot, with `weight` times the virtual nodes).
pub(super) fn uniform(weights: &[u32]) -> bool {
    weights.windows(2).all(|w| w[0] == w[1])
}

/// A 64-bit hash as a point of the open interval (0, 1): the top 52 bits, centred in their
/// cell, (k + ½)·2⁻⁵², so 2⁻⁵³ ≤ u ≤ 1 − 2⁻⁵³ and every step is exact in `f64` (52 bits +
/// the half fit the 53-bit significand). Never 0 or 1, so −ln u is finite and positive.
pub(super) fn unit_interval(hash: u64) -> f64 {
    ((hash >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// Natural logarithm of a positive normal `x`, from `+ − × ÷` only.
///
/// `f64::ln` calls the platform's libm, which IEEE 754 does not require to round
/// correctly, so two processes (glibc and musl, x86 and ARM) could disagree in the last bit
/// and, rarely, pick different rendezvous winners. The basic operations are exactly rounded
/// everywhere (and Rust never fuses them), so this gives the same bits in every process.
///
/// x = m·2ᵉ with m in [√½, √2), ln x = e·ln 2 + ln m, and ln m = 2·atanh(s) with
/// s = (m − 1)/(m + 1), |s| ≤ 0.1716: the series 2s·Σ s²ᵏ/(2k + 1) has s² ≤ 0.0295, so 12
/// terms leave an error below 0.0295¹² ≈ 4·10⁻¹⁹, under half an ulp.
pub(super) fn ln(x: f64) -> f64 {
    debug_assert!(x.is_normal() && x > 0.0, "{x}");
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // The significand with a zero exponent: m in [1, 2), exact.
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5; // exact
        exponent += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    for k in (0..12).rev() {
        sum = sum * s2 + 1.0 / f64::from(2 * k + 1);
    }
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * s * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_deduplicates_and_checks() {
        let (members, weights) = canonical(&[
            ("Server10", 2),
            ("Server2", 1),
            ("Server1", 3),
            ("Server2", 1),
        ])
        .unwrap();
        assert_eq!(members, ["Server1", "Server2", "Server10"]);
        assert_eq!(weights, [3, 1, 2]);
        assert_eq!(
            canonical(&[("a", 1), ("b", 0)]),
            Err(WeightError::Zero { member: "b".into() })
        );
        assert_eq!(
            canonical(&[("a", MAX_WEIGHT + 1)]),
            Err(WeightError::TooLarge {
                member: "a".into(),
                weight: 257
            })
        );
        let err = canonical(&[("a", 2), ("b", 1), ("a", 1)]).unwrap_err();
        assert_eq!(err.to_string(), "member 'a' is given two weights, 1 and 2");
    }

    #[test]
    fn unit_interval_stays_open() {
        // 0 → ½·2⁻⁵² = 2⁻⁵³; u64::MAX → (2⁵² − 1 + ½)·2⁻⁵² = 1 − 2⁻⁵³.
        assert_eq!(unit_interval(0), 2f64.powi(-53));
        assert_eq!(unit_interval(u64::MAX), 1.0 - 2f64.powi(-53));
        assert!(ln(unit_interval(u64::MAX)) < 0.0);
    }

    #[test]
    fn ln_agrees_with_libm() {
        // ln 1 = 0 exactly (m = 1, s = 0); ln 2ᵏ = k·ln 2 exactly (m = 1 again).
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.5), -std::f64::consts::LN_2);
        assert_eq!(ln(8.0), 3.0 * std::f64::consts::LN_2);
        let mut h = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100_000 {
            h = super::super::hash::fmix64(h);
            let u = unit_interval(h);
            let (ours, libm) = (ln(u), u.ln());
            assert!(
                (ours - libm).abs() <= 4.0 * f64::EPSILON * libm.abs(),
                "ln({u}) = {ours}, libm {libm}"
            );
        }
    }
}
