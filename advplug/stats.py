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


def _check_counts(successes, trials) -> None:
    if not (isinstance(trials, int) and not isinstance(trials, bool) and trials >= 1
            and isinstance(successes, int) and not isinstance(successes, bool) and 0 <= successes <= trials):
        raise AdvplugError(f"a binomial interval needs whole numbers 0 <= successes <= trials, trials >= 1; "
                           f"got {successes!r} of {trials!r}")


def _check(successes: int, trials: int, level: float) -> None:
    _check_counts(successes, trials)
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
    """The exact (Clopper–Pearson) interval, as fractions in [0, 1]: each end the one-sided
    bound at (1 − level)/2 (:func:`clopper_pearson_lower`; the beta quantiles)."""
    _check(successes, trials, level)
    tail = (1 - level) / 2
    low = clopper_pearson_lower(successes, trials, tail)
    high = 1.0 - clopper_pearson_lower(trials - successes, trials, tail)
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


# -- exact binomial statistics (math only: no scipy) ---------------------------------

def _check_binomial(successes, trials, alpha, what="alpha"):
    _check_counts(successes, trials)
    check_alpha(alpha, what)


def check_alpha(alpha, what="--alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise AdvplugError(f"{what} must be a failure probability in (0, 1), e.g. 0.001; got {alpha!r}")
    return float(alpha)


def _log_comb(n: int, k: int) -> float:
    """log C(n, k): exact (then rounded) for moderate n, from lgamma beyond (error ~1e-10)."""
    if k == 0 or k == n:
        return 0.0
    if n <= 20_000:
        return math.log(math.comb(n, k))
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


_NEGLIGIBLE = 1e-17  # a term this small relative to the running sum no longer changes it


def _log_upper_tail(k: int, n: int, p: float, log_comb_k: float, log_comb_km1: float) -> float:
    """log P(X >= k) for X ~ Binomial(n, p), 1 <= k <= n, 0 < p < 1: the terms summed
    outward from the one next to k, where they decrease geometrically (k > np: upward from
    k; else the complement, downward from k - 1), each from the previous by the exact ratio
    of binomial probabilities; in log space, so no term underflows."""
    odds = p / (1 - p)
    if k > n * p:
        log_first = log_comb_k + k * math.log(p) + (n - k) * math.log1p(-p)
        total = term = 1.0
        for i in range(k, n):
            term *= (n - i) / (i + 1) * odds
            total += term
            if term <= total * _NEGLIGIBLE:
                break
        return log_first + math.log(total)
    log_first = log_comb_km1 + (k - 1) * math.log(p) + (n - k + 1) * math.log1p(-p)
    total = term = 1.0
    for i in range(k - 1, 0, -1):
        term *= i / (n - i + 1) / odds
        total += term
        if term <= total * _NEGLIGIBLE:
            break
    lower = math.exp(log_first + math.log(total))  # P(X <= k - 1)
    return math.log1p(-lower) if lower < 1 else -math.inf


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """The one-sided Clopper–Pearson lower confidence bound, level 1 − α, on a binomial
    proportion: the p at which P(X >= successes | trials, p) = α (0 for no successes), i.e.
    the α quantile of Beta(k, n − k + 1) -- the lower end of the two-sided level-(1 − 2α)
    interval (Cohen et al.'s ``proportion_confint(nA, n, alpha=2*alpha, method="beta")[0]``).
    For k = n it is α^(1/n).

    Bisection on p over the exact binomial tail (which grows with p), to adjacent floats;
    the lower end of the last bracket is returned, so the bound errs on the safe side."""
    _check_binomial(successes, trials, alpha)
    k, n = successes, trials
    if k == 0:
        return 0.0
    log_comb_k, log_comb_km1 = _log_comb(n, k), _log_comb(n, k - 1)
    log_alpha = math.log(alpha)
    lo, hi = 0.0, 1.0
    while True:
        mid = (lo + hi) / 2
        if not lo < mid < hi:
            return lo
        if _log_upper_tail(k, n, mid, log_comb_k, log_comb_km1) < log_alpha:
            lo = mid
        else:
            hi = mid


def binomial_test_half(successes: int, trials: int) -> float:
    """The exact two-sided binomial test p-value of ``successes`` in ``trials`` at p = 1/2
    (scipy's ``binom_test(k, n, 0.5)``): the probability of an outcome at most as likely as
    the observed one, which by symmetry is min(1, 2·P(X <= min(k, n − k)))."""
    _check_binomial(successes, trials, 0.5)
    k, n = successes, trials
    m = min(k, n - k)
    if 2 * m == n:
        return 1.0
    total = term = 1.0  # P(X <= m) / P(X = m), summed downward from m
    for i in range(m, 0, -1):
        term *= i / (n - i + 1)
        total += term
        if term <= total * _NEGLIGIBLE:
            break
    return min(1.0, 2 * math.exp(_log_comb(n, m) - n * math.log(2) + math.log(total)))
