//! The canonical member order: natural sort ("Server2" < "Server10"), duplicates removed.
//!
//! Every process that sees the same member set must build the same ring, and the course's
//! Φ places virtual servers by 1-based position, so the order itself is part of the contract.

use std::cmp::Ordering;

/// Deduplicates `members` and sorts them naturally.
pub fn canonical_members<S: AsRef<str>>(members: &[S]) -> Vec<String> {
    let mut sorted: Vec<String> = members.iter().map(|m| m.as_ref().to_owned()).collect();
    sorted.sort_unstable_by(|a, b| natural_cmp(a, b));
    sorted.dedup();
    sorted
}

/// Natural order: runs of ASCII digits compare as numbers, other bytes compare as bytes.
///
/// Names whose runs are all equal but spelled differently ("a01" and "a1") fall back to plain
/// byte order, so this is a total order in which only identical strings compare equal —
/// which is what `dedup` after sorting needs.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let (run_x, rest_x) = split_digit_run(x);
                let (run_y, rest_y) = split_digit_run(y);
                let order = compare_decimal(run_x, run_y);
                if order != Ordering::Equal {
                    return order;
                }
                (x, y) = (rest_x, rest_y);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

fn split_digit_run(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Compares two digit strings by value, whatever their length (no overflow).
fn compare_decimal(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |s: &[u8]| -> usize { s.iter().position(|&d| d != b'0').unwrap_or(s.len()) };
    let (a, b) = (&a[strip(a)..], &b[strip(b)..]);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_inside_names_sort_by_value() {
        let members = [
            "Server10",
            "Server2",
            "Server1",
            "emergency_3",
            "Server2",
            "emergency_12",
        ];
        assert_eq!(
            canonical_members(&members),
            [
                "Server1",
                "Server2",
                "Server10",
                "emergency_3",
                "emergency_12"
            ]
        );
    }

    #[test]
    fn total_order_edge_cases() {
        use Ordering::*;
        assert_eq!(natural_cmp("a", "a"), Equal);
        assert_eq!(natural_cmp("a", "a1"), Less);
        assert_eq!(natural_cmp("a01", "a1"), Less); // equal value: byte order decides ('0' < '1')
        assert_eq!(natural_cmp("a1", "a01"), Greater);
        assert_eq!(
            natural_cmp("x99999999999999999999999", "x100000000000000000000000"),
            Less
        );
        assert_eq!(natural_cmp("s2b", "s2a"), Greater);
        assert_eq!(natural_cmp("9", "a"), Less); // digits sort before letters, as in ASCII
    }
}
