//! Where replicas live. One small trait, [`Runtime`]: start, stop, list. The
//! supervisor decides *what* to do (the pool's plan); a runtime only knows *how*:
//! child processes on loopback ([`process`]), containers on a Docker network
//! ([`docker`]), or servers that ringlb fronts but did not start ([`external`]).
//! (The operator's pods are `operator::pods`: the reconciler drives them itself.)

pub mod docker;
pub mod external;
pub mod process;

use std::future::Future;
use std::net::SocketAddr;

use crate::replica_name::ReplicaName;

pub use docker::{DockerRuntime, DockerSettings};
pub use external::ExternalRuntime;
pub use process::ProcessRuntime;

/// One replica as its runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub name: ReplicaName,
    /// Where it serves HTTP.
    pub addr: SocketAddr,
    /// The operating-system process, when the runtime started one.
    pub pid: Option<u32>,
    /// The container's name, when the runtime runs the replica as a container (what
    /// `docker ps` shows, prefix included).
    pub container: Option<String>,
    /// False once the runtime knows it is gone (a child process that exited).
    pub running: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not start replica {name}: {source}")]
    Spawn {
        name: ReplicaName,
        source: std::io::Error,
    },
    #[error("replica {name} did not announce its address: {reason}")]
    NoAddress { name: ReplicaName, reason: String },
    #[error("{0}")]
    Unsupported(String),
}

/// Starts, stops and lists replicas.
pub trait Runtime: Send + Sync + 'static {
    /// Starts `name` and returns once it has an address.
    fn start(
        &self,
        name: &ReplicaName,
    ) -> impl Future<Output = Result<Instance, RuntimeError>> + Send;

    /// Stops `name` gracefully and waits until it is gone. Unknown names are a no-op.
    fn stop(&self, name: &ReplicaName) -> impl Future<Output = ()> + Send;

    /// Stops `name` without a grace period: for a replica that has failed, whose
    /// in-flight requests are lost anyway. A hung process may ignore a polite stop,
    /// and waiting for it would hold up its replacement. Defaults to [`Runtime::stop`].
    fn kill(&self, name: &ReplicaName) -> impl Future<Output = ()> + Send {
        self.stop(name)
    }

    /// Every replica this runtime holds, running or not.
    fn list(&self) -> impl Future<Output = Vec<Instance>> + Send;

    /// Stops everything; called once on shutdown.
    fn stop_all(&self) -> impl Future<Output = ()> + Send;

    /// Whether this runtime can create replicas: if not, `/add` is refused and failed
    /// replicas are not replaced, only taken out of the ring until they recover.
    fn can_start(&self) -> bool;
}
