"""Docs that cannot drift: docs/writing-plugins.md and README.md run as written, and every
hook of the plugin contract is documented.

* Every ```python block of docs/writing-plugins.md runs here, each as a module of its own
  (registered in ``sys.modules``, so ``sys.modules[__name__]`` is the module, as when the
  block is saved and run as a script), in a fresh working directory. Blocks that train
  (``advplug.train``) need MNIST under ``$ADVPLUG_DATA``.
* README.md's ```python blocks follow ``readme_runner``'s convention: a block whose first
  line is ``# file: ...`` is a file excerpt; ``readme_runner`` only compiles it, here it
  also runs as a module (imports resolve, class bodies run). Every other README block is
  a script that ``readme_runner`` runs in order with the bash blocks before it
  (``test_readme_examples.py``), at full size (the Python API block trains and evaluates:
  about half a minute), so here it is compiled and the test is skipped with a reason
  naming that test.
* Every ``advplug ...`` line of the page's ```sh/```bash/```console blocks runs through
  the CLI in-process and must exit 0. README's ```bash blocks are ``readme_runner``'s.
* Every hookspec of ``advplug.hookspecs`` has a docstring naming each of its arguments,
  and its name appears in docs/writing-plugins.md or README.md.
"""
from __future__ import annotations

import inspect
import re
import shlex
import sys
import types

import pytest

from readme_runner import REPO, code_blocks, commands

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DOCS = REPO / "docs" / "writing-plugins.md"
README = REPO / "README.md"
SHELL = ("sh", "bash", "console", "shell")


def blocks(path, langs):
    return [(path, line, body) for lang, line, body in code_blocks(path.read_text()) if lang in langs]


def block_id(block):
    return f"{block[0].relative_to(REPO)}:{block[1]}"


def is_file_excerpt(body: str) -> bool:
    return body.lstrip().startswith("# file:")


def run_as_module(path, line, body, monkeypatch):
    """``body`` executed as a fresh module, as ``python block.py`` would run it."""
    name = f"docs_block_{path.stem.replace('-', '_')}_{line}"
    module = types.ModuleType(name)
    module.__file__ = f"{path.relative_to(REPO)}:{line}"
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(body, module.__file__, "exec"), module.__dict__)
    return module


# -- python blocks ------------------------------------------------------------------------

DOC_PYTHON = blocks(DOCS, ("python",))
README_PYTHON = blocks(README, ("python",))


def test_the_page_shows_an_example_of_every_kind():
    text = DOCS.read_text()
    for hook in ("advplug_register_attacks", "advplug_register_trainers", "advplug_register_schedules",
                 "advplug_register_samplers", "advplug_register_model_transforms", "advplug_epoch_end"):
        assert any(f"def {hook}(" in body for _, _, body in DOC_PYTHON), f"no python example implements {hook}"
    assert "docs/writing-plugins.md" in README.read_text(), "README.md should point at docs/writing-plugins.md"
    assert len(text.splitlines()) > 100


@pytest.mark.parametrize("block", DOC_PYTHON, ids=block_id)
def test_docs_python_block_runs(block, tmp_path, monkeypatch, request):
    path, line, body = block
    if "advplug.train(" in body:
        monkeypatch.setenv("ADVPLUG_DATA", str(request.getfixturevalue("data_root")))
    monkeypatch.chdir(tmp_path)
    run_as_module(path, line, body, monkeypatch)


@pytest.mark.parametrize("block", README_PYTHON, ids=block_id)
def test_readme_python_block_runs(block, tmp_path, monkeypatch):
    path, line, body = block
    if not is_file_excerpt(body):
        compile(body, block_id(block), "exec")
        pytest.skip(f"{block_id(block)} is a script: tests/test_readme_examples.py runs it (readme_runner), "
                    f"in order with the README's bash blocks")
    monkeypatch.chdir(tmp_path)
    run_as_module(path, line, body, monkeypatch)


def test_readme_file_excerpts_that_define_plugins_register_cleanly(monkeypatch, tmp_path):
    """A README file excerpt with hook implementations registers on a fresh host with no error."""
    from advplug.host import Host

    monkeypatch.chdir(tmp_path)
    excerpts = [b for b in README_PYTHON if is_file_excerpt(b[2]) and "@advplug.hookimpl" in b[2]]
    assert excerpts, "README.md shows no plugin module"
    for block in excerpts:
        module = run_as_module(*block, monkeypatch)
        host = Host(entry_points=[])
        host.register(module, name="readme-plugin")
        assert host.registry.by_plugin().get("readme-plugin"), f"{block_id(block)} registered nothing"
        assert not [str(e) for e in host.errors], f"{block_id(block)}: {host.errors}"


