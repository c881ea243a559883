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
