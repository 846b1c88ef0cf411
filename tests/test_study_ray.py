"""advplug study --ray: the study's runs as Ray tasks give the table the sequential study gives.

Ray is an optional extra (``pip install 'advplug[ray]'``): the fast tests here need no Ray, the
slow one skips without it (``make test-all`` installs it)."""
import json
import sys

import pytest
import torch

from advplug import cli

#: a study's table columns that are measured times, not results
TIMES = ("train_s", "epoch_s", "epoch_times_s", "median_epoch_s", "epoch_time_ratio", "train_time_ratio")


def study_argv(data_root, out, *extra):
    return ["study", "fast-at", "--trainers", "standard,fgsm-rs", "--attacks", "fgsm", "--epochs", "1",
            "--train-subset", "256", "--test-subset", "32", "--monitor-size", "0", "--eval-steps", "0",
            "--data-root", str(data_root), "--out", str(out), "--no-progress", *extra]


def test_ray_flag_takes_an_optional_address_and_resources():
    parser = cli.build_parser()
    plain = parser.parse_args(["study", "fast-at"])
    assert plain.ray is None and plain.ray_cpus == 1 and plain.ray_gpus == 0
    local = parser.parse_args(["study", "fast-at", "--ray", "--trainers", "standard"])
    assert local.ray == "local" and local.trainers == "standard"
    cluster = parser.parse_args(["study", "mix-ratio", "--ray", "ray://head:10001", "--ray-cpus", "4",
                                 "--ray-gpus", "0.5"])
    assert (cluster.ray, cluster.ray_cpus, cluster.ray_gpus) == ("ray://head:10001", 4, 0.5)
    variants = parser.parse_args(["study", "variants", "ablation.toml", "--ray", "auto"])
    assert (variants.file, variants.ray) == ("ablation.toml", "auto")


def test_ray_without_ray_installed_is_one_error_naming_the_extra(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "study"
    assert cli.main(study_argv(data_root, out, "--ray")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advplug: error: ") and "pip install 'advplug[ray]'" in err[0]
    assert not (out / "runs").exists()  # nothing trained


@pytest.mark.parametrize("flags, message", [
    (["--ray-cpus", "0"], "--ray-cpus must be more than 0"),
    (["--ray-gpus", "-1"], "--ray-gpus must be 0 or more"),
    (["--device", "cuda"], "--device cuda with --ray-gpus 0"),
])
def test_ray_resources_no_task_can_use_are_one_error_before_anything_trains(tmp_path, data_root, capsys, flags,
                                                                            message):
    out = tmp_path / "study"
    assert cli.main(study_argv(data_root, out, "--ray", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (out / "runs").exists()


def results(out):
    """A study's table without its measured times, and every run's weights and per-epoch losses."""
    summary = json.loads((out / "study.json").read_text())
    rows = [{k: v for k, v in row.items() if k not in TIMES} for row in summary["rows"]]
    runs = {}
    for run in sorted((out / "runs").iterdir()):
        state = torch.load(run / "model.pt", weights_only=True)["state_dict"]
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        runs[run.name] = (state, [{k: v for k, v in m.items() if not k.endswith("_time_s")} for m in history])
    return rows, {k: v for k, v in summary.items() if k not in ("rows", "evaluation")}, runs


@pytest.mark.slow
def test_ray_study_trains_the_runs_as_tasks_and_gives_the_sequential_table(tmp_path, data_root, capsys):
    ray = pytest.importorskip("ray")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each task (--ray-cpus 1): CPU sums in the same order
    try:
        assert cli.main(study_argv(data_root, tmp_path / "seq")) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert cli.main(study_argv(data_root, tmp_path / "ray", "--ray")) == 0
        printed = capsys.readouterr().out
        assert ray.is_initialized()  # a Ray the caller started is left running
        # a line per run sent out, and one per finished run: label, seed, wall time
        assert printed.count("(Ray task)") == 2
        for label in ("standard", "fgsm-rs"):
            assert f"[study] {label}: training into {tmp_path / 'ray' / 'runs' / label} (Ray task)" in printed
            assert f"[study] {label}: finished (seed 0) in " in printed
        # the same weights, losses and table as one after the other (training is deterministic given the seed)
        seq_rows, seq_summary, seq_runs = results(tmp_path / "seq")
        ray_rows, ray_summary, ray_runs = results(tmp_path / "ray")
        assert ray_rows == seq_rows and [r["method"] for r in ray_rows] == ["standard", "fgsm-rs"]
        assert ray_summary == seq_summary
        assert set(ray_runs) == set(seq_runs) == {"standard", "fgsm-rs"}
        for label, (state, history) in seq_runs.items():
            assert ray_runs[label][1] == history
            assert all(torch.equal(ray_runs[label][0][k], v) for k, v in state.items())
        # each task's console output is kept in OUT/logs
        assert "test (32 samples)" in (tmp_path / "ray" / "logs" / "fgsm-rs.log").read_text()
        # run again: both runs are reused by the same rule as without --ray, and no task is sent
        assert cli.main(study_argv(data_root, tmp_path / "ray", "--ray")) == 0
        again = capsys.readouterr().out
        assert again.count("reusing the finished run") == 2 and "Ray task" not in again
    finally:
        ray.shutdown()
    # an error inside a task is the sequential run's one line (here Ray is the study's own local instance)
    missing = tmp_path / "no-data"
    errors = []
    for out, extra in ((tmp_path / "seq-error", ()), (tmp_path / "ray-error", ("--ray",))):
        argv = study_argv(data_root, out, *extra)
        argv[argv.index("--data-root") + 1] = str(missing)
        assert cli.main(argv) == 2
        errors.append(capsys.readouterr().err.strip().splitlines())
    assert len(errors[1]) == 1 and errors[1] == errors[0] and "mnist train split not found" in errors[0][0]
    assert not ray.is_initialized()  # the instance the study started is shut down
