"""NES: a score-based black-box attack by gradient estimation.

Ilyas, Engstrom, Athalye & Lin, "Black-box Adversarial Attacks with Limited Queries and
Information" (ICML 2018). The gradient of a loss ``L`` at ``x`` is estimated from model
outputs only, with antithetic Gaussian sampling (natural evolution strategies)::

    g ≈ 1/(n σ) Σ_i L(x + σ u_i) u_i,    u_1..u_{n/2} ~ N(0, I),  u_{n/2+i} = -u_i

and PGD steps are taken with it: ``x ← Π(x + α·sign(g))`` for Linf, ``x ← Π(x + α·g/‖g‖₂)``
for L2, ``Π`` the projection onto the threat ball and [0, 1].

Query accounting, per sample: 1 query for the clean prediction, then ``n + 1`` per step
(``n`` for the gradient estimate, 1 to check the new point). A sample stops as soon as it
is misclassified or when one more step would exceed ``max_queries``, so no sample ever
uses more than ``max_queries`` queries. The model is only ever called under
``torch.no_grad()``: no autograd, no gradients on the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advplug.attacks.base import attack_factory
from advplug.errors import AdvplugError
from advplug.params import check_params, choice, integer, number, param_defaults, resolve_step, step_size

PARAMS = {
    "sigma": number(0.001, low=0, low_open=True, help="sampling scale σ, in pixel units"),
    "samples_per_draw": integer(50, low=2, help="n: queries per gradient estimate (n/2 antithetic pairs); even"),
    "max_queries": integer(10000, low=1, help="query budget per sample, the clean prediction included"),
    "alpha": step_size("0.1eps", help="step size α: a number (pixel space) or a multiple of ε (default ε/10)"),
    "loss": choice("ce", ("ce", "margin"), help="ce (cross-entropy) or margin (CW: max_{j≠y} z_j - z_y)"),
    "seed": integer(0, low=0, help="seeds a local torch.Generator at every call"),
}
DEFAULTS = param_defaults(PARAMS)
#: at most this many input elements go through the model in one forward (memory bound)
CHUNK_ELEMENTS = 1 << 24


class NESAttack:
    """``NESAttack(model, threat, **params)(x, y) -> x_adv``; see the module docstring.

    After each call: ``last_queries`` (mean queries per sample), ``last_query_counts``
    (per sample, int64 tensor), ``last_fooled`` (misclassified at the end, bool tensor).
    Over all calls: ``total_queries``, ``total_samples`` and ``mean_queries``.
    """

    def __init__(self, model, threat, **params):
        p = check_params("attack 'nes'", params, PARAMS)
        if p["samples_per_draw"] % 2:
            raise AdvplugError(f"attack 'nes': samples_per_draw must be even (antithetic pairs), "
                               f"got {p['samples_per_draw']}")
        self.model = model
        self.threat = threat
        self.sigma, self.samples_per_draw, self.max_queries = p["sigma"], p["samples_per_draw"], p["max_queries"]
        self.alpha = resolve_step(p["alpha"], threat.eps)
        self.loss, self.seed = p["loss"], p["seed"]
        self.last_queries = None
        self.last_query_counts = None
        self.last_fooled = None
        self.total_queries = 0
        self.total_samples = 0

    @property
    def mean_queries(self) -> float | None:
        """Mean queries per sample over every call so far."""
        return self.total_queries / self.total_samples if self.total_samples else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        y = y.detach().to(x.device)
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                x_adv, queries, fooled = self._attack(x, y)
        finally:
            for module, training in modes:
                module.training = training
        self.last_query_counts = queries.cpu()
        self.last_queries = queries.double().mean().item() if len(queries) else 0.0
        self.last_fooled = fooled.cpu()
        self.total_queries += int(queries.sum())
        self.total_samples += len(queries)
        return x_adv

    # -- the attack -------------------------------------------------------------------

    def _attack(self, x, y):
        n, threat = self.samples_per_draw, self.threat
        step_cost = n + 1
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed)
        x_adv = x.clone()
        queries = torch.ones(len(x), dtype=torch.long, device=x.device)  # the clean prediction
        fooled = self._query(x).argmax(1) != y
        if threat.eps == 0:
            return x_adv, queries, fooled
        active = ~fooled & (queries + step_cost <= self.max_queries)
        while active.any():
            idx = active.nonzero().squeeze(1)
            x0, xa, ya = x[idx], x_adv[idx], y[idx]
            grad = self._estimate(xa, ya, gen)
            delta = threat.project(xa + threat.ascent(grad, self.alpha) - x0, x0)
            xa = (x0 + delta).clamp(0.0, 1.0)
            x_adv[idx] = xa
            fooled[idx] = self._query(xa).argmax(1) != ya
            queries[idx] += step_cost
            active = ~fooled & (queries + step_cost <= self.max_queries)
        return x_adv, queries, fooled

    def _estimate(self, x, y, gen):
        """NES estimate of ∇ₓL for every sample of ``x``: one forward of (B·n) queries,
        split by samples only when it would exceed CHUNK_ELEMENTS."""
        n, half = self.samples_per_draw, self.samples_per_draw // 2
        dims = x[0].numel()
        group = max(1, CHUNK_ELEMENTS // (n * dims))
        parts = []
        for start in range(0, len(x), group):
            xs, ys = x[start:start + group], y[start:start + group]
            u = torch.randn((len(xs), half, *xs.shape[1:]), generator=gen, device=xs.device, dtype=xs.dtype)
            u = torch.cat([u, -u], dim=1)  # antithetic: (b, n, C, H, W)
            queries = (xs.unsqueeze(1) + self.sigma * u).flatten(0, 1)
            losses = self._loss(self._query(queries), ys.repeat_interleave(n)).view(len(xs), n)
            # Σ_i L_i u_i over antithetic pairs is Σ_j (L_j+ - L_j-) u_j: subtract in float64
            diff = (losses[:, :half] - losses[:, half:]).to(xs.dtype)
            scale = diff.view(*diff.shape, *([1] * (xs.dim() - 1)))
            parts.append((scale * u[:, :half]).sum(1) / (n * self.sigma))
        return torch.cat(parts)

    def _loss(self, logits, y):
        """Per-query loss to maximize, in float64 so tiny differences survive (a confident
        model's cross-entropy is ~1e-8, below float32 resolution around 1)."""
        z = logits.double()
        if self.loss == "ce":
            return F.cross_entropy(z, y, reduction="none")
        true = z.gather(1, y[:, None]).squeeze(1)
        other = z.scatter(1, y[:, None], float("-inf")).amax(1)
        return other - true

    def _query(self, x):
        """The model's logits for ``x``, in forwards of at most CHUNK_ELEMENTS elements."""
        rows = max(1, CHUNK_ELEMENTS // max(1, x[0].numel()))
        if len(x) <= rows:
            return self.model(x)
        return torch.cat([self.model(chunk) for chunk in x.split(rows)])


@attack_factory("advplug-nes", norms=("Linf", "L2"), black_box=True, params=PARAMS,
                description="NES gradient-estimation black box (Ilyas et al. 2018): antithetic Gaussian "
                            "sampling + PGD, per-sample query budget")
def nes(model, threat, **params):
    """NES black-box attack; params: sigma, samples_per_draw, max_queries, alpha, loss, seed."""
    return NESAttack(model, threat, **params)
