"""The training engine on real MNIST subsets: outputs, hooks, exact resume, atomicity."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import advplug
from advplug import hookimpl
from advplug.checkpoint import atomic_save
from advplug.errors import AdvplugError
from advplug.host import get_host
from conftest import tiny_config


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_everything_a_user_needs(tmp_path, data_root):
    run = advplug.train(tiny_config(tmp_path, data_root, epochs=2))
    out = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "manifest.json", "subsets.json", "model.pt",
                 "final_eval.json", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    metrics = _metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"train_loss", "train_acc", "monitor_heldout_clean_acc", "monitor_heldout_pgd_acc",
            "monitor_train_pgd_acc", "epoch_time_s"} <= set(metrics[0])
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]  # it actually learns
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["epoch_times_s"]) == 2
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0]
    subsets = json.loads((out / "subsets.json").read_text())
    assert len(subsets["train"]) == 512 and len(subsets["test"]) == 128
    assert not set(subsets["train"]) & set(subsets["heldout_monitor"])  # held out really is
    model = advplug.load_model(out / "model.pt")
    assert not model.training
    assert run.final_eval["samples"] == 128


def test_test_subset_is_identical_across_training_seeds(tmp_path, data_root):
    a = advplug.train(tiny_config(tmp_path / "a", data_root, seed=1, eval_steps=0))
    b = advplug.train(tiny_config(tmp_path / "b", data_root, seed=2, eval_steps=0))
    assert torch.equal(a.test_idx, b.test_idx)
    assert not torch.equal(a.train_idx, b.train_idx)


class Recorder:
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    @hookimpl
    def advplug_train_start(self, run):
        self.calls.append("start")

    @hookimpl
    def advplug_epoch_end(self, run, epoch, metrics):
        self.calls.append(f"epoch{epoch}")
        metrics["recorder_seen"] = epoch

    @hookimpl
    def advplug_should_stop(self, run, epoch, metrics):
        return "enough epochs" if epoch == self.stop_at else None

    @hookimpl
    def advplug_train_end(self, run):
        self.calls.append("end")


def test_lifecycle_hooks_are_called_and_should_stop_stops(tmp_path, data_root):
    recorder = Recorder(stop_at=2)
    get_host().register(recorder, name="recorder")
    run = advplug.train(tiny_config(tmp_path, data_root, epochs=4, eval_steps=0, monitor_size=0))
    assert recorder.calls == ["start", "epoch1", "epoch2", "end"]
    assert run.epoch == 2
    metrics = _metrics(tmp_path / "run")
    assert [m["recorder_seen"] for m in metrics] == [1, 2]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "stopped early" and manifest["stop_reason"] == "enough epochs"


class HalfEps:
    """A schedule: ε grows linearly from half to full over training."""

    def __call__(self, t, epoch, threat, params):
        return {"eps": threat.eps * (0.5 + 0.5 * t)}


class SchedulePlugin:
    @hookimpl
    def advplug_register_schedules(self, registry):
        registry.add("half-eps", lambda: HalfEps())


def test_schedule_sets_trainer_eps_each_epoch(tmp_path, data_root):
    get_host().register(SchedulePlugin(), name="sched")
    advplug.train(tiny_config(tmp_path, data_root, trainer="fgsm-rs", schedule="half-eps", epochs=2,
                              eps=0.2, monitor_size=0, eval_steps=0))
    assert [round(m["eps"], 6) for m in _metrics(tmp_path / "run")] == [0.1, 0.2]


def test_a_schedule_changes_eps_and_leaves_the_trainers_other_parameters_as_given(tmp_path, data_root):
    """A schedule setting ε must not reset the trainer's parameters to their defaults (it
    did: TRADES with beta=1 trained as beta=6 under a ramp)."""
    get_host().register(SchedulePlugin(), name="sched")
    run = advplug.train(tiny_config(tmp_path, data_root, trainer="pgd-at", trainer_params={"steps": 2, "alpha": 0.05},
                                    schedule="half-eps", epochs=2, eps=0.2, monitor_size=0, eval_steps=0))
    assert run.trainer.params["steps"] == 2 and run.trainer.params["alpha"] == 0.05
    assert [round(m["eps"], 6) for m in run.history] == [0.1, 0.2]


def _cli(args, env_extra=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return [sys.executable, "-m", "advplug", "train", *args], env


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, data_root):
    common = ["--dataset", "mnist", "--trainer", "pgd-at:steps=3", "--epochs", "3", "--train-subset", "1536",
              "--batch-size", "64", "--test-subset", "64", "--monitor-size", "64", "--eval-steps", "2",
              "--lr-schedule", "cyclic", "--data-root", str(data_root), "--no-progress", "--seed", "3"]
    ref_cmd, env = _cli(common + ["--out", str(tmp_path / "ref")])
    subprocess.run(ref_cmd, env=env, check=True, capture_output=True, timeout=600)

    out = tmp_path / "killed"
    cmd, env = _cli(common + ["--out", str(out)])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for epoch 1's checkpoint, then kill inside epoch 2
        ckpt = out / "checkpoints" / "last.pt"
        if ckpt.exists() and (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.pt").exists(), "the run finished before it was killed; the test proves nothing"
    done = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 3

    cmd, env = _cli(["--resume", str(out), "--no-progress"])
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    ref = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    got = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    timing = {"epoch_time_s", "monitor_time_s"}
    strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]  # noqa: E731
    assert strip(_metrics(out)) == strip(_metrics(tmp_path / "ref"))
    assert json.loads((out / "final_eval.json").read_text()) == json.loads((tmp_path / "ref" / "final_eval.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed"] and manifest["resumed"][0]["at_epoch"] == done


def test_crash_while_saving_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format": "advplug-checkpoint", "epoch": 1}, path)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        atomic_save({"format": "advplug-checkpoint", "epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_resume_refuses_to_change_the_recipe(tmp_path, data_root):
    advplug.train(tiny_config(tmp_path, data_root, monitor_size=0, eval_steps=0))
    with pytest.raises(AdvplugError, match="cannot change trainer"):
        advplug.train(resume=tmp_path / "run", trainer="pgd-at")
    run = advplug.train(resume=tmp_path / "run", epochs=2)  # extending training is allowed
    assert run.epoch == 2 and len(_metrics(tmp_path / "run")) == 2


def test_resume_refuses_to_stretch_a_schedule_laid_out_over_the_epochs(tmp_path, data_root):
    advplug.train(tiny_config(tmp_path, data_root, lr_schedule="cyclic", monitor_size=0, eval_steps=0))
    with pytest.raises(AdvplugError, match="cyclic LR schedule was laid out over 1 epochs"):
        advplug.train(resume=tmp_path / "run", epochs=2)
