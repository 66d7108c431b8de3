//! Replicas as Docker containers (`ringlb up --runtime docker`), through the Engine
//! API (bollard; `DOCKER_HOST` or the local socket).
//!
//! Each replica is a container named after it (`Server1`, `emergency_3`, after an
//! optional prefix) from the replica image, on one user-defined bridge network,
//! labelled with the pool (the network's name) and the owning ringlb run. ringlb
//! reaches it at the address the Engine reports on that network: no name resolution,
//! so it works from a `FROM scratch` image and from the host alike.
//!
//! Ownership: a ringlb removes every container it started when it stops. A ringlb
//! that was killed cannot, so at start a ringlb removes the containers labelled with
//! its pool that an earlier run left (one ringlb per network). The network is
//! created if missing and removed on exit when a ringlb created it (its label says
//! so); one made by compose is left to compose.
//!
//! Names are validated replica names passed as API fields: nothing reaches a shell.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};

use super::{Instance, Runtime, RuntimeError};
use crate::replica_name::ReplicaName;

/// The port replicas listen on inside their container.
const REPLICA_PORT: u16 = 5000;
/// How long a new container may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period of a polite stop (`docker stop -t`), as for a child process.
const STOP_GRACE_SECS: i32 = 5;
/// Bound on one Engine call that removes a container: a replacement must not wait
/// on an Engine that hangs.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on any other Engine call.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

const LABEL_POOL: &str = "ringlb.pool";
const LABEL_OWNER: &str = "ringlb.owner";
const LABEL_REPLICA: &str = "ringlb.replica";

/// What `ringlb up --runtime docker` was given.
#[derive(Clone, Debug)]
pub struct DockerSettings {
    /// Image of the replicas (runs `ringlb-replica`, configured by environment).
    pub image: String,
    /// User-defined bridge network of the replicas; also names the pool.
    pub network: String,
    /// Put before every container name, so that several pools can share an Engine.
    pub name_prefix: String,
}

struct Container {
    id: String,
    /// Its name (prefix included), as `docker ps` shows it.
    name: String,
    addr: SocketAddr,
}

pub struct DockerRuntime {
    docker: Docker,
    settings: DockerSettings,
    /// This run: containers carry it, so `stop_all` finds every one it created.
    owner: String,
    /// Whether the network was made by a ringlb (and so is removed on exit).
    remove_network: bool,
    containers: Mutex<HashMap<ReplicaName, Container>>,
}

