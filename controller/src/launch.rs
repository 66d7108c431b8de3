//! Starting `ringlb up` from another program: the one launcher of the end-to-end tests
//! (`ringlb-testkit`) and of `ringlb-analyze`. It runs the binary on free loopback ports,
//! reads its startup announcement, and stops and reaps it (SIGINT, then SIGKILL after
//! a bound) — also when the caller fails or panics (`Drop`).
//!
//! `ringlb up` prints its announcement with the constants below (`app::announce`) and
//! [`Announcement`] reads it with the same ones, so that the two cannot drift apart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// `{PROXY_LISTENING}URL`: where the proxy port listens, `http://ADDR`, or
/// `https://ADDR` under TLS ([`proxy_url`]).
pub const PROXY_LISTENING: &str = "ringlb: proxy listening on ";
/// `{OPERATIONS_ON}ADDR (endpoints…)`: where the operations port listens.
pub const OPERATIONS_ON: &str = "ringlb: operations on http://";
/// `{REPLICA}NAME on ADDR{PID}PID (HEALTH)`, one line per replica; the pid part only
/// for a replica process.
pub const REPLICA: &str = "ringlb: replica ";
/// See [`REPLICA`].
pub const PID: &str = ", pid ";
/// `{READY}`curl …`; …`: the last line of the announcement, once everything above
/// is printed and both ports accept.
pub const READY: &str = "ringlb: try ";

/// How long `ringlb up` may take to start its replicas and announce itself.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGINT before it is killed: it drains for at
/// most 10 s and gives each replica 5 s after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(25);
/// How much of its stderr is kept, for error messages and failure reports.
const STDERR_KEEP: usize = 64 * 1024;

/// What `ringlb up` printed before it was ready: the two addresses and its replicas.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Announcement {
    pub proxy: Option<SocketAddr>,
    pub ops: Option<SocketAddr>,
    /// Replica processes: pid → name.
    pub replicas: BTreeMap<u32, String>,
    /// The [`READY`] line, printed last, was read.
    pub done: bool,
}

/// The proxy port's URL as `ringlb up` and `ringlb proxy` print it: `https` when it
/// speaks TLS (`--tls-cert`), so that what a user pastes works.
pub fn proxy_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

impl Announcement {
    /// Reads one stdout line of `ringlb up`.
    pub fn read_line(&mut self, line: &str) {
        let addr = |rest: &str| rest.split_whitespace().next()?.parse().ok();
        if let Some(rest) = line.strip_prefix(PROXY_LISTENING) {
            let rest = rest
                .strip_prefix("http://")
                .or_else(|| rest.strip_prefix("https://"));
            self.proxy = rest.and_then(addr);
        } else if let Some(rest) = line.strip_prefix(OPERATIONS_ON) {
            self.ops = addr(rest);
        } else if let Some(rest) = line.strip_prefix(REPLICA) {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if let Some(pid) = rest
                .split_once(PID)
                .and_then(|(_, p)| p.split_whitespace().next())
                .and_then(|p| p.parse::<u32>().ok())
            {
                self.replicas.insert(pid, name.to_owned());
            }
        } else if line.starts_with(READY) {
            self.done = true;
        }
    }
}

