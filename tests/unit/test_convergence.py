"""Table-driven tests of the per-task convergence detector (paper Sec. 3)."""
from __future__ import annotations

import pytest

from asyncmtl.core.convergence import BestTracker, ConvergenceRule, TaskObservation, Track, ValidationPoint, has_converged, observe

IV = 100  # validation interval (steps)


def feed(points, rule, *, every_poll=True):
    """Feed (step, value) points one poll each, with the trainer's counter and best-so-far."""
    track = Track()
    tracker = BestTracker()
    history = []
    for i, (step, value) in enumerate(points, start=1):
        tracker.update(step, value, rule)
        history.append(has_converged(track, rule))
        track, _ = observe(track, TaskObservation(validations=i, last_step=step, last_value=value,
                                                  best_step=tracker.best_step, best_value=tracker.best_value), rule)
        history[-1] = has_converged(track, rule)
    return track, history


@pytest.mark.parametrize("patience,values,first_converged_step", [
    # best at 200; 300, 400, 500 do not improve -> converged at 500 with patience 3
    (3, [50, 60, 59, 58, 57, 56], 500),
    # patience 1: the first non-improving validation converges
    (1, [50, 60, 59], 300),
    # still improving at the end: never converges
    (3, [50, 51, 52, 53, 54], None),
    # a new best resets the count: best at 500, then 600, 700 flat -> not converged at patience 3
    (3, [50, 60, 59, 58, 61, 60, 60], None),
    # boundary: best at 200; 300 is one validation step since best, 400 is two
    (2, [10, 20, 19, 18], 400),
])
def test_patience_boundaries(patience, values, first_converged_step):
    rule = ConvergenceRule(patience=patience, validation_interval=IV)
    points = [(IV * (i + 1), v) for i, v in enumerate(values)]
    _, history = feed(points, rule)
    steps = [s for (s, _), c in zip(points, history) if c]
    assert (steps[0] if steps else None) == first_converged_step


@pytest.mark.parametrize("min_delta,values,expect_best_step", [
    (0.0, [50, 50.05, 50.1], 300),   # any strict improvement counts
    (0.1, [50, 50.05, 50.1], 100),   # both within minDelta of 50: ties, best stays at 100
    (0.1, [50, 50.05, 50.2], 300),   # 50.2 - 50 > 0.1
    (0.0, [50, 50, 50], 100),        # equal is not an improvement
])
def test_ties_within_min_delta(min_delta, values, expect_best_step):
    rule = ConvergenceRule(patience=2, min_delta=min_delta, validation_interval=IV)
    track, _ = feed([(IV * (i + 1), v) for i, v in enumerate(values)], rule)
    assert track.best_step == expect_best_step


def test_missed_points_are_counted_by_steps_not_points():
    """The observer sees only steps 100 and 400; the trainer counted 4 validations and its best is 200."""
    rule = ConvergenceRule(patience=2, validation_interval=IV)
    t, missed = observe(Track(), TaskObservation(validations=1, last_step=100, last_value=50, best_step=100, best_value=50), rule)
    assert missed == 0 and not has_converged(t, rule)
    t, missed = observe(t, TaskObservation(validations=4, last_step=400, last_value=55, best_step=200, best_value=60), rule)
    assert missed == 2  # 200 and 300 never seen
    assert t.best_step == 200 and t.best_value == 60  # recovered from the trainer's best-so-far
    assert t.validation_steps_since_best(IV) == 2
    assert has_converged(t, rule)  # 2 validation steps since best, although only 2 points were seen


