"""One benchmark, one table: time ratios measured in the same run on the same MNIST images.

    ADVPLUG_DATA=../shared/data .venv/bin/python -m benchmarks [--subset 2000] [--repeats 3] [--out runs/bench.md]

1. engine: advplug's engine vs a bare PyTorch loop (same model, weights, batches; ``bench_engine``);
2. art: ART's own trainers vs advplug's for one epoch of the same images, model, initial weights
   and optimizer: ``AdversarialTrainerMadryPGD`` vs ``pgd-at:steps=10`` (ε 0.3, step 2.5·ε/10)
   and ``AdversarialTrainerFBFPyTorch`` (use_amp=False) vs ``fgsm-rs`` (ε 0.3);
3. recipes: one epoch of ``fgsm-rs``, ``fgsm-sdi`` (advplug-sdi plugin) and ``pgd-at:steps=10``
   relative to ``standard``.

Groups 2 and 3 are timed together in one interleaved loop (``epoch_timing``: a warm-up epoch
each, then every repeat in a new seeded random order); times are medians. Run it on a quiet
machine: another job on the same cores makes every number meaningless.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts import each other by bare name

from bench_engine import bench  # noqa: E402
from epoch_timing import interleaved_epoch_times, ratio_rows  # noqa: E402

from advplug.config import make_config  # noqa: E402
from advplug.engine import Run, make_optimizer  # noqa: E402
from advplug.params import MADRY_STEP, resolve_step  # noqa: E402

GROUPS = ("engine", "art", "recipes")
EPS, STEPS = 0.3, 10
TRAINERS = {"standard": ("standard", {}), "fgsm-rs": ("fgsm-rs", {}), "fgsm-sdi": ("fgsm-sdi", {}),
            "pgd-at(10)": ("pgd-at", {"steps": STEPS})}


def advplug_run(trainer, params, args, model):
    cfg = make_config(dict(dataset="mnist", model=model, trainer=trainer, trainer_params=params, eps=EPS,
                           train_subset=args.subset, monitor_size=0, eval_steps=0, progress=False, plot=False,
                           device=args.device, out=f"runs/bench/{trainer}"))
    return Run(cfg)


class ArtEpoch:
    """An ART trainer behind ``train_epoch()``, so ``interleaved_epoch_times`` times it like a Run."""

    def __init__(self, trainer, x, y, batch_size):
        self.trainer, self.x, self.y, self.batch_size = trainer, x, y, batch_size

    def train_epoch(self):
        self.trainer.fit(self.x, self.y, nb_epochs=1, batch_size=self.batch_size)


def art_contenders(run, args):
    """ART's PGD-AT and FBF trainers on a copy of ``run``'s untrained model, its optimizer
    settings and its training images as float32 numpy arrays in [0, 1], one-hot labels."""
    from art.defences.trainer import AdversarialTrainerFBFPyTorch, AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    cfg = run.config
    x, y = run.data["train"]
    x, y = x[run.train_idx], y[run.train_idx]
    x = (x.float() / 255 if x.dtype == torch.uint8 else x.float())
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x, y = x.numpy(), torch.nn.functional.one_hot(y.long(), 10).float().numpy()  # FBF needs one-hot

    def classifier():
        model = copy.deepcopy(run.model)
        return PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), optimizer=make_optimizer(cfg, model.parameters()),
                                 input_shape=x.shape[1:], nb_classes=10, clip_values=(0.0, 1.0),
                                 device_type="gpu" if run.device.type == "cuda" else "cpu")

    madry = AdversarialTrainerMadryPGD(classifier(), nb_epochs=1, batch_size=cfg.batch_size, eps=EPS,
                                       eps_step=resolve_step(MADRY_STEP, EPS, STEPS), max_iter=STEPS, num_random_init=1)
    madry.attack.set_params(batch_size=cfg.batch_size)  # ART's PGD would otherwise attack in chunks of 32
    fbf = AdversarialTrainerFBFPyTorch(classifier(), eps=EPS, use_amp=False)
    return {"ART MadryPGD": ArtEpoch(madry, x, y, cfg.batch_size), "ART FBF": ArtEpoch(fbf, x, y, cfg.batch_size)}


def row(what, a, a_s, b, b_s, n):
    return {"comparison": what, "a": a, "a_s": a_s, "a_img_s": n / a_s, "b": b, "b_s": b_s, "b_img_s": n / b_s,
            "ratio": a_s / b_s}


def measure(args) -> list[dict]:
    rows = []
    if "engine" in args.only:
        for trainer, label in (("standard", "standard"), ("pgd-at", f"pgd-at({STEPS})")):
            r = bench(trainer, args.subset, args.repeats, steps=STEPS, eps=EPS)
            m = r["median_s"]
            rows.append(row(f"engine {label}: advplug / bare loop", "advplug", m["advplug"], "bare loop", m["bare"],
                            args.subset))
    want_art, want_recipes = "art" in args.only, "recipes" in args.only
    if not (want_art or want_recipes):
        return rows
    names = list(TRAINERS) if want_recipes else ["fgsm-rs", "pgd-at(10)"]
    runs = {name: advplug_run(*TRAINERS[name], args, args.model) for name in names}
    if want_art:
        runs.update(art_contenders(runs["pgd-at(10)"], args))
    med = {r["variant"]: r["median_s"] for r in ratio_rows(interleaved_epoch_times(runs, args.repeats))}
    if want_art:
        rows.append(row(f"ART AdversarialTrainerMadryPGD / advplug pgd-at({STEPS})", "ART MadryPGD",
                        med["ART MadryPGD"], "advplug pgd-at(10)", med["pgd-at(10)"], args.subset))
        rows.append(row("ART AdversarialTrainerFBFPyTorch / advplug fgsm-rs", "ART FBF", med["ART FBF"],
                        "advplug fgsm-rs", med["fgsm-rs"], args.subset))
    if want_recipes:
        for name in names[1:]:
            rows.append(row(f"recipes {name} / standard", name, med[name], "standard", med["standard"], args.subset))
    return rows


def machine(args) -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": args.device, "model": args.model,
            "subset": args.subset, "repeats": args.repeats}


def markdown(rows, info) -> str:
    head = (f"MNIST, {info['model']}, {info['subset']} training images, one epoch per contender, median of "
            f"{info['repeats']} interleaved repeats; device {info['device']}, {info['cpus']} CPUs, "
            f"{info['torch_threads']} torch threads, torch {info['torch']}\n\n")
    lines = ["| comparison | A s | A img/s | B s | B img/s | A/B |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['comparison']} | {r['a_s']:.2f} | {r['a_img_s']:.0f} | {r['b_s']:.2f} | {r['b_img_s']:.0f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--subset", type=int, default=2000, help="training images per timed epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="mnist-cnn")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}")
    p.add_argument("--out", help="also write the table here (Markdown) and as JSON beside it")
    args = p.parse_args(argv)
    args.only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = set(args.only) - set(GROUPS)
    if unknown:
        p.error(f"unknown --only group(s) {', '.join(sorted(unknown))}; use {', '.join(GROUPS)}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    info = machine(args)
    rows = measure(args)
    table = markdown(rows, info)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        out.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    return {"machine": info, "rows": rows}


if __name__ == "__main__":
    main()
