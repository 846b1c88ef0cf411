"""The advplug plugin module: the entry point ``sat = "advplug_sat.plugin"`` loads it."""
import advplug

from .transform import NAME, smooth_activation


@advplug.hookimpl
def advplug_register_model_transforms(registry):
    registry.add(NAME, smooth_activation,
                 description="replace every ReLU with a smooth activation (softplus, gelu, silu, elu, celu, "
                             "smooth-relu), in both passes or in the backward pass only (Xie et al., SAT)")


@advplug.hookimpl
def advplug_train_start(run):
    """One line saying what the transform replaced."""
    info = getattr(run.model, "_advplug_sat", None)
    if info:
        print(f"{NAME}: {info['relu_modules']} nn.ReLU module(s) and {info['functional_relu']} functional "
              f"relu call(s) replaced by {info['config']}", flush=True)


@advplug.hookimpl
def advplug_epoch_end(run, epoch, metrics):
    """With ``mode=backward``: how many forwards of the model since the last epoch end
    built the attacker's graph and how many the optimizer's (``sat_attack_forwards``,
    ``sat_train_forwards`` in metrics.jsonl), so the role rule can be checked in a run."""
    roles = getattr(run.model, "_advplug_sat_roles", None)
    if roles is not None:
        counts = roles.take_counts()
        metrics["sat_attack_forwards"] = counts["attack"]
        metrics["sat_train_forwards"] = counts["train"]