def test_missed_best_delays_nothing_and_hastens_nothing():
    rule = ConvergenceRule(patience=3, validation_interval=IV)
    # seen: 100 (50), then at 300 the trainer says best=300 (a new best we see as last)
    t, _ = observe(Track(), TaskObservation(validations=1, last_step=100, last_value=50, best_step=100, best_value=50), rule)
    t, _ = observe(t, TaskObservation(validations=3, last_step=300, last_value=70, best_step=300, best_value=70), rule)
    t, _ = observe(t, TaskObservation(validations=5, last_step=500, last_value=65, best_step=300, best_value=70), rule)
    assert not has_converged(t, rule)  # only 2 validation steps since best
    t, _ = observe(t, TaskObservation(validations=6, last_step=600, last_value=65, best_step=300, best_value=70), rule)
    assert has_converged(t, rule)


def test_counter_reset_on_trainer_restart_is_not_a_gap():
    rule = ConvergenceRule(patience=3, validation_interval=IV)
    t, _ = observe(Track(), TaskObservation(validations=5, last_step=500, last_value=50, best_step=500, best_value=50), rule)
    t, missed = observe(t, TaskObservation(validations=1, last_step=600, last_value=51, best_step=600, best_value=51), rule)
    assert missed == 0 and t.validations_seen == 1 and t.best_step == 600


def test_min_steps_blocks_early_convergence():
    rule = ConvergenceRule(patience=1, validation_interval=IV, min_steps=400)
    _, history = feed([(100, 50), (200, 49), (300, 48), (400, 47)], rule)
    assert history == [False, False, False, True]


def test_cut_forgets_discarded_steps():
    rule = ConvergenceRule(patience=2, validation_interval=IV)
    track, _ = feed([(100, 50), (200, 60), (300, 70), (400, 65)], rule)
    cut = track.cut(200, rule)
    assert [p.step for p in cut.points] == [100, 200]
    assert (cut.best_step, cut.best_value, cut.last_step) == (200, 60, 200)
    # points from the discarded lineage (300: 70) no longer count: 300 re-validated at 58 is not a best
    t, _ = observe(cut, TaskObservation(validations=5, last_step=300, last_value=58, best_step=200, best_value=60), rule)
    t, _ = observe(t, TaskObservation(validations=6, last_step=400, last_value=59, best_step=200, best_value=60), rule)
    assert t.best_step == 200 and has_converged(t, rule)


def test_direction_min():
    rule = ConvergenceRule(patience=1, min_delta=0.0, validation_interval=IV, direction="min")
    assert rule.improves(1.0, 2.0) and not rule.improves(2.0, 1.0)


def test_points_from_a_series_are_all_used():
    rule = ConvergenceRule(patience=2, validation_interval=IV)
    obs = TaskObservation(validations=3, points=[ValidationPoint(step=s, value=v) for s, v in [(100, 5), (200, 9), (300, 8)]])
    t, missed = observe(Track(), obs, rule)
    assert missed == 0 and t.best_step == 200 and t.last_step == 300


def test_smoothing_reads_a_moving_average_and_the_trainer_agrees():
    """s_k = 0.5·s_(k−1) + 0.5·v_k: one lucky point (60 at step 200) is not a peak to stop on."""
    from asyncmtl.core.convergence import BestTracker, ConvergenceRule, Track, ValidationPoint, has_converged

    rule = ConvergenceRule(patience=2, validation_interval=100, smoothing=0.5)
    raw = ConvergenceRule(patience=2, validation_interval=100)
    series = [(100, 50.0), (200, 60.0), (300, 52.0), (400, 58.0), (500, 59.0)]
    smoothed, plain, tracker = Track(), Track(), BestTracker()
    for step, v in series:
        smoothed = smoothed._add_point(ValidationPoint(step=step, value=v), rule)
        plain = plain._add_point(ValidationPoint(step=step, value=v), raw)
        tracker.update(step, v, rule)
    # smoothed: 50, 55, 53.5, 55.75, 57.375 -> the best keeps moving (500); raw: best 60 at 200, converged at 400
    assert (smoothed.best_step, smoothed.best_value) == (500, 57.375) and not has_converged(smoothed, rule)
    assert plain.best_step == 200 and has_converged(plain, raw)
    assert (tracker.best_step, tracker.best_value) == (smoothed.best_step, smoothed.best_value)
    # a rewind replays the kept points, smoothing included
    cut = smoothed.cut(300, rule)
    assert (cut.best_step, cut.smoothed) == (200, 53.5)


