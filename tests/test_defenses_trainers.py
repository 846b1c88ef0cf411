"""The trainers of advplug-defenses (plugins/advplug-defenses): ``trades`` (Zhang et al.
2019), ``mart`` (Wang et al. 2020) and ``awp`` (Wu et al. 2020, wrapping pgd-at, trades or
mart), and the run's ``label_smoothing`` that every built-in trainer trains with. Each test
compares with an independent computation of the paper's formula on a tiny model."""
import copy
import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("advplug_defenses.trainers", reason="advplug-defenses is not installed "
                    "(pip install --no-deps -e plugins/advplug-defenses)")

import advplug  # noqa: E402
from advplug.config import make_config  # noqa: E402
from advplug.distributed import SINGLE  # noqa: E402
from advplug.engine import Run  # noqa: E402
from advplug.errors import AdvplugError  # noqa: E402
from advplug.host import Host  # noqa: E402
from advplug.params import Spec  # noqa: E402
from advplug.threat import Threat  # noqa: E402
from advplug.trainers import PGDTrainer, perturbation  # noqa: E402
from advplug_defenses.trainers import AWPTrainer, MARTTrainer, TRADESTrainer  # noqa: E402
from conftest import fit_briefly, mnist_images, tiny_config  # noqa: E402

THREAT = Threat("Linf", 0.3)


