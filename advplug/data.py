"""Datasets through torchvision's own loaders, held as uint8 tensors and batched without
per-sample Python work (augmentation is vectorized over the batch).

Data root: ``--data-root``, else ``$ADVPLUG_DATA``, else ``./data``. Nothing is
downloaded unless asked for (``download=True``); a missing dataset is one clear error
naming where advplug looked and how to fix it.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity

from .errors import AdvplugError


def resolve_data_root(data_root=None) -> Path:
    return Path(data_root or os.environ.get("ADVPLUG_DATA") or "data").expanduser()


#: training defaults of a dataset that states none: SGD as in most CIFAR-style recipes
GENERIC_TRAINING = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                    "lr_schedule": "multistep"}
#: threat radii of a dataset that states none: the CIFAR leaderboards' (RobustBench)
GENERIC_EPS = {"Linf": 8 / 255, "L2": 0.5}


@dataclass
class DatasetSpec:
    """What advplug needs to know about a dataset; ``load`` returns (uint8 NCHW, int64).

    ``training`` holds the optimizer settings (``optimizer``, ``lr``, ``momentum``,
    ``weight_decay``, ``lr_schedule``) a run uses where neither its config nor a flag sets
    them: chosen so every built-in trainer learns on a short run. ``eps`` holds the default
    radius per norm, for training and evaluation alike (pixel space)."""

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple
    std: tuple
    files: Callable  # (root, train) -> [(path, md5 or None)]
    load: Callable  # (root, train, download, verify) -> torchvision dataset
    augment: dict = field(default_factory=dict)  # default augmentation for training
    training: dict = field(default_factory=lambda: dict(GENERIC_TRAINING))
    eps: dict = field(default_factory=lambda: dict(GENERIC_EPS))

    def default_eps(self, norm: str) -> float:
        """The dataset's default radius for ``norm`` (pixel space): what train, eval, study
        and benchmark use when no ε is given."""
        return float(self.eps.get(norm, GENERIC_EPS[norm]))

    @property
    def param_schema(self) -> dict:
        """A dataset's parameters are its training augmentation (config ``augment``)."""
        from .params import flag, integer, number

        aug = self.augment
        return {"crop": integer(aug.get("crop", 0), low=0, help="random crop: zero padding in pixels (0: off)"),
                "flip": flag(aug.get("flip", False), help="random horizontal flip"),
                "color_jitter": number(aug.get("color_jitter", 0.0), 0, 1,
                                       help="brightness/contrast/saturation jitter strength (0: off)")}

    def describe_defaults(self) -> str:
        """'adam lr 0.001, weight decay 0, constant LR; ε Linf 0.3, L2 2' for --help."""
        t = {**GENERIC_TRAINING, **self.training}
        optimizer = f"{t['optimizer']} lr {t['lr']:g}"
        if t["optimizer"] == "sgd":
            optimizer += f" momentum {t['momentum']:g}"
        radii = ", ".join(f"{norm} {_eps_text(eps)}" for norm, eps in {**GENERIC_EPS, **self.eps}.items())
        return f"{optimizer}, weight decay {t['weight_decay']:g}, {t['lr_schedule']} LR; ε {radii}"


def _eps_text(eps: float) -> str:
    """8/255 for radii that are whole steps of 1/255 (as papers write them), else 0.3."""
    steps = eps * 255
    return f"{round(steps)}/255" if 0 < eps < 1 and abs(steps - round(steps)) < 1e-9 else f"{eps:g}"


# -- torchvision constructors ---------------------------------------------------------

class _CheckedCifar:
    """CIFAR with torchvision's integrity check limited to the split asked for and,
    on explicit request only, without md5 (re-packed copies with identical pixels)."""

    verify = True

    def _check_integrity(self):
        files = self.train_list if self.train else self.test_list
        names = [f for f, _ in files] + [self.meta["filename"]]
        md5s = [m for _, m in files] + [self.meta["md5"]]
        return all(check_integrity(os.path.join(self.root, self.base_folder, n),
                                   m if self.verify else None) for n, m in zip(names, md5s))

    def _load_meta(self):
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def _cifar(base):

    def files(root, train):
        folder = Path(root) / base.base_folder
        split = base.train_list if train else base.test_list
        return [(folder / n, m) for n, m in split] + [(folder / base.meta["filename"], base.meta["md5"])]

    def load(root, train, download, verify):
        cls = type(f"Checked{base.__name__}", (_CheckedCifar, base), {"verify": verify})
        return cls(str(root), train=train, download=download)

    return files, load


