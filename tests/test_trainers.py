"""Built-in trainers: their adversarial examples are real (inside the ball, stronger than
noise) and adversarial training really changes what the model learns."""
import pytest
import torch
import torch.nn.functional as F

import advplug
from advplug.monitor import clean_and_pgd_accuracy
from advplug.threat import Threat
from advplug.trainers import FGSMRSTrainer, PGDTrainer, perturbation
from conftest import mnist_images, tiny_config


@pytest.fixture(scope="module")
def mnist_test(data_root):
    return mnist_images(data_root, 256, train=False)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.3), ("L2", 2.0)])
@pytest.mark.parametrize("steps,alpha", [(1, None), (5, None)])
def test_perturbation_stays_in_ball_and_box(standard_model, mnist_test, norm, eps, steps, alpha):
    x, y = mnist_test
    threat = Threat(norm, eps)
    delta = perturbation(standard_model, x, y, threat, steps, alpha or 2.5 * eps / steps)
    assert threat.contains(x + delta, x)


def test_pgd_perturbation_is_far_stronger_than_random_noise(standard_model, mnist_test):
    x, y = mnist_test
    threat = Threat("Linf", 0.3)
    clean = (standard_model(x).argmax(1) == y).float().mean().item()
    noise = threat.project(threat.random_init(x), x)
    noisy = (standard_model(x + noise).argmax(1) == y).float().mean().item()
    delta = perturbation(standard_model, x, y, threat, steps=10, alpha=0.075)
    adv = (standard_model(x + delta).argmax(1) == y).float().mean().item()
    assert clean > 0.85 and noisy > 0.5
    assert adv < 0.1, f"PGD-10 at 0.3 left {adv:.0%} accuracy on a standard model"


def test_trainers_leave_no_parameter_gradients_from_the_attack(standard_model, mnist_test):
    x, y = mnist_test
    for cls in (FGSMRSTrainer, PGDTrainer):
        trainer = cls(standard_model, Threat("Linf", 0.3), **({"steps": 2} if cls is PGDTrainer else {}))
        standard_model.zero_grad(set_to_none=True)
        out = trainer.step(x[:32], y[:32])
        assert all(p.grad is None for p in standard_model.parameters())
        assert out.loss.requires_grad and out.logits.shape == (32, 10)


def test_pgd_alpha_default_follows_eps_and_steps(standard_model, mnist_test):
    x, y = mnist_test
    trainer = PGDTrainer(standard_model, Threat("Linf", 0.3), steps=1, random_start=False)
    out = trainer.step(x[:8], y[:8])
    # one step of 2.5·ε from δ=0 is clipped to ε: the loss equals FGSM's at full ε
    xs = x[:8].clone().requires_grad_()
    delta = 0.3 * torch.autograd.grad(F.cross_entropy(standard_model(xs), y[:8]), xs)[0].sign()
    x_adv = (x[:8] + delta).clamp(0, 1)
    assert torch.allclose(out.loss, F.cross_entropy(standard_model(x_adv), y[:8]), atol=1e-5)


def test_pgd_at_is_more_robust_than_standard_training(tmp_path, data_root, mnist_test):
    common = dict(train_subset=2048, epochs=2, optimizer="adam", lr=1e-3, weight_decay=0.0,
                  eps=0.2, monitor_size=0, eval_steps=0)
    results = {}
    for trainer, params in (("standard", {}), ("pgd-at", {"steps": 5})):
        advplug.train(tiny_config(tmp_path / trainer, data_root, trainer=trainer, trainer_params=params, **common))
        model = advplug.load_model(tmp_path / trainer / "run" / "model.pt")
        x, y = mnist_test
        results[trainer] = clean_and_pgd_accuracy(model, x, y, Threat("Linf", 0.2), steps=10)
    (std_clean, std_pgd), (at_clean, at_pgd) = results["standard"], results["pgd-at"]
    assert std_clean > 85 and at_clean > 70
    assert at_pgd > std_pgd + 15, results
