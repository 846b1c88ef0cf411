"""Randomized smoothing: the statistics against their definitions, CERTIFY and PREDICT on
fake models with known answers, the gaussian-noise trainer, and ``advplug certify`` end to end."""
import csv
import json
import math
from fractions import Fraction
from statistics import NormalDist

import pytest
import torch
from torch import nn

import advplug
from advplug.certify import (ABSTAIN, Smoothed, binomial_test_half, certified_accuracy, certify_dataset,
                             clopper_pearson_lower)
from advplug.errors import AdvplugError
from advplug.host import Host, reset_host
from advplug.threat import Threat

from conftest import mnist_images, tiny_config

X = torch.full((1, 28, 28), 0.5)  # one grey MNIST-shaped image


class ConstantClass(nn.Module):
    """Predicts ``cls`` whatever the input."""

    def __init__(self, cls=3, num_classes=10):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.cls), self.num_classes).float()


class Alternating(nn.Module):
    """Class 0, 1, 0, 1, ... down each batch: exactly half the noisy copies each (even batches)."""

    def forward(self, x):
        return nn.functional.one_hot(torch.arange(len(x)) % 2, 10).float()


class Threshold(nn.Module):
    """Class 1 where the first pixel exceeds ``t``, else 0: a linear classifier whose smoothed
    version is exact, P(class 1 at x) = Φ((x₀ − t)/σ), and whose distance to the boundary is |x₀ − t|."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, x):
        return nn.functional.one_hot((x.flatten(1)[:, 0] > self.t).long(), 10).float()


def _upper_tail(k, n, p):
    """P(X >= k), X ~ Binomial(n, p), summed term by term from the definition."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize("k, n, alpha", [(7, 20, 0.001), (45, 50, 0.05), (3, 10, 0.3), (60, 60, 0.01)])
def test_clopper_pearson_lower_solves_the_binomial_tail_equation(k, n, alpha):
    bound = clopper_pearson_lower(k, n, alpha)
    # the one-sided level-(1 − α) lower bound is the p with P(X >= k | p) = α ...
    assert _upper_tail(k, n, bound) == pytest.approx(alpha, rel=1e-9)
    # ... and a brute-force bisection on that definition finds the same p
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _upper_tail(k, n, mid) < alpha else (lo, mid)
    assert bound == pytest.approx(lo, abs=1e-12)
    assert clopper_pearson_lower(0, n, alpha) == 0.0


