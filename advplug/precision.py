"""Mixed precision (``--amp``): the one place that turns a name (``bf16``, ``fp16``) into a
torch dtype and checks it against the device, for training (:func:`advplug.engine.training_autocast`)
and evaluation alike, and the model wrapper that runs evaluation under autocast.

Evaluation wraps the model once (:class:`AutocastModel`, in
:func:`advplug.evaluation.evaluate_model`): every forward pass -- the clean predictions and
every attack's forward and backward passes, whatever library implements the attack --
runs under ``torch.autocast`` of the model's device, and the logits come back as float32.
Fingerprints and stored-result keys stay those of the unwrapped model; the key also holds
the precision, so an autocast result never stands in for an fp32 one, or the reverse.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import AdvplugError

#: ``--amp`` names -> autocast dtype
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_name(amp) -> str | None:
    """``"bf16"``/``"fp16"`` (any case), or None for None/empty (fp32); anything else is one error."""
    if amp is None or amp == "":
        return None
    name = str(amp).strip().lower()
    if name not in AMP_DTYPES:
        raise AdvplugError(f"--amp must be one of {', '.join(AMP_DTYPES)} (or left out for fp32), got {amp!r}")
    return name


def autocast_dtype(amp, device, *, cuda_only: str | None = None) -> torch.dtype | None:
    """The autocast dtype of ``--amp amp`` on ``device``, None for fp32 (``amp`` None).

    CUDA: bf16 or fp16. CPU: bf16 only (fp16 is one error). ``cuda_only``: what stays fp32
    off CUDA (training says ``"training"``): any ``--amp`` off CUDA is then one error."""
    name = amp_name(amp)
    if name is None:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return AMP_DTYPES[name]
    if cuda_only:
        raise AdvplugError(f"--amp {name} is mixed precision on CUDA; this run is on {device.type}, where "
                           f"{cuda_only} stays fp32: drop --amp (or pass --device cuda on a GPU machine)")
    if device.type == "cpu":
        if name == "bf16":
            return torch.bfloat16
        raise AdvplugError(f"--amp {name} is for CUDA; on the CPU autocast runs in bfloat16 only: pass --amp bf16 "
                           f"(or --device cuda on a GPU machine, or drop --amp for fp32)")
    raise AdvplugError(f"--amp {name}: autocast is supported on cuda and cpu here, not on {device.type}; "
                       f"drop --amp")


class AutocastModel(nn.Module):
    """``model`` with its forward pass under ``torch.autocast(device_type, dtype)`` and its
    floating-point output cast to float32. It owns no parameters of its own (those it shows
    are the model's), starts in the model's mode, and passes ``train``/``eval`` and
    ``requires_grad`` changes through to it."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.model = model
        self.autocast_dtype = dtype
        self.device_type = device_type
        self.train(model.training)

    def forward(self, *args, **kwargs):
        with torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype):
            out = self.model(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out

    def extra_repr(self) -> str:
        return f"autocast={self.device_type}:{str(self.autocast_dtype).replace('torch.', '')}"


def with_autocast(model: nn.Module, amp, device) -> nn.Module:
    """``model`` itself for fp32 (``amp`` None), else wrapped in :class:`AutocastModel` for
    ``device`` (checked with :func:`autocast_dtype`)."""
    dtype = autocast_dtype(amp, device)
    if dtype is None:
        return model
    return AutocastModel(model, dtype, torch.device(device).type)


def precision_label(amp) -> str:
    """What a report and a stored result's key say: ``"fp32"`` or the ``--amp`` name."""
    return amp_name(amp) or "fp32"


def precision_note(amp, device) -> str | None:
    """The report's sentence about an autocast evaluation (None for fp32)."""
    dtype = autocast_dtype(amp, device)
    if dtype is None:
        return None
    name, kind = amp_name(amp), torch.device(device).type
    note = (f"evaluated under {name} autocast (torch.autocast on {kind}, {str(dtype).replace('torch.', '')}, "
            f"--amp {name}): the clean predictions and every attack's forward and backward passes; logits "
            f"cast to float32. Accuracies can differ slightly from an fp32 evaluation")
    if name == "fp16":
        note += ("; fp16 has a narrow range and attacks use no loss scaling, so input gradients of confidently "
                 "classified samples can underflow to zero (weaker attacks): check against bf16 or fp32")
    return note
