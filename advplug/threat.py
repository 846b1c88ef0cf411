"""Threat model: a norm and a radius ε, always in pixel space ([0, 1] inputs).

ε is never expressed in normalized space: models normalize inside themselves, so the
same ε means the same perturbation for every model.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from .errors import AdvplugError

NORMS = ("Linf", "L2")


def parse_eps(value) -> float:
    """Accept a float, an int, or a string like ``"0.3"`` or ``"8/255"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise AdvplugError(
            f"ε {value!r} is not a number; write it in pixel space, e.g. 0.3 or 8/255"
        ) from None


def parse_norm(value: str) -> str:
    for norm in NORMS:
        if str(value).lower() == norm.lower():
            return norm
    raise AdvplugError(f"unknown norm {value!r}; use one of: {', '.join(NORMS)}")


@dataclass(frozen=True)
class Threat:
    """``norm`` in {"Linf", "L2"}; ``eps`` in pixel units of [0, 1] images."""

    norm: str = "Linf"
    eps: float = 0.3

    def __post_init__(self):
        object.__setattr__(self, "norm", parse_norm(self.norm))
        eps = parse_eps(self.eps)
        if eps != eps or eps < 0:
            raise AdvplugError(f"ε must be >= 0, got {eps}")
        if self.norm == "Linf" and eps > 1:
            raise AdvplugError(
                f"Linf ε = {eps} is outside [0, 1]: ε is in pixel space of [0, 1] images "
                f"(for 8/255 write --eps 8/255, not --eps 8)"
            )
        object.__setattr__(self, "eps", eps)

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        """A random δ inside the ball (uniform per coordinate for Linf, uniform in the ball for L2)."""
        if self.norm == "Linf":
            return torch.empty_like(x).uniform_(-self.eps, self.eps)
        direction = torch.randn_like(x)
        direction = direction / _l2(direction).clamp_min(1e-12)
        dims = x[0].numel()
        radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
        return direction * self.eps * radius ** (1.0 / dims)

    def ascent(self, grad: torch.Tensor, step: float) -> torch.Tensor:
        """The steepest-ascent step of size ``step`` for this norm."""
        if self.norm == "Linf":
            return step * grad.sign()
        return step * grad / _l2(grad).clamp_min(1e-12)

    def project_ball(self, delta: torch.Tensor) -> torch.Tensor:
        """Project δ onto the ε-ball only (x + δ may leave [0, 1])."""
        if self.norm == "Linf":
            return delta.clamp(-self.eps, self.eps)
        norms = _l2(delta)
        return delta * (self.eps / norms.clamp_min(1e-12)).clamp(max=1.0)

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project δ onto the ε-ball and so that x + δ stays in [0, 1]."""
        return (x + self.project_ball(delta)).clamp(0.0, 1.0) - x

    def sizes(self, delta: torch.Tensor) -> torch.Tensor:
        """Each sample's perturbation size in this threat's norm (shape ``(N,)``)."""
        d = delta.flatten(1)
        return d.abs().amax(1) if self.norm == "Linf" else d.norm(dim=1)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-5) -> bool:
        """True when x_adv is in [0, 1] and inside the ball around x."""
        in_box = bool(((x_adv >= -tol) & (x_adv <= 1 + tol)).all())
        return in_box and bool((self.sizes(x_adv - x) <= self.eps + tol).all())

    def __str__(self) -> str:
        return f"{self.norm} ε={self.eps:g}"


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def threat_warning(threat: Threat, dataset_spec) -> str | None:
    """A warning when ε is so large that robustness is impossible by construction: within
    Linf 0.5, or L2 √d/2 (d = values per image), every image can be turned into the same
    uniform gray image, so no classifier can be robust. Such runs are nearly always a
    mistyped ε (e.g. an L2 radius given for Linf, or in 0-255 units)."""
    values = dataset_spec.channels * dataset_spec.size * dataset_spec.size
    limit = 0.5 if threat.norm == "Linf" else 0.5 * values ** 0.5
    if threat.eps < limit:
        return None
    usual = dataset_spec.default_eps(threat.norm)
    return (f"{threat} on {dataset_spec.name}: at ε >= {limit:.4g} every image can be turned into the same gray "
            f"image, so robust accuracy is at most chance by construction (the usual {threat.norm} radius for "
            f"{dataset_spec.name} is {usual:.4g}); check --eps and --norm")
