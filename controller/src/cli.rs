//! Command line: `ringlb up`, `ringlb replica`. Every option of `up` has an
//! environment variable too, so containers are configured without flags.

use clap::{Parser, Subcommand};

use crate::app::UpArgs;

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
    /// containers with --runtime docker, or servers you already run with --replica).
    Up(Box<UpArgs>),
    /// Run one replica server (what `up` starts for each replica).
    Replica(ringlb_replica::ReplicaArgs),
    /// Print the ServerPool CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// In a Kubernetes cluster: keep the pods of every ServerPool of the namespace
    /// alive (the replica that holds the leader lease does; the others stand by).
    Operator(Box<crate::operator::app::OperatorArgs>),
    /// In a Kubernetes cluster: serve one ServerPool (--pool) through the ring, from
    /// its watched pods; run as many replicas as you like.
    Proxy(Box<crate::cluster_proxy::PoolProxyArgs>),
    /// Exit 0 if --url (default: the operations port's /readyz) answers 2xx: the
    /// health check of a container image that has no shell or curl.
    Healthcheck(crate::app::HealthcheckArgs),
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::app::ExternalReplica;
    use crate::ring::RingConfig;

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
        // The value parser's own reason, not clap's frame around it ("invalid value
        // 'x' for '--flag'"), which every refusal has.
        let refused = |args: &[&str]| {
            let argv = ["ringlb", "up"].iter().chain(args);
            let error = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}: {error}"
            );
            std::error::Error::source(&error)
                .unwrap_or_else(|| panic!("{args:?}: no reason of its own: {error}"))
                .to_string()
        };
        for (args, reason) in [
            (
                &["--replica", "x"][..],
                "'x' is not NAME=HOST:PORT[@WEIGHT]",
            ),
            (
                &["--key", "nope"],
                "unknown key source 'nope': use random, path, client-ip, header:NAME, \
                 query:NAME or cookie:NAME",
            ),
            (
                &["--algorithm", "nope"],
                "unknown algorithm 'nope': valid values are slot, point, maglev, \
                 rendezvous, rank-table",
            ),
            (
                &["--balance-factor", "0.5"],
                "the balance factor must be a number from 1 to 100, not 0.5",
            ),
            (
                &["--balance-factor", "lots"],
                "'lots' is not a balance factor: give a number such as 1.25",
            ),
            (&["--max-headers", "0"], "0 is not in 1..=256"),
            (
                &["--max-header-line", "10"],
                "10 is not in 256..=4294967295",
            ),
            (&["--client-header-timeout", "soon"], "expected number at 0"),
        ] {
            assert_eq!(refused(args), reason, "{args:?}");
        }
    }

    #[test]
    fn external_replicas_parse() {
        let r: ExternalReplica = "web1=127.0.0.1:8080".parse().unwrap();
        assert_eq!(r.name.as_str(), "web1");
        assert_eq!(r.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(r.weight, 1);
        let weighted: ExternalReplica = "web2=127.0.0.1:8081@3".parse().unwrap();
        assert_eq!((weighted.addr.port(), weighted.weight), (8081, 3));
        for bad in [
            "web2=127.0.0.1:8081@0",
            "web2=127.0.0.1:8081@257",
            "web2=127.0.0.1:8081@x",
        ] {
            let error = bad.parse::<ExternalReplica>().unwrap_err();
            assert!(error.contains("integer from 1 to 256"), "{bad}: {error}");
        }
        assert!("web1=127.0.0.1".parse::<ExternalReplica>().is_err());
        assert!("bad name=127.0.0.1:1".parse::<ExternalReplica>().is_err());
    }
}
