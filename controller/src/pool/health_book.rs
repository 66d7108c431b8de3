//! The health book: what a pool's heartbeat rounds found, replica by replica, kept
//! the same way by both owners of a round: the local supervisor
//! (`pool/supervisor.rs`, keyed by replica name) and the operator's pod probes
//! (`operator/pod_probes.rs`, keyed by pod uid). An owner decides when a round runs
//! and whom it probes; [`probe_all`] sends the heartbeats at once,
//! [`HealthBook::record`] says what the answers mean, and the owner acts on what it
//! reports (metrics, logs, a new ring, a reconcile pass).
//!
//! What an answer means is decided here alone:
//! - a replica that has not answered yet and is within its startup grace does not
//!   count a failure (it may not listen yet);
//! - failures closer together than `failure_spacing` count once;
//! - `failure_threshold` counted failures in a row fail it, one success makes it
//!   healthy ([`HealthState`]);
//! - it serves from its first good heartbeat until it stops being routable
//!   ([`Entry::served_for`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::probe::Prober;
use crate::replica_health::{Health, HealthState};

/// How the book reads heartbeat answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Counted failures in a row after which a replica has failed.
    pub failure_threshold: u32,
    /// For this long after its process started, a replica that never answered does
    /// not count its failures.
    pub startup_grace: Duration,
    /// A failure less than this after the last counted one is not counted: extra
    /// rounds (after a proxy's report, after a start) must not turn "3 failures a
    /// second apart" into 3 failures within milliseconds.
    pub failure_spacing: Duration,
}

/// A moment: when this process saw something, less how old it already was then (a
/// pod that started before this operator took over has a head start).
#[derive(Clone, Copy, Debug)]
pub struct Since {
    seen: Instant,
    head_start: Duration,
}

impl Since {
    /// `now`.
    pub fn at(now: Instant) -> Self {
        Self::earlier(now, Duration::ZERO)
    }

    /// `by` before `now`.
    pub fn earlier(now: Instant, by: Duration) -> Self {
        Self {
            seen: now,
            head_start: by,
        }
    }

    /// Time from this moment to `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.duration_since(self.seen) + self.head_start
    }
}

/// One replica in the book: its health and the moments that decide how its next
/// answer counts.
#[derive(Clone, Debug)]
pub struct Entry<T> {
    /// What the owner keeps of the replica (its address, its pod's age…).
    pub about: T,
    state: HealthState,
    /// Since when its process runs: its startup grace counts from here. `None`: not
    /// yet (a Pending pod).
    started: Option<Since>,
    /// Since when it has been serving, while it is.
    serving: Option<Since>,
    /// How long it served before it last stopped.
    served_for: Option<Duration>,
    /// When its last counted failure was.
    last_failure: Option<Instant>,
}

impl<T> Entry<T> {
    /// A replica no heartbeat has answered yet, whose process runs since `started`
    /// (see [`Entry::start`] for one that does not run yet).
    pub fn starting(about: T, started: Option<Since>) -> Self {
        Self {
            about,
            state: HealthState::starting(),
            started,
            serving: None,
            served_for: None,
            last_failure: None,
        }
    }

    /// A replica found serving since `serving` (what a new operator leader sees of a
    /// pod the kubelet says is Ready): healthy, it has served, and it gets no startup
    /// grace — its failures count from the first.
    pub fn found_serving(about: T, started: Option<Since>, serving: Since) -> Self {
        let mut entry = Self::starting(about, started);
        entry.state.record_heartbeat(true, 1);
        entry.serving = Some(serving);
        entry
    }

    /// The same, having served for `served_for` before it was first seen (a
    /// container that exited before).
    pub fn having_served(mut self, served_for: Option<Duration>) -> Self {
        self.served_for = served_for;
        self
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    pub fn health(&self) -> Health {
        self.state.health
    }

    /// Since when its process runs, if it does.
    pub fn started(&self) -> Option<Since> {
        self.started
    }

    /// Its process runs from `now` on, unless it already did: its startup grace
    /// begins.
    pub fn start(&mut self, now: Instant) {
        self.started.get_or_insert(Since::at(now));
    }

    /// For how long it has been serving without a break, up to `now` or to when it
    /// stopped; `None` if it never served.
    pub fn served_for(&self, now: Instant) -> Option<Duration> {
        self.serving
            .map(|since| since.elapsed(now))
            .or(self.served_for)
    }

    /// Its process is gone (or will not start): failed, nothing to wait for.
    pub fn mark_exited(&mut self, now: Instant) {
        self.state.mark_exited();
        self.settle(now);
    }

    /// A request could not reach it: out of the ring until a heartbeat answers.
    pub fn mark_suspect(&mut self, now: Instant) {
        self.state.mark_suspect();
        self.settle(now);
    }

    /// Starts or ends its time serving, after its state changed.
    fn settle(&mut self, now: Instant) {
        if self.state.routable() {
            self.serving.get_or_insert(Since::at(now));
        } else if let Some(serving) = self.serving.take() {
            self.served_for = Some(serving.elapsed(now));
        }
    }

    /// Whether a heartbeat answer (`ok`) at `now` counts under `rules`.
    fn counts(&self, ok: bool, now: Instant, rules: &Rules) -> bool {
        if ok {
            return true;
        }
        let in_grace = self.state.health == Health::Starting
            && self
                .started
                .is_none_or(|started| started.elapsed(now) < rules.startup_grace);
        let too_soon = self
            .last_failure
            .is_some_and(|last| now.duration_since(last) < rules.failure_spacing);
        !in_grace && !too_soon
    }
}

/// One counted heartbeat answer, as [`HealthBook::record`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded<K> {
    pub key: K,
    pub ok: bool,
    /// Its health before the answer …
    pub was: Health,
    /// … and its state after.
    pub state: HealthState,
}

