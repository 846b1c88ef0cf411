"""Clean and PGD accuracy of a model on fixed samples: the per-epoch catastrophic-
overfitting monitor and the end-of-run test evaluation. The attack is the registry's
``pgd`` (torchattacks' PGD for Linf, PGDL2 for L2; α = 2.5·ε/steps, random start), built
and output-checked like every evaluation attack (:class:`advplug.attacks.base.CheckedAttack`),
run in eval mode on fresh adversarial examples."""
from __future__ import annotations

import torch

from .threat import Threat

#: the registered attack the monitor and the final test evaluation run
MONITOR_ATTACK = "pgd"


def pgd_attack(model, threat: Threat, steps: int, registry=None):
    """The registry's PGD (``pgd:steps=N``, α by Madry et al.'s rule), output-checked."""
    from .attacks.base import build_attack
    from .params import Spec

    if registry is None:
        from .host import get_host

        registry = get_host().registry
    return build_attack(registry, Spec(MONITOR_ATTACK, {"steps": steps}), model, threat)


def clean_and_pgd_accuracy(model, images, labels, threat: Threat, steps: int, batch_size: int = 256,
                           device="cpu", registry=None) -> tuple[float, float | None]:
    """(clean accuracy, PGD-``steps`` accuracy) in percent; images uint8 or float [0, 1].
    ``steps=0`` skips the attack. The model's train/eval mode is restored afterwards.
    Non-finite logits are one error (counted on the device, read once at the end)."""
    was_training = model.training
    model.eval()
    attack = pgd_attack(model, threat, steps, registry) if steps and threat.eps > 0 else None
    clean = robust = nonfinite = torch.zeros((), device=device)
    try:
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size].to(device)
            x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
            y = labels[start:start + batch_size].to(device)
            with torch.no_grad():
                logits = model(x)
            clean = clean + (logits.argmax(1) == y).sum()
            nonfinite = nonfinite + (~torch.isfinite(logits).all(1)).sum()
            if attack is not None:
                x_adv = attack(x, y)
                with torch.no_grad():
                    logits = model(x_adv)
                robust = robust + (logits.argmax(1) == y).sum()
                nonfinite = nonfinite + (~torch.isfinite(logits).all(1)).sum()
    finally:
        model.train(was_training)
    if nonfinite.item():
        from .evaluation import nonfinite_logits_error

        raise nonfinite_logits_error(f"{len(labels)} samples, clean{' and PGD' if attack is not None else ''}",
                                     int(nonfinite.item()), len(labels) * (2 if attack is not None else 1))
    n = max(len(labels), 1)
    clean_acc = 100.0 * clean.item() / n
    robust_acc = 100.0 * robust.item() / n if attack is not None else (clean_acc if steps else None)
    return clean_acc, robust_acc
