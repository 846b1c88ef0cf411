"""Finished evaluation results, one file per (model, attack), written the moment each one
completes and reused when everything that decides it is the same.

A killed ``advplug eval`` (or study) keeps every (model, attack) result it finished; the
rerun takes them over and runs only what is missing. A result is reused only when its
key matches exactly: the model's identity (weights, buffers, structure, spec), the attack
with all its parameters (defaults filled in), the threat model, the dataset and the test
indices, the seed, the batch size and the versions of the libraries that compute it; an
evaluation under ``--amp`` (autocast) adds its precision to the key, so an autocast result
never stands in for an fp32 one or the reverse (:func:`advplug.evaluation._result_key`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import atomic_write_text
from .errors import AdvplugError
from .fingerprint import json_digest
from .manifest import now

FOLDER = "results"
FORMAT = "advplug-result"


class ResultStore:
    """``OUT/results/<key digest>.json``: ``{"key": ..., "time": ..., "row": ..., "correct": "0110..."}``."""

    def __init__(self, out_dir):
        self.folder = Path(out_dir) / FOLDER

    def path(self, key: dict) -> Path:
        return self.folder / f"{json_digest(key)[:32]}.json"

    def get(self, key: dict) -> tuple[dict, torch.Tensor, str] | None:
        """(row, per-sample correct flags, when it was computed) of a stored result with
        exactly this key, else None. A damaged file is ignored (it is recomputed)."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("key") != _jsonable(key):
            return None
        flags = record.get("correct", "")
        if not isinstance(flags, str) or set(flags) - {"0", "1"}:
            return None
        return record["row"], torch.tensor([c == "1" for c in flags], dtype=torch.bool), record["time"]

    def put(self, key: dict, row: dict, correct: torch.Tensor) -> Path:
        """Write one finished result atomically (a crash leaves no torn file)."""
        path = self.path(key)
        record = {"format": FORMAT, "key": _jsonable(key), "time": now(), "row": row,
                  "correct": "".join("1" if c else "0" for c in correct.tolist())}
        try:
            atomic_write_text(path, json.dumps(record) + "\n")
        except OSError as exc:
            raise AdvplugError(f"cannot write the evaluation result {path}: {exc}") from None
        return path


def _jsonable(value):
    """The key as it reads back from JSON (tuples become lists, ...), for comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
