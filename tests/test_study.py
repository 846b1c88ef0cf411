"""advplug study: identical settings and test images for every variant; one table, reusable runs."""
import json
import os
import re
import statistics

import pytest
import torch

from advplug import cli
from advplug.errors import AdvplugError
from advplug.study import trainer_variants


def assert_times_are_the_runs(run_dir, row, reference_row):
    """The study row's times are the run's recorded epoch times; its ratios divide them by the reference's."""
    epochs = [json.loads(line)["epoch_time_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["epoch_times_s"] == epochs and row["train_s"] == pytest.approx(sum(epochs))
    assert row["median_epoch_s"] == pytest.approx(statistics.median(epochs))
    assert row["epoch_time_ratio"] == pytest.approx(row["median_epoch_s"] / reference_row["median_epoch_s"])
    assert row["train_time_ratio"] == pytest.approx(row["train_s"] / reference_row["train_s"])


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
    # the table's numbers are the evaluation's, its times the runs' own (speed itself belongs in benchmarks/:
    # on a shared 2-core machine a 1-epoch timing comparison is noise)
    for method, row in rows.items():
        model = evaluation["models"][method]
        assert row["clean_acc"] == model["clean_acc"]
        assert row["robust"] == {a["attack"]: a["robust_acc"] for a in model["attacks"]}
        assert_times_are_the_runs(out / "runs" / method, row, rows["standard"])
    assert rows["standard"]["epoch_time_ratio"] == 1.0
    md = (out / "study.md").read_text()
    assert "| pgd-at_steps=2 |" in md and "epoch time vs standard" in md
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    # a second call reuses both finished runs and every (model, attack) result (no retraining, no attacks)
    results = out / "eval" / "results"
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/model.pt"), *results.glob("*.json")]}
    assert len(list(results.glob("*.json"))) == 4  # 2 models x 2 attacks
    capsys.readouterr()
    assert cli.main(argv) == 0
    second = capsys.readouterr().out
    assert second.count("reusing the finished run") == 2 and second.count("reusing the result computed") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "study.json").read_text())["rows"] == summary["rows"]
    # fewer attacks: the kept ones are reused, nothing runs
    assert cli.main([*argv[:5], "fgsm", *argv[6:]]) == 0
    assert capsys.readouterr().out.count("reusing the result computed") == 2
    # another test subset changes only the evaluation: the trained models are reused, the attacks run again
    i = argv.index("--test-subset")
    assert cli.main([*argv[:i + 1], "80", *argv[i + 2:]]) == 0
    third = capsys.readouterr().out
    assert "reusing the finished run" in third and "training into" not in third
    assert "reusing the result" not in third
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.pt")} == \
        {p: t for p, t in stamps.items() if p.name == "model.pt"}
    previous = json.loads((out / "eval" / "eval.json").read_text())
    assert previous["samples"] == 80
    # a variant added to the study is the only one trained and evaluated; the others' results are kept
    added = [*argv[:i + 1], "80", *argv[i + 2:]]
    added[added.index("--trainers") + 1] = "standard,pgd-at:steps=2,fgsm-rs"
    assert cli.main(added) == 0
    fourth = capsys.readouterr().out
    assert fourth.count("training into") == 1 and "fgsm-rs: training into" in fourth
    assert fourth.count("reusing the result computed") == 4 and "fgsm-rs / fgsm: reusing" not in fourth
    merged = json.loads((out / "eval" / "eval.json").read_text())
    assert list(merged["models"]) == ["standard", "pgd-at_steps=2", "fgsm-rs"]
    for model in previous["models"]:
        assert [a["robust_acc"] for a in merged["models"][model]["attacks"]] == \
            [a["robust_acc"] for a in previous["models"][model]["attacks"]]
    when = previous["time"][:16]
    assert set(merged["reused"]) == {"standard", "pgd-at_steps=2"}
    assert all(t[:16] <= when for attacks in merged["reused"].values() for t in attacks.values())
    assert merged["test_indices"] == previous["test_indices"]
    assert [r["method"] for r in json.loads((out / "study.json").read_text())["rows"]] == list(merged["models"])
    note = "reused from earlier evaluations (same weights, attack and parameters, threat, test images"
    assert note in (out / "study.md").read_text() and note in (out / "eval" / "eval.md").read_text()
    # each model's reused attacks, grouped by when they were computed (one group, or two across a second)
    assert re.search(r"standard: fgsm(, pgd:steps=5)? \(computed", (out / "eval" / "eval.md").read_text())
    assert set(merged["reused"]["standard"]) == {"fgsm", "pgd:steps=5"}
    # a model file's content decides, not its date: a touched file is reused, changed weights are evaluated again
    (out / "runs" / "standard" / "model.pt").touch()
    changed = out / "runs" / "fgsm-rs" / "model.pt"
    stat, saved = changed.stat(), torch.load(changed, weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"][first] = saved["state_dict"][first] + 0.05
    torch.save(saved, changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cli.main(added) == 0
    fifth = capsys.readouterr().out
    assert "standard / fgsm: reusing" in fifth and "fgsm-rs / fgsm: reusing" not in fifth
    again = json.loads((out / "eval" / "eval.json").read_text())
    assert again["models"]["fgsm-rs"]["model_identity"] != merged["models"]["fgsm-rs"]["model_identity"]
    assert again["reused"]["standard"] == merged["reused"]["standard"]  # when each reused result was computed


def test_study_rerun_with_other_training_settings_is_refused_listing_the_difference(tmp_path, data_root, capsys):
    """A rerun with --epochs 2 (or --eps 0.2) on an existing --out once 'resumed' the finished
    1-epoch runs and printed the new settings over the old table."""
    out = tmp_path / "study"
    argv = ["study", "fast-at", "--trainers", "standard,fgsm-rs", "--attacks", "fgsm", "--epochs", "1",
            "--train-subset", "256", "--test-subset", "32", "--monitor-size", "0", "--eval-steps", "0",
            "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    models = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.pt")}
    study = (out / "study.json").read_text()
    capsys.readouterr()
    for flag, value, diff in (("--epochs", "2", "epochs 1 -> 2"), ("--eps", "0.2", "eps 0.3 -> 0.2")):
        i = argv.index("--epochs")
        changed = [*argv[:i], flag, value, *argv[i + 2:]] if flag == "--epochs" else [*argv, flag, value]
        assert cli.main(changed) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and diff in err[0] and "standard (" in err[0] and "fgsm-rs (" in err[0]
        assert "--overwrite" in err[0] and "another --out" in err[0]
        assert {p: p.stat().st_mtime_ns for p in models} == models and (out / "study.json").read_text() == study
    # --overwrite retrains with the new settings, and the table says them
    assert cli.main([*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:], "--overwrite"]) == 0
    assert json.loads((out / "runs" / "fgsm-rs" / "config.json").read_text())["epochs"] == 2
    summary = json.loads((out / "study.json").read_text())
    assert summary["base_config"]["epochs"] == 2 and all(r["epochs"] == 2 for r in summary["rows"])


