"""The multi-task methods (`spec.method`), resolved once into what each layer asks of them.

`spec.method` says what happens when a task converges (the multi-task method: the paper's asynchronous
KD, or a baseline's answer); `spec.weighting.method` says how the task losses are combined into one
(uniform, static, DWA, ...). The two are independent. (It was `spec.strategy` before v1alpha1's renames:
PyTorch users read "strategy" as DDP/FSDP, which is `training.parallelism` here.)

| method | settings | convergence decided | on convergence | loss after | source |
|---|---|---|---|---|---|
| asyncKD | joint, sequential | yes | rewind (unless `rewind: none`), soft labels from the best checkpoint | KD (Eq. 2) | Lu et al. 2022 |
| continual | sequential | yes | no rewind, no soft labels | its true labels (Eq. 1) | Continual MTL baseline |
| fixedSteps | joint | no: trains to maxSteps | - | true labels | Uni. Weight / weighting baselines |
| bam | joint | no: trains to maxSteps | - | KD against the teacher run's best checkpoints, annealed to the labels | Clark et al. 2019 (BAM) |

The decision core, the trainer, the runtimes and the operator ask a `Method`, never compare the
method's name; the spec's cross-field rules (and their CEL form in the CRD) are written from the
same table. Torch-free and pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncmtl.lifecycle import TaskPhase

MethodName = Literal["asyncKD", "fixedSteps", "continual", "bam"]
Setting = Literal["joint", "sequential"]


@dataclass(frozen=True)
class Method:
    """One multi-task method.

    Attributes:
        name: as written in `spec.method`.
        settings: the settings it applies to.
        decides_convergence: the patience rule declares tasks converged (else training runs to maxSteps).
        distills_on_convergence: a converged task gets soft labels from its best checkpoint and the KD
            loss (Eq. 2); otherwise it keeps its true labels (Continual MTL).
        teacher: every task distills from another run's best checkpoints from the start (`teacherRun`).
        anneals: the KD target is annealed from the teacher's soft labels to the gold labels (BAM).
    """

    name: MethodName
    settings: tuple[Setting, ...]
    decides_convergence: bool
    distills_on_convergence: bool
    teacher: bool = False
    anneals: bool = False

    def rewinds(self, rewind: str) -> bool:
        """Whether a convergence decision rewinds the whole model to the task's best checkpoint
        (`spec.rewind`: `bestCheckpoint`, or `none`)."""
        return self.decides_convergence and self.distills_on_convergence and rewind != "none"

    def initial_phase(self, setting: Setting) -> TaskPhase:
        """The phase every task starts in: sequential tasks wait their turn; BAM's tasks start awaiting
        the teacher's soft labels; the rest train on their labels."""
        if setting == "sequential":
            return TaskPhase.PENDING
        return TaskPhase.AWAITING_SOFT_LABELS if self.teacher else TaskPhase.TRAINING


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("asyncKD", ("joint", "sequential"), decides_convergence=True, distills_on_convergence=True),
    Method("continual", ("sequential",), decides_convergence=True, distills_on_convergence=False),
    Method("fixedSteps", ("joint",), decides_convergence=False, distills_on_convergence=False),
    Method("bam", ("joint",), decides_convergence=False, distills_on_convergence=False, teacher=True, anneals=True),
)}


def resolve(name: str) -> Method:
    """The method named `name`.

    Raises:
        KeyError: no such method (the spec's Literal refuses it first).
    """
    return METHODS[name]


def _names(methods: list[Method]) -> str:
    return "[" + ", ".join(f"'{m.name}'" for m in methods) + "]"


def cel_rules() -> list[tuple[str, str, str]]:
    """The method rules of the CRD (rule, message, fieldPath), written from the table above: which
    settings each method applies to, and `teacherRun` exactly for the methods that have one."""
    rules = []
    by_settings: dict[tuple[str, ...], list[Method]] = {}
    for s in METHODS.values():
        if set(s.settings) != {"joint", "sequential"}:
            by_settings.setdefault(s.settings, []).append(s)
    for settings, group in by_settings.items():
        # setting defaults to joint: an absent setting is joint
        ok = " || ".join(("!has(self.setting) || self.setting == 'joint'" if x == "joint" else
                          f"(has(self.setting) && self.setting == '{x}')") for x in settings)
        verb = "applies" if len(group) == 1 else "apply"
        rules.append((f"!has(self.method) || !(self.method in {_names(group)}) || {ok}",
                      f"{' and '.join(s.name for s in group)} {verb} to setting: {', '.join(settings)}", ".method"))
    teachers = [s for s in METHODS.values() if s.teacher]
    which = ", ".join(s.name for s in teachers)
    rules.append((f"!has(self.method) || !(self.method in {_names(teachers)}) || "
                  "(has(self.teacherRun) && self.teacherRun != '')", f"teacherRun is required for method: {which}",
                  ".teacherRun"))
    rules.append((f"!has(self.teacherRun) || (has(self.method) && self.method in {_names(teachers)})",
                  f"teacherRun only applies to method: {which}", ".teacherRun"))
    return rules
