#!/usr/bin/env python3
"""ringlb against nginx and HAProxy, side by side, on identical backends.

Starts three `ringlb-replica` processes on 127.0.0.1, then ringlb (fronting them with
--replica NAME=HOST:PORT), nginx (`hash $arg_id consistent`) and HAProxy
(`balance url_param id` + `hash-type consistent`), all keyed on the same query
parameter, and runs wrk with a random id per request against each in alternation
(A B C, then C B A, ...) and against one replica directly. Prints req/s, p50, p99 and
CPU time per request of the proxy processes, each with its ratio to the best peer, and
writes the table to docs/bench.md. Everything it starts is stopped at the end.

Bounded loads (`--balance-factors`, 1.25,100 unless `--balance-factors off`): one more
ringlb per factor C with `--balance-factor C`, and one more HAProxy with
`hash-balance-factor 100·C` for the first factor, run in the same rounds, each right
beside its unbounded twin; the report gives the ratio bounded ÷ unbounded per round
(median and range). At C = 100 every cap exceeds the pool's whole load, so nothing is
passed over and the ratio is what the shared in-flight counters alone cost per request;
at 1.25 some requests are also sent past their full home replica.

The binaries are looked for where cargo builds them (`cargo metadata`'s target
directory, so CARGO_TARGET_DIR is honoured), or in --bin-dir.

HTTP/2 (unless `--no-http2`): the same rounds again with h2load (h2c with prior
knowledge) at ringlb's port, a `listen … http2` server of nginx and a `proto h2` frontend
of HAProxy, each reaching the replicas over HTTP/1.1; a second table with the same
ratios.

Every peer runs as its users would tune it for this load: nginx's `keepalive_requests`
(1,000 by default, on both sides) and upstream `keepalive` are raised, HAProxy shares
server connections (`http-reuse always`) on all cores.

Only loopback addresses are used; every run is bounded by wrk's and h2load's duration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
request = function()
  return wrk.format("GET", "/home?id=" .. math.random(100000, 999999))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx workers, for instance)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (live ones)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


@dataclass
class Target:
    name: str
    port: int
    pid: int | None  # the process whose tree is the proxy (None: no proxy)
    results: list[dict] = field(default_factory=list)
    twin: str | None = None  # bounded loads: the name of the same proxy unbounded


class Stack:
    """Every process the benchmark starts; stops them all on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=kw.pop("stderr", subprocess.DEVNULL), start_new_session=True, **kw
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# The tools and the Debian packages they come in.
TOOLS = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "h2load": "nghttp2-client"}


def ensure_tools() -> None:
    missing = [pkg for t, pkg in TOOLS.items() if shutil.which(t) is None
               and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    print(f"installing {', '.join(missing)} from apt ...", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def nginx_conf(port: int, h2_port: int, backends: list[int], tmp: Path, idle_upstream: int,
               grpc_port: int | None = None) -> Path:
    """nginx as its users tune it for this load. Its defaults close a client connection,
    and an upstream one, after 1,000 requests (`keepalive_requests`), and keep 128 idle
    upstream connections per worker where 64 clients × 3 replicas need more: both are
    raised, as an operator fronting a busy keyed pool would. `h2_port` speaks h2c with prior
    knowledge (`listen … http2`); replicas are reached over HTTP/1.1 from both ports.
    `grpc_port`: gRPC (h2c) keyed on the `x-user-id` header, to the replicas over h2c
    (`grpc_pass`), with the same keep-alive tuning."""
    grpc = "" if grpc_port is None else f"""
  upstream grpc_replicas {{
    hash $http_x_user_id consistent;
{chr(10).join(f"    server 127.0.0.1:{p};" for p in backends)}
    keepalive {idle_upstream};
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{grpc_port} http2 reuseport;
    location / {{ grpc_pass grpc://grpc_replicas; }}
  }}"""
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in backends)
    location = """
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }"""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream replicas {{
    hash $arg_id consistent;
{servers}
    keepalive {idle_upstream};
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port} reuseport;{location}
  }}
  server {{
    listen 127.0.0.1:{h2_port} http2 reuseport;{location}
  }}{grpc}
}}
""")
    return conf


def haproxy_conf(port: int, backends: list[int], tmp: Path, balance_factor: int | None = None,
                 h2_port: int | None = None, grpc_port: int | None = None) -> Path:
    """`balance_factor`: HAProxy's `hash-balance-factor` (a percentage, ≥ 100), or none.
    `h2_port`: a second frontend speaking h2c with prior knowledge (`proto h2`). HAProxy
    keeps client and server connections alive without a request count limit by default,
    and `http-reuse always` shares idle server connections between clients.
    `grpc_port`: gRPC (h2c) keyed on the `x-user-id` header (`balance hdr(x-user-id)`),
    to the replicas over h2c (`proto h2` on each server)."""
    servers = "\n".join(
        f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(backends, 1)
    )
    bounded = f"\n  hash-balance-factor {balance_factor}" if balance_factor else ""
    h2_frontend = (f"frontend fe_h2\n  bind 127.0.0.1:{h2_port} proto h2\n  default_backend replicas\n"
                   if h2_port else "")
    if grpc_port:
        h2_frontend += (f"frontend fe_grpc\n  bind 127.0.0.1:{grpc_port} proto h2\n"
                        "  default_backend grpc_replicas\nbackend grpc_replicas\n"
                        "  balance hdr(x-user-id)\n  hash-type consistent\n"
                        + "".join(f"  server g{i} 127.0.0.1:{p} proto h2\n" for i, p in enumerate(backends, 1)))
    conf = tmp / ("haproxy.cfg" if balance_factor is None else f"haproxy-hbf{balance_factor}.cfg")
    conf.write_text(f"""
