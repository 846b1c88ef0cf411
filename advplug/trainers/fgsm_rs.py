from ..params import flag, resolve_step, step_size
from .base import StepOutput, Trainer, perturbation


class FGSMRSTrainer(Trainer):
    """Wong et al. (2020), "Fast is better than free": one FGSM step of size α = 1.25·ε
    from a uniform random start in the ε-ball (``alpha``, default ``1.25eps``)."""

    name = "fgsm-rs"
    param_schema = {"alpha": step_size("1.25eps", help="FGSM step α (Wong et al.: 1.25·ε)"),
                    "box_start": flag(True, help="clip the random start into [0, 1] before the gradient (Wong et al.'s "
                                             "CIFAR script does; their MNIST script does not)"),
                    "box_clip": flag(True, help="keep x + δ in [0, 1]; false: the ε-ball only (as FGSM-SDI's authors "
                                            "train), for comparing the two on equal terms")}

    def step(self, x, y):
        alpha = resolve_step(self.params["alpha"], self.threat.eps)
        delta = perturbation(self.model, x, y, self.threat, 1, alpha, random_start=True,
                             box_start=self.params["box_start"], box_clip=self.params["box_clip"])
        logits = self.model(x + delta)
        return StepOutput(self.loss(logits, y), logits)
