"""advplug-mix: batch samplers for advplug -- mixed clean:adversarial ratios over an attack
pool (``mixed-ratio``) and mixed adversarial training over Linf and L2 (``mat-rand``,
``mat-max``)."""
from .samplers import MATSampler, MixedRatioSampler, clean_count, split_counts

__version__ = "0.1.0"

__all__ = ["MATSampler", "MixedRatioSampler", "clean_count", "split_counts", "__version__"]
