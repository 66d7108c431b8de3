//! The supervisor: the one task that owns the pool.
//!
//! Every change goes through it, one at a time: admin calls, heartbeat results,
//! request failures reported by the proxy. Each round it heartbeats the replicas,
//! runs [`plan`], applies the actions through the [`Runtime`], and hands the pool's
//! state to the [`Publisher`]. Because there is a single writer, an `/add` or `/rm`
//! is validated and applied atomically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::admission::{self, Weights};
use super::probe::{HealthSettings, Prober};
use super::{Action, Observed, Policy, PoolAdmin, PoolError, ReplicaName, plan};
use crate::metrics::Metrics;
use crate::publish::{BalanceFactor, MemberState, PoolState, Publisher, Replacement};
use crate::replica_health::{Health, HealthState};
use crate::ring::RingConfig;
use crate::runtime::{Runtime, RuntimeError};

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub health: HealthSettings,
    pub max_replicas: usize,
    pub ring: RingConfig,
    /// Bounded loads: off when `None`.
    pub balance_factor: Option<BalanceFactor>,
}

type Reply = oneshot::Sender<Result<Vec<ReplicaName>, PoolError>>;

enum Command {
    Add {
        n: u64,
        hostnames: Vec<String>,
        weights: BTreeMap<String, u32>,
        reply: Reply,
    },
    Remove {
        n: u64,
        hostnames: Vec<String>,
        reply: Reply,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The cheap, cloneable way to talk to the supervisor.
#[derive(Clone)]
pub struct PoolHandle {
    commands: mpsc::Sender<Command>,
    suspects: mpsc::Sender<ReplicaName>,
}

impl PoolHandle {
    /// Adds `n` replicas; returns the desired replicas after the change.
    pub async fn add(
        &self,
        n: u64,
        hostnames: Vec<String>,
        weights: BTreeMap<String, u32>,
    ) -> Result<Vec<ReplicaName>, PoolError> {
        self.ask(|reply| Command::Add {
            n,
            hostnames,
            weights,
            reply,
        })
        .await
    }

    /// Removes `n` replicas; returns the desired replicas after the change.
    pub async fn remove(
        &self,
        n: u64,
        hostnames: Vec<String>,
    ) -> Result<Vec<ReplicaName>, PoolError> {
        self.ask(|reply| Command::Remove {
            n,
            hostnames,
            reply,
        })
        .await
    }

    async fn ask(
        &self,
        command: impl FnOnce(Reply) -> Command,
    ) -> Result<Vec<ReplicaName>, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| PoolError::ShuttingDown)?;
        answer.await.map_err(|_| PoolError::ShuttingDown)?
    }

    /// The proxy could not reach `name`: take it out of the ring now and check it.
    /// Never blocks the request path; if the supervisor is already busy with
    /// reports, this one is redundant and dropped.
    pub fn report_unreachable(&self, name: &ReplicaName) {
        let _ = self.suspects.try_send(name.clone());
    }

    /// Stops every replica and the supervisor; returns once they are gone.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }
}

struct Tracked {
    addr: SocketAddr,
    pid: Option<u32>,
    /// Its container, when the runtime runs containers.
    container: Option<String>,
    running: bool,
    state: HealthState,
    /// When its last failed heartbeat was counted.
    last_failure: Option<tokio::time::Instant>,
}

pub struct Supervisor<R: Runtime> {
    runtime: Arc<R>,
    settings: PoolSettings,
    heartbeats: Arc<dyn Prober>,
    metrics: Arc<Metrics>,
    desired: Vec<ReplicaName>,
    /// Ring weights of the desired replicas; a replacement takes its slot's.
    weights: Weights,
    tracked: HashMap<ReplicaName, Tracked>,
    next_emergency: u64,
    replacements: Vec<Replacement>,
    publisher: Arc<Publisher>,
}

