//! Shared harness of the end-to-end tests (`tests/*.rs`, which cargo finds by itself:
//! `controller/tests` is a link to the top-level `tests/`, so that they are tests of
//! the `ringlb` package and cargo builds the binary before running them). Starts the
//! real `ringlb` binary as a separate process on free loopback ports, talks to it over
//! HTTP, and makes sure no process outlives a test (the load balancer, its replicas,
//! and any replica a test started itself).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod fake_replica;
pub mod grpc;
pub mod load;
mod temp_dir;

pub use temp_dir::TempDir;

use ringlb::launch::{Launched, keep_tail};
// The process helpers of the launcher, which `ringlb-analyze` uses too.
pub use ringlb::launch::{
    is_replica_process, kill_replica_if_alive, process_exists, signal as send_signal,
};
use serde_json::Value;

/// Fast heartbeats so that a failure is noticed within a second.
pub const FAST_HEARTBEATS: [&str; 6] = [
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "200ms",
    "--failure-threshold",
    "2",
];

/// The binary under test: the `ringlb` that cargo built for this run of the tests.
///
/// The end-to-end tests are tests of the `ringlb` package, so cargo builds its binary
/// before it runs them and tells them where it is in `CARGO_BIN_EXE_ringlb`. A test
/// binary run by hand (without that variable) takes the `ringlb` beside its own folder
/// (`target/<profile>/deps/..`), where cargo put it.
pub fn ringlb_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("CARGO_BIN_EXE_ringlb") {
            Some(path) => PathBuf::from(path),
            None => {
                let me = std::env::current_exe().expect("the test's own executable");
                let deps = me.parent().expect("the test executable's folder");
                deps.parent()
                    .expect("cargo's profile folder")
                    .join(format!("ringlb{}", std::env::consts::EXE_SUFFIX))
            }
        };
        assert!(
            bin.is_file(),
            "{} is missing: run the end-to-end tests with `cargo test`, which builds it",
            bin.display()
        );
        bin
    })
}

/// How long a replica that a test starts itself may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of a process's stderr is kept for a failure report.
const STDERR_KEEP: usize = 64 * 1024;

/// A running `ringlb up`. Dropping it stops the load balancer (SIGINT, then SIGKILL
/// after a bound) and kills any replica it had that is somehow still alive.
pub struct Ringlb {
    lb: Launched,
    pub proxy: SocketAddr,
    pub ops: SocketAddr,
    pub http: reqwest::Client,
}

impl Ringlb {
    /// Starts `ringlb up --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 <args>` and
    /// waits (bounded) until it has printed both addresses and its replicas.
    pub fn start(args: &[&str]) -> Ringlb {
        // TEST_RINGLB_LOG=debug shows more of ringlb's log in a failure report.
        let log = std::env::var("TEST_RINGLB_LOG").unwrap_or_else(|_| "info".into());
        let lb = Launched::up(ringlb_bin(), args, &log).unwrap_or_else(|e| panic!("{e:#}"));
        Ringlb {
            proxy: lb.proxy,
            ops: lb.ops,
            lb,
            http: client(),
        }
    }

    /// A raw connection to the proxy port; reads give up after 10 s, so that a hang
    /// fails the test instead of stalling it.
    pub fn connect_raw(&self) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(self.proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    pub fn pid(&self) -> u32 {
        self.lb.pid().expect("ringlb still owned")
    }

    /// Replica pids printed at startup or seen in `/ring`, with their names.
    pub fn seen_replicas(&self) -> BTreeMap<u32, String> {
        self.lb.replicas()
    }

    /// The operations port's `GET /ring`, parsed. Every pid in it is remembered for
    /// the cleanup in `Drop`.
    pub async fn ring_json(&self) -> Value {
        let response = self
            .http
            .get(self.ops_url("/ring"))
            .send()
            .await
            .expect("GET /ring");
        assert_eq!(response.status(), 200, "GET /ring");
        let ring: Value = response.json().await.expect("/ring is JSON");
        for member in ring["members"].as_array().expect("/ring members") {
            if let (Some(pid), Some(name)) = (member["pid"].as_u64(), member["name"].as_str()) {
                self.lb.note_replica(pid as u32, name);
            }
        }
        ring
    }

    /// Names of the members of `/ring` that are healthy and in the ring.
    pub async fn routable(&self) -> BTreeSet<String> {
        let ring = self.ring_json().await;
        ring["members"]
            .as_array()
            .expect("/ring members")
            .iter()
            .filter(|m| m["in_ring"] == true && m["health"] == "healthy")
            .map(|m| m["name"].as_str().expect("a member's name").to_owned())
            .collect()
    }

    /// The ops port's `/metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.ops_url("/metrics")).send().await;
        response
            .expect("/metrics")
            .text()
            .await
            .expect("/metrics text")
    }