def test_study_rejects_a_bad_trainer_before_training_anything(tmp_path, data_root, capsys):
    argv = ["study", "fast-at", "--trainers", "standard,fgsm-nope", "--data-root", str(data_root),
            "--out", str(tmp_path / "s"), "--no-progress"]
    assert cli.main(argv) == 2
    assert "fgsm-nope" in capsys.readouterr().err
    assert not (tmp_path / "s" / "runs").exists()


def test_ratio_variants_are_a_clean_baseline_and_one_mixed_ratio_sampler_per_ratio():
    from advplug.study import ratio_variants

    variants = ratio_variants("10:90, 50:50", pool="fgsm,pgd:steps=3")
    assert list(variants) == ["clean", "mix_10-90", "mix_50-50"]
    assert variants["clean"] == {"trainer": "standard", "trainer_params": {}, "sampler": None, "sampler_params": {}}
    assert variants["mix_10-90"]["sampler"] == "mixed-ratio"
    assert variants["mix_10-90"]["sampler_params"] == {"ratio": "10:90", "attacks": "fgsm,pgd:steps=3"}
    for bad in ("10-90", "a:b", "50:0", ""):
        with pytest.raises(AdvplugError, match="--ratios"):
            ratio_variants(bad)


def test_variants_file_study_compares_activations_on_one_test_subset(tmp_path, data_root):
    spec = tmp_path / "act.toml"
    spec.write_text('dataset = "mnist"\nepochs = 1\ntrain_subset = 256\ntest_subset = 64\nmonitor_size = 0\n'
                    'eval_steps = 0\noptimizer = "adam"\nlr = 0.001\nweight_decay = 0.0\n\n'
                    '[variants.relu]\n\n[variants.gelu]\nmodel_params = { activation = "gelu" }\n')
    out = tmp_path / "s"
    assert cli.main(["study", "variants", str(spec), "--attacks", "fgsm", "--data-root", str(data_root),
                     "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "study.json").read_text())
    assert summary["study"] == "act" and summary["reference"] == "relu"
    assert [r["method"] for r in summary["rows"]] == ["relu", "gelu"]
    configs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/config.json")}
    assert configs["gelu"]["model_params"] == {"activation": "gelu"} and configs["relu"]["model_params"] == {}
    # identical settings otherwise, and different models
    assert {k: v for k, v in configs["gelu"].items() if k not in ("model_params", "out")} == \
        {k: v for k, v in configs["relu"].items() if k not in ("model_params", "out")}
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["relu"]["robust"] != rows["gelu"]["robust"] or rows["relu"]["clean_acc"] != rows["gelu"]["clean_acc"]


def test_variants_file_without_variants_or_with_a_bad_label_is_one_error(tmp_path):
    from advplug.study import file_variants

    empty = tmp_path / "empty.toml"
    empty.write_text("epochs = 1\n")
    with pytest.raises(AdvplugError, match=r"\[variants.<label>\]"):
        file_variants(empty)
    bad = tmp_path / "bad.toml"
    bad.write_text('[variants."a b"]\n')
    with pytest.raises(AdvplugError, match="'a b'"):
        file_variants(bad)


def test_mix_ratio_study_trains_a_clean_baseline_and_each_ratio_and_warns_on_clean_drops(tmp_path, data_root):
    out = tmp_path / "mix"
    argv = ["study", "mix-ratio", "--ratios", "50:50", "--pool", "fgsm,pgd:steps=2", "--attacks", "fgsm",
            "--clean-drop-warning", "0", "--epochs", "1", "--train-subset", "256", "--test-subset", "64",
            "--monitor-size", "0", "--eval-steps", "0", "--optimizer", "adam", "--lr", "0.001",
            "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "study.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["clean", "mix_50-50"] and summary["reference"] == "clean"
    assert rows["clean"]["sampler"] is None
    assert rows["mix_50-50"]["sampler"] == "mixed-ratio"
    assert rows["mix_50-50"]["sampler_params"] == {"ratio": "50:50", "attacks": "fgsm,pgd:steps=2"}
    history = [json.loads(line) for line in (out / "runs" / "mix_50-50" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["sampler_adversarial_share"] == pytest.approx(0.5)
    assert_times_are_the_runs(out / "runs" / "mix_50-50", rows["mix_50-50"], rows["clean"])
    row = rows["mix_50-50"]
    assert row["mean_robust_acc"] == row["robust"]["fgsm"] and row["attack_gap"] == 0.0
    drop = rows["clean"]["clean_acc"] - row["clean_acc"]
    assert bool(summary["warnings"]) == (drop > 0)
    assert ("**Warning:** mix_50-50" in (out / "study.md").read_text()) == (drop > 0)
    # the study picks each variant's trainer and sampler itself
    assert cli.main([*argv, "--sampler", "mat-max"]) == 2


def test_study_table_and_plot_take_a_variant_with_extra_eot_columns(tmp_path):
    """A stochastic variant meets EOT attacks the others do not: its columns are added, the
    others' cells are '-' (the plot crashed on the uneven rows)."""
    from advplug.study import markdown, plot_study

    def row(method, robust):
        return {"method": method, "clean_acc": 99.0, "robust": robust, "mean_robust_acc": 50.0,
                "worst_case_acc": min(robust.values()), "attack_gap": 0.0, "epochs": 1, "train_s": 1.0,
                "median_epoch_s": 1.0, "epoch_time_ratio": 1.0, "train_time_ratio": 1.0}

    summary = {"study": "s", "reference": "plain", "warnings": [],
               "rows": [row("plain", {"pgd": 50.0}), row("noisy", {"pgd": 60.0, "eotpgd": 40.0})],
               "base_config": {"dataset": "mnist", "model": "mnist-cnn", "norm": "Linf", "eps": 0.3, "epochs": 1,
                               "train_subset": 100, "optimizer": "adam", "lr": 0.001, "lr_schedule": "constant",
                               "seed": 0},
               "evaluation": {"samples": 100, "seed": 42}}
    table = markdown(summary).splitlines()
    header = next(line for line in table if line.startswith("| method"))
    assert "| pgd | eotpgd |" in header
    assert next(line for line in table if line.startswith("| plain")).startswith("| plain | 99.00 | 50.00 | - |")
    assert plot_study(summary, tmp_path / "study.png").stat().st_size > 0
