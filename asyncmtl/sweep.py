"""`asyncmtl sweep SPEC... --seeds 1,2,3`: one run per (method spec, seed), as an experiment.

Each method spec (an AsyncMTLRun file) becomes one run per seed, named `<method>-s<seed>`, with
`spec.training.seed` set and the labels `asyncmtl.dev/experiment`, `asyncmtl.dev/method` and
`asyncmtl.dev/seed`. References between the sweep's own methods follow the seed: BAM's
`teacherRun` and easiest-first's `orderFromRun` naming a method of the sweep point at that
method's run of the same seed, so runs are ordered seed by seed, in the order the specs are given
(give the teacher before BAM, the joint run before easiest-first).

- `-o yaml`: print the runs as one multi-document YAML for `kubectl apply -f -` (nothing runs).
- otherwise the runs go one after another (or `--parallel N` at a time) with `asyncmtl run`:
  resumable, a Succeeded run is skipped, an interrupted one is resumed, a Failed one started again.
  Each run's derived spec is written to `<runs>/sweeps/<experiment>/<run>.yaml` with relative
  data and model paths made absolute, and its output to `<run>.log` beside it.
"""
from __future__ import annotations

import copy
import logging
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from asyncmtl.local.lifeline import Terminated, shielded, terminate_on_signals
from asyncmtl.spec import AsyncMTLRun, parse_run

log = logging.getLogger(__name__)

EXPERIMENT_LABEL = "asyncmtl.dev/experiment"
METHOD_LABEL = "asyncmtl.dev/method"
SEED_LABEL = "asyncmtl.dev/seed"
_SEEDED = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")
_SCHEMES = ("tweeteval://", "builtin://", "s3://", "package:", "file://", "http://", "https://")


class SweepError(ValueError):
    """A sweep cannot be built (a spec file that does not parse, a name too long with its seed suffix)."""


def run_name(method: str, seed: int) -> str:
    """The run of `method` (its metadata.name) for `seed`: `<method>-s<seed>`."""
    return f"{method}-s{seed}"


def split_run_name(name: str) -> tuple[str, int | None]:
    """(method, seed) of a run named by `run_name`; (name, None) for any other name."""
    m = _SEEDED.match(name)
    return (m.group("method"), int(m.group("seed"))) if m else (name, None)


def parse_seeds(text: str) -> list[int]:
    """`3` -> [1, 2, 3]; `7,11,13` -> [7, 11, 13].

    Raises:
        SweepError: not a positive count or a comma-separated list of non-negative integers.
    """
    try:
        if "," not in text and "-" not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(1, n + 1))
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--seeds: expected a count (3) or a list (7,11,13), got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds: expected distinct non-negative seeds, got {text!r}")
    return seeds


@dataclass(frozen=True)
class SweepRun:
    """One run of the sweep: `resource` is the validated derived run; `document` what is written out."""

    method: str
    seed: int
    source: Path
    resource: AsyncMTLRun
    document: dict

    @property
    def name(self) -> str:
        return self.resource.name


def _absolute(value: str, base: Path) -> str:
    if not value or value.startswith(_SCHEMES) or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def expand(spec_paths: list[Path], seeds: list[int], experiment: str | None = None,
           absolute_paths: bool = False) -> list[SweepRun]:
    """The sweep's runs, seed by seed, in the order of `spec_paths`.

    Args:
        spec_paths: AsyncMTLRun files, one per method.
        seeds: the seeds (`spec.training.seed` of each run).
        experiment: the experiment label (default: the first spec's `asyncmtl.dev/experiment` label,
            else its name).
        absolute_paths: make relative data and model paths absolute (for derived files written
            elsewhere than the spec).

    Raises:
        SweepError: a spec that does not parse (with file, line and path), or a derived run that is invalid.
    """
    from asyncmtl.spec import SpecError

    docs: list[tuple[Path, dict, AsyncMTLRun]] = []
    for p in spec_paths:
        try:
            raw = yaml.safe_load(Path(p).read_text())
            resource = parse_run(raw, file=str(p))
        except (OSError, yaml.YAMLError) as exc:
            raise SweepError(f"{p}: {exc}") from None
        except SpecError as exc:
            raise SweepError(f"{p}: invalid AsyncMTLRun spec\n{exc}") from None
        docs.append((Path(p), raw, resource))
    methods = {r.name for _, _, r in docs}
    if len(methods) != len(docs):
        raise SweepError("two specs have the same metadata.name: each method needs its own")
    exp = experiment or docs[0][2].metadata.labels.get(EXPERIMENT_LABEL) or docs[0][2].name
    out = []
    for seed in seeds:
        for path, raw, resource in docs:
            doc = copy.deepcopy(raw)
            meta = doc.setdefault("metadata", {})
            meta["name"] = run_name(resource.name, seed)
            meta["labels"] = {**(meta.get("labels") or {}), EXPERIMENT_LABEL: exp, METHOD_LABEL: resource.name,
                              SEED_LABEL: str(seed)}
            spec = doc["spec"]
            spec.setdefault("training", {})["seed"] = seed
            for key in ("teacherRun", "orderFromRun"):
                if spec.get(key) in methods:
                    spec[key] = run_name(spec[key], seed)
            if absolute_paths:
                base = path.resolve().parent
                for task in spec.get("tasks", []):
                    for split in ("train", "validation", "test"):
                        if isinstance(task.get("data", {}).get(split), str):
                            task["data"][split] = _absolute(task["data"][split], base)
                if isinstance(spec.get("model", {}).get("pretrained"), str):
                    spec["model"]["pretrained"] = _absolute(spec["model"]["pretrained"], base)
            try:
                derived = parse_run(doc, file=str(path))
            except SpecError as exc:
                raise SweepError(f"{path} with seed {seed}: {exc}") from None
            out.append(SweepRun(method=resource.name, seed=seed, source=path, resource=derived, document=doc))
    return out


