"""advplug benchmark: RobustBench's protocol on real CIFAR-10 test images, resumable AutoAttack,
model_info output checked against the shipped leaderboard files, zoo loading offline."""
import json
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from advplug import cli
from advplug.benchmark import compat, protocol
from advplug.benchmark.leaderboard import load_leaderboard
from advplug.benchmark.model_info import REQUIRED_FIELDS, validate
from advplug.benchmark.resumable_autoattack import STANDARD_ATTACKS, run_autoattack
from advplug.errors import AdvplugError

REPO = Path(__file__).resolve().parents[1]
LEADERBOARD = REPO.parent / "shared" / "robustbench" / "model_info"
TRAIN_SLICE = slice(0, 3000)  # the model trains on these training images; the protocol uses test images


@pytest.fixture(scope="module")
def cifar_root(data_root):
    folder = data_root / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file() or not (folder / "data_batch_1").is_file():
        pytest.skip(f"CIFAR-10 test and training batches not under {data_root}")
    return data_root


@pytest.fixture(scope="module")
def cifar_model_path(cifar_root, tmp_path_factory):
    """An advplug checkpoint of a small CNN for cifar10 (normalization inside, [0, 1] inputs),
    trained briefly on the first 3,000 CIFAR-10 training images; the benchmark below uses the
    first n test images."""
    from advplug.data import BUILTIN_DATASETS, load_split
    from advplug.host import get_host
    from advplug.modelio import build_model, save_model

    spec_ds = BUILTIN_DATASETS["cifar10"]
    x, y = load_split(spec_ds, True, cifar_root, verify_checksums=False)
    x, y = x[TRAIN_SLICE].float() / 255, y[TRAIN_SLICE]
    spec = {"arch": "mnist-cnn", "arch_params": {}, "dataset": "cifar10", "num_classes": 10, "in_channels": 3,
            "input_size": 32, "mean": list(spec_ds.mean), "std": list(spec_ds.std), "transforms": []}
    torch.manual_seed(0)
    model = build_model(spec, get_host().registry)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        for i in range(0, len(x), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128]).backward()
            opt.step()
    out = tmp_path_factory.mktemp("cifar") / "tiny-cnn"
    out.mkdir()
    save_model(model, spec, out / "model.pt")
    return out / "model.pt"


def _advplug_model(path):
    import advplug

    return advplug.load_model(path)


def test_robustbench_imports_without_the_official_autoattack_and_its_benchmark_says_why_not(monkeypatch):
    rb = compat.import_robustbench()
    assert not compat.official_autoattack()
    import robustbench.eval as rb_eval

    monkeypatch.setattr(rb_eval, "load_clean_dataset", lambda *a: (torch.rand(4, 3, 32, 32), torch.zeros(4).long()))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    with pytest.raises(AdvplugError, match="official AutoAttack package.*advplug benchmark"):
        rb.benchmark(model, n_examples=4, eps=8 / 255)


def test_leaderboard_eps_are_robustbenchs():
    assert protocol.leaderboard_eps("cifar10", "Linf") == 8 / 255
    assert protocol.leaderboard_eps("cifar100", "L2") == 0.5
    assert protocol.leaderboard_eps("imagenet", "Linf") == 4 / 255
    assert protocol.leaderboard_eps("cifar10", "corruptions") is None


def test_protocol_data_are_the_first_n_official_test_images_in_0_1(cifar_root):
    from advplug.data import BUILTIN_DATASETS, load_split

    x, y = protocol.load_protocol_data("cifar10", 130, cifar_root, verify_checksums=False)
    assert x.shape == (130, 3, 32, 32) and x.dtype == torch.float32
    raw_x, raw_y = load_split(BUILTIN_DATASETS["cifar10"], False, cifar_root, verify_checksums=False)
    assert torch.equal(y, raw_y[:130])
    assert torch.equal(x, raw_x[:130].float() / 255)  # ToTensor: no normalization, model's job
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the official test order
    with pytest.raises(AdvplugError, match="--no-verify-checksums"):
        protocol.load_protocol_data("cifar10", 10, cifar_root)
    with pytest.raises(AdvplugError, match="10000 images"):
        protocol.load_protocol_data("cifar10", 10001, cifar_root, verify_checksums=False)


