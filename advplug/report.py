"""Evaluation reports: a table on stdout, Markdown and JSON files."""
from __future__ import annotations

import json
from pathlib import Path


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def table_rows(results: dict) -> tuple[list, list]:
    attacks = []
    for res in results.values():
        for row in res["attacks"]:
            if row["attack"] not in attacks:
                attacks.append(row["attack"])
    header = ["model", "clean", *attacks, "worst", "mean", "gap", "attack s"]
    rows = []
    for name, res in results.items():
        # '*': some of the attack's outputs were NaN/inf and fell back to the clean input (see the notes)
        by = {r["attack"]: _fmt(r["robust_acc"]) + ("*" if r.get("nonfinite_samples") else "") for r in res["attacks"]}
        rows.append([name, _fmt(res["clean_acc"]), *[by.get(a, "-") for a in attacks],
                     _fmt(res["worst_case_acc"]), _fmt(res["mean_robust_acc"]),
                     _fmt(res["best_minus_worst"]), _fmt(res["total_seconds"], 1)])
    return header, rows


def text_table(results: dict) -> str:
    header, rows = table_rows(results)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(results: dict) -> str:
    header, rows = table_rows(results)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def interval_note(samples: int) -> str:
    """How precisely an accuracy on ``samples`` test images is known: the half-width of
    the 95% Wilson interval at 50% and at 90% accuracy."""
    from .stats import accuracy_interval

    half = {p: (lambda lo_hi: (lo_hi[1] - lo_hi[0]) / 2)(accuracy_interval(p, samples)) for p in (50.0, 90.0)}
    return (f"On {samples} test images an accuracy is known to about ±{half[50.0]:.1f} points near 50% and "
            f"±{half[90.0]:.1f} near 90% (95% Wilson interval; each number's interval is in eval.json): "
            f"smaller differences are not resolved by this subset.")


def with_intervals(res: dict, samples: int) -> dict:
    """A model's result with the 95% interval of its clean and of each attack's accuracy."""
    from .stats import accuracy_interval

    def ci(value):
        return None if value is None else [round(v, 3) for v in accuracy_interval(value, samples)]

    return {**res, "clean_ci95": ci(res.get("clean_acc")),
            "attacks": [{**r, "ci95": ci(r.get("robust_acc"))} for r in res["attacks"]]}


def reused_note(meta: dict) -> str:
    """The sentence saying which (model, attack) results an evaluation took over from
    earlier ones, and when each was computed (``meta["reused"]``: model -> attack -> time)."""
    parts = []
    for model, attacks in (meta.get("reused") or {}).items():
        by_time = {}
        for attack, when in attacks.items():
            by_time.setdefault(when, []).append(attack)
        parts += [f"{model}: {', '.join(names)} (computed {when})" for when, names in by_time.items()]
    if not parts:
        return ""
    return (f"Results reused from earlier evaluations (same weights, attack and parameters, threat, test images, "
            f"seed, batch size and precision): {'; '.join(parts)}.")


def precision_text(meta: dict) -> str:
    """The report's sentence on the arithmetic: fp32, or the autocast note of an ``--amp`` run."""
    note = meta.get("precision_note")
    if note:
        return f"Precision: {note}."
    return f"Precision: {meta.get('precision', 'fp32')} (no autocast)."


def write_reports(out_dir, results: dict, meta: dict) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = {name: with_intervals({**res, "attacks": [{k: v for k, v in r.items() if not k.startswith("_")}
                                                      for r in res["attacks"]]}, meta["samples"])
             for name, res in results.items()}
    json_path = out_dir / "eval.json"
    json_path.write_text(json.dumps({**meta, "models": clean}, indent=2) + "\n")
    notes = [f"- {name} / {r['attack']}: {r['note']}" for name, res in results.items()
             for r in res["attacks"] if r.get("note")]
    warnings = [f"- {name}: {c['warning']}" for name, res in results.items()
                for c in res.get("sanity", []) if c.get("warning")]
    md = ["# Robustness evaluation", "",
          f"{meta['dataset']}, {meta['threat']['norm']} ε = {meta['threat']['eps']:.6g} (pixel space), "
          f"{meta['samples']} test images (indices from seed {meta['seed']}; identical for every model). "
          f"Accuracies in %; worst = per-sample worst case over all attacks; gap = best − worst attack.", "",
          markdown_table(results), "", interval_note(meta["samples"]), "", precision_text(meta), ""]
    reused = reused_note(meta)
    if reused:
        md += [reused, ""]
    if notes:
        md += ["Notes:", *notes, ""]
    if warnings:
        md += ["Sanity-check warnings:", *warnings, ""]
    md_path = out_dir / "eval.md"
    md_path.write_text("\n".join(md))
    return json_path, md_path
