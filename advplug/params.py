"""Parameters of everything a plugin registers, and the specs that name them.

One schema for every kind (attacks, trainers, schedules, samplers, model transforms,
models, datasets): ``{name: Param}``, declared once next to the thing (a class attribute
``param_schema``, or :func:`takes` on a function; attack factories give it to
:func:`advplug.attacks.base.attack_factory`). The host checks a run's parameters against
it before any data is loaded, ``advplug plugins --params NAME`` prints it.

A spec names a thing and its parameters: ``pgd-at:steps=7,alpha=2/255`` on the command
line, ``{name = "pgd-at", steps = 7}`` in TOML, :class:`Spec` in Python. A parameter whose
value is a list of specs (a sampler's attack pool) is written in brackets on the command
line, specs separated by ``+``: ``mixed-ratio:ratio=30:70,attacks=[fgsm+pgd:steps=10,alpha=0.01+cw]``.

The step size of every attack and trainer is called ``alpha`` (:func:`step_size`): a number
in pixel space (``alpha=2/255``) or a multiple of ε (``alpha=1.25eps``), optionally per step
(``alpha=2.5eps/steps``, Madry et al.'s rule, :data:`MADRY_STEP`); :func:`resolve_step`
turns it into a number, in one place.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

from .errors import AdvplugError, warn


def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, '8/255' -> 0.0313..., 'true' -> True, else the string."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "/" in text:
        try:
            return float(Fraction(text.strip()))
        except (ValueError, ZeroDivisionError):
            pass
    return text.strip()


def parse_spec(spec: str) -> tuple[str, dict]:
    """'pgd-at:steps=7,alpha=0.01' -> ('pgd-at', {'steps': 7, 'alpha': 0.01});
    'torchattacks:pgd:steps=20' -> ('torchattacks:pgd', {'steps': 20});
    'mixed-ratio:attacks=[fgsm+pgd:steps=10,alpha=0.01]' -> ('mixed-ratio', {'attacks':
    ['fgsm', 'pgd:steps=10,alpha=0.01']}): a bracketed value is a list of specs separated
    by ``+`` (commas inside belong to it)."""
    text = str(spec)
    parts = text.split(":", 2)
    if len(parts) >= 2 and parts[1] and not set("=,[").intersection(parts[1]):
        # a namespaced name: torchattacks:pgd[:k=v]
        name, rest = f"{parts[0]}:{parts[1]}", parts[2] if len(parts) > 2 else ""
    else:
        name, _, rest = text.partition(":")
    params = {}
    for item in _split_outside_brackets(rest, ",", text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AdvplugError(f"cannot read {item!r} in {text!r}: write name:key=value,key=value")
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            params[key.strip().replace("-", "_")] = _split_outside_brackets(value[1:-1], "+", text)
        else:
            params[key.strip().replace("-", "_")] = parse_value(value)
    return name.strip(), params


def _split_outside_brackets(text: str, sep: str, whole: str) -> list[str]:
    """``text`` split at ``sep`` where no bracket is open; stripped, empty pieces dropped."""
    pieces, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            break
        if char == sep and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise AdvplugError(f"unbalanced brackets in {whole!r}: a list of specs is written "
                           f"key=[spec+spec], e.g. attacks=[fgsm+pgd:steps=10,alpha=0.01]")
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


@dataclass(frozen=True)
class Spec:
    """A registered thing's name and its parameters, parsed once at the edge.

    ``Spec.parse`` reads what a user writes: ``"pgd:steps=10,alpha=0.01"`` (command line),
    ``{"name": "pgd", "steps": 10, "alpha": 0.01}`` (a TOML table) or a Spec. ``str(spec)``
    writes it back in command-line form."""

    name: str
    params: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, value) -> "Spec":
        if isinstance(value, Spec):
            return value
        if isinstance(value, dict):
            params = dict(value)
            name = params.pop("name", None)
            if not isinstance(name, str) or not name:
                raise AdvplugError(f"spec table {value!r} needs a name, e.g. {{name = \"pgd\", steps = 10}}")
            return cls(name, {str(k).replace("-", "_"): v for k, v in params.items()})
        if isinstance(value, str):
            return cls(*parse_spec(value))
        raise AdvplugError(f"{value!r} is not a spec: write name:key=value,... or a table with a name")

    def to_config(self) -> dict | str:
        """The form a config file records: the name alone, or a table."""
        return {"name": self.name, **self.params} if self.params else self.name

    def __str__(self) -> str:
        def text(v):
            if isinstance(v, (list, tuple)):
                return "[" + "+".join(str(Spec.parse(s)) for s in v) + "]"
            return str(v).lower() if isinstance(v, bool) else str(v)
        params = ",".join(f"{k}={text(v)}" for k, v in self.params.items())
        return f"{self.name}:{params}" if params else self.name


def parse_spec_list(value) -> list[Spec]:
    """Specs from a list (strings or tables) or one string: ``"fgsm,pgd:steps=20,alpha=0.01,cw"``
    (commas; a piece with ``=`` and no ``:`` continues the previous spec) or
    ``"fgsm+pgd:steps=10+cw"`` (``+`` between specs)."""
    if isinstance(value, (list, tuple)):
        return [Spec.parse(v) for v in value]
    value = str(value).strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [Spec.parse(text) for part in _split_outside_brackets(str(value), "+", str(value))
            for text in split_spec_list(part)]


STEP = "step"  #: Param kind of step sizes (see :func:`step_size`)
SPECS = "specs"  #: Param kind of lists of specs (see :func:`spec_list`)


@dataclass(frozen=True)
class Param:
    """One parameter of a registered thing: type, default, accepted range, meaning.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, :data:`STEP` or :data:`SPECS` (``None``:
    any value, unchecked).
    ``low``/``high`` bound numbers (inclusive unless ``low_open``/``high_open``),
    ``choices`` lists the accepted strings, ``optional`` accepts ``None`` (implied by a
    ``None`` default: "use the rule stated in ``help``"). Build them with :func:`integer`,
    :func:`number`, :func:`flag`, :func:`choice`, :func:`text`, :func:`step_size` and
    :func:`spec_list`."""

    default: object = None
    kind: type | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    optional: bool = False
    help: str = ""

    def accepts(self) -> str:
        """What the parameter accepts, in words: 'an integer >= 1', 'a number in (0, 1]'."""
        if self.choices is not None:
            what = f"one of {', '.join(map(str, self.choices))}"
        else:
            what = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                    STEP: "a step size: a number (pixel space) or a multiple of ε (1.25eps, 2.5eps/steps)",
                    SPECS: "a list of specs, e.g. [fgsm+pgd:steps=10]"}.get(self.kind, "any value")
            if self.low is not None and self.high is not None:
                what += (f" in {'(' if self.low_open else '['}{self.low:g}, "
                         f"{self.high:g}{')' if self.high_open else ']'}")
            elif self.low is not None:
                what += f" {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                what += f" {'<' if self.high_open else '<='} {self.high:g}"
        if self.optional or self.default is None:
            what += " (or none)"
        return what

    def check(self, owner: str, name: str, value):
        """``value`` converted to the parameter's type, or one :class:`AdvplugError`."""
        if value is None and (self.optional or self.default is None):
            return None
        converted = _convert(self.kind, value)
        ok = converted is not _INVALID
        if ok and self.choices is not None and (self.kind is str or isinstance(converted, str)):
            converted = str(converted).strip().lower()  # kind None: a non-string (a callable) is let through
            ok = converted in self.choices
        if ok and self.kind in (int, float):
            ok = _in_range(converted, self.low, self.high, self.low_open, self.high_open)
        if not ok:
            raise AdvplugError(f"{owner}: {name} must be {self.accepts()}, got {value!r}")
        return converted


