from .base import StepOutput, Trainer


class StandardTrainer(Trainer):
    """Empirical risk minimization on clean inputs: the non-robust baseline."""

    name = "standard"
    adversarial = False
    param_schema = {}

    def step(self, x, y):
        logits = self.model(x)
        return StepOutput(self.loss(logits, y), logits, clean_logits=logits)
