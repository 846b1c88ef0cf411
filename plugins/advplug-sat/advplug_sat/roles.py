"""Whose gradient is this? The attacker's or the optimizer's.

A custom autograd Function cannot see, inside ``backward``, whether the engine is
computing ∂loss/∂input (the attacker) or ∂loss/∂parameters (the optimizer). So the
decision is made when the graph is built, at the forward pass of the transformed model:

    A forward of the transformed model is the **attacker's** when grad mode is on and at
    least one tensor among its inputs (positional or keyword, looked into lists, tuples
    and dicts) requires grad. Every other forward is the **optimizer's** ("train").

A :func:`gradient_role` block overrides the rule for the forwards inside it. Activations
called outside any forward of a transformed model (a submodule called on its own) count
as "train".

Why this rule holds in advplug: every gradient-based attacker differentiates with
respect to its input, so that input requires grad -- advplug's inner maximization
(``trainers/base.py``: ``input_gradient`` runs ``model(x + δ)`` with δ requiring grad),
the monitor's and the evaluation's torchattacks/AutoAttack/ART attacks (whether or not
``eval_frozen`` turned the parameters' gradients off), FGSM-SDI's generator (its η comes
out of the generator and requires grad). The optimizer's forward is run on a detached
adversarial batch (``model(x + delta)`` after ``perturbation`` returned ``delta.detach()``)
or on clean data, which do not require grad.

Where one backward serves both, the rule calls it the attacker's: free-AT
(``free-at``: one ``loss.backward()`` at ``x + δ`` with δ requiring grad fills both δ's
and the parameters' gradients) and GradAlign's double backpropagation (``fgsm-ga``:
the regularizer's parameter gradient is the derivative of an input gradient). A trainer
that wants otherwise wraps its forward in ``gradient_role("train")``.
"""
from __future__ import annotations

import contextlib
import threading

import torch

ROLES = ("attack", "train")

_state = threading.local()


def _stack() -> list:
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    return stack


def _overrides() -> list:
    stack = getattr(_state, "overrides", None)
    if stack is None:
        stack = _state.overrides = []
    return stack


def current_role() -> str:
    """'attack' or 'train': the role of the innermost forward of a transformed model now
    running in this thread (see the module's docstring for the rule)."""
    overrides = _overrides()
    if overrides:
        return overrides[-1]
    stack = _stack()
    return stack[-1] if stack else "train"


@contextlib.contextmanager
def gradient_role(role: str):
    """Forwards inside the block build the graph for ``role`` ('attack' or 'train'),
    whatever their inputs: for trainers whose backward passes the rule misjudges."""
    if role not in ROLES:
        from advplug.errors import AdvplugError

        raise AdvplugError(f"gradient_role({role!r}): use 'attack' or 'train'")
    _overrides().append(role)
    try:
        yield
    finally:
        _overrides().pop()


def _any_requires_grad(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad
    if isinstance(obj, (list, tuple)):
        return any(_any_requires_grad(item) for item in obj)
    if isinstance(obj, dict):
        return any(_any_requires_grad(item) for item in obj.values())
    return False


def role_of_call(args, kwargs) -> str:
    """The rule, for one forward call with these inputs."""
    overrides = _overrides()
    if overrides:
        return overrides[-1]
    if torch.is_grad_enabled() and (_any_requires_grad(args) or _any_requires_grad(kwargs)):
        return "attack"
    return "train"


class RoleHook:
    """Forward pre-hook and (always-called) forward hook on the transformed model's root:
    pushes the call's role for the activations inside it, pops it afterwards, and counts
    forwards per role (reported per epoch as ``sat_attack_forwards``/``sat_train_forwards``)."""

    def __init__(self):
        self.counts = {"attack": 0, "train": 0}

    def before(self, module, args, kwargs):
        role = role_of_call(args, kwargs)
        self.counts[role] += 1
        _stack().append(role)

    def after(self, module, args, output):
        stack = _stack()
        if stack:
            stack.pop()

    def take_counts(self) -> dict:
        counts, self.counts = self.counts, {"attack": 0, "train": 0}
        return counts
