"""RobustBench's evaluation protocol, run on any model that takes [0, 1] images.

``robustbench.eval.benchmark`` (1.1.1) does, in this order:

1. preprocessing from ``get_preprocessing(dataset, threat, model_name, preprocessing)``
   (CIFAR: ``ToTensor`` only, so inputs are in [0, 1] and normalization is the model's job);
2. the first ``n_examples`` test images in the official order
   (``load_clean_dataset``: a non-shuffled loader, batches of 100, cut to n);
3. clean accuracy with ``robustbench.utils.clean_accuracy`` in batches of ``batch_size``;
4. Linf/L2: AutoAttack ``version='standard'`` at the leaderboard's ε with the same
   ``batch_size``, an optional state file to resume from, robust accuracy read from the
   state's per-example flags; corruptions: mean accuracy over 15 corruptions x 5 severities.

Where the official ``autoattack`` package is installed (see ``compat.py``) and the data
pass torchvision's checks, :func:`run_benchmark` calls ``benchmark()`` itself. Otherwise
it runs the same steps with RobustBench's functions and ``pyautoattack``, with AutoAttack's
loop driven batch by batch so it can resume (``resumable_autoattack.py``; pyautoattack's own
state file cannot). Beyond the API spelling (``batch_size=`` for ``bs=``; the log through
the ``auto-attack`` logger instead of ``log_path``) it settles two things benchmark()
leaves open:

* the AutoAttack seed: benchmark() passes none, so the official package seeds every
  attack with the clock; advplug passes ``seed`` (default 0) so a rerun or a resumed run
  gives the same numbers;
* re-packed dataset copies that fail torchvision's md5 check are loaded on explicit
  request (``verify_checksums=False``) with the same preprocessing and order, where
  RobustBench's loader would try to download.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..attacks.autoattack_adapter import LOGGER_NAME, isolated_rng_and_trace
from ..attacks.base import eval_frozen
from ..data import BUILTIN_DATASETS, check_split_files, resolve_data_root
from ..distributed import SINGLE
from ..errors import AdvplugError
from ..fingerprint import json_digest, state_digests
from .compat import import_robustbench, official_autoattack
from .model_info import check_threat
from .resumable_autoattack import load_state, run_autoattack

# the leaderboards' radii (RobustBench: CIFAR Linf 8/255, L2 0.5; ImageNet Linf 4/255)
LEADERBOARD_EPS = {("cifar10", "Linf"): 8 / 255, ("cifar100", "Linf"): 8 / 255, ("cifar10", "L2"): 0.5,
                   ("cifar100", "L2"): 0.5, ("imagenet", "Linf"): 4 / 255, ("imagenet", "L2"): 3.0}
TEST_SIZE = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}
STATE_FILE = "autoattack_state.json"
LOG_FILE = "autoattack.log"
SETTINGS_FILE = "benchmark_settings.json"


@dataclass
class BenchmarkResult:
    clean_acc: float
    robust_acc: float
    n_examples: int
    dataset: str
    threat: str
    eps: float | None
    seconds: float
    runner: str  # "advplug+pyautoattack" or "robustbench.eval.benchmark"
    resumed: bool = False
    log_path: str | None = None
    state_path: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def leaderboard_eps(dataset: str, threat: str) -> float | None:
    if threat == "corruptions":
        return None
    try:
        return LEADERBOARD_EPS[(dataset, threat)]
    except KeyError:
        raise AdvplugError(f"RobustBench has no {dataset} {threat} leaderboard; pass --eps") from None


def _enums(dataset: str, threat: str):
    """RobustBench's enums (importing RobustBench first, through ``compat``)."""
    import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return BenchmarkDataset(dataset), ThreatModel(threat)


