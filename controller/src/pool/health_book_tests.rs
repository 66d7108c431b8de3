//! The health book on its own: tables of answers and what they make of a replica,
//! and the moments it keeps, on tokio's paused clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::testing::FakeProber;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn rules(startup_grace_ms: u64, failure_spacing_ms: u64) -> Rules {
    Rules {
        failure_threshold: 3,
        startup_grace: ms(startup_grace_ms),
        failure_spacing: ms(failure_spacing_ms),
    }
}

/// One answer: when (ms after the replica started), whether it was good, and what
/// the book should make of it: counted or not, the health after.
struct Step {
    at: u64,
    ok: bool,
    counted: bool,
    after: Health,
}

const fn step(at: u64, ok: bool, counted: bool, after: Health) -> Step {
    Step {
        at,
        ok,
        counted,
        after,
    }
}

use Health::{Failed, Healthy, Starting};

#[test]
fn answers_count_by_the_threshold_the_startup_grace_and_the_spacing() {
    let cases: &[(&str, Rules, &[Step])] = &[
        (
            "a healthy replica keeps serving through two misses and fails at the third",
            rules(0, 0),
            &[
                step(0, true, true, Healthy),
                step(1000, false, true, Healthy),
                step(2000, false, true, Healthy),
                step(3000, false, true, Failed),
            ],
        ),
        (
            "a success resets the count",
            rules(0, 0),
            &[
                step(0, true, true, Healthy),
                step(1000, false, true, Healthy),
                step(2000, false, true, Healthy),
                step(3000, true, true, Healthy),
                step(4000, false, true, Healthy),
                step(5000, false, true, Healthy),
            ],
        ),
        (
            "without a grace, a replica that never answers fails at the threshold",
            rules(0, 0),
            &[
                step(0, false, true, Starting),
                step(1000, false, true, Starting),
                step(2000, false, true, Failed),
            ],
        ),
        (
            "within its grace a new replica's misses do not count; after it they do",
            rules(30_000, 0),
            &[
                step(1000, false, false, Starting),
                step(29_999, false, false, Starting),
                step(30_000, false, true, Starting),
                step(31_000, false, true, Starting),
                step(32_000, false, true, Failed),
            ],
        ),
        (
            "the grace is for a replica that never answered: once it has, misses count",
            rules(30_000, 0),
            &[
                step(1000, true, true, Healthy),
                step(2000, false, true, Healthy),
                step(3000, false, true, Healthy),
                step(4000, false, true, Failed),
            ],
        ),
        (
            "misses closer together than the spacing count once",
            rules(0, 500),
            &[
                step(0, true, true, Healthy),
                step(1000, false, true, Healthy),
                step(1100, false, false, Healthy),
                step(1499, false, false, Healthy),
                step(1500, false, true, Healthy),
                step(2000, false, true, Failed),
            ],
        ),
        (
            "a success is never spaced, and does not reset the spacing",
            rules(0, 500),
            &[
                step(0, false, true, Starting),
                step(100, true, true, Healthy),
                step(200, false, false, Healthy),
                step(600, false, true, Healthy),
            ],
        ),
        (
            "a failed replica is back at its first success",
            rules(0, 0),
            &[
                step(0, false, true, Starting),
                step(1000, false, true, Starting),
                step(2000, false, true, Failed),
                step(3000, false, true, Failed),
                step(4000, true, true, Healthy),
            ],
        ),
    ];
    let start = Instant::now();
    for (name, rules, steps) in cases {
        let mut book = HealthBook::new(*rules);
        book.insert("r", Entry::starting((), Some(Since::at(start))));
        for (i, s) in steps.iter().enumerate() {
            let recorded = book.record([("r", s.ok)], start + ms(s.at));
            assert_eq!(recorded.len() == 1, s.counted, "{name}: step {i}");
            assert_eq!(
                book.get(&"r").unwrap().health(),
                s.after,
                "{name}: step {i}"
            );
        }
    }
}

#[test]
fn the_book_reports_the_answer_that_failed_a_replica_and_the_one_that_brought_it_back() {
    let start = Instant::now();
    let mut book = HealthBook::new(rules(0, 0));
    book.insert("r", Entry::starting((), Some(Since::at(start))));
    let failed_now = |book: &mut HealthBook<&str, ()>, ok, at| {
        let recorded = book.record([("r", ok)], start + ms(at));
        (recorded[0].failed_now(), recorded[0].back_in_service())
    };
    assert_eq!(failed_now(&mut book, true, 0), (false, false));
    assert_eq!(failed_now(&mut book, false, 1), (false, false));
    assert_eq!(failed_now(&mut book, false, 2), (false, false));
    assert_eq!(failed_now(&mut book, false, 3), (true, false));
    assert_eq!(
        failed_now(&mut book, false, 4),
        (false, false),
        "already failed"
    );
    assert_eq!(failed_now(&mut book, true, 5), (false, true));
    // A suspect replica (a proxy could not reach it) is back at its next success.
    book.get_mut(&"r").unwrap().mark_suspect(start + ms(6));
    assert_eq!(failed_now(&mut book, true, 7), (false, true));
    assert_eq!(
        failed_now(&mut book, true, 8),
        (false, false),
        "was healthy"
    );
}

#[test]
fn answers_for_replicas_the_book_no_longer_has_are_dropped() {
    let now = Instant::now();
    let mut book = HealthBook::new(rules(0, 0));
    book.insert("a", Entry::starting((), Some(Since::at(now))));
    let recorded = book.record([("gone", true), ("a", true)], now);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].key, "a");
    assert!(book.get(&"gone").is_none());
}

