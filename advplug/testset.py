"""The fixed test images of an evaluation and the per-sample correctness of a model on
them (clean or attacked): the low-level pieces that :mod:`advplug.evaluation` and
:mod:`advplug.sanity` share. This module imports neither of them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .data import load_split, subset_indices
from .distributed import SINGLE
from .errors import AdvplugError
from .fingerprint import json_digest


@dataclass
class TestSet:
    dataset: str
    x: torch.Tensor  # uint8 NCHW
    y: torch.Tensor
    indices: torch.Tensor
    seed: int

    @property
    def identity(self) -> dict:
        """What a stored result must match: the dataset and the exact test indices."""
        return {"dataset": self.dataset, "samples": len(self.y), "indices": json_digest(self.indices.tolist())}


def load_test_set(spec, n=None, seed=42, **load_kwargs) -> TestSet:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise AdvplugError(f"--test-subset must be a whole number >= 1 (or left out for the whole test split), "
                           f"got {n!r}")
    x, y = load_split(spec, False, **load_kwargs)
    idx = subset_indices(len(y), None if n is None else min(n, len(y)), seed)
    return TestSet(spec.name, x[idx], y[idx], idx, seed)


def _batches(test: TestSet, batch_size, device, dist=SINGLE):
    """(batch number, first index, x, y) of this process's batches (all of them in one process)."""
    starts = range(0, len(test.y), batch_size)
    for number in dist.mine(len(starts)):
        start = starts[number]
        x = test.x[start:start + batch_size].to(device).float().div_(255)
        yield number, start, x, test.y[start:start + batch_size].to(device)


def batch_seed(seed: int, number: int) -> int:
    """The seed of batch ``number``'s attack randomness: a batch meets the same random
    draws whichever process attacks it, and whatever ran before it."""
    return seed * 100_003 + number


def nonfinite_logits_error(what: str, bad: int, total: int) -> AdvplugError:
    """Non-finite logits mean nothing (``argmax`` of NaN picks a class, and that counted as
    correct ~10% of the time): one error instead of an accuracy."""
    return AdvplugError(f"{what}: the model returned non-finite logits (NaN/inf) for {bad} of {total} inputs; "
                        f"its accuracy would be meaningless (diverged training, or a numerical problem in the model)")


def predictions_correct(model, test, batch_size, device, attack=None, desc=None, progress=False,
                        what="model", seed=None, dist=SINGLE) -> torch.Tensor:
    """Per-sample bool: is the model right on (attacked) sample i.

    ``seed``: each batch's attack draws its randomness from ``batch_seed(seed, batch)``
    (None: from torch's generator as it stands). ``dist`` (under torchrun): every process
    attacks its batches (``dist.mine``) and all get the whole result -- with ``seed``, the
    one a single process computes."""
    out = torch.zeros(len(test.y), dtype=torch.bool)
    bar = tqdm(total=len(test.y), desc=desc, disable=not progress or not dist.is_main, leave=False, unit="img")
    for number, start, x, y in _batches(test, batch_size, device, dist):
        if attack is not None:
            if seed is not None:
                torch.manual_seed(batch_seed(seed, number))
            x = attack(x, y)
        with torch.no_grad():
            logits = model(x)
        # one transfer per batch: correct and finite together
        correct, finite = torch.stack([logits.argmax(1) == y, torch.isfinite(logits).all(1)]).cpu()
        if not finite.all():
            raise nonfinite_logits_error(what, int((~finite).sum()), len(finite))
        out[start:start + len(y)] = correct
        bar.update(len(y) * dist.world_size)
    bar.close()
    if dist.active:  # each sample was scored by exactly one process
        out = torch.stack(dist.gather(out)).any(0)
    return out
