//! End-to-end tests of shutdown: on SIGINT or SIGTERM ringlb drains, stops every
//! replica it started (and reaps them), and exits with status 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringlb_testkit::{Ringlb, process_exists, ringlb_bin, wait_until_blocking};

/// ringlb drains for at most 10 s and gives a replica 5 s after SIGTERM; with
/// nothing in flight and healthy replicas it takes well under a second.
const EXIT_BOUND: Duration = Duration::from_secs(10);

/// Starts ringlb, sends `signal`, and checks the exit status and that no replica
/// it had survives it.
fn signal_stops_everything(signal: libc::c_int) {
    let mut lb = Ringlb::start(&["-n", "3"]);
    let replicas = lb.seen_replicas();
    assert_eq!(
        replicas.len(),
        3,
        "pids from the startup lines: {replicas:?}"
    );
    for pid in replicas.keys() {
        assert!(process_exists(*pid), "replica {pid} runs before the signal");
    }

    let sent = Instant::now();
    let status = lb
        .signal_and_wait(signal, EXIT_BOUND)
        .unwrap_or_else(|| panic!("ringlb still runs {EXIT_BOUND:?} after signal {signal}"));
    println!(
        "signal {signal}: ringlb exited with {status} after {:.2?}",
        sent.elapsed()
    );
    assert!(status.success(), "exit status {status}\n{}", lb.stderr());

    // ringlb waits for its children before it exits, so they are already reaped.
    let alive: Vec<_> = replicas
        .iter()
        .filter(|(pid, _)| process_exists(**pid))
        .collect();
    assert!(alive.is_empty(), "replicas outlived ringlb: {alive:?}");
}

#[test]
fn sigint_stops_every_replica_and_exits_0() {
    signal_stops_everything(libc::SIGINT);
}

#[test]
fn sigterm_stops_every_replica_and_exits_0() {
    signal_stops_everything(libc::SIGTERM);
}

/// A request that is in flight when SIGINT arrives still gets its answer.
///
/// Made deterministic without sleeps. The request announces a 5-byte body with
/// `Expect: 100-continue` and holds the body back. ringlb buffers a request body
/// before forwarding it, and the server sends `100 Continue` only when the handler
/// starts reading that body: once the test reads the `100 Continue`, the request is
/// provably in flight. Then SIGINT; once the proxy port refuses new connections,
/// ringlb is draining, and only then is the body sent.
#[test]
fn request_in_flight_during_sigint_completes() {
    let mut lb = Ringlb::start(&[]);
    let replicas = lb.seen_replicas();

    let stream = TcpStream::connect(lb.proxy).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    write!(
        writer,
        "GET /home HTTP/1.1\r\nHost: {}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        lb.proxy
    )
    .unwrap();
    writer.flush().unwrap();
    let interim = read_head(&mut reader);
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "expected 100 Continue, got {interim:?}"
    );

    ringlb_testkit::send_signal(lb.pid(), libc::SIGINT);
    wait_until_blocking(
        "the proxy to stop accepting connections",
        Duration::from_secs(10),
        || match TcpStream::connect_timeout(&lb.proxy, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("connect: {other:?}")),
        },
    );
    assert!(
        lb.wait_exit(Duration::ZERO).is_none(),
        "ringlb exited with a request in flight"
    );

    writer.write_all(b"hello").unwrap();
    writer.flush().unwrap();
    let head = read_head(&mut reader);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "in-flight request answered {head:?}"
    );
    // The server closes the connection after this answer, as it is shutting down.
    let mut body = String::new();
    reader
        .read_to_string(&mut body)
        .expect("read the answer body");
    assert!(
        ringlb_testkit::server_name(&body).is_some(),
        "in-flight request got {head:?} {body:?}"
    );

    let status = lb
        .wait_exit(EXIT_BOUND)
        .expect("ringlb exits after the drain");
    assert!(status.success(), "exit status {status}\n{}", lb.stderr());
    let alive: Vec<_> = replicas
        .iter()
        .filter(|(pid, _)| process_exists(**pid))
        .collect();
    assert!(alive.is_empty(), "replicas outlived ringlb: {alive:?}");
}

