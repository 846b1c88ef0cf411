"""The model transforms of advplug-defenses (plugins/advplug-defenses): ``pni`` (learnable
weight noise), ``rse`` (noise before every conv) and ``spectral-norm``. Randomness where
the papers have it (training and evaluation) and nowhere else, the parameter counts each
adds, α's gradient, spectral norms of ~1, save/load through advplug.load_model, and one
clear error for a bad option."""
import pytest
import torch
from torch import nn

advplug_defenses = pytest.importorskip("advplug_defenses.transforms", reason="advplug-defenses is not installed "
                                       "(pip install --no-deps -e plugins/advplug-defenses)")

import advplug  # noqa: E402
from advplug.errors import AdvplugError  # noqa: E402
from advplug.modelio import build_model, load_model, save_model  # noqa: E402
from advplug.stochastic import is_stochastic  # noqa: E402
from advplug_defenses.transforms import GaussianInputNoise, PNIWeight, noise_hooks, pni_scales  # noqa: E402
from conftest import tiny_config  # noqa: E402

SPEC = {"arch": "mnist-cnn", "arch_params": {}, "dataset": "mnist", "num_classes": 10, "in_channels": 1,
        "input_size": 28, "mean": [0.1307], "std": [0.3081], "transforms": []}
NAMES = ("pni", "rse", "spectral-norm")


def mnist_cnn():
    factory = advplug.registry().get("models", "mnist-cnn")
    return factory(num_classes=10, in_channels=1, mean=(0.1307,), std=(0.3081,))


def transformed(name, **options):
    """mnist-cnn with the transform applied as build_model does (registry entry, checked options)."""
    entry = advplug.registry().entry("model_transforms", name)
    return entry.obj(mnist_cnn(), **entry.check(options))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def weighted_layers(model, kinds=(nn.Conv2d, nn.Linear)):
    return [m for m in model.modules() if isinstance(m, kinds)]


@pytest.fixture
def x():
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def test_registered_with_schemas():
    registry = advplug.registry()
    for name in NAMES:
        entry = registry.entry("model_transforms", name)
        assert entry.plugin == "defenses" and entry.description
        assert all(p.help for p in entry.schema.values())
    assert set(registry.entry("model_transforms", "pni").schema) == {"scale_init", "layers"}
    assert registry.entry("model_transforms", "pni").check({}) == {"scale_init": 0.25, "layers": "conv+linear"}
    assert registry.entry("model_transforms", "rse").check({}) == {"sigma_init": 0.2, "sigma_inner": 0.1,
                                                                   "init_at": "input"}
    assert registry.entry("model_transforms", "spectral-norm").check({}) == {"n_power_iterations": 1,
                                                                             "layers": "conv+linear"}


@pytest.mark.parametrize("name", ["pni", "rse"])
def test_noise_is_on_in_train_and_eval_mode(name, x):
    model = transformed(name)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            assert not torch.equal(model(x), model(x)), f"{name}, training={mode}"
    assert is_stochastic(model, x)
    assert not model.training  # is_stochastic restored the mode


def test_plain_and_spectral_norm_models_are_deterministic_in_eval_mode(x):
    assert not is_stochastic(mnist_cnn(), x)
    model = transformed("spectral-norm")
    assert not is_stochastic(model, x)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("._u", "._v"))}
    assert len(buffers) == 2 * 4
    model.eval()
    with torch.no_grad():
        model(x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())  # eval: no power iteration
    model.train()
    with torch.no_grad():
        model(x)
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())  # train: u, v updated


def test_parameter_counts():
    plain = n_params(mnist_cnn())
    assert plain == 1_199_882
    assert n_params(transformed("pni")) == plain + 4  # one α per Conv2d/Linear (2 + 2)
    assert n_params(transformed("pni", layers="conv")) == plain + 2
    assert n_params(transformed("rse")) == plain
    assert n_params(transformed("spectral-norm")) == plain
    # rse adds nothing to the state_dict; spectral-norm only moves the weights and adds u, v
    assert transformed("rse").state_dict().keys() == mnist_cnn().state_dict().keys()
    keys = transformed("spectral-norm").state_dict().keys()
    assert "features.0.parametrizations.weight.original" in keys and "features.0.weight" not in keys
    assert {"classifier.4.parametrizations.weight.0._u", "classifier.4.parametrizations.weight.0._v"} <= set(keys)


def test_pni_layers_option_and_noise_size(x):
    model = transformed("pni", layers="conv", scale_init=0.5)
    assert sorted(pni_scales(model)) == ["features.0", "features.2"]
    assert all(s.item() == 0.5 for s in pni_scales(model).values())
    assert not any(isinstance(m, nn.Linear) and hasattr(m, "parametrizations") for m in model.modules())
    # w̃ = w + α·η, η ~ N(0, std(w)²): the noise's std is α·std(w)
    conv = model.features[2]
    w = conv.parametrizations.weight.original
    noise = torch.stack([conv.weight - w for _ in range(20)]).detach()
    assert noise.std().item() == pytest.approx(0.5 * w.std().item(), rel=0.02)
    assert not torch.equal(conv.weight, conv.weight)  # fresh noise at every use
    torch.manual_seed(5)
    plain = mnist_cnn().eval()
    torch.manual_seed(5)
    silent = transformed("pni", scale_init=0.0).eval()  # α = 0: exactly the plain model
    with torch.no_grad():
        assert torch.equal(silent(x), plain(x))


