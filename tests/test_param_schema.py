"""One parameter schema for every kind, checked before any data is loaded; specs parsed once
(nested attack pools); one step-size name; the dataset's default ε."""
import pytest

import advplug
from advplug import cli
from advplug.config import make_config
from advplug.errors import AdvplugError
from advplug.params import MADRY_STEP, Spec, check_params, parse_spec, resolve_step, step_size

#: one bad parameter per kind that registers, and the one line it must give
BAD = [
    ({"dataset": "mnist", "augment": {"crop": -1}}, "dataset 'mnist': crop must be an integer >= 0, got -1"),
    ({"model_params": {"activation": "tanh"}}, "model 'mnist-cnn': activation must be one of relu, gelu"),
    ({"model": "resnet18", "model_params": {"widht": 16}}, "model 'resnet18' has no parameter 'widht' (did you mean 'width'?)"),
    ({"trainer": "pgd-at", "trainer_params": {"steps": 0}}, "trainer 'pgd-at': steps must be an integer >= 1, got 0"),
    ({"trainer": "fgsm-rs", "trainer_params": {"alpha": "fast"}}, "trainer 'fgsm-rs': alpha must be a step size"),
    ({"trainer": "fgsm-rs", "schedule": "ramp", "schedule_params": {"warmup": 2}},
     "schedule 'ramp': warmup must be a number in [0, 1], got 2"),
    ({"sampler": "mat-rand", "sampler_params": {"steps": 0}}, "sampler 'mat-rand': steps must be an integer >= 1, got 0"),
    ({"sampler": "mixed-ratio", "sampler_params": {"attacks": "[fgsm+pgd:steps=0]"}}, None),  # checked at bind
    ({"transforms": ["smooth-activation:fn=tanh"]}, "model transform 'smooth-activation': fn must be one of softplus"),
]


@pytest.mark.parametrize("overrides,message", [b for b in BAD if b[1]], ids=lambda v: str(v)[:40])
def test_a_bad_parameter_of_each_kind_is_one_line_before_any_data_loads(tmp_path, overrides, message):
    empty = tmp_path / "no-data"  # nothing to load here: the parameter error must come first
    with pytest.raises(AdvplugError) as info:
        make_config(None, data_root=str(empty), **overrides)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_a_bad_attack_parameter_names_the_attack():
    with pytest.raises(AdvplugError, match=r"^attack 'pgd': steps must be an integer >= 1, got -1$"):
        advplug.attack(advplug.registry().get("models", "mnist-cnn")(), "pgd:steps=-1", eps=0.3)


def test_the_nested_pool_spec_parses_as_written():
    name, params = parse_spec("mixed-ratio:ratio=30:70,attacks=[fgsm+pgd:steps=10,alpha=0.01+cw]")
    assert (name, params) == ("mixed-ratio", {"ratio": "30:70", "attacks": ["fgsm", "pgd:steps=10,alpha=0.01", "cw"]})
    checked = advplug.registry().entry("samplers", name).check(params)
    assert checked["attacks"] == (Spec("fgsm"), Spec("pgd", {"steps": 10, "alpha": 0.01}), Spec("cw"))
    assert str(Spec(name, params)) == "mixed-ratio:ratio=30:70,attacks=[fgsm+pgd:steps=10,alpha=0.01+cw]"


def test_the_same_pool_as_toml_tables(tmp_path):
    (tmp_path / "run.toml").write_text(
        'sampler = { name = "mixed-ratio", ratio = "30:70", attacks = ["fgsm", { name = "pgd", steps = 10, '
        'alpha = 0.01 }, "cw"] }\n')
    cfg = make_config(str(tmp_path / "run.toml"))
    assert cfg.sampler == "mixed-ratio" and cfg.sampler_params["ratio"] == "30:70"
    pool = advplug.registry().entry("samplers", "mixed-ratio").check(cfg.sampler_params)["attacks"]
    assert pool == (Spec("fgsm"), Spec("pgd", {"steps": 10, "alpha": 0.01}), Spec("cw"))


def test_the_ambiguous_unbracketed_pool_is_refused_with_the_bracket_form():
    name, params = parse_spec("mixed-ratio:ratio=30:70,attacks=fgsm+pgd:steps=10,alpha=0.01+cw")
    with pytest.raises(AdvplugError, match=r"no parameter 'alpha'; a list of specs .* in brackets, e\.g\. attacks=\["):
        advplug.registry().entry("samplers", name).check(params)


def test_one_step_size_name_and_one_rule():
    eps = 8 / 255
    assert resolve_step(MADRY_STEP, eps, 10) == 2.5 * eps / 10  # bit for bit the rule it replaced
    assert resolve_step("1.25eps", eps) == 1.25 * eps and resolve_step(0.01, eps, 7) == 0.01
    assert resolve_step("2/255", eps) == 2 / 255
    for bad in ("fast", 0, -1, "0eps"):
        with pytest.raises(AdvplugError, match="alpha must be a step size"):
            check_params("trainer 'x'", {"alpha": bad}, {"alpha": step_size("1eps")})
    # every registered step size is called alpha: no alpha_ratio, step_ratio or eps_step left
    reg = advplug.registry()
    for kind in ("attacks", "trainers"):
        for name in reg.names(kind):
            schema = reg.entry(kind, name).schema or {}
            assert not {"alpha_ratio", "step_ratio", "eps_step"} & set(schema), (kind, name)


def test_an_earlier_step_size_name_is_read_as_alpha_with_a_warning(capsys, monkeypatch):
    import advplug.params

    monkeypatch.setattr(advplug.params, "_WARNED", set())  # said once per process: start afresh
    cfg = make_config(None, trainer="fgsm-rs", trainer_params={"alpha_ratio": 1.0})
    assert cfg.trainer == "fgsm-rs"
    err = capsys.readouterr().err
    assert "alpha_ratio is now called alpha; read alpha_ratio=1.0 as alpha=1.0eps" in err
    make_config(None, trainer="fgsm-rs", trainer_params={"alpha_ratio": 1.0})
    assert "alpha_ratio" not in capsys.readouterr().err  # not again for the same parameter
    with pytest.raises(AdvplugError, match="give the step size once"):
        check_params("trainer 'fgsm-rs'", {"alpha": "1eps", "alpha_ratio": 1.0}, {"alpha": step_size("1eps")})


@pytest.mark.parametrize("dataset,norm,eps", [("mnist", "Linf", 0.3), ("mnist", "L2", 2.0),
                                              ("cifar10", "Linf", 8 / 255), ("cifar100", "L2", 0.5),
                                              ("svhn", "Linf", 8 / 255)])
def test_the_dataset_brings_its_default_eps(dataset, norm, eps):
    assert make_config(None, dataset=dataset, norm=norm).eps == eps
    assert advplug.registry().get("datasets", dataset).default_eps(norm) == eps


def test_plugins_params_prints_a_things_parameters(capsys):
    assert cli.main(["plugins", "--params", "mixed-ratio"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sampler 'mixed-ratio' (plugin mix)"
    [attacks] = [line for line in out if line.split()[0] == "attacks"]
    assert "default [fgsm+pgd+cw+deepfool]" in attacks and "attack pool" in attacks
    assert cli.main(["plugins", "--params", "pgd-at"]) == 0
    [alpha] = [line for line in capsys.readouterr().out.splitlines() if line.split()[0] == "alpha"]
    assert "default 2.5eps/steps" in alpha
    assert cli.main(["plugins", "--params", "pgdat"]) == 2
    assert "nothing called 'pgdat' is registered (did you mean 'pgd-at'?)" in capsys.readouterr().err
