"""The run-time check behind the static one: the first forward of a transformed model
runs under a ``TorchFunctionMode`` that sees every ``relu`` call (``F.relu``,
``torch.relu``, ``Tensor.relu``, their in-place forms, and ``nn.ReLU`` modules, which call
``F.relu``). A call made by anything but this plugin's own activations is a ReLU the
transform could not replace -- e.g. inside a helper function of an untraceable module,
or inside a ``torch.nn`` layer such as ``TransformerEncoderLayer`` -- and the forward
ends with one ``AdvplugError`` naming the module and the line (and so does every later
forward of that model). After a clean first forward, later ones run at full speed,
unwatched."""
from __future__ import annotations

import os
import sys

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from advplug.errors import AdvplugError

from .activations import OWN_MODULES

RELU_NAMES = ("relu", "relu_")
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _locate(names: dict):
    """(module name, class name, call site) of the relu call being made, from the Python
    stack; None if one of this plugin's activations makes it."""
    frame = sys._getframe(2)
    site = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if site is None and not filename.startswith(_TORCH_DIR):
            site = f"{filename}:{frame.f_lineno}"
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module):
            if isinstance(owner, OWN_MODULES):
                return None
            name = names.get(id(owner))
            if name is not None:
                return name, type(owner).__name__, site
        frame = frame.f_back
    return None


class _ReluWatch(TorchFunctionMode):
    def __init__(self, names: dict):
        super().__init__()
        self.names = names
        self.hits: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (getattr(func, "__name__", None) in RELU_NAMES and len(self.hits) < 5
                and not any(isinstance(a, fx.Proxy) for a in args)):  # fx tracing, not running
            where = _locate(self.names)
            if where is not None and where not in self.hits:
                self.hits.append(where)
        return func(*args, **(kwargs or {}))


class ReluCheck:
    """Forward pre-hook and always-called forward hook on the transformed model's root."""

    def __init__(self, transform: str):
        self.transform = transform
        self.done = False
        self.failure: str | None = None  # once a leftover ReLU was seen, every forward fails
        self._depth = 0
        self._watch = None

    def before(self, module, args, kwargs):
        if self.failure:
            raise AdvplugError(self.failure)
        if self.done:
            return
        self._depth += 1
        if self._depth == 1:
            names = {id(m): name or "<root>" for name, m in module.named_modules()}
            self._watch = _ReluWatch(names)
            self._watch.__enter__()

    def after(self, module, args, output):
        if self.done or self._watch is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        watch, self._watch = self._watch, None
        watch.__exit__(None, None, None)
        if output is None:  # the forward raised (or returns nothing): check the next one
            return
        self.done = True
        if watch.hits:
            where = "; ".join(f"module {name!r} ({cls}) at {site}" for name, cls, site in watch.hits)
            self.failure = (
                f"{self.transform}: a ReLU that the transform could not replace ran in the model's "
                f"forward: {where}. Use an nn.ReLU module (or the model's activation argument) "
                f"there, or make that module traceable by torch.fx, so it can be swapped")
            raise AdvplugError(self.failure)
