//! Counting answers per replica and summarizing a distribution. Pure functions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The replica named in a response body: the equivalent of the regular expression
/// `Server: (\w+)` that clients of the original project use (first match; `\w` is a
/// letter, a digit or `_`).
pub fn server_name(body: &str) -> Option<&str> {
    const MARK: &str = "Server: ";
    let mut rest = body;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let end = after
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(after.len(), |(i, _)| i);
        if end > 0 {
            return Some(&after[..end]);
        }
        rest = after;
    }
    None
}

/// What became of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by this replica (a 2xx response naming it).
    Served(String),
    /// A response that names no replica, or not a 2xx: the status code.
    Unexpected(u16),
    /// No response at all (connection refused, reset, timeout): why.
    Failed(String),
}

impl Outcome {
    /// Classifies a response from its status and body.
    pub fn from_response(status: u16, body: &str) -> Outcome {
        match server_name(body) {
            Some(name) if (200..300).contains(&status) => Outcome::Served(name.to_owned()),
            _ => Outcome::Unexpected(status),
        }
    }
}

/// Requests counted per replica, plus what did not reach one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Answers per replica name (members that got none are present with 0).
    pub counts: BTreeMap<String, u64>,
    /// Responses that were not a 2xx naming a replica.
    pub unexpected: u64,
    /// Requests that got no response.
    pub failed: u64,
    /// The first few error descriptions, for the report.
    pub sample_errors: Vec<String>,
}

const SAMPLE_ERRORS: usize = 5;

impl Tally {
    /// An empty tally in which these members appear even if they get no request.
    pub fn with_members<S: AsRef<str>>(members: &[S]) -> Tally {
        Tally {
            counts: members.iter().map(|m| (m.as_ref().to_owned(), 0)).collect(),
            ..Tally::default()
        }
    }

    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Served(name) => *self.counts.entry(name).or_default() += 1,
            Outcome::Unexpected(status) => {
                self.unexpected += 1;
                self.sample(format!("HTTP {status} without a replica name"));
            }
            Outcome::Failed(error) => {
                self.failed += 1;
                self.sample(error);
            }
        }
    }

    fn sample(&mut self, error: String) {
        if self.sample_errors.len() < SAMPLE_ERRORS {
            self.sample_errors.push(error);
        }
    }

    /// Requests answered by a replica.
    pub fn served(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Every request recorded.
    pub fn total(&self) -> u64 {
        self.served() + self.unexpected + self.failed
    }

    /// `(replica, count)` in natural order of the names (Server2 before Server10).
    pub fn sorted(&self) -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> =
            self.counts.iter().map(|(n, c)| (n.clone(), *c)).collect();
        rows.sort_by(|a, b| ringlb::ring::natural_cmp(&a.0, &b.0));
        rows
    }
}

/// The shape of a load distribution over replicas.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub replicas: usize,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    /// max / mean: 1.0 is a perfect balance; N means one replica gets everything.
    pub max_over_mean: f64,
    /// Coefficient of variation: population standard deviation / mean.
    pub cv: f64,
}

/// Summarizes per-replica counts; `None` when there is no replica or no request.
pub fn summarize(counts: &[u64]) -> Option<Summary> {
    let n = counts.len();
    let total: u64 = counts.iter().sum();
    if n == 0 || total == 0 {
        return None;
    }
    let mean = total as f64 / n as f64;
    let variance = counts
        .iter()
        .map(|&c| {
            let d = c as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n as f64;
    let max = *counts.iter().max()?;
    Some(Summary {
        replicas: n,
        min: *counts.iter().min()?,
        max,
        mean,
        max_over_mean: max as f64 / mean,
        cv: variance.sqrt() / mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_follows_server_colon() {
        let body = r#"{"message":"Hello from Server: Server2","status":"successful"}"#;
        assert_eq!(server_name(body), Some("Server2"));
        assert_eq!(
            server_name(r#"{"message":"Hello from Server: emergency_7"}"#),
            Some("emergency_7")
        );
        // `\w+` stops at anything else, like the regular expression.
        assert_eq!(server_name("Server: web-1"), Some("web"));
        assert_eq!(server_name("Server: Server3"), Some("Server3"));
        // The first match with a name wins; an empty match is skipped.
        assert_eq!(server_name("Server: \"x\" Server: B"), Some("B"));
        assert_eq!(server_name("Server: A Server: B"), Some("A"));
        assert_eq!(
            server_name(r#"{"message":"<Error> …","status":"failure"}"#),
            None
        );
        assert_eq!(server_name(""), None);
        assert_eq!(server_name("Server:Server1"), None);
    }

    #[test]
    fn outcomes_from_fake_responses() {
        let ok = r#"{"message":"Hello from Server: Server1","status":"successful"}"#;
        assert_eq!(
            Outcome::from_response(200, ok),
            Outcome::Served("Server1".into())
        );
        assert_eq!(Outcome::from_response(502, ok), Outcome::Unexpected(502));
        assert_eq!(
            Outcome::from_response(
                400,
                r#"{"message":"<Error> '/x' endpoint does not exist in server replicas","status":"failure"}"#
            ),
            Outcome::Unexpected(400)
        );
    }

    #[test]
    fn a_tally_adds_up() {
        let mut tally = Tally::with_members(&["Server1", "Server2", "Server10", "Server3"]);
        let bodies = [
            (200, "Hello from Server: Server1"),
            (200, "Hello from Server: Server1"),
            (200, "Hello from Server: Server10"),
            (200, "Hello from Server: Server2"),
            (200, "no name here"),
            (
                503,
                r#"{"message":"<Error> no replica","status":"failure"}"#,
            ),
        ];
        for (status, body) in bodies {
            tally.record(Outcome::from_response(status, body));
        }
        tally.record(Outcome::Failed("connection refused".into()));
        assert_eq!(tally.served(), 4);
        assert_eq!(tally.unexpected, 2);
        assert_eq!(tally.failed, 1);
        assert_eq!(tally.total(), 7);
        assert_eq!(tally.sample_errors.len(), 3);
        let sorted = tally.sorted();
        let sorted: Vec<(&str, u64)> = sorted.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        assert_eq!(
            sorted,
            [
                ("Server1", 2),
                ("Server2", 1),
                ("Server3", 0),
                ("Server10", 1)
            ]
        );
    }

    #[test]
    fn summary_of_small_inputs() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[0, 0]), None);

        let even = summarize(&[5, 5, 5, 5]).unwrap();
        assert_eq!((even.min, even.max, even.replicas), (5, 5, 4));
        assert_eq!(even.mean, 5.0);
        assert_eq!(even.max_over_mean, 1.0);
        assert_eq!(even.cv, 0.0);

        // 9600 / 200 / 200: the course preset at N = 3.
        let skewed = summarize(&[9600, 200, 200]).unwrap();
        assert_eq!((skewed.min, skewed.max), (200, 9600));
        assert!((skewed.mean - 10_000.0 / 3.0).abs() < 1e-9);
        assert!((skewed.max_over_mean - 2.88).abs() < 1e-9);
        // Deviations 6266.67, -3133.33, -3133.33: variance 19 635 555.6, sd 4431.20.
        assert!((skewed.cv - 4431.2025 / 3333.3333).abs() < 1e-6);

        let one = summarize(&[0, 10]).unwrap();
        assert_eq!(one.max_over_mean, 2.0);
        assert_eq!(one.cv, 1.0);
    }
}
