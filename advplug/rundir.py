"""Output directories: a path that is a file is refused, and a finished or resumable run
is never overwritten without ``--overwrite``."""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import AdvplugError

#: the files ``advplug train`` writes into its output directory (``--overwrite`` removes
#: these and ``checkpoints/``, nothing else)
RUN_FILES = ("model.pt", "config.json", "metrics.jsonl", "manifest.json", "final_eval.json", "subsets.json",
             "overfitting.png", ".manifest.json.tmp")


def check_output_dir(path, flag: str = "--out") -> Path:
    """``path`` as a directory to write into (it may not exist yet); a file there is one error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdvplugError(f"{flag} {path} is an existing file, not a directory; give a directory to write into")
    return path


def run_files(path) -> list[str]:
    """What in ``path`` makes it hold a run worth keeping: a model or a checkpoint."""
    path = Path(path)
    found = ["model.pt"] if (path / "model.pt").is_file() else []
    found += [f"checkpoints/{p.name}" for p in sorted((path / "checkpoints").glob("*.pt"))]
    return found


def prepare_run_dir(path, overwrite: bool = False, flag: str = "--out") -> Path:
    """The output directory of a new run. If it already holds one (a model or a
    checkpoint), refuse, unless ``overwrite``: then the old run's files go first, so no
    stale ``best.pt`` or ``epoch_*.pt`` is left beside the new run."""
    path = check_output_dir(path, flag)
    found = run_files(path)
    if found and not overwrite:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise AdvplugError(f"{path} already holds a run ({shown}); continue it with --resume {path}, write the new "
                           f"run elsewhere with {flag} DIR, or replace it with --overwrite")
    if found or overwrite:
        clear_run(path)
    return path


def clear_run(path) -> None:
    """Remove the files a run wrote into ``path`` (and its checkpoints), nothing else."""
    path = Path(path)
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "checkpoints", ignore_errors=True)
