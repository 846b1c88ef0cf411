"""Built-in trainers; plugins add more through ``advplug_register_trainers``."""
from .base import StepOutput, Trainer, input_gradient, perturbation
from .fgsm_ckpt import FGSMCheckpointTrainer
from .fgsm_ga import GradAlignTrainer
from .fgsm_rs import FGSMRSTrainer
from .free_at import FreeATTrainer
from .pgd_at import PGDTrainer
from .sampled import SampledTrainer
from .standard import StandardTrainer

BUILTIN_TRAINERS = [StandardTrainer, PGDTrainer, FGSMRSTrainer, FreeATTrainer, GradAlignTrainer,
                    FGSMCheckpointTrainer]  # registered by name; SampledTrainer is built for --sampler

__all__ = ["BUILTIN_TRAINERS", "StepOutput", "Trainer", "input_gradient", "perturbation",
           "FGSMCheckpointTrainer", "FGSMRSTrainer", "FreeATTrainer", "GradAlignTrainer", "PGDTrainer",
           "SampledTrainer", "StandardTrainer"]
