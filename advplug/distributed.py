"""Data parallelism under ``torchrun``: one process per device, PyTorch's own engine
(``torch.distributed``), used for training and for sharded evaluation.

``torchrun --nproc_per_node N -m advplug train ...`` (multi-node: torchrun's usual
``--nnodes``/``--rdzv-*`` flags) starts N copies of the command; :func:`setup` joins them
into one process group (NCCL on CUDA, one GPU per process by ``LOCAL_RANK``; gloo on the
CPU). Without torchrun (``WORLD_SIZE`` unset or 1) every function here is the
single-process case: :data:`SINGLE` does nothing and costs nothing.

How training is split (the same result as one process with the same *global* batch):

* every process draws the same global batch (same seed, same data order and augmentation)
  and trains on its rows :meth:`Distributed.rows` (near-equal contiguous parts);
* after each backward pass the gradients are averaged with weights ``n_rank / n_batch``
  (:meth:`Distributed.average_gradients`, one flat all-reduce), so every process applies
  the gradient of the global batch's mean loss and the weights stay identical;
* a trainer with modules and optimizers of its own (the FGSM-SDI generator) averages their
  gradients the same way (``Trainer.average_gradients``); :meth:`Distributed.check_in_sync`
  compares the model's and the trainer's tensors across processes after every epoch and
  stops the run with one error if they drifted apart.

This is an explicit all-reduce rather than the ``DistributedDataParallel`` wrapper:
adversarial trainers run extra forward/backward passes through the model (the inner
maximization, input gradients only) that DDP's reducer would count as training passes.
"""
from __future__ import annotations

import datetime
import functools
import os
from dataclasses import dataclass

from .errors import AdvplugError

# torch is imported where it is used: advplug.errors.warn asks current() on every warning,
# and `import advplug` does not import torch

#: how long a process waits for the others at a collective (rank 0 alone runs the
#: per-epoch monitor, the checkpoint and the final evaluation meanwhile)
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("ADVPLUG_DIST_TIMEOUT_MIN", 120)))


def launched() -> bool:
    """True in a process that torchrun started with more than one process in the group."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group (``rank`` of ``world_size``); the single-process
    case is ``Distributed(0, 1)`` (:data:`SINGLE`), where every method is a no-op."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    # -- splitting work -------------------------------------------------------------

    def rows(self, n: int) -> slice:
        """This process's contiguous part of ``n`` rows: sizes differ by at most one, in
        rank order (``torch.tensor_split``'s split)."""
        q, r = divmod(n, self.world_size)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (self.rank < r))

    def mine(self, count: int) -> range:
        """Items ``rank, rank + W, ...`` of ``count`` (e.g. evaluation batches)."""
        return range(self.rank, count, self.world_size)

    # -- collectives ----------------------------------------------------------------

    def average_(self, tensors: list, weight: float) -> None:
        """In place on every process: sum over processes of ``weight * tensor`` (weights
        summing to one over the group make it a weighted mean). One flat all-reduce."""
        if not self.active or not tensors:
            return
        import torch.distributed
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(tensors).mul_(weight)
        torch.distributed.all_reduce(flat)
        for t, reduced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
            t.copy_(reduced)

    def average_gradients(self, params, weight: float) -> None:
        """``p.grad = Σ_ranks weight_rank · p.grad_rank`` for every parameter; a parameter
        without a gradient on some process counts as zero there, and keeps ``grad=None``
        only where it had none on every process."""
        if not self.active:
            return
        import torch

        params = [p for p in params if p.requires_grad]
        if not params:
            return
        # the flags are made on the device (a list copied from the host would wait for it)
        had = torch.ones(len(params), device=params[0].device)
        for i, p in enumerate(params):
            if p.grad is None:
                had[i] = 0
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self.average_(grads + [had], weight)
        # a parameter with a gradient here has one after; only where some had none is the
        # flag read (one device sync), to keep grad=None where no process had a gradient
        flags = had.tolist() if any(p.grad is None for p in params) else None
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = g if flags is None or flags[i] else None

    def average_buffers(self, module) -> None:
        """Floating-point buffers (BatchNorm running statistics, which each process
        gathered on its own rows) replaced by their mean over processes."""
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        self.average_(buffers, 1.0 / self.world_size)

    def all_reduce_sum(self, tensor):
        if self.active:
            import torch.distributed

            torch.distributed.all_reduce(tensor)
        return tensor

    def broadcast_module(self, module) -> None:
        """Rank 0's parameters and buffers on every process."""
        if self.active:
            import torch.distributed

            for t in module.state_dict().values():
                torch.distributed.broadcast(t, 0)

    def broadcast(self, value):
        """Rank 0's (picklable, tensor-free) value on every process."""
        if not self.active:
            return value
        import torch.distributed

        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's (picklable) value, in rank order, on every process."""
        if not self.active:
            return [value]
        import torch.distributed

        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed

            torch.distributed.barrier()

    def on_main(self, fn, *args, **kwargs):
        """``fn`` run on rank 0 only; its result, or its AdvplugError, on every process
        (so that an error rank 0 meets stops every process with the same message)."""
        result = error = None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except AdvplugError as exc:
                error = str(exc)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise AdvplugError(error)
        return result

    def check_in_sync(self, what: str, tensors: dict) -> None:
        """One error if ``{name: tensor}`` (model and trainer state) is not bit-identical
        on every process: the processes would be training different models."""
        if not self.active:
            return
        from .fingerprint import tensor_digest

        mine = {name: tensor_digest(t) for name, t in tensors.items()}
        for rank, theirs in enumerate(self.gather(mine)):
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if differ:
                raise AdvplugError(
                    f"{what}: process {self.rank} and process {rank} hold different values of "
                    f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}; the processes no longer train "
                    f"one model. A trainer that updates modules of its own must average their gradients with "
                    f"Trainer.average_gradients before its optimizer step, and draw any randomness that "
                    f"changes them from a generator seeded the same on every process")


