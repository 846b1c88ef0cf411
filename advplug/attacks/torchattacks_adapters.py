"""torchattacks behind advplug's attack registry: a few lines per attack, no re-implementation.

Names are namespaced (``torchattacks:pgd``) and the short name (``pgd``) is an alias.
``benchmarks/bench_attacks.py`` on a 2-core CPU (MNIST CNN, 256 images) put ART and
torchattacks within noise of each other (PGD-20: 4.37 s vs 4.77 s; FGSM 0.30 vs 0.36 s);
the aliases stay on torchattacks, which keeps tensors on the device (ART round-trips
through numpy), until a GPU measurement says otherwise.
ε always comes from the threat model (pixel space); the step size ``alpha`` defaults to
2.5·ε/steps (``2.5eps/steps``) for PGD-type attacks and ε/steps for the
momentum/input-diversity family (see :func:`advplug.params.step_size`).
"""
from __future__ import annotations

import torchattacks

from ..params import MADRY_STEP, choice, flag, integer, number, resolve_step, step_size
from .base import attack_factory

STEPS = integer(10, low=1, help="iterations")
ALPHA = step_size(MADRY_STEP, help="step size α (pixel space, or a multiple of ε)")
SEED = integer(0, low=0, help="seed of the attack's own generator")
N_RESTARTS = integer(1, low=1, help="random restarts")
N_CLASSES = integer(10, low=2, help="classes of the model's output")


def _wrap(attack):
    """torchattacks runs the model in eval mode and restores its mode afterwards."""
    return lambda x, y: attack(x, y)


@attack_factory("torchattacks", norms=("Linf",), description="FGSM (Goodfellow et al.)", params={})
def fgsm(model, threat):
    return _wrap(torchattacks.FGSM(model, eps=threat.eps))


@attack_factory("torchattacks", description="PGD from a random start (Madry et al.); PGDL2 for L2",
                params={"steps": STEPS, "alpha": ALPHA, "random_start": flag(True)})
def pgd(model, threat, **p):
    cls = torchattacks.PGD if threat.norm == "Linf" else torchattacks.PGDL2
    return _wrap(cls(model, eps=threat.eps, alpha=resolve_step(p["alpha"], threat.eps, p["steps"]), steps=p["steps"],
                     random_start=p["random_start"]))


@attack_factory("torchattacks", norms=("L2", "Linf"), minimal=True,
                description="Carlini-Wagner L2 (minimal perturbation; projected onto the threat ball)",
                params={"c": number(1.0, low=0, low_open=True), "kappa": number(0.0, low=0),
                        "steps": integer(50, low=1), "lr": number(0.01, low=0, low_open=True)})
def cw(model, threat, **p):
    return _wrap(torchattacks.CW(model, c=p["c"], kappa=p["kappa"], steps=p["steps"], lr=p["lr"]))


@attack_factory("torchattacks", norms=("L2", "Linf"), minimal=True,
                description="DeepFool (minimal perturbation; projected onto the threat ball)",
                params={"steps": integer(50, low=1), "overshoot": number(0.02, low=0)})
def deepfool(model, threat, **p):
    return _wrap(torchattacks.DeepFool(model, steps=p["steps"], overshoot=p["overshoot"]))


def _autoattack_family(cls, name, description, extra, minimal=False):
    @attack_factory("torchattacks", minimal=minimal, description=description, name=name,
                    params={"steps": STEPS, "n_restarts": N_RESTARTS, "seed": SEED, **extra})
    def factory(model, threat, **p):
        return _wrap(cls(model, norm=threat.norm, eps=threat.eps, **p))
    return factory


apgd = _autoattack_family(torchattacks.APGD, "apgd", "APGD (Croce & Hein), CE or DLR loss",
                          {"loss": choice("ce", ("ce", "dlr"))})
apgdt = _autoattack_family(torchattacks.APGDT, "apgdt", "targeted APGD-DLR", {"n_classes": N_CLASSES})
fab = _autoattack_family(torchattacks.FAB, "fab", "FAB (minimal perturbation)",
                         {"n_classes": N_CLASSES, "multi_targeted": flag(False)}, minimal=True)


@attack_factory("torchattacks", black_box=True, description="Square attack (score-based black box)",
                params={"n_queries": integer(5000, low=1), "n_restarts": N_RESTARTS,
                        "p_init": number(0.8, 0, 1, low_open=True), "seed": SEED})
def square(model, threat, **p):
    return _wrap(torchattacks.Square(model, norm=threat.norm, eps=threat.eps, **p))


def _momentum_family(cls, name, description, extra, alpha="1eps/steps"):
    @attack_factory("torchattacks", norms=("Linf",), description=description, name=name,
                    params={"steps": STEPS, "alpha": step_size(alpha, help=ALPHA.help), **extra})
    def factory(model, threat, **p):
        alpha = resolve_step(p["alpha"], threat.eps, p["steps"])
        rest = {k: v for k, v in p.items() if k not in ("steps", "alpha")}
        return _wrap(cls(model, eps=threat.eps, alpha=alpha, steps=p["steps"], **rest))
    return factory


DECAY = number(0.0, low=0, help="momentum decay")
DIVERSITY = {"resize_rate": number(0.9, low=0, low_open=True), "diversity_prob": number(0.5, 0, 1)}
mifgsm = _momentum_family(torchattacks.MIFGSM, "mifgsm", "momentum iterative FGSM",
                          {"decay": number(1.0, low=0)})
difgsm = _momentum_family(torchattacks.DIFGSM, "difgsm", "diverse-input iterative FGSM",
                          {"decay": DECAY, **DIVERSITY})
tifgsm = _momentum_family(torchattacks.TIFGSM, "tifgsm", "translation-invariant FGSM (3-channel images)",
                          {"decay": DECAY, **DIVERSITY})
eotpgd = _momentum_family(torchattacks.EOTPGD, "eotpgd", "PGD with expectation over transformation",
                          {"eot_iter": integer(2, low=1), "random_start": flag(True)}, alpha=MADRY_STEP)


@attack_factory("torchattacks", norms=("L2",), description="PGD-L2 (torchattacks PGDL2)",
                params=pgd.attack_info.params)
def pgdl2(model, threat, **p):
    return pgd(model, threat, **p)


ATTACKS = {"fgsm": fgsm, "pgd": pgd, "cw": cw, "deepfool": deepfool, "apgd": apgd, "apgdt": apgdt,
           "fab": fab, "square": square, "mifgsm": mifgsm, "difgsm": difgsm, "tifgsm": tifgsm,
           "eotpgd": eotpgd, "pgdl2": pgdl2}


def register(registry):
    for short, factory in ATTACKS.items():
        registry.add(f"torchattacks:{short}", factory, description=factory.attack_info.description,
                     aliases=(short,))
