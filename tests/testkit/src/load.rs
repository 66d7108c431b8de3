//! A steady client load and the "healed" check of the self-healing tests, for
//! every runtime: the same assertions whether replicas are processes or containers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{Ringlb, home, wait_until};

/// Whether the pool has healed into exactly `expected`: `/rep` lists them in this
/// order, and `/ring` has exactly these members, all healthy and in the ring.
pub async fn healed(lb: &Ringlb, expected: &[&str]) -> Result<Value, String> {
    let (n, replicas) = lb.rep().await;
    if n != expected.len() as u64 || replicas != expected {
        return Err(format!("/rep: N={n} {replicas:?}"));
    }
    let ring = lb.ring_json().await;
    let members = ring["members"].as_array().unwrap();
    let mut names: Vec<&str> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    let all_serving = members
        .iter()
        .all(|m| m["health"] == "healthy" && m["in_ring"] == true);
    if names != want || !all_serving {
        return Err(format!("/ring members: {}", json!(members)));
    }
    Ok(ring)
}

/// A steady stream of `GET /home` from `workers` concurrent clients until `stop`
/// is set; counts answers per replica and keeps every failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    /// The longest a single request took, in microseconds.
    slowest: Arc<AtomicU64>,
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    pub fn start(lb: &Ringlb, workers: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let slowest = Arc::new(AtomicU64::new(0));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        let until = Instant::now() + limit;
        for _ in 0..workers {
            let (stop, ok, slowest, counts, failures) = (
                stop.clone(),
                ok.clone(),
                slowest.clone(),
                counts.clone(),
                failures.clone(),
            );
            let http = lb.http.clone();
            let url = lb.proxy_url("/home");
            tasks.spawn(async move {
                // Bounded even if the test never sets `stop`.
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let sent = Instant::now();
                    let answer = home(&http, &url).await;
                    slowest.fetch_max(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                    match answer {
                        Ok(name) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *counts.lock().await.entry(name).or_default() += 1;
                        }
                        Err(error) => failures.lock().await.push(error),
                    }
                }
            });
        }
        Load {
            stop,
            ok,
            slowest,
            counts,
            failures,
            tasks,
        }
    }

    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    pub async fn served(&self, name: &str) -> usize {
        self.counts.lock().await.get(name).copied().unwrap_or(0)
    }

    /// Waits (at most 10 s) until replica `name` has answered a request of the load.
    pub async fn until_served_by(&self, name: &str) {
        wait_until(
            &format!("{name} to answer requests"),
            Duration::from_secs(10),
            || async {
                match self.served(name).await {
                    0 => Err(format!("no answer from {name} yet")),
                    _ => Ok(()),
                }
            },
        )
        .await;
    }

    /// Stops the load; returns the answers per replica, the failures, and the
    /// slowest request.
    pub async fn finish(mut self) -> (BTreeMap<String, usize>, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done.expect("load worker");
        }
        let counts = self.counts.lock().await.clone();
        let failures = self.failures.lock().await.clone();
        let slowest = Duration::from_micros(self.slowest.load(Ordering::Relaxed));
        (counts, failures, slowest)
    }
}

/// Waits until the load has made `more` successful requests beyond what it had.
pub async fn load_progress(load: &Load, more: usize) {
    let target = load.ok() + more;
    wait_until(
        "the request loop to make progress",
        Duration::from_secs(15),
        || async {
            if load.ok() >= target {
                Ok(())
            } else {
                Err(format!("{} of {target} requests served", load.ok()))
            }
        },
    )
    .await;
}
