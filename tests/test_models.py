"""Built-in architectures: built from a spec, normalizing inside, swappable activation,
and saved/loaded models that rebuild exactly; unreadable files are one clear error."""
import pytest
import torch
from torch import nn

from advplug.errors import AdvplugError
from advplug.host import Host
from advplug.models import BUILTIN_MODELS, Normalize
from advplug.modelio import build_model, load_model, save_model

MNIST_SPEC = {"dataset": "mnist", "num_classes": 10, "in_channels": 1, "input_size": 28,
              "mean": [0.1307], "std": [0.3081], "transforms": []}
CIFAR_SPEC = {"dataset": "cifar100", "num_classes": 100, "in_channels": 3, "input_size": 32,
              "mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762], "transforms": []}
# keep the big ones small: WRN-10-1 has the same code path as WRN-34-10
SMALL_PARAMS = {"wrn-34-10": {"depth": 10, "widen_factor": 1}}


@pytest.fixture(scope="module")
def registry():
    return Host(entry_points=[]).registry


def spec_for(arch, data_spec, **arch_params):
    return {**data_spec, "arch": arch, "arch_params": {**SMALL_PARAMS.get(arch, {}), **arch_params}}


def test_every_builtin_model_is_covered(registry):
    assert set(registry.names("models")) == set(BUILTIN_MODELS)


@pytest.mark.parametrize("arch", sorted(BUILTIN_MODELS))
@pytest.mark.parametrize("data_spec", [MNIST_SPEC, CIFAR_SPEC], ids=["mnist", "cifar"])
def test_builds_and_returns_logits(registry, arch, data_spec):
    torch.manual_seed(0)
    model = build_model(spec_for(arch, data_spec), registry).eval()
    n, c, s = 3, data_spec["in_channels"], data_spec["input_size"]
    with torch.no_grad():
        out = model(torch.rand(n, c, s, s))
    assert out.shape == (n, data_spec["num_classes"])
    assert torch.isfinite(out).all()
    norms = [m for m in model.modules() if isinstance(m, Normalize)]
    if not normalizes(arch):  # a paper's network on raw pixels, as published (models/paper_mnist.py)
        assert norms == []
        return
    assert len(norms) == 1
    assert norms[0].mean.flatten().tolist() == pytest.approx(data_spec["mean"])
    assert norms[0].std.flatten().tolist() == pytest.approx(data_spec["std"])
    # the statistics are buffers, so they travel with the state_dict
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())


def normalizes(arch) -> bool:
    return getattr(BUILTIN_MODELS[arch][0], "normalizes_inputs", True)


@pytest.mark.parametrize("arch", sorted(a for a in BUILTIN_MODELS if normalizes(a)))
def test_normalization_is_applied_inside(registry, arch):
    """The model takes [0, 1] inputs: its Normalize layer computes (x - mean) / std and
    forward really goes through it."""
    torch.manual_seed(0)
    model = build_model(spec_for(arch, MNIST_SPEC), registry).eval()
    x = torch.rand(2, 1, 28, 28)
    norm = next(m for m in model.modules() if isinstance(m, Normalize))
    expected = (x - 0.1307) / 0.3081
    assert torch.allclose(norm(x), expected, atol=1e-6)
    with torch.no_grad():
        baseline = model(x)
        norm.mean.fill_(0.0)  # the normalization buffer really is used by forward
        assert not torch.allclose(model(x), baseline)


@pytest.mark.parametrize("arch", sorted(BUILTIN_MODELS))
def test_silu_activation_replaces_every_relu(registry, arch):
    relu_model = build_model(spec_for(arch, CIFAR_SPEC), registry)
    assert any(isinstance(m, nn.ReLU) for m in relu_model.modules())
    model = build_model(spec_for(arch, CIFAR_SPEC, activation="silu"), registry)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == \
        sum(isinstance(m, nn.ReLU) for m in relu_model.modules())
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_activation_callable_is_accepted(registry):
    model = build_model(spec_for("mnist-cnn", MNIST_SPEC, activation=lambda: nn.Softplus(beta=10)), registry)
    softplus = [m for m in model.modules() if isinstance(m, nn.Softplus)]
    assert len(softplus) == 3 and all(m.beta == 10 for m in softplus)


@pytest.mark.parametrize("arch", ["mnist-cnn", "preact-resnet18"])
def test_unknown_activation_is_an_error(registry, arch):
    with pytest.raises(AdvplugError) as info:
        build_model(spec_for(arch, MNIST_SPEC, activation="swishy"), registry)
    msg = str(info.value)
    assert "'swishy'" in msg and "relu" in msg and "silu" in msg


def test_unknown_architecture_is_an_error(registry):
    with pytest.raises(AdvplugError, match="unknown model 'resnet-18'.*did you mean 'resnet18'"):
        build_model(spec_for("resnet-18", CIFAR_SPEC), registry)


