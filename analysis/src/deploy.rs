//! Local deployments for the experiments: `ringlb up` child processes on loopback with
//! port 0 ([`ringlb::launch`]), stopped with SIGINT and reaped when done — also when an
//! experiment fails or panics (`Drop`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use ringlb::launch::{Launched, binary_beside};

/// A running `ringlb up` started by `ringlb-analyze`.
pub struct Deployment(Launched);

impl Deployment {
    /// Starts `EXE up ARGS` on free loopback ports and waits (bounded) for its
    /// announcement. Blocking: call it off the async workers.
    pub fn start(exe: &Path, args: &[String]) -> anyhow::Result<Deployment> {
        Launched::up(exe, args, "warn").map(Deployment)
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.0.proxy)
    }

    pub fn ops_url(&self) -> String {
        format!("http://{}", self.0.ops)
    }

    /// The pid of the load balancer itself.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// Remembers a replica process (seen in `/ring`) for the cleanup.
    pub fn note_replica(&self, pid: u32, name: &str) {
        self.0.note_replica(pid, name);
    }

    /// Every replica process seen so far: pid → name.
    pub fn replicas(&self) -> std::collections::BTreeMap<u32, String> {
        self.0.replicas()
    }

    /// Stops it like Ctrl-C does and reaps it (bounded; see [`Launched::stop`]).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.0.stop()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Err(error) = self.0.stop() {
            eprintln!("ringlb-analyze: {error:#}");
        }
    }
}

/// The program the deployments run: the `ringlb` binary beside this executable (cargo
/// builds them into one folder), so that the experiments measure the load balancer's
/// own binary. Built first if missing, under `cargo run`.
pub fn ringlb_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the ringlb-analyze executable")?;
    binary_beside(&me, "ringlb", "ringlb")
}
