"""The advplug plugin module: the entry point ``nes = "advplug_nes.plugin"`` loads it."""
import advplug

from .attack import nes


@advplug.hookimpl
def advplug_register_attacks(registry):
    registry.add("nes", nes, description=nes.attack_info.description)