/// Reads one response head (status line and headers, up to the blank line).
fn read_head(reader: &mut impl BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read a response line");
        assert!(n > 0, "connection closed after {head:?}");
        if line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

/// A SIGTERM (or SIGINT) that reaches ringlb right after it announces readiness must
/// shut it down in order, not kill it by the default action. ringlb installs its
/// handlers before it starts anything (`ringlb_replica::shutdown_signal()` registers
/// them when called, not when first polled); this pins that, and since `Ringlb::start`
/// does not wait for anything beyond the ready line, the other tests of this file
/// would fail intermittently if it regressed.
///
/// Deterministic: ringlb's stdout is a pipe that the test has filled, so ringlb
/// blocks in `write(1, …)` on its first announcement line, after starting its
/// replicas and before `shutdown_signal()`. The test waits for that (from
/// `/proc/PID/task/*/syscall`), sends SIGTERM, then drains the pipe. A ringlb that
/// installs its handlers before it announces readiness shuts down cleanly with 0.
#[test]
fn signal_while_announcing_readiness_still_shuts_down_cleanly() {
    let (read_end, write_end) = full_pipe();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut lb = {
        let mut command = Command::new(ringlb_bin());
        command
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped());
        // `command` owns our copy of the write end and closes it when dropped.
        Cleanup::new(command.spawn().expect("spawn ringlb up"))
    };
    let stderr_reader = ringlb_testkit::drain_stderr(
        lb.child.stderr.take().expect("piped stderr"),
        stderr.clone(),
    );
    let pid = lb.child.id();

    wait_until_blocking(
        "ringlb to block writing its first announcement",
        Duration::from_secs(20),
        || {
            if let Some(status) = lb.child.try_wait().unwrap() {
                panic!(
                    "ringlb exited early with {status}: {}",
                    stderr.lock().unwrap()
                );
            }
            blocked_writing_stdout(pid)
        },
    );
    // Its replicas are running (their pids are in its log) and it is about to
    // tell the world where it listens.
    lb.replicas = started_replicas(&stderr.lock().unwrap());
    assert_eq!(lb.replicas.len(), 3, "{}", stderr.lock().unwrap());

    ringlb_testkit::send_signal(pid, libc::SIGTERM);
    let stdout_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::fs::File::from(read_end).read_to_end(&mut out);
        out
    });

    let deadline = Instant::now() + EXIT_BOUND;
    let status = loop {
        if let Some(status) = lb.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ringlb still runs {EXIT_BOUND:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = stdout_reader.join();
    let _ = stderr_reader.join();
    assert!(
        status.success(),
        "SIGTERM right after startup: ringlb exited with {status} instead of 0\n{}",
        stderr.lock().unwrap()
    );
    let alive: Vec<_> = lb
        .replicas
        .iter()
        .filter(|(pid, _)| process_exists(*pid))
        .collect();
    assert!(alive.is_empty(), "replicas outlived ringlb: {alive:?}");
}

/// A pipe whose buffer is already full: whoever writes to the write end blocks
/// until the read end is drained. Both ends are close-on-exec (tests run in
/// parallel and spawn processes); `Command` makes the write end the child's stdout.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut writer = std::fs::File::from(write_end);
    set_nonblocking(&writer, true);
    let filler = [b'#'; 4096];
    loop {
        match writer.write(&filler) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    // The flag belongs to the open file, which the child shares: it must block.
    set_nonblocking(&writer, false);
    (read_end, OwnedFd::from(writer))
}

fn set_nonblocking(file: &std::fs::File, on: bool) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(flags >= 0);
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags), 0);
    }
}

/// Whether a thread of `pid` sits in `write(1, …)`, from `/proc/PID/task/*/syscall`
/// (syscall number, then arguments in hex).
fn blocked_writing_stdout(pid: u32) -> Result<(), String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let write = libc::SYS_write.to_string();
    let mut seen = Vec::new();
    for task in tasks.flatten() {
        let Ok(syscall) = std::fs::read_to_string(task.path().join("syscall")) else {
            continue;
        };
        let mut fields = syscall.split_whitespace();
        if fields.next() == Some(write.as_str()) && fields.next() == Some("0x1") {
            return Ok(());
        }
        seen.push(syscall.trim().to_owned());
    }
    Err(format!("threads in: {seen:?}"))
}

/// `(pid, name)` of every replica that ringlb's log says it started.
fn started_replicas(log: &str) -> Vec<(u32, String)> {
    log.lines()
        .filter(|l| l.contains("started replica"))
        .filter_map(|l| {
            let name = l.split("replica=").nth(1)?.split_whitespace().next()?;
            let pid = l
                .split("pid=Some(")
                .nth(1)?
                .split(')')
                .next()?
                .parse()
                .ok()?;
            Some((pid, name.to_owned()))
        })
        .collect()
}

/// Kills a ringlb started by hand, and the replicas it reported, on drop.
struct Cleanup {
    child: Child,
    replicas: Vec<(u32, String)>,
}

impl Cleanup {
    fn new(child: Child) -> Cleanup {
        Cleanup {
            child,
            replicas: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (pid, name) in &self.replicas {
            ringlb_testkit::kill_replica_if_alive(*pid, name);
        }
    }
}
