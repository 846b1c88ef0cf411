"""MNIST networks of published adversarial-training papers, layer for layer, so their
recipes train the model the numbers were published for. Both take [0, 1] inputs and,
as in the papers, do not normalize them."""
from torch import nn

from .common import ACTIVATION, activation_factory


class _PaperMnistNet(nn.Module):
    """Convolutional ``features`` (a subclass's ``layers``, down-sampling 28 -> 7), then
    flatten -> fc ``hidden`` -> activation -> fc classes."""

    param_schema = {"activation": ACTIVATION}

    hidden = 100
    #: the papers train and publish these on raw [0, 1] pixels: no Normalize layer (a
    #: built-in model without one says so here; tests and tools read it)
    normalizes_inputs = False

    def __init__(self, num_classes=10, in_channels=1, activation="relu", input_size=28,
                 mean=None, std=None):  # mean/std unused: the papers feed raw [0, 1] pixels
        super().__init__()
        act = activation_factory(activation)
        self.features, channels = self.layers(in_channels, act)
        side = input_size // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, self.hidden), act(),
                                        nn.Linear(self.hidden, num_classes))

    def layers(self, in_channels, act) -> tuple[nn.Sequential, int]:
        raise NotImplementedError

    def forward(self, x):
        return self.classifier(self.features(x))


class WongMnistNet(_PaperMnistNet):
    """Wong, Rice & Kolter (2020), ``mnist_net`` in locuslab/fast_adversarial
    (``MNIST/mnist_net.py``): conv 16 4×4/2 pad 1 → conv 32 4×4/2 pad 1 → fc 100 → fc 10."""

    hidden = 100

    def layers(self, in_channels, act):
        return nn.Sequential(nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), act(),
                             nn.Conv2d(16, 32, 4, stride=2, padding=1), act()), 32


class MadryMnistNet(_PaperMnistNet):
    """Madry et al. (2018), the MNIST challenge model (MadryLab/mnist_challenge ``model.py``):
    conv 32 5×5 same → max-pool 2 → conv 64 5×5 same → max-pool 2 → fc 1024 → fc 10."""

    hidden = 1024

    def layers(self, in_channels, act):
        return nn.Sequential(nn.Conv2d(in_channels, 32, 5, padding=2), act(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 5, padding=2), act(), nn.MaxPool2d(2)), 64
