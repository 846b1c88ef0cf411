"""advplug-sat: smooth adversarial training (Xie et al., arXiv:2006.14536) as an advplug
model transform, ``smooth-activation``: every ReLU of a model replaced by a smooth
function, in both passes (``mode=forward``) or only in the backward pass
(``mode=backward``), separately for the attacker's and the optimizer's gradient."""
from .activations import FUNCTIONS, ReLUSmoothBackward, SmoothReLU, derivative, smooth_module
from .roles import current_role, gradient_role
from .transform import smooth_activation

__version__ = "0.1.0"

__all__ = ["FUNCTIONS", "ReLUSmoothBackward", "SmoothReLU", "current_role", "derivative", "gradient_role",
           "smooth_activation", "smooth_module", "__version__"]
