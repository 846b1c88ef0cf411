"""advplug-curriculum: attack-parameter schedules for advplug -- ``curriculum-linear``
(ε and PGD steps grow linearly over the run), ``ramp`` (ε warm-up, then constant) and
``step`` (a staircase of equal stages)."""
from .schedules import SCHEDULES, LinearCurriculum, Ramp, Schedule, Staircase

__version__ = "0.1.0"

__all__ = ["SCHEDULES", "LinearCurriculum", "Ramp", "Schedule", "Staircase", "__version__"]