    /// Waits (up to 10 s) until [`Ringlb::routable`] is exactly `names`.
    pub async fn until_routable(&self, names: &[&str]) {
        let wanted: BTreeSet<String> = names.iter().map(|&name| name.to_owned()).collect();
        wait_until(
            &format!("routable replicas {names:?}"),
            Duration::from_secs(10),
            || async {
                let now = self.routable().await;
                if now == wanted {
                    Ok(())
                } else {
                    Err(format!("{now:?}"))
                }
            },
        )
        .await;
    }

    /// Name → pid of the current members, from `/ring`.
    pub async fn replica_pids(&self) -> BTreeMap<String, u32> {
        let ring = self.ring_json().await;
        ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| Some((m["name"].as_str()?.to_owned(), m["pid"].as_u64()? as u32)))
            .collect()
    }

    /// `GET /rep`: `(N, replicas)`, after checking the envelope.
    pub async fn rep(&self) -> (u64, Vec<String>) {
        let (status, body) = self.request(reqwest::Method::GET, "/rep", None, None).await;
        assert_eq!(status, 200, "GET /rep: {body}");
        assert_eq!(body["status"], "successful", "GET /rep: {body}");
        rep_of(&body)
    }

    /// Sends a request to the proxy port and returns the status and the JSON body
    /// (every answer of the admin API and every error must be JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method.clone(), self.proxy_url(path));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        let json = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path} → {status}: body is not JSON ({e}): {text:?}")
        });
        (status, json)
    }

    /// `GET /home` through the proxy: the replica that answered, or a description
    /// of what went wrong.
    pub async fn home(&self) -> Result<String, String> {
        home(&self.http, &self.proxy_url("/home")).await
    }

    /// Sends `signal` to the load balancer and waits up to `timeout` for it to exit.
    /// Returns `None` if it did not (it is then killed by `Drop`).
    pub fn signal_and_wait(
        &mut self,
        signal: libc::c_int,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        send_signal(self.pid(), signal);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the load balancer to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        assert!(self.lb.pid().is_some(), "ringlb still owned");
        self.lb.wait_exit(timeout)
    }

    /// What the load balancer wrote on stderr so far (its logs, and its replicas').
    pub fn stderr(&self) -> String {
        self.lb.stderr()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.lb.stdout()
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        // Failures are the test's to report; this only must leave nothing behind.
        let _ = self.lb.stop();
        if std::thread::panicking() {
            eprintln!("--- ringlb stderr ---\n{}", self.lb.stderr_after_exit());
        }
    }
}

/// A `ringlb replica` that a test starts itself (to front with `--replica`).
/// Dropping it kills it.
pub struct ExternalReplica {
    child: Option<Child>,
    pub name: String,
    pub addr: SocketAddr,
}

impl ExternalReplica {
    pub fn start(name: &str) -> ExternalReplica {
        Self::start_with(name, &[])
    }

    /// A replica that speaks only gRPC (`--grpc-only`): HTTP/2, the echo service and
    /// the gRPC health check, no `/home`, no `/heartbeat`.
    pub fn start_grpc_only(name: &str) -> ExternalReplica {
        Self::start_with(name, &["--grpc-only"])
    }

