"""advplug-nes: the NES black-box attack (Ilyas et al. 2018) as an advplug plugin."""
from .attack import NESAttack, nes

__version__ = "0.1.0"

__all__ = ["NESAttack", "nes", "__version__"]
