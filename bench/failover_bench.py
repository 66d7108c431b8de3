#!/usr/bin/env python3
"""Failover under load: one of three backends killed (SIGKILL) or frozen (SIGSTOP).

For each proxy (ringlb, nginx, HAProxy), each configured the way its users configure
failover (health checks, retries, timeouts; see the *_FAILOVER constants below), and
each fault (none, kill, freeze): starts three fresh `ringlb-replica` backends and the
proxy on 127.0.0.1, runs wrk with a random id per request (the script of
proxy_bench.py), and `--fault-at` seconds into the run sends the signal to the second
backend. Reports successful and failed requests, successful req/s relative to the
proxy's no-fault run, p99 and max latency, and how many client requests were still
waiting for an answer when wrk stopped (sampled with `ss`, since wrk drops requests
that are open at its end). Writes the table into docs/bench.md between the markers
<!-- failover:begin --> and <!-- failover:end --> (replaced if present, else appended),
leaving the rest of the file (proxy_bench.py's table) as it is.

wrk runs with --timeout 40s (its default is 2 s) so that a request that hangs until a
proxy's 30 s timeout is counted with its latency rather than as a wrk "timeout".
Everything started is stopped at the end of each run, also on Ctrl-C or an error; only
loopback addresses are used and every run is bounded by wrk's duration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench  # noqa: E402  (helpers: ports, processes, tools, configs, wrk, machine)
from proxy_bench import ROOT, free_port, tool, wait_for_port  # noqa: E402

PROXIES = ("ringlb", "nginx", "haproxy")
FAULTS = {"kill": signal.SIGKILL, "freeze": signal.SIGSTOP}
VICTIM = 1  # index of the backend that gets the signal: the second one, Server2
WRK_TIMEOUT_S = 40
STUCK_MS = 1000  # a client request open this long without an answer counts as stuck
BEGIN, END = "<!-- failover:begin -->", "<!-- failover:end -->"

# ringlb: its defaults, spelled out. Heartbeats take a failing replica out of the ring;
# a request whose replica cannot be reached is retried on the next one of the ring.
RINGLB_FAILOVER = [
    "--heartbeat-interval", "1s", "--heartbeat-timeout", "500ms", "--failure-threshold", "3",
    "--connect-timeout", "1s", "--request-timeout", "30s", "--max-attempts", "3",
]
# nginx: passive health (max_fails/fail_timeout) and retries on the next server.
NGINX_SERVER_FAILOVER = "max_fails=1 fail_timeout=10s"
NGINX_LOCATION_FAILOVER = [
    "proxy_next_upstream error timeout;",
    "proxy_next_upstream_tries 3;",
    "proxy_connect_timeout 1s;",
    "proxy_read_timeout 30s;",
]
# HAProxy: active health checks, retries and redispatch (timeout connect 1s,
# timeout server 30s and http-reuse always come from proxy_bench's defaults section).
HAPROXY_BACKEND_FAILOVER = ["option httpchk GET /heartbeat", "retries 3", "option redispatch"]
HAPROXY_SERVER_FAILOVER = "check inter 1s fall 3 rise 2"


def must_replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"proxy_bench's config no longer contains {old!r}")
    return text.replace(old, new)


def nginx_conf(port: int, backends: list[int], tmp: Path) -> Path:
    """proxy_bench's nginx config plus the failover directives."""
    conf = proxy_bench.nginx_conf(port, backends, tmp)
    text = conf.read_text()
    for p in backends:
        text = must_replace(text, f"server 127.0.0.1:{p};", f"server 127.0.0.1:{p} {NGINX_SERVER_FAILOVER};")
    text = must_replace(text, "proxy_pass http://replicas;", "proxy_pass http://replicas;\n      "
                        + "\n      ".join(NGINX_LOCATION_FAILOVER))
    conf.write_text(text)
    return conf


