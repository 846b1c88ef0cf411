"""RobustBench leaderboards: load the ``model_info`` files, rank them, place a result, render.

Layout: one JSON file per model, ``<model_info>/<dataset>/<threat>/<model id>.json`` (the
model id is the file stem), as in the RobustBench repository. :func:`load_leaderboard`
also accepts the ``<dataset>/<threat>`` folder itself or the folder holding ``model_info``.
A file that is not a valid entry (bad JSON, not an object, see :func:`model_info.validate`)
is skipped and listed in :attr:`Leaderboard.problems`; it never breaks the table.

Ranking is RobustBench's own (``leaderboard/template.py`` with ``utils.ACC_FIELDS``): each
entry is ranked by ``external`` where it has one (a stronger, adaptive evaluation than
AutoAttack), else by ``autoattack_acc``; corruptions entries by ``corruptions_acc``.
Descending; ties are ordered by clean accuracy, then model id, and ranks run 1..n.
A user's result inserted with :meth:`Leaderboard.insert` gets rank 1 + the number of
entries with strictly higher robust accuracy and sits after the entries it ties with.
"""
from __future__ import annotations

import html
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import AdvplugError
from . import model_info

API_URL = "https://api.github.com/repos/RobustBench/robustbench/contents/model_info/{dataset}/{threat}"
LAYOUT = "a RobustBench model_info folder laid out as <dir>/<dataset>/<threat>/<model id>.json"
PROTOCOL_EXAMPLES = {"imagenet": 5000}  # RobustBench's test-set size; 10,000 for the others
FORMATS = ("text", "markdown", "html", "json")
HEADER = ["rank", "model", "clean", "robust", "architecture", "extra data", "venue"]
EXTERNAL_NOTE = "* robust accuracy from an external, adaptive evaluation (field 'external'), not AutoAttack"
UNRELIABLE_NOTE = "[unreliable]: RobustBench marks this evaluation as unreliable"


@dataclass(frozen=True)
class Row:
    rank: int
    model: str
    entry: dict
    robust: float  # the value the row is ranked by
    robust_field: str  # "external", "autoattack_acc" or "corruptions_acc"
    is_user: bool = False


@dataclass
class Leaderboard:
    dataset: str
    threat: str
    path: Path  # the <dataset>/<threat> folder read
    rows: list[Row]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file name, what is wrong)

    def insert(self, entry: dict, model_id: str) -> list[Row]:
        """A new ranked list with ``entry`` (a validated result) placed at its rank, marked."""
        robust, key = model_info.robust_accuracy(entry, self.threat)
        above = [r for r in self.rows if r.robust > robust]
        ties = [r for r in self.rows if r.robust == robust]
        below = [replace(r, rank=r.rank + 1) for r in self.rows if r.robust < robust]
        user = Row(len(above) + 1, model_id, entry, robust, key, is_user=True)
        return above + ties + [user] + below

    def warnings(self) -> list[str]:
        return [f"skipped {name}: {msg}" for name, msg in self.problems]


def _ranked(entries: dict[str, dict], threat: str) -> list[Row]:
    scored = [(*model_info.robust_accuracy(e, threat), float(e["clean_acc"]), mid, e)
              for mid, e in entries.items()]
    scored.sort(key=lambda s: (-s[0], -s[2], s[3]))
    return [Row(i, mid, e, robust, key) for i, (robust, key, _, mid, e) in enumerate(scored, 1)]


