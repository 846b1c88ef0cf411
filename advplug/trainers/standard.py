import torch.nn.functional as F

from .base import StepOutput, Trainer


class StandardTrainer(Trainer):
    """Empirical risk minimization on clean inputs: the non-robust baseline."""

    name = "standard"
    adversarial = False
    param_schema = {}

    def step(self, x, y):
        logits = self.model(x)
        return StepOutput(F.cross_entropy(logits, y), logits, clean_logits=logits)
