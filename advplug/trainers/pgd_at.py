from ..params import MADRY_STEP, flag, integer, resolve_step, step_size
from .base import StepOutput, Trainer, perturbation


class PGDTrainer(Trainer):
    """Madry et al. (2018): train on PGD examples, K steps from a random start.

    ``alpha`` defaults to 2.5·ε/K (Madry et al.'s rule), recomputed when a schedule
    changes ε or K.
    """

    name = "pgd-at"
    param_schema = {"steps": integer(10, low=1, help="PGD steps K"),
                    "alpha": step_size(MADRY_STEP, help="PGD step α (Madry et al.: 2.5·ε/K)"),
                    "random_start": flag(True, help="start from a uniform point in the ε-ball"),
                    "stop_when_fooled": flag(False, help="stop moving a sample once the model misclassifies it "
                                                     "(Wong et al.'s PGD baseline)")}

    def adversarial_batch(self, x, y):
        steps = int(self.params["steps"])
        alpha = resolve_step(self.params["alpha"], self.threat.eps, steps)
        delta = perturbation(self.model, x, y, self.threat, steps, alpha, self.params["random_start"],
                             stop_when_fooled=self.params["stop_when_fooled"])
        return x + delta

    def adversarial_loss(self, x, x_adv, y):
        logits = self.model(x_adv)
        return StepOutput(self.loss(logits, y), logits)
