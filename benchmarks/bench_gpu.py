"""Training throughput on a GPU: images/s per trainer for CIFAR-10 PreActResNet-18 at batch
128, in fp32 and in bf16 autocast + channels-last (advplug's ``--amp bf16 --channels-last``),
and the fraction of the device's peak FLOP/s that is (the ``gpu`` group of ``python -m benchmarks``).

    ADVPLUG_DATA=../shared/data .venv/bin/python -m benchmarks --only gpu --no-verify-checksums

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the engine's per-batch work (the
trainer's ``step`` -- every forward and backward pass of its inner maximization and the
training forward -- then the backward of the training loss and the optimizer step), averaged
over ``FLOP_BATCHES`` batches (FGSM-SDI updates its generator every 20th), counted once per
trainer: precision and memory format do not change them. Only matrix products and convolutions
count (BatchNorm, activations and the optimizer are not FLOPs to FlopCounterMode).

Time: the median of interleaved epochs (``epoch_timing``) of ``Run.train_epoch``, so it
includes the data loader (augmentation on the device), the running metrics and the eval-mode
clean-accuracy forward the engine takes every 10th batch of an adversarial trainer, which the
FLOP count leaves out: the fraction of peak is slightly conservative.

Peak: dense (no sparsity) TFLOP/s of NVIDIA's datasheets in the precision the step runs in:
bf16 tensor cores under autocast; without it convolutions run on TF32 tensor cores as long as
``torch.backends.cudnn.allow_tf32`` is on (PyTorch's default), so fp32 rows are set against the
TF32 peak (against the fp32 CUDA-core one when it is off). ``--peak-tflops X`` sets one peak for
every row instead (a GPU not in the table).
"""
from __future__ import annotations

import itertools
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from advplug.config import make_config
from advplug.engine import Run
from epoch_timing import interleaved_epoch_times

PGD_STEPS = 10
#: the trainers the benchmark compares: label -> (registered name, parameters)
TRAINERS = {"standard": ("standard", {}), "fgsm-rs": ("fgsm-rs", {}), "fgsm-sdi": ("fgsm-sdi", {}),
            f"pgd-at({PGD_STEPS})": ("pgd-at", {"steps": PGD_STEPS})}
MODES = {"fp32": (None, False), "bf16+channels-last": ("bf16", True)}  # name: (amp, channels_last)
FLOP_BATCHES = 20

PEAK_SOURCE = ("NVIDIA datasheets (H100 and H200 Tensor Core GPU, A100 Tensor Core GPU, L40S, L4, A10), "
               "dense: half the with-sparsity tensor-core figure")
