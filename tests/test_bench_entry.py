"""`python -m benchmarks`: one run prints one table of positive time ratios (tiny sizes here)."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_entry():
    spec = importlib.util.spec_from_file_location("benchmarks_main", REPO / "benchmarks" / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_entry_table(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVPLUG_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.md"
    result = load_entry().main(["--subset", "64", "--repeats", "1", "--out", str(out)])
    names = [r["comparison"] for r in result["rows"]]
    assert names == ["engine standard: advplug / bare loop", "engine pgd-at(10): advplug / bare loop",
                     "ART AdversarialTrainerMadryPGD / advplug pgd-at(10)",
                     "ART AdversarialTrainerFBFPyTorch / advplug fgsm-rs",
                     "recipes fgsm-rs / standard", "recipes fgsm-sdi / standard", "recipes pgd-at(10) / standard"]
    assert all(r["ratio"] > 0 and r["a_img_s"] > 0 and r["b_img_s"] > 0 for r in result["rows"])
    printed = capsys.readouterr().out
    assert printed == out.read_text() and printed.count("\n| ") == 1 + len(names)
    assert json.loads(out.with_suffix(".json").read_text())["machine"]["subset"] == 64


def test_bench_entry_rejects_unknown_group():
    with pytest.raises(SystemExit):
        load_entry().parse(["--only", "engine,nope"])


def cifar_root(data_root):
    if not (Path(data_root) / "cifar-10-batches-py" / "data_batch_5").is_file():
        pytest.skip(f"CIFAR-10 not found under {data_root}")
    return data_root


def test_gpu_group_measures_and_counts_flops_on_cpu(data_root, tmp_path, monkeypatch):
    """The gpu group's measurement is device-agnostic: on a CPU, 2 batches of 8 CIFAR-10 images
    through a narrow PreActResNet-18. Its FLOPs per step are the trainer's passes, counted apart
    here: standard = one forward + backward with weight gradients; each attack step one forward +
    backward to the input only (no weight gradients), so PGD-10 is ~8x standard, not 11x."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setenv("ADVPLUG_DATA", str(cifar_root(data_root)))
    monkeypatch.chdir(tmp_path)
    load_entry()  # puts benchmarks/ on sys.path
    import bench_gpu

    size = dict(batch_size=8, batches=2, model_params={"width": 8}, verify_checksums=False)
    rows = bench_gpu.measure("cpu", modes={"fp32": (None, False)}, repeats=1, peak_tflops=1.0, **size)
    by = {r["trainer"]: r for r in rows}
    assert sorted(by) == sorted(bench_gpu.TRAINERS) and all(r["mode"] == "fp32" for r in rows)
    assert all(r["gflop_per_step"] > 0 and r["images_per_s"] > 0 and r["step_ms"] > 0 for r in rows)
    assert all(r["fraction_of_peak"] == pytest.approx(r["tflop_s"]) for r in rows)  # peak 1 TFLOP/s

    run = bench_gpu.build_run("standard", {}, device="cpu", **size)
    x, y = next(iter(run.loader))
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(run.model(x), y).backward()
    delta = torch.zeros_like(x, requires_grad=True)
    with FlopCounterMode(display=False) as attack:
        torch.autograd.grad(F.cross_entropy(run.model(x + delta), y), delta)
    train, attack = train.get_total_flops() / 1e9, attack.get_total_flops() / 1e9
    assert 0 < attack < train
    assert by["standard"]["gflop_per_step"] == pytest.approx(train, rel=1e-6)
    assert by["fgsm-rs"]["gflop_per_step"] == pytest.approx(train + attack, rel=1e-6)
    steps = bench_gpu.TRAINERS["pgd-at(10)"][1]["steps"]
    assert by["pgd-at(10)"]["gflop_per_step"] == pytest.approx(train + steps * attack, rel=1e-6)
    assert (steps + 1) / 2 < by["pgd-at(10)"]["gflop_per_step"] / by["standard"]["gflop_per_step"] <= steps + 1
    assert by["fgsm-sdi"]["gflop_per_step"] > by["fgsm-rs"]["gflop_per_step"]  # plus its generator


def test_gpu_peaks_from_device_names():
    load_entry()
    import bench_gpu

    assert bench_gpu.device_peaks("NVIDIA H200")[1]["bf16"] == 989.4
    assert bench_gpu.device_peaks("NVIDIA H100 80GB HBM3")[0] == "H100 SXM"
    assert bench_gpu.device_peaks("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert bench_gpu.device_peaks("NVIDIA A100-SXM4-80GB")[1] == {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}
    assert bench_gpu.device_peaks("NVIDIA A10")[0] == "A10" and bench_gpu.device_peaks("NVIDIA L4")[0] == "L4"
    assert bench_gpu.device_peaks("NVIDIA GeForce GTX 1080") is None


def test_gpu_group_without_cuda_is_one_line_with_commands_advplug_accepts(tmp_path, monkeypatch, capsys):
    import shlex

    import torch

    from advplug.cli import build_parser

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the gpu group runs instead")
    monkeypatch.chdir(tmp_path)
    entry = load_entry()
    result = entry.main(["--only", "gpu"])
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.startswith("gpu: skipped") and result["rows"] == []
    assert result["gpu"]["skipped"] == printed.strip()
    commands = entry.gpu_commands()
    assert all(f"`{c}`" in printed for c in commands.values())
    bench = shlex.split(commands["bench"])
    args = entry.parse(bench[bench.index("benchmarks") + 1:])
    assert args.only == ["gpu"] and not args.verify_checksums
    wong = shlex.split(commands["wong2020"])
    parsed = build_parser().parse_args(wong[wong.index("advplug") + 1:])
    assert parsed.names == ["wong2020-cifar10-fgsm-rs"] and parsed.amp == "bf16" and parsed.channels_last
