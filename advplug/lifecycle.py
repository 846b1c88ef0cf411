"""What a training run does around its epochs, as built-in plugins on the lifecycle hooks
(as Lightning's callbacks): the metrics writer, the catastrophic-overfitting guard,
keep-best and the overfitting plot. The host registers them like any plugin (after
advplug's registration plugin, before installed ones), so they use exactly the contract
third-party plugins have (:mod:`advplug.hookspecs`).

Order at each epoch end: the engine appends the epoch's metrics to ``run.history``, then
calls ``advplug_epoch_end``: plugins without ordering first, then these, all ``trylast``:
the guard (which sees the other plugins' metrics), keep-best (never an epoch the guard
rejected), the plot, and last the metrics writer (the line holds every key). Call order
among ``trylast`` implementations is the reverse of registration, hence :data:`PLUGINS`'s
order.
"""
from __future__ import annotations

import json

from .checkpoint import CHECKPOINT_FORMAT, atomic_save, safe_load
from .hookspecs import hookimpl


class MetricsWriter:
    """``metrics.jsonl``: one JSON line per epoch, every key any plugin added."""

    name = "advplug.metrics"

    @hookimpl(tryfirst=True)
    def advplug_train_start(self, run):
        # exactly the epochs the checkpoint knows (a crash may have written one more)
        (run.out_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in run.history))

    @hookimpl(trylast=True)
    def advplug_epoch_end(self, run, epoch, metrics):
        with open(run.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")


class OverfittingPlot:
    """``overfitting.png`` from the held-out and training monitors, redrawn every epoch
    (config ``plot``, needs ``monitor_size`` > 0)."""

    name = "advplug.plot"

    @hookimpl(trylast=True)
    def advplug_epoch_end(self, run, epoch, metrics):
        cfg = run.config
        if cfg.plot and cfg.monitor_size:
            from .plots import plot_overfitting

            plot_overfitting(run.history, run.out_dir / "overfitting.png", cfg.monitor_steps,
                             title=f"{cfg.sampler or cfg.trainer}, {run.config_threat}")


class KeepBest:
    """Early stopping (config ``keep_best``): ``checkpoints/best.pt`` holds the epoch with the
    best held-out PGD accuracy (``run.best`` = (accuracy, epoch), saved with the run); at the
    end of training it becomes the final model."""

    name = "advplug.keep-best"

    @hookimpl(trylast=True)
    def advplug_epoch_end(self, run, epoch, metrics):
        acc = metrics.get("monitor_heldout_pgd_acc")
        if not run.config.keep_best or acc is None or metrics.get("co_guard_triggered"):
            return
        if run.best is None or acc > run.best[0]:
            run.best = (acc, epoch)
            atomic_save({"format": CHECKPOINT_FORMAT, "epoch": epoch, "spec": run.spec,
                         "model": run.model.state_dict(), "trainer": run.trainer.state_dict(),
                         "heldout_pgd_acc": acc}, run.out_dir / "checkpoints" / "best.pt")

    @hookimpl
    def advplug_fit_end(self, run):
        if run.config.keep_best and run.best is not None:
            run.restore_weights(safe_load(run.out_dir / "checkpoints" / "best.pt", formats=(CHECKPOINT_FORMAT,)))
            print(f"keep_best: final model is epoch {run.best[1]} (held-out PGD-{run.config.monitor_steps} "
                  f"{run.best[0]:.2f}%)", flush=True)


class OverfittingGuard:
    """The catastrophic-overfitting guard (config ``co_guard``, in accuracy points): when
    held-out PGD accuracy falls by more than that in one epoch, the weights of the epoch
    before are restored (before the checkpoint is written), the epoch is marked
    ``co_guard_triggered`` and the run stops."""

    name = "advplug.co-guard"

    @hookimpl
    def advplug_train_start(self, run):
        if run.config.co_guard is not None:
            run.previous_weights = run.weights()

    @hookimpl(trylast=True)
    def advplug_epoch_end(self, run, epoch, metrics):
        guard = run.config.co_guard
        if guard is None:
            return
        now = metrics.get("monitor_heldout_pgd_acc")
        before = run.history[-2].get("monitor_heldout_pgd_acc") if len(run.history) > 1 else None
        if now is not None and before is not None and before - now > guard:
            metrics["co_guard_triggered"] = True
            run.restore_weights(run.previous_weights)
            run.co_guard_reason = (
                f"catastrophic overfitting guard: held-out PGD-{run.config.monitor_steps} accuracy fell from "
                f"{before:.2f}% to {now:.2f}% in epoch {epoch} (more than {guard:g} points); restored the weights "
                f"of epoch {epoch - 1}")
        else:
            run.previous_weights = run.weights()

    @hookimpl(tryfirst=True)
    def advplug_should_stop(self, run, epoch, metrics):
        return getattr(run, "co_guard_reason", None)


#: registration order: the guard is called first among them at each epoch end, the writer last
PLUGINS = (MetricsWriter, OverfittingPlot, KeepBest, OverfittingGuard)
