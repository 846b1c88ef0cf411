"""The plugin host: built-ins through the hooks, entry-point discovery with fault
isolation, name clashes, lifecycle calls, ``advplug plugins`` and registry errors."""
import json
import sys
from types import SimpleNamespace

import pytest

import advplug
from advplug import cli
from advplug.errors import AdvplugError
from advplug.host import Host, get_host, reset_host
from advplug.registries import KINDS, Registry

BUILTIN_TRAINERS = {"standard", "pgd-at", "fgsm-rs", "free-at", "fgsm-ga", "fgsm-ckpt"}
BUILTIN_MODELS = {"mnist-cnn", "preact-resnet18", "resnet18", "wrn-34-10", "wong2020-mnist", "madry2018-mnist"}
BUILTIN_DATASETS = {"mnist", "cifar10", "cifar100", "svhn"}


GOOD_PLUGIN = '''
    import advplug
    import torch.nn.functional as F
    from advplug.trainers import StepOutput, Trainer


    class NoisyTrainer(Trainer):
        """Trains on uniform noise in the ball (a test plugin)."""

        name = "noisy"
        param_schema = {"scale": 1.0}

        def step(self, x, y):
            delta = self.threat.project(self.threat.random_init(x) * self.params["scale"], x)
            logits = self.model(x + delta)
            return StepOutput(F.cross_entropy(logits, y), logits)


    @advplug.hookimpl
    def advplug_register_trainers(registry):
        registry.add("noisy", NoisyTrainer, description="noise in the ball")
'''

IMPORT_FAILS = '''
    import advplug
    raise RuntimeError("plugin exploded at import: missing CUDA extension")
'''

HOOK_FAILS = '''
    import advplug


    @advplug.hookimpl
    def advplug_register_trainers(registry):
        raise ValueError("registration went wrong in hook")
'''

SAME_NAME = '''
    import advplug
    from advplug.trainers import Trainer


    class Clash(Trainer):
        """Another trainer called noisy."""
        name = "noisy"


    @advplug.hookimpl
    def advplug_register_trainers(registry):
        registry.add("noisy", Clash)
'''

# registers an attack, then a trainer, then clashes on "noisy"; the rest must never happen
CLASH_AFTER_OTHER_THINGS = '''
    import advplug
    from advplug.trainers import Trainer

    calls = []


    class Extra(Trainer):
        """A trainer registered before the clash."""
        name = "clash-extra"


    @advplug.hookimpl
    def advplug_register_attacks(registry):
        calls.append("attacks")
        registry.add("clash-attack", lambda model, threat: None, aliases=("ca",))


    @advplug.hookimpl
    def advplug_register_trainers(registry):
        calls.append("trainers")
        registry.add("clash-extra", Extra)
        registry.add("noisy", Extra, aliases=("clash-noisy",))
        registry.add("after-clash", Extra)


    @advplug.hookimpl
    def advplug_register_models(registry):
        calls.append("models")
        registry.add("clash-model", lambda: None)
'''


# -- built-ins ---------------------------------------------------------------------

def test_builtins_are_registered_through_the_hooks():
    host = Host(entry_points=[])
    reg = host.registry
    assert BUILTIN_TRAINERS <= set(reg.names("trainers"))
    assert BUILTIN_MODELS <= set(reg.names("models"))
    assert BUILTIN_DATASETS <= set(reg.names("datasets"))
    for kind, names in (("trainers", BUILTIN_TRAINERS), ("models", BUILTIN_MODELS),
                        ("datasets", BUILTIN_DATASETS)):
        for name in names:
            entry = reg.entry(kind, name)
            assert entry.plugin == "advplug", (kind, name, entry.plugin)
            assert entry.kind == kind and entry.name == name
    # the hook is the only path: advplug's built-in plugin implements exactly these hooks
    impls = {impl.plugin_name for impl in host.pm.hook.advplug_register_trainers.get_hookimpls()}
    assert impls == {"advplug"}
    assert reg.get("trainers", "pgd-at").name == "pgd-at"
    assert host.errors == []


def test_public_registry_uses_the_process_wide_host():
    import advplug.host  # noqa: F401  (imported by any use of advplug)

    assert callable(advplug.registry), f"advplug.registry is {advplug.registry!r}"
    assert advplug.registry() is get_host().registry
    assert "pgd-at" in advplug.registry().names("trainers")


# -- entry-point discovery -----------------------------------------------------------

