"""Bad input on the command line: exit status 2 and one ``advplug: error:`` line, never a
traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advplug import cli
from advplug.checkpoint import CHECKPOINT_FORMAT

REPO = Path(__file__).resolve().parents[1]


def small_flags(tmp_path, data_root):
    return ["--train-subset", "64", "--test-subset", "32", "--monitor-size", "0", "--eval-steps", "0",
            "--no-progress", "--out", str(tmp_path / "run"), "--data-root", str(data_root),
            "--device", "cpu"]


def run_cli(capsys, argv):
    """main(argv) -> (exit code, the error message), asserting the one-line contract."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, f"exit {code}; stderr: {captured.err!r}"
    assert len(lines) == 1, f"stderr is not one line: {captured.err!r}"
    assert lines[0].startswith("advplug: error: ")
    assert "Traceback" not in captured.err
    return lines[0][len("advplug: error: "):]


def assert_no_run_written(tmp_path):
    assert not (tmp_path / "run" / "model.pt").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_trainer(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--trainer", "pgd-ta", *small_flags(tmp_path, data_root)])
    assert "unknown trainer 'pgd-ta'" in msg and "did you mean 'pgd-at'" in msg
    assert "fgsm-rs" in msg and "standard" in msg
    assert_no_run_written(tmp_path)


def test_unknown_model(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--model", "resnet50", *small_flags(tmp_path, data_root)])
    assert "unknown model 'resnet50'" in msg and "mnist-cnn" in msg and "wrn-34-10" in msg


def test_unknown_dataset(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--dataset", "cifar11", *small_flags(tmp_path, data_root)])
    assert "unknown dataset 'cifar11'" in msg and "did you mean 'cifar10'" in msg
    assert "mnist" in msg and "svhn" in msg


def test_linf_eps_in_pixel_units_above_one(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--eps", "8", *small_flags(tmp_path, data_root)])
    assert "outside [0, 1]" in msg and "--eps 8/255" in msg


def test_negative_eps(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--eps", "-0.1", *small_flags(tmp_path, data_root)])
    assert ">= 0" in msg and "-0.1" in msg


def test_eps_not_a_number(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--eps", "eight", *small_flags(tmp_path, data_root)])
    assert "'eight'" in msg and "not a number" in msg


def test_unknown_norm(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--norm", "L1", *small_flags(tmp_path, data_root)])
    assert "unknown norm 'L1'" in msg


def test_missing_dataset_offline(tmp_path, data_root, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    flags = small_flags(tmp_path, data_root)
    flags[flags.index("--data-root") + 1] = str(empty)
    msg = run_cli(capsys, ["train", *flags])
    assert "mnist train split not found" in msg
    assert str(empty / "MNIST" / "raw") in msg and "--data-root" in msg
    assert list(empty.iterdir()) == []
    assert_no_run_written(tmp_path)


def test_unknown_trainer_parameter(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--trainer", "pgd-at:stepz=3", *small_flags(tmp_path, data_root)])
    assert "'stepz'" in msg and "pgd-at" in msg and "steps" in msg
    assert_no_run_written(tmp_path)


def test_malformed_trainer_spec(tmp_path, data_root, capsys):
    msg = run_cli(capsys, ["train", "--trainer", "pgd-at:steps", *small_flags(tmp_path, data_root)])
    assert "key=value" in msg


@pytest.fixture
def truncated_checkpoint(tmp_path):
    path = tmp_path / "old" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "epoch": 1,
                "model": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_resume_truncated_checkpoint_file(truncated_checkpoint, capsys):
    msg = run_cli(capsys, ["train", "--resume", str(truncated_checkpoint), "--no-progress"])
    assert str(truncated_checkpoint) in msg and "not a readable advplug checkpoint" in msg


def test_resume_run_dir_with_truncated_checkpoint(truncated_checkpoint, capsys):
    run_dir = truncated_checkpoint.parent.parent
    msg = run_cli(capsys, ["train", "--resume", str(run_dir), "--no-progress"])
    assert "not a readable advplug checkpoint" in msg


@pytest.mark.parametrize("text", [
    "# notes about the run\n",
    "this is not a checkpoint\n",
    'epochs = 3\ntrainer = "pgd-at"\n',
])
def test_resume_text_file(tmp_path, capsys, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    msg = run_cli(capsys, ["train", "--resume", str(path), "--no-progress"])
    assert str(path) in msg and "not a readable advplug checkpoint" in msg


def test_resume_missing(tmp_path, capsys):
    msg = run_cli(capsys, ["train", "--resume", str(tmp_path / "nope"), "--no-progress"])
    assert "no such file" in msg


def test_resume_a_model_file_is_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save({"format": "advplug-model", "spec": {}, "state_dict": {}}, path)
    msg = run_cli(capsys, ["train", "--resume", str(path), "--no-progress"])
    assert "not an advplug advplug-checkpoint" in msg


def test_bad_config_file(tmp_path, data_root, capsys):
    bad = tmp_path / "run.toml"
    bad.write_text("epochs = \n")
    msg = run_cli(capsys, ["train", "--config", str(bad), *small_flags(tmp_path, data_root)])
    assert "cannot be parsed" in msg
    unknown = tmp_path / "run2.toml"
    unknown.write_text("epochz = 3\n")
    msg = run_cli(capsys, ["train", "--config", str(unknown), *small_flags(tmp_path, data_root)])
    assert "epochz" in msg and "known keys" in msg


def test_unknown_model_parameter_in_config(tmp_path, data_root, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[model_params]\nwidht = 2\n")
    msg = run_cli(capsys, ["train", "--config", str(cfg), *small_flags(tmp_path, data_root)])
    assert "widht" in msg


def test_subprocess_unknown_trainer_exits_2_without_traceback(tmp_path, data_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "advplug", "train", "--trainer", "nope", *small_flags(tmp_path, data_root)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("advplug: error: unknown trainer 'nope'")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert_no_run_written(tmp_path)


def test_activation_flag_merges_with_config_model_params(tmp_path, monkeypatch):
    import advplug.engine
    from advplug.config import make_config

    seen = {}

    def fake_train(config=None, *, resume=None, overwrite=False, **overrides):
        seen["cfg"] = make_config(config, **overrides)
        raise KeyboardInterrupt  # stop before any data is touched

    monkeypatch.setattr(advplug.engine, "train", fake_train)
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "wrn-34-10"\n[model_params]\ndepth = 16\nwiden_factor = 4\n')
    assert cli.main(["train", "--config", str(cfg), "--activation", "silu"]) == 130
    assert seen["cfg"].model_params == {"depth": 16, "widen_factor": 4, "activation": "silu"}


def test_a_config_file_starts_from_another_and_its_own_keys_win(tmp_path, data_root, capsys):
    from advplug.config import make_config, read_config_file

    (tmp_path / "base.toml").write_text('epochs = 4\nlr = 0.01\nmodel = "resnet18"\n[model_params]\nwidth = 8\nactivation = "relu"\n')
    (tmp_path / "mid.toml").write_text('config = "base.toml"\nepochs = 2\n[model_params]\nactivation = "silu"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.toml").write_text('config = "../mid.toml"\nseed = 3\n')
    cfg = make_config(tmp_path / "sub" / "run.toml", lr=0.5)
    assert (cfg.epochs, cfg.lr, cfg.seed) == (2, 0.5, 3)
    assert cfg.model_params == {"width": 8, "activation": "silu"}
    # the shipped example that starts from fast_at_mnist.toml trains exactly what it listed before
    assert read_config_file(REPO / "examples" / "mix_ratio_mnist.toml") == {
        "dataset": "mnist", "model": "mnist-cnn", "norm": "Linf", "eps": 0.3, "epochs": 2, "batch_size": 128,
        "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "train_subset": 4000, "test_subset": 200,
        "monitor_size": 256, "eval_steps": 0, "seed": 0, "progress": False}
    (tmp_path / "base.toml").write_text('config = "sub/run.toml"\n')
    msg = run_cli(capsys, ["train", "--config", str(tmp_path / "sub" / "run.toml"), *small_flags(tmp_path, data_root)])
    assert "in a circle" in msg and "base.toml" in msg
    (tmp_path / "odd.toml").write_text("config = 3\n")
    msg = run_cli(capsys, ["train", "--config", str(tmp_path / "odd.toml"), *small_flags(tmp_path, data_root)])
    assert "must be the name of the file to start from" in msg
