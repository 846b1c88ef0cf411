"""The Python API's attack and evaluation functions, exported as ``advplug.attack`` and
``advplug.evaluate`` (the latter lives in :mod:`advplug.evaluation`)."""
from __future__ import annotations

from .attacks.base import CheckedAttack, build_attack, eval_frozen
from .errors import AdvplugError, warn
from .evaluation import evaluate
from .threat import Threat, parse_norm, threat_warning

__all__ = ["ModelAttack", "attack", "evaluate"]


class ModelAttack:
    """An attack bound to a model and a threat: ``x_adv = attack(x, y)``, run the way
    evaluation runs attacks. ``checked`` is the underlying
    :class:`advplug.attacks.base.CheckedAttack` (``.nonfinite``: outputs with NaN/inf that
    fell back to the clean input; ``.median_norm`` for minimal-perturbation attacks)."""

    def __init__(self, model, checked: CheckedAttack):
        self.model = model
        self.checked = checked

    @property
    def name(self) -> str:
        return self.checked.name

    @property
    def params(self) -> dict:
        return self.checked.params

    @property
    def threat(self) -> Threat:
        return self.checked.threat

    def __call__(self, x, y):
        """Adversarial examples for ``x`` ([0, 1] float images, NCHW) with labels ``y``
        (int64): inside the threat ball and [0, 1] (checked). The model is in eval mode with
        no parameter gradients while the attack runs; both are restored afterwards."""
        with eval_frozen(self.model):
            return self.checked(x, y)

    def __repr__(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"<advplug attack {self.name}{':' + params if params else ''} at {self.threat}>"


def attack(model, spec: str, *, eps=None, norm: str = "Linf", dataset: str | None = None,
           registry=None) -> ModelAttack:
    """The attack ``spec`` on ``model``: a callable ``(x, y) -> x_adv``.

    ``spec`` is ``name`` or ``name:key=value,...`` (e.g. ``"pgd:steps=20"``), built through
    the attack registry as ``advplug eval`` builds it; an unknown name, parameter or
    unsupported norm is one :class:`AdvplugError`. ``eps`` is the radius in pixel space of
    [0, 1] images, a number or a string like ``"8/255"``. There is no silent default: leave
    ``eps`` out only with ``dataset=``, whose default radius for ``norm`` is then used
    (MNIST: Linf 0.3, L2 2.0); with both, ``eps`` is used, and a radius at which no model
    of that dataset can be robust is warned about (as ``advplug eval`` does). Every output
    is checked to lie in [0, 1] and the ε-ball. Random starts draw from torch's global RNG:
    ``torch.manual_seed`` first for repeatable examples."""
    from .host import get_host

    registry = registry or get_host().registry
    data_spec = registry.get("datasets", dataset) if dataset is not None else None
    if eps is None:
        if data_spec is None:
            raise AdvplugError("advplug.attack needs eps= (pixel space, e.g. 8/255 or 0.3), or dataset= to use "
                               "that dataset's default ε")
        eps = data_spec.default_eps(parse_norm(norm))
    threat = Threat(norm, eps)
    if data_spec is not None:
        warning = threat_warning(threat, data_spec)
        if warning:
            warn(warning)
    with eval_frozen(model):  # built as evaluation builds it
        checked = build_attack(registry, spec, model, threat)
    return ModelAttack(model, checked)
