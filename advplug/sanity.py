"""Sanity checks against gradient masking, after Carlini et al. (2019), "On Evaluating
Adversarial Robustness": a failed check does not prove masking, but numbers that fail
one should not be reported as robustness."""
from __future__ import annotations

import math

from .attacks.base import build_attack
from .testset import TestSet, predictions_correct
from .threat import Threat

TOLERANCE = 1.0  # accuracy points of slack for sampling noise


def _acc(model, test, spec, threat, registry, device, batch_size):
    import torch

    torch.manual_seed(0)
    attack = build_attack(registry, spec, model, threat)
    return 100.0 * predictions_correct(model, test, batch_size, device, attack).float().mean().item()


def _non_increasing(values):
    return all(b <= a + TOLERANCE for a, b in zip(values, values[1:]))


def run_sanity_checks(model, test: TestSet, threat: Threat, registry, device="cpu", samples=200,
                      batch_size=256, square_queries=1000) -> list[dict]:
    model = model.to(device).eval()
    small = TestSet(test.dataset, test.x[:samples], test.y[:samples], test.indices[:samples], test.seed)
    checks = []

    def acc(spec, t=threat):
        return _acc(model, small, spec, t, registry, device, batch_size)

    factors = (0.25, 0.5, 1.0, 2.0)
    eps_values = [min(threat.eps * f, 1.0) if threat.norm == "Linf" else threat.eps * f for f in factors]
    sweep = [acc("pgd:steps=20", Threat(threat.norm, e)) for e in eps_values]
    checks.append({"check": "accuracy non-increasing as ε grows (PGD-20)",
                   "passed": _non_increasing(sweep), "values": dict(zip(map(str, eps_values), sweep))})

    steps = (1, 5, 20, 50)
    by_steps = [acc(f"pgd:steps={k}") for k in steps]
    checks.append({"check": "accuracy non-increasing as PGD steps grow",
                   "passed": _non_increasing(by_steps), "values": dict(zip(map(str, steps), by_steps))})

    side = math.sqrt(test.x[0].numel())
    big = Threat(threat.norm, 1.0 if threat.norm == "Linf" else side)
    at_big = acc("pgd:steps=50", big)
    checks.append({"check": f"near 0% accuracy at a large ε ({big})", "passed": at_big <= 5.0,
                   "values": {"pgd50_acc": at_big}})

    white = by_steps[steps.index(20)]
    black = acc(f"square:n_queries={square_queries}")
    checks.append({"check": "black-box Square not stronger than white-box PGD-20",
                   "passed": black >= white - TOLERANCE, "values": {"square_acc": black, "pgd20_acc": white}})
    for c in checks:
        c["samples"] = len(small.y)
        if not c["passed"]:
            c["warning"] = f"possible gradient masking: failed '{c['check']}' {c['values']}"
    return checks
