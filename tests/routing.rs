//! End-to-end tests of routing: how requests spread over the replicas with the
//! default ring and with the course preset, sticky keys, and fronting replicas that
//! ringlb did not start (`--replica NAME=HOST:PORT`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use ringlb_testkit::{ExternalReplica, FAST_HEARTBEATS, Ringlb, home_with, spread, wait_until};

const REQUESTS: usize = 10_000;
const IN_FLIGHT: usize = 32;

fn print_distribution(label: &str, counts: &BTreeMap<String, usize>, elapsed: Duration) {
    let total: usize = counts.values().sum();
    println!("{label}: {total} requests in {elapsed:.2?}");
    for (name, count) in counts {
        println!(
            "  {name:<10} {count:>6}  {:>5.1}%",
            100.0 * *count as f64 / total as f64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_ring_spreads_10000_requests_evenly_over_3_replicas() {
    let lb = Ringlb::start(&[]);
    let started = Instant::now();
    let (counts, failures) = spread(&lb.http, &lb.proxy_url("/home"), REQUESTS, IN_FLIGHT).await;
    print_distribution("default ring (random key)", &counts, started.elapsed());

    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} requests failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(counts.values().sum::<usize>(), REQUESTS);
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Server1", "Server2", "Server3"],
        "every replica gets traffic: {counts:?}"
    );
    // The bound: the default ring is balanced, each replica owns ~1/3 of the key
    // space (/ring reports the shares). With random keys a replica's count is
    // binomial(10000, 1/3): standard deviation sqrt(10000·1/3·2/3) ≈ 47, i.e. about
    // ±1.4% of its expected 3333. max/mean ≤ 1.10 leaves room for ~7 standard
    // deviations plus a small imbalance of the ring itself; a skewed ring (like the
    // course preset below, ~29×) fails it at once.
    let mean = REQUESTS as f64 / 3.0;
    let max = *counts.values().max().unwrap() as f64;
    println!("  max/mean = {:.3}", max / mean);
    assert!(
        max / mean <= 1.10,
        "max/mean = {:.3} > 1.10: {counts:?}",
        max / mean
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn course_preset_reproduces_the_known_skew() {
    let lb = Ringlb::start(&["--preset", "course"]);
    let started = Instant::now();
    let (counts, failures) = spread(&lb.http, &lb.proxy_url("/home"), REQUESTS, IN_FLIGHT).await;
    print_distribution(
        "course preset (512 slots, 9 vnodes, quadratic hashes)",
        &counts,
        started.elapsed(),
    );

    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} requests failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(counts.values().sum::<usize>(), REQUESTS);
    // The course's flaw, documented: with H(i) = i + 2i² + 17 and
    // Φ(i, j) = i + j + 2j² + 25 (mod 512), the virtual servers cluster and one
    // replica owns almost the whole ring.
    let (busiest, max) = counts.iter().max_by_key(|(_, c)| **c).unwrap();
    let share = *max as f64 / REQUESTS as f64;
    println!("  busiest: {busiest} with {:.1}%", 100.0 * share);
    assert!(
        share > 0.80,
        "the course preset should be heavily skewed, busiest has {:.1}%: {counts:?}",
        100.0 * share
    );
    let ring = lb.ring_json().await;
    assert_eq!(ring["config"]["slots"], 512, "{ring}");
    assert_eq!(ring["config"]["vnodes"], 9, "{ring}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_key_keeps_each_user_on_one_replica() {
    let lb = Ringlb::start(&["--key", "header:X-User"]);
    let url = lb.proxy_url("/home");
    let mut placement: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // 60 users, 5 requests each, interleaved so that a user's requests are spread
    // over time and over the client's connections.
    for round in 0..5 {
        for user in 0..60 {
            let user = format!("user-{user}");
            let replica = home_with(&lb.http, &url, &[("X-User", &user)])
                .await
                .unwrap_or_else(|e| panic!("round {round}, {user}: {e}"));
            placement.entry(user).or_default().insert(replica);
        }
    }
    let moved: Vec<_> = placement.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        moved.is_empty(),
        "users that reached more than one replica: {moved:?}"
    );
    let used: BTreeSet<&String> = placement.values().flatten().collect();
    println!("60 users over {used:?}");
    // 60 users on 3 equal shares all landing on one replica: probability 3·3^-60.
    assert!(used.len() > 1, "every user went to {used:?}");

    // Without the header, the key falls back to a random id: requests spread.
    let (counts, failures) = spread(&lb.http, &url, 300, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(counts.len(), 3, "requests without X-User: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_replicas_are_fronted_and_a_dead_one_leaves_the_ring() {
    let mut a = ExternalReplica::start("ExtA");
    let b = ExternalReplica::start("ExtB");
    let lb = Ringlb::start(
        &[
            &FAST_HEARTBEATS[..],
            &[
                "--replica",
                &format!("ExtA={}", a.addr),
                "--replica",
                &format!("ExtB={}", b.addr),
            ][..],
        ]
        .concat(),
    );
    let url = lb.proxy_url("/home");
    assert_eq!(lb.rep().await, (2, vec!["ExtA".into(), "ExtB".into()]));
    let ring = lb.ring_json().await;
    for member in ring["members"].as_array().unwrap() {
        assert!(member["pid"].is_null(), "ringlb started nothing: {member}");
    }

    let (counts, failures) = spread(&lb.http, &url, 400, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ExtA", "ExtB"],
        "{counts:?}"
    );

    // ringlb cannot start replicas here: /add is refused, and changes nothing.
    for body in [r#"{"n": 1}"#, r#"{"n": 1, "hostnames": ["ExtC"]}"#] {
        let (status, answer) = lb.request(Method::POST, "/add", Some(body), None).await;
        assert_eq!(status, 409, "POST /add {body}: {answer}");
        assert_eq!(answer["status"], "failure", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with("<Error> "),
            "{answer}"
        );
        assert_eq!(lb.rep().await, (2, vec!["ExtA".into(), "ExtB".into()]));
    }

    // ExtA dies. Requests right away still succeed (failover to ExtB) ...
    a.kill();
    let (counts, failures) = spread(&lb.http, &url, 200, 8).await;
    assert!(failures.is_empty(), "after killing ExtA: {failures:?}");
    assert_eq!(counts.values().sum::<usize>(), 200);
    // ... it leaves the ring ...
    wait_until(
        "ExtA to leave the ring",
        Duration::from_secs(10),
        || async {
            let ring = lb.ring_json().await;
            let a = ring["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "ExtA")
                .cloned();
            match a {
                Some(m) if m["in_ring"] == false && m["health"] != "healthy" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // ... and everything goes to ExtB.
    let (counts, failures) = spread(&lb.http, &url, 200, 8).await;
    assert!(failures.is_empty(), "with ExtA out: {failures:?}");
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("ExtB".to_owned(), 200)]
    );
    // An external replica is not replaced: it stays desired, to rejoin when healthy.
    assert_eq!(lb.rep().await, (2, vec!["ExtA".into(), "ExtB".into()]));
    drop(lb);
    drop(b);
}
