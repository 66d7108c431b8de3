//! End-to-end tests of the Docker mode: `ringlb up --runtime docker` (replicas are
//! containers on a user-defined network) and `compose.yaml`.
//!
//! They run wherever `docker info` answers, on the images `just image` builds (CI
//! builds them before `cargo test`), and say "skipped: no Docker Engine" elsewhere.
//! Each test has its own network, which also names its pool, and its own container
//! name prefix, so tests run in parallel; a guard removes every container and
//! network of the test when it ends, failed or not. Clients talk to 127.0.0.1 only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ringlb_testkit::load::{Load, healed, load_progress};
use ringlb_testkit::{
    FAST_HEARTBEATS, Ringlb, client, home, send_signal, wait_until, wait_until_blocking,
};
use serde_json::json;

const REPLICA_IMAGE: &str = "ringlb-replica:dev";
const RINGLB_IMAGE: &str = "ringlb:dev";

/// Runs `docker args…` (never through a shell) and returns its output.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

/// Runs `docker args…`, fails the test if it fails, returns its stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a Docker Engine answers here (asked once per test binary).
fn engine_answers() -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    *ANSWERS.get_or_init(|| {
        Command::new("docker")
            .arg("info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Says that a test did not run, also where the harness captures test output (a
/// direct write to stderr is not captured).
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// With an Engine, the images must be there: a missing one fails the test with
/// what to do, rather than passing without testing anything.
fn require_image(image: &str) {
    assert!(
        docker(&["image", "inspect", image]).status.success(),
        "image {image} not found: build the images with `just image` (scripts/build-images.sh)"
    );
}

/// One test's pool: its network (which names the pool) and container name prefix.
/// Dropping it removes every container of the pool and the network, whatever ringlb
/// did or did not do; declare it before the `Ringlb`, so that it drops after it.
struct Pool {
    network: String,
    prefix: String,
}

impl Pool {
    /// `None` (after saying so) where no Docker Engine answers.
    fn new(test: &str) -> Option<Pool> {
        if !engine_answers() {
            skipped("no Docker Engine (`docker info` did not answer)");
            return None;
        }
        require_image(REPLICA_IMAGE);
        let network = format!("ringlb-test-{}-{test}", std::process::id());
        Some(Pool {
            prefix: format!("{network}-"),
            network,
        })
    }

    /// Arguments of `ringlb up` for this pool, with fast heartbeats.
    fn up_args(&self) -> Vec<&str> {
        let mut args = vec![
            "--runtime",
            "docker",
            "--docker-network",
            &self.network,
            "--docker-name-prefix",
            &self.prefix,
        ];
        args.extend(FAST_HEARTBEATS);
        args
    }

    fn container(&self, replica: &str) -> String {
        format!("{}{replica}", self.prefix)
    }

    /// The pool's containers, by replica name: `(container id, state)`.
    fn containers(&self) -> BTreeMap<String, (String, String)> {
        let label = format!("label=ringlb.pool={}", self.network);
        let format = "{{.Names}}\t{{.ID}}\t{{.State}}";
        docker_ok(&["ps", "-a", "--filter", &label, "--format", format])
            .lines()
            .map(|line| {
                let mut fields = line.split('\t');
                let name = fields.next().unwrap_or_default();
                let replica = name.strip_prefix(&self.prefix).unwrap_or(name).to_owned();
                let id = fields.next().unwrap_or_default().to_owned();
                let state = fields.next().unwrap_or_default().to_owned();
                (replica, (id, state))
            })
            .collect()
    }

    /// Replica names of the pool's containers that are running.
    fn running(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|(_, (_, state))| state == "running")
            .map(|(name, _)| name)
            .collect()
    }

    fn network_exists(&self) -> bool {
        docker(&["network", "inspect", &self.network])
            .status
            .success()
    }

    /// Nothing of the pool is left: no container, no network.
    fn assert_gone(&self) {
        let left = self.containers();
        assert!(left.is_empty(), "containers left behind: {left:?}");
        assert!(
            !self.network_exists(),
            "network {} left behind",
            self.network
        );
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let label = format!("label=ringlb.pool={}", self.network);
        let ids = docker(&["ps", "-aq", "--filter", &label]);
        let ids = String::from_utf8_lossy(&ids.stdout);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            docker(&args);
        }
        if self.network_exists() {
            docker(&["network", "rm", &self.network]);
        }
    }
}

const SERVERS: [&str; 3] = ["Server1", "Server2", "Server3"];

/// `ringlb up --runtime docker` with 3 replicas, healthy.
async fn start(pool: &Pool) -> Ringlb {
    let lb = Ringlb::start(&pool.up_args());
    healed(&lb, &SERVERS)
        .await
        .expect("a healthy pool at start");
    lb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_create_and_remove_containers_and_ctrl_c_leaves_nothing() {
    let Some(pool) = Pool::new("admin") else {
        return;
    };
    let mut lb = start(&pool).await;
    assert_eq!(pool.running(), SERVERS);
    let name = lb.home().await.expect("GET /home through ringlb");
    assert!(SERVERS.contains(&name.as_str()), "answered by {name}");

    let (status, body) = lb
        .request(
            reqwest::Method::POST,
            "/add",
            Some(r#"{"n": 2, "hostnames": ["Server4", "Server5"]}"#),
            None,
        )
        .await;
    assert_eq!(status, 200, "/add: {body}");
    assert_eq!(
        pool.running(),
        ["Server1", "Server2", "Server3", "Server4", "Server5"]
    );
    // The new containers serve: each answers /home under its own name, through ringlb.
    healed(
        &lb,
        &["Server1", "Server2", "Server3", "Server4", "Server5"],
    )
    .await
    .expect("the added replicas healthy");

    // A name Docker would refuse (and ringlb too) never reaches the Engine.
    let (status, body) = lb
        .request(
            reqwest::Method::POST,
            "/add",
            Some(r#"{"n": 1, "hostnames": ["bad/name"]}"#),
            None,
        )
        .await;
    assert_eq!(status, 400, "/add of a bad name: {body}");
    assert_eq!(pool.containers().len(), 5, "a refused /add changed nothing");

    let (status, body) = lb
        .request(
            reqwest::Method::DELETE,
            "/rm",
            Some(r#"{"n": 2, "hostnames": ["Server4", "Server1"]}"#),
            None,
        )
        .await;
    assert_eq!(status, 200, "/rm: {body}");
    // /rm answers once the replicas are stopped: their containers are gone, not
    // just exited.
    let left: Vec<String> = pool.containers().into_keys().collect();
    assert_eq!(left, ["Server2", "Server3", "Server5"]);

    // Ctrl-C: ringlb removes every container it started, and the network it made.
    let status = lb
        .signal_and_wait(libc::SIGINT, Duration::from_secs(30))
        .expect("ringlb exits after SIGINT");
    assert!(status.success(), "exit status after SIGINT: {status}");
    pool.assert_gone();
}

/// A fault injected into a replica container from outside.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `docker kill`: the container exits at once (SIGKILL).
    Kill,
    /// `docker stop`: the replica drains and exits (SIGTERM).
    Stop,
    /// `docker pause`: the process is frozen; its kernel still accepts connections,
    /// which then hang.
    Pause,
    /// `docker network disconnect`: the container runs on but is cut off; packets
    /// to its address go nowhere.
    Disconnect,
}

/// Steady load of 4 clients; `fault` on Server2; it must be replaced by emergency_1
/// with N = 3 serving again, the faulty container removed, and no request failed.
async fn replaced_under_load(pool: &Pool, fault: Fault) {
    let lb = start(pool).await;
    let victim = pool.container("Server2");
    let load = Load::start(&lb, 4, Duration::from_secs(60));
    load_progress(&load, 200).await;

    let injected = Instant::now();
    match fault {
        Fault::Kill => docker_ok(&["kill", &victim]),
        Fault::Stop => docker_ok(&["stop", &victim]),
        Fault::Pause => docker_ok(&["pause", &victim]),
        Fault::Disconnect => docker_ok(&["network", "disconnect", &pool.network, &victim]),
    };
    let expected = ["Server1", "emergency_1", "Server3"];
    let ring = wait_until(
        "Server2 to be replaced by a healthy emergency_1",
        Duration::from_secs(30),
        || healed(&lb, &expected),
    )
    .await;
    let recovered = injected.elapsed();
    assert_eq!(
        ring["replacements"],
        json!([{"failed": "Server2", "replacement": "emergency_1"}])
    );
    // ringlb removes the failed container before it starts the replacement.
    assert_eq!(pool.running(), ["Server1", "Server3", "emergency_1"]);
    assert!(
        !pool.containers().contains_key("Server2"),
        "the failed container is still there: {:?}",
        pool.containers()
    );

    load.until_served_by("emergency_1").await;
    load_progress(&load, 200).await;
    let (counts, failures, slowest) = load.finish().await;
    let total: usize = counts.values().sum::<usize>() + failures.len();
    // The closing figures of issue 11 (`cargo test --test docker -- --nocapture`).
    println!(
        "figures: docker {fault:?} of Server2 under load -> N=3 served again after {recovered:.2?}; \
         {total} requests, {} failed, slowest {slowest:.2?}; per replica {counts:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed after docker {fault:?}, first: {:?}",
        failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_container_is_replaced_and_no_request_fails() {
    let Some(pool) = Pool::new("kill") else {
        return;
    };
    replaced_under_load(&pool, Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_container_is_replaced_and_no_request_fails() {
    let Some(pool) = Pool::new("stop") else {
        return;
    };
    replaced_under_load(&pool, Fault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_container_is_replaced_and_no_request_fails() {
    let Some(pool) = Pool::new("pause") else {
        return;
    };
    replaced_under_load(&pool, Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnected_container_is_replaced_and_no_request_fails() {
    let Some(pool) = Pool::new("cut") else {
        return;
    };
    replaced_under_load(&pool, Fault::Disconnect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_after_kill_9_removes_the_orphans() {
    let Some(pool) = Pool::new("orphans") else {
        return;
    };
    let mut first = start(&pool).await;
    let before = pool.containers();
    send_signal(first.pid(), libc::SIGKILL);
    first
        .wait_exit(Duration::from_secs(10))
        .expect("ringlb exits on SIGKILL");
    // What a crash leaves: the replicas run on, with nobody to stop them.
    assert_eq!(pool.running(), SERVERS, "the orphans of the killed ringlb");

    let mut second = start(&pool).await;
    wait_until_blocking(
        "the second ringlb to say it removed the orphans",
        Duration::from_secs(5),
        || {
            let log = second.stderr();
            match log.matches("left by an earlier ringlb run").count() {
                3 => Ok(()),
                n => Err(format!("{n} removals logged:\n{log}")),
            }
        },
    );
    let after = pool.containers();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        SERVERS.iter().collect::<Vec<_>>()
    );
    for (name, (id, _)) in &after {
        assert_ne!(
            *id, before[name].0,
            "{name} is still the orphan, not a new container"
        );
    }
    second.home().await.expect("GET /home after the restart");

    let status = second
        .signal_and_wait(libc::SIGINT, Duration::from_secs(30))
        .expect("ringlb exits after SIGINT");
    assert!(status.success(), "exit status after SIGINT: {status}");
    pool.assert_gone();
}

/// Runs `ringlb-analyze args…` with its output in `log`; after `timeout` it is killed
/// (and the test fails). Always reaped.
fn analyze(args: &[&str], log: &std::path::Path, timeout: Duration) -> std::process::ExitStatus {
    // The binary of the other package, beside ringlb: `cargo test` at the workspace root
    // builds it, and a narrower `cargo test -p ringlb` gets it built here.
    let exe = ringlb::launch::binary_beside(
        ringlb_testkit::ringlb_bin(),
        "ringlb-analyze",
        "ringlb-analyze",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let file = std::fs::File::create(log).unwrap();
    let mut child = Command::new(exe)
        .args(args)
        .env_remove("RINGLB_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn ringlb-analyze");
    let deadline = Instant::now() + timeout;
    loop {
        // Polling a child's exit against a deadline: std has no wait with a timeout.
        match child.try_wait().expect("wait for ringlb-analyze") {
            Some(status) => return status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ringlb-analyze did not finish within {timeout:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `ringlb-analyze --target` (A3 only, one kill) against a ringlb whose replicas are
/// containers: `/ring` names each member's container, and A3 kills one through the
/// Engine and times its replacement, as it does for a replica process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn analyze_kills_a_replica_container_and_times_n_serving_again() {
    let Some(pool) = Pool::new("analyze") else {
        return;
    };
    let mut lb = start(&pool).await;
    // /ring names the container of each member, and no pid.
    let ring = lb.ring_json().await;
    for member in ring["members"].as_array().unwrap() {
        let name = member["name"].as_str().unwrap();
        assert_eq!(member["container"], json!(pool.container(name)), "{member}");
        assert_eq!(member["pid"], json!(null), "{member}");
    }

    let out = ringlb_testkit::TempDir::new("docker-analyze");
    let log = out.0.join("analyze.log");
    let (target, ops) = (lb.proxy_url(""), lb.ops_url(""));
    let status = tokio::task::spawn_blocking({
        let out = out.0.to_str().unwrap().to_owned();
        let log = log.clone();
        move || {
            analyze(
                &[
                    "--target",
                    &target,
                    "--ops-target",
                    &ops,
                    "--out",
                    &out,
                    "--experiments",
                    "a3",
                    "--kills",
                    "1",
                ],
                &log,
                Duration::from_secs(120),
            )
        }
    })
    .await
    .unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "ringlb-analyze failed ({status}):\n{log}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("results.json")).unwrap())
            .unwrap();
    let recovery = &json["recovery"];
    for check in recovery["endpoints"].as_array().unwrap() {
        assert_eq!(check["passed"], true, "{check}");
    }
    let kills = recovery["kills"].as_array().unwrap();
    assert_eq!(kills.len(), 1, "no container was killed: {recovery}");
    let kill = &kills[0];
    // The first in natural order, by its container, through the Engine.
    assert_eq!(kill["killed"], "Server1", "{kill}");
    assert_eq!(
        kill["container"],
        json!(pool.container("Server1")),
        "{kill}"
    );
    assert_eq!(kill["pid"], json!(null), "{kill}");
    assert_eq!(kill["replacement"], "emergency_1", "{kill}");
    let again = kill["serving_again_ms"].as_f64();
    assert!(
        again.is_some_and(|ms| ms > 0.0),
        "N did not serve again: {kill}"
    );
    assert_eq!(kill["failed"], 0, "{kill}");
    assert_eq!(recovery["loop_failed"], 0, "{recovery}");
    println!(
        "figures: analyze A3 on containers -> killed {}, N=3 served again after {:.0} ms; \
         {} requests meanwhile, {} failed",
        kill["container"],
        again.unwrap_or_default(),
        kill["requests"],
        kill["failed"]
    );
    let md = std::fs::read_to_string(out.0.join("results.md")).unwrap();
    let row = format!(
        "| Server1 (container {}) | emergency_1 |",
        pool.container("Server1")
    );
    assert!(md.contains(&row), "results.md has no row {row:?}:\n{md}");

    // What the report says happened did: Server1's container is gone, replaced by a
    // running emergency_1, and N = 3 serve.
    let expected = ["emergency_1", "Server2", "Server3"];
    let ring = healed(&lb, &expected)
        .await
        .expect("N = 3 serving after analyze");
    assert_eq!(
        ring["replacements"],
        json!([{"failed": "Server1", "replacement": "emergency_1"}])
    );
    assert_eq!(pool.running(), ["Server2", "Server3", "emergency_1"]);
    assert!(
        !pool.containers().contains_key("Server1"),
        "{:?}",
        pool.containers()
    );

    let status = lb
        .signal_and_wait(libc::SIGINT, Duration::from_secs(30))
        .expect("ringlb exits after SIGINT");
    assert!(status.success(), "exit status after SIGINT: {status}");
    pool.assert_gone();
}

/// `docker compose`, or the standalone `docker-compose` where the plugin is missing.
fn compose_command() -> Option<Vec<&'static str>> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|cmd| works(cmd))
}

/// A compose project of the repository's compose.yaml, under its own project name,
/// network, name prefix and free host ports. Dropping it runs `down`.
struct Compose {
    command: Vec<&'static str>,
    project: String,
    pool: Pool,
}

impl Compose {
    fn run(&self, args: &[&str]) -> Output {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../compose.yaml");
        Command::new(self.command[0])
            .args(&self.command[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(file)
            .args(args)
            // Host port 0: the Engine picks free ones (read back with `port`).
            .env("RINGLB_HOST_PORT", "0")
            .env("RINGLB_HOST_OPS_PORT", "0")
            .env("RINGLB_DOCKER_NETWORK", &self.pool.network)
            .env("RINGLB_DOCKER_NAME_PREFIX", &self.pool.prefix)
            .output()
            .unwrap_or_else(|e| panic!("compose {args:?}: {e}"))
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "compose {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `127.0.0.1:PORT` published for the ringlb service's `port`.
    fn published(&self, port: &str) -> String {
        self.run_ok(&["port", "ringlb", port]).trim().to_owned()
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&self.run(&["logs", "--no-color", "ringlb"]).stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- compose logs ---\n{}", self.logs());
        }
        self.run(&["down", "--timeout", "40"]);
        // `self.pool` drops next: whatever `down` left goes with it.
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_up_serves_and_down_leaves_nothing() {
    let Some(pool) = Pool::new("compose") else {
        return;
    };
    require_image(RINGLB_IMAGE);
    let Some(command) = compose_command() else {
        skipped("neither `docker compose` nor `docker-compose` is installed");
        return;
    };
    let compose = Compose {
        command,
        project: pool.network.clone(),
        pool,
    };
    compose.run_ok(&["up", "-d"]);
    let proxy = compose.published("5000");
    let ops = compose.published("5001");
    let http = client();

    let home_url = format!("http://{proxy}/home");
    let name = wait_until(
        "/home through compose's ringlb",
        Duration::from_secs(30),
        || home(&http, &home_url),
    )
    .await;
    assert!(SERVERS.contains(&name.as_str()), "answered by {name}");
    assert_eq!(compose.pool.running(), SERVERS);

    // The health check (the binary's own `healthcheck`: the image has no curl).
    let id = compose.run_ok(&["ps", "-q", "ringlb"]).trim().to_owned();
    wait_until_blocking(
        "the ringlb container to be healthy",
        Duration::from_secs(40),
        || {
            let health = docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &id]);
            match health.trim() {
                "healthy" => Ok(()),
                other => Err(other.to_owned()),
            }
        },
    );
    let readyz = http
        .get(format!("http://{ops}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(readyz.status(), 200);

    // The original project's failure test: `docker stop Server2`.
    docker_ok(&["stop", &compose.pool.container("Server2")]);
    let rep_url = format!("http://{proxy}/rep");
    wait_until(
        "Server2 to be replaced by emergency_1",
        Duration::from_secs(30),
        || async {
            let rep: serde_json::Value = http
                .get(&rep_url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let want = json!({"N": 3, "replicas": ["Server1", "emergency_1", "Server3"]});
            if rep["message"] == want && compose.pool.running().len() == 3 {
                Ok(())
            } else {
                Err(format!(
                    "/rep {rep}, containers {:?}",
                    compose.pool.containers()
                ))
            }
        },
    )
    .await;

    // `down` stops ringlb, which removes its replicas; compose removes the rest.
    compose.run_ok(&["down", "--timeout", "40"]);
    compose.pool.assert_gone();
    assert!(
        compose.run_ok(&["ps", "-q"]).trim().is_empty(),
        "compose services left"
    );
}
