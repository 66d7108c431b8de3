//! Local deployments for the experiments: `ringlb up` child processes on loopback with
//! port 0, stopped with SIGINT and reaped when done — also when an experiment fails or
//! panics (`Drop`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long `ringlb up` may take to start its replicas and print its addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGINT (it drains for at most 10 s and gives each
/// replica 5 s) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(25);
/// How much of its stderr is kept for an error message.
const STDERR_KEEP: usize = 16 * 1024;

/// A running `ringlb up` started by `ringlb analyze`.
pub struct Deployment {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub ops: SocketAddr,
    /// Every replica process seen (startup lines, `/ring`): pid → name. Used only to
    /// make sure none is left if the load balancer itself had to be killed.
    replicas: Mutex<BTreeMap<u32, String>>,
    stderr: Arc<Mutex<String>>,
}

/// What `ringlb up` printed before it was ready: the two addresses and its replicas.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Announcement {
    pub proxy: Option<SocketAddr>,
    pub ops: Option<SocketAddr>,
    pub replicas: BTreeMap<u32, String>,
    /// The `ringlb: try …` line, printed last.
    pub done: bool,
}

impl Announcement {
    /// Reads one stdout line of `ringlb up`.
    pub fn read_line(&mut self, line: &str) {
        let addr = |rest: &str| rest.split_whitespace().next()?.parse().ok();
        if let Some(rest) = line.strip_prefix("ringlb: proxy listening on http://") {
            self.proxy = addr(rest);
        } else if let Some(rest) = line.strip_prefix("ringlb: operations on http://") {
            self.ops = addr(rest);
        } else if let Some(rest) = line.strip_prefix("ringlb: replica ") {
            // `NAME on ADDR, pid PID (Healthy)`.
            let name = rest.split_whitespace().next().unwrap_or_default();
            if let Some(pid) = rest
                .split_once(", pid ")
                .and_then(|(_, p)| p.split_whitespace().next())
                .and_then(|p| p.parse::<u32>().ok())
            {
                self.replicas.insert(pid, name.to_owned());
            }
        } else if line.starts_with("ringlb: try ") {
            self.done = true;
        }
    }
}

impl Deployment {
    /// Starts `EXE up --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 ARGS` and waits
    /// (bounded) for its announcement. Blocking: call it off the async workers.
    pub fn start(exe: &Path, args: &[String]) -> anyhow::Result<Deployment> {
        let mut child = Command::new(exe)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("RINGLB_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} up", exe.display()))?;

        let stderr = Arc::new(Mutex::new(String::new()));
        keep_tail(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
            STDERR_KEEP,
        );
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            // Drains until ringlb exits so that it never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        // From here on, `Drop` stops it whatever happens.
        let mut deployment = Deployment {
            child: Some(child),
            proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops: SocketAddr::from(([127, 0, 0, 1], 0)),
            replicas: Mutex::new(BTreeMap::new()),
            stderr,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut announced = Announcement::default();
        while !announced.done {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => announced.read_line(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "`ringlb up {}` did not announce its addresses within {STARTUP_TIMEOUT:?}\n{}",
                    args.join(" "),
                    deployment.stderr_tail()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = deployment.child.as_mut().and_then(|c| c.wait().ok());
                    deployment.child = None;
                    bail!(
                        "`ringlb up {}` exited during startup ({})\n{}",
                        args.join(" "),
                        status.map(|s| s.to_string()).unwrap_or_default(),
                        deployment.stderr_tail()
                    );
                }
            }
        }
        *deployment.replicas.lock().unwrap() = announced.replicas;
        match (announced.proxy, announced.ops) {
            (Some(proxy), Some(ops)) => {
                deployment.proxy = proxy;
                deployment.ops = ops;
                Ok(deployment)
            }
            _ => bail!("`ringlb up` announced no proxy or operations address"),
        }
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    pub fn ops_url(&self) -> String {
        format!("http://{}", self.ops)
    }

