"""Recipes: published training settings as runnable configs, each with the numbers it
should reproduce.

A recipe is one TOML file in this package (``<name>.toml``)::

    title = "FGSM-RS, Wong, Rice & Kolter 2020, MNIST"
    hardware = "cpu"                 # where it runs to the end in reasonable time: cpu | gpu
    estimate = "..."                 # how long, measured where
    seeds = [0]                      # default seeds of `advplug reproduce`
    base = "other-recipe"            # optional: start from that recipe's [train] and [quick]
    notes = "..."                    # sources of every setting, and where advplug differs

    [train]                          # TrainConfig keys (see `advplug train --help`)
    [evaluation]                     # attacks = "autoattack"; n_eval = 1000; quick_attack = "pgd:steps=5"
    [quick]                          # TrainConfig overrides of the minutes-long smoke version
    [[published]]                    # one table per published number
    metric = "autoattack"            # "clean", or an attack of [evaluation]
    value = 82.93                    # accuracy in percent
    tolerance = 3.0                  # points a reproduction may differ by
    source = "Croce & Hein 2020, ..."
    entry = "Wong et al. 2020"

``advplug recipes`` lists them, ``advplug reproduce NAME`` trains and checks one.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources

from ..config import merge_config
from ..errors import AdvplugError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HARDWARE = ("cpu", "gpu")
RECIPE_KEYS = {"title", "hardware", "estimate", "seeds", "base", "notes", "train", "evaluation", "quick",
               "published"}
EVALUATION_KEYS = {"attacks", "n_eval", "quick_attack", "quick_n_eval"}
PUBLISHED_KEYS = {"metric", "value", "tolerance", "source", "entry"}


@dataclass(frozen=True)
class Published:
    """One published number: ``metric`` is "clean" or an attack the recipe evaluates."""

    metric: str
    value: float
    source: str
    entry: str = ""
    tolerance: float = 3.0


@dataclass
class Recipe:
    name: str
    title: str
    hardware: str
    train: dict
    attacks: str = "autoattack"
    n_eval: int = 1000
    quick: dict = field(default_factory=dict)
    quick_attack: str = "pgd:steps=5"
    quick_n_eval: int = 32
    seeds: tuple = (0,)
    published: tuple = ()
    estimate: str = ""
    notes: str = ""

    def config(self, quick: bool = False) -> dict:
        """The TrainConfig values (with the quick overrides for ``quick``)."""
        return merge_config(self.train, self.quick) if quick else dict(self.train)

    def metrics(self) -> list[str]:
        """What is measured: clean accuracy, then one robust accuracy per attack."""
        return ["clean", *(a.strip() for a in split_attacks(self.attacks))]


def split_attacks(attacks: str) -> list[str]:
    from ..evaluation import split_attack_list

    return split_attack_list(attacks)


def _files() -> dict:
    return {f.name[:-5]: f for f in resources.files(__package__).iterdir() if f.name.endswith(".toml")}


def recipe_names() -> list[str]:
    return sorted(_files())


def _raw(name: str, files: dict, chain=()) -> dict:
    if name not in files:
        close = difflib.get_close_matches(name, sorted(files), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AdvplugError(f"unknown recipe {name!r}{hint}; `advplug recipes` lists them: {', '.join(sorted(files))}")
    if name in chain:
        raise AdvplugError(f"recipes start from each other in a circle: {' -> '.join((*chain, name))}")
    try:
        values = tomllib.loads(files[name].read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AdvplugError(f"recipe {name!r} cannot be parsed: {exc}") from None
    unknown = sorted(set(values) - RECIPE_KEYS)
    if unknown:
        raise AdvplugError(f"recipe {name!r}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(RECIPE_KEYS))}")
    base = values.get("base")
    if base:
        parent = _raw(base, files, (*chain, name))
        values["train"] = merge_config(parent.get("train", {}), values.get("train", {}))
        values["quick"] = merge_config(parent.get("quick", {}), values.get("quick", {}))
        values["evaluation"] = {**parent.get("evaluation", {}), **values.get("evaluation", {})}
        for key in ("hardware", "estimate", "seeds"):
            values.setdefault(key, parent.get(key))
    return values


def load_recipe(name: str) -> Recipe:
    """The recipe ``name``, checked: its keys and its published numbers (each a metric the
    recipe measures, an accuracy in [0, 100]). Its configs are checked as TrainConfigs by
    ``advplug reproduce`` before anything trains."""
    values = _raw(name, _files())
    where = f"recipe {name!r}"
    evaluation = values.get("evaluation", {})
    unknown = sorted(set(evaluation) - EVALUATION_KEYS)
    if unknown:
        raise AdvplugError(f"{where}: unknown [evaluation] key(s) {', '.join(unknown)}")
    hardware = values.get("hardware", "cpu")
    if hardware not in HARDWARE:
        raise AdvplugError(f"{where}: hardware must be one of {', '.join(HARDWARE)}, got {hardware!r}")
    published = []
    for entry in values.get("published", []):
        unknown = sorted(set(entry) - PUBLISHED_KEYS)
        missing = sorted({"metric", "value", "source"} - set(entry))
        if unknown or missing:
            raise AdvplugError(f"{where}: a [[published]] entry needs metric, value, source (unknown: "
                               f"{', '.join(unknown) or '-'}; missing: {', '.join(missing) or '-'})")
        published.append(Published(**entry))
    recipe = Recipe(name=name, title=values.get("title", name), hardware=hardware, train=values.get("train", {}),
                    quick=values.get("quick", {}), seeds=tuple(values.get("seeds") or (0,)),
                    published=tuple(published), estimate=values.get("estimate", ""), notes=values.get("notes", ""),
                    **evaluation)
    metrics = recipe.metrics()
    for entry in recipe.published:
        if entry.metric not in metrics:
            raise AdvplugError(f"{where}: published metric {entry.metric!r} is not measured; the recipe measures "
                               f"{', '.join(metrics)}")
        if not 0 <= entry.value <= 100 or entry.tolerance < 0:
            raise AdvplugError(f"{where}: published {entry.metric} {entry.value} (tolerance {entry.tolerance}) must "
                               f"be an accuracy in [0, 100] with a tolerance >= 0")
    return recipe


def load_recipes() -> dict[str, Recipe]:
    return {name: load_recipe(name) for name in recipe_names()}


def recipe_text(name: str) -> str:
    """The recipe file as shipped."""
    files = _files()
    _raw(name, files)
    return files[name].read_text()
