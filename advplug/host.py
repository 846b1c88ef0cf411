"""The plugin manager: finds plugins, calls hooks one plugin at a time, builds the registry.

A plugin that fails to import, or raises inside a hook, is recorded in ``host.errors``
(and shown by ``advplug plugins``) while every other plugin keeps working. A plugin that
registers a name another plugin registered before it (advplug's built-ins come first) is
disabled as a whole: none of its things are in the registry, and it is recorded too.
A hook implementation advplug cannot call (its name matches no hook, it takes an argument
the hook does not pass, or it is a wrapper) is refused and recorded as an error of its
plugin; the plugin's other implementations still register and run.
"""
from __future__ import annotations

import difflib
import importlib
import traceback
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import warn
from .registries import KINDS, PluginDisabled, Registrar, Registry

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
    disabled: bool = False  # a name clash in hook ``where`` disabled the whole plugin
    refused: bool = False  # the implementation ``where`` was refused at registration

    @property
    def failed_to_load(self) -> bool:
        return self.where == "import"

    @property
    def provides_nothing(self) -> bool:
        """The plugin failed to load or was disabled: none of its things are registered."""
        return self.failed_to_load or self.disabled

    @property
    def detail(self) -> str:
        """``where: error``, as ``advplug plugins`` lists it (a refusal names its hook)."""
        if self.refused:
            return self.error
        where = f"disabled in {self.where}" if self.disabled else self.where
        return f"{where}: {self.error}"

    def __str__(self):
        if self.disabled:
            return f"plugin {self.plugin!r} was disabled: {self.error}"
        if self.refused:
            return f"plugin {self.plugin!r}: {self.error}; that implementation is ignored"
        return f"plugin {self.plugin!r} failed in {self.where}: {self.error}"


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{at}"


_IMPL_DEFAULTS = {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                  "tryfirst": False, "trylast": False, "specname": None}