def haproxy_conf(port: int, backends: list[int], tmp: Path) -> Path:
    """proxy_bench's HAProxy config plus the failover directives."""
    conf = proxy_bench.haproxy_conf(port, backends, tmp)
    text = conf.read_text()
    for d in ("timeout connect 1s", "timeout server 30s", "http-reuse always"):
        if d not in text:  # failover settings this benchmark relies on and documents
            raise RuntimeError(f"proxy_bench's HAProxy config no longer contains {d!r}")
    for i, p in enumerate(backends, 1):
        text = must_replace(text, f"server s{i} 127.0.0.1:{p}\n",
                            f"server s{i} 127.0.0.1:{p} {HAPROXY_SERVER_FAILOVER}\n")
    text = must_replace(text, "  hash-type consistent\n", "  hash-type consistent\n"
                        + "".join(f"  {d}\n" for d in HAPROXY_BACKEND_FAILOVER))
    conf.write_text(text)
    return conf


def http_json(url: str, timeout: float = 0.5) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001 - 503 or not up yet
        return None


def wait_ringlb_ready(ops_port: int, members: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http_json(f"http://127.0.0.1:{ops_port}/readyz")
        if body and body.get("members") == members:
            return
        time.sleep(0.1)
    raise RuntimeError(f"ringlb did not report {members} members on /readyz after {timeout}s")


def stuck_requests(port: int) -> tuple[int, int]:
    """Client connections to 127.0.0.1:port whose last request has had no answer for
    STUCK_MS or more: (how many, age of the oldest in ms). From the kernel's per-socket
    lastsnd/lastrcv (time since data was last sent/received), so it is proxy-agnostic."""
    out = subprocess.run(["ss", "-tinH", "state", "established", "dport", "=", f":{port}"],
                         capture_output=True, text=True, timeout=5).stdout
    count, oldest = 0, 0
    for line in out.splitlines():
        snd = re.search(r"\blastsnd:(\d+)", line)
        rcv = re.search(r"\blastrcv:(\d+)", line)
        if not (snd and rcv):
            continue
        sent_ago, received_ago = int(snd.group(1)), int(rcv.group(1))
        if sent_ago >= STUCK_MS and received_ago >= sent_ago:
            count += 1
            oldest = max(oldest, sent_ago)
    return count, oldest


TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(output: str) -> dict:
    res = proxy_bench.parse_wrk(output)  # rps, requests, errors, p50_ms, p99_ms
    m = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m|h)\s", output, re.M)
    res["max_ms"] = float(m.group(1)) * TIME_UNITS_MS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    res["socket"] = dict(zip(("connect", "read", "write", "timeout"),
                             (int(x) for x in m.groups()) if m else (0, 0, 0, 0)))
    res["ok"] = res["requests"] - res["non2xx"]
    res["failed"] = res["errors"]  # non-2xx/3xx + every socket error
    res["ok_rps"] = res["rps"] * res["ok"] / max(res["requests"], 1)
    return res


def start_logged(stack: proxy_bench.Stack, log: Path, args: list[str], **kw) -> subprocess.Popen:
    """stack.start with stderr to a file (the parent's handle is closed at once)."""
    with open(log, "w") as f:
        return stack.start(args, stderr=f, **kw)


def start_proxy(name: str, stack: proxy_bench.Stack, backends: list[int], tmp: Path,
                bin_dir: Path) -> tuple[int, int | None]:
    """Starts one proxy in front of the backends; returns (port, ringlb's ops port)."""
    port = free_port()
    if name == "ringlb":
        ops = free_port()
        start_logged(
            stack, tmp / "ringlb.log",
            [str(bin_dir / "ringlb"), "up", "--listen", f"127.0.0.1:{port}",
             "--ops-listen", f"127.0.0.1:{ops}", "--key", "query:id", *RINGLB_FAILOVER,
             *sum((["--replica", f"Server{i}=127.0.0.1:{p}"] for i, p in enumerate(backends, 1)), [])],
            env=dict(os.environ, RUST_LOG="warn"),
        )
        wait_for_port(port)
        wait_ringlb_ready(ops, len(backends))
        return port, ops
    if name == "nginx":
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / d).mkdir(exist_ok=True)
        start_logged(stack, tmp / "nginx.stderr",
                     [tool("nginx"), "-c", str(nginx_conf(port, backends, tmp)), "-p", str(tmp)])
    elif name == "haproxy":
        start_logged(stack, tmp / "haproxy.stderr",
                     [tool("haproxy"), "-f", str(haproxy_conf(port, backends, tmp))])
    else:
        raise ValueError(name)
    wait_for_port(port)
    return port, None


