"""The run manifest: what ran, on what, with which versions, and how long it took."""
from __future__ import annotations

import json
import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("advplug", "torch", "torchvision", "torchattacks", "adversarial-robustness-toolbox",
            "pyautoattack", "robustbench", "pluggy", "numpy")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(path=None) -> dict | None:
    """The git revision of advplug's source tree (an editable install), if it is one."""
    path = Path(path or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def new_manifest(run) -> dict:
    cfg = run.config
    return {
        "started": now(), "finished": None, "status": "running", "stop_reason": None,
        "seed": cfg.seed, "eval_seed": cfg.eval_seed,
        "samples": {"train": len(run.train_idx), "heldout_monitor": len(run.heldout_idx),
                    "test": len(run.test_idx)},
        "versions": versions(), "git": git_revision(),
        "plugins": [{"name": p.name, "version": p.version, "error": p.error} for p in run.host.plugins.values()],
        "device": str(run.device), "torch_threads": torch.get_num_threads(),
        "epoch_times_s": [], "resumed": [], "_t0": time.time(),
    }


def write(run, finished: bool = False, status: str | None = None) -> None:
    """Write ``manifest.json`` atomically. ``finished``: the run ended (completed or
    stopped early); ``status`` overrides the status (``interrupted``). ``wall_time_s`` is
    the wall-clock time of the whole run, every session of a resumed run included;
    ``train_time_s`` the sum of the epochs' training time."""
    m = run.manifest
    if finished:
        m["finished"] = now()
        m["status"] = "stopped early" if run.stop_reason else "completed"
        m["stop_reason"] = run.stop_reason
        m["final_eval"] = getattr(run, "final_eval", None)
    if status is not None:
        m["status"] = status
    m["epochs_done"] = run.epoch
    m["train_time_s"] = sum(m["epoch_times_s"])
    m["wall_time_s"] = m.get("_wall_before", 0.0) + time.time() - m["_t0"]
    shown = {k: v for k, v in m.items() if not k.startswith("_")}
    tmp = run.out_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(shown, indent=2) + "\n")
    tmp.replace(run.out_dir / "manifest.json")


def wall_time_before(out_dir, checkpointed: dict) -> float:
    """Wall-clock seconds the earlier sessions of a run took: what its manifest.json says
    (written up to the interruption), or the checkpoint's copy when the file is gone."""
    seconds = float(checkpointed.get("wall_time_s") or 0.0)
    try:
        on_disk = json.loads((Path(out_dir) / "manifest.json").read_text())
        seconds = max(seconds, float(on_disk.get("wall_time_s") or 0.0))
    except (OSError, ValueError, TypeError):
        pass
    return seconds