def _feed_with_chance(points, rule, chance):
    track, tracker, history = Track(), BestTracker(), []
    for i, (step, value) in enumerate(points, start=1):
        tracker.update(step, value, rule)
        track, _ = observe(track, TaskObservation(validations=i, last_step=step, last_value=value, chance=chance,
                                                  best_step=tracker.best_step, best_value=tracker.best_value), rule)
        history.append(has_converged(track, rule))
    return track, history


def test_chance_floor_keeps_a_task_at_chance_training():
    """A task hovering at chance (50) dips on its validation set: without the floor it converges at 400
    on a best of 50.6; with `minGainOverChance: 5` it keeps training until it has learned, and then the
    ordinary rule decides (best 62 at 600, converged 3 validation steps later)."""
    curve = [(100, 50.2), (200, 50.6), (300, 46.7), (400, 42.8), (500, 55.0), (600, 62.0), (700, 61.0),
             (800, 60.0), (900, 61.5)]
    plain = ConvergenceRule(patience=2, validation_interval=IV)
    floored = ConvergenceRule(patience=2, validation_interval=IV, min_gain_over_chance=5.0)
    _, h_plain = _feed_with_chance(curve, plain, chance=48.0)
    track, h_floor = _feed_with_chance(curve, floored, chance=48.0)
    assert h_plain.index(True) == 3  # step 400, best 50.6
    assert h_floor.index(True) == 7  # step 800, best 62 at 600
    assert track.chance == 48.0 and track.best_step == 600


@pytest.mark.parametrize("best,chance,gain,expected", [
    (53.0, 48.0, 5.0, True),    # exactly the gain: it counts
    (52.9, 48.0, 5.0, False),
    (90.0, 48.0, 0.0, True),
    (47.0, 48.0, 0.0, False),   # below chance never converges under a floor
])
def test_chance_floor_boundary(best, chance, gain, expected):
    rule = ConvergenceRule(patience=1, validation_interval=IV, min_gain_over_chance=gain)
    track = Track(best_step=100, best_value=best, last_step=300, last_value=best - 1, chance=chance)
    assert has_converged(track, rule) is expected


def test_chance_floor_without_a_reported_chance_or_without_a_floor_is_the_paper_rule():
    track = Track(best_step=100, best_value=40.0, last_step=300, last_value=39.0)
    assert has_converged(track, ConvergenceRule(patience=1, validation_interval=IV, min_gain_over_chance=5.0))
    track.chance = 48.0
    assert has_converged(track, ConvergenceRule(patience=1, validation_interval=IV))
    assert not has_converged(track, ConvergenceRule(patience=1, validation_interval=IV, min_gain_over_chance=5.0))


def test_cut_keeps_the_chance_score():
    rule = ConvergenceRule(patience=2, validation_interval=IV, min_gain_over_chance=1.0)
    track, _ = _feed_with_chance([(100, 50), (200, 60), (300, 70)], rule, chance=30.0)
    assert track.cut(200, rule).chance == 30.0


# ---- epoch floor (minEpochs, issue 24) ------------------------------------------------------------------------

def _feed_with_epochs(points, rule):
    """Feed (step, value, epochs) points one poll each, as the trainer exports them."""
    track, history = Track(), []
    for i, (step, value, epochs) in enumerate(points, start=1):
        track, _ = observe(track, TaskObservation(validations=i, last_step=step, last_value=value,
                                                  last_epochs=epochs), rule)
        history.append(has_converged(track, rule))
    return track, history


