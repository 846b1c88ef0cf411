"""The advplug plugin module: the entry point ``mix = "advplug_mix.plugin"`` loads it."""
import advplug
from advplug.params import takes

from .samplers import MATSampler, MixedRatioSampler


@takes(MATSampler.param_schema, "sampler 'mat-rand'")
def mat_rand(**params):
    return MATSampler("mat-rand", **params)


@takes(MATSampler.param_schema, "sampler 'mat-max'")
def mat_max(**params):
    return MATSampler("mat-max", **params)


@advplug.hookimpl
def advplug_register_samplers(registry):
    registry.add("mixed-ratio", MixedRatioSampler,
                 description="clean:adversarial ratio per batch, adversarial part split over an attack pool")
    registry.add("mat-rand", mat_rand, description="mixed adversarial training: Linf or L2 PGD, one norm per batch")
    registry.add("mat-max", mat_max,
                 description="mixed adversarial training: per sample the higher-loss of Linf and L2 PGD "
                             "(Tramèr & Boneh 2019)")
