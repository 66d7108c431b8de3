//! `ringlb up`: wires runtime, supervisor, proxy and operations port together, and
//! shuts them down in order: stop accepting, drain, stop every replica.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::pool::admission::{self, Weights};
use crate::pool::probe::Prober;
use crate::pool::supervisor::PoolSettings;
use crate::pool::{HealthCheck, HealthSettings, Supervisor};
use crate::proxy::workers::ProxyListeners;
use crate::proxy::{ProxyArgs, ProxySettings};
use crate::publish::{PoolView, Publisher};
use crate::replica_name::ReplicaName;
use crate::ring::{Algorithm, HashFn, MAX_WEIGHT, Preset, RingConfig};
use crate::runtime::{DockerRuntime, DockerSettings, ExternalRuntime, ProcessRuntime, Runtime};
use crate::serving::Serving;

/// A replica that ringlb fronts but did not start: `NAME=HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalReplica {
    pub name: ReplicaName,
    pub addr: SocketAddr,
    /// Its ring weight (`@W`; 1 when not given).
    pub weight: u32,
}

impl std::str::FromStr for ExternalReplica {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, target) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=HOST:PORT[@WEIGHT]"))?;
        let name = ReplicaName::parse(name).map_err(|e| format!("'{name}': {e}"))?;
        let (target, weight) = match target.rsplit_once('@') {
            None => (target, 1),
            Some((target, weight)) => {
                let weight = weight
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        format!(
                            "'{weight}' is not a weight: give an integer from 1 to {MAX_WEIGHT}"
                        )
                    })?;
                (target, weight)
            }
        };
        let addr = target
            .to_socket_addrs()
            .map_err(|e| format!("'{target}': {e}"))?
            .next()
            .ok_or_else(|| format!("'{target}' resolves to no address"))?;
        Ok(Self { name, addr, weight })
    }
}

/// Where `ringlb up` runs its replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Child processes on --replica-host (127.0.0.1).
    Process,
    /// Containers from --replica-image on --docker-network.
    Docker,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address of the load balancer (port 0 picks a free one; the chosen address is printed).
    #[arg(long, env = "RINGLB_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,

    /// Address of the operations port: /metrics, /healthz, /readyz, /ring.
    #[arg(long, env = "RINGLB_OPS_LISTEN", default_value = "127.0.0.1:5001")]
    pub ops_listen: SocketAddr,

    /// Number of replicas to keep alive [default: 3, or the number of --hostnames].
    #[arg(short = 'n', long, env = "RINGLB_REPLICAS")]
    pub replicas: Option<usize>,

    /// Names of the initial replicas, comma-separated; the rest are Server1, Server2, …
    #[arg(long, env = "RINGLB_HOSTNAMES", value_delimiter = ',')]
    pub hostnames: Vec<String>,

    /// Front a replica you already run instead of starting local ones (repeatable):
    /// same ring and heartbeats, nothing is spawned, a failed one rejoins when healthy.
    /// `@W` gives it ring weight W (1 to 256; default 1): a share of the keys
    /// proportional to W.
    #[arg(long = "replica", value_name = "NAME=HOST:PORT[@W]")]
    pub external: Vec<ExternalReplica>,

    /// Upper bound on the number of replicas that /add may reach.
    #[arg(long, env = "RINGLB_MAX_REPLICAS", default_value_t = 100)]
    pub max_replicas: usize,

    /// Hashing preset: `default` (balanced) or `course` (512 slots, 9 virtual nodes,
    /// quadratic hashes, as in the original project). The options below override it.
    #[arg(long, env = "RINGLB_PRESET", default_value = "default")]
    pub preset: Preset,

    /// Ring algorithm: slot, point, maglev, rendezvous or rank-table.
    #[arg(long, env = "RINGLB_ALGORITHM")]
    pub algorithm: Option<Algorithm>,

    /// Hash function: quadratic, xxh3 or murmur3.
    #[arg(long, env = "RINGLB_HASH")]
    pub hash: Option<HashFn>,

    /// Slots of the ring (slot ring) or lookup table size (Maglev, rank table).
    #[arg(long, env = "RINGLB_SLOTS")]
    pub slots: Option<u32>,

    /// Virtual nodes per replica (slot and point rings).
    #[arg(long, env = "RINGLB_VNODES")]
    pub vnodes: Option<u32>,

    /// Bounded loads: a replica takes at most C times its share of the requests in
    /// flight (1 to 100, e.g. 1.25); a request whose replica is full goes to the next
    /// of its failover order. Off when unset (HAProxy: hash-balance-factor).
    #[arg(long, env = "RINGLB_BALANCE_FACTOR", value_name = "C")]
    pub balance_factor: Option<crate::publish::BalanceFactor>,

    /// Time between heartbeats (e.g. 500ms, 2s).
    #[arg(long, env = "RINGLB_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long one heartbeat may take.
    #[arg(long, env = "RINGLB_HEARTBEAT_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Consecutive failed heartbeats after which a replica is replaced.
    #[arg(long, env = "RINGLB_FAILURE_THRESHOLD", default_value_t = 3)]
    pub failure_threshold: u32,

    /// How heartbeats ask a replica: `http` (`GET /heartbeat` answered 200) or `grpc`
    /// (`grpc.health.v1.Health/Check` over h2c answered SERVING, for replicas that
    /// speak only gRPC).
    #[arg(long, env = "RINGLB_HEALTH_CHECK", value_enum, default_value_t = HealthCheck::Http)]
    pub health_check: HealthCheck,

    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// The protocol requests go to the replicas in: http1, h2c (HTTP/2 with prior
    /// knowledge, for gRPC servers), or auto (the client's: HTTP/2 streams as h2c,
    /// HTTP/1.1 as HTTP/1.1).
    #[arg(long, env = "RINGLB_UPSTREAM_PROTOCOL", default_value = "http1")]
    pub upstream_protocol: crate::publish::UpstreamProtocol,

    /// Address local replicas listen on.
    #[arg(long, env = "RINGLB_REPLICA_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub replica_host: IpAddr,

    /// Where replicas run: `process` (children of ringlb) or `docker` (containers,
    /// through the Docker Engine at DOCKER_HOST or /var/run/docker.sock).
    #[arg(long, env = "RINGLB_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,

    /// Image of the replica containers (--runtime docker); `just image` builds it.
    #[arg(
        long,
        env = "RINGLB_REPLICA_IMAGE",
        default_value = "ringlb-replica:dev"
    )]
    pub replica_image: String,

    /// User-defined bridge network of the replica containers, created if missing
    /// (--runtime docker). It also names the pool: at start, ringlb removes the
    /// containers an earlier run on this network left, so run one ringlb per network.
    #[arg(long, env = "RINGLB_DOCKER_NETWORK", default_value = "ringlb")]
    pub docker_network: String,

    /// Put before every container name (--runtime docker), for several pools on one
    /// Engine: with `t1-`, the replica Server1 is the container t1-Server1.
    #[arg(long, env = "RINGLB_DOCKER_NAME_PREFIX", default_value = "")]
    pub docker_name_prefix: String,
}

