"""advplug train: defaults that learn, settings checked before anything runs, nothing lost
(an existing run is never overwritten silently; Ctrl-C records it) -- issue 13, items 7, 8,
9, 12 and 13."""
import json
import re
import shlex

import pytest

import advplug
import advplug.engine
from advplug import cli, hookimpl
from advplug.config import make_config
from advplug.errors import AdvplugError
from advplug.host import get_host
from conftest import REPO, tiny_config


def one_line_error(capsys, argv) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("advplug: error: "), err
    return err[0][len("advplug: error: "):]


def tiny_flags(tmp_path, data_root, out="run"):
    return ["--train-subset", "64", "--test-subset", "16", "--monitor-size", "0", "--eval-steps", "0",
            "--no-progress", "--data-root", str(data_root), "--out", str(tmp_path / out)]


# -- item 7: defaults under which every built-in trainer learns ----------------------------

def readme_first_train_command() -> list[str]:
    """The README's first `advplug train` command, as written (continuation lines joined)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith("advplug train"))
    return shlex.split(line.split("#")[0])[1:]


def test_readme_first_train_command_learns_far_above_chance(tmp_path, data_root):
    """It once ended near chance (SGD 0.05 default: 7.5% clean on 2,000 images)."""
    argv = readme_first_train_command()
    assert argv[:2] == ["train", "--dataset"] and "--optimizer" not in argv and "--lr" not in argv
    shrunk = {"--train-subset": "2000", "--test-subset": "200", "--out": str(tmp_path / "pgd")}
    for flag, value in shrunk.items():
        argv[argv.index(flag) + 1] = value
    assert cli.main([*argv, "--data-root", str(data_root), "--no-progress", "--monitor-size", "0"]) == 0
    final = json.loads((tmp_path / "pgd" / "final_eval.json").read_text())
    assert final["samples"] == 200 and final["clean_acc"] > 40  # chance is 10%
    config = json.loads((tmp_path / "pgd" / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["lr_schedule"], config["eps"]) == ("adam", 1e-3, "constant", 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["standard", "pgd-at", "fgsm-rs", "free-at", "fgsm-ga", "fgsm-ckpt"])
def test_every_builtin_trainer_learns_on_a_short_run_with_mnist_defaults(tmp_path, data_root, trainer):
    run = advplug.train({"dataset": "mnist", "trainer": trainer, "train_subset": 2000, "test_subset": 200,
                         "monitor_size": 0, "data_root": str(data_root), "out": str(tmp_path / "r"),
                         "progress": False})
    assert run.final_eval["clean_acc"] > 40, run.final_eval


def test_defaults_come_from_the_dataset_and_help_states_them(capsys):
    mnist, cifar = make_config({"dataset": "mnist"}), make_config({"dataset": "cifar10"})
    assert (mnist.optimizer, mnist.lr, mnist.weight_decay, mnist.eps) == ("adam", 1e-3, 0.0, 0.3)
    assert (cifar.optimizer, cifar.lr, cifar.momentum, cifar.lr_schedule) == ("sgd", 0.1, 0.9, "multistep")
    # one table for training and evaluation: CIFAR-10 trains at 8/255 (it trained at 0.3 = 76/255)
    assert cifar.eps == pytest.approx(8 / 255)
    assert make_config({"dataset": "cifar10", "norm": "L2"}).eps == 0.5
    assert make_config({"dataset": "mnist", "lr": 0.01}).optimizer == "adam"  # a flag wins where given
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "mnist: adam lr 0.001, weight decay 0, constant LR; ε Linf 0.3, L2 2" in help_text
    assert "cifar10: sgd lr 0.1 momentum 0.9, weight decay 0.0005, multistep LR; ε Linf 8/255, L2 0.5" in help_text


# -- items 8 and 13: settings of the wrong type or that do not fit -------------------------

@pytest.mark.parametrize("line, expected", [
    ("epochs = 1.5", "config key 'epochs' must be a whole number, got 1.5"),
    ('epochs = "three"', "config key 'epochs' must be a whole number, got 'three'"),
    ('lr = "0.1"', "config key 'lr' must be a number (or unset), got '0.1' (write lr = 0.1, without quotes)"),
    ("augment = 3", "config key 'augment' must be a table (dict) (or unset), got 3"),
])
def test_config_values_of_the_wrong_type_are_one_line(tmp_path, data_root, capsys, line, expected):
    config = tmp_path / "run.toml"
    config.write_text(line + "\n")
    assert one_line_error(capsys, ["train", "--config", str(config), *tiny_flags(tmp_path, data_root)]) == expected
    assert not (tmp_path / "run").exists()


def test_a_whole_float_is_an_integer():
    assert make_config({"epochs": 2.0}).epochs == 2


def test_resume_with_a_config_file_is_refused(tmp_path, data_root, capsys):
    advplug.train(tiny_config(tmp_path, data_root))
    config = tmp_path / "run.toml"
    config.write_text("epochs = 3\n")
    msg = one_line_error(capsys, ["train", "--resume", str(tmp_path / "run"), "--config", str(config)])
    assert f"--config {config} would be ignored" in msg and "Drop --config" in msg


def test_an_eps_that_makes_robustness_impossible_is_warned_about(tmp_path, data_root, capsys):
    assert cli.main(["train", "--norm", "L2", "--eps", "1e6", *tiny_flags(tmp_path, data_root)]) == 0
    err = capsys.readouterr().err
    assert "advplug: warning: L2 ε=1e+06 on mnist: at ε >= 14 every image can be turned into the same gray" in err
    assert cli.main(["train", "--norm", "L2", "--eps", "2", *tiny_flags(tmp_path, data_root, "ok")]) == 0
    assert "warning" not in capsys.readouterr().err


# -- item 9: an existing run is never overwritten silently ---------------------------------

def test_out_over_a_finished_run_is_refused_and_overwrite_clears_it_first(tmp_path, data_root, capsys):
    advplug.train(tiny_config(tmp_path, data_root, keep_checkpoints=True, epochs=2, keep_best=True,
                              monitor_size=32))
    run = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "epoch_002.pt").is_file()
    msg = one_line_error(capsys, ["train", *tiny_flags(tmp_path, data_root)])
    assert f"{run} already holds a run (model.pt, checkpoints/best.pt" in msg
    assert f"--resume {run}" in msg and "--out DIR" in msg and "--overwrite" in msg
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    assert cli.main(["train", *tiny_flags(tmp_path, data_root), "--overwrite"]) == 0
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["last.pt"]  # no stale best.pt / epoch_*.pt beside the new run
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


def test_out_that_is_a_file_is_one_line(tmp_path, data_root, capsys):
    (tmp_path / "run").write_text("not a directory")
    assert "is an existing file, not a directory" in one_line_error(capsys, ["train", *tiny_flags(tmp_path,
                                                                                                   data_root)])


def test_python_api_refuses_too(tmp_path, data_root):
    advplug.train(tiny_config(tmp_path, data_root))
    with pytest.raises(AdvplugError, match="already holds a run"):
        advplug.train(tiny_config(tmp_path, data_root))
    advplug.train(tiny_config(tmp_path, data_root), overwrite=True)


# -- item 12: Ctrl-C is recorded, and the hint names the real directory --------------------

class CtrlCAfterEpoch:
    def __init__(self, epoch):
        self.epoch = epoch

    @hookimpl
    def advplug_epoch_end(self, run, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_ctrl_c_records_interrupted_names_the_run_and_wall_time_covers_every_session(tmp_path, data_root, capsys):
    get_host().register(CtrlCAfterEpoch(2), name="ctrl-c")  # epoch 1 is checkpointed, epoch 2 is not
    flags = ["--epochs", "3", *tiny_flags(tmp_path, data_root)]
    assert cli.main(["train", *flags]) == 130
    run = tmp_path / "run"
    assert f"interrupted; continue with: advplug train --resume {run}\n" in capsys.readouterr().err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["epochs_done"] == 2 and manifest["wall_time_s"] > 0
    first_session = manifest["wall_time_s"]
    get_host().pm.unregister(name="ctrl-c")
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["epochs_done"] == 3
    assert manifest["wall_time_s"] > first_session
    assert manifest["train_time_s"] == pytest.approx(sum(manifest["epoch_times_s"]))


def test_ctrl_c_before_any_checkpoint_says_to_start_over(tmp_path, data_root, capsys):
    get_host().register(CtrlCAfterEpoch(1), name="ctrl-c")
    assert cli.main(["train", *tiny_flags(tmp_path, data_root)]) == 130
    err = capsys.readouterr().err
    assert "before any checkpoint" in err and "run the same command again to start over" in err
    assert "--resume" not in err
    get_host().pm.unregister(name="ctrl-c")
    assert cli.main(["train", *tiny_flags(tmp_path, data_root)]) == 0  # nothing there to protect


def test_a_diverged_run_is_one_error_and_keeps_the_last_finite_epoch(tmp_path, data_root, capsys):
    msg = one_line_error(capsys, ["train", "--optimizer", "sgd", "--lr", "1e12", "--momentum", "0",
                                  "--epochs", "3", *tiny_flags(tmp_path, data_root)])
    found = re.search(r"training diverged in epoch (\d): the training loss is (nan|inf)", msg)
    assert found, msg
    epoch = int(found.group(1))
    if epoch > 1:
        assert f"holds epoch {epoch - 1}, the last finite one" in msg
        assert advplug.engine.load_resume_state(tmp_path / "run")["epoch"] == epoch - 1
    else:
        assert "no epoch finished" in msg
    assert not (tmp_path / "run" / "model.pt").exists()
