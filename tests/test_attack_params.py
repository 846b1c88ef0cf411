"""Every registered attack declares its parameters (type, default, range) and advplug checks
them before the attack runs: ``pgd:steps=-5`` once ran zero steps and reported clean
accuracy as robust accuracy."""
import pytest
import torch

from advplug import cli
from advplug.attacks.base import build_attack, info_of
from advplug.errors import AdvplugError
from advplug.host import get_host
from advplug.params import Param, check_params, integer, number
from advplug.threat import Threat


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()


def bad_values(param: Param) -> list:
    """Values the parameter must refuse: outside its range, of the wrong type, not a choice."""
    values = []
    if param.choices is not None:
        return ["no-such-choice", 3]
    if param.kind in (int, float):
        values.append("abc")
        if param.low is not None:
            values.append(param.low if param.low_open else param.low - 1)
        if param.high is not None:
            values.append(param.high if param.high_open else param.high + 1)
        if param.kind is int:
            values.append(1.5)
    if param.kind is bool:
        values.append("maybe")
    return values


def attack_entries():
    registry = get_host().registry
    return [registry.entry("attacks", name) for name in registry.names("attacks")]


def test_every_registered_attack_declares_a_schema_with_bounds_on_its_numbers():
    entries = attack_entries()
    assert len(entries) >= 20  # torchattacks, ART, AutoAttack and the nes plugin
    for entry in entries:
        schema = info_of(entry.obj).params
        assert schema is not None, f"attack {entry.name!r} declares no parameter schema"
        for name, param in schema.items():
            assert isinstance(param, Param), f"{entry.name}:{name} is not a Param"
            if param.kind in (int, float):
                assert param.low is not None or param.high is not None, \
                    f"{entry.name}:{name} is a number without a range"


def test_every_out_of_range_or_mistyped_attack_parameter_is_one_error_naming_it():
    model = tiny_model()
    checked = 0
    for entry in attack_entries():
        info = info_of(entry.obj)
        threat = Threat("Linf" if "Linf" in info.norms else "L2", 0.3)
        for name, param in info.params.items():
            for value in bad_values(param):
                with pytest.raises(AdvplugError) as err:
                    entry.obj(model, threat, **{name: value})
                assert name in str(err.value) and repr(value) in str(err.value), str(err.value)
                checked += 1
    assert checked > 100


def test_pgd_with_negative_steps_is_refused_before_it_runs():
    model = tiny_model()
    registry = get_host().registry
    for spec in ("pgd:steps=-5", "pgd:steps=0", "pgd:alpha=-0.1", "art:pgd:steps=0", "cw:steps=-1",
                 "square:p_init=1.5", "autoattack:batch_size=0", "apgd:loss=xent"):
        with pytest.raises(AdvplugError):
            build_attack(registry, spec, model, Threat("Linf", 0.3))
    assert build_attack(registry, "pgd:steps=1", model, Threat("Linf", 0.3)).params == \
        {"steps": 1, "alpha": "2.5eps/steps", "random_start": True}


def test_check_params_converts_and_fills_defaults():
    schema = {"steps": integer(10, low=1), "alpha": number(None, low=0, low_open=True)}
    resolved = check_params("attack 'x'", {"steps": 3.0}, schema)
    assert resolved == {"steps": 3, "alpha": None} and isinstance(resolved["steps"], int)
    assert check_params("attack 'x'", {"alpha": 1}, schema) == {"steps": 10, "alpha": 1.0}


def test_unknown_parameter_suggests_the_close_one():
    with pytest.raises(AdvplugError, match=r"no parameter 'stepz' \(did you mean 'steps'\?\)"):
        build_attack(get_host().registry, "pgd:stepz=3", tiny_model(), Threat("Linf", 0.3))


def test_cli_pgd_steps_abc_is_one_line(tmp_path, data_root, standard_model_path, capsys):
    code = cli.main(["eval", "--model", str(standard_model_path), "--attacks", "pgd:steps=abc",
                     "--test-subset", "8", "--data-root", str(data_root), "--no-progress",
                     "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == "advplug: error: attack 'pgd': steps must be an integer >= 1, got 'abc'"


def test_trainer_parameters_are_range_checked_too(tmp_path, data_root, capsys):
    code = cli.main(["train", "--trainer", "pgd-at:steps=-5", "--train-subset", "64", "--data-root",
                     str(data_root), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["advplug: error: trainer 'pgd-at': steps must be an integer >= 1, got -5"]
    assert not (tmp_path / "run" / "checkpoints").exists()
