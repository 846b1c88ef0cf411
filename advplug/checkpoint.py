"""Atomic writes and safe reads of advplug's files (``torch.load(weights_only=True)``)."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from .errors import AdvplugError

CHECKPOINT_FORMAT = "advplug-checkpoint"
MODEL_FORMAT = "advplug-model"


def atomic_save(obj, path) -> Path:
    """torch.save to a temporary file beside ``path``, fsync, then rename over it: a crash
    leaves either the old file or the new one, never a torn one."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str) -> Path:
    """``path.write_text(text)``, atomically as :func:`atomic_save`."""
    return _atomic_write(path, lambda f: f.write(text.encode()))


def _atomic_write(path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def safe_load(path, formats=(CHECKPOINT_FORMAT, MODEL_FORMAT)) -> dict:
    """Load an advplug file with ``weights_only=True``; anything else is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise AdvplugError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd bytes before failing
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes fail in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdvplugError(
            f"{path} is not a readable advplug checkpoint (truncated, corrupt, or not a torch "
            f"file; untrusted files are read with weights_only=True): {first[:200]}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        raise AdvplugError(
            f"{path} is a torch file but not an advplug {' or '.join(formats)} "
            f"(for a plain state_dict, build the model and call load_state_dict yourself)"
        )
    return obj


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes (a model file's identity, whatever its date)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
