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
from advplug.params import check_params
from advplug.threat import parse_eps

_TOLERANCE = 1e-9  # t·n or k₀(1 − u) + k₁u landing a hair below an integer still counts as it


def mix(start: float, end: float, u: float) -> float:
    """``start·(1 − u) + end·u``: exactly ``start`` at u = 0 and exactly ``end`` at u = 1."""
    return start * (1.0 - u) + end * u


class Schedule:
    """Base: subclasses set ``name``, ``defaults`` and ``progress(t) -> u``.

    Parameters shared by every schedule: ``eps0``/``eps1`` (start and end ε; ``None``
    means the subclass's default, for ``eps1`` the run's ε) and ``k0``/``k1`` (start and
    end PGD steps; ``None`` leaves the trainer's steps alone).
    """

    name = "schedule"
    defaults: dict = {}

    def __init__(self, **params):
        self.given = set(params)
        self.params = check_params(f"schedule {self.name!r}", params, self.defaults)
        for key in ("eps0", "eps1"):
            if self.params.get(key) is not None:
                self.params[key] = self._eps(key, self.params[key])
        for key in ("k0", "k1"):
            if self.params.get(key) is not None:
                self.params[key] = self._at_least_one(key, self.params[key])
        if (self.params.get("k0") is None) != (self.params.get("k1") is None):
            raise self.error("give both k0 and k1 (start and end PGD steps) or neither")
        self.validate()
        self._first_call = True

    # -- what subclasses provide ---------------------------------------------------

    def validate(self) -> None:
        """Check the subclass's own parameters (raise ``self.error(...)``)."""

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

    def _eps(self, key, value) -> float:
        try:
            eps = parse_eps(value)
        except AdvplugError:
            raise self.error(f"{key} = {value!r} is not a number; write it in pixel space, "
                             f"e.g. 0.3 or 8/255") from None
        if eps != eps or eps < 0:
            raise self.error(f"{key} must be >= 0 (pixel space of [0, 1] images), got {value!r}")
        return eps

    def _at_least_one(self, key, value) -> int:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value != int(value) or value < 1):
            raise self.error(f"{key} must be an integer >= 1, got {value!r}")
        return int(value)


class LinearCurriculum(Schedule):
    """ε and PGD steps both grow linearly over the whole run: u = t."""

    name = "curriculum-linear"
    defaults = {"eps0": 0.01, "eps1": 0.1, "k0": 10, "k1": 40}

    def progress(self, t):
        return t


class Ramp(Schedule):
    """Warm-up: ε grows linearly from eps0 to the end ε over the first ``warmup``
    fraction of t, then stays there: u = min(t / warmup, 1) (u = 1 when warmup = 0)."""

    name = "ramp"
    defaults = {"eps0": 0.0, "eps1": None, "warmup": 0.3, "k0": None, "k1": None}

    def validate(self):
        warmup = self.params["warmup"]
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup <= 1:
            raise self.error(f"warmup is a fraction of training in [0, 1], got {warmup!r}")
        self.params["warmup"] = float(warmup)

    def progress(self, t):
        warmup = self.params["warmup"]
        return 1.0 if warmup == 0 else min(t / warmup, 1.0)


class Staircase(Schedule):
    """ε in ``stages`` equal stages of t, equally spaced from eps0 to the end ε:
    stage s = min(⌊t·n⌋, n − 1), u = s / (n − 1) (u = 1 for n = 1). Without eps0 the
    first stage is ε/n, so the stairs are ε/n, 2ε/n, …, ε."""

    name = "step"
    defaults = {"eps0": None, "eps1": None, "stages": 3, "k0": None, "k1": None}

    def validate(self):
        self.params["stages"] = self._at_least_one("stages", self.params["stages"])

    def start_eps(self, end):
        eps0 = self.params["eps0"]
        return end / self.params["stages"] if eps0 is None else eps0

    def progress(self, t):
        n = self.params["stages"]
        if n == 1:
            return 1.0
        return min(math.floor(t * n + _TOLERANCE), n - 1) / (n - 1)


SCHEDULES = (LinearCurriculum, Ramp, Staircase)
