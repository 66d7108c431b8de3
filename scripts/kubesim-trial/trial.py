#!/usr/bin/env python3
"""ringlb's Kubernetes mode on kubesim under the faults of issue 18 (Python 3 stdlib only).

    python3 scripts/kubesim-trial/trial.py all
    python3 scripts/kubesim-trial/trial.py partition freeze --bin /path/to/ringlb --repo /path/to/checkout

Each scenario runs on a fresh kubesim: crds/ and deploy/ of --repo applied with kubectl,
the demo ServerPool scaled to --replicas (6), two `ringlb operator` processes (the Lease
elects one) and two `ringlb proxy` processes run by hand with the env of deploy/'s
Deployments (KUBECONFIG with a bearer token per ServiceAccount, so deploy/rbac.yaml is
enforced), and an open-loop load generator (--rate requests/s, alternating between the
two proxies, a new connection per request, 30 s timeout). Monitors poll each proxy's
/ring, the pools' status, the pods and the Lease every 0.2-0.5 s. Raw logs (requests,
rings, status, pods, lease, events, kubesim's request log, every process's output and
every pod's log) go to --logs/<scenario>/; a summary table ends the run.

Scenarios: partition, leader-kill, freeze, clash, unpullable (see each function).
"""
import argparse
import base64
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
# kubesim lives beside the project (../shared/kubesim), never inside it.
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KUBESIM = os.environ.get("KUBESIM_DIR", os.path.join(REPO, "..", "shared", "kubesim"))
NS = "default"
POOL = "demo"
SP_PATH = "/apis/ringlb.dev/v1alpha1/namespaces/default/serverpools"
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/default/leases/ringlb-operator"
UNPULLABLE = "nosuchimage:v1"


def now():
    return time.time()


