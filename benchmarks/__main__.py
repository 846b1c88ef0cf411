"""One benchmark, one table: time ratios measured in the same run on the same MNIST images.

    ADVPLUG_DATA=../shared/data .venv/bin/python -m benchmarks [--subset 2000] [--repeats 3] [--out runs/bench.md]

1. engine: advplug's engine vs a bare PyTorch loop (same model, weights, batches; ``bench_engine``);
2. art: ART's own trainers vs advplug's for one epoch of the same images, model, initial weights
   and optimizer: ``AdversarialTrainerMadryPGD`` vs ``pgd-at:steps=10`` (ε 0.3, step 2.5·ε/10)
   and ``AdversarialTrainerFBFPyTorch`` (use_amp=False) vs ``fgsm-rs`` (ε 0.3);
3. recipes: one epoch of ``fgsm-rs``, ``fgsm-sdi`` (advplug-sdi plugin) and ``pgd-at:steps=10``
   relative to ``standard``;
4. gpu (CUDA only; ``bench_gpu``): images/s and the fraction of the device's peak FLOP/s per
   trainer for CIFAR-10 PreActResNet-18, fp32 and bf16 + channels-last. Without CUDA it prints
   one line with the command to run it on a GPU machine.

Groups 2 and 3 are timed together in one interleaved loop (``epoch_timing``: a warm-up epoch
each, then every repeat in a new seeded random order); times are medians. Run it on a quiet
machine: another job on the same cores makes every number meaningless.

Equal work in group 2 (``ART_NOTE``): the default network, ``madry2018-mnist``, has no dropout
or batch norm, because ART computes its attacks (and FBF also its training step) with the model
in eval mode, advplug in training mode as the papers do: on a network with dropout ART would skip
the dropout work advplug does (on ``mnist-cnn`` ~9% of an fgsm-rs step). And ART's FBF step runs
in the loop of its ``fit`` at the optimizer's LR (``ArtFBFEpoch``), not under ``fit``'s built-in
LR schedule.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts import each other by bare name

from bench_engine import bench  # noqa: E402
from bench_gpu import FLOP_BATCHES, PGD_STEPS, TRAINERS  # noqa: E402 (the trainers every group compares)
from epoch_timing import interleaved_epoch_times, ratio_rows  # noqa: E402

from advplug.config import make_config  # noqa: E402
from advplug.engine import Run, make_optimizer  # noqa: E402
from advplug.params import MADRY_STEP, resolve_step  # noqa: E402

GROUPS = ("engine", "art", "recipes", "gpu")
EPS, STEPS = 0.3, PGD_STEPS
ART_NOTE = ("ART rows: the same work on both sides -- the network has no dropout or batch norm (ART takes its "
            "attacks, and FBF its training step, in eval mode; advplug in training mode, as the papers), and ART's FBF "
            "per-batch step runs at the optimizer's LR, not under the LR schedule built into its fit() (peak 0.21, "
            "which leaves an Adam-trained MNIST network dead within the first epoch: all-zero activations make its "
            "max-pool and ReLU backward faster)")
ART_UNEQUAL = ("UNEQUAL WORK in the ART rows: {model} has {layers}, which ART's eval-mode passes (its attacks; FBF: "
               "its whole step) skip and advplug's training-mode ones do not; --model madry2018-mnist has none. ART's "
               "FBF per-batch step runs at the optimizer's LR, not under the LR schedule built into its fit()")


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


class ArtFBFEpoch(ArtEpoch):
    """``AdversarialTrainerFBFPyTorch``'s own per-batch step (``_batch_process``: uniform start,
    FGSM step of 1.25·ε, clip, update with gradient-norm clipping at 0.5) in the loop of its
    ``fit`` (shuffle, slices, copies), at the optimizer's LR. ``fit`` itself sets the LR of every
    batch from a schedule built into it (0 -> 0.21 -> 0, Wong et al.'s CIFAR-10 SGD peak, per call
    of fit): on the Adam-trained MNIST networks here that kills the network in the warm-up epoch
    (the ReLUs after the convolutions output only zeros, chance accuracy), and on all-zero
    activations max-pool and ReLU backward run faster -- ART would be timed on a degenerate net."""

    def train_epoch(self):
        lr = self.trainer._classifier._optimizer.param_groups[0]["lr"]
        ind = np.arange(len(self.x))
        np.random.shuffle(ind)
        for start in range(0, len(self.x), self.batch_size):
            batch = ind[start:start + self.batch_size]
            self.trainer._batch_process(self.x[batch].copy(), self.y[batch], lr)


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
    return {"ART MadryPGD": ArtEpoch(madry, x, y, cfg.batch_size), "ART FBF": ArtFBFEpoch(fbf, x, y, cfg.batch_size)}


def row(what, a, a_s, b, b_s, n):
    return {"comparison": what, "a": a, "a_s": a_s, "a_img_s": n / a_s, "b": b, "b_s": b_s, "b_img_s": n / b_s,
            "ratio": a_s / b_s}


def mode_dependent(model) -> list[str]:
    """Layers that compute differently in training and eval mode (dropout, batch norm)."""
    kinds = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, kinds)})


def measure(args) -> tuple[list[dict], list[str]]:
    """The ratio rows and the notes under the table."""
    rows, notes = [], []
    if "engine" in args.only:
        for trainer, label in (("standard", "standard"), ("pgd-at", f"pgd-at({STEPS})")):
            r = bench(trainer, args.subset, args.repeats, steps=STEPS, eps=EPS)
            m = r["median_s"]
            rows.append(row(f"engine {label}: advplug / bare loop", "advplug", m["advplug"], "bare loop", m["bare"],
                            args.subset))
    want_art, want_recipes = "art" in args.only, "recipes" in args.only
    if not (want_art or want_recipes):
        return rows, notes
    names = list(TRAINERS) if want_recipes else ["fgsm-rs", "pgd-at(10)"]
    runs = {name: advplug_run(*TRAINERS[name], args, args.model) for name in names}
    if want_art:
        runs.update(art_contenders(runs["pgd-at(10)"], args))
        unequal = mode_dependent(runs["pgd-at(10)"].model)
        notes.append(ART_UNEQUAL.format(model=args.model, layers=", ".join(unequal)) if unequal else ART_NOTE)
    med = {r["variant"]: r["median_s"] for r in ratio_rows(interleaved_epoch_times(runs, args.repeats))}
    if want_art:
        rows.append(row(f"ART AdversarialTrainerMadryPGD / advplug pgd-at({STEPS})", "ART MadryPGD",
                        med["ART MadryPGD"], "advplug pgd-at(10)", med["pgd-at(10)"], args.subset))
        rows.append(row("ART AdversarialTrainerFBFPyTorch / advplug fgsm-rs", "ART FBF", med["ART FBF"],
                        "advplug fgsm-rs", med["fgsm-rs"], args.subset))
    if want_recipes:
        for name in names[1:]:
            rows.append(row(f"recipes {name} / standard", name, med[name], "standard", med["standard"], args.subset))
    return rows, notes


def gpu_device(args) -> str | None:
    """The CUDA device of the gpu group (``--device`` if it names one), None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return args.device if args.device.startswith("cuda") else "cuda"


