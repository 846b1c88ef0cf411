"""Hook implementations the host cannot call are refused, one error per implementation, of
their plugin only: a name that matches no hook, an argument the hook does not pass, and
wrapper=True / hookwrapper=True. The plugin's other hooks and every other plugin still work."""
import json
import sys
from types import SimpleNamespace

import pytest

import advplug
from advplug import cli
from advplug.host import Host, reset_host


TYPO_PLUGIN = '''
    import advplug

    CALLED = []


    @advplug.hookimpl
    def advplug_register_trainer(registry):  # the final "s" is missing
        CALLED.append("typo")


    @advplug.hookimpl
    def advplug_register_attacks(registry):
        registry.add("typo-plugin-attack", lambda model, threat: (lambda x, y: x))
'''

GOOD_PLUGIN = '''
    import advplug


    class Noisy:
        """A stand-in trainer: the registry stores what it is given."""


    @advplug.hookimpl
    def advplug_register_trainers(registry):
        registry.add("hv-noisy", Noisy)
'''

TYPO_MSG = ("hook 'advplug_register_trainer' matches no advplug hook "
            "(did you mean 'advplug_register_trainers'?)")


def _rows(host):
    return {r["name"]: r for r in host.describe()}


def _assert_builtins_fine(host):
    row = _rows(host)["advplug"]
    assert row["errors"] == [] and not row["disabled"]
    assert "pgd-at" in host.registry.names("trainers")


def test_misspelled_hook_is_an_error_of_its_plugin_whose_other_hooks_still_work(plugin_module):
    typo = plugin_module("typo-plugin", TYPO_PLUGIN)
    good = plugin_module("good-plugin", GOOD_PLUGIN)
    host = Host(entry_points=[typo, good])
    rows = _rows(host)
    assert rows["typo-plugin"]["errors"] == [TYPO_MSG]
    assert rows["typo-plugin"]["disabled"] is False
    assert rows["typo-plugin"]["registered"] == {"attacks": ["typo-plugin-attack"]}
    assert rows["good-plugin"]["errors"] == [] and rows["good-plugin"]["registered"] == {"trainers": ["hv-noisy"]}
    _assert_builtins_fine(host)
    [err] = host.errors
    assert (err.plugin, err.where, err.refused, err.provides_nothing) == \
        ("typo-plugin", "advplug_register_trainer", True, False)
    assert str(err) == f"plugin 'typo-plugin': {TYPO_MSG}; that implementation is ignored"
    assert not hasattr(host.pm.hook, "advplug_register_trainer")  # not even an orphan hook
    assert sys.modules[typo.value].CALLED == []

    host.register(object(), name="late")  # resets the registry: the error must survive the rebuild
    assert _rows(host)["typo-plugin"]["errors"] == [TYPO_MSG]


def test_advplug_plugins_lists_the_misspelled_hook(plugin_module, capsys):
    reset_host(Host(entry_points=[plugin_module("typo-plugin", TYPO_PLUGIN)]))
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    [error_line] = [line for line in out.splitlines() if "ERROR" in line]
    assert error_line.strip() == f"ERROR {TYPO_MSG}"
    assert "typo-plugin-attack" in out and "pgd-at" in out

    assert cli.main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["typo-plugin"]["errors"] == [TYPO_MSG] and rows["advplug"]["errors"] == []


def test_a_name_far_from_every_hook_gets_no_suggestion():
    class Helper:
        @advplug.hookimpl
        def on_batch_end(self, batch):
            raise AssertionError("never called")

    host = Host(entry_points=[])
    host.register(Helper(), name="helper")
    assert _rows(host)["helper"]["errors"] == ["hook 'on_batch_end' matches no advplug hook"]


def test_wrong_argument_name_is_a_clear_error_of_its_plugin(plugin_module):
    source = '''
        import advplug


        @advplug.hookimpl
        def advplug_register_attacks(reg):
            reg.add("never", None)


        @advplug.hookimpl
        def advplug_register_trainers(registry):
            registry.add("wrong-args-trainer", object)
    '''
    bad = plugin_module("wrong-args", source)
    good = plugin_module("good-plugin", GOOD_PLUGIN)
    host = Host(entry_points=[bad, good])
    rows = _rows(host)
    assert rows["wrong-args"]["errors"] == [
        "hook 'advplug_register_attacks' takes argument(s) 'reg' that the hook does not pass "
        "(it passes: registry)"]
    [err] = host.errors
    assert err.where == "advplug_register_attacks" and not err.failed_to_load  # the plugin loaded
    assert rows["wrong-args"]["registered"] == {"trainers": ["wrong-args-trainer"]}
    assert "never" not in host.registry.names("attacks")
    assert rows["good-plugin"]["errors"] == [] and rows["good-plugin"]["registered"] == {"trainers": ["hv-noisy"]}
    _assert_builtins_fine(host)


WRAPPER_MSG = ("hook 'advplug_train_start': {flag}=True implementations are not supported: advplug "
               "calls each plugin's implementation on its own for fault isolation; write a plain "
               "@advplug.hookimpl")


@pytest.mark.parametrize("flag", ["wrapper", "hookwrapper"])
def test_wrappers_are_refused_and_never_called(flag, tmp_path):
    ran = []

    class Wrapping:
        @advplug.hookimpl(**{flag: True})
        def advplug_train_start(self, run):
            ran.append("wrapper")
            yield

        @advplug.hookimpl
        def advplug_train_end(self, run):
            return "wrapping plugin's plain hook"

    class Plain:
        @advplug.hookimpl
        def advplug_train_start(self, run):
            return "plain"

    host = Host(entry_points=[])
    host.register(Wrapping(), name="wrapping")
    host.register(Plain(), name="plain")
    assert _rows(host)["wrapping"]["errors"] == [WRAPPER_MSG.format(flag=flag)]
    # a run the built-in lifecycle plugins (metrics writer, guard) can read; they return nothing
    run = SimpleNamespace(config=SimpleNamespace(co_guard=None), out_dir=tmp_path, history=[])
    assert host.call("advplug_train_start", run=run) == ["plain"]  # no generator in the results
    assert host.pm.hook.advplug_train_start(run=run) == ["plain"]
    assert ran == []
    assert host.call("advplug_train_end", run=run) == ["wrapping plugin's plain hook"]
    assert [e.plugin for e in host.errors] == ["wrapping"]
    _assert_builtins_fine(host)


def test_a_correct_plugin_has_no_errors(plugin_module):
    class Lifecycle:
        """Methods (self is not a hook argument), a subset of the arguments, a default."""

        @advplug.hookimpl
        def advplug_train_start(self, run):
            pass

        @advplug.hookimpl
        def advplug_epoch_end(self, metrics, extra=None):
            metrics["lifecycle"] = 1

        @advplug.hookimpl(specname="advplug_should_stop", tryfirst=True)
        def never_stop(self, epoch):
            return None

    host = Host(entry_points=[plugin_module("good-plugin", GOOD_PLUGIN)])
    host.register(Lifecycle(), name="lifecycle")
    assert host.errors == []
    assert all(r["errors"] == [] for r in host.describe())
    metrics = {}
    host.call("advplug_epoch_end", run=None, epoch=1, metrics=metrics)
    assert metrics == {"lifecycle": 1}
    assert host.call_first("advplug_should_stop", run=None, epoch=1, metrics={}) is None
    assert "hv-noisy" in host.registry.names("trainers")