class _CheckedPluginManager(pluggy.PluginManager):
    """pluggy's manager, refusing the hook implementations advplug cannot call.

    Left to pluggy, an implementation whose name matches no hook (a typo) registers
    silently and is never called (``check_pending`` would report only the first one, of
    any plugin); one taking an argument the hook does not pass makes ``register`` raise,
    so the whole plugin fails to load; and a ``wrapper=True``/``hookwrapper=True`` one
    only works inside pluggy's own call loop, which the host does not use (it calls each
    implementation on its own, for fault isolation). ``parse_hookimpl_opts`` is pluggy's
    documented place to decide what is an implementation: answering None leaves that one
    out while the plugin's other implementations register as usual. Each refusal is kept
    in ``refused`` as ``(hook name, message)`` for the host to record against the plugin.
    """

    def __init__(self):
        super().__init__("advplug")
        self.refused = []

    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None:
            return None
        hook_name = opts.get("specname") or name
        problem = self._problem(plugin, name, hook_name, opts)
        if problem is None:
            return opts
        self.refused.append((hook_name, problem))
        return None

    def _problem(self, plugin, name, hook_name, opts):
        caller = getattr(self.hook, hook_name, None)
        spec = caller.spec if caller is not None else None
        if spec is None and not opts.get("optionalhook"):  # optionalhook: pluggy's opt-out
            known = [n for n, c in vars(self.hook).items() if isinstance(c, pluggy.HookCaller) and c.has_spec()]
            close = difflib.get_close_matches(hook_name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"hook {hook_name!r} matches no advplug hook{hint}"
        for flag in ("wrapper", "hookwrapper"):
            if opts.get(flag):
                return (f"hook {hook_name!r}: {flag}=True implementations are not supported: advplug "
                        "calls each plugin's implementation on its own for fault isolation; write a "
                        "plain @advplug.hookimpl")
        if spec is None:
            return None
        # pluggy's own reading of the signature, so this check and pluggy's never disagree
        impl = pluggy.HookImpl(plugin, "", getattr(plugin, name), {**_IMPL_DEFAULTS, **opts})
        unknown = [a for a in impl.argnames if a not in (*spec.argnames, *spec.kwargnames)]
        if unknown:
            return (f"hook {hook_name!r} takes argument(s) {', '.join(map(repr, unknown))} that the "
                    f"hook does not pass (it passes: {', '.join(spec.argnames)})")
        return None


@dataclass
class Host:
    """``Host()`` loads advplug's built-ins and every installed ``advplug`` entry point."""

    entry_points: list | None = None  # None: discover installed ones
    plugins: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    def __post_init__(self):
        self.pm = _CheckedPluginManager()
        self.pm.add_hookspecs(hookspecs)
        from . import builtins, lifecycle

        self._register(builtins, BUILTIN_PLUGIN)
        self.plugins[BUILTIN_PLUGIN] = PluginInfo(BUILTIN_PLUGIN, _version("advplug"), "built-in")
        for cls in lifecycle.PLUGINS:  # the run's lifecycle (metrics, guard, keep-best, plot): plugins too
            self._register(cls(), cls.name)
            self.plugins[cls.name] = PluginInfo(cls.name, _version("advplug"), "built-in (lifecycle)")
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
            self._register(plugin, ep.name)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            info.error = _describe(exc)
            self.errors.append(PluginError(ep.name, "import", info.error))

    def register(self, plugin, name: str, version: str = "unknown"):
        """Register a plugin object in-process (tests, notebooks); resets the registry."""
        self._register(plugin, name)
        self.plugins[name] = PluginInfo(name, version, "registered in-process")
        self._registry = None

    def _register(self, plugin, name):
        """Register with pluggy; record each implementation it refused as an error."""
        self.pm.refused = []
        self.pm.register(plugin, name=name)
        self.errors += [PluginError(name, hook, msg, refused=True) for hook, msg in self.pm.refused]

    # -- calling hooks ----------------------------------------------------------------

    def _impls(self, hook_name):
        # pluggy calls implementations last-registered first (respecting tryfirst/trylast);
        # wrappers never get here: _CheckedPluginManager refuses them at registration
        return reversed(getattr(self.pm.hook, hook_name).get_hookimpls())

    def _call_one(self, impl, hook_name, kwargs):
        args = {name: kwargs[name] for name in impl.argnames}
        try:
            return True, impl.function(**args)
        except PluginDisabled:
            return False, None  # the registry disabled the plugin; the host reports it once
        except Exception as exc:  # noqa: BLE001
            err = PluginError(impl.plugin_name, hook_name, _describe(exc))
            self.errors.append(err)
            warn(err)
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
        """Everything the plugins registered, built on first use (see ``_build_registry``)."""
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        """Call every registration hook, kind by kind, in plugin registration order.

        A plugin whose name clashes with an earlier plugin's is disabled by the registry:
        its hooks are not called any more and it is recorded once in ``errors``
        (``disabled=True``, ``where`` = the hook that clashed). The registry also learns
        which plugins failed to import, to name them when a name is unknown.
        """
        self.errors = [e for e in self.errors if e.refused or not e.where.startswith("advplug_register_")]
        registry = Registry()
        for err in self.errors:
            if err.failed_to_load:
                registry.mark_failed_to_load(err.plugin, err.error)
        for kind, (hook_name, _noun) in KINDS.items():
            for impl in self._registration_order(hook_name):
                if not registry.is_disabled(impl.plugin_name):
                    self._call_one(impl, hook_name, {"registry": Registrar(registry, kind, impl.plugin_name)})
        self.errors += [PluginError(p.plugin, KINDS[p.disabled_in][0], p.error, disabled=True)
                        for p in registry.disabled()]
        return registry

    def _registration_order(self, hook_name):
        """The hook's implementations in the order their plugins were registered: built-ins
        first, then entry points as discovered, whatever tryfirst/trylast say; so in a
        name clash the plugin registered later is the one disabled."""
        rank = {name: i for i, (name, _plugin) in enumerate(self.pm.list_name_plugin())}
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        return sorted(impls, key=lambda impl: rank[impl.plugin_name])

    def describe(self) -> list:
        """One dict per plugin: name, version, source, what it registered, its errors
        (``where: error``) and whether it is disabled (then it registered nothing)."""
        by_plugin = self.registry.by_plugin()
        rows = []
        for name, info in self.plugins.items():
            errors = [e for e in self.errors if e.plugin == name]
            rows.append({
                "name": name,
                "version": info.version,
                "source": info.source,
                "registered": {k: sorted(v) for k, v in by_plugin.get(name, {}).items()},
                "errors": [e.detail for e in errors],
                "disabled": any(e.disabled for e in errors),
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
