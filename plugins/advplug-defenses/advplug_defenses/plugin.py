"""The advplug plugin module: the entry point ``defenses = "advplug_defenses.plugin"`` loads it."""
import advplug


@advplug.hookimpl
def advplug_register_trainers(registry):
    from .smoothing import GaussianNoiseTrainer
    from .trainers import TRAINERS

    for cls in (*TRAINERS, GaussianNoiseTrainer):
        registry.add(cls.name, cls, description=(cls.__doc__ or "").strip().splitlines()[0])


@advplug.hookimpl
def advplug_register_model_transforms(registry):
    from .transforms import TRANSFORMS

    for name, (fn, description) in TRANSFORMS.items():
        registry.add(name, fn, description=description)
