//! A3 — failure recovery: every endpoint once, then replicas killed under a steady
//! request loop, timed from the operations port. A replica process on this machine is
//! killed with SIGKILL; a replica container (`--runtime docker`, compose) with
//! `docker kill` through the Engine API. The rest is the same for both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use ringlb::launch::{is_replica_process, signal};
use ringlb::runtime::docker::{connect_engine, kill_container, replica_container_id};

use super::api::{Endpoint, RingView, rep_names};
use super::count::{Outcome, server_name};
use super::deploy::Deployment;
use super::load::get;

/// How long one kill may take to be detected and healed before it is given up.
const KILL_TIMEOUT: Duration = Duration::from_secs(20);
/// How often `/ring` is read while a kill is timed: the resolution of the timings (each
/// read maps the 900 000-id key space, a few milliseconds of the load balancer's CPU).
const POLL: Duration = Duration::from_millis(20);
/// Workers of the steady request loop, and the pause of each between two requests:
/// at most 4 × 1000 / 8 = 500 requests per second.
const LOOP_WORKERS: usize = 4;
const LOOP_PACE: Duration = Duration::from_millis(8);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Recovery {
    pub endpoints: Vec<EndpointCheck>,
    pub kills: Vec<Kill>,
    /// Requests of the steady loop over the whole kill phase, and how many failed.
    pub loop_requests: u64,
    pub loop_failed: u64,
    pub notes: Vec<String>,
}

/// One call of the admin or proxy API and whether it answered as the contract says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointCheck {
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
    pub expected_status: u16,
    pub status: u16,
    pub passed: bool,
    pub response: String,
    pub latency_ms: f64,
}

/// One replica killed with SIGKILL and what followed, in milliseconds after the kill.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kill {
    pub killed: String,
    // (The victim as two optional fields, not a `Victim`: results.json stays as it was.)
    /// Its process, when a replica process was killed.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Its container, when a replica container was killed (`docker kill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub replacement: Option<String>,
    /// It left the ring (a failed request marked it suspect, or heartbeats failed).
    pub left_ring_ms: Option<f64>,
    /// It appears in `replacements` (declared failed, replacement started).
    pub replaced_ms: Option<f64>,
    /// N desired again, all in the ring and healthy.
    pub serving_again_ms: Option<f64>,
    /// Client requests of the steady loop that completed from the kill until N served
    /// again, and how many of them failed.
    pub requests: u64,
    pub failed: u64,
}