impl DockerRuntime {
    /// Connects to the Engine and prepares the pool: checks the image, removes what
    /// an earlier run left, and makes sure the network exists.
    pub async fn connect(settings: DockerSettings) -> anyhow::Result<Self> {
        check_name_prefix(&settings.name_prefix)?;
        let docker = connect_engine().await?;
        match docker.inspect_image(&settings.image).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => anyhow::bail!(
                "replica image {} not found: build it with `just image` (scripts/build-images.sh)",
                settings.image
            ),
            Err(e) => anyhow::bail!("cannot inspect image {}: {e}", settings.image),
        }
        remove_leftovers(&docker, &settings.network).await?;
        let remove_network = ensure_network(&docker, &settings.network).await?;
        Ok(Self {
            docker,
            settings,
            owner: format!("{:016x}", rand::random::<u64>()),
            remove_network,
            containers: Mutex::new(HashMap::new()),
        })
    }

    fn pool(&self) -> &str {
        &self.settings.network
    }

    /// Takes `name`'s container out of this run's list (it is being stopped).
    fn forget(&self, name: &ReplicaName) -> Option<Container> {
        self.containers
            .lock()
            .expect("containers lock")
            .remove(name)
    }

    fn container_name(&self, name: &ReplicaName) -> String {
        format!("{}{name}", self.settings.name_prefix)
    }

    /// Creates and starts the container; on a name clash with an earlier container
    /// of this same run (a replacement whose removal failed), removes that one first.
    async fn create_and_start(&self, name: &ReplicaName) -> Result<String, String> {
        let container_name = self.container_name(name);
        let body = ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            // The image's entrypoint is the replica; it reads its settings from these.
            env: Some(vec![
                format!("SERVER_ID={name}"),
                format!("PORT={REPLICA_PORT}"),
                "REPLICA_HOST=0.0.0.0".into(),
            ]),
            hostname: Some(name.to_string()),
            labels: Some(HashMap::from([
                (LABEL_POOL.into(), self.pool().to_owned()),
                (LABEL_OWNER.into(), self.owner.clone()),
                (LABEL_REPLICA.into(), name.to_string()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some(self.settings.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = || {
            CreateContainerOptionsBuilder::new()
                .name(&container_name)
                .build()
        };
        let created = match self
            .docker
            .create_container(Some(options()), body.clone())
            .await
        {
            Err(EngineError::DockerResponseServerError {
                status_code: 409, ..
            }) if self.is_ours(&container_name).await => {
                remove(&self.docker, &container_name)
                    .await
                    .map_err(|e| format!("cannot remove the earlier {container_name}: {e}"))?;
                self.docker.create_container(Some(options()), body).await
            }
            other => other,
        };
        let id = match created {
            Ok(created) => created.id,
            Err(EngineError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                return Err(format!(
                    "a container named {container_name} exists and is not a replica of this \
                     ringlb: remove it, or choose other names (or --docker-name-prefix)"
                ));
            }
            Err(e) => return Err(format!("cannot create container {container_name}: {e}")),
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            let _ = remove(&self.docker, &id).await;
            return Err(format!("cannot start container {container_name}: {e}"));
        }
        Ok(id)
    }

    async fn is_ours(&self, container_name: &str) -> bool {
        self.docker
            .inspect_container(container_name, None)
            .await
            .ok()
            .and_then(|c| c.config?.labels)
            .is_some_and(|l| l.get(LABEL_OWNER) == Some(&self.owner))
    }

    /// The container's address on the pool's network, once it accepts connections.
    async fn wait_listening(&self, id: &str) -> Result<SocketAddr, String> {
        let ip = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| e.to_string())?
            .network_settings
            .and_then(|s| s.networks?.remove(&self.settings.network)?.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| format!("no address on network {}", self.settings.network))?;
        let ip: IpAddr = ip.parse().map_err(|e| format!("bad address {ip:?}: {e}"))?;
        let addr = SocketAddr::new(ip, REPLICA_PORT);
        // The container runs before its server listens; the process runtime waits for
        // the replica's announcement, this waits for the port to accept.
        let listening = async {
            loop {
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(_)) => return,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        };
        tokio::time::timeout(START_TIMEOUT, listening)
            .await
            .map_err(|_| format!("{addr} did not accept connections within {START_TIMEOUT:?}"))?;
        Ok(addr)
    }

    /// Stops politely (SIGTERM, then SIGKILL after the grace period), then removes.
    async fn stop_and_remove(&self, id: &str) {
        let options = StopContainerOptionsBuilder::new()
            .t(STOP_GRACE_SECS)
            .build();
        let grace = Duration::from_secs(STOP_GRACE_SECS as u64);
        // A paused container cannot take SIGTERM: the stop fails or times out, and
        // the forced removal below ends it.
        let _ = tokio::time::timeout(
            grace + REMOVE_TIMEOUT,
            self.docker.stop_container(id, Some(options)),
        )
        .await;
        if let Err(e) = remove(&self.docker, id).await {
            tracing::warn!(container = id, error = %e, "could not remove replica container");
        }
    }
}

impl Runtime for DockerRuntime {
    async fn start(&self, name: &ReplicaName) -> Result<Instance, RuntimeError> {
        let failed = |reason: String| RuntimeError::Spawn {
            name: name.clone(),
            source: std::io::Error::other(reason),
        };
        let id = self.create_and_start(name).await.map_err(failed)?;
        let addr = match self.wait_listening(&id).await {
            Ok(addr) => addr,
            Err(reason) => {
                let _ = remove(&self.docker, &id).await;
                return Err(RuntimeError::NoAddress {
                    name: name.clone(),
                    reason,
                });
            }
        };
        let previous = self.containers.lock().expect("containers lock").insert(
            name.clone(),
            Container {
                id,
                name: self.container_name(name),
                addr,
            },
        );
        if let Some(previous) = previous {
            self.stop_and_remove(&previous.id).await;
        }
        Ok(Instance {
            name: name.clone(),
            addr,
            pid: None,
            container: Some(self.container_name(name)),
            running: true,
        })
    }

    async fn stop(&self, name: &ReplicaName) {
        if let Some(container) = self.forget(name) {
            self.stop_and_remove(&container.id).await;
        }
    }

    async fn kill(&self, name: &ReplicaName) {
        if let Some(container) = self.forget(name)
            && let Err(e) = remove(&self.docker, &container.id).await
        {
            tracing::warn!(replica = %name, error = %e, "could not remove failed replica container");
        }
    }

    async fn list(&self) -> Vec<Instance> {
        // One Engine call per round: the state of every container of this run.
        let states: Option<HashMap<String, ContainerSummaryStateEnum>> =
            match containers_labelled(&self.docker, LABEL_OWNER, &self.owner).await {
                Ok(list) => Some(
                    list.into_iter()
                        .filter_map(|c| Some((c.id?, c.state?)))
                        .collect(),
                ),
                Err(e) => {
                    // The Engine is away: nothing is known to have exited; the
                    // heartbeats still judge the replicas themselves.
                    tracing::warn!(error = %e, "cannot list the replica containers");
                    None
                }
            };
        self.containers
            .lock()
            .expect("containers lock")
            .iter()
            .map(|(name, container)| Instance {
                name: name.clone(),
                addr: container.addr,
                pid: None,
                container: Some(container.name.clone()),
                // Exited, dead or removed by someone else: gone. Paused counts as
                // running, as a stopped (SIGSTOP) child process does: it holds its
                // address but does not answer, and its heartbeats tell.
                running: states.as_ref().is_none_or(|states| {
                    matches!(
                        states.get(&container.id),
                        Some(
                            ContainerSummaryStateEnum::RUNNING
                                | ContainerSummaryStateEnum::PAUSED
                                | ContainerSummaryStateEnum::RESTARTING
                        )
                    )
                }),
            })
            .collect()
    }

    async fn stop_all(&self) {
        let all: Vec<Container> = self
            .containers
            .lock()
            .expect("containers lock")
            .drain()
            .map(|(_, container)| container)
            .collect();
        futures::future::join_all(all.iter().map(|c| self.stop_and_remove(&c.id))).await;
        // Anything else of this run (a start that failed half way) goes too.
        if let Ok(rest) = containers_labelled(&self.docker, LABEL_OWNER, &self.owner).await {
            futures::future::join_all(
                rest.into_iter()
                    .filter_map(|c| c.id)
                    .map(|id| async move { remove(&self.docker, &id).await }),
            )
            .await;
        }
        if self.remove_network {
            let network = &self.settings.network;
            match self.docker.remove_network(network).await {
                Ok(()) => tracing::info!(network, "removed the replicas' network"),
                Err(e) => {
                    tracing::warn!(network, error = %e, "could not remove the replicas' network");
                }
            }
        }
    }

    fn can_start(&self) -> bool {
        true
    }
}

/// A client of the Engine at `DOCKER_HOST`, else the local socket, on an API version
/// both speak; every call bounded by [`ENGINE_TIMEOUT`].
pub async fn connect_engine() -> anyhow::Result<Docker> {
    let unreachable = |e: EngineError| {
        anyhow::anyhow!(
            "cannot reach the Docker Engine ({}): {e}; is it running, and may this user use its socket?",
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "/var/run/docker.sock".into())
        )
    };
    let docker = Docker::connect_with_defaults()
        .map_err(unreachable)?
        .with_timeout(ENGINE_TIMEOUT);
    // The Engine may be older than the client's API version: agree on one.
    docker.negotiate_version().await.map_err(unreachable)
}

/// The id of the running container `container` if a ringlb started it as replica
/// `replica` (its label says so): the check before `ringlb-analyze` kills a replica
/// container, so that a container that took the name since is never touched (as
/// `launch::is_replica_process` is for a pid).
pub async fn replica_container_id(
    docker: &Docker,
    container: &str,
    replica: &str,
) -> anyhow::Result<String> {
    let inspected = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot inspect container {container}: {e}"))?;
    let labelled = inspected
        .config
        .and_then(|c| c.labels)
        .and_then(|mut labels| labels.remove(LABEL_REPLICA));
    anyhow::ensure!(
        labelled.as_deref() == Some(replica),
        "container {container} is not replica {replica} of a ringlb (label {LABEL_REPLICA}: {labelled:?})"
    );
    anyhow::ensure!(
        inspected.state.and_then(|s| s.running) == Some(true),
        "container {container} is not running"
    );
    inspected
        .id
        .ok_or_else(|| anyhow::anyhow!("the Engine gave no id for container {container}"))
}

/// `docker kill` (SIGKILL) of the container `id`: `ringlb-analyze`'s failure
/// experiment. The ringlb that owns it sees it exit, removes and replaces it.
pub async fn kill_container(docker: &Docker, id: &str) -> anyhow::Result<()> {
    let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
    docker
        .kill_container(id, Some(options))
        .await
        .map_err(|e| anyhow::anyhow!("cannot kill container {id}: {e}"))
}

/// The containers with `label=value`, in any state.
async fn containers_labelled(
    docker: &Docker,
    label: &str,
    value: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
    let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker.list_containers(Some(options)).await
}

/// A ringlb that was killed (SIGKILL, `docker kill` of its container) left its
/// replicas running: they are this pool's, and in the way of the names about to be
/// started. Removed, not adopted: a fresh start is simpler to reason about than
/// containers of unknown health and configuration.
async fn remove_leftovers(docker: &Docker, pool: &str) -> anyhow::Result<()> {
    let leftovers = containers_labelled(docker, LABEL_POOL, pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the containers of pool {pool}: {e}"))?;
    for container in leftovers {
        let Some(id) = container.id else { continue };
        let name = container
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_else(|| id.clone());
        tracing::warn!(
            container = name.trim_start_matches('/'),
            pool,
            "removing a replica container left by an earlier ringlb run of this pool"
        );
        remove(docker, &id)
            .await
            .map_err(|e| anyhow::anyhow!("cannot remove leftover container {name}: {e}"))?;
    }
    Ok(())
}

/// Creates the network if it does not exist; returns whether a ringlb made it (its
/// label says so), and so removes it on exit.
async fn ensure_network(docker: &Docker, network: &str) -> anyhow::Result<bool> {
    match docker.inspect_network(network, None).await {
        Ok(existing) => {
            return Ok(existing
                .labels
                .is_some_and(|l| l.get(LABEL_POOL).is_some_and(|p| p == network)));
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => anyhow::bail!("cannot inspect network {network}: {e}"),
    }
    let request = NetworkCreateRequest {
        name: network.to_owned(),
        driver: Some("bridge".into()),
        labels: Some(HashMap::from([(LABEL_POOL.into(), network.to_owned())])),
        ..Default::default()
    };
    docker
        .create_network(request)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create network {network}: {e}"))?;
    tracing::info!(network, "created the replicas' network");
    Ok(true)
}

/// `docker rm -f`: SIGKILL (paused containers too) and remove, bounded in time. A
/// container already gone is not an error.
async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    match tokio::time::timeout(REMOVE_TIMEOUT, docker.remove_container(id, Some(options))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if is_not_found(&e) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer from the Engine within {REMOVE_TIMEOUT:?}"
        )),
    }
}

fn is_not_found(error: &EngineError) -> bool {
    matches!(
        error,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Docker container names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; replica names already
/// are, so the prefix must be too.
fn check_name_prefix(prefix: &str) -> anyhow::Result<()> {
    let mut chars = prefix.chars();
    let valid = chars.next().is_none_or(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    anyhow::ensure!(
        valid,
        "--docker-name-prefix {prefix:?}: only letters, digits, '_', '.' and '-', starting with a letter or digit"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_prefixes_are_docker_names() {
        for ok in ["", "t1-", "a.b_c-"] {
            assert!(check_name_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["-x", "a b", "a/b", "é", "_x"] {
            assert!(check_name_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
