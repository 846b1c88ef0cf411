"""Model transforms of advplug-defenses: ``pni``, ``rse`` and ``spectral-norm``.

Each is ``fn(model, **options) -> model``: it changes the model in place and returns it.
advplug applies it after the model is built, before training, and again when a saved model
is loaded (:func:`advplug.load_model` rebuilds the model from its spec, then loads the
state_dict), so whatever a transform adds is either rebuilt from its options (hooks) or
lives in the state_dict (parameters, buffers) under names that are the same at every build.

- ``pni``: Parametric Noise Injection on the weights (PNI-W; He, Rakin & Fan, CVPR 2019,
  "Parametric Noise Injection: Trainable Randomness to Improve DNN Robustness against
  Adversarial Attack"; reference code github.com/elliothe/Parametric-Noise-Injection).
  Every Conv2d (and Linear) weight w is used as w + a·η with η ~ N(0, std(w)²) drawn fresh at
  every forward, std(w) the standard deviation of that layer's weights (no gradient through
  it), and a one learnable scalar per layer (α of the paper, initialised to 0.25 as in the
  reference code's layer-wise mode). The noise is on in training and in evaluation, as in the
  reference code. Implemented as a ``torch.nn.utils.parametrize`` parametrization of
  ``weight``: the layer's weight is stored as ``parametrizations.weight.original`` and the
  scale as ``parametrizations.weight.<i>.scale``. +1 parameter per noised layer.
- ``rse``: Random Self-Ensemble (Liu, Cheng, Zhang & Hsieh, ECCV 2018, "Towards Robust Neural
  Networks via Random Self-ensemble"; reference code github.com/xuanqing94/RobustNet and
  github.com/xuanqing94/BayesianDefense): Gaussian noise N(0, σ²) added to the input of every
  Conv2d, σ_init for the first, σ_inner for the others, not learned, on in training and in
  evaluation. Forward pre-hooks only: no parameter, no buffer, the state_dict is unchanged.
- ``spectral-norm``: spectral normalization (Miyato, Kataoka, Koyama & Yoshida, ICLR 2018)
  of every Conv2d and Linear weight with ``torch.nn.utils.parametrizations.spectral_norm``:
  the weight is divided by its largest singular value (of the weight reshaped to
  out_channels × rest, as Miyato et al. do for convolutions), estimated by power iteration.
  Torch updates the power-iteration vectors u, v only in training mode; in evaluation mode
  the weight is fixed and the model deterministic. The parameter count is unchanged (the
  weight becomes ``parametrizations.weight.original``), plus buffers ``_u`` and ``_v``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from advplug.errors import AdvplugError
from advplug.params import choice, integer, number, takes

LAYERS = choice("conv+linear", ("conv+linear", "conv"),
                help="which layers: every Conv2d and Linear (conv+linear), or every Conv2d only (conv)")


def _layers(model: nn.Module, which: str, transform: str) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every Conv2d (and Linear unless ``which`` is "conv"), in the
    order the model registers them; an AdvplugError when there is none."""
    kinds = (nn.Conv2d,) if which == "conv" else (nn.Conv2d, nn.Linear)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]
    if not found:
        what = "Conv2d" if which == "conv" else "Conv2d or Linear"
        raise AdvplugError(f"model transform {transform!r}: the model ({type(model).__name__}) has no {what} "
                           f"layer to apply it to")
    return found


def _weight_parametrizations(module: nn.Module) -> list[nn.Module]:
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return list(module.parametrizations.weight)


# -- pni -----------------------------------------------------------------------------------

class PNIWeight(nn.Module):
    """Parametrization w -> w + scale·η, η ~ N(0, std(w)²) drawn at every evaluation of the
    weight (every forward), std(w) detached; ``scale`` is α of the paper, one per layer."""

    def __init__(self, scale_init: float = 0.25):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            noise = torch.randn_like(weight) * weight.std()
        return weight + self.scale.to(weight.dtype) * noise

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.4g}"


@takes({"scale_init": number(0.25, low=0, help="initial noise scale, α of the paper (one learnable scalar "
                                               "per layer; 0.25 as the reference code)"),
        "layers": LAYERS},
       "model transform 'pni'")
def pni(model: nn.Module, scale_init: float, layers: str) -> nn.Module:
    """Parametric Noise Injection on the weights (PNI-W, He et al. 2019): w + α·N(0, std(w)²),
    α learnable per layer, noise in training and evaluation."""
    targets = _layers(model, layers, "pni")
    for name, module in targets:
        if any(isinstance(p, PNIWeight) for p in _weight_parametrizations(module)):
            raise AdvplugError(f"model transform 'pni': layer {name or type(module).__name__!r} already has "
                               f"noise injected (pni given twice?)")
    for _, module in targets:
        parametrize.register_parametrization(module, "weight", PNIWeight(scale_init), unsafe=True)
    return model