def test_pni_scale_gets_a_gradient_in_a_training_step(x):
    model = transformed("pni").train()
    scales = pni_scales(model)
    assert len(scales) == 4 and all(isinstance(s, nn.Parameter) for s in scales.values())
    assert {id(s) for s in scales.values()} <= {id(p) for p in model.parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.arange(8) % 10
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for name, scale in scales.items():
        assert scale.grad is not None and scale.grad.abs().item() > 0, name
    before = {n: s.item() for n, s in scales.items()}
    optimizer.step()
    assert all(scales[n].item() != v for n, v in before.items())


def test_rse_noise_goes_where_the_options_say(x):
    """init_at=input: pixel-space noise before the model's normalization (σ/std after it);
    first-conv: σ on the normalized input of the first conv; every other conv: σ_inner."""
    def first_conv_input_noise(**options):
        model = transformed("rse", sigma_inner=0.0, **options).eval()
        seen = []
        model.features[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
        with torch.no_grad():
            model(x)
        return (seen[0] - model.normalize(x)).std().item()

    assert first_conv_input_noise(sigma_init=0.2, init_at="input") == pytest.approx(0.2 / 0.3081, rel=0.03)
    assert first_conv_input_noise(sigma_init=0.2, init_at="first-conv") == pytest.approx(0.2, rel=0.03)
    model = transformed("rse", sigma_init=0.3, sigma_inner=0.05)
    assert [h.sigma for h in noise_hooks(model)] == [0.3]
    assert [h.sigma for h in noise_hooks(model.features[0])] == []
    assert [h.sigma for h in noise_hooks(model.features[2])] == [0.05]
    silent = transformed("rse", sigma_init=0.0, sigma_inner=0.0).eval()
    assert not is_stochastic(silent, x)
    assert all(isinstance(h, GaussianInputNoise) for m in silent.modules() for h in noise_hooks(m))


def test_spectral_norm_makes_the_largest_singular_value_one(x):
    def largest_singular_values(model):
        model.eval()  # the weight as forward uses it, without another power iteration
        with torch.no_grad():
            return [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item() for m in weighted_layers(model)]

    assert max(abs(s - 1) for s in largest_singular_values(mnist_cnn())) > 0.1  # not so without it
    model = transformed("spectral-norm", n_power_iterations=5)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(x[:2])
    assert largest_singular_values(model) == pytest.approx([1.0] * 4, abs=1e-2)
    assert isinstance(model.features[0].parametrizations.weight.original, nn.Parameter)


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_rebuild_the_same_model(name, tmp_path, x):
    spec = dict(SPEC, transforms=[name])
    model = build_model(spec, advplug.registry())
    model.train()
    with torch.no_grad():  # change what the transform added (spectral-norm's u, v) before saving
        model(x)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(model, spec, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():  # the same noise draws give the same outputs
        torch.manual_seed(7)
        expected = model(x)
        torch.manual_seed(7)
        assert torch.equal(loaded(x), expected)
    assert is_stochastic(loaded, x) == (name != "spectral-norm")


def test_pni_train_save_load_round_trip(tmp_path, data_root, x):
    run = advplug.train(tiny_config(tmp_path, data_root, transforms=["pni"], epochs=1, train_subset=256,
                                    monitor_size=0, eval_steps=0, test_subset=64))
    assert run.spec["transforms"] == ["pni"]
    trained = run.model.state_dict()
    scales = {k: v for k, v in trained.items() if k.endswith(".scale")}
    assert len(scales) == 4 and any(v.item() != 0.25 for v in scales.values())  # α was trained
    loaded = advplug.load_model(run.out_dir / "model.pt")
    assert loaded.state_dict().keys() == trained.keys()
    assert all(torch.equal(v.cpu(), loaded.state_dict()[k]) for k, v in trained.items())
    assert isinstance(loaded.features[0].parametrizations.weight[0], PNIWeight)
    assert is_stochastic(loaded, x)


@pytest.mark.parametrize("name, options, message", [
    ("pni", {"scale_init": -1}, "model transform 'pni': scale_init must be a number >= 0, got -1"),
    ("pni", {"alpha_init": 0.1}, "model transform 'pni' has no parameter 'alpha_init'"),
    ("rse", {"sigma_inner": "big"}, "model transform 'rse': sigma_inner must be a number"),
    ("rse", {"init_at": "middle"}, "model transform 'rse': init_at must be one of input, first-conv"),
    ("spectral-norm", {"n_power_iterations": 0}, "model transform 'spectral-norm': n_power_iterations must be"),
    ("spectral-norm", {"layers": "linear"}, "model transform 'spectral-norm': layers must be one of"),
])
def test_a_bad_option_is_one_error_naming_the_transform(name, options, message):
    entry = advplug.registry().entry("model_transforms", name)
    with pytest.raises(AdvplugError) as error:
        entry.check(options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    with pytest.raises(AdvplugError, match="model transform"):  # the decorated function checks too
        entry.obj(mnist_cnn(), **options)


def test_bad_option_in_a_run_fails_before_any_data(tmp_path):
    with pytest.raises(AdvplugError, match="model transform 'pni': scale_init"):
        advplug.train(tiny_config(tmp_path, tmp_path / "no-data", transforms=["pni:scale_init=-0.5"]))


@pytest.mark.parametrize("name", NAMES)
def test_applying_twice_or_to_a_model_without_layers_is_an_error(name):
    entry = advplug.registry().entry("model_transforms", name)
    model = entry.obj(mnist_cnn(), **entry.check({}))
    with pytest.raises(AdvplugError, match=f"model transform '{name}'.*twice"):
        entry.obj(model, **entry.check({}))
    with pytest.raises(AdvplugError, match=f"model transform '{name}': the model .* has no"):
        entry.obj(nn.Sequential(nn.Flatten(), nn.ReLU()), **entry.check({}))