def to_yaml(runs: list[SweepRun]) -> str:
    """The runs as one multi-document YAML stream (`kubectl apply -f -`)."""
    return yaml.safe_dump_all([r.document for r in runs], sort_keys=False)


def run_phase(runs_root: Path, name: str) -> str | None:
    """The phase in `<runs_root>/<name>/status.json`, or None when the run never started."""
    from asyncmtl.core.status import RunStatus

    p = runs_root / name / "status.json"
    if not p.is_file():
        return None
    try:
        return RunStatus.model_validate_json(p.read_text()).phase
    except ValueError:
        return None


@dataclass
class LocalSweep:
    """Runs a sweep's runs locally with `asyncmtl run` child processes.

    Attributes:
        runs_root: where local runs live (`runs/local` for `storage.uri: file://./runs`).
        sweep_dir: where derived specs and logs go.
        parallel: runs at once (each gets `threads` CPU threads).
    """

    runs_root: Path
    sweep_dir: Path
    tweeteval_dir: str | None = None
    parallel: int = 1
    threads: int | None = None

    def command(self, run: SweepRun, spec_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", "asyncmtl.cli", "run", str(spec_file), "--no-live"]
        if run_phase(self.runs_root, run.name) in ("Pending", "Running"):
            cmd.append("--resume")
        if self.tweeteval_dir:
            cmd += ["--tweeteval-dir", self.tweeteval_dir]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def run(self, runs: list[SweepRun]) -> dict[str, str]:
        """Run every run not yet Succeeded. Returns run name -> final phase ("Succeeded", "Failed", ...).

        A run waits for the runs it refers to (BAM's teacher, easiest-first's order) to finish first.
        """
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, str] = {}
        todo = []
        for r in runs:
            if run_phase(self.runs_root, r.name) == "Succeeded":
                log.info("%s: Succeeded already, skipped", r.name)
                result[r.name] = "Succeeded"
            else:
                todo.append(r)
        running: dict[str, tuple[subprocess.Popen, SweepRun]] = {}
        try:
            with terminate_on_signals():
                self._loop(todo, running, result)
        except Terminated:  # SIGTERM/SIGHUP: each running `asyncmtl run` stops its trainer and saves its status
            with shielded():
                for proc, _ in running.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                for proc, _ in running.values():
                    proc.wait()
            raise
        return result

    def _loop(self, todo: list[SweepRun], running: dict[str, tuple[subprocess.Popen, SweepRun]],
              result: dict[str, str]) -> None:
        while todo or running:
            for name, (proc, r) in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    result[name] = run_phase(self.runs_root, name) or "Failed"
                    log.info("%s: %s (exit %d)", name, result[name], proc.returncode)
            for r in list(todo):
                if len(running) >= self.parallel:
                    break
                needs = {v for v in (r.resource.spec.teacher_run, r.resource.spec.order_from_run) if v}
                if needs & (set(running) | {t.name for t in todo if t is not r}):
                    continue  # its teacher or order run is not finished yet
                todo.remove(r)
                spec_file = self.sweep_dir / f"{r.name}.yaml"
                spec_file.write_text(yaml.safe_dump(r.document, sort_keys=False))
                out = (self.sweep_dir / f"{r.name}.log").open("ab")
                log.info("%s: starting (%s, seed %d)", r.name, r.method, r.seed)
                running[r.name] = (subprocess.Popen(self.command(r, spec_file), stdout=out, stderr=subprocess.STDOUT),
                                   r)
            time.sleep(1.0)
