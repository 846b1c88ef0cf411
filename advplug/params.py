"""``name:key=value,...`` specs, as used on the command line for trainers, attacks and
transforms (e.g. ``pgd-at:steps=7,alpha=2/255``)."""
from __future__ import annotations

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


def check_params(what: str, given: dict, defaults: dict) -> dict:
    """Merge ``given`` into ``defaults``; an unknown key is one clear error."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        takes = ", ".join(sorted(defaults)) or "no parameters"
        raise AdvplugError(f"{what} has no parameter {', '.join(map(repr, unknown))}; it takes: {takes}")
    return {**defaults, **given}


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
