//! Leader election for the reconciler, done as client-go's `leaderelection` does it:
//! of the `ringlb operator` processes of a namespace, only the holder of the
//! `coordination.k8s.io/v1` Lease reconciles; the others look at it every retry
//! period and take over after the leader dies.
//!
//! - **Acquire and renew** (client-go's `tryAcquireOrRenew`): read the Lease; create it
//!   if it is missing; otherwise write it with the resourceVersion that was read, so
//!   that a write based on a stale read is refused (409) instead of overwriting
//!   someone else's: the Lease is then read again. The write is a JSON merge patch that
//!   carries `metadata.resourceVersion`, which the API server checks as it checks an
//!   update's (PUT): the same optimistic concurrency as client-go's `Update`, with the
//!   `patch` verb the operator's Role already grants. `holderIdentity`, `acquireTime`,
//!   `renewTime`, `leaseDurationSeconds` and `leaseTransitions` are filled as client-go
//!   fills them (acquireTime and transitions kept on renewal, transitions + 1 when the
//!   holder changes).
//! - **Expiry on the local monotonic clock**: a standby never compares the holder's
//!   `renewTime` with its own wall clock. It notes when it first saw the current
//!   record (resourceVersion and spec), and takes the Lease only once that record has
//!   not changed for the record's `leaseDurationSeconds` since then: clocks that
//!   disagree between holders do not matter.
//! - **Fencing** (client-go's RenewDeadline): the leader tries to renew every retry
//!   period; an attempt may take what is left of the renew deadline. Without a
//!   successful renewal within the renew deadline of the start of the last successful
//!   one, it stops leading at that instant: [`Leadership::is_leader`] reads the
//!   monotonic clock, so it turns false even while a renewal still hangs. The renew
//!   deadline is shorter than the lease duration that a standby waits, so the old
//!   leader has stopped before a standby may take over. A read never moves the
//!   deadline; a Lease that names anyone else ends the leadership at once.
//! - **Release** (client-go's ReleaseOnCancel): stepping down clears the holder (with
//!   the resourceVersion last written, so only our own record is cleared) and sets
//!   `leaseDurationSeconds` to 1; a standby takes it at its next look.
//!
//! Transitions are logged and counted in `/metrics` (`ringlb_leader`,
//! `ringlb_leader_transitions_total`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The three durations of client-go's leader election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a standby waits, from when it saw the Lease record last change, before
    /// it takes the Lease (written as `leaseDurationSeconds`): the longest takeover.
    pub lease_duration: Duration,
    /// How long the leader keeps acting after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews, and a standby looks at the Lease.
    pub retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults for controllers (kube-controller-manager's): 15 s, 10 s, 2 s.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Durations that would let two processes lead at once, or a leader lose its lease
/// for want of a second try.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTiming(String);

impl Timing {
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, InvalidTiming> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if lease_duration < Duration::from_secs(1) || lease_duration.subsec_nanos() != 0 {
            return Err(InvalidTiming(format!(
                "the lease duration ({}) must be a whole number of seconds, at least 1s: \
                 it is written to the Lease as leaseDurationSeconds",
                show(lease_duration)
            )));
        }
        if renew_deadline >= lease_duration {
            return Err(InvalidTiming(format!(
                "the renew deadline ({}) must be shorter than the lease duration ({}): a leader \
                 that cannot renew must stop writing before a standby may take the lease",
                show(renew_deadline),
                show(lease_duration)
            )));
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(InvalidTiming(format!(
                "the retry period ({}) must be above zero and shorter than the renew deadline \
                 ({}): a leader needs more than one renewal attempt before it stops leading",
                show(retry_period),
                show(renew_deadline)
            )));
        }
        Ok(Self {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// Which Lease, who this process is in it, and the timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Who this process is in the lease's `holderIdentity`: the pod's name.
    pub identity: String,
    pub timing: Timing,
}

impl LeaseSettings {
    pub fn new(name: &str, namespace: &str, identity: &str, timing: Timing) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            timing,
        }
    }
}

/// Until when this process may act as the leader, on tokio's monotonic clock (the
/// paused clock in tests), readable without a lock.
#[derive(Debug)]
struct Fence {
    origin: Instant,
    /// Nanoseconds after `origin` until which (exclusive) this process leads: 0 while
    /// it does not, `u64::MAX` for a test's leadership that never expires.
    until: AtomicU64,
    /// Incremented each time leadership is gained, so that [`Leadership::lost`] tells
    /// that a term ended even when the next one began before anyone looked.
    term: AtomicU64,
}

impl Fence {
    fn new(until: u64) -> Self {
        Self {
            origin: Instant::now(),
            until: AtomicU64::new(until),
            term: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn open_until(&self, deadline: Instant) {
        // Never 0 ("not leading"), even for a deadline at the origin.
        self.until
            .store(self.nanos(deadline).max(1), Ordering::SeqCst);
    }

    fn close(&self) {
        self.until.store(0, Ordering::SeqCst);
    }

    fn remaining(&self) -> Option<Duration> {
        let until = self.until.load(Ordering::SeqCst);
        if until == u64::MAX {
            return Some(Duration::MAX);
        }
        let now = self.nanos(Instant::now());
        (now < until).then(|| Duration::from_nanos(until - now))
    }
}

/// Whether this process leads: what the reconciler reads before each write.
///
/// Leading takes two things: the elector says so (it published `true` and has not
/// published the loss yet), and the renew deadline of its last successful renewal
/// has not passed on the monotonic clock. The second makes leadership end on time
/// even while the elector's renewal hangs.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    fence: Arc<Fence>,
}

impl Leadership {
    /// Always the leader: for a process that is alone by construction (tests).
    #[cfg(test)]
    pub fn sole() -> Self {
        Self::fixed(true)
    }

    /// Never the leader: a standby (tests).
    #[cfg(test)]
    pub fn standby() -> Self {
        Self::fixed(false)
    }

    /// Leading when the test says so (no deadline).
    #[cfg(test)]
    pub fn manual() -> (watch::Sender<bool>, Self) {
        let (sender, receiver) = watch::channel(false);
        let leadership = Self {
            leading: receiver,
            fence: Arc::new(Fence::new(u64::MAX)),
        };
        (sender, leadership)
    }

    #[cfg(test)]
    fn fixed(leading: bool) -> Self {
        let (sender, receiver) = watch::channel(leading);
        // The channel keeps its last value once the sender is gone.
        drop(sender);
        Self {
            leading: receiver,
            fence: Arc::new(Fence::new(u64::MAX)),
        }
    }

    /// Whether this process may write now. Cheap (a read lock that is never held
    /// long, a clock read and an atomic load): call it before every write.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow() && self.fence.remaining().is_some()
    }

    /// How long this process may still write without a further renewal (`None`
    /// when it does not lead): a bound for the timeout of a write about to start.
    pub fn remaining(&self) -> Option<Duration> {
        if *self.leading.borrow() {
            self.fence.remaining()
        } else {
            None
        }
    }

    /// Yields each time this process becomes the leader: the controller reconciles
    /// every pool then, instead of waiting for a standby's next recheck.
    pub fn gained(&self) -> impl futures::Stream<Item = ()> + Send + Sync + 'static {
        futures::stream::unfold(self.leading.clone(), |mut leading| async move {
            loop {
                leading.changed().await.ok()?;
                if *leading.borrow_and_update() {
                    return Some(((), leading));
                }
            }
        })
    }

    /// Resolves when the leadership held when this was called has ended: at once if
    /// this process does not lead now; when the renew deadline passed, the Lease was
    /// seen held by another, or the process stepped down; also if a new term began
    /// since (the loss in between was not missed). For work that must stop with the
    /// leadership (heartbeat tasks): `select!` it against that work.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut leading = self.leading.clone();
        let fence = self.fence.clone();
        let term = fence.term.load(Ordering::SeqCst);
        let held = self.is_leader();
        async move {
            if !held {
                return;
            }
            let ended =
                |now_leading: &bool| !*now_leading || fence.term.load(Ordering::SeqCst) != term;
            let closed = leading.wait_for(ended).await.is_err();
            if closed && !ended(&leading.borrow()) {
                // The elector is gone and left leadership on: a test's fixed leader,
                // whose leadership never ends (the real elector clears it on drop).
                std::future::pending::<()>().await;
            }
        }
    }

    /// The leadership flag as the elector publishes it (true when gained, false when
    /// lost), for a task that follows every change. [`is_leader`](Self::is_leader)
    /// stays the judge of whether to write: it also sees a deadline the elector has not
    /// published yet.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