def test_benchmark_cli_end_to_end_writes_a_leaderboard_entry_and_ranks_it(cifar_model_path, cifar_root, tmp_path,
                                                                         capsys):
    out = tmp_path / "bench"
    code = cli.main(["benchmark", "--model", str(cifar_model_path), "--n-examples", "16", "--batch-size", "16",
                     "--data-root", str(cifar_root), "--no-verify-checksums", "--out", str(out), "--quiet",
                     "--leaderboard-dir", str(LEADERBOARD)])
    assert code == 0
    stdout = capsys.readouterr().out
    info = json.loads((out / "tiny-cnn.json").read_text())
    # same fields and JSON types as the shipped leaderboard file of a real entry
    shipped = json.loads((LEADERBOARD / "cifar10" / "Linf" / "Wong2020Fast.json").read_text())
    for key in REQUIRED_FIELDS.keys() | {"autoattack_acc"}:
        assert type(info[key]) is type(shipped[key]), key
    assert validate(info, "Linf") == []
    assert info["eps"] == "8/255" and info["dataset"] == "cifar10" and info["advplug"]["n_examples"] == 16
    # the numbers: clean accuracy recomputed here, AutoAttack below it
    model = _advplug_model(cifar_model_path)
    x, y = protocol.load_protocol_data("cifar10", 16, cifar_root, verify_checksums=False)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert info["clean_acc"] == f"{100 * clean:.2f}" and clean > 0.2
    assert float(info["autoattack_acc"]) < float(info["clean_acc"])
    state = json.loads((out / "tiny-cnn" / "autoattack_state.json").read_text())
    assert state["done"] == list(STANDARD_ATTACKS) and len(state["robust_flags"]) == 16
    assert "robust accuracy after APGD-CE" in (out / info["advplug"]["autoattack_log"]).read_text()
    # the rank against the 99 shipped entries
    board = load_leaderboard(LEADERBOARD, "cifar10", "Linf")
    rank = 1 + sum(row.robust > float(info["autoattack_acc"]) for row in board.rows)
    assert f"leaderboard rank: {rank} of 100" in stdout
    assert cli.main(["leaderboard", "--leaderboard-dir", str(LEADERBOARD), "--with", str(out / "tiny-cnn.json"),
                     "--format", "markdown"]) == 0
    assert "tiny-cnn" in capsys.readouterr().out


class _Interrupting(torch.nn.Module):
    """The model, until its ``calls``-th forward pass: then a KeyboardInterrupt (Ctrl-C / kill)."""

    def __init__(self, model, calls):
        super().__init__()
        self.model, self.left = model, calls

    def forward(self, x):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.model(x)


def test_interrupted_autoattack_resumes_at_the_next_batch_and_matches_an_uninterrupted_run(cifar_model_path,
                                                                                           cifar_root, tmp_path):
    # 16/255: APGD-CE fools (nearly) every point, so the test spends its time where the cut is
    kwargs = dict(n_examples=24, batch_size=8, eps=16 / 255, data_dir=cifar_root, verify_checksums=False,
                  progress=False)
    model = _advplug_model(cifar_model_path)
    full = protocol.run_benchmark(model, out_dir=tmp_path / "full", **kwargs)
    assert full.robust_acc < full.clean_acc
    # killed inside APGD-CE's second batch (3 clean batches, then ~100 iterations per batch)
    with pytest.raises(KeyboardInterrupt):
        protocol.run_benchmark(_Interrupting(model, 3 + 150), out_dir=tmp_path / "cut", **kwargs)
    state = json.loads((tmp_path / "cut" / "autoattack_state.json").read_text())
    assert state["done"] == [] and state["current"] == {**state["current"], "attack": "apgd-ce", "batches_done": [0]}
    first_session = state["elapsed_s"]
    assert first_session > 0
    # the wrapper has no weights of its own, so the fingerprint matches the plain model
    started = time.time()
    resumed = protocol.run_benchmark(model, out_dir=tmp_path / "cut", **kwargs)
    assert resumed.resumed and (resumed.clean_acc, resumed.robust_acc) == (full.clean_acc, full.robust_acc)
    # the wall time covers both sessions, not only the resumed one
    assert resumed.seconds >= first_session + 0.9 * (time.time() - started) > first_session
    assert json.loads((tmp_path / "cut" / "autoattack_state.json").read_text())["done"] == list(STANDARD_ATTACKS)
    with pytest.raises(AdvplugError, match="other settings.*n_examples"):
        protocol.run_benchmark(model, out_dir=tmp_path / "cut", **{**kwargs, "n_examples": 23})
    (tmp_path / "cut" / "autoattack_state.json").write_text('{"format": "advplug-autoattack-state/1", "robu')
    with pytest.raises(AdvplugError, match="damaged"):
        protocol.run_benchmark(model, out_dir=tmp_path / "cut", **kwargs)


