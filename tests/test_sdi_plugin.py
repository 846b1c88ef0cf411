"""The advplug-sdi plugin (plugins/advplug-sdi): FGSM-SDI is discovered through its entry
point, its perturbations stay in the threat model, its generator is updated on schedule
without touching the target's gradients, the two players really play (the generator
ascends the loss the target descends), and a resumed run continues bit for bit."""
import json

import pytest
import torch
from torch import nn

advplug_sdi = pytest.importorskip("advplug_sdi", reason="advplug-sdi is not installed "
                                  "(pip install --no-deps -e plugins/advplug-sdi)")

import advplug  # noqa: E402
from advplug.errors import AdvplugError  # noqa: E402
from advplug.host import Host  # noqa: E402
from advplug.threat import Threat  # noqa: E402
from advplug_sdi import FGSMSDITrainer  # noqa: E402
from conftest import mnist_images, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def mnist(data_root):
    """256 MNIST training images in [0, 1]."""
    return mnist_images(data_root, 256)


def small_cnn():
    """A cheap target (a few ms per batch), so the tests pay mostly for the generator."""
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, 10))


def snapshot(module):
    return [t.detach().clone() for t in (*module.parameters(), *module.buffers())]


def same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


def test_plugin_is_discovered_through_its_entry_point():
    assert "fgsm-sdi" in advplug.registry().names("trainers")
    assert advplug.registry().get("trainers", "fgsm-sdi") is FGSMSDITrainer
    rows = {row["name"]: row for row in Host().describe()}
    assert rows["sdi"]["source"] == "entry point advplug_sdi.plugin"
    assert rows["sdi"]["registered"] == {"trainers": ["fgsm-sdi"]}
    assert rows["sdi"]["version"] == advplug_sdi.__version__ and not rows["sdi"]["errors"]


