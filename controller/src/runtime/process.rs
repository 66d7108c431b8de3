//! Replicas as child processes on loopback: the default, needs no setup.
//!
//! Each child is `ringlb replica --id NAME --port 0`: it binds a free port and
//! announces it on stdout, so there is no port to guess and no race for one. The
//! name is passed as one argv entry, never through a shell.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{Instance, Runtime, RuntimeError};
use crate::replica_name::ReplicaName;

/// How long a child may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

struct ChildReplica {
    child: Child,
    addr: SocketAddr,
    pid: Option<u32>,
}

pub struct ProcessRuntime {
    program: PathBuf,
    leading_args: Vec<OsString>,
    host: IpAddr,
    children: Mutex<HashMap<ReplicaName, ChildReplica>>,
}

impl ProcessRuntime {
    /// Children run `program leading_args… --id NAME --port 0 --host HOST`.
    pub fn new(program: PathBuf, leading_args: Vec<OsString>, host: IpAddr) -> Self {
        Self {
            program,
            leading_args,
            host,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// Runs replicas as `ringlb replica …` with the current executable.
    pub fn current_exe(host: IpAddr) -> std::io::Result<Self> {
        Ok(Self::new(
            std::env::current_exe()?,
            vec!["replica".into()],
            host,
        ))
    }

    fn command(&self, name: &ReplicaName) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.leading_args)
            .arg("--id")
            .arg(name.as_str())
            .arg("--port")
            .arg("0")
            .arg("--host")
            .arg(self.host.to_string())
            .env_remove("SERVER_ID")
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Last line of defence: a child handle dropped without `stop` is killed.
            .kill_on_drop(true);
        // Own process group: Ctrl-C in a terminal signals only the load balancer,
        // which then drains and stops its replicas in order, instead of every
        // replica dying at once and being "replaced" during shutdown.
        #[cfg(unix)]
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        // If the load balancer itself is killed with SIGKILL, its children get
        // SIGTERM instead of lingering as orphans.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Reads the child's announcement line and returns the address in it.
async fn read_address(child: &mut Child) -> Result<SocketAddr, String> {
    let stdout = child.stdout.take().ok_or("stdout is not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let announced = async {
        while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            if let Some(rest) = line.strip_prefix(ringlb_replica::LISTENING_PREFIX) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("bad address {addr:?}: {e}"));
            }
        }
        Err("exited before listening".to_owned())
    };
    let addr = tokio::time::timeout(START_TIMEOUT, announced)
        .await
        .map_err(|_| format!("no announcement within {START_TIMEOUT:?}"))??;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addr)
}

async fn terminate(mut replica: ChildReplica) {
    if let Some(pid) = replica.pid
        && matches!(replica.child.try_wait(), Ok(None))
    {
        // SAFETY: plain syscall; the pid is our own child, not yet reaped
        // (we hold its handle), so it cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_TIMEOUT, replica.child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid = ?replica.pid, "replica did not stop after SIGTERM, killing it");
        let _ = replica.child.kill().await;
    }
}

impl Runtime for ProcessRuntime {
    async fn start(&self, name: &ReplicaName) -> Result<Instance, RuntimeError> {
        let mut child = self
            .command(name)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                name: name.clone(),
                source,
            })?;
        let pid = child.id();
        let addr = match read_address(&mut child).await {
            Ok(addr) => addr,
            Err(reason) => {
                terminate(ChildReplica {
                    child,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    pid,
                })
                .await;
                return Err(RuntimeError::NoAddress {
                    name: name.clone(),
                    reason,
                });
            }
        };
        let previous = self
            .children
            .lock()
            .expect("children lock")
            .insert(name.clone(), ChildReplica { child, addr, pid });
        if let Some(previous) = previous {
            terminate(previous).await;
        }
        Ok(Instance {
            name: name.clone(),
            addr,
            pid,
            container: None,
            running: true,
        })
    }

    async fn stop(&self, name: &ReplicaName) {
        let replica = self.children.lock().expect("children lock").remove(name);
        if let Some(replica) = replica {
            terminate(replica).await;
        }
    }

    async fn kill(&self, name: &ReplicaName) {
        let replica = self.children.lock().expect("children lock").remove(name);
        if let Some(mut replica) = replica {
            // SIGKILL, then reap: works on stopped (SIGSTOP) processes too.
            let _ = replica.child.kill().await;
        }
    }

    async fn list(&self) -> Vec<Instance> {
        let mut children = self.children.lock().expect("children lock");
        children
            .iter_mut()
            .map(|(name, replica)| Instance {
                name: name.clone(),
                addr: replica.addr,
                pid: replica.pid,
                container: None,
                running: matches!(replica.child.try_wait(), Ok(None)),
            })
            .collect()
    }

    async fn stop_all(&self) {
        let all: Vec<ChildReplica> = self
            .children
            .lock()
            .expect("children lock")
            .drain()
            .map(|(_, replica)| replica)
            .collect();
        let mut stopping = tokio::task::JoinSet::new();
        for replica in all {
            stopping.spawn(terminate(replica));
        }
        while stopping.join_next().await.is_some() {}
    }

    fn can_start(&self) -> bool {
        true
    }
}