def _mnist_files(root, train):
    raw = Path(root) / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    return [(raw / f"{prefix}-images-idx3-ubyte", None), (raw / f"{prefix}-labels-idx1-ubyte", None)]


def _mnist_load(root, train, download, verify):
    return tvd.MNIST(str(root), train=train, download=download)


def _svhn_files(root, train):
    _url, name, md5 = tvd.SVHN.split_list["train" if train else "test"]
    return [(Path(root) / name, md5)]


def _svhn_load(root, train, download, verify):
    split = "train" if train else "test"
    if not verify:  # torchvision checks md5 in _check_integrity; skip only when asked
        cls = type("UncheckedSVHN", (tvd.SVHN,), {"_check_integrity": lambda self: True})
        return cls(str(root), split=split, download=download)
    return tvd.SVHN(str(root), split=split, download=download)


_CIFAR_AUG = {"crop": 4, "flip": True, "color_jitter": 0.0}
CIFAR10_FILES, CIFAR10_LOAD = _cifar(tvd.CIFAR10)
CIFAR100_FILES, CIFAR100_LOAD = _cifar(tvd.CIFAR100)

#: MNIST: Adam 1e-3 (SGD 0.05 left PGD-AT near chance after an epoch on 2,000-5,000 images);
#: ε = 0.3 (Madry et al.), L2 2.0 (Tramèr & Boneh)
_MNIST_TRAINING = {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "lr_schedule": "constant"}
#: SVHN: SGD 0.01 (Rice et al. 2020: 0.1 diverges on SVHN)
_SVHN_TRAINING = {**GENERIC_TRAINING, "lr": 0.01}

