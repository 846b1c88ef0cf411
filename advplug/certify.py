"""Randomized smoothing: certified L2 robustness (Cohen, Rosenfeld & Kolter, ICML 2019,
"Certified Adversarial Robustness via Randomized Smoothing"; reference code
locuslab/smoothing, ``code/core.py``).

The smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ²I), of a base model f
(best trained under the same noise: ``--trainer gaussian-noise:sigma=σ`` of the
``advplug-defenses`` plugin) is estimated by Monte Carlo, as in the paper:

- CERTIFY (:meth:`Smoothed.certify`): n0 noisy copies pick the guess ĉA (most frequent
  class); n fresh copies count nA = #{f(x + ε) = ĉA}; pA is the one-sided level-(1 − α)
  Clopper–Pearson lower bound on P(f(x + ε) = ĉA) (the reference's
  ``proportion_confint(nA, n, alpha=2*alpha, method="beta")[0]``). pA < 1/2: abstain
  (−1, radius 0.0); else ĉA with the L2 radius σ·Φ⁻¹(pA). With probability ≥ 1 − α, a
  class returned is g(x) and g is constant on that L2 ball around x.
- PREDICT (:meth:`Smoothed.predict`): the two most frequent classes of n noisy copies,
  nA ≥ nB; abstain unless the two-sided binomial test of nA successes in nA + nB trials
  at p = 1/2 has p-value ≤ α (the reference's ``binom_test``); then the top class is g(x)
  with probability ≥ 1 − α.

Inputs are images in [0, 1]; the noise is added without clipping (as the reference,
whose models normalize inside themselves like advplug's), in pixel space. The statistics
are exact and need only :mod:`math` (no scipy): the Clopper–Pearson bound by bisection on
the exact binomial tail, Φ⁻¹ by :class:`statistics.NormalDist`.
"""
from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from pathlib import Path
from statistics import NormalDist

import torch

from .errors import AdvplugError, warn
from .stats import binomial_test_half, check_alpha, clopper_pearson_lower

ABSTAIN = -1
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")


def radius_from_bound(sigma: float, p_lower: float) -> float:
    """σ·Φ⁻¹(pA): the certified L2 radius of a lower bound pA >= 1/2 on the top class."""
    return 0.0 if p_lower == 0.5 else sigma * NormalDist().inv_cdf(p_lower)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n samples: all n on ĉA, pA = α^(1/n)."""
    return radius_from_bound(sigma, clopper_pearson_lower(n, n, alpha))


# -- the smoothed classifier ----------------------------------------------------------

def _check_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdvplugError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


def check_sigma(sigma, what="--sigma") -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise AdvplugError(f"{what} must be a noise standard deviation > 0 (pixel space of [0, 1] images, "
                           f"e.g. 0.25), got {sigma!r}")
    return float(sigma)


class Smoothed:
    """The smoothed classifier g of ``model`` (logits over ``num_classes``) under
    N(0, σ²I) noise. ``generator``: a :class:`torch.Generator` on the model's device for the
    noise (None: torch's global one)."""

    ABSTAIN = ABSTAIN

    def __init__(self, model: torch.nn.Module, num_classes: int, sigma: float, generator=None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise AdvplugError(f"num_classes must be a whole number >= 2, got {num_classes!r}")
        self.model, self.num_classes, self.sigma = model, num_classes, check_sigma(sigma, "sigma")
        self.generator = generator

    def sample_counts(self, x: torch.Tensor, num: int, batch: int) -> torch.Tensor:
        """How often the base model predicts each class on ``num`` noisy copies x + σ·ε of
        one input ``x`` ([C, H, W] or [1, C, H, W], in [0, 1]), ``batch`` copies per forward
        pass, noise drawn for a whole batch at once on x's device; the counts stay there
        until the end (one transfer). int64 [num_classes] on the CPU."""
        _check_count(num, "the number of noise samples")
        _check_count(batch, "--batch")
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        nonfinite = torch.zeros((), dtype=torch.long, device=x.device)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                size = min(batch, remaining)
                remaining -= size
                noisy = torch.randn((size, *x.shape), generator=self.generator, device=x.device, dtype=x.dtype)
                noisy.mul_(self.sigma).add_(x)  # no clipping to [0, 1], as the reference
                logits = self.model(noisy)
                if logits.dim() != 2 or logits.shape[1] != self.num_classes:
                    raise AdvplugError(f"the model returned logits of shape {tuple(logits.shape)}; expected "
                                       f"({size}, {self.num_classes})")
                nonfinite += (~torch.isfinite(logits).all(1)).sum()
                counts += torch.bincount(logits.argmax(1), minlength=self.num_classes)
        if int(nonfinite):
            from .testset import nonfinite_logits_error

            raise nonfinite_logits_error("randomized smoothing", int(nonfinite), num)
        return counts.cpu()

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch: int) -> tuple[int, float]:
        """CERTIFY: (class, L2 radius), or (ABSTAIN, 0.0). With probability >= 1 − α over
        the noise, a returned class is g(x) and g is constant within the radius."""
        _check_count(n0, "--n0")
        _check_count(n, "--n")
        check_alpha(alpha)
        self.model.eval()
        guess = int(self.sample_counts(x, n0, batch).argmax())  # ĉA: first of the most frequent
        counts = self.sample_counts(x, n, batch)  # fresh samples: the estimate is independent of the guess
        p_lower = clopper_pearson_lower(int(counts[guess]), n, alpha)
        if p_lower < 0.5:
            return ABSTAIN, 0.0
        return guess, radius_from_bound(self.sigma, p_lower)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch: int) -> int:
        """PREDICT: g(x) with probability >= 1 − α, or ABSTAIN (Hung & Fithian's test of
        the top class of a multinomial: the top two counts against each other)."""
        _check_count(n, "--n")
        check_alpha(alpha)
        self.model.eval()
        counts = self.sample_counts(x, n, batch)
        top = torch.argsort(counts, descending=True, stable=True)[:2].tolist()
        n_a, n_b = int(counts[top[0]]), int(counts[top[1]])
        if binomial_test_half(n_a, n_a + n_b) > alpha:
            return ABSTAIN
        return top[0]


