"""The initialization generator of FGSM-SDI: a small residual conv net that maps a clean
image and the sign of its input gradient to a perturbation inside the Linf ε-ball.

Layout (the authors' ``One_Layer_Attacker`` in ``attacker.py`` of jiaxiaojunQAQ/FGSM-SDI)::

    [x, sign ∇ₓL]  (2C channels)
      → conv3x3(2C→64, no bias) → BN(64, eps=1e-3) → ReLU
      → pre-activation residual block: h + conv(PReLU(BN(conv(PReLU(BN(h))))))
        (BN without affine parameters, 3x3 convs with bias, Xavier-uniform gain √2)
      → BN(64, no affine) → conv3x3(64→C, bias)
      → tanh                                        ∈ [-1, 1]

The caller multiplies by ε, so the output scale follows ε schedules without retraining.
"""
from __future__ import annotations

import math

import torch
from torch import nn

WIDTH = 64


class ResidualBlock(nn.Module):
    """Pre-activation residual block with an identity shortcut (the authors' ``GenBlock``)."""

    def __init__(self, channels: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels, affine=False), nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels, affine=False), nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        for conv in (self.body[2], self.body[5]):
            nn.init.xavier_uniform_(conv.weight, gain=math.sqrt(2))

    def forward(self, h):
        return h + self.body(h)


class InitGenerator(nn.Module):
    """``InitGenerator(channels)(x, grad_sign) -> η / ε`` in [-1, 1], same shape as ``x``.

    ``width`` is the hidden channel count (the authors': 64). On a target as small as
    advplug's mnist-cnn, a width-64 generator costs more per forward than the target itself;
    a narrower one keeps FGSM-SDI's overhead where the paper measured it (ResNets on CIFAR)."""

    def __init__(self, channels: int, width: int = WIDTH):
        super().__init__()
        self.channels, self.width = channels, width
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width, eps=1e-3), nn.ReLU(),
            ResidualBlock(width),
            nn.BatchNorm2d(width, affine=False),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, grad_sign: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(torch.cat([x, grad_sign], dim=1)))
