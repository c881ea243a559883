"""Per-task convergence detection (paper Sec. 3), pure and I/O-free.

A task has converged when its validation metric has not improved by more than `minDelta`
for `patience` validation steps. Patience is counted in *validation steps between the best
step and the last validation step*, i.e. `(last_step - best_step) // validation_interval`,
never in points seen, so a validation that the observer missed (a Prometheus scrape that
fell between two sets of a gauge, a poll that came late) neither delays nor hastens the
decision. The trainer reports its own best-so-far (value and step) computed with the same
`BestTracker` rule on every validation, so a missed *best* point is recovered from it.

After a rewind to step `s`, `Track.cut(s)` forgets every point after `s` and restores the task's
state (smoothed value, best) as it was right after its last point at or before `s` — what the trainer
restores from the checkpoint's trackers — so no later decision uses observations from the discarded
steps. Each kept point carries that state, so a track need not keep every point: `retained_steps`
says which points a future rewind could still need (the status stays bounded, see
`asyncmtl.core.reconcile.bound_tracks`).

Optional chance floor (`minGainOverChance`, not in the paper): a task is not declared converged
while its best validation value does not beat its *chance score* — the score a constant predictor
(the training split's class prior, or its mean for regression; scikit-learn's `DummyClassifier` /
`DummyRegressor`) gets on the validation split — by at least that many points. A task that has not
started to learn is then never frozen on a dip of its noisy validation curve at chance level.

Optional epoch floor (`minEpochs`, not in the paper): a task is not declared converged before it has
seen that many epochs of its own training data — the examples the trainer's sampler drew for it along
the run's timeline (a rewind restores the count) divided by its training-split size — at its last
validation. The trainer counts them and reports them with each validation (the
`asyncmtl_validation_last_epochs` gauge, `ValidationRecord.epochs`), so the runtimes and the trainer's
own decision barrier compare the same number. Prechelt (1998, "Early stopping — but when?", Sec. 2)
notes that validation curves have many local minima early on and that stopping criteria fire
prematurely on them; a size-proportional sampler gives a small task few examples per step, so a step
count (`minSteps`) is not an exposure floor for it, the epoch count is.

Optional paired significance rule (`significance`, not in the paper): with a few hundred validation
rows a checkpoint's score moves 1-3 points by chance, and the paper's rule, which compares raw
values, fires on the first unlucky draws of a flat or slowly rising curve. Under this rule a
validation counts toward `patience` only when the current checkpoint is *significantly* below the
task's best one on the same validation rows: the trainer keeps the best checkpoint's per-example
scores, draws a paired bootstrap of metric(best rows) − metric(current rows) (Efron & Tibshirani
1993, "An Introduction to the Bootstrap", Ch. 13 percentile interval and Ch. 16 on paired tests;
deterministic: seeded from the run seed, the task and the step) and calls the validation
significantly worse when the lower bound of the one-sided (1 − significance) interval is above 0.
The trainer reports how many consecutive validations were (`streak`, the
`asyncmtl_validation_significant_streak` gauge, `ValidationRecord.streak`); the task converges when
`streak >= patience`. A new best resets the streak, and so does a validation that is not significantly
worse (Prechelt 1998 names the premature stops that "not improving for k steps" makes on noisy curves).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from asyncmtl.spec import RunSpec, TaskSpec


class ValidationPoint(BaseModel):
    """One validation result: training step (steps) and metric value (metric points, 0-100)."""

    step: int = Field(..., ge=0)
    value: float
    epochs: float | None = Field(None, description="Epochs of the task's training data drawn by this validation "
                                                   "(examples drawn / training-split size); None: not reported.")
    streak: int | None = Field(None, ge=0, description="Consecutive validations up to this one significantly below "
                                                       "the best (significance rule); None: not reported.")


@dataclass(frozen=True)
class ConvergenceRule:
    """The stopping rule of one task.

    Attributes:
        patience: validation steps without improvement before convergence (paper: 3).
        min_delta: an improvement must exceed this (metric points) to count.
        validation_interval: steps between validation steps (paper: 200).
        min_steps: no convergence before this training step.
        direction: "max" when higher is better (all AsyncMTL metrics), "min" otherwise.
        smoothing: the rule reads an exponential moving average of the validation values,
            s_k = smoothing·s_(k−1) + (1−smoothing)·v_k, s_1 = v_1 (0: raw values, the paper).
        min_gain_over_chance: metric points the best value must exceed the task's chance score by
            before convergence may be declared (None: no floor, the paper).
        min_epochs: epochs of its own training data (examples drawn for it / its training-split size)
            the task must have seen at its last validation before convergence may be declared
            (0: no floor, the paper).
        significance: the paired rule's level α (e.g. 0.05): a validation counts toward `patience` only
            when the current checkpoint is significantly below the best (see the module docstring); None:
            every validation without improvement counts (the paper).
    """

    patience: int
    min_delta: float = 0.0
    validation_interval: int = 200
    min_steps: int = 0
    direction: Literal["max", "min"] = "max"
    smoothing: float = 0.0
    min_gain_over_chance: float | None = None
    min_epochs: float = 0.0
    significance: float | None = None

    def smooth(self, value: float, previous: float | None) -> float:
        """The smoothed value after `value`, given the previous smoothed value (None: the first)."""
        if previous is None or not self.smoothing:
            return value
        return self.smoothing * previous + (1.0 - self.smoothing) * value

    def improves(self, value: float, best: float | None) -> bool:
        """True when `value` beats `best` by more than `min_delta` (ties within it do not count;
        differences within 1e-9 of `min_delta` are ties, so float noise does not decide)."""
        if best is None:
            return True
        gain = value - best if self.direction == "max" else best - value
        return gain > self.min_delta + 1e-9


class TrackPoint(ValidationPoint):
    """A validation point of a track with the task's state right after it was folded in (its own
    rule): what a rewind to this step restores. None in statuses written before these fields."""

    smoothed: float | None = None
    best_step: int | None = None
    best_value: float | None = None


class Track(BaseModel):
    """What a runtime knows of one task's validation history (kept in the run status)."""

    points: list[TrackPoint] = Field(default_factory=list, description="Oldest first; thinned by bound_tracks.")

    best_step: int | None = None
    best_value: float | None = None
    last_step: int | None = None
    last_value: float | None = None
    epochs: float | None = Field(None, description="Epochs of its training data the task had seen at the last point "
                                                   "(as the trainer reported it); None: not reported.")
    streak: int | None = Field(None, description="Consecutive validations up to the last point significantly below the "
                                                 "best (the trainer's paired bootstrap); None: not reported.")
    smoothed: float | None = Field(None, description="The rule's smoothed value at the last point (smoothing > 0).")
    validations_seen: int = Field(0, description="Trainer's validations counter at the last observation.")
    missed: int = Field(0, description="Validations counted by the trainer but never seen as a point.")
    chance: float | None = Field(None, description="The validation score of a constant predictor (metric points), "
                                                   "as the trainer reported it; None: not reported.")

    @field_validator("points", mode="before")
    @classmethod
    def _points(cls, value: Any) -> Any:
        """Plain ValidationPoints are accepted as points whose state is not stored."""
        if isinstance(value, list):
            return [p.model_dump() if type(p) is ValidationPoint else p for p in value]
        return value

    def validation_steps_since_best(self, interval: int) -> int:
        """Validation steps between the best step and the last validation step."""
        if self.best_step is None or self.last_step is None:
            return 0
        return max(0, self.last_step - self.best_step) // interval

    def cut(self, step: int, rule: ConvergenceRule) -> "Track":
        """The track as it was at `step` (after a rewind): later points are forgotten; smoothed value
        and best are those stored with the last point kept (the state the task's own rule had then).

        Args:
            rule: the task's rule, used only to replay points stored without their state (a status
                written by an older version).
        """
        kept = [p for p in self.points if p.step <= step]
        out = Track(validations_seen=self.validations_seen, missed=self.missed, chance=self.chance)
        if kept and kept[-1].smoothed is not None:
            last = kept[-1]
            out.points = [p.model_copy() for p in kept]
            out.smoothed, out.best_step, out.best_value = last.smoothed, last.best_step, last.best_value
            out.last_step, out.last_value, out.epochs, out.streak = last.step, last.value, last.epochs, last.streak
        else:
            for p in kept:
                out = out._add_point(p, rule)
        if self.best_step is not None and self.best_step <= step and (
            out.best_step is None or self.best_step > out.best_step
        ):  # a best we only knew from the trainer's best-so-far
            out.best_step, out.best_value = self.best_step, self.best_value
        return out

    def _add_point(self, p: ValidationPoint, rule: ConvergenceRule) -> "Track":
        t = self.model_copy(deep=True)
        t.smoothed = rule.smooth(p.value, t.smoothed)
        if rule.improves(t.smoothed, t.best_value):
            t.best_step, t.best_value = p.step, t.smoothed
        t.last_step, t.last_value, t.epochs, t.streak = p.step, p.value, p.epochs, p.streak
        t.points.append(TrackPoint(step=p.step, value=p.value, epochs=p.epochs, streak=p.streak, smoothed=t.smoothed,
                                   best_step=t.best_step, best_value=t.best_value))
        return t

    def state_at(self, step: int) -> "TrackPoint | None":
        """The last kept point at or before `step` (with the state a rewind to `step` restores)."""
        found = None
        for p in self.points:
            if p.step > step:
                break
            found = p
        return found


