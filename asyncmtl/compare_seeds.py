"""`asyncmtl compare --by-seed RUN...`: methods compared over seeds, with confidence intervals.

Runs named `<method>-s<seed>` (`asyncmtl sweep`) are grouped by method; a fixed-step baseline
gives two groups, "(Final)" (its last model) and "(Best)" (each task's best checkpoint, the paper's
"Uni. Weight (Best)"). Per group and task: the mean test score over seeds ± its sample standard
deviation, and the same for the average over tasks. Against the reference group (default: the
uniform baseline's Final, the paper's "Uni. Weight (Final)"), the paired difference over the seeds
both have: mean and 95 % confidence interval, mean ± t(0.975, n−1)·sd/√n (Student's t, scipy).

On validation (`asyncmtl.headroom`): the headroom H of the reference's runs (one per seed; mean and
95 % t-interval over seeds), each group's hold gap (over its seeds), and the share of H each group
captured: per seed, (its validation average − the reference's) / that seed's H, paired over the
seeds both have (seeds whose H is 0 left out), with its t-interval.

Written as `compare-seeds.md`, `compare-seeds.csv`, `compare-seeds-headroom.csv` and
`compare-seeds.png` (per-task bars with the standard deviation as error bars).
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from asyncmtl.compare import STEPS_LEGEND, CompareError, Row, headroom_legend, load_runs
from asyncmtl.headroom import share_of_headroom
from asyncmtl.sweep import split_run_name


@dataclass
class Interval:
    """Mean of per-seed values over `n` seeds (paired differences, or one group's own values) and its
    95 % Student-t confidence interval (None when n < 2)."""

    mean: float
    n: int
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, diffs: list[float]) -> "Interval | None":
        from scipy.stats import t as student_t

        if not diffs:
            return None
        m = statistics.fmean(diffs)
        if len(diffs) < 2:
            return cls(m, len(diffs))
        half = float(student_t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        return cls(m, len(diffs), m - half, m + half)

    def text(self, signed: bool = True) -> str:
        f = "{:+.2f}" if signed else "{:.2f}"
        if self.low is None:
            return f"{f.format(self.mean)} (n={self.n}, no interval)"
        return f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}]"


@dataclass
class Group:
    """One method (and variant: "Final" or "Best" for fixed-step baselines) over its seeds."""

    name: str
    rows: dict[int | None, Row] = field(default_factory=dict)  # seed -> row

    def scores(self, task: str | None) -> dict[int | None, float]:
        out = {}
        for seed, r in self.rows.items():
            v = r.average if task is None else r.scores.get(task)
            if v is not None:
                out[seed] = v
        return out

    def mean_std(self, task: str | None) -> tuple[float | None, float | None]:
        return _mean_std(list(self.scores(task).values()))

    def steps(self) -> float:
        return statistics.fmean(r.steps for r in self.rows.values())


@dataclass
class SeedComparison:
    tasks: list[str]
    groups: list[Group]
    reference: Group
    prefix: str = ""  # shared by every method name (e.g. the experiment's `tweeteval-compare-`), not shown

    def label(self, g: Group) -> str:
        """The group's name as shown: without the prefix every method shares."""
        return g.name[len(self.prefix):]

    def paired(self, g: Group, task: str | None) -> Interval | None:
        a, b = g.scores(task), self.reference.scores(task)
        return Interval.of([a[s] - b[s] for s in sorted(set(a) & set(b), key=str)])

    # ---- on validation: headroom, hold gap, share of the headroom (asyncmtl.headroom) ----------------
    def headroom_values(self) -> dict[int | None, float]:
        """Seed -> H of the reference's run of that seed (points; seeds without one left out)."""
        return {s: r.headroom.value for s, r in self.reference.rows.items() if r.headroom is not None}

    def hold_gap_values(self, g: Group) -> dict[int | None, float]:
        """Seed -> the hold gap of `g`'s run (points; none for Best groups)."""
        return {s: r.hold_gap for s, r in g.rows.items() if r.hold_gap is not None}

    def validation_values(self, g: Group) -> dict[int | None, float]:
        """Seed -> `g`'s mean validation score over tasks (points)."""
        return {s: r.validation_average for s, r in g.rows.items() if r.validation_average is not None}

    def validation_delta_values(self, g: Group) -> dict[int | None, float]:
        """Seed -> `g`'s validation average − the reference's, over the seeds both have (points)."""
        a, b = self.validation_values(g), self.validation_values(self.reference)
        return {s: a[s] - b[s] for s in a if s in b}

    def share_values(self, g: Group) -> dict[int | None, float]:
        """Seed -> the share of that seed's H that `g` captured over the reference (seeds both have, H > 0)."""
        a, b, h = self.validation_values(g), self.validation_values(self.reference), self.headroom_values()
        out = {s: share_of_headroom(a[s], b.get(s), h.get(s)) for s in a}
        return {s: v for s, v in out.items() if v is not None}

    def headroom_markdown(self) -> str:
        """The headroom section: H over seeds, and per group its hold gap, Δ validation average and share of H."""
        ref = self.label(self.reference)
        hs = self.headroom_values()
        h = Interval.of([hs[s] for s in _seed_order(hs)])
        per_seed = ", ".join(f"{'' if s is None else f's{s} '}{hs[s]:.2f}" for s in _seed_order(hs))
        lines = [f"Headroom H of `{ref}` on validation, over seeds: "
                 + ("– (no run of it has a validation step that scored every task)" if h is None else
                    f"{h.text(signed=False)} (per seed: {per_seed})") + ".", "",
                 f"| method | validation average | hold gap [95 % CI] | Δ validation average vs {ref} [95 % CI] | "
                 "share of H [95 % CI] |", "|---|---|---|---|---|"]
        for g in self.groups:
            m, sd = _mean_std(list(self.validation_values(g).values()))
            cells = [self.label(g), "–" if m is None else f"{m:.2f} ± {sd:.2f}", _iv(self.hold_gap_values(g))]
            cells += (["reference", "reference"] if g is self.reference else
                      [_iv(self.validation_delta_values(g)), _iv(self.share_values(g))])
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", headroom_legend(f"`{ref}`") + " Over seeds: H and the hold gap are each group's own mean and "
                  "95 % t-interval; Δ and the share are paired by seed (the share per seed against that seed's H)."]
        return "\n".join(lines) + "\n"

    def headroom_csv(self) -> str:
        """One line per (group, quantity): seeds, mean, sample std, 95 % interval."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["method", "quantity", "seeds", "mean", "std", "ci95_low", "ci95_high", "is_reference"])
        quantities = [("headroom", lambda g: self.headroom_values() if g is self.reference else {}),
                      ("validation_average", self.validation_values), ("hold_gap", self.hold_gap_values),
                      ("validation_average_diff_vs_reference", self.validation_delta_values),
                      ("share_of_headroom", self.share_values)]
        for g in self.groups:
            for name, values_of in quantities:
                if g is self.reference and name in ("validation_average_diff_vs_reference", "share_of_headroom"):
                    continue
                vals = values_of(g)
                if not vals:
                    continue
                xs = [vals[s] for s in _seed_order(vals)]
                m, sd = _mean_std(xs)
                iv = Interval.of(xs)
                w.writerow([self.label(g), name, len(xs), _f(m), _f(sd), _f(iv.low if iv else None),
                            _f(iv.high if iv else None), g is self.reference])
        return buf.getvalue()

    def markdown(self) -> str:
        cols = [*self.tasks, None]
        head = ["method", "seeds", "optimizer steps", *self.tasks, "average",
                f"Δ average vs {self.label(self.reference)} [95 % CI]"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g in self.groups:
            cells = [self.label(g), str(len(g.rows)), f"{g.steps():.0f}"]
            for task in cols:
                m, sd = g.mean_std(task)
                cells.append("–" if m is None else f"{m:.2f} ± {sd:.2f}")
            iv = None if g is self.reference else self.paired(g, None)
            cells.append("reference" if g is self.reference else ("–" if iv is None else iv.text()))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Test scores (0-100): mean ± sample standard deviation over seeds. Δ: paired difference of the "
                      f"average over the seeds a method shares with `{self.label(self.reference)}`, with its 95 % "
                      "t-interval. " + STEPS_LEGEND + " Mean over seeds."
                      + (f" Methods are named without their common prefix `{self.prefix}`." if self.prefix else ""),
                  "", "Per-task paired differences vs the reference [95 % CI]:", "",
                  "| method | " + " | ".join(self.tasks) + " |", "|" + "---|" * (len(self.tasks) + 1)]
        for g in self.groups:
            if g is self.reference:
                continue
            ivs = [self.paired(g, t) for t in self.tasks]
            lines.append(f"| {self.label(g)} | " + " | ".join("–" if iv is None else iv.text() for iv in ivs) + " |")
        return "\n".join(lines) + "\n\n" + self.headroom_markdown()

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["method", "column", "seeds", "mean", "std", "diff_vs_reference", "ci95_low", "ci95_high",
                    "is_reference"])
        for g in self.groups:
            for task in [*self.tasks, None]:
                m, sd = g.mean_std(task)
                iv = None if g is self.reference else self.paired(g, task)
                w.writerow([self.label(g), task or "average", len(g.scores(task)), _f(m), _f(sd), _f(iv.mean if iv else None),
                            _f(iv.low if iv else None), _f(iv.high if iv else None), g is self.reference])
        return buf.getvalue()

    def plot(self, path: Path) -> None:
        """Per-task bars (and the average) per method, error bars one standard deviation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = [*self.tasks, None]
        n = len(self.groups)
        width = 0.8 / max(1, n)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cols) * max(1, n) * 0.35 + 3), 4.5))
        for i, g in enumerate(self.groups):
            ms = [g.mean_std(t) for t in cols]
            xs = [c + (i - (n - 1) / 2) * width for c in range(len(cols))]
            ax.bar(xs, [m or 0.0 for m, _ in ms], width, yerr=[sd or 0.0 for _, sd in ms], capsize=2, label=self.label(g))
        ax.set_xticks(range(len(cols)), [t or "average" for t in cols])
        lows = [m - (sd or 0) for g in self.groups for m, sd in (g.mean_std(t) for t in cols) if m is not None]
        if lows:
            ax.set_ylim(max(0.0, min(lows) - 5), None)
        ax.set_ylabel("test score (0-100), mean ± sd over seeds")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _seed_order(values: dict[int | None, float]) -> list[int | None]:
    return sorted(values, key=str)


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None, None for none)."""
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _iv(values: dict[int | None, float]) -> str:
    """Mean [95 % t-interval] of per-seed values, in seed order; – when there is none."""
    iv = Interval.of([values[s] for s in _seed_order(values)])
    return "–" if iv is None else iv.text()


def compare_by_seed(run_dirs: list[Path], reference: str | None = None) -> SeedComparison:
    """Group finished runs by method over seeds.

    Args:
        run_dirs: local run folders (names `<method>-s<seed>`; other names are a method of one run).
        reference: a group name (`tweeteval-compare-uniform (Final)`) or a method name (its Final
            group if it has one); default: the first group that is a "(Final)" row whose method name
            contains "uniform", else the first "(Final)" group, else the first group.

    Raises:
        CompareError: a folder is not a finished run, runs have different tasks, a method has the same
            seed twice, or `reference` is unknown.
    """
    groups: dict[str, Group] = {}
    loaded, tasks = load_runs(run_dirs)
    for d, rows, _ in loaded:
        for row in rows:
            base, _, variant = row.name.partition(" (")
            method, seed = split_run_name(base)
            name = f"{method} ({variant}" if variant else method
            g = groups.setdefault(name, Group(name))
            if seed in g.rows:
                raise CompareError(f"{d}: {name} has seed {seed} twice")
            g.rows[seed] = row
    if not groups or tasks is None:
        raise CompareError("no runs given")
    ordered = list(groups.values())
    if reference is not None:
        ref = groups.get(reference) or groups.get(f"{reference} (Final)")
        if ref is None:
            raise CompareError(f"reference {reference!r} is none of {list(groups)}")
    else:
        finals = [g for g in ordered if g.name.endswith("(Final)")]
        ref = next((g for g in finals if "uniform" in g.name), finals[0] if finals else ordered[0])
    return SeedComparison(tasks=tasks, groups=ordered, reference=ref, prefix=_shared_prefix([g.name for g in ordered]))


def _shared_prefix(names: list[str]) -> str:
    """The longest prefix ending in "-" that every name has, when there are two names or more."""
    import os

    if len(names) < 2:
        return ""
    common = os.path.commonprefix(names)
    return common[:common.rfind("-") + 1]


def write_by_seed(comparison: SeedComparison, out: Path) -> dict[str, Path]:
    """Write compare-seeds.md, .csv, -headroom.csv and .png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {n: out / n for n in ("compare-seeds.md", "compare-seeds.csv", "compare-seeds-headroom.csv",
                                  "compare-seeds.png")}
    paths["compare-seeds.md"].write_text(comparison.markdown())
    paths["compare-seeds.csv"].write_text(comparison.csv())
    paths["compare-seeds-headroom.csv"].write_text(comparison.headroom_csv())
    comparison.plot(paths["compare-seeds.png"])
    return paths