def mlp(batch_norm=False):
    layers = [nn.Flatten(), nn.Linear(784, 32)] + ([nn.BatchNorm1d(32)] if batch_norm else []) + \
        [nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def mnist(data_root):
    return mnist_images(data_root, 256)


@pytest.fixture(scope="module")
def trained(mnist):
    """A tiny MLP fitted briefly (~90% of its batch right), far from robust."""
    torch.manual_seed(0)
    (x, y) = mnist
    return fit_briefly(mlp(), x, y, lr=0.01, steps=60)


def fake_run(model, lr=0.0, label_smoothing=0.0, epoch=0, threat=THREAT):
    """What a trainer uses of a Run, with the engine's own Run.optimizer_step."""
    run = SimpleNamespace(config=SimpleNamespace(label_smoothing=label_smoothing, sync_bn=True), threat=threat,
                          epoch=epoch, optimizer=torch.optim.SGD(model.parameters(), lr=lr), lr_scheduler=None,
                          model=model, dist=SINGLE, batch_share=1.0)
    run.optimizer_step = functools.partial(Run.optimizer_step, run)
    return run


class ModeRecorder(nn.Module):
    """Records the module's training flag at every forward."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


# -- TRADES ------------------------------------------------------------------------------

def test_trades_with_beta_zero_is_the_clean_cross_entropy_in_training_mode(mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    torch.manual_seed(1)
    model = mlp(batch_norm=True).train()  # BatchNorm: training and eval mode give other outputs
    out = TRADESTrainer(model, THREAT, beta=0.0, steps=2).step(x, y)
    expected = F.cross_entropy(model(x), y)
    assert torch.equal(out.loss, expected)
    assert not torch.allclose(out.loss, F.cross_entropy(copy.deepcopy(model).eval()(x), y))
    assert model.training


def test_trades_attacks_in_eval_mode_and_its_examples_raise_the_kl(trained, mnist):
    x, y = mnist[0][:64], mnist[1][:64]
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, trained).train()
    trainer = TRADESTrainer(model, THREAT, steps=10)
    x_adv = trainer.adversarial_batch(x, y)
    assert recorder.modes and not any(recorder.modes) and model.training   # eval during the attack, then back
    assert THREAT.contains(x_adv, x) and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.2  # it moved, within ε = 0.3

    model.eval()
    with torch.no_grad():
        p_clean = F.softmax(model(x), 1)

        def kl(inputs):
            return F.kl_div(F.log_softmax(model(inputs), 1), p_clean, reduction="batchmean").item()

        noise = x + THREAT.project(THREAT.random_init(x), x)
        assert kl(x_adv) > 10 * max(kl(noise), 1e-3), (kl(x_adv), kl(noise))


def test_trades_loss_is_ce_plus_beta_times_the_batchmean_kl(trained, mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    out = TRADESTrainer(trained, THREAT, beta=3.0).adversarial_loss(x, x_adv, y)
    p, log_q = F.softmax(trained(x), 1), F.log_softmax(trained(x_adv), 1)
    kl = (p * (p.log() - log_q)).sum() / 16
    assert torch.allclose(out.loss, F.cross_entropy(trained(x), y) + 3.0 * kl, atol=1e-6)
    assert torch.equal(out.logits, trained(x_adv)) and torch.equal(out.clean_logits, trained(x))


# -- MART --------------------------------------------------------------------------------

def test_mart_attacks_in_eval_mode_and_its_examples_raise_the_cross_entropy(trained, mnist):
    x, y = mnist[0][:64], mnist[1][:64]
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, trained).train()
    x_adv = MARTTrainer(model, THREAT, steps=10).adversarial_batch(x, y)
    assert recorder.modes and not any(recorder.modes) and model.training
    assert THREAT.contains(x_adv, x) and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        noise = x + THREAT.project(THREAT.random_init(x), x)
        ce = {name: F.cross_entropy(trained(v), y).item() for name, v in (("clean", x), ("noise", noise),
                                                                         ("adv", x_adv))}
    assert ce["adv"] > ce["noise"] + 2 and ce["adv"] > ce["clean"] + 2, ce


def mart_by_hand(x, x_adv, y, beta, guards: bool) -> float:
    """Wang et al.'s loss, sample by sample in float64 Python: CE + BCE boost at x' plus
    β·KL(p(x) ‖ p(x'))·(1 − p_y(x)), averaged; ``guards``: with the reference code's
    constants inside the logarithms (1.0001, 1e-12, 1.0000001)."""
    one, tiny, weight_one = (1.0001, 1e-12, 1.0000001) if guards else (1.0, 0.0, 1.0)
    total = 0.0
    for i in range(len(y)):
        p = [math.exp(v) for v in x[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [math.exp(v) for v in x_adv[i].tolist()]
        q = [v / sum(q) for v in q]
        yi = int(y[i])
        ce = -math.log(q[yi])
        boost = -math.log(one - max(q[k] for k in range(len(q)) if k != yi) + tiny)
        kl = sum(p[k] * (math.log(p[k]) - math.log(q[k] + tiny)) for k in range(len(p)))
        total += ce + boost + beta * kl * (weight_one - p[yi])
    return total / len(y)


def test_mart_loss_equals_the_formula_computed_by_hand():
    # logits as inputs (the model is the identity), so p(x) and p(x') are what we choose
    x = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-1.0, 3.0, 0.0, 1.0]])
    x_adv = torch.tensor([[0.5, 1.5, -0.5, 0.0], [0.0, 0.1, 2.0, -1.0], [-1.0, 2.5, 0.0, 2.4]])
    y = torch.tensor([0, 3, 1])  # samples 0 and 1: y is not the top class at x'; sample 2: it is
    for beta in (0.0, 2.5, 6.0):
        loss = MARTTrainer(nn.Identity(), THREAT, beta=beta).adversarial_loss(x, x_adv, y).loss.item()
        assert loss == pytest.approx(mart_by_hand(x, x_adv, y, beta, guards=True), abs=1e-6)
        assert loss == pytest.approx(mart_by_hand(x, x_adv, y, beta, guards=False), abs=1e-3)


# -- AWP ---------------------------------------------------------------------------------

def gradients(model, x_adv, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x_adv), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_awp_restores_the_weights_and_the_optimizer_sees_the_perturbed_gradient(trained, mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    model, gamma = copy.deepcopy(trained).train(), 0.02
    trainer = AWPTrainer(model, THREAT, base="pgd-at:steps=3,random_start=false", gamma=gamma)
    run = fake_run(model, lr=0.0)  # lr 0: the optimizer step leaves the weights as it finds them
    trainer.bind(run)
    before = [p.detach().clone() for p in model.parameters()]
    out = trainer.step(x, y)
    seen = [p.grad.clone() for p in model.parameters()]  # what optimizer.step() used
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), before))  # bit-exact

    # independently: the PGD batch, the gradient at w, v = γ‖w‖g/‖g‖ per weight matrix, w + v
    reference = copy.deepcopy(trained).train()
    x_adv = x + perturbation(reference, x, y, THREAT, 3, 2.5 * 0.3 / 3, random_start=False)
    at_w = gradients(reference, x_adv, y)
    shifted = copy.deepcopy(reference)
    with torch.no_grad():
        for p, g in zip(shifted.parameters(), at_w):
            if p.dim() > 1:
                p.add_(gamma * p.norm() / g.norm() * g)
    at_w_plus_v = gradients(shifted, x_adv, y)
    for s, a, b in zip(seen, at_w_plus_v, at_w):
        assert torch.allclose(s, a, atol=1e-6, rtol=1e-4)
    assert not all(torch.allclose(s, b, atol=1e-4, rtol=1e-3) for s, b in zip(seen, at_w))
    assert math.isclose(out.loss.item(), F.cross_entropy(shifted(x_adv), y).item(), rel_tol=1e-5)

    # with lr > 0 the optimizer steps from w itself (restored before optimizer.step()), by that gradient
    run.optimizer.param_groups[0]["lr"] = 0.1
    before = [p.detach().clone() for p in model.parameters()]
    trainer.step(x, y)
    for p, w in zip(model.parameters(), before):
        assert torch.equal(p, w.add(p.grad, alpha=-0.1))


def test_awp_under_autocast_takes_the_loss_at_the_perturbed_weights(mnist):
    # autocast (--amp) caches each weight's low-precision copy for the whole region: without
    # clearing it, the loss "at w + v" would silently be taken at w again
    x, y = mnist[0][:32], mnist[1][:32]
    torch.manual_seed(0)
    base, gamma = mlp().train(), 0.1
    model = copy.deepcopy(base)
    trainer = AWPTrainer(model, THREAT, base="pgd-at:steps=2,random_start=false", gamma=gamma)
    trainer.bind(fake_run(model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trainer.step(x, y)
    seen = [p.grad.clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = x + perturbation(base, x, y, THREAT, 2, 2.5 * 0.3 / 2, random_start=False)
        at_w = gradients(base, x_adv, y)
    with torch.no_grad():
        for p, g in zip(base.parameters(), at_w):
            if p.dim() > 1:
                p.add_(gamma * p.norm() / g.norm() * g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        at_w_plus_v = gradients(base, x_adv, y)

    def distance(grads, others):
        return max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, others))

    assert distance(seen, at_w_plus_v) < 0.02 and distance(seen, at_w) > 0.2


def test_awp_leaves_batchnorm_statistics_to_the_perturbed_step(mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    model = mlp(batch_norm=True).train()
    trainer = AWPTrainer(model, THREAT, base="pgd-at:steps=1", gamma=0.01)
    buffers = [b.clone() for b in model.buffers()]
    v = trainer.weight_perturbation(x, x, y)
    assert len(v) == 2 and all(p.dim() > 1 for p, _ in v)  # the two Linear weights, not BN's or biases
    for p, d in v:
        assert torch.allclose(d.norm(), 0.01 * p.norm())
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))
    assert all(p.grad is None for p in model.parameters())


def test_awp_during_warmup_is_the_base_trainer(trained, mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    model = copy.deepcopy(trained).train()
    trainer = AWPTrainer(model, THREAT, base=["pgd-at:steps=2,random_start=false"], warmup=1)
    trainer.bind(fake_run(model, epoch=0))
    trainer.step(x, y)
    x_adv = x + perturbation(trained, x, y, THREAT, 2, 2.5 * 0.3 / 2, random_start=False)
    for p, g in zip(model.parameters(), gradients(copy.deepcopy(trained), x_adv, y)):
        assert torch.allclose(p.grad, g, atol=1e-7)


def test_awp_composes_with_trades_and_mart(trained, mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    # what `--trainer awp:gamma=0.01,base=[trades:beta=1,steps=2]` reads
    params = Spec.parse("awp:gamma=0.01,base=[trades:beta=1,steps=2]").params
    assert params["base"] == ["trades:beta=1,steps=2"]
    for params in (params, {"base": {"name": "mart", "steps": 2}}):
        model = copy.deepcopy(trained).train()
        trainer = AWPTrainer(model, THREAT, **params)
        run = fake_run(model, lr=0.1)
        trainer.bind(run)
        assert trainer.base.run is run and trainer.base.threat is THREAT
        before = [p.detach().clone() for p in model.parameters()]
        out = trainer.step(x, y)
        assert torch.isfinite(out.loss) and out.logits.shape == (32, 10) and out.clean_logits is not None
        assert not out.loss.requires_grad
        assert all(not torch.equal(p, w) for p, w in zip(model.parameters(), before))  # one real update
    assert isinstance(AWPTrainer(trained, THREAT, base="[trades:beta=1]").base, TRADESTrainer)
    assert AWPTrainer(trained, THREAT, base="[trades:beta=1]").base.params["beta"] == 1.0


def test_awp_needs_a_run():
    with pytest.raises(AdvplugError, match="bind"):
        AWPTrainer(mlp(), THREAT).step(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))


@pytest.mark.parametrize("name,params,message", [
    ("awp", {"base": ["trades:bta=1"]}, "trainer 'awp': base 'trades' has no parameter 'bta' (did you mean 'beta'?)"),
    ("awp", {"base": "free-at"}, "trainer 'awp': base must be one trainer of pgd-at, trades, mart"),
    ("awp", {"base": "[trades+mart]"}, "trainer 'awp': base must be one trainer"),
    ("awp", {"gamma": -1}, "trainer 'awp': gamma must be a number >= 0, got -1"),
    ("trades", {"beta": -1}, "trainer 'trades': beta must be a number >= 0, got -1"),
    ("mart", {"alpha": "0eps"}, "trainer 'mart': alpha must be a step size"),
    ("trades", {"step": 3}, "trainer 'trades' has no parameter 'step' (did you mean 'steps'?)"),
])
def test_a_bad_parameter_is_one_error_line_before_the_run(name, params, message):
    entry = advplug.registry().entry("trainers", name)
    with pytest.raises(AdvplugError) as error:
        entry.check(params)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# -- label smoothing -------------------------------------------------------------------

def test_label_smoothing_changes_the_pgd_at_loss_by_the_expected_amount(trained, mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    steps = {"steps": 2}
    results = {}
    for label, smoothing in (("unbound", None), ("0", 0.0), ("0.1", 0.1)):
        trainer = PGDTrainer(trained, THREAT, **steps)
        if smoothing is not None:
            trainer.bind(fake_run(trained, label_smoothing=smoothing))
        torch.manual_seed(3)
        results[label] = trainer.step(x, y)
    # 0 (or no run) is the computation pgd-at always made: perturbation, then plain CE, bit for bit
    torch.manual_seed(3)
    delta = perturbation(trained, x, y, THREAT, 2, 2.5 * 0.3 / 2, True)
    plain = F.cross_entropy(trained(x + delta), y)
    assert torch.equal(results["unbound"].loss, plain) and torch.equal(results["0"].loss, plain)
    smoothed = results["0.1"]
    assert torch.equal(smoothed.logits, results["0"].logits)
    assert torch.equal(smoothed.loss, F.cross_entropy(smoothed.logits, y, label_smoothing=0.1))
    # (1 − s)·CE + s·mean over classes of −log p
    log_p = F.log_softmax(smoothed.logits, 1)
    by_hand = 0.9 * plain - 0.1 * log_p.mean(1).mean()
    assert torch.allclose(smoothed.loss, by_hand, atol=1e-6) and not torch.allclose(smoothed.loss, plain)


def test_label_smoothing_reaches_the_ce_terms_of_trades_and_mart(trained, mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    for cls in (TRADESTrainer, MARTTrainer):
        plain, smooth = cls(trained, THREAT), cls(trained, THREAT)
        smooth.bind(fake_run(trained, label_smoothing=0.2))
        a, b = plain.adversarial_loss(x, x_adv, y), smooth.adversarial_loss(x, x_adv, y)
        ce_logits = a.clean_logits if cls is TRADESTrainer else a.logits
        shift = F.cross_entropy(ce_logits, y, label_smoothing=0.2) - F.cross_entropy(ce_logits, y)
        assert torch.allclose(b.loss - a.loss, shift, atol=1e-5) and abs(shift.item()) > 1e-3


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_label_smoothing_out_of_range_is_one_error(tmp_path, data_root, value):
    with pytest.raises(AdvplugError, match=r"label_smoothing .* in \[0, 1\), got"):
        make_config(tiny_config(tmp_path, data_root, label_smoothing=value))


# -- end to end --------------------------------------------------------------------------

def test_the_plugin_registers_the_trainers_and_trades_trains_end_to_end(tmp_path, data_root):
    host = Host()
    assert not [e for e in host.errors if e.plugin == "defenses"]
    for name in ("trades", "mart", "awp"):
        entry = host.registry.entry("trainers", name)
        assert entry.plugin == "defenses" and entry.description.startswith(name.upper())
    run = advplug.train(tiny_config(tmp_path, data_root, trainer="trades", trainer_params={"steps": 2},
                                    model="mnist-cnn", train_subset=128, test_subset=32, monitor_size=0,
                                    eval_steps=0, plot=False, label_smoothing=0.1))
    assert len(run.history) == 1 and math.isfinite(run.history[0]["train_loss"])
    assert run.config.label_smoothing == 0.1 and isinstance(run.trainer, TRADESTrainer)
    assert (tmp_path / "run" / "model.pt").is_file()
