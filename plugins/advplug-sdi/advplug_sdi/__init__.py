"""advplug-sdi: FGSM-SDI (Jia et al., IEEE TIP 2022) as an advplug trainer plugin."""
from .generator import InitGenerator
from .trainer import FGSMSDITrainer

__version__ = "0.1.0"

__all__ = ["FGSMSDITrainer", "InitGenerator", "__version__"]
