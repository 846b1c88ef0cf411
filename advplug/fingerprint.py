"""Identities of models and data, as SHA-256 digests: what a reused result must match, and
how evaluation notices an attack that changed the model it was attacking."""
from __future__ import annotations

import hashlib
import json

import torch


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def state_digests(model: torch.nn.Module) -> dict[str, str]:
    """{name: digest} of every parameter and buffer (``state_dict`` keys)."""
    return {name: tensor_digest(value) for name, value in model.state_dict().items()
            if isinstance(value, torch.Tensor)}


def changed_tensors(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names of the parameters and buffers that differ (or appeared, or vanished)."""
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def model_identity(model: torch.nn.Module, digests: dict[str, str] | None = None, spec: dict | None = None) -> str:
    """One digest for what decides a model's outputs: its weights and buffers, its module
    structure (``repr``: layer types and their settings) and the spec it was built from."""
    digests = state_digests(model) if digests is None else digests
    return json_digest({"state": digests, "structure": repr(model), "spec": spec or {}})


def json_digest(value) -> str:
    """SHA-256 of a JSON-able value in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
