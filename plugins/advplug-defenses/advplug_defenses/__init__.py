"""advplug-defenses: the standard defenses beyond the headline plugins, on advplug's hooks --
trainers ``trades``, ``mart``, ``awp``, ``gaussian-noise`` and model transforms ``pni``,
``rse``, ``spectral-norm``."""

__version__ = "0.1.0"