@pytest.mark.parametrize("arch,params", [("mnist-cnn", {"widht": 2}), ("wrn-34-10", {"depth": 11})])
def test_bad_architecture_params_are_an_advplug_error(registry, arch, params):
    with pytest.raises(AdvplugError):
        build_model(spec_for(arch, MNIST_SPEC, **params), registry)


# -- save / load ----------------------------------------------------------------------

@pytest.mark.parametrize("arch,data_spec", [("mnist-cnn", MNIST_SPEC), ("preact-resnet18", CIFAR_SPEC),
                                            ("wrn-34-10", CIFAR_SPEC)])
def test_save_load_round_trip(registry, tmp_path, arch, data_spec):
    torch.manual_seed(0)
    spec = spec_for(arch, data_spec, activation="gelu")
    model = build_model(spec, registry)
    c, s = data_spec["in_channels"], data_spec["input_size"]
    with torch.no_grad():  # move BatchNorm running statistics away from their defaults
        for _ in range(2):
            model.train()(torch.rand(4, c, s, s))
    model.eval()
    path = tmp_path / "sub" / "model.pt"
    save_model(model, spec, path, epoch=3)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    loaded = load_model(path, registry=registry)
    assert not loaded.training
    assert type(loaded) is type(model)
    assert any(isinstance(m, nn.GELU) for m in loaded.modules())
    x = torch.rand(5, c, s, s)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # a freshly built model with other weights gives other outputs: the test can fail
    with torch.no_grad():
        assert not torch.equal(build_model(spec, registry).eval()(x), model(x))


def test_load_model_uses_the_process_wide_registry(tmp_path, registry):
    spec = spec_for("mnist-cnn", MNIST_SPEC)
    model = build_model(spec, registry).eval()
    save_model(model, spec, tmp_path / "m.pt")
    import advplug

    loaded = advplug.load_model(tmp_path / "m.pt")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.fixture
def saved(tmp_path, registry):
    spec = spec_for("mnist-cnn", MNIST_SPEC)
    path = tmp_path / "model.pt"
    save_model(build_model(spec, registry), spec, path)
    return path


def test_truncated_file_is_an_error(saved, tmp_path, registry):
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 50, 100):
        bad = tmp_path / f"trunc_{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(AdvplugError) as info:
            load_model(bad, registry=registry)
        msg = str(info.value)
        assert str(bad) in msg and "not a readable advplug checkpoint" in msg
        assert "\n" not in msg


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_bytes_file_is_an_error(tmp_path, registry, seed):
    g = torch.Generator().manual_seed(seed)
    bad = tmp_path / "random.pt"
    bad.write_bytes(bytes(torch.randint(0, 256, (2048,), generator=g, dtype=torch.uint8).tolist()))
    with pytest.raises(AdvplugError) as info:
        load_model(bad, registry=registry)
    assert str(bad) in str(info.value)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_any_corrupt_file_is_an_error(tmp_path, registry):
    escaped = []
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(1, 1024, (1,), generator=g))
        bad = tmp_path / "random.pt"
        bad.write_bytes(bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist()))
        try:
            load_model(bad, registry=registry)
        except AdvplugError:
            pass
        except Exception as exc:  # noqa: BLE001
            escaped.append((seed, type(exc).__name__))
    assert not escaped, f"{len(escaped)} corrupt files escaped as non-AdvplugError: {escaped[:5]}"


@pytest.mark.parametrize("text", [
    '{"epochs": 3}\n',
    "this is not a checkpoint\n",
    "hello world\n",
])
def test_text_file_is_an_error(tmp_path, registry, text):
    bad = tmp_path / "notes.pt"
    bad.write_text(text)
    with pytest.raises(AdvplugError, match="not a readable advplug checkpoint"):
        load_model(bad, registry=registry)


@pytest.mark.parametrize("obj", [{"a": 1}, {"format": "something-else", "spec": {}}, [1, 2, 3],
                                 {"weight": torch.zeros(3)}])
def test_torch_file_that_is_not_advplug_is_an_error(tmp_path, registry, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(AdvplugError) as info:
        load_model(path, registry=registry)
    msg = str(info.value)
    assert str(path) in msg and "not an advplug" in msg and "load_state_dict" in msg


def test_missing_file_is_an_error(tmp_path, registry):
    with pytest.raises(AdvplugError, match="no such file"):
        load_model(tmp_path / "absent.pt", registry=registry)


def test_model_from_an_unknown_plugin_architecture_is_an_error(tmp_path, registry):
    spec = {**spec_for("mnist-cnn", MNIST_SPEC), "arch": "plugin-net"}
    from advplug.checkpoint import MODEL_FORMAT, atomic_save

    atomic_save({"format": MODEL_FORMAT, "spec": spec, "state_dict": {}}, tmp_path / "m.pt")
    with pytest.raises(AdvplugError, match="unknown model 'plugin-net'"):
        load_model(tmp_path / "m.pt", registry=registry)
