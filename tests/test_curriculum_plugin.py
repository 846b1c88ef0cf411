"""The advplug-curriculum plugin (plugins/advplug-curriculum): its schedules' formulas at
chosen t, a real pgd-at run whose metrics.jsonl follows curriculum-linear epoch by epoch
(the plugin found through its entry point), trainers without ``steps``, and bad
parameters refused with one error naming the parameter."""
import json
import warnings

import pytest

advplug_curriculum = pytest.importorskip("advplug_curriculum", reason="advplug-curriculum is not installed "
                                         "(pip install --no-deps -e plugins/advplug-curriculum)")

import advplug  # noqa: E402
from advplug.errors import AdvplugError  # noqa: E402
from advplug.host import Host  # noqa: E402
from advplug.threat import Threat  # noqa: E402
from advplug_curriculum import LinearCurriculum, Ramp, Staircase  # noqa: E402
from conftest import tiny_config  # noqa: E402

PGD_PARAMS = {"steps": 10, "alpha": None, "random_start": True}  # a trainer with `steps`
FGSM_PARAMS = {"alpha": "1.25eps"}  # one without


def values(schedule, ts, threat=Threat("Linf", 0.3), params=PGD_PARAMS):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [schedule(t, 0, threat, dict(params)) for t in ts]


def test_curriculum_linear_defaults_at_start_middle_end():
    # seed defaults: ε 0.01 -> 0.1, steps 10 -> 40
    got = values(LinearCurriculum(), (0.0, 0.5, 1.0), Threat("Linf", 0.1))
    assert [g["steps"] for g in got] == [10, 25, 40]
    assert [g["eps"] for g in got] == [0.01, pytest.approx(0.055), 0.1]  # the ends exactly


def test_curriculum_linear_given_params_and_fractions():
    schedule = LinearCurriculum(eps0="2/255", eps1="8/255", k0=5, k1=20)
    got = values(schedule, (0.0, 0.25, 0.5, 1.0), Threat("Linf", 8 / 255))
    assert [g["eps"] for g in got] == [2 / 255, pytest.approx(3.5 / 255), pytest.approx(5 / 255), 8 / 255]
    assert [g["steps"] for g in got] == [5, 8, 12, 20]  # int(8.75) = 8, int(12.5) = 12


def test_ramp_warms_up_to_the_runs_eps_then_stays():
    got = values(Ramp(), (0.0, 0.15, 0.3, 0.6, 1.0))  # default: 0 -> run ε over the first 30%
    assert [g["eps"] for g in got] == [0.0, pytest.approx(0.15), 0.3, 0.3, 0.3]
    assert all(set(g) == {"eps"} for g in got)  # no k0/k1: the trainer's steps stay as they are
    got = values(Ramp(eps0=0.1, warmup=0.5, k0=2, k1=10), (0.0, 0.25, 0.5, 0.9))
    assert [g["eps"] for g in got] == [0.1, pytest.approx(0.2), 0.3, 0.3]
    assert [g["steps"] for g in got] == [2, 6, 10, 10]
    assert values(Ramp(warmup=0), (0.0,))[0]["eps"] == 0.3  # no warm-up at all


def test_step_is_a_staircase_of_equal_stages():
    got = values(Staircase(), (0.0, 0.3, 1 / 3, 0.5, 2 / 3, 1.0))  # ε/3, 2ε/3, ε by default
    assert [g["eps"] for g in got] == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    assert got[-1]["eps"] == 0.3 and all(set(g) == {"eps"} for g in got)
    got = values(Staircase(eps0=0.0, eps1=0.4, stages=5, k0=1, k1=9), (0.0, 0.2, 0.45, 0.7, 0.99, 1.0))
    assert [g["eps"] for g in got] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert [g["steps"] for g in got] == [1, 3, 5, 7, 9, 9]
    assert values(Staircase(stages=1), (0.0,))[0]["eps"] == 0.3