def _read_entry(path: Path, threat: str) -> dict:
    """The entry in ``path``; ValueError with what is wrong with it."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    problems = model_info.validate(entry, threat)
    if problems:
        raise ValueError("; ".join(problems))
    return entry


def _board_folder(root: Path, dataset: str, threat: str) -> Path:
    tried = [root / dataset / threat, root / "model_info" / dataset / threat, root / threat, root]
    for folder in tried:
        if folder.is_dir() and any(folder.glob("*.json")):
            names = (folder.parent.name, folder.name)
            if names[0] in model_info.DATASETS and names[1] in model_info.THREATS and names != (dataset, threat):
                raise AdvplugError(f"{folder} holds the {'/'.join(names)} leaderboard, not {dataset}/{threat}")
            return folder
    if not root.is_dir():
        raise AdvplugError(f"leaderboard dir {root} does not exist; pass {LAYOUT}")
    raise AdvplugError(f"no leaderboard files for {dataset}/{threat} in {root} (looked in "
                       f"{', '.join(map(str, tried[:3]))} and {root} itself); expected {LAYOUT}")


def load_leaderboard(leaderboard_dir, dataset: str, threat: str) -> Leaderboard:
    model_info.check_threat(dataset, threat)
    folder = _board_folder(Path(leaderboard_dir).expanduser(), dataset, threat)
    entries, problems = {}, []
    for path in sorted(folder.glob("*.json")):
        try:
            entries[path.stem] = _read_entry(path, threat)
        except ValueError as exc:
            problems.append((path.name, str(exc)))
    return Leaderboard(dataset, threat, folder, _ranked(entries, threat), problems)


def load_result(path, threat: str, dataset: str | None = None) -> tuple[str, dict]:
    """``(model id, entry)`` from an advplug result file (``--with RESULT.json``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdvplugError(f"--with {path}: no such file (pass a result JSON that advplug wrote)")
    try:
        entry = _read_entry(path, threat)
    except ValueError as exc:
        raise AdvplugError(f"--with {path}: not a valid {threat} leaderboard entry: {exc}") from None
    if dataset and entry["dataset"] != dataset:
        raise AdvplugError(f"--with {path}: the result is on {entry['dataset']}, the leaderboard on {dataset}")
    return path.stem, entry


def reduced_n_note(row: Row) -> str | None:
    """Why a user's row is not strictly comparable (fewer examples than the protocol), or None."""
    n = (row.entry.get("advplug") or {}).get("n_examples")
    protocol = PROTOCOL_EXAMPLES.get(row.entry.get("dataset"), 10000)
    if not row.is_user or not isinstance(n, int) or n >= protocol:
        return None
    return (f"note: {row.model} was evaluated on {n:,} examples, fewer than the leaderboard protocol's "
            f"{protocol:,}; its rank is indicative, not strictly comparable")


def _notes(rows: list[Row]) -> list[str]:
    notes = [EXTERNAL_NOTE] if any(r.robust_field == "external" for r in rows) else []
    notes += [UNRELIABLE_NOTE] if any(r.entry.get("unreliable") for r in rows) else []
    return notes + [n for n in map(reduced_n_note, rows) if n]


def _cells(row: Row) -> list[str]:
    e = row.entry
    return [str(row.rank), row.model + (" [unreliable]" if e.get("unreliable") else ""),
            f"{float(e['clean_acc']):.2f}", f"{row.robust:.2f}" + ("*" if row.robust_field == "external" else ""),
            e["architecture"], "yes" if e["additional_data"] else "no", e["venue"]]


def _number(value):
    return None if value in (None, "") else float(value)


def _as_dict(row: Row) -> dict:
    e = row.entry
    return {"rank": row.rank, "model": row.model, "clean_acc": float(e["clean_acc"]),
            "robust_acc": row.robust, "robust_field": row.robust_field,
            "autoattack_acc": _number(e.get("autoattack_acc")), "external": _number(e.get("external")),
            "architecture": e["architecture"], "additional_data": e["additional_data"], "venue": e["venue"],
            "unreliable": bool(e.get("unreliable")), "is_user": row.is_user,
            "n_examples": (e.get("advplug") or {}).get("n_examples"), "note": reduced_n_note(row)}


def _text(rows: list[Row]) -> list[str]:
    table = [["", *HEADER]] + [[">>" if r.is_user else "", *_cells(r)] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(*table)]
    right = {1, 3, 4}  # rank, clean, robust
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
            .rstrip() for line in table]


def _markdown(rows: list[Row]) -> list[str]:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        out.append("| " + " | ".join(f"**{c}**" if r.is_user and c else c for c in cells) + " |")
    return out


def _html(rows: list[Row]) -> list[str]:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HEADER) + "</tr>"]
    for r in rows:
        cell = "<td><strong>{}</strong></td>" if r.is_user else "<td>{}</td>"
        tr = '<tr class="advplug-user">' if r.is_user else "<tr>"
        out.append(tr + "".join(cell.format(html.escape(c)) for c in _cells(r)) + "</tr>")
    return out + ["</table>"]


def render(rows: list[Row], fmt: str = "text") -> str:
    """The table in ``fmt`` (text, markdown, html, json), with its footnotes."""
    if fmt == "json":
        return json.dumps([_as_dict(r) for r in rows], indent=2)
    if fmt not in FORMATS:
        raise AdvplugError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    notes = _notes(rows)
    if fmt == "html":
        return "\n".join(_html(rows) + [f"<p>{html.escape(n)}</p>" for n in notes])
    table = _text(rows) if fmt == "text" else _markdown(rows)
    return "\n".join(table + ([""] + notes if notes else []))


def cache_root() -> Path:
    base = os.environ.get("ADVPLUG_CACHE") or Path.home() / ".cache" / "advplug"
    return Path(base).expanduser() / "robustbench" / "model_info"


def _get(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "advplug", "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def fetch_leaderboard(dataset: str, threat: str, cache_dir=None, timeout: float = 10) -> Path:
    """The model_info root holding ``<dataset>/<threat>``: the cached copy, else downloaded."""
    model_info.check_threat(dataset, threat)
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    target = root / dataset / threat
    if target.is_dir() and any(target.glob("*.json")):
        return root
    url = API_URL.format(dataset=dataset, threat=threat)
    tmp = target.with_name(f".{threat}.part-{os.getpid()}")
    try:
        listing = json.loads(_get(url, timeout))
        files = [f for f in listing if f.get("type") == "file" and f["name"].endswith(".json")
                 and "/" not in f["name"] and not f["name"].startswith(".")]
        if not files:
            raise ValueError(f"{url} lists no JSON files")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            (tmp / f["name"]).write_bytes(_get(f["download_url"], timeout))
        tmp.replace(target)  # all files or none: a half-done fetch is never taken for a cache
    except (OSError, http.client.HTTPException, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AdvplugError(f"could not fetch the RobustBench {dataset}/{threat} leaderboard ({exc}); "
                           f"pass --leaderboard-dir DIR ({LAYOUT})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def resolve_leaderboard_dir(leaderboard_dir, dataset: str, threat: str) -> Path:
    """The folder to load: ``leaderboard_dir`` if given, else the cache, else a fresh download."""
    if leaderboard_dir:
        return Path(leaderboard_dir).expanduser()
    return fetch_leaderboard(dataset, threat)
