import torch
import torch.nn.functional as F

from ..params import flag, number, resolve_step, step_size
from .base import StepOutput, Trainer, input_gradient


class GradAlignTrainer(Trainer):
    """Andriushchenko & Flammarion (2020), "Understanding and Improving Fast Adversarial
    Training": FGSM training plus the GradAlign regularizer.

    loss = ℓ(x + δ_FGSM) + λ·(1 − cos(∇ₓℓ(x), ∇ₓℓ(x + η))), η uniform in the ε-ball.

    As in the authors' code (``train.py --attack=fgsm --attack_init=zero
    --grad_align_cos_lambda=λ``): FGSM from δ = 0 with step α = 1.25·ε, which the
    projection clips to a full ε-step; the first gradient is FGSM's own (at x, detached,
    so it costs nothing extra); the second is taken at x + η with ``create_graph=True`` so
    the regularizer's gradient reaches the parameters (double backpropagation); the
    cosine is averaged over the examples whose two gradients are both non-zero. One
    deviation: x + η is also clipped to the [0, 1] box (the reference leaves it unclipped).

    Parameters: ``lam`` (λ, default 0.2: the paper's CIFAR-10 value at ε = 8/255; its
    CIFAR-10 scripts interpolate λ = 0.02·10^(ε·255/8), e.g. 0.063 at 4/255 and 2.0 at
    16/255, and for SVHN λ = 1.5625·1.6^(ε·255/8), 2.5 at 8/255; no MNIST value is
    published, so tune λ for ε = 0.3), ``random_start`` (default False: FGSM from zero;
    True starts FGSM at a uniform point of the ball, and the first gradient is then taken
    there), ``alpha`` (default ``1.25eps``, matters only with ``random_start``).
    L2 threats use the same algorithm with the L2 ball's steepest ascent and uniform η.
    ``lam=0`` is plain FGSM training.
    """

    name = "fgsm-ga"
    param_schema = {"lam": number(0.2, low=0, help="λ: weight of the gradient-alignment term"),
                    "random_start": flag(False, help="FGSM from a random start in the ε-ball (else from x)"),
                    "alpha": step_size("1.25eps", help="FGSM step α (with random_start; else ε)")}

    def step(self, x, y):
        threat = self.threat
        start = threat.random_init(x) if self.params["random_start"] else torch.zeros_like(x)
        start = threat.project(start, x)
        grad = input_gradient(self.model, x, y, start)
        delta = threat.project(start + threat.ascent(grad, resolve_step(self.params["alpha"], threat.eps)), x)
        logits = self.model(x + delta)
        loss = self.loss(logits, y)
        if self.params["lam"]:
            loss = loss + self.params["lam"] * self.misalignment(x, y, grad)
        return StepOutput(loss, logits)

    def misalignment(self, x, y, grad):
        """1 − mean cosine between ``grad`` (fixed) and the input gradient at a uniform
        point of the ball, differentiable in the parameters; examples where either
        gradient is zero are left out (0 when none is left)."""
        eta = self.threat.project(self.threat.random_init(x), x)
        grad2 = input_gradient(self.model, x, y, eta, create_graph=True)
        g1, g2 = grad.detach().flatten(1), grad2.flatten(1)
        nonzero = ((g1.abs().amax(1) > 0) & (g2.detach().abs().amax(1) > 0)).to(g1.dtype)
        cos = F.cosine_similarity(g1, g2, dim=1, eps=1e-30)
        return ((1.0 - cos) * nonzero).sum() / nonzero.sum().clamp_min(1.0)
