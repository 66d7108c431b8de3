//! `ringlb-analyze`: the original project's experiments, reproducible with one command.
//!
//! - A1 — load distribution: requests per replica on 3 replicas, default vs course preset;
//! - A2 — scalability: N = 2…6, average load per replica with its min–max band, max/mean;
//! - A3 — failure recovery: every endpoint, then replicas killed under a steady load;
//! - A4 — hash functions and algorithms: A1 and A2 for each ring configuration.
//!
//! Without `--target` every measurement gets its own local deployment (`ringlb up` of
//! the `ringlb` binary beside this one, on port 0, stopped and reaped afterwards); with
//! `--target` it measures that URL only.
//! Counting, summaries and charts are pure functions ([`count`], [`chart`]); the
//! experiments write PNG charts, `results.md` and `results.json` ([`report`]).

pub mod api;
pub mod bounded;
pub mod chart;
pub mod count;
pub mod deploy;
pub mod load;
pub mod recovery;
pub mod report;
pub mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ringlb::ring::Algorithm;
use serde::{Deserialize, Serialize};

use api::Endpoint;
use count::{Summary, Tally, summarize};
use deploy::Deployment;
use recovery::Recovery;

/// 65537 → "65 537".
fn thousands(v: u32) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// How long a deployment may take until its N replicas serve.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for a target resized through `/add` and `/rm` (pods can be slow to start).
const TARGET_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the original project's experiments (load distribution, scalability, failure
/// recovery, hash functions) and writes charts and tables to --out.
///
/// Without --target, every measurement starts its own `ringlb up` on free loopback
/// ports: the `ringlb` binary beside this one (target/release/ringlb for
/// `cargo run --release -p ringlb-analyze`).
#[derive(Clone, Debug, Parser)]
#[command(name = "ringlb-analyze", version)]
pub struct AnalyzeArgs {
    /// Measure a running load balancer at this URL (e.g. a port-forwarded cluster:
    /// http://127.0.0.1:5000) instead of starting local deployments. A2 then changes N
    /// with /add and /rm and puts the replicas back at the end.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,

    /// The operations port of --target (for health, key-space shares, and the pids
    /// or containers that A3 needs to kill replicas).
    #[arg(long, value_name = "URL", requires = "target")]
    pub ops_target: Option<String>,

    /// Folder for the charts, results.md and results.json.
    #[arg(long, default_value = "docs/analysis")]
    pub out: PathBuf,

    /// Requests per measurement (one configuration at one N).
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one)]
    pub requests: u64,

    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub concurrency: u64,

    /// Which experiments to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "a1,a2,a3,a4,a5")]
    pub experiments: Vec<Experiment>,

    /// Replica counts of A2 and A4, comma-separated (1 to 100 each).
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,5,6", value_parser = replica_count)]
    pub sizes: Vec<usize>,

    /// Ring configurations compared by A4, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "course,course-xxh3,point-xxh3,maglev-xxh3,maglev-murmur3,rendezvous-xxh3,default"
    )]
    pub configs: Vec<Setup>,

    /// Replicas that A3 kills, one after the other.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,

    /// Bearer token for /add and /rm of --target.
    #[arg(long, env = "RINGLB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("'{s}' is not a whole number: {e}")),
    }
}

fn replica_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (1..=100).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} replicas: choose 1 to 100")),
        Err(e) => Err(format!("'{s}' is not a whole number: {e}")),
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Experiment {
    A1,
    A2,
    A3,
    A4,
    A5,
}

