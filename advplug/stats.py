"""Confidence intervals for accuracies measured on a test subset.

An accuracy on n test images is a binomial proportion: on 1,000 images its 95 % interval
is about ±3 points around 80 %, so two numbers closer than that are not told apart by
the subset. advplug reports the Wilson score interval (Wilson 1927; close to nominal
coverage even near 0 % and 100 %, where the normal approximation fails) and offers the
exact Clopper–Pearson interval (Clopper & Pearson 1934), which randomized smoothing's
certification uses."""
from __future__ import annotations

import math
from statistics import NormalDist

from .errors import AdvplugError


def _check(successes: int, trials: int, level: float) -> None:
    if not (isinstance(trials, int) and trials >= 1 and isinstance(successes, int) and 0 <= successes <= trials):
        raise AdvplugError(f"a binomial interval needs whole numbers 0 <= successes <= trials, trials >= 1; "
                           f"got {successes!r} of {trials!r}")
    if not 0 < level < 1:
        raise AdvplugError(f"confidence level must be in (0, 1), got {level!r}")


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion, as fractions in [0, 1]."""
    _check(successes, trials, level)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, n = successes / trials, trials
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def clopper_pearson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval: beta quantiles, as fractions in [0, 1]."""
    _check(successes, trials, level)
    from scipy.stats import beta

    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def accuracy_interval(accuracy_pct: float, samples: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson interval, in percent, of an accuracy (percent) measured on ``samples``
    images; the count of correct images is recovered from the percentage."""
    correct = round(accuracy_pct * samples / 100)
    low, high = wilson_interval(int(correct), int(samples), level)
    return 100 * low, 100 * high


def format_accuracy(accuracy_pct: float, samples: int) -> str:
    """'82.90% [80.4, 85.1]': the accuracy with its 95 % Wilson interval."""
    low, high = accuracy_interval(accuracy_pct, samples)
    return f"{accuracy_pct:.2f}% [{low:.1f}, {high:.1f}]"
