"""`asyncmtl sweep` (runs per method and seed) and `asyncmtl compare --by-seed` (means, spreads, paired intervals)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy.stats import t as student_t

from asyncmtl.compare_seeds import Interval, compare_by_seed, write_by_seed
from asyncmtl.spec import parse_run
from asyncmtl.sweep import LocalSweep, SweepError, expand, parse_seeds, run_name, split_run_name, to_yaml
from tests.conftest import builtin_task, run_doc
from tests.unit.test_compare import make_run

# Stands in for `asyncmtl run SPEC --no-live [--resume]` under a sweep: the real LocalRuntime says where
# the run lives (nothing trains). One JSON line per call in $SWEEP_STUB_LOG; the phase it saves is
# $SWEEP_STUB_PHASE (default Succeeded; "none": it exits 0 without saving any status).
RUN_STUB = """
import json, os, sys
from pathlib import Path
from asyncmtl.local.runtime import LocalOptions, LocalRuntime
from asyncmtl.spec import load_run_file
assert sys.argv[1] == "run", sys.argv
spec, resume = Path(sys.argv[2]), "--resume" in sys.argv
rt = LocalRuntime(load_run_file(str(spec)), spec, LocalOptions(resume=resume))
with open(os.environ["SWEEP_STUB_LOG"], "a") as f:
    f.write(json.dumps({"run": rt.name, "resume": resume}) + "\\n")
phase = os.environ.get("SWEEP_STUB_PHASE", "Succeeded")
if phase != "none":
    rt.workdir.mkdir(parents=True, exist_ok=True)
    rt.status.phase = phase
    rt.save_status()