def test_good_plugin_registers_a_trainer(plugin_module):
    ep = plugin_module("noisy-plugin", GOOD_PLUGIN)
    host = Host(entry_points=[ep])
    assert host.errors == []
    entry = host.registry.entry("trainers", "noisy")
    assert entry.plugin == "noisy-plugin"
    assert entry.description == "noise in the ball"
    from advplug.trainers import Trainer

    assert issubclass(entry.obj, Trainer)
    # built-ins are still there, from advplug
    assert BUILTIN_TRAINERS <= set(host.registry.names("trainers"))
    rows = {r["name"]: r for r in host.describe()}
    lifecycle = {"advplug.metrics", "advplug.plot", "advplug.keep-best", "advplug.co-guard"}
    assert set(rows) == {"advplug", *lifecycle, "noisy-plugin"}
    assert all(rows[name]["source"] == "built-in (lifecycle)" and not rows[name]["registered"] for name in lifecycle)
    assert rows["noisy-plugin"]["registered"] == {"trainers": ["noisy"]}
    assert rows["noisy-plugin"]["errors"] == []
    assert ep.value in rows["noisy-plugin"]["source"]
    assert "noisy" not in rows["advplug"]["registered"]["trainers"]


def test_plugin_that_fails_to_import_is_isolated(plugin_module):
    good = plugin_module("noisy-plugin", GOOD_PLUGIN)
    bad = plugin_module("broken-plugin", IMPORT_FAILS)
    host = Host(entry_points=[bad, good])
    assert len(host.errors) == 1
    err = host.errors[0]
    assert err.plugin == "broken-plugin" and err.where == "import"
    assert "RuntimeError" in err.error and "plugin exploded at import" in err.error
    rows = {r["name"]: r for r in host.describe()}
    assert len(rows["broken-plugin"]["errors"]) == 1
    assert "plugin exploded at import" in rows["broken-plugin"]["errors"][0]
    assert rows["broken-plugin"]["registered"] == {}
    # the others still work
    assert host.registry.entry("trainers", "noisy").plugin == "noisy-plugin"
    assert BUILTIN_TRAINERS <= set(host.registry.names("trainers"))
    assert rows["advplug"]["errors"] == [] and rows["noisy-plugin"]["errors"] == []


def test_plugin_whose_registration_hook_raises_is_isolated(plugin_module, capsys):
    bad = plugin_module("bad-hook", HOOK_FAILS)
    good = plugin_module("noisy-plugin", GOOD_PLUGIN)
    host = Host(entry_points=[bad, good])
    assert host.errors == []  # importing was fine
    names = host.registry.names("trainers")
    assert "noisy" in names and BUILTIN_TRAINERS <= set(names)
    assert len(host.errors) == 1
    err = host.errors[0]
    assert err.plugin == "bad-hook" and err.where == "advplug_register_trainers"
    assert "ValueError" in err.error and "registration went wrong in hook" in err.error
    rows = {r["name"]: r for r in host.describe()}
    assert any("registration went wrong in hook" in e for e in rows["bad-hook"]["errors"])
    assert "registration went wrong in hook" in capsys.readouterr().err


@pytest.fixture
def clashing_host(plugin_module):
    """noisy-plugin registers trainer "noisy"; clash-plugin, loaded after it, registers an
    attack and a trainer, then "noisy" again. Returns (host, clash-plugin's module)."""
    first = plugin_module("noisy-plugin", GOOD_PLUGIN)
    second = plugin_module("clash-plugin", CLASH_AFTER_OTHER_THINGS)
    host = Host(entry_points=[first, second])
    return host, sys.modules[second.value]


def test_two_plugins_registering_one_name_is_an_error_naming_both(plugin_module):
    first = plugin_module("noisy-plugin", GOOD_PLUGIN)
    second = plugin_module("clash-plugin", SAME_NAME)
    host = Host(entry_points=[first, second])
    assert host.registry.entry("trainers", "noisy").plugin == "noisy-plugin"  # no exception
    [err] = host.errors
    assert err.plugin == "clash-plugin" and err.disabled  # the later plugin is the culprit
    assert err.where == "advplug_register_trainers"
    assert "'noisy-plugin'" in err.error and "'clash-plugin'" in err.error
    assert "'noisy'" in err.error and "trainer" in err.error
    assert str(err).startswith("plugin 'clash-plugin' was disabled: ")