BUILTIN_DATASETS = {
    "mnist": DatasetSpec("mnist", 10, 1, 28, (0.1307,), (0.3081,), _mnist_files, _mnist_load,
                         {"crop": 0, "flip": False, "color_jitter": 0.0}, _MNIST_TRAINING, {"Linf": 0.3, "L2": 2.0}),
    "cifar10": DatasetSpec("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                           CIFAR10_FILES, CIFAR10_LOAD, dict(_CIFAR_AUG)),
    "cifar100": DatasetSpec("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            CIFAR100_FILES, CIFAR100_LOAD, dict(_CIFAR_AUG)),
    # no flip for digits: a mirrored digit is another symbol
    "svhn": DatasetSpec("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        _svhn_files, _svhn_load, {"crop": 4, "flip": False, "color_jitter": 0.0}, _SVHN_TRAINING),
}


# -- loading --------------------------------------------------------------------------

def check_split_files(spec: DatasetSpec, train: bool, root: Path, download=False, verify_checksums=True) -> list:
    """Check one split's files under ``root``: missing (unless ``download``) or failing
    md5 (unless ``verify_checksums`` is off) is one :class:`AdvplugError` saying how to fix
    it. Returns the missing files (non-empty only when ``download`` may fetch them)."""
    split = "train" if train else "test"
    files = spec.files(root, train)
    missing = [str(p) for p, _ in files if not Path(p).is_file()]
    if missing and not download:
        raise AdvplugError(
            f"{spec.name} {split} split not found: looked for {', '.join(missing)} "
            f"(data root {root}, from --data-root, else $ADVPLUG_DATA, else ./data). "
            f"Point --data-root or ADVPLUG_DATA at a folder that holds it, or pass --download "
            f"where the network allows"
        )
    if not missing and verify_checksums:
        bad = [str(p) for p, md5 in files if md5 and not check_integrity(str(p), md5)]
        if bad:
            raise AdvplugError(
                f"{spec.name} files fail torchvision's md5 check: {', '.join(bad)}. If this is a "
                f"re-packed copy you trust (same pixels and labels), load it with "
                f"--no-verify-checksums (config: verify_checksums = false)"
            )
    return missing


def load_split(spec: DatasetSpec, train: bool, data_root=None, download=False, verify_checksums=True):
    """Return ``(images uint8 [N,C,H,W], labels int64 [N])`` for one split."""
    root = resolve_data_root(data_root)
    split = "train" if train else "test"
    missing = check_split_files(spec, train, root, download, verify_checksums)
    try:
        ds = spec.load(root, train, download and bool(missing), verify_checksums)
    except AdvplugError:
        raise
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError/URLError/OSError
        what = "download failed" if missing else "loading failed"
        raise AdvplugError(
            f"{spec.name} {split} split: {what} under {root} ({type(exc).__name__}: {exc}). "
            f"Without internet, copy the dataset there or point --data-root at a copy"
        ) from None
    return _as_tensors(ds, spec)


def _as_tensors(ds, spec):
    data = ds.data
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    x = torch.as_tensor(np.asarray(data))
    if x.dim() == 3:  # N,H,W
        x = x.unsqueeze(1)
    elif x.shape[-1] == spec.channels and x.shape[1] != spec.channels:  # N,H,W,C
        x = x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def subset_indices(total: int, n: int | None, seed: int, offset: int = 0) -> torch.Tensor:
    """Fixed indices from the seed: positions ``offset:offset+n`` of a seeded permutation."""
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    end = total if n is None else offset + n
    if n is not None and end > total:
        raise AdvplugError(f"asked for {n} samples after {offset} held out, but the split has {total}")
    return perm[offset:end].sort().values


# -- batching and augmentation ---------------------------------------------------------

def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A small CPU tensor (per-batch random draws, indices) on ``device`` without making the
    host wait: on CUDA through pinned memory with ``non_blocking=True`` (a copy from pageable
    memory synchronizes with the device); elsewhere (and for a tensor not on the CPU) a plain
    ``.to``, so CPU results stay bit-identical."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(x: torch.Tensor, crop: int = 0, flip: bool = False, color_jitter: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding, horizontal flip and brightness/contrast/saturation
    jitter, each drawn per sample, vectorized over the batch (x float in [0, 1]). The draws
    come from ``generator`` on the CPU (the same numbers on every device) and reach a CUDA
    batch through :func:`to_device` (pinned, non-blocking: no host-device sync)."""
    n, c, h, w = x.shape
    dev = x.device
    if crop:
        padded = torch.nn.functional.pad(x, (crop, crop, crop, crop))
        dy = to_device(torch.randint(0, 2 * crop + 1, (n,), generator=generator), dev)
        dx = to_device(torch.randint(0, 2 * crop + 1, (n,), generator=generator), dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None].expand(n, c, h, w + 2 * crop)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :].expand(n, c, h, w)
        x = x.gather(3, cols)
    if flip:
        mask = to_device(torch.rand(n, generator=generator) < 0.5, dev).view(n, 1, 1, 1)
        x = torch.where(mask, x.flip(3), x)
    if color_jitter:
        def factor():
            return to_device(1 + (torch.rand(n, generator=generator) * 2 - 1) * color_jitter, dev).view(n, 1, 1, 1)
        x = x * factor()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        if c == 3:
            gray = x.mean(dim=1, keepdim=True)
            x = (x - gray) * factor() + gray  # saturation
        x = x.clamp(0, 1)
    return x


class BatchLoader:
    """Batches from uint8 tensors: shuffling from its own generator (saved for resume),
    conversion to [0, 1] floats and augmentation on the target device."""

    def __init__(self, images, labels, batch_size, shuffle=False, augment=None, device="cpu",
                 seed=0, drop_last=False, min_last=1):
        self.device = torch.device(device)
        # the whole split lives on the device (MNIST ~47 MB, CIFAR ~150 MB as uint8):
        # one copy up front instead of one per batch
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.min_last = batch_size if drop_last else min_last  # a smaller last batch is left out
        self.augment = {k: v for k, v in (augment or {}).items() if v}
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size + (n % self.batch_size >= self.min_last)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = to_device(order, self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx].float().div_(255)
            y = self.labels[idx]
            if self.augment:
                x = augment_batch(x, generator=self.generator, **self.augment)
            yield x, y
