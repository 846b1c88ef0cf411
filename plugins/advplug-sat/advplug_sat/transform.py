"""The model transform ``smooth-activation``: every ReLU of a model, replaced.

Three places a ReLU can hide, three mechanisms:

1. ``nn.ReLU`` modules (also ``inplace=True``, also subclasses), anywhere in the module
   tree -- which covers advplug's own architectures, built through their ``activation``
   argument, and torchvision's. Each is swapped in place; the model keeps its class and
   its ``state_dict`` keys. One ReLU instance used at several places stays one module.
2. Functional calls (``F.relu``, ``torch.relu``, ``x.relu()``, the in-place forms) in a
   module's own ``forward``: found and replaced by torch.fx. The module is traced in
   training *and* in eval mode; only if both traces agree (fx freezes Python control flow
   such as ``if self.training``) and contain a relu is anything changed: each relu call
   becomes a call to a new submodule ``sat_<node>`` and the rewritten code becomes the
   instance's ``forward`` (:class:`TracedForward`), run against the module itself -- so
   it keeps its class, attributes, hooks and ``state_dict`` keys. Modules without
   functional relu are left as they are.
3. A module that fx cannot trace (data-dependent control flow, mode-dependent code, ...)
   is handled child by child, and its own class source is read (``ast``): a reference to
   ``relu``/``relu_`` there other than through ``self.<attr>`` is one ``AdvplugError``
   naming the module, its class and the line, raised when the transform is applied.

What escapes all three (a relu in a helper function outside the class, or inside a
``torch.nn`` layer such as ``TransformerEncoderLayer``) is caught at run time:
the first forward of the transformed model is watched (:mod:`advplug_sat.guard`) and a
relu call by anything but this plugin's activations is an ``AdvplugError``.

Not ReLU, left alone: ``ReLU6``, ``LeakyReLU``, ``PReLU``, ``RReLU``, ``clamp(min=0)``.
"""
from __future__ import annotations

import ast
import inspect
import linecache
import textwrap
import types

import torch
import torch.nn.functional as F
from torch import fx, nn

from advplug.errors import AdvplugError
from advplug.params import Param, check_params, choice, number

from .activations import FUNCTIONS, OWN_MODULES, ReLUSmoothBackward, smooth_module
from .guard import RELU_NAMES, ReluCheck
from .roles import RoleHook

NAME = "smooth-activation"
MODES = ("forward", "backward")
GRADIENTS = ("smooth", "relu")
ALIASES = {"swish": "silu", "smoothrelu": "smooth-relu", "smooth_relu": "smooth-relu"}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", torch.relu_)}


# -- options --------------------------------------------------------------------------

#: the transform's parameters; fn's own options (beta, alpha, learnable) default per fn (FUNCTIONS)
PARAMS = {
    "fn": choice("softplus", (*FUNCTIONS, *ALIASES), help="the smooth function"),
    "mode": choice("forward", MODES, help="forward: smooth in both passes; backward: ReLU forward, smooth gradient"),
    "attack_grad": choice("smooth", GRADIENTS, help="mode=backward: the gradient the attacker sees"),
    "train_grad": choice("smooth", GRADIENTS, help="mode=backward: the gradient the optimizer sees"),
    "beta": number(None, low=0, low_open=True, help="softplus β (default 10)"),
    "alpha": number(None, low=0, low_open=True, help="elu/celu α (default 1), smooth-relu α (default 400)"),
    "learnable": Param(None, bool, help="smooth-relu: α is trained (default true)"),
}


def parse_options(options: dict) -> dict:
    """Checked options (see :data:`PARAMS`): fn, mode, attack_grad, train_grad and fn's own."""
    opts = check_params(NAME, options, PARAMS)
    fn = ALIASES.get(opts["fn"], opts["fn"])
    for key in ("attack_grad", "train_grad"):
        if opts["mode"] == "forward" and opts[key] == "relu":
            raise AdvplugError(f"{NAME}: {key}=relu needs mode=backward; mode=forward is smooth in "
                               f"both passes, for the attacker and the optimizer alike")
    given = {k: v for k, v in opts.items() if k in ("beta", "alpha", "learnable") and v is not None}
    unknown = sorted(set(given) - set(FUNCTIONS[fn]))
    if unknown:
        takes = ", ".join(["fn", "mode", "attack_grad", "train_grad", *FUNCTIONS[fn]])
        raise AdvplugError(f"{NAME}: fn={fn} has no parameter {', '.join(map(repr, unknown))}; it takes: {takes}")
    return {"fn": fn, "mode": opts["mode"], "options": {**FUNCTIONS[fn], **given},
            "attack_grad": opts["attack_grad"], "train_grad": opts["train_grad"]}


