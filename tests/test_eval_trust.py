"""advplug eval never prints a wrong number without a word and keeps what it finished:
non-finite outputs, attacks that change the model, duplicate labels, random weights,
foreign model outputs, killed evaluations (issue 13, items 1, 3, 4, 6, 10, 13)."""
import json
import shutil
import sys
import textwrap
import uuid

import pytest
import torch
import torchattacks
from torch import nn

from advplug import cli
from advplug.attacks.base import attack_factory
from advplug.data import BUILTIN_DATASETS
from advplug.errors import AdvplugError
from advplug.evaluation import evaluate_model, load_test_set, model_labels
from advplug.host import get_host
from advplug.registries import Registrar
from advplug.threat import Threat

MNIST = BUILTIN_DATASETS["mnist"]


@pytest.fixture(scope="module")
def test_set(data_root):
    return load_test_set(MNIST, 60, seed=42, data_root=data_root)


def register(name, factory):
    Registrar(get_host().registry, "attacks", "test").add(name, factory)


def one_line_error(capsys, argv) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("advplug: error: "), err
    return err[0]


# -- item 1: non-finite values -------------------------------------------------------------

def nan_every_third(minimal=False):
    """FGSM whose output is NaN for every third sample (as torchattacks' DeepFool did for
    5 of 30 images of a PGD-AT model)."""
    @attack_factory("test", minimal=minimal, params={})
    def factory(model, threat):
        fgsm = torchattacks.FGSM(model, eps=threat.eps)

        def attack(x, y):
            x_adv = fgsm(x, y).clone()
            x_adv[::3] = float("nan")
            return x_adv
        return attack
    return factory


def test_nan_outputs_fall_back_to_clean_and_are_reported_never_counted_as_fooled(standard_model, test_set):
    register("nan-fgsm", nan_every_third())
    res = evaluate_model(standard_model, test_set, "fgsm,nan-fgsm", Threat("Linf", 0.3), get_host().registry)
    fgsm, nan_fgsm = res["attacks"]
    clean = torch.zeros(60, dtype=torch.bool)
    with torch.no_grad():
        x = test_set.x.float() / 255
        clean = standard_model(x).argmax(1) == test_set.y
    # the NaN rows count as the clean input (fooled only where the clean input already is wrong),
    # every other row as FGSM's
    expected = torch.where(torch.arange(60) % 3 == 0, clean, fgsm["_correct"])
    assert torch.equal(nan_fgsm["_correct"], expected)
    assert nan_fgsm["robust_acc"] == pytest.approx(100 * expected.float().mean().item())
    assert nan_fgsm["nonfinite_samples"] == 20
    assert "non-finite values (NaN/inf) for 20 of 60 samples" in nan_fgsm["note"]
    assert nan_fgsm["robust_acc"] > fgsm["robust_acc"] + 10  # NaN no longer passes for a successful attack


def test_minimal_attack_median_norm_ignores_nan_outputs(standard_model, test_set):
    register("nan-minimal", nan_every_third(minimal=True))
    (row,) = evaluate_model(standard_model, test_set, "nan-minimal", Threat("Linf", 0.3),
                            get_host().registry)["attacks"]
    assert row["median_perturbation"] == pytest.approx(0.3, abs=1e-5)  # FGSM's: ε on every finite sample
    assert "median unprojected Linf norm 0.3" in row["note"] and "nan" not in row["note"].split(";")[0]