global
  nbthread {os.cpu_count() or 2}
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend replicas
{h2_frontend}backend replicas
  balance url_param id
  hash-type consistent{bounded}
{servers}
""")
    return conf


# The gRPC tables: the echo service's unary call and a server stream of this many replies.
GRPC_CALLS = ("unary", "stream")
GRPC_STREAM_MESSAGES = 100


def grpc_unavailable(args, bin_dir: Path, load: Path) -> str | None:
    """Why the gRPC tables cannot run with these binaries, or None if they can."""
    if args.no_grpc:
        return "--no-grpc"
    if not load.exists():
        return f"no load generator at {load} (cargo build --release -p ringlb-grpc-load)"
    help_text = subprocess.run([str(bin_dir / "ringlb"), "up", "--help"], capture_output=True, text=True).stdout
    if "--upstream-protocol" not in help_text:
        return "this ringlb does not reach replicas over h2c (no --upstream-protocol)"
    return None


LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(output: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        errors += sum(int(x) for x in m.groups())
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        lat[pct] = float(m.group(1)) * LATENCY_UNITS[m.group(2)]
    return {"rps": rps, "requests": total, "errors": errors, "p50_ms": lat["50"], "p99_ms": lat["99"]}


def run_wrk(target: Target, args, script: Path) -> dict:
    pids = process_tree(target.pid) if target.pid else []
    cpu_before = cpu_seconds(pids)
    out = subprocess.run(
        [tool("wrk"), f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
         "--latency", "-s", str(script), f"http://127.0.0.1:{target.port}"],
        capture_output=True, text=True, check=True, timeout=args.duration + 30,
    ).stdout
    cpu_after = cpu_seconds(pids)
    result = parse_wrk(out)
    if pids:
        result["cpu_us_per_req"] = (cpu_after - cpu_before) / max(result["requests"], 1) * 1e6
    return result


def parse_h2load(output: str, log: Path) -> dict:
    """h2load's totals, and p50/p99 from its per-request log (its summary has none)."""
    finished = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)
    if finished is None:
        raise RuntimeError(f"h2load gave no summary:\n{output}")
    rps = float(finished.group(1))
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", output)
    done, succeeded, failed, errored, timeout = (int(x) for x in m.groups())
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    non_2xx = sum(int(x) for x in codes.groups()[1:])
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip())
    pct = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))] / 1e3 if durations else float("nan")
    return {"rps": rps, "requests": done, "errors": failed + errored + timeout + non_2xx,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def run_h2load(target: Target, args, uris: Path, log: Path) -> dict:
    """One timed h2load run (h2c with prior knowledge): `--h2-connections` connections of
    `--h2-streams` concurrent streams each, the URIs (random ids) taken in turn."""
    pids = process_tree(target.pid) if target.pid else []
    cpu_before = cpu_seconds(pids)
    out = subprocess.run(
        [tool("h2load"), f"-t{args.threads}", f"-c{args.h2_connections}", f"-m{args.h2_streams}",
         f"-D{args.duration}", "-i", str(uris), f"--log-file={log}"],
        capture_output=True, text=True, check=True, timeout=args.duration + 30,
    ).stdout
    cpu_after = cpu_seconds(pids)
    result = parse_h2load(out, log)
    if pids:
        result["cpu_us_per_req"] = (cpu_after - cpu_before) / max(result["requests"], 1) * 1e6
    return result


def run_grpc(target: Target, args, load: Path, call: str) -> dict:
    """One timed run of `ringlb-grpc-load` (bench/grpc-load): `--h2-connections`
    connections of `--h2-streams` calls in flight, each keyed on a random `x-user-id`."""
    pids = process_tree(target.pid) if target.pid else []
    cpu_before = cpu_seconds(pids)
    out = subprocess.run(
        [str(load), "--target", f"127.0.0.1:{target.port}", "--call", call,
         "--connections", str(args.h2_connections), "--streams", str(args.h2_streams),
         "--duration", str(args.duration), "--threads", str(args.threads),
         "--messages", str(GRPC_STREAM_MESSAGES)],
        capture_output=True, text=True, check=True, timeout=args.duration + 30,
    ).stdout
    cpu_after = cpu_seconds(pids)
    res = json.loads(out)
    result = {"rps": res["rps"], "requests": res["calls"], "errors": res["errors"],
              "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"]}
    if pids:
        result["cpu_us_per_req"] = (cpu_after - cpu_before) / max(result["requests"], 1) * 1e6
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def describe_machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - best effort
        return "unknown"