impl UpArgs {
    /// The ring configuration: the preset with any overrides, validated.
    pub fn ring_config(&self) -> Result<RingConfig, String> {
        let mut config = RingConfig::preset(self.preset);
        if let Some(algorithm) = self.algorithm {
            config.algorithm = algorithm;
        }
        if let Some(hash) = self.hash {
            config.hash = hash;
        }
        if let Some(slots) = self.slots {
            config.slots = slots;
        }
        if let Some(vnodes) = self.vnodes {
            config.vnodes = vnodes;
        }
        config.validate()?;
        Ok(config)
    }

    /// The names of the initial local replicas: `--hostnames` first, then the lowest
    /// free `Server<k>` up to N.
    pub fn initial_names(&self) -> Result<Vec<ReplicaName>, String> {
        let n = self.replicas.unwrap_or(3.max(self.hostnames.len()));
        if n == 0 {
            return Err("--replicas must be at least 1".into());
        }
        if self.hostnames.len() > n {
            return Err(format!(
                "{} hostnames given for {n} replicas: pass --replicas {}",
                self.hostnames.len(),
                self.hostnames.len()
            ));
        }
        if n > self.max_replicas {
            return Err(format!(
                "--replicas {n} is above --max-replicas {}",
                self.max_replicas
            ));
        }
        admission::names_to_add(&[], &[], n as u64, &self.hostnames, n).map_err(|e| e.to_string())
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    // First of all: a signal from now on means "shut down in order".
    let shutdown = ringlb_replica::shutdown_signal();
    let ring = args.ring_config().map_err(anyhow::Error::msg)?;
    let max_replicas = admission::replica_limit(args.max_replicas, &ring);
    if max_replicas < args.max_replicas {
        tracing::info!(
            "the ring has room for {max_replicas} replicas: --max-replicas lowered to that"
        );
    }
    let settings = PoolSettings {
        health: HealthSettings {
            interval: args.heartbeat_interval,
            timeout: args.heartbeat_timeout,
            failure_threshold: args.failure_threshold.max(1),
            check: args.health_check,
        },
        max_replicas,
        ring,
        balance_factor: args.balance_factor,
        protocol: args.upstream_protocol,
    };
    let proxy_settings = args.proxy.settings();

    // Bind first: a port in use is reported before any replica is started.
    let proxy_listener = ProxyListeners::bind(args.listen, args.proxy.workers())
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops_listener = TcpListener::bind(args.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {} (operations port)", args.ops_listen))?;

    let front = Front {
        proxy_listener,
        ops_listener,
        proxy_settings,
        prober: args.health_check.prober(),
        // The `pool` label of per-replica series: the Docker network names the pool.
        metrics: Arc::new(match args.runtime {
            RuntimeKind::Docker => Metrics::for_pool(&args.docker_network),
            RuntimeKind::Process => Metrics::new(),
        }),
        shutdown: Box::pin(shutdown),
    };
    if args.external.is_empty() {
        let names = args.initial_names().map_err(anyhow::Error::msg)?;
        match args.runtime {
            RuntimeKind::Process => {
                let runtime = Arc::new(ProcessRuntime::current_exe(args.replica_host)?);
                serve(runtime, names, Weights::new(), settings, front).await
            }
            RuntimeKind::Docker => {
                let runtime = Arc::new(
                    DockerRuntime::connect(DockerSettings {
                        image: args.replica_image.clone(),
                        network: args.docker_network.clone(),
                        name_prefix: args.docker_name_prefix.clone(),
                    })
                    .await?,
                );
                serve(runtime, names, Weights::new(), settings, front).await
            }
        }
    } else {
        if args.runtime != RuntimeKind::Process {
            anyhow::bail!("--replica fronts servers ringlb does not start: it takes no --runtime");
        }
        let runtime = Arc::new(ExternalRuntime::new(
            args.external.iter().map(|r| (r.name.clone(), r.addr)),
        ));
        let names = runtime.names();
        if names.len() != args.external.len() {
            anyhow::bail!("a name is given twice in --replica");
        }
        let weights: Weights = args
            .external
            .iter()
            .map(|r| (r.name.clone(), r.weight))
            .collect();
        admission::check_weights(&names, &weights, &settings.ring)
            .map_err(|e| anyhow::anyhow!("--replica weights: {e}"))?;
        serve(runtime, names, weights, settings, front).await
    }
}

/// Everything on the serving side that does not depend on the runtime.
struct Front {
    proxy_listener: ProxyListeners,
    ops_listener: TcpListener,
    proxy_settings: ProxySettings,
    /// Sends the heartbeats (`--health-check`).
    prober: Arc<dyn Prober>,
    metrics: Arc<Metrics>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
}

async fn serve<R: Runtime>(
    runtime: Arc<R>,
    names: Vec<ReplicaName>,
    weights: Weights,
    settings: PoolSettings,
    front: Front,
) -> anyhow::Result<()> {
    let Front {
        proxy_listener,
        ops_listener,
        proxy_settings,
        prober,
        metrics,
        shutdown,
    } = front;
    let ring_config = settings.ring.clone();
    let publisher = Arc::new(Publisher::new(&ring_config, metrics.clone()));
    let (pool, supervisor) = Supervisor::launch(
        runtime,
        names,
        weights,
        settings,
        prober,
        metrics.clone(),
        publisher.clone(),
    )
    .await
    .context("cannot start the replicas")?;

    let proxy_addr = proxy_listener.local_addr();
    let ops_addr = ops_listener.local_addr()?;
    announce(
        &publisher.view(),
        proxy_addr,
        ops_addr,
        &ring_config,
        &proxy_settings,
    );

    let serving = Serving::start(
        proxy_listener,
        ops_listener,
        publisher,
        Arc::new(pool.clone()),
        proxy_settings,
        metrics,
        crate::ops::Probes {
            alive: crate::ops::answers(),
            ready: crate::ops::Readiness::RingHasMembers,
        },
    )?;
    shutdown.await;
    serving.drain().await;
    pool.shutdown().await;
    let _ = supervisor.await;
    tracing::info!("stopped");
    Ok(())
}

/// Stdout gets a few lines a newcomer (and the end-to-end tests) can read.
fn announce(
    view: &PoolView,
    proxy_addr: SocketAddr,
    ops_addr: SocketAddr,
    ring: &RingConfig,
    proxy: &ProxySettings,
) {
    use crate::launch::{OPERATIONS_ON, PID, PROXY_LISTENING, READY, REPLICA, proxy_url};
    let proxy_url = proxy_url(proxy_addr, proxy.tls.is_some());
    println!("{PROXY_LISTENING}{proxy_url}");
    println!("{OPERATIONS_ON}{ops_addr} (/metrics, /healthz, /readyz, /ring)");
    let shape = match ring.algorithm {
        Algorithm::Slot => format!("{} slots, {} virtual nodes each", ring.slots, ring.vnodes),
        Algorithm::Point => format!("{} virtual nodes each", ring.vnodes),
        Algorithm::Maglev => format!("{} table entries", ring.slots),
        Algorithm::Rendezvous => "no table".to_owned(),
        Algorithm::RankTable => format!("{} table entries", ring.slots),
    };
    println!(
        "ringlb: ring {} with {} hash ({shape}); request key {}",
        ring.algorithm, ring.hash, proxy.key
    );
    for member in &view.members {
        let pid = member.pid.map(|p| format!("{PID}{p}")).unwrap_or_default();
        println!(
            "{REPLICA}{} on {}{pid} ({:?})",
            member.name, member.address, member.health
        );
    }
    println!("{READY}`curl {proxy_url}/home`; Ctrl-C stops everything");
}

/// `ringlb healthcheck`: the container health check of images without a shell or
/// curl (compose.yaml). GETs the URL; success only on a 2xx answer in time.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// What to ask: by default the operations port's readiness.
    #[arg(long, default_value = "http://127.0.0.1:5001/readyz")]
    pub url: String,

    /// How long the answer may take.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(args.timeout)
        .build()?;
    let response = http
        .get(&args.url)
        .send()
        .await
        .with_context(|| format!("GET {}", args.url))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "GET {} answered {status}", args.url);
    Ok(())
}
