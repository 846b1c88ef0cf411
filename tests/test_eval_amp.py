"""advplug eval --amp: the clean predictions and every attack's passes under autocast, the
numbers close to fp32 ones, the report saying so, and stored results kept apart by precision."""
import json

import pytest
import torch
from torch import nn

import advplug
from advplug import cli
from advplug.data import BUILTIN_DATASETS
from advplug.errors import AdvplugError
from advplug.evaluation import evaluate_model, load_test_set
from advplug.testset import TestSet as Images
from advplug.host import get_host
from advplug.precision import AutocastModel, autocast_dtype, with_autocast
from advplug.threat import Threat

#: accuracy points bf16 autocast may differ from fp32 on the 200 images below: 3 points are 6
#: images, well inside the ±6.9-point 95% interval of an accuracy near 50% on 200 images
TOLERANCE = 3.0
ATTACKS = "fgsm,pgd:steps=10"
THREAT = Threat("Linf", 0.1)  # mid-range robust accuracies for the standard model (not all 0%)


@pytest.fixture(scope="module")
def test_set(data_root):
    return load_test_set(BUILTIN_DATASETS["mnist"], 200, seed=42, data_root=data_root)


def record_dtypes(model):
    """Hooks on every conv and linear layer: the set of (grad enabled, output dtype) seen."""
    seen = set()
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.add((torch.is_grad_enabled(), out.dtype)))
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return seen, handles


def test_bf16_eval_matches_fp32_and_really_runs_under_autocast(standard_model, test_set):
    model = standard_model
    model.train()  # the model's own mode and flags come back after either evaluation
    flags = [p.requires_grad for p in model.parameters()]
    registry = get_host().registry

    seen, handles = record_dtypes(model)
    fp32 = evaluate_model(model, test_set, ATTACKS, THREAT, registry, batch_size=100)
    assert seen == {(False, torch.float32), (True, torch.float32)}
    seen.clear()
    bf16 = evaluate_model(model, test_set, ATTACKS, THREAT, registry, batch_size=100, amp="bf16")
    for h in handles:
        h.remove()
    # bf16 inside the layers, for the clean predictions (no grad) and the attacks' passes (grad)
    assert seen == {(False, torch.bfloat16), (True, torch.bfloat16)}

    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert bf16["model_identity"] == fp32["model_identity"]  # the unwrapped model's identity
    assert 0 < fp32["attacks"][1]["robust_acc"] < fp32["clean_acc"], "the check needs mid-range accuracies"
    assert abs(bf16["clean_acc"] - fp32["clean_acc"]) <= TOLERANCE
    for a, b in zip(fp32["attacks"], bf16["attacks"]):
        assert abs(a["robust_acc"] - b["robust_acc"]) <= TOLERANCE, (a, b)
    # per sample: the two precisions agree on nearly every image
    agree = (fp32["attacks"][1]["_correct"] == bf16["attacks"][1]["_correct"]).float().mean().item()
    assert agree >= 1 - TOLERANCE / 100
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("attack", ["art:pgd:steps=2", "apgd:steps=2", "square:n_queries=20"])
def test_every_library_attacks_the_autocast_model(standard_model, test_set, attack):
    """ART, AutoAttack and black-box attacks call the model their own way: they see the
    autocast wrapper too."""
    small = Images(test_set.dataset, test_set.x[:16], test_set.y[:16], test_set.indices[:16], test_set.seed)
    seen, handles = record_dtypes(standard_model)
    try:
        res = evaluate_model(standard_model, small, attack, THREAT, get_host().registry, amp="bf16")
    finally:
        for h in handles:
            h.remove()
    assert {dtype for _, dtype in seen} == {torch.bfloat16}, seen
    assert 0 <= res["attacks"][0]["robust_acc"] <= res["clean_acc"] + TOLERANCE


def test_autocast_wrapper_returns_float32_and_follows_the_models_mode(standard_model):
    model = standard_model.eval()
    net = with_autocast(model, "bf16", "cpu")
    assert isinstance(net, AutocastModel) and with_autocast(model, None, "cpu") is model
    assert not net.training and list(net.parameters()) == list(model.parameters())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        out, ref = net(x), model(x)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)  # computed in bf16, returned as float32
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()  # bf16 keeps ~3 significant digits
    net.train()
    assert model.training


def test_an_fp32_result_is_never_reused_for_an_amp_run_or_the_reverse(standard_model_path, data_root, tmp_path,
                                                                     capsys):
    common = ["eval", "--model", str(standard_model_path), "--attacks", "fgsm", "--test-subset", "32",
              "--data-root", str(data_root), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "ev")]
    assert cli.main(common) == 0
    capsys.readouterr()
    assert cli.main([*common, "--amp", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "reusing" not in out
    assert "note: evaluated under bf16 autocast (torch.autocast on cpu, bfloat16" in out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["precision"] == "bf16" and "bf16 autocast" in report["precision_note"]
    assert "Precision: evaluated under bf16 autocast" in (tmp_path / "ev" / "eval.md").read_text()
    assert len(list((tmp_path / "ev" / "results").glob("*.json"))) == 2  # one per precision
    # each precision reuses its own result
    assert cli.main([*common, "--amp", "BF16"]) == 0
    assert "fgsm: reusing the result" in capsys.readouterr().out
    assert cli.main(common) == 0
    assert "fgsm: reusing the result" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["precision"] == "fp32" and "precision_note" not in report
    assert "Precision: fp32 (no autocast)" in (tmp_path / "ev" / "eval.md").read_text()


def test_fp16_on_the_cpu_is_one_clear_error(standard_model_path, data_root, tmp_path, capsys):
    code = cli.main(["eval", "--model", str(standard_model_path), "--test-subset", "8", "--data-root",
                     str(data_root), "--device", "cpu", "--amp", "fp16", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("advplug: error: --amp fp16 is for CUDA") and "--amp bf16" in err[0]
    assert not (tmp_path / "ev").exists()
    with pytest.raises(AdvplugError, match="--amp fp16 is for CUDA"):
        advplug.evaluate(standard_model_path, amp="fp16", device="cpu", data_root=data_root, test_subset=8)
    with pytest.raises(AdvplugError, match="--amp must be one of bf16, fp16"):
        advplug.evaluate(standard_model_path, amp="fp8", device="cpu", data_root=data_root, test_subset=8)


def test_training_and_evaluation_share_the_dtype_names_and_device_check():
    assert autocast_dtype(None, "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda")) is torch.float16
    assert autocast_dtype("bf16", "cuda", cuda_only="training") is torch.bfloat16
    # training stays CUDA only (advplug.engine.training_autocast), with its message
    with pytest.raises(AdvplugError, match="--amp bf16 is mixed precision on CUDA; this run is on cpu, where "
                                           "training stays fp32"):
        autocast_dtype("bf16", "cpu", cuda_only="training")