#: (name tokens that must all be in the device name, label, {precision: dense TFLOP/s}); first match wins
PEAKS = (
    (("H200", "NVL"), "H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H200",), "H200 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    (("H100", "NVL"), "H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H100", "PCIE"), "H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (("H100",), "H100 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    (("A100",), "A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (("L40S",), "L40S", {"bf16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (("L4",), "L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (("A10",), "A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
)


def device_peaks(name: str) -> tuple[str, dict] | None:
    """(label, {precision: TFLOP/s}) of a CUDA device name such as "NVIDIA H100 80GB HBM3"."""
    tokens = set(name.upper().replace("-", " ").replace("_", " ").split())
    for needed, label, peaks in PEAKS:
        if set(needed) <= tokens:
            return label, peaks
    return None


def precision(amp, device: torch.device) -> str:
    """The precision a training step's convolutions run in: the autocast dtype, else TF32 on a
    CUDA device while cuDNN may use it, else fp32."""
    if amp:
        return amp
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def build_run(trainer, params, *, device, amp=None, channels_last=False, batch_size=128, batches=40,
              model="preact-resnet18", model_params=None, verify_checksums=True, out="runs/bench-gpu") -> Run:
    """A CIFAR-10 run of ``batches`` batches per epoch, monitor and evaluation off."""
    cfg = make_config(dict(dataset="cifar10", model=model, model_params=dict(model_params or {}), trainer=trainer,
                           trainer_params=params, batch_size=batch_size, train_subset=batch_size * batches,
                           monitor_size=0, eval_steps=0, progress=False, plot=False, device=str(device), amp=amp,
                           channels_last=channels_last, verify_checksums=verify_checksums, out=out))
    return Run(cfg)


def step_flops(run: Run, batches: int = 1) -> float:
    """FLOPs of one training step of ``run`` (the mean over its next ``batches`` batches): what
    ``Run.train_epoch`` does per batch before its metrics, under FlopCounterMode."""
    run.model.train()
    done = 0
    with FlopCounterMode(display=False) as counter:
        for x, y in itertools.islice(run.loader, batches):
            run.train_step(x, y)
            done += 1
    return counter.get_total_flops() / max(done, 1)


def measure(device, *, trainers=None, modes=None, batch_size=128, batches=40, repeats=3, flop_batches=FLOP_BATCHES,
            model="preact-resnet18", model_params=None, verify_checksums=True, peak_tflops=None) -> list[dict]:
    """One row per (trainer, mode): images/s, ms per step, FLOPs per step, achieved TFLOP/s
    and, where a peak is known (the device's from ``PEAKS`` or ``peak_tflops``), its fraction.
    Device-agnostic: on a CPU (no peak) it measures the same way, e.g. for a test."""
    trainers = TRAINERS if trainers is None else trainers
    modes = MODES if modes is None else modes
    device = torch.device(device)
    known = device_peaks(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    runs, flops = {}, {}
    for label, (trainer, params) in trainers.items():
        for mode, (amp, channels_last) in modes.items():
            run = build_run(trainer, params, device=device, amp=amp, channels_last=channels_last,
                            batch_size=batch_size, batches=batches, model=model, model_params=model_params,
                            verify_checksums=verify_checksums, out=f"runs/bench-gpu/{trainer}-{mode}")
            if label not in flops:
                flops[label] = step_flops(run, min(flop_batches, len(run.loader)))
            runs[(label, mode)] = run
    times = interleaved_epoch_times(runs, repeats)
    rows = []
    for (label, mode), run in runs.items():
        epoch_s = statistics.median(times[(label, mode)])
        step_s = epoch_s / len(run.loader)
        achieved = flops[label] / step_s / 1e12
        prec = precision(modes[mode][0], device)
        peak = peak_tflops if peak_tflops else (known[1].get(prec) if known else None)
        rows.append({"trainer": label, "mode": mode, "images_per_s": len(run.train_idx) / epoch_s,
                     "step_ms": 1000 * step_s, "gflop_per_step": flops[label] / 1e9, "tflop_s": achieved,
                     "precision": prec, "peak_tflop_s": peak, "fraction_of_peak": achieved / peak if peak else None,
                     "epoch_s": epoch_s, "times_s": times[(label, mode)]})
    return rows


def markdown(rows, info) -> str:
    peak_from = (f"--peak-tflops {info['peak_tflops']:g}" if info.get("peak_tflops")
                 else f"{info['peak_device']}, {PEAK_SOURCE}" if info.get("peak_device") else "unknown device: none")
    head = (f"\nGPU: CIFAR-10 {info['model']}, batch {info['batch_size']}, {info['batches']} batches per timed epoch, "
            f"median of {info['repeats']} interleaved repeats; {info['device_name']}, torch {info['torch']}; FLOPs: "
            f"FlopCounterMode over the training step (all forward and backward passes), mean of "
            f"{info['flop_batches']} steps; peak: {peak_from}\n\n")
    lines = ["| trainer | precision | images/s | ms/step | GFLOP/step | TFLOP/s | peak TFLOP/s | % of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_tflop_s']:g} ({r['precision']})" if r["peak_tflop_s"] else "-"
        frac = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] is not None else "-"
        lines.append(f"| {r['trainer']} | {r['mode']} | {r['images_per_s']:.0f} | {r['step_ms']:.1f} | "
                     f"{r['gflop_per_step']:.4g} | {r['tflop_s']:.3g} | {peak} | {frac} |")
    return head + "\n".join(lines) + "\n"