def test_clopper_pearson_lower_is_the_references_beta_quantile_and_advplug_stats_two_sided_bound():
    pytest.importorskip("scipy")
    from scipy.stats import beta

    from advplug.stats import clopper_pearson_interval

    for k, n, alpha in [(7, 20, 0.001), (62_000, 100_000, 0.001), (99_990, 100_000, 0.001), (1, 1000, 0.05)]:
        bound = clopper_pearson_lower(k, n, alpha)
        # statsmodels' proportion_confint(k, n, alpha=2α, method="beta")[0] = beta.ppf(α, k, n − k + 1)
        assert bound == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-10, abs=1e-15)
        assert bound == pytest.approx(clopper_pearson_interval(k, n, level=1 - 2 * alpha)[0], rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("k, n", [(7, 20), (13, 20), (10, 20), (60, 100), (0, 5), (31, 31)])
def test_binomial_test_half_is_the_exact_two_sided_p_value(k, n):
    def pmf(i):
        return Fraction(math.comb(n, i), 2 ** n)

    observed = pmf(k)  # two-sided: every outcome at most as likely as the observed one
    exact = sum(pmf(i) for i in range(n + 1) if pmf(i) <= observed)
    assert binomial_test_half(k, n) == pytest.approx(float(min(exact, 1)), rel=1e-12)


def test_certify_radius_of_an_always_same_model_is_the_hand_computation():
    sigma, n, alpha = 0.25, 100, 0.001
    cls, radius = Smoothed(ConstantClass(3), 10, sigma).certify(X, n0=10, n=n, alpha=alpha, batch=32)
    assert cls == 3
    # nA = n: the lower bound solves p^n = α, so pA = α^(1/n)
    assert radius == pytest.approx(sigma * NormalDist().inv_cdf(alpha ** (1 / n)), abs=1e-9)
    assert radius == pytest.approx(0.25 * 1.4999, abs=1e-3)  # Φ⁻¹(0.93325) ≈ 1.4999


def test_certify_abstains_when_the_counts_do_not_separate():
    model = Alternating()
    assert Smoothed(model, 10, 0.25).certify(X, n0=10, n=1000, alpha=0.001, batch=100) == (ABSTAIN, 0.0)
    # even a generous α does not certify a 50/50 split (pA < 1/2 by any lower bound)
    assert Smoothed(model, 10, 0.25).certify(X, n0=10, n=1000, alpha=0.4, batch=100) == (ABSTAIN, 0.0)


def test_certify_on_a_linear_classifier_stays_within_the_true_distance_to_its_boundary():
    sigma, distance = 0.25, 0.125
    model = Threshold(0.5 - distance)  # the grey image is `distance` above the boundary
    smoothed = Smoothed(model, 10, sigma, generator=torch.Generator().manual_seed(0))
    cls, radius = smoothed.certify(X, n0=100, n=10_000, alpha=0.001, batch=1000)
    assert cls == 1
    # pA = Φ(0.5) = 0.69 exactly; its lower bound at n = 10,000 costs ~0.01 of radius
    assert distance - 0.03 < radius < distance


def test_noise_is_drawn_in_batches_and_not_clipped():
    # on a white pixel (1.0) with the boundary at 1.0, half the copies lie above: impossible if clipped to [0, 1]
    x = torch.ones(1, 28, 28)
    counts = Smoothed(Threshold(1.0), 10, 0.25, generator=torch.Generator().manual_seed(0)).sample_counts(x, 2000, 512)
    assert counts.sum() == 2000 and 900 < counts[1] < 1100


def test_predict_abstains_on_a_tie_and_returns_a_clear_class():
    assert Smoothed(Alternating(), 10, 0.25).predict(X, n=1000, alpha=0.001, batch=100) == ABSTAIN
    assert Smoothed(ConstantClass(7), 10, 0.25).predict(X, n=20, alpha=0.001, batch=8) == 7
    # 13 vs 7 of 20 is p = 0.26: too few to tell at α = 0.05; the linear model at 0.69 is told with n = 2,000
    assert Smoothed(Threshold(0.375), 10, 0.25, generator=torch.Generator().manual_seed(0)).predict(
        X, n=2000, alpha=0.001, batch=500) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "sigma"), ({"n0": 0}, "--n0"), ({"alpha": 1.0}, "--alpha"), ({"alpha": 0}, "--alpha")])
def test_bad_settings_are_one_error(kwargs, message):
    settings = {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.001, **kwargs}
    with pytest.raises(AdvplugError, match=message):
        Smoothed(ConstantClass(), 10, settings["sigma"]).certify(X, settings["n0"], settings["n"],
                                                                  settings["alpha"], 10)


def test_gaussian_noise_trainer_trains_on_unclipped_noisy_inputs(data_root):
    from advplug_defenses.smoothing import GaussianNoiseTrainer

    assert GaussianNoiseTrainer.name == "gaussian-noise"
    assert GaussianNoiseTrainer.__doc__.strip().splitlines()[0].startswith("Gaussian data augmentation")
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.net(x)

    model = Spy()
    trainer = GaussianNoiseTrainer(model, Threat("Linf", 0.3), sigma=0.5)
    x, y = mnist_images(data_root, 256)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        out = trainer.step(x, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses) and out.logits.shape == (256, 10)
    noise = seen[-1] - x
    assert not torch.equal(seen[-1], x) and not torch.equal(seen[-1], seen[-2])  # fresh noise each step
    assert seen[-1].min() < -0.5 and seen[-1].max() > 1.5  # not clipped to [0, 1]
    assert noise.std().item() == pytest.approx(0.5, rel=0.02) and abs(noise.mean().item()) < 0.01
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5  # it learns under the noise
    assert not trainer.adversarial_batch(x.requires_grad_(), y).requires_grad  # AWP-style split: detached inputs
    with pytest.raises(AdvplugError, match="sigma"):
        GaussianNoiseTrainer(model, Threat("Linf", 0.3), sigma=0)


class _SmoothingPlugin:
    @advplug.hookimpl
    def advplug_register_trainers(self, registry):
        from advplug_defenses.smoothing import GaussianNoiseTrainer

        registry.add(GaussianNoiseTrainer.name, GaussianNoiseTrainer, description="Gaussian noise")


