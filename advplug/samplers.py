"""Batch samplers: what they receive and return (the contract is documented in
``advplug_register_samplers`` in :mod:`advplug.hookspecs`), and helpers for writing one.

The engine wraps a sampler in :class:`advplug.trainers.sampled.SampledTrainer`: per
batch it asks the sampler for the training inputs and minimizes the cross-entropy on
them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .attacks.base import CheckedAttack, build_attack, eval_frozen
from .threat import Threat


@dataclass(frozen=True)
class SamplerContext:
    """What ``sampler.bind`` receives. ``threat`` is the run's threat model (the trainer's
    current one: a schedule that changes ε binds the sampler again); ``seed`` the run's
    seed; ``registry`` the registry to build attacks from; ``run`` the Run itself."""

    model: torch.nn.Module
    threat: Threat
    seed: int
    registry: object
    device: torch.device
    run: object = None


@dataclass
class SampledBatch:
    """What ``sampler.sample(x, y, step)`` returns for a batch of size B.

    ``x``: the training inputs, shaped like the batch, detached, in [0, 1] (clean rows
    bit-identical to the batch). ``adversarial``: bool (B,), True where the row was
    perturbed. ``source``: optional int64 (B,), an index into ``sources`` (names such as
    ``"clean"``, ``"pgd"``, ``"Linf"``) saying where each row came from; the trainer counts
    them per epoch into the metrics ``sampler_share_<name>``.
    """

    x: torch.Tensor
    adversarial: torch.Tensor
    source: torch.Tensor | None = None
    sources: tuple = ()


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from (run seed, global step): a batch's random
    choices depend on nothing else, so a resumed run makes the same ones."""
    state = np.random.SeedSequence([int(seed) % 2**32, int(step)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def training_attack(ctx: SamplerContext, spec: str, threat: Threat | None = None,
                    defaults: dict | None = None) -> CheckedAttack:
    """A registered attack for use inside a sampler: ``spec`` is ``name[:key=value,...]``,
    ``threat`` defaults to the run's, ``defaults`` maps canonical attack names (e.g.
    ``"torchattacks:cw"``) to parameters used where the spec sets none. Call it with
    :func:`attack_batch`."""
    return build_attack(ctx.registry, spec, ctx.model, threat or ctx.threat, defaults=defaults)


def attack_batch(attack: CheckedAttack, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Run ``attack`` on (x, y) as evaluation does: eval mode, parameters frozen
    (:func:`advplug.attacks.base.eval_frozen`, so no parameter ``.grad`` is written and
    batch-norm statistics do not move), the model's mode restored afterwards. The result
    is projected onto the attack's threat ball around x and the [0, 1] box (CW and
    DeepFool search unbounded perturbations) and detached."""
    with eval_frozen(model):
        x_adv = attack(x, y)
    attack.perturbation_norms.clear()  # the report's statistic; a training run would pile them up
    return (x + attack.threat.project(x_adv - x, x)).detach()