def retained_steps(tracks: dict[str, Track], candidates: list[str]) -> set[int]:
    """The steps a future rewind could go to: the best step of every task in `candidates` (those that
    may still converge), and, closed under rewinds, the best each task would have after a rewind to
    one of those steps (a rewind sets a task's best to the one stored with its last point before it).
    The trainer keeps a checkpoint for the same steps (asyncmtl.retention)."""
    todo = [t.best_step for n, t in tracks.items() if n in candidates and t.best_step is not None]
    steps: set[int] = set()
    while todo:
        r = todo.pop()
        if r in steps:
            continue
        steps.add(r)
        for n in candidates:
            at = tracks[n].state_at(r)
            if at is not None and at.best_step is not None and at.best_step not in steps:
                todo.append(at.best_step)
    return steps


def thin(track: Track, steps: set[int], limit: int) -> Track:
    """`track` keeping only the points a rewind to one of `steps` restores, and its last point; at
    most `limit` points (the oldest dropped first: a rewind further back than every kept point
    restores no state, only the trainer's best — only reached past `limit` distinct rewind targets)."""
    keep = {id(track.points[-1])} if track.points else set()
    for r in steps:
        at = track.state_at(r)
        if at is not None:
            keep.add(id(at))
    kept = [p for p in track.points if id(p) in keep][-limit:]
    if len(kept) == len(track.points):
        return track
    return track.model_copy(update={"points": kept})


