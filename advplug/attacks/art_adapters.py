"""Adversarial Robustness Toolbox (ART) attacks behind advplug's attack registry.

Every ART attack of one model runs through ONE ``art.estimators.classification.
PyTorchClassifier``, built on first use and cached per model (weakly: the cache never
keeps a model alive). The classifier has ``clip_values=(0, 1)``, ``CrossEntropyLoss``,
the input shape of the first batch and the number of classes of a forward pass; no
normalization preprocessing, since advplug models normalize inside themselves.

The classifier does not hold the model itself but a weak forwarding proxy, so ART's
``.to(device)``, ``.train()``/``.eval()`` and ``.zero_grad()`` calls cannot move the
model, change its mode or clear its gradients. While an attack runs, the model is in
eval mode with its parameters' ``requires_grad`` off (no parameter gradients are
accumulated); both are restored afterwards.

ART works on numpy: batches go through ``float32`` arrays and come back as tensors on
the input's device and dtype. ART draws its randomness from numpy's global generator;
each call seeds it with ``seed`` (default 0) and restores its state afterwards, so runs
are reproducible without disturbing anyone else's numpy random stream (BoundaryAttack
and HopSkipJump also use an unseeded ``np.random.RandomState()`` internally, so they are
only partly reproducible).

Registered names (namespaced only; the short names are torchattacks' aliases), with
their defaults (ART's own unless noted):

* ``art:fgsm`` -- FastGradientMethod (L2 FGM for the L2 threat); ``num_random_init=0``.
* ``art:pgd`` -- ProjectedGradientDescent: ``steps=20`` (ART ``max_iter``),
  ``alpha=2.5eps/steps`` (ART ``eps_step``), ``num_random_init=1``, ``decay=None``.
* ``art:cw-l2`` -- CarliniL2Method, minimal: ``confidence=0``, ``max_iter=30`` (ART: 10),
  ``learning_rate=0.01``, ``binary_search_steps=10``, ``initial_const=0.01``.
* ``art:cw-linf`` -- CarliniLInfMethod, minimal, Linf only. ART 1.20's implementation has
  NO ε: it is Carlini & Wagner's original minimal L∞ attack (τ shrinks by
  ``decrease_factor`` while the attack still succeeds), run one sample at a time, so it
  is slow; the result is projected onto the threat ball like other minimal attacks.
  Defaults: ``confidence=0``, ``max_iter=10``, ``learning_rate=0.01``,
  ``decrease_factor=0.9``, ``initial_const=1e-5``, ``largest_const=20``, ``const_factor=2``.
* ``art:deepfool`` -- DeepFool (L2), minimal: ``max_iter=100``, ``epsilon=1e-6``
  (the overshoot, not the threat's ε), ``nb_grads=10``.
* ``art:hopskipjump`` -- HopSkipJump, black box, minimal, with the threat's norm:
  ``max_iter=10`` (ART: 50), ``max_eval=1000`` (ART: 10000), ``init_eval=10`` (ART: 100),
  ``init_size=100`` -- a few seconds per image on a CPU instead of minutes.
* ``art:square`` -- SquareAttack, black box, bounded by the threat: ``max_iter=100``,
  ``p_init=0.8``, ``nb_restarts=1``.
* ``art:boundary`` -- BoundaryAttack (untargeted; ART's default is targeted), black box,
  minimal: ``max_iter=100`` (ART: 5000), ``delta=0.01``, ``epsilon=0.01``,
  ``step_adapt=0.667``, ``num_trial=25``, ``sample_size=20``, ``init_size=100``.

All take ``batch_size`` (128; 64 for the decision-based ones) and ``seed`` (0).
"""
from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch

from ..errors import AdvplugError
from ..params import MADRY_STEP, integer, number, resolve_step, step_size
from .base import attack_factory, eval_frozen

#: model -> (classifier, input_shape, nb_classes)
_CLASSIFIERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

ART_NORMS = {"Linf": np.inf, "L2": 2}


