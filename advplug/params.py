"""``name:key=value,...`` specs, as used on the command line for trainers, attacks and
transforms (e.g. ``pgd-at:steps=7,alpha=2/255``)."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from fractions import Fraction

from .errors import AdvplugError


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
    'torchattacks:pgd:steps=20' -> ('torchattacks:pgd', {'steps': 20})."""
    parts = str(spec).split(":", 2)
    if len(parts) >= 2 and parts[1] and "=" not in parts[1] and "," not in parts[1]:
        # a namespaced name: torchattacks:pgd[:k=v]
        name, rest = f"{parts[0]}:{parts[1]}", parts[2] if len(parts) > 2 else ""
    else:
        name, _, rest = str(spec).partition(":")
    params = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AdvplugError(f"cannot read {item!r} in {spec!r}: write name:key=value,key=value")
        params[key.strip().replace("-", "_")] = parse_value(value)
    return name.strip(), params


@dataclass(frozen=True)
class Param:
    """One parameter of a registered thing: type, default, accepted range, meaning.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str`` (``None``: any value, unchecked).
    ``low``/``high`` bound numbers (inclusive unless ``low_open``/``high_open``),
    ``choices`` lists the accepted strings, ``optional`` accepts ``None`` (implied by a
    ``None`` default: "use the rule stated in ``help``"). Build them with :func:`integer`,
    :func:`number`, :func:`flag`, :func:`choice` and :func:`text`."""

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
            what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
                self.kind, "any value")
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
        if ok and self.choices is not None:
            converted = str(converted).strip().lower() if self.kind is str else converted
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
    if kind is bool:
        return value if isinstance(value, bool) else _INVALID
    if kind is str:  # "name=10" reads as the number 10; as a string parameter it is "10"
        return value if isinstance(value, str) else str(value) if type(value) in (int, float) else _INVALID
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


def check_params(what: str, given: dict, schema: dict) -> dict:
    """``given`` checked against ``schema`` and completed with its defaults.

    ``schema`` maps each parameter name to a :class:`Param` (type and range checked) or to
    a plain default value (only the name is checked). An unknown key is one clear error
    with a "did you mean" where one is close."""
    unknown = sorted(set(given) - set(schema))
    if unknown:
        takes = ", ".join(sorted(schema)) or "no parameters"
        close = difflib.get_close_matches(unknown[0], list(schema), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AdvplugError(f"{what} has no parameter {', '.join(map(repr, unknown))}{hint}; it takes: {takes}")
    out = {}
    for name, spec in schema.items():
        if isinstance(spec, Param):
            out[name] = spec.check(what, name, given[name]) if name in given else spec.default
        else:
            out[name] = given.get(name, spec)
    return out


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
