"""Training speed of recipes relative to each other: the same number of training images
per timed epoch in each recipe's own setting (network, trainer, batch size), e.g. the
SDI/RS and SDI/PGD-AT time ratios of the Wong et al. MNIST setting.

    ADVPLUG_DATA=../shared/data .venv/bin/python benchmarks/bench_recipes.py \\
        wong2020-mnist-fgsm-rs wong2020-mnist-fgsm-sdi wong2020-mnist-pgd-at [--subset 6000] [--repeats 3]

Epochs are timed in turn, in a seeded random order every repeat (``epoch_timing``); the
table shows the median epoch, the fastest one, images/s and the ratio to the first recipe.
The per-epoch monitor, checkpoints and evaluation are off: the training step alone. Run it
on a quiet machine: another job on the same cores makes every number meaningless.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from advplug.config import make_config
from advplug.engine import Run
from advplug.recipes import load_recipe
from epoch_timing import interleaved_epoch_times, ratio_rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--subset", type=int, default=6000, help="training images per timed epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", help="bf16: CUDA autocast of the training step")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-verify-checksums", action="store_true")
    p.add_argument("--out", default="runs/bench_recipes.json")
    args = p.parse_args()
    runs = {}
    for name in args.recipes:
        values = {**load_recipe(name).config(), "train_subset": args.subset, "monitor_size": 0, "eval_steps": 0,
                  "progress": False, "plot": False, "device": args.device, "amp": args.amp, "channels_last": args.channels_last,
                  "out": f"runs/bench-recipes/{name}"}
        if args.no_verify_checksums:
            values["verify_checksums"] = False
        runs[name] = Run(make_config(values))
    rows = ratio_rows(interleaved_epoch_times(runs, args.repeats), key="recipe")
    device = next(iter(runs.values())).device
    print(f"one epoch of {args.subset} training images per recipe, {args.repeats} repeats, device {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"| recipe | median s | best s | images/s | vs {args.recipes[0]} |\n|---|---|---|---|---|")
    for r in rows:
        r["images_per_s"] = args.subset / r["median_s"]
        print(f"| {r['recipe']} | {r['median_s']:.2f} | {r['best_s']:.2f} | {r['images_per_s']:.0f} | "
              f"{r['ratio']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "device": str(device), "subset": args.subset, "rows": rows}, indent=2)
                              + "\n")


if __name__ == "__main__":
    main()
