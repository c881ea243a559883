"""Reading a run's trainer series from Prometheus's HTTP API (`/api/v1/query`).

Series are selected by the trainer's `run` label and the `namespace` target label that the
PodMonitor (or a static scrape config) attaches. Per poll:
1. one instant query for the sampling-proof values (validations counter, last and best value
   and step, global step, control generation applied and its step);
2. one instant query of range selectors over the time since the last poll, which returns raw
   samples (not resampled, unlike `query_range`), paired by timestamp into validation points;
3. `timestamp()` of the global step, to refuse stale data.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from asyncmtl import metric_names as M
from asyncmtl.core.convergence import ValidationPoint
from asyncmtl.core.observations import TrainerObservation
from asyncmtl.trainer_series import TASK_SERIES, TRAINER_SERIES, Sample, trainer_observation


class PrometheusError(RuntimeError):
    """Prometheus could not be queried (unreachable, HTTP error, query error)."""


@dataclass
class Snapshot:
    """What one poll read: the observation, the newest sample time (seconds since the epoch),
    and for each task the sample time of its newest validation point."""

    trainer: TrainerObservation
    newest_sample: float
    point_times: dict[str, dict[int, float]]


class _Transient(Exception):
    """A reply worth asking again for: 429 or a 5xx from Prometheus or a proxy in front of it."""


class PrometheusClient:
    """A client of the Prometheus HTTP API (docs: prometheus.io, "HTTP API"), also behind an
    authenticating proxy (Thanos Querier, OpenShift monitoring's kube-rbac-proxy).

    Args:
        url: the API's base URL.
        timeout: seconds per request.
        bearer_token_file: a file holding a bearer token, re-read on every request (projected
            ServiceAccount tokens rotate), sent as `Authorization: Bearer ...`.
        ca_file: a CA bundle to verify the server's TLS certificate with (default: the system's).
        attempts: tries per query; connection errors, timeouts, 429 and 5xx are retried with
            exponential backoff (tenacity).
    """

    def __init__(self, url: str, timeout: float = 5.0, *, bearer_token_file: str | None = None,
                 ca_file: str | None = None, attempts: int = 3) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.bearer_token_file = bearer_token_file
        self.attempts = max(1, attempts)
        self.verify: str | bool = ca_file or True
        self.session = requests.Session()

    def _headers(self) -> dict[str, str]:
        if not self.bearer_token_file:
            return {}
        return {"Authorization": f"Bearer {Path(self.bearer_token_file).read_text().strip()}"}

    def _get(self, promql: str) -> dict:
        # verify per request: a Session's own `verify` loses to $REQUESTS_CA_BUNDLE (psf/requests#3829)
        r = self.session.get(f"{self.url}/api/v1/query", params={"query": promql}, headers=self._headers(),
                             timeout=self.timeout, verify=self.verify)
        if r.status_code == 429 or r.status_code >= 500:
            raise _Transient(f"HTTP {r.status_code}")
        if r.status_code in (401, 403):
            raise PrometheusError(f"{self.url}: HTTP {r.status_code}: not authorized (bearer token file: "
                                  f"{self.bearer_token_file or 'none'})")
        return r.json()  # 400 and 422 carry Prometheus's own error body

    def query(self, promql: str) -> list[dict]:
        """Instant query; returns `data.result`.

        Raises:
            PrometheusError: unreachable after the retries, not authorized, or a query error.
        """
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.attempts), reraise=True,
                                    wait=wait_exponential(multiplier=0.2, max=2.0),
                                    retry=retry_if_exception_type((_Transient, requests.ConnectionError,
                                                                   requests.Timeout))):
                with attempt:
                    body = self._get(promql)
        except (_Transient, requests.RequestException, OSError, ValueError) as exc:
            raise PrometheusError(f"{self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{self.url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def snapshot(self, run: str, namespace: str, window_seconds: float) -> Snapshot | None:
        """The run's trainer series now, with points from the last `window_seconds`.
        None when Prometheus has no series of this run yet. Raises PrometheusError."""
        sel = f'run="{run}",namespace="{namespace}"'
        names = "|".join([*TASK_SERIES, *TRAINER_SERIES])
        current = self.query(f'{{__name__=~"{names}",{sel}}}')
        if not current:
            return None
        latest = [Sample(s["metric"]["__name__"], s["metric"].get("task"), float(s["value"][1])) for s in current]
        window = max(1, int(math.ceil(window_seconds)))
        ranged = self.query(
            f'{{__name__=~"{M.VALIDATION_LAST_STEP}|{M.VALIDATION_LAST_VALUE}|{M.REWINDS}_total",{sel}}}[{window}s]')
        raw: dict[str, dict[str, dict[float, float]]] = {}
        since = 0.0
        for s in ranged:
            task = s["metric"].get("task")
            samples = {float(t): float(v) for t, v in s["values"]}
            if task:
                raw.setdefault(task, {})[s["metric"]["__name__"]] = samples
            elif s["metric"]["__name__"] == f"{M.REWINDS}_total" and samples:
                since = _rewind_time(samples)
        if since:  # samples before the last rewind in the window describe discarded steps
            raw = {t: {n: {ts: v for ts, v in ser.items() if ts >= since} for n, ser in d.items()} for t, d in raw.items()}
        ts = self.query(f'timestamp({M.GLOBAL_STEP}{{{sel}}})')
        newest = max((float(s["value"][1]) for s in ts), default=0.0)
        points: dict[str, list[ValidationPoint]] = {}
        point_times: dict[str, dict[int, float]] = {}
        for task, series in raw.items():
            points[task], point_times[task] = _pair_points(series)
        obs = trainer_observation(latest, points)
        point_times = {t: point_times.get(t, {}) for t in obs.tasks}
        return Snapshot(trainer=obs, newest_sample=newest, point_times=point_times)


def _rewind_time(samples: dict[float, float]) -> float:
    """Time of the first sample showing the rewinds counter's final value within the window
    (0 when it did not change in the window)."""
    times = sorted(samples)
    last = samples[times[-1]]
    if samples[times[0]] == last:
        return 0.0
    return next(t for t in times if samples[t] == last and all(samples[u] == last for u in times if u >= t))


def _pair_points(series: dict[str, dict[float, float]]) -> tuple[list[ValidationPoint], dict[int, float]]:
    """(step, value) pairs from samples of the last-step and last-value gauges taken at the same
    scrape; a step seen at several scrapes keeps its first sample time (when it became visible)."""
    steps, values = series.get(M.VALIDATION_LAST_STEP, {}), series.get(M.VALIDATION_LAST_VALUE, {})
    points: dict[int, ValidationPoint] = {}
    first_seen: dict[int, float] = {}
    for t in sorted(set(steps) & set(values)):
        s, v = steps[t], values[t]
        if math.isnan(s) or math.isnan(v):
            continue
        step = int(s)
        if step not in points:
            points[step] = ValidationPoint(step=step, value=v)
            first_seen[step] = t
    return [points[k] for k in sorted(points)], first_seen


def now() -> float:
    return time.time()