impl PoolAdmin for PoolHandle {
    fn add(
        &self,
        n: u64,
        hostnames: Vec<String>,
        weights: BTreeMap<String, u32>,
    ) -> futures::future::BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>> {
        Box::pin(PoolHandle::add(self, n, hostnames, weights))
    }

    fn remove(
        &self,
        n: u64,
        hostnames: Vec<String>,
    ) -> futures::future::BoxFuture<'_, Result<Vec<ReplicaName>, PoolError>> {
        Box::pin(PoolHandle::remove(self, n, hostnames))
    }

    fn report_unreachable(&self, name: &ReplicaName) {
        PoolHandle::report_unreachable(self, name)
    }
}

impl<R: Runtime> Supervisor<R> {
    /// Starts the initial replicas, publishes the first ring through `publisher` and
    /// spawns the supervisor task. If any initial replica cannot start, everything
    /// started so far is stopped and the error returned.
    pub async fn launch(
        runtime: Arc<R>,
        initial: Vec<ReplicaName>,
        weights: Weights,
        settings: PoolSettings,
        heartbeats: Arc<dyn Prober>,
        metrics: Arc<Metrics>,
        publisher: Arc<Publisher>,
    ) -> Result<(PoolHandle, JoinHandle<()>), PoolError> {
        let mut supervisor = Supervisor {
            heartbeats,
            runtime,
            settings,
            metrics,
            desired: Vec::new(),
            weights,
            tracked: HashMap::new(),
            next_emergency: 1,
            replacements: Vec::new(),
            publisher,
        };
        if let Err(error) = supervisor.start_all(&initial).await {
            supervisor.runtime.stop_all().await;
            return Err(error);
        }
        supervisor.desired = initial;
        supervisor.heartbeat_round().await;
        supervisor.publish();

        let (commands, command_rx) = mpsc::channel(64);
        let (suspects, suspect_rx) = mpsc::channel(256);
        let task = tokio::spawn(supervisor.run(command_rx, suspect_rx));
        Ok((PoolHandle { commands, suspects }, task))
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut suspects: mpsc::Receiver<ReplicaName>,
    ) {
        let mut ticks = tokio::time::interval(self.settings.health.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.round().await,
                Some(name) = suspects.recv() => {
                    self.mark_unreachable(&name);
                    while let Ok(name) = suspects.try_recv() {
                        self.mark_unreachable(&name);
                    }
                    self.publish();
                    // Something is wrong now: look at once rather than at the next tick.
                    self.round().await;
                }
                command = commands.recv() => match command {
                    Some(Command::Add { n, hostnames, weights, reply }) => {
                        let _ = reply.send(self.add(n, hostnames, weights).await);
                    }
                    Some(Command::Remove { n, hostnames, reply }) => {
                        let _ = reply.send(self.remove(n, hostnames).await);
                    }
                    Some(Command::Shutdown { reply }) => {
                        self.stop_everything().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.stop_everything().await;
                        return;
                    }
                },
            }
        }
    }

    async fn stop_everything(&mut self) {
        tracing::info!(replicas = self.tracked.len(), "stopping every replica");
        self.runtime.stop_all().await;
        self.tracked.clear();
        self.publish();
    }

    /// One supervision round: heartbeats, then plan and apply.
    async fn round(&mut self) {
        self.heartbeat_round().await;
        self.publish();
        self.reconcile().await;
    }

    fn mark_unreachable(&mut self, name: &ReplicaName) {
        if let Some(tracked) = self.tracked.get_mut(name) {
            if tracked.state.health == Health::Healthy {
                tracing::warn!(replica = %name, "replica unreachable, out of the ring until its heartbeat succeeds");
            }
            tracked.state.mark_suspect();
        }
    }

    /// Syncs with the runtime's list, then heartbeats every running replica at once.
    async fn heartbeat_round(&mut self) {
        let instances = self.runtime.list().await;
        let listed: HashSet<&ReplicaName> = instances.iter().map(|i| &i.name).collect();
        self.tracked.retain(|name, _| listed.contains(name));
        for instance in &instances {
            let tracked = self
                .tracked
                .entry(instance.name.clone())
                .or_insert_with(|| Tracked {
                    addr: instance.addr,
                    pid: instance.pid,
                    container: instance.container.clone(),
                    running: true,
                    state: HealthState::starting(),
                    last_failure: None,
                });
            tracked.addr = instance.addr;
            tracked.pid = instance.pid;
            tracked.container.clone_from(&instance.container);
            tracked.running = instance.running;
            if !instance.running && tracked.state.health != Health::Failed {
                tracing::warn!(replica = %instance.name, pid = ?instance.pid, container = ?instance.container, "replica exited");
                tracked.state.mark_exited();
            }
        }

        let targets: Vec<(ReplicaName, SocketAddr)> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.running)
            .map(|(name, t)| (name.clone(), t.addr))
            .collect();
        let timeout = self.settings.health.timeout;
        let beats = futures::future::join_all(targets.into_iter().map(|(name, addr)| {
            let check = self.heartbeats.check(addr, timeout);
            async move { (name, check.await) }
        }))
        .await;

        let threshold = self.settings.health.failure_threshold;
        // Failures count at most once per half interval: the extra checks made after
        // a proxy's report (or at launch) must not turn "3 failures a second apart"
        // into 3 failures within milliseconds.
        let spacing = self.settings.health.interval / 2;
        let now = tokio::time::Instant::now();
        for (name, ok) in beats {
            let Some(tracked) = self.tracked.get_mut(&name) else {
                continue;
            };
            if !ok {
                if tracked
                    .last_failure
                    .is_some_and(|last| now.duration_since(last) < spacing)
                {
                    continue;
                }
                tracked.last_failure = Some(now);
            }
            let before = tracked.state.health;
            tracked.state.record_heartbeat(ok, threshold);
            if !ok {
                self.metrics.heartbeat_failed(self.metrics.pool(), &name);
            }
            let after = tracked.state.health;
            match (before, after) {
                (b, Health::Failed) if b != Health::Failed => tracing::warn!(
                    replica = %name,
                    failures = tracked.state.consecutive_failures,
                    "replica failed its heartbeats"
                ),
                (Health::Failed | Health::Suspect, Health::Healthy) => {
                    tracing::info!(replica = %name, "replica healthy again")
                }
                _ => {}
            }
        }
    }

    /// Plans against the current observation and applies the actions.
    async fn reconcile(&mut self) {
        let observed: Vec<Observed> = self
            .tracked
            .iter()
            .map(|(name, t)| Observed {
                name: name.clone(),
                health: t.state.health,
            })
            .collect();
        let planned = plan(
            &self.desired,
            &observed,
            Policy {
                replace_failed: self.runtime.can_start(),
                next_emergency: self.next_emergency,
            },
        );
        self.next_emergency = planned.next_emergency;
        if planned.actions.is_empty() {
            return;
        }
        let mut started = false;
        for action in planned.actions {
            match action {
                Action::Start(name) => started |= self.start_one(&name).await.is_ok(),
                Action::Stop(name) => {
                    self.tracked.remove(&name);
                    self.runtime.stop(&name).await;
                    tracing::info!(replica = %name, "stopped replica that is no longer desired");
                }
                Action::Replace {
                    failed,
                    replacement,
                } => {
                    tracing::warn!(failed = %failed, replacement = %replacement, "replacing failed replica");
                    if let Some(slot) = self.desired.iter_mut().find(|d| **d == failed) {
                        *slot = replacement.clone();
                    }
                    if let Some(weight) = self.weights.remove(&failed) {
                        self.weights.insert(replacement.clone(), weight);
                    }
                    self.tracked.remove(&failed);
                    self.publish();
                    // Reaps the dead process, or kills a hung one at once: a
                    // graceful stop would wait for a process that cannot answer.
                    self.runtime.kill(&failed).await;
                    self.metrics.replacements.inc();
                    self.replacements.push(Replacement {
                        failed,
                        replacement: replacement.clone(),
                    });
                    // If this fails, the next round sees a desired replica that is
                    // not running and starts it.
                    started |= self.start_one(&replacement).await.is_ok();
                }
            }
        }
        if started {
            // New replicas announce once they listen: check them now so that they
            // join the ring without waiting a whole interval.
            self.heartbeat_round().await;
        }
        self.publish();
    }

    async fn start_one(&mut self, name: &ReplicaName) -> Result<(), RuntimeError> {
        match self.runtime.start(name).await {
            Ok(instance) => {
                tracing::info!(replica = %name, addr = %instance.addr, pid = ?instance.pid, "started replica");
                self.tracked.insert(
                    name.clone(),
                    Tracked {
                        addr: instance.addr,
                        pid: instance.pid,
                        container: instance.container,
                        running: instance.running,
                        state: HealthState::starting(),
                        last_failure: None,
                    },
                );
                Ok(())
            }
            Err(error) => {
                tracing::error!(replica = %name, %error, "could not start replica");
                Err(error)
            }
        }
    }

    /// Starts every name, or none: on the first failure the ones started are stopped.
    async fn start_all(&mut self, names: &[ReplicaName]) -> Result<(), PoolError> {
        for (i, name) in names.iter().enumerate() {
            if let Err(error) = self.start_one(name).await {
                for started in &names[..i] {
                    self.tracked.remove(started);
                    self.runtime.stop(started).await;
                }
                return Err(error.into());
            }
        }
        Ok(())
    }

    async fn add(
        &mut self,
        n: u64,
        hostnames: Vec<String>,
        weights: BTreeMap<String, u32>,
    ) -> Result<Vec<ReplicaName>, PoolError> {
        let in_use: Vec<ReplicaName> = self.tracked.keys().cloned().collect();
        let admission::Addition {
            names,
            weights_after,
            ..
        } = admission::check_add::<admission::MembershipError>(
            admission::AddTo {
                desired: &self.desired,
                in_use: &in_use,
                weights: &self.weights,
                max_replicas: self.settings.max_replicas,
                ring: &self.settings.ring,
            },
            n,
            &hostnames,
            &weights,
            |_| Ok(()),
        )?;
        self.start_all(&names).await?;
        tracing::info!(added = ?names.iter().map(ReplicaName::as_str).collect::<Vec<_>>(), "admin: added replicas");
        self.desired.extend(names);
        self.weights = weights_after;
        self.metrics.admin_change("add");
        self.heartbeat_round().await;
        self.publish();
        Ok(self.desired.clone())
    }

    async fn remove(
        &mut self,
        n: u64,
        hostnames: Vec<String>,
    ) -> Result<Vec<ReplicaName>, PoolError> {
        let names = admission::names_to_remove(&self.desired, n, &hostnames, &mut rand::rng())?;
        tracing::info!(removed = ?names.iter().map(ReplicaName::as_str).collect::<Vec<_>>(), "admin: removed replicas");
        self.desired.retain(|d| !names.contains(d));
        self.weights.retain(|name, _| !names.contains(name));
        // Out of the ring first, then stopped: the replica drains what it has.
        self.publish();
        for name in &names {
            self.tracked.remove(name);
            self.runtime.stop(name).await;
        }
        self.metrics.admin_change("rm");
        self.publish();
        Ok(self.desired.clone())
    }

    /// Hands the pool as it is now to the publisher.
    fn publish(&mut self) {
        self.publisher.publish(&PoolState {
            desired: self.desired.clone(),
            members: self
                .tracked
                .iter()
                .map(|(name, t)| MemberState {
                    name: name.clone(),
                    addr: Some(t.addr),
                    pid: t.pid,
                    container: t.container.clone(),
                    weight: self.weights.get(name).copied().unwrap_or(1),
                    health: t.state,
                })
                .collect(),
            replacements: self.replacements.clone(),
            ring: self.settings.ring.clone(),
            balance_factor: self.settings.balance_factor,
        });
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
