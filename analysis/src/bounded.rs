//! A5 — hot keys and bounded loads: Zipf-distributed keys (a few ids take most requests)
//! against five replicas that each take a few milliseconds per request, with bounded loads
//! off and at several balance factors.
//!
//! The replicas are in this process (an HTTP server each on 127.0.0.1, answering `/home`
//! after [`WORK`]), so that each can count its own requests in flight exactly: ringlb
//! fronts them with `--replica NAME=HOST:PORT` and routes by `--key query:id`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use rand::Rng;
use ringlb::ring::{Ring, RingConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::chart::BarPanel;
use super::count::server_name;

/// Replicas of A5.
pub const REPLICAS: usize = 5;
/// Distinct request ids.
pub const DISTINCT_KEYS: usize = 10_000;
/// The Zipf exponent: the id of rank k is asked with probability ∝ 1 / k^s.
pub const ZIPF_S: f64 = 1.1;
/// Time each replica takes per request.
pub const WORK: Duration = Duration::from_millis(3);
/// Requests each replica works on at once (its worker threads): more wait their turn,
/// so an overloaded replica queues, as a real one does.
pub const WORKERS: usize = 4;
/// The chart of A5.
pub const CHART: &str = "a5_bounded_loads.png";
/// The balance factors compared; `None` is bounded loads off.
pub const FACTORS: [Option<f64>; 4] = [None, Some(1.5), Some(1.25), Some(1.1)];

/// One replica's side of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaLoad {
    pub name: String,
    pub requests: u64,
    /// Most requests it held at once.
    pub peak_in_flight: usize,
    /// Its requests in flight averaged over the run (busy time / run time).
    pub mean_in_flight: f64,
}

/// One balance factor's run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundedRun {
    /// `None`: bounded loads off.
    pub balance_factor: Option<f64>,
    pub requests: u64,
    pub failed: u64,
    pub concurrency: usize,
    pub replicas: Vec<ReplicaLoad>,
    /// Requests served by their key's home replica (the ring's owner of the id): cache
    /// locality.
    pub home_share: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub elapsed_ms: f64,
}

impl BoundedRun {
    pub fn label(&self) -> String {
        self.balance_factor
            .map_or_else(|| "off".to_owned(), |c| format!("c = {c}"))
    }

    pub fn peak_in_flight(&self) -> usize {
        self.replicas
            .iter()
            .map(|r| r.peak_in_flight)
            .max()
            .unwrap_or(0)
    }
}

/// Ranks 1..=n drawn with probability ∝ 1 / rank^s (inverse transform on the CDF).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        for p in &mut cdf {
            *p /= total;
        }
        Self { cdf }
    }

    /// A rank from 1 to n.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1) + 1
    }
}

/// The request id of Zipf rank `rank`: six digits, as the original project's ids.
pub fn key_of(rank: usize) -> String {
    (100_000 + rank).to_string()
}

/// What one in-process replica counts.
struct Counts {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    busy_ns: AtomicU64,
    requests: AtomicU64,
    workers: Semaphore,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            busy_ns: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            workers: Semaphore::new(WORKERS),
        }
    }
}

/// A replica that answers `/home` after [`WORK`] with one of its [`WORKERS`] (a request
/// waits for a free one), and `/heartbeat` at once.
struct SlowReplica {
    name: String,
    addr: std::net::SocketAddr,
    counts: Arc<Counts>,
    server: tokio::task::JoinHandle<()>,
}

impl SlowReplica {
    async fn start(name: String) -> anyhow::Result<Self> {
        let counts = Arc::new(Counts::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/home", get(home))
            .route("/heartbeat", get(|| async {}))
            .with_state((name.clone(), counts.clone()));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            name,
            addr,
            counts,
            server,
        })
    }

    fn load(&self, run: Duration) -> ReplicaLoad {
        let counts = &self.counts;
        ReplicaLoad {
            name: self.name.clone(),
            requests: counts.requests.load(Ordering::SeqCst),
            peak_in_flight: counts.peak.load(Ordering::SeqCst),
            mean_in_flight: counts.busy_ns.load(Ordering::SeqCst) as f64
                / run.as_nanos().max(1) as f64,
        }
    }
}