def _batchwise_vs_plain(model, x, y, eps, attacks, state_path):
    import pyautoattack

    from advplug.attacks.base import eval_frozen

    with eval_frozen(model):
        state = run_autoattack(model, x, y, norm="Linf", eps=eps, seed=0, batch_size=8, device="cpu",
                               state_path=state_path, progress=False, attacks=attacks)
        plain = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0)
        plain.attacks_to_run = list(attacks)
        _, y_adv = plain.run_standard_evaluation(x, y, batch_size=8)
    return state, y_adv == y


def test_batchwise_autoattack_flags_equal_one_plain_pyautoattack_run(cifar_model_path, cifar_root, tmp_path):
    model = _advplug_model(cifar_model_path)
    x, y = protocol.load_protocol_data("cifar10", 16, cifar_root, verify_checksums=False)
    # eps small enough that points survive APGD-CE, so APGD-T attacks a re-formed batch
    state, plain_flags = _batchwise_vs_plain(model, x, y, 3 / 255, ("apgd-ce", "apgd-t"), tmp_path / "s.json")
    assert torch.equal(state["robust_flags"], plain_flags)
    assert 0 < state["robust_accuracy"] < state["clean_accuracy"]


@pytest.mark.slow
def test_batchwise_autoattack_standard_equals_plain_pyautoattack_with_all_four_attacks(cifar_model_path,
                                                                                      cifar_root, tmp_path):
    model = _advplug_model(cifar_model_path)
    x, y = protocol.load_protocol_data("cifar10", 24, cifar_root, verify_checksums=False)
    state, plain_flags = _batchwise_vs_plain(model, x, y, 2 / 255, STANDARD_ATTACKS, tmp_path / "s.json")
    assert torch.equal(state["robust_flags"], plain_flags)
    assert 0 < state["robust_accuracy"] < state["clean_accuracy"]


def _fake_official_autoattack(tmp_path):
    """The official package's API (AutoAttack(..., log_path), run_standard_evaluation(x, y, bs, state_path),
    state.EvaluationState.from_disk) over pyautoattack, standing in for `pip install git+.../auto-attack`."""
    import pyautoattack

    class AutoAttack:
        def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(),
                     version="standard", device="cuda", log_path=None):
            self.model, self.log_path = model, log_path
            self.inner = pyautoattack.AutoAttack(model, norm=norm, eps=eps, seed=0, version=version, device=device)

        def run_standard_evaluation(self, x, y, bs=250, return_labels=False, state_path=None):
            x_adv, y_adv = self.inner.run_standard_evaluation(x, y, batch_size=bs)
            Path(state_path).write_text(json.dumps((y_adv == y).float().tolist()))
            Path(self.log_path).write_text("fake official log\n")
            return x_adv

    class EvaluationState:
        @classmethod
        def from_disk(cls, path):
            return types.SimpleNamespace(robust_flags=torch.tensor(json.loads(Path(path).read_text())))

    return AutoAttack, EvaluationState