def _preprocessing(dataset, threat, model_name, preprocessing):
    ds, tm = _enums(dataset, threat)
    from robustbench.data import get_preprocessing

    if dataset == "imagenet" and preprocessing is None and model_name is None:
        preprocessing = "Res256Crop224"  # RobustBench's default for ImageNet models outside the zoo
    try:
        return get_preprocessing(ds, tm, model_name, preprocessing)
    except KeyError:
        raise AdvplugError(f"unknown RobustBench preprocessing {preprocessing!r}") from None


def load_protocol_data(dataset: str, n_examples: int, data_dir=None, *, threat: str = "Linf",
                       model_name: str | None = None, preprocessing=None, verify_checksums: bool = True):
    """The first ``n_examples`` test images and labels exactly as RobustBench feeds them."""
    check_threat(dataset, threat)
    if not 1 <= n_examples <= TEST_SIZE[dataset]:
        raise AdvplugError(f"--n-examples {n_examples}: {dataset}'s test set has {TEST_SIZE[dataset]} images")
    root = resolve_data_root(data_dir)
    prepr = _preprocessing(dataset, threat, model_name, preprocessing)
    ds, _ = _enums(dataset, threat)
    from robustbench.data import _load_dataset, load_clean_dataset

    if dataset == "imagenet":
        if not (root / "val").is_dir():
            raise AdvplugError(f"ImageNet validation images not found: looked for {root / 'val'} "
                               f"(RobustBench's layout: <data root>/val/<class id>/*.JPEG)")
        return load_clean_dataset(ds, n_examples, str(root), prepr)
    spec = BUILTIN_DATASETS[dataset]
    check_split_files(spec, False, root, download=False, verify_checksums=verify_checksums)
    if verify_checksums:  # the files pass torchvision's check: RobustBench's loader, untouched
        return load_clean_dataset(ds, n_examples, str(root), prepr)
    test_set = spec.load(root, False, False, False)  # same class, md5 check skipped on request
    test_set.transform = prepr
    return _load_dataset(test_set, n_examples)


def _corruption_data_check(dataset, data_dir):
    ds, tm = _enums(dataset, "corruptions")
    from robustbench.data import CORRUPTIONS_DIR_NAMES

    folder = Path(data_dir) / CORRUPTIONS_DIR_NAMES[ds][tm]
    if not folder.is_dir():
        raise AdvplugError(f"{dataset} corruptions data not found: looked for {folder} (RobustBench "
                           f"downloads it from Zenodo; offline, put {folder.name}/ there or pass "
                           f"--corruptions-data-dir)")
    return folder


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, so a resumed evaluation is refused for another model.
    Tensor digests only, not their names: a wrapper (DataParallel, ...) keeps the fingerprint."""
    return json_digest(list(state_digests(model).values()))[:16]


def _check_resume(out_dir: Path, settings: dict) -> bool:
    """True when a previous run with the same settings left a state to continue."""
    state, saved = out_dir / STATE_FILE, out_dir / SETTINGS_FILE
    if not state.exists():
        saved.write_text(json.dumps(settings, indent=2) + "\n")
        return False
    previous = json.loads(saved.read_text()) if saved.exists() else None
    if previous != settings:
        diff = sorted(k for k in settings if (previous or {}).get(k) != settings[k])
        raise AdvplugError(f"{state} belongs to an evaluation with other settings ({', '.join(diff)} differ); "
                           f"rerun with the same settings to continue it, or use another --out "
                           f"(or delete {state}) to start over")
    return True


@contextlib.contextmanager
def _benchmark_log(log_path: Path, echo: bool):
    """pyautoattack's own log and advplug's per-attack lines into ``log_path``; with
    ``echo``, advplug's lines on stderr as well (the progress bars show the batches)."""
    ours, theirs = logging.getLogger("advplug.benchmark"), logging.getLogger(LOGGER_NAME)
    saved = [(lg, lg.level, lg.disabled, lg.propagate) for lg in (ours, theirs)]
    to_file = logging.FileHandler(log_path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    to_screen = logging.StreamHandler(sys.stderr)
    to_screen.setFormatter(logging.Formatter("autoattack: %(message)s"))
    attached = [(ours, to_file), (theirs, to_file)] + ([(ours, to_screen)] if echo else [])
    for lg, handler in attached:
        lg.addHandler(handler)
    for lg in (ours, theirs):
        lg.setLevel(logging.DEBUG)
        lg.disabled, lg.propagate = False, False
    try:
        yield ours
    finally:
        for lg, handler in attached:
            lg.removeHandler(handler)
        to_file.close()
        for lg, level, disabled, propagate in saved:
            lg.setLevel(level)
            lg.disabled, lg.propagate = disabled, propagate


def _seed_everything(seed: int) -> None:  # what robustbench.eval.main does before benchmark()
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)


