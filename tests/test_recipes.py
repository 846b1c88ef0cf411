"""Recipes, `advplug reproduce` and the confidence intervals it reports."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advplug.cli import main
from advplug.config import make_config
from advplug.engine import Run, make_lr_scheduler
from advplug.errors import AdvplugError
from advplug.models import MadryMnistNet, WongMnistNet
from advplug.recipes import Published, Recipe, load_recipe, recipe_names
from advplug.reproduce import collapse, parse_seeds, run_reproduce, verdicts
from advplug.stats import accuracy_interval, clopper_pearson_interval, wilson_interval
from advplug.threat import Threat
from advplug.trainers import perturbation
from conftest import REPO, tiny_config


# -- confidence intervals ---------------------------------------------------------------

def test_wilson_interval_matches_a_hand_computation_on_830_of_1000():
    # p = 0.83, z = 1.959964: centre (p + z²/2n) / (1 + z²/n) = 0.828737, half-width
    # z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n) = 0.023271 (worked out by hand)
    low, high = wilson_interval(830, 1000)
    assert low == pytest.approx(0.805466, abs=2e-6)
    assert high == pytest.approx(0.852008, abs=2e-6)
    assert accuracy_interval(83.0, 1000) == pytest.approx((80.5466, 85.2008), abs=2e-4)


def _binomial_tail_bound(k, n, tail, upper):
    """Clopper–Pearson by its definition: the p where P(X >= k | p) (lower bound) or
    P(X <= k | p) (upper bound) equals ``tail``, found by bisection on exact sums."""
    def cdf_le(p, m):
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(m + 1))
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        value = cdf_le(mid, k) if upper else 1 - cdf_le(mid, k - 1)
        # the upper bound's P(X <= k) falls as p grows; the lower bound's P(X >= k) rises
        if (value > tail) == upper:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_clopper_pearson_matches_its_definition_and_contains_wilson_center():
    low, high = clopper_pearson_interval(830, 1000)
    assert low == pytest.approx(_binomial_tail_bound(830, 1000, 0.025, upper=False), abs=1e-6)
    assert high == pytest.approx(_binomial_tail_bound(830, 1000, 0.025, upper=True), abs=1e-6)
    assert low == pytest.approx(0.80526, abs=1e-4) and high == pytest.approx(0.85278, abs=1e-4)
    assert clopper_pearson_interval(0, 50)[0] == 0.0 and clopper_pearson_interval(50, 50)[1] == 1.0


def test_interval_input_errors_are_one_clear_error():
    with pytest.raises(AdvplugError, match="0 <= successes <= trials"):
        wilson_interval(11, 10)
    with pytest.raises(AdvplugError, match="confidence level"):
        wilson_interval(5, 10, level=95)


# -- recipes ----------------------------------------------------------------------------

def test_every_recipe_parses_and_its_full_and_quick_configs_are_valid():
    names = recipe_names()
    for expected in ("wong2020-mnist-fgsm-rs", "wong2020-mnist-fgsm-sdi", "wong2020-mnist-fgsm-ga",
                     "wong2020-mnist-free-at", "wong2020-mnist-fgsm-ckpt", "wong2020-mnist-pgd-at",
                     "madry2018-mnist-pgd-at", "wong2020-cifar10-fgsm-rs", "jia2022-cifar10-fgsm-sdi",
                     "jia2022-cifar10-fgsm-sdi-short", "jia2022-cifar10-fgsm-rs", "rice2020-cifar10-pgd-at"):
        assert expected in names
    for name in names:
        recipe = load_recipe(name)
        assert recipe.title and recipe.notes.strip() and recipe.hardware in ("cpu", "gpu")
        full, quick = make_config(recipe.config()), make_config(recipe.config(quick=True))
        assert quick.epochs <= 1 and quick.train_subset and quick.train_subset <= 1000
        assert full.epochs >= 10
        if recipe.published:  # a reproduction trains on the whole split; cpu-* recipes are reduced on purpose
            assert full.train_subset is None
        for pub in recipe.published:
            assert pub.metric in recipe.metrics() and pub.source


def test_wong_mnist_recipe_is_their_script():
    cfg = make_config(load_recipe("wong2020-mnist-fgsm-rs").config())
    assert (cfg.model, cfg.trainer, cfg.eps, cfg.batch_size, cfg.epochs) == ("wong2020-mnist", "fgsm-rs", 0.3, 100, 10)
    assert cfg.trainer_params == {"alpha": "1.25eps", "box_start": False}
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.lr_schedule, cfg.lr_peak) == ("adam", 5e-3, 0.0, "cyclic", 0.4)
    sdi = make_config(load_recipe("wong2020-mnist-fgsm-sdi").config())
    assert sdi.trainer == "fgsm-sdi" and sdi.lr == 5e-3 and sdi.trainer_params["label_smoothing"] == pytest.approx(1 / 9)


def test_published_cifar_numbers_are_robustbench_s():
    info = REPO.parent / "shared" / "robustbench" / "model_info" / "cifar10" / "Linf" / "Wong2020Fast.json"
    if not info.is_file():
        pytest.skip(f"{info} not here")
    entry = json.loads(info.read_text())
    published = {p.metric: p.value for p in load_recipe("wong2020-cifar10-fgsm-rs").published}
    assert published == {"clean": float(entry["clean_acc"]), "autoattack": float(entry["autoattack_acc"])}


def test_unknown_recipe_is_one_error_with_a_suggestion():
    with pytest.raises(AdvplugError, match="did you mean 'wong2020-mnist-fgsm-rs'"):
        load_recipe("wong2020-mnist-fgsm-r")
    with pytest.raises(AdvplugError, match="--seeds"):
        parse_seeds("0,x")
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]


def test_paper_networks_have_the_published_layer_sizes():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # conv 1->16 4x4 (272) + conv 16->32 4x4 (8,224) + fc 1568->100 (156,900) + fc 100->10 (1,010)
    assert count(WongMnistNet()) == 166_406
    # conv 1->32 5x5 (832) + conv 32->64 5x5 (51,264) + fc 3136->1024 (3,212,288) + fc 1024->10 (10,250)
    assert count(MadryMnistNet()) == 3_274_634
    assert WongMnistNet()(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# -- the pieces of Wong et al.'s script --------------------------------------------------

def test_cyclic_lr_is_wong_et_al_s_per_batch_schedule(tmp_path, data_root):
    cfg = make_config(tiny_config(tmp_path, data_root, optimizer="adam", lr=5e-3, lr_schedule="cyclic",
                                  epochs=10))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    steps_per_epoch = 6
    sched = make_lr_scheduler(cfg, opt, steps_per_epoch)
    seen = []
    for _ in range(10 * steps_per_epoch):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # their train_mnist.py: lr_schedule(epoch + (i + 1) / len(loader)), np.interp([0, 4, 10], [0, max, 0])
    expected = [np.interp(epoch + (i + 1) / steps_per_epoch, [0, 4, 10], [0, 5e-3, 0])
                for epoch in range(10) for i in range(steps_per_epoch)]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_stop_when_fooled_leaves_misclassified_samples_where_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    wrong = model(x).argmax(1) != y
    assert 0 < wrong.sum() < 64
    threat = Threat("Linf", 0.1)
    frozen = perturbation(model, x, y, threat, 5, 0.02, random_start=False, stop_when_fooled=True)
    moved = perturbation(model, x, y, threat, 5, 0.02, random_start=False)
    assert frozen[wrong].abs().max() == 0  # misclassified at the start: never moved
    assert moved[wrong].abs().max() > 0
    assert (frozen[~wrong].abs().flatten(1).amax(1) > 0).all()


def test_box_start_false_takes_the_first_gradient_outside_the_box():
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.lowest = nn.Linear(16, 3), []

        def forward(self, x):
            self.lowest.append(float(x.detach().min()))
            return self.lin(x.flatten(1))

    torch.manual_seed(0)
    x, y = torch.zeros(32, 1, 4, 4), torch.zeros(32, dtype=torch.long)  # black images: a start below 0
    for box_start, outside in ((True, False), (False, True)):
        probe = Probe()
        delta = perturbation(probe, x, y, Threat("Linf", 0.3), 1, 0.375, box_start=box_start)
        assert (probe.lowest[0] < 0) is outside
        assert float((x + delta).min()) >= 0  # the step is projected into [0, 1] either way
    # box_clip=False (FGSM-SDI's authors' training, and the control run for FGSM-RS): the
    # ε-ball only, so on black pixels x + δ goes below 0, by at most ε
    delta = perturbation(Probe(), x, y, Threat("Linf", 0.3), 1, 0.375, box_clip=False)
    assert float((x + delta).min()) < 0 and float(delta.abs().max()) <= 0.3 + 1e-6


def test_amp_is_for_cuda_only_and_channels_last_trains_on_cpu(tmp_path, data_root):
    with pytest.raises(AdvplugError, match="--amp bf16 is mixed precision on CUDA"):
        Run(make_config(tiny_config(tmp_path, data_root, amp="bf16", device="cpu")))
    with pytest.raises(AdvplugError, match="amp must be one of bf16"):
        make_config(tiny_config(tmp_path, data_root, amp="fp8"))
    plain = Run(make_config(tiny_config(tmp_path / "a", data_root, trainer="fgsm-rs", monitor_size=0,
                                        eval_steps=0, plot=False))).fit()
    last = Run(make_config(tiny_config(tmp_path / "b", data_root, trainer="fgsm-rs", monitor_size=0,
                                       eval_steps=0, plot=False, channels_last=True))).fit()
    assert last.model.conv1.weight.is_contiguous(memory_format=torch.channels_last) if hasattr(last.model, "conv1") \
        else last.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    # same seed, same data: the memory format changes the arithmetic's order only
    assert abs(plain.history[0]["train_loss"] - last.history[0]["train_loss"]) < 1e-2


# -- verdicts ---------------------------------------------------------------------------

def _row(seed, clean, aa, samples=1000):
    measured = {"clean": clean, "autoattack": aa}
    return {"recipe": "r", "seed": seed, "samples": samples, "measured": measured,
            "ci95": {k: list(accuracy_interval(v, samples)) for k, v in measured.items()}}


def test_verdict_says_whether_the_published_number_is_inside_the_measured_interval():
    recipe = Recipe(name="r", title="t", hardware="cpu", train={},
                    published=(Published("clean", 98.5, "src", tolerance=1.0),
                               Published("autoattack", 82.93, "src", tolerance=3.0)))
    rows = [_row(0, 98.2, 83.5), _row(1, 98.6, 76.0)]
    table = {(v["metric"], v["seed"]): v for v in verdicts(recipe, rows, quick=False)}
    assert table["autoattack", 0]["inside_ci"] and table["autoattack", 0]["within_tolerance"]
    # 76.0 on 1,000 images: [73.3, 78.5] misses 82.93, and 6.9 points exceed the tolerance
    assert not table["autoattack", 1]["inside_ci"] and not table["autoattack", 1]["within_tolerance"]
    assert table["autoattack", 1]["difference"] == pytest.approx(76.0 - 82.93)
    assert table["autoattack", "mean"]["seeds_inside_ci"] == 1
    assert table["clean", "mean"]["seeds_inside_ci"] == 2
    quick = {(v["metric"], v["seed"]): v for v in verdicts(recipe, rows, quick=True)}
    assert quick["autoattack", 0]["published"] is None and "inside_ci" not in quick["autoattack", 0]


def test_collapse_is_read_from_the_held_out_monitor():
    history = [{"epoch": e, "monitor_heldout_pgd_acc": a} for e, a in enumerate([20, 60, 85, 88, 4, 1], 1)]
    assert collapse(history) == {"best": 88, "last": 1, "fell_at": 5, "collapsed": True}
    steady = [{"epoch": e, "monitor_heldout_pgd_acc": a} for e, a in enumerate([20, 60, 85, 80], 1)]
    assert collapse(steady)["collapsed"] is False and collapse(steady)["fell_at"] is None
    # a dip that recovers is reported, not counted; a fall from a low best still counts
    dip = [{"epoch": e, "monitor_heldout_pgd_acc": a} for e, a in enumerate([30, 70, 25, 80], 1)]
    assert collapse(dip)["fell_at"] == 3 and collapse(dip)["collapsed"] is False
    low = [{"epoch": e, "monitor_heldout_pgd_acc": a} for e, a in enumerate([9, 10.4, 6, 0.0], 1)]
    assert collapse(low)["collapsed"] is True and collapse(low)["fell_at"] == 4
    noise = [{"epoch": e, "monitor_heldout_pgd_acc": a} for e, a in enumerate([4, 1.5], 1)]
    assert collapse(noise)["collapsed"] is False  # less than 5 points


# -- end to end -------------------------------------------------------------------------

@pytest.mark.parametrize("name", recipe_names())
def test_quick_form_of_every_recipe_runs_end_to_end(tmp_path, data_root, name):
    if "cifar10" in name and not (data_root / "cifar-10-batches-py").is_dir():
        pytest.skip("CIFAR-10 not under the data root")
    summary = run_reproduce([name], "0", quick=True, out=tmp_path / "rep", data_root=str(data_root),
                            verify_checksums=False, device="cpu")
    (row,) = summary["rows"]
    assert row["epochs"] == 1 and row["samples"] == load_recipe(name).quick_n_eval
    assert set(row["measured"]) == {"clean", load_recipe(name).quick_attack}
    assert all(0 <= v <= 100 for v in row["measured"].values())
    assert row["measured"][load_recipe(name).quick_attack] <= row["measured"]["clean"]
    assert (tmp_path / "rep" / "reproduce-quick.md").read_text().startswith("**--quick")
    assert (tmp_path / "rep" / "reproduce-quick-heldout.png").is_file()


def test_reproduce_reuses_a_finished_seed_and_refuses_one_trained_otherwise(tmp_path, data_root, capsys):
    args = dict(quick=True, out=tmp_path / "rep", data_root=str(data_root), device="cpu")
    first = run_reproduce(["wong2020-mnist-fgsm-rs"], "0", **args)
    capsys.readouterr()
    again = run_reproduce(["wong2020-mnist-fgsm-rs"], "0", **args)
    assert "reusing the finished run" in capsys.readouterr().out
    assert again["rows"][0]["measured"] == first["rows"][0]["measured"]
    config = tmp_path / "rep" / "wong2020-mnist-fgsm-rs" / "quick" / "seed-0" / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "lr": 0.1}))
    with pytest.raises(AdvplugError, match=r"other settings: wong2020-mnist-fgsm-rs seed 0 \(lr 0.1 -> 0.005\)"):
        run_reproduce(["wong2020-mnist-fgsm-rs"], "0", **args)


def test_cli_lists_prints_and_refuses(tmp_path, data_root, capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in recipe_names())
    assert "clean 98.50, autoattack 82.93" in listing
    assert main(["recipes", "wong2020-mnist-fgsm-rs"]) == 0
    assert 'model = "wong2020-mnist"' in capsys.readouterr().out
    assert main(["reproduce", "no-such-recipe", "--quick", "--out", str(tmp_path / "x")]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err
    assert not Path(tmp_path / "x").exists()
