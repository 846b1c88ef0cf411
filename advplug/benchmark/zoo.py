"""RobustBench model-zoo models by name, through ``robustbench.utils.load_model``.

RobustBench stores a zoo model's weights as ``<model dir>/<dataset>/<threat>/<name>.pt``
and downloads them (Google Drive / timm hub) when the file is missing. Offline, the
download fails deep inside gdown or requests; here it becomes one error that says which
file to put where. ``robustbench.utils.load_model`` reads the file with ``torch.load``,
whose default on torch >= 2.6 is ``weights_only=True``.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import AdvplugError
from .compat import import_robustbench


def zoo_names(dataset: str, threat: str) -> list[str]:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return sorted(model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat), {}))


def weights_path(name: str, dataset: str, threat: str, model_dir) -> Path:
    return Path(model_dir) / dataset / threat / f"{name}.pt"


def load_zoo_model(name: str, dataset: str, threat: str, model_dir="./models"):
    """The zoo model ``name`` in eval mode (it takes [0, 1] images, like advplug's models)."""
    names = zoo_names(dataset, threat)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(names)} models there)"
        raise AdvplugError(f"RobustBench has no {dataset} {threat} model {name!r}{hint}")
    from robustbench.utils import load_model

    path = weights_path(name, dataset, threat, model_dir)
    try:
        return load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat).eval()
    except Exception as exc:  # noqa: BLE001 - gdown/requests/timm raise many types offline
        where = (f"{path} exists but could not be loaded" if path.is_file() else
                 f"its weights are not at {path} and could not be downloaded")
        raise AdvplugError(f"RobustBench model {name!r}: {where} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). Offline, put the "
                           f"weights file there and pass --model-dir {Path(model_dir)}") from None
