//! Changing N of a load balancer that `ringlb-analyze` did not start (`--target`),
//! through `/add` and `/rm`, and putting its membership back afterwards.

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::json;

use super::api::{Endpoint, rep_names};

/// Resizes a target and remembers how to undo it.
pub struct Resizer {
    /// The replicas before the first change.
    original: Vec<String>,
    /// Original replicas removed so far (added back first when growing).
    removed: Vec<String>,
}

/// What to send to go from `current` to `n` replicas: `(add, names)` or `(remove, names)`,
/// `None` when nothing is to be done. Growing adds back removed originals first (by
/// name) and lets the load balancer name the rest; shrinking removes replicas that were
/// not there at the start first, then originals from the end.
pub fn plan_resize(
    current: &[String],
    original: &[String],
    removed: &[String],
    n: usize,
) -> Option<(Method, u64, Vec<String>)> {
    use std::cmp::Ordering::*;
    match n.cmp(&current.len()) {
        Equal => None,
        Greater => {
            let k = n - current.len();
            let names: Vec<String> = removed
                .iter()
                .filter(|r| !current.contains(r))
                .take(k)
                .cloned()
                .collect();
            Some((Method::POST, k as u64, names))
        }
        Less => {
            let k = current.len() - n;
            let mut names: Vec<String> = current
                .iter()
                .rev()
                .filter(|c| !original.contains(c))
                .take(k)
                .cloned()
                .collect();
            names.extend(
                current
                    .iter()
                    .rev()
                    .filter(|c| original.contains(c))
                    .take(k - names.len())
                    .cloned(),
            );
            Some((Method::DELETE, k as u64, names))
        }
    }
}

impl Resizer {
    pub async fn new(api: &Endpoint) -> anyhow::Result<Resizer> {
        Ok(Resizer {
            original: api.replicas().await?,
            removed: Vec::new(),
        })
    }

    pub fn original(&self) -> &[String] {
        &self.original
    }

    /// Brings the target to `n` replicas (the change only: waiting for them to serve
    /// is the caller's).
    pub async fn resize(&mut self, api: &Endpoint, n: usize) -> anyhow::Result<()> {
        let current = api.replicas().await?;
        let Some((method, k, names)) = plan_resize(&current, &self.original, &self.removed, n)
        else {
            return Ok(());
        };
        let path = if method == Method::POST {
            "/add"
        } else {
            "/rm"
        };
        let answer = api
            .call(method, path, Some(&json!({"n": k, "hostnames": names})))
            .await?;
        let after = rep_names(&answer)
            .with_context(|| format!("{path} → {}: {}", answer.status, answer.body))?;
        if after.len() != n {
            bail!("{path} left {} replicas instead of {n}", after.len());
        }
        for name in &current {
            if self.original.contains(name) && !after.contains(name) {
                self.removed.push(name.clone());
            }
        }
        self.removed.retain(|r| !after.contains(r));
        Ok(())
    }

    /// Puts the original membership back as far as `/add` and `/rm` can; returns a note
    /// when the names differ (a replica was replaced meanwhile, for example).
    pub async fn restore(&mut self, api: &Endpoint) -> anyhow::Result<Option<String>> {
        let n = self.original.len();
        let current = api.replicas().await?;
        // Remove extras and re-add originals in two steps so that the names come back.
        let extras: Vec<String> = current
            .iter()
            .filter(|c| !self.original.contains(c))
            .cloned()
            .collect();
        if !extras.is_empty() {
            let answer = api
                .call(
                    Method::DELETE,
                    "/rm",
                    Some(&json!({"n": extras.len(), "hostnames": extras})),
                )
                .await?;
            rep_names(&answer).with_context(|| format!("/rm → {}", answer.body))?;
        }
        self.resize(api, n).await?;
        let mut after = api.replicas().await?;
        let mut before = self.original.clone();
        after.sort();
        before.sort();
        Ok((after != before)
            .then(|| format!("the target's replicas were {before:?} before and are {after:?} now")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shrinking_removes_added_replicas_first_then_originals_from_the_end() {
        let original = names(&["A", "B", "C"]);
        let (m, k, n) = plan_resize(&original, &original, &[], 2).unwrap();
        assert_eq!((m, k, n), (Method::DELETE, 1, names(&["C"])));
        let current = names(&["A", "B", "C", "Server4", "Server5"]);
        let (m, k, n) = plan_resize(&current, &original, &[], 2).unwrap();
        assert_eq!(
            (m, k, n),
            (Method::DELETE, 3, names(&["Server5", "Server4", "C"]))
        );
        assert!(plan_resize(&original, &original, &[], 3).is_none());
    }

    #[test]
    fn growing_adds_removed_originals_back_by_name() {
        let original = names(&["A", "B", "C"]);
        let current = names(&["A"]);
        let removed = names(&["C", "B"]);
        let (m, k, n) = plan_resize(&current, &original, &removed, 2).unwrap();
        assert_eq!((m, k, n), (Method::POST, 1, names(&["C"])));
        let (m, k, n) = plan_resize(&current, &original, &removed, 5).unwrap();
        assert_eq!((m, k, n), (Method::POST, 4, names(&["C", "B"])));
    }
}