def kept_failover_section(path: Path) -> str:
    """The failover benchmark's section of `path` (bench/failover_bench.py writes it
    between its markers), so that rewriting the speed table keeps it."""
    text = path.read_text() if path.exists() else ""
    begin, end = text.find("<!-- failover:begin -->"), text.find("<!-- failover:end -->")
    if begin == -1 or end < begin:
        return ""
    return "\n" + text[begin:end + len("<!-- failover:end -->")] + "\n"


def cargo_release_dir() -> Path:
    """Where `cargo build --release` puts the binaries: cargo's own target directory
    (CARGO_TARGET_DIR or a config's build.target-dir), else ROOT/target."""
    try:
        out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return Path(json.loads(out)["target_directory"]) / "release"
    except Exception:  # noqa: BLE001 - no cargo, say: the environment's word, or the default
        target = os.environ.get("CARGO_TARGET_DIR")
        return (Path(target).resolve() if target else ROOT / "target") / "release"


def source_state() -> str:
    """The commit the binaries are built from, and whether the Rust sources differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "controller",
                                "replica", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - best effort
        return ""
    if not head:
        return ""
    return f" (built from commit {head}" + (" with uncommitted changes" if dirty else "") + ")"


def balance_factors(text: str) -> list[float]:
    """`1.25,100` → [1.25, 100.0]; `off` → []."""
    if text.strip().lower() in ("off", "none", "0", ""):
        return []
    factors = []
    for part in text.split(","):
        try:
            factor = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{part}' is not a balance factor (a number such as 1.25)")
        if not 1.0 <= factor <= 100.0:
            raise argparse.ArgumentTypeError("a balance factor must be from 1 to 100")
        if factor not in factors:
            factors.append(factor)
    return factors


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """min–max of `values`, as text."""
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}" if values else "–"


def summarize(targets: list[Target]) -> list[dict]:
    """Each target's medians over the rounds."""
    rows = []
    for t in targets:
        cpus = [r["cpu_us_per_req"] for r in t.results if "cpu_us_per_req" in r]
        rows.append({
            "name": t.name,
            "rps": median([r["rps"] for r in t.results]),
            "p50": median([r["p50_ms"] for r in t.results]),
            "p99": median([r["p99_ms"] for r in t.results]),
            "cpu": median(cpus),
            "cpu_range": spread(cpus, "{:.1f}"),
            "errors": sum(r["errors"] for r in t.results),
        })
    return rows


