"""The advplug plugin module: the entry point ``curriculum = "advplug_curriculum.plugin"`` loads it."""
import advplug

from .schedules import SCHEDULES


@advplug.hookimpl
def advplug_register_schedules(registry):
    for cls in SCHEDULES:
        registry.add(cls.name, cls, description=(cls.__doc__ or "").strip().splitlines()[0])