class _WeakForward(torch.nn.Module):
    """Forwards to the model without owning it (no submodule, no parameters): the cached
    classifier cannot keep the model alive, move it, switch its mode or clear its grads.
    Inputs are cast to the model's dtype (some ART attacks, e.g. HopSkipJump, hand the
    classifier float64 arrays)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self._ref, self._dtype = weakref.ref(model), dtype

    def forward(self, x):
        model = self._ref()
        if model is None:
            raise AdvplugError("the model behind this ART classifier no longer exists")
        return model(x.to(self._dtype))


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


@contextlib.contextmanager
def _numpy_seed(seed):
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(int(seed))
    try:
        yield
    finally:
        np.random.set_state(state)


def art_classifier(model: torch.nn.Module, x: torch.Tensor):
    """The cached ART ``PyTorchClassifier`` of ``model`` (built on first use from a batch
    ``x``; rebuilt when a batch of another image shape comes or the model has moved to
    another device or dtype)."""
    input_shape = tuple(int(s) for s in x.shape[1:])
    device, dtype = _model_device_dtype(model)
    cached = _CLASSIFIERS.get(model)
    if (cached is not None and cached[1] == input_shape and cached[0].device == device
            and cached[0].model._dtype == dtype):  # .model: our _WeakForward proxy
        return cached[0]

    from art.estimators.classification import PyTorchClassifier

    with eval_frozen(model), torch.no_grad():
        nb_classes = int(model(x[:1].to(device, dtype)).shape[-1])
    # ART picks cuda:<current device> for device_type="gpu": make that the model's device
    cuda = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with cuda:
        classifier = PyTorchClassifier(
            model=_WeakForward(model, dtype), loss=torch.nn.CrossEntropyLoss(), input_shape=input_shape,
            nb_classes=nb_classes, clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu")
    _CLASSIFIERS[model] = (classifier, input_shape, nb_classes)
    return classifier


def _runner(name, model, p, build):
    """``(x, y) -> x_adv`` running ``build(classifier, p)``'s ``generate`` on numpy float32.
    The ART attack object is built once per classifier."""
    seed = p.pop("seed")
    made = {}

    def attack(x, y):
        classifier = art_classifier(model, x)
        if made.get("classifier") is not classifier:
            try:
                made["attack"] = build(classifier, dict(p))
            except ValueError as err:  # ART's own parameter checks
                raise AdvplugError(f"attack {name!r}: {err}") from None
            made["classifier"] = classifier
        x_np = x.detach().cpu().numpy().astype(np.float32)
        y_np = y.detach().cpu().numpy().astype(np.int64)
        with eval_frozen(model), _numpy_seed(seed):
            x_adv = made["attack"].generate(x=x_np, y=y_np)
        return torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(x.device, x.dtype)

    return attack


BATCH = integer(128, low=1, help="samples per ART generate() batch")
SMALL_BATCH = integer(64, low=1, help="samples per ART generate() batch")
SEED = integer(0, low=0, help="seeds numpy's global generator for each call")
POSITIVE = dict(low=0, low_open=True)


# -- white box ---------------------------------------------------------------------------

@attack_factory("art", description="ART FastGradientMethod (FGSM; L2 FGM for the L2 threat)", name="art:fgsm",
                params={"num_random_init": integer(0, low=0), "batch_size": BATCH, "seed": SEED})
def fgsm(model, threat, **p):
    def build(classifier, p):
        from art.attacks.evasion import FastGradientMethod

        return FastGradientMethod(classifier, norm=ART_NORMS[threat.norm], eps=threat.eps, eps_step=threat.eps,
                                  targeted=False, **p)

    return _runner("art:fgsm", model, p, build)


@attack_factory("art", description="ART ProjectedGradientDescent from a random start "
                                   "(steps=20, alpha=2.5·ε/steps)", name="art:pgd",
                params={"steps": integer(20, low=1), "alpha": step_size(MADRY_STEP, help="step size α (ART eps_step)"),
                        "num_random_init": integer(1, low=0), "decay": number(None, low=0),
                        "batch_size": BATCH, "seed": SEED})
def pgd(model, threat, **p):
    steps = p.pop("steps")
    eps_step = resolve_step(p.pop("alpha"), threat.eps, steps)

    def build(classifier, p):
        from art.attacks.evasion import ProjectedGradientDescent

        return ProjectedGradientDescent(classifier, norm=ART_NORMS[threat.norm], eps=threat.eps, eps_step=eps_step,
                                        max_iter=steps, targeted=False, verbose=False, **p)

    return _runner("art:pgd", model, p, build)


@attack_factory("art", norms=("L2", "Linf"), minimal=True, name="art:cw-l2",
                description="ART Carlini-Wagner L2 (minimal perturbation; projected onto the threat ball)",
                params={"confidence": number(0.0, low=0), "max_iter": integer(30, low=1),
                        "learning_rate": number(0.01, **POSITIVE), "binary_search_steps": integer(10, low=1),
                        "initial_const": number(0.01, **POSITIVE), "batch_size": BATCH, "seed": SEED})
def cw_l2(model, threat, **p):
    def build(classifier, p):
        from art.attacks.evasion import CarliniL2Method

        return CarliniL2Method(classifier, targeted=False, verbose=False, **p)

    return _runner("art:cw-l2", model, p, build)


@attack_factory("art", norms=("Linf",), minimal=True, name="art:cw-linf",
                description="ART Carlini-Wagner L∞ (ART 1.20: minimal perturbation, no ε, one sample at a time; "
                            "projected onto the threat ball)",
                params={"confidence": number(0.0, low=0), "max_iter": integer(10, low=1),
                        "learning_rate": number(0.01, **POSITIVE), "decrease_factor": number(0.9, 0, 1, low_open=True,
                                                                                             high_open=True),
                        "initial_const": number(1e-5, **POSITIVE), "largest_const": number(20.0, **POSITIVE),
                        "const_factor": number(2.0, low=1, low_open=True), "batch_size": BATCH, "seed": SEED})
def cw_linf(model, threat, **p):
    def build(classifier, p):
        from art.attacks.evasion import CarliniLInfMethod

        return CarliniLInfMethod(classifier, targeted=False, verbose=False, **p)

    return _runner("art:cw-linf", model, p, build)


@attack_factory("art", norms=("L2", "Linf"), minimal=True, name="art:deepfool",
                description="ART DeepFool (minimal L2 perturbation; projected onto the threat ball)",
                params={"max_iter": integer(100, low=1), "epsilon": number(1e-6, low=0),
                        "nb_grads": integer(10, low=1), "batch_size": BATCH, "seed": SEED})
def deepfool(model, threat, **p):
    def build(classifier, p):
        from art.attacks.evasion import DeepFool

        return DeepFool(classifier, verbose=False, **p)

    return _runner("art:deepfool", model, p, build)


# -- black box ---------------------------------------------------------------------------

@attack_factory("art", norms=("L2", "Linf"), minimal=True, black_box=True, name="art:hopskipjump",
                description="ART HopSkipJump (decision-based, minimal; small defaults: max_iter=10, "
                            "max_eval=1000, init_eval=10)",
                params={"max_iter": integer(10, low=1), "max_eval": integer(1000, low=1),
                        "init_eval": integer(10, low=1), "init_size": integer(100, low=1),
                        "batch_size": SMALL_BATCH, "seed": SEED})
def hopskipjump(model, threat, **p):
    def build(classifier, p):
        from art.attacks.evasion import HopSkipJump

        return HopSkipJump(classifier, targeted=False, norm=ART_NORMS[threat.norm], verbose=False, **p)

    return _runner("art:hopskipjump", model, p, build)


@attack_factory("art", black_box=True, description="ART SquareAttack (score-based, bounded by the threat)",
                name="art:square",
                params={"max_iter": integer(100, low=1), "p_init": number(0.8, 0, 1, low_open=True),
                        "nb_restarts": integer(1, low=1), "batch_size": BATCH, "seed": SEED})
def square(model, threat, **p):
    def build(classifier, p):
        from art.attacks.evasion import SquareAttack

        return SquareAttack(classifier, norm=ART_NORMS[threat.norm], eps=threat.eps, verbose=False, **p)

    return _runner("art:square", model, p, build)


@attack_factory("art", norms=("L2", "Linf"), minimal=True, black_box=True, name="art:boundary",
                description="ART BoundaryAttack (decision-based, untargeted, minimal; max_iter=100)",
                params={"max_iter": integer(100, low=1), "delta": number(0.01, **POSITIVE),
                        "epsilon": number(0.01, **POSITIVE), "step_adapt": number(0.667, 0, 1, low_open=True,
                                                                                   high_open=True),
                        "num_trial": integer(25, low=1), "sample_size": integer(20, low=1),
                        "init_size": integer(100, low=1), "min_epsilon": number(0.0, low=0),
                        "batch_size": SMALL_BATCH, "seed": SEED})
def boundary(model, threat, **p):
    def build(classifier, p):
        from art.attacks.evasion import BoundaryAttack

        return BoundaryAttack(classifier, targeted=False, verbose=False, **p)

    return _runner("art:boundary", model, p, build)


ATTACKS = {"fgsm": fgsm, "pgd": pgd, "cw-l2": cw_l2, "cw-linf": cw_linf, "deepfool": deepfool,
           "hopskipjump": hopskipjump, "square": square, "boundary": boundary}


def register(registry):
    """Add ``art:<name>`` for every ART attack (no aliases: short names are torchattacks')."""
    for short, factory in ATTACKS.items():
        registry.add(f"art:{short}", factory, description=factory.attack_info.description)
