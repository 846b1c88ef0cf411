"""One training epoch: advplug's engine against a bare hand-written PyTorch loop doing the
same work, and (for PGD-AT) against a loop built on the upstream library (torchattacks).

    ADVPLUG_DATA=../shared/data .venv/bin/python benchmarks/bench_engine.py [--repeats 3]

All loops train the same architecture from the same initial weights on the same MNIST
batches (uint8 tensors, same shuffling); times are medians over alternating repeats,
so background load hits every contender alike; the fastest repeat of each is reported
too (on a shared 2-core machine single repeats vary by +-20%). The engine's time includes its
per-epoch checkpoint; the held-out monitor is off (it is extra work, reported apart).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import torchattacks

from advplug.config import make_config
from advplug.engine import Run
from advplug.monitor import clean_and_pgd_accuracy
from advplug.params import MADRY_STEP, resolve_step


def batches(run):
    """The same batches the engine sees, from a copy of its loader's generator state."""
    loader = run.loader
    state = loader.generator.get_state()
    out = list(loader)
    loader.generator.set_state(state)
    return out


def bare_epoch(model, opt, data, attack=None):
    model.train()
    loss_sum, correct = torch.zeros(()), torch.zeros(())
    for x, y in data:
        if attack is not None:
            x = attack(model, x, y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
    return loss_sum.item(), correct.item()


def bare_pgd(eps, steps, alpha):
    def attack(model, x, y):  # hand-written PGD from a uniform random start
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        return x + delta
    return attack


def torchattacks_pgd(eps, steps, alpha):
    cache = {}

    def attack(model, x, y):
        if "atk" not in cache:
            atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
            atk.set_model_training_mode(model_training=True, batchnorm_training=True, dropout_training=True)
            cache["atk"] = atk
        return cache["atk"](x, y)
    return attack


def bench(trainer, subset, repeats, steps=10, eps=0.3):
    cfg = make_config(dict(dataset="mnist", trainer=trainer, trainer_params={"steps": steps} if trainer == "pgd-at" else {},
                           train_subset=subset, monitor_size=0, eval_steps=0, progress=False,
                           out=f"runs/bench-{trainer}", eps=eps))
    run = Run(cfg)
    run.write_start_files()
    init = {k: v.clone() for k, v in run.model.state_dict().items()}
    data = batches(run)
    alpha = resolve_step(MADRY_STEP, eps, steps)
    contenders = {"bare": None, "advplug": None}
    if trainer == "pgd-at":
        contenders["torchattacks"] = None
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name in contenders:
            run.model.load_state_dict(init)
            opt = run.optimizer = torch.optim.SGD(run.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                  weight_decay=cfg.weight_decay)
            torch.manual_seed(0)
            start = time.perf_counter()
            if name == "advplug":
                run.train_epoch()
                run.checkpoint()
            else:
                attack = None
                if trainer == "pgd-at":
                    attack = (bare_pgd if name == "bare" else torchattacks_pgd)(eps, steps, alpha)
                bare_epoch(run.model, opt, data, attack)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    mon_start = time.perf_counter()
    x, y = run.data["train"]
    clean_and_pgd_accuracy(run.model, x[:256], y[:256], cfg.threat, 10)
    monitor_s = time.perf_counter() - mon_start
    return {"trainer": trainer, "samples": subset, "batches": len(data), "repeats": repeats,
            "median_s": med, "min_s": best, "all_s": times,
            "min_ratio_advplug_over_bare": best["advplug"] / best["bare"],
            "ratio_advplug_over_bare": med["advplug"] / med["bare"],
            **({"ratio_torchattacks_over_bare": med["torchattacks"] / med["bare"]} if "torchattacks" in med else {}),
            "monitor_256_pgd10_s": monitor_s}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--standard-subset", type=int, default=8192)
    p.add_argument("--pgd-subset", type=int, default=2048)
    p.add_argument("--out", default="runs/bench_engine.json")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results = [bench("standard", args.standard_subset, args.repeats),
               bench("pgd-at", args.pgd_subset, args.repeats)]
    print("median seconds per epoch (ratio to bare); fastest-repeat ratio advplug/bare in brackets")
    print(f"{'trainer':<10} {'samples':>7}  {'bare s':>7} {'advplug s':>9} {'ratio':>6} {'[min]':>7}  "
          f"{'torchattacks s':>14} {'ratio':>6}")
    for r in results:
        m = r["median_s"]
        ta = f"{m['torchattacks']:>14.2f} {r['ratio_torchattacks_over_bare']:>6.3f}" if "torchattacks" in m else ""
        print(f"{r['trainer']:<10} {r['samples']:>7}  {m['bare']:>7.2f} {m['advplug']:>9.2f} "
              f"{r['ratio_advplug_over_bare']:>6.3f} [{r['min_ratio_advplug_over_bare']:.3f}]  {ta}")
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, f, indent=2)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
