"""Gaussian-noise training, the base classifier of randomized smoothing (Cohen, Rosenfeld &
Kolter, ICML 2019, "Certified Adversarial Robustness via Randomized Smoothing"; their
``code/train.py`` in locuslab/smoothing).

A model trained here is certified with ``advplug certify --model model.pt --sigma σ``
(:mod:`advplug.certify`), with the same σ as in training."""
from __future__ import annotations

import torch

from advplug.params import number
from advplug.trainers.base import StepOutput, Trainer


class GaussianNoiseTrainer(Trainer):
    """Gaussian data augmentation x + σ·N(0, I) (Cohen et al. 2019): the base model of randomized smoothing.

    Every step (the base class's ``step``: ``adversarial_batch`` then ``adversarial_loss``)
    draws fresh isotropic Gaussian noise of standard deviation ``sigma`` (pixel space of
    [0, 1] images, like ε), adds it to the batch without clipping to [0, 1] (as Cohen et al.
    train, and as :mod:`advplug.certify` samples), and minimizes the training cross-entropy
    (``Trainer.loss``, with the run's label smoothing) on the noisy inputs. The run's ε and
    norm play no part in training; certify the model with ``advplug certify --sigma`` equal
    to the training ``sigma``.

    ``adversarial`` stays True: the engine reads the flag only to label the running
    training accuracy ("train adv acc", on the inputs the loss saw, vs "train acc"), and
    the base class defines False as "never perturbs" (the clean baseline). These inputs
    are perturbed (randomly, not by an attack), so that accuracy is not a clean one; the
    engine still samples the clean accuracy separately (``train_clean_acc``).
    """

    name = "gaussian-noise"
    adversarial = True  # perturbs every input (not adversarially): see the class docstring
    param_schema = {"sigma": number(0.25, low=0, low_open=True,
                                    help="noise standard deviation σ in pixel space of [0, 1] images; certify "
                                         "with the same σ (Cohen et al.: 0.12, 0.25, 0.5, 1.0)")}

    def adversarial_batch(self, x, y):
        """x + σ·N(0, I), fresh noise, not clipped to [0, 1] (as Cohen et al.)."""
        return (x + torch.randn_like(x) * float(self.params["sigma"])).detach()

    def adversarial_loss(self, x, x_noisy, y):
        """The training cross-entropy (with the run's label smoothing) on the noisy inputs."""
        logits = self.model(x_noisy)
        return StepOutput(self.loss(logits, y), logits)
