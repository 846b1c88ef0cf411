"""Importing RobustBench when only ``pyautoattack`` is installed: the one place that deals with it.

RobustBench 1.1.1's package ``__init__`` imports ``robustbench.eval``, which does
``from autoattack import AutoAttack`` and ``from autoattack.state import EvaluationState``.
The official AutoAttack package (module ``autoattack``) is only installable from GitHub;
PyPI has ``pyautoattack`` 0.2, a packaged fork with module ``pyautoattack`` and a
keyword-only API (``AutoAttack(model, *, attacks, device, eps, norm, seed, version)``, no
``log_path``; ``run_standard_evaluation(x, y, /, *, batch_size, state_path)``, not ``bs``).
So with only PyPI packages, even ``import robustbench.data`` fails.

:func:`import_robustbench` makes RobustBench importable in both worlds:

* official ``autoattack`` installed: nothing to do; :func:`official_autoattack` is True and
  ``advplug benchmark`` calls ``robustbench.eval.benchmark`` itself;
* otherwise: a stand-in module ``autoattack`` is put into ``sys.modules`` before RobustBench
  is imported. Its ``state.EvaluationState`` is pyautoattack's (the same class, same file
  format), and its ``AutoAttack`` raises a clear error when called: ``benchmark()`` would
  pass arguments pyautoattack does not take, so advplug reproduces ``benchmark()``'s steps
  with RobustBench's utilities and pyautoattack instead (see ``protocol.py``). A silent
  argument-translating shim would also work, but a call that reaches it from third-party
  code is better stopped with a message than run under a different API without anyone
  knowing.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings

from ..errors import AdvplugError

STUB_MARK = "__advplug_stand_in__"


def _stub_installed() -> bool:
    return getattr(sys.modules.get("autoattack"), STUB_MARK, False)


def official_autoattack() -> bool:
    """Whether the official ``autoattack`` package (not advplug's stand-in) is importable."""
    if _stub_installed():
        return False
    if "autoattack" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("autoattack") is not None
    except (ImportError, ValueError):
        return False


class _StandInAutoAttack:
    def __init__(self, *args, **kwargs):
        raise AdvplugError(
            "robustbench.eval.benchmark needs the official AutoAttack package "
            "(pip install git+https://github.com/fra31/auto-attack); with PyPI's pyautoattack, "
            "run the same protocol with `advplug benchmark` (advplug.benchmark.run_benchmark)")


def _install_stand_in() -> None:
    from pyautoattack import state as pyaa_state

    module = types.ModuleType("autoattack", "advplug stand-in for the official AutoAttack package")
    state = types.ModuleType("autoattack.state")
    state.EvaluationState = pyaa_state.EvaluationState
    module.AutoAttack = _StandInAutoAttack
    module.state = state
    setattr(module, STUB_MARK, True)
    module.__path__ = []  # a package, so 'autoattack.state' resolves through sys.modules
    sys.modules["autoattack"] = module
    sys.modules["autoattack.state"] = state


def import_robustbench():
    """Import and return the ``robustbench`` package, whichever AutoAttack is installed."""
    if "robustbench.eval" not in sys.modules and not official_autoattack():
        try:
            _install_stand_in()
        except ImportError as err:
            raise AdvplugError("RobustBench benchmarking needs AutoAttack: pip install pyautoattack") from err
    try:
        with warnings.catch_warnings():  # pkg_resources / torch.jit deprecations: nothing a user can act on
            for category in (UserWarning, FutureWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category=category)
            rb = importlib.import_module("robustbench")
            importlib.import_module("robustbench.eval")
    except ImportError as err:
        raise AdvplugError(f"cannot import robustbench ({err}); pip install robustbench "
                           f"'setuptools<81'") from err
    return rb