def parse_time(s):
    if not s:
        return None
    try:
        s = s.replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def port_free(host, port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http_json(host, port, method, path, body=None, ctype="application/json", timeout=5.0, headers=None):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None
        hdrs = {"User-Agent": "trial.py"}
        hdrs.update(headers or {})
        if body is not None:
            data = json.dumps(body).encode() if not isinstance(body, (bytes, str)) else (
                body.encode() if isinstance(body, str) else body)
            hdrs["Content-Type"] = ctype
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw.decode(errors="replace")
    finally:
        conn.close()


class JsonlWriter:
    def __init__(self, path):
        self.f = open(path, "a")
        self.lock = threading.Lock()

    def write(self, obj):
        with self.lock:
            self.f.write(json.dumps(obj, sort_keys=True) + "\n")
            self.f.flush()

    def close(self):
        with self.lock:
            self.f.close()


# ================================================================ the simulated cluster


class Sim:
    """One fresh kubesim with ringlb's operators and proxies, for one scenario."""

    def __init__(self, args, scenario):
        self.args = args
        self.scenario = scenario
        self.logdir = os.path.join(args.logs, scenario)
        if os.path.isdir(self.logdir):
            shutil.rmtree(self.logdir)
        os.makedirs(self.logdir)
        self.run_dir = tempfile.mkdtemp(prefix=f"trial-{scenario}-", dir="/tmp")
        pb = args.port_base
        self.host = "127.0.0.1"
        self.api_port, self.ctl_port = pb, pb + 1
        self.op_ops = {"ringlb-operator-a": pb + 2, "ringlb-operator-b": pb + 3}
        self.proxy_ports = {"ringlb-proxy-1": (pb + 4, pb + 5), "ringlb-proxy-2": (pb + 6, pb + 7)}
        self.kubeconfig = os.path.join(self.run_dir, "kubeconfig")
        self.procs = {}  # name -> Popen
        self.kubesim = None
        self.partition_files = {}
        self.notes = []
        self.marks = []  # (t, text): the scenario's timeline
        self.kubectl_log = open(os.path.join(self.logdir, "kubectl.log"), "a")
        self.t_start = now()

    # ------------------------------------------------------------ logging

    def mark(self, text):
        t = now()
        self.marks.append((t, text))
        print(f"  [{t - self.t_start:7.2f}s] {text}", flush=True)

    def note(self, text):
        self.notes.append(text)
        print(f"  NOTE: {text}", flush=True)

    # ------------------------------------------------------------ kubesim

    def start(self):
        ports = [self.api_port, self.ctl_port] + list(self.op_ops.values()) + [
            p for pair in self.proxy_ports.values() for p in pair]
        busy = [p for p in ports if not port_free(self.host, p)]
        if busy:
            raise RuntimeError(f"ports in use on {self.host}: {busy} (choose another --port-base)")
        env = dict(os.environ, TRIAL_POD_IP_BLOCK=str(self.args.ip_block), KUBESIM_DIR=KUBESIM)
        cmd = [sys.executable, os.path.join(HERE, "kubesim_launch.py"),
               "--listen", f"{self.host}:{self.api_port}", "--ctl", f"{self.host}:{self.ctl_port}",
               "--kubeconfig", self.kubeconfig, "--run-dir", self.run_dir, "--bin", self.args.bin,
               "--max-lifetime", str(self.args.max_lifetime), "--parent-pid", str(os.getpid())]
        out = open(os.path.join(self.logdir, "kubesim.log"), "ab")
        self.kubesim = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, cwd=self.run_dir, env=env)
        deadline = now() + 20
        while now() < deadline:
            try:
                st, _ = http_json(self.host, self.ctl_port, "GET", "/_ctl/healthz", timeout=1)
                if st == 200 and os.path.exists(self.kubeconfig):
                    break
            except OSError:
                pass
            if self.kubesim.poll() is not None:
                raise RuntimeError("kubesim exited at start (see kubesim.log)")
            time.sleep(0.2)
        else:
            raise RuntimeError("kubesim did not answer in 20 s")
        self.mark(f"kubesim up (pid {self.kubesim.pid}, API {self.host}:{self.api_port}, "
                  f"pods on 127.0.{self.args.ip_block}.x, run dir {self.run_dir})")

    def api(self, method, path, body=None, ctype="application/json", timeout=5.0):
        return http_json(self.host, self.api_port, method, path, body, ctype, timeout)

    def ctl(self, method, path, body=None, timeout=10.0):
        return http_json(self.host, self.ctl_port, method, path, body, timeout=timeout)

    def kubectl(self, *args, check=True, timeout=60):
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        t = now()
        r = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=timeout)
        self.kubectl_log.write(f"--- {t:.3f} kubectl {' '.join(args)} -> {r.returncode} ({now() - t:.2f} s)\n"
                               f"{r.stdout}{r.stderr}\n")
        self.kubectl_log.flush()
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def apply_manifests(self):
        repo = self.args.repo
        self.kubectl("apply", "--validate=false", "-f", os.path.join(repo, "crds"))
        self.kubectl("wait", "--for", "condition=established", "crd/serverpools.ringlb.dev", "--timeout=30s")
        # deploy/ as `kubectl apply -k deploy/` renders it, less the kinds kubesim does
        # not serve (NetworkPolicy: it has no networking.k8s.io, and no network to
        # enforce one on).
        rendered = self.kubectl("kustomize", os.path.join(repo, "deploy")).stdout
        kept, dropped = [], []
        for doc in rendered.split("\n---\n"):
            kind = next((l.split(":", 1)[1].strip() for l in doc.splitlines() if l.startswith("kind:")), "")
            (dropped if kind in ("NetworkPolicy",) else kept).append(doc)
        if dropped:
            self.note(f"not applied (kubesim does not serve them): {len(dropped)} NetworkPolicy")
        path = os.path.join(self.run_dir, "deploy.yaml")
        with open(path, "w") as f:
            f.write("\n---\n".join(kept))
        self.kubectl("apply", "--validate=false", "-f", path)
        self.mark("crds/ and deploy/ applied")
        if self.args.replicas:
            self.kubectl("scale", f"sp/{POOL}", f"--replicas={self.args.replicas}")
            self.mark(f"sp/{POOL} scaled to {self.args.replicas} (before any operator runs)")

    # ------------------------------------------------------------ identities and env

    def kubeconfig_for(self, sa):
        """A kubeconfig with a bearer token registered for the ServiceAccount (RBAC enforced)."""
        if not self.args.rbac:
            return self.kubeconfig
        token = f"trial-{sa}-{os.getpid()}"
        st, body = self.ctl("POST", "/_ctl/token", {"token": token, "user": f"system:serviceaccount:{NS}:{sa}"})
        if st != 200:
            raise RuntimeError(f"registering a token for {sa}: {st} {body}")
        path = os.path.join(self.run_dir, f"kubeconfig-{sa}")
        with open(self.kubeconfig) as f:
            text = f.read()
        # kubesim writes "user:\n    {}" for the admin: replace it with the token.
        text = text.replace("  user:\n    {}\n", f"  user:\n    token: {token}\n")
        if f"token: {token}" not in text:
            raise RuntimeError("could not write a token into the kubeconfig")
        with open(path, "w") as f:
            f.write(text)
        return path

    def deployment_env(self, deployment, pod_name):
        """The container env of a stored Deployment, resolved as the kubelet would."""
        st, d = self.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/{deployment}")
        if st != 200:
            raise RuntimeError(f"deployment {deployment}: {st} {d}")
        c = d["spec"]["template"]["spec"]["containers"][0]
        env = {}
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    fp = vf["fieldRef"]["fieldPath"]
                    env[e["name"]] = {"metadata.namespace": NS, "metadata.name": pod_name}.get(fp, "")
                elif "secretKeyRef" in vf:
                    ref = vf["secretKeyRef"]
                    # As the kubelet: the container waits until the Secret exists (the
                    # operator makes each pool's admin token).
                    deadline = now() + 60
                    while True:
                        st, sec = self.api("GET", f"/api/v1/namespaces/{NS}/secrets/{ref['name']}")
                        if st == 200 or now() > deadline:
                            break
                        time.sleep(0.5)
                    if st != 200:
                        raise RuntimeError(f"Secret {ref['name']} never appeared: {st}")
                    env[e["name"]] = base64.b64decode(sec["data"][ref["key"]]).decode()
        return env, c.get("args") or []

    def start_process(self, name, args, env, preload=None):
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
        full.update(env)
        if preload:
            full["LD_PRELOAD"] = self.args.partition_so
            full["KUBESIM_PARTITION_FILE"] = preload
        out = open(os.path.join(self.logdir, f"{name}.log"), "ab")
        out.write(f"--- {now():.3f} start {args} env {json.dumps(env, sort_keys=True)}"
                  f"{' LD_PRELOAD ' + preload if preload else ''}\n".encode())
        out.flush()
        p = subprocess.Popen([self.args.bin, *args], env=full, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.run_dir)
        self.procs[name] = p
        # kubesim stops adopted processes on shutdown (a second safety net).
        try:
            self.ctl("POST", "/_ctl/adopt", {"pid": p.pid})
        except OSError:
            pass
        return p

    def start_operator(self, name, partitionable=False):
        env, args = self.deployment_env("ringlb-operator", name)
        env["RINGLB_OPS_LISTEN"] = f"{self.host}:{self.op_ops[name]}"
        env["KUBECONFIG"] = self.kubeconfig_for("ringlb-operator")
        preload = None
        if partitionable:
            preload = os.path.join(self.run_dir, f"partition-{name}")
            open(preload, "w").close()
            self.partition_files[name] = preload
        p = self.start_process(name, args or ["operator"], env, preload)
        self.mark(f"started {name} (pid {p.pid}{', LD_PRELOAD partition.so' if preload else ''})")
        return p

    def start_proxy(self, name):
        env, args = self.deployment_env("ringlb-proxy", name)
        listen, ops = self.proxy_ports[name]
        env["RINGLB_LISTEN"] = f"{self.host}:{listen}"
        env["RINGLB_OPS_LISTEN"] = f"{self.host}:{ops}"
        env["KUBECONFIG"] = self.kubeconfig_for("ringlb-proxy")
        p = self.start_process(name, args or ["proxy"], env)
        self.mark(f"started {name} (pid {p.pid}, listen {listen}, ops {ops})")
        return p

    # ------------------------------------------------------------ reads

    def lease_holder_kubectl(self):
        r = self.kubectl("get", "lease", "-o", "json", check=False)
        if r.returncode != 0:
            return None
        for item in json.loads(r.stdout).get("items", []):
            if item["metadata"]["name"] == "ringlb-operator":
                return (item.get("spec") or {}).get("holderIdentity")
        return None

    def lease(self):
        st, body = self.api("GET", LEASE_PATH, timeout=2)
        return body if st == 200 else None

    def pool(self, name=POOL):
        st, body = self.api("GET", f"{SP_PATH}/{name}", timeout=3)
        return body if st == 200 else None

    def pods(self):
        st, body = self.api("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=ringlb.dev%2Fpool", timeout=3)
        return body.get("items", []) if st == 200 else []

    def ring(self, proxy):
        _, ops = self.proxy_ports[proxy]
        st, body = http_json(self.host, ops, "GET", "/ring", timeout=2)
        if st != 200:
            raise RuntimeError(f"/ring {st}")
        return [m["name"] for m in body.get("members", []) if m.get("in_ring")]

    def member_of(self, pod):
        sp = self.pool() or {}
        for m in (sp.get("status") or {}).get("members", []):
            if m.get("pod") == pod:
                return m["name"]
        st, p = self.api("GET", f"/api/v1/namespaces/{NS}/pods/{pod}")
        if st == 200:
            return (p["metadata"].get("labels") or {}).get("ringlb.dev/member")
        raise RuntimeError(f"no pod {pod} in the pool")

    def pool_pod_ips(self, pool=POOL):
        ips = []
        for p in self.pods():
            if (p["metadata"].get("labels") or {}).get("ringlb.dev/pool") == pool:
                ip = (p.get("status") or {}).get("podIP")
                if ip:
                    ips.append(ip)
        return sorted(set(ips))

    def wait_for(self, what, fn, timeout):
        deadline = now() + timeout
        last = None
        while now() < deadline:
            try:
                v = fn()
                if v:
                    return v
            except Exception as e:  # noqa: BLE001
                last = e
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}" + (f" ({last})" if last else ""))

    def events(self):
        out = []
        st, body = self.api("GET", f"/apis/events.k8s.io/v1/namespaces/{NS}/events")
        for e in (body or {}).get("items", []) if st == 200 else []:
            series = e.get("series") or {}
            out.append({"api": "events.k8s.io/v1", "type": e.get("type"), "reason": e.get("reason"),
                        "note": e.get("note"), "regarding": (e.get("regarding") or {}).get("name"),
                        "first": parse_time(e.get("eventTime")) or parse_time(e["metadata"].get("creationTimestamp")),
                        "last": parse_time(series.get("lastObservedTime")) or parse_time(e.get("eventTime")),
                        "count": series.get("count", 1), "name": e["metadata"]["name"]})
        st, body = self.api("GET", f"/api/v1/namespaces/{NS}/events")
        for e in (body or {}).get("items", []) if st == 200 else []:
            out.append({"api": "v1", "type": e.get("type"), "reason": e.get("reason"),
                        "note": e.get("message"), "regarding": (e.get("involvedObject") or {}).get("name"),
                        "first": parse_time(e.get("firstTimestamp")) or parse_time(e.get("eventTime")),
                        "last": parse_time(e.get("lastTimestamp")) or parse_time(e.get("eventTime")),
                        "count": e.get("count", 1), "name": e["metadata"]["name"]})
        return out

    def created_pods(self, since=0.0):
        st, body = self.ctl("GET", f"/_ctl/created?since={since}&resource=pods")
        return body.get("created", []) if st == 200 else []

    # ------------------------------------------------------------ the usual start

    def bring_up(self, partitionable=False):
        """kubesim, manifests, operator a (leader), operator b, two proxies; pool Ready."""
        self.start()
        self.apply_manifests()
        self.start_operator("ringlb-operator-a", partitionable)
        self.wait_for("operator a to hold the Lease",
                      lambda: self.lease_holder_kubectl() == "ringlb-operator-a", 30)
        self.mark("Lease held by ringlb-operator-a (kubectl get lease -o json)")
        self.start_operator("ringlb-operator-b", partitionable)
        for name in self.proxy_ports:
            self.start_proxy(name)
        n = self.args.replicas

        def ready():
            sp = self.pool()
            if not sp:
                return False
            st = sp.get("status") or {}
            if st.get("readyReplicas") != n:
                return False
            return all(len(self.ring(p)) == n for p in self.proxy_ports)

        self.wait_for(f"pool {POOL} {n}/{n} ready and in both proxies' rings", ready, 120)
        self.mark(f"pool {POOL} Ready {n}/{n}, both proxies route to {n}")
        ips = self.pool_pod_ips()
        if any(not ip.startswith(f"127.0.{self.args.ip_block}.") for ip in ips):
            raise RuntimeError(f"pod IPs outside 127.0.{self.args.ip_block}.x: {ips} (the launcher did not apply)")
        created = self.created_pods(0)
        if len(created) != n:
            self.note(f"start-up created {len(created)} pods for {n} replicas: "
                      f"{[c['name'] for c in created]}")
        holder = self.lease_holder_kubectl()
        if holder != "ringlb-operator-a":
            self.note(f"Lease holder changed to {holder} during start-up")
        return holder

    # ------------------------------------------------------------ teardown

    def stop(self):
        try:
            st, body = self.ctl("GET", "/_ctl/log", timeout=30)
            if st == 200:
                with open(os.path.join(self.logdir, "apiserver-requests.jsonl"), "w") as f:
                    for e in body.get("entries", []):
                        e.pop("body", None)
                        f.write(json.dumps(e, sort_keys=True) + "\n")
                users, denied = {}, {}
                for e in body.get("entries", []):
                    if not e.get("ua", "").startswith(("kubectl", "trial.py")):
                        k = f"{e.get('user')} ({e.get('ua', '').split('/')[0]})"
                        users[k] = users.get(k, 0) + 1
                    if e.get("code") in (401, 403):
                        k = f"{e.get('user')} {e.get('verb')} {e.get('resource')}"
                        denied[k] = denied.get(k, 0) + 1
                self.api_users = users
                print(f"  API requests by non-kubectl clients (user (agent): n): {users}", flush=True)
                if denied:
                    self.note(f"requests refused 401/403: {denied}")
            st, body = self.ctl("GET", "/_ctl/created", timeout=10)
            if st == 200:
                with open(os.path.join(self.logdir, "created.json"), "w") as f:
                    json.dump(body, f, indent=1)
            with open(os.path.join(self.logdir, "events.json"), "w") as f:
                json.dump(self.events(), f, indent=1)
            r = self.kubectl("get", "sp", "-o", "yaml", check=False)
            with open(os.path.join(self.logdir, "serverpools-final.yaml"), "w") as f:
                f.write(r.stdout)
            r = self.kubectl("get", "pods", "-o", "wide", check=False)
            with open(os.path.join(self.logdir, "pods-final.txt"), "w") as f:
                f.write(r.stdout)
            r = self.kubectl("get", "events", check=False)
            with open(os.path.join(self.logdir, "kubectl-get-events.txt"), "w") as f:
                f.write(r.stdout + r.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"  (collecting final state failed: {e})", flush=True)
        # Our own processes first (by pid), then kubesim and its pods.
        for name, p in self.procs.items():
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = now() + 12
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(0.1, deadline - now()))
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        if self.kubesim and self.kubesim.poll() is None:
            try:
                self.ctl("POST", "/_ctl/shutdown", timeout=5)
            except OSError:
                pass
            try:
                self.kubesim.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.kubesim.pid, signal.SIGKILL)
                self.kubesim.wait(timeout=5)
        pods_dir = os.path.join(self.run_dir, "pods")
        if os.path.isdir(pods_dir):
            shutil.copytree(pods_dir, os.path.join(self.logdir, "pods"), dirs_exist_ok=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with open(os.path.join(self.logdir, "timeline.txt"), "w") as f:
            for t, text in self.marks:
                f.write(f"{t:.3f} {t - self.t_start:8.2f}s {text}\n")
        self.kubectl_log.close()


# ================================================================ monitors and load


class Monitors:
    """Polls the proxies' rings, the pools' status, the pods and the Lease."""

    def __init__(self, sim, pools=(POOL,)):
        self.sim = sim
        self.pools = list(pools)
        self.stop_ev = threading.Event()
        d = sim.logdir
        self.rings = []  # (t, proxy, [names] or None)
        self.status = []  # (t, pool, status dict)
        self.pod_events = []  # (t, what, pod, detail)
        self.leases = []  # (t, holder, renewTime)
        self.w_ring = JsonlWriter(os.path.join(d, "rings.jsonl"))
        self.w_status = JsonlWriter(os.path.join(d, "status.jsonl"))
        self.w_pods = JsonlWriter(os.path.join(d, "pods.jsonl"))
        self.w_lease = JsonlWriter(os.path.join(d, "lease.jsonl"))
        self.pod_state = {}  # uid -> dict
        self.pod_lock = threading.Lock()
        self.threads = [threading.Thread(target=f, daemon=True) for f in
                        (self._rings, self._status, self._pods, self._lease)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=10)
        for w in (self.w_ring, self.w_status, self.w_pods, self.w_lease):
            w.close()

    def add_pool(self, name):
        self.pools.append(name)

    def _rings(self):
        last = {}
        while not self.stop_ev.wait(0.5):
            for p in self.sim.proxy_ports:
                t = now()
                try:
                    names = sorted(self.sim.ring(p))
                except Exception as e:  # noqa: BLE001
                    names = None
                    err = str(e)
                self.rings.append((t, p, names))
                if names != last.get(p, "x"):
                    rec = {"t": t, "proxy": p, "in_ring": names, "n": None if names is None else len(names)}
                    if names is None:
                        rec["error"] = err
                    self.w_ring.write(rec)
                    last[p] = names

    def _status(self):
        last = {}
        while not self.stop_ev.wait(0.5):
            for pool in list(self.pools):
                t = now()
                try:
                    sp = self.sim.pool(pool)
                except Exception:  # noqa: BLE001
                    continue
                st = (sp or {}).get("status") or {}
                spec = (sp or {}).get("spec") or {}
                self.status.append((t, pool, st))
                key = json.dumps([st, spec], sort_keys=True)
                if key != last.get(pool):
                    self.w_status.write({"t": t, "pool": pool, "spec": spec, "status": st})
                    last[pool] = key

    def _pods(self):
        while not self.stop_ev.wait(0.5):
            t = now()
            try:
                items = self.sim.pods()
            except Exception:  # noqa: BLE001
                continue
            seen = set()
            with self.pod_lock:
                self._pods_update(t, items, seen)

    def pods_snapshot(self):
        with self.pod_lock:
            return [dict(v) for v in self.pod_state.values()]

    def _pods_update(self, t, items, seen):
        if True:
            for p in items:
                md, st = p["metadata"], p.get("status") or {}
                uid = md["uid"]
                seen.add(uid)
                ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
                waiting = None
                for cs in st.get("containerStatuses") or []:
                    w = (cs.get("state") or {}).get("waiting")
                    if w:
                        waiting = w.get("reason")
                cur = {"name": md["name"], "pool": (md.get("labels") or {}).get("ringlb.dev/pool"),
                       "member": (md.get("labels") or {}).get("ringlb.dev/member"), "ip": st.get("podIP"),
                       "phase": st.get("phase"), "ready": ready, "waiting": waiting,
                       "deleting": bool(md.get("deletionTimestamp")), "image": p["spec"]["containers"][0].get("image")}
                old = self.pod_state.get(uid)
                if old is None:
                    cur["first_seen"] = t
                    self.pod_state[uid] = cur
                    self.w_pods.write({"t": t, "event": "new", "uid": uid, **cur})
                    self.pod_events.append((t, "new", md["name"], cur))
                else:
                    changed = {k: v for k, v in cur.items() if old.get(k) != v}
                    if changed:
                        if changed.get("deleting"):
                            old["deleting_seen"] = t
                        old.update(changed)
                        self.w_pods.write({"t": t, "event": "change", "uid": uid, "name": md["name"], **changed})
                        self.pod_events.append((t, "change", md["name"], changed))
            for uid, old in self.pod_state.items():
                if uid not in seen and not old.get("gone"):
                    old["gone"] = t
                    self.w_pods.write({"t": t, "event": "gone", "uid": uid, "name": old["name"]})
                    self.pod_events.append((t, "gone", old["name"], {}))

    def _lease(self):
        last = None
        while not self.stop_ev.wait(0.2):
            t = now()
            try:
                lease = self.sim.lease()
            except Exception:  # noqa: BLE001
                continue
            spec = (lease or {}).get("spec") or {}
            holder = spec.get("holderIdentity")
            self.leases.append((t, holder, spec.get("renewTime")))
            if holder != last:
                self.w_lease.write({"t": t, "holder": holder, "spec": spec})
                last = holder

    # ------------------------------------------------------------ queries

    def ring_min(self, t0, t1):
        out = {}
        for t, p, names in self.rings:
            if t0 <= t < t1:
                n = -1 if names is None else len(names)
                out[p] = n if p not in out else min(out[p], n)
        return out

    def ring_series(self, t0, t1, base):
        """Per proxy: [(t - base, n)] at every change, for the report."""
        out = {}
        for t, p, names in self.rings:
            if t0 <= t < t1:
                n = None if names is None else len(names)
                s = out.setdefault(p, [])
                if not s or s[-1][1] != n:
                    s.append((round(t - base, 1), n))
        return out

    def first_ring_time(self, t0, pred, all_proxies=True):
        """First time at or after t0 when pred(names) holds for every proxy (or any)."""
        state = {}
        for t, p, names in self.rings:
            if t < t0:
                continue
            state[p] = names is not None and pred(names)
            if all_proxies:
                if len(state) == len(self.sim.proxy_ports) and all(state.values()):
                    return t
            elif state[p]:
                return t
        return None

    def conditions(self, pool, t0, t1, ctype="Degraded"):
        """Distinct (status, reason, message) of a condition in [t0, t1), with first time seen."""
        out = []
        for t, pl, st in self.status:
            if pl != pool or not (t0 <= t < t1):
                continue
            c = next((c for c in st.get("conditions") or [] if c.get("type") == ctype), None)
            v = (c.get("status"), c.get("reason"), c.get("message")) if c else (None, None, None)
            if not out or out[-1][1:] != v:
                out.append((t, *v))
        return out

    def first_condition(self, pool, t0, ctype, status="True"):
        for t, pl, st in self.status:
            if pl == pool and t >= t0:
                c = next((c for c in st.get("conditions") or [] if c.get("type") == ctype), None)
                if c and c.get("status") == status:
                    return t, c
        return None, None


class Load:
    """Open loop: `rate` GET /home per second, alternating between the proxies, each on a
    new connection (Connection: close), timeout 30 s; every request recorded."""

    def __init__(self, sim, rate, timeout=30.0):
        self.sim = sim
        self.rate = rate
        self.timeout = timeout
        self.reqs = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=int(rate * timeout) + 50, thread_name_prefix="load")
        self.w = JsonlWriter(os.path.join(sim.logdir, "requests.jsonl"))
        self.thread = threading.Thread(target=self._dispatch, daemon=True)
        self.targets = [(name, ports[0]) for name, ports in sim.proxy_ports.items()]

    def start(self):
        self.thread.start()

    def _dispatch(self):
        period = 1.0 / self.rate
        i = 0
        t_next = now()
        while not self.stop_ev.is_set():
            delay = t_next - now()
            if delay > 0:
                if self.stop_ev.wait(delay):
                    break
            name, port = self.targets[i % len(self.targets)]
            self.pool.submit(self._one, i, t_next, name, port)
            i += 1
            t_next += period

    def _one(self, i, t_sched, proxy, port):
        t0 = now()
        status, served, err = None, None, None
        try:
            conn = http.client.HTTPConnection(self.sim.host, port, timeout=self.timeout)
            try:
                conn.request("GET", "/home", headers={"Connection": "close"})
                r = conn.getresponse()
                body = r.read()
                status = r.status
                try:
                    served = json.loads(body).get("message", "")[len("Hello from Server: "):] if status == 200 else \
                        body[:200].decode(errors="replace")
                except (ValueError, AttributeError):
                    served = body[:200].decode(errors="replace")
            finally:
                conn.close()
        except socket.timeout:
            err = "timeout"
        except ConnectionRefusedError:
            err = "refused"
        except ConnectionResetError:
            err = "reset"
        except Exception as e:  # noqa: BLE001
            err = type(e).__name__
        t1 = now()
        rec = {"i": i, "t": t0, "sched": t_sched, "lat": round(t1 - t0, 4), "proxy": proxy,
               "status": status, "err": err, "served": served}
        with self.lock:
            self.reqs.append(rec)
        self.w.write(rec)

    def stop(self, drain=35):
        self.stop_ev.set()
        self.thread.join(timeout=5)
        self.pool.shutdown(wait=True, cancel_futures=False)
        self.w.close()

    def summary(self, t0, t1):
        with self.lock:
            rs = [r for r in self.reqs if t0 <= r["sched"] < t1]
        by = {}
        for r in rs:
            if r["status"] == 200:
                continue
            k = str(r["status"]) if r["status"] is not None else r["err"]
            by[k] = by.get(k, 0) + 1
        lats = sorted(r["lat"] for r in rs)
        slow = max(rs, key=lambda r: r["lat"]) if rs else None
        return {"sent": len(rs), "failed": sum(by.values()), "failed_by": by,
                "max_lat": lats[-1] if lats else None,
                "p99_lat": lats[int(0.99 * (len(lats) - 1))] if lats else None,
                "p50_lat": lats[len(lats) // 2] if lats else None,
                "slowest": None if slow is None else {k: slow[k] for k in ("t", "lat", "proxy", "status", "err", "served")}}


def fmt_load(s):
    by = ", ".join(f"{k}: {v}" for k, v in sorted(s["failed_by"].items())) or "none"
    return (f"{s['sent']} sent, {s['failed']} failed ({by}); latency p50 {s['p50_lat']} s, "
            f"p99 {s['p99_lat']} s, max {s['max_lat']} s")


def fmt_conds(conds, base):
    if not conds:
        return "    (no status seen)"
    return "\n".join(f"    +{t - base:6.1f}s  {st} {reason}: {msg}" for t, st, reason, msg in conds)


def fmt_events(evs, t0, t1, base, only_warning=True):
    rows = []
    for e in sorted(evs, key=lambda e: e["first"] or 0):
        if only_warning and e["type"] != "Warning":
            continue
        last = e["last"] or e["first"] or 0
        first = e["first"] or last
        if last < t0 or first >= t1:
            continue
        rows.append(f"    +{first - base:6.1f}s (last +{last - base:5.1f}s, x{e['count']}) [{e['api']}] "
                    f"{e['type']} {e['reason']} {e['regarding']}: {e['note']}")
    return "\n".join(rows) if rows else "    (none)"


def created_in(sim, t0, t1, pool=None):
    rows = [c for c in sim.created_pods(0) if t0 <= c["t"] < t1
            and (pool is None or (c.get("labels") or {}).get("ringlb.dev/pool") == pool)]
    return rows


def fmt_created(rows, base):
    if not rows:
        return "none"
    return ", ".join(f"{c['name']}@+{c['t'] - base:.1f}s" for c in rows)


def deletes_in(sim, t0, t1):
    st, body = sim.ctl("GET", "/_ctl/log", timeout=30)
    out = []
    for e in (body or {}).get("entries", []):
        if e.get("method") == "DELETE" and "/pods/" in e.get("path", "") and t0 <= e.get("t", 0) < t1:
            out.append((e["t"], e["path"].rsplit("/", 1)[-1], e.get("code")))
    return out


# ================================================================ scenarios


def youngest_age(sim):
    starts = []
    for p in sim.pods():
        if (p["metadata"].get("labels") or {}).get("ringlb.dev/pool") != POOL:
            continue
        for cs in (p.get("status") or {}).get("containerStatuses") or []:
            st = parse_time(((cs.get("state") or {}).get("running") or {}).get("startedAt"))
            if st:
                starts.append(st)
    return None if not starts else now() - max(starts)


def baseline(sim, args, settle=None):
    """Load runs for --baseline s; then, until every replica container of the pool has run
    for --settle s (past the operator's 30 s startup grace: pods as a long-running pool has
    them, not just started)."""
    time.sleep(args.baseline)
    settle = args.settle if settle is None else settle
    if settle <= 0:
        return
    age = youngest_age(sim)
    if age is None:
        return
    wait = settle - age
    if wait > 0:
        sim.mark(f"waiting {wait:.0f} s until the youngest replica has run {settle:g} s")
        time.sleep(wait)


def scenario_partition(sim, args, R):
    """The Lease holder cut off from every replica pod for 20 s (LD_PRELOAD partition.so);
    the proxies and the kubelet still reach them."""
    sim.bring_up(partitionable=True)
    mon = Monitors(sim)
    mon.start()
    load = Load(sim, args.rate)
    load.start()
    baseline(sim, args)
    holder = sim.lease_holder_kubectl()
    pfile = sim.partition_files[holder]
    t0 = now()
    ips = set(sim.pool_pod_ips())
    with open(pfile, "w") as f:
        f.write("\n".join(sorted(ips)) + "\n")
    sim.mark(f"partition: {holder} cut off from {len(ips)} pod IPs {sorted(ips)}")
    # Keep the file up to date: a pod created during the fault is cut off as well.
    while now() < t0 + args.partition_s:
        cur = set(sim.pool_pod_ips())
        if not cur <= ips:
            ips |= cur
            with open(pfile, "w") as f:
                f.write("\n".join(sorted(ips)) + "\n")
            sim.mark(f"partition: now {len(ips)} IPs (new pods added)")
        time.sleep(0.25)
    open(pfile, "w").close()
    t1 = now()
    sim.mark(f"partition healed after {t1 - t0:.1f} s")
    time.sleep(args.after_s)
    t2 = now()
    time.sleep(20)  # aftermath, reported separately
    t3 = now()
    load.stop()
    mon.stop()
    R["load_during"] = load.summary(t0, t1)
    R["load_after10"] = load.summary(t1, t2)
    R["load_after10_30"] = load.summary(t2, t3)
    R["created_during"] = created_in(sim, t0, t1, POOL)
    R["created_after10"] = created_in(sim, t1, t2, POOL)
    R["created_after10_30"] = created_in(sim, t2, t3, POOL)
    R["deletes"] = deletes_in(sim, t0, t3)
    R["degraded"] = mon.conditions(POOL, t0, t3)
    R["ready_cond"] = mon.conditions(POOL, t0, t3, "Ready")
    R["ring_min_during"] = mon.ring_min(t0, t1)
    R["ring_min_after10"] = mon.ring_min(t1, t2)
    R["ring_series"] = mon.ring_series(t0 - 1, t3, t0)
    evs = sim.events()
    print(f"\n== partition: {holder} cut off from the replica pods for {t1 - t0:.1f} s "
          f"(t=0 at the cut; healed at +{t1 - t0:.1f}s)")
    print(f"  requests during the partition:    {fmt_load(R['load_during'])}")
    print(f"  requests in the 10 s after:       {fmt_load(R['load_after10'])}")
    print(f"  requests 10-30 s after:           {fmt_load(R['load_after10_30'])}")
    print(f"  pods created during: {len(R['created_during'])}: {fmt_created(R['created_during'], t0)}")
    print(f"  pods created 10 s after: {len(R['created_after10'])}: {fmt_created(R['created_after10'], t0)}; "
          f"10-30 s after: {len(R['created_after10_30'])}: {fmt_created(R['created_after10_30'], t0)}")
    print(f"  pod DELETEs (t, pod, status): {[(round(t - t0, 1), n, s) for t, n, s in R['deletes']]}")
    print(f"  Degraded over time:\n{fmt_conds(R['degraded'], t0)}")
    print(f"  Ready over time:\n{fmt_conds(R['ready_cond'], t0)}")
    print(f"  Warning Events from the cut on:\n{fmt_events(evs, t0, t3 + 60, t0)}")
    print(f"  ring size min during: {R['ring_min_during']}; in the 10 s after: {R['ring_min_after10']}")
    print(f"  ring size changes (t, n): {R['ring_series']}")
    deg_during = [c for c in R["degraded"] if c[0] < t1]
    R["table"] = {
        "failed": f"{R['load_during']['failed']}/{R['load_during']['sent']} during, "
                  f"{R['load_after10']['failed']}/{R['load_after10']['sent']} 10 s after",
        "pods": f"{len(R['created_during'])} created during, {len(R['created_after10'])} in 10 s after",
        "status": "Degraded " + ("; ".join(f"{s} {r}" for _, s, r, _ in deg_during) or "?"),
        "ring": f"min {min(R['ring_min_during'].values()) if R['ring_min_during'] else '?'} during",
    }


def scenario_leader_kill_young(sim, args, R):
    """As leader-kill, 5 s after the pool is Ready: the replicas are within their startup grace."""
    scenario_leader_kill(sim, args, R, settle=0)


def scenario_leader_kill(sim, args, R, settle=None):
    """kill -9 of the Lease holder and, at the same moment, a replica frozen."""
    sim.bring_up()
    mon = Monitors(sim)
    mon.start()
    load = Load(sim, args.rate)
    load.start()
    baseline(sim, args, settle)
    holder = sim.lease_holder_kubectl()
    standby = next(n for n in sim.op_ops if n != holder)
    victim = args.freeze_pod
    sp = sim.pool()
    member = sim.member_of(victim)
    R["replica_age_s"] = youngest_age(sim)
    t0 = now()
    os.kill(sim.procs[holder].pid, signal.SIGKILL)
    st, body = sim.ctl("POST", "/_ctl/chaos", {"pod": victim, "action": "freeze"})
    sim.mark(f"kill -9 {holder} (pid {sim.procs[holder].pid}); froze {victim} (member {member}): {body}")
    lease_t = None
    repl_t = None
    deadline = t0 + args.leader_kill_s
    while now() < deadline:
        if lease_t is None:
            for t, h, _ in list(mon.leases):
                if t >= t0 and h == standby:
                    lease_t = t
                    sim.mark(f"{standby} holds the Lease (+{t - t0:.2f} s)")
                    break
        if repl_t is None:
            ps = [s for s in mon.pods_snapshot() if s["name"] == victim]
            if any(s.get("deleting_seen") or s.get("gone") for s in ps):
                repl_t = min((s.get("deleting_seen") or s.get("gone")) for s in ps)
                sim.mark(f"{victim} being deleted (+{repl_t - t0:.2f} s)")
        if lease_t and repl_t and now() > max(lease_t, repl_t) + 15:
            break
        time.sleep(0.2)
    t_end = now()
    load.stop()
    mon.stop()
    lease = sim.lease() or {}
    R["lease_spec"] = lease.get("spec")
    dels = [d for d in deletes_in(sim, t0, t_end) if d[1] == victim]
    created = created_in(sim, t0, t_end, POOL)
    R["lease_s"] = None if lease_t is None else lease_t - t0
    acq = parse_time((lease.get("spec") or {}).get("acquireTime"))
    R["lease_acquire_s"] = None if acq is None else acq - t0
    R["delete_s"] = dels[0][0] - t0 if dels else None
    R["created"] = created
    R["replacement_created_s"] = created[0]["t"] - t0 if created else None
    R["ring_out_s"] = (lambda t: None if t is None else t - t0)(
        mon.first_ring_time(t0, lambda names: member not in names))
    R["ring_full_s"] = (lambda t: None if t is None else t - t0)(
        mon.first_ring_time(t0 + 0.01, lambda names: member not in names and len(names) == args.replicas))
    R["load"] = load.summary(t0 - 5, t_end)
    R["degraded"] = mon.conditions(POOL, t0, t_end)
    R["ring_series"] = mon.ring_series(t0 - 1, t_end, t0)
    evs = sim.events()

    def s(v):
        return "never (within the bound)" if v is None else f"{v:.2f} s"

    hb = (sp.get("spec") or {}).get("heartbeat") or {}
    R["detection_s"] = (hb.get("intervalMs", 1000) * hb.get("failureThreshold", 3) + hb.get("timeoutMs", 500)) / 1000
    R["after_takeover_s"] = None if R["delete_s"] is None or R["lease_s"] is None else R["delete_s"] - R["lease_s"]
    print(f"\n== {sim.scenario}: kill -9 of {holder} and {victim} frozen at t=0; youngest replica "
          f"{(R['replica_age_s'] or float('nan')):.1f} s old; Lease duration {(R['lease_spec'] or {}).get('leaseDurationSeconds')} s")
    print(f"  standby {standby} holds the Lease (first poll):   {s(R['lease_s'])} "
          f"(Lease acquireTime: {s(R['lease_acquire_s'])})")
    print(f"  frozen pod's DELETE (apiserver log):              {s(R['delete_s'])}")
    print(f"  first replacement pod created:                    {s(R['replacement_created_s'])} "
          f"({fmt_created(created, t0)})")
    print(f"  frozen pod's DELETE after the takeover:           {s(R['after_takeover_s'])} "
          f"(one detection time: {R['detection_s']} s)")
    print(f"  member {member} out of both proxies' rings:        {s(R['ring_out_s'])}")
    print(f"  both rings back to {args.replicas} without it:                {s(R['ring_full_s'])}")
    print(f"  requests from 5 s before to the end:              {fmt_load(R['load'])}")
    print(f"  slowest: {R['load']['slowest']}")
    print(f"  Degraded over time:\n{fmt_conds(R['degraded'], t0)}")
    print(f"  Warning Events:\n{fmt_events(evs, t0, t_end + 60, t0)}")
    print(f"  ring size changes (t, n): {R['ring_series']}")
    R["table"] = {
        "failed": f"{R['load']['failed']}/{R['load']['sent']}; slowest {R['load']['max_lat']} s",
        "pods": f"lease +{s(R['lease_s'])}, delete +{s(R['delete_s'])} ({s(R['after_takeover_s'])} after takeover), "
                f"new pod +{s(R['replacement_created_s'])}",
        "status": "Degraded " + ("; ".join(f"{st} {r}" for _, st, r, _ in R["degraded"]) or "?"),
        "ring": f"member out +{s(R['ring_out_s'])}, full +{s(R['ring_full_s'])}",
    }


def scenario_freeze(sim, args, R, action="freeze", fail_status=False):
    """A replica frozen (SIGSTOP) while the leader runs (or killed: `action`; with
    `fail_status`, every status write fails with 500 for 20 s from 1 s before)."""
    sim.bring_up()
    mon = Monitors(sim)
    mon.start()
    load = Load(sim, args.rate)
    load.start()
    baseline(sim, args)
    victim = args.freeze_pod
    sp = sim.pool()
    member = sim.member_of(victim)
    R["replica_age_s"] = youngest_age(sim)
    if fail_status:
        st, body = sim.ctl("POST", "/_ctl/fail", {"method": "PATCH", "path_regex": ".*/status$",
                                                  "code": 500, "seconds": 20})
        sim.mark(f"status writes fail with 500 for 20 s: {st} {body}")
        time.sleep(1)
    t0 = now()
    st, body = sim.ctl("POST", "/_ctl/chaos", {"pod": victim, "action": action})
    sim.mark(f"{action} {victim} (member {member}): {body}")
    repl_t = None
    deadline = t0 + args.freeze_s + (25 if fail_status else 0)
    while now() < deadline:
        if repl_t is None:
            ps = [s for s in mon.pods_snapshot() if s["name"] == victim]
            if any(s.get("deleting_seen") or s.get("gone") for s in ps):
                repl_t = min((s.get("deleting_seen") or s.get("gone")) for s in ps)
                sim.mark(f"{victim} being deleted (+{repl_t - t0:.2f} s)")
        if repl_t and now() > repl_t + 15:
            break
        time.sleep(0.2)
    t_end = now()
    load.stop()
    mon.stop()
    dels = [d for d in deletes_in(sim, t0, t_end) if d[1] == victim]
    created = created_in(sim, t0, t_end, POOL)
    R["delete_s"] = dels[0][0] - t0 if dels else None
    R["created"] = created
    R["replacement_created_s"] = created[0]["t"] - t0 if created else None
    ro = mon.first_ring_time(t0, lambda names: member not in names)
    R["ring_out_s"] = None if ro is None else ro - t0
    rf = mon.first_ring_time(t0 + 0.01, lambda names: member not in names and len(names) == args.replicas)
    R["ring_full_s"] = None if rf is None else rf - t0
    R["load"] = load.summary(t0 - 5, t_end)
    # Requests that were sent to the frozen replica (they answer only after the thaw/kill).
    R["degraded"] = mon.conditions(POOL, t0, t_end)
    R["ring_series"] = mon.ring_series(t0 - 1, t_end, t0)
    hb = (sp.get("spec") or {}).get("heartbeat") or {}
    R["detection_s"] = (hb.get("intervalMs", 1000) * hb.get("failureThreshold", 3) + hb.get("timeoutMs", 500)) / 1000
    slow = sorted((r for r in load.reqs if r["sched"] >= t0 - 5), key=lambda r: -r["lat"])[:5]
    evs = sim.events()

    def s(v):
        return "never (within the bound)" if v is None else f"{v:.2f} s"

    what = {"freeze": "frozen", "kill": "killed (SIGKILL)"}.get(action, action)
    if fail_status:
        what += ", status writes failing from t=-1 s to t=19 s"
    print(f"\n== {action}{'-status-fail' if fail_status else ''}: {victim} (member {member}) {what} at t=0, leader alive; youngest replica "
          f"{(R['replica_age_s'] or float('nan')):.1f} s old")
    print(f"  member out of both proxies' rings:  {s(R['ring_out_s'])}")
    print(f"  frozen pod's DELETE:                {s(R['delete_s'])}")
    print(f"  replacement pod created:            {s(R['replacement_created_s'])} ({fmt_created(created, t0)})")
    print(f"  both rings back to {args.replicas}:               {s(R['ring_full_s'])}")
    print(f"  requests from 5 s before to the end: {fmt_load(R['load'])}")
    print(f"  slowest 5: {[(round(r['t'] - t0, 2), r['lat'], r['proxy'], r['status'], r['err']) for r in slow]}")
    print(f"  detection time (interval x threshold + timeout): {R['detection_s']} s; "
          f"issue 18's bound for the slowest request: {R['detection_s'] + 1} s")
    print(f"  Degraded over time:\n{fmt_conds(R['degraded'], t0)}")
    print(f"  Warning Events:\n{fmt_events(evs, t0, t_end + 60, t0)}")
    print(f"  ring size changes (t, n): {R['ring_series']}")
    R["table"] = {
        "failed": f"{R['load']['failed']}/{R['load']['sent']}; slowest {R['load']['max_lat']} s",
        "pods": f"delete +{s(R['delete_s'])}, new pod +{s(R['replacement_created_s'])}",
        "status": "Degraded " + ("; ".join(f"{st} {r}" for _, st, r, _ in R["degraded"]) or "?"),
        "ring": f"member out +{s(R['ring_out_s'])}, full +{s(R['ring_full_s'])}",
    }


def scenario_clash(sim, args, R):
    """spec.hostnames [server1] on a pool with the default names (server1 = pod of Server1)."""
    sim.bring_up()
    mon = Monitors(sim)
    mon.start()
    load = Load(sim, args.rate)
    load.start()
    baseline(sim, args)
    t0 = now()
    r = sim.kubectl("patch", "sp", POOL, "--type", "merge", "-p", '{"spec":{"hostnames":["server1"]}}', check=False)
    R["patch"] = (r.returncode, (r.stdout + r.stderr).strip())
    sim.mark(f"patched hostnames [server1]: rc {r.returncode} {(r.stdout + r.stderr).strip()}")
    time.sleep(args.clash_s)
    t1 = now()
    r = sim.kubectl("patch", "sp", POOL, "--type", "merge", "-p", '{"spec":{"hostnames":null}}', check=False)
    sim.mark(f"undone (hostnames null): rc {r.returncode} {(r.stdout + r.stderr).strip()}")
    time.sleep(args.after_s + 5)
    t2 = now()
    load.stop()
    mon.stop()
    R["load_during"] = load.summary(t0, t1)
    R["load_after"] = load.summary(t1, t2)
    R["ring_min_during"] = mon.ring_min(t0, t1)
    R["ring_min_after"] = mon.ring_min(t1, t2)
    R["ring_series"] = mon.ring_series(t0 - 1, t2, t0)
    R["degraded"] = mon.conditions(POOL, t0, t2)
    R["created"] = created_in(sim, t0, t2, POOL)
    R["deletes"] = deletes_in(sim, t0, t2)
    final = sim.pool() or {}
    members = [(m.get("name"), m.get("pod"), m.get("ready")) for m in (final.get("status") or {}).get("members", [])]
    evs = sim.events()
    print(f"\n== clash: hostnames [server1] on {POOL} at t=0, undone at +{t1 - t0:.1f}s")
    print(f"  patch admitted: rc {R['patch'][0]} {R['patch'][1]}")
    print(f"  requests during the edit ({t1 - t0:.0f} s): {fmt_load(R['load_during'])}")
    print(f"  requests after the undo ({t2 - t1:.0f} s):  {fmt_load(R['load_after'])}")
    print(f"  ring size min during: {R['ring_min_during']}; after the undo: {R['ring_min_after']}")
    print(f"  ring size changes (t, n): {R['ring_series']}")
    print(f"  pods created: {fmt_created(R['created'], t0)}")
    print(f"  pod DELETEs (t, pod, status): {[(round(t - t0, 1), n, s) for t, n, s in R['deletes']]}")
    print(f"  Degraded over time:\n{fmt_conds(R['degraded'], t0)}")
    print(f"  Events (all types) from the edit on:\n{fmt_events(evs, t0, t2 + 60, t0, only_warning=False)}")
    print(f"  members at the end: {members}")
    R["table"] = {
        "failed": f"{R['load_during']['failed']}/{R['load_during']['sent']} during, "
                  f"{R['load_after']['failed']}/{R['load_after']['sent']} after undo",
        "pods": f"{len(R['created'])} created, {len(R['deletes'])} deleted",
        "status": "Degraded " + ("; ".join(f"{st} {r}" for _, st, r, _ in R["degraded"]) or "?"),
        "ring": f"min {R['ring_min_during']} during",
    }


def scenario_unpullable(sim, args, R):
    """(a) a new pool whose image kubesim cannot pull; (b) a rollout of the serving pool to one."""
    sim.bring_up()
    mon = Monitors(sim, pools=(POOL, "nopull"))
    mon.start()
    load = Load(sim, args.rate)
    load.start()
    baseline(sim, args)
    # (a) a new pool
    manifest = {"apiVersion": "ringlb.dev/v1alpha1", "kind": "ServerPool",
                "metadata": {"name": "nopull", "namespace": NS},
                "spec": {"replicas": 2, "image": UNPULLABLE, "port": 5000,
                         "heartbeat": {"intervalMs": 1000, "timeoutMs": 500, "failureThreshold": 3}}}
    path = os.path.join(sim.run_dir, "nopull.json")
    with open(path, "w") as f:
        json.dump(manifest, f)
    ta = now()
    sim.kubectl("apply", "--validate=false", "-f", path)
    sim.mark(f"created pool nopull (2 replicas, image {UNPULLABLE})")
    deg_t, deg_c = None, None
    while now() < ta + args.unpullable_s:
        if deg_t is None:
            deg_t, deg_c = mon.first_condition("nopull", ta, "Degraded")
            if deg_t:
                sim.mark(f"nopull Degraded=True at +{deg_t - ta:.1f} s: {deg_c.get('reason')}: {deg_c.get('message')}")
        time.sleep(0.5)
    ta_end = now()
    R["a_degraded_s"] = None if deg_t is None else deg_t - ta
    R["a_degraded"] = mon.conditions("nopull", ta, ta_end)
    R["a_ready"] = mon.conditions("nopull", ta, ta_end, "Ready")
    R["a_created"] = created_in(sim, ta, ta_end, "nopull")
    R["a_deletes"] = deletes_in(sim, ta, ta_end)
    evs = sim.events()
    nopull_pods = [(s["name"], s["phase"], s["waiting"]) for s in mon.pods_snapshot() if s["pool"] == "nopull"]
    print(f"\n== unpullable (a): new pool nopull, image {UNPULLABLE}, 2 replicas, t=0 at the create, "
          f"watched {ta_end - ta:.0f} s")
    print(f"  Degraded=True after: {'never' if deg_t is None else f'{deg_t - ta:.1f} s'}")
    print(f"  Degraded over time:\n{fmt_conds(R['a_degraded'], ta)}")
    print(f"  Ready over time:\n{fmt_conds(R['a_ready'], ta)}")
    print(f"  pods created in {ta_end - ta:.0f} s: {len(R['a_created'])}: {fmt_created(R['a_created'], ta)}")
    print(f"  pod DELETEs: {[(round(t - ta, 1), n, s) for t, n, s in R['a_deletes']]}")
    print(f"  nopull pods seen: {nopull_pods}")
    print(f"  Events (all types) regarding nopull or its pods:\n"
          + fmt_events([e for e in evs if e['regarding'] and (e['regarding'] == 'nopull' or e['regarding'] not in
                        [s['name'] for s in mon.pods_snapshot() if s['pool'] == POOL])], ta, ta_end + 60, ta,
                       only_warning=False))
    sim.kubectl("delete", "sp", "nopull", "--wait=false", check=False)
    sim.mark("deleted pool nopull")
    time.sleep(3)
    # (b) a rollout of the serving pool to an unpullable image, under load
    tb = now()
    old_image = ((sim.pool() or {}).get("spec") or {}).get("image")
    r = sim.kubectl("patch", "sp", POOL, "--type", "merge", "-p",
                    json.dumps({"spec": {"image": UNPULLABLE.replace(':v1', ':v2')}}), check=False)
    sim.mark(f"rollout of {POOL} to {UNPULLABLE.replace(':v1', ':v2')}: rc {r.returncode}")
    time.sleep(args.rollout_s)
    tb1 = now()
    r = sim.kubectl("patch", "sp", POOL, "--type", "merge", "-p", json.dumps({"spec": {"image": old_image}}),
                    check=False)
    sim.mark(f"rollout undone (image {old_image}): rc {r.returncode}")
    time.sleep(args.after_s + 10)
    tb2 = now()
    load.stop()
    mon.stop()
    R["b_load"] = load.summary(tb, tb1)
    R["b_load_after"] = load.summary(tb1, tb2)
    R["b_degraded"] = mon.conditions(POOL, tb, tb2)
    R["b_created"] = created_in(sim, tb, tb1, POOL)
    R["b_created_after"] = created_in(sim, tb1, tb2, POOL)
    R["b_deletes"] = deletes_in(sim, tb, tb2)
    R["b_ring_min"] = mon.ring_min(tb, tb2)
    R["b_ring_series"] = mon.ring_series(tb - 1, tb2, tb)
    dt, dc = mon.first_condition(POOL, tb, "Degraded")
    R["b_degraded_s"] = None if dt is None else dt - tb
    evs = sim.events()
    print(f"\n== unpullable (b): rollout of {POOL} to {UNPULLABLE.replace(':v1', ':v2')} at t=0 under load, "
          f"undone at +{tb1 - tb:.0f}s")
    print(f"  requests during the stalled rollout: {fmt_load(R['b_load'])}")
    print(f"  requests after the undo:            {fmt_load(R['b_load_after'])}")
    print(f"  Degraded=True after: {'never' if dt is None else f'{dt - tb:.1f} s'}")
    print(f"  Degraded over time:\n{fmt_conds(R['b_degraded'], tb)}")
    print(f"  pods created during: {len(R['b_created'])}: {fmt_created(R['b_created'], tb)}; "
          f"after the undo: {fmt_created(R['b_created_after'], tb)}")
    print(f"  pod DELETEs: {[(round(t - tb, 1), n, s) for t, n, s in R['b_deletes']]}")
    print(f"  ring size min: {R['b_ring_min']}; changes (t, n): {R['b_ring_series']}")
    print(f"  Events (all types) from the rollout on:\n{fmt_events(evs, tb, tb2 + 60, tb, only_warning=False)}")
    R["table"] = {
        "failed": f"(a) n/a; (b) {R['b_load']['failed']}/{R['b_load']['sent']} during rollout",
        "pods": f"(a) {len(R['a_created'])} in {ta_end - ta:.0f} s; (b) {len(R['b_created'])}",
        "status": f"(a) Degraded=True at {'never' if deg_t is None else f'+{deg_t - ta:.1f}s'} "
                  f"{'' if deg_c is None else deg_c.get('reason')}; (b) "
                  f"{'never' if dt is None else f'+{dt - tb:.1f}s ' + str(dc.get('reason'))}",
        "ring": f"(b) min {R['b_ring_min']}",
    }


SCENARIOS = {
    "partition": scenario_partition,
    "leader-kill": scenario_leader_kill,
    "leader-kill-young": scenario_leader_kill_young,
    "freeze": scenario_freeze,
    "kill": lambda sim, args, R: scenario_freeze(sim, args, R, action="kill"),
    "status-fail": lambda sim, args, R: scenario_freeze(sim, args, R, fail_status=True),
    "clash": scenario_clash,
    "unpullable": scenario_unpullable,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="+", help=f"all, or any of: {', '.join(SCENARIOS)}")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap.add_argument("--bin", default=os.path.join(target, "release", "ringlb"), help="the ringlb binary")
    ap.add_argument("--repo", default=REPO, help="checkout whose crds/ and deploy/ are applied")
    ap.add_argument("--logs", default="/tmp/ringlb-kubesim-trial")
    ap.add_argument(
        "--partition-so",
        default="/tmp/ringlb-kubesim-trial/partition.so",
        help="kubesim's partition.c built: cc -O2 -shared -fPIC -o FILE ../shared/kubesim/partition.c -ldl",
    )
    ap.add_argument("--port-base", type=int, default=24400, help="8 ports from here on 127.0.0.1")
    ap.add_argument("--ip-block", type=int, default=61, help="pods on 127.0.<block>.10 and up")
    ap.add_argument("--replicas", type=int, default=6)
    ap.add_argument("--rate", type=float, default=30.0, help="client requests per second (both proxies)")
    ap.add_argument("--no-rbac", dest="rbac", action="store_false", help="run ringlb as admin instead of its SAs")
    ap.add_argument("--baseline", type=float, default=5.0, help="seconds of load before each fault")
    ap.add_argument("--settle", type=float, default=40.0,
                    help="before a fault, wait until every replica has run this long (0: no wait)")
    ap.add_argument("--partition-s", type=float, default=20.0)
    ap.add_argument("--after-s", type=float, default=10.0)
    ap.add_argument("--leader-kill-s", type=float, default=75.0, help="bound of the leader-kill scenario")
    ap.add_argument("--freeze-s", type=float, default=45.0, help="bound of the freeze scenario")
    ap.add_argument("--freeze-pod", default="server3")
    ap.add_argument("--clash-s", type=float, default=15.0)
    ap.add_argument("--unpullable-s", type=float, default=90.0)
    ap.add_argument("--rollout-s", type=float, default=45.0)
    ap.add_argument("--max-lifetime", type=float, default=None,
                    help="kubesim's own bound per scenario (default: 600 s + --settle)")
    args = ap.parse_args()
    if args.max_lifetime is None:
        args.max_lifetime = 600.0 + args.settle
    names = list(SCENARIOS) if "all" in args.scenarios else args.scenarios
    for n in names:
        if n not in SCENARIOS:
            ap.error(f"unknown scenario {n}")
    for path in (args.bin, args.partition_so):
        if not os.path.exists(path):
            ap.error(f"{path} does not exist")
    os.makedirs(args.logs, exist_ok=True)
    binsum = subprocess.run(["sha256sum", args.bin], capture_output=True, text=True).stdout.split()[0][:16]
    rev = subprocess.run(["git", "-C", args.repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    print(f"trial: {args.bin} (sha256 {binsum}…), manifests of {args.repo} @ {rev}; "
          f"{args.replicas} replicas, {args.rate:g} req/s; logs in {args.logs}", flush=True)
    results = {}
    for n in names:
        print(f"\n######## {n} ({time.strftime('%H:%M:%S')})", flush=True)
        sim = Sim(args, n)
        R = {"scenario": n, "bin": args.bin, "bin_sha256": binsum, "repo_rev": rev, "notes": sim.notes}
        t = now()
        R["loadavg_start"] = os.getloadavg()
        try:
            SCENARIOS[n](sim, args, R)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            R["error"] = f"{type(e).__name__}: {e}"
            print(f"  SCENARIO FAILED: {R['error']}", flush=True)
        finally:
            sim.stop()
        R["duration_s"] = round(now() - t, 1)
        R["loadavg_end"] = os.getloadavg()
        print(f"  host load average at start {R['loadavg_start'][0]:.1f}, at end {R['loadavg_end'][0]:.1f} "
              f"(2 cores); scenario took {R['duration_s']} s", flush=True)
        results[n] = R
        with open(os.path.join(sim.logdir, "result.json"), "w") as f:
            json.dump(R, f, indent=1, default=str)
        if sim.notes:
            print("  notes: " + "; ".join(sim.notes))
    print("\n######## summary")
    w = max(len(n) for n in names)
    for n in names:
        R = results[n]
        if "error" in R:
            print(f"{n:<{w}} | ERROR {R['error']}")
            continue
        tb = R.get("table", {})
        print(f"{n:<{w}} | failed: {tb.get('failed')}\n{'':<{w}} | pods:   {tb.get('pods')}\n"
              f"{'':<{w}} | status: {tb.get('status')}\n{'':<{w}} | ring:   {tb.get('ring')}")
    with open(os.path.join(args.logs, f"summary-{'-'.join(args.scenarios)}.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
