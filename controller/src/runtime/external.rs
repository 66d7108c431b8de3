//! Replicas that ringlb fronts but did not start (`--replica NAME=HOST:PORT`).
//! Nothing is spawned or stopped: a failed one leaves the ring and rejoins when its
//! heartbeat succeeds again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::{Instance, Runtime, RuntimeError};
use crate::replica_name::ReplicaName;

pub struct ExternalRuntime {
    /// Every replica given on the command line.
    known: BTreeMap<ReplicaName, SocketAddr>,
    /// Those currently in the pool (`/rm` takes one out, `/add NAME` puts it back).
    active: Mutex<BTreeMap<ReplicaName, SocketAddr>>,
}

impl ExternalRuntime {
    pub fn new(replicas: impl IntoIterator<Item = (ReplicaName, SocketAddr)>) -> Self {
        let known: BTreeMap<_, _> = replicas.into_iter().collect();
        Self {
            active: Mutex::new(BTreeMap::new()),
            known,
        }
    }

    pub fn names(&self) -> Vec<ReplicaName> {
        self.known.keys().cloned().collect()
    }
}

impl Runtime for ExternalRuntime {
    async fn start(&self, name: &ReplicaName) -> Result<Instance, RuntimeError> {
        let addr = *self.known.get(name).ok_or_else(|| {
            RuntimeError::Unsupported(format!(
                "replicas are external (--replica); ringlb cannot start '{name}'"
            ))
        })?;
        self.active
            .lock()
            .expect("active lock")
            .insert(name.clone(), addr);
        Ok(Instance {
            name: name.clone(),
            addr,
            pid: None,
            container: None,
            running: true,
        })
    }

    async fn stop(&self, name: &ReplicaName) {
        self.active.lock().expect("active lock").remove(name);
    }

    async fn list(&self) -> Vec<Instance> {
        self.active
            .lock()
            .expect("active lock")
            .iter()
            .map(|(name, addr)| Instance {
                name: name.clone(),
                addr: *addr,
                pid: None,
                container: None,
                running: true,
            })
            .collect()
    }

    async fn stop_all(&self) {
        self.active.lock().expect("active lock").clear();
    }

    fn can_start(&self) -> bool {
        false
    }
}