def test_plugin_reusing_a_builtin_name_is_an_error_naming_advplug(plugin_module):
    # even a plugin that asks to run first cannot take a name from the built-ins
    source = SAME_NAME.replace('"noisy"', '"pgd-at"').replace(
        "@advplug.hookimpl", "@advplug.hookimpl(tryfirst=True)")
    host = Host(entry_points=[plugin_module("shadow-plugin", source)])
    assert host.registry.entry("trainers", "pgd-at").plugin == "advplug"
    assert BUILTIN_TRAINERS <= set(host.registry.names("trainers"))
    [err] = host.errors
    assert err.plugin == "shadow-plugin" and err.disabled
    assert "'advplug'" in err.error and "'shadow-plugin'" in err.error and "'pgd-at'" in err.error


def test_alias_clash_is_detected():
    reg = Registry()
    reg.add("trainers", "a", object(), "p1", aliases=("short",))
    reg.add("attacks", "p2-attack", object(), "p2", aliases=("p2a",))
    with pytest.raises(AdvplugError, match="'p1'.*'p2'"):
        reg.add("trainers", "short", object(), "p2")
    assert reg.get("trainers", "short") is reg.get("trainers", "a")
    # p2 is disabled: what it registered before is gone, and it cannot add more
    assert reg.is_disabled("p2") and not reg.is_disabled("p1")
    assert reg.names("attacks") == [] and "p2a" not in reg.aliases["attacks"]
    with pytest.raises(AdvplugError, match="plugin 'p2' was disabled"):
        reg.add("trainers", "b", object(), "p2")
    assert reg.names("trainers") == ["a"]
    with pytest.raises(AdvplugError, match="attack 'p2a' is not available: plugin 'p2' was disabled"):
        reg.get("attacks", "p2a")


def test_a_clash_disables_only_the_later_plugin_and_all_it_registered(clashing_host, capsys):
    host, clash_module = clashing_host
    reg = host.registry
    # the first plugin's trainer works
    entry = reg.entry("trainers", "noisy")
    assert entry.plugin == "noisy-plugin" and entry.obj.__name__ == "NoisyTrainer"
    # the later plugin registered nothing that stays: before the clash, in another kind,
    # or after it (its later hooks are not even called)
    assert "clash-extra" not in reg.names("trainers") and "after-clash" not in reg.names("trainers")
    assert "clash-attack" not in reg.names("attacks") and "ca" not in reg.aliases["attacks"]
    assert "clash-model" not in reg.names("models")
    assert clash_module.calls == ["attacks", "trainers"]
    assert "clash-plugin" not in reg.by_plugin()
    # the built-ins are intact, and the disabled plugin is recorded once, without a warning
    assert BUILTIN_TRAINERS <= set(reg.names("trainers")) and BUILTIN_MODELS <= set(reg.names("models"))
    assert [(e.plugin, e.where, e.disabled) for e in host.errors] == [
        ("clash-plugin", "advplug_register_trainers", True)]
    assert capsys.readouterr().err == ""
    rows = {r["name"]: r for r in host.describe()}
    assert rows["clash-plugin"]["disabled"] and rows["clash-plugin"]["registered"] == {}
    assert not rows["noisy-plugin"]["disabled"] and rows["noisy-plugin"]["errors"] == []
    # rebuilding the registry disables it again without duplicating the error
    host.register(_Recorder("late"), name="late")
    assert "clash-extra" not in host.registry.names("trainers")
    assert len(host.errors) == 1


def test_asking_for_a_disabled_plugins_thing_says_it_was_disabled(clashing_host):
    host, _ = clashing_host
    reg = host.registry
    [err] = host.errors
    # what it registered before the clash, in any kind, and the alias it clashed with
    for kind, name in (("trainers", "clash-extra"), ("attacks", "clash-attack"), ("attacks", "ca"),
                       ("trainers", "clash-noisy")):
        noun = KINDS[kind][1]
        with pytest.raises(AdvplugError) as info:
            reg.get(kind, name)
        assert str(info.value) == f"{noun} {name!r} is not available: plugin 'clash-plugin' was disabled: {err.error}"
    # names it never got to register: unknown, but the disabled plugin may have provided them
    for kind, name in (("trainers", "after-clash"), ("models", "clash-model")):
        with pytest.raises(AdvplugError) as info:
            reg.get(kind, name)
        msg = str(info.value)
        assert msg.startswith(f"unknown {KINDS[kind][1]} {name!r}")
        assert msg.endswith(f"; plugin 'clash-plugin' was disabled ({err.error}), it may provide it")