# -- other blocks -------------------------------------------------------------------------

def test_docs_toml_blocks_parse_and_use_the_entry_point_group():
    tomls = blocks(DOCS, ("toml",))
    assert tomls
    for path, line, body in tomls:
        data = tomllib.loads(body)
        assert "advplug" in data["project"]["entry-points"], f"{path.name}:{line}"


DOC_COMMANDS = [(DOCS, line, command) for _, line, body in blocks(DOCS, SHELL)
                for command in commands(re.sub(r"(?m)^\s*\$\s+", "", body)) if command.startswith("advplug ")]


def test_docs_have_shell_commands():
    assert DOC_COMMANDS


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=lambda c: f"{block_id(c)}:{c[2]}")
def test_docs_shell_command_runs(command, capsys, tmp_path, monkeypatch):
    from advplug.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(shlex.split(command[2])[1:])
    out, err = capsys.readouterr()
    assert code == 0, f"{block_id(command)}: `{command[2]}` exited {code}\n{out[-3000:]}\n{err[-3000:]}"
    assert out.strip()


# -- the hook contract is documented ------------------------------------------------------

def hookspecs_of(module) -> dict:
    """name -> function of every pluggy hookspec (``advplug_spec`` marker) in ``module``."""
    return {name: fn for name, fn in inspect.getmembers(module, inspect.isfunction) if hasattr(fn, "advplug_spec")}


def undocumented(module, pages: list[str]) -> list[str]:
    """What is missing: a hookspec without docstring, an argument its docstring does not
    name (``arg`` or the word; arguments shared by a group of hooks, ``registry`` and
    ``run``, may be documented once as ``arg`` in the module docstring), a hook that no
    page names."""
    shared = module.__doc__ or ""
    problems = []
    for name, fn in hookspecs_of(module).items():
        doc = inspect.getdoc(fn) or ""
        if not doc.strip():
            problems.append(f"{name}: no docstring")
        for arg in inspect.signature(fn).parameters:
            if not (re.search(rf"\b{re.escape(arg)}\b", doc) or f"``{arg}``" in shared):
                problems.append(f"{name}: argument {arg!r} is not documented")
        if not any(re.search(rf"\b{re.escape(name)}\b", page) for page in pages):
            problems.append(f"{name}: not mentioned in docs/writing-plugins.md or README.md")
    return problems


def _hooks():
    from advplug import hookspecs

    return sorted(hookspecs_of(hookspecs))


#: hook -> why it is known to fail the check; strict: once fixed, the entry must go
KNOWN_GAPS: dict = {}  # hook -> why it is undocumented (strict xfail: fixing it makes the test say so)


@pytest.mark.parametrize("hook", [pytest.param(h, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[h]))
                                  if h in KNOWN_GAPS else h for h in _hooks()])
def test_every_hook_and_argument_is_documented(hook):
    from advplug import hookspecs

    pages = [DOCS.read_text(), README.read_text()]
    fake = types.ModuleType("one_hook")
    fake.__doc__ = hookspecs.__doc__
    setattr(fake, hook, getattr(hookspecs, hook))
    assert undocumented(fake, pages) == []


def test_there_are_hookspecs_to_check():
    from advplug import hookspecs

    assert {"advplug_register_attacks", "advplug_epoch_end", "advplug_should_stop"} <= set(_hooks())
    assert len(hookspecs_of(hookspecs)) >= 10


def test_the_documentation_check_catches_undocumented_hooks():
    """``undocumented`` fails a new hook without docstring, an argument its docstring does
    not name, and a hook no page mentions; ``registry``/``run`` may come from the module."""
    import pluggy

    spec = pluggy.HookspecMarker("advplug")
    fake = types.ModuleType("fake_hookspecs", "Registration hooks receive ``registry``.")

    @spec
    def advplug_register_widgets(registry):
        """Register widgets: ``name -> Widget``."""

    @spec
    def advplug_batch_end(run, batch, loss):
        """Called after each step with its ``loss``."""

    @spec
    def advplug_nothing(run):
        pass

    for fn in (advplug_register_widgets, advplug_batch_end, advplug_nothing):
        setattr(fake, fn.__name__, fn)
    pages = ["advplug_register_widgets and advplug_batch_end are documented here"]
    assert sorted(undocumented(fake, pages)) == sorted([
        "advplug_batch_end: argument 'run' is not documented",
        "advplug_batch_end: argument 'batch' is not documented",
        "advplug_nothing: no docstring",
        "advplug_nothing: argument 'run' is not documented",
        "advplug_nothing: not mentioned in docs/writing-plugins.md or README.md",
    ])
