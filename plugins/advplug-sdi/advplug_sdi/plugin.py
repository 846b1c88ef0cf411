"""The advplug plugin module: the entry point ``sdi = "advplug_sdi.plugin"`` loads it."""
import advplug

from .trainer import FGSMSDITrainer


@advplug.hookimpl
def advplug_register_trainers(registry):
    registry.add(FGSMSDITrainer.name, FGSMSDITrainer,
                 description=(FGSMSDITrainer.__doc__ or "").strip().splitlines()[0])


@advplug.hookimpl
def advplug_epoch_end(run, epoch, metrics):
    """Adds the generator's numbers to an fgsm-sdi run's epoch metrics (metrics.jsonl):
    ``sdi_generator_updates``, ``sdi_generator_lr`` and ``sdi_generator_loss`` (its mean
    loss at its updates in this epoch)."""
    if isinstance(run.trainer, FGSMSDITrainer):
        metrics.update(run.trainer.epoch_summary())