def test_unknown_name_names_a_plugin_that_failed_to_import(plugin_module):
    bad = plugin_module("broken-plugin", IMPORT_FAILS)
    good = plugin_module("noisy-plugin", GOOD_PLUGIN)
    reg = Host(entry_points=[bad, good]).registry
    with pytest.raises(AdvplugError) as info:
        reg.get("trainers", "cuda-trainer")
    msg = str(info.value)
    assert msg.startswith("unknown trainer 'cuda-trainer'") and "noisy" in msg and "pgd-at" in msg
    assert "; plugin 'broken-plugin' failed to load (RuntimeError: plugin exploded at import" in msg
    assert msg.endswith("), it may provide it")
    assert "noisy-plugin" not in msg  # only failed plugins are named


# -- lifecycle hooks ----------------------------------------------------------------

class _Recorder:
    def __init__(self, name, result=None, fail=False, calls=None):
        self.name, self.result, self.fail = name, result, fail
        self.calls = calls if calls is not None else []

    @advplug.hookimpl
    def advplug_epoch_end(self, run, epoch, metrics):
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} crashed")
        metrics[self.name] = epoch
        return self.result

    @advplug.hookimpl
    def advplug_should_stop(self, run, epoch, metrics):
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} crashed")
        return self.result


def test_call_isolates_a_raising_implementation(capsys, tmp_path):
    host = Host(entry_points=[])
    calls = []
    host.register(_Recorder("a", result="ra", calls=calls), name="a")
    host.register(_Recorder("boom", fail=True, calls=calls), name="boom")
    host.register(_Recorder("c", result="rc", calls=calls), name="c")
    metrics = {}
    # the built-in lifecycle plugins (metrics writer, guard, keep-best, plot) answer too: a run they can read
    run = SimpleNamespace(config=SimpleNamespace(co_guard=None, keep_best=False, plot=False, monitor_size=0),
                          out_dir=tmp_path, history=[metrics])
    results = host.call("advplug_epoch_end", run=run, epoch=3, metrics=metrics)
    assert sorted(calls) == ["a", "boom", "c"]  # every implementation was called once
    assert sorted(results) == ["ra", "rc"]
    assert metrics == {"a": 3, "c": 3}
    assert len(host.errors) == 1
    assert host.errors[0].plugin == "boom" and host.errors[0].where == "advplug_epoch_end"
    assert "boom crashed" in host.errors[0].error
    assert "boom crashed" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"a": 3, "c": 3}  # the writer runs last


def test_call_first_returns_the_first_non_none():
    host = Host(entry_points=[])
    calls = []
    host.register(_Recorder("late", result="stop: late", calls=calls), name="late")
    host.register(_Recorder("winner", result="stop: winner", calls=calls), name="winner")
    host.register(_Recorder("silent", result=None, calls=calls), name="silent")
    # pluggy's own firstresult call decides the order; the host must agree with it
    expected = host.pm.hook.advplug_should_stop(run=None, epoch=1, metrics={})
    calls.clear()
    got = host.call_first("advplug_should_stop", run=None, epoch=1, metrics={})
    assert got == expected == "stop: winner"
    assert "late" not in calls  # stopped at the first answer
    assert calls == ["silent", "winner"]


def test_call_first_skips_a_raising_implementation(capsys):
    host = Host(entry_points=[])
    host.register(_Recorder("fallback", result="stop: fallback"), name="fallback")
    host.register(_Recorder("boom", fail=True), name="boom")
    assert host.call_first("advplug_should_stop", run=None, epoch=1, metrics={}) == "stop: fallback"
    assert [e.plugin for e in host.errors] == ["boom"]
    assert host.call_first("advplug_train_end", run=None) is None  # no implementations


# -- advplug plugins ----------------------------------------------------------------

def test_plugins_json(capsys):
    assert cli.main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list)
    by_name = {r["name"]: r for r in rows}
    assert "advplug" in by_name
    row = by_name["advplug"]
    assert row["source"] == "built-in" and row["errors"] == []
    assert set(row["registered"]) == {"attacks", "trainers", "models", "datasets"}
    assert {"torchattacks:pgd", "art:pgd", "autoattack"} <= set(row["registered"]["attacks"])
    assert set(row["registered"]["trainers"]) == BUILTIN_TRAINERS
    assert set(row["registered"]["models"]) == BUILTIN_MODELS
    assert set(row["registered"]["datasets"]) == BUILTIN_DATASETS
    assert set(row["registered"]) <= set(KINDS)


