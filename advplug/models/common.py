"""Pieces every built-in architecture shares: input normalization and the activation."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import AdvplugError
from ..params import Param, integer

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


def activation_factory(activation):
    """A zero-argument callable returning a fresh activation module.

    ``activation`` is a name from ``ACTIVATIONS`` or already such a callable (a module
    class, or e.g. ``lambda: nn.Softplus(beta=10)``), so a transform can swap it.
    """
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[str(activation).lower()]
    except KeyError:
        raise AdvplugError(
            f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)} "
            f"or pass a callable returning an nn.Module"
        ) from None


#: the ``activation`` parameter every built-in architecture takes
ACTIVATION = Param("relu", choices=tuple(ACTIVATIONS),
                   help="activation (from Python also a zero-argument callable returning a module)")
#: the ``width`` parameter of the ResNets: channels of the first stage (64 in the papers)
WIDTH = integer(64, low=1, help="channels of the first stage (64: the published network)")


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the first layer: the model takes [0, 1] inputs."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class SelectLogits(nn.Module):
    """Wraps a model whose forward returns a dict (or tuple) and returns ``out[key]``, the
    logits, as every attack and report expects (``--logits-key``)."""

    def __init__(self, model: nn.Module, key):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x):
        return self.model(x)[self.key]

    def extra_repr(self):
        return f"key={self.key!r}"
