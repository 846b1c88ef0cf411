"""ART and AutoAttack (pyautoattack) adapters: registered names, the attack contract
(shape, device, box, ball), real strength on a standard model, one cached ART classifier
per model, and exact parity of the ``autoattack`` adapter with pyautoattack itself."""
import gc
import logging
import sys

import pytest
import torch

import advplug
from advplug.attacks import art_adapters, autoattack_adapter
from advplug.attacks.base import build_attack, info_of
from advplug.errors import AdvplugError
from advplug.registries import Registrar, Registry
from advplug.threat import Threat
from conftest import mnist_images

ART_NAMES = {"art:fgsm", "art:pgd", "art:cw-l2", "art:cw-linf", "art:deepfool", "art:hopskipjump",
             "art:square", "art:boundary"}


@pytest.fixture(scope="module")
def registry():
    reg = Registry()
    art_adapters.register(Registrar(reg, "attacks", "advplug"))
    autoattack_adapter.register(Registrar(reg, "attacks", "advplug"))
    return reg


@pytest.fixture(scope="module")
def model(standard_model_path):
    """The session's standard mnist-cnn (conftest), in eval mode."""
    return advplug.load_model(standard_model_path).eval()


@pytest.fixture(scope="module")
def mnist(data_root):
    return mnist_images(data_root, 32, train=False)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def attack(registry, name, model, threat, **params):
    return registry.get("attacks", name)(model, threat, **params)


def test_registered_names_and_infos(registry):
    assert set(registry.names("attacks")) == ART_NAMES | {"autoattack"}
    assert not registry.aliases["attacks"], "short names belong to torchattacks"
    infos = {name: info_of(registry.get("attacks", name)) for name in registry.names("attacks")}
    assert {n for n, i in infos.items() if i.minimal} == {"art:cw-l2", "art:cw-linf", "art:deepfool",
                                                           "art:hopskipjump", "art:boundary"}
    assert {n for n, i in infos.items() if i.black_box} == {"art:hopskipjump", "art:square", "art:boundary"}
    assert infos["art:cw-linf"].norms == ("Linf",)
    assert all(i.library == "art" for n, i in infos.items() if n.startswith("art:"))
    assert infos["autoattack"].library == "pyautoattack"


def test_unknown_params_are_one_clear_error(registry, model):
    with pytest.raises(AdvplugError, match="no parameter 'step'"):
        attack(registry, "art:pgd", model, Threat("Linf", 0.3), step=3)
    with pytest.raises(AdvplugError, match="unknown attack"):
        attack(registry, "autoattack", model, Threat("Linf", 0.3), version="custom", attacks="apgd-ce+pgd")
    with pytest.raises(AdvplugError, match="only used with version=custom"):
        attack(registry, "autoattack", model, Threat("Linf", 0.3), attacks="apgd-ce")
    with pytest.raises(AdvplugError, match="needs attacks"):
        attack(registry, "autoattack", model, Threat("Linf", 0.3), version="custom")


@pytest.mark.parametrize("norm,eps", [("Linf", 0.3), ("L2", 2.0)])
def test_art_pgd_and_fgsm_stay_in_the_ball(registry, model, mnist, norm, eps):
    x, y = mnist
    threat = Threat(norm, eps)
    for name, params in (("art:fgsm", {}), ("art:pgd", {"steps": 5})):
        x_adv = attack(registry, name, model, threat, **params)(x, y)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
        assert threat.contains(x_adv, x, tol=1e-5), name
        assert accuracy(model, x_adv, y) < accuracy(model, x, y), name


def test_art_pgd_breaks_a_standard_model(registry, model, mnist):
    x, y = mnist
    assert accuracy(model, x, y) > 0.8
    x_adv = attack(registry, "art:pgd", model, Threat("Linf", 0.3), steps=10)(x, y)
    assert Threat("Linf", 0.3).contains(x_adv, x)
    assert accuracy(model, x_adv, y) < 0.2


