import torch

from ..params import integer, resolve_step, step_size
from .base import StepOutput, Trainer, perturbation


class FGSMCheckpointTrainer(Trainer):
    """Kim, Lee & Lee (AAAI 2021), "Understanding Catastrophic Overfitting in Single-step
    Adversarial Training": FGSM-RS with a per-example step size chosen along c checkpoints.

    δ is FGSM-RS's perturbation (uniform start in the ε-ball, one step of α = 1.25·ε,
    projected). Along its direction the model is checked, in eval mode and without
    gradients, at the checkpoints x + (j/c)·δ for j = 0 … c−1; each example is trained
    on the first of them that it misclassifies, else on the full step x + δ. j = 0 is the
    clean point: an example already misclassified there is trained on clean (as in the
    reference code, which trains misclassified examples on x itself -- it judges them on
    the training-mode forward pass at the random start, this judges them at x in eval
    mode with the checkpoints). Only that one example is trained on: never the clean and
    the adversarial one together.

    Parameters: ``checkpoints`` (c, default 3: the authors' code and CIFAR-10
    experiments), ``alpha`` (default ``1.25eps``: α = 10/255 at ε = 8/255 in their
    code). Costs c extra inference-only forward passes per batch. Linf and L2 (the
    checkpoints lie on the segment from x to x + δ, inside the ball and the box).
    """

    name = "fgsm-ckpt"
    param_schema = {"checkpoints": integer(3, low=1, help="c: points checked along the step"),
                    "alpha": step_size("1.25eps", help="FGSM step α")}

    def step(self, x, y):
        x_adv, _ = self.adversarial_examples(x, y)
        logits = self.model(x_adv)
        return StepOutput(self.loss(logits, y), logits)

    def adversarial_examples(self, x, y):
        """(the inputs to train on, each example's fraction k/c of the FGSM step)."""
        alpha = resolve_step(self.params["alpha"], self.threat.eps)
        delta = perturbation(self.model, x, y, self.threat, 1, alpha, random_start=True)
        fraction = self.step_fractions(x, y, delta)
        return x + fraction.view(-1, *([1] * (x.dim() - 1))) * delta, fraction

    @torch.no_grad()
    def step_fractions(self, x, y, delta):
        """Per example, k/c for the smallest k in 0 … c−1 whose checkpoint x + (k/c)·δ is
        misclassified, else 1 (the full step). Vectorized over the batch."""
        c = int(self.params["checkpoints"])
        k = torch.full_like(y, c)
        was_training = self.model.training
        self.model.eval()
        try:
            for j in range(c):
                wrong = self.model(x + (j / c) * delta).argmax(1) != y
                k = torch.where(wrong & (k == c), j, k)
        finally:
            self.model.train(was_training)
        return k.to(x.dtype) / c
