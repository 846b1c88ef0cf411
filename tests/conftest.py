import importlib.metadata
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from advplug import host as host_mod

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The offline data root: $ADVPLUG_DATA, else ../shared/data beside the repo."""
    root = Path(os.environ.get("ADVPLUG_DATA") or DEFAULT_DATA)
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST not found under {root}; set ADVPLUG_DATA")
    return root


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """Each test gets its own process-wide host and fixed torch threads/seed."""
    host_mod.reset_host(None)
    torch.manual_seed(0)
    yield
    host_mod.reset_host(None)


def tiny_config(tmp_path, data_root, **overrides):
    """A run that takes a second or two on CPU: 512 MNIST images, tiny monitor and test."""
    cfg = dict(dataset="mnist", model="mnist-cnn", trainer="standard", epochs=1, batch_size=64,
               train_subset=512, test_subset=128, monitor_size=64, monitor_steps=2, eval_steps=2,
               data_root=str(data_root), out=str(tmp_path / "run"), progress=False, seed=0)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="session")
def standard_model_path(tmp_path_factory, data_root):
    """A standard (non-robust) mnist-cnn: 2,048 images, 2 epochs; ~98% of them right."""
    import advplug

    out = tmp_path_factory.mktemp("standard")
    advplug.train(tiny_config(out, data_root, train_subset=2048, epochs=2, optimizer="adam", lr=1e-3,
                              weight_decay=0.0, monitor_size=0, eval_steps=0))
    return out / "run" / "model.pt"


@pytest.fixture
def standard_model(standard_model_path):
    import advplug

    return advplug.load_model(standard_model_path)


def mnist_images(data_root, n: int, train: bool = True):
    """The first ``n`` MNIST images of a split as floats in [0, 1], with their labels."""
    from advplug.data import BUILTIN_DATASETS, load_split

    x, y = load_split(BUILTIN_DATASETS["mnist"], train, data_root=data_root)
    return x[:n].float() / 255, y[:n]


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write a plugin module into tmp_path; return an entry point that loads it.

    Module names are unique per call so no test sees another test's cached module.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def make(ep_name, source):
        modname = f"advplug_test_{ep_name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{modname}.py").write_text(textwrap.dedent(source))
        created.append(modname)
        return importlib.metadata.EntryPoint(name=ep_name, value=modname, group="advplug")

    yield make
    for modname in created:
        sys.modules.pop(modname, None)


def fit_briefly(model, x, y, lr: float, steps: int):
    """Full-batch Adam on (x, y) for ``steps`` steps (a small model far from robust); no
    gradient left on the model."""
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model
