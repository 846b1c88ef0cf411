import torch

from ..errors import AdvplugError
from ..samplers import SamplerContext
from .base import StepOutput, Trainer


class SampledTrainer(Trainer):
    """The trainer of a run with ``--sampler``: the sampler composes each batch (clean and
    adversarial rows), the loss is the cross-entropy on it. Not registered by name; the
    engine builds it when ``config.sampler`` is set (see ``advplug_register_samplers``).

    Its state (the global step count, and the sampler's ``state_dict`` if it has one) is
    saved with the run, so a resumed run draws the same batch compositions.
    """

    adversarial = True
    param_schema = {}

    def __init__(self, model, threat, sampler, name: str = "sampler", **params):
        self.name = name
        super().__init__(model, threat, **params)
        self.sampler = sampler
        self.global_step = 0
        self._range_checked = False
        self._reset_counts()  # per-source counts of the current epoch, for the metrics

    def bind(self, run) -> None:
        super().bind(run)
        self._bind_sampler()

    def _bind_sampler(self):
        run = self.run
        self.sampler.bind(SamplerContext(model=self.model, threat=self.threat, seed=run.config.seed,
                                         registry=run.registry, device=run.device, run=run))

    def threat_changed(self):
        """A schedule changed ε: the sampler is bound again with the new threat."""
        self._bind_sampler()

    def step(self, x, y):
        batch = self.sampler.sample(x, y, self.global_step)
        self.global_step += 1
        x_train = self._checked(batch, x)
        self._count(batch, x.shape[0])
        logits = self.model(x_train)
        return StepOutput(self.loss(logits, y), logits)

    def _checked(self, batch, x) -> torch.Tensor:
        what = f"sampler {self.name!r}"
        x_train = getattr(batch, "x", None)
        if not isinstance(x_train, torch.Tensor) or x_train.shape != x.shape:
            raise AdvplugError(f"{what} returned inputs of shape {tuple(getattr(x_train, 'shape', ()))}, "
                               f"expected {tuple(x.shape)} (a SampledBatch with x shaped like the batch)")
        if batch.adversarial.shape != x.shape[:1] or batch.adversarial.dtype != torch.bool:
            raise AdvplugError(f"{what}: SampledBatch.adversarial must be a bool tensor of shape ({x.shape[0]},)")
        # the [0, 1] check reads the device once: on the first batch of a (resumed) run only
        if not self._range_checked and bool(((x_train < 0) | (x_train > 1)).any()):
            raise AdvplugError(f"{what} returned inputs outside [0, 1]")
        self._range_checked = True
        return x_train.detach()

    def _count(self, batch, n):
        if batch.source is None:
            sources, source = ("clean", "adversarial"), batch.adversarial.long()
        else:
            sources, source = tuple(batch.sources), batch.source
        # one count per source, on the device without reading it (torch.bincount on CUDA reads
        # the input's min and max back to size its output: two syncs per batch); rows outside
        # 0 .. len(sources) - 1 count nowhere (bincount's extra bins were dropped below too)
        counts = (source.unsqueeze(1) == torch.arange(len(sources), device=source.device)).sum(0)
        self._counts[sources] = self._counts.get(sources, 0) + counts
        self._adv = self._adv + batch.adversarial.sum()
        self._seen += n

    def epoch_metrics(self) -> dict:
        """``sampler_adversarial_share`` and ``sampler_share_<source>`` over the epoch
        (fractions of its training samples); the counters restart."""
        if not self._seen:
            return {}
        out = {"sampler_adversarial_share": int(self._adv) / self._seen}
        for sources, counts in self._counts.items():
            for name, count in zip(sources, counts.tolist()):
                key = f"sampler_share_{name}"
                out[key] = out.get(key, 0.0) + count / self._seen
        self._reset_counts()
        return out

    def _reset_counts(self):
        self._counts, self._adv, self._seen = {}, 0, 0

    def state_dict(self) -> dict:
        state = {"global_step": self.global_step}
        if hasattr(self.sampler, "state_dict"):
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state.get("global_step", 0))
        if "sampler" in state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