class TaskObservation(BaseModel):
    """What the trainer reported for one task at one poll (sampling-proof series).

    Attributes:
        validations: the trainer's validations counter (monotonic; may reset on a restart).
        last_step, last_value: the last validation step and its metric value.
        best_step, best_value: the trainer's best-so-far (BestTracker rule), reset on a rewind.
        points: validation points recovered from a time series since the last poll
            (Prometheus range query); empty when only the latest values are known.
        chance: the task's chance score on its validation split (metric points; constant for a run).
        last_epochs: epochs of its training data the task had seen at `last_step` (examples drawn /
            training-split size; the trainer's count).
        last_streak: consecutive validations up to `last_step` significantly below the best (the
            significance rule; the trainer's paired bootstrap).
    """

    validations: int = 0
    last_step: int | None = None
    last_value: float | None = None
    best_step: int | None = None
    best_value: float | None = None
    points: list[ValidationPoint] = Field(default_factory=list)
    chance: float | None = None
    last_epochs: float | None = None
    last_streak: int | None = None

    def through(self, complete_step: int | None) -> "TaskObservation | None":
        """This observation if it describes only whole validation steps (steps <= `complete_step`,
        the trainer's last validation step reported for every validated task), else None: the task
        has already reported a step that others have not, and is folded at a later poll, so a poll
        landing in the middle of a validation step never decides on half of it. `complete_step`
        None (a trainer that does not export it): the observation as it is."""
        if complete_step is None:
            return self
        if (self.last_step is not None and self.last_step > complete_step) or (
                self.best_step is not None and self.best_step > complete_step):
            return None
        if any(p.step > complete_step for p in self.points):
            return self.model_copy(update={"points": [p for p in self.points if p.step <= complete_step]})
        return self


def observe(track: Track, obs: TaskObservation, rule: ConvergenceRule, *,
            rebaseline: bool = False) -> tuple[Track, int]:
    """Fold one observation into a track.

    Args:
        rebaseline: the first observation after a rewind was applied: the validations the trainer
            ran on the discarded trajectory (while decisions waited for the rewind's
            acknowledgement) advanced its counter but were never meant to be seen, so the counter
            is taken as the new baseline and nothing is counted as missed.

    Returns:
        (new track, validations missed in this observation). A validation is missed when
        the trainer's counter advanced by more than the number of new points seen.
    """
    new_points = {p.step: p for p in obs.points if track.last_step is None or p.step > track.last_step}
    if obs.last_step is not None and obs.last_value is not None and (
        track.last_step is None or obs.last_step > track.last_step
    ):
        new_points.setdefault(obs.last_step, ValidationPoint(step=obs.last_step, value=obs.last_value))
    out = track
    for step in sorted(new_points):
        out = out._add_point(new_points[step], rule)
    if out is track:
        out = track.model_copy(deep=True)
    if obs.last_epochs is not None and obs.last_step is not None and obs.last_step == out.last_step:
        # the trainer sets the epochs gauge after the step's: a poll that read an earlier step's epochs with this
        # step (a torn scrape) under-counts, and a later poll of the same step corrects it (epochs never fall
        # within a step)
        out.epochs = obs.last_epochs if out.epochs is None else max(out.epochs, obs.last_epochs)
        if out.points and out.points[-1].step == out.last_step:
            out.points[-1].epochs = out.epochs
    if obs.last_streak is not None and obs.last_step is not None and obs.last_step == out.last_step:
        # set by the trainer with the step (after it, exposed before it): a poll that read this step reads its streak
        # once the step is complete (`through`), and a later poll of the same step reads the same value
        out.streak = obs.last_streak
        if out.points and out.points[-1].step == out.last_step:
            out.points[-1].streak = out.streak
    # The trainer applies the same rule to every validation, seen or missed by us, so its
    # best-so-far is authoritative whenever it reports one.
    if obs.best_step is not None and obs.best_value is not None and (
        out.last_step is None or obs.best_step <= out.last_step
    ):
        out.best_step, out.best_value = obs.best_step, obs.best_value
    missed = 0
    if not rebaseline and obs.validations >= track.validations_seen:
        missed = max(0, obs.validations - track.validations_seen - len(new_points))
    # else: the counter went down: the trainer restarted; nothing can be said about gaps.
    out.validations_seen = obs.validations
    out.missed += missed
    if obs.chance is not None:
        out.chance = obs.chance
    return out, missed


