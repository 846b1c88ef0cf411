"""RobustBench ``model_info`` JSON: the fields of a leaderboard entry, read and written.

A leaderboard entry is one JSON file per model, named ``<model id>.json`` and stored as
``model_info/<dataset>/<threat>/``. The shipped files (RobustBench commit 78fcc9e) all
carry the fields in :data:`REQUIRED_FIELDS` (``reported`` may be null: ImageNet-C's AlexNet
reference has no paper number); percentages are strings with two decimals
(``"83.34"``), ``eps`` is a string (``"8/255"``, ``"0.5"``), ``additional_data`` a bool and
``number_forward_passes`` an int. The robust-accuracy field depends on the threat
(:data:`ACC_FIELDS`); RobustBench ranks Linf/L2 entries by ``external`` where an entry has
one (a stronger, adaptive evaluation than AutoAttack), else by ``autoattack_acc``.

advplug writes the same fields, plus one ``"advplug"`` object with what the leaderboard
files do not record (number of test examples, seed, batch size, wall time, versions):
RobustBench's own tools read only the keys they know, so the extra key is harmless.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

from ..errors import AdvplugError

THREATS = ("Linf", "L2", "corruptions")
DATASETS = ("cifar10", "cifar100", "imagenet")

# the robust-accuracy field(s) per threat, in RobustBench's order of preference
ACC_FIELDS = {"Linf": ("external", "autoattack_acc"), "L2": ("external", "autoattack_acc"),
              "corruptions": ("corruptions_acc",)}

# present in every shipped leaderboard file, with these JSON types
REQUIRED_FIELDS = {
    "link": str, "name": str, "authors": str, "additional_data": bool, "number_forward_passes": int,
    "dataset": str, "venue": str, "architecture": str, "eps": (str, type(None)), "clean_acc": str,
    "reported": (str, type(None)),
}
# the robust field each threat's entries must have (besides the optional ``external``)
ROBUST_FIELD = {"Linf": "autoattack_acc", "L2": "autoattack_acc", "corruptions": "corruptions_acc"}


def check_threat(dataset: str, threat: str) -> None:
    if dataset not in DATASETS:
        raise AdvplugError(f"--dataset {dataset!r}: RobustBench has leaderboards for {', '.join(DATASETS)}")
    if threat not in THREATS:
        raise AdvplugError(f"--threat {threat!r}: use one of {', '.join(THREATS)}")


def percent(value) -> str:
    """A fraction in [0, 1] as RobustBench writes it: ``0.8334 -> "83.34"``."""
    return f"{100.0 * float(value):.2f}"


def eps_text(eps: float | None, threat: str) -> str | None:
    """``8/255 -> "8/255"`` for Linf (the leaderboard's spelling), ``0.5 -> "0.5"`` otherwise."""
    if eps is None:
        return None
    if threat == "Linf":
        frac = Fraction(float(eps)).limit_denominator(255)
        if frac.denominator in (255, 85, 51, 17, 15) and math.isclose(float(frac), eps, rel_tol=1e-6):
            return f"{round(float(eps) * 255)}/255"
    return f"{float(eps):g}"


def robust_accuracy(entry: dict, threat: str) -> tuple[float, str]:
    """The value RobustBench ranks ``entry`` by, and the field it came from."""
    for key in ACC_FIELDS[threat]:
        if entry.get(key) not in (None, ""):
            return float(entry[key]), key
    raise KeyError(ROBUST_FIELD[threat])


def validate(entry: dict, threat: str) -> list[str]:
    """Problems that would keep ``entry`` off a leaderboard table (empty list: valid)."""
    problems = []
    if not isinstance(entry, dict):
        return [f"expected a JSON object, got {type(entry).__name__}"]
    for key, kind in REQUIRED_FIELDS.items():
        if key not in entry:
            problems.append(f"missing field {key!r}")
        elif not isinstance(entry[key], kind) or (kind is int and isinstance(entry[key], bool)):
            problems.append(f"field {key!r} should be {getattr(kind, '__name__', 'str')}, "
                            f"got {type(entry[key]).__name__}")
    robust = ROBUST_FIELD[threat]
    for key in ("clean_acc", robust, "external"):
        if key == "external" and key not in entry:
            continue
        if key not in entry:
            if key == robust:
                problems.append(f"missing field {key!r}")
            continue
        try:
            value = float(entry[key])
        except (TypeError, ValueError):
            problems.append(f"field {key!r} is not a number: {entry[key]!r}")
            continue
        if not 0.0 <= value <= 100.0:
            problems.append(f"field {key!r} = {value} is not a percentage")
    return problems


def build_model_info(*, name: str, dataset: str, threat: str, eps: float | None, clean_acc: float,
                     robust_acc: float, architecture: str, additional_data: bool = False,
                     number_forward_passes: int = 1, link: str = "", authors: str = "", venue: str = "",
                     footnote: str | None = None, advplug: dict | None = None) -> dict:
    """A leaderboard entry for a model advplug evaluated (accuracies as fractions in [0, 1])."""
    check_threat(dataset, threat)
    robust = percent(robust_acc)
    info = {
        "link": link, "name": name, "authors": authors, "additional_data": bool(additional_data),
        "number_forward_passes": int(number_forward_passes), "dataset": dataset, "venue": venue,
        "architecture": architecture, "eps": eps_text(eps, threat), "clean_acc": percent(clean_acc),
        # "reported" is the paper's own number on the leaderboard; ours is the measured one
        "reported": robust, ROBUST_FIELD[threat]: robust,
    }
    if footnote:
        info["footnote"] = footnote
    if advplug:
        info["advplug"] = advplug
    return info


def write_model_info(info: dict, path) -> Path:
    """Write ``info`` as ``path`` (atomically: a crash leaves the old file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)
    return path
