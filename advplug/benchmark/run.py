"""``advplug benchmark``: pick the model, run the protocol, write the leaderboard entry."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..distributed import SINGLE
from ..errors import AdvplugError
from ..manifest import versions
from .model_info import build_model_info, write_model_info
from .protocol import BenchmarkResult, run_benchmark

# advplug architecture names as RobustBench's leaderboard spells them
ARCHITECTURES = {"preact-resnet18": "PreActResNet-18", "resnet18": "ResNet-18", "wrn-34-10": "WideResNet-34-10",
                 "mnist-cnn": "CNN (advplug mnist-cnn)"}


@dataclass
class BenchmarkModel:
    model: torch.nn.Module
    name: str            # the model id: file name of the leaderboard entry
    architecture: str
    footnote: str = ""
    zoo_name: str | None = None  # RobustBench zoo name (picks ImageNet preprocessing)


def _architecture(spec: dict) -> str:
    arch = ARCHITECTURES.get(spec.get("arch"), spec.get("arch", "unknown"))
    activation = (spec.get("arch_params") or {}).get("activation")
    extras = [f"{activation} activation"] if activation and activation != "relu" else []
    extras += list(spec.get("transforms") or [])
    return f"{arch} ({', '.join(extras)})" if extras else arch


def _training_note(model_path: Path) -> str:
    """What the run directory says about how the model was trained (config.json beside it)."""
    config_path = model_path.parent / "config.json"
    if not config_path.is_file():
        config_path = model_path.parent.parent / "config.json"  # checkpoints/last.pt
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return "Trained with advplug."
    params = ",".join(f"{k}={v}" for k, v in (cfg.get("trainer_params") or {}).items())
    trainer = f"{cfg.get('trainer')}{':' + params if params else ''}"
    return (f"Trained with advplug: trainer {trainer}, {cfg.get('epochs')} epochs, {cfg.get('norm')} "
            f"eps {cfg.get('eps'):.4g}, seed {cfg.get('seed')}.")


def model_id(text: str) -> str:
    """A file-name-safe model id."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._")
    return cleaned or "model"


def advplug_model(path, dataset: str, device="cpu", name: str | None = None) -> BenchmarkModel:
    """An advplug checkpoint: [0, 1] inputs, normalization inside -- nothing to wrap."""
    from ..modelio import load_model_and_spec

    from .model_info import DATASETS

    path = Path(path)
    model, spec = load_model_and_spec(path, device)
    trained_on = spec.get("dataset")
    if trained_on not in DATASETS:
        raise AdvplugError(f"{path} is a {trained_on} model, and RobustBench has no {trained_on} leaderboard "
                           f"(only {', '.join(DATASETS)}). For AutoAttack on it: advplug eval --model {path} "
                           f"--attacks autoattack")
    if trained_on != dataset:
        raise AdvplugError(f"{path} was trained on {trained_on!r}, not {dataset!r}; pass --dataset {trained_on}")
    run_name = path.parent.name if path.name in ("model.pt", "last.pt") else path.stem
    if path.parent.name == "checkpoints":
        run_name = path.parent.parent.name
    return BenchmarkModel(model, model_id(name or run_name), _architecture(spec), _training_note(path))


def external_model(dataset: str, *, arch=None, factory=None, weights=None, normalize=None, random_init=False,
                   logits_key=None, name: str | None = None) -> BenchmarkModel:
    from ..data import BUILTIN_DATASETS
    from ..host import get_host
    from ..modelio import load_external_model

    if dataset not in BUILTIN_DATASETS:
        raise AdvplugError(f"--arch/--model-factory work for {', '.join(('cifar10', 'cifar100'))}; "
                           f"for {dataset} use --robustbench-model or the Python API")
    model, spec = load_external_model(BUILTIN_DATASETS[dataset], get_host().registry, arch=arch,
                                      factory=factory, weights=weights, normalize=normalize,
                                      random_init=random_init, logits_key=logits_key)
    label = arch or factory
    weights_file = spec.get("weights")
    footnote = (f"External weights {Path(weights_file).name}." if weights_file else
                "Random, untrained weights (--random-init)." if random_init else "The factory's own weights.")
    return BenchmarkModel(model, model_id(name or Path(weights_file or label).stem),
                          _architecture(spec) if arch else label, footnote)


def zoo_model(zoo_name: str, dataset: str, threat: str, model_dir, name: str | None = None) -> BenchmarkModel:
    from .zoo import load_zoo_model

    model = load_zoo_model(zoo_name, dataset, threat, model_dir)
    return BenchmarkModel(model, model_id(name or zoo_name), type(model).__name__,
                          f"RobustBench model zoo entry {zoo_name}, re-evaluated by advplug.", zoo_name)


def benchmark_to_model_info(bm: BenchmarkModel, out_dir, *, dataset: str, threat: str, additional_data=False,
                            **protocol) -> tuple[BenchmarkResult, Path]:
    """Run the protocol on ``bm`` and write ``<out_dir>/<model id>.json`` (RobustBench model_info).
    The AutoAttack log and resumable state go to ``<out_dir>/<model id>/``, so several models
    can share one output folder."""
    result = run_benchmark(bm.model, dataset=dataset, threat=threat, out_dir=Path(out_dir) / bm.name,
                           model_name=bm.zoo_name, **protocol)
    note = (f"Evaluated by advplug benchmark ({result.runner}) on the first {result.n_examples} "
            f"{dataset} test images, AutoAttack seed {protocol.get('seed', 0)}.")
    info = build_model_info(
        name=bm.name, dataset=dataset, threat=threat, eps=result.eps, clean_acc=result.clean_acc,
        robust_acc=result.robust_acc, architecture=bm.architecture, additional_data=additional_data,
        footnote=" ".join(part for part in (bm.footnote, note) if part),
        advplug={"n_examples": result.n_examples, "seed": protocol.get("seed", 0),
                 "batch_size": protocol.get("batch_size"), "runner": result.runner,
                 "wall_time_s": round(result.seconds, 1), "resumed": result.resumed,
                 "autoattack_log": f"{bm.name}/{Path(result.log_path).name}" if result.log_path else None,
                 "versions": versions(), **result.extra})
    if not protocol.get("dist", SINGLE).is_main:  # under torchrun rank 0 writes
        return result, None
    return result, write_model_info(info, Path(out_dir) / f"{bm.name}.json")
