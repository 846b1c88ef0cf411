"""The public Python API: ``advplug.attack``, ``advplug.evaluate`` (the numbers of
``advplug eval``), the lazily exported names, and an ``import advplug`` without torch."""
import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import advplug
from advplug import cli
from advplug.errors import AdvplugError
from conftest import mnist_images

PACKAGE = Path(advplug.__file__).resolve().parent


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=PACKAGE.parent)


def test_attack_lowers_accuracy_inside_the_ball_and_restores_the_model(standard_model_path, data_root):
    model = advplug.load_model(standard_model_path)
    x, y = mnist_images(data_root, 200, train=False)
    model.train()  # a model left in training mode, one parameter frozen by its owner
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    modes = []
    hook = model.register_forward_pre_hook(lambda module, args: modes.append(module.training))

    pgd = advplug.attack(model, "pgd:steps=10", eps=0.2, norm="Linf")
    x_adv = pgd(x, y)
    hook.remove()

    assert modes and not any(modes), "the attack ran the model in training mode"
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.9 and robust < clean - 0.3, (clean, robust)
    assert (pgd.name, pgd.params["steps"], pgd.threat) == ("torchattacks:pgd", 10, advplug.Threat("Linf", 0.2))


def test_attack_eps_is_required_or_the_dataset_default(standard_model):
    assert advplug.attack(standard_model, "fgsm", dataset="mnist").threat == advplug.Threat("Linf", 0.3)
    assert advplug.attack(standard_model, "pgd", dataset="mnist", norm="L2").threat.eps == 2.0
    assert advplug.attack(standard_model, "fgsm", eps="8/255").threat.eps == pytest.approx(8 / 255)
    with pytest.raises(AdvplugError, match="needs eps="):
        advplug.attack(standard_model, "fgsm")
    with pytest.raises(AdvplugError) as bad:
        advplug.attack(standard_model, "pgd:stepz=3", eps=0.3)
    assert "stepz" in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(AdvplugError, match="fgsn"):
        advplug.attack(standard_model, "fgsn", eps=0.3)


def test_evaluate_gives_the_numbers_of_advplug_eval(standard_model_path, data_root, tmp_path, capsys):
    common = ["--attacks", "fgsm,pgd:steps=5", "--eps", "0.1", "--test-subset", "200", "--data-root", str(data_root),
              "--device", "cpu", "--no-progress"]
    assert cli.main(["eval", "--model", str(standard_model_path), "--out", str(tmp_path / "cli"), *common]) == 0
    printed = capsys.readouterr().out
    assert "written:" in printed
    by_cli = json.loads((tmp_path / "cli" / "eval.json").read_text())

    res = advplug.evaluate([standard_model_path], attacks="fgsm,pgd:steps=5", eps=0.1, test_subset=200,
                           data_root=data_root, device="cpu")
    assert capsys.readouterr().out == "", "verbose=False prints nothing"
    module = advplug.load_model(standard_model_path)
    by_module = advplug.evaluate({"mine": module}, dataset="mnist", attacks="fgsm,pgd:steps=5", eps="1/10",
                                 test_subset=200,
                                 data_root=data_root)

    (label,) = by_cli["models"]
    assert list(res["results"]) == [label]
    assert res["meta"]["samples"] == by_cli["samples"] == 200
    assert res["meta"]["test_indices"] == by_cli["test_indices"]
    assert res["meta"]["threat"] == by_cli["threat"] == {"norm": "Linf", "eps": 0.1}
    for api in (res["results"][label], by_module["results"]["mine"]):
        cli_model = by_cli["models"][label]
        for key in ("clean_acc", "worst_case_acc", "mean_robust_acc", "best_minus_worst", "clean_ci95"):
            assert api[key] == cli_model[key], key
        assert [(r["attack"], r["robust_acc"], r["ci95"]) for r in api["attacks"]] == \
            [(r["attack"], r["robust_acc"], r["ci95"]) for r in cli_model["attacks"]]
        assert [len(r["_correct"]) for r in api["attacks"]] == [200, 200]
    print("same-numbers:", {k: res["results"][label][k] for k in ("clean_acc", "worst_case_acc")},
          [(r["attack"], r["robust_acc"]) for r in res["results"][label]["attacks"]],
          {k: by_cli["models"][label][k] for k in ("clean_acc", "worst_case_acc")},
          [(r["attack"], r["robust_acc"]) for r in by_cli["models"][label]["attacks"]], file=sys.stderr)


def test_evaluate_refuses_unclear_input_before_any_work(standard_model):
    with pytest.raises(AdvplugError, match="dataset="):
        advplug.evaluate(standard_model, attacks="fgsm")
    with pytest.raises(AdvplugError, match="fgsn"):
        advplug.evaluate(standard_model, dataset="mnist", attacks="fgsm,fgsn")


def test_import_advplug_does_not_import_torch():
    proc = _fresh_python("import advplug, sys; assert 'torch' not in sys.modules, 'torch imported'; "
                         "dir(advplug); advplug.__all__; assert 'torch' not in sys.modules")
    assert proc.returncode == 0, proc.stderr


def test_every_exported_name_resolves():
    from advplug.attacks.base import attack_factory
    from advplug.params import Param, check_params
    from advplug.trainers.base import StepOutput, Trainer

    for name in advplug.__all__:
        assert getattr(advplug, name) is not None, name
    assert set(advplug.__all__) <= set(dir(advplug))
    assert (advplug.Trainer, advplug.StepOutput, advplug.attack_factory, advplug.Param, advplug.check_params) == \
        (Trainer, StepOutput, attack_factory, Param, check_params)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        advplug.nope


def test_evaluate_is_the_function():
    """``advplug.evaluate`` is a function (the module is :mod:`advplug.evaluation`)."""
    from advplug.evaluation import TestSet, evaluate, load_test_set, predictions_correct
    from advplug.testset import TestSet as Shared

    assert advplug.evaluate is evaluate and inspect.isfunction(advplug.evaluate)
    assert TestSet is Shared and callable(load_test_set) and callable(predictions_correct)


def _imported_modules(path: Path) -> set:
    """Every module a file imports, anywhere in it (relative imports made absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = ".".join(filter(None, ["advplug" if node.level else "", node.module]))
            found |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
    return found


def test_sanity_and_evaluation_import_no_cycle():
    """advplug.sanity and advplug.evaluation share advplug.testset; sanity never imports evaluation."""
    assert "advplug.evaluation" not in _imported_modules(PACKAGE / "sanity.py")
    assert not _imported_modules(PACKAGE / "testset.py") & {"advplug.evaluation", "advplug.sanity"}
    # one fresh process (torch takes seconds to import): sanity first, then the submodule
    # advplug.evaluation imported before the package attribute is ever looked up
    proc = _fresh_python("import sys, advplug.sanity as s; assert 'advplug.evaluation' not in sys.modules; "
                         "assert callable(s.run_sanity_checks); "
                         "import advplug.evaluation, advplug; assert advplug.evaluate is advplug.evaluation.evaluate")
    assert proc.returncode == 0, proc.stderr
