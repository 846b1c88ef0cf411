"""Build models from a spec (architecture + dataset + transforms) and load saved ones."""
from __future__ import annotations

import torch

import inspect

from .checkpoint import MODEL_FORMAT, atomic_save, safe_load
from .errors import AdvplugError
from .params import parse_spec

_SET_BY_ADVPLUG = ("num_classes", "in_channels", "mean", "std", "input_size")


def model_spec(config, dataset_spec) -> dict:
    """Everything needed to rebuild the network without the training config."""
    return {
        "arch": config.model,
        "arch_params": dict(config.model_params),
        "dataset": dataset_spec.name,
        "num_classes": dataset_spec.num_classes,
        "in_channels": dataset_spec.channels,
        "input_size": dataset_spec.size,
        "mean": list(dataset_spec.mean),
        "std": list(dataset_spec.std),
        "transforms": list(config.transforms),
    }


def build_model(spec: dict, registry) -> torch.nn.Module:
    factory = registry.get("models", spec["arch"])
    params = dict(spec.get("arch_params", {}))
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        accepted = sorted(set(signature.parameters) - set(_SET_BY_ADVPLUG))
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise AdvplugError(f"model {spec['arch']!r} has no parameter {', '.join(map(repr, unknown))}; "
                               f"it takes: {', '.join(accepted)}")
    model = factory(num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                    mean=spec["mean"], std=spec["std"], input_size=spec["input_size"],
                    **params)
    for transform in spec.get("transforms", []):
        name, options = parse_spec(transform)
        model = registry.get("model_transforms", name)(model, **options)
    return model


def save_model(model: torch.nn.Module, spec: dict, path, **extra) -> None:
    atomic_save({"format": MODEL_FORMAT, "spec": spec, "state_dict": model.state_dict(), **extra}, path)


def load_model_and_spec(path, device="cpu", registry=None) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by advplug (final model or any checkpoint), in eval mode,
    with the spec it was built from (one read of the file)."""
    if registry is None:
        from .host import get_host

        registry = get_host().registry
    obj = safe_load(path)
    model = build_model(obj["spec"], registry)
    model.load_state_dict(obj["model"] if "model" in obj else obj["state_dict"])
    return model.to(device).eval(), obj["spec"]


def load_model(path, device="cpu", registry=None) -> torch.nn.Module:
    """Rebuild a model saved by advplug (final model or any checkpoint), in eval mode."""
    return load_model_and_spec(path, device, registry)[0]


def _plain_state_dict(path):
    from pathlib import Path

    import torch as _torch

    path = Path(path)
    if not path.is_file():
        raise AdvplugError(f"weights file {path} not found")
    try:
        obj = _torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise AdvplugError(f"{path} is not a readable state_dict (read with weights_only=True): "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise AdvplugError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def parse_normalize(text):
    """'0.4914,0.4822,0.4465/0.2471,0.2435,0.2616' -> (mean, std)."""
    try:
        mean, std = text.split("/")
        return [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
    except ValueError:
        raise AdvplugError(f"--normalize {text!r}: write MEAN/STD with comma-separated channels, "
                           f"e.g. 0.1307/0.3081") from None


def load_external_model(dataset_spec, registry, *, arch=None, factory=None, weights=None, normalize=None):
    """A model advplug did not train: a registered ``arch`` or an import-path ``factory``
    ('pkg.module:fn') plus a plain state_dict; ``normalize`` ('MEAN/STD') puts the
    normalization the model expects inside it, so it takes [0, 1] inputs like every other."""
    import importlib

    from torch import nn

    from .models.common import Normalize

    if arch:
        spec = {"arch": arch, "arch_params": {}, "dataset": dataset_spec.name,
                "num_classes": dataset_spec.num_classes, "in_channels": dataset_spec.channels,
                "input_size": dataset_spec.size, "mean": [0.0] * dataset_spec.channels,
                "std": [1.0] * dataset_spec.channels, "transforms": []}
        if normalize:
            spec["mean"], spec["std"] = parse_normalize(normalize)
        model = build_model(spec, registry)
        if weights:
            state = _plain_state_dict(weights)
            own = model.state_dict()
            for key in ("normalize.mean", "normalize.std"):  # weights from elsewhere lack them
                state.setdefault(key, own[key])
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise AdvplugError(f"{weights} does not fit architecture {arch!r}: "
                                   f"{str(exc).splitlines()[0][:300]}") from None
        return model.eval(), spec
    module_name, _, fn_name = (factory or "").partition(":")
    if not module_name or not fn_name:
        raise AdvplugError(f"--model-factory {factory!r}: write an import path like pkg.module:build_model")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise AdvplugError(f"cannot import model factory {factory!r}: {exc}") from None
    model = fn()
    if weights:
        try:
            model.load_state_dict(_plain_state_dict(weights))
        except RuntimeError as exc:
            raise AdvplugError(f"{weights} does not fit {factory}: {str(exc).splitlines()[0][:300]}") from None
    if normalize:
        mean, std = parse_normalize(normalize)
        model = nn.Sequential(Normalize(mean, std), model)
    return model.eval(), {"factory": factory, "dataset": dataset_spec.name}