    /// The pid of the load balancer itself.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Remembers a replica process (seen in `/ring`) for the cleanup.
    pub fn note_replica(&self, pid: u32, name: &str) {
        self.replicas.lock().unwrap().insert(pid, name.to_owned());
    }

    /// Every replica process seen so far: pid → name.
    pub fn replicas(&self) -> BTreeMap<u32, String> {
        self.replicas.lock().unwrap().clone()
    }

    /// The end of what it wrote on stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops it like Ctrl-C does (SIGINT: drain, stop every replica) and reaps it.
    /// Blocking, bounded: after [`STOP_TIMEOUT`] it is killed.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(child.id(), libc::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let result = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break Ok(()),
                Ok(Some(status)) => break Err(anyhow::anyhow!("ringlb up exited with {status}")),
                Err(error) => break Err(error.into()),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(anyhow::anyhow!(
                        "ringlb up did not stop within {STOP_TIMEOUT:?} of SIGINT: killed"
                    ));
                }
                // Polling the exit of a child process: there is no portable wait with a
                // timeout in std.
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        // ringlb reaps its replicas before it exits; one still alive here (it was
        // killed, or a bug) must not outlive the experiment.
        for (pid, name) in self.replicas() {
            if is_replica_process(pid, &name) {
                signal(pid, libc::SIGKILL);
            }
        }
        result
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            eprintln!("ringlb analyze: {error:#}");
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: a plain syscall on a pid this program started or that its load balancer
    // reported (and that `is_replica_process` checked, for SIGKILL of a replica).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// True while `pid` exists (a zombie counts: it is not reaped yet).
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// True if `pid` is a live `ringlb replica … --id NAME` process on this machine: the
/// guard before any SIGKILL, so that a reused pid is never signalled.
pub fn is_replica_process(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_replica = args.iter().any(|a| *a == b"replica");
    let has_id = args
        .windows(2)
        .any(|w| w[0] == b"--id" && w[1] == name.as_bytes());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false);
    is_replica && has_id && !zombie
}

/// The program to start deployments with: this executable.
pub fn current_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the ringlb executable to start deployments")
}

/// Copies `from` into `keep` (its last [`STDERR_KEEP`] bytes) until end of file.
/// Copies what `from` yields into `keep`, holding only its last `limit` bytes, until
/// end of file: a child's stderr, drained so that it never blocks on a full pipe.
pub fn keep_tail(
    mut from: impl Read + Send + 'static,
    keep: Arc<Mutex<String>>,
    limit: usize,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut kept = keep.lock().unwrap();
                    kept.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if kept.len() > limit {
                        let mut cut = kept.len() - limit;
                        while !kept.is_char_boundary(cut) {
                            cut += 1;
                        }
                        kept.drain(..cut);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_read_line_by_line() {
        let mut a = Announcement::default();
        for line in [
            "ringlb: proxy listening on http://127.0.0.1:40001",
            "ringlb: operations on http://127.0.0.1:40002 (/metrics, /healthz, /readyz, /ring)",
            "ringlb: ring maglev with xxh3 hash (65537 table entries); request key random",
            "ringlb: replica Server1 on 127.0.0.1:40003, pid 1234 (Healthy)",
            "ringlb: replica web on 127.0.0.1:8080 (Healthy)",
        ] {
            a.read_line(line);
            assert!(!a.done);
        }
        a.read_line("ringlb: try `curl http://127.0.0.1:40001/home`; Ctrl-C stops everything");
        assert!(a.done);
        assert_eq!(a.proxy, Some("127.0.0.1:40001".parse().unwrap()));
        assert_eq!(a.ops, Some("127.0.0.1:40002".parse().unwrap()));
        assert_eq!(a.replicas, BTreeMap::from([(1234, "Server1".to_owned())]));
    }

    #[test]
    fn this_test_process_is_not_a_replica() {
        assert!(!is_replica_process(std::process::id(), "Server1"));
        assert!(process_exists(std::process::id()));
    }
}
