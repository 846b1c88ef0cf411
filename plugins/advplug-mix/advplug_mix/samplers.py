"""The samplers. Each follows the contract in ``advplug_register_samplers``
(``advplug/hookspecs.py``): built from its parameters, bound to the run, then asked for
one :class:`~advplug.samplers.SampledBatch` per batch."""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

from advplug.attacks.base import eval_frozen
from advplug.data import to_device
from advplug.errors import AdvplugError
from advplug.params import Param, check_params, integer, number, spec_list
from advplug.samplers import SampledBatch, attack_batch, batch_generator, training_attack
from advplug.threat import Threat

DEFAULT_ATTACKS = "fgsm,pgd,cw,deepfool"
#: training settings of the pool's attacks where a spec sets none (canonical registry names):
#: PGD 10 steps (α = 2.5·ε/10, random start), CW-L2 30 Adam steps (c = 1, lr 0.01), DeepFool
#: 50 steps (overshoot 0.02). FGSM has no parameters.
TRAINING_DEFAULTS = {"torchattacks:pgd": {"steps": 10}, "torchattacks:cw": {"steps": 30},
                     "torchattacks:deepfool": {"steps": 50}}


def parse_ratio(value) -> tuple[Fraction, Fraction]:
    """``"50:50"``, ``"30:70"``, ``"1:3"``, ``(30, 70)`` -> (clean, adversarial) as Fractions."""
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        clean, adv = (Fraction(str(p).strip()) for p in parts)
    except (ValueError, ZeroDivisionError):
        clean = adv = None
    if clean is None or clean < 0 or adv < 0 or clean + adv == 0:
        raise AdvplugError(f"sampler 'mixed-ratio': ratio {value!r} is not clean:adversarial; write two "
                           f"non-negative numbers, not both 0, e.g. ratio=50:50 or ratio=30:70")
    return clean, adv


def clean_count(batch_size: int, clean: Fraction, adv: Fraction) -> int:
    """Clean samples in a batch: the nearest integer to B·c/(c+a), halves rounded up
    (⌊B·c/(c+a) + ½⌋, in exact arithmetic), so exactly B·c/(c+a) when that is an integer."""
    return math.floor(batch_size * clean / (clean + adv) + Fraction(1, 2))


def split_counts(n: int, k: int, step: int) -> list[int]:
    """``n`` samples over ``k`` attacks as equally as possible (counts differ by at most 1).
    The ``n mod k`` extra samples go to attacks ``(step·r + j) mod k``, j < r = n mod k:
    the extras rotate, so over any k consecutive equal-sized batches every attack gets the
    same number of samples."""
    base, rem = divmod(n, k)
    counts = [base] * k
    for j in range(rem):
        counts[(step * rem + j) % k] += 1
    return counts


class MixedRatioSampler:
    """``mixed-ratio``: per batch, ``ratio`` clean:adversarial; the adversarial part split
    equally over an attack pool from the registry; assignment from (seed, step)."""

    name = "mixed-ratio"
    param_schema = {"ratio": Param("50:50", help="clean:adversarial share of each batch: 30:70 (or, from "
                                                 "Python, a pair)"),
                    "attacks": spec_list(DEFAULT_ATTACKS, help="the attack pool, from the registry; the adversarial "
                                                               "part is split equally over it")}

    def __init__(self, **params):
        self.params = check_params(f"sampler {self.name!r}", params, self.param_schema)
        self.clean, self.adv = parse_ratio(self.params["ratio"])
        self.specs = self.params["attacks"]
        self.sources = ("clean", *map(str, self.specs))
        self.ctx = None

    def bind(self, ctx) -> None:
        self.ctx = ctx
        self.attacks = [training_attack(ctx, spec, defaults=TRAINING_DEFAULTS) for spec in self.specs]

    def assignment(self, batch_size: int, step: int) -> torch.Tensor:
        """Per sample: 0 clean, j = 1..k the j-th attack of the pool (int64, CPU). A
        permutation from :func:`advplug.samplers.batch_generator` puts ``clean_count``
        samples first, then each attack's ``split_counts`` share."""
        n_clean = clean_count(batch_size, self.clean, self.adv)
        counts = torch.tensor([n_clean, *split_counts(batch_size - n_clean, len(self.specs), step)])
        perm = torch.randperm(batch_size, generator=batch_generator(self.ctx.seed, step))
        source = torch.empty(batch_size, dtype=torch.long)
        source[perm] = torch.repeat_interleave(torch.arange(len(counts)), counts)
        return source

    def sample(self, x, y, step) -> SampledBatch:
        source = self.assignment(x.shape[0], step)
        # the rows of each source, ascending within each (as (source == j).nonzero() gives them),
        # and their counts, from the CPU assignment: the device is never read; the assignment and
        # the rows reach it in one pinned, non-blocking copy
        counts = torch.bincount(source, minlength=len(self.sources)).tolist()
        rows = torch.sort(source, stable=True).indices
        source, rows = to_device(torch.cat([source, rows]), x.device).split(x.shape[0])
        x_train = x.detach().clone()
        start = counts[0]
        for j, attack in enumerate(self.attacks, start=1):
            idx = rows[start:start + counts[j]]
            start += counts[j]
            if counts[j]:
                x_train[idx] = attack_batch(attack, self.ctx.model, x[idx], y[idx])
        return SampledBatch(x_train, source > 0, source, self.sources)


