//! Bounded loads end to end: requests for one hot key, held open by scripted replicas,
//! pile onto the key's replica without `--balance-factor` and spill over to its ring
//! neighbours, in failover order, with it.

use std::io::Write;
use std::time::{Duration, Instant};

use ringlb::ring::{Ring, RingConfig};
use ringlb_testkit::fake_replica::{FakeReplica, read_response};
use ringlb_testkit::{Ringlb, wait_until};
use serde_json::{Value, json};

const NAMES: [&str; 3] = ["A", "B", "C"];
const HELD: usize = 6;

/// Sends `HELD` requests for the key `hot`, one at a time, each once the one before has
/// reached a replica (so every routing decision sees the ones before it in flight), and
/// returns the replica index each landed on, and each replica's `in_flight` and
/// `load_bound` in `/ring` while they are held. Then lets them all answer.
async fn land_held_requests(balance_factor: Option<&str>) -> (Vec<usize>, Vec<(Value, Value)>) {
    let fakes: Vec<FakeReplica> = NAMES.iter().map(|_| FakeReplica::start()).collect();
    let mut args: Vec<String> = vec!["--key".into(), "query:id".into()];
    for (name, fake) in NAMES.iter().zip(&fakes) {
        args.extend(["--replica".into(), format!("{name}={}", fake.addr)]);
    }
    if let Some(factor) = balance_factor {
        args.extend(["--balance-factor".into(), factor.into()]);
    }
    let lb = Ringlb::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until("all three in the ring", Duration::from_secs(10), || async {
        let ring = lb.ring_json().await;
        let in_ring = ring["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["in_ring"] == true).count());
        if in_ring == NAMES.len() {
            Ok(())
        } else {
            Err(format!("{in_ring} in the ring"))
        }
    })
    .await;

    let mut landed = Vec::new();
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut stream = lb.connect_raw();
        stream
            .write_all(b"GET /hold?id=hot HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        held.push(stream);
        let deadline = Instant::now() + Duration::from_secs(10);
        let replica = loop {
            if let Some(index) = fakes
                .iter()
                .position(|f| f.held_request_arrived(Duration::from_millis(5)))
            {
                break index;
            }
            assert!(Instant::now() < deadline, "request reached no replica");
        };
        landed.push(replica);
    }
    // `/ring` shows each member's requests in flight and its cap while they are held.
    let ring = lb.ring_json().await;
    let loads: Vec<(Value, Value)> = NAMES
        .iter()
        .map(|name| {
            let member = ring["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == *name)
                .unwrap();
            (member["in_flight"].clone(), member["load_bound"].clone())
        })
        .collect();
    for fake in &fakes {
        for _ in 0..HELD {
            fake.release();
        }
    }
    for mut stream in held {
        let (status, _, body) = read_response(&mut stream, &mut Vec::new());
        assert_eq!((status, body.as_str()), (200, "Server: Fake"));
    }
    (landed, loads)
}

/// The replicas in the failover order of the key `hot`, as indices into `NAMES`.
fn failover_order() -> Vec<usize> {
    let ring = Ring::build(&NAMES, &RingConfig::default());
    ring.candidates(b"hot")
        .map(|i| NAMES.iter().position(|n| *n == ring.members()[i]).unwrap())
        .collect()
}

#[tokio::test]
async fn a_hot_key_stays_home_without_a_bound() {
    let home = failover_order()[0];
    let (landed, loads) = land_held_requests(None).await;
    assert_eq!(landed, vec![home; HELD]);
    // Not counted without a bound.
    assert_eq!(loads, vec![(Value::Null, Value::Null); NAMES.len()]);
}

#[tokio::test]
async fn a_hot_key_spills_over_in_failover_order_under_a_bound() {
    let order = failover_order();
    // c = 1 over 3 equal replicas: the cap is ⌈(L + 1) / 3⌉ with L requests in flight.
    // L = 0: cap 1, home is empty → home. L = 1: cap 1, home is full → the second
    // candidate. L = 2: cap 1 → the third. L = 3: cap 2 → home again; and so on.
    let expected: Vec<usize> = (0..HELD).map(|i| order[i % 3]).collect();
    let (landed, loads) = land_held_requests(Some("1")).await;
    assert_eq!(landed, expected);
    // Two held on each; with L = 6 the cap is ⌈7 / 3⌉ = 3.
    assert_eq!(loads, vec![(json!(2), json!(3)); NAMES.len()]);
}
