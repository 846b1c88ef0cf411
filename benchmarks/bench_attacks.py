"""Same attack, two libraries: seconds for PGD-20 and FGSM through advplug's torchattacks
and ART adapters on the same model and images (why the short names alias torchattacks).

    ADVPLUG_DATA=../shared/data .venv/bin/python benchmarks/bench_attacks.py MODEL.pt [--n 256]
"""
import argparse
import time

import torch

import advplug
from advplug.attacks.base import build_attack, eval_frozen
from advplug.data import BUILTIN_DATASETS
from advplug.evaluation import load_test_set, predictions_correct
from advplug.threat import Threat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = advplug.load_model(args.model)
    test = load_test_set(BUILTIN_DATASETS["mnist"], args.n)
    threat, reg = Threat("Linf", 0.3), advplug.registry()
    print(f"{'attack':<22} {'median s':>9} {'robust acc':>10}")
    for spec in ("torchattacks:fgsm", "art:fgsm", "torchattacks:pgd:steps=20", "art:pgd:steps=20"):
        times = []
        for _ in range(args.repeats):
            torch.manual_seed(0)
            attack = build_attack(reg, spec, model, threat)
            start = time.perf_counter()
            with eval_frozen(model):  # as advplug eval runs every attack
                acc = predictions_correct(model, test, 256, "cpu", attack).float().mean().item()
            times.append(time.perf_counter() - start)
        print(f"{spec:<22} {sorted(times)[len(times) // 2]:>9.2f} {100 * acc:>9.1f}%")


if __name__ == "__main__":
    main()
