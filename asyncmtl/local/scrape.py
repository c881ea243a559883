"""Read the trainer's /metrics over HTTP into `TrainerObservation` (prometheus-client's parser and the
builder the operator shares, asyncmtl.trainer_series)."""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from asyncmtl.core.observations import TrainerObservation
from asyncmtl.trainer_series import Sample, trainer_observation


def parse_trainer_metrics(text: str, run: str) -> TrainerObservation:
    """Parse the Prometheus text exposition of one trainer (samples of other runs are ignored)."""
    return trainer_observation(Sample(s.name, s.labels.get("task"), s.value)
                               for fam in text_string_to_metric_families(text) for s in fam.samples
                               if s.labels.get("run") == run)


def scrape(url: str, run: str, timeout: float = 5.0) -> TrainerObservation:
    """GET `url` (the trainer's /metrics) and parse it. Raises OSError when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return parse_trainer_metrics(r.read().decode(), run)
