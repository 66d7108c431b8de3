//! End-to-end test of the dashboard (`GET /dashboard` on the operations port) in a real
//! browser: headless Chromium renders the page of a running `ringlb up`, and the
//! rendered DOM must name every member, draw the ring's arcs in one colour per member,
//! and list the replacement of a replica that was killed.
//!
//! Chromium is Debian's `chromium`, installed by the project's own script
//! (`scripts/install-chromium.sh`, which `.ci/run` runs); this test installs nothing.
//! Where it is missing the test prints `skipped: no chromium` and passes, unless
//! `RINGLB_REQUIRE_CHROMIUM` is set (CI sets it, so that CI never skips it silently).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringlb_testkit::load::healed;
use ringlb_testkit::{FAST_HEARTBEATS, Ringlb, TempDir, send_signal, wait_until};

/// How long Chromium may take to render the page before it is killed.
const RENDER_TIMEOUT: Duration = Duration::from_secs(90);
/// Virtual time the page runs for before its DOM is dumped: several polls (one a second).
const VIRTUAL_TIME_MS: u32 = 4500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_member_its_arcs_load_and_the_replacements_in_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let mut args = vec!["--preset", "course", "-n", "4", "--balance-factor", "1.25"];
    args.extend(FAST_HEARTBEATS);
    let lb = Ringlb::start(&args);
    healed(&lb, &["Server1", "Server2", "Server3", "Server4"])
        .await
        .expect("a healthy pool at start");
    for _ in 0..40 {
        lb.home().await.expect("GET /home through the proxy");
    }

    // A replica dies and is replaced: the page must show the replacement.
    send_signal(lb.replica_pids().await["Server2"], libc::SIGKILL);
    let members = ["Server1", "emergency_1", "Server3", "Server4"];
    wait_until(
        "Server2 to be replaced by a healthy emergency_1",
        Duration::from_secs(15),
        || healed(&lb, &members),
    )
    .await;
    for _ in 0..40 {
        lb.home().await.expect("GET /home through the proxy");
    }

    let url = lb.ops_url("/dashboard");
    let dom = tokio::task::spawn_blocking(move || render(&chromium, &url))
        .await
        .unwrap();
    check_dom(&dom, &members);
    // Bounded loads are on: every member's row shows its requests in flight against
    // its bound ("0 / 1" at rest).
    let loads = dom.matches("class=\"v load-text\">").count();
    assert_eq!(
        loads,
        members.len(),
        "in-flight against the bound per member"
    );
    println!(
        "the dashboard rendered in Chromium: {} bytes of DOM, members {members:?}",
        dom.len()
    );
}

/// What the page must show, read from the DOM that Chromium rendered.
fn check_dom(dom: &str, members: &[&str]) {
    let expected: BTreeSet<&str> = members.iter().copied().collect();
    let body = tags(dom, "body");
    let body = body.first().expect("a <body>");
    assert_eq!(
        attr(body, "data-status"),
        Some("live"),
        "the page never rendered the feeds: {}",
        head(dom)
    );
    let polls: u32 = attr(body, "data-polls").unwrap().parse().unwrap();
    assert!(polls >= 2, "only {polls} poll(s) of the feeds rendered");

    // Every member has a row that names it, with its health.
    let rows: BTreeMap<&str, &str> = tags(dom, "tr")
        .into_iter()
        .filter_map(|tr| Some((attr(tr, "data-member")?, attr(tr, "data-health")?)))
        .collect();
    assert_eq!(
        rows.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "the members table"
    );
    for (member, health) in &rows {
        assert_eq!(*health, "healthy", "{member}'s row");
        assert!(
            dom.contains(&format!("<span class=\"member-name\">{member}</span>")),
            "the page does not name {member}"
        );
        assert!(
            tags(dom, "span")
                .iter()
                .any(|s| attr(s, "class") == Some("v rate")
                    && attr(s, "data-member") == Some(member)),
            "no request rate for {member}"
        );
    }

    // The ring: arcs of every member, one colour each, the same in the share ring.
    let arcs = colours_of(dom, "pos-arc");
    assert_eq!(
        arcs.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "the members that own arcs of the circle"
    );
    let colours: BTreeSet<&str> = arcs.values().map(|c| single(c)).collect();
    assert_eq!(
        colours.len(),
        members.len(),
        "one colour per member: {arcs:?}"
    );
    let shares = colours_of(dom, "share-arc");
    assert_eq!(
        shares.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "the members in the share ring"
    );
    for (member, fills) in &shares {
        assert_eq!(single(fills), single(&arcs[member]), "{member}'s colours");
    }
    // The course preset's 9 virtual servers per member, as ticks.
    let ticks = tags(dom, "path")
        .into_iter()
        .filter(|p| attr(p, "class") == Some("vnode"))
        .count();
    assert_eq!(ticks, 9 * members.len(), "virtual servers drawn");

    // The replacement of Server2.
    let replacements = section(dom, "id=\"replacements\"");
    assert!(
        replacements.contains(">Server2</span>") && replacements.contains(">emergency_1</span>"),
        "the replacement Server2 → emergency_1 is not listed: {replacements}"
    );
}

