"""TRADES, MART and adversarial weight perturbation (AWP) as advplug trainers.

Each follows its authors' reference code, cited per class; the differences are listed in
the class docstrings. TRADES and MART split their step into ``adversarial_batch`` (the
inner maximization) and ``adversarial_loss`` (the loss at the current weights), as
advplug's ``pgd-at`` does, so that ``awp`` can wrap any of the three: it evaluates the
base trainer's loss on the same adversarial batch at adversarially perturbed weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advplug.attacks.base import eval_frozen
from advplug.errors import AdvplugError
from advplug.params import Param, Spec, check_params, integer, number, parse_spec_list, resolve_step, step_size
from advplug.trainers import PGDTrainer, StepOutput, Trainer

#: std of the Gaussian start of TRADES' and MART's inner maximization (both reference codes)
START_STD = 0.001


def eval_mode_ascent(model, x, threat, steps: int, alpha: float, objective) -> torch.Tensor:
    """x' maximizing ``objective(logits of x')`` (a scalar) by ``steps`` projected
    steepest-ascent steps of size ``alpha`` from x + 0.001·N(0, 1), in eval mode: the
    inner maximization of TRADES' and MART's reference code (``model.eval()`` during the
    attack; the model's mode is put back afterwards). As there, the first gradient is
    taken at the unprojected Gaussian start; every step is projected onto the ε-ball and
    the [0, 1] box. Gradients are taken with respect to the input only: the parameters are
    frozen meanwhile (:func:`advplug.attacks.base.eval_frozen`, as evaluation attacks run),
    so autograd builds no graph to them."""
    with eval_frozen(model):
        x_adv = x.detach() + START_STD * torch.randn_like(x)
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(model(x_adv)), x_adv)
            x_adv = x + threat.project(x_adv.detach() + threat.ascent(grad, alpha) - x, x)
    return x_adv.detach()


class TRADESTrainer(Trainer):
    """TRADES (Zhang et al., ICML 2019): clean cross-entropy + β·KL(f(x) ‖ f(x')), x' maximizing the KL.

    "Theoretically Principled Trade-off between Robustness and Accuracy"; reference code
    github.com/yaodongyu/TRADES (``trades.py``, ``trades_loss``). Inner maximization, in
    eval mode: from x + 0.001·N(0, 1), ``steps`` projected steps of size ``alpha`` on
    Σ KL(softmax f(x) ‖ softmax f(x')) (summed over the batch, the clean distribution
    fixed). Outer loss, in training mode:

        CE(f(x), y) + β · (1/B) Σ_i KL(softmax f(x_i) ‖ softmax f(x'_i))

    (``nn.KLDivLoss(log_softmax(f(x')), softmax(f(x)))`` summed and divided by the batch
    size, as the reference; the gradient flows through both distributions). CE is
    :meth:`Trainer.loss` (the run's ``label_smoothing``; 0: the reference's plain CE).

    Defaults: ``beta`` 6.0 and ``steps`` 10 are the paper's CIFAR-10 setting and the
    defaults of ``train_trades_cifar10.py``; ``alpha`` ``0.25eps`` is 2/255 at ε = 8/255
    (that script: 0.007 at ε = 0.031, about 0.23·ε). The MNIST script
    ``train_trades_mnist.py`` uses β = 1.0, 40 steps of 0.01 at ε = 0.3
    (``trades:beta=1,steps=40,alpha=0.01``).

    Differences from the reference: the clean logits are computed once in training mode
    and used for both the CE and the KL target (the reference runs f(x) twice; same loss
    and gradient, but BatchNorm's running statistics see x once instead of twice); the
    KL target of the inner maximization is computed once per batch without a graph
    (eval mode is deterministic, so the same values); L2 threats take advplug's
    normalized-gradient step instead of the reference's SGD-on-δ loop.
    """

    name = "trades"
    param_schema = {
        "beta": number(6.0, low=0, help="β: weight of the KL term (paper and CIFAR-10 script: 6.0; the authors' "
                                        "MNIST script: 1.0)"),
        "steps": integer(10, low=1, help="steps of the KL maximization (CIFAR-10 script: 10; MNIST script: 40)"),
        "alpha": step_size("0.25eps", help="step α of the KL maximization (CIFAR-10 script: 0.007 at ε = 0.031; "
                                           "MNIST script: 0.01 at ε = 0.3)"),
    }

    def adversarial_batch(self, x, y):
        steps = int(self.params["steps"])
        alpha = resolve_step(self.params["alpha"], self.threat.eps, steps)
        with eval_frozen(self.model), torch.no_grad():
            target = F.softmax(self.model(x), dim=1)

        def kl_sum(logits):
            return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")

        return eval_mode_ascent(self.model, x, self.threat, steps, alpha, kl_sum)

    def adversarial_loss(self, x, x_adv, y):
        clean_logits = self.model(x)
        logits = self.model(x_adv)
        robust = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
        loss = self.loss(clean_logits, y) + float(self.params["beta"]) * robust
        return StepOutput(loss, logits, clean_logits)


def mart_loss(clean_logits, adv_logits, y, beta: float, ce: torch.Tensor) -> torch.Tensor:
    """MART's outer loss from the two batches of logits; ``ce`` is the cross-entropy term
    CE(f(x'), y) (given, so that label smoothing can change it). With p = softmax:

        ce − mean_i log(1.0001 − max_{k≠y_i} p_k(x'_i) + 1e-12)
           + β · (1/B) Σ_i [Σ_k p_k(x_i) (log p_k(x_i) − log(p_k(x'_i) + 1e-12))] · (1.0000001 − p_{y_i}(x_i))

    (the constants guard the logarithms, as in the reference ``mart_loss``)."""
    adv_probs = F.softmax(adv_logits, dim=1)
    top2 = adv_probs.topk(2, dim=1).indices
    other = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])  # the most likely wrong class
    boost = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), other)
    nat_probs = F.softmax(clean_logits, dim=1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    robust = (kl * (1.0000001 - true_probs)).sum() / y.shape[0]
    return ce + boost + beta * robust


class MARTTrainer(Trainer):
    """MART (Wang et al., ICLR 2020): boosted CE on PGD examples + β·KL weighted by (1 − p_y(x)).

    "Improving Adversarial Robustness Requires Revisiting Misclassified Examples";
    reference code github.com/YisenWang/MART (``mart.py``, ``mart_loss``). Inner
    maximization, in eval mode: PGD on the cross-entropy from x + 0.001·N(0, 1),
    ``steps`` projected steps of size ``alpha``. Outer loss, in training mode (p =
    softmax, B the batch size):

        BCE(p(x'), y) + β · (1/B) Σ_i KL(p(x_i) ‖ p(x'_i)) · (1 − p_{y_i}(x_i)),
        BCE(p(x'), y) = CE(f(x'), y) − log(1 − max_{k≠y} p_k(x'))

    with the reference's guards (log(1.0001 − p + 1e-12), log(p(x') + 1e-12),
    1.0000001 − p_y), see :func:`mart_loss`. The CE term is :meth:`Trainer.loss` (the
    run's ``label_smoothing``; the boosting and KL terms are unchanged by it).

    Defaults: ``beta`` 6.0, ``steps`` 10 (the paper's CIFAR-10 setting and the defaults of
    ``train_wideresnet.py``/``train_resnet.py``); ``alpha`` ``0.25eps`` is 2/255 at
    ε = 8/255 (the scripts: 0.007 at ε = 0.031, about 0.23·ε). The authors publish no
    MNIST setting. L2 threats take advplug's normalized-gradient step (the reference
    implements L∞ only).
    """

    name = "mart"
    param_schema = {
        "beta": number(6.0, low=0, help="β: weight of the misclassification-aware KL term (paper and scripts: 6.0)"),
        "steps": integer(10, low=1, help="PGD steps of the inner maximization (paper and scripts: 10)"),
        "alpha": step_size("0.25eps", help="PGD step α (scripts: 0.007 at ε = 0.031, about 0.23·ε)"),
    }

    def adversarial_batch(self, x, y):
        steps = int(self.params["steps"])
        alpha = resolve_step(self.params["alpha"], self.threat.eps, steps)
        return eval_mode_ascent(self.model, x, self.threat, steps, alpha, lambda logits: F.cross_entropy(logits, y))

    def adversarial_loss(self, x, x_adv, y):
        clean_logits = self.model(x)
        logits = self.model(x_adv)
        loss = mart_loss(clean_logits, logits, y, float(self.params["beta"]), self.loss(logits, y))
        return StepOutput(loss, logits, clean_logits)


#: the trainers AWP can wrap: their step is adversarial_batch, then adversarial_loss
AWP_BASES = {"pgd-at": PGDTrainer, "trades": TRADESTrainer, "mart": MARTTrainer}


class BaseTrainerParam(Param):
    """AWP's ``base``: one trainer of :data:`AWP_BASES` with its own parameters, written
    ``base=pgd-at``, ``base=[trades:beta=6,steps=10]`` (the command line's bracket form),
    ``base = "mart:beta=5"`` or ``base = {name = "trades", beta = 6}`` (TOML). Checked
    values are a :class:`~advplug.params.Spec` with the base's parameters checked against
    its schema (defaults filled in), so a wrong base parameter is refused before the run."""

    def accepts(self) -> str:
        return f"one trainer of {', '.join(AWP_BASES)} with its parameters, e.g. base=[trades:beta=6,steps=10]"

    def check(self, owner: str, name: str, value):
        try:
            specs = [Spec.parse(value)] if isinstance(value, (Spec, dict)) else parse_spec_list(value)
        except AdvplugError:
            specs = []
        if len(specs) != 1 or specs[0].name not in AWP_BASES:
            raise AdvplugError(f"{owner}: {name} must be {self.accepts()}, got {value!r}")
        spec = specs[0]
        return Spec(spec.name, check_params(f"{owner}: {name} {spec.name!r}", spec.params,
                                            AWP_BASES[spec.name].param_schema))


class AWPTrainer(Trainer):
    """AWP (Wu et al., NeurIPS 2020): a base trainer's loss taken at adversarially perturbed weights.

    "Adversarial Weight Perturbation Helps Robust Generalization"; reference code
    github.com/csdongxian/AWP (``utils_awp.py``; ``AT_AWP/train_cifar10.py`` for
    AT-AWP, ``trades_AWP/train_trades_cifar.py`` for TRADES-AWP). Per batch:

    1. the base trainer (``base``: ``pgd-at``, ``trades`` or ``mart``, with its own
       parameters) makes the adversarial batch x' at the weights w;
    2. the gradient g of the base loss on x' at w (training mode) gives, for every weight
       tensor with more than one dimension ('weight' in its name, as the reference),
       v = γ·‖w‖·g/‖g‖ (one normalized ascent step, per layer);
    3. the base loss on the same x' at w + v is back-propagated; its gradient is what the
       optimizer uses;
    4. the weights are put back to w (copied back, bit-exact) after the backward pass and
       before ``optimizer.step()`` (``Run.optimizer_step(loss, after_backward=...)``).

    Differences from the reference: step 2 runs on the model itself instead of a proxy
    copy (BatchNorm's running statistics and every other buffer are put back after it,
    as the proxy leaves them untouched); the weights are restored before the optimizer
    step rather than after it (the reference steps at w + v, then subtracts v: the same
    update for SGD and Adam without weight decay; with weight decay the decay term is
    taken at w here, at w + v there); v uses ‖g‖ instead of the reference's ‖lr·g‖ of one
    proxy SGD step (the same direction and size).

    Parameters: ``gamma`` (γ, default 5e-3: the paper's, and the default of the
    TRADES-AWP script; the AT-AWP scripts default to 0.01), ``warmup`` (epochs trained
    with the plain base trainer first, default 0 as the AT-AWP script; the TRADES-AWP
    script uses 10 with 1-based epochs, i.e. 9 epochs here), ``base`` (default
    ``pgd-at``). Costs one forward and backward pass per batch more than the base.
    """

    name = "awp"
    updates_model = True
    param_schema = {
        "base": BaseTrainerParam(Spec("pgd-at"), help="the trainer whose loss AWP perturbs, with its parameters: "
                                                      "pgd-at, trades or mart, e.g. base=[trades:beta=6]"),
        "gamma": number(5e-3, low=0, help="γ: size of the weight perturbation relative to each layer's weight norm "
                                          "(paper: 5e-3; AT-AWP scripts: 0.01); 0: the base trainer alone"),
        "warmup": integer(0, low=0, help="epochs trained with the base trainer alone before AWP starts"),
    }

    def __init__(self, model, threat, **params):
        super().__init__(model, threat, **params)
        spec = self.params["base"]
        self.base = AWP_BASES[spec.name](model, threat, **spec.params)

    def bind(self, run) -> None:
        super().bind(run)
        self.base.bind(run)

    def threat_changed(self) -> None:
        self.base.threat_changed()

    def set_attack_params(self, **values):
        """``eps`` and AWP's own parameters as any trainer; other keys (``steps``,
        ``alpha``, ...) go to the base trainer."""
        own = {k: v for k, v in values.items() if k == "eps" or k in self.param_schema}
        super().set_attack_params(**own)
        if self.run is None and "eps" in own:
            self.base.set_attack_params(eps=own["eps"])
        rest = {k: v for k, v in values.items() if k not in own}
        if rest:
            self.base.set_attack_params(**rest)

    def epoch_metrics(self) -> dict:
        return self.base.epoch_metrics()

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state.get("base", {}))

    def perturbed_weights(self) -> list:
        """The parameters AWP perturbs: more than one dimension and 'weight' in the name
        (the reference's ``diff_in_weights``), trainable."""
        return [p for name, p in self.model.named_parameters() if p.requires_grad and p.dim() > 1 and "weight" in name]

    def weight_perturbation(self, x, x_adv, y) -> list:
        """[(parameter, v)]: v = γ·‖w‖·g/‖g‖ per weight tensor, g the gradient of the base
        loss on ``x_adv`` at the current weights. The model's buffers (BatchNorm running
        statistics) are left as they were; no parameter's ``.grad`` is touched."""
        params = self.perturbed_weights()
        if not params:
            return []
        buffers = [b.detach().clone() for b in self.model.buffers()]
        loss = self.base.adversarial_loss(x, x_adv, y).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        self.average_tensors(g for g in grads if g is not None)  # under torchrun: one v on every process
        gamma = float(self.params["gamma"])
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
            return [(p, gamma * p.norm() / (g.norm() + 1e-20) * g) for p, g in zip(params, grads) if g is not None]

    def step(self, x, y):
        if self.run is None:
            raise AdvplugError("awp updates the model itself: bind(run) before step()")
        x_adv = self.base.adversarial_batch(x, y)
        if not self.params["gamma"] or self.run.epoch < int(self.params["warmup"]):
            out = self.base.adversarial_loss(x, x_adv, y)
            self.run.optimizer_step(out.loss)
            return _detached(out)
        perturbation = self.weight_perturbation(x, x_adv, y)
        saved = [(p, p.detach().clone()) for p, _ in perturbation]
        restored = False

        def restore():
            nonlocal restored
            with torch.no_grad():
                for p, w in saved:
                    p.copy_(w)
            torch.clear_autocast_cache()  # autocast caches low-precision weights per region (--amp)
            restored = True

        with torch.no_grad():
            for p, v in perturbation:
                p.add_(v)
        torch.clear_autocast_cache()
        try:
            out = self.base.adversarial_loss(x, x_adv, y)
            self.run.optimizer_step(out.loss, after_backward=restore)
        finally:
            if not restored:
                restore()
        return _detached(out)


def _detached(out: StepOutput) -> StepOutput:
    clean = None if out.clean_logits is None else out.clean_logits.detach()
    return StepOutput(out.loss.detach(), out.logits.detach(), clean)


TRAINERS = (TRADESTrainer, MARTTrainer, AWPTrainer)
