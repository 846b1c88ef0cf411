"""The attack contract and the checks every attack's output goes through.

A registered attack is a factory ``factory(model, threat, **params) -> attack`` where
``attack(x, y) -> x_adv`` (x in [0, 1], NCHW float, y int64 labels). Factories carry an
:class:`AttackInfo` (set with :func:`attack_factory`) saying which library implements
them, which norms they support, and whether they are minimal-perturbation attacks (CW,
DeepFool: they search the smallest perturbation and ignore ε) or black-box.

advplug never trusts an attack's output: :class:`CheckedAttack` raises when x_adv leaves
[0, 1] or (for bounded attacks) the threat ball. Evaluation runs attacks inside
:func:`eval_frozen` (eval mode, no parameter gradients, both restored afterwards). Minimal-perturbation outputs are
projected onto the threat ball, and the median norm of the unprojected perturbation is
kept for the report. An output with NaN or inf falls back to the clean input and is
counted (``CheckedAttack.nonfinite``), never scored as a successful attack.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import torch

from ..errors import AdvplugError
from ..params import check_params
from ..params import split_spec_list as split_attack_list  # noqa: F401 (re-exported)
from ..threat import Threat


@contextlib.contextmanager
def eval_frozen(model):
    """Eval mode and no parameter gradients while attacks run; restored afterwards."""
    training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(training)


@dataclass(frozen=True)
class AttackInfo:
    library: str
    norms: tuple = ("Linf", "L2")
    minimal: bool = False  # minimal-perturbation attack: projected onto the ball, norm reported
    black_box: bool = False
    description: str = ""
    params: dict | None = None  # name -> advplug.params.Param; None: the factory checks its own


def attack_factory(library, norms=("Linf", "L2"), minimal=False, black_box=False, description="",
                   params: dict | None = None, name: str | None = None):
    """Decorator marking ``fn(model, threat, **params)`` as an attack factory.

    ``params`` is the attack's parameter schema (``{name: Param}``, see
    :mod:`advplug.params`): every call of the factory is checked against it (unknown names,
    types, ranges: one :class:`AdvplugError` naming the attack) and ``fn`` receives every
    parameter, defaults filled in. ``name`` names the attack in those errors (default: the
    function's name)."""
    def mark(fn):
        what = f"attack {name or fn.__name__!r}"

        @functools.wraps(fn)
        def factory(model, threat, **given):
            return fn(model, threat, **(check_params(what, given, params) if params is not None else given))

        factory.attack_info = AttackInfo(library, tuple(norms), minimal, black_box,
                                         description or (fn.__doc__ or "").strip(), params)
        factory.param_schema = params
        return factory
    return mark


def info_of(factory) -> AttackInfo:
    return getattr(factory, "attack_info", None) or AttackInfo(library="plugin")


@dataclass
class CheckedAttack:
    """An attack bound to a model and threat, with its output checked."""

    name: str
    fn: object
    threat: Threat
    info: AttackInfo
    params: dict = field(default_factory=dict)
    perturbation_norms: list = field(default_factory=list)  # minimal attacks, before projection
    seconds: float = 0.0
    samples: int = 0  # inputs attacked so far
    nonfinite: int = 0  # of them, outputs with NaN/inf that fell back to the clean input

    def __call__(self, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        start = time.perf_counter()
        x = x.detach()
        x_adv = self.fn(x, y)
        if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
            raise AdvplugError(f"attack {self.name!r} returned {type(x_adv).__name__} of shape "
                               f"{getattr(x_adv, 'shape', None)}, expected a tensor shaped {tuple(x.shape)}")
        x_adv = x_adv.detach().to(x.device, x.dtype)
        # a row holding NaN or inf is neither adversarial nor valid: it falls back to its clean
        # input (counted as not fooled) and is counted in ``nonfinite``. NaN would otherwise pass
        # the box and ball checks (every comparison with NaN is false) and count as fooling.
        finite = torch.isfinite(x_adv.flatten(1)).all(1)
        x_adv = torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x_adv, x)
        if self.info.minimal:
            norm = self.threat.sizes(x_adv - x)
            self.perturbation_norms.append(torch.where(finite, norm, torch.nan))  # NaN: left out of the median
            x_adv = x + self.threat.project(x_adv - x, x)
        self._check(x_adv, x, finite)
        self.samples += len(x)
        self.seconds += time.perf_counter() - start
        return x_adv

    def nonfinite_note(self) -> str | None:
        """The report's sentence about non-finite outputs, if there were any."""
        if not self.nonfinite:
            return None
        return (f"returned non-finite values (NaN/inf) for {self.nonfinite} of {self.samples} samples; "
                f"those samples kept their clean input (counted as not fooled by this attack)")

    def _check(self, x_adv, x, finite, tol=1e-5):
        """Count the non-finite rows and check box and ball, with one read from the device."""
        size = self.threat.sizes(x_adv - x).max()
        bad, low, high, size = torch.stack([(~finite).sum().to(x_adv.dtype), x_adv.min(), x_adv.max(),
                                            size]).tolist()
        self.nonfinite += int(bad)
        if low < -tol or high > 1 + tol:
            raise AdvplugError(f"attack {self.name!r} left the image box: x_adv in [{low:.4g}, {high:.4g}], "
                               f"not [0, 1]; the attack is broken or expects another input range")
        if size > self.threat.eps + max(tol, 1e-4 * self.threat.eps):
            raise AdvplugError(f"attack {self.name!r} left the threat ball: {self.threat.norm} perturbation "
                               f"{size:.6g} > ε = {self.threat.eps:.6g}; its numbers would be invalid")

    def gather(self, dist) -> None:
        """Under torchrun (``dist``): the counts and norms of every process's share, so that
        the report's notes are the whole evaluation's."""
        if not dist.active:
            return
        norms = torch.cat(self.perturbation_norms).cpu() if self.perturbation_norms else None
        parts = dist.gather((self.samples, self.nonfinite, norms))
        self.samples = sum(p[0] for p in parts)
        self.nonfinite = sum(p[1] for p in parts)
        self.perturbation_norms = [p[2] for p in parts if p[2] is not None]

    @property
    def median_norm(self) -> float | None:
        """Median unprojected norm of a minimal attack's (finite) outputs."""
        norms = torch.cat(self.perturbation_norms).cpu() if self.perturbation_norms else torch.empty(0)
        norms = norms[~norms.isnan()]
        return norms.median().item() if len(norms) else None


def resolve_attack(registry, spec, threat: Threat, defaults: dict | None = None):
    """``spec`` -> (registry entry, AttackInfo, parameters), checked against the attack's
    schema (defaults filled in) and its supported norms, before anything runs.
    ``defaults`` maps canonical attack names to parameters used where the spec sets none."""
    from ..params import Spec

    spec = Spec.parse(spec)
    name, params = spec.name, dict(spec.params)
    entry = registry.entry("attacks", name)
    params = {**(defaults or {}).get(entry.name, {}), **params}
    info = info_of(entry.obj)
    if threat.norm not in info.norms:
        raise AdvplugError(f"attack {entry.name!r} does not support the {threat.norm} threat model "
                           f"(supports {', '.join(info.norms)})")
    if info.params is not None:
        params = check_params(f"attack {name!r}", params, info.params)
    return entry, info, params


def build_attack(registry, spec, model, threat: Threat, defaults: dict | None = None) -> CheckedAttack:
    """``spec`` is ``name`` or ``name:key=value,...`` (names may be namespaced:
    ``torchattacks:pgd:steps=20``), a table or an :class:`advplug.params.Spec`. ``defaults`` maps canonical attack names to parameters
    used where the spec sets none (e.g. shorter CW runs for training)."""
    entry, info, params = resolve_attack(registry, spec, threat, defaults)
    fn = entry.obj(model, threat, **params)
    return CheckedAttack(entry.name, fn, threat, info, params)
