"""Randomized models are detected and, unless told otherwise, attacked with expectation over
transformation (EOT) next to the single-shot attacks; a single-shot-only evaluation of one
is a warning in the report."""
import torch
from torch import nn

import advplug
from advplug.stochastic import is_stochastic

ATTACKS = "fgsm,pgd:steps=5"


class InputNoise(nn.Module):
    """Gaussian noise on the input, in training and in evaluation (a randomized defense)."""

    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x + self.sigma * torch.randn_like(x)


def _noisy(model, sigma=0.3):
    return nn.Sequential(InputNoise(sigma), model).eval()


def test_detection_fires_on_a_random_model_only(standard_model, data_root):
    x = torch.rand(16, 1, 28, 28)
    assert not is_stochastic(standard_model, x)
    noisy = _noisy(standard_model)
    noisy.train()
    assert is_stochastic(noisy, x) and noisy.training  # mode restored
    assert not is_stochastic(nn.Sequential(nn.Dropout(0.5), standard_model), x)  # dropout is off in eval mode


def test_a_stochastic_model_meets_eot_next_to_the_single_shot_attacks(standard_model, capsys):
    res = advplug.evaluate({"plain": standard_model, "noisy": _noisy(standard_model)}, dataset="mnist",
                           attacks=ATTACKS, eps=0.1, test_subset=100, eot_samples=4, verbose=True)
    plain, noisy = res["results"]["plain"], res["results"]["noisy"]
    assert not plain["stochastic"] and [a["attack"] for a in plain["attacks"]] == ["fgsm", "pgd:steps=5"]
    assert noisy["stochastic"]
    assert [a["attack"] for a in noisy["attacks"]] == ["fgsm", "pgd:steps=5", "eotpgd:steps=20,eot_iter=4"]
    eot = noisy["attacks"][-1]
    assert eot["name"] == "torchattacks:eotpgd" and eot["robust_acc"] <= noisy["clean_acc"]
    out = capsys.readouterr().out
    assert "eotpgd:steps=20,eot_iter=4" in out.splitlines()[0]  # its own column, next to pgd
    assert "note: model noisy is stochastic" in out and "expectation over transformation" in out
    assert "model plain is stochastic" not in out


def test_single_shot_only_on_a_stochastic_model_is_a_warning(standard_model, capsys):
    res = advplug.evaluate({"noisy": _noisy(standard_model)}, dataset="mnist", attacks=ATTACKS, eps=0.1,
                           test_subset=50, eot_samples=None, verbose=True)
    assert [a["attack"] for a in res["results"]["noisy"]["attacks"]] == ["fgsm", "pgd:steps=5"]
    captured = capsys.readouterr()
    assert "only single-shot attacks met it: its robust accuracies may be overestimated" in captured.err
    assert "only single-shot attacks met it" in captured.out  # in the report's notes too


def test_autoattack_gets_its_rand_version_on_a_stochastic_model():
    from advplug.evaluation import eot_attacks, resolve_attacks
    from advplug.threat import Threat

    reg, threat = advplug.registry(), Threat("Linf", 0.3)
    extra = eot_attacks(reg, resolve_attacks(reg, "autoattack", threat), threat, samples=20)
    assert [a.text for a in extra] == ["eotpgd:steps=20,eot_iter=20", "autoattack:version=rand"]
    given = resolve_attacks(reg, "autoattack:version=rand,eotpgd:eot_iter=5", threat)
    assert eot_attacks(reg, given, threat, samples=20) == []  # already EOT: nothing added