# -- a test set -----------------------------------------------------------------------

def noise_generator(device, seed: int, idx: int) -> torch.Generator:
    """The noise of test image ``idx`` (dataset index) under ``seed``: its own stream, so an
    image's result does not depend on which other images are certified (subset, --skip)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + idx) % (2 ** 63))


def certify_dataset(model, test_set, sigma: float, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                    batch: int = 1000, device="cpu", progress: bool = False, *, num_classes: int | None = None,
                    seed: int = 0, skip: int = 1) -> list[dict]:
    """CERTIFY every ``skip``-th image of ``test_set`` (:class:`advplug.testset.TestSet`),
    one image at a time. Per image a dict as the reference's output rows: ``idx`` (dataset
    index), ``label``, ``predict`` (−1: abstain), ``radius``, ``correct`` (0/1: predict ==
    label), ``time`` (seconds)."""
    from tqdm.auto import tqdm

    sigma = check_sigma(sigma)
    for value, what in ((n0, "--n0"), (n, "--n"), (batch, "--batch"), (skip, "--skip")):
        _check_count(value, what)
    alpha = check_alpha(alpha)
    device = torch.device(device)
    model = model.to(device).eval()
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(test_set.x[:1].to(device).float().div(255)).shape[1])
    positions = range(0, len(test_set.y), skip)
    rows = []
    bar = tqdm(positions, desc=f"certify σ={sigma:g}", disable=not progress, leave=False, unit="img",
               dynamic_ncols=True)
    for i in bar:
        idx, label = int(test_set.indices[i]), int(test_set.y[i])
        x = test_set.x[i].to(device).float().div(255)
        smoothed = Smoothed(model, num_classes, sigma, generator=noise_generator(device, seed, idx))
        start = time.perf_counter()
        prediction, radius = smoothed.certify(x, n0, n, alpha, batch)
        rows.append({"idx": idx, "label": label, "predict": prediction, "radius": radius,
                     "correct": int(prediction == label), "time": time.perf_counter() - start})
        if progress:
            bar.set_postfix(certified_r0=f"{100 * sum(r['correct'] for r in rows) / len(rows):.1f}%")
    bar.close()
    return rows


def certified_accuracy(rows: list[dict], radii=DEFAULT_RADII) -> list[dict]:
    """Per radius r: the images whose prediction is correct and certified at r or beyond
    (``correct and radius >= r``, the reference's ``ApproximateAccuracy``), as a count, a
    percentage of all certified images (abstentions count as wrong) and its 95 % Wilson
    interval (:mod:`advplug.stats`)."""
    from .stats import wilson_interval

    if not rows:
        raise AdvplugError("no image was certified: nothing to report")
    table = []
    for r in radii:
        hits = sum(1 for row in rows if row["correct"] and row["radius"] >= r)
        low, high = wilson_interval(hits, len(rows))
        table.append({"radius": float(r), "certified": hits, "samples": len(rows),
                      "certified_acc": 100 * hits / len(rows), "ci95": [round(100 * low, 3), round(100 * high, 3)]})
    return table


def parse_radii(text) -> list[float]:
    """'0,0.25,0.5' (or a sequence) -> sorted distinct radii >= 0."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        radii = sorted({float(item) for item in items if str(item).strip() != ""})
    except ValueError:
        raise AdvplugError(f"--radii {text!r}: write L2 radii separated by commas, e.g. 0,0.25,0.5,0.75,1") from None
    if not radii or any(not math.isfinite(r) or r < 0 for r in radii):
        raise AdvplugError(f"--radii {text!r}: give one or more finite radii >= 0, e.g. 0,0.25,0.5,0.75,1")
    return radii


def format_table(table: list[dict]) -> str:
    """The certified-accuracy table as text, one radius a line."""
    lines = [f"{'L2 radius':>9}  {'certified accuracy [95% CI]':<27}  images"]
    for row in table:
        low, high = row["ci95"]
        lines.append(f"{row['radius']:>9.3f}  {row['certified_acc']:6.2f}% [{low:5.1f}, {high:5.1f}]"
                     f"{'':<7}  {row['certified']}/{row['samples']}")
    return "\n".join(lines)


def write_tsv(rows: list[dict], path) -> Path:
    """The reference's ``certify.py`` output: idx, label, predict, radius, correct, time
    (H:MM:SS.ffffff), tab-separated, one image a line; radius to 6 decimals."""
    path = Path(path)
    lines = ["\t".join(TSV_COLUMNS)]
    lines += [f"{r['idx']}\t{r['label']}\t{r['predict']}\t{r['radius']:.6f}\t{r['correct']}\t"
              f"{timedelta(seconds=r['time'])}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_certified_accuracy(rows: list[dict], path, sigma: float, n: int, alpha: float, radii=DEFAULT_RADII,
                            title: str = "") -> Path:
    """Certified accuracy (%) against the L2 radius on a fine grid (step 0.005), the
    requested radii marked, and the largest radius n samples can certify."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    ceiling = max_certifiable_radius(sigma, n, alpha)
    top = max([ceiling, *radii, *(r["radius"] for r in rows)]) * 1.05 or 1.0
    step = 0.005
    grid = [i * step for i in range(int(top / step) + 2)]
    curve = certified_accuracy(rows, grid)
    marks = certified_accuracy(rows, radii)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(grid, [c["certified_acc"] for c in curve], "-", label=f"smoothed, σ = {sigma:g}")
    ax.plot([m["radius"] for m in marks], [m["certified_acc"] for m in marks], "o", color="tab:blue")
    ax.axvline(ceiling, color="gray", linestyle="--", linewidth=1,
               label=f"largest certifiable radius (n = {n:,}, α = {alpha:g})")
    ax.set_xlabel("L2 radius (pixel space of [0, 1] images)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_xlim(0, grid[-1])
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or f"randomized smoothing: {len(rows)} test images")
    return _save(plt, fig, path)


def training_noise(model_path) -> dict | None:
    """The trainer a model was trained with, from its run's config.json (model.pt beside
    it, or a checkpoint in checkpoints/), or None when there is none to read."""
    path = Path(model_path)
    for folder in (path.parent, path.parent.parent):
        config = folder / "config.json"
        if config.is_file():
            try:
                cfg = json.loads(config.read_text())
            except (OSError, ValueError):
                return None
            return {"trainer": cfg.get("trainer"), "trainer_params": cfg.get("trainer_params") or {}}
    return None


def _training_warning(training: dict | None, sigma: float) -> str | None:
    if not training:
        return None
    if training["trainer"] != "gaussian-noise":
        return (f"the model was trained with trainer {training['trainer']!r}, not under Gaussian noise: smoothing "
                f"certifies it, but a base model trained with --trainer gaussian-noise:sigma={sigma:g} usually "
                f"certifies far larger radii")
    trained = training["trainer_params"].get("sigma", 0.25)
    if not math.isclose(float(trained), sigma):
        return f"the model was trained with noise sigma={trained:g} but is certified with --sigma {sigma:g}"
    return None


def run_certification(model_path, sigma: float, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                      batch: int = 1000, test_subset: int | None = None, seed: int = 42, skip: int = 1,
                      dataset: str | None = None, data_root=None, verify_checksums: bool = True, device="auto",
                      out="runs/certify", radii=DEFAULT_RADII, progress: bool = False, registry=None,
                      verbose: bool = True) -> dict:
    """``advplug certify``: load the model, CERTIFY the test images (the same ones as
    ``advplug eval`` for this ``test_subset`` and ``seed``, every ``skip``-th of them), and
    write ``out``/certify.tsv, certify.json and certified_accuracy.png. Returns the report
    (certify.json's content); prints the table unless ``verbose=False``."""
    from . import __version__
    from .engine import resolve_device
    from .host import get_host
    from .modelio import load_model_and_spec
    from .rundir import check_output_dir
    from .testset import load_test_set

    sigma = check_sigma(sigma)
    for value, what in ((n0, "--n0"), (n, "--n"), (batch, "--batch"), (skip, "--skip")):
        _check_count(value, what)
    alpha = check_alpha(alpha)
    radii = parse_radii(radii)
    out = check_output_dir(out)
    if not Path(model_path).is_file():
        raise AdvplugError(f"--model {model_path}: no such file (give an advplug model.pt or checkpoint)")
    registry = registry or get_host().registry
    device = resolve_device(str(device))
    model, spec = load_model_and_spec(model_path, device, registry)
    dataset = dataset or (spec or {}).get("dataset")
    if not dataset:
        raise AdvplugError("pass --dataset: it cannot be read from the model file")
    if spec and spec.get("dataset") and spec["dataset"] != dataset:
        raise AdvplugError(f"the model was trained on {spec['dataset']}, not {dataset}")
    dataset_spec = registry.get("datasets", dataset)
    training = training_noise(model_path)
    warning = _training_warning(training, sigma)
    if warning:
        warn(warning)
    test = load_test_set(dataset_spec, test_subset, seed, data_root=data_root, verify_checksums=verify_checksums)
    started = time.perf_counter()
    rows = certify_dataset(model, test, sigma, n0, n, alpha, batch, device, progress,
                           num_classes=int(spec.get("num_classes") or dataset_spec.num_classes), seed=seed, skip=skip)
    elapsed = time.perf_counter() - started
    table = certified_accuracy(rows, radii)
    report = {
        "advplug": __version__,
        "model": str(model_path),
        "dataset": dataset,
        "settings": {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "batch": batch, "test_subset": test_subset,
                     "seed": seed, "skip": skip, "device": str(device),
                     "noise": "x + sigma * N(0, I), not clipped; per image its own generator seeded from "
                              "(seed, dataset index)"},
        "training": training,
        "test_images": test.identity,
        "samples": len(rows),
        "abstained": sum(1 for r in rows if r["predict"] == ABSTAIN),
        "max_certifiable_radius": max_certifiable_radius(sigma, n, alpha),
        "certified_accuracy": table,
        "seconds": round(elapsed, 3),
        "seconds_per_image": round(elapsed / len(rows), 4),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_tsv(rows, out / "certify.tsv")
    (out / "certify.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_certified_accuracy(rows, out / "certified_accuracy.png", sigma, n, alpha, radii,
                            title=f"{Path(model_path).parent.name or Path(model_path).stem}: {dataset}, "
                                  f"{len(rows)} images")
    if verbose:
        print(f"randomized smoothing, σ = {sigma:g}, n0 = {n0}, n = {n:,}, α = {alpha:g}: {len(rows)} {dataset} "
              f"test images, {report['abstained']} abstained, {elapsed / len(rows):.3f} s per image")
        print(format_table(table))
        print(f"largest radius certifiable with n = {n:,}: {report['max_certifiable_radius']:.3f}")
        print(f"written: {out / 'certify.tsv'}, {out / 'certify.json'}, {out / 'certified_accuracy.png'}")
    return report
