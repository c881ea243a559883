"""`asyncmtl sweep` (runs per method and seed) and `asyncmtl compare --by-seed` (means, spreads, paired intervals)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from scipy.stats import t as student_t

from asyncmtl.compare_seeds import Interval, compare_by_seed, write_by_seed
from asyncmtl.spec import parse_run
from asyncmtl.sweep import LocalSweep, SweepError, expand, parse_seeds, run_name, split_run_name, to_yaml
from tests.conftest import builtin_task, run_doc
from tests.unit.test_compare import make_run


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
    uni = _spec(tmp_path, "uni", strategy="fixedSteps")
    bam = _spec(tmp_path, "bam", strategy="bam", teacherRun="uni")
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


def test_a_local_sweep_skips_what_succeeded_and_resumes_what_was_interrupted(tmp_path):
    make_run(tmp_path / "local", "uni-s1", tests={"a": 70.0})
    uni = _spec(tmp_path, "uni", strategy="fixedSteps")
    runs = expand([uni], [1, 2])
    sweep = LocalSweep(runs_root=tmp_path / "local", sweep_dir=tmp_path / "sweeps" / "exp")
    status = tmp_path / "local" / "uni-s2" / "status.json"
    status.parent.mkdir(parents=True)
    status.write_text('{"phase": "Running"}')
    cmd = sweep.command(runs[1], tmp_path / "x.yaml")
    assert cmd[-1] == "--resume" and cmd[2:4] == ["asyncmtl.cli", "run"]
    status.write_text('{"phase": "Failed"}')
    assert "--resume" not in sweep.command(runs[1], tmp_path / "x.yaml")  # a failed run starts again


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


def test_method_names_are_shown_without_their_shared_prefix(tmp_path):
    make_run(tmp_path, "exp-uniform-s1", tests={"a": 70.0}, stopped="maxSteps", converged=False)
    make_run(tmp_path, "exp-joint-s1", tests={"a": 71.0})
    comp = compare_by_seed(sorted(tmp_path.iterdir()))
    assert comp.prefix == "exp-" and comp.reference.name == "exp-uniform (Final)"
    assert "| joint | 1 |" in comp.markdown() and "common prefix `exp-`" in comp.markdown()


def test_compare_cli_by_experiment(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path / "local", f"uni-s{seed}", tests={"a": 70.0 + seed}, stopped="maxSteps", converged=False)
        make_run(tmp_path / "local", f"joint-s{seed}", tests={"a": 71.0 + seed})
    sweeps = tmp_path / "sweeps" / "exp"
    sweeps.mkdir(parents=True)
    for n in ("uni-s1", "uni-s2", "joint-s1", "joint-s2", "joint-s3"):  # s3 never finished: left out
        (sweeps / f"{n}.yaml").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "asyncmtl.cli", "compare", "--experiment", "exp", "--runs-root",
                        str(tmp_path / "local"), "--out", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| joint | 2 |" in r.stdout and "+1.00 [+1.00, +1.00]" in r.stdout
