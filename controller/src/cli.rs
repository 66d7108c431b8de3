//! Command line: `ringlb up`, `ringlb replica`. Every option of `up` has an
//! environment variable too, so containers are configured without flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::proxy::wire::HeadLimits;
use crate::proxy::{KeySource, ProxySettings};
use crate::replica_name::ReplicaName;
use crate::ring::{Algorithm, HashFn, Preset, RingConfig};

/// ringlb: an HTTP load balancer that routes every request through a
/// consistent-hash ring and keeps N replicas alive.
///
/// Start it with `ringlb up` (three local replicas on 127.0.0.1, proxy on :5000),
/// then try `curl localhost:5000/home` and `curl localhost:5000/rep`.
#[derive(Debug, Parser)]
#[command(name = "ringlb", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer with its replicas (local processes by default,
    /// or servers you already run with --replica).
    Up(Box<UpArgs>),
    /// Run one replica server (what `up` starts for each replica).
    Replica(ringlb_replica::ReplicaArgs),
    /// Print the ServerPool CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// Run the original project's experiments (load distribution, scalability, failure
    /// recovery, hash functions) and write charts and tables to --out.
    Analyze(Box<crate::analysis::AnalyzeArgs>),
    /// In a Kubernetes cluster: keep the pods of every ServerPool of the namespace
    /// alive, and serve one pool (--pool) through the proxy and operations port.
    Operator(Box<crate::operator::app::OperatorArgs>),
}

/// A replica that ringlb fronts but did not start: `NAME=HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalReplica {
    pub name: ReplicaName,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ExternalReplica {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, target) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=HOST:PORT"))?;
        let name = ReplicaName::parse(name).map_err(|e| format!("'{name}': {e}"))?;
        let addr = target
            .to_socket_addrs()
            .map_err(|e| format!("'{target}': {e}"))?
            .next()
            .ok_or_else(|| format!("'{target}' resolves to no address"))?;
        Ok(Self { name, addr })
    }
}

/// How the proxy forwards: shared by `ringlb up` and `ringlb operator`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Proxy worker threads, each with its own runtime and listener [default: one per core].
    #[arg(long, env = "RINGLB_WORKERS")]
    pub workers: Option<usize>,

    /// What each request is keyed on: random (a random 6-digit id per request),
    /// header:NAME, query:NAME, cookie:NAME, path or client-ip. A request without
    /// the key gets a random id.
    #[arg(long, env = "RINGLB_KEY", default_value = "random")]
    pub key: KeySource,

    /// Bearer token required by /add and /rm (unset: no token needed).
    #[arg(long, env = "RINGLB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Replicas tried per request when one cannot be reached (counting the first).
    #[arg(long, env = "RINGLB_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: usize,

    /// Time allowed to connect to a replica.
    #[arg(long, env = "RINGLB_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for a replica's response headers.
    #[arg(long, env = "RINGLB_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Time allowed between two reads of a replica's response body; when it passes,
    /// the client's connection is closed and the replica reported (nginx: proxy_read_timeout).
    #[arg(long, env = "RINGLB_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,

    /// Largest request body forwarded, in bytes.
    #[arg(long, env = "RINGLB_MAX_BODY", default_value_t = 10 * 1024 * 1024)]
    pub max_body: usize,

    /// Time a client has to send a whole request head, from its first byte (from the
    /// connection's start for the first request): then 408 and close (nginx:
    /// client_header_timeout).
    #[arg(long, env = "RINGLB_CLIENT_HEADER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_header_timeout: Duration,

    /// Time allowed between two reads of a request body: then 408 and close (nginx:
    /// client_body_timeout).
    #[arg(long, env = "RINGLB_CLIENT_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_body_timeout: Duration,

    /// Time an idle kept-alive client connection stays open (nginx: keepalive_timeout).
    #[arg(long, env = "RINGLB_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// Longest request line and header line, in bytes: longer gets 414 or 431 (nginx:
    /// large_client_header_buffers).
    #[arg(long, env = "RINGLB_MAX_HEADER_LINE", default_value_t = 8 * 1024, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_header_line: u32,

    /// Largest request head (request line and headers), in bytes: larger gets 431.
    #[arg(long, env = "RINGLB_MAX_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_header_bytes: u32,

    /// Most header lines in a request: more gets 431.
    #[arg(long, env = "RINGLB_MAX_HEADERS", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=crate::proxy::wire::MAX_HEADERS as i64))]
    pub max_headers: u16,

    /// Most client connections open at once in this process; one more is answered 503
    /// and closed [default: 10000, or less if the file descriptor limit is lower].
    #[arg(long, env = "RINGLB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
}

