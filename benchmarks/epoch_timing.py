"""Shared by the epoch benchmarks: training epochs of several runs timed in turn, in a new
seeded random order every repeat, so background load on a shared machine and any drift
during the benchmark (allocator, caches, clock) hit all of them alike."""
from __future__ import annotations

import random
import statistics
import time

import torch


def interleaved_epoch_times(runs: dict, repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """{label: [seconds of each timed epoch]} after one untimed warm-up epoch per run
    (first-call costs such as torch.fx tracing and the allocator stay off the clock)."""
    for run in runs.values():
        run.train_epoch()
    times = {label: [] for label in runs}
    order = list(runs)
    shuffler = random.Random(seed)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for label in order:
            torch.manual_seed(0)
            start = time.perf_counter()
            runs[label].train_epoch()
            times[label].append(time.perf_counter() - start)
    return times


def ratio_rows(times: dict[str, list[float]], key: str = "variant") -> list[dict]:
    """Median and best epoch per run and the median's ratio to the first run's."""
    reference = statistics.median(next(iter(times.values())))
    return [{key: label, "median_s": statistics.median(t), "best_s": min(t),
             "ratio": statistics.median(t) / reference, "times_s": t} for label, t in times.items()]
