"""The trainer contract: one training step, i.e. the inner maximization and the loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..params import check_params
from ..threat import Threat


@dataclass
class StepOutput:
    """``loss``: what the optimizer minimizes. ``logits``: the model's output on the
    inputs the loss was computed on (adversarial ones for adversarial trainers), for the
    running accuracy. ``clean_logits``: output on clean inputs if the step had it."""

    loss: torch.Tensor
    logits: torch.Tensor
    clean_logits: torch.Tensor | None = None


class Trainer:
    """Subclass, declare ``param_schema`` (``{name: Param}``, see :mod:`advplug.params`;
    the step size is ``alpha``, a :func:`~advplug.params.step_size`) and write ``step``.

    Built as ``cls(model, threat, **params)``; parameters are checked against the schema
    (the host checks them before any data is loaded too) and ``self.params`` holds them
    with defaults filled in. Then the
    engine calls ``bind(run)`` once (the run's ``optimizer``, ``lr_scheduler``, ``config``
    and ``loader`` exist by then; a resumed run restores ``state_dict`` afterwards).

    By default the engine owns the model's update: after ``step`` it calls
    ``loss.backward()``, ``optimizer.step()`` and the LR scheduler. A trainer that updates
    the model several times per batch (free adversarial training) sets
    ``updates_model = True`` and calls ``self.run.optimizer_step(loss)`` itself; the
    returned loss is then only reported. A trainer with modules of its own (e.g. a
    generator) trains them inside ``step`` and saves them through
    ``state_dict``/``load_state_dict``.

    A trainer whose step is "inner maximization, then a loss at the current weights"
    writes those two parts instead of ``step``: ``adversarial_batch(x, y)`` (the inputs to
    train on, detached) and ``adversarial_loss(x, x_adv, y)`` (the loss on them at the
    model's current weights); the default ``step`` chains them. Trainers that wrap another
    one (adversarial weight perturbation) need the split: they evaluate the same
    adversarial batch at perturbed weights. ``loss(logits, y)`` is the cross-entropy with
    the run's ``label_smoothing`` (config key; 0 when not bound to a run), the loss every
    built-in trainer trains on (its inner maximization stays plain cross-entropy).
    """

    name = "trainer"
    adversarial = True  #: False for trainers that never perturb (the clean baseline)
    updates_model = False  #: True: ``step`` calls ``self.run.optimizer_step`` itself
    param_schema: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "defaults" in cls.__dict__ and "param_schema" not in cls.__dict__:
            raise TypeError(f"trainer {cls.__name__}: declare its parameters as param_schema = {{...}} "
                            f"(earlier versions called it defaults)")

    def __init__(self, model: torch.nn.Module, threat: Threat, **params):
        self.model = model
        self._threat = threat
        self.params = check_params(f"trainer {self.name!r}", params, self.param_schema)
        self.run = None

    @property
    def threat(self) -> Threat:
        """The threat in force: the run's (``run.threat``, which a schedule changes through
        ``set_attack_params(eps=...)``) once bound, else the one the trainer was built with."""
        return self.run.threat if self.run is not None else self._threat

    def bind(self, run) -> None:
        """Called once by the engine with the run (optimizer, LR scheduler, config, loader)."""
        self.run = run

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """One batch: by default the loss at the current weights (``adversarial_loss``) on
        the inner maximization's inputs (``adversarial_batch``)."""
        return self.adversarial_loss(x, self.adversarial_batch(x, y), y)

    def adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The inner maximization alone: the inputs the loss is taken on (detached; the
        model's parameters and their gradients untouched)."""
        raise NotImplementedError(f"trainer {self.name!r} defines no adversarial_batch/adversarial_loss pair "
                                  f"(write those two, or step() itself)")

    def adversarial_loss(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """The outer loss at the model's current weights, for the clean batch ``x`` and
        the inputs ``x_adv`` that ``adversarial_batch`` made of it; differentiable in the
        parameters."""
        raise NotImplementedError(f"trainer {self.name!r} defines no adversarial_batch/adversarial_loss pair "
                                  f"(write those two, or step() itself)")

    @property
    def label_smoothing(self) -> float:
        """The run's ``label_smoothing`` (config key), 0 when the trainer is not bound."""
        config = getattr(self.run, "config", None)
        return float(getattr(config, "label_smoothing", 0.0) or 0.0)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training cross-entropy, with the run's label smoothing (0: plain
        cross-entropy, the same computation as ``F.cross_entropy(logits, y)``)."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def set_attack_params(self, **values):
        """Called by schedules each epoch: ``eps`` changes the radius of the run's threat
        (:meth:`advplug.engine.Run.set_eps`, the one method that does), other keys the
        trainer's parameters of that name; every parameter not named keeps its value."""
        values = dict(values)
        if "eps" in values:
            eps = values.pop("eps")
            if self.run is not None:
                self.run.set_eps(eps)
            else:
                self._threat = Threat(self._threat.norm, eps)
        checked = check_params(f"trainer {self.name!r}", values, self.param_schema)
        self.params.update({key: checked[key] for key in values})  # not the defaults of the others

    def threat_changed(self) -> None:
        """Called by the run after ε changed; a trainer that built things from the threat
        (attacks, a sampler) builds them again here."""

    def average_gradients(self, params) -> None:
        """Under ``torchrun``: the ``.grad`` of ``params`` averaged over the processes, each
        weighted by its rows of the batch -- what a trainer with modules and an optimizer of
        its own (a generator) calls before that optimizer's step, so the module stays the
        same on every process (the engine does this for the model). A no-op in one process."""
        dist = getattr(self.run, "dist", None)
        if dist is not None:
            dist.average_gradients(params, self.run.batch_share)

    def average_tensors(self, tensors) -> None:
        """Under ``torchrun``: each tensor (e.g. gradients a trainer took itself with
        ``torch.autograd.grad``) replaced in place by its mean over the processes, weighted
        by their rows of the batch. A no-op in one process."""
        dist = getattr(self.run, "dist", None)
        if dist is not None:
            dist.average_(list(tensors), self.run.batch_share)

    def own_module(self, module):
        """A module the trainer trains itself (a generator), prepared as the engine prepares
        the model: under ``torchrun`` with ``sync_bn`` (the default) its BatchNorm layers
        take their statistics over the global batch. Returns the module to use."""
        if self.run is not None and self.run.config.sync_bn:
            from ..distributed import sync_batchnorm

            module = sync_batchnorm(module)
        return module

    def average_buffers(self, module) -> None:
        """Under ``torchrun`` without ``sync_bn``: ``module``'s floating-point buffers
        (BatchNorm running statistics, gathered by each process on its own rows) averaged
        over the processes; a trainer calls it after training a module of its own in train
        mode. A no-op in one process or with ``sync_bn``."""
        dist = getattr(self.run, "dist", None)
        if dist is not None and not self.run.config.sync_bn:
            dist.average_buffers(module)

    def epoch_metrics(self) -> dict:
        """Called by the engine after each epoch's batches: extra numbers for that epoch's
        metrics (``metrics.jsonl``); a trainer that counts things per epoch resets here."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def perturbation(model, x, y, threat: Threat, steps: int, alpha: float, random_start: bool = True,
                 box_start: bool = True, stop_when_fooled: bool = False, box_clip: bool = True):
    """Inner maximization by projected steepest ascent on the cross-entropy loss.

    ``steps=1, alpha=1.25ε, random_start=True`` is FGSM-RS; more steps are PGD. Runs in
    the model's current mode (training mode during training, as in Madry et al. and Wong
    et al.) and differentiates with respect to δ only, so no parameter gradient is touched.
    ``box_start=False`` takes the first gradient at the random start clipped to the ε-ball
    only (x + δ may leave [0, 1] there; Wong et al.'s MNIST script); every step is
    projected onto the ball and the box. ``box_clip=False`` drops the box everywhere (start
    and steps: the ε-ball only, x + δ may leave [0, 1], as FGSM-SDI's authors train).
    ``stop_when_fooled`` leaves a sample's δ as it is once the model misclassifies it
    (Wong et al.'s PGD baseline).
    """
    def project(d):
        return threat.project(d, x) if box_clip else threat.project_ball(d)

    delta = threat.random_init(x) if random_start else torch.zeros_like(x)
    delta = project(delta) if box_start else threat.project_ball(delta)
    for _ in range(steps):
        grad, logits = input_gradient(model, x, y, delta, with_logits=True)
        stepped = project(delta + threat.ascent(grad, alpha))
        if stop_when_fooled:
            correct = (logits.argmax(1) == y).view(-1, *([1] * (x.dim() - 1)))
            stepped = torch.where(correct, stepped, delta)
        delta = stepped
    return delta.detach()


def input_gradient(model, x, y, delta, create_graph: bool = False, with_logits: bool = False):
    """∇_δ of the cross-entropy at ``x + δ``, taken with ``torch.autograd.grad`` with
    respect to δ only, so no parameter's ``.grad`` is touched. ``create_graph=True``
    keeps the result differentiable in the parameters (double backpropagation, for
    gradient regularizers such as GradAlign); otherwise it is detached. ``with_logits``:
    (gradient, the detached logits at x + δ)."""
    delta = delta.detach().requires_grad_(True)
    logits = model(x + delta)
    loss = F.cross_entropy(logits, y)
    (grad,) = torch.autograd.grad(loss, delta, create_graph=create_graph)
    return (grad, logits.detach()) if with_logits else grad