def test_plugins_table_lists_names(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("advplug")
    for name in BUILTIN_TRAINERS | BUILTIN_MODELS | BUILTIN_DATASETS:
        assert name in out
    assert "ERROR" not in out


def test_plugins_table_shows_a_broken_plugin_and_exits_0(plugin_module, capsys):
    bad = plugin_module("broken-plugin", IMPORT_FAILS)
    good = plugin_module("noisy-plugin", GOOD_PLUGIN)
    reset_host(Host(entry_points=[bad, good]))
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    error_lines = [line for line in lines if "ERROR" in line]
    assert len(error_lines) == 1
    assert "plugin exploded at import" in error_lines[0]
    assert any(line.startswith("broken-plugin") for line in lines)
    assert "noisy" in out and "pgd-at" in out

    assert cli.main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["broken-plugin"]["errors"] and rows["noisy-plugin"]["registered"] == {"trainers": ["noisy"]}


def test_plugins_command_lists_a_disabled_plugin_and_exits_0(clashing_host, capsys):
    host, _ = clashing_host
    reset_host(host)
    assert cli.main(["plugins"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(line.startswith("clash-plugin") for line in lines)
    [error_line] = [line for line in lines if "ERROR" in line]
    assert "disabled" in error_line and "'clash-plugin'" in error_line
    assert "'noisy-plugin'" in error_line and "'noisy'" in error_line
    assert "    trainers:" in lines and any(line.split()[:1] == ["noisy"] for line in lines)
    assert "pgd-at" in captured.out
    assert "clash-extra" not in captured.out.replace(error_line, "")
    assert captured.err == ""  # listed, not warned about

    assert cli.main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["clash-plugin"]["disabled"] is True and rows["clash-plugin"]["registered"] == {}
    [error] = rows["clash-plugin"]["errors"]
    assert error.startswith("disabled in advplug_register_trainers: ") and "'noisy-plugin'" in error
    assert rows["noisy-plugin"] == {**rows["noisy-plugin"], "registered": {"trainers": ["noisy"]},
                                    "errors": [], "disabled": False}
    assert rows["advplug"]["disabled"] is False and rows["advplug"]["errors"] == []


def test_other_commands_work_and_warn_once_about_a_disabled_plugin(clashing_host, tmp_path, data_root, capsys):
    host, _ = clashing_host
    reset_host(host)
    flags = ["--dataset", "mnist", "--model", "mnist-cnn", "--epochs", "1", "--train-subset", "64",
             "--test-subset", "32", "--monitor-size", "0", "--eval-steps", "0", "--no-progress",
             "--no-plot", "--out", str(tmp_path / "run"), "--data-root", str(data_root), "--device", "cpu"]
    assert cli.main(["train", "--trainer", "noisy", *flags]) == 0  # the first plugin's trainer
    assert (tmp_path / "run" / "model.pt").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "clash-plugin" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("advplug: warning: plugin 'clash-plugin' was disabled: trainer 'noisy'")
    assert "'noisy-plugin'" in warnings[0]


# -- registry errors ----------------------------------------------------------------

def test_unknown_name_error_suggests_and_lists():
    reg = Host(entry_points=[]).registry
    with pytest.raises(AdvplugError) as info:
        reg.get("trainers", "pgd-ta")
    msg = str(info.value)
    assert "trainer" in msg
    assert "'pgd-ta'" in msg
    assert "did you mean 'pgd-at'" in msg
    for name in BUILTIN_TRAINERS:
        assert name in msg
    assert "available:" in msg

    with pytest.raises(AdvplugError) as info:
        reg.get("models", "resnet-18")
    msg = str(info.value)
    assert "unknown model 'resnet-18'" in msg and "did you mean 'resnet18'" in msg
    assert all(name in msg for name in BUILTIN_MODELS)


def test_unknown_name_without_close_match_has_no_suggestion():
    reg = Host(entry_points=[]).registry
    with pytest.raises(AdvplugError) as info:
        reg.get("datasets", "imagenet-21k")
    msg = str(info.value)
    assert "unknown dataset 'imagenet-21k'" in msg and "did you mean" not in msg
    assert all(name in msg for name in BUILTIN_DATASETS)
    with pytest.raises(AdvplugError, match="available: none"):
        reg.get("samplers", "mixed")


def test_rebuilding_the_registry_does_not_duplicate_errors(plugin_module, capsys):
    host = Host(entry_points=[plugin_module("bad-hook", HOOK_FAILS)])
    host.registry
    assert len(host.errors) == 1
    host.register(_Recorder("late"), name="late")  # resets the registry
    assert "pgd-at" in host.registry.names("trainers")
    rows = {r["name"]: r for r in host.describe()}
    assert len(rows["bad-hook"]["errors"]) == 1, rows["bad-hook"]["errors"]