def test_trainer_without_steps_gets_eps_only():
    # curriculum-linear's default k0/k1 are not passed to fgsm-rs (which has no `steps`)
    for schedule in (LinearCurriculum(), Ramp(k0=1, k1=3), Staircase(k0=1, k1=3)):
        assert all(set(g) == {"eps"} for g in values(schedule, (0.0, 1.0), params=FGSM_PARAMS))
    with pytest.warns(UserWarning, match="k0 and k1 ignored"):  # given explicitly: said once
        Ramp(k0=1, k1=3)(0.0, 0, Threat("Linf", 0.3), FGSM_PARAMS)


def test_eps1_other_than_the_runs_eps_warns_once():
    schedule = LinearCurriculum(eps1=0.2)
    with pytest.warns(UserWarning, match="final test evaluation uses the run's ε"):
        schedule(0.0, 0, Threat("Linf", 0.3), PGD_PARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedule(0.5, 1, Threat("Linf", 0.3), PGD_PARAMS)  # not again
        LinearCurriculum(eps1=0.3)(0.0, 0, Threat("Linf", 0.3), PGD_PARAMS)  # nothing to say


@pytest.mark.parametrize("cls, params, names", [
    (LinearCurriculum, {"eps0": -0.1}, "eps0"),
    (LinearCurriculum, {"eps1": "eight"}, "eps1"),
    (LinearCurriculum, {"k0": 0}, "k0"),
    (LinearCurriculum, {"k1": 2.5}, "k1"),
    (LinearCurriculum, {"steps": 5}, "'steps'"),
    (Ramp, {"warmup": 1.5}, "warmup"),
    (Ramp, {"k1": 5}, "k0 and k1"),
    (Staircase, {"stages": 0}, "stages"),
    (Staircase, {"eps1": -1}, "eps1"),
])
def test_bad_params_are_one_error_naming_the_parameter(cls, params, names):
    with pytest.raises(AdvplugError, match=names) as info:
        cls(**params)
    assert cls.name in str(info.value)


def test_linf_eps_above_one_is_refused_at_the_first_epoch():
    with pytest.raises(AdvplugError, match="eps1 = 8 is outside"):
        LinearCurriculum(eps1=8)(0.0, 0, Threat("Linf", 0.3), PGD_PARAMS)
    LinearCurriculum(eps0=0.5, eps1=2)(0.0, 0, Threat("L2", 2.0), PGD_PARAMS)  # fine for L2


def test_registered_through_the_entry_point():
    host = Host()  # discovers installed entry points
    assert host.plugins["curriculum"].source == "entry point advplug_curriculum.plugin"
    for name in ("curriculum-linear", "ramp", "step"):
        entry = host.registry.entry("schedules", name)
        assert entry.plugin == "curriculum" and entry.description


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pgd_at_run_follows_curriculum_linear_each_epoch(tmp_path, data_root):
    assert advplug.registry().entry("schedules", "curriculum-linear").plugin == "curriculum"
    cfg = tiny_config(tmp_path, data_root, trainer="pgd-at", schedule="curriculum-linear",
                      schedule_params={"eps0": 0.05, "eps1": 0.15, "k0": 1, "k1": 3}, eps=0.15, epochs=3,
                      train_subset=128, monitor_size=0, eval_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eps1 is the run's ε: no note
        run = advplug.train(cfg)
    metrics = _metrics(tmp_path / "run")
    assert [m["eps"] for m in metrics] == [0.05, pytest.approx(0.1), 0.15]  # t = 0, 0.5, 1
    assert [m["attack_steps"] for m in metrics] == [1, 2, 3]
    assert run.trainer.params["steps"] == 3 and run.trainer.threat.eps == 0.15


def test_fgsm_rs_run_with_curriculum_linear_schedules_eps_only(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, trainer="fgsm-rs", schedule="curriculum-linear",
                      schedule_params={"eps0": 0.1, "eps1": 0.3}, eps=0.3, epochs=2,
                      train_subset=128, monitor_size=0, eval_steps=0)
    advplug.train(cfg)
    metrics = _metrics(tmp_path / "run")
    assert [m["eps"] for m in metrics] == [0.1, 0.3]
    assert not any(key.startswith("attack_") for m in metrics for key in m)
