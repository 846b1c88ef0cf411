"""Studies: train several variants with identical settings and seed, evaluate them on one
identical test subset, and write one comparison table (Markdown + JSON) and a plot.

A study is a dict ``{label: config overrides}`` on top of a shared base config. Each variant
trains into ``<out>/runs/<label>``; a variant whose ``model.pt`` exists with the same
config is reused, so an interrupted study continues where it stopped (and an interrupted
variant resumes from its checkpoint). Training time is the sum of the epochs' training
time (the per-epoch monitor excluded), so methods compare on what they cost to train.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .config import make_config
from .errors import AdvplugError
from .params import split_spec_list

FAST_AT_TRAINERS = "fgsm-rs,fgsm-sdi,pgd-at:steps=10"
FAST_AT_ATTACKS = "pgd:steps=10,pgd:steps=20,pgd:steps=50,cw,apgd,autoattack"


def label_for(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", spec.replace(":", "_")).strip("_")


def trainer_variants(trainers: str) -> dict[str, dict]:
    """'fgsm-rs,pgd-at:steps=10' -> {label: {"trainer": ..., "trainer_params": ...}}."""
    from .params import parse_spec

    variants = {}
    for spec in split_spec_list(trainers):
        name, params = parse_spec(spec)
        variants[label_for(spec)] = {"trainer": name, "trainer_params": params}
    if not variants:
        raise AdvplugError("--trainers is empty; e.g. --trainers fgsm-rs,fgsm-sdi,pgd-at:steps=10")
    return variants


def _finished(run_dir: Path, config) -> bool:
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (run_dir / "model.pt").is_file() and (run_dir / "final_eval.json").is_file() \
        and saved == config.to_dict()


def _train_variant(label: str, config, host=None) -> list[dict]:
    from .engine import train

    run_dir = Path(config.out)
    if _finished(run_dir, config):
        print(f"[study] {label}: reusing the finished run in {run_dir}", flush=True)
    elif (run_dir / "checkpoints" / "last.pt").is_file():
        print(f"[study] {label}: resuming {run_dir}", flush=True)
        train(resume=run_dir, host=host)
    else:
        print(f"[study] {label}: training into {run_dir}", flush=True)
        train(config, host=host)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_study(name: str, variants: dict[str, dict], base: dict, *, attacks: str, out, test_subset=None,
              eval_seed: int = 42, batch_size: int = 256, host=None, progress: bool = False) -> dict:
    """Train every variant, evaluate all on the same test images, write ``study.{md,json,png}``."""
    from .evaluate import run_evaluation
    from .modelio import load_model_and_spec

    from .host import get_host

    out = Path(out)
    configs = {label: make_config({**base, **overrides, "out": str(out / "runs" / label)})
               for label, overrides in variants.items()}  # every config checked before any training
    registry = (host or get_host()).registry
    for cfg in configs.values():
        registry.get("trainers", cfg.trainer)
        registry.get("models", cfg.model)
    histories = {label: _train_variant(label, cfg, host) for label, cfg in configs.items()}
    any_cfg = next(iter(configs.values()))
    models = {label: load_model_and_spec(Path(cfg.out) / "model.pt", "cpu") for label, cfg in configs.items()}
    evaluation = _reusable_evaluation(out / "eval" / "eval.json", configs, attacks, test_subset, eval_seed, any_cfg)
    if evaluation is None:
        evaluation = run_evaluation(models, dataset=any_cfg.dataset, attacks=attacks, norm=any_cfg.norm,
                                    eps=any_cfg.eps, test_subset=test_subset, seed=eval_seed,
                                    data_root=any_cfg.data_root, verify_checksums=any_cfg.verify_checksums,
                                    batch_size=batch_size, out=out / "eval", progress=progress)
    else:
        print(f"[study] reusing the evaluation in {out / 'eval' / 'eval.json'} (same models, attacks and "
              f"test images)", flush=True)
    reference = next(iter(variants))
    rows = []
    for label, history in histories.items():
        times = sorted(m["epoch_time_s"] for m in history)
        train_s = sum(times)
        res = evaluation["results"][label]
        rows.append({"method": label, "trainer": configs[label].trainer,
                     "trainer_params": configs[label].trainer_params, "clean_acc": res["clean_acc"],
                     "robust": {r["attack"]: r["robust_acc"] for r in res["attacks"]},
                     "worst_case_acc": res["worst_case_acc"], "epochs": len(history), "train_s": train_s,
                     "epoch_s": train_s / max(len(history), 1), "epoch_times_s": [m["epoch_time_s"] for m in history],
                     "median_epoch_s": (times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2 if times else 0.0,
                     "final_heldout_pgd_acc": history[-1].get("monitor_heldout_pgd_acc") if history else None})
    # the median epoch: one epoch slowed by another process on a shared machine does not move it
    ref_epoch = next(r["median_epoch_s"] for r in rows if r["method"] == reference)
    for row in rows:
        row["epoch_time_ratio"] = row["median_epoch_s"] / ref_epoch if ref_epoch else None
    summary = {"study": name, "reference": reference, "base_config": {k: v for k, v in any_cfg.to_dict().items()
                                                                       if k not in ("trainer", "trainer_params",
                                                                                    "out")},
               "attacks": attacks, "evaluation": {k: v for k, v in evaluation["meta"].items()
                                                  if k != "test_indices"},
               "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "study.md").write_text(markdown(summary) + "\n")
    plot_study(summary, out / "study.png")
    print(markdown(summary))
    print(f"written: {out / 'study.md'}, {out / 'study.json'}, {out / 'study.png'}")
    return summary


def _reusable_evaluation(path: Path, configs: dict, attacks: str, test_subset, eval_seed, cfg) -> dict | None:
    """A previous evaluation of exactly these models (not retrained since), attacks and test images."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    newest_model = max((Path(c.out) / "model.pt").stat().st_mtime for c in configs.values())
    same = (saved.get("attacks") == attacks and saved.get("seed") == eval_seed and saved.get("dataset") == cfg.dataset
            and saved.get("threat") == {"norm": cfg.norm, "eps": cfg.eps}
            and (test_subset is None or saved.get("samples") == test_subset)
            and set(saved.get("models", {})) == set(configs) and path.stat().st_mtime > newest_model)
    if not same:
        return None
    meta = {k: v for k, v in saved.items() if k != "models"}
    return {"meta": meta, "results": saved["models"]}


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    attacks = list(rows[0]["robust"]) if rows else []
    head = ["method", "clean", *attacks, "worst", "epochs", "train s", "median s/epoch",
            f"epoch time vs {summary['reference']}"]
    lines = [f"# Study: {summary['study']}", "",
             _setting_line(summary), "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [r["method"], f"{r['clean_acc']:.2f}", *[f"{r['robust'][a]:.2f}" for a in attacks],
                 f"{r['worst_case_acc']:.2f}", str(r["epochs"]), f"{r['train_s']:.1f}", f"{r['median_epoch_s']:.1f}",
                 f"{r['epoch_time_ratio']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting_line(summary: dict) -> str:
    cfg, ev = summary["base_config"], summary["evaluation"]
    return (f"{cfg['dataset']} / {cfg['model']}, {cfg['norm']} ε = {cfg['eps']:.4g}, {cfg['epochs']} epochs, "
            f"{cfg['train_subset'] or 'all'} training images, {cfg['optimizer']} lr {cfg['lr']} "
            f"({cfg['lr_schedule']}), seed {cfg['seed']}; evaluated on the same {ev['samples']} test images "
            f"(eval seed {ev['seed']}). Accuracies in %, worst = per-sample worst case over the attacks; "
            f"training time excludes the per-epoch monitor; time ratios use the median epoch.")


def plot_study(summary: dict, path) -> Path:
    from .plots import _pyplot

    plt = _pyplot()
    rows = summary["rows"]
    columns = ["clean", *rows[0]["robust"], "worst"] if rows else []
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        values = [r["clean_acc"], *r["robust"].values(), r["worst_case_acc"]]
        acc_ax.bar([c + i * width for c in range(len(columns))], values, width, label=r["method"])
    acc_ax.set_xticks([c + width * (len(rows) - 1) / 2 for c in range(len(columns))])
    acc_ax.set_xticklabels(columns, rotation=20, ha="right", fontsize=8)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.legend(fontsize=8)
    acc_ax.set_title(summary["study"])
    time_ax.bar([r["method"] for r in rows], [r["median_epoch_s"] for r in rows], color="gray")
    time_ax.set_ylabel("training s / epoch (median)")
    time_ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
