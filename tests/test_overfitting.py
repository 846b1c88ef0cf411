"""Catastrophic-overfitting tooling in the engine: keep-best early stopping, the collapse guard, the plot."""
import json

import pytest
import torch

import advplug
from advplug import hookimpl
from advplug.checkpoint import safe_load
from advplug.errors import AdvplugError
from advplug.host import get_host

from conftest import tiny_config


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_makes_the_final_model_the_best_heldout_epoch(tmp_path, data_root):
    run = advplug.train(tiny_config(tmp_path, data_root, trainer="fgsm-rs", epochs=3, keep_best=True,
                                    keep_checkpoints=True, monitor_size=128))
    accs = [m["monitor_heldout_pgd_acc"] for m in run.history]
    best_epoch = 1 + accs.index(max(accs))
    assert run.best == (max(accs), best_epoch)
    final = safe_load(run.out_dir / "model.pt")["state_dict"]
    chosen = safe_load(run.out_dir / "checkpoints" / f"epoch_{best_epoch:03d}.pt")["model"]
    assert _weights_equal(final, chosen)
    assert run.final_eval["model_epoch"] == best_epoch
    if best_epoch != 3:  # the last epoch's weights are not what was kept
        assert not _weights_equal(final, safe_load(run.out_dir / "checkpoints" / "epoch_003.pt")["model"])


class _FakeCollapse:
    """Pretends held-out PGD accuracy fell from 50 % to 0 in one epoch (a real collapse is not
    reliable on a seconds-long run); the guard must react to the metric, whatever caused it."""

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    @hookimpl
    def advplug_epoch_end(self, run, epoch, metrics):
        if epoch in (self.at_epoch - 1, self.at_epoch):
            metrics["monitor_heldout_pgd_acc"] = 50.0 if epoch < self.at_epoch else 0.0


def test_collapse_guard_restores_the_previous_epoch_and_stops(tmp_path, data_root, capsys):
    get_host().register(_FakeCollapse(at_epoch=2), name="fake-collapse")
    run = advplug.train(tiny_config(tmp_path, data_root, trainer="fgsm-rs", epochs=4, co_guard=20.0,
                                    keep_checkpoints=True, monitor_size=128, optimizer="adam", lr=1e-3))
    assert run.epoch == 2 and run.history[-1]["co_guard_triggered"]
    assert "catastrophic overfitting guard" in run.stop_reason and "restored the weights of epoch 1" in run.stop_reason
    assert "stopping after epoch 2" in capsys.readouterr().out
    epoch1 = safe_load(run.out_dir / "checkpoints" / "epoch_001.pt")["model"]
    assert _weights_equal(safe_load(run.out_dir / "model.pt")["state_dict"], epoch1)
    manifest = json.loads((run.out_dir / "manifest.json").read_text())
    assert "catastrophic overfitting guard" in manifest["stop_reason"]


def test_overfitting_plot_is_written_each_epoch(tmp_path, data_root):
    run = advplug.train(tiny_config(tmp_path, data_root, trainer="fgsm-rs", epochs=2, monitor_size=64))
    png = run.out_dir / "overfitting.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("bad, message", [
    ({"keep_best": True, "monitor_size": 0}, "monitor_size > 0"),
    ({"co_guard": 0.0}, "co_guard"),
])
def test_guard_settings_are_checked(tmp_path, data_root, bad, message):
    with pytest.raises(AdvplugError, match=message):
        advplug.train(tiny_config(tmp_path, data_root, **bad))


def test_overfitting_cli_overlays_runs_and_names_what_is_missing(tmp_path, capsys):
    import json

    from advplug import cli

    def run(name, accs, steps=10):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"monitor_steps": steps}))
        (d / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": i + 1, "train_acc": 50.0 + i, "monitor_heldout_pgd_acc": a}) + "\n"
            for i, a in enumerate(accs)))
        return d

    rs, sdi = run("rs_eps=0.3", [12.9, 1.6]), run("sdi", [30.0, 31.0])
    out = tmp_path / "co.png"
    assert cli.main(["overfitting", str(rs), f"{sdi}=fgsm-sdi k=1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rs_eps=0.3: held-out PGD accuracy per epoch 12.9, 1.6" in text  # '=' in a directory name
    assert "fgsm-sdi k=1: held-out PGD accuracy per epoch 30.0, 31.0" in text
    assert out.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "nomon").mkdir()
    (tmp_path / "nomon" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_acc": 1.0}) + "\n")
    assert cli.main(["overfitting", str(tmp_path / "nomon"), "--out", str(out)]) == 2
    assert "--monitor-size 0" in capsys.readouterr().err
    assert cli.main(["overfitting", str(run("pgd5", [1.0], steps=5)), str(rs), "--out", str(out)]) == 2
    assert "different PGD steps" in capsys.readouterr().err