def test_cli_marks_the_nan_cell_and_says_how_many(standard_model_path, data_root, tmp_path, capsys):
    register("nan-fgsm", nan_every_third())
    assert cli.main(["eval", "--model", str(standard_model_path), "--attacks", "nan-fgsm", "--test-subset", "30",
                     "--data-root", str(data_root), "--out", str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: model run/model.pt / attack nan-fgsm: returned non-finite values (NaN/inf) for 10 of 30" in err
    row = json.loads((tmp_path / "eval.json").read_text())["models"]["run/model.pt"]["attacks"][0]
    assert row["nonfinite_samples"] == 10
    assert f"{row['robust_acc']:.2f}*" in (tmp_path / "eval.md").read_text()


class NanModel(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), float("nan"))


def test_a_model_with_nan_logits_is_one_error_not_a_12_percent_accuracy(test_set):
    with pytest.raises(AdvplugError, match="non-finite logits .* for 60 of 60 inputs"):
        evaluate_model(NanModel(), test_set, "fgsm", Threat("Linf", 0.3), get_host().registry)


# -- item 6: an attack that changes the model ----------------------------------------------

@attack_factory("test", params={})
def weight_nudging(model, threat):
    def attack(x, y):
        with torch.no_grad():
            next(model.parameters()).add_(0.01)
        return x
    return attack


def test_an_attack_that_changes_the_weights_is_one_error_naming_it(test_set):
    register("nudge", weight_nudging)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(AdvplugError) as err:
        evaluate_model(model, test_set, "fgsm,nudge,pgd:steps=2", Threat("Linf", 0.3), get_host().registry)
    assert "attack 'nudge' changed the weights or buffers of model model (1.weight)" in str(err.value)


def test_a_batchnorm_update_by_an_attack_is_caught_too(test_set):
    @attack_factory("test", params={})
    def train_mode_forward(model, threat):
        def attack(x, y):
            model.train()
            with torch.no_grad():
                model(x)
            return x
        return attack

    register("train-mode", train_mode_forward)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(AdvplugError, match=r"attack 'train-mode' changed .* \(1.num_batches_tracked, "
                                           r"1.running_mean, 1.running_var\)"):
        evaluate_model(model, test_set, "train-mode", Threat("Linf", 0.3), get_host().registry)


def test_the_same_attack_twice_is_one_error_not_one_column_hiding_the_other(test_set):
    """Two spellings of one attack once shared a table column that showed only the second result."""
    for attacks, said in (("pgd:steps=10,fgsm,pgd:steps=10", "'pgd:steps=10' is given twice"),
                          ("pgd,torchattacks:pgd:steps=10", "is the same attack as 'pgd'")):
        with pytest.raises(AdvplugError, match=said):
            evaluate_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), test_set, attacks, Threat("Linf", 0.3),
                           get_host().registry)


# -- item 3: unique labels -----------------------------------------------------------------

def test_labels_are_the_shortest_distinguishing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_labels(["a/runs/fgsm-rs/model.pt", "b/runs/fgsm-rs/model.pt", "c/pgd/model.pt"]) == \
        ["a/runs/fgsm-rs/model.pt", "b/runs/fgsm-rs/model.pt", "pgd/model.pt"]
    assert model_labels(["x/model.pt", "y/model.pt"]) == ["x/model.pt", "y/model.pt"]
    with pytest.raises(AdvplugError, match="given twice"):
        model_labels(["x/model.pt", "./x/model.pt"])


def test_cli_eval_keeps_both_models_whose_run_names_repeat(standard_model_path, data_root, tmp_path, capsys):
    paths = []
    for study in ("a", "b"):
        path = tmp_path / study / "runs" / "fgsm-rs" / "model.pt"
        path.parent.mkdir(parents=True)
        shutil.copy(standard_model_path, path)
        paths.append(str(path))
    assert cli.main(["eval", "--models", *paths, "--attacks", "fgsm", "--test-subset", "16", "--data-root",
                     str(data_root), "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    models = json.loads((tmp_path / "ev" / "eval.json").read_text())["models"]
    assert list(models) == ["a/runs/fgsm-rs/model.pt", "b/runs/fgsm-rs/model.pt"]


# -- item 4: random weights only on purpose ------------------------------------------------

def factory_module(tmp_path, monkeypatch, body: str) -> str:
    """A module in the current directory (as a user's own code would be); returns its name."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import torch\nfrom torch import nn\n" + textwrap.dedent(body))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return name


def test_arch_or_factory_without_weights_is_refused(tmp_path, data_root, monkeypatch, capsys):
    common = ["--dataset", "mnist", "--attacks", "fgsm", "--test-subset", "16", "--data-root", str(data_root),
              "--out", str(tmp_path / "ev"), "--no-progress"]
    err = one_line_error(capsys, ["eval", "--arch", "mnist-cnn", *common])
    assert "--arch mnist-cnn needs --weights FILE" in err and "--random-init" in err
    module = factory_module(tmp_path, monkeypatch, "def build():\n    return nn.Sequential(nn.Flatten(), "
                                                   "nn.Linear(784, 10))\n")
    err = one_line_error(capsys, ["eval", "--model-factory", f"{module}:build", *common])
    assert "--weights none when the factory returns a trained model" in err
    assert "--random-init" in one_line_error(capsys, ["eval", "--arch", "mnist-cnn", "--weights", "none", *common])


def test_random_init_is_evaluated_only_on_purpose_and_says_so(tmp_path, data_root, monkeypatch, capsys):
    module = factory_module(tmp_path, monkeypatch, "def build():\n    torch.manual_seed(0)\n    return "
                                                   "nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    common = ["--dataset", "mnist", "--attacks", "fgsm", "--test-subset", "16", "--data-root", str(data_root),
              "--no-progress"]
    assert cli.main(["eval", "--arch", "mnist-cnn", "--random-init", "--out", str(tmp_path / "r"), *common]) == 0
    assert "random, untrained weights (--random-init)" in capsys.readouterr().err
    assert "mnist-cnn (random init)" in json.loads((tmp_path / "r" / "eval.json").read_text())["models"]
    # the current directory is importable, and --weights none takes the factory's own weights
    assert cli.main(["eval", "--model-factory", f"{module}:build", "--weights", "none",
                     "--out", str(tmp_path / "f"), *common]) == 0
    assert f"{module}:build (its own weights)" in json.loads((tmp_path / "f" / "eval.json").read_text())["models"]


# -- item 13: foreign models, bad sizes, an --out that is a file --------------------------

FOREIGN = """
class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return {"features": x.flatten(1), "logits": self.fc(x.flatten(1))}


def dict_net():
    torch.manual_seed(0)
    return DictNet()


def five_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))


