"""benchmarks/replay_rule.py replays a finished run's curves through the core's convergence rule."""
from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("replay_rule", REPO / "benchmarks" / "replay_rule.py")
replay_rule = importlib.util.module_from_spec(spec)
sys.modules["replay_rule"] = replay_rule  # dataclasses look their module up
spec.loader.exec_module(replay_rule)


def _run(tmp_path, curves):
    (tmp_path / "reports").mkdir()
    rows = [{"task": t, "step": s, "value": v} for t, pts in curves.items() for s, v in pts]
    rows.append({"event": "rewind", "step": 50})  # non-validation records are skipped
    (tmp_path / "reports" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_the_rule_fires_where_the_core_would_and_reports_the_gap_to_the_final_value(tmp_path, capsys):
    # a peaks at 100, dips, then beats its peak at the end: patience 2 fires at 300 on a dip (premature)
    run = _run(tmp_path, {"a": [(100, 60.0), (200, 55.0), (300, 56.0), (400, 58.0), (500, 64.0)],
                          "b": [(100, 50.0), (200, 51.0), (300, 52.0), (400, 53.0), (500, 54.0)]})
    pts, interval = replay_rule.curves(run)
    assert interval == 100
    out = replay_rule.replay(pts["a"], replay_rule.parse_rule("patience=2", interval), "a")
    assert (out.fired_at, out.best_step, out.best_raw, out.final, out.peak) == (300, 100, 60.0, 64.0, 64.0)
    assert replay_rule.replay(pts["a"], replay_rule.parse_rule("patience=2,minSteps=500", interval), "a").fired_at is None
    assert replay_rule.replay(pts["b"], replay_rule.parse_rule("patience=2", interval), "b").fired_at is None
    assert replay_rule.main([str(run), "--rule", "patience=2"]) == 0
    assert "| patience=2 | a@300 | -4.00 | 1/1 |" in capsys.readouterr().out


def test_the_epoch_floor_and_the_significance_rule_replay_on_the_stored_epochs_and_rows(tmp_path, capsys):
    """A flat noisy curve: the best at 100, then drops of a point or less by chance (a few rows each way) and, from
    400, a real drop (the current checkpoint misses 45 rows the best got right). patience=2 fires at 300 on
    noise; the significance rule only on the two consecutive real drops (500); minEpochs=1 waits for the
    validation with one epoch seen (400)."""
    import numpy as np

    from asyncmtl.artifacts import validation_rows_key

    n = 300
    labels = np.arange(n) % 2
    best = np.zeros(n, dtype=np.int8)
    best[:180] = 1  # 60.0

    def rows(best_only: int, current_only: int) -> np.ndarray:
        r = best.copy()
        r[:best_only] = 0  # rows the best gets right and this one misses
        r[180:180 + current_only] = 1  # rows this one gets right and the best misses
        return r

    curve = {100: rows(0, 0), 200: rows(9, 7), 300: rows(10, 8), 400: rows(45, 0), 500: rows(46, 1)}
    epochs = {100: 0.25, 200: 0.5, 300: 0.75, 400: 1.0, 500: 1.25}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "history.jsonl").write_text("".join(
        json.dumps({"task": "a", "step": s, "value": float(r.mean() * 100), "metric": "accuracy", "epochs": epochs[s],
                    "rewinds": 0}) + "\n" for s, r in curve.items()))
    for key, arr in [(validation_rows_key("a"), labels)] + [(validation_rows_key("a", s, 0), r) for s, r in curve.items()]:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / key, arr)
    vals = replay_rule.validations(tmp_path)["a"]
    pts = [(v.step, v.value) for v in vals]
    assert [(v.step, v.value, v.epochs) for v in vals] == [(s, r.mean() * 100, epochs[s]) for s, r in curve.items()]
    assert vals[0].value == 60.0 and all(59.0 < v.value < 60.0 for v in vals[1:3])  # within a point: noise-sized

    def fired(text):
        rule = replay_rule.parse_rule(text, 100)
        streak = replay_rule.streaks(tmp_path, "a", vals, rule, 42) if rule.significance is not None else None
        return replay_rule.replay(pts, rule, "a", [v.epochs for v in vals], streak).fired_at

    assert fired("patience=2") == 300
    assert replay_rule.streaks(tmp_path, "a", vals, replay_rule.parse_rule("patience=2,significance=0.05", 100), 42) \
        == [0, 0, 0, 1, 2]
    assert fired("patience=2,significance=0.05") == 500
    assert fired("patience=2,minEpochs=1") == 400
    assert replay_rule.main([str(tmp_path), "--rule", "patience=2", "--rule", "patience=2,significance=0.05"]) == 0
    out = capsys.readouterr().out
    assert "| patience=2 | a@300 |" in out and "| patience=2,significance=0.05 | a@500 |" in out