sys.exit(1 if phase == "Failed" else 0)
"""


@pytest.fixture
def stub_runs(tmp_path, monkeypatch) -> Path:
    """Sweeps run `RUN_STUB` in place of `asyncmtl run` (same arguments, same working directory);
    returns the log of its calls."""
    stub = tmp_path / "run_stub.py"
    stub.write_text(RUN_STUB)
    calls = tmp_path / "stub-calls.jsonl"
    monkeypatch.setenv("SWEEP_STUB_LOG", str(calls))
    real = LocalSweep.command

    def command(self, run, spec_file):
        cmd = real(self, run, spec_file)
        assert cmd[:4] == [sys.executable, "-m", "asyncmtl.cli", "run"]  # what the sweep really starts
        return [sys.executable, str(stub), *cmd[3:]]

    monkeypatch.setattr(LocalSweep, "command", command)
    return calls


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _phase(run_dir: Path) -> str:
    return json.loads((run_dir / "status.json").read_text())["phase"]


def _spec(tmp_path, name, **spec):
    doc = run_doc([builtin_task("sentiment") | {"data": {"train": "data/train.jsonl", "validation": "data/val.jsonl"}}],
                  name=name, **spec)
    doc["metadata"]["labels"] = {"team": "nlp"}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_seeds_as_a_count_or_a_list():
    assert parse_seeds("3") == [1, 2, 3] and parse_seeds("7,11") == [7, 11]
    for bad in ("0", "a", "1,1", "-2"):
        with pytest.raises(SweepError, match="--seeds"):
            parse_seeds(bad)
    assert split_run_name(run_name("joint", 11)) == ("joint", 11) and split_run_name("joint") == ("joint", None)


def test_runs_per_method_and_seed_with_labels_and_references_that_follow_the_seed(tmp_path):
    uni = _spec(tmp_path, "uni", method="fixedSteps")
    bam = _spec(tmp_path, "bam", method="bam", teacherRun="uni")
    runs = expand([uni, bam], [1, 2], experiment="exp", absolute_paths=True)
    assert [(r.name, r.seed) for r in runs] == [("uni-s1", 1), ("bam-s1", 1), ("uni-s2", 2), ("bam-s2", 2)]
    b2 = runs[3].resource
    assert b2.spec.training.seed == 2 and b2.spec.teacher_run == "uni-s2"
    assert b2.metadata.labels == {"team": "nlp", "asyncmtl.dev/experiment": "exp", "asyncmtl.dev/method": "bam",
                                  "asyncmtl.dev/seed": "2"}
    assert b2.spec.tasks[0].data.train == str(tmp_path / "data" / "train.jsonl")  # derived files live elsewhere
    # -o yaml: one document per run, each a valid AsyncMTLRun, paths as the user wrote them
    docs = list(yaml.safe_load_all(to_yaml(expand([uni, bam], [1, 2], experiment="exp"))))
    assert [parse_run(d).name for d in docs] == ["uni-s1", "bam-s1", "uni-s2", "bam-s2"]
    assert docs[0]["spec"]["tasks"][0]["data"]["train"] == "data/train.jsonl"


def test_bad_sweeps_are_named(tmp_path):
    p = _spec(tmp_path, "a" * 50)  # valid alone, too long with its seed suffix
    with pytest.raises(SweepError, match="seed 1"):
        expand([p], [1])
    q = _spec(tmp_path, "dup")
    with pytest.raises(SweepError, match="same metadata.name"):
        expand([q, q], [1])
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "sweep", str(tmp_path / "missing.yaml"), "-o", "yaml"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "sweep", str(q), "--parallel", "0"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)  # it used to wait forever
    assert r.returncode == 2 and "--parallel" in r.stderr and not (tmp_path / "runs").exists()


def test_a_local_sweep_resumes_what_was_interrupted_where_its_storage_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uni = _spec(tmp_path, "uni", method="fixedSteps", storage={"uri": "file://./store"})
    runs = expand([uni], [1, 2], absolute_paths=True)
    sweep = LocalSweep(sweep_dir=tmp_path / "sweeps" / "exp")
    status = tmp_path / "store" / "local" / "uni-s2" / "status.json"
    status.parent.mkdir(parents=True)
    status.write_text('{"phase": "Running"}')
    cmd = sweep.command(runs[1], tmp_path / "x.yaml")
    assert cmd[-1] == "--resume" and cmd[2:4] == ["asyncmtl.cli", "run"]
    status.write_text('{"phase": "Failed"}')
    assert "--resume" not in sweep.command(runs[1], tmp_path / "x.yaml")  # a failed run starts again
    # the derived spec names the storage folder the user's relative URI meant, wherever it is run from
    assert runs[0].document["spec"]["storage"]["uri"] == f"file://{tmp_path / 'store'}"
    assert expand([uni], [1])[0].document["spec"]["storage"]["uri"] == "file://./store"  # -o yaml: as written


def test_the_users_sweep_with_runs_root_elsewhere_is_refused_and_without_it_finds_every_run(tmp_path, monkeypatch,
                                                                                             capsys, stub_runs):
    """Issue 24, item 5, as a new user tried it: specs with `storage.uri: file://./runs`, run from their
    folder with `--runs-root` naming another. The runs went under the working directory while the sweep
    read status under --runs-root: every Succeeded run was reported `Failed (exit 0)`, and a resumed sweep
    would have trained them all again."""
    from asyncmtl.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    specs = [str(_spec(work, "a", method="fixedSteps", storage={"uri": "file://./runs"})),
             str(_spec(work, "b", storage={"uri": "file://./runs"}))]
    sweep = ["sweep", *specs, "--seeds", "7,11,13", "--parallel", "2"]
    names = [f"{m}-s{s}" for s in (7, 11, 13) for m in ("a", "b")]

    rc = main([*sweep, "--runs-root", str(tmp_path / "some" / "dir")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--runs-root" in err and str(work / "runs" / "local" / "a-s7") in err and "Traceback" not in err
    assert _calls(stub_runs) == []  # refused before anything ran

    assert main(sweep) == 0
    out = capsys.readouterr().out
    assert sorted(c["run"] for c in _calls(stub_runs)) == sorted(names)
    for n in names:
        assert _phase(work / "runs" / "local" / n) == "Succeeded"
        assert f"  {n:48s} Succeeded\n" in out
    assert "Failed" not in out and not (tmp_path / "some").exists()

    assert main(sweep) == 0  # resumed: nothing trains again
    assert len(_calls(stub_runs)) == len(names)
    assert f"  {'a-s7':48s} Succeeded (already)\n" in capsys.readouterr().out
    # --runs-root that names where the runs are anyway: accepted, with a deprecation warning
    assert main([*sweep, "--runs-root", "runs/local"]) == 0
    assert "deprecated" in capsys.readouterr().err and len(_calls(stub_runs)) == len(names)


def test_a_sweep_finds_runs_whose_storage_is_not_runs_local(tmp_path, monkeypatch, capsys, stub_runs):
    """Storage outside the working directory, no flag: the sweep reads each status where the run is."""
    from asyncmtl.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = _spec(work, "a", method="fixedSteps", storage={"uri": "file://../store"})
    assert main(["sweep", str(spec), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert _phase(tmp_path / "store" / "local" / "a-s1") == "Succeeded" and "Failed" not in out
    assert (tmp_path / "store" / "sweeps" / "a" / "a-s1.yaml").is_file()  # beside the runs
    assert f"--experiment a --runs-root {tmp_path / 'store' / 'local'}" in out  # a compare command that finds them


def test_a_run_whose_status_was_not_read_is_never_called_failed(tmp_path, monkeypatch, capsys, stub_runs):
    from asyncmtl.cli import main

    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, "a", method="fixedSteps")  # the default storage: file://./runs
    run_dir = tmp_path / "runs" / "local"
    monkeypatch.setenv("SWEEP_STUB_PHASE", "none")  # `asyncmtl run` exits 0 and leaves no status
    assert main(["sweep", str(spec), "--seeds", "1"]) == 1
    out = capsys.readouterr().out
    assert f"no status at file://{run_dir / 'a-s1' / 'status.json'} (exit 0; log " in out and "Failed" not in out
    # a status that exists but does not parse: reported, and left alone (starting anew would delete the run)
    (run_dir / "a-s1").mkdir(parents=True)
    (run_dir / "a-s1" / "status.json").write_text('{"phase": "Finished"}')
    monkeypatch.setenv("SWEEP_STUB_PHASE", "Succeeded")
    assert main(["sweep", str(spec), "--seeds", "1"]) == 1
    out = capsys.readouterr().out
    status = run_dir / "a-s1" / "status.json"
    assert f"  {'a-s1':48s} status unreadable at file://{status}: phase: Input should be " in out
    assert "; not started (repair or remove it" in out
    assert len(_calls(stub_runs)) == 1 and status.read_text() == '{"phase": "Finished"}'
    # a Failed status that was read is reported as Failed, with the exit code and the log
    (run_dir / "a-s1" / "status.json").unlink()
    monkeypatch.setenv("SWEEP_STUB_PHASE", "Failed")
    assert main(["sweep", str(spec), "--seeds", "1"]) == 1
    assert f"Failed (exit 1; log {run_dir.parent / 'sweeps' / 'a' / 'a-s1.log'})" in capsys.readouterr().out


def test_interval_is_the_student_t_interval_of_the_paired_differences():
    iv = Interval.of([1.0, 2.0, 3.0])
    half = student_t.ppf(0.975, 2) * 1.0 / 3 ** 0.5  # sd 1, n 3
    assert (iv.mean, iv.low, iv.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert Interval.of([0.5]).low is None and Interval.of([]) is None


def test_compare_by_seed_groups_methods_and_pairs_seeds(tmp_path):
    for seed, (u, j) in enumerate([((70, 60), (72, 61)), ((68, 62), (71, 62)), ((71, 59), (72, 61))], start=1):
        make_run(tmp_path, f"uniform-s{seed}", tests={"a": u[0], "b": u[1]}, best_tests={"a": u[0] + 1, "b": u[1] + 1},
                 stopped="maxSteps", converged=False)
        make_run(tmp_path, f"joint-s{seed}", tests={"a": j[0], "b": j[1]})
    make_run(tmp_path, "dwa-s1", tests={"a": 60.0, "b": 60.0}, stopped="maxSteps", converged=False)
    dirs = sorted(tmp_path.iterdir())
    comp = compare_by_seed(dirs)
    assert comp.reference.name == "uniform (Final)"
    names = {g.name: g for g in comp.groups}
    assert set(names) == {"uniform (Final)", "uniform (Best)", "joint", "dwa (Final)", "dwa (Best)"}
    # joint - uniform per seed on the average: (66.5-65), (66.5-65), (66.5-65) -> 1.5, 1.5, 1.5: a zero-width interval
    iv = comp.paired(names["joint"], None)
    assert (iv.n, iv.mean, iv.low, iv.high) == (3, pytest.approx(1.5), pytest.approx(1.5), pytest.approx(1.5))
    # per task a: 2, 3, 1 -> mean 2, sd 1
    assert comp.paired(names["joint"], "a").mean == pytest.approx(2.0)
    m, sd = names["uniform (Final)"].mean_std("a")
    assert (m, sd) == (pytest.approx(69.6667, abs=1e-4), pytest.approx(1.5275, abs=1e-4))
    assert comp.paired(names["dwa (Final)"], None).n == 1  # one shared seed: a difference, no interval
    md = comp.markdown()
    assert "| joint | 3 | 400 | 71.67 ± 0.58 | 61.33 ± 0.58 | 66.50 ± 0.00 | +1.50 [+1.50, +1.50] |" in md
    assert "(n=1, no interval)" in md
    paths = write_by_seed(comp, tmp_path / "out")
    assert paths["compare-seeds.png"].stat().st_size > 5_000
    assert paths["compare-seeds.csv"].read_text().splitlines()[0].startswith("method,column,seeds,mean,std")


def test_compare_by_seed_shows_headroom_hold_gap_and_share_with_intervals(tmp_path):
    """Seeds k = 1, 2, 3 with `_uniform_and_joint`'s curves, uniform's task a peaking at 70 + k at step 200:
    tasks' bests average 62.5 + k/2 while the best single checkpoint stays 300 at 60, so H = 2.5 + k/2
    (3, 3.5, 4) and uniform's hold gap (70 + k - 64 + 55 - 54) / 2 = 4, 4.5, 5. Joint: hold gap 1.5,
    validation average 63 against uniform's 59 (+4 on every seed), so shares 4/3, 4/3.5, 4/4."""
    from tests.unit.test_compare import _uniform_and_joint

    for k in (1, 2, 3):
        _uniform_and_joint(tmp_path, uniform_a200=70.0 + k, suffix=f"-s{k}")
    comp = compare_by_seed(sorted(tmp_path.iterdir()))
    names = {g.name: g for g in comp.groups}

    def t_interval(xs):
        m, sd = sum(xs) / len(xs), statistics.stdev(xs)
        half = student_t.ppf(0.975, len(xs) - 1) * sd / len(xs) ** 0.5
        return m, m - half, m + half

    assert comp.headroom_values() == {1: 3.0, 2: 3.5, 3: 4.0}
    shares = [4 / 3.0, 4 / 3.5, 4 / 4.0]
    assert list(comp.share_values(names["joint"]).values()) == pytest.approx(shares)
    assert list(comp.hold_gap_values(names["uniform (Final)"]).values()) == [4.0, 4.5, 5.0]
    md = comp.markdown()
    m, lo, hi = t_interval([3.0, 3.5, 4.0])
    assert (f"Headroom H of `uniform (Final)` on validation, over seeds: {m:.2f} [{lo:.2f}, {hi:.2f}] "
            "(per seed: s1 3.00, s2 3.50, s3 4.00).") in md
    m, lo, hi = t_interval([4.0, 4.5, 5.0])
    assert f"| uniform (Final) | 59.00 ± 0.00 | {m:+.2f} [{lo:+.2f}, {hi:+.2f}] | reference | reference |" in md
    m, lo, hi = t_interval(shares)
    assert f"| joint | 63.00 ± 0.00 | +1.50 [+1.50, +1.50] | +4.00 [+4.00, +4.00] | {m:+.2f} [{lo:+.2f}, {hi:+.2f}] |" in md
    assert "| uniform (Best) | 63.50 ± 0.50 | – |" in md  # bests (70 + k + 55) / 2; no hold gap: nothing was held
    assert "| joint | 3 | 430 |" in md  # optimizer steps, the rewind's 30 included
    rows = {tuple(r.split(",")[:2]): r for r in comp.headroom_csv().splitlines()[1:]}
    assert rows[("uniform (Final)", "headroom")].startswith("uniform (Final),headroom,3,3.5000,0.5000,")
    assert ("joint", "headroom") not in rows and ("joint", "share_of_headroom") in rows
    paths = write_by_seed(comp, tmp_path / "out")
    assert paths["compare-seeds-headroom.csv"].read_text().splitlines() == comp.headroom_csv().splitlines()


