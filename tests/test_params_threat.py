"""``name:key=value`` specs and the threat model (ε in pixel space, projection, ball)."""
import math

import pytest
import torch

from advplug.errors import AdvplugError
from advplug.params import check_params, parse_spec, parse_value
from advplug.threat import Threat, parse_eps, parse_norm

# -- parse_value / parse_spec ----------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("3", 3), ("-2", -2), (" 7 ", 7), ("0", 0),
    ("0.5", 0.5), ("1e-3", 1e-3), ("-0.25", -0.25),
    ("true", True), ("True", True), ("yes", True), ("on", True),
    ("false", False), ("FALSE", False), ("no", False), ("off", False),
    ("none", None), ("null", None),
    ("pgd", "pgd"), (" linf ", "linf"),
])
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_value_fractions():
    assert parse_value("8/255") == pytest.approx(8 / 255, abs=1e-15)
    assert isinstance(parse_value("8/255"), float)
    assert parse_value("1/2") == 0.5
    assert parse_value("3/0") == "3/0"  # not a number: left as text
    assert parse_value("a/b") == "a/b"


def test_parse_spec_reads_name_and_typed_params():
    name, params = parse_spec("pgd-at:steps=7,alpha=2/255,random-start=false")
    assert name == "pgd-at"
    assert params == {"steps": 7, "alpha": pytest.approx(2 / 255), "random_start": False}
    assert type(params["steps"]) is int and type(params["alpha"]) is float


def test_parse_spec_without_params_and_with_spaces():
    assert parse_spec("standard") == ("standard", {})
    assert parse_spec("fgsm-rs:") == ("fgsm-rs", {})
    assert parse_spec(" fgsm-rs : alpha = 1.0eps , ") == ("fgsm-rs", {"alpha": "1.0eps"})


@pytest.mark.parametrize("spec,item", [
    ("pgd-at:steps=7,alpha", "alpha"),
    ("pgd-at:=3", "=3"),
])
def test_parse_spec_bad_item_is_one_clear_error(spec, item):
    with pytest.raises(AdvplugError) as info:
        parse_spec(spec)
    msg = str(info.value)
    assert repr(item) in msg and repr(spec) in msg
    assert "key=value" in msg


def test_namespaced_names_keep_their_namespace():
    assert parse_spec("torchattacks:pgd:steps=20") == ("torchattacks:pgd", {"steps": 20})
    assert parse_spec("art:cw-l2") == ("art:cw-l2", {})
    # a bare word after the colon reads as a namespaced name; the registry then rejects it
    assert parse_spec("pgd-at:steps") == ("pgd-at:steps", {})


def test_check_params_merges_and_rejects_unknown_keys():
    defaults = {"steps": 10, "alpha": None}
    assert check_params("trainer 'pgd-at'", {"steps": 3}, defaults) == {"steps": 3, "alpha": None}
    assert defaults == {"steps": 10, "alpha": None}  # not mutated
    with pytest.raises(AdvplugError) as info:
        check_params("trainer 'pgd-at'", {"stepz": 3, "steps": 2}, defaults)
    msg = str(info.value)
    assert "trainer 'pgd-at'" in msg and "'stepz'" in msg
    assert "alpha" in msg and "steps" in msg  # what it does take
    with pytest.raises(AdvplugError, match="no parameters"):
        check_params("trainer 'standard'", {"x": 1}, {})


# -- Threat -------------------------------------------------------------------------

def test_eps_parsing():
    assert Threat("Linf", "8/255").eps == pytest.approx(8 / 255)
    assert Threat("Linf", "0.3").eps == 0.3
    assert Threat("Linf", 0).eps == 0.0
    assert isinstance(Threat("L2", 1).eps, float)
    assert parse_eps(" 2/255 ") == pytest.approx(2 / 255)
    with pytest.raises(AdvplugError, match="8/255"):
        parse_eps("eight")
    with pytest.raises(AdvplugError):
        parse_eps("1/0")
    with pytest.raises(AdvplugError):
        parse_eps(True)


def test_norm_names_are_case_insensitive_and_canonical():
    assert Threat("linf", 0.1).norm == "Linf"
    assert Threat("LINF", 0.1).norm == "Linf"
    assert Threat("l2", 0.5).norm == "L2"
    assert parse_norm("L2") == "L2"


@pytest.mark.parametrize("norm", ["L1", "Linfinity", "", "l0"])
def test_unknown_norm_rejected(norm):
    with pytest.raises(AdvplugError) as info:
        Threat(norm, 0.1)
    assert "Linf" in str(info.value) and "L2" in str(info.value)


@pytest.mark.parametrize("eps", [8, "8", 1.5, "300/255"])
def test_linf_eps_above_one_rejected(eps):
    with pytest.raises(AdvplugError) as info:
        Threat("Linf", eps)
    msg = str(info.value)
    assert "[0, 1]" in msg and "8/255" in msg