def pni_scales(model: nn.Module) -> dict[str, nn.Parameter]:
    """{layer name: its learnable noise scale α} of a model transformed by ``pni``."""
    return {name: p.scale for name, m in model.named_modules()
            for p in _weight_parametrizations(m) if isinstance(p, PNIWeight)}


# -- rse -----------------------------------------------------------------------------------

class GaussianInputNoise:
    """A forward pre-hook adding N(0, sigma²) noise to a module's first input, in every mode."""

    def __init__(self, sigma: float):
        self.sigma = float(sigma)

    def __call__(self, module, args):
        if not args or self.sigma == 0:
            return None
        x = args[0]
        return (x + self.sigma * torch.randn_like(x), *args[1:])

    def __repr__(self) -> str:
        return f"GaussianInputNoise(sigma={self.sigma:g})"


def noise_hooks(module: nn.Module) -> list[GaussianInputNoise]:
    """The RSE noise hooks on ``module`` itself (not its children)."""
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, GaussianInputNoise)]


@takes({"sigma_init": number(0.2, low=0, help="σ of the first noise layer, on the image (see init_at; pixel "
                                              "space by default, images in [0, 1], as the reference code "
                                              "trains on unnormalized images); 0.2 as BayesianDefense's "
                                              "train_rse.sh (RobustNet's uses 0.4)"),
        "sigma_inner": number(0.1, low=0, help="σ of the noise on the input of every other Conv2d "
                                               "(feature space); 0.1 as both reference scripts"),
        "init_at": choice("input", ("input", "first-conv"),
                          help="where the sigma_init noise goes: on the model's input, before its own "
                               "normalization (input: pixel space, as the reference code), or on the first "
                               "Conv2d's input, after it (first-conv: σ in normalized units)")},
       "model transform 'rse'")
def rse(model: nn.Module, sigma_init: float, sigma_inner: float, init_at: str) -> nn.Module:
    """Random Self-Ensemble (Liu et al. 2018): N(0, σ²) noise on the input of every Conv2d
    (σ_init on the first, σ_inner on the others), in training and evaluation."""
    convs = _layers(model, "conv", "rse")
    if any(noise_hooks(m) for m in model.modules()):
        raise AdvplugError("model transform 'rse': the model already has RSE noise layers (rse given twice?)")
    first, *inner = (m for _, m in convs)
    if init_at == "input":
        model.register_forward_pre_hook(GaussianInputNoise(sigma_init))
    else:
        first.register_forward_pre_hook(GaussianInputNoise(sigma_init))
    for module in inner:
        module.register_forward_pre_hook(GaussianInputNoise(sigma_inner))
    return model


# -- spectral-norm -------------------------------------------------------------------------

def _is_spectral_norm(p: nn.Module) -> bool:
    return type(p).__name__ == "_SpectralNorm"


@takes({"n_power_iterations": integer(1, low=1, help="power iterations per forward in training mode (none "
                                                     "in evaluation mode: the weight is then fixed)"),
        "layers": LAYERS},
       "model transform 'spectral-norm'")
def spectral_norm(model: nn.Module, n_power_iterations: int, layers: str) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) of every Conv2d and Linear weight, by
    torch.nn.utils.parametrizations.spectral_norm."""
    targets = _layers(model, layers, "spectral-norm")
    for name, module in targets:
        if any(_is_spectral_norm(p) for p in _weight_parametrizations(module)):
            raise AdvplugError(f"model transform 'spectral-norm': layer {name or type(module).__name__!r} is "
                               f"already spectrally normalized (spectral-norm given twice?)")
    for _, module in targets:
        nn.utils.parametrizations.spectral_norm(module, "weight", n_power_iterations=n_power_iterations)
    return model


#: name -> (transform, one-line description), registered by advplug_defenses.plugin
TRANSFORMS = {
    "pni": (pni, "Parametric Noise Injection on Conv2d/Linear weights, learnable scale (He et al. 2019)"),
    "rse": (rse, "Random Self-Ensemble: Gaussian noise before every Conv2d, train and eval (Liu et al. 2018)"),
    "spectral-norm": (spectral_norm, "spectral normalization of Conv2d/Linear weights (Miyato et al. 2018)"),
}