/// A ring configuration that the experiments compare: a name and the `ringlb up` options.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// The default preset (see `RingConfig::preset`).
    Default,
    /// The course preset: slot ring, quadratic H and Φ, 512 slots, 9 virtual nodes.
    Course,
    /// The course ring with xxh3 instead of the quadratic functions (a modified Φ and H).
    CourseXxh3,
    /// Ketama-style point ring, xxh3, 160 points per replica.
    PointXxh3,
    /// Maglev, 65 537 entries, xxh3.
    MaglevXxh3,
    /// Rendezvous (highest random weight) with xxh3.
    RendezvousXxh3,
    /// Maglev, 65 537 entries, MurmurHash3.
    MaglevMurmur3,
    /// A load balancer given with --target: whatever it runs.
    #[value(skip)]
    Target,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Default => "default",
            Setup::Course => "course",
            Setup::CourseXxh3 => "course-xxh3",
            Setup::PointXxh3 => "point-xxh3",
            Setup::MaglevXxh3 => "maglev-xxh3",
            Setup::RendezvousXxh3 => "rendezvous-xxh3",
            Setup::MaglevMurmur3 => "maglev-murmur3",
            Setup::Target => "target",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Setup::Default => {
                let c = ringlb::ring::RingConfig::default();
                let table = match c.algorithm {
                    Algorithm::Point | Algorithm::Slot => format!(", {} vnodes", c.vnodes),
                    Algorithm::Rendezvous => String::new(),
                    _ => format!(", {} entries", thousands(c.slots)),
                };
                format!("default: {} + {}{table}", c.algorithm, c.hash)
            }
            Setup::Course => "course: slot ring, quadratic H and Φ, 512 slots, 9 vnodes".into(),
            Setup::CourseXxh3 => "modified course: slot ring, xxh3, 512 slots, 9 vnodes".into(),
            Setup::PointXxh3 => "point ring (ketama-style), xxh3, 160 vnodes".into(),
            Setup::MaglevXxh3 => "Maglev + xxh3, 65 537 entries".into(),
            Setup::RendezvousXxh3 => "rendezvous (highest random weight), xxh3".into(),
            Setup::MaglevMurmur3 => "Maglev + murmur3, 65 537 entries".into(),
            Setup::Target => "the --target load balancer".into(),
        }
    }

    /// The `ringlb up` options of this configuration.
    pub fn up_args(self) -> &'static [&'static str] {
        match self {
            Setup::Default | Setup::Target => &["--preset", "default"],
            Setup::Course => &["--preset", "course"],
            Setup::CourseXxh3 => &["--preset", "course", "--hash", "xxh3"],
            Setup::PointXxh3 => &["--algorithm", "point", "--hash", "xxh3", "--vnodes", "160"],
            Setup::MaglevXxh3 => &[
                "--algorithm",
                "maglev",
                "--hash",
                "xxh3",
                "--slots",
                "65537",
            ],
            Setup::RendezvousXxh3 => &["--algorithm", "rendezvous", "--hash", "xxh3"],
            Setup::MaglevMurmur3 => &[
                "--algorithm",
                "maglev",
                "--hash",
                "murmur3",
                "--slots",
                "65537",
            ],
        }
    }
}

/// One measurement: `requests` requests on N replicas of one configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub config: Setup,
    pub description: String,
    /// The ring configuration the load balancer reported (`/ring`), if known.
    pub ring: serde_json::Value,
    pub replicas: usize,
    pub requests: u64,
    pub concurrency: u64,
    pub elapsed_ms: f64,
    #[serde(flatten)]
    pub tally: Tally,
    /// Each replica's share of the key space (all 900 000 six-digit ids), from `/ring`.
    pub key_space_share: BTreeMap<String, f64>,
    pub summary: Option<Summary>,
}

impl Measurement {
    pub fn counts(&self) -> Vec<u64> {
        self.tally.sorted().into_iter().map(|(_, c)| c).collect()
    }
}

/// Everything one run produced: what results.json holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub generated_by: String,
    pub settings: Settings,
    pub measurements: Vec<Measurement>,
    pub recovery: Option<Recovery>,
    /// A5, one run per balance factor.
    #[serde(default)]
    pub bounded: Vec<bounded::BoundedRun>,
    /// The local deployments started: so that a reader (and the smoke test) can check
    /// that none of their processes is left.
    pub deployments: Vec<DeploymentRecord>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub purpose: String,
    /// The `ringlb up` process.
    pub pid: Option<u32>,
    /// Every replica process it had (from its startup lines and `/ring`).
    pub replica_pids: Vec<u32>,
}