/// Campaigns for the Lease until `stop` resolves, then steps down: stops leading at
/// once and releases the Lease if it holds it. Returns at once; the returned task
/// ends after the step-down. Aborting the task instead stops leading without a
/// release (the Lease then expires by itself): for a shutdown whose passes did not end.
pub fn campaign(
    client: Client,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, JoinHandle<()>) {
    let (leading, receiver) = watch::channel(false);
    let fence = Arc::new(Fence::new(0));
    let leadership = Leadership {
        leading: receiver,
        fence: fence.clone(),
    };
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings,
        metrics,
        leading,
        fence,
        held: None,
        observed: None,
    };
    let task = tokio::spawn(async move {
        {
            let mut stop = std::pin::pin!(stop);
            tokio::select! {
                biased;
                () = &mut stop => {}
                () = elector.run() => {}
            }
        }
        elector.step_down().await;
    });
    (leadership, task)
}

/// The Lease record a standby saw, and when it first saw it (monotonic clock).
struct Observed {
    version: Option<String>,
    spec: Option<LeaseSpec>,
    at: Instant,
}

/// What one acquisition attempt found.
enum Acquired {
    /// This process holds the Lease, as written.
    Took(Box<Lease>),
    /// Another holds it; it expires for us at `expires` unless its record changes.
    HeldBy { holder: String, expires: Instant },
    /// Someone else wrote between our read and our write: look again.
    Conflict,
}

