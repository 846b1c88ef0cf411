"""The plugin manager: finds plugins, calls hooks one plugin at a time, builds the registry.

A plugin that fails to import, or raises inside a hook, is recorded in ``host.errors``
(and shown by ``advplug plugins``) while every other plugin keeps working.
"""
from __future__ import annotations

import importlib
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs
from .registries import KINDS, Registrar, Registry

ENTRY_POINT_GROUP = "advplug"
BUILTIN_PLUGIN = "advplug"


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "built-in" or "entry point <value>"
    error: str | None = None


@dataclass
class PluginError:
    plugin: str
    where: str  # "import" or a hook name
    error: str

    def __str__(self):
        return f"plugin {self.plugin!r} failed in {self.where}: {self.error}"


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{at}"


@dataclass
class Host:
    """``Host()`` loads advplug's built-ins and every installed ``advplug`` entry point."""

    entry_points: list | None = None  # None: discover installed ones
    plugins: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    def __post_init__(self):
        self.pm = pluggy.PluginManager("advplug")
        self.pm.add_hookspecs(hookspecs)
        from . import builtins

        self.pm.register(builtins, name=BUILTIN_PLUGIN)
        self.plugins[BUILTIN_PLUGIN] = PluginInfo(BUILTIN_PLUGIN, _version("advplug"), "built-in")
        eps = self.entry_points
        if eps is None:
            eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        for ep in eps:
            self._load(ep)
        self._registry = None

    def _load(self, ep):
        dist = getattr(ep, "dist", None)
        version = getattr(dist, "version", None) or "unknown"
        info = PluginInfo(ep.name, version, f"entry point {ep.value}")
        self.plugins[ep.name] = info
        try:
            plugin = ep.load()
            if isinstance(plugin, str):  # tolerate "module" values that load to a name
                plugin = importlib.import_module(plugin)
            self.pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            info.error = _describe(exc)
            self.errors.append(PluginError(ep.name, "import", info.error))

    def register(self, plugin, name: str, version: str = "unknown"):
        """Register a plugin object in-process (tests, notebooks); resets the registry."""
        self.pm.register(plugin, name=name)
        self.plugins[name] = PluginInfo(name, version, "registered in-process")
        self._registry = None

    # -- calling hooks ----------------------------------------------------------------

    def _impls(self, hook_name):
        # pluggy calls implementations last-registered first (respecting tryfirst/trylast)
        return reversed(getattr(self.pm.hook, hook_name).get_hookimpls())

    def _call_one(self, impl, hook_name, kwargs):
        args = {name: kwargs[name] for name in impl.argnames}
        try:
            return True, impl.function(**args)
        except Exception as exc:  # noqa: BLE001
            from .errors import AdvplugError

            if isinstance(exc, AdvplugError) and hook_name.startswith("advplug_register_"):
                raise  # e.g. a name clash: the user must act on it
            err = PluginError(impl.plugin_name, hook_name, _describe(exc))
            self.errors.append(err)
            print(f"advplug: warning: {err}", file=sys.stderr)
            return False, None

    def call(self, hook_name: str, **kwargs) -> list:
        """Call every implementation of a hook, isolating failures; return the results."""
        results = []
        for impl in self._impls(hook_name):
            ok, value = self._call_one(impl, hook_name, kwargs)
            if ok and value is not None:
                results.append(value)
        return results

    def call_first(self, hook_name: str, **kwargs):
        """Like ``call`` but stop at the first non-None result (firstresult hooks)."""
        for impl in self._impls(hook_name):
            ok, value = self._call_one(impl, hook_name, kwargs)
            if ok and value is not None:
                return value
        return None

    # -- the registry -----------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self.errors = [e for e in self.errors if not e.where.startswith("advplug_register_")]
            registry = Registry()
            for kind, (hook_name, _noun) in KINDS.items():
                for impl in self._impls(hook_name):
                    self._call_one(impl, hook_name, {"registry": Registrar(registry, kind, impl.plugin_name)})
            self._registry = registry
        return self._registry

    def describe(self) -> list:
        """One dict per plugin: name, version, source, error, and what it registered."""
        by_plugin = self.registry.by_plugin()
        rows = []
        for name, info in self.plugins.items():
            errors = [f"{e.where}: {e.error}" for e in self.errors if e.plugin == name]
            rows.append({
                "name": name,
                "version": info.version,
                "source": info.source,
                "registered": {k: sorted(v) for k, v in by_plugin.get(name, {}).items()},
                "errors": errors,
            })
        return rows


def _version(dist_name: str) -> str:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return "unknown"


_HOST: Host | None = None


def get_host() -> Host:
    """The process-wide host (plugins are discovered once)."""
    global _HOST
    if _HOST is None:
        _HOST = Host()
    return _HOST


def reset_host(host: Host | None = None) -> None:
    """Replace the process-wide host (tests use this with fake entry points)."""
    global _HOST
    _HOST = host