def run_benchmark(model: torch.nn.Module, *, dataset: str = "cifar10", threat: str = "Linf",
                  eps: float | None = None, n_examples: int = 10000, batch_size: int = 500, data_dir=None,
                  corruptions_data_dir=None, device="cpu", out_dir="runs/benchmark", seed: int = 0,
                  model_name: str | None = None, preprocessing=None, verify_checksums: bool = True,
                  progress: bool = True, use_official: bool | None = None, dist=SINGLE) -> BenchmarkResult:
    """Run RobustBench's protocol on ``model`` (inputs in [0, 1], normalization inside).

    Writes ``autoattack.log``, ``autoattack_state.json`` (resumable: call again with the
    same arguments and ``out_dir`` after an interruption) and ``benchmark_settings.json``
    into ``out_dir``. ``model_name`` is a RobustBench zoo name (it picks ImageNet
    preprocessing); ``use_official`` forces or forbids ``robustbench.eval.benchmark``
    (default: use it when the official AutoAttack package is installed and the data verify).
    Under torchrun (``dist``) the processes share AutoAttack's batches (advplug's runner:
    ``benchmark()`` runs on one device) and the result is the single-process one.
    """
    check_threat(dataset, threat)
    if eps is None:
        eps = leaderboard_eps(dataset, threat)
    if threat != "corruptions" and not eps > 0:
        raise AdvplugError(f"--eps must be positive, got {eps}")
    if batch_size < 1:
        raise AdvplugError(f"--batch-size must be >= 1, got {batch_size}")
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()  # RobustBench evaluates in eval mode (it warns otherwise)
    _seed_everything(seed)
    start = time.time()

    if threat == "corruptions":
        if dist.active:
            raise AdvplugError("the corruptions benchmark runs in one process; start it without torchrun")
        return _run_corruptions(model, dataset, n_examples, batch_size, data_dir,
                                corruptions_data_dir or resolve_data_root(data_dir), device, start, progress,
                                verify_checksums)

    settings = {"dataset": dataset, "threat": threat, "eps": eps, "n_examples": n_examples, "seed": seed,
                "batch_size": batch_size, "model": model_fingerprint(model)}
    resumed = dist.on_main(_check_resume, out, settings)
    official = official_autoattack() if use_official is None else use_official
    if official and (not verify_checksums or dist.active):
        official = False  # benchmark() would re-download copies that fail the md5 check; it uses one device
    if official:
        return _run_official(model, dataset, threat, eps, n_examples, batch_size, data_dir, device, out,
                             model_name, preprocessing, start, resumed)

    x, y = load_protocol_data(dataset, n_examples, data_dir, threat=threat, model_name=model_name,
                              preprocessing=preprocessing, verify_checksums=verify_checksums)
    from robustbench.utils import clean_accuracy

    clean = clean_accuracy(model, x, y, batch_size=batch_size, device=device)
    progress = progress and dist.is_main
    if progress:
        print(f"clean accuracy: {clean:.2%} on the first {n_examples} {dataset} test images", file=sys.stderr)
    state_path = out / STATE_FILE
    log_path = out / LOG_FILE if dist.is_main else out / f"{Path(LOG_FILE).stem}.rank{dist.rank}.log"
    if resumed and progress:
        done = ", ".join(load_state(state_path)["done"]) or "none finished"
        print(f"resuming AutoAttack from {state_path} (attacks done: {done})", file=sys.stderr)
    with _benchmark_log(log_path, progress) as logger, eval_frozen(model), isolated_rng_and_trace(device):
        state = run_autoattack(model, x, y, norm=threat, eps=eps, seed=seed, batch_size=batch_size, device=device,
                               state_path=state_path, progress=progress, logger=logger, clock_start=start,
                               dist=dist)
    robust = state["robust_accuracy"]
    seconds = state.get("previous_sessions_s", 0.0) + time.time() - start  # every session of a resumed run
    runner = "advplug+pyautoattack" + (f", {dist.world_size} processes" if dist.active else "")
    return BenchmarkResult(clean, robust, n_examples, dataset, threat, eps, seconds, runner, resumed, str(log_path),
                           str(state_path))


