"""Built-in trainers; plugins add more through ``advplug_register_trainers``."""
from .base import StepOutput, Trainer, perturbation
from .fgsm_rs import FGSMRSTrainer
from .pgd_at import PGDTrainer
from .standard import StandardTrainer

BUILTIN_TRAINERS = [StandardTrainer, PGDTrainer, FGSMRSTrainer]

__all__ = ["BUILTIN_TRAINERS", "StepOutput", "Trainer", "perturbation",
           "FGSMRSTrainer", "PGDTrainer", "StandardTrainer"]