impl<K> Recorded<K> {
    /// This answer failed it.
    pub fn failed_now(&self) -> bool {
        self.was != Health::Failed && self.state.health == Health::Failed
    }

    /// This answer brought a failed or suspect replica back.
    pub fn back_in_service(&self) -> bool {
        matches!(self.was, Health::Failed | Health::Suspect) && self.state.health == Health::Healthy
    }
}

/// The health of each replica at one moment, to compare with later
/// ([`HealthBook::changed_since`]).
pub type Snapshot<K> = HashMap<K, Health>;

/// The replicas of one pool and what their heartbeats said, keyed by `K`; `T` is what
/// the owner keeps beside each.
#[derive(Debug)]
pub struct HealthBook<K, T> {
    rules: Rules,
    entries: HashMap<K, Entry<T>>,
}

impl<K: Eq + Hash + Clone, T> HealthBook<K, T> {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            entries: HashMap::new(),
        }
    }

    pub fn get(&self, key: &K) -> Option<&Entry<T>> {
        self.entries.get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut Entry<T>> {
        self.entries.get_mut(key)
    }

    /// Enters `key` afresh (a replica just started), replacing what was known.
    pub fn insert(&mut self, key: K, entry: Entry<T>) {
        self.entries.insert(key, entry);
    }

    /// The entry of `key`, made by `first` if the book has none.
    pub fn entry_or_insert_with(
        &mut self,
        key: K,
        first: impl FnOnce() -> Entry<T>,
    ) -> &mut Entry<T> {
        self.entries.entry(key).or_insert_with(first)
    }

    pub fn remove(&mut self, key: &K) -> Option<Entry<T>> {
        self.entries.remove(key)
    }

    /// Keeps only the entries for which `keep` holds.
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut Entry<T>) -> bool) {
        self.entries.retain(keep);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &Entry<T>)> {
        self.entries.iter()
    }

    /// Records heartbeat answers received at `now` (answers for keys the book no
    /// longer has are dropped) and reports the ones that counted, in order.
    pub fn record(
        &mut self,
        answers: impl IntoIterator<Item = (K, bool)>,
        now: Instant,
    ) -> Vec<Recorded<K>> {
        let rules = self.rules;
        let mut recorded = Vec::new();
        for (key, ok) in answers {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if !entry.counts(ok, now, &rules) {
                continue;
            }
            if !ok {
                entry.last_failure = Some(now);
            }
            let was = entry.state.health;
            entry.state.record_heartbeat(ok, rules.failure_threshold);
            entry.settle(now);
            recorded.push(Recorded {
                key,
                ok,
                was,
                state: entry.state,
            });
        }
        recorded
    }

    /// Every replica's health now.
    pub fn snapshot(&self) -> Snapshot<K> {
        self.entries
            .iter()
            .map(|(key, entry)| (key.clone(), entry.state.health))
            .collect()
    }

    /// The replicas whose health differs from `before`'s, those that came and those
    /// that went.
    pub fn changed_since(&self, before: &Snapshot<K>) -> Vec<K> {
        let differ = self
            .entries
            .iter()
            .filter(|(key, entry)| before.get(*key) != Some(&entry.state.health))
            .map(|(key, _)| key.clone());
        let gone = before
            .keys()
            .filter(|key| !self.entries.contains_key(*key))
            .cloned();
        differ.chain(gone).collect()
    }
}

/// Sends one heartbeat to each target at once, each bounded by `timeout`; answers
/// in the targets' order.
pub async fn probe_all<K>(
    prober: &dyn Prober,
    targets: impl IntoIterator<Item = (K, SocketAddr)>,
    timeout: Duration,
) -> Vec<(K, bool)> {
    futures::future::join_all(targets.into_iter().map(|(key, addr)| {
        let check = prober.check(addr, timeout);
        async move { (key, check.await) }
    }))
    .await
}

#[cfg(test)]
#[path = "health_book_tests.rs"]
mod tests;
