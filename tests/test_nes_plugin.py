"""The advplug-nes plugin (plugins/advplug-nes): discovered through its entry point, and a
real black-box attack: it breaks a standard model from model outputs alone, inside the
threat ball, reproducibly, within its query budget and without autograd on the model."""
import pytest
import torch
from torch import nn

advplug_nes = pytest.importorskip("advplug_nes", reason="advplug-nes is not installed "
                                  "(pip install --no-deps -e plugins/advplug-nes)")

import advplug  # noqa: E402
from advplug.attacks.base import build_attack  # noqa: E402
from advplug.errors import AdvplugError  # noqa: E402
from advplug.host import Host  # noqa: E402
from advplug.threat import Threat  # noqa: E402
from conftest import mnist_images, tiny_config  # noqa: E402

LINF = Threat("Linf", 0.3)
# 32 images x at most 400 queries: a few seconds on 2 CPU cores
SPEC = "nes:loss=margin,alpha=0.1,max_queries=400"


class Spy(nn.Module):
    """Counts every query (rows through the model) and every forward run with autograd on."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.rows = 0
        self.forwards_with_grad = 0

    def forward(self, x):
        self.rows += len(x)
        self.forwards_with_grad += int(torch.is_grad_enabled())
        return self.model(x)


@pytest.fixture(scope="module")
def model(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("nes-standard")
    torch.manual_seed(0)
    advplug.train(tiny_config(out, data_root, train_subset=2048, epochs=1, optimizer="adam", lr=1e-3,
                              weight_decay=0.0, monitor_size=0, eval_steps=0))
    return advplug.load_model(out / "run" / "model.pt")


@pytest.fixture(scope="module")
def images(data_root):
    return mnist_images(data_root, 32, train=False)


@pytest.fixture(scope="module")
def attacked(model, images):
    """One NES run through the registry and advplug's checked-attack path, on a spy."""
    x, y = images
    spy = Spy(model)
    model.zero_grad(set_to_none=True)
    attack = build_attack(Host().registry, SPEC, spy, LINF)
    x_adv = attack(x, y)
    return x_adv, attack, spy


def accuracy(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def test_entry_point_is_discovered():
    host = Host()
    rows = {row["name"]: row for row in host.describe()}
    assert "nes" in rows, f"plugins found: {sorted(rows)}"
    assert rows["nes"]["registered"].get("attacks") == ["nes"]
    assert rows["nes"]["errors"] == []
    assert rows["nes"]["source"] == "entry point advplug_nes.plugin"
    entry = host.registry.entry("attacks", "nes")
    assert entry.plugin == "nes" and entry.description
    assert entry.obj.attack_info.black_box and set(entry.obj.attack_info.norms) == {"Linf", "L2"}


def test_nes_breaks_a_standard_model_inside_the_ball(attacked, model, images):
    x, y = images
    x_adv, attack, _ = attacked
    assert LINF.contains(x_adv, x)
    assert (x_adv - x).abs().max().item() <= 0.3 + 1e-6
    clean, adv = accuracy(model, x, y), accuracy(model, x_adv, y)
    noise = LINF.project(LINF.random_init(x), x)
    noisy = accuracy(model, x + noise, y)
    assert clean > 85
    assert clean - adv > 30, f"NES left {adv:.1f}% of {clean:.1f}% clean accuracy ({SPEC})"
    assert noisy - adv > 20, f"NES ({adv:.1f}%) is not much stronger than random noise ({noisy:.1f}%)"
    # early exit: what the attack reports as fooled is fooled
    fooled = attack.fn.last_fooled
    assert torch.equal(fooled, model(x_adv).argmax(1) != y)


def test_nes_respects_the_query_budget_and_counts_every_query(attacked):
    _, attack, spy = attacked
    nes = attack.fn
    counts = nes.last_query_counts
    assert counts.shape == (32,) and counts.max().item() <= 400
    assert spy.rows == counts.sum().item() <= 32 * 400  # its accounting is the real number of queries
    assert nes.last_queries == pytest.approx(counts.double().mean().item())
    assert nes.mean_queries == pytest.approx(nes.last_queries)
    # early exit per sample: fooled samples stopped before spending the whole budget
    assert counts[nes.last_fooled].min().item() < 400 - 51


def test_nes_never_runs_autograd_on_the_model(attacked, model):
    _, _, spy = attacked
    assert spy.forwards_with_grad == 0
    assert all(p.grad is None for p in model.parameters())
    assert any(p.requires_grad for p in model.parameters())  # it did not need them frozen


def test_nes_is_reproducible_with_its_seed(model, images):
    x, y = images[0][:8], images[1][:8]
    make = lambda seed: advplug_nes.nes(model, LINF, samples_per_draw=20, max_queries=100, seed=seed)  # noqa: E731
    first, again, other = make(0)(x, y), make(0)(x, y), make(1)(x, y)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    attack = make(0)  # one attack object called twice gives the same answer too
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(attack(x, y), first) and torch.equal(attack(x, y), first)


def test_nes_l2_stays_in_the_ball_and_restores_the_model_mode(model, images):
    x, y = images[0][:4], images[1][:4]
    threat = Threat("L2", 2.0)
    model.train()
    try:
        attack = advplug_nes.nes(model, threat, samples_per_draw=10, max_queries=45)
        x_adv = attack(x, y)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    assert threat.contains(x_adv, x)
    assert attack.last_query_counts.max().item() <= 45
    # a budget too small for one step: only the clean query, x comes back unchanged
    tiny = advplug_nes.nes(model, threat, max_queries=10)
    assert torch.equal(tiny(x, y), x) and tiny.last_query_counts.tolist() == [1] * 4


@pytest.mark.parametrize("params,match", [
    ({"samples_per_draw": 7}, "even"),
    ({"sigma": 0}, "sigma"),
    ({"loss": "hinge"}, "loss"),
    ({"max_queries": 0}, "max_queries"),
    ({"steps": 10}, "no parameter"),
])
def test_nes_rejects_bad_params(model, params, match):
    with pytest.raises(AdvplugError, match=match):
        advplug_nes.nes(model, LINF, **params)