impl Drop for SlowReplica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn home(State((name, counts)): State<(String, Arc<Counts>)>) -> String {
    let started = Instant::now();
    let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counts.peak.fetch_max(now, Ordering::SeqCst);
    {
        let _worker = counts.workers.acquire().await;
        tokio::time::sleep(WORK).await;
    }
    counts.in_flight.fetch_sub(1, Ordering::SeqCst);
    counts
        .busy_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::SeqCst);
    counts.requests.fetch_add(1, Ordering::SeqCst);
    format!(r#"{{"message": "Hello from Server: {name}", "status": "successful"}}"#)
}

/// Runs A5: for each balance factor, five fresh replicas behind a fresh `ringlb up`,
/// `requests` Zipf-keyed requests from `concurrency` clients.
pub async fn run(
    exe: &std::path::Path,
    requests: u64,
    concurrency: usize,
) -> anyhow::Result<Vec<BoundedRun>> {
    let zipf = Arc::new(Zipf::new(DISTINCT_KEYS, ZIPF_S));
    let mut runs = Vec::new();
    for factor in FACTORS {
        runs.push(one_run(exe, factor, &zipf, requests, concurrency).await?);
    }
    Ok(runs)
}

async fn one_run(
    exe: &std::path::Path,
    factor: Option<f64>,
    zipf: &Arc<Zipf>,
    requests: u64,
    concurrency: usize,
) -> anyhow::Result<BoundedRun> {
    let mut replicas = Vec::new();
    for i in 1..=REPLICAS {
        replicas.push(SlowReplica::start(format!("Server{i}")).await?);
    }
    let mut up: Vec<String> = vec!["--key".into(), "query:id".into()];
    for r in &replicas {
        up.extend(["--replica".into(), format!("{}={}", r.name, r.addr)]);
    }
    if let Some(c) = factor {
        up.extend(["--balance-factor".into(), c.to_string()]);
    }
    let label = factor.map_or_else(|| "A5 off".to_owned(), |c| format!("A5 c = {c}"));
    let deployment = super::start(exe, up).await?;
    let api = super::api::Endpoint {
        http: super::load::client()?,
        proxy: deployment.proxy_url(),
        ops: Some(deployment.ops_url()),
        admin_token: None,
    };
    api.wait_serving(REPLICAS, Duration::from_secs(15)).await?;

    let names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
    let ring = Ring::build(&names, &RingConfig::default());
    let url = format!("{}/home?id=", deployment.proxy_url());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, next, zipf) =
                (api.http.clone(), url.clone(), next.clone(), zipf.clone());
            tokio::spawn(async move {
                let mut seen: Vec<(String, String, Duration)> = Vec::new();
                let mut failed = 0u64;
                while next.fetch_add(1, Ordering::SeqCst) < requests {
                    let key = key_of(zipf.sample(&mut rand::rng()));
                    let sent = Instant::now();
                    let body = match http.get(format!("{url}{key}")).send().await {
                        Ok(response) if response.status().is_success() => {
                            response.text().await.ok()
                        }
                        _ => None,
                    };
                    match body.as_deref().and_then(server_name) {
                        Some(server) => seen.push((key, server.to_owned(), sent.elapsed())),
                        None => failed += 1,
                    }
                }
                (seen, failed)
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (s, f) = worker.await.context("A5 client task")?;
        seen.extend(s);
        failed += f;
    }
    let elapsed = started.elapsed();
    super::stop(deployment).await?;

    let at_home = seen
        .iter()
        .filter(|(key, server, _)| {
            ring.lookup(key.as_bytes())
                .is_some_and(|i| ring.members()[i] == *server)
        })
        .count();
    let mut latencies: Vec<Duration> = seen.iter().map(|(_, _, l)| *l).collect();
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let run = BoundedRun {
        balance_factor: factor,
        requests,
        failed,
        concurrency,
        replicas: replicas.iter().map(|r| r.load(elapsed)).collect(),
        home_share: at_home as f64 / seen.len().max(1) as f64,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
    };
    eprintln!(
        "ringlb-analyze: {label}: {requests} requests in {:.1} s, peak in flight {}, home {:.1}%, p99 {:.1} ms{}",
        elapsed.as_secs_f64(),
        run.peak_in_flight(),
        run.home_share * 100.0,
        run.p99_ms,
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    Ok(run)
}

/// Requests per replica for each balance factor, side by side, each panel titled with
/// what it cost and bought: the busiest replica's peak in flight, the share served at
/// home, and the p99 latency.
pub fn chart(path: &std::path::Path, runs: &[BoundedRun]) -> anyhow::Result<()> {
    let panels: Vec<BarPanel> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| BarPanel {
            title: format!(
                "{}: peak {} · home {:.0}% · p99 {:.0} ms",
                run.label(),
                run.peak_in_flight(),
                run.home_share * 100.0,
                run.p99_ms
            ),
            bars: run
                .replicas
                .iter()
                .map(|r| (r.name.clone(), r.requests))
                .collect(),
            color: i,
        })
        .collect();
    let requests = runs.first().map_or(0, |r| r.requests);
    super::chart::distribution_chart(
        path,
        &format!("A5 — {requests} Zipf-keyed requests on {REPLICAS} replicas, by balance factor"),
        &panels,
        2,
    )
}