    fn start_with(name: &str, extra: &[&str]) -> ExternalReplica {
        let mut child = Command::new(ringlb_bin())
            .args([
                "replica",
                "--id",
                name,
                "--port",
                "0",
                "--host",
                "127.0.0.1",
            ])
            .args(extra)
            .env_remove("SERVER_ID")
            .env_remove("PORT")
            .env_remove("REPLICA_GRPC_ONLY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringlb replica");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(ringlb_replica::LISTENING_PREFIX) {
                        break parse_addr(rest);
                    }
                }
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("replica {name} did not announce its address: {error}");
                }
            }
        };
        ExternalReplica {
            child: Some(child),
            name: name.to_owned(),
            addr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not killed").id()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ExternalReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client for loopback only: no proxy from the environment, bounded time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// `GET url` expecting a replica's `/home` answer; returns the replica's name.
pub async fn home(http: &reqwest::Client, url: &str) -> Result<String, String> {
    home_with(http, url, &[]).await
}

/// `GET url` with extra headers, expecting a replica's `/home` answer; returns the
/// replica's name, or what went wrong.
pub async fn home_with(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut request = http.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("body: {e:?}"))?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    server_name(&body).ok_or_else(|| format!("no `Server: name` in {body:?}"))
}

/// The equivalent of the regular expression `Server: (\w+)` that the original
/// project's clients use on the `/home` body: the first capture, or `None`.
pub fn server_name(body: &str) -> Option<String> {
    let mut rest = body;
    while let Some(at) = rest.find("Server: ") {
        let after = &rest[at + "Server: ".len()..];
        let word: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !word.is_empty() {
            return Some(word);
        }
        rest = after;
    }
    None
}

/// `(N, replicas)` of a `/rep`-shaped body.
pub fn rep_of(body: &Value) -> (u64, Vec<String>) {
    let n = body["message"]["N"]
        .as_u64()
        .unwrap_or_else(|| panic!("no message.N in {body}"));
    let replicas = body["message"]["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no message.replicas in {body}"))
        .iter()
        .map(|r| r.as_str().expect("replica names are strings").to_owned())
        .collect();
    (n, replicas)
}

/// The expected `/rep` body for these replicas, exactly.
pub fn rep_body(replicas: &[&str]) -> Value {
    serde_json::json!({
        "message": { "N": replicas.len(), "replicas": replicas },
        "status": "successful",
    })
}

/// Sends `total` `GET url` requests with at most `concurrency` in flight and counts
/// answers per replica; failures are returned with their description.
pub async fn spread(
    http: &reqwest::Client,
    url: &str,
    total: usize,
    concurrency: usize,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let http = http.clone();
        let url = url.to_owned();
        let next = next.clone();
        workers.spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match home(&http, &url).await {
                    Ok(name) => *counts.entry(name).or_default() += 1,
                    Err(error) => failures.push(error),
                }
            }
            (counts, failures)
        });
    }
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (c, f) = done.expect("request worker");
        for (name, k) in c {
            *counts.entry(name).or_default() += k;
        }
        failures.extend(f);
    }
    (counts, failures)
}

/// Polls `check` (every 20 ms) until it returns `Some`, or panics after `timeout`
/// saying what was awaited and what `check` last saw. For waiting on observable
/// state, never to hide a race.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The blocking twin of [`wait_until`], for tests without an async runtime.
pub fn wait_until_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until process `pid` no longer exists (it was reaped), for `what`.
pub async fn wait_until_exited(what: &str, pid: u32, timeout: Duration) {
    wait_until(what, timeout, || async {
        if process_exists(pid) {
            Err(format!("pid {pid} still exists"))
        } else {
            Ok(())
        }
    })
    .await
}

fn parse_addr(rest: &str) -> SocketAddr {
    let addr = rest.split_whitespace().next().unwrap_or_default();
    addr.parse()
        .unwrap_or_else(|e| panic!("bad address {addr:?} in {rest:?}: {e}"))
}

/// Keeps the last [`STDERR_KEEP`] bytes of `stderr` in `keep`, until end of file.
pub fn drain_stderr(
    stderr: impl Read + Send + 'static,
    keep: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    keep_tail(stderr, keep, STDERR_KEEP)
}
