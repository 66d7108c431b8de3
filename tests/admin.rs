//! End-to-end tests of the admin API (`/rep`, `/add`, `/rm`), its errors, the admin
//! token, the unknown-path error and the operations port, against the real binary.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use ringlb_testkit::{Ringlb, rep_body, spread, wait_until_exited};
use serde_json::Value;

/// What a rejected call must leave untouched: the `/rep` body and the replica
/// processes (name and pid of every member, so nothing was started or stopped).
async fn snapshot(lb: &Ringlb) -> (Value, Vec<(String, u32)>) {
    let (status, rep) = lb.request(Method::GET, "/rep", None, None).await;
    assert_eq!(status, 200);
    let members = lb.replica_pids().await.into_iter().collect();
    (rep, members)
}

/// Asserts a JSON error answer: the status, the envelope, and a message fragment.
fn assert_error(what: &str, status: u16, body: &Value, want_status: u16, fragment: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["status"], "failure", "{what}: {body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message in {body}"));
    assert!(
        message.starts_with("<Error> "),
        "{what}: message {message:?} lacks the <Error> prefix"
    );
    assert!(
        message.contains(fragment),
        "{what}: message {message:?} does not contain {fragment:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rep_lists_the_initial_replicas() {
    let lb = Ringlb::start(&[]);
    let (status, body) = lb.request(Method::GET, "/rep", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, rep_body(&["Server1", "Server2", "Server3"]));

    let named = Ringlb::start(&["-n", "3", "--hostnames", "alpha,beta"]);
    let (status, body) = named.request(Method::GET, "/rep", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, rep_body(&["alpha", "beta", "Server1"]));
}

