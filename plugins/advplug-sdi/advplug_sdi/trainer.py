"""FGSM-SDI: fast adversarial training with a learnable, sample-dependent initialization.

Jia, Zhang, Wu, Wei, Liang, Han & Cao, "Boosting Fast Adversarial Training with Learnable
Adversarial Initialization", IEEE TIP 2022 (code: github.com/jiaxiaojunQAQ/FGSM-SDI).

One step on a batch (x, y), with f the target model and g the generator::

    s   = sign ∇ₓ CE(f(x), y)                      clean input gradient, a constant
    η   = Π(ε · g(x, s))                           the learned initialization, |η| <= ε
    δ   = Π(η + α · sign ∇ CE(f(x + η), y))        one FGSM step from it, α = ``alpha`` (ε)
    loss = CE(f(x + δ), y)                         what the target minimizes (δ detached)

Π is the threat's projection (ε-ball and [0, 1] box; ε-ball only with ``box_clip=false``,
as the authors' code). Every ``k`` steps, at the start of
the step, before the target's update on that batch, the generator takes one Adam step
that *maximizes* the same loss: its gradient flows through η into x + δ (the sign term is
a constant). Steps are counted over the whole run, so the generator is updated in step
calls 0, k, 2k, ... (0-based) -- the first batch of training starts with an update, as
the authors' ``if batch_idx % att_num == 0``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advplug.errors import AdvplugError
from advplug.params import choice, flag, integer, number, resolve_step, step_size
from advplug.trainers.base import StepOutput, Trainer, input_gradient

from .generator import InitGenerator

GEN_LR_SCHEDULES = ("follow", "constant")


class FGSMSDITrainer(Trainer):
    """FGSM-SDI (Jia et al. 2022): FGSM from a learned sample-dependent initialization (Linf).

    A generator (``advplug_sdi.generator.InitGenerator``) trained jointly with the model,
    to maximize its loss, proposes the FGSM start; see the module docstring."""

    name = "fgsm-sdi"
    param_schema = {
        "k": integer(20, low=1, help="target updates per generator update (the authors' att_num)"),
        "alpha": step_size("1eps", help="FGSM step α (authors: α = ε = 8/255)"),
        "gen_lr": number(1e-3, low=0, low_open=True, help="generator Adam learning rate (authors' lr_att)"),
        "gen_weight_decay": number(5e-4, low=0, help="generator Adam weight decay (authors' --weight-decay)"),
        "gen_lr_schedule": choice("follow", GEN_LR_SCHEDULES,
                                  help="follow: decay with the target's multistep milestones; constant (the "
                                       "authors' code in effect: its generator scheduler never reaches them)"),
        "label_smoothing": number(0.0, low=0, high=1,
                                  help="of the training loss (target and generator), torch's convention; the "
                                       "authors' factor f is 10(1-f)/9 here (f = 0.9: 1/9)"),
        "box_clip": flag(True, help="keep x + η and x + δ in [0, 1] (advplug's projection); false: the ε-ball "
                                    "only, as the authors' code, whose [0, 1] clamp is commented out"),
        "width": integer(64, low=1, help="generator hidden channels (authors: 64)"),
    }

    def __init__(self, model, threat, **params):
        super().__init__(model, threat, **params)
        if self.threat.norm != "Linf":
            raise AdvplugError(f"trainer 'fgsm-sdi' supports the Linf threat model only, got {self.threat.norm} "
                               f"(its generator bounds η with ε·tanh); use --norm Linf")
        self.generator: InitGenerator | None = None
        self.gen_optimizer: torch.optim.Adam | None = None
        self.steps = 0  # step() calls so far, over the whole run
        self._losses: list = []  # generator loss (CE at x+δ, before its step) at each update
        self._reported = 0  # how many of them advplug_epoch_end already summarized

    # -- the generator ----------------------------------------------------------------

    def bind(self, run) -> None:
        super().bind(run)
        self._build(run.dataset.channels, run.device)

    def _build(self, channels: int, device) -> None:
        if self.generator is not None:
            if self.generator.channels != channels:
                raise AdvplugError(f"trainer 'fgsm-sdi': the generator was built for {self.generator.channels}-channel "
                                   f"images, got {channels} channels")
            return
        self.generator = self.own_module(InitGenerator(channels, self.params["width"]).to(device))
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.params["gen_lr"],
                                              weight_decay=self.params["gen_weight_decay"])

    def gen_lr(self) -> float:
        """The generator's LR for an update in step ``self.steps``: ``gen_lr``, times the
        target's ``lr_gamma`` for every one of the target's MultiStepLR milestones (in
        iterations, read from the run's scheduler) reached so far."""
        lr = self.params["gen_lr"]
        sched = getattr(self.run, "lr_scheduler", None)
        if self.params["gen_lr_schedule"] == "follow" and sched is not None and hasattr(sched, "milestones"):
            passed = sum(count for step, count in sched.milestones.items() if step <= self.steps)
            lr *= sched.gamma ** passed
        return lr

    @property
    def generator_losses(self) -> list:
        """The generator's loss at each of its updates so far (before its step), as floats."""
        return [float(v) for v in self._losses]

    def epoch_summary(self) -> dict:
        """Metrics of the generator updates since the last call (``advplug_epoch_end``)."""
        new = [float(v) for v in self._losses[self._reported:]]
        self._losses[self._reported:] = new  # one device sync per epoch, then plain floats
        self._reported = len(self._losses)
        out = {"sdi_generator_updates": len(new)}
        if self.gen_optimizer is not None:
            out["sdi_generator_lr"] = self.gen_optimizer.param_groups[0]["lr"]
        if new:
            out["sdi_generator_loss"] = sum(new) / len(new)
        return out

    # -- one step ---------------------------------------------------------------------

    def _loss(self, logits, y):
        return F.cross_entropy(logits, y, label_smoothing=self.params["label_smoothing"])

    def _input_grad_sign(self, x, y):
        """sign ∇ₓ CE(f(x), y), computed w.r.t. the input only (no parameter gradients)."""
        return input_gradient(self.model, x, y, torch.zeros_like(x)).sign()

    def _delta(self, x, y, grad_sign, update: bool):
        """(η, δ): η = Π(ε·g(x, s)), δ = Π(η + α·sign ∇CE(f(x + η), y)). With ``update``
        the generator runs in training mode and δ is differentiable in its parameters
        through η (the FGSM sign is a constant); otherwise eval mode, no graph (as the
        authors: ``attacker.train()`` for its update, ``attacker.eval()`` for the target's)."""
        eps = self.threat.eps
        self.generator.train(update)
        with torch.set_grad_enabled(update):
            eta = self._project(eps * self.generator(x, grad_sign), x)
        fgsm_sign = self._input_grad_sign(x + eta, y)
        return eta, self._project(eta + resolve_step(self.params["alpha"], eps) * fgsm_sign, x)

    def _project(self, delta, x):
        return self.threat.project(delta, x) if self.params["box_clip"] else self.threat.project_ball(delta)

    def _update_generator(self, x, y, grad_sign):
        """One Adam step of the generator ascending CE(f(x + δ), y). Gradients are taken
        w.r.t. the generator's parameters only: the target's ``.grad`` stay as they are."""
        _, delta = self._delta(x, y, grad_sign, update=True)
        loss = self._loss(self.model(x + delta), y)
        params = [p for p in self.generator.parameters() if p.requires_grad]
        for p, g in zip(params, torch.autograd.grad(-loss, params)):
            p.grad = g
        self.average_gradients(params)  # under torchrun: the generator stays one on every process
        self.average_buffers(self.generator)  # (its BatchNorm statistics too)
        for group in self.gen_optimizer.param_groups:
            group["lr"] = self.gen_lr()
        self.gen_optimizer.step()
        self.gen_optimizer.zero_grad(set_to_none=True)
        self._losses.append(loss.detach())

    def perturb(self, x, y):
        """(η, δ) for a batch from the generator as it is (eval mode): no update, no graph."""
        if self.generator is None:
            self._build(x.shape[1], x.device)
        return self._delta(x, y, self._input_grad_sign(x, y), update=False)

    def step(self, x, y):
        if self.generator is None:  # used outside the engine (no bind)
            self._build(x.shape[1], x.device)
        grad_sign = self._input_grad_sign(x, y)
        if self.steps % self.params["k"] == 0:
            self._update_generator(x, y, grad_sign)
        _, delta = self._delta(x, y, grad_sign, update=False)
        self.steps += 1
        logits = self.model(x + delta)
        return StepOutput(self._loss(logits, y), logits)

    # -- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict:
        if self.generator is None:
            return {"steps": self.steps}
        return {
            "channels": self.generator.channels,
            "generator": self.generator.state_dict(),
            "optimizer": self.gen_optimizer.state_dict(),
            "steps": self.steps,
            "losses": self.generator_losses,
            "reported": self._reported,
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        if "generator" not in state:
            return
        device = next(self.model.parameters()).device
        self._build(int(state["channels"]), device)
        self.generator.load_state_dict(state["generator"])
        self.gen_optimizer.load_state_dict(state["optimizer"])
        self._losses = [torch.tensor(v) for v in state.get("losses", [])]
        self._reported = int(state.get("reported", len(self._losses)))