/// A running `ringlb up` that has announced its addresses. Dropping it stops it
/// ([`Launched::stop`], errors ignored).
pub struct Launched {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub ops: SocketAddr,
    /// Every replica process seen (startup lines, [`Launched::note_replica`]): pid →
    /// name. Used only to make sure none is left if the load balancer was killed.
    replicas: Mutex<BTreeMap<u32, String>>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Launched {
    /// Starts `EXE up --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 ARGS` with
    /// `RUST_LOG=rust_log` and no admin token from the environment, and waits (at most
    /// [`STARTUP_TIMEOUT`]) for its announcement. Blocking: call it off async workers.
    pub fn up(exe: &Path, args: &[impl AsRef<str>], rust_log: &str) -> anyhow::Result<Launched> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut child = Command::new(exe)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ])
            .args(&args)
            .env("RUST_LOG", rust_log)
            .env_remove("RINGLB_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} up", exe.display()))?;

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = keep_tail(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
            STDERR_KEEP,
        );
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let pipe = child.stdout.take().expect("piped stdout");
            let lines = stdout.clone();
            std::thread::spawn(move || {
                // Drains until ringlb and every replica that shares the pipe are gone,
                // so that ringlb never blocks on a full stdout.
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }

        // From here on, `Drop` stops it whatever happens.
        let mut launched = Launched {
            child: Some(child),
            proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops: SocketAddr::from(([127, 0, 0, 1], 0)),
            replicas: Mutex::new(BTreeMap::new()),
            stdout,
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut announced = Announcement::default();
        let failure = loop {
            if announced.done {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => announced.read_line(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break Some(format!(
                        "did not announce its addresses within {STARTUP_TIMEOUT:?}"
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Some("closed its stdout during startup".to_owned());
                }
            }
        };
        *launched.replicas.lock().unwrap() = announced.replicas;
        let failure = failure.or_else(|| {
            let (Some(proxy), Some(ops)) = (announced.proxy, announced.ops) else {
                return Some("announced no proxy or operations address".to_owned());
            };
            launched.proxy = proxy;
            launched.ops = ops;
            None
        });
        match failure {
            None => Ok(launched),
            Some(failure) => {
                let stopped = match launched.stop() {
                    Ok(()) => "it then exited with success".to_owned(),
                    Err(error) => format!("{error:#}"),
                };
                bail!(
                    "`{} up {}` {failure} ({stopped})\nstdout:\n{}\nstderr:\n{}",
                    exe.display(),
                    args.join(" "),
                    launched.stdout().join("\n"),
                    launched.stderr_after_exit()
                )
            }
        }
    }

    /// The pid of the load balancer, until it has exited and been reaped.
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

    /// What it printed on stdout so far, line by line.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The end of what it (and its replicas) wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// [`Launched::stderr`] once it has all been read, for a report after the load
    /// balancer exited: its stderr ends when its replicas are gone too. Waits at most
    /// 2 s for that.
    pub fn stderr_after_exit(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.stderr()
    }

    /// Waits up to `timeout` for the load balancer to exit and reaps it; `None` if it
    /// still runs (or was reaped before).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_timeout(self.child.as_mut()?, timeout).expect("wait for ringlb up");
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Stops it like Ctrl-C does (SIGINT: drain, stop every replica) and reaps it;
    /// after [`STOP_TIMEOUT`] it is killed. Then kills any replica it had that is still
    /// alive: ringlb reaps them before it exits, so one left means it was killed (or a
    /// bug), and must not outlive the caller. Blocking, bounded; does nothing more once
    /// done. An error says that it exited with a failure or had to be killed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let result = match self.child.take() {
            None => Ok(()),
            Some(mut child) => {
                signal(child.id(), libc::SIGINT);
                match wait_timeout(&mut child, STOP_TIMEOUT) {
                    Ok(Some(status)) if status.success() => Ok(()),
                    Ok(Some(status)) => Err(anyhow::anyhow!("ringlb up exited with {status}")),
                    Err(error) => Err(anyhow::Error::new(error).context("wait for ringlb up")),
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        Err(anyhow::anyhow!(
                            "ringlb up did not stop within {STOP_TIMEOUT:?} of SIGINT: killed"
                        ))
                    }
                }
            }
        };
        for (pid, name) in self.replicas() {
            kill_replica_if_alive(pid, &name);
        }
        result
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Waits up to `timeout` for `child` to exit and reaps it; `None` if it still runs.
fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait()? {
            Some(status) => return Ok(Some(status)),
            None if Instant::now() >= deadline => return Ok(None),
            // Polling: std has no wait with a timeout for a child process.
            None => std::thread::sleep(Duration::from_millis(10)),
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

/// Continues (in case it was stopped) and kills replica process `pid` if it is still
/// that replica; returns whether there was one.
pub fn kill_replica_if_alive(pid: u32, name: &str) -> bool {
    if !is_replica_process(pid, name) {
        return false;
    }
    signal(pid, libc::SIGCONT);
    signal(pid, libc::SIGKILL);
    true
}

/// Copies what `from` yields into `keep`, holding only its last `limit` bytes, until
/// end of file: a child's stderr, drained so that it never blocks on a full pipe.
pub fn keep_tail(
    mut from: impl Read + Send + 'static,
    keep: Arc<Mutex<String>>,
    limit: usize,
) -> JoinHandle<()> {
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

/// The binary `bin` of workspace package `package` in the folder of `beside` (another
/// binary of the same build: cargo writes them all to one folder, like target/release),
/// for a program that starts another package's binary: `ringlb-analyze` starts
/// `ringlb`, the tests of each start the other's.
///
/// Built here if missing and this runs under cargo (`cargo run`, `cargo test`: cargo
/// sets `CARGO`), with the profile of this build. `cargo test` at the workspace root
/// builds both before it runs a test; `cargo run -p ringlb-analyze` and
/// `cargo test -p …` build only their own package. One that exists is used as it is:
/// `cargo build` brings it up to date after a change.
pub fn binary_beside(beside: &Path, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let path = beside.with_file_name(bin);
    if path.exists() {
        return Ok(path);
    }
    let build = format!(
        "cargo build{} -p {package} --bin {bin}",
        if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        }
    );
    let Some(cargo) = std::env::var_os("CARGO") else {
        bail!("{} not found: build it with `{build}`", path.display());
    };
    let mut command = Command::new(cargo);
    command.args(["build", "-p", package, "--bin", bin]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run `{build}`"))?;
    if !status.success() || !path.exists() {
        bail!("`{build}` ({status}) did not give {}", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_read_line_by_line() {
        let mut a = Announcement::default();
        // What `app::announce` prints, written out: a change of the format shows here.
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
    fn a_proxy_under_tls_is_announced_as_https_and_read_alike() {
        let addr: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(proxy_url(addr, true), "https://127.0.0.1:40001");
        assert_eq!(proxy_url(addr, false), "http://127.0.0.1:40001");
        for tls in [false, true] {
            let mut a = Announcement::default();
            a.read_line(&format!("{PROXY_LISTENING}{}", proxy_url(addr, tls)));
            assert_eq!(a.proxy, Some(addr), "tls: {tls}");
        }
    }

    #[test]
    fn this_test_process_is_not_a_replica() {
        assert!(!is_replica_process(std::process::id(), "Server1"));
        assert!(!kill_replica_if_alive(std::process::id(), "Server1"));
        assert!(process_exists(std::process::id()));
    }
}
