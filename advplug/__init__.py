"""advplug: a pluggy host for adversarial training and honest robustness evaluation.

Python API (the CLI is a thin layer over it)::

    import advplug
    run = advplug.train({"dataset": "mnist", "trainer": "pgd-at", "eps": 0.3, "out": "runs/pgd"})
    model = advplug.load_model("runs/pgd/model.pt")
    advplug.registry().names("trainers")
"""
from .errors import AdvplugError
from .hookspecs import hookimpl

__version__ = "0.1.0"


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


__all__ = ["AdvplugError", "hookimpl", "load_model", "registry", "train", "__version__"]