/// Calls every endpoint once and checks status codes and bodies. Adds and removes a
/// probe replica, so the membership is back as it was at the end.
pub async fn check_endpoints(api: &Endpoint) -> anyhow::Result<Vec<EndpointCheck>> {
    let before = api.replicas().await?;
    let probe = (0..)
        .map(|i| {
            if i == 0 {
                "analyze_probe".to_owned()
            } else {
                format!("analyze_probe{i}")
            }
        })
        .find(|name| !before.contains(name))
        .expect("a free name");
    let n = before.len();
    let mut checks = Vec::new();
    type Check = Box<dyn Fn(&Value) -> bool + Send>;
    let calls: Vec<(Method, &str, Option<Value>, u16, Check)> = vec![
        (
            Method::GET,
            "/rep",
            None,
            200,
            Box::new(move |j: &Value| j["message"]["N"] == json!(n)),
        ),
        (
            Method::POST,
            "/add",
            Some(json!({"n": 1, "hostnames": [probe.clone()]})),
            200,
            {
                let probe = probe.clone();
                Box::new(move |j: &Value| {
                    j["message"]["N"] == json!(n + 1)
                        && j["message"]["replicas"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|x| x == probe.as_str()))
                })
            },
        ),
        (
            Method::POST,
            "/add",
            Some(json!({"n": 1, "hostnames": ["analyze_a", "analyze_b"]})),
            400,
            Box::new(|j: &Value| {
                j["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("more than newly added instances"))
            }),
        ),
        (
            Method::POST,
            "/add",
            Some(json!({"n": 0})),
            400,
            Box::new(|j: &Value| j["status"] == "failure"),
        ),
        (
            Method::DELETE,
            "/rm",
            Some(json!({"n": 1, "hostnames": ["analyze_a", "analyze_b"]})),
            400,
            Box::new(|j: &Value| {
                j["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("more than removable instances"))
            }),
        ),
        (
            Method::DELETE,
            "/rm",
            Some(json!({"n": 1, "hostnames": ["analyze_no_such_replica"]})),
            400,
            Box::new(|j: &Value| j["status"] == "failure"),
        ),
        (
            Method::DELETE,
            "/rm",
            Some(json!({"n": 1, "hostnames": [probe.clone()]})),
            200,
            Box::new(move |j: &Value| j["message"]["N"] == json!(n)),
        ),
        (
            Method::GET,
            "/home",
            None,
            200,
            Box::new(|j: &Value| j["message"].as_str().and_then(server_name).is_some()),
        ),
        (
            Method::GET,
            "/other",
            None,
            400,
            Box::new(|j: &Value| {
                j["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("'/other' endpoint does not exist"))
            }),
        ),
    ];
    for (method, path, body, expected_status, check) in calls {
        let started = Instant::now();
        let answer = api.call(method.clone(), path, body.as_ref()).await?;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let passed = answer.status == expected_status && answer.json.as_ref().is_some_and(&check);
        checks.push(EndpointCheck {
            method: method.to_string(),
            path: path.to_owned(),
            body,
            expected_status,
            status: answer.status,
            passed,
            response: answer.body.chars().take(240).collect(),
            latency_ms,
        });
    }
    // The probe must be gone even if a check above failed.
    let after = api.replicas().await?;
    if after.contains(&probe) {
        let answer = api
            .call(
                Method::DELETE,
                "/rm",
                Some(&json!({"n": 1, "hostnames": [probe]})),
            )
            .await?;
        rep_names(&answer)?;
    }
    Ok(checks)
}

/// One completed request of the steady loop.
#[derive(Clone, Copy)]
struct Event {
    at: Instant,
    ok: bool,
}

/// Requests sent at a steady pace until stopped; every completion is recorded.
struct SteadyLoop {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    workers: tokio::task::JoinSet<()>,
}

impl SteadyLoop {
    fn start(api: &Endpoint) -> SteadyLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..LOOP_WORKERS {
            let (stop, events) = (stop.clone(), events.clone());
            let (http, url) = (api.http.clone(), api.url("/home"));
            workers.spawn(async move {
                let mut pace = tokio::time::interval(LOOP_PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    let ok = matches!(get(&http, &url).await, Outcome::Served(_));
                    events.lock().unwrap().push(Event {
                        at: Instant::now(),
                        ok,
                    });
                }
            });
        }
        SteadyLoop {
            stop,
            events,
            workers,
        }
    }

    /// Requests completed in `[from, to]` and how many failed.
    fn window(&self, from: Instant, to: Instant) -> (u64, u64) {
        let events = self.events.lock().unwrap();
        let inside = events.iter().filter(|e| e.at >= from && e.at <= to);
        inside.fold((0, 0), |(n, failed), e| (n + 1, failed + u64::from(!e.ok)))
    }

    async fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        while self.workers.join_next().await.is_some() {}
        let events = self.events.lock().unwrap();
        (
            events.len() as u64,
            events.iter().filter(|e| !e.ok).count() as u64,
        )
    }
}

/// How a replica is killed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Victim {
    /// A replica process on this machine: SIGKILL.
    Process(u32),
    /// A replica container, named as the Engine knows it: `docker kill`.
    Container(String),
}

impl std::fmt::Display for Victim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Victim::Process(pid) => write!(f, "pid {pid}"),
            Victim::Container(name) => write!(f, "container {name}"),
        }
    }
}

impl Kill {
    /// What was killed, as [`Victim`] says it (none in a results.json without either).
    pub(super) fn victim(&self) -> Option<Victim> {
        match (&self.container, self.pid) {
            (Some(container), _) => Some(Victim::Container(container.clone())),
            (None, Some(pid)) => Some(Victim::Process(pid)),
            (None, None) => None,
        }
    }
}

/// The victim of the next kill: the first healthy member in the ring (natural order)
/// whose pid is a replica process on this machine, or that has a container and no
/// pid. (Whether the container is still that replica is checked with the Engine just
/// before the kill.)
fn pick_victim(view: &RingView) -> Option<(String, Victim)> {
    let mut candidates: Vec<(String, Victim)> = view
        .healthy_in_ring()
        .filter_map(|m| {
            let victim = match (m.pid, &m.container) {
                (Some(pid), _) if is_replica_process(pid, &m.name) => Victim::Process(pid),
                (None, Some(container)) => Victim::Container(container.clone()),
                _ => return None,
            };
            Some((m.name.clone(), victim))
        })
        .collect();
    candidates.sort_by(|a, b| ringlb::ring::natural_cmp(&a.0, &b.0));
    candidates.into_iter().next()
}

/// The Docker Engine client of the container kills, connected on first use.
#[derive(Default)]
struct Engine(Option<bollard::Docker>);

impl Engine {
    /// Kills replica `replica`'s container (after checking that it is that replica's)
    /// and returns when the Engine took the kill: the instant to time from.
    async fn kill(&mut self, container: &str, replica: &str) -> anyhow::Result<Instant> {
        let docker = match &mut self.0 {
            Some(docker) => docker,
            empty => empty.insert(connect_engine().await?),
        };
        let id = replica_container_id(docker, container, replica).await?;
        let killed_at = Instant::now();
        kill_container(docker, &id).await?;
        Ok(killed_at)
    }
}

