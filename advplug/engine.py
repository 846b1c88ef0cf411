"""The training loop: data, model, trainer, optimizer and LR schedule put together, with
per-epoch metrics, monitor, atomic checkpoints, exact resume and lifecycle hooks."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from . import manifest as manifest_mod
from .checkpoint import CHECKPOINT_FORMAT, atomic_save, safe_load
from .config import TrainConfig, make_config
from .data import BatchLoader, load_split, subset_indices
from .errors import AdvplugError, warn
from .host import get_host
from .modelio import build_model, model_spec, save_model
from .monitor import MONITOR_ATTACK, clean_and_pgd_accuracy
from .params import MADRY_STEP
from .rundir import check_output_dir, prepare_run_dir
from .stats import accuracy_interval, format_accuracy
from .threat import Threat, threat_warning
from .trainers.sampled import SampledTrainer

CLEAN_ACC_EVERY = 10  # batches between eval-mode clean-accuracy samples (adversarial trainers)
REFRESH_EVERY = 10  # batches between progress-bar updates (each reads device tensors once)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of process ``rank`` > 0 under torchrun (at ``epoch``: a run resumed with
    another number of processes re-seeds there)."""
    return (seed * 1_000_003 + rank * 7_919 + epoch) % 2**63


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AdvplugError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdvplugError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return device


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def training_autocast(cfg: TrainConfig, device: torch.device):
    """A context for the training step: CUDA autocast in ``cfg.amp``'s dtype, or nothing.
    The monitor and the test evaluation stay fp32, so the numbers a run reports are
    full-precision ones. The name and the device are checked by
    :func:`advplug.precision.autocast_dtype` (as for ``advplug eval --amp``), here CUDA only."""
    from .precision import autocast_dtype

    dtype = autocast_dtype(cfg.amp, device, cuda_only="training")
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type="cuda", dtype=dtype)


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_lr_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """Stepped once per batch, so every schedule has iteration resolution."""
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule == "multistep":
        milestones = cfg.lr_milestones or [cfg.epochs * 0.5, cfg.epochs * 0.75]
        return sched.MultiStepLR(optimizer, [int(m * steps_per_epoch) for m in milestones], cfg.lr_gamma)
    if cfg.lr_schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.lr_schedule == "cyclic":
        return sched.LambdaLR(optimizer, cyclic_factor(total, cfg.lr_peak))
    return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, cycle_momentum=False)


def cyclic_factor(total_steps: int, peak: float):
    """Wong et al.'s cyclic LR as a factor of the peak LR for batch ``step`` (0-based):
    linear from 0 up to 1 at ``peak`` of training, then down to 0 at its end. Batch i is
    trained with the value at the end of it, (i + 1) / total, as their MNIST script's
    ``lr_schedule(epoch + (i + 1) / len(loader))``; past the end it stays 0."""
    up = peak * total_steps

    def factor(step: int) -> float:
        t = step + 1
        return t / up if t <= up else max(0.0, (total_steps - t) / (total_steps - up))

    return factor


def schedule_progress(epoch: int, epochs: int) -> float:
    """t for an attack-parameter schedule: 0 at the first epoch, 1 at the last (a curriculum
    ends at its target); a single epoch runs at t = 1."""
    return epoch / (epochs - 1) if epochs > 1 else 1.0


