#!/usr/bin/env python3
"""ringlb against nginx and HAProxy, side by side, on identical backends.

Starts three `ringlb-replica` processes on 127.0.0.1, then ringlb (fronting them with
--replica NAME=HOST:PORT), nginx (`hash $arg_id consistent`) and HAProxy
(`balance url_param id` + `hash-type consistent`), all keyed on the same query
parameter, and runs wrk with a random id per request against each in alternation
(A B C A B C ...) and against one replica directly. Prints req/s, p50, p99 and CPU
time per request of the proxy processes, each with its ratio to the best peer, and
writes the table to docs/bench.md. Everything it starts is stopped at the end.

Only loopback addresses are used; every run is bounded by wrk's duration.
"""

from __future__ import annotations

import argparse
import datetime
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


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "haproxy", "wrk") if shutil.which(t) is None
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


def nginx_conf(port: int, backends: list[int], tmp: Path) -> Path:
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in backends)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream replicas {{
    hash $arg_id consistent;
{servers}
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return conf


def haproxy_conf(port: int, backends: list[int], tmp: Path) -> Path:
    servers = "\n".join(
        f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(backends, 1)
    )
    conf = tmp / "haproxy.cfg"
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
backend replicas
  balance url_param id
  hash-type consistent
{servers}
""")
    return conf


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench.md")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release",
                        help="where ringlb and ringlb-replica are (implies --no-build if not the default)")
    parser.add_argument("--baseline", type=Path,
                        help="another ringlb binary (an earlier commit's, say) run as a fourth target "
                             "in the same rounds, to measure a change against the same peers")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 20 and 1 <= args.duration <= 120):
        parser.error("--rounds must be 1..20 and --duration 1..120")

    ensure_tools()
    if not args.no_build and args.bin_dir == ROOT / "target" / "release":
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringlb", "-p", "ringlb-replica"],
                       cwd=ROOT, check=True)
    bin_dir = args.bin_dir

    stack = Stack()
    tmp = Path(tempfile.mkdtemp(prefix="ringlb-bench-"))
    try:
        backends = []
        for i in range(1, 4):
            port = free_port()
            stack.start([str(bin_dir / "ringlb-replica"), "--id", f"Server{i}", "--port", str(port)])
            backends.append(port)
        for port in backends:
            wait_for_port(port)

        rl_port, rl_ops = free_port(), free_port()
        ringlb = stack.start(
            [str(bin_dir / "ringlb"), "up", "--listen", f"127.0.0.1:{rl_port}",
             "--ops-listen", f"127.0.0.1:{rl_ops}", "--key", "query:id",
             *sum((["--replica", f"Server{i}=127.0.0.1:{p}"] for i, p in enumerate(backends, 1)), [])],
            env=dict(os.environ, RUST_LOG="warn"),
        )
        if args.baseline:
            base_port, base_ops = free_port(), free_port()
            baseline = stack.start(
                [str(args.baseline), "up", "--listen", f"127.0.0.1:{base_port}",
                 "--ops-listen", f"127.0.0.1:{base_ops}", "--key", "query:id",
                 *sum((["--replica", f"Server{i}=127.0.0.1:{p}"] for i, p in enumerate(backends, 1)), [])],
                env=dict(os.environ, RUST_LOG="warn"),
            )
        ng_port = free_port()
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / d).mkdir()
        nginx = stack.start([tool("nginx"), "-c", str(nginx_conf(ng_port, backends, tmp)), "-p", str(tmp)])
        hp_port = free_port()
        haproxy = stack.start([tool("haproxy"), "-f", str(haproxy_conf(hp_port, backends, tmp))])
        for port in (rl_port, ng_port, hp_port):
            wait_for_port(port)

        script = tmp / "random-id.lua"
        script.write_text(WRK_SCRIPT)
        targets = [
            Target("ringlb", rl_port, ringlb.pid),
            Target("nginx", ng_port, nginx.pid),
            Target("haproxy", hp_port, haproxy.pid),
        ]
        if args.baseline:
            wait_for_port(base_port)
            targets.append(Target("ringlb baseline", base_port, baseline.pid))
        direct = Target("one replica, direct", backends[0], None)

        # Warm-up: connections, pools, caches.
        for t in targets:
            subprocess.run([tool("wrk"), "-t1", "-c8", "-d1s", "-s", str(script),
                            f"http://127.0.0.1:{t.port}"], capture_output=True, check=True)
        for r in range(1, args.rounds + 1):
            for t in targets:
                res = run_wrk(t, args, script)
                t.results.append(res)
                print(f"round {r} {t.name:8} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:.3f} ms  "
                      f"p99 {res['p99_ms']:.3f} ms  cpu {res.get('cpu_us_per_req', 0):.1f} us/req  "
                      f"errors {res['errors']}", flush=True)
        direct.results.append(run_wrk(direct, args, script))
    finally:
        stack.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for t in targets + [direct]:
        rows.append({
            "name": t.name,
            "rps": median([r["rps"] for r in t.results]),
            "p50": median([r["p50_ms"] for r in t.results]),
            "p99": median([r["p99_ms"] for r in t.results]),
            "cpu": median([r["cpu_us_per_req"] for r in t.results if "cpu_us_per_req" in r]),
            "errors": sum(r["errors"] for r in t.results),
        })
    ours = rows[0]
    peers = rows[1:3]
    best_rps = max(p["rps"] for p in peers)
    best_p99 = min(p["p99"] for p in peers)
    best_cpu = min(p["cpu"] for p in peers)

    lines = [
        "# Proxy benchmark: ringlb vs nginx vs HAProxy",
        "",
        f"Measured {datetime.date.today().isoformat()} on {describe_machine()} by `just bench` "
        f"(`bench/proxy_bench.py`): three `ringlb-replica` backends on 127.0.0.1, each proxy keyed "
        f"on the query parameter `id` with consistent hashing, wrk `-t{args.threads} -c{args.connections} "
        f"-d{args.duration}s` with a random six-digit id per request, {args.rounds} rounds run in "
        f"alternation (ringlb, nginx, HAProxy, ringlb, …); medians over rounds. Everything shares the "
        f"same cores, wrk included, so only the ratios within one run mean anything.",
        "",
        f"Versions: {version([str(args.bin_dir / 'ringlb'), '--version'])}; "
        f"{version([tool('nginx'), '-v'])}; {version([tool('haproxy'), '-v'])}; {version([tool('wrk'), '-v'])}.",
        "",
        "| target | req/s | p50 ms | p99 ms | CPU µs/req (proxy) | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = "–" if r["cpu"] != r["cpu"] else f"{r['cpu']:.1f}"
        lines.append(f"| {r['name']} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {cpu} | {r['errors']} |")
    lines += [
        "",
        "Ratios of ringlb to the best peer in this run (targets: req/s ≥ 1.10, p99 ≤ 1.00, CPU ≤ 0.85):",
        "",
        f"- req/s: {ours['rps'] / best_rps:.2f}× the best of nginx and HAProxy ({best_rps:.0f})",
        f"- p99: {ours['p99'] / best_p99:.2f}× the best peer's p99 ({best_p99:.3f} ms)",
        f"- CPU per request: {ours['cpu'] / best_cpu:.2f}× the best peer's ({best_cpu:.1f} µs)",
        "",
    ]
    if args.baseline:
        base = rows[3]
        lines += [
            f"Baseline (`{args.baseline}`, {version([str(args.baseline), '--version'])}), same rounds: "
            f"CPU per request {base['cpu'] / best_cpu:.2f}× the best peer's; ringlb ÷ baseline: "
            f"CPU per request {ours['cpu'] / base['cpu']:.3f}×, req/s {ours['rps'] / base['rps']:.3f}×, "
            f"p99 {ours['p99'] / base['p99']:.3f}×.",
            "",
        ]
    lines += [
        "Per round:",
        "",
        "| round | target | req/s | p50 ms | p99 ms | CPU µs/req |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for i in range(args.rounds):
        for t in targets:
            r = t.results[i]
            lines.append(f"| {i + 1} | {t.name} | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                         f"{r.get('cpu_us_per_req', float('nan')):.1f} |")
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + kept_failover_section(args.out))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
