"""The training configuration: defaults < ``--config run.toml`` < command-line flags."""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdvplugError
from .threat import Threat, parse_norm

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "multistep", "cyclic", "onecycle", "cosine")
AMP_DTYPES = ("bf16",)  # bf16 needs no loss scaling; fp16 would
#: dict keys whose overrides merge into the file's dict (other dicts, e.g. trainer_params,
#: belong to one named trainer/schedule and are replaced whole)
MERGED_KEYS = ("model_params", "augment")


@dataclass
class TrainConfig:
    # what to train
    dataset: str = "mnist"
    model: str = "mnist-cnn"
    model_params: dict = field(default_factory=dict)
    trainer: str = "standard"
    trainer_params: dict = field(default_factory=dict)
    schedule: str | None = None  # attack-parameter schedule from a plugin
    schedule_params: dict = field(default_factory=dict)
    sampler: str | None = None  # batch sampler from a plugin (mixed clean:adversarial batches); trainer "standard"
    sampler_params: dict = field(default_factory=dict)
    transforms: list = field(default_factory=list)  # "name:key=value,..." applied in order
    # threat model, pixel space; eps None: the dataset's default for the norm
    norm: str = "Linf"
    eps: float | None = None
    # optimization; None: the dataset's default (DatasetSpec.training), see `advplug train --help`
    epochs: int = 1
    batch_size: int = 128
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_schedule: str | None = None
    lr_milestones: list = field(default_factory=list)  # epochs (floats allowed); multistep
    lr_gamma: float = 0.1
    lr_peak: float = 0.4  # cyclic: fraction of training at which the LR peaks (Wong et al.: MNIST 0.4, CIFAR 0.5)
    label_smoothing: float = 0.0  # the trainers' training cross-entropy (Trainer.loss); 0: plain CE; the attacks
    # (inner maximization, monitor, evaluation) always maximize plain CE
    # data
    data_root: str | None = None
    download: bool = False
    verify_checksums: bool = True
    train_subset: int | None = None
    test_subset: int | None = None
    augment: dict | None = None  # {"crop": 4, "flip": true, "color_jitter": 0.0}; None: dataset default
    # monitoring and evaluation
    monitor_size: int = 256  # held-out training samples for the per-epoch clean/PGD-10 check; 0: off
    monitor_steps: int = 10
    eval_steps: int = 10  # PGD steps of the final test evaluation; 0: clean accuracy only
    eval_seed: int = 42  # picks the test subset: identical for every model and training seed
    keep_best: bool = False  # early stopping: final model = epoch with the best held-out PGD accuracy
    co_guard: float | None = None  # stop and restore the previous epoch when held-out PGD drops > this (points)
    plot: bool = True  # overfitting.png from the monitor, every epoch
    # run
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # "bf16": the training step (the trainer's attacks included) under CUDA autocast
    channels_last: bool = False  # model and batches in channels-last memory format (faster convs on GPUs)
    compile: bool = False  # torch.compile the model for the training step (the trainer's passes)
    sync_bn: bool = True  # under torchrun: BatchNorm statistics over the global batch (as one process); false:
    # per process (DistributedDataParallel's default, less communication)
    out: str = "runs/latest"
    keep_checkpoints: bool = False  # also keep checkpoints/epoch_NNN.pt
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    @property
    def threat(self) -> Threat:
        return Threat(self.norm, self.eps)

    def resolve_defaults(self, dataset_spec) -> "TrainConfig":
        """Fill what the config left unset (None) from the dataset's defaults: optimizer
        settings (``dataset_spec.training``) and ε for the norm; the resolved values are
        what config.json records."""
        for key, value in dataset_spec.training.items():
            if getattr(self, key, None) is None:
                setattr(self, key, value)
        if self.eps is None:
            self.eps = dataset_spec.default_eps(parse_norm(self.norm))
        return self

    def validate(self) -> "TrainConfig":
        threat = self.threat  # raises on a bad norm or ε
        self.norm, self.eps = threat.norm, threat.eps
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise AdvplugError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise AdvplugError(f"{name} must be >= 1 (or unset for the whole split), got {value}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise AdvplugError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule.lower() not in LR_SCHEDULES:
            raise AdvplugError(f"unknown lr_schedule {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
        if self.lr <= 0:
            raise AdvplugError(f"lr must be > 0, got {self.lr}")
        for name in ("monitor_size", "eval_steps", "momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise AdvplugError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.monitor_steps < 1:
            raise AdvplugError(f"monitor_steps must be >= 1, got {self.monitor_steps}")
        if (self.keep_best or self.co_guard is not None) and not self.monitor_size:
            raise AdvplugError("keep_best and co_guard watch the held-out PGD monitor: set monitor_size > 0")
        if self.co_guard is not None and not 0 < float(self.co_guard) <= 100:
            raise AdvplugError(f"co_guard is a drop in accuracy points in (0, 100], got {self.co_guard}")
        if not 0 < float(self.lr_peak) < 1:
            raise AdvplugError(f"lr_peak is the fraction of training where the cyclic LR peaks, in (0, 1), "
                               f"got {self.lr_peak}")
        if not 0 <= float(self.label_smoothing) < 1:
            raise AdvplugError(f"label_smoothing is the weight of the uniform target in the training cross-entropy, "
                               f"in [0, 1), got {self.label_smoothing}")
        if self.amp is not None and str(self.amp).lower() not in AMP_DTYPES:
            raise AdvplugError(f"amp must be one of {', '.join(AMP_DTYPES)} (or unset for fp32), got {self.amp!r}")
        if self.sampler and self.trainer != "standard":
            raise AdvplugError(f"--sampler replaces the trainer's inner maximization; leave --trainer out "
                               f"(standard), got trainer {self.trainer!r} with sampler {self.sampler!r}")
        self.optimizer, self.lr_schedule = self.optimizer.lower(), self.lr_schedule.lower()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AdvplugError(f"unknown config key(s) {', '.join(unknown)}{hint}; known keys: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: check_type(key, value, hints[key]) for key, value in values.items()})


#: what each annotated type accepts, in words
_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
               dict: "a table (dict)", list: "a list"}


def check_type(key: str, value, annotation):
    """``value`` as the config key's type (a whole float becomes an int, an int a float),
    or one :class:`AdvplugError` saying what the key takes. ``eps`` also takes a string
    such as ``"8/255"``."""
    allowed = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    if value is None and type(None) in allowed:
        return None
    if key == "eps" and isinstance(value, str):
        return value  # parsed (and checked) by Threat
    for kind in (t for t in allowed if t is not type(None)):
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is int and isinstance(value, (int, float)) and float(value).is_integer():
            return int(value)
        if kind is float and isinstance(value, (int, float)):
            return float(value)
        if kind in (str, dict, list) and isinstance(value, kind):
            return value
    words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in allowed if t is not type(None))
    if type(None) in allowed:
        words += " (or unset)"
    hint = ""
    if isinstance(value, str) and any(t in (int, float) for t in allowed):
        hint = f" (write {key} = {value}, without quotes)" if _is_number(value) else ""
    raise AdvplugError(f"config key {key!r} must be {words}, got {value!r}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_config_file(path, _including=()) -> dict:
    """A TOML (``run.toml``) or JSON (e.g. a run's ``config.json``) file as a dict.

    A file may start from another one, ``config = "other.toml"`` (relative to the file, which
    may itself start from a third); the including file's keys win, ``model_params`` and
    ``augment`` merge key by key."""
    path = Path(path)
    if not path.is_file():
        raise AdvplugError(f"config file {path} not found")
    try:
        values = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise AdvplugError(f"config file {path} cannot be parsed: {exc}") from None
    parent = values.pop("config", None)
    if parent is None:
        return values
    if not isinstance(parent, str):
        raise AdvplugError(f"config file {path}: config = {parent!r} must be the name of the file to start from, "
                           f'e.g. config = "fast_at_mnist.toml"')
    chain = (*_including, path.resolve())
    parent_path = path.parent / parent
    if parent_path.resolve() in chain:
        raise AdvplugError(f"config files start from each other in a circle: "
                           f"{' -> '.join(str(p) for p in (*chain, parent_path.resolve()))}")
    return merge_config(read_config_file(parent_path, chain), values)


def merge_config(values: dict, overrides: dict) -> dict:
    """``values`` with ``overrides`` on top (None ignored); MERGED_KEYS dicts merge key by key."""
    values = dict(values)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in MERGED_KEYS and isinstance(value, dict) and isinstance(values.get(key), dict):
            value = {**values[key], **value}  # --activation refines the file's model_params
        values[key] = value
    return values


def make_config(config=None, registry=None, **overrides) -> TrainConfig:
    """From a TrainConfig, a dict, or a file path; ``overrides`` win (None values ignored);
    what is still unset comes from the dataset's defaults (``registry`` has the dataset;
    default: the process-wide host's)."""
    if isinstance(config, TrainConfig):
        values = config.to_dict()
    elif isinstance(config, dict):
        values = dict(config)
    elif config is None:
        values = {}
    else:
        values = read_config_file(config)
    cfg = TrainConfig.from_dict(split_spec_tables(merge_config(values, overrides)))
    if registry is None:
        from .host import get_host

        registry = get_host().registry
    cfg = cfg.resolve_defaults(registry.get("datasets", cfg.dataset)).validate()
    check_components(cfg, registry)
    return cfg


#: config keys naming a registered thing, whose parameters are in ``<key>_params``
SPEC_KEYS = ("trainer", "schedule", "sampler", "model")


def split_spec_tables(values: dict) -> dict:
    """``sampler = {name = "mixed-ratio", ratio = "30:70"}`` (a TOML table) is the same as
    ``sampler = "mixed-ratio"`` with ``sampler_params = {ratio = "30:70"}``."""
    from .params import Spec

    values = dict(values)
    for key in SPEC_KEYS:
        if isinstance(values.get(key), dict):
            spec = Spec.parse(values[key])
            values[key] = spec.name
            values[f"{key}_params"] = {**(values.get(f"{key}_params") or {}), **spec.params}
    return values


def check_components(cfg: TrainConfig, registry) -> None:
    """Every registered thing the run names exists and takes the parameters given, checked
    against its schema before any data is loaded: one :class:`AdvplugError` naming the
    thing, the parameter, what it accepts and what it got."""
    from .params import Spec

    registry.entry("datasets", cfg.dataset).check(cfg.augment)
    registry.entry("models", cfg.model).check(cfg.model_params)
    registry.entry("trainers", cfg.trainer).check(cfg.trainer_params)
    for kind, name, params in (("schedules", cfg.schedule, cfg.schedule_params),
                               ("samplers", cfg.sampler, cfg.sampler_params)):
        if name:
            registry.entry(kind, name).check(params)
    for transform in cfg.transforms:
        spec = Spec.parse(transform)
        registry.entry("model_transforms", spec.name).check(spec.params)
