"""Randomized models: telling them apart from deterministic ones, so that evaluation can
attack them with expectation over transformation (EOT) instead of single-shot attacks
that a model's own randomness can fool (gradients and outputs of one random draw)."""
from __future__ import annotations

import torch


@torch.no_grad()
def is_stochastic(model: torch.nn.Module, x: torch.Tensor, tries: int = 2) -> bool:
    """True when two forward passes of the same batch ``x`` differ (in eval mode, as
    evaluation runs it): noise layers, random transforms, dropout left active. The model's
    mode is restored; the global RNG advances (draws of the model's own randomness)."""
    was_training = model.training
    model.eval()
    try:
        first = model(x)
        return any(not torch.equal(first, model(x)) for _ in range(max(1, tries - 1)))
    finally:
        model.train(was_training)