class Run:
    """A training run: what lifecycle hooks receive as ``run``.

    ``Run(cfg)`` sets the run up (:meth:`setup`: components checked and built, data
    loaded, model, trainer, optimizer; a resumed run restores its state), :meth:`fit`
    runs the loop. ``threat`` is the run's threat model in force, the one object the
    trainer, sampler, monitor and metrics read; a schedule changes it through
    :meth:`set_eps`. ``config_threat`` is the threat the run was configured with, used by
    the final test evaluation (the same unless a schedule ends at another ε, which it warns
    about).
    """

    def __init__(self, cfg: TrainConfig, host=None, resume_state: dict | None = None,
                 dist: distributed.Distributed = distributed.SINGLE, device: str | None = None):
        self.config = cfg
        self.host = host or get_host()
        self.registry = self.host.registry
        self.out_dir = Path(cfg.out)
        self.dist = dist  # the torchrun process group (advplug.distributed); SINGLE without torchrun
        self.device = resolve_device(device or cfg.device)
        self.batch_share = 1.0  # this process's share of the current global batch
        self.config_threat = self.threat = cfg.threat
        self.history: list[dict] = []
        self.epoch = 0  # epochs completed
        self.stop_reason: str | None = None
        self.best = None  # (held-out PGD accuracy, epoch) of checkpoints/best.pt, with keep_best
        self.setup(resume_state)

    # -- setup ----------------------------------------------------------------------

    def setup(self, resume_state=None):
        self._build_components()
        seed_everything(self.config.seed)
        self._load_data()
        self._build_training()
        self.manifest = manifest_mod.new_manifest(self)
        if self.dist.active:
            self._join_group()
        if resume_state is not None:
            self._restore(resume_state)

    def _join_group(self):
        """Under torchrun: rank 0's weights everywhere, and a random stream of its own for
        every other process (rank 0 keeps the single-process one)."""
        self.dist.broadcast_module(self.model)
        self.manifest["world_size"] = self.dist.world_size
        if self.dist.rank:
            seed_everything(rank_seed(self.config.seed, self.dist.rank, self.epoch))

    def _build_components(self):
        """The registered things the run names (parameters were checked with the config)."""
        cfg, reg = self.config, self.registry
        self.dataset = reg.get("datasets", cfg.dataset)
        self.schedule = self._build("schedules", cfg.schedule, cfg.schedule_params) if cfg.schedule else None
        self.sampler = self._build("samplers", cfg.sampler, cfg.sampler_params) if cfg.sampler else None
        warning = threat_warning(self.threat, self.dataset)
        if warning:
            warn(warning)

    def _build(self, kind: str, name: str, params: dict):
        """A registered factory called with its parameters checked, defaults filled in."""
        entry = self.registry.entry(kind, name)
        return entry.obj(**entry.check(params))

    def _load_data(self):
        cfg = self.config
        load = dict(data_root=cfg.data_root, download=cfg.download, verify_checksums=cfg.verify_checksums)
        train_x, train_y = load_split(self.dataset, True, **load)
        test_x, test_y = load_split(self.dataset, False, **load)
        n_train = len(train_y)
        if self.dist.world_size > cfg.batch_size:
            raise AdvplugError(f"batch_size {cfg.batch_size} is smaller than the {self.dist.world_size} processes "
                               f"torchrun started: every process needs rows of each batch; use --batch-size >= "
                               f"{self.dist.world_size} (it is the global batch, split over the processes)")
        if cfg.monitor_size >= n_train:
            raise AdvplugError(f"monitor_size {cfg.monitor_size} leaves no training data ({n_train} samples)")
        # held-out monitor samples first, then the training subset, from one seeded permutation
        self.heldout_idx = subset_indices(n_train, cfg.monitor_size, cfg.seed)
        rest = None if cfg.train_subset is None else min(cfg.train_subset, n_train - cfg.monitor_size)
        self.train_idx = subset_indices(n_train, rest, cfg.seed, offset=cfg.monitor_size)
        self.test_idx = subset_indices(len(test_y), cfg.test_subset and min(cfg.test_subset, len(test_y)),
                                       cfg.eval_seed)
        self.train_monitor_idx = self.train_idx[:cfg.monitor_size]
        self.data = {"train": (train_x, train_y), "test": (test_x, test_y)}
        augment = self.registry.entry("datasets", cfg.dataset).check(cfg.augment)
        # under torchrun every process draws the same global batches and trains on its rows; a
        # last batch with fewer images than processes is left out
        self.loader = BatchLoader(train_x[self.train_idx], train_y[self.train_idx], cfg.batch_size,
                                  shuffle=True, augment=augment, device=self.device, seed=cfg.seed,
                                  min_last=self.dist.world_size)

    def _build_training(self):
        cfg = self.config
        self.spec = model_spec(cfg, self.dataset)
        self.model = build_model(self.spec, self.registry).to(self.device)
        if cfg.sync_bn:  # under torchrun: BatchNorm over the global batch
            self.model = distributed.sync_batchnorm(self.model)
        self.autocast = training_autocast(cfg, self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the trainer's passes go through the compiled model; weights, checkpoints, the monitor
        # and the evaluation use the module itself (the same parameters)
        model = torch.compile(self.model) if cfg.compile else self.model
        if self.sampler is not None:  # the sampler composes the batches; the trainer takes the CE on them
            self.trainer = SampledTrainer(model, self.threat, self.sampler, name=cfg.sampler, **cfg.trainer_params)
        else:
            self.trainer = self.registry.get("trainers", cfg.trainer)(model, self.threat, **cfg.trainer_params)
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.lr_scheduler = make_lr_scheduler(cfg, self.optimizer, len(self.loader))
        self.trainer.bind(self)

    def set_eps(self, eps) -> None:
        """Change the radius of the run's threat (schedules do, through
        ``Trainer.set_attack_params(eps=...)``); the trainer rebuilds what depends on it."""
        self.threat = Threat(self.threat.norm, eps)
        self.trainer.threat_changed()

    def _restore(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state.get("lr_scheduler"):
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.trainer.load_state_dict(state.get("trainer", {}))
        self.loader.generator.set_state(state["loader_rng"])
        self.epoch = state["epoch"]
        self._restore_rng(state)
        self.best = tuple(state["best"]) if state.get("best") else None
        self.history = list(state.get("history", []))
        previous = state.get("manifest") or {}
        self.manifest["epoch_times_s"] = list(previous.get("epoch_times_s", []))
        self.manifest["resumed"] = list(previous.get("resumed", [])) + [
            {"at_epoch": self.epoch, "time": manifest_mod.now()}]
        self.manifest["started"] = previous.get("started", self.manifest["started"])
        self.manifest["_wall_before"] = manifest_mod.wall_time_before(self.out_dir, previous)

    def _restore_rng(self, state):
        """Each process's random stream as saved. Weights, optimizer, LR schedule, data
        order and trainer state do not depend on the number of processes (batches are
        global); the random streams do: resumed with another number of processes, rank 0
        continues the saved main stream and the others start fresh ones, said once."""
        saved_world = int(state.get("world_size", 1))
        ranks = state.get("rng_ranks")
        if saved_world == self.dist.world_size and ranks:
            set_rng_state(ranks[self.dist.rank])
        elif self.dist.rank == 0:
            set_rng_state(state["rng"])
        else:
            seed_everything(rank_seed(self.config.seed, self.dist.rank, self.epoch))
        if saved_world != self.dist.world_size and self.dist.is_main:
            warn(f"resuming a run written by {saved_world} process(es) with {self.dist.world_size}: weights, "
                 f"optimizer, LR schedule, data order and trainer state continue exactly; the per-process random "
                 f"streams (random starts, dropout) cannot be split the same way, so the rest of the run is not "
                 f"bit-identical to an uninterrupted one")

    # -- files ----------------------------------------------------------------------

    def write_start_files(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        subsets = {"seed": self.config.seed, "eval_seed": self.config.eval_seed,
                   "heldout_monitor": self.heldout_idx.tolist(),
                   "train_monitor": self.train_monitor_idx.tolist(),
                   "train": self.train_idx.tolist(), "test": self.test_idx.tolist()}
        (self.out_dir / "subsets.json").write_text(json.dumps(subsets) + "\n")
        manifest_mod.write(self)

    def checkpoint(self, rng_states: list | None = None):
        """``rng_states``: every process's random state under torchrun (rank order)."""
        state = {
            "format": CHECKPOINT_FORMAT, "version": 1, "epoch": self.epoch,
            "config": self.config.to_dict(), "spec": self.spec,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "trainer": self.trainer.state_dict(), "loader_rng": self.loader.generator.get_state(),
            "rng": rng_state(), "history": self.history, "manifest": self.manifest, "best": self.best,
            "world_size": self.dist.world_size,
        }
        if rng_states is not None:
            state["rng_ranks"] = rng_states
        ckpt_dir = self.out_dir / "checkpoints"
        atomic_save(state, ckpt_dir / "last.pt")
        if self.config.keep_checkpoints:
            atomic_save(state, ckpt_dir / f"epoch_{self.epoch:03d}.pt")

    def weights(self) -> dict:
        """The model's and the trainer's state, copied (to go back to)."""
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "trainer": self.trainer.state_dict(), "epoch": self.epoch}

    def restore_weights(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.trainer.load_state_dict(saved.get("trainer", {}))

    # -- the loop -------------------------------------------------------------------

    def optimizer_step(self, loss: torch.Tensor, step_lr: bool = True, after_backward=None) -> None:
        """One update of the model: backward, optimizer step and (``step_lr``) one step of
        the per-batch LR schedule -- a trainer updating several times per batch steps the
        schedule on one of them, so the schedule keeps its length in epochs.
        ``after_backward``: a callable run between the backward pass and the optimizer step
        (the gradients are in ``.grad`` then), e.g. to put back weights the loss was taken
        at (adversarial weight perturbation). Under torchrun the gradients are averaged over
        the processes (weighted by their rows of the batch) before both."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.model.parameters(), self.batch_share)
        if after_backward is not None:
            after_backward()
        self.optimizer.step()
        # autocast keeps low-precision copies of the weights for as long as its region lasts; a
        # trainer that updates inside its step (free-at's replays) must not meet the old ones
        torch.clear_autocast_cache()
        if step_lr and self.lr_scheduler is not None:
            self.lr_scheduler.step()

    def train_step(self, x: torch.Tensor, y: torch.Tensor):
        """One batch: the trainer's step (channels-last and autocast as configured) and the
        model's update -> the trainer's :class:`~advplug.trainers.base.StepOutput`."""
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            out = self.trainer.step(x, y)
        if not self.trainer.updates_model:
            self.optimizer_step(out.loss)
        return out

    def train_epoch(self) -> dict:
        cfg, model, trainer = self.config, self.model, self.trainer
        model.train()
        dev = self.device
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        clean_correct = torch.zeros((), device=dev)
        seen = clean_seen = 0
        show = (cfg.progress if cfg.progress is not None else sys.stderr.isatty()) and self.dist.is_main
        bar = tqdm(total=len(self.loader), desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not show, leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(self.loader):
            if self.dist.active:  # this process's rows of the global batch
                rows = self.dist.rows(y.shape[0])
                self.batch_share = (rows.stop - rows.start) / y.shape[0]
                x, y = x[rows], y[rows]
            out = self.train_step(x, y)
            n = y.shape[0]
            seen += n
            loss_sum += out.loss.detach() * n
            correct += (out.logits.detach().argmax(1) == y).sum()
            if out.clean_logits is not None:
                clean_correct += (out.clean_logits.detach().argmax(1) == y).sum()
                clean_seen += n
            elif i % CLEAN_ACC_EVERY == 0:
                model.eval()
                with torch.no_grad():
                    clean_correct += (model(x).argmax(1) == y).sum()
                model.train()
                clean_seen += n
            if show and (i % REFRESH_EVERY == 0 or i == len(self.loader) - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                **{"adv" if trainer.adversarial else "acc": f"{100 * correct.item() / seen:.1f}%"},
                                clean=f"{100 * clean_correct.item() / max(clean_seen, 1):.1f}%")
            bar.update(1)
        bar.close()
        # one read of the device per epoch (and one all-reduce under torchrun: the whole batch's numbers)
        totals = torch.stack([loss_sum, correct, clean_correct,
                              torch.tensor(float(seen), device=dev), torch.tensor(float(clean_seen), device=dev)])
        loss_sum, correct, clean_correct, seen, clean_seen = self.dist.all_reduce_sum(totals.double()).tolist()
        if not cfg.sync_bn:  # each process's BatchNorm statistics, averaged
            self.dist.average_buffers(model)
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": 100 * correct / max(seen, 1),
            "train_clean_acc": 100 * clean_correct / max(clean_seen, 1),
            "train_samples": int(seen),
            **trainer.epoch_metrics(),
        }

    def monitor(self) -> dict:
        cfg = self.config
        if not cfg.monitor_size:
            return {}
        x, y = self.data["train"]
        out = {}
        for name, idx in (("heldout", self.heldout_idx), ("train", self.train_monitor_idx)):
            clean, pgd = clean_and_pgd_accuracy(self.model, x[idx], y[idx], self.threat,
                                                cfg.monitor_steps, device=self.device, registry=self.registry)
            out[f"monitor_{name}_clean_acc"] = clean
            out[f"monitor_{name}_pgd_acc"] = pgd
        return out

    def fit(self) -> "Run":
        """Train to the last epoch (or an early stop), save the model, evaluate it. Ctrl-C
        records ``interrupted`` in the manifest and raises :class:`RunInterrupted`."""
        try:
            return self._fit()
        except KeyboardInterrupt:
            if self.dist.is_main and self.out_dir.is_dir():
                manifest_mod.write(self, status="interrupted")
            raise RunInterrupted(self.out_dir, (self.out_dir / "checkpoints" / "last.pt").is_file()) from None

    def _fit(self) -> "Run":
        main = self.dist.is_main  # under torchrun, rank 0 alone writes, prints and calls lifecycle hooks
        if main:
            self.write_start_files()
            self.host.call("advplug_train_start", run=self)
        while self.epoch < self.config.epochs:
            reason = self.run_epoch()
            if reason:
                self.stop_reason = str(reason)
                if main:
                    print(f"stopping after epoch {self.epoch}: {self.stop_reason}", flush=True)
                break
        if not main:
            return self
        self.host.call("advplug_fit_end", run=self)
        save_model(self.model, self.spec, self.out_dir / "model.pt", epoch=self.epoch)
        self.final_eval = self.evaluate_test()
        (self.out_dir / "final_eval.json").write_text(json.dumps(self.final_eval, indent=2) + "\n")
        self.host.call("advplug_train_end", run=self)
        manifest_mod.write(self, finished=True)
        return self

    def run_epoch(self) -> str | None:
        """One epoch: schedule, training, monitor, lifecycle hooks, checkpoint. Returns a
        reason to stop (from ``advplug_should_stop``) or None."""
        cfg = self.config
        attack_params = {}
        if self.schedule is not None:
            attack_params = self.schedule(schedule_progress(self.epoch, cfg.epochs), self.epoch,
                                          self.config_threat, dict(self.trainer.params)) or {}
            self.trainer.set_attack_params(**attack_params)
        start = time.perf_counter()
        metrics = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        metrics.update(self.train_epoch())
        metrics["epoch_time_s"] = time.perf_counter() - start
        self.check_diverged(metrics)
        self.dist.check_in_sync(f"epoch {self.epoch + 1}", self.synced_tensors())
        rng_states = self.dist.gather(rng_state()) if self.dist.active else None
        self.epoch += 1
        # under torchrun: rank 0 monitors, calls the lifecycle hooks and checkpoints; its
        # weights (a hook may have restored an earlier epoch) and its decision to stop reach
        # every process
        reason = self.dist.on_main(self._end_epoch, metrics, attack_params, rng_states)
        self.dist.broadcast_module(self.model)
        return reason

    def _end_epoch(self, metrics: dict, attack_params: dict, rng_states) -> str | None:
        mon_start = time.perf_counter()
        metrics.update(self.monitor())
        metrics["monitor_time_s"] = time.perf_counter() - mon_start
        metrics["eps"] = self.threat.eps
        metrics.update({f"attack_{k}": v for k, v in attack_params.items() if k != "eps"})
        self.history.append(metrics)
        self.host.call("advplug_epoch_end", run=self, epoch=self.epoch, metrics=metrics)
        self.manifest["epoch_times_s"].append(metrics["epoch_time_s"])
        print(format_epoch(metrics, self.trainer.adversarial, self.config.monitor_steps), flush=True)
        self.checkpoint(rng_states)
        manifest_mod.write(self)
        reason = self.host.call_first("advplug_should_stop", run=self, epoch=self.epoch, metrics=metrics)
        return None if reason is None else str(reason)

    def synced_tensors(self) -> dict:
        """The tensors every process must hold alike: the model's state and every tensor
        of the trainer's ``state_dict`` (e.g. the FGSM-SDI generator and its optimizer)."""
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update(_tensors(self.trainer.state_dict(), "trainer"))
        return out

    def check_diverged(self, metrics: dict) -> None:
        """A non-finite training loss is one error, before the epoch is checkpointed:
        ``checkpoints/last.pt`` keeps the last finite epoch."""
        if not math.isfinite(metrics["train_loss"]):
            kept = (f"{self.out_dir / 'checkpoints' / 'last.pt'} holds epoch {self.epoch}, the last finite one"
                    if self.epoch else "no epoch finished, so nothing was kept")
            raise AdvplugError(f"training diverged in epoch {self.epoch + 1}: the training loss is "
                               f"{metrics['train_loss']} ({self.config.optimizer} lr {self.config.lr:g}); lower --lr. "
                               f"{kept}")

    def evaluate_test(self) -> dict:
        cfg, threat = self.config, self.config_threat
        x, y = self.data["test"]
        clean, pgd = clean_and_pgd_accuracy(self.model, x[self.test_idx], y[self.test_idx],
                                            threat, cfg.eval_steps, device=self.device, registry=self.registry)
        result = {"split": "test", "samples": len(self.test_idx), "eval_seed": cfg.eval_seed,
                  "model_epoch": self.best[1] if cfg.keep_best and self.best else self.epoch,
                  "threat": {"norm": threat.norm, "eps": threat.eps}, "clean_acc": clean,
                  "pgd_steps": cfg.eval_steps, "pgd_acc": pgd,
                  "attack": f"{MONITOR_ATTACK}:steps={cfg.eval_steps} (torchattacks PGD{'L2' if threat.norm == 'L2' else ''}, "
                            f"alpha={MADRY_STEP}, random start, eval mode)"}
        n = len(self.test_idx)
        result["clean_ci95"] = list(accuracy_interval(clean, n))
        line = f"test ({n} samples): clean {format_accuracy(clean, n)}"
        if pgd is not None:
            result["pgd_ci95"] = list(accuracy_interval(pgd, n))
            line += f", PGD-{cfg.eval_steps} ({threat}) {format_accuracy(pgd, n)}"
        line += " (95% CI)"
        print(line, flush=True)
        return result


def _tensors(state, prefix: str) -> dict:
    """``{dotted.name: tensor}`` of every tensor in a nested dict/list state."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    out = {}
    for key, value in items:
        out.update(_tensors(value, f"{prefix}.{key}"))
    return out


def format_epoch(m: dict, adversarial: bool, monitor_steps: int) -> str:
    parts = [f"epoch {m['epoch']}", f"loss {m['train_loss']:.4f}",
             f"train {'adv ' if adversarial else ''}acc {m['train_acc']:.2f}%",
             f"lr {m['lr']:.4g}", f"{m['epoch_time_s']:.1f}s"]
    if "monitor_heldout_pgd_acc" in m:
        parts.append(f"held-out clean {m['monitor_heldout_clean_acc']:.1f}% "
                     f"PGD-{monitor_steps} {m['monitor_heldout_pgd_acc']:.1f}%")
    return " | ".join(parts)


def load_resume_state(path) -> dict:
    """``path`` is a checkpoint file or a run directory (its checkpoints/last.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    return safe_load(path, formats=(CHECKPOINT_FORMAT,))


RESUMABLE_OVERRIDES = ("epochs", "out", "device", "data_root", "progress", "compile")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after its manifest recorded ``interrupted``; ``out_dir`` is
    the run, ``resumable`` whether a checkpoint exists to continue it from."""

    def __init__(self, out_dir, resumable: bool):
        self.out_dir, self.resumable = Path(out_dir), resumable
        super().__init__(self.hint)

    @property
    def hint(self) -> str:
        if self.resumable:
            return f"interrupted; continue with: advplug train --resume {self.out_dir}"
        return (f"interrupted in the first epoch, before any checkpoint of {self.out_dir}; run the same "
                f"command again to start over")


def train(config=None, *, resume=None, host=None, overwrite: bool = False, **overrides) -> Run:
    """Train from a config (TrainConfig, dict, or TOML/JSON path) plus keyword overrides,
    or continue a run exactly with ``resume=`` a run directory or checkpoint.

    A new run refuses an output directory that already holds a run (model or checkpoint)
    unless ``overwrite``, which removes the old run's files first."""
    registry = (host or get_host()).registry
    state = None
    if resume is not None:
        if config is not None:
            raise AdvplugError(f"--resume continues {resume} with the config it was started with; --config {config} "
                               f"would be ignored. Drop --config (only {', '.join(RESUMABLE_OVERRIDES)} can change "
                               f"on resume)")
        if overwrite:
            raise AdvplugError("--overwrite starts a run afresh; it does not go with --resume")
        state = load_resume_state(resume)
        blocked = sorted(k for k, v in overrides.items() if v is not None and k not in RESUMABLE_OVERRIDES)
        if blocked:
            raise AdvplugError(f"--resume continues the saved config; cannot change {', '.join(blocked)} "
                               f"(changeable: {', '.join(RESUMABLE_OVERRIDES)})")
        cfg = make_config(state["config"], registry=registry, **overrides)
        saved_epochs = state["config"]["epochs"]
        if cfg.epochs != saved_epochs and cfg.lr_schedule in ("cyclic", "onecycle", "cosine"):
            raise AdvplugError(
                f"the {cfg.lr_schedule} LR schedule was laid out over {saved_epochs} epochs; resuming "
                f"with --epochs {cfg.epochs} would break it. Resume without --epochs, or start a new run")
        if "out" not in overrides or overrides.get("out") is None:
            cfg.out = str(Path(resume) if Path(resume).is_dir() else Path(resume).parent.parent)
        check_output_dir(cfg.out)
    else:
        cfg = make_config(config, registry=registry, **overrides)
    dist, device = distributed.setup(cfg.device)
    if state is None:
        dist.on_main(prepare_run_dir, cfg.out, overwrite)
    return Run(cfg, host=host, resume_state=state, dist=dist, device=device).fit()