impl DeploymentRecord {
    fn of(purpose: String, deployment: &Deployment) -> DeploymentRecord {
        DeploymentRecord {
            purpose,
            pid: deployment.pid(),
            replica_pids: deployment.replicas().into_keys().collect(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    pub requests: u64,
    pub concurrency: u64,
    pub experiments: Vec<Experiment>,
    pub sizes: Vec<usize>,
    pub configs: Vec<Setup>,
    pub kills: usize,
    pub target: Option<String>,
    pub ops_target: Option<String>,
    /// The command line that regenerates these results.
    pub command: String,
}

impl Results {
    pub fn find(&self, config: Setup, n: usize) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.config == config && m.replicas == n)
    }
}

impl AnalyzeArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.experiments.is_empty() {
            bail!("--experiments: name at least one of a1, a2, a3, a4, a5");
        }
        if self.sizes.is_empty() {
            bail!("--sizes: give at least one replica count");
        }
        for (flag, url) in [
            ("--target", &self.target),
            ("--ops-target", &self.ops_target),
        ] {
            if let Some(url) = url {
                let parsed = reqwest::Url::parse(url).with_context(|| {
                    format!("{flag} {url}: not a URL (e.g. http://127.0.0.1:5000)")
                })?;
                if parsed.scheme() != "http" {
                    bail!("{flag} {url}: only http:// is supported");
                }
                if parsed.host().is_none() {
                    bail!("{flag} {url}: no host");
                }
            }
        }
        Ok(())
    }

    fn wants(&self, e: Experiment) -> bool {
        self.experiments.contains(&e)
    }

    /// The (configuration, N) pairs to measure, each once, in a stable order: A1 is the
    /// N = 3 point of A2, and A4 shares the default and course series with A2.
    fn plan(&self) -> Vec<(Setup, usize)> {
        let (a1, a2, a4) = (
            self.wants(Experiment::A1),
            self.wants(Experiment::A2),
            self.wants(Experiment::A4),
        );
        let setups: Vec<Setup> = if self.target.is_some() {
            vec![Setup::Target]
        } else {
            let mut setups = vec![Setup::Default, Setup::Course];
            for c in &self.configs {
                if !setups.contains(c) {
                    setups.push(*c);
                }
            }
            setups
        };
        let mut pairs = Vec::new();
        for setup in setups {
            let main = matches!(setup, Setup::Default | Setup::Course | Setup::Target);
            let compared = a4 && (setup == Setup::Target || self.configs.contains(&setup));
            let mut sizes: Vec<usize> = Vec::new();
            if (a2 && main) || compared {
                sizes.extend(&self.sizes);
            }
            // A1, and A4's distribution chart, are at N = 3.
            if (a1 && main) || compared {
                sizes.push(3);
            }
            sizes.sort_unstable();
            sizes.dedup();
            pairs.extend(sizes.into_iter().map(|n| (setup, n)));
        }
        pairs
    }

    /// The command line that gives these results again.
    fn command(&self) -> String {
        let mut cmd = vec!["ringlb-analyze".to_owned()];
        if let Some(t) = &self.target {
            cmd.push(format!("--target {t}"));
        }
        if let Some(t) = &self.ops_target {
            cmd.push(format!("--ops-target {t}"));
        }
        cmd.push(format!("--out {}", self.out.display()));
        cmd.push(format!("--requests {}", self.requests));
        cmd.push(format!("--concurrency {}", self.concurrency));
        let join = |v: Vec<String>| v.join(",");
        cmd.push(format!(
            "--experiments {}",
            join(
                self.experiments
                    .iter()
                    .map(|e| format!("{e:?}").to_lowercase())
                    .collect()
            )
        ));
        cmd.push(format!(
            "--sizes {}",
            join(self.sizes.iter().map(|n| n.to_string()).collect())
        ));
        cmd.push(format!(
            "--configs {}",
            join(self.configs.iter().map(|c| c.name().to_owned()).collect())
        ));
        cmd.push(format!("--kills {}", self.kills));
        cmd.join(" ")
    }
}