def run_one(proxy: str, fault: str | None, args, bin_dir: Path, script: Path, tmp_root: Path) -> dict:
    """Fresh backends and proxy, one wrk run, the fault at --fault-at; all stopped after."""
    stack = proxy_bench.Stack()
    tmp = Path(tempfile.mkdtemp(prefix=f"{proxy}-{fault or 'none'}-", dir=tmp_root))
    replicas: list[subprocess.Popen] = []
    wrk = None
    try:
        backends = [free_port() for _ in range(3)]
        for i, p in enumerate(backends, 1):
            replicas.append(stack.start([str(bin_dir / "ringlb-replica")],
                                        env=dict(os.environ, SERVER_ID=f"Server{i}", PORT=str(p))))
        for p in backends:
            wait_for_port(p)
        port, ops = start_proxy(proxy, stack, backends, tmp, bin_dir)
        url = f"http://127.0.0.1:{port}"
        # Warm-up: connections, pools, health state.
        subprocess.run([tool("wrk"), "-t1", "-c8", "-d1s", "-s", str(script), url],
                       capture_output=True, check=True, timeout=30)
        if proxy == "haproxy":
            time.sleep(1.0)  # let a couple of health checks pass (rise 2)

        wrk = subprocess.Popen(
            [tool("wrk"), f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
             "--timeout", f"{WRK_TIMEOUT_S}s", "--latency", "-s", str(script), url],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        start = time.monotonic()
        samples: list[tuple[float, int, int, int | None]] = []  # (t, stuck, oldest ms, ringlb members)
        faulted = fault is None
        # Once a second, and a last time just before wrk stops.
        sample_at = [float(t) for t in range(1, args.duration)] + [args.duration - 0.3]
        while wrk.poll() is None:
            now = time.monotonic() - start
            if not faulted and now >= args.fault_at:
                os.kill(replicas[VICTIM].pid, FAULTS[fault])
                faulted = True
                print(f"  {now:5.2f}s  {fault} Server{VICTIM + 1} (pid {replicas[VICTIM].pid})", flush=True)
            if sample_at and now >= sample_at[0]:
                while sample_at and now >= sample_at[0]:
                    sample_at.pop(0)
                stuck, oldest = stuck_requests(port)
                members = None
                if ops is not None:
                    body = http_json(f"http://127.0.0.1:{ops}/readyz")
                    members = body.get("members") if body else None
                samples.append((now, stuck, oldest, members))
            if now > args.duration + 60:
                raise RuntimeError("wrk did not stop 60 s after its duration")
            time.sleep(0.02)
        out, err = wrk.communicate()
        if wrk.returncode != 0:
            raise RuntimeError(f"wrk failed ({wrk.returncode}): {err.strip()}")
        if not faulted:
            raise RuntimeError(f"wrk ended before --fault-at {args.fault_at}s")
        res = parse_wrk(out)
        res["samples"] = samples
        last = samples[-1] if samples else (0.0, 0, 0, None)
        res["stuck_end"], res["stuck_oldest_ms"] = last[1], last[2]
        res["wrk_output"] = out
        return res
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.kill()
            wrk.wait()
        for proc in replicas:  # a frozen replica must run again to handle SIGTERM
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        stack.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def describe_run(proxy: str, fault: str, res: dict) -> str:
    s = res["socket"]
    runs: list[list] = []  # consecutive samples with the same values: [first t, last t, value]
    for t, n, _, m in res["samples"]:
        value = f"{n}" + (f"/m{m}" if m is not None else "")
        if runs and runs[-1][2] == value:
            runs[-1][1] = t
        else:
            runs.append([t, t, value])
    timeline = " ".join(f"{a:.0f}s:{v}" if round(a) == round(b) else f"{a:.0f}-{b:.0f}s:{v}"
                        for a, b, v in runs)
    return (f"  {proxy:8} {fault:6} ok {res['ok']:>7}  failed {res['failed']:>5} "
            f"(non-2xx {res['non2xx']}, connect {s['connect']}, read {s['read']}, write {s['write']}, "
            f"timeout {s['timeout']})  {res['ok_rps']:>8.0f} ok req/s  p99 {res['p99_ms']:.2f} ms  "
            f"max {res['max_ms']:.0f} ms  stuck at end {res['stuck_end']} "
            f"(oldest {res['stuck_oldest_ms'] / 1000:.1f} s)\n"
            f"           stuck>1s per second{' /ringlb members' if res['samples'] and res['samples'][0][3] is not None else ''}: "
            f"{timeline}")


def config_lines(args) -> list[str]:
    ringlb = " ".join(RINGLB_FAILOVER)
    nginx_servers = "\n".join(f"  server 127.0.0.1:{{port{i}}} {NGINX_SERVER_FAILOVER};" for i in (1, 2, 3))
    nginx_loc = "\n".join(f"  {d}" for d in NGINX_LOCATION_FAILOVER)
    hp_servers = "\n".join(f"  server s{i} 127.0.0.1:{{port{i}}} {HAPROXY_SERVER_FAILOVER}" for i in (1, 2, 3))
    hp_backend = "\n".join(f"  {d}" for d in HAPROXY_BACKEND_FAILOVER)
    return [
        "Failover configuration of each proxy (the rest of each configuration is that of `bench/proxy_bench.py`; "
        "`{portN}` stands for a backend's port):",
        "",
        f"- ringlb (its defaults, spelled out): `ringlb up --key query:id --replica Server1=127.0.0.1:{{port1}} "
        f"… {ringlb}`. Heartbeats (`GET /heartbeat`) take a replica out of the ring after 3 failures; "
        "a request whose replica cannot be reached is retried on the next one.",
        "- nginx: passive health checks and retries on the next server:",
        "",
        "  ```nginx",
        "  upstream replicas {",
        "    hash $arg_id consistent;",
        "  " + nginx_servers.replace("\n", "\n  "),
        "    keepalive 128;",
        "  }",
        "  location / {",
        "    proxy_pass http://replicas;",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "  " + nginx_loc.replace("\n", "\n  "),
        "  }",
        "  ```",
        "",
        "- HAProxy: active health checks, retries and redispatch (no `timeout check`: the check "
        "timeout is `inter`, 1 s):",
        "",
        "  ```haproxy",
        "  defaults",
        "    timeout connect 1s",
        "    timeout server 30s",
        "    http-reuse always",
        "  backend replicas",
        "    balance url_param id",
        "    hash-type consistent",
        "  " + hp_backend.replace("\n", "\n  "),
        "  " + hp_servers.replace("\n", "\n  "),
        "  ```",
    ]


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    b, e = text.find(BEGIN), text.find(END)
    if b != -1 and e > b:
        after = text[e + len(END):].lstrip("\n")
        text = text[:b] + block + ("\n" + after if after else "")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=12, help="seconds per wrk run (default 12)")
    parser.add_argument("--fault-at", type=float, default=2.0, help="seconds into the run (default 2)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proxies", default=",".join(PROXIES), help="comma-separated subset of "
                        + ",".join(PROXIES))
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of "
                        + ",".join(FAULTS) + " (a no-fault run per proxy is always made)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/bench.md alone")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench.md")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--bin-dir", type=Path, default=None,
                        help="where ringlb and ringlb-replica are (implies --no-build); default: "
                             "where cargo builds them (honours CARGO_TARGET_DIR)")
    args = parser.parse_args()
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if not proxies or any(p not in PROXIES for p in proxies):
        parser.error(f"--proxies: choose from {','.join(PROXIES)}")
    if any(f not in FAULTS for f in faults):
        parser.error(f"--faults: choose from {','.join(FAULTS)}")
    if not (3 <= args.duration <= 120):
        parser.error("--duration must be 3..120")
    if not (0 < args.fault_at <= args.duration - 1):
        parser.error("--fault-at must be in (0, duration - 1]")
    if not (1 <= args.connections <= 2000 and 1 <= args.threads <= args.connections):
        parser.error("--connections must be 1..2000 and --threads 1..connections")

    # SIGTERM like Ctrl-C: unwind through the finally blocks that stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    proxy_bench.ensure_tools()
    if shutil.which("ss") is None:
        parser.error("needs `ss` (iproute2)")
    built_from = ""
    if not args.no_build and args.bin_dir is None:
        built_from = proxy_bench.source_state()
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "ringlb", "--bin", "ringlb-replica"],
                       cwd=ROOT, check=True)
    bin_dir = args.bin_dir or proxy_bench.cargo_release_dir()

    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --timeout {WRK_TIMEOUT_S}s "
          f"(hung requests count as latency up to {WRK_TIMEOUT_S} s, not as wrk timeouts); "
          f"fault at {args.fault_at:g}s on Server{VICTIM + 1}", flush=True)
    tmp_root = Path(tempfile.mkdtemp(prefix="ringlb-failover-"))
    results: dict[tuple[str, str], dict] = {}
    try:
        script = tmp_root / "random-id.lua"
        script.write_text(proxy_bench.WRK_SCRIPT)
        for proxy in proxies:
            for fault in ["none", *faults]:
                print(f"{proxy} / {fault}", flush=True)
                res = run_one(proxy, None if fault == "none" else fault, args, bin_dir, script, tmp_root)
                results[(proxy, fault)] = res
                print(describe_run(proxy, fault, res), flush=True)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    lines = [
        "## Failover: one of three backends killed or frozen under load",
        "",
        f"Measured {datetime.date.today().isoformat()} on {proxy_bench.describe_machine()} by "
        f"`just bench-failover` (`bench/failover_bench.py`): three fresh `ringlb-replica` backends and "
        f"the proxy on 127.0.0.1 for every run, wrk `-t{args.threads} -c{args.connections} "
        f"-d{args.duration}s --timeout {WRK_TIMEOUT_S}s` with a random six-digit id per request, and "
        f"{args.fault_at:g} s into the run Server{VICTIM + 1} gets SIGKILL (*kill*: connections are "
        f"reset, new ones refused) or SIGSTOP (*freeze*: the kernel still accepts connections, nothing "
        f"answers). wrk's `--timeout` is raised from its default 2 s to {WRK_TIMEOUT_S} s so that a "
        f"request hanging until a proxy's 30 s timeout is measured as latency instead of being counted "
        f"as a wrk timeout; but wrk drops the requests still open when it stops, so those are counted "
        f"separately (*stuck at end*).",
        "",
        f"Versions: {proxy_bench.version([str(bin_dir / 'ringlb'), '--version'])}"
        f"{built_from}; "
        f"{proxy_bench.version([tool('nginx'), '-v'])}; {proxy_bench.version([tool('haproxy'), '-v'])}; "
        f"{proxy_bench.version([tool('wrk'), '-v'])}.",
        "",
        *config_lines(args),
        "",
        "| proxy | fault | completed | failed | req/s vs no fault | p99 ms | max ms | stuck at end (oldest) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for proxy in proxies:
        base = results[(proxy, "none")]["ok_rps"]
        for fault in ["none", *faults]:
            r = results[(proxy, fault)]
            stuck = f"{r['stuck_end']} ({r['stuck_oldest_ms'] / 1000:.1f} s)" if r["stuck_end"] else "0"
            lines.append(f"| {proxy} | {fault} | {r['ok']} | {r['failed']} | {r['ok_rps'] / base:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['max_ms']:.0f} | {stuck} |")
    lines += [
        "",
        "*completed*: responses with a 2xx/3xx status; *failed*: other statuses plus wrk's socket "
        "errors (connect, read, write, timeout); *req/s vs no fault*: completed per second relative "
        "to the same proxy's run without a fault; p99 and max: latency of the requests that got an "
        "answer; *stuck at end*: client requests without an answer for over 1 s when wrk stopped "
        "(`ss` lastsnd/lastrcv of wrk's sockets, 0.3 s before the end), with the oldest one's age. "
        f"A request stuck since the fault would need a run longer than {args.fault_at:g} s + the 30 s "
        "timeout to show in max latency: `just bench-failover --duration 40`.",
    ]
    section = "\n".join(lines) + "\n"
    print()
    print(section)
    if not args.no_write:
        write_section(args.out, section)
        print(f"written to {args.out} (between {BEGIN} and {END})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
