"""advplug: a pluggy host for adversarial training and honest robustness evaluation.

Python API (the CLI is a thin layer over it)::

    import advplug

    run = advplug.train({"dataset": "mnist", "trainer": "pgd-at", "eps": 0.3, "out": "runs/pgd"})
    model = advplug.load_model("runs/pgd/model.pt")
    pgd = advplug.attack(model, "pgd:steps=20", eps=0.3)     # or dataset="mnist": its default ε
    x_adv = pgd(x, y)                       # inside the ε-ball and [0, 1], checked; model restored
    res = advplug.evaluate("runs/pgd/model.pt", attacks="fgsm,pgd:steps=20", test_subset=1000)
    res["results"]["pgd/model.pt"]["worst_case_acc"]          # the numbers `advplug eval` gives
    advplug.registry().names("trainers")

Plugin authors find what they need here too: ``hookimpl``, ``Trainer``, ``StepOutput``,
``attack_factory``, ``Threat``, ``DatasetSpec``, ``AdvplugError`` and the parameter
schema helpers ``Param``, ``integer``, ``number``, ``flag``, ``choice``, ``text``,
``step_size``, ``resolve_step``, ``MADRY_STEP``, ``spec_list``, ``takes``, ``check_params``
and ``Spec``. They are imported on first use: ``import advplug`` does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import AdvplugError
from .hookspecs import hookimpl

__version__ = "0.1.0"

#: public names imported on first access: name -> "module:attribute" (or "module": the module)
_LAZY = {
    "attack": "advplug.api:attack",
    "evaluate": "advplug.evaluation:evaluate",
    "Trainer": "advplug.trainers.base:Trainer",
    "StepOutput": "advplug.trainers.base:StepOutput",
    "attack_factory": "advplug.attacks.base:attack_factory",
    "Threat": "advplug.threat:Threat",
    "DatasetSpec": "advplug.data:DatasetSpec",
    "Param": "advplug.params:Param",
    "integer": "advplug.params:integer",
    "number": "advplug.params:number",
    "flag": "advplug.params:flag",
    "choice": "advplug.params:choice",
    "text": "advplug.params:text",
    "check_params": "advplug.params:check_params",
    "step_size": "advplug.params:step_size",
    "resolve_step": "advplug.params:resolve_step",
    "MADRY_STEP": "advplug.params:MADRY_STEP",
    "spec_list": "advplug.params:spec_list",
    "takes": "advplug.params:takes",
    "Spec": "advplug.params:Spec",
}

if TYPE_CHECKING:  # what static analysers and editors see; at run time, __getattr__ below
    from .api import attack
    from .evaluation import evaluate
    from .attacks.base import attack_factory
    from .data import DatasetSpec
    from .params import (MADRY_STEP, Param, Spec, check_params, choice, flag, integer, number, resolve_step,
                         spec_list, step_size, takes, text)
    from .threat import Threat
    from .trainers.base import StepOutput, Trainer


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def registry():
    """Everything the installed plugins registered (``registry().get(kind, name)``)."""
    from .host import get_host

    return get_host().registry


def train(config=None, *, resume=None, overwrite=False, **overrides):
    """Train a model; see :func:`advplug.engine.train`. Returns the finished Run. An output
    directory that already holds a run is refused unless ``overwrite=True``."""
    from .engine import train as _train

    return _train(config, resume=resume, overwrite=overwrite, **overrides)


def load_model(path, device="cpu"):
    """A model saved by advplug (``model.pt`` or a checkpoint), rebuilt, in eval mode."""
    from .modelio import load_model as _load

    return _load(path, device=device)


__all__ = ["AdvplugError", "DatasetSpec", "Param", "StepOutput", "Threat", "Trainer", "__version__", "attack",
           "attack_factory", "check_params", "choice", "evaluate", "flag", "hookimpl", "integer", "load_model",
           "number", "registry", "Spec", "spec_list", "step_size", "takes", "text", "train", "resolve_step", "MADRY_STEP"]