def not_a_module():
    return "a string"
"""


def test_foreign_model_outputs_are_checked(tmp_path, data_root, monkeypatch, capsys):
    module = factory_module(tmp_path, monkeypatch, FOREIGN)
    common = ["--dataset", "mnist", "--weights", "none", "--attacks", "fgsm", "--test-subset", "16",
              "--data-root", str(data_root), "--out", str(tmp_path / "ev"), "--no-progress"]
    err = one_line_error(capsys, ["eval", "--model-factory", f"{module}:dict_net", *common])
    assert "returns a dict (keys: features, logits)" in err and "--logits-key KEY" in err
    assert cli.main(["eval", "--model-factory", f"{module}:dict_net", "--logits-key", "logits", *common]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, ["eval", "--model-factory", f"{module}:five_classes", *common])
    assert "returns 5 logits but mnist has 10 classes" in err
    err = one_line_error(capsys, ["eval", "--model-factory", f"{module}:not_a_module", *common])
    assert "returned a str, not a torch.nn.Module" in err


def test_test_subset_zero_and_an_out_file_are_one_line(standard_model_path, data_root, tmp_path, capsys):
    common = ["eval", "--model", str(standard_model_path), "--attacks", "fgsm", "--data-root", str(data_root)]
    err = one_line_error(capsys, [*common, "--test-subset", "0", "--out", str(tmp_path / "ev")])
    assert "--test-subset must be a whole number >= 1" in err
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    err = one_line_error(capsys, [*common, "--test-subset", "8", "--out", str(a_file)])
    assert f"--out {a_file} is an existing file, not a directory" in err


# -- item 10: a killed evaluation keeps what it finished -----------------------------------

@attack_factory("test", params={})
def ctrl_c(model, threat):
    def attack(x, y):
        raise KeyboardInterrupt
    return attack


def test_killed_eval_keeps_each_finished_result_and_the_rerun_reuses_it(standard_model_path, data_root, tmp_path,
                                                                       capsys):
    register("ctrl-c", ctrl_c)
    common = ["eval", "--model", str(standard_model_path), "--test-subset", "32", "--data-root", str(data_root),
              "--no-progress"]
    assert cli.main([*common, "--attacks", "pgd:steps=5,ctrl-c", "--out", str(tmp_path / "ev")]) == 130
    err = capsys.readouterr().err
    assert f"finished results are kept in {tmp_path / 'ev' / 'results'}" in err and "rerun the same command" in err
    results = list((tmp_path / "ev" / "results").glob("*.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["row"]["attack"] == "pgd:steps=5"
    assert cli.main([*common, "--attacks", "pgd:steps=5,fgsm", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "run/model.pt / pgd:steps=5: reusing the result computed" in out and "fgsm: reusing" not in out
    resumed = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert list(resumed["reused"]["run/model.pt"]) == ["pgd:steps=5"]
    # the same numbers as an uninterrupted evaluation
    assert cli.main([*common, "--attacks", "pgd:steps=5,fgsm", "--out", str(tmp_path / "fresh")]) == 0
    fresh = json.loads((tmp_path / "fresh" / "eval.json").read_text())
    strip = lambda res: [(r["attack"], r["robust_acc"]) for r in res["models"]["run/model.pt"]["attacks"]]  # noqa
    assert strip(resumed) == strip(fresh)
    assert resumed["models"]["run/model.pt"]["worst_case_acc"] == fresh["models"]["run/model.pt"]["worst_case_acc"]
    # a result is reused only when everything that decides it matches: other parameters, ε or images rerun
    for other in (["--attacks", "pgd:steps=6"], ["--attacks", "pgd:steps=5", "--eps", "0.2"],
                  ["--attacks", "pgd:steps=5", "--seed", "7"], ["--attacks", "pgd:steps=5", "--batch-size", "8"]):
        assert cli.main([*common, *other, "--out", str(tmp_path / "ev")]) == 0
        assert "reusing" not in capsys.readouterr().out, other