impl ProxyArgs {
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            key: self.key.clone(),
            max_attempts: self.max_attempts.max(1),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            read_timeout: self.read_timeout,
            client_header_timeout: self.client_header_timeout,
            client_body_timeout: self.client_body_timeout,
            keepalive_timeout: self.keepalive_timeout,
            max_body_bytes: self.max_body,
            head_limits: HeadLimits {
                line: self.max_header_line as usize,
                head: self.max_header_bytes as usize,
                headers: usize::from(self.max_headers),
            },
            max_connections: self
                .max_connections
                .unwrap_or_else(crate::proxy::workers::default_max_connections)
                .max(1),
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
        }
    }

    /// Proxy worker threads: as given, or one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(crate::proxy::workers::default_workers)
            .max(1)
    }
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
    #[arg(long = "replica", value_name = "NAME=HOST:PORT")]
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

    /// Time between heartbeats (e.g. 500ms, 2s).
    #[arg(long, env = "RINGLB_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long one heartbeat may take.
    #[arg(long, env = "RINGLB_HEARTBEAT_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Consecutive failed heartbeats after which a replica is replaced.
    #[arg(long, env = "RINGLB_FAILURE_THRESHOLD", default_value_t = 3)]
    pub failure_threshold: u32,

    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// Address local replicas listen on.
    #[arg(long, env = "RINGLB_REPLICA_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub replica_host: IpAddr,
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
        crate::pool::membership::names_to_add(&[], &[], n as u64, &self.hostnames, n)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(args: &[&str]) -> UpArgs {
        let cli = Cli::try_parse_from(["ringlb", "up"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Up(up) => *up,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_give_three_servers_and_the_default_ring() {
        let args = up(&[]);
        let names: Vec<String> = args
            .initial_names()
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["Server1", "Server2", "Server3"]);
        assert_eq!(args.ring_config().unwrap(), RingConfig::default());
    }

    #[test]
    fn hostnames_fill_first_and_overrides_apply() {
        let args = up(&[
            "--hostnames",
            "A,B",
            "-n",
            "4",
            "--preset",
            "course",
            "--vnodes",
            "5",
        ]);
        let names: Vec<String> = args
            .initial_names()
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["A", "B", "Server1", "Server2"]);
        let ring = args.ring_config().unwrap();
        assert_eq!(ring.vnodes, 5);
        assert_eq!(ring.slots, RingConfig::course().slots);
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let names = |args: &[&str]| up(args).initial_names().unwrap_err();
        assert_eq!(
            names(&["--hostnames", "A,B,C", "-n", "2"]),
            "3 hostnames given for 2 replicas: pass --replicas 3"
        );
        assert!(names(&["--hostnames", "A,A"]).contains("'A'"));
        assert!(names(&["--hostnames", "bad name"]).contains("'bad name'"));
        assert_eq!(names(&["-n", "0"]), "--replicas must be at least 1");
        let refused = |args: &[&str]| {
            let argv = ["ringlb", "up"].iter().chain(args);
            Cli::try_parse_from(argv).unwrap_err().to_string()
        };
        for (args, reason) in [
            (&["--replica", "x"][..], "'x' is not NAME=HOST:PORT"),
            (&["--key", "nope"], "nope"),
            (&["--algorithm", "nope"], "nope"),
            (&["--max-headers", "0"], "--max-headers"),
            (&["--max-header-line", "10"], "--max-header-line"),
            (
                &["--client-header-timeout", "soon"],
                "--client-header-timeout",
            ),
        ] {
            let error = refused(args);
            assert!(error.contains(reason), "{args:?}: {error}");
        }
    }

    #[test]
    fn external_replicas_parse() {
        let r: ExternalReplica = "web1=127.0.0.1:8080".parse().unwrap();
        assert_eq!(r.name.as_str(), "web1");
        assert_eq!(r.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!("web1=127.0.0.1".parse::<ExternalReplica>().is_err());
        assert!("bad name=127.0.0.1:1".parse::<ExternalReplica>().is_err());
    }
}