/// `ringlb-analyze`.
pub async fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    args.check()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // SIGINT/SIGTERM: drop the experiments, which stops every deployment they started.
    let interrupted = ringlb_replica::shutdown_signal();
    let results = tokio::select! {
        results = experiments(&args) => results?,
        () = interrupted => bail!("interrupted: every deployment was stopped; nothing written"),
    };
    let written = report::write_all(&args.out, &results)?;
    eprintln!("ringlb-analyze: wrote");
    for path in written {
        eprintln!("  {}", path.display());
    }
    Ok(())
}

async fn experiments(args: &AnalyzeArgs) -> anyhow::Result<Results> {
    let http = load::client()?;
    let mut results = Results {
        generated_by: format!("ringlb-analyze {}", env!("CARGO_PKG_VERSION")),
        settings: Settings {
            requests: args.requests,
            concurrency: args.concurrency,
            experiments: args.experiments.clone(),
            sizes: args.sizes.clone(),
            configs: args.configs.clone(),
            kills: args.kills,
            target: args.target.clone(),
            ops_target: args.ops_target.clone(),
            command: args.command(),
        },
        ..Results::default()
    };
    match &args.target {
        None => local(args, http, &mut results).await?,
        Some(target) => remote(args, http, target, &mut results).await?,
    }
    Ok(results)
}

/// Every measurement on its own local deployment.
async fn local(
    args: &AnalyzeArgs,
    http: reqwest::Client,
    results: &mut Results,
) -> anyhow::Result<()> {
    // Blocking (it may build ringlb first): off the async workers.
    let exe = tokio::task::spawn_blocking(deploy::ringlb_exe)
        .await
        .context("ringlb lookup task")??;
    let plan = args.plan();
    for (i, (setup, n)) in plan.iter().copied().enumerate() {
        let mut up: Vec<String> = vec!["-n".into(), n.to_string()];
        up.extend(setup.up_args().iter().map(|s| s.to_string()));
        let deployment = start(&exe, up).await?;
        let api = Endpoint {
            http: http.clone(),
            proxy: deployment.proxy_url(),
            ops: Some(deployment.ops_url()),
            admin_token: None,
        };
        let label = format!("[{}/{}] {} N={n}", i + 1, plan.len(), setup.name());
        let measured = measure(args, &api, setup, n, &label, READY_TIMEOUT).await;
        results.deployments.push(DeploymentRecord::of(
            format!("{} N={n}", setup.name()),
            &deployment,
        ));
        stop(deployment).await?;
        results.measurements.push(measured?);
    }
    if args.wants(Experiment::A3) {
        let mut recovery = Recovery::default();
        let up: Vec<String> = ["-n", "3", "--heartbeat-interval", "200ms"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let deployment = start(&exe, up).await?;
        let api = Endpoint {
            http: http.clone(),
            proxy: deployment.proxy_url(),
            ops: Some(deployment.ops_url()),
            admin_token: None,
        };
        eprintln!("ringlb-analyze: A3 on 3 replicas, heartbeat every 200 ms");
        let outcome = a3(&api, Some(&deployment), args.kills, &mut recovery).await;
        results
            .deployments
            .push(DeploymentRecord::of("A3".into(), &deployment));
        stop(deployment).await?;
        outcome?;
        results.recovery = Some(recovery);
    }
    if args.wants(Experiment::A5) {
        eprintln!(
            "ringlb-analyze: A5, hot keys: {} replicas of {} ms × {} workers, Zipf s = {}",
            bounded::REPLICAS,
            bounded::WORK.as_millis(),
            bounded::WORKERS,
            bounded::ZIPF_S
        );
        results.bounded = bounded::run(&exe, args.requests, args.concurrency as usize).await?;
    }
    Ok(())
}

async fn a3(
    api: &Endpoint,
    deployment: Option<&Deployment>,
    kills: usize,
    recovery: &mut Recovery,
) -> anyhow::Result<()> {
    let n = api.replicas().await?.len();
    api.wait_serving(n, READY_TIMEOUT).await?;
    recovery.endpoints = recovery::check_endpoints(api).await?;
    if kills > 0 {
        recovery::kill_replicas(api, deployment, kills, recovery).await?;
    }
    Ok(())
}

async fn start(exe: &std::path::Path, up: Vec<String>) -> anyhow::Result<Deployment> {
    let exe = exe.to_owned();
    tokio::task::spawn_blocking(move || Deployment::start(&exe, &up))
        .await
        .context("deployment start task")?
}

async fn stop(deployment: Deployment) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || deployment.stop())
        .await
        .context("deployment stop task")?
}

