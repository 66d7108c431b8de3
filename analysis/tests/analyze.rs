//! Smoke test of `ringlb-analyze`: the real binary, a few hundred requests, a small
//! subset of the experiments, into a temporary folder. Checks that the charts and
//! tables exist, that the counts add up to the requests sent, and that no process of
//! the deployments it started is left.
//!
//! Its deployments run the `ringlb` binary beside it: `cargo test` at the workspace
//! root builds that one too, and `ringlb-analyze` builds it if it is missing.

use std::path::Path;
use std::process::Command;

use ringlb_testkit::TempDir;
use serde_json::Value;

const ANALYZE: &str = env!("CARGO_BIN_EXE_ringlb-analyze");

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 1000,
        "{} is {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
}

/// True while `pid` exists (a zombie counts).
fn process_exists(pid: u64) -> bool {
    ringlb::launch::process_exists(pid as u32)
}

#[test]
fn analyze_writes_charts_and_tables_whose_counts_add_up_and_leaves_no_process() {
    let out = TempDir::new("analyze");
    let requests = 300u64;
    let output = Command::new(ANALYZE)
        .args([
            "--out",
            out.0.to_str().unwrap(),
            "--requests",
            &requests.to_string(),
            "--concurrency",
            "8",
            "--experiments",
            "a1,a2,a3",
            "--sizes",
            "2,3",
            "--kills",
            "1",
        ])
        .env_remove("RINGLB_ADMIN_TOKEN")
        .output()
        .expect("run ringlb-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ringlb-analyze failed:\n{stderr}");

    for chart in ["a1_distribution.png", "a2_scalability.png"] {
        assert_png(&out.0.join(chart));
    }
    assert!(
        !out.0.join("a4_comparison.png").exists(),
        "A4 was not asked for"
    );
    let md = std::fs::read_to_string(out.0.join("results.md")).unwrap();
    for heading in ["## A1", "## A2", "## A3"] {
        assert!(md.contains(heading), "results.md has no {heading}:\n{md}");
    }
    assert!(md.contains("(a1_distribution.png)") && md.contains("(a2_scalability.png)"));

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("results.json")).unwrap())
            .unwrap();
    let measurements = json["measurements"].as_array().unwrap();
    // default and course, at N = 2 and 3 (A1 is the N = 3 point).
    let mut seen: Vec<(String, u64)> = measurements
        .iter()
        .map(|m| {
            (
                m["config"].as_str().unwrap().to_owned(),
                m["replicas"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("course".to_owned(), 2),
            ("course".to_owned(), 3),
            ("default".to_owned(), 2),
            ("default".to_owned(), 3)
        ]
    );
    for m in measurements {
        let counts = m["counts"].as_object().unwrap();
        let served: u64 = counts.values().map(|c| c.as_u64().unwrap()).sum();
        let lost = m["failed"].as_u64().unwrap() + m["unexpected"].as_u64().unwrap();
        assert_eq!(m["requests"], requests);
        assert_eq!(served + lost, requests, "{m}");
        assert_eq!(lost, 0, "no request may fail on a healthy deployment: {m}");
        assert_eq!(counts.len() as u64, m["replicas"].as_u64().unwrap(), "{m}");
        let summary = &m["summary"];
        assert_eq!(summary["replicas"], m["replicas"]);
        assert!(summary["max_over_mean"].as_f64().unwrap() >= 1.0);
        let shares: f64 = m["key_space_share"]
            .as_object()
            .unwrap()
            .values()
            .map(|s| s.as_f64().unwrap())
            .sum();
        assert!(
            (shares - 1.0).abs() < 1e-6,
            "key-space shares add up to {shares}"
        );
    }

    let recovery = &json["recovery"];
    let endpoints = recovery["endpoints"].as_array().unwrap();
    assert!(endpoints.len() >= 8);
    for check in endpoints {
        assert_eq!(check["passed"], true, "{check}");
    }
    let kills = recovery["kills"].as_array().unwrap();
    assert_eq!(kills.len(), 1, "{recovery}");
    let kill = &kills[0];
    assert!(
        kill["replacement"]
            .as_str()
            .unwrap()
            .starts_with("emergency_"),
        "{kill}"
    );
    assert!(kill["serving_again_ms"].as_f64().is_some(), "{kill}");

    // Every replica it started, the killed one included, is gone: the deployments were
    // stopped and reaped. (Their load balancers were its children and are reaped too.)
    assert!(!process_exists(kill["pid"].as_u64().unwrap()));
    let pids: Vec<u64> = json["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| {
            let own = d["pid"].as_u64();
            d["replica_pids"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_u64)
                .chain(own)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(pids.len() >= 4 * 3 + 4, "pids recorded: {pids:?}");
    let alive: Vec<u64> = pids.into_iter().filter(|p| process_exists(*p)).collect();
    assert!(alive.is_empty(), "processes left running: {alive:?}");
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    for (args, expected) in [
        (vec!["--requests", "0"], "must be at least 1"),
        (vec!["--concurrency", "0"], "must be at least 1"),
        (vec!["--sizes", "2,0"], "choose 1 to 100"),
        (vec!["--experiments", "a9"], "a9"),
        (vec!["--configs", "nope"], "nope"),
        (vec!["--target", "https://127.0.0.1:1"], "only http://"),
        (vec!["--target", "not a url"], "not a URL"),
        (vec!["--ops-target", "http://127.0.0.1:1"], "--target"),
    ] {
        let output = Command::new(ANALYZE)
            .args(&args)
            .args([
                "--out",
                std::env::temp_dir().join("ringlb-never").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a5_keeps_every_replica_within_its_bound_and_off_serves_every_request_at_home() {
    let out = TempDir::new("analyze-a5");
    let (requests, concurrency) = (400u64, 32u64);
    let output = Command::new(ANALYZE)
        .args(["--out", out.0.to_str().unwrap(), "--experiments", "a5"])
        .args(["--requests", &requests.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .output()
        .expect("run ringlb-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ringlb-analyze failed:\n{stderr}");
    assert_png(&out.0.join("a5_bounded_loads.png"));
    let md = std::fs::read_to_string(out.0.join("results.md")).unwrap();
    assert!(md.contains("## A5") && md.contains("(a5_bounded_loads.png)"));

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("results.json")).unwrap())
            .unwrap();
    let runs = json["bounded"].as_array().expect("A5 runs");
    let factors: Vec<Option<f64>> = runs.iter().map(|r| r["balance_factor"].as_f64()).collect();
    assert_eq!(factors, [None, Some(1.5), Some(1.25), Some(1.1)]);
    for run in runs {
        let replicas = run["replicas"].as_array().unwrap();
        let served: u64 = replicas
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(
            (served, run["failed"].as_u64()),
            (requests, Some(0)),
            "{run}"
        );
        let Some(c) = run["balance_factor"].as_f64() else {
            // Off: the ring's owner of each id serves it.
            assert_eq!(run["home_share"], 1.0, "{run}");
            continue;
        };
        // At most `concurrency` in flight, so no replica's cap is above
        // ⌈c · (concurrency + 1) / 5⌉; ringlb's proxy workers (one per core) may each
        // pass the check at the same moment: one request over the cap per worker.
        let cap = (c * (concurrency + 1) as f64 / replicas.len() as f64).ceil() as u64;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        for replica in replicas {
            let peak = replica["peak_in_flight"].as_u64().unwrap();
            assert!(
                peak <= cap + workers,
                "c = {c}: peak {peak} above cap {cap}: {run}"
            );
        }
    }
}