def best_of_peers(by_name: dict) -> tuple[float, float, float]:
    """The best req/s, p99 and CPU per request of nginx and HAProxy, each on its own."""
    peers = [by_name["nginx"], by_name["haproxy"]]
    return (max(p["rps"] for p in peers), min(p["p99"] for p in peers), min(p["cpu"] for p in peers))


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| target | req/s | p50 ms | p99 ms | CPU µs/req (proxy) | CPU µs/req min–max | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = "–" if r["cpu"] != r["cpu"] else f"{r['cpu']:.1f}"
        lines.append(f"| {r['name']} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {cpu} | "
                     f"{r['cpu_range']} | {r['errors']} |")
    return lines


def per_round_table(targets: list[Target], rounds: int) -> list[str]:
    lines = [
        "| round | target | req/s | p50 ms | p99 ms | CPU µs/req |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for i in range(rounds):
        for t in (targets if i % 2 == 0 else targets[::-1]):
            r = t.results[i]
            lines.append(f"| {i + 1} | {t.name} | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                         f"{r.get('cpu_us_per_req', float('nan')):.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--h2-connections", type=int, default=16,
                        help="HTTP/2 table: h2load connections (default 16)")
    parser.add_argument("--h2-streams", type=int, default=8,
                        help="HTTP/2 table: concurrent streams per connection (default 8)")
    parser.add_argument("--no-http2", action="store_true", help="skip the HTTP/2 table")
    parser.add_argument("--no-grpc", action="store_true", help="skip the gRPC tables")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench.md")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--bin-dir", type=Path,
                        help="where ringlb and ringlb-replica are (implies --no-build); default: "
                             "cargo's target directory (CARGO_TARGET_DIR if set), release/")
    parser.add_argument("--baseline", type=Path,
                        help="another ringlb binary (an earlier commit's, say) run as a further target "
                             "in the same rounds, to measure a change against the same peers")
    parser.add_argument("--balance-factors", type=balance_factors, default="1.25,100", metavar="C,...",
                        help="bounded loads: also run ringlb --balance-factor C for each C, and HAProxy "
                             "hash-balance-factor 100·C for the first, beside the unbounded ones "
                             "(default 1.25,100: 100 passes nothing over, so it measures the counters "
                             "alone; off to skip)")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 20 and 1 <= args.duration <= 120):
        parser.error("--rounds must be 1..20 and --duration 1..120")

    ensure_tools()
    if args.bin_dir is None:
        args.bin_dir = cargo_release_dir()
        if not args.no_build:
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringlb", "-p", "ringlb-replica",
                            "-p", "ringlb-grpc-load"], cwd=ROOT, check=True)
    bin_dir = args.bin_dir
    factors = args.balance_factors
    hp_factor = round(factors[0] * 100) if factors else None

    stack = Stack()
    grpc_sets: dict[str, list[Target]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ringlb-bench-"))
    try:
        backends = []
        for i in range(1, 4):
            port = free_port()
            stack.start([str(bin_dir / "ringlb-replica"), "--id", f"Server{i}", "--port", str(port)])
            backends.append(port)
        for port in backends:
            wait_for_port(port)

        def start_ringlb(binary: Path, *extra: str, key: str = "query:id") -> tuple[int, subprocess.Popen]:
            port, ops = free_port(), free_port()
            proc = stack.start(
                [str(binary), "up", "--listen", f"127.0.0.1:{port}",
                 "--ops-listen", f"127.0.0.1:{ops}", "--key", key,
                 *sum((["--replica", f"Server{i}=127.0.0.1:{p}"] for i, p in enumerate(backends, 1)), []),
                 *extra],
                env=dict(os.environ, RUST_LOG="warn"),
            )
            return port, proc

        # In each round the targets run in this order, and in the next in reverse (ABBA):
        # a bounded proxy runs right beside its unbounded twin, first after it, then
        # before it, so that a drift of the machine's load hits both alike.
        # The first factor right after ringlb, the others right before it.
        targets = []
        for factor in factors[:0:-1]:
            port, proc = start_ringlb(bin_dir / "ringlb", "--balance-factor", str(factor))
            targets.append(Target(f"ringlb bounded {factor:g}", port, proc.pid, twin="ringlb"))
        rl_port, ringlb = start_ringlb(bin_dir / "ringlb")
        targets.append(Target("ringlb", rl_port, ringlb.pid))
        if factors:
            port, proc = start_ringlb(bin_dir / "ringlb", "--balance-factor", str(factors[0]))
            targets.append(Target(f"ringlb bounded {factors[0]:g}", port, proc.pid, twin="ringlb"))
        ng_port, ng_h2_port = free_port(), free_port()
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / d).mkdir()
        # Idle upstream connections kept per nginx worker: every client connection's
        # request may be waiting on any replica at once.
        idle_upstream = max(args.connections, args.h2_connections * args.h2_streams) * len(backends)
        # gRPC: the replicas' echo service over h2c, keyed on `x-user-id`, when this build
        # of ringlb reaches replicas over h2c and the load generator is there.
        load = bin_dir / "ringlb-grpc-load"
        grpc_skipped = grpc_unavailable(args, bin_dir, load)
        ng_grpc_port, hp_grpc_port = (None, None) if grpc_skipped else (free_port(), free_port())
        nginx = stack.start([tool("nginx"), "-c", str(nginx_conf(ng_port, ng_h2_port, backends, tmp,
                                                                  idle_upstream, ng_grpc_port)),
                             "-p", str(tmp)])
        targets.append(Target("nginx", ng_port, nginx.pid))
        hp_port, hp_h2_port = free_port(), free_port()
        haproxy = stack.start([tool("haproxy"), "-f", str(haproxy_conf(hp_port, backends, tmp,
                                                                       h2_port=hp_h2_port,
                                                                       grpc_port=hp_grpc_port))])
        targets.append(Target("haproxy", hp_port, haproxy.pid))
        # HTTP/2 from clients (h2c with prior knowledge): ringlb on its one port, nginx and
        # HAProxy on a port of their own; replicas reached over HTTP/1.1 by all three.
        h2_targets = [] if args.no_http2 else [
            Target("ringlb", rl_port, ringlb.pid),
            Target("nginx", ng_h2_port, nginx.pid),
            Target("haproxy", hp_h2_port, haproxy.pid),
        ]
        if not grpc_skipped:
            gr_port, gr_proc = start_ringlb(bin_dir / "ringlb", "--upstream-protocol", "h2c",
                                            key="header:x-user-id")
            for call in GRPC_CALLS:
                grpc_sets[call] = [Target("ringlb", gr_port, gr_proc.pid),
                                   Target("nginx", ng_grpc_port, nginx.pid),
                                   Target("haproxy", hp_grpc_port, haproxy.pid)]
        if hp_factor is not None:
            port = free_port()
            proc = stack.start([tool("haproxy"), "-f", str(haproxy_conf(port, backends, tmp, hp_factor))])
            targets.append(Target(f"haproxy bounded {hp_factor}", port, proc.pid, twin="haproxy"))
        if args.baseline:
            # First, so that it runs right beside ringlb too.
            port, proc = start_ringlb(args.baseline)
            targets.insert(0, Target("ringlb baseline", port, proc.pid))
            if h2_targets:
                h2_targets.insert(0, Target("ringlb baseline", port, proc.pid))
        for t in targets + h2_targets + sum(grpc_sets.values(), []):
            wait_for_port(t.port)

        script = tmp / "random-id.lua"
        script.write_text(WRK_SCRIPT)
        direct = Target("one replica, direct", backends[0], None)

        # Warm-up: connections, pools, caches.
        for t in targets:
            subprocess.run([tool("wrk"), "-t1", "-c8", "-d1s", "-s", str(script),
                            f"http://127.0.0.1:{t.port}"], capture_output=True, check=True)
        for r in range(1, args.rounds + 1):
            for t in (targets if r % 2 else targets[::-1]):
                res = run_wrk(t, args, script)
                t.results.append(res)
                print(f"round {r} {t.name:20} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:.3f} ms  "
                      f"p99 {res['p99_ms']:.3f} ms  cpu {res.get('cpu_us_per_req', 0):.2f} us/req  "
                      f"errors {res['errors']}", flush=True)
        direct.results.append(run_wrk(direct, args, script))

        for t in h2_targets:
            uris = tmp / f"uris-{t.port}.txt"
            ids = [f"http://127.0.0.1:{t.port}/home?id={100000 + (i * 7919) % 900000}" for i in range(4096)]
            uris.write_text("\n".join(ids) + "\n")
            subprocess.run([tool("h2load"), "-c4", "-m4", "-n2000", "-i", str(uris)],
                           capture_output=True, check=True)
        for r in range(1, args.rounds + 1):
            for t in (h2_targets if r % 2 else h2_targets[::-1]):
                res = run_h2load(t, args, tmp / f"uris-{t.port}.txt", tmp / f"h2load-{t.port}.log")
                t.results.append(res)
                print(f"round {r} h2 {t.name:17} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:.3f} ms  "
                      f"p99 {res['p99_ms']:.3f} ms  cpu {res.get('cpu_us_per_req', 0):.2f} us/req  "
                      f"errors {res['errors']}", flush=True)

        for call, grpc_targets in grpc_sets.items():
            for t in grpc_targets:  # warm-up: connections, pools
                subprocess.run([str(load), "--target", f"127.0.0.1:{t.port}", "--call", call,
                                "--duration", "1", "--connections", "4", "--streams", "4"],
                               capture_output=True, check=True)
            for r in range(1, args.rounds + 1):
                for t in (grpc_targets if r % 2 else grpc_targets[::-1]):
                    res = run_grpc(t, args, load, call)
                    t.results.append(res)
                    print(f"round {r} grpc {call:6} {t.name:10} {res['rps']:>9.0f} calls/s  "
                          f"p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
                          f"cpu {res.get('cpu_us_per_req', 0):.2f} us/call  errors {res['errors']}", flush=True)
    finally:
        stack.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = summarize(targets + [direct])
    by_name = {r["name"]: r for r in rows}
    ours = by_name["ringlb"]
    best_rps, best_p99, best_cpu = best_of_peers(by_name)
    order = ", ".join(t.name for t in targets)

    lines = [
        "# Proxy benchmark: ringlb vs nginx vs HAProxy",
        "",
        f"Measured {datetime.date.today().isoformat()} on {describe_machine()} by `just bench` "
        f"(`bench/proxy_bench.py`): three `ringlb-replica` backends on 127.0.0.1, each proxy keyed "
        f"on the query parameter `id` with consistent hashing, wrk `-t{args.threads} -c{args.connections} "
        f"-d{args.duration}s` with a random six-digit id per request, {args.rounds} rounds run in "
        f"alternation ({order} in odd rounds, the reverse in even ones); medians over rounds. "
        f"Everything shares the same cores, wrk included, so only the ratios within one run mean anything.",
        "",
        f"Versions: {version([str(bin_dir / 'ringlb'), '--version'])}{source_state()}; "
        f"{version([tool('nginx'), '-v'])}; {version([tool('haproxy'), '-v'])}; {version([tool('wrk'), '-v'])}"
        + ("" if args.no_http2 else f"; {version([tool('h2load'), '--version'])}") + ".",
        "",
        "Each peer is configured as its users would for this load: "
        "nginx with `keepalive_requests 1000000` towards clients and replicas (its "
        f"default, 1,000, closes each connection every 1,000 requests) and `keepalive {idle_upstream}` "
        "idle upstream connections (every connection's request may wait on any replica); HAProxy "
        "with `http-reuse always`, `nbthread` = cores and no limit on requests per connection (its "
        "default); ringlb with its defaults.",
        "",
    ]
    lines += table(rows)
    lines += [
        "",
        "Ratios of ringlb to the best peer in this run (targets: req/s ≥ 1.10, p99 ≤ 1.00, CPU ≤ 0.85):",
        "",
        f"- req/s: {ours['rps'] / best_rps:.2f}× the best of nginx and HAProxy ({best_rps:.0f})",
        f"- p99: {ours['p99'] / best_p99:.2f}× the best peer's p99 ({best_p99:.3f} ms)",
        f"- CPU per request: {ours['cpu'] / best_cpu:.2f}× the best peer's ({best_cpu:.1f} µs)",
        "",
    ]
    named = {t.name: t for t in targets}

    def per_round(k: str, num: str, den: str) -> list[float]:
        return [b[k] / a[k] for a, b in zip(named[den].results, named[num].results)]

    if args.baseline:
        base = by_name["ringlb baseline"]
        cpu_r = per_round("cpu_us_per_req", "ringlb", "ringlb baseline")
        lines += [
            f"Baseline (`{args.baseline}`, {version([str(args.baseline), '--version'])}), same rounds, "
            f"run right beside ringlb: CPU per request {base['cpu'] / best_cpu:.2f}× the best peer's; "
            f"ringlb ÷ baseline: CPU per request {ours['cpu'] / base['cpu']:.3f}× (per round: median "
            f"{median(cpu_r):.3f}×, range {spread(cpu_r)}), req/s {ours['rps'] / base['rps']:.3f}×, "
            f"p99 {ours['p99'] / base['p99']:.3f}×.",
            "",
        ]
    twins = [t for t in targets if t.twin]
    loose = [f for f in factors if f / len(backends) >= 1]
    tight = [f for f in factors if f / len(backends) < 1]
    if twins:
        lines += [
            "## Bounded loads: what the shared counters cost",
            "",
            "Under `ringlb up --balance-factor C` each replica may hold at most ⌈C·w/W·(L+1)⌉ requests "
            "in flight (L: the pool's requests in flight); two counters shared by all workers, the "
            "replica's and the pool's, are incremented and decremented once per request, and read for "
            "each candidate considered. "
            + ", ".join(f"`--balance-factor {f:g}`" for f in factors)
            + f" and HAProxy with `hash-balance-factor {hp_factor}` ran in the same rounds as their "
            "unbounded twins, each right beside its twin, on one side in odd rounds and on the other "
            "in even ones. "
            + (f"At C = {', '.join(f'{f:g}' for f in loose)} every cap exceeds the pool's whole load "
               f"(C·w/W ≥ 1 with {len(backends)} equal replicas), so no request is passed over: the ratio "
               f"is the cost of the counters alone. " if loose else "")
            + (f"At C = {', '.join(f'{f:g}' for f in tight)} random keys have no hot key, but only a "
               "handful of requests are in flight per replica at once on this machine, so the caps are "
               "small and some requests go past their full home replica to the next candidate (a less "
               "busy replica). " if tight else "")
            + f"Ratios are bounded ÷ unbounded per round, their median and range over the "
            f"{args.rounds} rounds, and in how many rounds the bounded twin used more CPU per request; "
            "the issue's budget for ringlb is CPU per request ≤ 1.03×.",
            "",
            "| bounded target | CPU µs/req unbounded → bounded (medians) | CPU/req ratio, median | range "
            "| rounds costlier | req/s ratio | range | p99 ratio | range |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in twins:
            u = named[t.twin]
            ratio = {k: per_round(k, t.name, u.name) for k in ("cpu_us_per_req", "rps", "p99_ms")}
            costlier = sum(x > 1 for x in ratio["cpu_us_per_req"])
            lines.append(
                f"| {t.name} | {by_name[u.name]['cpu']:.2f} → {by_name[t.name]['cpu']:.2f} | "
                f"{median(ratio['cpu_us_per_req']):.3f} | {spread(ratio['cpu_us_per_req'])} | "
                f"{costlier} of {len(ratio['cpu_us_per_req'])} | "
                f"{median(ratio['rps']):.3f} | {spread(ratio['rps'])} | "
                f"{median(ratio['p99_ms']):.3f} | {spread(ratio['p99_ms'])} |")
        lines.append("")
    if h2_targets:
        h2_rows = summarize(h2_targets)
        h2_by_name = {r["name"]: r for r in h2_rows}
        h2_ours = h2_by_name["ringlb"]
        h2_rps, h2_p99, h2_cpu = best_of_peers(h2_by_name)
        lines += [
            "## HTTP/2 from clients (h2load)",
            "",
            f"The same replicas and keys, with h2load (h2c with prior knowledge) `-t{args.threads} "
            f"-c{args.h2_connections} -m{args.h2_streams} -D{args.duration}`: {args.h2_connections} "
            f"connections of {args.h2_streams} concurrent streams, 4,096 ids taken in turn; ringlb on its "
            "one port, nginx on a second `listen … http2` server, HAProxy on a second frontend with "
            "`bind … proto h2`; every proxy reaches the replicas over HTTP/1.1 with kept-alive "
            "connections. p50 and p99 come from h2load's per-request log. Same rounds, alternated.",
            "",
        ]
        lines += table(h2_rows)
        lines += [
            "",
            f"- req/s: {h2_ours['rps'] / h2_rps:.2f}× the best of nginx and HAProxy ({h2_rps:.0f})",
            f"- p99: {h2_ours['p99'] / h2_p99:.2f}× the best peer's p99 ({h2_p99:.3f} ms)",
            f"- CPU per request: {h2_ours['cpu'] / h2_cpu:.2f}× the best peer's ({h2_cpu:.1f} µs)",
            "",
        ]
        if args.baseline:
            base = h2_by_name["ringlb baseline"]
            lines += [f"ringlb ÷ baseline over HTTP/2: CPU per request {h2_ours['cpu'] / base['cpu']:.3f}×, "
                      f"req/s {h2_ours['rps'] / base['rps']:.3f}×, p99 {h2_ours['p99'] / base['p99']:.3f}×.", ""]
    if grpc_sets:
        lines += [
            "## gRPC, keyed on a metadata header",
            "",
            f"The replicas' echo service (`ringlb.echo.v1.Echo`) over h2c end to end, each call with a random "
            f"`x-user-id` among 100,000 and each proxy keyed on that header with consistent hashing: ringlb "
            "(`--key header:x-user-id --upstream-protocol h2c`), nginx (`hash $http_x_user_id consistent`, "
            "`grpc_pass`, the same keep-alive tuning), HAProxy (`balance hdr(x-user-id)`, `hash-type "
            f"consistent`, servers with `proto h2`). `ringlb-grpc-load` (bench/grpc-load): "
            f"{args.h2_connections} connections of {args.h2_streams} calls in flight, {args.threads} threads, "
            f"{args.duration} s a run; a call counts when its trailers say `grpc-status: 0` and every reply "
            f"arrived. Unary calls, then server streams of {GRPC_STREAM_MESSAGES} replies; same rounds, "
            "alternated. CPU is per call.",
            "",
        ]
        for call, grpc_targets in grpc_sets.items():
            g_rows = summarize(grpc_targets)
            g_by_name = {r["name"]: r for r in g_rows}
            g_ours = g_by_name["ringlb"]
            g_rps, g_p99, g_cpu = best_of_peers(g_by_name)
            lines += [f"### {'Unary' if call == 'unary' else f'Server stream ({GRPC_STREAM_MESSAGES} replies)'}", ""]
            lines += [l.replace("req/s", "calls/s").replace("µs/req", "µs/call") for l in table(g_rows)]
            lines += [
                "",
                f"- calls/s: {g_ours['rps'] / g_rps:.2f}× the best of nginx and HAProxy ({g_rps:.0f})",
                f"- p99: {g_ours['p99'] / g_p99:.2f}× the best peer's p99 ({g_p99:.3f} ms)",
                f"- CPU per call: {g_ours['cpu'] / g_cpu:.2f}× the best peer's ({g_cpu:.1f} µs)",
                "",
            ]
    elif grpc_skipped:
        lines += [f"gRPC tables not run: {grpc_skipped}.", ""]
    lines += ["Per round, in the order run (HTTP/1.1):", ""]
    lines += per_round_table(targets, args.rounds)
    if h2_targets:
        lines += ["", "Per round, in the order run (HTTP/2):", ""]
        lines += per_round_table(h2_targets, args.rounds)
    for call, grpc_targets in grpc_sets.items():
        lines += ["", f"Per round, in the order run (gRPC {call}):", ""]
        lines += per_round_table(grpc_targets, args.rounds)
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + kept_failover_section(args.out))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
