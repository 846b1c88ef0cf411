"""Training time per activation for smooth adversarial training (advplug-sat), relative to
ReLU: one fgsm-rs epoch on the same MNIST batches for each variant of a study file.

    ADVPLUG_DATA=../shared/data .venv/bin/python benchmarks/bench_activations.py \
        [--variants examples/sat_ablation_mnist.toml] [--subset 2560] [--repeats 3]

The variants (ReLU, softplus, GELU, SiLU, the backward-mode cells) are timed in turn within
each repeat, in a new seeded random order every repeat, so background load on a shared
machine and any drift during the run (allocator, caches, clock) hit all of them alike; the table shows
the median epoch time over the repeats, the fastest one, and the median's ratio to the first
variant. The per-epoch monitor, checkpointing and evaluation are off: this is the training
step alone, which is what the activation changes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from advplug.config import make_config
from advplug.engine import Run
from advplug.study import file_variants
from epoch_timing import interleaved_epoch_times, ratio_rows


def build_runs(variants_file: str, subset: int) -> dict[str, Run]:
    base, variants = file_variants(variants_file)
    runs = {}
    for label, overrides in variants.items():
        cfg = make_config({**base, **overrides, "train_subset": subset, "monitor_size": 0, "eval_steps": 0,
                           "progress": False, "plot": False, "out": f"runs/bench-activations/{label}"})
        runs[label] = Run(cfg)
    return runs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="examples/sat_ablation_mnist.toml")
    p.add_argument("--subset", type=int, default=2560, help="training images per timed epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/bench_activations.json")
    args = p.parse_args()
    runs = build_runs(args.variants, args.subset)
    times = interleaved_epoch_times(runs, args.repeats)
    reference = next(iter(runs))
    rows = ratio_rows(times)
    first = next(iter(runs.values())).config
    print(f"fgsm-rs epoch on {args.subset} {first.dataset} images, {first.model}, {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"| variant | median s | best s | vs {reference} |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_s']:.2f} | {r['best_s']:.2f} | {r['ratio']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "subset": args.subset, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
