"""The smooth activations, their derivatives, and the module that keeps ReLU in the
forward pass but back-propagates a smooth function's derivative.

Functions (Xie et al., "Smooth Adversarial Training", arXiv:2006.14536, §3-§4), f and f':

- ``softplus``: log(1 + exp(βx))/β, the "parametric softplus" (β = 10); σ(βx)
- ``gelu``: x·Φ(x); Φ(x) + x·φ(x)
- ``silu``: x·σ(x); σ(x)·(1 + x·(1 − σ(x)))
- ``elu``: x if x > 0 else α·(exp(x) − 1); 1 if x > 0 else α·exp(x)
- ``celu``: x if x > 0 else α·(exp(x/α) − 1); 1 if x > 0 else exp(x/α)
- ``smooth-relu``: x − log(1 + αx)/α if x ≥ 0 else 0; αx/(1 + αx) if x ≥ 0 else 0

SmoothReLU is Xie et al.'s §4 function: ReLU for x < 0, flattened only for x ≥ 0, so
it is C¹ (f'(0) = 0 from both sides) and rules out any effect of a non-zero negative
part. As in the authors' code (``ResNet/resnet_model.py``, ``smoothrelu_fn``), α is one
learnable scalar per activation layer, kept positive as α = a², a initialized to 20
(α = 400), and f is computed as ReLU(x − log(1 + α|x|)/α).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .roles import current_role

#: fn -> its options and their defaults
FUNCTIONS = {
    "softplus": {"beta": 10.0},
    "gelu": {},
    "silu": {},
    "elu": {"alpha": 1.0},
    "celu": {"alpha": 1.0},
    "smooth-relu": {"alpha": 400.0, "learnable": True},
}

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


class SmoothReLU(nn.Module):
    """Xie et al.'s SmoothReLU: x − log(1 + αx)/α for x ≥ 0, 0 for x < 0, α = a² > 0.

    ``learnable=True`` (the paper's choice): ``a`` is a parameter, one per layer;
    ``False``: a buffer, saved with the model but not trained.
    """

    def __init__(self, alpha: float = 400.0, learnable: bool = True):
        super().__init__()
        root = torch.tensor(math.sqrt(float(alpha)))
        if learnable:
            self.alpha_root = nn.Parameter(root)
        else:
            self.register_buffer("alpha_root", root)

    @property
    def alpha(self) -> torch.Tensor:
        return self.alpha_root * self.alpha_root

    def forward(self, x):
        alpha = self.alpha.to(x.dtype)
        return torch.relu(x - torch.log1p(alpha * x.abs()) / alpha)

    def extra_repr(self):
        return f"alpha={self.alpha.item():.4g}, learnable={isinstance(self.alpha_root, nn.Parameter)}"


def smooth_module(fn: str, options: dict) -> nn.Module:
    """The forward-mode replacement for one ReLU."""
    if fn == "softplus":
        return nn.Softplus(beta=float(options["beta"]))
    if fn == "gelu":
        return nn.GELU()
    if fn == "silu":
        return nn.SiLU()
    if fn == "elu":
        return nn.ELU(alpha=float(options["alpha"]))
    if fn == "celu":
        return nn.CELU(alpha=float(options["alpha"]))
    if fn == "smooth-relu":
        return SmoothReLU(float(options["alpha"]), bool(options["learnable"]))
    raise ValueError(fn)


def derivative(fn: str, x: torch.Tensor, options: dict) -> torch.Tensor:
    """f'(x) in closed form, built from differentiable ops (so double backpropagation,
    e.g. GradAlign's, differentiates through it)."""
    if fn == "softplus":
        return torch.sigmoid(float(options["beta"]) * x)
    if fn == "gelu":
        return 0.5 * (1.0 + torch.erf(x * _INV_SQRT2)) + x * torch.exp(-0.5 * x * x) * _INV_SQRT2PI
    if fn == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    negative = x.clamp(max=0)  # exp of the negative part only: no inf in the unused branch
    if fn == "elu":
        return torch.where(x > 0, torch.ones_like(x), float(options["alpha"]) * torch.exp(negative))
    if fn == "celu":
        return torch.where(x > 0, torch.ones_like(x), torch.exp(negative / float(options["alpha"])))
    if fn == "smooth-relu":
        ax = float(options["alpha"]) * x.clamp(min=0)
        return ax / (1.0 + ax)
    raise ValueError(fn)


class _ReLUWithSmoothGradient(torch.autograd.Function):
    """ReLU forward; backward multiplies by the smooth function's derivative instead of
    ReLU's step."""

    @staticmethod
    def forward(ctx, x, fn, options):
        ctx.save_for_backward(x)
        ctx.fn, ctx.options = fn, options
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * derivative(ctx.fn, x, ctx.options), None, None


class ReLUSmoothBackward(nn.Module):
    """``mode=backward``: outputs exactly ReLU(x). Its gradient is the smooth function's
    derivative or ReLU's own, chosen per forward from the forward's role (attacker or
    optimizer, see :mod:`advplug_sat.roles`): ``attack_grad`` and ``train_grad`` are each
    ``"smooth"`` or ``"relu"``."""

    def __init__(self, fn: str, options: dict, attack_grad: str = "smooth", train_grad: str = "smooth"):
        super().__init__()
        self.fn = fn
        # SmoothReLU's α is a constant here: the forward pass (ReLU) does not depend on it
        self.options = {k: float(v) for k, v in options.items() if k != "learnable"}
        self.attack_grad, self.train_grad = attack_grad, train_grad

    def forward(self, x):
        grad = self.attack_grad if current_role() == "attack" else self.train_grad
        if grad == "relu":
            return torch.relu(x)
        return _ReLUWithSmoothGradient.apply(x, self.fn, self.options)

    def extra_repr(self):
        opts = "".join(f", {k}={v:g}" for k, v in self.options.items())
        return f"fn={self.fn}{opts}, attack_grad={self.attack_grad}, train_grad={self.train_grad}"


#: the modules this plugin puts into a model (fx keeps them as leaves; the ReLU check
#: ignores the ReLU they call themselves)
OWN_MODULES = (SmoothReLU, ReLUSmoothBackward)

__all__ = ["FUNCTIONS", "OWN_MODULES", "ReLUSmoothBackward", "SmoothReLU", "derivative", "smooth_module"]