def test_robustbench_benchmark_itself_gives_the_same_numbers_as_advplugs_reproduction(cifar_model_path,
                                                                                     cifar_root, tmp_path,
                                                                                     monkeypatch):
    compat.import_robustbench()
    import robustbench.eval as rb_eval

    fake_aa, fake_state = _fake_official_autoattack(tmp_path)
    monkeypatch.setattr(rb_eval, "AutoAttack", fake_aa)
    monkeypatch.setattr(rb_eval, "EvaluationState", fake_state)
    # the shared CIFAR-10 copy fails torchvision's md5 check: feed benchmark() the same tensors
    monkeypatch.setattr(rb_eval, "load_clean_dataset", lambda ds, n, d, prepr: protocol.load_protocol_data(
        "cifar10", n, cifar_root, verify_checksums=False))
    kwargs = dict(n_examples=16, batch_size=8, eps=16 / 255, data_dir=cifar_root, progress=False)
    model = _advplug_model(cifar_model_path)
    official = protocol.run_benchmark(model, out_dir=tmp_path / "official", use_official=True, **kwargs)
    ours = protocol.run_benchmark(model, out_dir=tmp_path / "ours", use_official=False, verify_checksums=False,
                                  **kwargs)
    assert official.runner == "robustbench.eval.benchmark" and ours.runner == "advplug+pyautoattack"
    assert (tmp_path / "official" / "autoattack.log").read_text() == "fake official log\n"
    assert (official.clean_acc, official.robust_acc) == (ours.clean_acc, ours.robust_acc)
    assert ours.robust_acc < ours.clean_acc


def test_zoo_model_offline_error_names_the_file_and_loads_from_model_dir(tmp_path, monkeypatch):
    compat.import_robustbench()
    import robustbench.utils as rb_utils
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from advplug.benchmark.zoo import load_zoo_model

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(rb_utils, "download_gdrive_new", offline)
    with pytest.raises(AdvplugError, match=r"Wong2020Fast\.pt.*--model-dir"):
        load_zoo_model("Wong2020Fast", "cifar10", "Linf", tmp_path / "models")
    with pytest.raises(AdvplugError, match="did you mean Wong2020Fast"):
        load_zoo_model("Wong2020Fst", "cifar10", "Linf", tmp_path / "models")
    # weights already on disk (here: a freshly initialised net of the zoo architecture)
    net = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]["Wong2020Fast"]["model"]()
    target = tmp_path / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), target)
    model = load_zoo_model("Wong2020Fast", "cifar10", "Linf", tmp_path / "models")
    assert not model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net.eval()(x))  # the weights from --model-dir, in eval mode


@pytest.mark.parametrize("argv, message", [
    ([], "exactly one of --model"),
    (["--model", "a.pt", "--robustbench-model", "X"], "got --model, --robustbench-model"),
    (["--arch", "resnet18", "--dataset", "imagenet"], "--robustbench-model or the Python API"),
    (["--arch", "resnet18", "--threat", "Linf2"], "--threat 'Linf2'"),
])
def test_benchmark_cli_bad_input_is_one_clear_error(argv, message, capsys):
    assert cli.main(["benchmark", *argv]) == 2
    assert message in capsys.readouterr().err


def test_benchmark_refuses_a_checkpoint_of_another_dataset_and_missing_corruption_data(standard_model_path,
                                                                                      cifar_model_path, cifar_root,
                                                                                      tmp_path, capsys):
    # an MNIST model: no leaderboard exists, and the hint leads out (it once said --dataset mnist, which
    # was then refused in turn: a circle)
    hint = f"advplug eval --model {standard_model_path} --attacks autoattack"
    for extra in ([], ["--dataset", "mnist"]):
        assert cli.main(["benchmark", "--model", str(standard_model_path), *extra, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "RobustBench has no mnist leaderboard" in err[0] and hint in err[0]
    assert cli.main(["benchmark", "--model", str(cifar_model_path), "--dataset", "cifar100",
                     "--out", str(tmp_path)]) == 2
    assert "trained on 'cifar10', not 'cifar100'; pass --dataset cifar10" in capsys.readouterr().err
    assert cli.main(["benchmark", "--model", str(cifar_model_path), "--threat", "corruptions", "--n-examples", "10",
                     "--data-root", str(cifar_root), "--no-verify-checksums", "--out", str(tmp_path)]) == 2
    assert "CIFAR-10-C" in capsys.readouterr().err
