//! Measures every ring algorithm × hash function for balance, disruption and lookup speed
//! over the default request-key space (six-digit ids), and prints one table.
//!
//! Run: `cargo run --release --example ring_report`
//!
//! - balance: max/mean of `Ring::shares()` (1.0 is perfect): the worst over N = 2..=10,
//!   and N = 100.
//! - add / remove: fraction of keys that change member when one member joins N (ideal
//!   1/(N+1)) or leaves N (ideal 1/N; averaged over removing the first, middle and last
//!   member), divided by the ideal (1.0 is perfect), at N = 10 and N = 100.
//! - lookup: nanoseconds per `Ring::lookup` of a six-digit id (hashing included), N = 10
//!   and N = 100.
//! - build: milliseconds per `Ring::build` of 100 members (paid on every membership change).

use std::hint::black_box;
use std::time::Instant;

use ringlb::ring::{Algorithm, HashFn, KEY_COUNT, Preset, Ring, RingConfig, for_each_default_key};

fn servers(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("Server{i}")).collect()
}

fn max_over_mean(ring: &Ring) -> f64 {
    let shares = ring.shares();
    shares.iter().copied().fold(0.0, f64::max) * shares.len() as f64
}

/// Fraction of the key space whose member (by name) differs between two rings.
fn moved_fraction(before: &Ring, after: &Ring) -> f64 {
    let mut moved = 0usize;
    for_each_default_key(|key| {
        let old = &before.members()[before.lookup(key).expect("non-empty")];
        let new = &after.members()[after.lookup(key).expect("non-empty")];
        moved += usize::from(old != new);
    });
    moved as f64 / KEY_COUNT as f64
}

/// Moved fraction over the ideal when Server{N+1} joins N servers.
fn add_ratio(config: &RingConfig, n: usize) -> f64 {
    let before = Ring::build(&servers(n), config);
    let after = Ring::build(&servers(n + 1), config);
    moved_fraction(&before, &after) * (n + 1) as f64
}

/// Moved fraction over the ideal when one of N servers leaves (first, middle, last averaged).
fn remove_ratio(config: &RingConfig, n: usize) -> f64 {
    let all = servers(n);
    let before = Ring::build(&all, config);
    let leaving = [0, n / 2, n - 1];
    let total: f64 = leaving
        .iter()
        .map(|&gone| {
            let rest: Vec<&String> = all
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != gone)
                .map(|(_, m)| m)
                .collect();
            moved_fraction(&before, &Ring::build(&rest, config)) * n as f64
        })
        .sum();
    total / leaving.len() as f64
}

fn lookup_ns(config: &RingConfig, n: usize) -> f64 {
    let ring = Ring::build(&servers(n), config);
    // Pseudo-random six-digit ids (a 64-bit LCG), formatted up front.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let keys: Vec<[u8; 6]> = (0..1 << 16)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let id = 100_000 + (state >> 33) % 900_000;
            id.to_string().into_bytes().try_into().expect("six digits")
        })
        .collect();
    let rounds = 30;
    let start = Instant::now();
    let mut sink = 0usize;
    for _ in 0..rounds {
        for key in &keys {
            sink = sink.wrapping_add(ring.lookup(black_box(key)).expect("non-empty"));
        }
    }
    black_box(sink);
    start.elapsed().as_nanos() as f64 / (rounds * keys.len()) as f64
}

fn build_ms(config: &RingConfig) -> f64 {
    let members = servers(100);
    let rounds = 5;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(Ring::build(&members, config));
    }
    start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds)
}

fn main() {
    use Algorithm::*;
    use HashFn::*;
    let configs = [
        RingConfig::preset(Preset::Course),
        RingConfig {
            algorithm: Slot,
            hash: Xxh3,
            slots: 512,
            vnodes: 9,
        },
        RingConfig {
            algorithm: Slot,
            hash: Xxh3,
            slots: 65_536,
            vnodes: 160,
        },
        RingConfig {
            algorithm: Point,
            hash: Quadratic,
            slots: 0,
            vnodes: 160,
        },
        RingConfig {
            algorithm: Point,
            hash: Xxh3,
            slots: 0,
            vnodes: 160,
        },
        RingConfig {
            algorithm: Point,
            hash: Murmur3,
            slots: 0,
            vnodes: 160,
        },
        RingConfig {
            algorithm: Point,
            hash: Xxh3,
            slots: 0,
            vnodes: 1000,
        },
        RingConfig {
            algorithm: Maglev,
            hash: Quadratic,
            slots: 65_537,
            vnodes: 0,
        },
        RingConfig::preset(Preset::Default),
        RingConfig {
            algorithm: Maglev,
            hash: Murmur3,
            slots: 65_537,
            vnodes: 0,
        },
        RingConfig {
            algorithm: Maglev,
            hash: Xxh3,
            slots: 262_147,
            vnodes: 0,
        },
        RingConfig {
            algorithm: Maglev,
            hash: Xxh3,
            slots: 655_373,
            vnodes: 0,
        },
        RingConfig {
            algorithm: Rendezvous,
            hash: Quadratic,
            slots: 0,
            vnodes: 0,
        },
        RingConfig {
            algorithm: Rendezvous,
            hash: Xxh3,
            slots: 0,
            vnodes: 0,
        },
        RingConfig {
            algorithm: Rendezvous,
            hash: Murmur3,
            slots: 0,
            vnodes: 0,
        },
    ];
    let default = RingConfig::default();
    println!(
        "| algorithm | hash | slots | vnodes | max/mean N=2..10 (worst) | max/mean N=100 | add N=10 | remove N=10 | add N=100 | remove N=100 | lookup ns N=10 | lookup ns N=100 | build ms N=100 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for config in configs {
        let worst_small = (2..=10)
            .map(|n| max_over_mean(&Ring::build(&servers(n), &config)))
            .fold(0.0, f64::max);
        let large = max_over_mean(&Ring::build(&servers(100), &config));
        let marker = if config == default { " (default)" } else { "" };
        println!(
            "| {}{marker} | {} | {} | {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} |",
            config.algorithm,
            config.hash,
            config.slots,
            config.vnodes,
            worst_small,
            large,
            add_ratio(&config, 10),
            remove_ratio(&config, 10),
            add_ratio(&config, 100),
            remove_ratio(&config, 100),
            lookup_ns(&config, 10),
            lookup_ns(&config, 100),
            build_ms(&config),
        );
    }
}
