"""Attack-parameter schedules: training progress t in [0, 1] -> ε (and PGD steps).

The engine calls ``schedule(t, epoch, threat, params)`` at the start of every epoch with
``t = epoch / (epochs - 1)`` (0 at the first epoch, 1 at the last) and applies the dict
returned through ``Trainer.set_attack_params``. Every schedule here is one shape
``u(t)`` in [0, 1] (how far along the curriculum is) applied to both ends::

    ε(t)     = ε₀ (1 − u) + ε₁ u
    steps(t) = ⌊k₀ (1 − u) + k₁ u⌋          only if the trainer has a ``steps`` parameter

so ``u = 0`` gives exactly the start values and ``u = 1`` exactly the end values.
ε is in pixel space of [0, 1] images (``8/255`` works). ``steps`` is returned only when
the trainer has a parameter of that name (pgd-at), so the same schedule drives trainers
that take ε alone (fgsm-rs, fgsm-ga, ...).
"""
from __future__ import annotations

import math
import warnings

from advplug.errors import AdvplugError
from advplug.params import check_params, integer, number

_TOLERANCE = 1e-9  # t·n or k₀(1 − u) + k₁u landing a hair below an integer still counts as it


def mix(start: float, end: float, u: float) -> float:
    """``start·(1 − u) + end·u``: exactly ``start`` at u = 0 and exactly ``end`` at u = 1."""
    return start * (1.0 - u) + end * u


def eps_param(default, help):
    return number(default, low=0, optional=True, help=help + " (pixel space, e.g. 8/255)")


def steps_param(default, help):
    return integer(default, low=1, optional=True, help=help)


#: the parameters every schedule shares
SHARED = {"eps0": eps_param(None, "start ε"), "eps1": eps_param(None, "end ε; none: the run's ε"),
          "k0": steps_param(None, "start PGD steps; none: the trainer's own"),
          "k1": steps_param(None, "end PGD steps (give k0 and k1 together)")}


class Schedule:
    """Base: subclasses set ``name``, ``param_schema`` and ``progress(t) -> u``.

    Parameters shared by every schedule: ``eps0``/``eps1`` (start and end ε; ``None``
    means the subclass's default, for ``eps1`` the run's ε) and ``k0``/``k1`` (start and
    end PGD steps; ``None`` leaves the trainer's steps alone).
    """

    name = "schedule"
    param_schema: dict = {}

    def __init__(self, **params):
        self.given = set(params)
        self.params = check_params(f"schedule {self.name!r}", params, self.param_schema)
        if (self.params.get("k0") is None) != (self.params.get("k1") is None):
            raise self.error("give both k0 and k1 (start and end PGD steps) or neither")
        self._first_call = True

    # -- what subclasses provide ---------------------------------------------------

    def progress(self, t: float) -> float:
        """u in [0, 1]: how far from the start values toward the end values at t."""
        raise NotImplementedError

    def start_eps(self, end: float) -> float:
        return self.params["eps0"]

    # -- the schedule --------------------------------------------------------------

    def end_eps(self, threat) -> float:
        eps1 = self.params.get("eps1")
        return threat.eps if eps1 is None else eps1

    def __call__(self, t, epoch, threat, params) -> dict:
        t = min(max(float(t), 0.0), 1.0)
        end = self.end_eps(threat)
        start = self.start_eps(end)
        if self._first_call:
            self._first_call = False
            self._check_against_run(start, end, threat, params)
        u = self.progress(t)
        out = {"eps": mix(start, end, u)}
        if self.params.get("k0") is not None and "steps" in params:
            out["steps"] = math.floor(mix(self.params["k0"], self.params["k1"], u) + _TOLERANCE)
        return out

    def _check_against_run(self, start, end, threat, params) -> None:
        """Once, at the first epoch: ε fits the threat's norm; say what will not apply."""
        if threat.norm == "Linf":
            for key, value in (("eps0", start), ("eps1", end)):
                if value > 1:
                    raise self.error(f"{key} = {value:g} is outside [0, 1] for a Linf threat: ε is in pixel "
                                     f"space of [0, 1] images (write 8/255, not 8)")
        eps1 = self.params.get("eps1")
        if eps1 is not None and not math.isclose(eps1, threat.eps, rel_tol=1e-9, abs_tol=1e-12):
            warnings.warn(f"schedule {self.name!r} ends at eps1 = {eps1:g}, the run's ε is {threat.eps:g}: "
                          f"training and the per-epoch monitor follow the schedule, the final test "
                          f"evaluation uses the run's ε ({threat.eps:g})", stacklevel=3)
        ignored = sorted({"k0", "k1"} & self.given)
        if ignored and "steps" not in params:
            warnings.warn(f"schedule {self.name!r}: {' and '.join(ignored)} ignored, the trainer has no "
                          f"'steps' parameter (only ε is scheduled)", stacklevel=3)

    # -- checks --------------------------------------------------------------------

    def error(self, message: str) -> AdvplugError:
        return AdvplugError(f"schedule {self.name!r}: {message}")


class LinearCurriculum(Schedule):
    """ε and PGD steps both grow linearly over the whole run: u = t."""

    name = "curriculum-linear"
    param_schema = {**SHARED, "eps0": eps_param(0.01, "start ε"), "eps1": eps_param(0.1, "end ε"),
                    "k0": steps_param(10, "start PGD steps"), "k1": steps_param(40, "end PGD steps")}

    def progress(self, t):
        return t


class Ramp(Schedule):
    """Warm-up: ε grows linearly from eps0 to the end ε over the first ``warmup``
    fraction of t, then stays there: u = min(t / warmup, 1) (u = 1 when warmup = 0)."""

    name = "ramp"
    param_schema = {**SHARED, "eps0": eps_param(0.0, "start ε"),
                    "warmup": number(0.3, 0, 1, help="fraction of training over which ε grows")}

    def progress(self, t):
        warmup = self.params["warmup"]
        return 1.0 if warmup == 0 else min(t / warmup, 1.0)


class Staircase(Schedule):
    """ε in ``stages`` equal stages of t, equally spaced from eps0 to the end ε:
    stage s = min(⌊t·n⌋, n − 1), u = s / (n − 1) (u = 1 for n = 1). Without eps0 the
    first stage is ε/n, so the stairs are ε/n, 2ε/n, …, ε."""

    name = "step"
    param_schema = {**SHARED, "eps0": eps_param(None, "first stage's ε; none: ε/stages"),
                    "stages": integer(3, low=1, help="equal stages of training")}

    def start_eps(self, end):
        eps0 = self.params["eps0"]
        return end / self.params["stages"] if eps0 is None else eps0

    def progress(self, t):
        n = self.params["stages"]
        if n == 1:
            return 1.0
        return min(math.floor(t * n + _TOLERANCE), n - 1) / (n - 1)


SCHEDULES = (LinearCurriculum, Ramp, Staircase)
