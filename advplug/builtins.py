"""advplug's own plugin: built-ins register through the same hooks as third parties."""
from .hookspecs import hookimpl


@hookimpl
def advplug_register_models(registry):
    from .models import BUILTIN_MODELS

    for name, (factory, description) in BUILTIN_MODELS.items():
        registry.add(name, factory, description=description)


@hookimpl
def advplug_register_datasets(registry):
    from .data import BUILTIN_DATASETS

    for name, spec in BUILTIN_DATASETS.items():
        registry.add(name, spec)


@hookimpl
def advplug_register_trainers(registry):
    from .trainers import BUILTIN_TRAINERS

    for cls in BUILTIN_TRAINERS:
        registry.add(cls.name, cls, description=(cls.__doc__ or "").strip().splitlines()[0])


@hookimpl
def advplug_register_attacks(registry):
    from .attacks import art_adapters, autoattack_adapter, torchattacks_adapters

    torchattacks_adapters.register(registry)
    art_adapters.register(registry)
    autoattack_adapter.register(registry)