@pytest.fixture
def noise_model_path(tmp_path, data_root):
    """A tiny mnist-cnn trained with --trainer gaussian-noise:sigma=0.25 (on a host with advplug's built-ins and
    this module alone, so the test does not depend on the rest of advplug-defenses)."""
    host = Host(entry_points=[])
    host.register(_SmoothingPlugin(), name="smoothing-test")
    reset_host(host)
    advplug.train(tiny_config(tmp_path, data_root, trainer="gaussian-noise", trainer_params={"sigma": 0.25},
                              train_subset=2048, epochs=1, optimizer="adam", lr=2e-3, weight_decay=0.0,
                              monitor_size=0, eval_steps=0, test_subset=16), host=host)
    return tmp_path / "run" / "model.pt"


def test_cli_certify_end_to_end(tmp_path, data_root, noise_model_path, capsys):
    from advplug.cli import main
    from advplug.data import BUILTIN_DATASETS
    from advplug.testset import load_test_set

    out = tmp_path / "cert"
    code = main(["certify", "--model", str(noise_model_path), "--sigma", "0.25", "--n0", "10", "--n", "100",
                 "--batch", "64", "--test-subset", "20", "--data-root", str(data_root), "--device", "cpu",
                 "--radii", "0,0.1,0.2,0.3", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "warning" not in printed.err  # trained with the same σ: nothing to warn about
    assert {p.name for p in out.iterdir()} == {"certify.tsv", "certify.json", "certified_accuracy.png"}
    assert (out / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(out / "certify.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == ["idx", "label", "predict", "radius", "correct", "time"]
    expected = load_test_set(BUILTIN_DATASETS["mnist"], 20, 42, data_root=data_root)
    assert [int(r["idx"]) for r in rows] == expected.indices.tolist()  # advplug eval's images for this subset/seed
    assert [int(r["label"]) for r in rows] == expected.y.tolist()
    for r in rows:
        assert int(r["correct"]) == int(int(r["predict"]) == int(r["label"]))
        assert (float(r["radius"]) == 0.0) if int(r["predict"]) == ABSTAIN else float(r["radius"]) >= 0.0

    report = json.loads((out / "certify.json").read_text())
    assert report["settings"]["sigma"] == 0.25 and report["settings"]["n"] == 100 and report["samples"] == 20
    assert report["abstained"] == sum(int(r["predict"]) == ABSTAIN for r in rows)
    table = report["certified_accuracy"]
    assert [t["radius"] for t in table] == [0.0, 0.1, 0.2, 0.3]
    for t in table:
        hits = sum(int(r["correct"]) and float(r["radius"]) >= t["radius"] for r in rows)
        assert t["certified"] == hits and t["samples"] == 20
        assert t["ci95"][0] <= t["certified_acc"] <= t["ci95"][1]
    assert table[0]["certified_acc"] > 50  # the noise-trained model is right on most images at radius 0
    # the printed table: one line per radius requested
    assert [line.split()[0] for line in printed.out.splitlines() if line.strip()[:1].isdigit()
            and "%" in line] == ["0.000", "0.100", "0.200", "0.300"]


@pytest.mark.parametrize("args, message", [
    (["--sigma", "0"], "--sigma must be"),
    (["--sigma", "0.25", "--n0", "0"], "--n0 must be"),
    (["--sigma", "0.25", "--alpha", "1.5"], "--alpha must be"),
    (["--sigma", "0.25", "--model", "nowhere/model.pt"], "no such file"),
    (["--sigma", "0.25", "--radii", "0,-1"], "--radii"),
])
def test_cli_certify_bad_input_is_one_error_line(tmp_path, args, message, capsys):
    from advplug.cli import main

    if "--model" not in args:
        args = [*args, "--model", str(tmp_path / "model.pt")]
        (tmp_path / "model.pt").write_bytes(b"")
    assert main(["certify", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advplug: error:") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_certify_dataset_rows_and_table(data_root):
    from advplug.data import BUILTIN_DATASETS
    from advplug.testset import load_test_set

    test = load_test_set(BUILTIN_DATASETS["mnist"], 6, 0, data_root=data_root)
    rows = certify_dataset(ConstantClass(int(test.y[0])), test, 0.5, n0=5, n=50, alpha=0.01, batch=16,
                           device="cpu", skip=2)
    assert [r["idx"] for r in rows] == test.indices[::2].tolist()
    radius = 0.5 * NormalDist().inv_cdf(0.01 ** (1 / 50))
    assert all(r["predict"] == int(test.y[0]) and r["radius"] == pytest.approx(radius) for r in rows)
    table = certified_accuracy(rows, [0.0, radius - 1e-9, radius + 1e-6])
    correct = sum(r["correct"] for r in rows)
    assert [t["certified"] for t in table] == [correct, correct, 0]