/// Waits until N replicas serve, then sends the requests and counts them.
async fn measure(
    args: &AnalyzeArgs,
    api: &Endpoint,
    setup: Setup,
    n: usize,
    label: &str,
    ready_timeout: Duration,
) -> anyhow::Result<Measurement> {
    let view = api.wait_serving(n, ready_timeout).await?;
    let members = match &view {
        Some(view) => view.healthy_in_ring().map(|m| m.name.clone()).collect(),
        None => api.replicas().await?,
    };
    let mut tally = Tally::with_members(&members);
    let elapsed = load::send_all(
        &api.http,
        &api.url("/home"),
        args.requests,
        args.concurrency as usize,
        label,
        &mut tally,
    )
    .await;
    let summary = summarize(
        &tally
            .sorted()
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>(),
    );
    let rate = args.requests as f64 / elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "ringlb-analyze: {label}: {} requests in {:.1} s ({rate:.0}/s), max/mean {}{}",
        args.requests,
        elapsed.as_secs_f64(),
        summary.map_or("-".into(), |s| format!("{:.3}", s.max_over_mean)),
        if tally.failed + tally.unexpected > 0 {
            format!(", {} failed, {} unexpected", tally.failed, tally.unexpected)
        } else {
            String::new()
        }
    );
    Ok(Measurement {
        config: setup,
        description: setup.describe(),
        ring: view.as_ref().map(|v| v.config.clone()).unwrap_or_default(),
        replicas: n,
        requests: args.requests,
        concurrency: args.concurrency,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        key_space_share: view.map(|v| v.shares()).unwrap_or_default(),
        summary,
        tally,
    })
}