def test_method_names_are_shown_without_their_shared_prefix(tmp_path):
    make_run(tmp_path, "exp-uniform-s1", tests={"a": 70.0}, stopped="maxSteps", converged=False)
    make_run(tmp_path, "exp-joint-s1", tests={"a": 71.0})
    comp = compare_by_seed(sorted(tmp_path.iterdir()))
    assert comp.prefix == "exp-" and comp.reference.name == "exp-uniform (Final)"
    assert "| joint | 1 |" in comp.markdown() and "common prefix `exp-`" in comp.markdown()


def test_compare_cli_by_experiment(tmp_path, monkeypatch):
    """The runs are found where their derived specs' storage puts them (here not under --runs-root)."""
    monkeypatch.chdir(tmp_path)  # where the sweep ran
    store = tmp_path / "store"
    for seed in (1, 2):
        make_run(store / "local", f"uni-s{seed}", tests={"a": 70.0 + seed}, stopped="maxSteps", converged=False)
        make_run(store / "local", f"joint-s{seed}", tests={"a": 71.0 + seed})
    sweeps = tmp_path / "runs" / "sweeps" / "exp"  # the sweep folder under the default --runs-root
    sweeps.mkdir(parents=True)
    specs = [_spec(tmp_path, m, storage={"uri": "file://./store"}) for m in ("uni", "joint")]
    for run in expand(specs, [1, 2, 3], experiment="exp", absolute_paths=True):  # s3 never ran: left out
        (sweeps / f"{run.name}.yaml").write_text(yaml.safe_dump(run.document))
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "compare", "--experiment", "exp", "--out",
                        str(tmp_path / "cmp")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| joint | 2 |" in r.stdout and "+1.00 [+1.00, +1.00]" in r.stdout
    (sweeps / "bad.yaml").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "compare", "--experiment", "exp"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "Traceback" not in r.stderr