def test_epoch_floor_holds_a_flat_curve_until_the_task_has_seen_its_data():
    """A slow task's flat, noisy curve (best at 200) meets patience 2 at 400, after 0.4 epochs of its own data:
    the paper rule converges there; with minEpochs 1 the first decision is at the first validation with at
    least one epoch seen (700), and the rule itself is unchanged (best still at 200)."""
    curve = [(100, 50.0, 0.1), (200, 53.0, 0.2), (300, 51.0, 0.3), (400, 52.0, 0.4), (500, 50.5, 0.5),
             (600, 52.5, 0.9), (700, 51.5, 1.05), (800, 52.0, 1.2)]
    _, plain = _feed_with_epochs(curve, ConvergenceRule(patience=2, validation_interval=IV))
    track, floored = _feed_with_epochs(curve, ConvergenceRule(patience=2, validation_interval=IV, min_epochs=1.0))
    assert plain.index(True) == 3  # step 400
    assert floored.index(True) == 6 and not any(floored[:6])  # step 700
    assert track.best_step == 200 and track.epochs == pytest.approx(1.2)


@pytest.mark.parametrize("epochs,min_epochs,expected", [
    (0.999, 1.0, False),
    (1.0, 1.0, True),            # exactly the floor is enough
    (1.0 - 1e-12, 1.0, True),    # float noise of examples/size does not decide
    (0.0, 0.0, True),            # no floor: the paper rule
    (None, 3.0, True),           # epochs not reported: the floor is unchecked (as the chance floor)
])
def test_epoch_floor_boundary(epochs, min_epochs, expected):
    rule = ConvergenceRule(patience=1, validation_interval=IV, min_epochs=min_epochs)
    track = Track(best_step=100, best_value=60.0, last_step=300, last_value=59.0, epochs=epochs)
    assert has_converged(track, rule) is expected


def test_epochs_survive_a_rewind_cut_and_a_torn_scrape_only_delays():
    rule = ConvergenceRule(patience=1, validation_interval=IV, min_epochs=1.0)
    track, _ = _feed_with_epochs([(100, 60.0, 0.5), (200, 58.0, 1.0), (300, 57.0, 1.5)], rule)
    cut = track.cut(200, rule)
    assert cut.last_step == 200 and cut.epochs == 1.0 and has_converged(cut, rule)
    assert track.cut(100, rule).epochs == 0.5
    # a scrape that read step 200 with step 100's epochs (the gauge is set after the step): not yet converged;
    # the next poll of the same step reads its own epochs and the decision follows
    torn, _ = observe(Track(), TaskObservation(validations=1, last_step=100, last_value=60.0, last_epochs=0.5), rule)
    torn, _ = observe(torn, TaskObservation(validations=2, last_step=200, last_value=58.0, last_epochs=0.5), rule)
    assert not has_converged(torn, rule)
    fixed, _ = observe(torn, TaskObservation(validations=2, last_step=200, last_value=58.0, last_epochs=1.0), rule)
    assert has_converged(fixed, rule) and fixed.points[-1].epochs == 1.0
    again, _ = observe(fixed, TaskObservation(validations=2, last_step=200, last_value=58.0, last_epochs=0.5), rule)
    assert again.epochs == 1.0  # epochs never fall within a step
    assert again.cut(200, rule).epochs == 1.0  # the corrected value is what a rewind restores


def test_rule_for_carries_min_epochs_and_its_default_is_the_paper_rule():
    from asyncmtl.core.convergence import rule_for
    from asyncmtl.spec import parse_run
    from tests.conftest import builtin_task, run_doc

    plain = builtin_task("sentiment")
    floored = {**builtin_task("sarcasm"), "minEpochs": 2.5}
    spec = parse_run(run_doc([plain, floored])).spec
    assert rule_for(spec, spec.tasks[0]).min_epochs == 0.0
    assert rule_for(spec, spec.tasks[1]).min_epochs == 2.5


# ---- paired significance rule (significance, issue 24) -----------------------------------------------------------