def _run_official(model, dataset, threat, eps, n_examples, batch_size, data_dir, device, out,
                  model_name, preprocessing, start, resumed) -> BenchmarkResult:
    """``robustbench.eval.benchmark`` itself, with the official AutoAttack package."""
    import robustbench.eval as rb_eval

    state_path, log_path = out / STATE_FILE, out / LOG_FILE
    clean, robust = rb_eval.benchmark(model, n_examples=n_examples, dataset=dataset, threat_model=threat,
                                      data_dir=str(resolve_data_root(data_dir)), device=device,
                                      batch_size=batch_size, eps=eps, log_path=str(log_path),
                                      model_name=model_name, preprocessing=preprocessing,
                                      aa_state_path=state_path)
    return BenchmarkResult(clean, robust, n_examples, dataset, threat, eps, time.time() - start,
                           "robustbench.eval.benchmark", resumed, str(log_path), str(state_path))


def _run_corruptions(model, dataset, n_examples, batch_size, data_dir, corruptions_dir, device, start, progress,
                     verify_checksums):
    """Mean accuracy over RobustBench's 15 corruptions x 5 severities (its leaderboard number).

    mCE is not computed: it needs RobustBench's AlexNet reference table."""
    import_robustbench()  # robustbench's __init__ imports AutoAttack: the stand-in must be in place first
    from robustbench.data import CORRUPTION_DATASET_LOADERS, CORRUPTIONS_DICT, PREPROCESSINGS, get_preprocessing
    from robustbench.utils import clean_accuracy
    from tqdm import tqdm

    x, y = load_protocol_data(dataset, n_examples, data_dir, threat="corruptions",
                              verify_checksums=verify_checksums)
    clean = clean_accuracy(model, x, y, batch_size=batch_size, device=device)
    _corruption_data_check(dataset, corruptions_dir)
    ds, tm = _enums(dataset, "corruptions")
    # benchmark() resizes ImageNet-C to 224x224 ("Res224"); CIFAR-C is used as stored
    prepr = get_preprocessing(ds, tm, None, "Res224") if dataset == "imagenet" else PREPROCESSINGS[None]
    per = {}
    cells = [(c, s) for c in CORRUPTIONS_DICT[ds][tm] for s in range(1, 6)]
    for corruption, severity in tqdm(cells, desc="corruptions", disable=not progress):
        xc, yc = CORRUPTION_DATASET_LOADERS[ds][tm](n_examples, severity, str(corruptions_dir), False, [corruption],
                                                    prepr)
        per[f"{corruption}/{severity}"] = clean_accuracy(model, xc, yc, batch_size=batch_size, device=device)
    robust = float(np.mean(list(per.values())))
    return BenchmarkResult(clean, robust, n_examples, dataset, "corruptions", None, time.time() - start,
                           "advplug+robustbench", extra={"per_corruption": per})
