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


def load_model(path, device="cpu", registry=None) -> torch.nn.Module:
    """Rebuild a model saved by advplug (final model or any checkpoint), in eval mode."""
    if registry is None:
        from .host import get_host

        registry = get_host().registry
    obj = safe_load(path)
    model = build_model(obj["spec"], registry)
    model.load_state_dict(obj["model"] if "model" in obj else obj["state_dict"])
    return model.to(device).eval()