def test_perturbations_stay_in_the_ball_and_the_box(mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    threat = Threat("Linf", 0.3)
    model = small_cnn()
    trainer = FGSMSDITrainer(model, threat, k=1)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    for _ in range(2):  # two generator updates: a generator that has moved from its init
        seen.clear()
        out = trainer.step(x, y)
    trained_on = seen[-1]  # the target's last forward in step() is the one it trains on
    assert torch.equal(out.logits, model(trained_on))
    assert threat.contains(trained_on, x)
    eta, delta = trainer.perturb(x, y)
    assert eta.abs().max() <= threat.eps + 1e-6
    assert threat.contains(x + eta, x) and threat.contains(x + delta, x)
    # a real initialization, not zero (the box clips η to >= 0 on MNIST's many 0 pixels)
    assert 0.05 * threat.eps < eta.abs().mean() < threat.eps
    # the FGSM step is taken from η: |δ - η| = α wherever neither the ball nor the box clips
    trainer.set_attack_params(alpha="0.5eps")
    alpha = 0.5 * threat.eps
    eta, delta = trainer.perturb(x, y)
    free = (eta.abs() <= threat.eps - alpha) & (x + eta - alpha >= 0) & (x + eta + alpha <= 1)
    assert free.sum() > 100
    assert torch.allclose((delta - eta)[free].abs(), torch.full_like(delta[free], alpha), atol=1e-6)


def test_generator_updates_every_k_steps_and_never_touches_target_grads(mnist):
    x, y = mnist[0][:8], mnist[1][:8]
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = FGSMSDITrainer(model, Threat("Linf", 0.3), k=3)
    trainer.perturb(x, y)  # builds the generator (eval mode: no update, no BN statistics)
    changed = []
    for i in range(10):
        if i:  # the target's .grad hold the previous step's gradients
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        before = snapshot(trainer.generator)
        out = trainer.step(x, y)
        after = snapshot(trainer.generator)
        # weights, BN running stats and all: unchanged outside of the generator's updates
        changed.append(not same(before, after))
        if changed[-1]:  # and an update moves every parameter
            n_params = len(list(trainer.generator.parameters()))
            assert not any(torch.equal(u, v) for u, v in zip(before[:n_params], after[:n_params]))
        for p, g in zip(model.parameters(), grads):
            assert (p.grad is None and g is None) or torch.equal(p.grad, g), "step() touched the target's .grad"
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        # the δ the target trains on is detached: its loss sends nothing to the generator
        assert all(p.grad is None for p in trainer.generator.parameters())
    # updates at the start of step calls 0, 3, 6, 9 (0-based): 4 updates in 10 steps
    assert [i for i, c in enumerate(changed) if c] == [0, 3, 6, 9]
    assert len(trainer.generator_losses) == 4 and trainer.steps == 10


def test_generator_ascends_the_loss_the_target_descends(mnist):
    """Joint training: the target's robust loss (CE at x + δ) goes down. Then, with the
    target frozen, the generator's loss (the same CE, as seen at its updates) goes up at
    every one of its updates: it maximizes what the target minimizes. (With the target
    learning at the same time, the loss seen at generator updates mostly falls: the
    target gains faster than the generator, so the frozen phase is what isolates it.)"""
    x, y = mnist
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = FGSMSDITrainer(model, Threat("Linf", 0.2), k=8)
    robust = []
    for xb, yb in zip(x.split(16), y.split(16)):  # 16 steps, generator updates in steps 0 and 8
        out = trainer.step(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        robust.append(out.loss.item())
    first, last = sum(robust[:4]) / 4, sum(robust[-4:]) / 4
    assert last < first - 0.3, robust  # observed: 2.59 -> 2.16

    model.eval()  # frozen: no target updates, no dropout; the generator alone moves the loss
    trainer.set_attack_params(k=1)
    start = len(trainer.generator_losses)
    weights = snapshot(model)
    for _ in range(5):
        trainer.step(x[:16], y[:16])
    gen = trainer.generator_losses[start:]  # losses on the same batch: gen[i+1] is after update i
    assert same(weights, snapshot(model))
    assert all(b > a for a, b in zip(gen, gen[1:])), gen
    assert gen[-1] > gen[0] + 0.05, gen  # observed: 1.94 -> 2.03


def _sdi_run(tmp_path, data_root, name, epochs):
    return tiny_config(tmp_path / name, data_root, trainer="fgsm-sdi", trainer_params={"k": 2}, eps=0.1,
                       epochs=epochs, train_subset=24, batch_size=8, test_subset=16, monitor_size=0,
                       eval_steps=0, optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="multistep",
                       lr_milestones=[0.5, 1.5])


def test_resume_continues_the_generator_exactly(tmp_path, data_root):
    straight = advplug.train(_sdi_run(tmp_path, data_root, "straight", epochs=2))
    advplug.train(_sdi_run(tmp_path, data_root, "split", epochs=1))
    resumed = advplug.train(resume=tmp_path / "split" / "run", epochs=2)

    # 3 steps an epoch, counted across epochs: updates in steps 0, 2 | 4 (not 0, 2 | 0, 2)
    assert straight.trainer.steps == resumed.trainer.steps == 6
    assert len(straight.trainer.generator_losses) == 3
    assert resumed.trainer.generator_losses == straight.trainer.generator_losses
    # the generator's LR followed the target's milestones (iterations 1 and 4): two decays
    assert straight.trainer.gen_optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)

    def load(run_dir):
        return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)

    ref, got = load(tmp_path / "straight" / "run"), load(tmp_path / "split" / "run")
    for key in ref["model"]:
        assert torch.equal(ref["model"][key], got["model"][key]), key
    gen_ref, gen_got = ref["trainer"]["generator"], got["trainer"]["generator"]
    assert gen_ref.keys() == gen_got.keys()
    for key in gen_ref:
        assert torch.equal(gen_ref[key], gen_got[key]), key
    assert ref["trainer"]["steps"] == got["trainer"]["steps"] == 6
    adam_ref, adam_got = ref["trainer"]["optimizer"], got["trainer"]["optimizer"]
    assert adam_ref["param_groups"] == adam_got["param_groups"]
    for i in adam_ref["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(adam_ref["state"][i][key], adam_got["state"][i][key])

    def metrics(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")} for line in lines]

    ours = metrics(tmp_path / "split" / "run")
    assert ours == metrics(tmp_path / "straight" / "run")
    assert [m["sdi_generator_updates"] for m in ours] == [2, 1]
    assert [m["sdi_generator_lr"] for m in ours] == pytest.approx([1e-4, 1e-5])


@pytest.mark.parametrize("params,match", [
    ({"kk": 3}, "has no parameter 'kk'"),
    ({"k": 0}, "k must be an integer >= 1"),
    ({"k": 2.5}, "k must be an integer >= 1"),
    ({"gen_lr": 0}, "gen_lr must be a number > 0"),
    ({"gen_lr_schedule": "cosine"}, "gen_lr_schedule must be one of follow, constant"),
])
def test_bad_params_give_one_clear_error(params, match):
    with pytest.raises(AdvplugError, match=match):
        FGSMSDITrainer(small_cnn(), Threat("Linf", 0.3), **params)


def test_bad_params_and_l2_are_refused_before_training(tmp_path, data_root):
    with pytest.raises(AdvplugError, match="k must be an integer >= 1, got 0"):
        advplug.train(tiny_config(tmp_path, data_root, trainer="fgsm-sdi", trainer_params={"k": 0}))
    with pytest.raises(AdvplugError, match="Linf threat model only"):
        advplug.train(tiny_config(tmp_path, data_root, trainer="fgsm-sdi", norm="L2", eps=1.0))
    assert not (tmp_path / "run").exists()
