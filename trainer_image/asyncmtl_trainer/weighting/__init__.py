"""Loss-weighting methods, one module each behind `Weighting` (base.py), registered by name: uniform
(the paper's sum, Eq. 3), static and Muppet, DWA, GradNorm, and from PyPI `torchjd` FAMO, uncertainty
weighting (uw) and UPGrad. `make_weighting(spec)` builds the one a run asks for."""
from __future__ import annotations

from asyncmtl.spec import RunSpec
from asyncmtl_trainer.weighting.base import Weighting, registered
from asyncmtl_trainer.weighting.dwa import DWA
from asyncmtl_trainer.weighting.famo import FAMO
from asyncmtl_trainer.weighting.gradnorm import GradNorm
from asyncmtl_trainer.weighting.static import Muppet, Static
from asyncmtl_trainer.weighting.uniform import Uniform
from asyncmtl_trainer.weighting.upgrad import UPGrad
from asyncmtl_trainer.weighting.uw import UncertaintyWeighting


def make_weighting(spec: RunSpec) -> Weighting:
    """The weighting of `spec.weighting` for the run's tasks.

    Raises:
        KeyError: no method of that name is registered (the spec's enum and the registry agree; a test checks).
    """
    return registered()[spec.weighting.method](spec)


__all__ = ["DWA", "FAMO", "GradNorm", "Muppet", "Static", "UPGrad", "UncertaintyWeighting", "Uniform", "Weighting",
           "make_weighting", "registered"]