/// The `fill`s of the `<path class="{class}">` elements, by `data-member`.
fn colours_of<'a>(dom: &'a str, class: &str) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut by_member: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for path in tags(dom, "path") {
        if attr(path, "class") != Some(class) {
            continue;
        }
        let member = attr(path, "data-member").expect("an arc names its member");
        let fill = attr(path, "fill").expect("an arc has a fill");
        by_member.entry(member).or_default().insert(fill);
    }
    by_member
}

fn single<'a>(colours: &BTreeSet<&'a str>) -> &'a str {
    assert_eq!(colours.len(), 1, "one member, one colour: {colours:?}");
    colours.first().unwrap()
}

/// The opening tags `<name …>` of the document, as written.
fn tags<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        let tag = &rest[at..];
        let end = tag.find('>').map_or(tag.len(), |e| e + 1);
        // `<path` but not `<pathology`.
        if matches!(tag.as_bytes().get(open.len()), Some(b' ' | b'>' | b'/')) {
            found.push(&tag[..end]);
        }
        rest = &tag[end..];
    }
    found
}

/// The value of attribute `name` of an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// The element that opens with an attribute `marker`, up to its list's end.
fn section<'a>(dom: &'a str, marker: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let end = dom[start..].find("</ul>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

fn head(dom: &str) -> &str {
    &dom[..dom.len().min(2000)]
}

/// `chromium` on PATH; `None` (after saying so) when it is missing and not required.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| is_executable(candidate))
    });
    if found.is_none() {
        if std::env::var_os("RINGLB_REQUIRE_CHROMIUM").is_some_and(|v| !v.is_empty()) {
            panic!(
                "chromium is not on PATH and RINGLB_REQUIRE_CHROMIUM is set: \
                 run scripts/install-chromium.sh"
            );
        }
        println!("skipped: no chromium (scripts/install-chromium.sh installs it)");
    }
    found
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Chromium, headless, in its own process group with a profile of its own: dropping it
/// kills the whole group (the browser and its renderer, GPU and zygote processes) and
/// reaps the browser, whatever happened.
struct Browser {
    child: Child,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: a plain system call. The group is the browser's pid (`process_group(0)`):
        // only processes this test started.
        unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Loads `url` in headless Chromium, lets the page run for [`VIRTUAL_TIME_MS`] of
/// virtual time, and returns the DOM it rendered. Bounded by [`RENDER_TIMEOUT`].
fn render(chromium: &Path, url: &str) -> String {
    let profile = TempDir::new("dashboard-chromium");
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.0.display()),
            &format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
            "--dump-dom",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", chromium.display()));
    let mut browser = Browser {
        child,
        _profile: profile,
    };
    let stdout = read_all(browser.child.stdout.take().unwrap());
    let stderr = read_all(browser.child.stderr.take().unwrap());

    let deadline = Instant::now() + RENDER_TIMEOUT;
    let status = loop {
        if let Some(status) = browser.child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            drop(browser);
            panic!(
                "chromium did not render {url} within {RENDER_TIMEOUT:?} (killed)\nstderr:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The browser has exited: anything left of its group goes with `browser`.
    drop(browser);
    let dom = stdout.join().unwrap();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium {status} rendered no page for {url}\nstdout:\n{}\nstderr:\n{}",
        head(&dom),
        stderr.join().unwrap()
    );
    dom
}

/// Reads a pipe to its end on a thread (so that Chromium never blocks on a full pipe).
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