/// A1/A2-style measurements (and A3's endpoint checks, and kills if possible) against
/// a load balancer that `ringlb-analyze` did not start.
async fn remote(
    args: &AnalyzeArgs,
    http: reqwest::Client,
    target: &str,
    results: &mut Results,
) -> anyhow::Result<()> {
    let trim = |u: &str| u.trim_end_matches('/').to_owned();
    let api = Endpoint {
        http,
        proxy: trim(target),
        ops: args.ops_target.as_deref().map(trim),
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
    };
    if args.wants(Experiment::A5) {
        results.notes.push(
            "A5 runs its own slow replicas behind its own ringlb: it does not run with --target."
                .into(),
        );
    }
    if args.wants(Experiment::A4) {
        results.notes.push(
            "A4 needs deployments of every ring configuration: with --target only the target's own configuration is measured (as A1/A2)."
                .into(),
        );
    }
    let mut resizer = target::Resizer::new(&api).await?;
    eprintln!(
        "ringlb-analyze: target {target} has {} replicas",
        resizer.original().len()
    );
    let outcome = async {
        let plan = args.plan();
        for (i, (setup, n)) in plan.iter().copied().enumerate() {
            resizer.resize(&api, n).await?;
            let label = format!("[{}/{}] target N={n}", i + 1, plan.len());
            results
                .measurements
                .push(measure(args, &api, setup, n, &label, TARGET_READY_TIMEOUT).await?);
        }
        anyhow::Ok(())
    }
    .await;
    // Put the target back even when a measurement failed.
    match resizer.restore(&api).await {
        Ok(Some(note)) => results.notes.push(note),
        Ok(None) => {}
        Err(error) => results.notes.push(format!(
            "could not restore the target's replicas: {error:#}"
        )),
    }
    outcome?;
    if args.wants(Experiment::A3) {
        let mut recovery = Recovery::default();
        recovery.endpoints = recovery::check_endpoints(&api).await?;
        if api.ops.is_none() {
            recovery.notes.push(
                "no replica killed: A3 needs --ops-target to find replica pids or containers"
                    .into(),
            );
        } else if args.kills > 0 {
            recovery::kill_replicas(&api, None, args.kills, &mut recovery).await?;
        }
        results.recovery = Some(recovery);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ringlb up` flags on their own, as `ringlb` parses them.
    #[derive(Parser)]
    struct Up {
        #[command(flatten)]
        args: ringlb::app::UpArgs,
    }

    fn parse(extra: &[&str]) -> Result<AnalyzeArgs, clap::Error> {
        AnalyzeArgs::try_parse_from(["ringlb-analyze"].iter().chain(extra))
    }

    fn args(extra: &[&str]) -> AnalyzeArgs {
        parse(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_default_plan_measures_each_configuration_and_n_once() {
        let plan = args(&[]).plan();
        // 7 configurations × N = 2..6; A1 is the N = 3 point of default and course.
        assert_eq!(plan.len(), 7 * 5);
        let mut unique = plan.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), plan.len());
        assert_eq!(&plan[..2], &[(Setup::Default, 2), (Setup::Default, 3)]);
    }

    #[test]
    fn subsets_plan_only_what_they_need() {
        let a1 = args(&["--experiments", "a1"]).plan();
        assert_eq!(a1, [(Setup::Default, 3), (Setup::Course, 3)]);
        let a4 = args(&[
            "--experiments",
            "a4",
            "--sizes",
            "2",
            "--configs",
            "point-xxh3",
        ])
        .plan();
        assert_eq!(a4, [(Setup::PointXxh3, 2), (Setup::PointXxh3, 3)]);
        assert!(args(&["--experiments", "a3"]).plan().is_empty());
        let target = args(&["--target", "http://127.0.0.1:5000", "--sizes", "2,4"]).plan();
        assert_eq!(
            target,
            [(Setup::Target, 2), (Setup::Target, 3), (Setup::Target, 4)]
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--requests", "0"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--sizes", "101"]).is_err());
        assert!(parse(&["--configs", "target"]).is_err());
        assert!(parse(&["--ops-target", "http://127.0.0.1:5001"]).is_err());
        assert!(args(&["--target", "ftp://x"]).check().is_err());
        assert!(
            args(&["--target", "http://127.0.0.1:5000/"])
                .check()
                .is_ok()
        );
    }

    #[test]
    fn setups_describe_themselves() {
        assert_eq!(thousands(65_537), "65 537");
        assert_eq!(thousands(512), "512");
        assert_eq!(thousands(1_000_000), "1 000 000");
        assert!(Setup::Default.describe().starts_with("default: "));
        for setup in Setup::value_variants() {
            let mut up = vec!["up"];
            up.extend(setup.up_args());
            let up = Up::try_parse_from(up).unwrap().args;
            up.ring_config()
                .unwrap_or_else(|e| panic!("{}: {e}", setup.name()));
        }
    }
}
