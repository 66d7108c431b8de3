//! The supervisor: the one task that owns the pool.
//!
//! Every change goes through it, one at a time: admin calls, heartbeat results,
//! request failures reported by the proxy. Each round it heartbeats the replicas
//! (what the answers mean is its [`HealthBook`]'s to say), runs [`plan()`], applies the
//! actions through the [`Runtime`], and hands the pool's state to the [`Publisher`]. Because there is a single writer, an `/add` or `/rm`
//! is validated and applied atomically.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::HealthSettings;
use super::admission::{self, Weights};
use super::health_book::{Entry, HealthBook, Rules, Since, probe_all};
use super::probe::Prober;
use super::{Action, Observed, Policy, PoolAdmin, PoolError, ReplicaName, plan};
use crate::metrics::Metrics;
use crate::publish::{
    BalanceFactor, MemberState, PoolState, Publisher, Replacement, UpstreamProtocol,
};
use crate::replica_health::Health;
use crate::ring::RingConfig;
use crate::runtime::{Runtime, RuntimeError};

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub health: HealthSettings,
    pub max_replicas: usize,
    pub ring: RingConfig,
    /// Bounded loads: off when `None`.
    pub balance_factor: Option<BalanceFactor>,
    /// What the replicas are spoken to in (`--upstream-protocol`).
    pub protocol: UpstreamProtocol,
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

/// What the supervisor knows of a replica beside its health: where the runtime
/// runs it.
struct Process {
    addr: SocketAddr,
    pid: Option<u32>,
    /// Its container, when the runtime runs containers.
    container: Option<String>,
    running: bool,
}

impl Process {
    /// A replica the runtime has just started or listed: its health is a fresh one.
    fn entry(self) -> Entry<Process> {
        Entry::starting(self, Some(Since::at(Instant::now())))
    }
}

pub struct Supervisor<R: Runtime> {
    runtime: Arc<R>,
    settings: PoolSettings,
    heartbeats: Arc<dyn Prober>,
    metrics: Arc<Metrics>,
    desired: Vec<ReplicaName>,
    /// Ring weights of the desired replicas; a replacement takes its slot's.
    weights: Weights,
    /// The replicas the runtime runs, and what their heartbeats said.
    book: HealthBook<ReplicaName, Process>,
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
        PoolHandle::report_unreachable(self, name);
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
        let book = HealthBook::new(Rules {
            failure_threshold: settings.health.failure_threshold,
            // A local replica is checked from the moment it starts: one that does
            // not listen by its threshold is replaced (no startup grace).
            startup_grace: std::time::Duration::ZERO,
            // The extra rounds after a proxy's report, a start or at launch come
            // between the ticks: a failure counts at most once per half interval.
            failure_spacing: settings.health.interval / 2,
        });
        let mut supervisor = Supervisor {
            heartbeats,
            runtime,
            settings,
            metrics,
            desired: Vec::new(),
            weights,
            book,
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
        tracing::info!(replicas = self.book.len(), "stopping every replica");
        self.runtime.stop_all().await;
        self.book.clear();
        self.publish();
    }

    /// One supervision round: heartbeats, then plan and apply.
    async fn round(&mut self) {
        self.heartbeat_round().await;
        self.publish();
        self.reconcile().await;
    }

    fn mark_unreachable(&mut self, name: &ReplicaName) {
        if let Some(entry) = self.book.get_mut(name) {
            if entry.health() == Health::Healthy {
                tracing::warn!(replica = %name, "replica unreachable, out of the ring until its heartbeat succeeds");
            }
            entry.mark_suspect(Instant::now());
        }
    }

    /// Syncs with the runtime's list, then heartbeats every running replica at once.
    async fn heartbeat_round(&mut self) {
        let instances = self.runtime.list().await;
        let listed: HashSet<&ReplicaName> = instances.iter().map(|i| &i.name).collect();
        self.book.retain(|name, _| listed.contains(name));
        for instance in &instances {
            let entry = self.book.entry_or_insert_with(instance.name.clone(), || {
                Process {
                    addr: instance.addr,
                    pid: instance.pid,
                    container: instance.container.clone(),
                    running: instance.running,
                }
                .entry()
            });
            entry.about.addr = instance.addr;
            entry.about.pid = instance.pid;
            entry.about.container.clone_from(&instance.container);
            entry.about.running = instance.running;
            if !instance.running && entry.health() != Health::Failed {
                tracing::warn!(replica = %instance.name, pid = ?instance.pid, container = ?instance.container, "replica exited");
                entry.mark_exited(Instant::now());
            }
        }

        let targets: Vec<(ReplicaName, SocketAddr)> = self
            .book
            .iter()
            .filter(|(_, entry)| entry.about.running)
            .map(|(name, entry)| (name.clone(), entry.about.addr))
            .collect();
        let answers = probe_all(&*self.heartbeats, targets, self.settings.health.timeout).await;
        for beat in self.book.record(answers, Instant::now()) {
            if !beat.ok {
                self.metrics
                    .heartbeat_failed(self.metrics.pool(), &beat.key);
            }
            if beat.failed_now() {
                tracing::warn!(
                    replica = %beat.key,
                    failures = beat.state.consecutive_failures,
                    "replica failed its heartbeats"
                );
            } else if beat.back_in_service() {
                tracing::info!(replica = %beat.key, "replica healthy again");
            }
        }
    }

    /// Plans against the current observation and applies the actions.
    async fn reconcile(&mut self) {
        let observed: Vec<Observed> = self
            .book
            .iter()
            .map(|(name, entry)| Observed {
                name: name.clone(),
                health: entry.health(),
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
                    self.book.remove(&name);
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
                    self.book.remove(&failed);
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
                let process = Process {
                    addr: instance.addr,
                    pid: instance.pid,
                    container: instance.container,
                    running: instance.running,
                };
                self.book.insert(name.clone(), process.entry());
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
                    self.book.remove(started);
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
        let in_use: Vec<ReplicaName> = self.book.keys().cloned().collect();
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
            self.book.remove(name);
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
                .book
                .iter()
                .map(|(name, entry)| MemberState {
                    name: name.clone(),
                    addr: Some(entry.about.addr),
                    pid: entry.about.pid,
                    container: entry.about.container.clone(),
                    weight: self.weights.get(name).copied().unwrap_or(1),
                    health: entry.state(),
                })
                .collect(),
            replacements: self.replacements.clone(),
            ring: self.settings.ring.clone(),
            balance_factor: self.settings.balance_factor,
            protocol: self.settings.protocol,
        });
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
