"""advplug eval: parity with the libraries, honest ε, checked outputs, sanity checks."""
import json

import pytest
import torch
import torchattacks
from torch import nn

from advplug import cli
from advplug.attacks.base import attack_factory, build_attack
from advplug.errors import AdvplugError
from advplug.evaluation import evaluate_model, load_test_set
from advplug.host import get_host
from advplug.models.common import Normalize
from advplug.registries import Registrar
from advplug.sanity import run_sanity_checks
from advplug.threat import Threat


@pytest.fixture(scope="module")
def test_set(data_root):
    from advplug.data import BUILTIN_DATASETS

    return load_test_set(BUILTIN_DATASETS["mnist"], 128, seed=42, data_root=data_root)


def test_torchattacks_pgd_parity(standard_model, test_set):
    """advplug's pgd gives exactly the robust accuracy of calling torchattacks directly."""
    threat = Threat("Linf", 0.3)
    ours = evaluate_model(standard_model, test_set, "pgd:steps=20", threat, get_host().registry, batch_size=64)
    torch.manual_seed(42)
    atk = torchattacks.PGD(standard_model, eps=0.3, alpha=2.5 * 0.3 / 20, steps=20, random_start=True)
    correct = 0
    for start in range(0, 128, 64):
        x = test_set.x[start:start + 64].float() / 255
        y = test_set.y[start:start + 64]
        x_adv = atk(x, y)
        with torch.no_grad():
            correct += (standard_model(x_adv).argmax(1) == y).sum().item()
    assert ours["attacks"][0]["robust_acc"] == pytest.approx(100.0 * correct / 128, abs=1e-9)


def test_eps_is_in_pixel_space_fgsm_and_pgd_break_a_standard_model(standard_model, test_set):
    res = evaluate_model(standard_model, test_set, "fgsm,pgd:steps=20", Threat("Linf", 0.3),
                         get_host().registry)
    assert res["clean_acc"] > 90
    fgsm, pgd = (r["robust_acc"] for r in res["attacks"])
    assert fgsm < 20 and pgd < 20, res["attacks"]
    assert res["worst_case_acc"] <= min(fgsm, pgd)


def _registry_with(factory, name="bad"):
    reg = get_host().registry
    Registrar(reg, "attacks", "test").add(name, factory)
    return reg


def test_attack_leaving_the_ball_is_an_error(standard_model, test_set):
    @attack_factory("test")
    def too_big(model, threat):
        return lambda x, y: (x + 2 * threat.eps).clamp(0, 1)

    attack = build_attack(_registry_with(too_big), "bad", standard_model, Threat("Linf", 0.1))
    with pytest.raises(AdvplugError, match="left the threat ball"):
        attack(test_set.x[:8].float() / 255, test_set.y[:8])


def test_attack_leaving_the_box_is_an_error(standard_model, test_set):
    @attack_factory("test")
    def off_box(model, threat):
        return lambda x, y: x - 0.05

    attack = build_attack(_registry_with(off_box, "offbox"), "offbox", standard_model, Threat("Linf", 0.1))
    with pytest.raises(AdvplugError, match="image box"):
        attack(test_set.x[:8].float() / 255, test_set.y[:8])


def test_minimal_attack_is_projected_and_its_median_norm_reported(standard_model, test_set):
    res = evaluate_model(standard_model, test_set, "deepfool:steps=20", Threat("Linf", 0.05),
                         get_host().registry)
    row = res["attacks"][0]
    assert row["minimal"] and row["median_perturbation"] > 0.05  # unprojected DeepFool goes further
    assert "projected onto the Linf" in row["note"]


class Quantized(nn.Module):
    """Input quantization: zero gradient almost everywhere, the textbook masked model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


def test_sanity_checks_flag_a_gradient_masked_model_and_pass_a_plain_one(standard_model, test_set):
    reg = get_host().registry
    threat = Threat("Linf", 0.3)
    plain = run_sanity_checks(standard_model, test_set, threat, reg, samples=64, square_queries=300)
    assert all(c["passed"] for c in plain), plain
    masked = run_sanity_checks(Quantized(standard_model), test_set, threat, reg, samples=64, square_queries=300)
    failed = {c["check"] for c in masked if not c["passed"]}
    assert any("large" in c for c in failed), masked
    assert any("black-box" in c for c in failed), masked
    assert all("possible gradient masking" in c["warning"] for c in masked if not c["passed"])


def test_cli_eval_same_indices_every_model_and_external_models(tmp_path, standard_model_path, data_root, capsys):
    weights = tmp_path / "plain.pt"
    torch.save(torch.load(standard_model_path, weights_only=True)["state_dict"], weights)
    args = ["eval", "--model", str(standard_model_path), "--arch", "mnist-cnn", "--weights", str(weights),
            "--dataset", "mnist", "--attacks", "fgsm,pgd:steps=5", "--test-subset", "64",
            "--data-root", str(data_root), "--out", str(tmp_path / "ev"), "--device", "cpu"]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["seed"] == 42 and len(report["test_indices"]) == 64
    ours, external = report["models"].values()
    assert ours["clean_acc"] == external["clean_acc"]  # same weights, same samples
    assert [r["robust_acc"] for r in ours["attacks"]] == [r["robust_acc"] for r in external["attacks"]]
    assert "| model | clean | fgsm | pgd:steps=5 |" in (tmp_path / "ev" / "eval.md").read_text()
    assert cli.main(args[:-2] + ["--out", str(tmp_path / "ev2")]) == 0
    again = json.loads((tmp_path / "ev2" / "eval.json").read_text())
    assert again["test_indices"] == report["test_indices"]


def build_normalized_mnist_cnn():
    """A factory for --model-factory: the net expects normalized input, like many zoo models."""
    from advplug.models import MnistCNN

    net = MnistCNN()
    net.normalize = nn.Identity()
    return net


def test_model_factory_with_normalize_gets_the_same_numbers(tmp_path, standard_model_path, data_root, capsys):
    state = torch.load(standard_model_path, weights_only=True)["state_dict"]
    weights = tmp_path / "w.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("normalize.")}, weights)
    common = ["--dataset", "mnist", "--attacks", "fgsm", "--test-subset", "64", "--data-root", str(data_root),
              "--device", "cpu"]
    assert cli.main(["eval", "--model-factory", "test_eval:build_normalized_mnist_cnn", "--weights", str(weights),
                     "--normalize", "0.1307/0.3081", "--out", str(tmp_path / "a"), *common]) == 0
    assert cli.main(["eval", "--model", str(standard_model_path), "--out", str(tmp_path / "b"), *common]) == 0
    a = json.loads((tmp_path / "a" / "eval.json").read_text())["models"]
    b = json.loads((tmp_path / "b" / "eval.json").read_text())["models"]
    (ra,), (rb,) = a.values(), b.values()
    assert ra["clean_acc"] == rb["clean_acc"] and ra["attacks"][0]["robust_acc"] == rb["attacks"][0]["robust_acc"]


def test_unknown_attack_is_one_clear_error(standard_model_path, data_root, capsys):
    code = cli.main(["eval", "--model", str(standard_model_path), "--attacks", "pgd,fgsn", "--data-root", str(data_root)])
    assert code == 2 and "unknown attack 'fgsn'" in capsys.readouterr().err
