"""`asyncmtl sweep SPEC... --seeds 1,2,3`: one run per (method spec, seed), as an experiment.

Each method spec (an AsyncMTLRun file) becomes one run per seed, named `<method>-s<seed>`, with
`spec.training.seed` set and the labels `asyncmtl.dev/experiment`, `asyncmtl.dev/method` and
`asyncmtl.dev/seed`. References between the sweep's own methods follow the seed: BAM's
`teacherRun` and easiest-first's `orderFromRun` naming a method of the sweep point at that
method's run of the same seed, so runs are ordered seed by seed, in the order the specs are given
(give the teacher before BAM, the joint run before easiest-first).

- `-o yaml`: print the runs as one multi-document YAML for `kubectl apply -f -` (nothing runs).
- otherwise the runs go one after another (or `--parallel N` at a time) with `asyncmtl run` in the
  working directory, each where its spec's storage puts it (`storage.uri: file://./runs`:
  `./runs/local/<run>`; `asyncmtl.local.runtime.local_run_place`, which the runtime itself uses).
  Resumable: a run whose status there says Succeeded is skipped, an interrupted one is resumed, a
  Failed one started again; a run whose status cannot be read is reported as such, never as Failed,
  and left alone. Each run's derived spec is written to `<runs>/sweeps/<experiment>/<run>.yaml`
  (`sweep_folder`) with relative data and model paths and a relative `file://` storage URI made
  absolute, and its output to `<run>.log` beside it.
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
from asyncmtl.storage_factory import file_storage_root

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
            elsewhere than the spec; relative to the spec's folder), and a relative `file://` storage
            URI (relative to the working directory, as `asyncmtl run` resolves it).

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
                root = file_storage_root(resource.spec.storage.uri)
                if root is not None:  # where `asyncmtl run` in this working directory puts it
                    spec.setdefault("storage", {})["uri"] = f"file://{root}"
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


@dataclass(frozen=True)
class RunState:
    """What the sweep read of one run's status, from where `asyncmtl run` keeps it
    (`asyncmtl.local.runtime.local_run_place`).

    Attributes:
        status_uri: the run's status.json (`file://...`).
        phase: the run's phase as read; None when it was not read.
        problem: why it was not read: `no status at <uri>` (the run never wrote one) or
            `status unreadable at <uri>: <reason>`; None when `phase` was read.
        exists: a status file is there (read or not).
    """

    status_uri: str
    phase: str | None = None
    problem: str | None = None
    exists: bool = False

    @property
    def unreadable(self) -> bool:
        """A status is there but could not be read (what the run is, is unknown)."""
        return self.exists and self.phase is None


def read_state(resource: AsyncMTLRun) -> RunState:
    """The phase of `resource` as `asyncmtl run`, started in the current working directory, saved it.

    Raises:
        asyncmtl.storage.StorageError: the run's storage URI has an unsupported scheme.
    """
    from pydantic import ValidationError

    from asyncmtl.core.status import RunStatus
    from asyncmtl.local.runtime import local_run_place

    path = local_run_place(resource).status_path
    uri = "file://" + str(path)
    if not path.is_file():
        return RunState(uri, problem=f"no status at {uri}")
    try:
        return RunState(uri, phase=RunStatus.model_validate_json(path.read_bytes()).phase, exists=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        return RunState(uri, problem=f"status unreadable at {uri}: {where + ': ' if where else ''}{first['msg']}",
                        exists=True)
    except (OSError, ValueError) as exc:
        return RunState(uri, problem=f"status unreadable at {uri}: {exc}", exists=True)


@dataclass(frozen=True)
class RunOutcome:
    """One run at the end of a local sweep.

    Attributes:
        name: the run.
        state: its status as read after its `asyncmtl run` exited (or before, when it was not started).
        exit_code: the exit status of its `asyncmtl run`; None when the sweep did not start it
            (Succeeded already, or a status it could not read: left as it is).
        log: its `asyncmtl run` output, when started.
    """

    name: str
    state: RunState
    exit_code: int | None = None
    log: Path | None = None

    @property
    def succeeded(self) -> bool:
        return self.state.phase == "Succeeded"

    def text(self) -> str:
        """One line for the user: the phase read (`Succeeded`, `Failed (exit 1; log ...)`), or why
        none was read; never a phase that was not read."""
        what = self.state.phase or self.state.problem or "?"
        if self.exit_code is None:
            if self.state.phase is None:
                return f"{what}; not started (repair or remove it, then run the sweep again)"
            return f"{what} (already)" if self.succeeded else what
        if self.succeeded and self.exit_code == 0:
            return what
        return f"{what} (exit {self.exit_code}; log {self.log})"


def sweep_folder(runs: list[SweepRun], experiment: str) -> Path:
    """Where a local sweep writes its derived specs and logs: `<folder>/sweeps/<experiment>`, where
    `<folder>` is the first run's local folder (`asyncmtl.local.runtime.local_root`: `runs` for
    `storage.uri: file://./runs`)."""
    from asyncmtl.local.runtime import local_root

    return local_root(runs[0].resource) / "sweeps" / experiment


@dataclass
class LocalSweep:
    """Runs a sweep's runs locally with `asyncmtl run` child processes, in the current working
    directory; each run is looked for where its spec's storage puts it (`read_state`).

    Attributes:
        sweep_dir: where derived specs and logs go (`sweep_folder`).
        parallel: runs at once (each gets `threads` CPU threads).
        poll_seconds: seconds between checks on the running children.
    """

    sweep_dir: Path
    tweeteval_dir: str | None = None
    parallel: int = 1
    threads: int | None = None
    poll_seconds: float = 1.0

    def command(self, run: SweepRun, spec_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", "asyncmtl.cli", "run", str(spec_file), "--no-live"]
        if read_state(run.resource).phase in ("Pending", "Running"):
            cmd.append("--resume")
        if self.tweeteval_dir:
            cmd += ["--tweeteval-dir", self.tweeteval_dir]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def run(self, runs: list[SweepRun]) -> dict[str, RunOutcome]:
        """Run every run not yet Succeeded where its storage is. Returns run name -> outcome, in the
        order of `runs`.

        A run waits for the runs it refers to (BAM's teacher, easiest-first's order) to finish first.
        A run whose status exists but cannot be read is not started (starting it anew would delete
        its artifacts); its outcome says so.
        """
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, RunOutcome] = {}
        todo = []
        for r in runs:
            state = read_state(r.resource)
            if state.phase == "Succeeded":
                log.info("%s: Succeeded already (%s), skipped", r.name, state.status_uri)
                result[r.name] = RunOutcome(r.name, state)
            elif state.unreadable:
                log.warning("%s: %s; not started", r.name, state.problem)
                result[r.name] = RunOutcome(r.name, state)
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
        return {r.name: result[r.name] for r in runs if r.name in result}

    def _loop(self, todo: list[SweepRun], running: dict[str, tuple[subprocess.Popen, SweepRun]],
              result: dict[str, RunOutcome]) -> None:
        while todo or running:
            for name, (proc, r) in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    out = RunOutcome(name, read_state(r.resource), proc.returncode, self.sweep_dir / f"{name}.log")
                    result[name] = out
                    log.info("%s: %s", name, out.text())
            for r in list(todo):
                if len(running) >= self.parallel:
                    break
                needs = {v for v in (r.resource.spec.teacher_run, r.resource.spec.order_from_run) if v}
                if needs & (set(running) | {t.name for t in todo if t is not r}):
                    continue  # its teacher or order run is not finished yet
                todo.remove(r)
                spec_file = self.sweep_dir / f"{r.name}.yaml"
                spec_file.write_text(yaml.safe_dump(r.document, sort_keys=False))
                log.info("%s: starting (%s, seed %d)", r.name, r.method, r.seed)
                with (self.sweep_dir / f"{r.name}.log").open("ab") as out:  # the child has its own copy
                    running[r.name] = (subprocess.Popen(self.command(r, spec_file), stdout=out,
                                                        stderr=subprocess.STDOUT), r)
            time.sleep(self.poll_seconds)
