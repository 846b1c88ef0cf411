import torch

from ..errors import AdvplugError
from ..params import integer, resolve_step, step_size
from .base import StepOutput, Trainer


class FreeATTrainer(Trainer):
    """Shafahi et al. (2019), "Adversarial Training for Free!": each minibatch replayed m times.

    Every replay is one forward and one backward pass at ``x + δ`` that yields both the
    parameter gradient (one optimizer update, through ``run.optimizer_step``) and the
    input gradient, which moves δ one signed step: ``δ ← Π(δ + step·sign(∇_δ ℓ))`` with
    step = ``alpha`` = ε (ε in the paper and in its reference code; for L2 the step
    is along the normalized gradient). δ starts at zero and persists across replays *and*
    minibatches (one buffer of the largest batch seen; a smaller last batch uses its
    first rows); it is projected again onto the ball and the [0, 1] box of each new batch.

    Parameters: ``replays`` (m, default 8: the paper's choice for CIFAR-10 and CIFAR-100,
    which it compares with m ∈ {2, 4, 8, 10}; it uses m = 4 on ImageNet and has no MNIST
    setting), ``alpha`` (default ``1eps``: step = ε).

    Cost: one epoch does m optimizer updates per batch, as much compute as m epochs of
    standard training, so users usually divide the epoch count by m to compare at equal
    cost. The per-batch LR schedule is stepped once per batch (on the last replay), so
    it keeps its length in epochs. The reported loss and accuracy are the last replay's.
    """

    name = "free-at"
    updates_model = True
    param_schema = {"replays": integer(8, low=1, help="m: updates per minibatch"),
                    "alpha": step_size("1eps", help="step of the persistent δ per replay (Shafahi et al.: ε)")}

    def __init__(self, model, threat, **params):
        super().__init__(model, threat, **params)
        self.delta = None  # the persistent perturbation, (largest batch, *input shape)

    def _batch_delta(self, x):
        n = x.shape[0]
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        self.delta = self.delta.to(x.device, x.dtype)
        if self.delta.shape[0] < n:  # a larger batch than any before: its new rows start at 0
            self.delta = torch.cat([self.delta, torch.zeros_like(x[self.delta.shape[0]:])])
        return self.threat.project(self.delta[:n], x)

    def step(self, x, y):
        if self.run is None:
            raise AdvplugError("free-at updates the model itself: bind(run) before step()")
        replays = int(self.params["replays"])
        step = resolve_step(self.params["alpha"], self.threat.eps)
        delta = self._batch_delta(x)
        for r in range(replays):
            delta.requires_grad_(True)
            logits = self.model(x + delta)
            loss = self.loss(logits, y)
            self.run.optimizer_step(loss, step_lr=r == replays - 1)  # backward fills delta.grad
            delta = self.threat.project(delta.detach() + self.threat.ascent(delta.grad, step), x)
        self.delta[: x.shape[0]] = delta
        return StepOutput(loss.detach(), logits.detach())

    def state_dict(self) -> dict:
        return {} if self.delta is None else {"delta": self.delta.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        delta = state.get("delta")
        self.delta = None if delta is None else delta.detach().clone()