def replacement_factory(parsed: dict):
    """A zero-argument callable returning one fresh replacement module."""
    fn, options = parsed["fn"], parsed["options"]
    if parsed["mode"] == "forward":
        return lambda: smooth_module(fn, options)
    return lambda: ReLUSmoothBackward(fn, options, parsed["attack_grad"], parsed["train_grad"])


# -- 1. nn.ReLU modules -----------------------------------------------------------------

def swap_relu_modules(module: nn.Module, make, memo: dict | None = None, seen: set | None = None) -> int:
    """Replace every nn.ReLU below ``module`` (not ``module`` itself); returns how many."""
    memo = {} if memo is None else memo
    seen = set() if seen is None else seen
    if id(module) in seen:
        return 0
    seen.add(id(module))
    count = 0
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if isinstance(child, nn.ReLU):
            if id(child) not in memo:
                memo[id(child)] = make()
                count += 1
            module._modules[name] = memo[id(child)]
        else:
            count += swap_relu_modules(child, make, memo, seen)
    return count


# -- 2. functional relu through torch.fx --------------------------------------------------

class _Tracer(fx.Tracer):
    def is_leaf_module(self, m, module_qualified_name):
        return isinstance(m, OWN_MODULES) or super().is_leaf_module(m, module_qualified_name)


def _trace(module: nn.Module) -> fx.Graph:
    return _Tracer().trace(module)  # traces type(module).forward: the class's own code


class _ModeDependent(Exception):
    pass


def trace_both_modes(module: nn.Module) -> fx.Graph:
    """fx-trace ``module`` in training and in eval mode; raises if the two graphs differ
    (a forward that branches on ``self.training`` would be frozen in one mode)."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.train(True)
        in_train = _trace(module)
        module.train(False)
        in_eval = _trace(module)
    finally:
        for m, flag in flags:
            m.training = flag
    if in_train.python_code("self").src != in_eval.python_code("self").src:
        raise _ModeDependent("its forward differs between training and eval mode")
    return in_train


def _is_relu_node(node) -> bool:
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS or getattr(node.target, "__name__", None) in RELU_NAMES
    return node.op == "call_method" and node.target in RELU_NAMES


def _is_inplace(node) -> bool:
    if node.op == "call_method":
        return node.target == "relu_"
    if getattr(node.target, "__name__", None) == "relu_":
        return True
    return bool(node.kwargs.get("inplace", False)) or (len(node.args) > 1 and node.args[1] is True)


def replace_in_graph(graph: fx.Graph, owner: nn.Module, make=None) -> int:
    """Every relu node -> a call of the submodule ``sat_<node name>`` of ``owner``, created
    with ``make()`` (or already there, ``make=None``); returns how many. An in-place relu
    also stands in for its input in every later use."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    count = 0
    for node in list(graph.nodes):
        if not _is_relu_node(node):
            continue
        source = node.args[0] if node.args else next(iter(node.kwargs.values()))
        name = f"sat_{node.name}"
        if make is not None:
            if name in owner._modules or hasattr(owner, name):
                raise AdvplugError(f"{NAME}: {type(owner).__qualname__} already has an attribute {name!r}")
            owner.add_module(name, make())
        with graph.inserting_after(node):
            new = graph.call_module(name, (source,))
        node.replace_all_uses_with(new)
        if _is_inplace(node) and isinstance(source, fx.Node):
            for user in list(source.users):
                if user is not node and user is not new and order.get(user, -1) > order[node]:
                    user.replace_input_with(source, new)
        graph.erase_node(node)
        count += 1
    if count:
        graph.lint()
    return count


class TracedForward:
    """A module's forward with its functional relu calls rewritten (by torch.fx) into calls
    of its ``sat_*`` submodules, installed as the instance's ``forward``.

    The generated code runs against the module itself, so the module keeps its class,
    attributes, hooks, ``state_dict`` keys (plus the ``sat_*`` modules' own, if any) and
    device moves. Copies and pickles keep only the module reference and trace its class's
    forward again on first use (the ``sat_*`` modules are already there)."""

    def __init__(self, owner: nn.Module, graph: fx.Graph):
        self.owner = owner
        self._compile(graph)

    def _compile(self, graph: fx.Graph):
        code = graph.python_code(root_module="self")
        filename = f"<advplug-sat rewritten {type(self.owner).__qualname__}.forward>"
        linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)
        namespace = dict(code.globals)
        exec(compile(code.src, filename, "exec"), namespace)  # noqa: S102 -- fx's own generated code
        self.graph, self.code = graph, code.src
        self._fn = types.MethodType(namespace["forward"], self.owner)

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            graph = _trace(self.owner)
            replace_in_graph(graph, self.owner)
            self._compile(graph)
        return self._fn(*args, **kwargs)

    def __getstate__(self):
        return {"owner": self.owner}

    def __setstate__(self, state):
        self.owner, self._fn, self.graph, self.code = state["owner"], None, None, None