def has_converged(track: Track, rule: ConvergenceRule) -> bool:
    """Paper Sec. 3: no improvement for `patience` validation steps (and past `min_steps`, and, when
    the rule has a chance floor and the task's chance score is known, with a best value at least
    `min_gain_over_chance` points above it, and, when the rule has an epoch floor and the task's epochs
    are known, with at least `min_epochs` epochs of its training data seen at the last validation).

    Under the significance rule (`rule.significance` set) the patience count is the trainer's streak of
    consecutive validations significantly below the best, not the validation steps since the best.

    Unknown epochs (a trainer that does not report them) leave the epoch floor unchecked, as an
    unknown chance score leaves the chance floor: the decision is then the rule without that floor.
    An unknown streak under the significance rule never converges (a trainer that does not run the
    bootstrap cannot say a drop is significant)."""
    if track.last_step is None or track.best_step is None:
        return False
    if track.last_step < rule.min_steps:
        return False
    if rule.min_epochs > 0 and track.epochs is not None and track.epochs < rule.min_epochs - 1e-9:
        return False
    if rule.min_gain_over_chance is not None and track.chance is not None and (
            track.best_value is None or not beats_chance(track.best_value, track.chance, rule)):
        return False
    if rule.significance is not None:
        return track.streak is not None and track.streak >= rule.patience
    return track.validation_steps_since_best(rule.validation_interval) >= rule.patience


def beats_chance(value: float, chance: float, rule: ConvergenceRule) -> bool:
    """True when `value` is at least `rule.min_gain_over_chance` points better than `chance` (the
    rule's direction; 1e-9 tolerance as in `improves`)."""
    gain = value - chance if rule.direction == "max" else chance - value
    return gain >= (rule.min_gain_over_chance or 0.0) - 1e-9


class BestTracker(BaseModel):
    """Best-so-far of one task, as the trainer exports it (same rule as the detector)."""

    best_step: int | None = None
    best_value: float | None = None
    smoothed: float | None = None

    def update(self, step: int, value: float, rule: ConvergenceRule) -> bool:
        """Record a validation result; True if it is the new best (of the smoothed values, when the
        rule smooths: `best_value` is then a smoothed value)."""
        self.smoothed = rule.smooth(value, self.smoothed)
        if rule.improves(self.smoothed, self.best_value):
            self.best_step, self.best_value = step, self.smoothed
            return True
        return False


NOISE_WARNING_POINTS = 1.0  # `asyncmtl validate` warns above this validation noise (metric points)


def validation_noise_points(rows: int) -> float:
    """The standard error (metric points, 0-100) of an accuracy near 50 % measured on `rows` validation rows:
    100·sqrt(0.25 / rows), the binomial worst case — how far a checkpoint's score moves by the draw of its
    validation rows alone (1 point at 2500 rows, 2.9 at 300). `asyncmtl validate --data` warns when it is
    above `NOISE_WARNING_POINTS`: the convergence rule then reads 1-point changes it cannot tell from chance.

    Raises:
        ValueError: `rows` < 1.
    """
    if rows < 1:
        raise ValueError(f"validation rows: {rows} (at least 1)")
    return 100.0 * (0.25 / rows) ** 0.5


def rule_for(spec: RunSpec, task: TaskSpec) -> ConvergenceRule:
    """The convergence rule of `task` under `spec` (all AsyncMTL metrics are higher-is-better)."""
    return ConvergenceRule(
        patience=task.patience,
        min_delta=task.min_delta,
        validation_interval=spec.training.validation_interval,
        min_steps=task.min_steps,
        direction="max",
        smoothing=task.smoothing,
        min_gain_over_chance=task.min_gain_over_chance,
        min_epochs=task.min_epochs,
        significance=task.significance,
    )
