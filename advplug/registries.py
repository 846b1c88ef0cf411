"""Named things that plugins register, one table per kind."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .errors import AdvplugError

#: kind -> (hook name, singular noun used in messages)
KINDS = {
    "attacks": ("advplug_register_attacks", "attack"),
    "trainers": ("advplug_register_trainers", "trainer"),
    "schedules": ("advplug_register_schedules", "schedule"),
    "samplers": ("advplug_register_samplers", "sampler"),
    "model_transforms": ("advplug_register_model_transforms", "model transform"),
    "datasets": ("advplug_register_datasets", "dataset"),
    "models": ("advplug_register_models", "model"),
}


@dataclass
class Entry:
    name: str
    obj: object
    kind: str
    plugin: str
    description: str = ""
    aliases: tuple = ()


@dataclass
class Registry:
    """All registered things: ``registry.get("trainers", "pgd-at")``."""

    tables: dict = field(default_factory=lambda: {kind: {} for kind in KINDS})
    aliases: dict = field(default_factory=lambda: {kind: {} for kind in KINDS})

    def add(self, kind: str, name: str, obj, plugin: str, description: str = "", aliases=()):
        name = str(name)
        for key in (name, *aliases):
            owner = self._owner(kind, key)
            if owner is not None:
                noun = KINDS[kind][1]
                raise AdvplugError(
                    f"{noun} {key!r} is registered by both plugin {owner!r} and plugin "
                    f"{plugin!r}; uninstall or rename one of them"
                )
        self.tables[kind][name] = Entry(name, obj, kind, plugin, description, tuple(aliases))
        for alias in aliases:
            self.aliases[kind][alias] = name

    def _owner(self, kind, key):
        if key in self.tables[kind]:
            return self.tables[kind][key].plugin
        if key in self.aliases[kind]:
            return self.tables[kind][self.aliases[kind][key]].plugin
        return None

    def entry(self, kind: str, name: str) -> Entry:
        table = self.tables[kind]
        name = self.aliases[kind].get(name, name)
        if name in table:
            return table[name]
        noun = KINDS[kind][1]
        known = sorted([*table, *self.aliases[kind]])
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        head = str(name).split(":")[0]
        if ":" in str(name) and head in table:
            hint = f" ({head!r} exists; give its parameters as {head}:key=value)"
        available = ", ".join(sorted(table)) or "none"
        raise AdvplugError(
            f"unknown {noun} {name!r}{hint}; available: {available} "
            f"(`advplug plugins` lists what each plugin registers)"
        )

    def get(self, kind: str, name: str):
        return self.entry(kind, name).obj

    def names(self, kind: str) -> list:
        return sorted(self.tables[kind])

    def by_plugin(self) -> dict:
        """plugin -> kind -> [names]."""
        out: dict = {}
        for kind, table in self.tables.items():
            for entry in table.values():
                out.setdefault(entry.plugin, {}).setdefault(kind, []).append(entry.name)
        return out


class Registrar:
    """What a registration hook receives: adds entries of one kind for one plugin."""

    def __init__(self, registry: Registry, kind: str, plugin: str):
        self._registry, self.kind, self.plugin = registry, kind, plugin

    def add(self, name: str, obj, *, description: str = "", aliases=()):
        self._registry.add(self.kind, name, obj, self.plugin, description, aliases)
        return obj

    __call__ = add