def test_linf_eps_one_and_l2_above_one_accepted():
    assert Threat("Linf", 1).eps == 1.0
    assert Threat("L2", 8).eps == 8.0  # an L2 radius above 1 is normal


@pytest.mark.parametrize("norm,eps", [("Linf", -0.1), ("L2", "-1"), ("Linf", "-8/255"),
                                      ("L2", float("nan"))])
def test_negative_or_nan_eps_rejected(norm, eps):
    with pytest.raises(AdvplugError, match=">= 0"):
        Threat(norm, eps)


def test_str():
    assert str(Threat("Linf", 0.3)) == "Linf ε=0.3"


# -- projection and the ball ---------------------------------------------------------

def _batch(seed=0, shape=(64, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x[0] = 0.0  # corners of the box
    x[1] = 1.0
    delta = torch.randn(shape, generator=g) * 2.0
    return x, delta


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("Linf", 0.3), ("L2", 0.5), ("L2", 3.0)])
def test_project_keeps_perturbation_in_ball_and_box(norm, eps):
    threat = Threat(norm, eps)
    x, delta = _batch()
    projected = threat.project(delta, x)
    d = projected.flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert ((x + projected) >= 0).all() and ((x + projected) <= 1).all()
    assert threat.contains(x + projected, x)
    assert not threat.contains(x + delta, x)  # the raw one was far outside
    # projecting twice changes nothing more than rounding
    assert torch.allclose(threat.project(projected, x), projected, atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 1.0)])
def test_project_leaves_a_feasible_delta_alone(norm, eps):
    threat = Threat(norm, eps)
    x = torch.full((16, 1, 6, 6), 0.5)
    g = torch.Generator().manual_seed(1)
    delta = torch.rand(x.shape, generator=g) * 0.02 - 0.01  # tiny: inside ball and box
    assert torch.allclose(threat.project(delta, x), delta, atol=1e-7)


def test_linf_project_is_the_clamp():
    threat = Threat("Linf", 0.1)
    x = torch.tensor([[[[0.5, 0.05, 0.95, 0.5]]]])
    delta = torch.tensor([[[[0.3, -0.3, 0.3, -0.05]]]])
    out = threat.project(delta, x)
    assert torch.allclose(out, torch.tensor([[[[0.1, -0.05, 0.05, -0.05]]]]), atol=1e-7)


def test_l2_project_scales_onto_the_sphere():
    threat = Threat("L2", 1.0)
    x = torch.full((1, 1, 1, 2), 0.1)
    delta = torch.tensor([[[[3.0, 4.0]]]])  # norm 5: scaled onto the unit sphere, x + δ inside [0, 1]
    out = threat.project(delta, x)
    assert torch.allclose(out, torch.tensor([[[[0.6, 0.8]]]]), atol=1e-6)
    assert out.flatten().norm().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_random_init_is_inside_the_ball(norm, eps):
    threat = Threat(norm, eps)
    torch.manual_seed(3)
    x = torch.rand(256, 3, 8, 8)
    delta = threat.random_init(x)
    assert delta.shape == x.shape and delta.dtype == x.dtype
    d = delta.flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert (size > 0).all()
    if norm == "Linf":  # uniform per coordinate: fills the cube
        assert d.abs().max().item() > 0.95 * eps
        assert d.mean().abs().item() < 0.05 * eps
    else:  # uniform in a 192-dim ball: nearly all mass near the sphere
        assert size.median().item() > 0.95 * eps
    assert not torch.equal(threat.random_init(x), delta)  # random


def test_ascent_step_sizes():
    g = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    linf = Threat("Linf", 0.1).ascent(g, 0.01)
    assert torch.allclose(linf.abs(), torch.full_like(g, 0.01))
    assert torch.equal(linf.sign(), g.sign())
    l2 = Threat("L2", 1.0).ascent(g, 0.25)
    assert torch.allclose(l2.flatten(1).norm(dim=1), torch.full((4,), 0.25), atol=1e-6)


def test_contains():
    threat = Threat("Linf", 0.1)
    x = torch.full((2, 1, 4, 4), 0.5)
    assert threat.contains(x, x)
    assert threat.contains(x + 0.1, x)
    assert not threat.contains(x + 0.11, x)
    moved = x.clone()
    moved[1, 0, 0, 0] += 0.2  # one pixel of one sample outside the ball
    assert not threat.contains(moved, x)
    x0 = torch.zeros(1, 1, 2, 2)
    assert not threat.contains(x0 - 0.05, x0)  # inside the ball but outside [0, 1]

    l2 = Threat("L2", 1.0)
    x = torch.full((1, 1, 1, 16), 0.5)
    assert l2.contains(x + 0.25, x)  # L2 norm exactly 1
    assert not l2.contains(x + 0.3, x)  # every pixel moves < ε, but the L2 norm is 1.2
    assert math.isclose(((x + 0.3) - x).norm().item(), 1.2, rel_tol=1e-5)
