//! The test doubles of the unit tests, one of each: a fake [`Prober`], a wait
//! ([`until`]) and a `ServerPool` builder ([`pool`]). (The fake Kubernetes API
//! servers are the operator's, in `operator/fixtures.rs`; the end-to-end tests have
//! their own kit, `ringlb-testkit`.)

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::operator::crd::{
    HeartbeatSpec, MemberStatus, ReplacementStatus, ServerPool, ServerPoolSpec, ServerPoolStatus,
};
use crate::pool::probe::Prober;

/// One heartbeat as the fake prober saw it.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub addr: SocketAddr,
    /// What the test's [`FakeProber::noting`] said of `addr` when the heartbeat was
    /// sent (false without one).
    pub noted: bool,
}

type Note = Box<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// The fake [`Prober`]: answers at once, from what the test set — for an address,
/// else for its IP, else for every address ([`FakeProber::answering`]) — unless cut
/// off; records every probe.
pub struct FakeProber {
    by_addr: Mutex<HashMap<SocketAddr, bool>>,
    by_ip: Mutex<HashMap<IpAddr, bool>>,
    others: AtomicBool,
    cut: AtomicBool,
    probes: Mutex<Vec<Probe>>,
    note: OnceLock<Note>,
}

impl FakeProber {
    /// A prober to which every address answers `up` until the test says otherwise.
    pub fn answering(up: bool) -> Self {
        Self {
            by_addr: Mutex::default(),
            by_ip: Mutex::default(),
            others: AtomicBool::new(up),
            cut: AtomicBool::new(false),
            probes: Mutex::default(),
            note: OnceLock::new(),
        }
    }

    /// A prober that answers from a table of IPs (any port); other IPs fail.
    pub fn by_ip(table: impl IntoIterator<Item = (IpAddr, bool)>) -> Self {
        let prober = Self::answering(false);
        prober.by_ip.lock().unwrap().extend(table);
        prober
    }

    /// Whether `addr` answers from now on.
    pub fn set(&self, addr: SocketAddr, up: bool) {
        self.by_addr.lock().unwrap().insert(addr, up);
    }

    /// The addresses for which `which` holds answer as every other address again.
    pub fn forget(&self, which: impl Fn(&SocketAddr) -> bool) {
        self.by_addr.lock().unwrap().retain(|addr, _| !which(addr));
    }

    /// Whether addresses with no answer of their own answer from now on.
    pub fn set_others(&self, up: bool) {
        self.others.store(up, Ordering::SeqCst);
    }

    /// While `cut`, no heartbeat is answered (a fault between the prober and every
    /// replica), whatever was set.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// Has each probe note `note(addr)` at the time it is sent (set once).
    pub fn noting(&self, note: impl Fn(SocketAddr) -> bool + Send + Sync + 'static) {
        assert!(
            self.note.set(Box::new(note)).is_ok(),
            "the fake prober notes one thing"
        );
    }

    /// Every probe so far, in order.
    pub fn probes(&self) -> Vec<Probe> {
        self.probes.lock().unwrap().clone()
    }

    /// How many probes so far.
    pub fn probe_count(&self) -> usize {
        self.probes.lock().unwrap().len()
    }

    /// The probes of `addr` so far, in order.
    pub fn probes_of(&self, addr: SocketAddr) -> Vec<Probe> {
        self.probes()
            .into_iter()
            .filter(|p| p.addr == addr)
            .collect()
    }

    fn answer(&self, addr: SocketAddr) -> bool {
        if self.cut.load(Ordering::SeqCst) {
            return false;
        }
        let own = self.by_addr.lock().unwrap().get(&addr).copied();
        own.or_else(|| self.by_ip.lock().unwrap().get(&addr.ip()).copied())
            .unwrap_or_else(|| self.others.load(Ordering::SeqCst))
    }
}

impl Prober for FakeProber {
    fn check(&self, addr: SocketAddr, _timeout: Duration) -> BoxFuture<'static, bool> {
        let noted = self.note.get().is_some_and(|note| note(addr));
        self.probes.lock().unwrap().push(Probe { addr, noted });
        let up = self.answer(addr);
        Box::pin(std::future::ready(up))
    }
}

/// How long [`until`] waits before it fails the test.
#[derive(Clone, Copy, Debug)]
pub enum Within {
    /// This many turns of the other tasks, the clock standing still: for tests on a
    /// paused clock that move it themselves, where every wait is a step.
    Yields(usize),
    /// This long on tokio's clock (virtual on a paused clock), looking every 10 ms.
    Time(Duration),
}

/// Waits until `done` holds; fails the test, saying `what` it waited for, once
/// `within` has passed.
pub async fn until(what: &str, within: Within, mut done: impl FnMut() -> bool) {
    match within {
        Within::Yields(turns) => {
            for _ in 0..turns {
                if done() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("{what}: still not the case after {turns} yields");
        }
        Within::Time(bound) => {
            let deadline = tokio::time::Instant::now().checked_add(bound);
            while !done() {
                assert!(
                    deadline.is_none_or(|d| tokio::time::Instant::now() < d),
                    "timed out after {bound:?} waiting until {what}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The one pool of the operator's tests: `ServerPool` `demo` in namespace `default`,
/// `replicas` replicas of `ringlb-replica:dev` on port 5000, nothing else set; the
/// methods of [`TestPool`] set the rest.
pub fn pool(replicas: u32) -> TestPool {
    let mut pool = ServerPool::new(
        "demo",
        ServerPoolSpec {
            replicas,
            hostnames: Vec::new(),
            image: "ringlb-replica:dev".into(),
            port: 5000,
            hashing: None,
            heartbeat: None,
            protocol: None,
            weights: BTreeMap::new(),
            template: None,
        },
    );
    pool.metadata.namespace = Some("default".into());
    TestPool(pool)
}

/// A pool being built by [`pool`].
#[derive(Clone, Debug)]
pub struct TestPool(pub ServerPool);

impl TestPool {
    /// As the API server stores it: with `uid` and generation 1.
    pub fn stored(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.into());
        self.0.metadata.generation = Some(1);
        self
    }

    pub fn heartbeat(mut self, heartbeat: HeartbeatSpec) -> Self {
        self.0.spec.heartbeat = Some(heartbeat);
        self
    }

    pub fn status(mut self, status: Option<ServerPoolStatus>) -> Self {
        self.0.status = status;
        self
    }

    /// The operator's status lists `members` (name, pod, ready).
    pub fn members(mut self, members: &[(&str, &str, bool)]) -> Self {
        self.0.status.get_or_insert_default().members = members
            .iter()
            .map(|(name, pod, ready)| MemberStatus {
                name: name.to_string(),
                pod: pod.to_string(),
                ready: *ready,
            })
            .collect();
        self
    }

    /// The operator's status lists these replacements: (slot, replica holding it).
    pub fn replaced(mut self, replaced: &[(&str, &str)]) -> Self {
        self.0.status.get_or_insert_default().emergency_replacements = replaced
            .iter()
            .map(|(slot, holder)| ReplacementStatus {
                original: slot.to_string(),
                replacement: holder.to_string(),
                ..ReplacementStatus::default()
            })
            .collect();
        self
    }

    pub fn build(self) -> ServerPool {
        self.0
    }

    /// As the API server would send it.
    pub fn json(self) -> Value {
        serde_json::to_value(self.0).expect("a ServerPool is JSON")
    }
}
