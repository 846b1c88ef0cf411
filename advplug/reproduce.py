"""``advplug reproduce``: train a recipe over seeds, evaluate every seed on the same test
images, and check the measured numbers against the published ones.

Every accuracy carries its 95 % Wilson interval on the test subset; a published number is
*inside* when it lies in that interval, and *within tolerance* when it is no more than the
recipe's tolerance away. Runs live in ``OUT/<recipe>/<full|quick>/seed-<S>`` and follow the
study's rules: a finished run is reused, an interrupted one resumed, one trained with other
settings refused (``overwrite``: retrained)."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from .errors import AdvplugError, warn
from .recipes import Recipe, load_recipe
from .stats import accuracy_interval

#: a run has collapsed (catastrophic overfitting) when its last epoch's held-out PGD
#: accuracy is below this fraction of its best epoch's, and at least COLLAPSE_MIN_DROP
#: points below it (so that noise around a low accuracy is no collapse)
COLLAPSE_FRACTION = 0.5
COLLAPSE_MIN_DROP = 5.0


def _fallen(best: float, acc: float) -> bool:
    return acc < COLLAPSE_FRACTION * best and best - acc >= COLLAPSE_MIN_DROP


COLLAPSE_RULE = (f"last epoch's held-out PGD accuracy below {COLLAPSE_FRACTION:g} x its best epoch's and at least "
                 f"{COLLAPSE_MIN_DROP:g} points lower")


def parse_seeds(text) -> list[int]:
    """'0,1,2' or '0-4' (or a list of ints) -> [0, 1, 2, ...]; one error otherwise."""
    if isinstance(text, (list, tuple)):
        items = [str(t) for t in text]
    else:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
    seeds = []
    for item in items:
        if re.fullmatch(r"\d+-\d+", item):
            low, high = (int(v) for v in item.split("-"))
            seeds.extend(range(low, high + 1))
        elif re.fullmatch(r"\d+", item):
            seeds.append(int(item))
        else:
            seeds = []
            break
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise AdvplugError(f"--seeds {text!r}: write distinct whole numbers >= 0, e.g. 0,1,2 or 0-4")
    return seeds


def collapse(history: list[dict]) -> dict:
    """Catastrophic overfitting from the held-out PGD monitor (:data:`COLLAPSE_RULE`): best
    and last accuracy, the first epoch that fell that far below the best so far, and
    whether the run ended collapsed."""
    accs = [(m["epoch"], m["monitor_heldout_pgd_acc"]) for m in history if "monitor_heldout_pgd_acc" in m]
    if not accs:
        return {"best": None, "last": None, "fell_at": None, "collapsed": None}
    best_so_far, fell_at = -1.0, None
    for epoch, acc in accs:
        best_so_far = max(best_so_far, acc)
        if fell_at is None and _fallen(best_so_far, acc):
            fell_at = epoch
    best = max(a for _, a in accs)
    return {"best": best, "last": accs[-1][1], "fell_at": fell_at, "collapsed": _fallen(best, accs[-1][1])}


def run_reproduce(names, seeds=None, *, quick: bool = False, n_eval: int | None = None, out="runs/reproduce",
                  device: str = "auto", amp: str | None = None, channels_last: bool | None = None,
                  overwrite: bool = False, data_root=None,
                  verify_checksums: bool = True, batch_size: int = 256, progress: bool = False, host=None) -> dict:
    """Train, evaluate and check the recipes ``names`` (several: one table, and time ratios
    against the first). Returns the summary also written to ``OUT/reproduce.json``."""
    from .engine import resolve_device
    from .evaluation import resolve_attacks
    from .host import get_host
    from .config import make_config
    from .rundir import check_output_dir
    from .study import _refuse_other_settings, _train_variant

    host = host or get_host()
    registry = host.registry
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise AdvplugError(f"name each recipe once, got {names}")
    recipes = [load_recipe(name) for name in names]
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if n_eval is not None and (isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1):
        raise AdvplugError(f"--n-eval must be a whole number >= 1, got {n_eval!r}")
    out = check_output_dir(out)
    mode = "quick" if quick else "full"
    configs, plan = {}, []
    for recipe in recipes:
        attacks = recipe.quick_attack if quick else recipe.attacks
        for seed in seed_list or recipe.seeds:
            overrides = {"seed": seed, "out": str(out / recipe.name / mode / f"seed-{seed}"), "device": device,
                         "amp": amp, "channels_last": channels_last, "data_root": data_root, "progress": progress,
                         "verify_checksums": False if not verify_checksums else None}
            cfg = make_config({**recipe.config(quick), **{k: v for k, v in overrides.items() if v is not None}},
                              registry=registry)
            resolve_attacks(registry, attacks, cfg.threat)  # a bad attack fails before any training
            label = f"{recipe.name} seed {seed}"
            configs[label] = cfg
            plan.append((recipe, seed, label, attacks))
    for recipe in recipes:
        if recipe.hardware == "gpu" and not quick and resolve_device(device).type == "cpu":
            warn(f"recipe {recipe.name} is meant for a GPU ({recipe.estimate}); running it on the CPU as asked")
    if not overwrite:
        _refuse_other_settings(configs)
    histories = {label: _train_variant(label, configs[label], host, prefix="reproduce") for _, _, label, _ in plan}

    rows = []
    for recipe in recipes:
        mine = [(seed, label, attacks) for r, seed, label, attacks in plan if r is recipe]
        n = n_eval or (recipe.quick_n_eval if quick else recipe.n_eval)
        cfg = configs[mine[0][1]]
        evaluation = _evaluate(mine, configs, cfg, n, out / "eval" / mode, resolve_device(cfg.device), batch_size,
                               data_root, verify_checksums, registry, progress)
        for seed, label, attacks in mine:
            rows.append(_seed_row(recipe, seed, label, configs[label], histories[label],
                                  evaluation["results"][label], evaluation["meta"]["samples"], quick))
    summary = {"recipes": names, "mode": mode, "collapse_rule": COLLAPSE_RULE,
               "published": {r.name: [vars(p) for p in r.published] for r in recipes},
               "titles": {r.name: r.title for r in recipes}, "rows": rows,
               "verdicts": [v for r in recipes for v in verdicts(r, [row for row in rows if row["recipe"] == r.name],
                                                                  quick)],
               "time_ratios": time_ratios(rows, names)}
    out.mkdir(parents=True, exist_ok=True)
    stem = "reproduce" if not quick else "reproduce-quick"
    text = markdown(summary)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text + "\n")
    from .plots import plot_heldout_by_group

    plot = plot_heldout_by_group({r.name: {row["seed"]: histories[row["label"]] for row in rows
                                           if row["recipe"] == r.name} for r in recipes},
                                 out / f"{stem}-heldout.png", monitor_steps=cfg.monitor_steps)
    print(text)
    print(f"written: {out / (stem + '.md')}, {out / (stem + '.json')}" + (f", {plot}" if plot else ""))
    return summary


def _evaluate(mine, configs, cfg, n, out, device, batch_size, data_root, verify_checksums, registry, progress):
    from .evaluation import run_evaluation
    from .modelio import load_model_and_spec

    models = {label: load_model_and_spec(Path(configs[label].out) / "model.pt", device=device, registry=registry)
              for _, label, _ in mine}
    return run_evaluation(models, dataset=cfg.dataset, attacks=mine[0][2], norm=cfg.norm, eps=cfg.eps,
                          test_subset=n, seed=cfg.eval_seed, data_root=data_root, verify_checksums=verify_checksums,
                          batch_size=batch_size, device=str(device), out=out, registry=registry, progress=progress)


def _seed_row(recipe: Recipe, seed: int, label: str, cfg, history: list[dict], result: dict, samples: int,
              quick: bool) -> dict:
    manifest = json.loads((Path(cfg.out) / "manifest.json").read_text())
    measured = {"clean": result["clean_acc"]}
    for attack_row in result["attacks"]:
        measured[attack_row["attack"]] = attack_row["robust_acc"]
    train_s = float(manifest.get("train_time_s") or sum(m["epoch_time_s"] for m in history))
    images = sum(m.get("train_samples", 0) for m in history)
    return {"recipe": recipe.name, "seed": seed, "label": label, "samples": samples, "measured": measured,
            "ci95": {k: list(accuracy_interval(v, samples)) for k, v in measured.items() if v is not None},
            "epochs": len(history), "train_time_s": train_s,
            "epoch_times_s": [m["epoch_time_s"] for m in history], "wall_time_s": manifest.get("wall_time_s"),
            "images_per_s": images / train_s if train_s else None, "device": manifest.get("device"),
            "torch_threads": manifest.get("torch_threads"), "run": str(cfg.out),
            "heldout_pgd": [m.get("monitor_heldout_pgd_acc") for m in history], **collapse(history)}


def verdicts(recipe: Recipe, rows: list[dict], quick: bool) -> list[dict]:
    """Per (metric, seed): published vs measured, the difference, inside the 95 % CI,
    within the tolerance; plus, over several seeds, the mean and the share inside."""
    out = []
    published = {p.metric: p for p in recipe.published}
    metrics = ["clean", *(k for k in rows[0]["measured"] if k != "clean")] if rows else []
    for metric in metrics:
        pub = published.get(metric) if not quick else None
        values = []
        for row in rows:
            value = row["measured"].get(metric)
            low, high = row["ci95"][metric]
            item = {"recipe": recipe.name, "metric": metric, "seed": row["seed"], "measured": value,
                    "ci95": [low, high], "samples": row["samples"], "published": pub.value if pub else None}
            if pub:
                item.update(difference=value - pub.value, inside_ci=low <= pub.value <= high,
                            within_tolerance=abs(value - pub.value) <= pub.tolerance, tolerance=pub.tolerance)
            values.append(value)
            out.append(item)
        if len(values) > 1:
            item = {"recipe": recipe.name, "metric": metric, "seed": "mean", "measured": statistics.mean(values),
                    "sd": statistics.stdev(values), "published": pub.value if pub else None}
            if pub:
                inside = [o for o in out if o["metric"] == metric and o["recipe"] == recipe.name
                          and o["seed"] != "mean" and o.get("inside_ci")]
                item.update(difference=item["measured"] - pub.value, seeds_inside_ci=len(inside),
                            within_tolerance=abs(item["measured"] - pub.value) <= pub.tolerance,
                            tolerance=pub.tolerance)
            out.append(item)
    return out


def time_ratios(rows: list[dict], names: list[str]) -> dict:
    """Each recipe's median epoch time over all its seeds' epochs (one epoch slowed by
    another process on a shared machine does not move it), divided by the first recipe's."""
    medians = {name: statistics.median(t for r in rows if r["recipe"] == name for t in r["epoch_times_s"])
               for name in names}
    ref = medians[names[0]]
    return {name: {"median_epoch_s": t, "ratio_to_first": t / ref if ref else None} for name, t in medians.items()}