/// The A5 section of the report.
pub fn markdown(runs: &[BoundedRun]) -> String {
    let mut text = String::new();
    let Some(first) = runs.first() else {
        return text;
    };
    text.push_str(&format!(
        "## A5 — hot keys and bounded loads\n\n\
         {} replicas that take {} ms per request on each of {WORKERS} workers (more requests \
         wait their turn), behind `ringlb up --key query:id`; {} requests \
         from {} clients, ids drawn from a Zipf distribution (s = {ZIPF_S}, {DISTINCT_KEYS} \
         distinct ids: the hottest id is about {:.0}% of all requests). \"Home\" is the share \
         of requests served by their id's own replica (the ring's owner): what a cache on \
         the replicas would hit.\n\n",
        REPLICAS,
        WORK.as_millis(),
        first.requests,
        first.concurrency,
        Zipf::new(DISTINCT_KEYS, ZIPF_S).cdf[0] * 100.0,
    ));
    text.push_str("| balance factor | requests per replica | peak in flight per replica | mean in flight per replica | home | requests/s | p50 | p99 | failed |\n");
    text.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for run in runs {
        let join = |f: &dyn Fn(&ReplicaLoad) -> String| {
            run.replicas.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}% | {:.0} | {:.1} ms | {:.1} ms | {} |\n",
            run.label(),
            join(&|r| r.requests.to_string()),
            join(&|r| r.peak_in_flight.to_string()),
            join(&|r| format!("{:.1}", r.mean_in_flight)),
            run.home_share * 100.0,
            run.requests as f64 / (run.elapsed_ms / 1000.0).max(1e-9),
            run.p50_ms,
            run.p99_ms,
            run.failed,
        ));
    }
    text.push_str(
        "\nThe trade: without a bound every request for a hot id goes to its one replica, \
         which queues while the others idle: it holds most of the clients' requests at \
         once (the highest peak), the pool's throughput is that one replica's, and the \
         tail is long; every request is served at home. A balance factor c caps each \
         replica at ⌈c × its share × (requests in flight + 1)⌉: the hot ids' overflow moves \
         to the next replicas of their failover order, so the peak falls to about c times \
         the average, the work spreads over every replica and the tail shortens, at the \
         cost of serving some requests away from home (a miss, for a cache on the \
         replicas). The smaller c, the flatter the load and the more requests leave home. \
         The median rises under a bound only because the same clients now keep every \
         replica busy: the requests per second show the pool doing more work, not each \
         request waiting longer for the same work.\n\n![A5](a5_bounded_loads.png)\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipf_ranks_follow_the_power_law() {
        let zipf = Zipf::new(10, 1.0);
        // H(10) = 2.928968…: rank 1 has 1/H = 0.3414, rank 2 half of that.
        assert!((zipf.cdf[0] - 0.341_417).abs() < 1e-6);
        assert!((zipf.cdf[1] - zipf.cdf[0] - 0.170_709).abs() < 1e-6);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng) - 1] += 1;
        }
        // Within 1.5% of the expected 34,142 and 17,071 (σ ≈ 150 and 119).
        assert!((33_630..=34_650).contains(&counts[0]), "{counts:?}");
        assert!((16_670..=17_470).contains(&counts[1]), "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0));
    }
}
