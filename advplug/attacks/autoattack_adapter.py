"""AutoAttack (Croce & Hein) through the ``pyautoattack`` package, registered as ``autoattack``.

Which package: advplug uses ``pyautoattack`` 0.2 (module ``pyautoattack``), a packaged
fork of the reference code. Its API differs from the official ``autoattack`` package
(module ``autoattack``, installed from GitHub):

* official:     ``AutoAttack(model, norm="Linf", eps=.3, seed=None, verbose=True,
  attacks_to_run=[], version="standard", device="cuda", log_path=None)`` and
  ``run_standard_evaluation(x, y, bs=250, return_labels=False)`` -> ``x_adv``;
* pyautoattack: ``AutoAttack(model, *, attacks=None, device="cpu", eps=.3, norm="Linf",
  seed=None, version="standard")`` (keyword-only; no ``verbose``/``log_path``: it logs to
  the ``"auto-attack"`` logger) and ``run_standard_evaluation(x, y, /, *,
  batch_size=250, state_path=None)`` -> ``(x_adv, y_adv)``.

Other code that needs the AutoAttack module (e.g. a RobustBench compatibility layer)
should go through :func:`autoattack_module`, so that API differences are solved in one
place.

Parameters of ``autoattack`` (all optional):

* ``version``: ``standard`` (default: APGD-CE, APGD-T, FAB-T, Square), ``plus``, ``rand``
  or ``custom``;
* ``attacks``: with ``version=custom`` only, the attacks to run joined by ``+`` (``,``
  separates parameters on the command line), e.g. ``attacks=apgd-ce+apgd-t``; known:
  apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t;
* ``seed``: 0 (pyautoattack seeds every attack with it; ``None`` means the clock);
* ``batch_size``: 256;
* ``verbose``: False -- pyautoattack's log (and any print) is silenced unless True.

The AutoAttack object is built once per factory call; every ``attack(x, y)`` runs
``run_standard_evaluation`` on the batch. While it runs the model is in eval mode with
its parameters' ``requires_grad`` off (FAB calls ``backward``, which would otherwise fill
parameter gradients); both are restored afterwards. pyautoattack reseeds torch's global
generator (``torch.manual_seed(seed)``) inside every attack, and its dynamic-defense
check replaces the trace function (``sys.settrace``) and then clears it: the adapter
restores torch's generator state and the previous trace function (so coverage and
debuggers keep working) after each call.
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys

import torch

from ..errors import AdvplugError
from ..params import choice, flag, integer, text
from .base import attack_factory, eval_frozen

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
LOGGER_NAME = "auto-attack"


def autoattack_module():
    """The AutoAttack implementation advplug uses: the ``pyautoattack`` module."""
    try:
        import pyautoattack
    except ImportError as err:
        raise AdvplugError("AutoAttack needs the 'pyautoattack' package: pip install pyautoattack") from err
    return pyautoattack


def parse_attacks(value) -> list[str] | None:
    """``"apgd-ce+apgd-t"`` (or a list) -> ``["apgd-ce", "apgd-t"]``; unknown names are an error."""
    if value is None:
        return None
    pieces = value if isinstance(value, (list, tuple)) else str(value).split("+")
    names = [str(piece).strip().lower() for piece in pieces if str(piece).strip()]
    unknown = [name for name in names if name not in ATTACK_NAMES]
    if unknown or not names:
        raise AdvplugError(f"autoattack: unknown attack(s) {', '.join(map(repr, unknown)) or repr(value)}; "
                           f"write attacks=NAME+NAME with names from: {', '.join(ATTACK_NAMES)}")
    return names


def _model_device(model) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Silence pyautoattack's logger and stdout, or (verbose) show its log on stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    disabled, level = logger.disabled, logger.level
    handler = None
    if verbose:
        logger.disabled = False
        logger.setLevel(logging.DEBUG)
        if not logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("autoattack: %(message)s"))
            logger.addHandler(handler)
        try:
            yield
        finally:
            if handler is not None:
                logger.removeHandler(handler)
            logger.disabled = disabled
            logger.setLevel(level)
        return
    logger.disabled = True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.disabled = disabled


@contextlib.contextmanager
def isolated_rng_and_trace(device: torch.device):
    """Keep torch's global generator and the trace function as they were."""
    trace = sys.gettrace()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        sys.settrace(trace)


@attack_factory("pyautoattack", norms=("Linf", "L2"), name="autoattack",
                description="AutoAttack (pyautoattack): version=standard|plus|rand|custom, "
                            "attacks=apgd-ce+apgd-t for custom",
                params={"version": choice("standard", VERSIONS), "attacks": text(None, help="custom only: a+b"),
                        "seed": integer(0, low=0, optional=True, help="none: the clock"),
                        "batch_size": integer(256, low=1), "verbose": flag(False)})
def autoattack(model, threat, **p):
    version = p["version"]
    attacks = parse_attacks(p["attacks"])
    if version == "custom" and attacks is None:
        raise AdvplugError("autoattack: version=custom needs attacks=NAME+NAME "
                           f"(names from: {', '.join(ATTACK_NAMES)})")
    if version != "custom" and attacks is not None:
        raise AdvplugError(f"autoattack: attacks= is only used with version=custom (version {version!r} "
                           f"runs a fixed set)")
    seed, batch_size, verbose = p["seed"], p["batch_size"], p["verbose"]

    device = _model_device(model)
    module = autoattack_module()
    with _quiet(verbose):
        adversary = module.AutoAttack(model, attacks=attacks, device=device, eps=threat.eps, norm=threat.norm,
                                      seed=seed, version=version)
    adversary.verbose = verbose

    def attack(x, y):
        with eval_frozen(model), _quiet(verbose), isolated_rng_and_trace(device):
            x_adv, _ = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
        return x_adv.detach().to(x.device, x.dtype)

    attack.adversary = adversary  # the pyautoattack object, for inspection
    return attack


def register(registry):
    registry.add("autoattack", autoattack, description=autoattack.attack_info.description)
