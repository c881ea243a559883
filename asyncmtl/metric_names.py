"""Names of the trainer's Prometheus metrics: the contract between trainer, runtimes and dashboards.

Every series has a `run` label; per-task series a `task` label; steps are never labels.
Sampling-proof by design (field notes: a gauge set faster than the scrape interval loses
values): the validations counter counts every validation, and the last/best gauges carry
the step they belong to, so a missed point is detected and its effect recovered.
"""
from __future__ import annotations

from asyncmtl.lifecycle import TRAINER_PHASES

PREFIX = "asyncmtl"

VALIDATIONS = f"{PREFIX}_validations"  # counter (exposed as _total): validations run, per task
VALIDATION_LAST_STEP = f"{PREFIX}_validation_last_step"  # gauge: step of the last validation
VALIDATION_LAST_VALUE = f"{PREFIX}_validation_last_value"  # gauge: metric value at that step (0-100)
VALIDATION_BEST_STEP = f"{PREFIX}_validation_best_step"  # gauge: step of the best-so-far value
VALIDATION_BEST_VALUE = f"{PREFIX}_validation_best_value"  # gauge: best-so-far value (minDelta rule)
# gauge: epochs of the task's training data drawn by the last validation (examples drawn for it along the run's
# timeline / its training-split size; set with the last step, read by the epoch floor `minEpochs`)
VALIDATION_LAST_EPOCHS = f"{PREFIX}_validation_last_epochs"
# gauge {task}: consecutive validations up to the last one significantly below the task's best (paired bootstrap of
# the significance rule, `tasks[].significance`; unset while the rule is off). Set with the last step, as the epochs
VALIDATION_SIGNIFICANT_STREAK = f"{PREFIX}_validation_significant_streak"
TRAIN_LOSS = f"{PREFIX}_train_loss"  # gauge {task, kind=supervised|kd}: mean loss since the last export
TRAIN_EXAMPLES = f"{PREFIX}_train_examples"  # counter {task, kind}: examples trained on
GLOBAL_STEP = f"{PREFIX}_global_step"  # gauge: optimizer steps (goes down on a rewind)
EXAMPLES_PER_SECOND = f"{PREFIX}_examples_per_second"  # gauge: training throughput over the last interval
CONTROL_GENERATION = f"{PREFIX}_control_generation_applied"  # gauge: last control generation applied (the ack)
CONTROL_APPLIED_STEP = f"{PREFIX}_control_applied_step"  # gauge: step at which it was applied
TASK_MODE = f"{PREFIX}_task_mode"  # gauge {task, mode=<phase>} (asyncmtl.lifecycle): 1 for the current phase
TRAINER_STATE = f"{PREFIX}_trainer_state"  # gauge {state=starting|training|paused|finalizing|finished}
REWINDS = f"{PREFIX}_rewinds"  # counter: rewinds applied
TRAIN_SIZE = f"{PREFIX}_task_train_examples"  # gauge {task}: examples in the task's training split
TASK_CHANCE = f"{PREFIX}_task_chance_value"  # gauge {task}: validation score of a constant predictor (0-100)
LOSS_WEIGHT = f"{PREFIX}_loss_weight"  # gauge {task}: the task's loss weight λ (weighting methods)
# gauge: the last validation step every validated task has reported (set after the step's last task, and
# exposed before the per-task series, so a scrape that reads N also reads every task's step-N values)
VALIDATION_COMPLETE_STEP = f"{PREFIX}_validation_complete_step"

TASK_MODES = tuple(p.value for p in TRAINER_PHASES)  # label values of TASK_MODE: the trainer's phases
TRAINER_STATES = ("starting", "training", "paused", "finalizing", "finished")
LOSS_KINDS = ("supervised", "kd")
