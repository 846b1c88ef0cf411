"""torchattacks behind advplug's attack registry: a few lines per attack, no re-implementation.

Names are namespaced (``torchattacks:pgd``) and the short name (``pgd``) is an alias.
``benchmarks/bench_attacks.py`` on a 2-core CPU (MNIST CNN, 256 images) put ART and
torchattacks within noise of each other (PGD-20: 4.37 s vs 4.77 s; FGSM 0.30 vs 0.36 s);
the aliases stay on torchattacks, which keeps tensors on the device (ART round-trips
through numpy), until a GPU measurement says otherwise.
ε always comes from the threat model (pixel space); step sizes default to 2.5·ε/steps
for PGD-type attacks and ε/steps for the momentum/input-diversity family.
"""
from __future__ import annotations

import torchattacks

from .base import attack_factory, checked_params


def _wrap(attack):
    """torchattacks runs the model in eval mode and restores its mode afterwards."""
    return lambda x, y: attack(x, y)


def _steps_alpha(p, eps, ratio):
    steps = int(p["steps"])
    alpha = p["alpha"] if p["alpha"] is not None else ratio * eps / max(steps, 1)
    return steps, alpha


@attack_factory("torchattacks", norms=("Linf",), description="FGSM (Goodfellow et al.)")
def fgsm(model, threat, **params):
    checked_params("fgsm", params, {})
    return _wrap(torchattacks.FGSM(model, eps=threat.eps))


@attack_factory("torchattacks", description="PGD from a random start (Madry et al.); PGDL2 for L2")
def pgd(model, threat, **params):
    p = checked_params("pgd", params, {"steps": 10, "alpha": None, "random_start": True})
    steps, alpha = _steps_alpha(p, threat.eps, 2.5)
    cls = torchattacks.PGD if threat.norm == "Linf" else torchattacks.PGDL2
    return _wrap(cls(model, eps=threat.eps, alpha=alpha, steps=steps, random_start=p["random_start"]))


@attack_factory("torchattacks", norms=("L2", "Linf"), minimal=True,
                description="Carlini-Wagner L2 (minimal perturbation; projected onto the threat ball)")
def cw(model, threat, **params):
    p = checked_params("cw", params, {"c": 1.0, "kappa": 0.0, "steps": 50, "lr": 0.01})
    return _wrap(torchattacks.CW(model, c=p["c"], kappa=p["kappa"], steps=int(p["steps"]), lr=p["lr"]))


@attack_factory("torchattacks", norms=("L2", "Linf"), minimal=True,
                description="DeepFool (minimal perturbation; projected onto the threat ball)")
def deepfool(model, threat, **params):
    p = checked_params("deepfool", params, {"steps": 50, "overshoot": 0.02})
    attack = torchattacks.DeepFool(model, steps=int(p["steps"]), overshoot=p["overshoot"])
    return _wrap(attack)


def _autoattack_family(cls, name, extra):
    def factory(model, threat, **params):
        p = checked_params(name, params, {"steps": 10, "n_restarts": 1, "seed": 0, **extra})
        return _wrap(cls(model, norm=threat.norm, eps=threat.eps, steps=int(p.pop("steps")),
                         n_restarts=int(p.pop("n_restarts")), seed=int(p.pop("seed")), **p))
    return factory


apgd = attack_factory("torchattacks", description="APGD (Croce & Hein), CE or DLR loss")(
    _autoattack_family(torchattacks.APGD, "apgd", {"loss": "ce"}))
apgdt = attack_factory("torchattacks", description="targeted APGD-DLR")(
    _autoattack_family(torchattacks.APGDT, "apgdt", {"n_classes": 10}))
fab = attack_factory("torchattacks", minimal=True, description="FAB (minimal perturbation)")(
    _autoattack_family(torchattacks.FAB, "fab", {"n_classes": 10, "multi_targeted": False}))


@attack_factory("torchattacks", black_box=True, description="Square attack (score-based black box)")
def square(model, threat, **params):
    p = checked_params("square", params, {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "seed": 0})
    return _wrap(torchattacks.Square(model, norm=threat.norm, eps=threat.eps, n_queries=int(p["n_queries"]),
                                     n_restarts=int(p["n_restarts"]), p_init=p["p_init"], seed=int(p["seed"])))


def _momentum_family(cls, name, extra, ratio=1.0):
    def factory(model, threat, **params):
        p = checked_params(name, params, {"steps": 10, "alpha": None, **extra})
        steps, alpha = _steps_alpha(p, threat.eps, ratio)
        rest = {k: v for k, v in p.items() if k not in ("steps", "alpha")}
        return _wrap(cls(model, eps=threat.eps, alpha=alpha, steps=steps, **rest))
    return factory


mifgsm = attack_factory("torchattacks", norms=("Linf",), description="momentum iterative FGSM")(
    _momentum_family(torchattacks.MIFGSM, "mifgsm", {"decay": 1.0}))
difgsm = attack_factory("torchattacks", norms=("Linf",), description="diverse-input iterative FGSM")(
    _momentum_family(torchattacks.DIFGSM, "difgsm", {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5}))
tifgsm = attack_factory("torchattacks", norms=("Linf",), description="translation-invariant FGSM (3-channel images)")(
    _momentum_family(torchattacks.TIFGSM, "tifgsm", {"decay": 0.0, "resize_rate": 0.9, "diversity_prob": 0.5}))
eotpgd = attack_factory("torchattacks", norms=("Linf",), description="PGD with expectation over transformation")(
    _momentum_family(torchattacks.EOTPGD, "eotpgd", {"eot_iter": 2, "random_start": True}, ratio=2.5))

@attack_factory("torchattacks", norms=("L2",), description="PGD-L2 (torchattacks PGDL2)")
def pgdl2(model, threat, **params):
    return pgd(model, threat, **params)


ATTACKS = {"fgsm": fgsm, "pgd": pgd, "cw": cw, "deepfool": deepfool, "apgd": apgd, "apgdt": apgdt,
           "fab": fab, "square": square, "mifgsm": mifgsm, "difgsm": difgsm, "tifgsm": tifgsm,
           "eotpgd": eotpgd, "pgdl2": pgdl2}


def register(registry):
    for short, factory in ATTACKS.items():
        registry.add(f"torchattacks:{short}", factory, description=factory.attack_info.description,
                     aliases=(short,))