/// The original project's examples, byte for byte:
///
/// ```text
/// curl -X POST -H "Content-Type: application/json" \
///      -d '{"n": 2, "hostnames": ["Server4", "Server5"]}' http://localhost:5000/add
/// curl -X DELETE -H "Content-Type: application/json" \
///      -d '{"n": 1, "hostnames": ["Server4"]}' http://localhost:5000/rm
/// curl http://localhost:5000/rep
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_curl_examples() {
    let lb = Ringlb::start(&[]);

    let (status, body) = lb
        .request(
            Method::POST,
            "/add",
            Some(r#"{"n": 2, "hostnames": ["Server4", "Server5"]}"#),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let five = ["Server1", "Server2", "Server3", "Server4", "Server5"];
    assert_eq!(body, rep_body(&five));
    // In the ring as soon as /add answers, and requests reach them.
    let in_ring = lb.routable().await;
    assert!(
        in_ring.contains("Server4") && in_ring.contains("Server5"),
        "right after /add the ring holds {in_ring:?}"
    );
    // 1000 draws over 5 equal shares: missing one has probability ~5·0.8^1000.
    let (counts, failures) = spread(&lb.http, &lb.proxy_url("/home"), 1000, 16).await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        five,
        "every replica, old and new, gets requests: {counts:?}"
    );
    let server4_pid = lb.replica_pids().await["Server4"];

    let (status, body) = lb
        .request(
            Method::DELETE,
            "/rm",
            Some(r#"{"n": 1, "hostnames": ["Server4"]}"#),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let four = ["Server1", "Server2", "Server3", "Server5"];
    assert_eq!(body, rep_body(&four));

    let (status, body) = lb.request(Method::GET, "/rep", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, rep_body(&four));

    // Out of the ring as soon as /rm answers: no request reaches it any more.
    let in_ring = lb.routable().await;
    assert!(
        !in_ring.contains("Server4"),
        "right after /rm the ring holds {in_ring:?}"
    );
    let (counts, failures) = spread(&lb.http, &lb.proxy_url("/home"), 1000, 16).await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        four,
        "Server4 gets nothing after /rm, the others keep serving: {counts:?}"
    );
    wait_until_exited(
        "the removed Server4 to exit",
        server4_pid,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_without_names_generates_them_and_rm_without_names_picks_any() {
    let lb = Ringlb::start(&[]);

    // Shorter than n: the named one, then the lowest free Server<k>.
    let (status, body) = lb
        .request(
            Method::POST,
            "/add",
            Some(r#"{"n": 2, "hostnames": ["web"]}"#),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        rep_body(&["Server1", "Server2", "Server3", "web", "Server4"])
    );
    // Absent: all generated.
    let (status, body) = lb
        .request(Method::POST, "/add", Some(r#"{"n": 1}"#), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        rep_body(&["Server1", "Server2", "Server3", "web", "Server4", "Server5"])
    );

    // Fewer names than n: the named one goes, and n - 1 others chosen by ringlb.
    let (status, body) = lb
        .request(
            Method::DELETE,
            "/rm",
            Some(r#"{"n": 3, "hostnames": ["web"]}"#),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (n, left) = ringlb_testkit::rep_of(&body);
    assert_eq!(n, 3);
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&"web".to_owned()), "{left:?}");
    let before = ["Server1", "Server2", "Server3", "Server4", "Server5"];
    assert!(
        left.iter().all(|name| before.contains(&name.as_str())),
        "{left:?}"
    );
    assert_eq!(lb.rep().await, (3, left.clone()));
    let members: BTreeSet<String> = lb.replica_pids().await.into_keys().collect();
    assert_eq!(members, left.iter().cloned().collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_given_by_add_set_the_share_of_the_keys() {
    let lb = Ringlb::start(&["-n", "2"]);
    let body = r#"{"n": 2, "hostnames": ["Big", "Small"], "weights": {"Big": 4}}"#;
    let (status, answer) = lb.request(Method::POST, "/add", Some(body), None).await;
    assert_eq!(status, 200, "{answer}");
    let ring = lb.ring_json().await;
    let member = |name: &str| {
        ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {ring}"))
    };
    // Weights 1, 1, 4, 1: Big has 4/7 of the keys (57%), each other 1/7 (14%); the
    // default ring keeps every share within a few points of that.
    assert_eq!(member("Big")["weight"], 4);
    assert_eq!(member("Small")["weight"], 1);
    let share = |name: &str| member(name)["share"].as_f64().unwrap();
    assert!((share("Big") - 4.0 / 7.0).abs() < 0.03, "{ring}");
    for name in ["Server1", "Server2", "Small"] {
        assert!((share(name) - 1.0 / 7.0).abs() < 0.03, "{ring}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_add_changes_nothing() {
    let lb = Ringlb::start(&["--max-replicas", "5"]);
    let before = snapshot(&lb).await;
    let long_name = "a".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        (
            r#"{"n": 1, "hostnames": ["Server4", "Server5"]}"#.into(),
            "Length of hostname list is more than newly added instances",
        ),
        (
            r#"{"n": 2, "hostnames": ["Twin", "Twin"]}"#.into(),
            "more than once",
        ),
        (
            r#"{"n": 1, "hostnames": ["Server2"]}"#.into(),
            "already in use",
        ),
        (
            r#"{"n": 2, "hostnames": ["Fresh", "Server3"]}"#.into(),
            "already in use",
        ),
        (
            r#"{"n": 1, "hostnames": ["bad name"]}"#.into(),
            "invalid hostname",
        ),
        (
            r#"{"n": 1, "hostnames": ["_x"]}"#.into(),
            "invalid hostname",
        ),
        (
            r#"{"n": 1, "hostnames": ["-x"]}"#.into(),
            "invalid hostname",
        ),
        (r#"{"n": 1, "hostnames": [""]}"#.into(), "invalid hostname"),
        (
            r#"{"n": 1, "hostnames": ["$(touch pwned)"]}"#.into(),
            "invalid hostname",
        ),
        (
            format!(r#"{{"n": 1, "hostnames": ["{long_name}"]}}"#),
            "invalid hostname",
        ),
        (
            r#"{"n": 1, "hostnames": ["Big"], "weights": {"Big": 0}}"#.into(),
            "the weight of 'Big' must be an integer from 1 to 256",
        ),
        (
            r#"{"n": 1, "hostnames": ["Big"], "weights": {"Other": 2}}"#.into(),
            "'weights' names 'Other', which is not in 'hostnames'",
        ),
        (r#"{"n": 0}"#.into(), "'n' must be an integer"),
        (r#"{"n": -1}"#.into(), "'n' must be an integer"),
        (r#"{"n": 1.5}"#.into(), "'n' must be an integer"),
        (r#"{"n": "2"}"#.into(), "'n' must be an integer"),
        (r#"{"n": true}"#.into(), "'n' must be an integer"),
        (r#"{}"#.into(), "'n' is required"),
        (r#"{"hostnames": ["Server4"]}"#.into(), "'n' is required"),
        (r#"{"n": 3}"#.into(), "exceed the maximum"),
        (
            r#"{"n": 1, "hostnames": "Server4"}"#.into(),
            "list of strings",
        ),
        (r#"{"n": 1, "hostnames": [4]}"#.into(), "strings"),
        (r#"[1, 2]"#.into(), "JSON object"),
        ("n=1&hostnames=Server4".into(), "not valid JSON"),
        (r#"{"n": 1"#.into(), "not valid JSON"),
        (String::new(), "not valid JSON"),
    ];
    for (body, fragment) in &cases {
        let (status, answer) = lb.request(Method::POST, "/add", Some(body), None).await;
        assert_error(&format!("POST /add {body}"), status, &answer, 400, fragment);
        assert_eq!(
            snapshot(&lb).await,
            before,
            "POST /add {body} changed the pool"
        );
    }

    // The exact message of the contract.
    let (_, answer) = lb
        .request(
            Method::POST,
            "/add",
            Some(r#"{"n": 1, "hostnames": ["Server4", "Server5"]}"#),
            None,
        )
        .await;
    assert_eq!(
        answer,
        serde_json::json!({
            "message": "<Error> Length of hostname list is more than newly added instances",
            "status": "failure",
        })
    );

    // The maximum itself is reachable: 3 + 2 = 5.
    let (status, answer) = lb
        .request(Method::POST, "/add", Some(r#"{"n": 2}"#), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(lb.rep().await.0, 5);
    let (status, answer) = lb
        .request(Method::POST, "/add", Some(r#"{"n": 1}"#), None)
        .await;
    assert_error(
        "POST /add at the maximum",
        status,
        &answer,
        400,
        "exceed the maximum",
    );
    assert_eq!(lb.rep().await.0, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_rm_changes_nothing() {
    let lb = Ringlb::start(&[]);
    let before = snapshot(&lb).await;
    let cases: Vec<(&str, &str)> = vec![
        (
            r#"{"n": 1, "hostnames": ["Server1", "Server2"]}"#,
            "Length of hostname list is more than removable instances",
        ),
        (r#"{"n": 1, "hostnames": ["Server9"]}"#, "is not a replica"),
        (
            r#"{"n": 2, "hostnames": ["Server1", "Nobody"]}"#,
            "is not a replica",
        ),
        (r#"{"n": 4}"#, "cannot remove"),
        (
            r#"{"n": 2, "hostnames": ["Server1", "Server1"]}"#,
            "more than once",
        ),
        (r#"{"n": 1, "hostnames": ["bad name"]}"#, "invalid hostname"),
        (r#"{"n": 0}"#, "'n' must be an integer"),
        (r#"{"n": -1}"#, "'n' must be an integer"),
        (r#"{"n": 1.5}"#, "'n' must be an integer"),
        (r#"{"n": "2"}"#, "'n' must be an integer"),
        (r#"{}"#, "'n' is required"),
        (r#"{"hostnames": ["Server1"]}"#, "'n' is required"),
        ("Server1", "not valid JSON"),
        ("", "not valid JSON"),
    ];
    for (body, fragment) in &cases {
        let (status, answer) = lb.request(Method::DELETE, "/rm", Some(body), None).await;
        assert_error(
            &format!("DELETE /rm {body}"),
            status,
            &answer,
            400,
            fragment,
        );
        assert_eq!(
            snapshot(&lb).await,
            before,
            "DELETE /rm {body} changed the pool"
        );
    }
    let (_, answer) = lb
        .request(
            Method::DELETE,
            "/rm",
            Some(r#"{"n": 1, "hostnames": ["Server1", "Server2"]}"#),
            None,
        )
        .await;
    assert_eq!(
        answer,
        serde_json::json!({
            "message": "<Error> Length of hostname list is more than removable instances",
            "status": "failure",
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_above_64_kib_are_refused_with_413() {
    let lb = Ringlb::start(&[]);
    let before = snapshot(&lb).await;
    // Valid requests apart from their size: if the limit were not enforced they
    // would change the pool.
    let padded = |prefix: &str, size: usize| {
        let mut body = format!(r#"{prefix}, "pad": ""#);
        body.push_str(&"x".repeat(size - body.len() - 2));
        body.push_str(r#""}"#);
        assert_eq!(body.len(), size);
        body
    };
    let big_add = padded(r#"{"n": 1, "hostnames": ["Big"]"#, 70 * 1024);
    let (status, answer) = lb.request(Method::POST, "/add", Some(&big_add), None).await;
    assert_error("POST /add of 70 KiB", status, &answer, 413, "larger than");
    assert_eq!(snapshot(&lb).await, before);

    let big_rm = padded(r#"{"n": 1, "hostnames": ["Server1"]"#, 70 * 1024);
    let (status, answer) = lb.request(Method::DELETE, "/rm", Some(&big_rm), None).await;
    assert_error("DELETE /rm of 70 KiB", status, &answer, 413, "larger than");
    assert_eq!(snapshot(&lb).await, before);

    // Just under the limit is an ordinary request.
    let add = padded(r#"{"n": 1, "hostnames": ["Big"]"#, 64 * 1024 - 16);
    let (status, answer) = lb.request(Method::POST, "/add", Some(&add), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, rep_body(&["Server1", "Server2", "Server3", "Big"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_get_a_json_405() {
    let lb = Ringlb::start(&[]);
    let before = snapshot(&lb).await;
    let body = r#"{"n": 1, "hostnames": ["Server1"]}"#;
    for (method, path) in [
        (Method::GET, "/add"),
        (Method::PUT, "/add"),
        (Method::DELETE, "/add"),
        (Method::GET, "/rm"),
        (Method::POST, "/rm"),
        (Method::PUT, "/rm"),
        (Method::POST, "/rep"),
        (Method::PUT, "/rep"),
        (Method::DELETE, "/rep"),
    ] {
        let (status, answer) = lb.request(method.clone(), path, Some(body), None).await;
        assert_error(
            &format!("{method} {path}"),
            status,
            &answer,
            405,
            "not allowed",
        );
        assert_eq!(
            snapshot(&lb).await,
            before,
            "{method} {path} changed the pool"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_add_and_rm() {
    let lb = Ringlb::start(&["--admin-token", "s3cret"]);
    let before = snapshot(&lb).await;
    let add = r#"{"n": 1, "hostnames": ["Server4"]}"#;
    let rm = r#"{"n": 1, "hostnames": ["Server1"]}"#;
    let wrong: [Option<&str>; 6] = [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ];
    for token in wrong {
        for (method, path, body) in [
            (Method::POST, "/add", add),
            (Method::DELETE, "/rm", rm),
            // Authorization comes before validation: nothing leaks without a token.
            (Method::POST, "/add", "not json"),
        ] {
            let what = format!("{method} {path} {body} with {token:?}");
            let (status, answer) = lb.request(method, path, Some(body), token).await;
            assert_error(&what, status, &answer, 401, "token");
            assert_eq!(snapshot(&lb).await, before, "{what} changed the pool");
        }
    }

    // Reading needs no token, nor does forwarding.
    assert_eq!(lb.rep().await.0, 3);
    assert!(lb.home().await.is_ok());

    let (status, answer) = lb
        .request(Method::POST, "/add", Some(add), Some("Bearer s3cret"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        rep_body(&["Server1", "Server2", "Server3", "Server4"])
    );
    let (status, answer) = lb
        .request(Method::DELETE, "/rm", Some(rm), Some("Bearer s3cret"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, rep_body(&["Server2", "Server3", "Server4"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_get_the_contract_error() {
    let lb = Ringlb::start(&[]);
    let (status, answer) = lb.request(Method::GET, "/other", None, None).await;
    assert_eq!(status, 400);
    assert_eq!(
        answer,
        serde_json::json!({
            "message": "<Error> '/other' endpoint does not exist in server replicas",
            "status": "failure",
        })
    );
    let (status, answer) = lb.request(Method::GET, "/a/b?c=d", None, None).await;
    assert_error(
        "GET /a/b?c=d",
        status,
        &answer,
        400,
        "'/a/b' endpoint does not exist",
    );
    // /home itself is served.
    let (status, answer) = lb.request(Method::GET, "/home", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "successful");
    assert!(
        ringlb_testkit::server_name(answer["message"].as_str().unwrap()).is_some(),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_port_reports_health_readiness_metrics_and_the_ring() {
    let lb = Ringlb::start(&[]);
    let http = &lb.http;
    let get = |path: &str| http.get(lb.ops_url(path)).send();

    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    let ring = lb.ring_json().await;
    assert_eq!(
        ring["desired"],
        serde_json::json!(["Server1", "Server2", "Server3"])
    );
    assert_eq!(ring["replacements"], serde_json::json!([]));
    assert!(ring["config"].is_object(), "{ring}");
    let members = ring["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{ring}");
    let mut share_sum = 0.0;
    for member in members {
        assert_eq!(member["health"], "healthy", "{member}");
        assert_eq!(member["in_ring"], true, "{member}");
        assert_eq!(member["consecutive_failures"], 0, "{member}");
        assert!(member["pid"].as_u64().is_some(), "{member}");
        let address: std::net::SocketAddr = member["address"].as_str().unwrap().parse().unwrap();
        assert!(address.ip().is_loopback(), "{member}");
        share_sum += member["share"].as_f64().unwrap();
    }
    assert!((share_sum - 1.0).abs() < 1e-6, "shares sum to {share_sum}");

    // Metrics count the responses of each replica.
    let (counts, failures) = spread(http, &lb.proxy_url("/home"), 300, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    let mut counted = 0;
    for (name, count) in &counts {
        let line = format!("ringlb_responses_total{{pool=\"local\",replica=\"{name}\"}} {count}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
        counted += count;
    }
    assert_eq!(counted, 300);

    // Not ready while the ring is empty; forwarding says so in JSON.
    let (status, answer) = lb
        .request(Method::DELETE, "/rm", Some(r#"{"n": 3}"#), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, rep_body(&[]));
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let (status, answer) = lb.request(Method::GET, "/home", None, None).await;
    assert_error(
        "GET /home with no replica",
        status,
        &answer,
        503,
        "no replica",
    );

    let (status, answer) = lb
        .request(Method::POST, "/add", Some(r#"{"n": 1}"#), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, rep_body(&["Server1"]));
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(lb.home().await.as_deref(), Ok("Server1"));
}
