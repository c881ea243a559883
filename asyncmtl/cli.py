"""The `asyncmtl` command line.

- `asyncmtl run SPEC.yaml [--workdir DIR] [--resume] [--tweeteval-dir DIR]`: run locally.
- `asyncmtl validate SPEC.yaml...`: check specs (and their data) without running anything; with `--data` it
  warns when a task's validation split is too small to tell a 1-point change from chance (fewer than 2500
  rows: `asyncmtl.core.convergence.validation_noise_points`).
- `asyncmtl report WORKDIR`: rebuild report.md/json and curves.png of a local run.
- `asyncmtl compare RUN...`: the paper's Table 3 and validation curves from finished runs;
  `--by-seed` (or `--experiment NAME`): methods over seeds, mean ± std and paired 95 % intervals.
- `asyncmtl sweep SPEC... --seeds N`: one run per (method spec, seed), run locally (resumable; each
  run where its spec's storage puts it) or printed for `kubectl apply -f -` with `-o yaml`.
- `asyncmtl crd`: print the CustomResourceDefinition generated from the spec models.
- `asyncmtl spec-doc`: print the spec reference generated from the models.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from asyncmtl.logs import configure

if TYPE_CHECKING:
    from asyncmtl.spec import TaskSpec
    from asyncmtl.sweep import SweepRun


def _load(path: str):
    from asyncmtl.spec import SpecError, load_run_file

    try:
        return load_run_file(path)
    except SpecError as exc:
        print(f"error: invalid AsyncMTLRun spec\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from asyncmtl.data import DataError
    from asyncmtl.local.lifeline import RunLocked
    from asyncmtl.local.runtime import LocalOptions, LocalRuntime
    from asyncmtl.pretrained import ModelLoadError
    from asyncmtl.spec import SpecError
    from asyncmtl.storage import StorageError

    resource = _load(args.spec)
    opts = LocalOptions(workdir=Path(args.workdir) if args.workdir else None, resume=args.resume,
                        tweeteval_dir=args.tweeteval_dir, poll_interval=args.poll_interval,
                        live=False if args.no_live else None, threads=args.threads,
                        nproc_per_node=args.nproc_per_node)
    rt = LocalRuntime(resource, Path(args.spec), opts)
    try:
        return rt.run()
    except (DataError, ModelLoadError, RunLocked, StorageError, SpecError) as exc:
        # SpecError: spec.orderFromRun or spec.teacherRun names no usable finished run (the message says which)
        print(f"error: {exc}", file=sys.stderr)
        return 2


def noise_warnings(task: "TaskSpec", rows: int) -> list[str]:
    """The warning for `task` whose validation split has `rows` rows, when its score's chance movement
    (`validation_noise_points`) is above `NOISE_WARNING_POINTS` (fewer than 2500 rows); [] otherwise."""
    from asyncmtl.core.convergence import NOISE_WARNING_POINTS, validation_noise_points

    noise = validation_noise_points(rows)
    if noise <= NOISE_WARNING_POINTS:
        return []
    advice = ("its significance rule compares checkpoints on the same rows" if task.significance is not None else
              "consider tasks[].significance (a paired, noise-aware rule), minEpochs, a larger patience or a "
              "larger validation split")
    return [f"task {task.name}: its validation split has {rows} rows: a checkpoint's score moves by about "
            f"{noise:.1f} points by chance (standard error of a 50 % accuracy), more than the "
            f"{NOISE_WARNING_POINTS:g}-point changes the convergence rule reads; {advice}"]


def cmd_validate(args: argparse.Namespace) -> int:
    from asyncmtl.data import DataError, load_task_splits
    from asyncmtl.pretrained import ModelLoadError, resolve_pretrained

    from asyncmtl.spec import SpecError, load_run_file

    rc = 0
    for path in args.specs:  # every file is checked; the exit status says whether any was bad
        try:
            resource = load_run_file(path)
        except SpecError as exc:
            print(f"error: invalid AsyncMTLRun spec\n{exc}", file=sys.stderr)
            rc = 2
            continue
        if args.data:
            try:
                warnings = []
                for t in resource.spec.tasks:
                    splits = load_task_splits(t, base_dir=Path(path).resolve().parent, tweeteval_dir=args.tweeteval_dir,
                                              endpoint_url=resource.spec.storage.endpoint_url)
                    if "validation" in splits:
                        warnings += noise_warnings(t, len(splits["validation"].examples))
                resolve_pretrained(resource.spec.model.pretrained, Path(path).resolve().parent)
            except (DataError, ModelLoadError) as exc:
                print(f"{path}: error: {exc}", file=sys.stderr)
                rc = 2
                continue
            for w in warnings:  # advice, not an error: the exit status stays 0
                print(f"{path}: warning: {w}", file=sys.stderr)
        print(f"{path}: ok ({resource.name}, {len(resource.spec.tasks)} tasks)")
    return rc


def cmd_report(args: argparse.Namespace) -> int:
    from asyncmtl.core.status import RunStatus
    from asyncmtl.report import write_report
    from asyncmtl.storage import FileRunStorage

    wd = Path(args.workdir)
    if not (wd / "status.json").is_file():
        print(f"error: {wd}: no status.json here; give a run's folder, e.g. runs/local/<run>", file=sys.stderr)
        return 2
    status = RunStatus.model_validate_json((wd / "status.json").read_text())
    paths = write_report(status.control.run if status.control else wd.name, status, FileRunStorage(wd), wd / "staging")
    for n, uri in paths.items():
        print(f"{n:12s} {uri.removeprefix('file://')}")
    return 0


def _experiment_runs(runs_root: Path, experiment: str) -> list[Path]:
    """Folders of an experiment's Succeeded runs: those `asyncmtl sweep` wrote a spec for in
    `<runs_root>/../sweeps/<experiment>/`, each looked for where its spec's storage puts it.

    Raises:
        asyncmtl.spec.SpecError: a spec in that folder does not parse.
    """
    from asyncmtl.local.runtime import local_run_place
    from asyncmtl.spec import load_run_file
    from asyncmtl.sweep import read_state

    folder = runs_root.parent / "sweeps" / experiment
    out = []
    for spec in sorted(folder.glob("*.yaml")):
        resource = load_run_file(str(spec))
        if read_state(resource).phase == "Succeeded":
            out.append(local_run_place(resource).workdir)
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    from asyncmtl.compare import CompareError, compare, write
    from asyncmtl.spec import SpecError

    items: list[str | Path] = list(args.runs)
    if args.experiment:
        try:
            items += _experiment_runs(Path(args.runs_root), args.experiment)
        except SpecError as exc:
            print(f"error: --experiment {args.experiment}: {exc}", file=sys.stderr)
            return 2
    if not items:
        print("error: no runs to compare (give run names or folders, or --experiment with finished runs)",
              file=sys.stderr)
        return 2
    dirs = []
    for item in items:
        p = Path(item)
        if not p.is_dir():
            p = Path(args.runs_root) / item
        dirs.append(p)
    if args.by_seed or args.experiment:
        from asyncmtl.compare_seeds import compare_by_seed, write_by_seed

        try:
            grouped = compare_by_seed(dirs, reference=args.reference)
        except CompareError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        sys.stdout.write(grouped.markdown())
        print()
        for name, p in write_by_seed(grouped, Path(args.out)).items():
            print(f"  {name:28s} {p}")
        return 0
    try:
        comparison, reports = compare(dirs, reference=args.reference)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(comparison.text())
    paths = write(comparison, reports, Path(args.out))
    print()
    for name, p in paths.items():
        print(f"  {name:28s} {p}")
    return 0


def _runs_root_disagrees(runs_root: str, runs: list[SweepRun]) -> str | None:
    """The deprecated `asyncmtl sweep --runs-root`: None when every run lives in `<runs_root>/<run>`
    anyway (the flag changes nothing), else the error to show (where the specs put the runs)."""
    from asyncmtl.local.runtime import local_run_place

    root = Path(runs_root).resolve()
    elsewhere = [(r.name, local_run_place(r.resource).workdir) for r in runs]
    elsewhere = [(n, w) for n, w in elsewhere if w != root / n]
    if not elsewhere:
        return None
    name, where = elsewhere[0]
    return (f"--runs-root {runs_root} disagrees with the specs: each run goes where its spec's storage.uri puts it "
            f"from the working directory {Path.cwd()} (e.g. {name} in {where}), and the sweep reads its status there. "
            "--runs-root is deprecated: drop it, or change storage.uri in the specs.")


def cmd_sweep(args: argparse.Namespace) -> int:
    from asyncmtl.local.lifeline import Terminated
    from asyncmtl.storage import StorageError
    from asyncmtl.sweep import EXPERIMENT_LABEL, LocalSweep, SweepError, expand, parse_seeds, sweep_folder, to_yaml

    try:
        seeds = parse_seeds(args.seeds)
        runs = expand([Path(p) for p in args.specs], seeds, args.experiment, absolute_paths=args.output != "yaml")
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "yaml":
        sys.stdout.write(to_yaml(runs))
        return 0
    experiment = runs[0].resource.metadata.labels[EXPERIMENT_LABEL]
    try:
        if args.runs_root is not None:
            problem = _runs_root_disagrees(args.runs_root, runs)
            if problem is not None:
                print(f"error: {problem}", file=sys.stderr)
                return 2
            print("warning: --runs-root is deprecated and changes nothing: each run goes where its spec's "
                  "storage.uri puts it (here the folder --runs-root names); drop the flag", file=sys.stderr)
        sweep = LocalSweep(sweep_dir=sweep_folder(runs, experiment), tweeteval_dir=args.tweeteval_dir,
                           parallel=args.parallel, threads=args.threads)
        outcomes = sweep.run(runs)
    except StorageError as exc:  # a storage URI no local run can use
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        print("\ninterrupted: run the same command again to resume the sweep", file=sys.stderr)
        return exc.exit_status if isinstance(exc, Terminated) else 130
    for name, outcome in outcomes.items():
        print(f"  {name:48s} {outcome.text()}")
    compare = f"asyncmtl compare --experiment {experiment}"
    if sweep.sweep_dir.parent != Path("runs/sweeps").resolve():  # compare's default --runs-root: runs/local
        compare += f" --runs-root {sweep.sweep_dir.parent.parent / 'local'}"
    print(f"\ncompare: {compare}")
    return 0 if all(o.succeeded for o in outcomes.values()) else 1


def cmd_crd(args: argparse.Namespace) -> int:
    from asyncmtl.crd import render

    sys.stdout.write(render())
    return 0


def cmd_spec_doc(args: argparse.Namespace) -> int:
    from asyncmtl.specdoc import render

    sys.stdout.write(render())
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error naming the flag)."""
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asyncmtl")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    # global flags work before and after the subcommand (`asyncmtl -v run x` and `asyncmtl run x -v`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="Debug logging.")
    p = argparse.ArgumentParser(prog="asyncmtl", parents=[common],
                                description="Asynchronous multi-task learning runs, locally or on Kubernetes.")
    p.add_argument("--version", action="version", version=f"asyncmtl {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)  # every subcommand takes the global flags

    r = command("run", help="Run an AsyncMTLRun locally (processes instead of pods).")
    r.add_argument("spec")
    r.add_argument("--workdir", help="Where control.json, status.json and logs go.")
    r.add_argument("--resume", action="store_true", help="Continue an interrupted run.")
    r.add_argument("--tweeteval-dir", help="TweetEval root for tweeteval:// data (or $TWEETEVAL_DIR).")
    r.add_argument("--poll-interval", type=float, help="Seconds between reconciles.")
    r.add_argument("--threads", type=int, help="CPU threads for the trainer (per process).")
    r.add_argument("--nproc-per-node", type=_positive_int, default=None,
                   help="Trainer processes under torchrun (DDP ranks; default: one per visible GPU, 1 on CPU).")
    r.add_argument("--no-live", action="store_true", help="Print lines instead of a live table.")
    r.set_defaults(func=cmd_run)
    v = command("validate", help="Validate spec files (and with --data, their data).")
    v.add_argument("specs", nargs="+")
    v.add_argument("--data", action="store_true", help="Also read and check every data split.")
    v.add_argument("--tweeteval-dir")
    v.set_defaults(func=cmd_validate)
    rep = command("report", help="Rebuild the report of a local run from its folder.")
    rep.add_argument("workdir", help="a run's folder, e.g. runs/local/<run>")
    rep.set_defaults(func=cmd_report)
    cp = command("compare", help="The paper's Table 3 (and curves) from finished runs.")
    cp.add_argument("runs", nargs="*", help="Run folders, or names of local runs under --runs-root.")
    cp.add_argument("--by-seed", action="store_true",
                    help="Group runs named <method>-s<seed> by method: mean ± std over seeds, paired 95%% intervals.")
    cp.add_argument("--experiment", help="Compare (by seed) every finished run of this `asyncmtl sweep` experiment.")
    cp.add_argument("--reference", help="Row the others are compared with (default: the first baseline's Final).")
    cp.add_argument("--runs-root", default="runs/local",
                    help="Where run names are looked up (and --experiment's derived specs, in ../sweeps/NAME).")
    cp.add_argument("--out", default="runs/compare", help="Where compare.md, compare.csv and the figures go.")
    cp.set_defaults(func=cmd_compare)
    sw = command("sweep", help="One run per (method spec, seed): run them locally, or print them (-o yaml).")
    sw.add_argument("specs", nargs="+", help="AsyncMTLRun files, one per method (a BAM teacher before BAM).")
    sw.add_argument("--seeds", default="3", help="A count (3: seeds 1, 2, 3) or a list (7,11,13).")
    sw.add_argument("--experiment", help="Experiment label (default: the first spec's asyncmtl.dev/experiment label).")
    sw.add_argument("-o", "--output", choices=["yaml"], help="Print the runs as YAML for kubectl instead of running.")
    # deprecated: runs go where their spec's storage.uri puts them; an error when it says otherwise
    sw.add_argument("--runs-root", default=None, help=argparse.SUPPRESS)
    sw.add_argument("--parallel", type=_positive_int, default=1, help="Runs at once (default 1).")
    sw.add_argument("--threads", type=int, help="CPU threads per trainer.")
    sw.add_argument("--tweeteval-dir", help="TweetEval root for tweeteval:// data (or $TWEETEVAL_DIR).")
    sw.set_defaults(func=cmd_sweep)
    c = command("crd", help="Print the AsyncMTLRun CustomResourceDefinition generated from the models.")
    c.set_defaults(func=cmd_crd)
    sd = command("spec-doc", help="Print the spec reference (Markdown) generated from the models.")
    sd.set_defaults(func=cmd_spec_doc)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the guard: a piped stdout is flushed here, not at exit
        return rc
    except BrokenPipeError:  # `asyncmtl compare ... | head`: the reader left; no traceback (Python docs, signal)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