def test_significance_rule_counts_the_trainers_streak_not_the_steps_since_best():
    """Best at 200, then three validations below it: the paper rule (patience 2) converges at 400; under the
    significance rule only drops the trainer's paired bootstrap found significant count, consecutively."""
    rule = ConvergenceRule(patience=2, validation_interval=IV, significance=0.05)
    track, history = Track(), []
    for i, (step, value, streak) in enumerate([(100, 50.0, 0), (200, 60.0, 0), (300, 59.0, 1), (400, 58.5, 0),
                                               (500, 57.0, 1), (600, 56.0, 2)], start=1):
        track, _ = observe(track, TaskObservation(validations=i, last_step=step, last_value=value,
                                                  last_streak=streak), rule)
        history.append(has_converged(track, rule))
    assert history == [False] * 5 + [True]
    paper = ConvergenceRule(patience=2, validation_interval=IV)
    assert has_converged(track.cut(400, rule), paper) and not has_converged(track.cut(400, rule), rule)
    assert track.cut(500, rule).streak == 1  # what a rewind to 500 restores


@pytest.mark.parametrize("streak,expected", [(None, False), (0, False), (2, False), (3, True), (7, True)])
def test_significance_rule_boundary_and_an_unreported_streak_never_converges(streak, expected):
    rule = ConvergenceRule(patience=3, validation_interval=IV, significance=0.05)
    track = Track(best_step=100, best_value=60.0, last_step=900, last_value=40.0, streak=streak)
    assert has_converged(track, rule) is expected
    # the other floors still apply on top of it
    floored = ConvergenceRule(patience=3, validation_interval=IV, significance=0.05, min_epochs=2.0)
    assert has_converged(track.model_copy(update={"epochs": 1.0}), floored) is False


def test_rule_for_carries_significance_off_by_default():
    from asyncmtl.core.convergence import rule_for
    from asyncmtl.spec import parse_run
    from tests.conftest import builtin_task, run_doc

    spec = parse_run(run_doc([builtin_task("sentiment"), {**builtin_task("sarcasm"), "significance": 0.05}])).spec
    assert rule_for(spec, spec.tasks[0]).significance is None
    assert rule_for(spec, spec.tasks[1]).significance == 0.05


# ---- validation noise (asyncmtl validate) -------------------------------------------------------------------

@pytest.mark.parametrize("rows,points", [(2500, 1.0), (300, 2.8868), (100, 5.0), (10000, 0.5)])
def test_validation_noise_is_the_standard_error_of_a_50_percent_accuracy(rows, points):
    from asyncmtl.core.convergence import validation_noise_points

    assert validation_noise_points(rows) == pytest.approx(points, abs=1e-4)


def test_validate_warns_about_a_validation_split_too_small_to_tell_a_point(tmp_path, capsys):
    """2499 rows: warned (noise just above 1 point), with the significance advice; 2500 rows: not warned; the
    exit status stays 0 (advice, not an error)."""
    import json

    import yaml

    from asyncmtl.cli import main
    from tests.conftest import run_doc

    tasks = []
    for name, rows, extra in (("small", 2499, {}), ("large", 2500, {}), ("noisy", 300, {"significance": 0.05})):
        for split, n in (("train", 20), ("validation", rows)):
            (tmp_path / f"{name}-{split}.jsonl").write_text(
                "".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(n)))
        tasks.append({"name": name, "type": "binary", **extra,
                      "data": {"train": str(tmp_path / f"{name}-train.jsonl"),
                               "validation": str(tmp_path / f"{name}-validation.jsonl")}})
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(run_doc(tasks)))
    assert main(["validate", str(spec), "--data"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if ": warning: task " in line]
    assert len(warned) == 2, err
    assert "task small: its validation split has 2499 rows" in warned[0] and "1.0 points" in warned[0]
    assert "consider tasks[].significance" in warned[0]
    assert "task noisy" in warned[1] and "2.9 points" in warned[1] and "its significance rule" in warned[1]
    assert "task large" not in err