def rewrite_forward(module: nn.Module, make) -> int:
    """Replace the functional relu calls of ``module``'s own forward (traced by fx, inlining
    its non-leaf children); returns how many (0: the module is left as it is). Raises
    whatever tracing raises."""
    if isinstance(module.__dict__.get("forward"), TracedForward):
        return 0  # rewritten already (the transform given twice)
    graph = trace_both_modes(module)
    if not any(_is_relu_node(node) for node in graph.nodes):
        return 0
    count = replace_in_graph(graph, module, make)
    module.forward = TracedForward(module, graph)
    return count


# -- 3. untraceable modules: read the class source ---------------------------------------

def _is_torch_module(module: nn.Module) -> bool:
    """torch.nn's own classes (fx's default leaves and containers): their forward is not
    ours to rewrite."""
    return type(module).__module__.startswith(("torch.nn.", "torch.ao.nn."))


def _root_name(node) -> str | None:
    """'self' for self.a.b[0].relu, 'F' for F.relu, 'torch' for torch.nn.functional.relu."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def relu_references(cls) -> list[str]:
    """'file:line: code' for each reference to relu/relu_ in the source of ``cls`` and
    its non-torch base classes, except attributes reached from ``self`` (submodules such
    as ``self.relu``, which the module swap handles). Empty when no source can be read."""
    found = []
    for klass in cls.__mro__:
        if klass is object or klass.__module__.startswith(("torch.", "builtins")):
            continue
        try:
            lines, start = inspect.getsourcelines(klass)
            filename = inspect.getsourcefile(klass) or "?"
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                hit = node.attr in RELU_NAMES and _root_name(node) != "self"
            else:
                hit = isinstance(node, ast.Name) and node.id in RELU_NAMES and isinstance(node.ctx, ast.Load)
            if hit:
                found.append(f"{filename}:{start + node.lineno - 1}: {lines[node.lineno - 1].strip()}")
    return sorted(set(found), key=found.index)


def replace_functional_relu(module: nn.Module, make, path: str = "") -> int:
    """Rewrite the functional relu calls below and in ``module``; returns how many."""
    if isinstance(module, OWN_MODULES):
        return 0
    if not _is_torch_module(module):
        try:
            return rewrite_forward(module, make)
        except AdvplugError:
            raise
        except Exception as exc:  # noqa: BLE001 -- any tracing failure: go child by child
            refs = relu_references(type(module))
            if refs:
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                where = f"module {path!r}" if path else "the model"
                raise AdvplugError(
                    f"{NAME}: {where} ({type(module).__qualname__}) calls a functional ReLU "
                    f"({'; '.join(refs[:3])}) but torch.fx cannot trace it ({reason}), so that ReLU "
                    f"cannot be replaced. Use an nn.ReLU module there (or the model's activation "
                    f"argument), or make its forward fx-traceable") from None
    return sum(replace_functional_relu(child, make, f"{path}.{name}" if path else name)
               for name, child in list(module._modules.items()) if child is not None)


# -- the transform ----------------------------------------------------------------------

def describe(parsed: dict) -> str:
    opts = ",".join(f"{k}={v:g}" if not isinstance(v, bool) else f"{k}={str(v).lower()}"
                    for k, v in parsed["options"].items())
    text = f"{parsed['fn']}{'(' + opts + ')' if opts else ''}, mode={parsed['mode']}"
    if parsed["mode"] == "backward":
        text += f", attack_grad={parsed['attack_grad']}, train_grad={parsed['train_grad']}"
    return text


def smooth_activation(model: nn.Module, **options) -> nn.Module:
    """The ``smooth-activation`` transform: ``fn(model, **options) -> model`` with every
    ReLU replaced (see the module docstring and the plugin's README for the options)."""
    parsed = parse_options(options)
    make = replacement_factory(parsed)
    if isinstance(model, nn.ReLU):
        model, modules = make(), 1
    else:
        modules = swap_relu_modules(model, make)
    functional = replace_functional_relu(model, make)
    if modules + functional == 0:
        raise AdvplugError(f"{NAME}: found no ReLU to replace in {type(model).__qualname__} (no nn.ReLU "
                           f"module, no functional relu); was the model built with another activation, "
                           f"or is the transform given twice?")
    if parsed["mode"] == "backward":  # the role of each forward, for the activations inside it
        roles = RoleHook()
        model.register_forward_pre_hook(roles.before, with_kwargs=True)
        model.register_forward_hook(roles.after, always_call=True)
        model._advplug_sat_roles = roles
    check = ReluCheck(NAME)  # the first forward is watched for relu calls left over
    model.register_forward_pre_hook(check.before, with_kwargs=True)
    model.register_forward_hook(check.after, always_call=True)
    model._advplug_sat = {"config": describe(parsed), "relu_modules": modules, "functional_relu": functional}
    return model


smooth_activation.param_schema = PARAMS