#[test]
fn the_replicas_that_changed_are_those_whose_health_differs_and_those_that_came_or_went() {
    let now = Instant::now();
    let starting = || Entry::starting((), Some(Since::at(now)));
    let mut book: HealthBook<&str, ()> = HealthBook::new(rules(0, 0));
    book.insert("a", starting());
    book.insert("b", starting());
    let before = book.snapshot();
    assert!(book.changed_since(&before).is_empty());

    // A miss below the threshold changes nothing; a success does.
    book.record([("a", false), ("b", true)], now);
    assert_eq!(book.changed_since(&before), vec!["b"]);

    // One goes and another comes: the same count, two changes.
    let before = book.snapshot();
    book.remove(&"a");
    book.insert("c", starting());
    let mut changed = book.changed_since(&before);
    changed.sort();
    assert_eq!(changed, vec!["a", "c"]);

    // An exit is a change.
    let before = book.snapshot();
    book.get_mut(&"b").unwrap().mark_exited(now);
    assert_eq!(book.changed_since(&before), vec!["b"]);
}

#[tokio::test(start_paused = true)]
async fn a_replica_serves_from_its_first_good_heartbeat_until_it_stops_being_routable() {
    let mut book = HealthBook::new(rules(0, 0));
    book.insert("r", Entry::starting((), Some(Since::at(Instant::now()))));
    let served = |book: &HealthBook<&str, ()>| book.get(&"r").unwrap().served_for(Instant::now());
    tokio::time::sleep(ms(1000)).await;
    book.record([("r", false)], Instant::now());
    assert_eq!(served(&book), None, "never served");

    book.record([("r", true)], Instant::now());
    tokio::time::sleep(ms(5000)).await;
    assert_eq!(served(&book), Some(ms(5000)));

    // Misses below the threshold: still serving.
    book.record([("r", false)], Instant::now());
    book.record([("r", false)], Instant::now());
    tokio::time::sleep(ms(1000)).await;
    assert_eq!(served(&book), Some(ms(6000)));

    // It fails: how long it served stays as it was.
    book.record([("r", false)], Instant::now());
    tokio::time::sleep(ms(10_000)).await;
    assert_eq!(served(&book), Some(ms(6000)));

    // Back: a new stretch of serving; a request failure ends it too.
    book.record([("r", true)], Instant::now());
    tokio::time::sleep(ms(2000)).await;
    assert_eq!(served(&book), Some(ms(2000)));
    book.get_mut(&"r").unwrap().mark_suspect(Instant::now());
    tokio::time::sleep(ms(2000)).await;
    assert_eq!(served(&book), Some(ms(2000)));
}

#[tokio::test(start_paused = true)]
async fn a_replica_found_serving_keeps_its_head_start_and_gets_no_grace() {
    let now = Instant::now();
    let mut book = HealthBook::new(Rules {
        failure_threshold: 1,
        ..rules(30_000, 0)
    });
    book.insert(
        "r",
        Entry::found_serving(
            (),
            Some(Since::earlier(now, ms(12_000))),
            Since::earlier(now, ms(10_000)),
        ),
    );
    let entry = book.get(&"r").unwrap();
    assert_eq!(entry.health(), Healthy);
    assert_eq!(entry.started().unwrap().elapsed(now), ms(12_000));
    tokio::time::sleep(ms(2000)).await;
    assert_eq!(
        book.get(&"r").unwrap().served_for(Instant::now()),
        Some(ms(12_000))
    );
    // Well within the grace of a new replica, its first miss fails it.
    book.record([("r", false)], Instant::now());
    assert_eq!(book.get(&"r").unwrap().health(), Failed);

    // One that exited before it was seen keeps how long it ran.
    let exited = Entry::starting((), None).having_served(Some(ms(3000)));
    assert_eq!(exited.served_for(Instant::now()), Some(ms(3000)));
}

#[tokio::test(start_paused = true)]
async fn the_grace_of_a_replica_that_does_not_run_yet_begins_when_it_starts() {
    let mut book = HealthBook::new(rules(30_000, 0));
    book.insert("r", Entry::starting((), None));
    // Not running for a long while: its misses never count.
    tokio::time::sleep(ms(600_000)).await;
    assert!(book.record([("r", false)], Instant::now()).is_empty());

    book.get_mut(&"r").unwrap().start(Instant::now());
    tokio::time::sleep(ms(29_000)).await;
    // Starting again does not move the grace.
    book.get_mut(&"r").unwrap().start(Instant::now());
    assert!(book.record([("r", false)], Instant::now()).is_empty());
    tokio::time::sleep(ms(1000)).await;
    assert_eq!(book.record([("r", false)], Instant::now()).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn probe_all_sends_one_heartbeat_to_each_target_and_answers_in_their_order() {
    let prober = Arc::new(FakeProber::answering(true));
    let down: SocketAddr = "127.0.0.1:2".parse().unwrap();
    prober.set(down, false);
    let targets = [
        ("a", "127.0.0.1:1".parse().unwrap()),
        ("b", down),
        ("c", "127.0.0.1:3".parse().unwrap()),
    ];
    let answers = probe_all(&*prober, targets, ms(500)).await;
    assert_eq!(answers, vec![("a", true), ("b", false), ("c", true)]);
    assert_eq!(prober.probe_count(), 3);
}