SINGLE = Distributed()
_current = SINGLE


def current() -> Distributed:
    """The process group this process joined (:data:`SINGLE` outside torchrun)."""
    return _current


def setup(device: str = "auto") -> tuple[Distributed, str]:
    """Join torchrun's process group if this process was started by it; returns the group
    and the device this process uses (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    global _current
    if not launched():
        return SINGLE, device
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device in ("auto", "cuda") and torch.cuda.is_available() or device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise AdvplugError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise AdvplugError(f"torchrun started process LOCAL_RANK={local_rank} but this node has "
                               f"{torch.cuda.device_count()} GPU(s); pass --nproc_per_node <= the GPU count")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    _current = Distributed(dist.get_rank(), dist.get_world_size())
    return _current, device


def teardown() -> None:
    """Leave the process group (at the end of a command)."""
    global _current
    if _current.active:
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    _current = SINGLE


# -- BatchNorm over the global batch -------------------------------------------------------

def sync_batchnorm(module):
    """``module`` with every BatchNorm layer computing its training-mode statistics over the
    whole global batch (all processes' rows), as one process would: torch's
    ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` on the CPU (where torch has none).
    Outside torchrun the module is returned as it is. Its ``state_dict`` keeps BatchNorm's
    keys, so a saved model loads into the plain architecture."""
    if not current().active:
        return module
    import torch

    device = next(iter(module.parameters()), torch.empty(0)).device
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_batchnorm(module, device)


def _to_global_batchnorm(module, device):
    from torch.nn.modules.batchnorm import _BatchNorm

    cls = _global_batchnorm_class()
    if isinstance(module, _BatchNorm) and not isinstance(module, cls):
        new = cls(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(device)
    for name, child in module.named_children():
        module.add_module(name, _to_global_batchnorm(child, device))
    return module


@functools.cache
def _global_batchnorm_class():
    import torch

    class _SumOverProcesses(torch.autograd.Function):
        """all-reduce (sum) whose backward is the all-reduce of the gradients"""

        @staticmethod
        def forward(ctx, tensor):
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor)
            return tensor

        @staticmethod
        def backward(ctx, grad):
            grad = grad.clone()
            torch.distributed.all_reduce(grad)
            return grad

    class GlobalBatchNorm(torch.nn.BatchNorm2d):
        """BatchNorm (any input rank) whose training-mode mean and variance are taken over
        every process's rows: per channel Σx, Σx² and the count in one differentiable
        all-reduce (its backward sums the gradients over processes, as SyncBatchNorm's).
        Evaluation mode uses the running statistics, as BatchNorm."""

        def _check_input_dim(self, x):
            if x.dim() < 2:
                raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

        def forward(self, x):
            if not (self.training and current().active):
                return super().forward(x)
            dims = [0, *range(2, x.dim())]
            c = x.shape[1]
            xf = x.float()
            count = xf.new_full((1,), x.numel() // c)
            stats = _SumOverProcesses.apply(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
            n = stats[-1]
            mean = stats[:c] / n
            var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                    unbiased = var.detach() * n / (n - 1).clamp_min(1)
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
            if self.affine:
                y = y * self.weight.view(shape) + self.bias.view(shape)
            return y.to(x.dtype)

    return GlobalBatchNorm


def __getattr__(name):  # GlobalBatchNorm is built on first use: this module does not import torch
    if name == "GlobalBatchNorm":
        return _global_batchnorm_class()
    raise AttributeError(name)