/// Kills `kills` replicas one after the other (each once N serve again) under a
/// steady request loop and times detection and healing from `/ring`.
pub async fn kill_replicas(
    api: &Endpoint,
    deployment: Option<&Deployment>,
    kills: usize,
    recovery: &mut Recovery,
) -> anyhow::Result<()> {
    let n = api.replicas().await?.len();
    api.wait_serving(n, KILL_TIMEOUT).await?;
    let steady = SteadyLoop::start(api);
    let result = kill_loop(api, deployment, kills, n, &steady, recovery).await;
    let (total, failed) = steady.finish().await;
    recovery.loop_requests = total;
    recovery.loop_failed = failed;
    result
}

async fn kill_loop(
    api: &Endpoint,
    deployment: Option<&Deployment>,
    kills: usize,
    n: usize,
    steady: &SteadyLoop,
    recovery: &mut Recovery,
) -> anyhow::Result<()> {
    let mut engine = Engine::default();
    for _ in 0..kills {
        let view = api.wait_serving(n, KILL_TIMEOUT).await?.unwrap_or_default();
        note_pids(deployment, &view);
        let Some((victim, how)) = pick_victim(&view) else {
            recovery.notes.push(
                "no replica could be killed: /ring lists no pid of a replica process on this \
                 machine and no replica container"
                    .into(),
            );
            return Ok(());
        };
        let killed_at = match &how {
            Victim::Process(pid) => {
                let killed_at = Instant::now();
                signal(*pid, libc::SIGKILL);
                killed_at
            }
            Victim::Container(container) => match engine.kill(container, &victim).await {
                Ok(killed_at) => killed_at,
                Err(error) => {
                    recovery
                        .notes
                        .push(format!("{victim} could not be killed: {error:#}"));
                    return Ok(());
                }
            },
        };
        let mut kill = Kill {
            killed: victim.clone(),
            pid: match how {
                Victim::Process(pid) => Some(pid),
                Victim::Container(_) => None,
            },
            container: match &how {
                Victim::Container(container) => Some(container.clone()),
                Victim::Process(_) => None,
            },
            replacement: None,
            left_ring_ms: None,
            replaced_ms: None,
            serving_again_ms: None,
            requests: 0,
            failed: 0,
        };
        let ms = |at: Instant| (at - killed_at).as_secs_f64() * 1000.0;
        let mut interval = tokio::time::interval(POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            interval.tick().await;
            let now = Instant::now();
            if now - killed_at > KILL_TIMEOUT {
                recovery.notes.push(format!(
                    "{victim} ({how}): N replicas did not serve again within {KILL_TIMEOUT:?}"
                ));
                break now;
            }
            let Ok(view) = api.ring().await else { continue };
            let seen_at = Instant::now();
            note_pids(deployment, &view);
            let in_ring = view.members.iter().any(|m| m.name == victim && m.in_ring);
            if !in_ring && kill.left_ring_ms.is_none() {
                kill.left_ring_ms = Some(ms(seen_at));
            }
            if let Some(r) = view.replacements.iter().find(|r| r.failed == victim) {
                if kill.replaced_ms.is_none() {
                    kill.replaced_ms = Some(ms(seen_at));
                }
                kill.replacement = Some(r.replacement.clone());
            }
            if !in_ring && kill.replacement.is_some() && view.serving(n) {
                kill.serving_again_ms = Some(ms(seen_at));
                break seen_at;
            }
        };
        (kill.requests, kill.failed) = steady.window(killed_at, end);
        let done = kill.serving_again_ms.is_some();
        recovery.kills.push(kill);
        if !done {
            break;
        }
    }
    Ok(())
}

fn note_pids(deployment: Option<&Deployment>, view: &RingView) {
    if let Some(deployment) = deployment {
        for m in &view.members {
            if let Some(pid) = m.pid {
                deployment.note_replica(pid, &m.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_without_a_pid_is_a_victim_and_a_pid_of_no_replica_process_is_not() {
        let view: RingView = serde_json::from_value(json!({
            "desired": ["Server1", "Server2", "Server3", "Server10"],
            "members": [
                // Not a replica process on this machine (this test's own pid).
                {"name": "Server1", "pid": std::process::id(), "health": "healthy", "in_ring": true},
                {"name": "Server10", "container": "p-Server10", "health": "healthy", "in_ring": true},
                {"name": "Server2", "container": "p-Server2", "health": "suspect", "in_ring": false},
                {"name": "Server3", "container": "p-Server3", "health": "healthy", "in_ring": true},
            ],
        }))
        .unwrap();
        // Natural order: Server3 before Server10; Server2 is out of the ring.
        assert_eq!(
            pick_victim(&view),
            Some(("Server3".into(), Victim::Container("p-Server3".into())))
        );
        let mut only_pids = view.clone();
        for m in &mut only_pids.members {
            m.container = None;
        }
        assert_eq!(pick_victim(&only_pids), None);
    }
}
