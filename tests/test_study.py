"""advplug study: identical settings and test images for every variant; one table, reusable runs."""
import json

import pytest

from advplug import cli
from advplug.errors import AdvplugError
from advplug.study import trainer_variants


def test_trainer_list_keeps_parameters_with_their_trainer():
    variants = trainer_variants("fgsm-rs,pgd-at:steps=3,alpha=0.1,standard")
    assert variants == {"fgsm-rs": {"trainer": "fgsm-rs", "trainer_params": {}},
                        "pgd-at_steps=3_alpha=0.1": {"trainer": "pgd-at",
                                                      "trainer_params": {"steps": 3, "alpha": 0.1}},
                        "standard": {"trainer": "standard", "trainer_params": {}}}
    with pytest.raises(AdvplugError, match="--trainers is empty"):
        trainer_variants(" , ")


def test_fast_at_study_trains_evaluates_on_one_subset_and_reuses_finished_runs(tmp_path, data_root, capsys):
    out = tmp_path / "study"
    argv = ["study", "fast-at", "--trainers", "standard,pgd-at:steps=2", "--attacks", "fgsm,pgd:steps=5",
            "--epochs", "1", "--train-subset", "512", "--test-subset", "100", "--monitor-size", "64",
            "--eval-steps", "0", "--optimizer", "adam", "--lr", "0.001", "--data-root", str(data_root),
            "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "study.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["standard", "pgd-at_steps=2"]
    # the same 100 test images for both models, recorded once
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert evaluation["samples"] == 100 and len(evaluation["test_indices"]) == 100
    # the table's numbers are the evaluation's; PGD-2 training costs more than standard per epoch
    for method, row in rows.items():
        model = evaluation["models"][method]
        assert row["clean_acc"] == model["clean_acc"]
        assert row["robust"] == {a["attack"]: a["robust_acc"] for a in model["attacks"]}
    assert rows["pgd-at_steps=2"]["epoch_time_ratio"] > 1.5
    assert rows["standard"]["epoch_time_ratio"] == 1.0
    md = (out / "study.md").read_text()
    assert "| pgd-at_steps=2 |" in md and "epoch time vs standard" in md
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    # a second call reuses both finished runs and their evaluation (no retraining, no attacks)
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/model.pt"), out / "eval" / "eval.json"]}
    capsys.readouterr()
    assert cli.main(argv) == 0
    second = capsys.readouterr().out
    assert "reusing the finished run" in second and "reusing the evaluation" in second
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "study.json").read_text())["rows"] == summary["rows"]
    # other attacks: the models are evaluated again
    assert cli.main([*argv[:5], "fgsm", *argv[6:]]) == 0
    assert "reusing the evaluation" not in capsys.readouterr().out


def test_study_rejects_a_bad_trainer_before_training_anything(tmp_path, data_root, capsys):
    argv = ["study", "fast-at", "--trainers", "standard,fgsm-nope", "--data-root", str(data_root),
            "--out", str(tmp_path / "s"), "--no-progress"]
    assert cli.main(argv) == 2
    assert "fgsm-nope" in capsys.readouterr().err
    assert not (tmp_path / "s" / "runs").exists()