class MATSampler:
    """``mat-rand`` / ``mat-max``: mixed adversarial training over Linf and L2 PGD."""

    param_schema = {"linf_eps": number(None, 0, 1, help="Linf radius (pixel space); none: the run's ε if Linf"),
                    "l2_eps": number(None, low=0, help="L2 radius; none: the run's ε if L2"),
                    "steps": integer(10, low=1, help="PGD steps of both attacks (α = 2.5·ε/steps)")}
    sources = ("Linf", "L2")

    def __init__(self, name: str, **params):
        self.name = name
        self.params = check_params(f"sampler {name!r}", params, self.param_schema)
        self.ctx = None

    def bind(self, ctx) -> None:
        self.ctx = ctx
        self.threats = tuple(self._threat(ctx, norm) for norm in self.sources)
        steps = int(self.params["steps"])
        self.attacks = (training_attack(ctx, f"pgd:steps={steps}", self.threats[0]),
                        training_attack(ctx, f"pgdl2:steps={steps}", self.threats[1]))

    def _threat(self, ctx, norm: str) -> Threat:
        key = "linf_eps" if norm == "Linf" else "l2_eps"
        if self.params[key] is not None:
            return Threat(norm, self.params[key])
        if ctx.threat.norm == norm:
            return ctx.threat
        raise AdvplugError(
            f"sampler {self.name!r} needs {key}: the run's threat is {ctx.threat}, so the {norm} radius has "
            f"no default; e.g. --sampler {self.name}:{key}={'0.3' if norm == 'Linf' else '2.0'} "
            f"(MNIST, Tramèr & Boneh 2019: linf_eps=0.3, l2_eps=2.0)")

    def choose_norm(self, step: int) -> int:
        """mat-rand: 0 (Linf) or 1 (L2), uniformly from (seed, step)."""
        return int(torch.randint(2, (1,), generator=batch_generator(self.ctx.seed, step)))

    def sample(self, x, y, step) -> SampledBatch:
        model, n = self.ctx.model, x.shape[0]
        if self.name == "mat-rand":
            norm = self.choose_norm(step)
            x_adv = attack_batch(self.attacks[norm], model, x, y)
            source = torch.full((n,), norm, dtype=torch.long, device=x.device)
        else:
            x_linf, x_l2 = (attack_batch(attack, model, x, y) for attack in self.attacks)
            with eval_frozen(model), torch.no_grad():  # the losses the attacks maximized, in their mode
                higher_l2 = (F.cross_entropy(model(x_l2), y, reduction="none")
                             > F.cross_entropy(model(x_linf), y, reduction="none"))
            x_adv = torch.where(higher_l2.view(-1, *[1] * (x.dim() - 1)), x_l2, x_linf)
            source = higher_l2.long()
        return SampledBatch(x_adv, torch.ones(n, dtype=torch.bool, device=x.device), source, self.sources)