_INVALID = object()


def _convert(kind, value):
    if kind is None:
        return value
    if kind == STEP:
        return _step_value(value)
    if kind == SPECS:
        try:
            return tuple(parse_spec_list(value)) or _INVALID
        except AdvplugError:
            return _INVALID
    if kind is bool:
        return value if isinstance(value, bool) else _INVALID
    if kind is str:  # "name=10" reads as the number 10; as a string parameter it is "10"
        return value if isinstance(value, str) else str(value) if type(value) in (int, float) else _INVALID
    if isinstance(value, str) and "/" in value:  # "8/255" in a TOML string
        value = parse_value(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return _INVALID
    if kind is int:
        return int(value) if float(value).is_integer() else _INVALID
    return float(value)


def _in_range(value, low, high, low_open, high_open) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def integer(default, low=None, high=None, help="", optional=False) -> Param:
    return Param(default, int, low, high, help=help, optional=optional)


def number(default, low=None, high=None, *, low_open=False, high_open=False, help="", optional=False) -> Param:
    return Param(default, float, low, high, low_open, high_open, help=help, optional=optional)


def flag(default: bool, help="") -> Param:
    return Param(default, bool, help=help)


def choice(default, choices, help="") -> Param:
    return Param(default, str, choices=tuple(choices), help=help)


def text(default, help="") -> Param:
    return Param(default, str, help=help)


def step_size(default, help="step size α") -> Param:
    """The step size, always called ``alpha``: a number in pixel space (``2/255``) or a
    multiple of ε (``"1.25eps"``, ``"2.5eps/steps"``), resolved by :func:`resolve_step`."""
    return Param(_step_value(default) if default is not None else None, STEP, help=help)


def spec_list(default, help="") -> Param:
    """A list of specs (e.g. an attack pool): a TOML list of strings or tables, or on the
    command line ``[spec+spec]``; checked values are tuples of :class:`Spec`."""
    return Param(tuple(parse_spec_list(default)), SPECS, help=help)


#: Madry et al.'s PGD step rule, α = 2.5·ε/K: the default of every PGD advplug builds
MADRY_STEP = "2.5eps/steps"
_RELATIVE_STEP = re.compile(r"^\s*(\d*\.?\d*(?:e-?\d+)?)\s*\*?\s*(?:eps|ε)\s*(/\s*steps)?\s*$", re.IGNORECASE)


def _step_value(value):
    """A step size in canonical form: a float (pixel space) or ``"<r>eps[/steps]"``."""
    if isinstance(value, str):
        match = _RELATIVE_STEP.match(value)
        if match:
            ratio = float(match.group(1)) if match.group(1) else 1.0
            if not ratio > 0:
                return _INVALID
            ratio_text = f"{ratio:g}" if float(f"{ratio:g}") == ratio else repr(ratio)
            return f"{ratio_text}eps{'/steps' if match.group(2) else ''}"
        value = parse_value(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return _INVALID
    return float(value)


def resolve_step(alpha, eps: float, steps: int = 1) -> float:
    """The step size in pixel space: ``alpha`` as checked by :func:`step_size` (a number, or
    a multiple of ε, per step when written ``/steps``), at radius ``eps`` and ``steps`` steps.
    ``None`` is Madry et al.'s rule (:data:`MADRY_STEP`)."""
    alpha = MADRY_STEP if alpha is None else _step_value(alpha)
    if alpha is _INVALID:
        raise AdvplugError(f"alpha must be a step size (a number > 0, or 1.25eps, 2.5eps/steps), got {alpha!r}")
    if isinstance(alpha, float):
        return alpha
    ratio, per_step = float(alpha.split("eps")[0]), alpha.endswith("/steps")
    return ratio * eps / max(int(steps), 1) if per_step else ratio * eps


#: parameter names earlier versions used for the step size -> how to write them as ``alpha``
RENAMED_STEP_NAMES = {"alpha_ratio": lambda v: f"{v}eps", "step_ratio": lambda v: f"{v}eps",
                      "eps_step": lambda v: v}


def check_params(what: str, given: dict, schema: dict) -> dict:
    """``given`` checked against ``schema`` and completed with its defaults.

    ``schema`` maps each parameter name to a :class:`Param` (type and range checked) or to
    a plain default value (only the name is checked). An unknown key is one clear error
    with a "did you mean" where one is close."""
    given = _renamed_step(what, given, schema)
    unknown = sorted(set(given) - set(schema))
    if unknown:
        takes = ", ".join(sorted(schema)) or "no parameters"
        close = difflib.get_close_matches(unknown[0], list(schema), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        pools = [k for k, v in schema.items() if isinstance(v, Param) and v.kind == SPECS
                 and isinstance(given.get(k), str) and not given[k].lstrip().startswith("[")]
        if pools:
            hint += (f"; a list of specs with their own parameters goes in brackets, e.g. "
                     f"{pools[0]}=[fgsm+pgd:steps=10,alpha=0.01]")
        raise AdvplugError(f"{what} has no parameter {', '.join(map(repr, unknown))}{hint}; it takes: {takes}")
    out = {}
    for name, spec in schema.items():
        if isinstance(spec, Param):
            out[name] = spec.check(what, name, given[name]) if name in given else spec.default
        else:
            out[name] = given.get(name, spec)
    return out


_WARNED: set = set()


def _renamed_step(what: str, given: dict, schema: dict) -> dict:
    """The step size under an earlier name (``alpha_ratio``, ``step_ratio``, ``eps_step``)
    becomes ``alpha`` with a warning, so configs written before the rename still run."""
    alpha = schema.get("alpha")
    if not (isinstance(alpha, Param) and alpha.kind == STEP):  # an alpha that is not a step size is left alone
        return given
    old = [k for k in given if k in RENAMED_STEP_NAMES and k not in schema]
    if not old:
        return given
    if "alpha" in given or len(old) > 1:
        raise AdvplugError(f"{what}: give the step size once, as alpha (got {', '.join(sorted(['alpha', *old]))})")
    given = dict(given)
    value = RENAMED_STEP_NAMES[old[0]](given.pop(old[0]))
    message = (f"{what}: {old[0]} is now called alpha; read {old[0]}={value if old[0] == 'eps_step' else value[:-3]} "
               f"as alpha={value}")
    if message not in _WARNED:  # the config, the host and the trainer check the same parameters: say it once
        _WARNED.add(message)
        warn(message)
    given["alpha"] = value
    return given


def param_defaults(schema: dict) -> dict:
    """{name: default} of a schema (Param entries or plain defaults)."""
    return {name: spec.default if isinstance(spec, Param) else spec for name, spec in schema.items()}


def split_spec_list(text: str) -> list[str]:
    """'fgsm,pgd:steps=20,alpha=0.01,cw' -> ['fgsm', 'pgd:steps=20,alpha=0.01', 'cw']: a piece
    with '=' and no ':' continues the previous spec's parameters (attacks, trainers, ...)."""
    specs: list[str] = []
    for piece in filter(None, (p.strip() for p in text.split(","))):
        if specs and "=" in piece and ":" not in piece:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


# -- the schema of a registered thing --------------------------------------------------

def takes(schema: dict, label: str | None = None):
    """Declare the parameters of a function a plugin registers (a schedule or sampler
    factory, a model transform): ``@takes({"sigma": number(0.25, low=0)}, "model transform
    'noise'")``. Every call is checked against ``schema`` (one :class:`AdvplugError` naming
    ``label``, the parameter, what it accepts and what it got) and the function receives
    every parameter, defaults filled in. Classes declare a ``param_schema`` attribute instead."""
    import functools

    def mark(fn):
        what = label or repr(fn.__name__)

        @functools.wraps(fn)
        def checked(*args, **given):
            return fn(*args, **check_params(what, given, schema))

        checked.param_schema = schema
        return checked
    return mark


def schema_of(obj) -> dict | None:
    """The parameter schema (``{name: Param}``) a registered thing declares, or None."""
    return getattr(obj, "param_schema", None)


def _default_text(spec: Param) -> str:
    """A default as a user writes it: none, true, 0.001, [fgsm+pgd], 1.25eps."""
    default = spec.default
    if spec.kind == SPECS:
        return "[" + "+".join(map(str, default)) + "]"
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    return f"{default:g}" if isinstance(default, float) else str(default)


def describe_params(schema: dict | None) -> list[str]:
    """One line per parameter: name, default, what it accepts, its description."""
    if schema is None:
        return ["(declares no parameter schema: its parameters are not checked before the run)"]
    if not schema:
        return ["(no parameters)"]
    rows = []
    for name, spec in schema.items():
        if isinstance(spec, Param):
            rows.append((name, _default_text(spec), spec.accepts(), spec.help))
        else:
            rows.append((name, str(spec), "any value", ""))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f"{n:<{width[0]}}  default {d:<{width[1]}}  {a:<{width[2]}}  {h}".rstrip() for n, d, a, h in rows]
