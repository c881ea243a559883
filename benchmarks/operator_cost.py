"""What the operator costs a cluster: its CPU, memory, API requests/s and Prometheus queries/s, per idle run.

Measured on the real control plane (tests/cluster/controlplane.py: etcd, kube-apiserver, controller
manager and scheduler on loopback) with the operator as shipped (tests/cluster/operator_process.py: the
operator image's environment, the chart's command, environment, RBAC and ServiceAccount; the chart's
default poll interval, `operator.timerIntervalSeconds`, is NOT overridden). Each run's trainer is stood in
for by a static exporter (the trainer's own `TrainerExporter`, one per run on its own loopback port) that
reports a fixed state (global step 10, one complete validation of each task, control generation 0
acknowledged; nothing changes); one real Prometheus scrapes them all (file_sd, every 5 s, each target
labelled with its run's namespace, as prometheus-operator does). One fake Node (no kubelet) lets the
scheduler bind the training pods; they stay Pending (bound, never started), which the operator treats as
a trainer that is starting, while its metrics come from the exporter. Storage is moto's S3 on loopback.

For each N in --runs (cumulatively: runs are applied until N exist), once every run has a status phase
and after --warmup seconds, the operator is measured over --window seconds:
- CPU: utime+stime of the operator process (/proc/<pid>/stat) per wall second (100 % = one core);
- RSS: /proc/<pid>/status VmRSS, mean of 1 s samples over the window;
- API requests/s: the kube-apiserver's audit log (level Metadata, one event per request: RequestReceived
  omitted, watches counted when they start), events of the chart's ServiceAccount only, by the time the
  request was received, grouped by verb and resource;
- Prometheus queries/s: Prometheus' own prometheus_http_requests_total for /api/v1/query and
  /api/v1/query_range (nothing else queries Prometheus during the window);
- S3 requests/s (a column of its own, no goal): the requests moto's server answers in the window.

Goals (the issue): under 0.2 API requests/s per idle run, and a flat per-run cost (the ratio of per-run
requests/s at the largest N to the smallest; the marginal cost, the least-squares slope of requests/s
over N, is printed too, since a fixed cost such as kopf's watch weighs on the per-run figure at small N).

    python benchmarks/operator_cost.py                      # runs 1,10,50; warmup 30 s; window 60 s
    python benchmarks/operator_cost.py --quick              # runs 1,5; warmup 10 s; window 20 s
    python benchmarks/operator_cost.py --runs 1,20 --out cost.json --keep

Needs what tests/cluster needs: .tools/controlplane/bin (hack/controlplane/build.sh), Prometheus in
.tools/prometheus (make tools), the operator image environment (built here, cached). Everything listens on
127.0.0.1 and is stopped at the end.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asyncmtl import metric_names as M  # noqa: E402
from tests.cluster.controlplane import ControlPlane, wait_for  # noqa: E402
from tests.cluster.operator_process import RELEASE_NAMESPACE, OperatorProcess, render_chart  # noqa: E402
from tests.conftest import builtin_task, moto_server, run_doc  # noqa: E402
from tests.images.image_env import ImageEnv  # noqa: E402
from tests.operator.prometheus_server import PrometheusServer, find_prometheus  # noqa: E402

NS = "bench"
RUNS_PATH = f"/apis/asyncmtl.dev/v1alpha1/namespaces/{NS}/asyncmtlruns"
TASKS = ("sentiment", "sarcasm")
STEP = 10
SCRAPE_INTERVAL = "5s"
PROM_HANDLERS = ("/api/v1/query", "/api/v1/query_range")
GOAL_REQ_PER_RUN = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- the operator's identity

def operator_user() -> tuple[str, int]:
    """The chart's ServiceAccount as the API server names it, and its poll interval (the chart's default)."""
    objects = render_chart()
    dep = next(o for o in objects if o["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
    return f"system:serviceaccount:{RELEASE_NAMESPACE}:{spec['serviceAccountName']}", float(env["ASYNCMTL_TIMER_INTERVAL"])


def audit_policy(path: Path, user: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": [user]}, {"level": "None"}]}))
    return path


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def audit_requests(path: Path, user: str, t0: float, t1: float) -> collections.Counter:
    """Requests of `user` received in [t0, t1), by "verb resource[/subresource]" (one per auditID)."""
    seen: set[str] = set()
    out: collections.Counter = collections.Counter()
    with path.open() as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written
            if (ev.get("user") or {}).get("username") != user or ev.get("auditID") in seen:
                continue
            seen.add(ev["auditID"])
            if not t0 <= _ts(ev["requestReceivedTimestamp"]) < t1:
                continue
            ref = ev.get("objectRef") or {}
            res = ref.get("resource") or ev.get("requestURI", "?").split("?")[0]
            if ref.get("subresource"):
                res += "/" + ref["subresource"]
            out[f"{ev['verb']} {res}"] += 1
    return out


# ---------------------------------------------------------------------------------------- process and Prometheus

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prom_queries(url: str) -> dict[str, float]:
    """prometheus_http_requests_total summed over codes, for the query handlers."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {h: 0.0 for h in PROM_HANDLERS}
    for line in text.splitlines():
        if not line.startswith("prometheus_http_requests_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        for h in PROM_HANDLERS:
            if f'handler="{h}"' in labels:
                out[h] += float(value)
    return out


class S3Requests(logging.Handler):
    """The S3 requests moto's server answers (werkzeug's request log, which this also silences): (time, method)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, str]] = []
        logger = logging.getLogger("werkzeug")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if '"' in msg:
            self.seen.append((record.created, msg.split('"')[1].split(" ")[0]))

    def between(self, t0: float, t1: float) -> collections.Counter:
        return collections.Counter(m for t, m in list(self.seen) if t0 <= t < t1)


class Targets:
    """Prometheus' file_sd targets (rewritten atomically; Prometheus watches the file)."""

    def __init__(self, path: Path) -> None:
        self.path, self.targets = path, []
        self.write()

    def add(self, target: str) -> None:
        self.targets.append(target)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": self.targets, "labels": {"namespace": NS}}] if self.targets else []))
        tmp.replace(self.path)


# ---------------------------------------------------------------------------------------- runs

def static_exporter(run: str):
    """A trainer exporter in a fixed, plausible state: step 10 validated for every task, generation 0 applied."""
    from asyncmtl_trainer.exporter import TrainerExporter

    ex = TrainerExporter(run, list(TASKS))
    port = ex.serve(0, "127.0.0.1")
    ex.set_state("training")
    ex.global_step.labels(run).set(STEP)
    for i, task in enumerate(TASKS):
        ex.train_size.labels(run, task).set(96)
        ex.record_validation(task, STEP, 50.0 + i, STEP, 50.0 + i)
    ex.complete_validation(STEP)
    ex.control_step.labels(run).set(0)
    ex.control_generation.labels(run).set(0)
    return ex, f"127.0.0.1:{port}"


def bench_run(name: str, endpoint: str) -> dict[str, Any]:
    tasks = [builtin_task(t, patience=50) for t in TASKS]
    doc = run_doc(tasks, name=name,
                  training={"batchSize": 8, "learningRate": 1e-3, "maxSteps": 100000, "validationInterval": 10},
                  storage={"uri": "s3://runs/bench", "endpointUrl": endpoint, "credentialsSecret": "s3"},
                  cluster={"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}})
    doc["metadata"]["namespace"] = NS
    return doc


def phases(cp: ControlPlane) -> collections.Counter:
    items = cp.get(RUNS_PATH)["items"]
    return collections.Counter((i.get("status") or {}).get("phase") for i in items)


# ---------------------------------------------------------------------------------------- measurement

def measure(cp: ControlPlane, op: OperatorProcess, prom: PrometheusServer, audit: Path, user: str,
            s3: S3Requests, n: int, window: float) -> dict[str, Any]:
    pid = op.proc.pid
    q0, c0, t0 = prom_queries(prom.url), cpu_seconds(pid), time.time()
    rss: list[float] = []
    end = t0 + window
    while time.time() < end:
        if op.proc.poll() is not None:
            raise RuntimeError(f"the operator exited during the window:\n{op.tail()}")
        rss.append(rss_mib(pid))
        time.sleep(min(1.0, max(0.0, end - time.time())))
    c1, t1, q1 = cpu_seconds(pid), time.time(), prom_queries(prom.url)
    elapsed = t1 - t0
    time.sleep(1.0)  # the last requests' audit events written
    reqs = audit_requests(audit, user, t0, t1)
    api = sum(reqs.values()) / elapsed
    pq = sum(q1[h] - q0[h] for h in PROM_HANDLERS) / elapsed
    s3_reqs = s3.between(t0, t1)
    return {"runs": n, "window_s": round(elapsed, 2), "cpu_percent": 100 * (c1 - c0) / elapsed,
            "rss_mib": sum(rss) / len(rss), "api_req_per_s": api, "api_req_per_s_per_run": api / n,
            "prom_q_per_s": pq, "prom_q_per_s_per_run": pq / n,
            "prom_by_handler_per_s": {h: (q1[h] - q0[h]) / elapsed for h in PROM_HANDLERS},
            "api_breakdown_per_s": {k: v / elapsed for k, v in reqs.most_common()},
            "api_breakdown_counts": dict(reqs.most_common()),
            "s3_req_per_s": sum(s3_reqs.values()) / elapsed, "s3_by_method_counts": dict(s3_reqs),
            "phases": dict(phases(cp))}


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def report(results: list[dict[str, Any]], interval: float) -> str:
    lines = [f"operator cost, idle runs (poll interval {interval:g} s, the chart's default)",
             f"{'N':>4} {'CPU %':>7} {'RSS MiB':>8} {'API req/s':>10} {'req/s/run':>10} {'Prom q/s':>9} "
             f"{'q/s/run':>8} {'CPU %/run':>9} {'S3 req/s':>8}"]
    for r in results:
        lines.append(f"{r['runs']:>4} {r['cpu_percent']:>7.2f} {r['rss_mib']:>8.1f} {r['api_req_per_s']:>10.3f} "
                     f"{r['api_req_per_s_per_run']:>10.3f} {r['prom_q_per_s']:>9.3f} {r['prom_q_per_s_per_run']:>8.3f} "
                     f"{r['cpu_percent'] / r['runs']:>9.3f} {r['s3_req_per_s']:>8.3f}")
    top, low = results[-1], results[0]
    ok = top["api_req_per_s_per_run"] < GOAL_REQ_PER_RUN
    lines.append(f"API req/s per idle run < {GOAL_REQ_PER_RUN} (at N={top['runs']}): "
                 f"{'yes' if ok else 'no'} ({top['api_req_per_s_per_run']:.3f})")
    if len(results) > 1:
        ns = [r["runs"] for r in results]
        ratio = top["api_req_per_s_per_run"] / low["api_req_per_s_per_run"] if low["api_req_per_s_per_run"] else float("nan")
        cpu_ratio = (top["cpu_percent"] / top["runs"]) / (low["cpu_percent"] / low["runs"]) if low["cpu_percent"] else float("nan")
        lines.append(f"per-run cost flat: per-run req/s at N={top['runs']} / N={low['runs']} = {ratio:.2f}; "
                     f"per-run CPU ratio {cpu_ratio:.2f}")
        lines.append(f"marginal cost (least-squares slope over N): "
                     f"{slope(ns, [r['api_req_per_s'] for r in results]):.3f} API req/s, "
                     f"{slope(ns, [r['prom_q_per_s'] for r in results]):.3f} Prom q/s, "
                     f"{slope(ns, [r['cpu_percent'] for r in results]):.3f} CPU %, "
                     f"{slope(ns, [r['rss_mib'] for r in results]):.2f} MiB per added run")
    lines.append(f"API requests at N={top['runs']} by verb and resource (req/s; count in {top['window_s']:.0f} s):")
    for k, v in top["api_breakdown_per_s"].items():
        lines.append(f"  {k:<45} {v:8.3f}  ({top['api_breakdown_counts'][k]})")
    lines.append("Prometheus queries at N={}: {}".format(
        top["runs"], ", ".join(f"{h} {v:.3f}/s" for h, v in top["prom_by_handler_per_s"].items())))
    lines.append("run phases: " + "; ".join(f"N={r['runs']}: {r['phases']}" for r in results))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="1,10,50", help="comma-separated run counts, applied cumulatively")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds after every run has a phase")
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured at each N")
    ap.add_argument("--quick", action="store_true", help="runs 1,5; warmup 10; window 20")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.warmup, args.window = "1,5", 10.0, 20.0
    counts = sorted({int(x) for x in args.runs.split(",") if x.strip()})
    if not counts or counts[0] < 1:
        ap.error("--runs: positive counts")
    prometheus = find_prometheus()
    if prometheus is None:
        ap.error("Prometheus not found: run `make tools`")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="asyncmtl-operator-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    user, interval = operator_user()
    audit = work / "audit.log"
    policy = audit_policy(work / "audit-policy.json", user)
    cp = ControlPlane(workdir=work / "controlplane", extra_apiserver_args=[
        f"--audit-log-path={audit}", f"--audit-policy-file={policy}", "--audit-log-format=json",
        "--audit-log-maxsize=0"])
    exporters, prom, op = [], None, None
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        log(f"control plane (work directory {work})")
        cp.start()
        cp.kubectl("apply", "-f", str(ROOT / "crds" / "asyncmtlrun.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/asyncmtlruns.asyncmtl.dev")
        cp.add_fake_node("n1", cpu="1000", memory="4000Gi", pods=500)
        cp.create_namespace(NS)
        cp.kubectl("create", "secret", "generic", "s3", "-n", NS, "--from-literal=AWS_ACCESS_KEY_ID=k",
                   "--from-literal=AWS_SECRET_ACCESS_KEY=s")
        s3 = S3Requests()
        with moto_server() as endpoint:
            import boto3

            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                         region_name="us-east-1").create_bucket(Bucket="runs")
            (work / "prometheus").mkdir(exist_ok=True)
            targets = Targets(work / "prometheus" / "targets.json")
            prom = PrometheusServer(prometheus, work / "prometheus", [], {}, scrape_configs=[{
                "job_name": "trainer", "scrape_interval": SCRAPE_INTERVAL,
                "file_sd_configs": [{"files": [str(targets.path)]}]}]).start()
            log("operator image environment")
            image = ImageEnv("operator", ROOT / "operator" / "Dockerfile", ROOT).build()
            op = OperatorProcess(cp, image, work / "operator", env={"PROMETHEUS_URL": prom.url})
            op.install().start()
            log(f"operator pid {op.proc.pid} as {user}, each run polled every {interval:g} s")
            for n in counts:
                while len(exporters) < n:
                    name = f"idle-{len(exporters):03d}"
                    ex, target = static_exporter(name)
                    exporters.append(ex)
                    targets.add(target)
                    cp.request("POST", RUNS_PATH, bench_run(name, endpoint))
                log(f"{n} runs applied; waiting for their phases and their series")
                wait_for(f"a status phase on all {n} runs", lambda: sum(phases(cp).values()) == n
                         and None not in phases(cp), timeout=120 + 3 * n, interval=1.0,
                         on_timeout=lambda: f"; phases {dict(phases(cp))}\n{op.tail()}")
                prom.wait_for(f'count({M.GLOBAL_STEP}{{namespace="{NS}"}})',
                              lambda res: res and float(res[0]["value"][1]) >= n, timeout=60)
                log(f"phases {dict(phases(cp))}; warmup {args.warmup:g} s")
                time.sleep(args.warmup)
                log(f"measuring {args.window:g} s at N={n}")
                results.append(measure(cp, op, prom, audit, user, s3, n, args.window))
                r = results[-1]
                log(f"N={n}: CPU {r['cpu_percent']:.1f} %, API {r['api_req_per_s']:.3f} req/s, "
                    f"Prom {r['prom_q_per_s']:.3f} q/s")
    finally:
        log("stopping")
        if op is not None:
            op.stop()
        if prom is not None:
            prom.stop()
        for ex in exporters:
            ex.close()
        cp.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    text = report(results, interval)
    print(text)
    log(f"total {time.monotonic() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"poll_interval_s": interval, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