def _yes(value) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def markdown(summary: dict) -> str:
    lines = []
    quick = summary["mode"] == "quick"
    if quick:
        lines.append("**--quick: a smoke run (few images, one epoch, a cheap attack), not a reproduction; "
                     "no published number is compared.**\n")
    for name in summary["recipes"]:
        rows = [r for r in summary["rows"] if r["recipe"] == name]
        lines.append(f"## {name}: {summary['titles'][name]}\n")
        for pub in summary["published"][name]:
            lines.append(f"- published {pub['metric']} {pub['value']:.2f} (±{pub['tolerance']:g} points): "
                         f"{pub['source']}" + (f", entry {pub['entry']}" if pub.get("entry") else ""))
        lines.append("")
        lines.append("| metric | seed | measured [95% CI] | published | difference | published in CI | "
                     "within tolerance |")
        lines.append("|---|---|---|---|---|---|---|")
        for v in (v for v in summary["verdicts"] if v["recipe"] == name):
            if v["seed"] == "mean":
                measured = f"{v['measured']:.2f} ± {v['sd']:.2f} (sd over seeds)"
                inside = f"{v['seeds_inside_ci']} of {len(rows)} seeds" if "seeds_inside_ci" in v else "-"
            else:
                measured = f"{v['measured']:.2f} [{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}] (n={v['samples']})"
                inside = _yes(v.get("inside_ci"))
            published = f"{v['published']:.2f}" if v["published"] is not None else "-"
            diff = f"{v['difference']:+.2f}" if "difference" in v else "-"
            lines.append(f"| {v['metric']} | {v['seed']} | {measured} | {published} | {diff} | {inside} | "
                         f"{_yes(v.get('within_tolerance'))} |")
        lines.append("")
        lines.append("| seed | epochs | held-out PGD best / last | collapsed (fell at epoch) | train time | "
                     "wall time | images/s | device |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            pgd = f"{r['best']:.1f} / {r['last']:.1f}" if r["best"] is not None else "-"
            fell = "-" if r["collapsed"] is None else (f"yes ({r['fell_at']})" if r["collapsed"] else
                                                       ("no" if r["fell_at"] is None else f"no (fell at {r['fell_at']}, recovered)"))
            wall = f"{r['wall_time_s']:.0f} s" if r.get("wall_time_s") is not None else "-"
            ips = f"{r['images_per_s']:.0f}" if r["images_per_s"] else "-"
            lines.append(f"| {r['seed']} | {r['epochs']} | {pgd} | {fell} | {r['train_time_s']:.1f} s | {wall} | "
                         f"{ips} | {r['device']} ({r['torch_threads']} thread{'s' if r['torch_threads'] != 1 else ''}) |")
        collapsed = [r for r in rows if r["collapsed"]]
        lines.append(f"\ncollapsed ({summary['collapse_rule']}): {len(collapsed)} of {len(rows)} seeds\n")
    ratios = summary["time_ratios"]
    if len(ratios) > 1:
        first = summary["recipes"][0]
        lines.append(f"median epoch time over all seeds, relative to {first} (same machine, same run of "
                     f"`advplug reproduce`):")
        for name, t in ratios.items():
            lines.append(f"- {name}: {t['median_epoch_s']:.2f} s per epoch, x{t['ratio_to_first']:.2f}")
    return "\n".join(lines)
