"""Build models from a spec (architecture + dataset + transforms) and load saved ones."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from .checkpoint import MODEL_FORMAT, atomic_save, safe_load
from .errors import AdvplugError, warn
from .params import Spec

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
    entry = registry.entry("models", spec["arch"])
    factory = entry.obj
    params = dict(spec.get("arch_params", {}))
    if entry.schema is not None:
        params = entry.check(params)
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
        transform = Spec.parse(transform)
        entry = registry.entry("model_transforms", transform.name)
        model = entry.obj(model, **entry.check(transform.params))
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


def load_external_model(dataset_spec, registry, *, arch=None, factory=None, weights=None, normalize=None,
                        random_init=False, logits_key=None):
    """A model advplug did not train: a registered ``arch`` or an import-path ``factory``
    ('pkg.module:fn'; the current directory is importable) plus a plain state_dict.

    ``weights`` is required: a file, or ``"none"`` for a factory that returns a trained
    model itself; ``random_init=True`` evaluates untrained weights on purpose (a random
    model scores ~chance and would otherwise pass for a very weak one). ``normalize``
    ('MEAN/STD') puts the normalization the model expects inside it, so it takes [0, 1]
    inputs like every other; ``logits_key`` picks the logits from a dict or tuple output.
    The model is tried on a batch of the dataset's shape: an output that is not a tensor
    of logits, or has fewer logits than the dataset has classes, is one error.
    Returns (model in eval mode, spec with a ``label`` for reports)."""
    from torch import nn

    from .models.common import Normalize, SelectLogits

    what = f"--arch {arch}" if arch else f"--model-factory {factory}"
    weights_file = _weights_file(what, weights, random_init, factory_given=not arch)
    if arch:
        spec = {"arch": arch, "arch_params": {}, "dataset": dataset_spec.name,
                "num_classes": dataset_spec.num_classes, "in_channels": dataset_spec.channels,
                "input_size": dataset_spec.size, "mean": [0.0] * dataset_spec.channels,
                "std": [1.0] * dataset_spec.channels, "transforms": []}
        if normalize:
            spec["mean"], spec["std"] = parse_normalize(normalize)
        model = build_model(spec, registry)
        if weights_file:
            state = _plain_state_dict(weights_file)
            own = model.state_dict()
            for key in ("normalize.mean", "normalize.std"):  # weights from elsewhere lack them
                state.setdefault(key, own[key])
            _load_state(model, state, weights_file, f"architecture {arch!r}")
    else:
        model = _call_factory(factory)
        if weights_file:
            _load_state(model, _plain_state_dict(weights_file), weights_file, factory)
        if normalize:
            mean, std = parse_normalize(normalize)
            model = nn.Sequential(Normalize(mean, std), model)
        spec = {"factory": factory, "dataset": dataset_spec.name, "normalize": normalize}
    if logits_key is not None:
        model = SelectLogits(model, _key(logits_key))
    model.eval()
    _check_output(model, dataset_spec, what, logits_key)
    source = "random init" if random_init else Path(weights_file).name if weights_file else "its own weights"
    spec.update({"weights": str(weights_file) if weights_file else None, "random_init": bool(random_init),
                 "logits_key": logits_key, "label": f"{arch or factory} ({source})"})
    if random_init:
        warn(f"{what} is evaluated with random, untrained weights (--random-init)")
    return model, spec


def _weights_file(what, weights, random_init, factory_given):
    """The state_dict file to load, or None (a factory's own weights, or --random-init)."""
    if random_init:
        if weights:
            raise AdvplugError(f"{what}: give --weights or --random-init, not both")
        return None
    if not weights:
        own = ", or --weights none when the factory returns a trained model itself" if factory_given else ""
        raise AdvplugError(f"{what} needs --weights FILE (a plain state_dict){own}: without weights its random "
                           f"initial ones would be evaluated (near-chance accuracy, reported as if a real model's); "
                           f"pass --random-init to do that on purpose")
    if str(weights).lower() == "none":
        if not factory_given:
            raise AdvplugError(f"{what} --weights none would evaluate random weights; pass --random-init if you "
                               f"mean that, or --weights FILE")
        return None
    return Path(weights)


def _call_factory(factory):
    import importlib
    import os
    import sys

    module_name, _, fn_name = (factory or "").partition(":")
    if not module_name or not fn_name:
        raise AdvplugError(f"--model-factory {factory!r}: write an import path like pkg.module:build_model")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules beside you are importable
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise AdvplugError(f"cannot import model factory {factory!r}: {exc} (the module must be importable from "
                           f"the current directory or the Python path)") from None
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise AdvplugError(f"--model-factory {factory} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_state(model, state, path, what):
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise AdvplugError(f"{path} does not fit {what}: {str(exc).splitlines()[0][:300]}") from None


def _key(text):
    """'logits' -> 'logits', '0' -> 0 (an index into a tuple output)."""
    return int(text) if str(text).lstrip("-").isdigit() else text


def _check_output(model, dataset_spec, what, logits_key):
    """Run the model on two blank images of the dataset's shape; its output must be a
    (2, classes) tensor with at least as many logits as the dataset has classes."""
    x = torch.zeros(2, dataset_spec.channels, dataset_spec.size, dataset_spec.size)
    try:
        with torch.no_grad():
            out = model(x)
    except (KeyError, IndexError) as exc:
        raise AdvplugError(f"{what}: --logits-key {logits_key} is not in the model's output ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - foreign code fails in many ways
        raise AdvplugError(f"{what} fails on a batch of {dataset_spec.name} images shaped {tuple(x.shape)}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    if isinstance(out, dict):
        raise AdvplugError(f"{what} returns a dict (keys: {', '.join(map(str, out))}), not a tensor of logits; "
                           f"pass --logits-key KEY naming the logits")
    if isinstance(out, (tuple, list)):
        raise AdvplugError(f"{what} returns a {type(out).__name__} of {len(out)}, not a tensor of logits; pass "
                           f"--logits-key INDEX (e.g. 0) naming the logits")
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        raise AdvplugError(f"{what} returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))} for 2 images; "
                           f"advplug needs logits shaped (batch, classes)")
    classes = dataset_spec.num_classes
    if out.shape[1] < classes:
        raise AdvplugError(f"{what} returns {out.shape[1]} logits but {dataset_spec.name} has {classes} classes: "
                           f"labels {out.shape[1]}..{classes - 1} could never be predicted (a model for another "
                           f"dataset? pass --dataset)")
    if out.shape[1] > classes:
        warn(f"{what} returns {out.shape[1]} logits for {dataset_spec.name}'s {classes} classes; predictions of "
             f"the extra ones count as wrong")
