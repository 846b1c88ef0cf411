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

    @property
    def schema(self) -> dict | None:
        """The parameters it declares (``{name: Param}``), or None if it declares none."""
        from .params import schema_of

        return schema_of(self.obj)

    def check(self, params: dict | None) -> dict:
        """``params`` checked against the schema, defaults filled in (one
        :class:`AdvplugError` naming this thing); unchecked when it declares no schema."""
        from .params import check_params

        schema = self.schema
        return dict(params or {}) if schema is None else check_params(
            f"{KINDS[self.kind][1]} {self.name!r}", params or {}, schema)


class PluginDisabled(AdvplugError):
    """Raised into a registration hook whose plugin is disabled (one of its names clashed).

    The registry has already removed the plugin's entries and recorded why in
    ``Registry.unavailable``; the host expects this exception and reports the plugin once.
    """


@dataclass
class UnavailablePlugin:
    """A plugin whose things are missing from the registry, and why.

    ``disabled_in`` is None when the plugin failed to load (nothing is known of what it
    would have registered); otherwise it is the kind whose registration clashed, and
    ``names`` maps each kind to every name and alias the plugin registered or tried to
    register before it was disabled (all removed from the registry).
    """

    plugin: str
    error: str
    disabled_in: str | None = None
    names: dict = field(default_factory=dict)

    @property
    def disabled(self) -> bool:
        return self.disabled_in is not None

    def had(self, kind: str, name: str) -> bool:
        return name in self.names.get(kind, ())

    def may_provide_hint(self) -> str:
        """``; plugin 'y' failed to load (ImportError: ...), it may provide it``."""
        what = "was disabled" if self.disabled else "failed to load"
        return f"; plugin {self.plugin!r} {what} ({self.error}), it may provide it"


@dataclass
class Registry:
    """All registered things: ``registry.get("trainers", "pgd-at")``.

    A name (or alias) belongs to the first plugin that registers it in its kind. A later
    plugin registering it again is disabled as a whole: all its entries, of every kind,
    are removed, it can add nothing more, and ``unavailable`` records why, so that
    looking up one of its names says so instead of "unknown".
    """

    tables: dict = field(default_factory=lambda: {kind: {} for kind in KINDS})
    aliases: dict = field(default_factory=lambda: {kind: {} for kind in KINDS})
    unavailable: dict = field(default_factory=dict)  # plugin -> UnavailablePlugin

    def add(self, kind: str, name: str, obj, plugin: str, description: str = "", aliases=()):
        """Register ``name`` (and ``aliases``) for ``plugin``.

        Raises :class:`PluginDisabled` if ``plugin`` is disabled, or becomes disabled
        because one of the keys is already registered in this kind.
        """
        name = str(name)
        self._refuse_disabled(plugin)
        for key in (name, *aliases):
            owner = self._owner(kind, key)
            if owner is not None:
                error = _clash_message(kind, key, owner, plugin)
                self.disable(plugin, kind, error, tried=(name, *aliases))
                raise PluginDisabled(error)
        self.tables[kind][name] = Entry(name, obj, kind, plugin, description, tuple(aliases))
        for alias in aliases:
            self.aliases[kind][alias] = name

    def _refuse_disabled(self, plugin):
        if self.is_disabled(plugin):
            raise PluginDisabled(f"plugin {plugin!r} was disabled: {self.unavailable[plugin].error}")

    def _owner(self, kind, key):
        if key in self.tables[kind]:
            return self.tables[kind][key].plugin
        if key in self.aliases[kind]:
            return self.tables[kind][self.aliases[kind][key]].plugin
        return None

    # -- plugins that are missing ---------------------------------------------------------

    def mark_failed_to_load(self, plugin: str, error: str):
        """Remember that ``plugin`` failed to import: unknown names will mention it."""
        self.unavailable[plugin] = UnavailablePlugin(plugin, error)

    def disable(self, plugin: str, kind: str, error: str, tried=()):
        """Remove every entry of ``plugin`` (all kinds) and refuse its later additions.

        ``kind`` is where it failed; ``tried`` the names of that kind it was adding.
        """
        names = {kind: set(tried)}
        for table_kind, table in self.tables.items():
            for entry in [e for e in table.values() if e.plugin == plugin]:
                del table[entry.name]
                for alias in entry.aliases:
                    del self.aliases[table_kind][alias]
                names.setdefault(table_kind, set()).update((entry.name, *entry.aliases))
        self.unavailable[plugin] = UnavailablePlugin(plugin, error, kind, names)

    def is_disabled(self, plugin: str) -> bool:
        return plugin in self.unavailable and self.unavailable[plugin].disabled

    def disabled(self) -> list:
        """The :class:`UnavailablePlugin` records of disabled plugins, in disabling order."""
        return [p for p in self.unavailable.values() if p.disabled]

    # -- lookups --------------------------------------------------------------------------

    def entry(self, kind: str, name: str) -> Entry:
        """The entry called ``name`` (or an alias of it); an :class:`AdvplugError` says
        why it is missing: which disabled plugin had it, else what is available and which
        failed or disabled plugins might provide it."""
        table = self.tables[kind]
        name = self.aliases[kind].get(name, name)
        if name in table:
            return table[name]
        raise AdvplugError(self._disabled_message(kind, str(name)) or self._unknown_message(kind, str(name)))

    def _disabled_message(self, kind, name):
        for plugin in self.disabled():
            if plugin.had(kind, name):
                return (f"{KINDS[kind][1]} {name!r} is not available: "
                        f"plugin {plugin.plugin!r} was disabled: {plugin.error}")
        return None

    def _unknown_message(self, kind, name):
        table = self.tables[kind]
        known = sorted([*table, *self.aliases[kind]])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        head = name.split(":")[0]
        if ":" in name and head in table:
            hint = f" ({head!r} exists; give its parameters as {head}:key=value)"
        available = ", ".join(sorted(table)) or "none"
        missing = "".join(p.may_provide_hint() for p in self.unavailable.values())
        return (
            f"unknown {KINDS[kind][1]} {name!r}{hint}; available: {available} "
            f"(`advplug plugins` lists what each plugin registers){missing}"
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


def _clash_message(kind, key, owner, plugin) -> str:
    noun = KINDS[kind][1]
    if owner == plugin:
        return f"{noun} {key!r} is registered twice by plugin {plugin!r}; register each name once"
    return (f"{noun} {key!r} is registered by both plugin {owner!r} and plugin {plugin!r}; "
            f"uninstall or rename one of them")


class Registrar:
    """What a registration hook receives: adds entries of one kind for one plugin."""

    def __init__(self, registry: Registry, kind: str, plugin: str):
        self._registry, self.kind, self.plugin = registry, kind, plugin

    def add(self, name: str, obj, *, description: str = "", aliases=()):
        self._registry.add(self.kind, name, obj, self.plugin, description, aliases)
        return obj

    __call__ = add