def gpu_commands() -> dict:
    """The commands a GPU machine runs: this group, and Wong et al.'s full CIFAR-10 FGSM-RS run."""
    data = os.environ.get("ADVPLUG_DATA")
    env = f"ADVPLUG_DATA={shlex.quote(data)} " if data else ""
    return {"bench": f"{env}.venv/bin/python -m benchmarks --only gpu --no-verify-checksums --out runs/bench-gpu.md",
            "wong2020": f"{env}.venv/bin/python -m advplug reproduce wong2020-cifar10-fgsm-rs --seeds 0 --device cuda "
                        f"--amp bf16 --channels-last --no-verify-checksums --out runs/reproduce"}


def gpu_skip_line() -> str:
    cmd = gpu_commands()
    return (f"gpu: skipped, no CUDA device here. On a GPU machine: `{cmd['bench']}`; Wong et al.'s full 15-epoch "
            f"CIFAR-10 FGSM-RS run: `{cmd['wong2020']}`")


def measure_gpu(args) -> dict:
    """The gpu group: its rows and header, or the line saying why it was skipped."""
    import bench_gpu

    device = gpu_device(args)
    if device is None:
        return {"skipped": gpu_skip_line()}
    rows = bench_gpu.measure(device, batch_size=128, batches=args.gpu_batches, repeats=args.repeats,
                             verify_checksums=args.verify_checksums, peak_tflops=args.peak_tflops)
    name = torch.cuda.get_device_name(torch.device(device))
    known = bench_gpu.device_peaks(name)
    info = {"device_name": name, "torch": torch.__version__, "model": "preact-resnet18", "batch_size": 128,
            "batches": args.gpu_batches, "repeats": args.repeats, "flop_batches": FLOP_BATCHES,
            "peak_tflops": args.peak_tflops, "peak_device": known[0] if known else None}
    return {"info": info, "rows": rows, "table": bench_gpu.markdown(rows, info)}


def machine(args) -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": args.device, "model": args.model,
            "subset": args.subset, "repeats": args.repeats}


def markdown(rows, info, notes=(), gpu=None) -> str:
    text = ""
    if rows:
        head = (f"MNIST, {info['model']}, {info['subset']} training images, one epoch per contender, median of "
                f"{info['repeats']} interleaved repeats; device {info['device']}, {info['cpus']} CPUs, "
                f"{info['torch_threads']} torch threads, torch {info['torch']}\n\n")
        lines = ["| comparison | A s | A img/s | B s | B img/s | A/B |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['comparison']} | {r['a_s']:.2f} | {r['a_img_s']:.0f} | {r['b_s']:.2f} | {r['b_img_s']:.0f} | "
                  f"{r['ratio']:.2f} |" for r in rows]
        text = head + "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes)
    if gpu:
        text += gpu.get("table") or (("\n" if text else "") + gpu["skipped"] + "\n")
    return text


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--subset", type=int, default=2000, help="training images per timed epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="of the MNIST groups; the gpu group takes it if it is a CUDA "
                                                   "device, else cuda")
    p.add_argument("--model", default="madry2018-mnist",
                   help="network of the art and recipes groups (default: one without dropout or batch norm, so ART's "
                        "eval-mode passes are the same work as advplug's training-mode ones)")
    p.add_argument("--only", default=",".join(GROUPS),
                   help=f"comma-separated subset of {','.join(GROUPS)} (gpu: skipped with one line without CUDA)")
    p.add_argument("--gpu-batches", type=int, default=40, help="gpu group: batches of 128 per timed epoch")
    p.add_argument("--peak-tflops", type=float, help="gpu group: the device's peak TFLOP/s for every row "
                                                     "(default: from the table of known GPUs in bench_gpu)")
    p.add_argument("--no-verify-checksums", dest="verify_checksums", action="store_false",
                   help="gpu group: load a re-packed CIFAR-10 copy that fails torchvision's md5 check")
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
    rows, notes = measure(args)
    gpu = measure_gpu(args) if "gpu" in args.only else None
    table = markdown(rows, info, notes, gpu)
    print(table, end="")
    result = {"machine": info, "rows": rows, "notes": notes}
    if gpu is not None:
        result["gpu"] = {k: v for k, v in gpu.items() if k != "table"}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