/// Why a renewal attempt did not renew.
enum NotRenewed {
    /// The Lease names someone else (or nobody): leadership ends now.
    Lost(String),
    /// The attempt failed; the next may succeed before the deadline.
    Failed(kube::Error),
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    leading: watch::Sender<bool>,
    fence: Arc<Fence>,
    /// The Lease as this process last wrote it while leading: the base of the next
    /// renewal (its resourceVersion) and of the release.
    held: Option<Lease>,
    observed: Option<Observed>,
}

impl Elector {
    async fn run(&mut self) {
        loop {
            let (lease, since) = self.acquire().await;
            self.lead(lease, since).await;
        }
    }

    /// Until this process holds the Lease: the Lease as written, and the start of the
    /// attempt that wrote it (the renew deadline counts from there).
    async fn acquire(&mut self) -> (Lease, Instant) {
        let timing = self.settings.timing;
        loop {
            let started = Instant::now();
            let attempt = tokio::time::timeout(timing.renew_deadline, self.try_acquire()).await;
            let next = Instant::now() + timing.retry_period;
            let next = match attempt {
                Ok(Ok(Acquired::Took(lease))) => return (*lease, started),
                Ok(Ok(Acquired::HeldBy { holder, expires })) => {
                    tracing::debug!(%holder, lease = %self.settings.name, "the lease is held");
                    // Look again right when it expires, not up to a retry period later.
                    next.min(expires)
                }
                Ok(Ok(Acquired::Conflict)) => next,
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.settings.name, "cannot acquire the leader lease; retrying");
                    next
                }
                Err(_) => {
                    tracing::warn!(lease = %self.settings.name, "acquiring the leader lease timed out; retrying");
                    next
                }
            };
            tokio::time::sleep_until(next).await;
        }
    }

    async fn try_acquire(&mut self) -> Result<Acquired, kube::Error> {
        let identity = self.settings.identity.clone();
        let current = match self.api.get(&self.settings.name).await {
            Ok(lease) => lease,
            Err(error) if is_code(&error, 404) => {
                return match self
                    .api
                    .create(&PostParams::default(), &self.new_lease())
                    .await
                {
                    Ok(created) => Ok(Acquired::Took(Box::new(created))),
                    Err(error) if is_code(&error, 409) => Ok(Acquired::Conflict),
                    Err(error) => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let seen_at = self.observe(&current);
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        // A record that still names this process (a term that ended on its deadline,
        // or a restart under the same name) is retaken at once, as client-go does: the
        // write succeeds only if no one wrote since the read.
        let ours = holder == Some(identity.as_str());
        if let Some(holder) = holder
            && !ours
        {
            let lasts = spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(self.settings.timing.lease_duration, |s| {
                    Duration::from_secs(s.unsigned_abs().into())
                });
            let expires = seen_at + lasts;
            if Instant::now() < expires {
                return Ok(Acquired::HeldBy {
                    holder: holder.to_owned(),
                    expires,
                });
            }
        }
        let now = MicroTime(Timestamp::now());
        let transitions = spec.lease_transitions.unwrap_or(0);
        let record = LeaseSpec {
            holder_identity: Some(identity),
            lease_duration_seconds: Some(self.settings.timing.lease_seconds()),
            acquire_time: match (ours, spec.acquire_time) {
                (true, Some(acquired)) => Some(acquired),
                _ => Some(now.clone()),
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        };
        match self.write(&current, &record).await {
            Ok(lease) => Ok(Acquired::Took(Box::new(lease))),
            Err(error) if is_code(&error, 409) => Ok(Acquired::Conflict),
            Err(error) => Err(error),
        }
    }

    /// Leads until the renew deadline passes without a renewal, or the Lease is seen
    /// held by another.
    async fn lead(&mut self, lease: Lease, since: Instant) {
        let timing = self.settings.timing;
        self.wrote(lease);
        let mut renewed = since;
        self.gain(renewed + timing.renew_deadline);
        let mut next = since + timing.retry_period;
        loop {
            let deadline = renewed + timing.renew_deadline;
            tokio::time::sleep_until(next.min(deadline)).await;
            let started = Instant::now();
            if started >= deadline {
                return self.lose("no renewal succeeded within the renew deadline");
            }
            // An attempt may take what is left of the deadline, no more: at the
            // deadline this task publishes the loss even if the call still hangs.
            match tokio::time::timeout_at(deadline, self.try_renew()).await {
                Ok(Ok(())) => {
                    // From the start of the attempt: the write reached the API server
                    // after that, so a standby saw it after that too.
                    renewed = started;
                    self.fence.open_until(renewed + timing.renew_deadline);
                }
                Ok(Err(NotRenewed::Lost(holder))) => {
                    return self.lose(&format!("the lease is now held by {holder}"));
                }
                Ok(Err(NotRenewed::Failed(error))) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tracing::warn!(%error, lease = %self.settings.name, ?left, "cannot renew the leader lease; retrying");
                }
                Err(_) => {
                    return self.lose("a renewal was still unanswered at the renew deadline");
                }
            }
            next = started + timing.retry_period;
        }
    }

    /// One renewal: the optimistic write based on the Lease as last written; if
    /// someone wrote since (409), read it again and renew only if it still names us.
    async fn try_renew(&mut self) -> Result<(), NotRenewed> {
        let held = self
            .held
            .clone()
            .expect("leading: the lease as last written");
        let mut record = held.spec.clone().unwrap_or_default();
        record.renew_time = Some(MicroTime(Timestamp::now()));
        match self.write(&held, &record).await {
            Ok(lease) => {
                self.wrote(lease);
                return Ok(());
            }
            Err(error) if is_code(&error, 409) => {
                tracing::debug!(lease = %self.settings.name, "the lease changed since it was renewed: reading it again");
            }
            Err(error) if is_code(&error, 404) => {
                // Deleted from outside: a standby may create it at once, so this
                // process can no longer count on it.
                return Err(NotRenewed::Lost("nobody (it was deleted)".to_owned()));
            }
            Err(error) => return Err(NotRenewed::Failed(error)),
        }
        let current = match self.api.get(&self.settings.name).await {
            Ok(lease) => lease,
            Err(error) if is_code(&error, 404) => {
                return Err(NotRenewed::Lost("nobody (it was deleted)".to_owned()));
            }
            Err(error) => return Err(NotRenewed::Failed(error)),
        };
        self.observe(&current);
        let mut record = current.spec.clone().unwrap_or_default();
        if record.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            let holder = record
                .holder_identity
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "nobody".to_owned());
            return Err(NotRenewed::Lost(holder));
        }
        record.renew_time = Some(MicroTime(Timestamp::now()));
        record.lease_duration_seconds = Some(self.settings.timing.lease_seconds());
        match self.write(&current, &record).await {
            Ok(lease) => {
                self.wrote(lease);
                Ok(())
            }
            Err(error) => Err(NotRenewed::Failed(error)),
        }
    }

    /// Stops leading at once, then releases the Lease if this process wrote it last.
    async fn step_down(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        // Before the release: once the Lease is free, this process must not write.
        self.publish(false, "stepping down");
        let now = MicroTime(Timestamp::now());
        let release = |lease: &Lease| LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now.clone()),
            lease_transitions: lease.spec.as_ref().and_then(|s| s.lease_transitions),
            ..LeaseSpec::default()
        };
        let released = tokio::time::timeout(self.settings.timing.renew_deadline, async {
            match self.write(&held, &release(&held)).await {
                Err(error) if is_code(&error, 409) => {
                    // Written since our last renewal: release only if it still names us.
                    let current = self.api.get(&self.settings.name).await?;
                    let spec = current.spec.as_ref();
                    if spec.and_then(|s| s.holder_identity.as_deref())
                        == Some(self.settings.identity.as_str())
                    {
                        self.write(&current, &release(&current)).await.map(drop)
                    } else {
                        Ok(())
                    }
                }
                other => other.map(drop),
            }
        })
        .await;
        match released {
            Ok(Ok(())) => {
                tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "stepped down: lease released");
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not release the leader lease; it expires by itself");
            }
            Err(_) => {
                tracing::warn!("releasing the leader lease timed out; it expires by itself");
            }
        }
    }

    /// Writes `record` over `base`, on condition that the Lease is still at `base`'s
    /// resourceVersion (the API server answers 409 otherwise).
    async fn write(&self, base: &Lease, record: &LeaseSpec) -> Result<Lease, kube::Error> {
        let mut spec = serde_json::to_value(record).map_err(kube::Error::SerdeError)?;
        // A merge patch leaves absent fields alone: a cleared holder must be null.
        if record.holder_identity.is_none() {
            spec["holderIdentity"] = Value::Null;
        }
        let patch = json!({
            "metadata": {"resourceVersion": base.metadata.resource_version},
            "spec": spec,
        });
        self.api
            .patch(
                &self.settings.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
    }

    fn new_lease(&self) -> Lease {
        let now = MicroTime(Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(self.settings.timing.lease_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Notes the record read, and returns when it was first seen: now if it changed.
    fn observe(&mut self, lease: &Lease) -> Instant {
        let version = &lease.metadata.resource_version;
        match &self.observed {
            Some(seen) if seen.version == *version && seen.spec == lease.spec => seen.at,
            _ => {
                let at = Instant::now();
                self.observed = Some(Observed {
                    version: version.clone(),
                    spec: lease.spec.clone(),
                    at,
                });
                at
            }
        }
    }

    fn wrote(&mut self, lease: Lease) {
        self.observe(&lease);
        self.held = Some(lease);
    }

    fn gain(&mut self, deadline: Instant) {
        self.fence.open_until(deadline);
        self.fence.term.fetch_add(1, Ordering::SeqCst);
        self.publish(true, "acquired the lease");
    }

    fn lose(&mut self, why: &str) {
        self.held = None;
        self.publish(false, why);
    }

    /// Publishes a change of leadership, logs it and counts it. Losing closes the
    /// fence first, so that no reader sees `is_leader()` after the loss.
    fn publish(&self, now: bool, why: &str) {
        if !now {
            self.fence.close();
        }
        let before = self.leading.send_replace(now);
        self.metrics.leader.set(i64::from(now));
        if before != now {
            self.metrics.leader_transitions.inc();
            let (identity, lease) = (&self.settings.identity, &self.settings.name);
            if now {
                tracing::info!(%identity, %lease, why, "leading: this process reconciles");
            } else {
                tracing::warn!(%identity, %lease, why, "not leading: reconciling stops");
            }
        }
    }
}

impl Drop for Elector {
    /// An aborted campaign stops leading, without a release.
    fn drop(&mut self) {
        if *self.leading.borrow() {
            self.publish(false, "the election stopped");
        }
        self.fence.close();
    }
}

fn is_code(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

#[cfg(test)]
mod tests {
    //! Against the fake API server (`fixtures.rs`), which keeps a resourceVersion and
    //! refuses a write based on a stale one (409), as the API server does; each
    //! candidate's client sends under its own name. On tokio's paused clock, with
    //! client-go's default timing (15 s, 10 s, 2 s), so times are exact.

    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use futures::FutureExt as _;

    use super::*;
    use crate::operator::fixtures::{Change, FakeApiServer, merge};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    const NAME: &str = "ringlb-operator";
    const LEASE: Duration = Duration::from_secs(15);
    const RENEW: Duration = Duration::from_secs(10);
    const RETRY: Duration = Duration::from_secs(2);

    /// The Lease on the fake API server, and what the tests ask of it.
    #[derive(Clone, Default)]
    struct LeaseApi {
        server: FakeApiServer,
        /// Holds on writes that are never to be answered (see [`LeaseApi::hang`]).
        hung: Arc<Mutex<Vec<watch::Sender<bool>>>>,
    }

    impl LeaseApi {
        /// A client whose requests this server knows as `by`'s.
        fn client(&self, by: &str) -> Client {
            self.server.caller(by).client()
        }

        fn lease_path() -> String {
            format!("{LEASES}/{NAME}")
        }

        /// Someone else's write (another elector, an administrator): `spec` merged
        /// into the Lease (created if missing), under a new resourceVersion.
        fn outside(&self, spec: Value) {
            let mut lease = self.server.get(LEASES, NAME).unwrap_or_else(|| {
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": NAME, "namespace": "default"}, "spec": {}})
            });
            merge(&mut lease["spec"], &spec);
            self.server.caller("outside").put(LEASES, lease);
        }

        /// A write that changes the resourceVersion and not the record (a label).
        fn touch(&self) {
            let mut lease = self.server.get(LEASES, NAME).unwrap();
            lease["metadata"]["labels"] = json!({"touched": "yes"});
            self.server.caller("outside").put(LEASES, lease);
        }

        /// From now on, `by`'s writes reach the API server and are never answered.
        fn hang(&self, by: &str) {
            let by = self.server.caller(by);
            let mut hung = self.hung.lock().unwrap();
            hung.push(by.hold("POST", LEASES));
            hung.push(by.hold("PATCH", &Self::lease_path()));
        }

        /// From now on, `by`'s writes are refused with 409 (its reads still answer).
        fn refuse(&self, by: &str) {
            let by = self.server.caller(by);
            by.fail_next("POST", LEASES, 409, usize::MAX);
            by.fail_next("PATCH", &Self::lease_path(), 409, usize::MAX);
        }

        fn spec(&self) -> Value {
            self.server.get(LEASES, NAME).unwrap()["spec"].clone()
        }

        fn holder(&self) -> Option<String> {
            self.spec()["holderIdentity"].as_str().map(str::to_owned)
        }

        /// The writes the API server accepted from `by`: when, the Lease after each.
        fn writes_by(&self, by: &str) -> Vec<Change> {
            let mut changes = self.server.changes();
            changes.retain(|c| c.by == by);
            changes
        }

        /// `by`'s requests in [from, to): their methods.
        fn requests_by(&self, by: &str, from: Instant, to: Instant) -> Vec<String> {
            self.server
                .calls()
                .into_iter()
                .filter(|c| c.by == by && c.at >= from && c.at < to)
                .map(|c| c.method)
                .collect()
        }

        /// PATCHes that carried no resourceVersion (no optimistic concurrency).
        fn unconditional(&self) -> usize {
            let calls = self.server.calls();
            let patches = calls.iter().filter(|c| c.method == "PATCH");
            patches
                .filter(|c| c.body["metadata"]["resourceVersion"].is_null())
                .count()
        }

        /// Every request but reads and writes of the Lease: nothing else should come.
        fn strays(&self) -> Vec<String> {
            let lease = Self::lease_path();
            self.server
                .calls()
                .into_iter()
                .filter(|c| {
                    let expected = match c.method.as_str() {
                        "GET" | "PATCH" => c.path == lease,
                        "POST" => c.path == LEASES,
                        _ => false,
                    };
                    !expected
                })
                .map(|c| format!("{} {}", c.method, c.path))
                .collect()
        }
    }

    /// A MicroTime `offset` seconds from now on this machine's wall clock.
    fn stamp(offset: i64) -> String {
        let at = Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(offset);
        at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    struct Candidate {
        leadership: Leadership,
        metrics: Arc<Metrics>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    fn candidate(api: &LeaseApi, identity: &str) -> Candidate {
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = LeaseSettings::new(NAME, "default", identity, Timing::default());
        let (leadership, task) = campaign(api.client(identity), settings, metrics.clone(), async {
            let _ = stopped.await;
        });
        Candidate {
            leadership,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    impl Candidate {
        async fn step_down(&mut self) {
            let _ = self.stop.take().unwrap().send(());
            (&mut self.task).await.unwrap();
        }

        /// A crash: no release, no further request.
        fn kill(&self) {
            self.task.abort();
        }

        fn leads(&self) -> bool {
            self.leadership.is_leader()
        }

        /// When it next becomes the leader (now if it leads); fails after a minute.
        async fn led_at(&self) -> Instant {
            let mut leading = self.leadership.subscribe();
            within(leading.wait_for(|leading| *leading)).await.unwrap();
            Instant::now()
        }

        /// When the leadership it holds now ends.
        fn lost_at(&self) -> JoinHandle<Instant> {
            assert!(self.leads(), "not leading: nothing to lose");
            let lost = self.leadership.lost();
            tokio::spawn(async move {
                lost.await;
                Instant::now()
            })
        }
    }

    /// `future`'s output, or a failure after a minute (of the paused clock): a test
    /// fails instead of waiting for ever.
    async fn within<T>(future: impl Future<Output = T>) -> T {
        let limit = Duration::from_secs(60);
        tokio::time::timeout(limit, future)
            .await
            .unwrap_or_else(|_| panic!("not within {limit:?}"))
    }

    /// Set if, at any millisecond from now on, both lead (sampled on the paused clock).
    fn overlap(a: &Candidate, b: &Candidate) -> Arc<AtomicBool> {
        let seen = Arc::new(AtomicBool::new(false));
        let (a, b, flag) = (a.leadership.clone(), b.leadership.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                if a.is_leader() && b.is_leader() {
                    flag.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn one_of_two_leads_renews_every_retry_period_and_fills_the_record_as_client_go() {
        let api = LeaseApi::default();
        let t0 = Instant::now();
        let a = candidate(&api, "a");
        let b = candidate(&api, "b");
        let both = overlap(&a, &b);
        tokio::time::sleep_until(t0 + secs(20.5)).await;

        let holder = api.holder().expect("a holder");
        let (leader, standby) = if holder == "a" { (&a, &b) } else { (&b, &a) };
        assert!(leader.leads() && !standby.leads());
        let writes = api.writes_by(&holder);
        let times: Vec<Duration> = writes.iter().map(|w| w.at - t0).collect();
        let expected: Vec<Duration> = (0..=10).map(|i| RETRY * i).collect();
        assert_eq!(
            times, expected,
            "created at once, renewed every retry period"
        );
        let other = if holder == "a" { "b" } else { "a" };
        assert!(api.writes_by(other).is_empty(), "the standby never wrote");

        let created = &writes[0].object["spec"];
        assert_eq!(created["leaseTransitions"], 0);
        assert_eq!(created["acquireTime"], created["renewTime"]);
        let spec = api.spec();
        assert_eq!(spec["holderIdentity"], holder.as_str());
        assert_eq!(spec["leaseDurationSeconds"], 15);
        assert_eq!(spec["leaseTransitions"], 0, "the same holder throughout");
        assert_eq!(
            spec["acquireTime"], created["acquireTime"],
            "kept on renewal"
        );
        assert_eq!(
            api.unconditional(),
            0,
            "every write carried the resourceVersion it was based on"
        );
        assert!(api.strays().is_empty(), "{:?}", api.strays());
        assert_eq!(leader.metrics.leader.get(), 1);
        assert_eq!(leader.metrics.leader_transitions.get(), 1);
        assert_eq!(standby.metrics.leader.get(), 0);
        assert_eq!(standby.metrics.leader_transitions.get(), 0);
        assert!(!both.load(Ordering::SeqCst), "two leaders at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_killed_leader_is_succeeded_one_lease_duration_after_its_last_renewal_not_before() {
        let api = LeaseApi::default();
        let t0 = Instant::now();
        let a = candidate(&api, "a");
        tokio::time::sleep_until(t0 + secs(0.5)).await;
        let b = candidate(&api, "b");
        let both = overlap(&a, &b);
        // Right after its renewal at 6 s.
        tokio::time::sleep_until(t0 + secs(6.001)).await;
        assert!(a.leads() && !b.leads());
        a.kill();
        let killed = Instant::now();
        let last = api.writes_by("a").last().unwrap().at;
        assert_eq!(last, t0 + secs(6.0));

        let took = b.led_at().await;
        assert!(
            took >= killed + LEASE,
            "b took over {:?} after the kill",
            took - killed
        );
        assert!(
            took <= last + LEASE + RETRY,
            "b took over {:?} after a's last renewal",
            took - last
        );
        assert_eq!(api.holder().as_deref(), Some("b"));
        let spec = api.spec();
        assert_eq!(spec["leaseTransitions"], 1);
        assert_eq!(spec["acquireTime"], spec["renewTime"], "a new term");
        assert!(!both.load(Ordering::SeqCst), "two leaders at once");
    }

    /// client-go's RenewDeadline: while its renewals hang, the leader stops at the
    /// renew deadline of its last successful renewal, before anyone may take over.
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_hang_stops_at_its_renew_deadline_before_a_standby_may_take_over()
     {
        let api = LeaseApi::default();
        let t0 = Instant::now();
        let a = candidate(&api, "a");
        tokio::time::sleep_until(t0 + secs(0.5)).await;
        let b = candidate(&api, "b");
        let both = overlap(&a, &b);
        tokio::time::sleep_until(t0 + secs(5.0)).await;
        // From now on, a's writes reach the API server and never come back.
        api.hang("a");
        let last = api.writes_by("a").last().unwrap().at;
        assert_eq!(last, t0 + secs(4.0));
        let lost = a.lost_at();

        let deadline = last + RENEW;
        tokio::time::sleep_until(deadline - Duration::from_millis(1)).await;
        assert!(a.leads(), "within its renew deadline");
        assert_eq!(a.leadership.remaining(), Some(Duration::from_millis(1)));
        tokio::time::sleep_until(deadline).await;
        assert!(
            !a.leads(),
            "past its renew deadline, its renewal still hanging"
        );
        assert_eq!(a.leadership.remaining(), None);
        assert_eq!(
            within(lost).await.unwrap(),
            deadline,
            "lost() at the deadline"
        );

        let took = b.led_at().await;
        assert!(
            took >= last + LEASE,
            "b took over {:?} after a's last renewal",
            took - last
        );
        assert!(took > deadline);
        tokio::time::sleep_until(t0 + secs(60.0)).await;
        assert!(!a.leads() && b.leads());
        assert_eq!(
            api.writes_by("a").last().unwrap().at,
            last,
            "no write of a since"
        );
        assert_eq!(a.metrics.leader.get(), 0);
        assert_eq!(a.metrics.leader_transitions.get(), 2);
        assert!(!both.load(Ordering::SeqCst), "two leaders at once");
    }

    /// A read that still names the leader is no renewal: with every write refused,
    /// it keeps trying every retry period (write, read again, write) and stops at the
    /// renew deadline of its last successful write.
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_writes_are_refused_stops_at_its_renew_deadline_though_reads_name_it() {
        let api = LeaseApi::default();
        let t0 = Instant::now();
        let a = candidate(&api, "a");
        tokio::time::sleep_until(t0 + secs(5.0)).await;
        api.refuse("a");
        let lost = a.lost_at();
        let deadline = t0 + secs(4.0) + RENEW;
        assert_eq!(within(lost).await.unwrap(), deadline);
        assert_eq!(
            api.holder().as_deref(),
            Some("a"),
            "the Lease still names it"
        );
        let tries = ["PATCH", "GET", "PATCH"].repeat(4);
        assert_eq!(
            api.requests_by("a", t0 + secs(5.0), deadline),
            tries,
            "at 6, 8, 10 and 12 s"
        );
    }

    /// Expiry is judged on the standby's monotonic clock from when it saw the record:
    /// the holder's renewTime, an hour behind or ahead of ours, changes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_standby_takes_over_exactly_one_lease_duration_after_it_saw_the_record_whatever_its_renew_time()
     {
        for skew in [-3600, 3600] {
            let api = LeaseApi::default();
            api.outside(json!({
                "holderIdentity": "other", "leaseDurationSeconds": 15, "leaseTransitions": 3,
                "acquireTime": stamp(skew), "renewTime": stamp(skew),
            }));
            let t0 = Instant::now();
            let b = candidate(&api, "b");
            let took = b.led_at().await;
            assert_eq!(took - t0, LEASE, "renewTime {skew:+} s from our clock");
            assert_eq!(api.holder().as_deref(), Some("b"));
            assert_eq!(api.spec()["leaseTransitions"], 4);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_keeps_renewing_keeps_the_lease_however_old_its_renew_time_looks() {
        let api = LeaseApi::default();
        let record = |k: i64| {
            json!({"holderIdentity": "other", "leaseDurationSeconds": 15,
                   "renewTime": stamp(-3600 + 2 * k)})
        };
        api.outside(record(0));
        let t0 = Instant::now();
        let b = candidate(&api, "b");
        // 40 s of renewals, each an hour old on b's clock.
        for k in 1..=20 {
            tokio::time::sleep_until(t0 + RETRY * k + secs(0.1)).await;
            api.outside(record(k.into()));
            assert!(!b.leads(), "b took a lease renewed {k} times");
        }
        let last = Instant::now();
        let took = b.led_at().await;
        assert!(took >= last + LEASE && took <= last + LEASE + RETRY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_finds_another_holder_in_the_lease_stops_at_its_next_look() {
        let api = LeaseApi::default();
        let t0 = Instant::now();
        let a = candidate(&api, "a");
        tokio::time::sleep_until(t0 + secs(5.0)).await;
        let lost = a.lost_at();
        // Someone took the lease (another elector after a partition, by hand).
        api.outside(json!({"holderIdentity": "intruder", "renewTime": stamp(0),
                           "leaseTransitions": 1}));
        let lost = within(lost).await.unwrap();
        assert_eq!(lost, t0 + secs(6.0), "at its next renewal attempt");
        assert!(!a.leads());
        assert_eq!(a.metrics.leader.get(), 0);
        assert_eq!(a.metrics.leader_transitions.get(), 2);
        // It is a standby now: it takes the lease only once the intruder's record has
        // stood still for the lease duration from when it saw it.
        let again = a.led_at().await;
        assert_eq!(again - lost, LEASE);
        assert_eq!(api.spec()["leaseTransitions"], 2);
    }

    /// A write by someone else that leaves the holder (a label) makes the leader's
    /// optimistic write stale: it reads the Lease again and renews, still leading.
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewal_is_refused_as_stale_reads_again_and_keeps_leading() {
        let api = LeaseApi::default();
        let t0 = Instant::now();
        let a = candidate(&api, "a");
        tokio::time::sleep_until(t0 + secs(3.0)).await;
        api.touch();
        tokio::time::sleep_until(t0 + secs(4.5)).await;
        assert_eq!(
            api.requests_by("a", t0 + secs(3.0), t0 + secs(4.5)),
            ["PATCH", "GET", "PATCH"],
            "409, read again, renewed"
        );
        assert_eq!(api.writes_by("a").last().unwrap().at, t0 + secs(4.0));
        assert!(a.leads());
        assert_eq!(a.metrics.leader_transitions.get(), 1, "never stopped");
    }

    /// client-go's ReleaseOnCancel: a standby need not wait out the lease.
    #[tokio::test(start_paused = true)]
    async fn a_leader_that_steps_down_releases_the_lease_and_a_standby_takes_it_within_a_retry_period()
     {
        let api = LeaseApi::default();
        let t0 = Instant::now();
        let mut a = candidate(&api, "a");
        tokio::time::sleep_until(t0 + secs(0.5)).await;
        let b = candidate(&api, "b");
        let both = overlap(&a, &b);
        tokio::time::sleep_until(t0 + secs(3.0)).await;
        let lost = a.lost_at();
        a.step_down().await;
        let released = Instant::now();
        assert!(!a.leads());
        assert_eq!(within(lost).await.unwrap(), released);
        let release = api.writes_by("a").last().unwrap().object["spec"].clone();
        assert_eq!(release.get("holderIdentity"), None, "holder cleared");
        assert_eq!(release["leaseDurationSeconds"], 1);
        assert_eq!(release["leaseTransitions"], 0);

        let took = b.led_at().await;
        assert!(took - released <= RETRY, "b waited {:?}", took - released);
        assert_eq!(api.holder().as_deref(), Some("b"));
        assert_eq!(api.spec()["leaseTransitions"], 1);
        assert_eq!(a.metrics.leader.get(), 0);
        assert!(!both.load(Ordering::SeqCst), "two leaders at once");
    }

    #[test]
    fn timing_that_could_let_two_lead_is_refused_with_the_reason() {
        let s = Duration::from_secs;
        assert_eq!(Timing::new(s(15), s(10), s(2)), Ok(Timing::default()));
        let error = |l, r, p| Timing::new(l, r, p).unwrap_err().to_string();
        assert!(
            error(s(15), s(15), s(2))
                .contains("renew deadline (15s) must be shorter than the lease duration (15s)")
        );
        assert!(error(s(15), s(10), s(10)).contains(
            "retry period (10s) must be above zero and shorter than the renew deadline (10s)"
        ));
        assert!(error(s(15), s(10), s(0)).contains("retry period (0s)"));
        assert!(error(secs(15.5), s(10), s(2)).contains("whole number of seconds"));
        assert!(error(s(0), s(0), s(0)).contains("whole number of seconds"));
    }

    #[tokio::test(start_paused = true)]
    async fn lost_resolves_when_the_term_ends_at_once_without_one_and_never_for_a_fixed_leader() {
        let (leading, leadership) = Leadership::manual();
        assert_eq!(leadership.lost().now_or_never(), Some(()), "not leading");
        leading.send_replace(true);
        let mut lost = Box::pin(leadership.lost());
        assert_eq!((&mut lost).now_or_never(), None);
        leading.send_replace(false);
        assert_eq!(lost.now_or_never(), Some(()));

        let sole = Leadership::sole();
        let never = tokio::time::timeout(Duration::from_secs(3600), sole.lost()).await;
        assert!(never.is_err(), "a fixed leader never loses");
    }
}
