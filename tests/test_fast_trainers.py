"""The fast adversarial training baselines -- free-at (Shafahi et al. 2019), fgsm-ga
(GradAlign, Andriushchenko & Flammarion 2020) and fgsm-ckpt (Kim, Lee & Lee 2021): they are
registered, train end to end inside the threat, do what defines each algorithm, and make
the model more robust than standard training."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advplug
from advplug.config import make_config
from advplug.engine import Run
from advplug.host import get_host
from advplug.models import MnistCNN
from advplug.monitor import clean_and_pgd_accuracy
from advplug.threat import Threat
from advplug.trainers import FGSMCheckpointTrainer, GradAlignTrainer, perturbation
from conftest import fit_briefly, mnist_images, tiny_config

FAST_TRAINERS = ("free-at", "fgsm-ga", "fgsm-ckpt")


@pytest.fixture(scope="module")
def mnist_test(data_root):
    return mnist_images(data_root, 256, train=False)


@pytest.fixture(scope="module")
def linear_model(data_root):
    """A logistic regression on 2,048 MNIST images (~90% right, far from robust): trains
    in a fraction of a second, and its margins along the FGSM direction vary widely."""
    x, y = mnist_images(data_root, 2048)
    torch.manual_seed(0)
    return fit_briefly(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), x, y, lr=0.05, steps=100).eval()


class Probe:
    """A plugin that watches a run from ``advplug_train_start``: every model input during
    ``trainer.step`` (checked against the threat around that batch's clean x) and the
    learning rate of every optimizer step."""

    def __init__(self):
        self.batches = self.inputs = self.outside = 0
        self.step_lrs = []

    @advplug.hookimpl
    def advplug_train_start(self, run):
        trainer, clean = run.trainer, []

        def step(x, y, _step=trainer.step):
            clean.append(x)
            self.batches += 1
            try:
                return _step(x, y)
            finally:
                clean.clear()

        def check_input(module, args):
            if clean:
                self.inputs += 1
                self.outside += not trainer.threat.contains(args[0].detach(), clean[0])

        trainer.step = step
        run.model.register_forward_pre_hook(check_input)
        run.optimizer.register_step_post_hook(lambda opt, *_: self.step_lrs.append(opt.param_groups[0]["lr"]))


def probed_train(tmp_path, data_root, **overrides):
    probe = Probe()
    get_host().register(probe, name="probe")
    cfg = dict(train_subset=128, test_subset=32, monitor_size=0, eval_steps=0, plot=False)
    cfg.update(overrides)
    run = advplug.train(tiny_config(tmp_path, data_root, **cfg))
    return run, probe


# -- all three: registered, trainable, inside the threat -------------------------------

def test_fast_trainers_are_registered_with_a_description():
    reg = advplug.registry()
    for name in FAST_TRAINERS:
        assert name in reg.names("trainers")
        assert reg.get("trainers", name).__doc__.strip()


@pytest.mark.parametrize("norm,eps", [("Linf", 0.3), ("L2", 2.0)])
@pytest.mark.parametrize("name", FAST_TRAINERS)
def test_trains_end_to_end_inside_the_ball_and_box(tmp_path, data_root, name, norm, eps):
    params = {"replays": 2} if name == "free-at" else {}
    run, probe = probed_train(tmp_path, data_root, trainer=name, trainer_params=params, norm=norm, eps=eps)
    assert probe.batches == len(run.loader) == 2
    assert probe.inputs >= 2 * probe.batches  # at least one attack and one training forward per batch
    assert probe.outside == 0, f"{probe.outside} of {probe.inputs} model inputs left the {run.trainer.threat} ball or [0, 1]"
    assert (tmp_path / "run" / "model.pt").is_file()
    assert math.isfinite(run.history[-1]["train_loss"])


# -- free-at ---------------------------------------------------------------------------

def test_free_at_replays_each_batch_m_times_and_steps_the_lr_schedule_once_per_batch(tmp_path, data_root):
    run, probe = probed_train(tmp_path, data_root, trainer="free-at", trainer_params={"replays": 3},
                              epochs=2, lr_schedule="cyclic")
    batches = 2 * len(run.loader)
    assert probe.batches == batches
    assert len(probe.step_lrs) == 3 * batches  # m optimizer updates per minibatch
    assert probe.inputs == 3 * batches  # and one forward each: the attack is free
    # the schedule moves once per batch: the same LR for the m replays of a batch, a new
    # one for the next batch
    per_batch = [probe.step_lrs[i:i + 3] for i in range(0, len(probe.step_lrs), 3)]
    assert all(len(set(lrs)) == 1 for lrs in per_batch)
    assert all(a[0] != b[0] for a, b in zip(per_batch, per_batch[1:]))
    # the cyclic schedule was laid out over epochs × batches steps and ends at ~0 (a trainer
    # stepping it per replay would overrun it and raise, one never stepping it stays at lr/1e4)
    assert run.lr_scheduler.last_epoch == batches
    assert run.optimizer.param_groups[0]["lr"] < 1e-8


def test_free_at_delta_persists_across_replays_and_minibatches(tmp_path, data_root):
    run = Run(make_config(tiny_config(tmp_path, data_root, trainer="free-at", trainer_params={"replays": 2},
                                      train_subset=128, monitor_size=0)))
    trainer, threat = run.trainer, run.trainer.threat
    x, y = run.loader.images[:74].float() / 255, run.loader.labels[:74]
    x1, y1, x2, y2, x3, y3 = x[:64], y[:64], x[64:], y[64:], x[:32].flip(0), y[:32].flip(0)
    seen = []
    run.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))

    trainer.step(x1, y1)
    assert torch.equal(seen[0], x1)  # δ starts at zero
    step1 = seen[1] - x1  # the second replay starts where the first one moved δ: a full ε-step
    assert step1.abs().amax().item() == pytest.approx(0.3)
    after1 = trainer.delta.clone()

    trainer.step(x2, y2)  # a smaller batch: its rows of δ carry over, projected for the new images
    assert (seen[2] - x2).abs().amax().item() == pytest.approx(0.3)  # not a fresh zero start
    assert torch.allclose(seen[2] - x2, threat.project(after1[:10], x2), atol=1e-6)
    assert trainer.delta.shape[0] == 64
    assert torch.equal(trainer.delta[10:], after1[10:])  # rows it did not use are kept

    after2 = trainer.delta.clone()
    trainer.step(x3, y3)
    assert torch.allclose(seen[4] - x3, threat.project(after2[:32], x3), atol=1e-6)
    assert threat.contains(seen[4], x3) and threat.contains(seen[5], x3)


# -- fgsm-ga ---------------------------------------------------------------------------

@pytest.fixture
def small_cnn(mnist_test):
    torch.manual_seed(1)
    return MnistCNN().eval()  # eval: no dropout, so two calls see the same function


def test_grad_align_with_lam_zero_is_plain_fgsm(small_cnn, mnist_test):
    x, y = mnist_test[0][:32], mnist_test[1][:32]
    threat = Threat("Linf", 0.3)
    out = GradAlignTrainer(small_cnn, threat, lam=0.0).step(x, y)
    delta = perturbation(small_cnn, x, y, threat, steps=1, alpha=1.25 * 0.3, random_start=False)
    assert torch.allclose(out.loss, F.cross_entropy(small_cnn(x + delta), y), atol=1e-6)
    assert all(p.grad is None for p in small_cnn.parameters())  # the attack left no parameter gradients


def test_grad_align_regularizer_is_positive_and_its_gradient_reaches_the_parameters(small_cnn, mnist_test):
    x, y = mnist_test[0][:32], mnist_test[1][:32]
    threat, params = Threat("Linf", 0.3), list(small_cnn.parameters())
    losses, grads = {}, {}
    for lam in (0.0, 0.5):
        torch.manual_seed(7)
        out = GradAlignTrainer(small_cnn, threat, lam=lam).step(x, y)
        assert all(p.grad is None for p in params)
        losses[lam] = out.loss
        grads[lam] = torch.autograd.grad(out.loss, params)
    reg = (losses[0.5] - losses[0.0]).item() / 0.5  # 1 − cos: in (0, 2]
    assert 1e-4 < reg <= 2.0
    # double backprop: without create_graph the regularizer would be a constant here
    assert any(not torch.allclose(g0, g1, atol=1e-7) for g0, g1 in zip(grads[0.0], grads[0.5]))


def test_grad_align_leaves_out_examples_with_a_zero_gradient(mnist_test):
    x = mnist_test[0][:8]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10), nn.ReLU(), nn.Linear(10, 10))
    with torch.no_grad():
        model[3].bias[0] = 1e3  # a saturated softmax: label 0 has an exactly zero input gradient
    trainer = GradAlignTrainer(model, Threat("Linf", 0.3), lam=1.0)
    for y in (torch.tensor([0, 1] * 4), torch.zeros(8, dtype=torch.long)):
        out = trainer.step(x, y)
        model.zero_grad(set_to_none=True)
        out.loss.backward()
        assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    # no example left: no regularizer (neither NaN nor a constant 1)
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, y).item(), abs=1e-6)


# -- fgsm-ckpt -------------------------------------------------------------------------

def first_wrong_checkpoint(model, x, y, delta, c):
    """The oracle, one example at a time: k/c for the first checkpoint it gets wrong, else 1."""
    out = []
    for xi, yi, di in zip(x, y, delta):
        ks = [j for j in range(c) if model((xi + j / c * di)[None]).argmax(1).item() != yi.item()]
        out.append(ks[0] / c if ks else 1.0)
    return torch.tensor(out)


def test_fgsm_ckpt_picks_per_example_step_sizes_within_a_batch(linear_model, mnist_test):
    x, y = mnist_test[0][:128], mnist_test[1][:128]
    trainer = FGSMCheckpointTrainer(linear_model, Threat("Linf", 0.1), checkpoints=4)
    delta = perturbation(linear_model, x, y, trainer.threat, 1, 1.25 * 0.1)
    fractions = trainer.step_fractions(x, y, delta)
    assert len(fractions.unique()) >= 3, fractions.unique()
    assert torch.equal(fractions, first_wrong_checkpoint(linear_model, x, y, delta, 4))


def test_fgsm_ckpt_trains_misclassified_examples_on_the_clean_point(linear_model, mnist_test):
    x, y = mnist_test[0][:64], mnist_test[1][:64].clone()
    y[:32] = (linear_model(x[:32]).argmax(1) + 1) % 10  # labels it gets wrong before any perturbation
    trainer = FGSMCheckpointTrainer(linear_model, Threat("Linf", 0.1))
    x_adv, fractions = trainer.adversarial_examples(x, y)
    wrong = linear_model(x).argmax(1) != y
    assert wrong[:32].all()
    assert (fractions[wrong] == 0).all() and torch.equal(x_adv[wrong], x[wrong])
    assert (fractions[~wrong] > 0).all()
    assert trainer.threat.contains(x_adv, x)
    assert all(p.grad is None for p in linear_model.parameters())


def test_fgsm_ckpt_gives_a_never_fooled_model_the_full_step(mnist_test):
    x, y = mnist_test[0][:64], torch.zeros(64, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].bias.zero_()
        # class 0 whatever the input (weights move a logit by < 5 over the ball), yet the
        # softmax does not saturate, so FGSM has a gradient to follow
        model[1].bias[0] = 20.0
    trainer = FGSMCheckpointTrainer(model, Threat("Linf", 0.3))
    x_adv, fractions = trainer.adversarial_examples(x, y)
    assert (fractions == 1).all()
    assert torch.allclose((x_adv - x).flatten(1).abs().amax(1), torch.full((64,), 0.3), atol=1e-6)
    assert trainer.threat.contains(x_adv, x)


# -- they matter: more robust than standard training on the same seed -----------------

@pytest.fixture(scope="module")
def standard_pgd(tmp_path_factory, data_root, mnist_test):
    return short_run_accuracy(tmp_path_factory.mktemp("standard"), data_root, mnist_test, "standard", {})


def short_run_accuracy(out, data_root, mnist_test, trainer, params):
    advplug.train(tiny_config(out, data_root, trainer=trainer, trainer_params=params, train_subset=2048,
                              optimizer="adam", lr=1e-3, weight_decay=0.0, eps=0.2, monitor_size=0,
                              eval_steps=0, test_subset=32, plot=False))
    model = advplug.load_model(out / "run" / "model.pt")
    return clean_and_pgd_accuracy(model, *mnist_test, Threat("Linf", 0.2), steps=10)


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("free-at", {"replays": 4}), ("fgsm-ga", {}), ("fgsm-ckpt", {})])
def test_fast_trainers_are_more_robust_than_standard_training(tmp_path, data_root, mnist_test, standard_pgd,
                                                               name, params):
    # one epoch on 2,048 images, seed 0: standard ~15% PGD-10 accuracy at ε = 0.2, these 38-68%
    clean, pgd = short_run_accuracy(tmp_path, data_root, mnist_test, name, params)
    assert clean > 80
    assert pgd > standard_pgd[1] + 15, (name, (clean, pgd), standard_pgd)
