"""`asyncmtl run SPEC.yaml`: the method on one machine, with processes instead of pods.

The trainer runs as a child process (`python -m asyncmtl_trainer.train`); the runtime reads its
/metrics over HTTP, polls the run policy (`asyncmtl.driver.RunDriver`, the operator's too), writes
the control file atomically (in place of the ConfigMap), and runs soft-label inference shards as
parallel child processes (in place of the Indexed Job). Status is saved to `<workdir>/status.json` after every poll, so `--resume`
continues an interrupted run. Ctrl-C stops the children cleanly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from asyncmtl import termination
from asyncmtl.control import ControlDocument, write_control_file
from asyncmtl.core.actions import LaunchInference
from asyncmtl.core.observations import Observations, TrainerObservation
from asyncmtl.core.status import RunStatus
from asyncmtl.driver import EventType, InferenceAttempt, RunDriver
from asyncmtl.failpoints import Failpoints
from asyncmtl.local.lifeline import RunLock, Terminated, shielded, terminate_on_signals
from asyncmtl.local.scrape import scrape
from asyncmtl.logs import run_logger
from asyncmtl.pretrained import resolve_pretrained
from asyncmtl.artifacts import delete_run_artifacts, read_final
from asyncmtl.spec import AsyncMTLRun
from asyncmtl.storage import (LOCAL_NAMESPACE, FileRunStorage, RunStorage, StorageFault, as_storage_fault, atomic_write, ensure_writable)
from asyncmtl.storage_factory import file_storage_root, open_run_storage

STATUS_FILE = "status.json"  # in a local run's workdir: the runtime's RunStatus, saved after every poll
LOCAL_RUNS = Path("runs")  # under the working directory: local files of runs whose storage is no folder (s3://)


def local_root(resource: AsyncMTLRun) -> Path:
    """The folder under which `asyncmtl run` keeps a run's local files (absolute): the folder its
    `file://` storage URI names (relative to the working directory), else `./runs` (object storage)."""
    return file_storage_root(resource.spec.storage.uri, os.getcwd()) or LOCAL_RUNS.resolve()


@dataclass(frozen=True)
class LocalRunPlace:
    """Where `asyncmtl run` keeps one run: its artifacts (`storage`) and its status.json, control file
    and logs (`workdir`, absolute)."""

    storage: RunStorage
    workdir: Path

    @property
    def status_path(self) -> Path:
        return self.workdir / STATUS_FILE


def local_run_place(resource: AsyncMTLRun, workdir: Path | None = None) -> LocalRunPlace:
    """Where `asyncmtl run` started in the current working directory keeps `resource` (the runtime
    itself asks here, and so does `asyncmtl sweep`): storage `<storage>/local/<run>` (a relative
    `file://` URI resolves against the working directory), workdir `workdir` if given, else the
    run's storage folder for `file://` storage, else `./runs/<run>`.

    Raises:
        asyncmtl.storage.StorageError: an unsupported storage scheme.
    """
    storage = open_run_storage(resource.spec.storage.uri, namespace=LOCAL_NAMESPACE, run=resource.name,
                               base_dir=os.getcwd(), endpoint_url=resource.spec.storage.endpoint_url)
    default = storage.local_path("") or local_root(resource) / resource.name
    return LocalRunPlace(storage=storage, workdir=(workdir or default).resolve())


@dataclass
class LocalOptions:
    """Options of `asyncmtl run`.

    Attributes:
        workdir: where control.json, status.json and logs go (default: the run's storage folder
            for file:// storage, else `./runs/<run>`).
        resume: continue from status.json and the latest checkpoint.
        tweeteval_dir: TweetEval root for `tweeteval://` data (else $TWEETEVAL_DIR).
        poll_interval: seconds between reconciles (default: spec.metrics.pollIntervalSeconds).
        live: draw the live progress table (default: when stdout is a terminal).
        threads: CPU threads for the trainer (default: torch's choice; 1 per process under torchrun).
        nproc_per_node: trainer processes (torchrun ranks, DDP); default: one per visible GPU when the
            spec trains on CUDA and there are several, else 1 (a plain process, no torchrun).
    """

    workdir: Path | None = None
    resume: bool = False
    tweeteval_dir: str | None = None
    poll_interval: float | None = None
    live: bool | None = None
    threads: int | None = None
    nproc_per_node: int | None = None


def default_nproc(device: str) -> int:
    """Trainer processes for `spec.training.device` when none are asked for: one per visible GPU."""
    if device == "cpu":
        return 1
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return 1
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


@dataclass
class InferenceRun:
    """The shard processes of one task's soft-label inference attempt."""

    task: str
    step: int
    attempt: int
    shards: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    state: str = "Running"
    message: str = ""


def tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file ("" if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalRuntime:
    """Runs one AsyncMTLRun locally. `run()` returns the process exit code (0 = Succeeded).

    A process supervisor and the driver's `RuntimePort` (asyncmtl.driver): the run policy is the
    driver's; this class starts and watches the trainer and inference processes, scrapes the
    trainer's /metrics, writes the control file and status.json, and shows progress.
    """

    def __init__(self, resource: AsyncMTLRun, spec_path: Path, opts: LocalOptions) -> None:
        self.resource = resource
        self.spec = resource.spec
        self.name = resource.name
        self.spec_path = spec_path.resolve()
        self.opts = opts
        self.log = run_logger("asyncmtl.local", self.name)
        place = local_run_place(resource, opts.workdir)
        self.storage = place.storage
        self.workdir = place.workdir
        self.control_path = self.workdir / "control.json"
        self.status_path = place.status_path
        self.logs = self.workdir / "logs"
        self.trainer: subprocess.Popen | None = None
        self.inference: dict[str, InferenceRun] = {}
        self.status = RunStatus()
        self.poll_interval = opts.poll_interval or self.spec.metrics.poll_interval_seconds
        self.events: list[str] = []
        self.driver = RunDriver(spec=self.spec, name=self.name, storage=self.storage, storage_of=self.run_storage,
                                where=str(self.spec_path), log=self.log)
        self.lock = RunLock(self.workdir / "run.lock")
        self.failpoints = Failpoints.from_env()  # injected write faults (tests); none by default
        self.trainer_restarts = 0  # trainer processes restarted after a failure (cluster.backoffLimit)

    # ---- processes ---------------------------------------------------------------------------
    def _common_args(self) -> list[str]:
        args = ["--spec", str(self.spec_path), "--run", self.name, "--namespace", LOCAL_NAMESPACE,
                "--workdir", str(self.workdir), "--base-dir", str(self.spec_path.parent)]
        if self.opts.tweeteval_dir:
            args += ["--tweeteval-dir", self.opts.tweeteval_dir]
        return args

    def _spawn(self, module: str, args: list[str], log_path: Path, threads: int | None,
               launcher: list[str] | None = None) -> subprocess.Popen:
        """Start `python -m module args` (after `launcher`'s arguments: `python -m asyncmtl_trainer.launch ...
        -m module args`) with its output in `log_path` and its termination message (asyncmtl.termination)
        in `log_path` with the suffix `.termination-log`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        term_log = log_path.with_suffix(".termination-log")
        term_log.unlink(missing_ok=True)
        args = [*args, "--termination-log", str(term_log)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
            args = [*args, "--threads", str(threads)]
        out = log_path.open("ab")
        # a new session: Ctrl-C in the terminal reaches the runtime only, which stops children in order;
        # the child watches its parent and inherits the run lock (asyncmtl.local.lifeline)
        args = [*args, "--parent-pid", str(os.getpid())]
        command = [sys.executable, "-m", module, *args] if launcher is None else [sys.executable, *launcher, "-m", module, *args]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=os.getcwd(),
                                pass_fds=(self.lock.fd,) if self.lock.fd is not None else ())

    def start_trainer(self, resume: bool) -> None:
        (self.workdir / "trainer.json").unlink(missing_ok=True)
        args = self._common_args() + ["--control", str(self.control_path), "--metrics-port", "0",
                                      "--metrics-addr", "127.0.0.1"]
        if resume:
            args.append("--resume")
        n = self.nproc
        launcher = None
        if n > 1:  # torchrun: one rendezvous on this machine, n ranks; a failed rank fails the group, and the
            # runtime restarts it from the latest checkpoint (cluster.backoffLimit), as a failed pod on a cluster
            launcher = ["-m", "asyncmtl_trainer.launch", "--standalone", f"--nproc-per-node={n}", "--max-restarts=0"]
            args[args.index("--run")] = "--run-name"  # torchrun's parser reads --run as its --run-path
        self.trainer = self._spawn("asyncmtl_trainer.train", args, self.logs / "trainer.log", self.opts.threads, launcher)
        self.log.info("trainer started (pid %d%s), log %s", self.trainer.pid, f", torchrun with {n} ranks" if n > 1 else "",
                      self.logs / "trainer.log")

    @property
    def nproc(self) -> int:
        """Trainer processes (`LocalOptions.nproc_per_node`, else `default_nproc`)."""
        return self.opts.nproc_per_node or default_nproc(self.spec.training.device)

    def launch_inference(self, a: LaunchInference) -> None:
        old = self.inference.get(a.task)
        if old is not None:
            self._stop_procs(old.procs)
        threads = max(1, (os.cpu_count() or 2) // a.shards)
        run = InferenceRun(task=a.task, step=a.checkpoint_step, attempt=a.attempt, shards=a.shards)
        for i in range(a.shards):
            log = self.logs / f"infer-{a.task}-{a.checkpoint_step}-a{a.attempt}-{i}.log"
            args = self._common_args() + ["--task", a.task, "--step", str(a.checkpoint_step), "--shard", str(i),
                                          "--shards", str(a.shards)]
            if a.source_run:
                args[args.index("--run") + 1] = a.source_run
            run.procs.append(self._spawn("asyncmtl_trainer.inference", args, log, threads))
            run.logs.append(log)
        self.inference[a.task] = run

    def _poll_inference(self, run: InferenceRun) -> None:
        if run.state != "Running":
            return
        codes = [p.poll() for p in run.procs]
        if any(c is None for c in codes):
            if any(c not in (None, 0) for c in codes):  # one shard failed: stop the rest now
                self._stop_procs(run.procs)
            else:
                return
            codes = [p.poll() for p in run.procs]
        bad = [i for i, c in enumerate(codes) if c != 0]
        if bad:
            run.state = "Failed"
            said = termination.read_message(run.logs[bad[0]].with_suffix(".termination-log"))
            run.message = f"shard {bad[0]} exited {codes[bad[0]]}: {said or tail(run.logs[bad[0]], 3)}"
            return
        run.state = "Succeeded"  # every shard exited 0; the driver verifies what they wrote

    @staticmethod
    def _stop_procs(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_children(self) -> None:
        procs = [p for r in self.inference.values() for p in r.procs]
        if self.trainer is not None:
            procs.append(self.trainer)
        self._stop_procs(procs)

    # ---- the driver's port (asyncmtl.driver.RuntimePort) -------------------------------------------
    def observe_trainer(self, obs: Observations) -> None:
        """The trainer process's state (restarted from its latest checkpoint after a failure, up to
        cluster.backoffLimit) and its /metrics."""
        if self.trainer is not None:
            code = self.trainer.poll()
            if code == 0:
                obs.trainer_state = "Finished"
                final = read_final(self.storage)  # its last acknowledgement, which no scrape may have seen
                if final is not None:
                    obs.metrics = TrainerObservation(global_step=final.step, applied_generation=final.control_generation)
            elif (code is not None and code not in termination.NOT_RETRIED
                  and self.trainer_restarts < self.spec.cluster.backoff_limit):
                # as the training Job retries its pod (backoffLimit): resume from the latest checkpoint;
                # a bad spec or data (2) or a storage fault (3) is not something a retry fixes
                self.trainer_restarts += 1
                msg = (f"TrainerRestarted: trainer exited with code {code}; restarting it from its latest checkpoint "
                       f"(retry {self.trainer_restarts} of {self.spec.cluster.backoff_limit}, cluster.backoffLimit)")
                self.log.warning("%s; log tail:\n%s", msg, tail(self.logs / "trainer.log"))
                self.events.append(msg)
                self.start_trainer(resume=True)
                obs.trainer_state = "Starting"
            elif code is not None:
                obs.trainer_state = "Failed"
                said = termination.read_message(self.logs / "trainer.termination-log")
                obs.trainer_message = (said if said and code in termination.NOT_RETRIED
                                       else f"exit code {code}; log tail:\n{tail(self.logs / 'trainer.log')}")
        info = self.workdir / "trainer.json"
        if obs.trainer_state == "Running" and info.is_file():
            try:
                port = json.loads(info.read_text())["metricsPort"]
                obs.metrics = scrape(f"http://127.0.0.1:{port}/metrics", self.name)
            except (OSError, ValueError, KeyError) as exc:
                obs.metrics_error = f"scrape failed: {exc}"
        else:
            obs.metrics_error = "trainer metrics not up yet"

    def inference_attempt(self, task: str, step: int, attempt: int) -> InferenceAttempt | None:
        """The shard processes of that attempt, polled (None: not started by this runtime, e.g. before a resume)."""
        run = self.inference.get(task)
        if run is None or (run.step, run.attempt) != (step, attempt):
            return None
        self._poll_inference(run)
        return InferenceAttempt(state=run.state, shards=run.shards, message=run.message)  # type: ignore[arg-type]

    def write_control(self, document: ControlDocument) -> None:
        """Write control.json atomically.

        Raises:
            StorageFault: naming the control file.
        """
        try:
            write_control_file(self.control_path, document)
        except OSError as exc:
            raise as_storage_fault(exc, self.control_path) from None

    def post_event(self, type_: EventType, reason: str, message: str) -> None:
        """Shown under the progress table (the driver has logged it)."""
        self.events.append(f"{reason}: {message}")

    # ---- main loop ---------------------------------------------------------------------------
    def save_status(self) -> None:
        """Write status.json atomically (a failed write leaves the previous one and no stray file).

        Raises:
            StorageFault: naming status.json (disk full, read-only).
        """
        try:
            self.failpoints.hit("runtime.status", self.status_path)
        except OSError as exc:
            raise as_storage_fault(exc, self.status_path) from None
        atomic_write(self.status_path, self.status.model_dump_json(by_alias=True, indent=1).encode())

    def check_storage(self, model_dir: Path) -> None:
        """Storage and the run's folder are writable, with room for a checkpoint (estimated from the
        weight files of the encoder in `model_dir`: weights plus Adam's two moments); object stores:
        reachable.

        Raises:
            StorageFault: naming the folder and the reason (creates the folders when it succeeds).
            StorageError: an object store that is unreachable or refuses the credentials.
        """
        root = self.storage.local_path("")
        need = checkpoint_bytes_estimate(model_dir)
        if root is not None:
            ensure_writable(root, need, self.failpoints)
        else:
            check = getattr(self.storage, "check", None)
            if check is not None:  # object stores: bucket reachable, credentials work
                check()
        if self.workdir != root:
            ensure_writable(self.workdir, 0, self.failpoints)

    def preflight(self) -> None:
        """Validate every data split (file:line errors) and the encoder path, then check storage,
        before anything starts.

        Raises:
            asyncmtl.data.DataError, asyncmtl.pretrained.ModelLoadError, StorageError: as found.
        """
        from asyncmtl.data import load_split

        for t in self.spec.tasks:
            for split in ("train", "validation", "test"):
                s = load_split(t, split, base_dir=self.spec_path.parent, tweeteval_dir=self.opts.tweeteval_dir,
                               endpoint_url=self.spec.storage.endpoint_url)
                if split == "train" and s is not None:
                    self.driver.train_sizes[t.name] = len(s)  # what its soft labels must add up to
        model_dir = resolve_pretrained(self.spec.model.pretrained, self.spec_path.parent)
        self.check_storage(model_dir)  # only now, with spec and data accepted, is anything created

    def run_storage(self, run: str) -> RunStorage:
        """The storage of another run (the driver's `StorageOf`): a local run folder given as a path
        (`orderFromRun: runs/local/joint`), else the run of that name under this run's storage."""
        if run == self.name:
            return self.storage
        if (Path(run) / "status.json").is_file():
            return FileRunStorage(Path(run))
        return open_run_storage(self.spec.storage.uri, namespace=LOCAL_NAMESPACE, run=run, base_dir=os.getcwd(),
                                endpoint_url=self.spec.storage.endpoint_url)

    def _resume_state(self) -> bool:
        """Load status.json (False when there is none). Inference attempts that were running are
        the driver's to find again (their manifest) or launch again."""
        if not self.status_path.is_file():
            self.log.info("nothing to resume in %s: starting a new run", self.workdir)
            return False
        self.status = RunStatus.model_validate_json(self.status_path.read_text())
        return True

    def run(self) -> int:
        """Preflight, start, reconcile until Succeeded or Failed. Returns 0 on success, 130 after Ctrl-C,
        128 + the signal number after SIGTERM or SIGHUP (children stopped, status saved, resumable).

        Raises:
            RunLocked: another runtime, or a process one started, still holds this run.
            SpecError: spec.orderFromRun or spec.teacherRun names no usable finished run.
        """
        self.preflight()  # bad data or encoder: an error before anything is created
        self.lock.acquire(self.name, wait_for_orphans=30.0)  # orphans of a killed runtime stop within seconds
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> int:
        resumed = self.opts.resume and self._resume_state()
        self.driver.prepare(self.status)  # the reference and teacher runs, before any child starts
        if resumed and self.status.phase == "Succeeded":
            self.log.info("run already Succeeded")
            return 0
        if resumed and self.status.phase == "Failed":  # e.g. its trainer failed more than backoffLimit times
            self.log.warning("run had Failed (%s): resuming it from its latest checkpoint", self.status.message)
            self.status.phase, self.status.message = "Running", "resumed after a failure"
        try:
            return self._drive(resumed)
        except StorageFault as exc:
            return self._stop_on_storage_fault(exc)

    def _drive(self, resumed: bool) -> int:
        from asyncmtl.local.progress import Progress

        if not resumed:
            delete_run_artifacts(self.storage)
            self.control_path.unlink(missing_ok=True)
        progress = Progress(self.spec, self.name, live=self.opts.live)
        if not resumed:
            self.status = self.driver.start(self, time.time())
        self.save_status()
        self.start_trainer(resume=resumed)
        try:
            with terminate_on_signals(), progress:
                while True:
                    time.sleep(self.poll_interval)
                    result = self.driver.step(self, self.status, time.time())
                    self.status = result.status
                    self.save_status()
                    progress.update(self.status, self.events)
                    if result.outcome is not None:
                        break
        except (KeyboardInterrupt, Terminated) as exc:
            why = f"terminated ({exc})" if isinstance(exc, Terminated) else "interrupted"
            self.log.warning("%s: stopping children; continue with `asyncmtl run %s --resume`", why, self.spec_path)
            with shielded():  # a second signal must not cut the cleanup short
                self.stop_children()
                self.save_status()
            return exc.exit_status if isinstance(exc, Terminated) else 130
        return self._finish(result.outcome)

    def _stop_on_storage_fault(self, fault: StorageFault) -> int:
        """A write of the runtime's own failed (status, control file, report): stop the children,
        record phase Failed with the fault as its reason where the status can still be written, say
        so in one line. Returns 1."""
        with shielded():
            self.stop_children()
        self.status.phase, self.status.message = "Failed", str(fault)
        try:
            self.save_status()
        except StorageFault:
            self.log.warning("status.json could not be updated either; it still shows the last saved state")
        print(f"error: {fault}\n  the run is stopped; once the fault is gone continue it with {self._resume_command()}",
              file=sys.stderr)
        return 1

    def _resume_command(self) -> str:
        """The command that continues this run, as a user would type it."""
        return f"`asyncmtl run {_shown('file://' + str(self.spec_path))} --resume`"

    def _finish(self, outcome: str) -> int:
        self.stop_children()
        done = self.driver.finish(self, self.status)
        print(f"\nRun {self.name}: {self.status.phase} — {self.status.message}")
        for n, uri in done.report.items():
            print(f"  {n:12s} {_shown(uri)}")
        if self.storage.exists("model/asyncmtl.json"):
            print(f"  {'model':12s} {_shown(self.storage.uri('model'))}")
        kept = done.retained
        if kept is not None and kept.kept:
            print(f"  {'checkpoints':12s} {_shown(self.storage.uri('checkpoints'))} (steps "
                  f"{', '.join(map(str, kept.kept))}: storage.keepCheckpoints {self.spec.storage.keep_checkpoints})")
        elif self.status.phase == "Succeeded" and kept is None:
            print(f"  {'checkpoints':12s} kept as they were: retention failed (see the RetentionFailed warning)")
        root = self.storage.local_path("")
        if root is not None:
            used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
            print(f"  {'disk use':12s} {used / 1e6:.0f} MB in {_shown('file://' + str(root))}")
        if self.status.phase == "Failed":
            print(f"  once the cause is fixed, continue with {self._resume_command()}")
        return 0 if outcome == "Succeeded" else 1


def checkpoint_bytes_estimate(model_dir: Path) -> int:
    """Bytes one checkpoint takes, estimated from the encoder's weight files (`*.safetensors`,
    `*.bin`): the weights in fp32 plus Adam's two moments, i.e. 3x their size (0 if there are none)."""
    size = sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in model_dir.glob(pattern))
    return 3 * size


def _shown(uri: str) -> str:
    """A file URI as a path relative to the working directory when it lies below it."""
    p = Path(uri.removeprefix("file://"))
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)