def test_art_square_is_bounded_and_black_box(registry, model, mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    for threat in (Threat("Linf", 0.3), Threat("L2", 3.0)):
        x_adv = attack(registry, "art:square", model, threat, max_iter=10)(x, y)
        assert x_adv.shape == x.shape and threat.contains(x_adv, x, tol=1e-5)


def test_art_deepfool_changes_predictions_and_is_projected_when_checked(registry, model, mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    raw = attack(registry, "art:deepfool", model, Threat("L2", 2.0), max_iter=10)(x, y)
    assert raw.shape == x.shape and raw.min() >= 0 and raw.max() <= 1
    with torch.no_grad():
        changed = (model(raw).argmax(1) != model(x).argmax(1)).float().mean().item()
    assert changed > 0.7, f"DeepFool changed only {changed:.0%} of the predictions"
    # through the checked path: projected onto the ball, the unprojected norm kept
    checked = build_attack(registry, "art:deepfool:max_iter=10", model, Threat("L2", 1.0))
    x_adv = checked(x, y)
    assert Threat("L2", 1.0).contains(x_adv, x, tol=1e-4) and checked.median_norm > 0


def test_art_carlini_wagner(registry, model, mnist):
    x, y = mnist[0][:4], mnist[1][:4]
    raw = attack(registry, "art:cw-l2", model, Threat("L2", 2.0), max_iter=10, binary_search_steps=2,
                 initial_const=10.0, learning_rate=0.1)(x, y)
    assert raw.shape == x.shape and raw.min() >= 0 and raw.max() <= 1
    assert accuracy(model, raw, y) < accuracy(model, x, y)
    # ART 1.20's CW-L∞ is minimal (no ε) and runs one image at a time: shape and box only
    raw = attack(registry, "art:cw-linf", model, Threat("Linf", 0.3), max_iter=2, largest_const=1e-4)(x[:1], y[:1])
    assert raw.shape == (1, *x.shape[1:]) and raw.min() >= 0 and raw.max() <= 1


@pytest.mark.parametrize("name,params", [
    ("art:hopskipjump", {"max_iter": 2, "max_eval": 100, "init_eval": 5}),
    ("art:boundary", {"max_iter": 5}),
])
def test_art_decision_based_attacks_tiny(registry, model, mnist, name, params):
    x, y = mnist[0][:4], mnist[1][:4]
    raw = attack(registry, name, model, Threat("L2", 2.0), **params)(x, y)
    assert raw.shape == x.shape and raw.min() >= 0 and raw.max() <= 1
    with torch.no_grad():
        assert (model(raw).argmax(1) != y).float().mean().item() >= 0.5  # starts from misclassified points
    checked = build_attack(registry, name + ":" + ",".join(f"{k}={v}" for k, v in params.items()),
                           model, Threat("Linf", 0.1))
    assert Threat("Linf", 0.1).contains(checked(x, y), x, tol=1e-5)


def test_one_cached_art_classifier_per_model_and_model_untouched(registry, model, mnist):
    x, y = mnist[0][:8], mnist[1][:8]
    clf = art_adapters.art_classifier(model, x)
    assert art_adapters.art_classifier(model, x) is clf
    assert clf.nb_classes == 10 and clf.input_shape == (1, 28, 28) and clf.clip_values.tolist() == [0.0, 1.0]
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        attack(registry, "art:fgsm", model, Threat("Linf", 0.1))(x, y)
        attack(registry, "art:pgd", model, Threat("Linf", 0.1), steps=1)(x, y)
        assert model.training, "the model's mode was not restored"
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
    finally:
        model.eval()
    assert art_adapters.art_classifier(model, x) is clf


def test_art_cache_does_not_keep_models_alive(mnist):
    x, y = mnist[0][:2], mnist[1][:2]
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    art_adapters.pgd(tiny, Threat("Linf", 0.1), steps=1)(x, y)
    assert tiny in art_adapters._CLASSIFIERS
    before = len(art_adapters._CLASSIFIERS)
    del tiny
    gc.collect()
    assert len(art_adapters._CLASSIFIERS) == before - 1


def test_autoattack_parity_with_pyautoattack(registry, model, mnist, capsys, caplog):
    x, y = mnist[0][:16], mnist[1][:16]
    threat = Threat("Linf", 0.3)
    torch.manual_seed(123)
    rng = torch.get_rng_state()

    def tracer(frame, event, arg):  # stands in for coverage / a debugger
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with caplog.at_level(logging.DEBUG):
            ours = attack(registry, "autoattack", model, threat, version="custom", attacks="apgd-ce")
            assert ours.adversary.attacks_to_run == ["apgd-ce"]
            x_ours = ours(x, y)
        assert sys.gettrace() is tracer, "pyautoattack's dynamic-defense check cleared the trace function"
    finally:
        sys.settrace(previous)
    assert torch.equal(torch.get_rng_state(), rng), "the adapter changed torch's global generator"
    assert not capsys.readouterr().out and not [r for r in caplog.records if r.name == "auto-attack"]
    assert threat.contains(x_ours, x)

    pyautoattack = autoattack_adapter.autoattack_module()
    reference = pyautoattack.AutoAttack(model, attacks=["apgd-ce"], device="cpu", eps=0.3, norm="Linf", seed=0,
                                        version="custom")
    x_ref, _ = reference.run_standard_evaluation(x, y, batch_size=256)
    assert torch.equal(x_ours, x_ref)
    assert accuracy(model, x_ours, y) == accuracy(model, x_ref, y) < 0.2


def test_autoattack_through_the_checked_path(registry, model, mnist):
    x, y = mnist[0][:8], mnist[1][:8]
    checked = build_attack(registry, "autoattack:version=custom,attacks=apgd-ce+apgd-dlr,batch_size=4", model,
                           Threat("L2", 4.0))
    assert checked.fn.adversary.attacks_to_run == ["apgd-ce", "apgd-dlr"]
    x_adv = checked(x, y)
    assert x_adv.shape == x.shape and accuracy(model, x_adv, y) < 0.5


@pytest.mark.slow
def test_art_slow_attacks_with_their_default_parameters(registry, model, mnist):
    """Defaults as registered: HopSkipJump ~0.5 s, Boundary ~2 s, CW-L2 ~10 s and CW-L∞
    ~20 s per image on a 2-core CPU."""
    x, y = mnist[0][:4], mnist[1][:4]
    for name in ("art:hopskipjump", "art:boundary", "art:cw-l2"):
        raw = attack(registry, name, model, Threat("L2", 2.0))(x, y)
        assert raw.shape == x.shape and accuracy(model, raw, y) <= 0.25, name
    raw = attack(registry, "art:cw-linf", model, Threat("Linf", 0.3))(x[:1], y[:1])
    assert raw.shape == (1, *x.shape[1:]) and raw.min() >= 0 and raw.max() <= 1
